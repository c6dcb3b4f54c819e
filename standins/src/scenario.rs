//! A ready-made world for the demo and the end-to-end tests: every stand-in running, an
//! application to rotate (with a hand-made secret the rotator must leave alone), the
//! rotator's own identity, and a configuration file pointing the production clients at
//! all of it — the same file format `entra-rotator run --config` reads.

use super::graph::GraphStandin;
use super::keyvault::KeyVaultStandin;
use super::kubernetes::KubernetesStandin;
use super::smtp::{RelaySettings, SmtpRelayStandin};
use super::tenant::{StandinApp, Tenant};
use super::tls::TestPki;
use base64::Engine as _;
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const ACS_RESOURCE: &str = "contoso-acs";
pub const VAULT_SECRET: &str = "dify-smtp-password";
pub const SECRET_NAMESPACE: &str = "dify";
pub const SECRET_NAME: &str = "dify-smtp";
pub const ROTATION: &str = "dify-smtp";
/// A verified domain of the tenant: sign-ins may name the tenant by it instead of its id.
pub const TENANT_DOMAIN: &str = "contoso.onmicrosoft.com";

/// The running stand-ins and the files describing them. Dropping it stops the servers
/// and deletes the files.
pub struct Scenario {
    pub tenant: Tenant,
    pub graph: GraphStandin,
    pub vault: KeyVaultStandin,
    pub kubernetes: KubernetesStandin,
    pub relay: SmtpRelayStandin,
    pub pki: TestPki,
    /// The application whose secret is rotated.
    pub target: StandinApp,
    /// The hand-made secret on the target that is not ours.
    pub foreign_key_id: Uuid,
    /// The rotator's own application (client) id.
    pub rotator_client_id: Uuid,
    /// The rotator's own client secret (read by the configuration from a file).
    pub rotator_secret: String,
    pub config_path: PathBuf,
    /// The temporary folder the files are in, unless the caller chose one.
    _dir: Option<tempfile::TempDir>,
}

impl Scenario {
    /// Starts everything and writes the configuration with `revokeGracePeriod: 0s` into a
    /// temporary folder, deleted when the scenario is dropped.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()?;
        let config_path = dir.path().join("rotator.yaml");
        Self::start_writing(config_path, Some(dir)).await
    }

    /// Like [`Scenario::start`], writing the files into `dir` (created if missing), which
    /// is left in place afterwards.
    pub async fn start_in(dir: &Path) -> anyhow::Result<Self> {
        if !dir.exists() {
            std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
        }
        Self::start_writing(dir.join("rotator.yaml"), None).await
    }

    async fn start_writing(config_path: PathBuf, temporary: Option<tempfile::TempDir>) -> anyhow::Result<Self> {
        let pki = TestPki::generate()?;
        let tenant = Tenant::new();
        tenant.add_verified_domain(TENANT_DOMAIN);
        let graph = GraphStandin::start(tenant.clone(), &pki).await?;
        let vault = KeyVaultStandin::start(tenant.clone(), &pki).await?;
        vault.set_authority(graph.authority_host().as_str());
        let kubernetes = KubernetesStandin::start(&pki).await?;
        kubernetes.create_namespace(SECRET_NAMESPACE);
        let relay =
            SmtpRelayStandin::start(tenant.clone(), &pki, RelaySettings::azure_managed(ACS_RESOURCE)).await?;

        let now = chrono::Utc::now();
        let target = tenant.register_app("dify-mail");
        let foreign = tenant
            .add_replicated_password(target.object_id, Some("created by hand".into()), now, now + chrono::Duration::days(20))
            .ok_or_else(|| anyhow::anyhow!("the target application vanished"))?;
        let rotator = tenant.register_app("entra-rotator");
        let rotator_secret = tenant
            .add_replicated_password(rotator.object_id, Some("rotator".into()), now, now + chrono::Duration::days(365))
            .ok_or_else(|| anyhow::anyhow!("the rotator application vanished"))?
            .secret_text;

        // The rotator owns what it rotates, as Application.ReadWrite.OwnedBy requires.
        graph.add_owner(target.object_id, rotator.app_id);
        let mut scenario = Self {
            tenant,
            graph,
            vault,
            kubernetes,
            relay,
            pki,
            target,
            foreign_key_id: foreign.key_id,
            rotator_client_id: rotator.app_id,
            rotator_secret,
            config_path,
            _dir: temporary,
        };
        let config = scenario.write_support_files(rotator.app_id)?;
        write_private(&scenario.config_path, config.as_bytes())?;
        scenario.target = scenario.target_now();
        Ok(scenario)
    }

    /// A ClientSecretRotation spec for the target application: the Kubernetes Secret
    /// `secret` (its `SMTP_PASSWORD` key) as the one target, verified at the relay stand-in;
    /// the top-level fields of `extra` are added or replace the defaults.
    pub fn rotation_spec(&self, secret: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "application": { "tenantId": self.tenant.tenant_id, "clientId": self.target.app_id },
            "targets": [ { "secret": { "name": secret, "keys": { "SMTP_PASSWORD": "{{secret}}" } } } ],
            "verification": { "smtp": {
                "host": "localhost", "port": self.relay.port(),
                "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
                "from": self.relay.settings().default_sender().expect("the relay allows a sender"), "to": "canary@contoso.example" } }
        });
        if let (Some(spec), serde_json::Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        spec
    }

    /// The target application as Graph holds it now.
    pub fn target_now(&self) -> StandinApp {
        self.tenant.app(self.target.object_id).unwrap_or_else(|| self.target.clone())
    }

    /// Rewrites one line of the configuration (e.g. to change the grace period).
    pub fn edit_config(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config_path)?;
        anyhow::ensure!(text.contains(from), "the configuration has no {from:?}");
        write_private(&self.config_path, text.replace(from, to).as_bytes())?;
        Ok(())
    }

    /// The stand-ins' CA certificate (PEM), for clients that take a CA bundle file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir().join("stand-in-ca.pem")
    }

    /// A kubeconfig for the Kubernetes stand-in (for `KUBECONFIG`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir().join("kubeconfig")
    }

    fn dir(&self) -> &Path {
        self.config_path.parent().unwrap_or(Path::new("."))
    }

    /// Writes the CA, the rotator's secret and a kubeconfig; returns the configuration text.
    fn write_support_files(&self, rotator_id: Uuid) -> anyhow::Result<String> {
        let ca = self.ca_path();
        std::fs::write(&ca, self.pki.ca_pem())?;
        let secret_file = self.dir().join("rotator-secret");
        write_private(&secret_file, self.rotator_secret.as_bytes())?;
        let kubeconfig = self.dir().join("kubeconfig");
        write_private(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: rotator\n  user:\n    token: stand-in\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: rotator\ncurrent-context: standin\n",
                server = self.kubernetes.url(),
                ca = base64::engine::general_purpose::STANDARD.encode(self.pki.ca_pem()),
            )
            .as_bytes(),
        )?;
        let sender = self.relay.settings().default_sender().unwrap_or("DoNotReply@example.azurecomm.net").to_string();
        Ok(format!(
            r#"azure:
  authorityHost: {authority}
  graphUrl: {graph}
  credential:
    type: clientSecret
    tenantId: {tenant_id}
    clientId: {rotator_id}
    secretFile: {secret_file}
  keyVault:
    privateHosts: [{vault_host}]   # the stand-in vault is not under vault.azure.net
tls:
  extraRootCertificates: [{ca}]
kubernetes:
  kubeconfig: {kubeconfig}
rotations:
  - name: {ROTATION}
    application:
      tenantId: {tenant_id}
      clientId: {client_id}
    lifetime: 180d
    revokeGracePeriod: 0s
    orphanGracePeriod: 10m
    targets:
      - keyVault:
          vaultUrl: {vault}
          secretName: {VAULT_SECRET}
      - kubernetesSecret:
          namespace: {SECRET_NAMESPACE}
          name: {SECRET_NAME}
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
            authority = self.graph.authority_host(),
            graph = self.graph.graph_url(),
            tenant_id = self.tenant.tenant_id,
            client_id = self.target.app_id,
            secret_file = secret_file.display(),
            ca = ca.display(),
            kubeconfig = kubeconfig.display(),
            vault = self.vault.vault_url(),
            vault_host = url::Url::parse(&self.vault.vault_url())?.host_str().unwrap_or_default(),
            port = self.relay.port(),
        ))
    }
}

/// Writes a file only its owner may read or write (0600): the scenario's files include the
/// stand-in rotator's client secret and a kubeconfig. Created so from the start, never
/// tightened afterwards.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_files_are_readable_by_their_owner_only() {
        let parent = tempfile::tempdir().unwrap();
        for scenario in [Scenario::start().await.unwrap(), Scenario::start_in(&parent.path().join("new")).await.unwrap()] {
            let dir = scenario.dir();
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
            for name in ["rotator.yaml", "rotator-secret", "kubeconfig"] {
                assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
            }
        }
    }
}
