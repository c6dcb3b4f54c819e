//! The configuration file of `entra-rotator run`: which applications to rotate, where
//! their secrets go, how to verify them, and how the rotator authenticates itself.
//!
//! Loading checks everything before anything runs; a bad file is reported with every
//! problem found, each naming the field, and changes nothing.
//!
//! Imports `domain`, `template`, and the defaults and settings types of the adapters and
//! alerting it parses; never operator or CLI.

pub mod duration;
mod precheck;

use crate::domain::MAX_SECRET_LIFETIME_DAYS;
use crate::template::Template;
use duration::HumanDuration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use url::Url;
use uuid::Uuid;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub azure: AzureSettings,
    #[serde(default)]
    pub tls: TlsSettings,
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
    /// Further identities a rotation may sign in as (its `identity:`), e.g. one per
    /// customer tenant; without `identity:` a rotation signs in as `azure.credential`.
    #[serde(default)]
    pub identities: Vec<IdentityConfig>,
    // Stores and verification are written `- keyVault: {...}`, not as YAML tags.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub rotations: Vec<RotationConfig>,
}

/// A named way to sign in to Entra, written like `azure.credential`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    pub name: String,
    pub credential: CredentialConfig,
}

/// Which cloud, and how the rotator itself signs in.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureSettings {
    #[serde(default = "default_authority_host")]
    pub authority_host: Url,
    #[serde(default = "default_graph_url")]
    pub graph_url: Url,
    #[serde(default)]
    pub credential: CredentialConfig,
    /// Graph calls in flight at once, shared by every rotation of the process.
    #[serde(default = "default_graph_concurrency", deserialize_with = "graph_concurrency")]
    pub max_concurrent_graph_requests: usize,
    #[serde(default)]
    pub key_vault: KeyVaultTrustSettings,
}

/// How the rotator authenticates to vaults; the administrator's, never a rotation's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyVaultTrustSettings {
    /// Host names of vaults reached through a name outside the cloud's vault domain (a
    /// private proxy, the local stand-in): their challenge need not name a parent domain.
    /// Only Key Vault's own audience is requested for them, as for every vault.
    #[serde(default)]
    pub private_hosts: Vec<String>,
}

impl KeyVaultTrustSettings {
    fn check(&self, problems: &mut Vec<String>) {
        for host in &self.private_hosts {
            let plain = url::Host::parse(host).is_ok()
                && !host.is_empty()
                && !host.contains(['/', ':', '*', ' ']);
            if !plain {
                problems.push(format!(
                    "azure.keyVault.privateHosts: {host:?} is not a host name; list bare host names such as kv-proxy.internal.example.com (no scheme, port, path or wildcard)"
                ));
            }
        }
    }
}

impl Default for AzureSettings {
    fn default() -> Self {
        Self {
            authority_host: default_authority_host(),
            graph_url: default_graph_url(),
            credential: CredentialConfig::default(),
            max_concurrent_graph_requests: default_graph_concurrency(),
            key_vault: KeyVaultTrustSettings::default(),
        }
    }
}

fn default_graph_concurrency() -> usize {
    crate::adapters::graph::DEFAULT_MAX_CONCURRENT_REQUESTS
}

/// Largest accepted `maxConcurrentGraphRequests`: more only earns throttling.
pub const MAX_GRAPH_CONCURRENCY: usize = 64;

fn graph_concurrency<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let value = usize::deserialize(deserializer)?;
    if (1..=MAX_GRAPH_CONCURRENCY).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "maxConcurrentGraphRequests is {value}; use 1 to {MAX_GRAPH_CONCURRENCY} (default {})",
            default_graph_concurrency()
        )))
    }
}

fn default_authority_host() -> Url {
    Url::parse("https://login.microsoftonline.com").expect("constant URL")
}

fn default_graph_url() -> Url {
    Url::parse("https://graph.microsoft.com").expect("constant URL")
}

/// The rotator's own identity. Secrets are never written in this file: a client secret is
/// read from an environment variable or a file.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum CredentialConfig {
    /// Azure workload identity on Kubernetes: reads AZURE_TENANT_ID, AZURE_CLIENT_ID and
    /// AZURE_FEDERATED_TOKEN_FILE unless given here.
    #[serde(rename_all = "camelCase")]
    WorkloadIdentity {
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
    },
    /// A managed identity (system-assigned, or user-assigned by client id).
    #[serde(rename_all = "camelCase")]
    ManagedIdentity { client_id: Option<String> },
    /// An app registration's client secret, read from `secretEnv` or `secretFile`.
    #[serde(rename_all = "camelCase")]
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret_env: Option<String>,
        secret_file: Option<PathBuf>,
    },
    /// The signed-in Azure CLI (`az login`), for people running it by hand.
    #[serde(rename_all = "camelCase")]
    AzureCli { tenant_id: Option<String> },
}

impl Default for CredentialConfig {
    fn default() -> Self {
        CredentialConfig::WorkloadIdentity { tenant_id: None, client_id: None, token_file: None }
    }
}

/// Extra trust for TLS-inspecting proxies and private endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM files whose certificates are trusted in addition to the system's.
    #[serde(default)]
    pub extra_root_certificates: Vec<PathBuf>,
}

/// How to reach the Kubernetes API for `kubernetesSecret` targets. By default: the
/// in-cluster service account, else `$KUBECONFIG` or `~/.kube/config`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSettings {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// One application's rotation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotationConfig {
    /// Unique per application; marks the secrets this rotation mints.
    pub name: String,
    pub application: ApplicationConfig,
    #[serde(default = "default_lifetime")]
    pub lifetime: HumanDuration,
    /// Defaults to a third of the lifetime.
    pub renew_before: Option<HumanDuration>,
    #[serde(default = "default_revoke_grace")]
    pub revoke_grace_period: HumanDuration,
    #[serde(default = "default_orphan_grace")]
    pub orphan_grace_period: HumanDuration,
    /// Revoke an older secret only once the Entra sign-in log shows it unused this long
    /// (needs AuditLog.Read.All and an Entra ID P1/P2 licence). Off when unset.
    #[serde(default)]
    pub require_unused_for: Option<HumanDuration>,
    /// Migration from hand-made secrets: remove the application's password credentials no
    /// rotation minted once the current secret has been in place `after`. Off when unset.
    #[serde(default)]
    pub retire_unmanaged: Option<RetireUnmanagedConfig>,
    pub targets: Vec<TargetConfig>,
    pub verification: VerificationConfig,
    /// The name of an entry of `identities:` to sign in as; default `azure.credential`.
    #[serde(default)]
    pub identity: Option<String>,
}

/// `retireUnmanaged: {after: 7d}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetireUnmanagedConfig {
    /// How long the current secret of ours must have been in place first.
    pub after: HumanDuration,
}

/// The shortest `retireUnmanaged.after`: consumers need time to switch to our secret.
pub const MIN_RETIRE_AFTER: HumanDuration = HumanDuration::seconds(3600);

fn default_lifetime() -> HumanDuration {
    HumanDuration::days(180)
}

fn default_revoke_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(3600))
}

fn default_orphan_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(600))
}

impl RotationConfig {
    pub fn renew_before(&self) -> HumanDuration {
        self.renew_before.unwrap_or(HumanDuration(self.lifetime.0 / 3))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub object_id: Option<String>,
}

/// Where the secret is written. Each entry names exactly one kind of store.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum TargetConfig {
    KeyVault(KeyVaultTarget),
    KubernetesSecret(KubernetesSecretTarget),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyVaultTarget {
    pub vault_url: Url,
    pub secret_name: String,
    /// Removed: read only to refuse it with a message saying where the setting went
    /// ([`VERIFY_CHALLENGE_MOVED`]), instead of serde's "unknown field".
    #[serde(default)]
    pub verify_challenge_resource: Option<bool>,
}

/// Why `verifyChallengeResource` is refused, and what to do instead.
pub const VERIFY_CHALLENGE_MOVED: &str = "verifyChallengeResource is no longer a per-target setting (whoever names a vault must not also decide which token it gets): remove it, and if this vault is reached through a private host name, list that host under azure.keyVault.privateHosts in the rotator's settings (the configuration file, or the controller's --azure-config: chart value azure.keyVault.privateHosts). See README, Upgrading";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSecretTarget {
    pub namespace: String,
    pub name: String,
    /// Secret keys and their templates; exactly one is `{{secret}}`.
    pub keys: BTreeMap<String, Template>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum VerificationConfig {
    /// Send a test mail through the SMTP relay with the new secret.
    Smtp(SmtpConfig),
    /// Buy an Exchange Online token with the new secret and prove it with AUTH XOAUTH2.
    ExchangeOnline(ExchangeOnlineConfig),
    /// No verification: old secrets are revoked after the grace period without proof.
    None,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpConfig {
    #[serde(default = "default_smtp_host")]
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub auth_mechanism: SmtpAuthMechanism,
    /// `<ACS resource>|{{clientId}}|{{tenantId}}`, its dotted form, or a custom SMTP username.
    pub username: Template,
    pub from: String,
    pub to: String,
    /// How long to keep retrying while Entra replicates a new secret.
    #[serde(default = "default_verify_budget")]
    pub retry_budget: HumanDuration,
    /// First wait between attempts; it doubles up to a minute.
    #[serde(default = "default_verify_interval")]
    pub retry_interval: HumanDuration,
    #[serde(default = "default_smtp_timeout")]
    pub timeout: HumanDuration,
    /// How a newly minted secret is proven: `deliver` (a test mail, the default) or
    /// `handshake` (no mail). Later re-checks always use the handshake.
    #[serde(default)]
    pub mode: SmtpMode,
    /// The relay resource's mail quota that test mails are paced to: `azureManaged`,
    /// `customDomain` or `{perMinute, perHour}`. Unset: `azureManaged` for
    /// smtp.azurecomm.net (the stricter of ACS's two), no pacing for other relays.
    #[serde(default)]
    pub quota: Option<MailQuotaConfig>,
}

/// Proof through Exchange Online with OAuth: a token with the new secret (client
/// credentials at `azure.authorityHost`, the app's tenant), then AUTH XOAUTH2 for `mailbox`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExchangeOnlineConfig {
    /// The mailbox the app sends as (the XOAUTH2 user).
    pub mailbox: String,
    /// The sender; defaults to the mailbox.
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    #[serde(default)]
    pub mode: SmtpMode,
    /// `smtp.office365.com` in the public cloud; a sovereign cloud has its own.
    #[serde(default = "default_exchange_host")]
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `https://outlook.office365.com/.default` in the public cloud; a sovereign cloud has
    /// its own, set with the host.
    #[serde(default = "default_exchange_scope")]
    pub scope: String,
    #[serde(default = "default_verify_budget")]
    pub retry_budget: HumanDuration,
    #[serde(default = "default_verify_interval")]
    pub retry_interval: HumanDuration,
    #[serde(default = "default_smtp_timeout")]
    pub timeout: HumanDuration,
}

impl ExchangeOnlineConfig {
    /// The sender: `from`, else the mailbox.
    pub fn sender(&self) -> &str {
        self.from.as_deref().unwrap_or(&self.mailbox)
    }
}

fn default_exchange_host() -> String {
    "smtp.office365.com".into()
}

fn default_exchange_scope() -> String {
    "https://outlook.office365.com/.default".into()
}

/// A mail quota, by the kind of ACS email domain or in figures.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MailQuotaConfig {
    Named(NamedMailQuota),
    Figures {
        #[serde(rename = "perMinute")]
        per_minute: u32,
        #[serde(rename = "perHour")]
        per_hour: u32,
    },
}

/// ACS's default quotas (Microsoft Learn, "Service limits for Azure Communication Services").
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NamedMailQuota {
    /// 5 mails a minute, 10 an hour.
    AzureManaged,
    /// 30 mails a minute, 100 an hour.
    CustomDomain,
}

/// What verifying a new secret costs and proves at the relay.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SmtpMode {
    /// A test mail (one of the resource's mail quota): proves delivery too.
    #[default]
    Deliver,
    /// AUTH, MAIL FROM and RCPT TO, then RSET: no mail sent.
    Handshake,
}

fn default_smtp_host() -> String {
    "smtp.azurecomm.net".into()
}

fn default_smtp_port() -> u16 {
    587
}

fn default_verify_budget() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}

fn default_verify_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

fn default_smtp_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587 or 25), as ACS expects.
    #[default]
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum SmtpAuthMechanism {
    /// The only mechanism ACS accepts.
    #[default]
    Login,
    Plain,
}

/// The parts of a configuration file that long-running services need (the controller,
/// the CronJob pass): how to reach Azure, not what to rotate. A full `run` file works too.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    #[serde(default)]
    pub azure: AzureSettings,
    #[serde(default)]
    pub tls: TlsSettings,
    /// Where expiry and failure notifications go (operator only).
    #[serde(default)]
    pub notifications: crate::alerting::NotificationSettings,
}

impl ServiceSettings {
    /// Reads the settings from `path`, or the defaults (public cloud, workload identity).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let settings: Self = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::Syntax { path: path.to_owned(), detail: e.to_string() })?;
        let mut problems = Vec::new();
        settings.azure.key_vault.check(&mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }
}

/// Every problem found in a file, each naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid configuration: {detail}")]
    Syntax { path: PathBuf, detail: String },
    #[error("{path} has {} problem(s); nothing was changed:\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let syntax = |e: serde_yaml::Error| ConfigError::Syntax { path: path.to_owned(), detail: e.to_string() };
        let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(syntax)?;
        let mut prechecked = precheck::precheck(document);
        let mut problems = std::mem::take(&mut prechecked.problems);
        match serde_yaml::from_value::<Config>(std::mem::take(&mut prechecked.value)) {
            Ok(config) => {
                problems.extend(config.problems().into_iter().filter(|p| !prechecked.follows_from_a_stand_in(p)));
                if problems.is_empty() {
                    return Ok(config);
                }
            }
            // Nothing else was wrong: read the text again for serde's path and line, which
            // a parsed document no longer has.
            Err(error) if problems.is_empty() => {
                return Err(syntax(serde_yaml::from_str::<Config>(text).err().unwrap_or(error)));
            }
            Err(error) => problems.push(error.to_string()),
        }
        Err(ConfigError::Invalid { path: path.to_owned(), problems })
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rotations.is_empty() {
            problems.push("rotations: list at least one application to rotate".into());
        }
        for url in [&self.azure.authority_host, &self.azure.graph_url] {
            if url.scheme() != "https" {
                problems.push(format!("azure: {url} must use https"));
            }
        }
        self.azure.key_vault.check(&mut problems);
        let mut identities = std::collections::HashSet::new();
        for (index, identity) in self.identities.iter().enumerate() {
            if identity.name.is_empty() || !identities.insert(identity.name.as_str()) {
                problems.push(format!("identities[{index}].name: {:?} is empty or used twice; give each identity its own name", identity.name));
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut applications = std::collections::HashMap::new();
        for (index, rotation) in self.rotations.iter().enumerate() {
            let at = format!("rotations[{index}] ({})", rotation.name);
            if !names.insert(rotation.name.as_str()) {
                problems.push(format!("{at}.name: used twice; each rotation needs its own name"));
            }
            let app = (rotation.application.tenant_id.to_ascii_lowercase(), rotation.application.client_id.to_ascii_lowercase());
            if let Some(first) = applications.insert(app, rotation.name.as_str()) {
                problems.push(format!(
                    "{at}.application: {} is also rotated by {first:?}; one rotation per application (two would each revoke the other's secrets)",
                    rotation.application.client_id
                ));
            }
            if let Some(identity) = rotation.identity.as_deref().filter(|name| !identities.contains(name)) {
                let known = if identities.is_empty() { "none".to_string() } else { self.identities.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ") };
                problems.push(format!(
                    "{at}.identity: {identity:?} is not one of identities: ({known}); add it there, or remove identity: to sign in as azure.credential"
                ));
            }
            rotation.check(&at, &mut problems);
            rotation.check_orphan_grace(&at, &mut problems);
        }
        problems
    }
}

impl RotationConfig {
    /// Appends every problem of this rotation to `problems`, each prefixed with `at`.
    pub(crate) fn check(&self, at: &str, problems: &mut Vec<String>) {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 253
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-./".contains(c));
        if !name_ok {
            problems.push(format!(
                "{at}.name: {:?} must be 1-253 characters of a-z, 0-9, '-', '.' and '/'",
                self.name
            ));
        }
        check_guid(&format!("{at}.application.tenantId"), &self.application.tenant_id, problems);
        check_guid(&format!("{at}.application.clientId"), &self.application.client_id, problems);
        if let Some(object_id) = &self.application.object_id {
            check_guid(&format!("{at}.application.objectId"), object_id, problems);
        }
        let max = HumanDuration::days(MAX_SECRET_LIFETIME_DAYS as u64);
        if self.lifetime > max || self.lifetime.0.is_zero() {
            // `y` is 365.25 days (humantime's year), so "2y" is half a day over the cap.
            let years = if self.lifetime.in_years() {
                format!(" ({} is {} days: a year counts 365.25 days; write 730d for the longest)", self.lifetime, self.lifetime.0.as_secs_f64() / 86_400.0)
            } else {
                String::new()
            };
            problems.push(format!(
                "{at}.lifetime: {} is outside 1s..730d; Entra client secrets live at most 2 years{years}",
                self.lifetime
            ));
        }
        if self.renew_before() >= self.lifetime {
            problems.push(format!(
                "{at}.renewBefore: {} must be shorter than lifetime {}, or every run would rotate",
                self.renew_before(),
                self.lifetime
            ));
        }
        // Grace periods are added to dates; past the secret's own lifetime they mean nothing
        // (the secret has expired by then) and huge ones would overflow the calendar.
        for (field, grace) in [("revokeGracePeriod", self.revoke_grace_period), ("orphanGracePeriod", self.orphan_grace_period)] {
            if grace > self.lifetime {
                problems.push(format!(
                    "{at}.{field}: {grace} is longer than lifetime {}; use at most the lifetime",
                    self.lifetime
                ));
            }
        }
        if let Some(window) = self.require_unused_for.filter(|window| *window < MIN_UNUSED_FOR || *window > self.lifetime) {
            problems.push(format!(
                "{at}.requireUnusedFor: {window} must be between {MIN_UNUSED_FOR} (the sign-in log shows sign-ins minutes late) and the lifetime {}",
                self.lifetime
            ));
        }
        if let Some(retire) = &self.retire_unmanaged {
            // It counts from the current secret's start; once that secret is renewed, the
            // count starts again, so a longer wait would never end.
            let longest = HumanDuration(self.lifetime.0.saturating_sub(self.renew_before().0));
            if retire.after < MIN_RETIRE_AFTER || retire.after >= longest {
                problems.push(format!(
                    "{at}.retireUnmanaged.after: {} must be at least {MIN_RETIRE_AFTER} and shorter than lifetime minus renewBefore ({longest}): it counts from when the current secret was minted, and starts again when it is renewed",
                    retire.after
                ));
            }
        }
        if self.targets.is_empty() {
            problems.push(format!("{at}.targets: name at least one store (keyVault or kubernetesSecret)"));
        }
        // The owner is recorded as a Key Vault tag, whose values hold at most 256 characters.
        let in_vault = self.targets.iter().any(|t| matches!(t, TargetConfig::KeyVault(_)));
        if in_vault && self.name.len() > 256 {
            problems.push(format!(
                "{at}.name: {} characters; a rotation with a keyVault target needs a name of at most 256 (it is recorded as a Key Vault tag)",
                self.name.len()
            ));
        }
        for (index, target) in self.targets.iter().enumerate() {
            target.check(&format!("{at}.targets[{index}]"), problems);
        }
        match &self.verification {
            VerificationConfig::Smtp(smtp) => smtp.check(&format!("{at}.verification.smtp"), problems),
            VerificationConfig::ExchangeOnline(exchange) => {
                let at = format!("{at}.verification.exchangeOnline");
                exchange.retry_budget.check_range(
                    &format!("{at}.retryBudget"),
                    HumanDuration::seconds(0),
                    MAX_RETRY_BUDGET,
                    "Entra replicates a new secret within minutes; a longer budget only holds the rotation",
                    problems,
                );
                if !exchange.scope.ends_with("/.default") {
                    problems.push(format!(
                        "{at}.scope: {:?} must end in /.default (client credentials ask for a resource's application permissions), e.g. https://outlook.office365.com/.default",
                        exchange.scope
                    ));
                }
            }
            VerificationConfig::None => {}
        }
    }
}

impl RotationConfig {
    /// Runs from a file have no Lease: a secret another run is still verifying must not
    /// look like an orphan to this one.
    fn check_orphan_grace(&self, at: &str, problems: &mut Vec<String>) {
        let (field, budget) = match &self.verification {
            VerificationConfig::Smtp(smtp) => ("smtp", smtp.retry_budget),
            VerificationConfig::ExchangeOnline(exchange) => ("exchangeOnline", exchange.retry_budget),
            VerificationConfig::None => return,
        };
        // 0s says runs never overlap (a CronJob with concurrencyPolicy Forbid, a timer).
        let grace = self.orphan_grace_period;
        if !grace.0.is_zero() && grace <= budget {
            problems.push(format!(
                "{at}.orphanGracePeriod: {} must be longer than verification.{field}.retryBudget {} (or 0s when runs never overlap): a secret is verified before it is stored, and another run must not take it for an orphan meanwhile",
                grace, budget
            ));
        }
    }
}

impl TargetConfig {
    fn check(&self, at: &str, problems: &mut Vec<String>) {
        match self {
            TargetConfig::KeyVault(vault) => {
                if vault.vault_url.scheme() != "https" {
                    problems.push(format!("{at}.keyVault.vaultUrl: {} must use https", vault.vault_url));
                }
                if vault.verify_challenge_resource.is_some() {
                    problems.push(format!("{at}.keyVault.verifyChallengeResource: {VERIFY_CHALLENGE_MOVED}"));
                }
                let name_ok = (1..=127).contains(&vault.secret_name.len())
                    && vault.secret_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !name_ok {
                    problems.push(format!(
                        "{at}.keyVault.secretName: {:?} must be 1-127 characters of letters, digits and '-'",
                        vault.secret_name
                    ));
                }
            }
            TargetConfig::KubernetesSecret(secret) => {
                if !is_dns_label(&secret.namespace) {
                    problems.push(format!(
                        "{at}.kubernetesSecret.namespace: {:?} is not a Kubernetes namespace name: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
                        secret.namespace
                    ));
                }
                if secret.name.len() > 253 || !secret.name.split('.').all(is_dns_label) {
                    problems.push(format!(
                        "{at}.kubernetesSecret.name: {:?} is not a Kubernetes Secret name: at most 253 characters of a-z, 0-9, '-' and '.', each part starting and ending with a letter or digit",
                        secret.name
                    ));
                }
                let exact: Vec<&String> =
                    secret.keys.iter().filter(|(_, t)| t.source().trim() == "{{secret}}").map(|(k, _)| k).collect();
                if exact.len() != 1 {
                    problems.push(format!(
                        "{at}.kubernetesSecret.keys: exactly one key must be \"{{{{secret}}}}\" (found {}), so the rotator can read the value back",
                        exact.len()
                    ));
                }
                for key in secret.keys.keys() {
                    let key_ok = !key.is_empty()
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
                    if !key_ok {
                        problems.push(format!("{at}.kubernetesSecret.keys: {key:?} is not a valid Secret key"));
                    }
                }
            }
        }
    }
}

/// The longest verification patience: Entra replication takes seconds to about two
/// minutes, and a verification holds its secret unstored (and, in a run from a file, the
/// run) while it waits; a secret that takes longer is discarded and the next run mints again.
/// The shortest `requireUnusedFor`: well above the sign-in log's usual latency.
pub const MIN_UNUSED_FOR: HumanDuration = HumanDuration::seconds(15 * 60);

pub const MAX_RETRY_BUDGET: HumanDuration = HumanDuration::seconds(3600);

impl SmtpConfig {
    fn check(&self, at: &str, problems: &mut Vec<String>) {
        let second = HumanDuration::seconds(1);
        self.retry_budget.check_range(
            &format!("{at}.retryBudget"),
            HumanDuration::seconds(0),
            MAX_RETRY_BUDGET,
            "Entra replicates a new secret within minutes; a longer budget only holds the rotation",
            problems,
        );
        self.retry_interval.check_range(
            &format!("{at}.retryInterval"),
            HumanDuration(std::time::Duration::from_millis(100)),
            HumanDuration::seconds(300),
            "the wait between attempts starts there and doubles up to a minute",
            problems,
        );
        self.timeout.check_range(
            &format!("{at}.timeout"),
            second,
            HumanDuration::seconds(300),
            "a relay that has not answered in 5 minutes will not",
            problems,
        );
        if let Some(MailQuotaConfig::Figures { per_minute, per_hour }) = self.quota
            && (per_minute == 0 || per_hour < per_minute)
        {
            problems.push(format!(
                "{at}.quota: perMinute {per_minute} and perHour {per_hour} must be at least 1 and perHour at least perMinute (ACS: azureManaged is 5 and 10, customDomain 30 and 100)"
            ));
        }
        for (field, address) in [("from", &self.from), ("to", &self.to)] {
            if address.parse::<lettre::Address>().is_err() {
                problems.push(format!("{at}.{field}: {address:?} is not an email address"));
            }
        }
        if self.username.uses("secret") {
            problems.push(format!("{at}.username: must not contain {{{{secret}}}}"));
        }
        if self.auth_mechanism == SmtpAuthMechanism::Plain && self.host.ends_with("azurecomm.net") {
            problems.push(format!(
                "{at}.authMechanism: the ACS relay accepts AUTH LOGIN only (PLAIN gets 504 5.7.4)"
            ));
        }
    }
}

/// An RFC 1123 label, as Kubernetes requires of namespace names.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn check_guid(field: &str, value: &str, problems: &mut Vec<String>) {
    if Uuid::try_parse(value).is_err() {
        problems.push(format!(
            "{field}: {value:?} is not a GUID (expected the form 00000000-0000-0000-0000-000000000000)"
        ));
    }
}

#[cfg(test)]
mod tests;
