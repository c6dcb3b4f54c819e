//! The rotator's own identity: turns the configured kind of credential into an
//! `azure_core` [`TokenCredential`] from `azure_identity`.
//!
//! Every credential that talks HTTP sends through the shared client of [`super::http`], so
//! extra trusted roots (proxies, private clouds, the stand-ins) apply to the token endpoint
//! too. A custom authority host (sovereign or private cloud, the stand-ins) goes in through
//! `azure_core`'s custom cloud configuration. `azure_identity` caches each token until five
//! minutes before it expires, so callers simply ask for a token before every request.
//!
//! The managed-identity endpoint is the exception: it is reached directly, never through a
//! proxy (see [`super::http::direct_http_client`]).
//!
//! Every answer is read through the bounded transport of [`super::http`]. What is not
//! zeroized, and why: the client secret is handed to azure_core as its `Secret`, a plain
//! string it keeps for the credential's life and drops without zeroizing; tokens live in
//! azure_identity's cache and in the bodies reqwest and azure_core read, which are shared
//! `Bytes` buffers freed without zeroizing. None of these types lets a caller wipe them.

use super::http::{bounded_azure_client_options, direct_http_client};
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::ClientOptions;
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Per-request timeout towards the managed-identity endpoint, as for the other Azure calls.
const MANAGED_IDENTITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Ends the message of a token answer refused for its size or encoding.
const TOKEN_ADVICE: &str = "check that azure.authorityHost is the Entra login endpoint of your cloud";
/// The same for the managed-identity endpoint, which the platform sets.
const MANAGED_IDENTITY_ADVICE: &str =
    "the managed-identity endpoint is the platform's; check IDENTITY_ENDPOINT if it is set";

/// How the rotator proves who it is to Entra.
#[derive(Clone, Debug)]
pub enum RotatorCredential {
    /// Kubernetes workload identity federation: a projected service-account token file
    /// exchanged for an Entra token (the `azure.workload.identity/use` pod label sets
    /// `AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
    /// The managed identity of the VM or App Service; `client_id` picks a user-assigned one.
    ManagedIdentity { client_id: Option<String> },
    /// An app registration's client secret (for machines without a managed identity).
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretString,
    },
    /// Whoever is logged in with `az login` (for people running the CLI by hand).
    AzureCli { tenant_id: Option<String> },
}

impl RotatorCredential {
    /// A short name for messages, e.g. `client secret`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WorkloadIdentity { .. } => "workload identity",
            Self::ManagedIdentity { .. } => "managed identity",
            Self::ClientSecret { .. } => "client secret",
            Self::AzureCli { .. } => "Azure CLI",
        }
    }
}

/// The credential could not be set up (before any token was requested).
#[derive(Debug, thiserror::Error)]
#[error("could not set up the rotator's {kind} credential: {detail}. {advice}")]
pub struct IdentityError {
    pub kind: &'static str,
    pub detail: String,
    pub advice: &'static str,
}

/// Builds the rotator's credential. `authority_host` is the Entra login endpoint, e.g.
/// `https://login.microsoftonline.us`; `None` means Azure public cloud (or the
/// `AZURE_AUTHORITY_HOST` environment variable). `http` is the client from
/// [`super::http::http_client`].
pub fn rotator_credential(
    credential: &RotatorCredential,
    authority_host: Option<&Url>,
    http: reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, IdentityError> {
    let client_options = client_options(authority_host, http);
    let fail = |error: &dyn std::fmt::Display| IdentityError {
        kind: credential.kind(),
        detail: error.to_string(),
        advice: advice(credential),
    };
    let built: Arc<dyn TokenCredential> = match credential {
        RotatorCredential::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions { client_options },
            client_id: Some(client_id.clone()),
            tenant_id: Some(tenant_id.clone()),
            token_file_path: Some(token_file.clone()),
        }))
        .map_err(|e| fail(&e))?,
        RotatorCredential::ManagedIdentity { client_id } => {
            let direct = direct_http_client(MANAGED_IDENTITY_TIMEOUT).map_err(|e| fail(&e))?;
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: bounded_azure_client_options(direct, "the managed-identity endpoint (IMDS, or IDENTITY_ENDPOINT)", MANAGED_IDENTITY_ADVICE),
            }))
            .map_err(|e| fail(&e))?
        }
        RotatorCredential::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => ClientSecretCredential::new(
            tenant_id,
            client_id.clone(),
            // azure_core's `Secret` is not zeroized (see the module comment).
            Secret::new(secret.expose_secret().to_string()),
            Some(ClientSecretCredentialOptions { client_options }),
        )
        .map_err(|e| fail(&e))?,
        RotatorCredential::AzureCli { tenant_id } => {
            AzureCliCredential::new(Some(AzureCliCredentialOptions {
                tenant_id: tenant_id.clone(),
                ..Default::default()
            }))
            .map_err(|e| fail(&e))?
        }
    };
    Ok(built)
}

fn client_options(authority_host: Option<&Url>, http: reqwest::Client) -> ClientOptions {
    let mut options = bounded_azure_client_options(http, "azure.authorityHost", TOKEN_ADVICE);
    if let Some(host) = authority_host {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = host.as_str().trim_end_matches('/').to_string();
        options.cloud = Some(Arc::new(CloudConfiguration::from(cloud)));
    }
    options
}

fn advice(credential: &RotatorCredential) -> &'static str {
    match credential {
        RotatorCredential::WorkloadIdentity { .. } => {
            "Check the tenant id and client id (GUIDs) and that the service-account token file is mounted"
        }
        RotatorCredential::ManagedIdentity { .. } => {
            "Run on an Azure VM, VM scale set or App Service with a managed identity, or choose another identity kind"
        }
        RotatorCredential::ClientSecret { .. } => {
            "Check the tenant id and client id (GUIDs) and that the secret is not empty"
        }
        RotatorCredential::AzureCli { .. } => {
            "Check the tenant id, install the Azure CLI and run `az login`"
        }
    }
}
