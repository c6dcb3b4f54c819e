//! `entra-rotator playground --dir DIR`: every stand-in and a controller running against
//! them, with the files a person needs to drive them by hand (kubectl, `run --config`,
//! `smtp-test`, swaks), until interrupted. Built with the `demo` feature only.

use super::EXIT_FAILED;
use entra_rotator_standins::scenario::{write_private, Scenario, ACS_RESOURCE, SECRET_NAME, SECRET_NAMESPACE, VAULT_SECRET};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

/// The ClientSecretRotation the playground suggests applying.
const ROTATION_NAME: &str = "dify-smtp";

pub async fn run(dir: PathBuf) -> ExitCode {
    match playground(&dir).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: the playground could not run in {}: {error:#}", dir.display());
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn playground(dir: &Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir)?;
    let scenario = Scenario::start_in(&dir).await?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, scenario.pki.ca_pem())?;
    let rotation = dir.join("rotation.yaml");
    std::fs::write(&rotation, rotation_yaml(&scenario))?;
    let app_secret = dir.join("app-secret");
    // A working client secret of the seeded application: readable by its owner only.
    write_private(&app_secret, hand_made_secret(&scenario)?.as_bytes())?;

    register_crd(&scenario).await?;

    let log_path = dir.join("controller.log");
    let log = std::fs::File::create(&log_path)?;
    let mut controller = tokio::process::Command::new(std::env::current_exe()?)
        .args(["controller", "--namespace", SECRET_NAMESPACE, "--lease-namespace", SECRET_NAMESPACE])
        // The stand-in relay is not one of Microsoft's: the administrator (here, the
        // playground) allows it, as the chart's verification.allowedHosts would.
        .args(["--allow-smtp-host", &format!("localhost:{}", scenario.relay.port())])
        .args(["--health-addr", "127.0.0.1:0", "--azure-config"])
        .arg(&scenario.config_path)
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;

    print_guide(&scenario, &dir, &log_path);
    tokio::select! {
        status = controller.wait() => {
            anyhow::bail!("the controller stopped ({}); see {}", status?, log_path.display())
        }
        signal = tokio::signal::ctrl_c() => signal?,
    }
    println!("Stopping: the stand-ins forget everything; the files in {} stay.", dir.display());
    Ok(())
}

/// Applies the ClientSecretRotation CRD (the one `entra-rotator crd` prints), as the
/// chart's install would: kubectl finds the kind through discovery only once it is there,
/// and the stand-in then admits objects with the CRD's schema, defaults and CEL rules.
async fn register_crd(scenario: &Scenario) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt as _;
    let kubeconfig = kube::config::Kubeconfig::read_from(scenario.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(kube::Client::try_from(config)?);
    crds.create(&Default::default(), &crate::operator::crd::ClientSecretRotation::crd()).await?;
    Ok(())
}

/// The application's hand-made secret, so a person can try the relay with swaks or smtp-test.
fn hand_made_secret(scenario: &Scenario) -> anyhow::Result<String> {
    let app = scenario.target_now();
    let password = app
        .passwords
        .iter()
        .find(|p| p.key_id == scenario.foreign_key_id)
        .ok_or_else(|| anyhow::anyhow!("the seeded application lost its secret"))?;
    Ok(password.secret_text.clone())
}

fn rotation_yaml(scenario: &Scenario) -> String {
    format!(
        r#"# A ClientSecretRotation for the playground's application. Apply it with
#   kubectl --kubeconfig kubeconfig apply -f rotation.yaml
apiVersion: entra-rotator.io/v1alpha1
kind: ClientSecretRotation
metadata:
  name: {ROTATION_NAME}
  namespace: {SECRET_NAMESPACE}
spec:
  application:
    tenantId: {tenant}
    clientId: {client}
  lifetime: 4320h
  revokeGracePeriod: 0s
  targets:
    - secret:
        name: {SECRET_NAME}
        keys:
          SMTP_SERVER: "{{{{smtpHost}}}}"
          SMTP_PORT: "{{{{smtpPort}}}}"
          SMTP_USERNAME: "{{{{smtpUsername}}}}"
          SMTP_PASSWORD: "{{{{secret}}}}"
          MAIL_DEFAULT_SEND_FROM: "{{{{smtpFrom}}}}"
    - keyVault:
        vaultUrl: {vault}
        secretName: {VAULT_SECRET}
  verification:
    smtp:
      host: localhost
      port: {port}
      username: "{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"
      from: {from}
      to: mail-canary@contoso.example
"#,
        tenant = scenario.tenant.tenant_id,
        client = scenario.target.app_id,
        vault = scenario.vault.vault_url(),
        port = scenario.relay.port(),
        from = sender(scenario),
    )
}

fn sender(scenario: &Scenario) -> String {
    scenario.relay.settings().default_sender().unwrap_or("DoNotReply@example.azurecomm.net").to_string()
}

fn print_guide(scenario: &Scenario, dir: &Path, log: &Path) {
    let file = |name: &str| dir.join(name).display().to_string();
    let kubeconfig = scenario.kubeconfig_path().display().to_string();
    let username = format!("{ACS_RESOURCE}|{}|{}", scenario.target.app_id, scenario.tenant.tenant_id);
    let (port, from) = (scenario.relay.port(), sender(scenario));
    println!("entra-rotator playground: local stand-ins and a controller; nothing leaves this machine.\n");
    println!("  Microsoft Graph + Entra token endpoint  {}", scenario.graph.graph_url());
    println!("  Azure Key Vault                         {}", scenario.vault.vault_url());
    println!("  Kubernetes API                          {}", scenario.kubernetes.url());
    println!("  ACS SMTP relay (STARTTLS, AUTH LOGIN)   localhost:{port}");
    println!("  controller (namespace {SECRET_NAMESPACE})             log in {}\n", log.display());
    println!("Files in {}:", dir.display());
    println!("  kubeconfig     the Kubernetes stand-in       ca.pem      the stand-ins' CA");
    println!("  rotator.yaml   for `entra-rotator run --config`");
    println!("  rotation.yaml  a ClientSecretRotation for application {}", scenario.target.app_id);
    println!("  app-secret     the application's hand-made client secret (mode 0600)\n");
    println!("Try:");
    println!("  kubectl --kubeconfig {kubeconfig} apply -f {}", file("rotation.yaml"));
    println!("  kubectl --kubeconfig {kubeconfig} get csrot -A -w");
    println!("  kubectl --kubeconfig {kubeconfig} -n {SECRET_NAMESPACE} get secret {SECRET_NAME} -o yaml");
    println!("  entra-rotator run --config {} --dry-run", scenario.config_path.display());
    println!("    (rotation.yaml and rotator.yaml rotate the same application: use one of them; after");
    println!("    one has rotated, the other is refused with ClaimedByAnother, one rotation per application)");
    println!(
        "  entra-rotator smtp-test --host localhost --port {port} --username '{username}' --from {from} --to you@example.com --password-file {} --extra-root-certificate {}",
        file("app-secret"),
        file("ca.pem")
    );
    println!(
        "  swaks --server localhost:{port} --tls --tls-ca-path {} --auth LOGIN --auth-user '{username}' --auth-password \"$(cat {})\" --from {from} --to you@example.com",
        file("ca.pem"),
        file("app-secret")
    );
    println!("\nPress Ctrl-C to stop.");
}
