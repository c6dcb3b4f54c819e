//! The Azure Key Vault secret store: writes each new client secret as a new version of one
//! Key Vault secret and reads the latest version back.
//!
//! Every version carries what Key Vault's own tooling looks at: `exp` = the credential's
//! `endDateTime` (so Event Grid's `SecretNearExpiry` fires even if the rotator stops),
//! `nbf` = its `startDateTime`, and tags naming the application and the Entra `keyId`.
//! The `keyId` tag is how the rotator later recognises which credential the value is.
//!
//! The client is the official `azure_security_keyvault_secrets` `SecretClient`; it
//! discovers the token scope from Key Vault's `WWW-Authenticate` challenge and retries
//! 408/429/5xx and connection faults itself (see `ClientOptions::retry`). A client learns
//! the challenge on its first request, so long-running processes share one client per vault
//! ([`KeyVaultClients`]): otherwise every store built afresh (each reconcile builds its
//! stores) would pay an unauthenticated round trip first.

use crate::domain::{ExposeSecret, SecretString, SecretToStore, StoredSecret};
use crate::engine::ports::{SecretStore, StoreError, StoreErrorKind};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::ClientOptions;
use azure_core::time::OffsetDateTime;
use azure_security_keyvault_secrets::models::{
    KeyVaultError, SecretAttributes, SetSecretParameters,
};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
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
pub const MANAGED_BY: &str = "entra-rotator";

/// Where the secret lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVaultSettings {
    /// e.g. `https://my-vault.vault.azure.net`.
    pub vault_url: String,
    /// The secret's name: 1 to 127 letters, digits and dashes.
    pub secret_name: String,
    /// Whether the resource named in Key Vault's authentication challenge must be a parent
    /// domain of the vault's host (the SDK's protection against a look-alike vault
    /// harvesting tokens). Keep it on; turn it off only for a vault behind a host name
    /// that is not under the cloud's vault domain (a private proxy, the local stand-in).
    pub verify_challenge_resource: bool,
}

impl KeyVaultSettings {
    /// Settings with challenge-resource verification on.
    pub fn new(vault_url: impl Into<String>, secret_name: impl Into<String>) -> Self {
        Self {
            vault_url: vault_url.into(),
            secret_name: secret_name.into(),
            verify_challenge_resource: true,
        }
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
    verify_challenge_resource: bool,
    credential: Arc<dyn TokenCredential>,
    client_options: ClientOptions,
) -> Result<Arc<SecretClient>, KeyVaultSetupError> {
    let options = SecretClientOptions {
        client_options,
        verify_challenge_resource: Some(verify_challenge_resource),
        ..Default::default()
    };
    SecretClient::new(vault_url, credential, Some(options))
        .map(Arc::new)
        .map_err(|e| KeyVaultSetupError::InvalidVaultUrl {
            url: vault_url.to_string(),
            detail: e.to_string(),
        })
}

/// One `SecretClient` per vault (and challenge-verification setting), shared by every
/// store of that vault that a process builds.
#[derive(Default)]
pub struct KeyVaultClients {
    clients: Mutex<HashMap<(String, bool), Arc<SecretClient>>>,
}

impl KeyVaultClients {
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
        let key = (vault_url.clone(), settings.verify_challenge_resource);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let client = match clients.get(&key) {
            Some(client) => client.clone(),
            None => {
                let client = secret_client(
                    &vault_url,
                    settings.verify_challenge_resource,
                    credential,
                    client_options(),
                )?;
                clients.insert(key, client.clone());
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
    /// `credential` is the rotator's own identity; `client_options` come from
    /// [`crate::adapters::http::azure_client_options`] so extra trusted roots apply
    /// (adjust `client_options.retry` to change the SDK's retries).
    pub fn new(
        settings: KeyVaultSettings,
        credential: Arc<dyn TokenCredential>,
        client_options: ClientOptions,
    ) -> Result<Self, KeyVaultSetupError> {
        let vault_url = validate_vault_url(&settings.vault_url)?;
        validate_secret_name(&settings.secret_name)?;
        let client = secret_client(
            &vault_url,
            settings.verify_challenge_resource,
            credential,
            client_options,
        )?;
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
            ErrorKind::Connection | ErrorKind::Io if is_dns_failure(err) => (
                StoreErrorKind::NotFound,
                format!(
                    "could not resolve the vault's host name ({}). Check vaultUrl: the vault name is part of the host name; with a private endpoint, check the private DNS zone",
                    error_chain(err)
                ),
            ),
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
                    "the Key Vault client failed before the vault answered ({}). If this is about the challenge resource: the vaultUrl's host is not under the domain the vault authenticates for (vault.azure.net in Azure public cloud); use the vault's own URI, and turn verifyChallengeResource off only for a trusted private host name",
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

fn is_dns_failure(err: &azure_core::Error) -> bool {
    let chain = error_chain(err).to_ascii_lowercase();
    chain.contains("dns error") || chain.contains("failed to lookup address")
}

fn to_offset(time: Option<DateTime<Utc>>) -> Option<OffsetDateTime> {
    time.and_then(|t| OffsetDateTime::from_unix_timestamp(t.timestamp()).ok())
}

fn tags_for(secret: &SecretToStore<'_>) -> HashMap<String, String> {
    HashMap::from([
        (TAG_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (TAG_APP_ID.to_string(), secret.app.client_id.to_string()),
        (TAG_TENANT_ID.to_string(), secret.app.tenant_id.to_string()),
        (TAG_KEY_ID.to_string(), secret.key_id.to_string()),
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
        let value = secret.value.ok_or_else(|| {
            self.error(
                StoreErrorKind::Rejected,
                "the vault returned the secret without a value".to_string(),
            )
        })?;
        let key_id = secret
            .tags
            .as_ref()
            .and_then(|tags| tags.get(TAG_KEY_ID))
            .and_then(|raw| Uuid::parse_str(raw).ok());
        Ok(Some(StoredSecret {
            key_id,
            value: SecretString::from(value),
        }))
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

    fn store(url: &str) -> KeyVaultStore {
        let settings = KeyVaultSettings::new(url, "smtp");
        KeyVaultStore::new(settings, Arc::new(NoCredential), ClientOptions::default()).unwrap()
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
