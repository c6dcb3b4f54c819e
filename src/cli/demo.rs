//! `entra-rotator demo`: starts the stand-ins in-process, writes a configuration file that
//! points the production clients at them, and runs the whole loop twice (the second time
//! with Entra replication delay, so verification has to retry). Nothing leaves the machine.

use super::report::{error_line, outcome_line};
use super::wiring::wire;
use super::EXIT_FAILED;
use crate::config::Config;
use crate::engine::events::{Event, EventSink};
use crate::engine::ports::SystemClock;
use crate::engine::{Engine, Rotation, RunOptions};
use crate::standins::graph::GraphStandin;
use crate::standins::keyvault::KeyVaultStandin;
use crate::standins::kubernetes::KubernetesStandin;
use crate::standins::smtp::{RelaySettings, SmtpRelayStandin};
use crate::standins::tenant::Tenant;
use crate::standins::tls::TestPki;
use base64::Engine as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACS_RESOURCE: &str = "contoso-acs";
const SECRET_NAME: &str = "dify-smtp-password";

/// Prints each engine event as it happens, with the time since the demo started.
struct Timeline {
    started: Instant,
}

impl EventSink for Timeline {
    fn record(&self, _rotation: &str, event: &Event) {
        println!("  [{:>5.1}s] {event}", self.started.elapsed().as_secs_f64());
    }
}

/// The running stand-ins; dropping them stops the servers.
struct StandIns {
    tenant: Tenant,
    graph: GraphStandin,
    vault: KeyVaultStandin,
    kubernetes: KubernetesStandin,
    relay: SmtpRelayStandin,
    pki: TestPki,
}

pub async fn run() -> ExitCode {
    match demo().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(error) => {
            eprintln!("error: the demo could not run: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn demo() -> anyhow::Result<bool> {
    println!("entra-rotator demo: the whole rotation loop against local stand-ins (nothing leaves this machine)\n");
    let standins = start_standins().await?;
    let target = standins.tenant.register_app("dify-mail");
    let now = chrono::Utc::now();
    standins.tenant.add_password(target.object_id, Some("created by hand".into()), now, now + chrono::Duration::days(20));
    println!(
        "Application dify-mail (clientId {}) has one secret, created by hand, expiring in 20 days.",
        target.app_id
    );
    println!("The rotator never touches secrets it did not mint.\n");

    let workdir = tempfile::tempdir()?;
    let config_path = write_config(&standins, target.app_id, workdir.path())?;
    println!("Configuration written to {} (as `entra-rotator run --config` reads it).\n", config_path.display());
    let config = Config::load(&config_path)?;
    let rotations = wire(&config).await?;
    let rotation = &rotations[0];
    let engine = Engine::new(Arc::new(SystemClock), Arc::new(Timeline { started: Instant::now() }));

    println!("Run 1: nothing is stored yet, so the rotator mints, stores, verifies.");
    let first = run_once(&engine, rotation, false).await;

    println!("\nRun 2: forced rotation; Entra now takes 2s to replicate a new secret, so verification retries.");
    standins.tenant.set_propagation_delay(Duration::from_secs(2));
    let second = run_once(&engine, rotation, true).await;

    print_final_state(&standins, target.object_id);
    Ok(first && second)
}

async fn run_once(engine: &Engine, rotation: &Rotation, force: bool) -> bool {
    match engine.run(rotation, RunOptions { force, dry_run: false }).await {
        Ok(outcome) => {
            println!("  => {}", outcome_line(&rotation.name, &outcome));
            true
        }
        Err(error) => {
            println!("  => {}", error_line(&rotation.name, &error));
            false
        }
    }
}

async fn start_standins() -> anyhow::Result<StandIns> {
    let pki = TestPki::generate()?;
    let tenant = Tenant::new();
    let graph = GraphStandin::start(tenant.clone(), &pki).await?;
    let vault = KeyVaultStandin::start(tenant.clone(), &pki).await?;
    let kubernetes = KubernetesStandin::start(&pki).await?;
    kubernetes.create_namespace("dify");
    let relay = SmtpRelayStandin::start(tenant.clone(), &pki, RelaySettings::azure_managed(ACS_RESOURCE)).await?;
    println!("Stand-ins (real wire formats, real sockets):");
    println!("  Microsoft Graph + Entra token endpoint  {}", graph.graph_url());
    println!("  Azure Key Vault                         {}", vault.vault_url());
    println!("  Kubernetes API (Secrets)                {}", kubernetes.url());
    println!("  ACS SMTP relay (STARTTLS, AUTH LOGIN)   127.0.0.1:{}\n", relay.port());
    Ok(StandIns { tenant, graph, vault, kubernetes, relay, pki })
}

/// Writes the CA, the rotator's own secret, a kubeconfig and the configuration file.
fn write_config(standins: &StandIns, client_id: uuid::Uuid, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let tenant_id = standins.tenant.tenant_id;
    let rotator = standins.tenant.register_app("entra-rotator");
    let now = chrono::Utc::now();
    let rotator_secret = standins
        .tenant
        .add_password(rotator.object_id, Some("rotator".into()), now, now + chrono::Duration::days(365))
        .ok_or_else(|| anyhow::anyhow!("the rotator app vanished"))?;
    let ca = dir.join("stand-in-ca.pem");
    std::fs::write(&ca, standins.pki.ca_pem())?;
    let secret_file = dir.join("rotator-secret");
    std::fs::write(&secret_file, &rotator_secret.secret_text)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: demo\n  user:\n    token: demo\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: demo\ncurrent-context: standin\n",
            server = standins.kubernetes.url(),
            ca = base64::engine::general_purpose::STANDARD.encode(standins.pki.ca_pem()),
        ),
    )?;
    let sender = standins.relay.settings().default_sender().unwrap_or("DoNotReply@example.azurecomm.net").to_string();
    let config = format!(
        r#"azure:
  authorityHost: {authority}
  graphUrl: {graph}
  credential:
    type: clientSecret
    tenantId: {tenant_id}
    clientId: {rotator_id}
    secretFile: {secret_file}
tls:
  extraRootCertificates: [{ca}]
kubernetes:
  kubeconfig: {kubeconfig}
rotations:
  - name: dify-smtp
    application:
      tenantId: {tenant_id}
      clientId: {client_id}
    lifetime: 180d
    revokeGracePeriod: 0s
    targets:
      - keyVault:
          vaultUrl: {vault}
          secretName: {SECRET_NAME}
          verifyChallengeResource: false   # the stand-in vault is not under vault.azure.net
      - kubernetesSecret:
          namespace: dify
          name: dify-smtp
          keys:
            SMTP_SERVER: "{{{{smtpHost}}}}"
            SMTP_PORT: "{{{{smtpPort}}}}"
            SMTP_USERNAME: "{{{{smtpUsername}}}}"
            SMTP_PASSWORD: "{{{{secret}}}}"
            MAIL_DEFAULT_SEND_FROM: "{{{{smtpFrom}}}}"
    verification:
      smtp:
        host: localhost
        port: {port}
        username: "{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"
        from: {sender}
        to: mail-canary@contoso.example
        retryInterval: 1s
        retryBudget: 30s
"#,
        authority = standins.graph.authority_host(),
        graph = standins.graph.graph_url(),
        rotator_id = rotator.app_id,
        secret_file = secret_file.display(),
        ca = ca.display(),
        kubeconfig = kubeconfig.display(),
        vault = standins.vault.vault_url(),
        port = standins.relay.port(),
    );
    let path = dir.join("rotator.yaml");
    std::fs::write(&path, config)?;
    Ok(path)
}

fn print_final_state(standins: &StandIns, object_id: uuid::Uuid) {
    println!("\nWhat the services hold now:");
    if let Some(app) = standins.tenant.app(object_id) {
        println!("  Graph: dify-mail has {} password credential(s):", app.passwords.len());
        for password in &app.passwords {
            println!(
                "    keyId {}  {:<26} expires {}",
                password.key_id,
                format!("{:?}", password.display_name.as_deref().unwrap_or("")),
                password.end.format("%Y-%m-%d")
            );
        }
    }
    if let Some(latest) = standins.vault.latest(SECRET_NAME) {
        println!("  Key Vault: {SECRET_NAME} has {} version(s); the latest is tagged {:?}", standins.vault.versions(SECRET_NAME).len(), latest.tags);
    }
    if let Some(secret) = standins.kubernetes.secret("dify", "dify-smtp") {
        let keys: Vec<String> = secret
            .data
            .iter()
            .map(|(k, v)| if k == "SMTP_PASSWORD" { format!("{k}=<{} chars>", v.len()) } else { format!("{k}={v}") })
            .collect();
        println!("  Kubernetes Secret dify/dify-smtp: {}", keys.join(" "));
        println!("    annotations {:?}", secret.annotations);
    }
    println!(
        "  SMTP relay: {} verification mail(s) accepted over {} session(s)",
        standins.relay.accepted_messages().len(),
        standins.relay.sessions()
    );
}
