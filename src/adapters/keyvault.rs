//! The Azure Key Vault secret store: writes each new client secret as a new version of one
//! Key Vault secret and reads the latest version back.
//!
//! Every version carries what Key Vault's own tooling looks at: `exp` = the credential's
//! `endDateTime` (so Event Grid's `SecretNearExpiry` fires even if the rotator stops),
//! `nbf` = its `startDateTime`, and tags naming the application and the Entra `keyId`.
//! The `keyId` tag is how the rotator later recognises which credential the value is.
//!
//! The client is the official `azure_security_keyvault_secrets` `SecretClient`; it
//! discovers the token scope from Key Vault's `WWW-Authenticate` challenge (we only ever
//! let it ask for Key Vault's own audience: [`VaultTrust`]) and retries
//! 408/429/5xx and connection faults itself (see `ClientOptions::retry`). A client learns
//! the challenge on its first request, so long-running processes share one client per vault
//! ([`KeyVaultClients`]): otherwise every store built afresh (each reconcile builds its
//! stores) would pay an unauthenticated round trip first.

use crate::domain::{ExposeSecret, SecretString, SecretToStore, StoredLabels, StoredSecret};
use super::error_chain::find_cause;
use super::network::NetworkFailure;
use crate::engine::ports::{SecretStore, StoreError, StoreErrorKind};
use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::ClientOptions;
use azure_core::time::OffsetDateTime;
use azure_security_keyvault_secrets::models::{
    KeyVaultError, SecretAttributes, SetSecretParameters,
};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The `contentType` of every version we write. The value is a plain ASCII string, so we
/// give its honest media type: tools that look at `contentType` (the portal, the CSI
/// driver, External Secrets) then show or copy it verbatim. What the value *is* goes in
/// the tags, which, unlike `contentType`, can be filtered on.
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Tag names written on every version.
pub const TAG_MANAGED_BY: &str = "managed-by";
pub const TAG_APP_ID: &str = "appId";
pub const TAG_TENANT_ID: &str = "tenantId";
pub const TAG_KEY_ID: &str = "keyId";
/// The rotation that owns the secret (`namespace/name` for a ClientSecretRotation).
pub const TAG_ROTATION: &str = "rotation";
pub const MANAGED_BY: &str = "entra-rotator";

/// Where the secret lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVaultSettings {
    /// e.g. `https://my-vault.vault.azure.net`.
    pub vault_url: String,
    /// The secret's name: 1 to 127 letters, digits and dashes.
    pub secret_name: String,
}

impl KeyVaultSettings {
    pub fn new(vault_url: impl Into<String>, secret_name: impl Into<String>) -> Self {
        Self {
            vault_url: vault_url.into(),
            secret_name: secret_name.into(),
        }
    }
}

/// What the rotator authenticates to when it talks to a vault. It comes from the
/// administrator's settings, never from a rotation: whoever names a vault must not also
/// choose which token it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultTrust {
    /// The only audience a vault token is requested for, e.g. `https://vault.azure.net`.
    pub audience: String,
    /// Lower-case host names of vaults reached through a name outside the cloud's vault
    /// domain (a private proxy, the local stand-in). For these the SDK's check that the
    /// challenge names a parent domain of the host is skipped; the audience still is not.
    pub private_hosts: BTreeSet<String>,
}

impl VaultTrust {
    /// Key Vault's audience in the cloud `authority_host` signs in to, and no private hosts.
    pub fn for_authority(authority_host: &url::Url) -> Self {
        Self {
            audience: key_vault_audience(authority_host).to_string(),
            private_hosts: BTreeSet::new(),
        }
    }

    /// The same, trusting `hosts` as private vault host names.
    pub fn with_private_hosts<'a>(mut self, hosts: impl IntoIterator<Item = &'a str>) -> Self {
        self.private_hosts = hosts.into_iter().map(str::to_ascii_lowercase).collect();
        self
    }

    fn verifies_challenge_of(&self, vault_url: &str) -> bool {
        let host = url::Url::parse(vault_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_ascii_lowercase));
        !host.is_some_and(|host| self.private_hosts.contains(&host))
    }
}

/// Key Vault's resource in the cloud whose Entra authority is `authority_host`. An
/// authority we do not know (a proxy, the local stand-in) gets the public cloud's.
pub fn key_vault_audience(authority_host: &url::Url) -> &'static str {
    match authority_host.host_str().map(str::to_ascii_lowercase).as_deref() {
        Some("login.chinacloudapi.cn" | "login.partner.microsoftonline.cn") => "https://vault.azure.cn",
        Some("login.microsoftonline.us") => "https://vault.usgovcloudapi.net",
        _ => "https://vault.azure.net",
    }
}

/// A vault's challenge asked for a token that is not for Key Vault.
#[derive(Debug, thiserror::Error)]
#[error(
    "{vault_url} asked for a token for scope {scope:?}, which is not Key Vault's ({audience}/.default); the rotator sends vaults Key Vault tokens only and sent none. Check that vaultUrl is a Key Vault"
)]
pub struct ForeignAudience {
    vault_url: String,
    scope: String,
    audience: String,
}

/// Hands the rotator's credential only requests for Key Vault's audience.
///
/// The SDK asks the credential for whatever scope the answering host's `WWW-Authenticate`
/// challenge names (azure_security_keyvault_secrets 1.0, `authorizer.rs`), and sends the
/// token to that host. Without this guard a host named as a vault could ask for, and
/// receive, the rotator's Graph token. The SDK has no option to pin the audience, hence
/// this wrapper.
#[derive(Debug)]
struct VaultAudienceOnly {
    inner: Arc<dyn TokenCredential>,
    vault_url: String,
    audience: String,
}

#[async_trait]
impl TokenCredential for VaultAudienceOnly {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let allowed = format!("{}/.default", self.audience);
        if let Some(foreign) = scopes.iter().find(|scope| **scope != allowed) {
            return Err(azure_core::Error::new(
                ErrorKind::Other,
                ForeignAudience {
                    vault_url: self.vault_url.clone(),
                    scope: (*foreign).to_string(),
                    audience: self.audience.clone(),
                },
            ));
        }
        self.inner.get_token(scopes, options).await
    }
}

/// A Key Vault store that cannot be set up as configured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyVaultSetupError {
    #[error(
        "vaultUrl {url:?} is not usable: {detail}. Use the vault's URI as the portal shows it, e.g. https://my-vault.vault.azure.net"
    )]
    InvalidVaultUrl { url: String, detail: String },
    #[error(
        "Key Vault secret name {name:?} is invalid: use 1 to 127 letters, digits and dashes (Key Vault allows nothing else)"
    )]
    InvalidSecretName { name: String },
}

/// Checks a secret name against Key Vault's rule `^[0-9a-zA-Z-]{1,127}$`.
pub fn validate_secret_name(name: &str) -> Result<(), KeyVaultSetupError> {
    let valid = (1..=127).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(KeyVaultSetupError::InvalidSecretName {
            name: name.to_string(),
        })
    }
}

/// A vault URL as stores and listings name the vault (no trailing slash); `None` when it
/// is not usable.
pub fn normalized_vault_url(raw: &str) -> Option<String> {
    validate_vault_url(raw).ok()
}

fn validate_vault_url(raw: &str) -> Result<String, KeyVaultSetupError> {
    let invalid = |detail: &str| KeyVaultSetupError::InvalidVaultUrl {
        url: raw.to_string(),
        detail: detail.to_string(),
    };
    let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid("Key Vault is only reachable over https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host name"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(invalid("it must not have a path or query"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn secret_client(
    vault_url: &str,
    trust: &VaultTrust,
    credential: Arc<dyn TokenCredential>,
    client_options: ClientOptions,
) -> Result<Arc<SecretClient>, KeyVaultSetupError> {
    let options = SecretClientOptions {
        client_options,
        verify_challenge_resource: Some(trust.verifies_challenge_of(vault_url)),
        ..Default::default()
    };
    let credential = Arc::new(VaultAudienceOnly {
        inner: credential,
        vault_url: vault_url.to_string(),
        audience: trust.audience.clone(),
    });
    SecretClient::new(vault_url, credential, Some(options))
        .map(Arc::new)
        .map_err(|e| KeyVaultSetupError::InvalidVaultUrl {
            url: vault_url.to_string(),
            detail: e.to_string(),
        })
}

/// One `SecretClient` per vault, shared by every store of that vault that a process builds.
pub struct KeyVaultClients {
    trust: VaultTrust,
    clients: Mutex<HashMap<String, Arc<SecretClient>>>,
}

impl KeyVaultClients {
    pub fn new(trust: VaultTrust) -> Self {
        Self {
            trust,
            clients: Mutex::default(),
        }
    }

    /// A store for `settings`, on the vault's shared client (created with `credential` and
    /// `client_options()` the first time the vault is seen).
    pub fn store(
        &self,
        settings: KeyVaultSettings,
        credential: Arc<dyn TokenCredential>,
        client_options: impl FnOnce() -> ClientOptions,
    ) -> Result<KeyVaultStore, KeyVaultSetupError> {
        let vault_url = validate_vault_url(&settings.vault_url)?;
        validate_secret_name(&settings.secret_name)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let client = match clients.get(&vault_url) {
            Some(client) => client.clone(),
            None => {
                let client = secret_client(&vault_url, &self.trust, credential, client_options())?;
                clients.insert(vault_url.clone(), client.clone());
                client
            }
        };
        Ok(KeyVaultStore {
            client,
            vault_url,
            secret_name: settings.secret_name,
        })
    }
}

/// What a listing of a vault says of one secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    /// The latest version is enabled and carries these labels (tags).
    Labels(StoredLabels),
    /// The latest version is disabled: only a read says what that means for the rotation.
    Disabled,
}

/// A vault refused or failed a listing; reading each secret on its own still may work.
#[derive(Debug, thiserror::Error)]
#[error("Key Vault {vault_url} did not list its secrets ({detail}); its secrets are read one at a time instead. {advice}")]
pub struct ListingFailed {
    pub vault_url: String,
    pub detail: String,
    pub advice: &'static str,
}

/// The most secrets a page of Key Vault's listing holds.
pub const LIST_PAGE_SIZE: i32 = 25;

impl KeyVaultClients {
    /// The secrets of the vault at `vault_url` with the tags of their latest version
    /// (`GET /secrets`, [`LIST_PAGE_SIZE`] per page, following `nextLink`; a listing never
    /// carries values), reading at most `max_pages` pages: a listing that would cost more
    /// requests than the reads it replaces stops there and says it is incomplete. On the
    /// vault's shared client (created as [`store`](Self::store) does).
    pub async fn list(
        &self,
        vault_url: &str,
        max_pages: usize,
        credential: Arc<dyn TokenCredential>,
        client_options: impl FnOnce() -> ClientOptions,
    ) -> Result<Listing, ListingFailed> {
        use futures::TryStreamExt;
        let failed = |detail: String, advice| ListingFailed { vault_url: vault_url.to_string(), detail, advice };
        let setup = |e: KeyVaultSetupError| failed(e.to_string(), "");
        let vault_url = validate_vault_url(vault_url).map_err(setup)?;
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match clients.get(&vault_url) {
                Some(client) => client.clone(),
                None => {
                    let client = secret_client(&vault_url, &self.trust, credential, client_options()).map_err(setup)?;
                    clients.insert(vault_url.clone(), client.clone());
                    client
                }
            }
        };
        let refused = |e: azure_core::Error| {
            let forbidden = matches!(e.kind(), ErrorKind::HttpResponse { status, .. } if u16::from(*status) == 403);
            let advice = if forbidden {
                "To save those requests, let the rotator list secrets: with Azure RBAC \"Key Vault Secrets User\" or \"Officer\" (secrets/readMetadata), with access policies the secret permission list"
            } else {
                ""
            };
            failed(error_chain(&e), advice)
        };
        let options = azure_security_keyvault_secrets::models::SecretClientListSecretPropertiesOptions {
            maxresults: Some(LIST_PAGE_SIZE),
            ..Default::default()
        };
        let mut pages = client.list_secret_properties(Some(options)).map_err(refused)?.into_pages();
        let mut listing = Listing { secrets: HashMap::new(), complete: false };
        for _ in 0..max_pages {
            let Some(page) = pages.try_next().await.map_err(refused)? else {
                listing.complete = true;
                break;
            };
            let page = page.into_model().map_err(refused)?;
            for properties in page.value {
                let Some(name) = properties.id.as_deref().and_then(|id| id.trim_end_matches('/').rsplit('/').next()) else {
                    continue;
                };
                let enabled = properties.attributes.as_ref().and_then(|a| a.enabled).unwrap_or(true);
                let entry = if enabled { Listed::Labels(labels_from(properties.tags.as_ref())) } else { Listed::Disabled };
                listing.secrets.insert(name.to_string(), entry);
            }
            if page.next_link.is_none() {
                listing.complete = true;
                break;
            }
        }
        Ok(listing)
    }
}

/// What a listing found.
#[derive(Debug, Default)]
pub struct Listing {
    pub secrets: HashMap<String, Listed>,
    /// Every page was read: a name not listed has no (undeleted) secret.
    pub complete: bool,
}

/// The labels we write as tags, read back.
fn labels_from(tags: Option<&HashMap<String, String>>) -> StoredLabels {
    let tag = |name: &str| tags.and_then(|tags| tags.get(name));
    StoredLabels {
        key_id: tag(TAG_KEY_ID).and_then(|raw| Uuid::parse_str(raw).ok()),
        rotation: tag(TAG_ROTATION).cloned(),
        app_id: tag(TAG_APP_ID).and_then(|raw| Uuid::parse_str(raw).ok()),
    }
}

/// One Key Vault secret as a [`SecretStore`].
pub struct KeyVaultStore {
    client: Arc<SecretClient>,
    vault_url: String,
    secret_name: String,
}

impl fmt::Debug for KeyVaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultStore")
            .field("vault_url", &self.vault_url)
            .field("secret_name", &self.secret_name)
            .finish_non_exhaustive()
    }
}

impl KeyVaultStore {
    /// The vault's URL as the store uses it (no trailing slash).
    pub fn vault_url(&self) -> &str {
        &self.vault_url
    }

    pub fn secret_name(&self) -> &str {
        &self.secret_name
    }

    /// `credential` is the rotator's own identity; `client_options` come from
    /// [`crate::adapters::http::azure_client_options`] so extra trusted roots apply
    /// (adjust `client_options.retry` to change the SDK's retries).
    pub fn new(
        settings: KeyVaultSettings,
        trust: &VaultTrust,
        credential: Arc<dyn TokenCredential>,
        client_options: ClientOptions,
    ) -> Result<Self, KeyVaultSetupError> {
        let vault_url = validate_vault_url(&settings.vault_url)?;
        validate_secret_name(&settings.secret_name)?;
        let client = secret_client(&vault_url, trust, credential, client_options)?;
        Ok(Self {
            client,
            vault_url,
            secret_name: settings.secret_name,
        })
    }

    /// The vault's name for `az` commands: the first label of its host name.
    fn vault_name(&self) -> String {
        url::Url::parse(&self.vault_url)
            .ok()
            .and_then(|url| match url.host() {
                Some(url::Host::Domain(host)) => host.split('.').next().map(str::to_string),
                _ => None,
            })
            .unwrap_or_else(|| "<vault name>".to_string())
    }

    fn error(&self, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError {
            store: self.describe(),
            kind,
            message,
        }
    }

    /// Turns an SDK error into a [`StoreError`] that says what to do.
    fn map_error(&self, operation: Operation, err: &azure_core::Error) -> StoreError {
        // Named by the transport of `adapters::http`: the vault's host, or the token
        // endpoint for Key Vault's token, failed on the network.
        if let Some(failure) = find_cause::<NetworkFailure>(err) {
            let (kind, advice) = if failure.is_permanent() && failure.is_name_resolution() && failure.setting() == "vaultUrl" {
                (StoreErrorKind::NotFound, "; the vault name is part of the host name; with a private endpoint, check the private DNS zone")
            } else if failure.is_permanent() {
                (StoreErrorKind::Rejected, "")
            } else {
                (StoreErrorKind::Transient, "; will try again later")
            };
            return self.error(kind, format!("the request failed on the network: {failure}{advice}"));
        }
        // An answer our transport refused, and a challenge our guard refused, say so themselves.
        if let Some(refused) = find_cause::<crate::adapters::http::RefusedBody>(err) {
            return self.error(StoreErrorKind::Rejected, refused.to_string());
        }
        if let Some(foreign) = find_cause::<ForeignAudience>(err) {
            return self.error(StoreErrorKind::Rejected, foreign.to_string());
        }
        let (kind, message) = match err.kind() {
            ErrorKind::HttpResponse {
                status,
                raw_response,
                ..
            } => {
                let body = raw_response
                    .as_ref()
                    .and_then(|raw| serde_json::from_slice::<KeyVaultError>(raw.body()).ok())
                    .and_then(|body| body.error);
                let service = ServiceError::from_body(u16::from(*status), body);
                self.classify_response(operation, &service)
            }
            ErrorKind::Connection | ErrorKind::Io => (
                StoreErrorKind::Transient,
                format!(
                    "could not reach the vault ({}); will try again later",
                    error_chain(err)
                ),
            ),
            ErrorKind::Credential => (
                StoreErrorKind::Forbidden,
                format!(
                    "could not get a Key Vault token for the rotator ({}). Check the rotator's own identity (workload identity, managed identity, client secret or `az login`)",
                    error_chain(err)
                ),
            ),
            _ => (
                StoreErrorKind::Rejected,
                format!(
                    "the Key Vault client failed before the vault answered ({}). If this is about the challenge resource: the vaultUrl's host is not under the domain the vault authenticates for (vault.azure.net in Azure public cloud); use the vault's own URI, or, for a vault reached through a private host name you trust, ask the rotator's administrator to list that host under azure.keyVault.privateHosts",
                    error_chain(err)
                ),
            ),
        };
        self.error(kind, message)
    }

    fn classify_response(
        &self,
        operation: Operation,
        e: &ServiceError,
    ) -> (StoreErrorKind, String) {
        let name = &self.secret_name;
        let vault = self.vault_name();
        let what = e.summary();
        match (e.status, e.inner_code.as_deref()) {
            (409, Some("ObjectIsDeletedButRecoverable")) => (
                StoreErrorKind::SoftDeleted,
                format!(
                    "{what}. A deleted secret named {name} still holds the name. Recover it (`az keyvault secret recover --vault-name {vault} --name {name}`) or, if it must go, purge it (`az keyvault secret purge --vault-name {vault} --name {name}`; needs the purge permission), then run the rotation again"
                ),
            ),
            // The seconds after a delete, before the name is soft-deleted: trying again
            // shortly gets a clear answer (written, or deleted-but-recoverable).
            (409, Some("ObjectIsBeingDeleted")) => (
                StoreErrorKind::Transient,
                format!(
                    "{what}. Somebody deleted the secret {name} moments ago and the vault is still deleting it; will try again shortly (once deleted it can be recovered with `az keyvault secret recover --vault-name {vault} --name {name}`)"
                ),
            ),
            (403, Some("SecretDisabled")) => (
                StoreErrorKind::Rejected,
                format!(
                    "{what}. The latest version of {name} is disabled: enable it (`az keyvault secret set-attributes --vault-name {vault} --name {name} --enabled true`) or force a rotation to write a new, enabled version"
                ),
            ),
            (403, _) => (
                StoreErrorKind::Forbidden,
                format!(
                    "{what}. The rotator may not {verb} secrets in this vault: with Azure RBAC, assign it the \"Key Vault Secrets Officer\" role on the vault (or on this secret); with access policies, give it the secret permissions get and set",
                    verb = operation.verb()
                ),
            ),
            (401, _) => (
                StoreErrorKind::Forbidden,
                format!(
                    "{what}. The vault refused the rotator's token: the vault must be in the same tenant as the rotator's identity"
                ),
            ),
            (404, _) => (
                StoreErrorKind::NotFound,
                format!(
                    "{what}. Check vaultUrl: the URL answered but is not a Key Vault secrets endpoint"
                ),
            ),
            (400, _) => (
                StoreErrorKind::Rejected,
                format!("{what}. Check the secret name and any vault policy on secret attributes"),
            ),
            (429, _) => (
                StoreErrorKind::Transient,
                format!("{what}. The vault is throttling requests; will try again later"),
            ),
            (status, _) if status >= 500 || status == 408 => (
                StoreErrorKind::Transient,
                format!("{what}. The vault had a temporary fault; will try again later"),
            ),
            _ => (
                StoreErrorKind::Rejected,
                format!("{what}. See the Key Vault error code"),
            ),
        }
    }
}

#[derive(Clone, Copy)]
enum Operation {
    Read,
    Write,
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Operation::Read => "read (get)",
            Operation::Write => "write (set)",
        }
    }
}

/// The parts of a Key Vault error answer we act on.
struct ServiceError {
    status: u16,
    code: Option<String>,
    inner_code: Option<String>,
    message: Option<String>,
}

impl ServiceError {
    fn from_body(
        status: u16,
        body: Option<azure_security_keyvault_secrets::models::KeyVaultErrorError>,
    ) -> Self {
        let (code, message, inner_code) = match body {
            Some(error) => (
                error.code,
                error.message,
                error.inner_error.and_then(|inner| inner.code),
            ),
            None => (None, None, None),
        };
        Self {
            status,
            code,
            inner_code,
            message,
        }
    }

    /// `HTTP 409 Conflict: <vault's message>`, for the first half of an error message.
    fn summary(&self) -> String {
        let code = self.code.as_deref().unwrap_or("(no error code)");
        match &self.message {
            Some(message) => format!(
                "Key Vault answered HTTP {} {code}: {}",
                self.status,
                one_line(message)
            ),
            None => format!("Key Vault answered HTTP {} {code}", self.status),
        }
    }
}

/// Key Vault's answer for a name with no (undeleted) secret: nothing is stored.
fn is_secret_not_found(err: &azure_core::Error) -> bool {
    matches!(err.kind(), ErrorKind::HttpResponse { status, error_code, .. }
        if u16::from(*status) == 404 && error_code.as_deref() == Some("SecretNotFound"))
}

/// Key Vault's messages span lines (the RBAC refusal names caller, action and resource on
/// separate lines); logs and events want one line without a trailing period.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ").trim_end_matches('.').to_string()
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

fn to_offset(time: Option<DateTime<Utc>>) -> Option<OffsetDateTime> {
    time.and_then(|t| OffsetDateTime::from_unix_timestamp(t.timestamp()).ok())
}

/// What a stored secret says about itself: its value and the tags we wrote with it.
pub(crate) fn stored_secret_from(secret: azure_security_keyvault_secrets::models::Secret) -> Result<StoredSecret, &'static str> {
    let value = secret.value.ok_or("the vault returned the secret without a value")?;
    let StoredLabels { key_id, rotation, app_id } = labels_from(secret.tags.as_ref());
    Ok(StoredSecret { key_id, rotation, app_id, value: SecretString::from(value) })
}

fn tags_for(secret: &SecretToStore<'_>) -> HashMap<String, String> {
    HashMap::from([
        (TAG_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (TAG_APP_ID.to_string(), secret.app.client_id.to_string()),
        (TAG_TENANT_ID.to_string(), secret.app.tenant_id.to_string()),
        (TAG_KEY_ID.to_string(), secret.key_id.to_string()),
        (TAG_ROTATION.to_string(), secret.rotation.to_string()),
    ])
}

#[async_trait]
impl SecretStore for KeyVaultStore {
    fn describe(&self) -> String {
        format!("Key Vault {} secret {}", self.vault_url, self.secret_name)
    }

    async fn read(&self) -> Result<Option<StoredSecret>, StoreError> {
        let response = match self.client.get_secret(&self.secret_name, None).await {
            Ok(response) => response,
            Err(err) if is_secret_not_found(&err) => return Ok(None),
            Err(err) => return Err(self.map_error(Operation::Read, &err)),
        };
        let secret = response.into_model().map_err(|e| {
            self.error(
                StoreErrorKind::Rejected,
                format!("could not parse the vault's answer: {e}"),
            )
        })?;
        stored_secret_from(secret).map(Some).map_err(|problem| self.error(StoreErrorKind::Rejected, problem.to_string()))
    }

    async fn write(&self, secret: &SecretToStore<'_>) -> Result<(), StoreError> {
        let parameters = SetSecretParameters {
            value: Some(secret.value.expose_secret().to_string()),
            content_type: Some(CONTENT_TYPE.to_string()),
            secret_attributes: Some(SecretAttributes {
                enabled: Some(true),
                expires: to_offset(secret.expires),
                not_before: to_offset(secret.not_before),
                ..Default::default()
            }),
            tags: Some(tags_for(secret)),
        };
        let content = parameters.try_into().map_err(|e: azure_core::Error| {
            self.error(
                StoreErrorKind::Rejected,
                format!("could not encode the request: {}", e.kind()),
            )
        })?;
        self.client
            .set_secret(&self.secret_name, content, None)
            .await
            .map(drop)
            .map_err(|err| self.map_error(Operation::Write, &err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoCredential;

    #[async_trait]
    impl TokenCredential for NoCredential {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "unused",
            ))
        }
    }

    /// Counts the requests that reach the rotator's credential.
    #[derive(Debug, Default)]
    struct CountingCredential(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl TokenCredential for CountingCredential {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(azure_core::Error::with_message(ErrorKind::Credential, "counted"))
        }
    }

    #[tokio::test]
    async fn only_key_vault_scopes_reach_the_credential() {
        let inner = Arc::new(CountingCredential::default());
        let guard = VaultAudienceOnly {
            inner: inner.clone(),
            vault_url: "https://kv.evil.example".into(),
            audience: "https://vault.azure.net".into(),
        };
        // What a host passing the SDK's domain check (kv.evil.example, resource
        // https://evil.example) or a trusted private host asking for Graph would get.
        for scope in ["https://evil.example/.default", "https://graph.microsoft.com/.default", "https://vault.azure.net"] {
            let err = guard.get_token(&[scope], None).await.unwrap_err();
            let refusal = find_cause::<ForeignAudience>(&err).expect("refused by the guard").to_string();
            assert!(refusal.contains("https://kv.evil.example") && refusal.contains(scope), "{refusal}");
        }
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 0);

        guard.get_token(&["https://vault.azure.net/.default"], None).await.unwrap_err();
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 1, "Key Vault's scope is passed on");
    }

    fn store(url: &str) -> KeyVaultStore {
        let settings = KeyVaultSettings::new(url, "smtp");
        let trust = VaultTrust::for_authority(&"https://login.microsoftonline.com".parse().unwrap());
        KeyVaultStore::new(settings, &trust, Arc::new(NoCredential), ClientOptions::default()).unwrap()
    }

    #[test]
    fn az_commands_name_the_vault_by_its_host() {
        assert_eq!(
            store("https://kv-mail.vault.azure.net/").vault_name(),
            "kv-mail"
        );
        assert_eq!(store("https://127.0.0.1:8443").vault_name(), "<vault name>");
        assert_eq!(
            store("https://kv-mail.vault.azure.net/").describe(),
            "Key Vault https://kv-mail.vault.azure.net secret smtp"
        );
    }

    #[test]
    fn vault_messages_become_one_line() {
        assert_eq!(
            one_line("Caller is not authorized.\r\nAction: 'x'\r\n"),
            "Caller is not authorized. Action: 'x'"
        );
    }

    #[test]
    fn secret_names_follow_key_vault_rules() {
        assert!(validate_secret_name("acs-smtp-1").is_ok());
        assert!(validate_secret_name("").is_err());
        assert!(validate_secret_name("smtp.password").is_err());
        assert!(validate_secret_name(&"a".repeat(128)).is_err());
    }
}
