//! The `ClientSecretRotation` custom resource (group `entra-rotator.io`, `v1alpha1`).
//!
//! Defined once here; `entra-rotator crd` prints the CustomResourceDefinition generated
//! from these types and `crds/` holds the committed copy (a test fails when they drift).
//! Validation happens at admission: OpenAPI formats and bounds, plus CEL rules for what
//! spans fields, so a bad object is refused by the API server before anything runs.

use crate::config::duration::HumanDuration;
use crate::config::{
    ApplicationConfig, ExchangeOnlineConfig, KeyVaultTarget as KeyVaultConfigTarget, KubernetesSecretTarget, MailQuotaConfig, NamedMailQuota, RotationConfig, SmtpAuthMechanism,
    SmtpConfig, TargetConfig, VerificationConfig,
};
use crate::template::Template;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Go duration as the API server's CEL `duration()` understands it, e.g. `4320h`, `90m`.
/// At most 7 digits per unit and [`DURATION_MAX_LENGTH`] characters keep every accepted
/// text inside CEL's duration range, so the bounds below decide and name the field.
const DURATION_PATTERN: &str = r"^([0-9]{1,7}(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
const DURATION_MAX_LENGTH: u32 = 32;
const GUID_PATTERN: &str = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Keeps an Entra application's client secret rotated, stored and verified.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "entra-rotator.io",
    version = "v1alpha1",
    kind = "ClientSecretRotation",
    plural = "clientsecretrotations",
    shortname = "csrot",
    namespaced,
    status = "ClientSecretRotationStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    // Strings, not dates: kubectl prints a date column as an age, and a time in the future
    // (every live secret's expiry, every next rotation) as `<invalid>`.
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Next rotation","type":"string","jsonPath":".status.renewalTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[x_kube(
    validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(self.lifetime)").message("renewBefore must be shorter than lifetime, or every reconcile would rotate"),
    validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))").message("set renewBefore or renewBeforePercentage, not both"),
    validation = Rule::new("duration(self.lifetime) <= duration('17520h')").message("lifetime must be at most 17520h (730 days): Entra client secrets live at most 2 years"),
    validation = Rule::new("duration(self.lifetime) >= duration('1h')").message("lifetime must be at least 1h"),
    validation = Rule::new("duration(self.revokeGracePeriod) <= duration(self.lifetime)").message("revokeGracePeriod must be at most the lifetime: the old secret has expired by then anyway"),
    validation = Rule::new("self.alertThresholds.all(t, duration(t) <= duration('17520h'))").message("each alertThresholds entry must be at most 17520h (730 days), the longest a client secret lives"),
    validation = Rule::new("!has(self.retireUnmanaged) || (duration(self.retireUnmanaged.after) >= duration('1h') && duration(self.retireUnmanaged.after) < duration(self.lifetime))").message("retireUnmanaged.after must be at least 1h and shorter than lifetime: it counts from when the current secret was minted")
)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretRotationSpec {
    /// The application whose client secret is rotated.
    pub application: ApplicationRef,
    /// Lifetime of each new secret (Go duration). Default 4320h (180 days); at most 17520h.
    #[serde(default = "default_lifetime")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub lifetime: String,
    /// Rotate this long before expiry (Go duration). Default: a third of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub renew_before: Option<String>,
    /// Rotate when this percentage of the lifetime remains (alternative to renewBefore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<u8>,
    /// Where the secret is written; at least one.
    #[schemars(length(min = 1, max = 8))]
    pub targets: Vec<Target>,
    /// How a new secret is proven to work before the old one is revoked.
    pub verification: Verification,
    /// How long an old secret stays valid after its successor was minted (Go duration);
    /// at most the lifetime.
    #[serde(default = "default_revoke_grace")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub revoke_grace_period: String,
    /// Workloads restarted (pod-template annotation) after a new secret is stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout: Vec<WorkloadRef>,
    /// How long a pod that mounts a target Secret as a plain volume (no subPath) may take
    /// to see a new value before it counts as holding it (Go duration, default 2m): the
    /// kubelet refreshes such volumes on its sync period (1m by default) plus the delay of
    /// its Secret cache.
    #[serde(default = "default_volume_sync_delay")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub volume_sync_delay: String,
    /// How long revocation may wait for pods and roll-outs still on the old secret before
    /// a Warning Event and a notification say so (Go duration, default 24h). The old
    /// secret stays live after that too, unless revokeWhenConsumersStuck.
    #[serde(default = "default_consumer_wait_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub consumer_wait_timeout: String,
    /// Revoke the old secret once consumerWaitTimeout has passed even though consumers may
    /// still use it (their mail stops). Default false.
    #[serde(default)]
    pub revoke_when_consumers_stuck: bool,
    /// Revoke an older secret only once the Entra sign-in log shows it has not signed in
    /// for this long (Go duration, at least 15m): the check for consumers outside the
    /// cluster, and for ACS, which signs in on every SMTP AUTH. Needs the Graph permission
    /// AuditLog.Read.All and an Entra ID P1/P2 licence; without them the check is skipped
    /// and the SignInCheck condition says why. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub require_unused_for: Option<String>,
    /// Migration from hand-made secrets (opt-in): remove the application's password
    /// credentials that no rotation minted once the current secret of ours has been
    /// verified, stored and in place for `after` (and, with requireUnusedFor, once each has
    /// not signed in for that window; with a Secret target, once every pod reading it is on
    /// the current secret). Certificates and other rotations' secrets are never touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_unmanaged: Option<RetireUnmanaged>,
    /// Stop rotating; status and alerts continue.
    #[serde(default)]
    pub suspend: bool,
    /// Warn this long before expiry (Go durations, each at most 17520h; up to 8). Default
    /// 720h, 336h, 168h, 24h.
    #[serde(default = "default_alert_thresholds")]
    #[schemars(length(max = 8), inner(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH)))]
    pub alert_thresholds: Vec<String>,
    /// The identity that signs in to Entra for this rotation (a RotatorIdentity of this
    /// namespace, or a ClusterRotatorIdentity serving it); without it, the controller's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ref: Option<super::identity::IdentityRef>,
}

fn default_lifetime() -> String {
    "4320h".into()
}

fn default_revoke_grace() -> String {
    "1h".into()
}

fn default_volume_sync_delay() -> String {
    "2m".into()
}

fn default_consumer_wait_timeout() -> String {
    "24h".into()
}

fn default_alert_thresholds() -> Vec<String> {
    ["720h", "336h", "168h", "24h"].map(String::from).to_vec()
}

/// `retireUnmanaged`: see [`ClientSecretRotationSpec::retire_unmanaged`].
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetireUnmanaged {
    /// How long the current secret of ours must have been in place (Go duration, at least
    /// 1h, shorter than lifetime), e.g. 168h.
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub after: String,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRef {
    /// Directory (tenant) id.
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub tenant_id: String,
    /// Application (client) id, `appId` in Graph.
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub client_id: String,
    /// Object id of the application; looked up by clientId when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub object_id: Option<String>,
}

/// One store; set exactly one field.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.keyVault) != has(self.secret)").message("each target sets exactly one of keyVault or secret"))]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_vault: Option<KeyVaultTarget>,
    /// A Secret in the ClientSecretRotation's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.verifyChallengeResource)").message("verifyChallengeResource was removed: whoever names a vault must not also decide which token it gets. Remove the field; for a vault behind a private host name, the rotator's administrator lists that host under azure.keyVault.privateHosts in the controller's settings (chart value azure.keyVault.privateHosts). See the README, Upgrading"))]
#[serde(rename_all = "camelCase")]
pub struct KeyVaultTarget {
    /// e.g. https://contoso-mail.vault.azure.net
    #[schemars(regex(pattern = r"^https://[^/?#]+/?$"))]
    pub vault_url: String,
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"))]
    pub secret_name: String,
    /// Removed, refused at admission and by the controller: private vault host names are
    /// the administrator's setting azure.keyVault.privateHosts in the controller's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_challenge_resource: Option<bool>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.keys.exists(k, self.keys[k].trim() == '{{secret}}')").message("one key must be exactly \"{{secret}}\" so the rotator can read the value back"))]
#[serde(rename_all = "camelCase")]
pub struct SecretTarget {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"), length(max = 253))]
    pub name: String,
    /// Secret key → template, e.g. SMTP_PASSWORD: "{{secret}}". Variables: tenantId,
    /// clientId, objectId, keyId, secret, expiresAt, smtpHost, smtpPort, smtpUsername, smtpFrom.
    pub keys: BTreeMap<String, String>,
}

/// How to verify; set exactly one field.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.smtp) ? 1 : 0) + (has(self.exchangeOnline) ? 1 : 0) + ((has(self.disabled) && self.disabled) ? 1 : 0) == 1").message("set verification.smtp, or verification.exchangeOnline, or verification.disabled: true to revoke without proof"))]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpVerification>,
    /// Exchange Online with OAuth: a token bought with the new secret, then AUTH XOAUTH2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_online: Option<ExchangeOnlineVerification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

impl Verification {
    /// Whether new secrets are proven at a relay.
    pub fn enabled(&self) -> bool {
        self.smtp.is_some() || self.exchange_online.is_some()
    }

    /// The relay that receives the credential (the secret, or a token bought with it).
    pub fn relay(&self) -> Option<(&str, u16)> {
        match (&self.smtp, &self.exchange_online) {
            (Some(smtp), _) => Some((smtp.host.as_str(), smtp.port)),
            (None, Some(exchange)) => Some((exchange.host.as_str(), exchange.port)),
            (None, None) => None,
        }
    }
}

/// Proof through Exchange Online: client credentials with the new secret for `scope` (at
/// the controller's azure.authorityHost, the app's tenant), then AUTH XOAUTH2 as `mailbox`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("duration(self.retryBudget) <= duration('1h')").message("retryBudget must be at most 1h: Entra replicates a new secret within minutes")
)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeOnlineVerification {
    /// The mailbox the app sends as (the XOAUTH2 user).
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub mailbox: String,
    /// The sender; defaults to the mailbox (another address needs SendAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub from: Option<String>,
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub to: String,
    #[serde(default)]
    pub mode: SmtpMode,
    /// smtp.office365.com in the public cloud; a sovereign cloud has its own.
    #[serde(default = "default_exchange_host")]
    pub host: String,
    #[serde(default = "default_smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// https://outlook.office365.com/.default in the public cloud; a sovereign cloud has its own.
    #[serde(default = "default_exchange_scope")]
    #[schemars(regex(pattern = r"^\S+/\.default$"))]
    pub scope: String,
    /// How long to retry while Entra replicates a new secret (Go duration, default 5m, at most 1h).
    #[serde(default = "default_retry_budget")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub retry_budget: String,
}

fn default_exchange_host() -> String {
    "smtp.office365.com".into()
}

fn default_exchange_scope() -> String {
    "https://outlook.office365.com/.default".into()
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.authMechanism != 'PLAIN' || !self.host.endsWith('azurecomm.net')").message("the ACS relay accepts AUTH LOGIN only (PLAIN gets 504 5.7.4)"),
    validation = Rule::new("duration(self.retryBudget) <= duration('1h')").message("retryBudget must be at most 1h: Entra replicates a new secret within minutes")
)]
#[serde(rename_all = "camelCase")]
pub struct SmtpVerification {
    #[serde(default = "default_smtp_host")]
    pub host: String,
    #[serde(default = "default_smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// StartTls (587, 25) or Implicit (465).
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub auth_mechanism: SmtpAuth,
    /// `<ACS resource>|{{clientId}}|{{tenantId}}`, the dotted form, or a custom SMTP username.
    #[schemars(length(min = 1))]
    pub username: String,
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub from: String,
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub to: String,
    /// How long to retry while Entra replicates a new secret (Go duration, default 5m, at
    /// most 1h). The secret stays unstored meanwhile; one that still fails is discarded and
    /// the next reconcile mints again. The controller does not hold a worker for the whole
    /// budget: a verification still waiting after a short while continues in the background
    /// and the object is looked at again.
    #[serde(default = "default_retry_budget")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub retry_budget: String,
    /// How a newly minted secret is proven: Deliver (a test mail, the default) or
    /// Handshake (AUTH, MAIL FROM, RCPT TO, then RSET: no mail). Re-checks of a stored
    /// secret always use the handshake.
    #[serde(default)]
    pub mode: SmtpMode,
    /// The mail quota of the relay's resource that test mails are paced to, shared by every
    /// rotation of the controller: a preset (AzureManaged: 5 a minute and 10 an hour;
    /// CustomDomain: 30 and 100, Microsoft Learn, Communication Services service limits) or
    /// perMinute and perHour. Default: AzureManaged on smtp.azurecomm.net, none elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<SmtpQuota>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.preset) != (has(self.perMinute) && has(self.perHour))").message("quota: give a preset (AzureManaged or CustomDomain), or both perMinute and perHour"))]
#[serde(rename_all = "camelCase")]
pub struct SmtpQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<QuotaPreset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_hour: Option<u32>,
}

#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaPreset {
    AzureManaged,
    CustomDomain,
}

#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpMode {
    #[default]
    Deliver,
    Handshake,
}

fn default_smtp_host() -> String {
    "smtp.azurecomm.net".into()
}

fn default_smtp_port() -> u16 {
    587
}

fn default_retry_budget() -> String {
    "5m".into()
}

#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpTls {
    #[default]
    StartTls,
    Implicit,
}

#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum SmtpAuth {
    #[default]
    Login,
    Plain,
}

/// A workload to restart after a new secret is stored; set name or selector.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.selector)").message("set exactly one of name or selector"))]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// What the controller last saw and did. Never holds a secret value.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretRotationStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// keyId of the secret the stores hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_id: Option<String>,
    /// keyId of the secret last proven to work through the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_key_id: Option<String>,
    /// When the current secret expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the next rotation is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// Older secrets of ours awaiting revocation, and from when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_revocation: Vec<String>,
    /// The same older secrets with their expiry (up to 8), for `entra-rotator status`.
    // Written as [] when empty: status is merge-patched, and an absent field stays.
    #[serde(default)]
    pub old_secrets: Vec<OldSecretStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    #[serde(default)]
    pub failed_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The smallest alert threshold already notified for `notifiedKeyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_threshold: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_key_id: Option<String>,
    /// Whether the current run of failures has been notified.
    #[serde(default)]
    pub failure_notified: bool,
    /// The pods reading the target Secrets and the roll-outs, as last looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumersStatus>,
    /// The last `entra-rotator.io/rotate-requested-at` annotation seen, and what became of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_request: Option<RotateRequestStatus>,
    /// `retireUnmanaged`: the application's password credentials no rotation minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged: Option<UnmanagedStatus>,
}

/// An older secret of ours, still live.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OldSecretStatus {
    pub key_id: String,
    /// When it expires (RFC 3339), as Graph lists it.
    #[serde(default)]
    pub expires: Option<String>,
}

/// What `retireUnmanaged` found and did (keyIds and displayNames, never values).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedStatus {
    /// From when they are removed (RFC 3339): `after` past the start of the current secret.
    // Written as null when unset: status is merge-patched, and an absent field stays.
    #[serde(default)]
    pub retire_from: Option<String>,
    /// Up to 20 still on the application, with what holds each past `retireFrom`.
    #[serde(default)]
    pub secrets: Vec<UnmanagedSecretStatus>,
    /// The last 20 removed, newest first.
    #[serde(default)]
    pub retired: Vec<RetiredSecretStatus>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedSecretStatus {
    pub key_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// When it expires (RFC 3339).
    #[serde(default)]
    pub expires: Option<String>,
    /// Why it stays although due, e.g. `OldSecretStillSignsIn: …`.
    #[serde(default)]
    pub held_by: Option<String>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetiredSecretStatus {
    pub key_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// When it was removed (RFC 3339).
    pub retired_at: String,
}

/// A rotation asked for with the `entra-rotator.io/rotate-requested-at` annotation
/// (`entra-rotator rotate`). Each annotation value is carried out once.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotateRequestStatus {
    /// The annotation's value.
    pub requested_at: String,
    /// `Pending`, `Done`, or `Invalid` (the value is not an RFC 3339 time).
    pub state: String,
    /// The keyId that was current when the request was accepted: it is replaced once.
    #[serde(default)]
    pub replaces_key_id: Option<String>,
    /// The keyId that answers the request.
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Asked with `entra-rotator.io/rotate-compromised: "true"`: every other secret of ours
    /// is revoked at once.
    #[serde(default)]
    pub compromised: bool,
}

/// Who reads the target Secrets, and whether each holds the current value.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersStatus {
    /// The keyId the consumers should hold.
    pub key_id: String,
    /// When entra-rotator last wrote the Secrets (from their managedFields).
    // Written as null when unset: status is merge-patched, and an absent field stays.
    #[serde(default)]
    pub secret_written_time: Option<String>,
    /// How many consumers may still use an older secret.
    #[serde(default)]
    pub on_old_secret: u32,
    /// Since when revocation has waited for them (kept across controller restarts).
    #[serde(default)]
    pub waiting_since: Option<String>,
    /// Whether the wait beyond consumerWaitTimeout has been notified.
    #[serde(default)]
    pub wait_notified: bool,
    /// Up to 20 pods, those on the old secret first.
    #[serde(default)]
    pub pods: Vec<PodConsumerStatus>,
    #[serde(default)]
    pub workloads: Vec<WorkloadRolloutStatus>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodConsumerStatus {
    pub name: String,
    /// How it reads the Secret: env, subPath, volume.
    pub reads: Vec<String>,
    pub holds_new_value: bool,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRolloutStatus {
    /// e.g. `Deployment dify/dify-api`.
    pub name: String,
    pub rolled_out: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The CustomResourceDefinition as YAML, as committed under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_yaml::to_string(&ClientSecretRotation::crd()).expect("a CRD always serializes");
    format!("# Generated by `entra-rotator crd` from src/operator/crd.rs; do not edit.\n---\n{crd}")
}

impl ClientSecretRotation {
    /// The engine's name for this rotation; also the marker in minted secrets' displayName.
    pub fn rotation_name(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Translates the spec into the same settings the configuration file produces, and
    /// checks them the same way (the API server's CEL rules run first; this catches what
    /// CEL cannot, e.g. unknown template variables, and objects from clusters without CEL).
    pub fn to_rotation_config(&self) -> Result<RotationConfig, Vec<String>> {
        let spec = &self.spec;
        let namespace = self.metadata.namespace.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let lifetime = duration("lifetime", &spec.lifetime, &mut problems);
        let renew_before = match (&spec.renew_before, spec.renew_before_percentage) {
            (Some(text), _) => Some(duration("renewBefore", text, &mut problems)),
            // Checked: a lifetime past the calendar is refused below, not a panic here.
            (None, Some(percent)) => {
                Some(HumanDuration(lifetime.0.checked_mul(u32::from(percent)).map_or(lifetime.0, |d| d / 100)))
            }
            (None, None) => None,
        };
        let revoke_grace_period = duration("revokeGracePeriod", &spec.revoke_grace_period, &mut problems);
        alert_thresholds(&spec.alert_thresholds, &mut problems);
        let targets = spec
            .targets
            .iter()
            .enumerate()
            .filter_map(|(index, target)| match (&target.key_vault, &target.secret) {
                (Some(vault), _) => Some(TargetConfig::KeyVault(KeyVaultConfigTarget {
                    vault_url: url::Url::parse(&vault.vault_url).ok()?,
                    secret_name: vault.secret_name.clone(),
                    verify_challenge_resource: vault.verify_challenge_resource,
                })),
                (None, Some(secret)) => Some(TargetConfig::KubernetesSecret(KubernetesSecretTarget {
                    namespace: namespace.clone(),
                    name: secret.name.clone(),
                    keys: secret
                        .keys
                        .iter()
                        .map(|(key, text)| (key.clone(), template(&format!("spec.targets[{index}].secret.keys.{key}"), text, &mut problems)))
                        .collect(),
                })),
                (None, None) => None,
            })
            .collect();
        let verification = match &spec.verification.smtp {
            Some(smtp) => VerificationConfig::Smtp(SmtpConfig {
                host: smtp.host.clone(),
                port: smtp.port,
                tls: match smtp.tls {
                    SmtpTls::StartTls => crate::config::SmtpTls::StartTls,
                    SmtpTls::Implicit => crate::config::SmtpTls::Implicit,
                },
                auth_mechanism: match smtp.auth_mechanism {
                    SmtpAuth::Login => SmtpAuthMechanism::Login,
                    SmtpAuth::Plain => SmtpAuthMechanism::Plain,
                },
                username: template("spec.verification.smtp.username", &smtp.username, &mut problems),
                from: smtp.from.clone(),
                to: smtp.to.clone(),
                retry_budget: duration("verification.smtp.retryBudget", &smtp.retry_budget, &mut problems),
                mode: match smtp.mode {
                    SmtpMode::Deliver => crate::config::SmtpMode::Deliver,
                    SmtpMode::Handshake => crate::config::SmtpMode::Handshake,
                },
                quota: smtp.quota.map(|quota| match (quota.preset, quota.per_minute, quota.per_hour) {
                    (Some(QuotaPreset::AzureManaged), _, _) => MailQuotaConfig::Named(NamedMailQuota::AzureManaged),
                    (Some(QuotaPreset::CustomDomain), _, _) => MailQuotaConfig::Named(NamedMailQuota::CustomDomain),
                    // Admission requires both figures without a preset; a missing one is 0,
                    // which the configuration check refuses with its field.
                    (None, per_minute, per_hour) => MailQuotaConfig::Figures { per_minute: per_minute.unwrap_or(0), per_hour: per_hour.unwrap_or(0) },
                }),
                retry_interval: HumanDuration(std::time::Duration::from_secs(5)),
                timeout: HumanDuration(std::time::Duration::from_secs(30)),
            }),
            None => match &spec.verification.exchange_online {
                Some(exchange) => VerificationConfig::ExchangeOnline(ExchangeOnlineConfig {
                    mailbox: exchange.mailbox.clone(),
                    from: exchange.from.clone(),
                    to: exchange.to.clone(),
                    mode: match exchange.mode {
                        SmtpMode::Deliver => crate::config::SmtpMode::Deliver,
                        SmtpMode::Handshake => crate::config::SmtpMode::Handshake,
                    },
                    host: exchange.host.clone(),
                    port: exchange.port,
                    scope: exchange.scope.clone(),
                    retry_budget: duration("verification.exchangeOnline.retryBudget", &exchange.retry_budget, &mut problems),
                    retry_interval: HumanDuration(std::time::Duration::from_secs(5)),
                    timeout: HumanDuration(std::time::Duration::from_secs(30)),
                }),
                None => VerificationConfig::None,
            },
        };
        let config = RotationConfig {
            name: self.rotation_name(),
            application: ApplicationConfig {
                tenant_id: spec.application.tenant_id.clone(),
                client_id: spec.application.client_id.clone(),
                object_id: spec.application.object_id.clone(),
            },
            lifetime,
            renew_before,
            revoke_grace_period,
            // The controller's Lease (or a CronJob's concurrencyPolicy: Forbid) keeps a
            // second runner away; the wait covers a leader that lost its Lease mid-rotation.
            // The controller overrides it with --orphan-grace-period.
            orphan_grace_period: HumanDuration(DEFAULT_ORPHAN_GRACE),
            require_unused_for: spec.require_unused_for.as_ref().map(|window| duration("requireUnusedFor", window, &mut problems)),
            retire_unmanaged: spec.retire_unmanaged.as_ref().map(|retire| crate::config::RetireUnmanagedConfig {
                after: duration("retireUnmanaged.after", &retire.after, &mut problems),
            }),
            targets,
            verification,
            // spec.identityRef is resolved by the reconcile, against the cluster.
            identity: None,
        };
        config.check("spec", &mut problems);
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }
}

impl ClientSecretRotation {
    /// The consumer rules of the spec, each duration checked.
    pub fn consumer_rules(&self) -> Result<super::consumers::ConsumerRules, Vec<String>> {
        let mut problems = Vec::new();
        let volume_sync_delay = duration("volumeSyncDelay", &self.spec.volume_sync_delay, &mut problems);
        let wait_timeout = duration("consumerWaitTimeout", &self.spec.consumer_wait_timeout, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(super::consumers::ConsumerRules {
            volume_sync_delay: volume_sync_delay.chrono(),
            wait_timeout: wait_timeout.chrono(),
            revoke_when_stuck: self.spec.revoke_when_consumers_stuck,
        })
    }

    /// The names of the Secrets the rotation writes (all in its namespace).
    pub fn secret_names(&self) -> Vec<String> {
        self.spec.targets.iter().filter_map(|t| t.secret.as_ref().map(|s| s.name.clone())).collect()
    }
}

/// How long an unstored secret of ours is left alone in operator mode: comfortably more
/// than the Lease duration (15 s), after which a former leader has stopped.
pub const DEFAULT_ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn duration(field: &str, text: &str, problems: &mut Vec<String>) -> HumanDuration {
    HumanDuration::parse(text).unwrap_or_else(|e| {
        problems.push(format!("spec.{field}: {e}"));
        HumanDuration::days(1)
    })
}

/// The alert thresholds of a spec, each checked: parsed and at most the longest lifetime.
pub fn alert_thresholds(texts: &[String], problems: &mut Vec<String>) -> Vec<chrono::Duration> {
    texts
        .iter()
        .enumerate()
        .filter_map(|(index, text)| {
            let field = format!("spec.alertThresholds[{index}]");
            let threshold = HumanDuration::parse(text).map_err(|e| problems.push(format!("{field}: {e}"))).ok()?;
            let before = problems.len();
            let (min, max) = (HumanDuration::seconds(0), crate::config::duration::LONGEST);
            threshold.check_range(&field, min, max, "a client secret lives at most 730 days", problems);
            (problems.len() == before).then(|| threshold.chrono())
        })
        .collect()
}

fn template(field: &str, text: &str, problems: &mut Vec<String>) -> Template {
    Template::parse(text).unwrap_or_else(|e| {
        problems.push(format!("{field}: {e}"));
        Template::parse("").expect("the empty template parses")
    })
}
