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
use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
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
    /// Workload identity through a ServiceAccount the rotator does not run as: its token,
    /// requested from the Kubernetes TokenRequest API, is presented as the client assertion
    /// (a team's RotatorIdentity; cert-manager's `serviceAccountRef`).
    ServiceAccountToken {
        tenant_id: String,
        client_id: String,
        token: Box<ServiceAccountToken>,
    },
}

/// Asks the Kubernetes TokenRequest API for a ServiceAccount's token with Entra's token
/// exchange audience, each time azure_identity needs an assertion (it caches the Entra
/// token, so about once an hour).
#[derive(Clone)]
pub struct ServiceAccountToken {
    accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount>,
    namespace: String,
    name: String,
}

/// The audience Entra's workload identity federation expects.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Asked for the token; the API server's minimum is 10 minutes.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 3600;

impl ServiceAccountToken {
    pub fn new(accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount>, namespace: &str, name: &str) -> Self {
        Self { accounts, namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl std::fmt::Debug for ServiceAccountToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountToken").field("namespace", &self.namespace).field("name", &self.name).finish_non_exhaustive()
    }
}

#[async_trait]
impl azure_identity::ClientAssertion for ServiceAccountToken {
    async fn secret(&self, _: Option<azure_core::http::ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_string()],
                expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let answer = self.accounts.create_token_request(&self.name, &Default::default(), &request).await.map_err(|error| {
            let (namespace, name) = (&self.namespace, &self.name);
            let (said, advice) = match &error {
                kube::Error::Api(status) if status.code == 404 => (
                    format!("{} {}: {}", status.code, status.reason, status.message),
                    format!("name a ServiceAccount of namespace {namespace} in the identity's serviceAccountRef"),
                ),
                kube::Error::Api(status) => (
                    format!("{} {}: {}", status.code, status.reason, status.message),
                    format!("the rotator needs create on serviceaccounts/token in namespace {namespace}"),
                ),
                other => (other.to_string(), "check that the Kubernetes API is reachable; will try again".to_string()),
            };
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("cannot get a token for ServiceAccount {namespace}/{name} from the Kubernetes TokenRequest API ({said}): {advice}"),
            )
        })?;
        answer.status.map(|status| status.token).filter(|token| !token.is_empty()).ok_or_else(|| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("the Kubernetes TokenRequest API answered without a token for ServiceAccount {}/{}", self.namespace, self.name),
            )
        })
    }
}

impl RotatorCredential {
    /// The client id it signs in as, when the credential says it (a system-assigned
    /// managed identity and `az login` do not).
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Self::WorkloadIdentity { client_id, .. } | Self::ClientSecret { client_id, .. } | Self::ServiceAccountToken { client_id, .. } => {
                Some(client_id.as_str())
            }
            Self::ManagedIdentity { client_id } => client_id.as_deref(),
            Self::AzureCli { .. } => None,
        }
    }

    /// A short name for messages, e.g. `client secret`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WorkloadIdentity { .. } => "workload identity",
            Self::ManagedIdentity { .. } => "managed identity",
            Self::ClientSecret { .. } => "client secret",
            Self::AzureCli { .. } => "Azure CLI",
            Self::ServiceAccountToken { .. } => "workload identity (TokenRequest)",
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
        } => Arc::new(ExplainFederation {
            inner: WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: Some(client_id.clone()),
                tenant_id: Some(tenant_id.clone()),
                token_file_path: Some(token_file.clone()),
            }))
            .map_err(|e| fail(&e))?,
            client_id: client_id.clone(),
            token_file: token_file.clone(),
        }),
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
        RotatorCredential::ServiceAccountToken { tenant_id, client_id, token } => azure_identity::ClientAssertionCredential::new(
            tenant_id.clone(),
            client_id.clone(),
            (**token).clone(),
            Some(ClientAssertionCredentialOptions { client_options }),
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
        RotatorCredential::ServiceAccountToken { .. } => {
            "Check the identity's tenantId and clientId (GUIDs) and its serviceAccountRef"
        }
    }
}

/// Entra's codes for a federated token that no federated identity credential of the
/// identity matches: none at all (70021), issuer (700211), audience (700212), subject
/// (700213), or subject only in another letter case (7002138).
const FEDERATION_MISMATCH_CODES: [&str; 5] = ["AADSTS70021:", "AADSTS700211:", "AADSTS700212:", "AADSTS700213:", "AADSTS7002138:"];

/// Turns Entra's refusal of the pod's service-account token into the one thing to do:
/// create a federated credential with exactly the issuer, subject and audience of the token
/// this pod presents. Entra names only the claim that did not match; the rest is in the
/// token file, whose claims (never the token) we read to say so.
#[derive(Debug)]
struct ExplainFederation {
    inner: Arc<WorkloadIdentityCredential>,
    client_id: String,
    token_file: PathBuf,
}

#[async_trait]
impl TokenCredential for ExplainFederation {
    async fn get_token(&self, scopes: &[&str], options: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        self.inner.get_token(scopes, options).await.map_err(|error| {
            let refused = super::error_chain::causes(&error)
                .iter()
                .any(|cause| FEDERATION_MISMATCH_CODES.iter().any(|code| cause.to_string().contains(code)));
            match refused.then(|| federation_advice(&self.client_id, &self.token_file)).flatten() {
                Some(advice) => error.with_context(advice),
                None => error,
            }
        })
    }
}

/// What the identity's federated credential must say for the token in `token_file`.
fn federation_advice(client_id: &str, token_file: &std::path::Path) -> Option<String> {
    let token = std::fs::read_to_string(token_file).ok()?;
    let claims = federated_token_claims(token.trim())?;
    let text = |name: &str| claims[name].as_str().map(str::to_string);
    let (issuer, subject) = (text("iss")?, text("sub")?);
    let audience = match &claims["aud"] {
        serde_json::Value::Array(all) => all.first()?.as_str()?.to_string(),
        other => other.as_str()?.to_string(),
    };
    Some(format!(
        "Entra has no federated identity credential on the identity {client_id} for this pod's service-account token \
         (issuer '{issuer}', subject '{subject}', audience '{audience}'). Add one with exactly these values \
         (matched case-sensitively), e.g. `az identity federated-credential create --identity-name <name> --resource-group <group> \
         --issuer {issuer} --subject {subject} --audiences {audience}`, or `az ad app federated-credential create` for an app registration"
    ))
}

/// The claims of a JWT, unverified: only read to explain a refusal, never trusted. A JWT
/// crate would add a dependency for base64 and JSON we already have.
pub(crate) fn federated_token_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}
