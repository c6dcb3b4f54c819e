//! Builds engine rotations wired to the production adapters from validated settings.
//! Shared by `entra-rotator run`, the demo, the controller and the CronJob pass, so every
//! surface talks to Azure and Kubernetes the same way.

use crate::adapters::delta_mirror::{DeltaMirror, MirroredDirectory};
use crate::adapters::drift_batch::{BatchedDirectory, BatchedStore, DriftBatch, Wanted};
use crate::adapters::graph::{GraphClient, GraphConfig, SignInGate};
use crate::adapters::http::{azure_client_options, http_client, ApiObserver, ObservingPolicy, TlsTrust};
use crate::adapters::identity::{rotator_credential, RotatorCredential};
use crate::adapters::kubernetes::SmtpVariables;
use crate::config::{AzureSettings, CredentialConfig, KubernetesSettings, RotationConfig, TargetConfig, TlsSettings, VerificationConfig};
use crate::domain::{AppRef, SecretString};
use crate::engine::policy::Timing;
use crate::engine::ports::{Directory, Rollout, SecretStore, SystemClock, Verifier};
use crate::engine::{Rotation, VerifyRetry};
use azure_core::credentials::TokenCredential;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Anything that stops settings from being turned into working clients; says which
/// setting and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AssemblyError(String);

fn assembly_error(context: &str, error: impl std::fmt::Display) -> AssemblyError {
    AssemblyError(format!("{context}: {error}"))
}

/// The clients every rotation shares: Graph with the rotator's identity, the HTTP client
/// with its trust settings, and the Kubernetes client when Secrets are written.
pub struct Assembly {
    own: SignedIn,
    http: reqwest::Client,
    trust: TlsTrust,
    kube: Option<kube::Client>,
    observer: Option<Arc<dyn ApiObserver>>,
    /// What every identity's clients are built with.
    endpoints: Endpoints,
    /// The clients of each other identity (a RotatorIdentity or ClusterRotatorIdentity), by
    /// its name, with the version they were built from: rebuilt when it changes.
    identities: std::sync::Mutex<std::collections::HashMap<String, (String, Arc<SignedIn>)>>,
    /// The batched drift checks of the pass in progress, if any: rotations signed in as the
    /// rotator's own identity built meanwhile answer their first reads from it.
    drift_batch: std::sync::Mutex<Option<Arc<DriftBatch>>>,
    /// The controller's mirror of its applications' credentials, kept by delta rounds:
    /// rotations signed in as the rotator's own identity take their first read from it.
    delta_mirror: std::sync::Mutex<Option<Arc<DeltaMirror>>>,
}

/// Graph and Key Vault clients signed in as one identity. Each identity has its own Key
/// Vault clients: a vault's client holds the credential it was first built with.
struct SignedIn {
    directory: Arc<dyn Directory>,
    /// The same client, for what only Graph answers (the sign-in log).
    graph: Arc<GraphClient>,
    credential: Arc<dyn TokenCredential>,
    /// One Key Vault client per vault, so each learns the vault's challenge only once; they
    /// request Key Vault's audience only, and skip the challenge's domain check only for the
    /// administrator's `azure.keyVault.privateHosts`.
    vaults: crate::adapters::keyvault::KeyVaultClients,
}

/// The Azure endpoints and limits of the configuration, for building clients later.
struct Endpoints {
    authority_host: url::Url,
    graph_url: url::Url,
    max_concurrent_graph_requests: usize,
    private_vault_hosts: Vec<String>,
}

/// Another identity than the rotator's own, to sign in as for one rotation.
pub struct SignInAs<'a> {
    /// Names the identity in messages and keys the cache.
    pub name: &'a str,
    /// Changes when the identity (or its Secret) does.
    pub version: &'a str,
    pub credential: &'a RotatorCredential,
}

impl Assembly {
    pub fn new(azure: &AzureSettings, tls: &TlsSettings, kube: Option<kube::Client>) -> Result<Self, AssemblyError> {
        Self::observed(azure, tls, kube, None)
    }

    /// Like [`Assembly::new`], reporting every Graph and Key Vault request to `observer`.
    pub fn observed(
        azure: &AzureSettings,
        tls: &TlsSettings,
        kube: Option<kube::Client>,
        observer: Option<Arc<dyn ApiObserver>>,
    ) -> Result<Self, AssemblyError> {
        let trust = load_trust(tls)?;
        let http = http_client(&trust, Duration::from_secs(30)).map_err(|e| assembly_error("tls", e))?;
        let endpoints = Endpoints {
            authority_host: azure.authority_host.clone(),
            graph_url: azure.graph_url.clone(),
            max_concurrent_graph_requests: azure.max_concurrent_graph_requests,
            private_vault_hosts: azure.key_vault.private_hosts.clone(),
        };
        let own = sign_in(&endpoints, "azure.credential", &resolve_credential(&azure.credential)?, &http, observer.as_ref())?;
        Ok(Self { own, http, trust, kube, observer, endpoints, identities: Default::default(), drift_batch: Default::default(), delta_mirror: Default::default() })
    }

    /// Reads what `wanted` names in batches, as the rotator's own identity, for the
    /// rotations built until [`end_drift_batch`](Self::end_drift_batch).
    pub async fn begin_drift_batch(&self, wanted: &Wanted) {
        let own = &self.own;
        let batch = DriftBatch::take(&own.graph, &own.vaults, own.credential.clone(), || self.key_vault_options(), wanted).await;
        *self.drift_batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(batch));
    }

    /// Keeps the credentials of `applications` (read as the rotator's own identity) in a
    /// mirror fed by Graph's delta query, from its first round now; rotations built from
    /// now on take their first read from it, after a delta round when it is older than
    /// `refresh` (at most `FRESH_FOR`). `false` when delta cannot
    /// be used (logged): they read Graph as before.
    pub async fn start_delta_mirror(&self, applications: &[AppRef], refresh: Duration) -> bool {
        let mirror = Arc::new(DeltaMirror::new(self.own.graph.clone(), applications, refresh));
        if !mirror.fill().await {
            return false;
        }
        *self.delta_mirror.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mirror);
        true
    }

    /// Rotations built from now on read for themselves again.
    pub fn end_drift_batch(&self) {
        self.drift_batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }

    /// The clients of `identity`, built once per version of it.
    fn signed_in(&self, identity: &SignInAs<'_>) -> Result<Arc<SignedIn>, AssemblyError> {
        let mut identities = self.identities.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, clients)) = identities.get(identity.name).filter(|(version, _)| version == identity.version) {
            return Ok(clients.clone());
        }
        let clients = Arc::new(
            sign_in(&self.endpoints, identity.name, identity.credential, &self.http, self.observer.as_ref())?,
        );
        identities.insert(identity.name.to_string(), (identity.version.to_string(), clients.clone()));
        Ok(clients)
    }

    /// azure_core options for Key Vault: the shared HTTP client, and the observer per attempt.
    fn key_vault_options(&self) -> azure_core::http::ClientOptions {
        let mut options = azure_client_options(self.http.clone());
        if let Some(observer) = &self.observer {
            options.per_try_policies.push(Arc::new(ObservingPolicy { service: "keyvault", observer: observer.clone() }));
        }
        options
    }

    /// The HTTP client (with the configured trust) for other outbound calls, e.g. notifications.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The extra trusted roots, for clients that are not HTTP (SMTP).
    pub fn trust(&self) -> TlsTrust {
        self.trust.clone()
    }

    /// The Graph client of the rotator's own identity.
    pub fn directory(&self) -> Arc<dyn Directory> {
        self.own.directory.clone()
    }

    /// The same client, for what only Graph answers (listings, the sign-in log).
    pub fn graph(&self) -> Arc<GraphClient> {
        self.own.graph.clone()
    }

    /// The sign-in check of a rotation with `requireUnusedFor`, for the faces to put among
    /// its revocation gates.
    pub fn sign_in_gate(&self, config: &RotationConfig) -> Result<Option<Arc<SignInGate>>, AssemblyError> {
        self.sign_in_gate_as(config, None)
    }

    /// Like [`Assembly::sign_in_gate`], reading the log as `identity` when given: the
    /// identity that owns the application may read its sign-ins where the rotator may not.
    pub fn sign_in_gate_as(&self, config: &RotationConfig, identity: Option<&SignInAs<'_>>) -> Result<Option<Arc<SignInGate>>, AssemblyError> {
        let Some(window) = config.require_unused_for else { return Ok(None) };
        let app_id = Uuid::parse_str(&config.application.client_id).map_err(|e| assembly_error(&config.name, e))?;
        let graph = match identity {
            Some(identity) => self.signed_in(identity)?.graph.clone(),
            None => self.own.graph.clone(),
        };
        Ok(Some(Arc::new(SignInGate::new(graph, app_id, window.chrono(), Arc::new(SystemClock)))))
    }

    /// Builds one rotation signed in as the rotator's own identity; `rollout` restarts its
    /// consumers (operator only).
    pub fn rotation(&self, config: &RotationConfig, rollout: Option<Arc<dyn Rollout>>) -> Result<Rotation, AssemblyError> {
        self.rotation_as(config, rollout, None)
    }

    /// Like [`Assembly::rotation`], signed in as `identity` (Graph and Key Vault) when given.
    pub fn rotation_as(
        &self,
        config: &RotationConfig,
        rollout: Option<Arc<dyn Rollout>>,
        identity: Option<SignInAs<'_>>,
    ) -> Result<Rotation, AssemblyError> {
        let other = identity.map(|identity| self.signed_in(&identity)).transpose()?;
        // The batch was read as the rotator's own identity: it answers only for that one.
        let (batch, mirror) = match other {
            None => (
                self.drift_batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
                self.delta_mirror.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            ),
            Some(_) => (None, None),
        };
        let signed_in = other.as_deref().unwrap_or(&self.own);
        let (directory, credential, trust) = (&signed_in.directory, &signed_in.credential, &self.trust);
        let kube_client = self.kube.as_ref();
    // The configuration was validated, so these parse.
    let guid = |text: &str| Uuid::parse_str(text).map_err(|e| assembly_error(&config.name, e));
    let app = AppRef {
        tenant_id: guid(&config.application.tenant_id)?,
        client_id: guid(&config.application.client_id)?,
        object_id: config.application.object_id.as_deref().map(guid).transpose()?,
    };
    let smtp = match &config.verification {
        VerificationConfig::Smtp(smtp) => Some(smtp),
        VerificationConfig::ExchangeOnline(_) | VerificationConfig::None => None,
    };
    let exchange = match &config.verification {
        VerificationConfig::ExchangeOnline(exchange) => Some(exchange),
        _ => None,
    };
    let mut stores: Vec<Arc<dyn SecretStore>> = Vec::new();
    for target in &config.targets {
        stores.push(match target {
            TargetConfig::KeyVault(vault) => {
                let settings = crate::adapters::keyvault::KeyVaultSettings::new(
                    vault.vault_url.as_str(),
                    vault.secret_name.clone(),
                );
                let store = signed_in
                    .vaults
                    .store(settings, credential.clone(), || self.key_vault_options())
                    .map_err(|e| assembly_error(&config.name, e))?;
                match &batch {
                    Some(batch) => Arc::new(BatchedStore { inner: store, batch: batch.clone() }) as Arc<dyn SecretStore>,
                    None => Arc::new(store),
                }
            }
            TargetConfig::KubernetesSecret(secret) => {
                let client = kube_client.ok_or_else(|| AssemblyError("no Kubernetes client".into()))?;
                Arc::new(
                    crate::adapters::kubernetes::KubernetesSecretStore::new(
                        client.clone(),
                        crate::adapters::kubernetes::KubernetesSecretSettings {
                            namespace: secret.namespace.clone(),
                            name: secret.name.clone(),
                            keys: secret.keys.clone(),
                            variables: match exchange {
                                // What an XOAUTH2 client of Exchange Online is configured with.
                                Some(exchange) => SmtpVariables {
                                    smtp_host: Some(exchange.host.clone()),
                                    smtp_port: Some(exchange.port),
                                    smtp_username: Some(exchange.mailbox.clone()),
                                    smtp_from: Some(exchange.sender().to_string()),
                                },
                                None => SmtpVariables {
                                    smtp_host: smtp.map(|s| s.host.clone()),
                                    smtp_port: smtp.map(|s| s.port),
                                    smtp_username: smtp.map(|s| render_for_app(&s.username, &app)),
                                    smtp_from: smtp.map(|s| s.from.clone()),
                                },
                            },
                        },
                    )
                    .map_err(|e| assembly_error(&config.name, e))?,
                )
            }
        });
    }
    let verifier: Option<Arc<dyn Verifier>> = match smtp {
        Some(smtp) => Some(Arc::new(
            crate::adapters::smtp::SmtpVerifier::new(
                crate::adapters::smtp::SmtpVerification {
                    host: smtp.host.clone(),
                    port: smtp.port,
                    tls: match smtp.tls {
                        crate::config::SmtpTls::StartTls => crate::adapters::smtp::TlsMode::StartTls,
                        crate::config::SmtpTls::Implicit => crate::adapters::smtp::TlsMode::Implicit,
                    },
                    mechanism: match smtp.auth_mechanism {
                        crate::config::SmtpAuthMechanism::Login => crate::adapters::smtp::AuthMechanism::Login,
                        crate::config::SmtpAuthMechanism::Plain => crate::adapters::smtp::AuthMechanism::Plain,
                    },
                    username: smtp.username.clone(),
                    from: smtp.from.clone(),
                    to: smtp.to.clone(),
                    timeout: smtp.timeout.0,
                    mode: match smtp.mode {
                        crate::config::SmtpMode::Deliver => crate::adapters::smtp::ProofMode::Deliver,
                        crate::config::SmtpMode::Handshake => crate::adapters::smtp::ProofMode::Handshake,
                    },
                },
                trust,
            )
            .map(|verifier| {
                let limiter = crate::adapters::smtp::quota::process_limiters()
                    .for_resource(&verifier.resource(), mail_quota(smtp));
                verifier.paced(limiter, smtp.retry_budget.0)
            })
            .map_err(|e| assembly_error(&config.name, e))?,
        )),
        None => match exchange {
            Some(exchange) => Some(Arc::new(
                crate::adapters::smtp::exchange_online::ExchangeOnlineVerifier::new(
                    crate::adapters::smtp::exchange_online::ExchangeOnlineVerification {
                        host: exchange.host.clone(),
                        port: exchange.port,
                        mailbox: exchange.mailbox.clone(),
                        from: exchange.sender().to_string(),
                        to: exchange.to.clone(),
                        scope: exchange.scope.clone(),
                        authority_host: self.endpoints.authority_host.clone(),
                        timeout: exchange.timeout.0,
                        mode: match exchange.mode {
                            crate::config::SmtpMode::Deliver => crate::adapters::smtp::ProofMode::Deliver,
                            crate::config::SmtpMode::Handshake => crate::adapters::smtp::ProofMode::Handshake,
                        },
                    },
                    trust,
                    self.http.clone(),
                )
                .map_err(|e| assembly_error(&config.name, e))?,
            )),
            None => None,
        },
    };
    let verify_retry = match (smtp, exchange) {
        (Some(smtp), _) => VerifyRetry {
            budget: smtp.retry_budget.0,
            initial_delay: smtp.retry_interval.0,
            ..VerifyRetry::default()
        },
        (None, Some(exchange)) => VerifyRetry {
            budget: exchange.retry_budget.0,
            initial_delay: exchange.retry_interval.0,
            ..VerifyRetry::default()
        },
        (None, None) => VerifyRetry::default(),
    };
    Ok(Rotation {
        name: config.name.clone(),
        app,
        timing: Timing {
            lifetime: config.lifetime.chrono(),
            renew_before: config.renew_before().chrono(),
            revoke_grace: config.revoke_grace_period.chrono(),
            orphan_grace: config.orphan_grace_period.chrono(),
            retire_unmanaged_after: config.retire_unmanaged.as_ref().map(|retire| retire.after.chrono()),
        },
        directory: {
            let directory: Arc<dyn Directory> = match batch {
                Some(batch) => Arc::new(BatchedDirectory { inner: directory.clone(), batch }),
                None => directory.clone(),
            };
            match mirror {
                // Outermost, so that it alone decides which read is the first.
                Some(mirror) => Arc::new(MirroredDirectory { inner: directory, mirror, first_read_done: Default::default() }),
                None => directory,
            }
        },
        stores,
        verifier,
        rollout,
        revocation_gate: None,
        verify_retry,
    })
    }
}

/// Graph and Key Vault clients signed in as `credential`.
/// `context` names where the credential is configured, for its errors.
fn sign_in(
    endpoints: &Endpoints,
    context: &str,
    credential: &RotatorCredential,
    http: &reqwest::Client,
    observer: Option<&Arc<dyn ApiObserver>>,
) -> Result<SignedIn, AssemblyError> {
    let credential = rotator_credential(credential, Some(&endpoints.authority_host), http.clone()).map_err(|e| assembly_error(context, e))?;
    let mut graph = GraphClient::new(GraphConfig::new(endpoints.graph_url.clone()), credential.clone(), http.clone())
        .map_err(|e| assembly_error("azure.graphUrl", e))?
        .with_max_concurrent_requests(endpoints.max_concurrent_graph_requests);
    if let Some(observer) = observer {
        graph = graph.with_observer(observer.clone());
    }
    let vault_trust = crate::adapters::keyvault::VaultTrust::for_authority(&endpoints.authority_host)
        .with_private_hosts(endpoints.private_vault_hosts.iter().map(String::as_str));
    let graph = Arc::new(graph);
    Ok(SignedIn { directory: graph.clone(), graph, credential, vaults: crate::adapters::keyvault::KeyVaultClients::new(vault_trust) })
}

/// Renders a template with the variables known before any secret exists.
fn render_for_app(template: &crate::template::Template, app: &AppRef) -> String {
    let (tenant, client) = (app.tenant_id.to_string(), app.client_id.to_string());
    let object = app.object_id.map(|id| id.to_string()).unwrap_or_default();
    template.render(&std::collections::BTreeMap::from([
        ("tenantId", tenant.as_str()),
        ("clientId", client.as_str()),
        ("objectId", object.as_str()),
    ]))
}

/// Reads the extra trusted roots named under `tls:`.
pub(crate) fn load_trust(tls: &TlsSettings) -> Result<TlsTrust, AssemblyError> {
    let mut extra_root_pems = Vec::new();
    for path in &tls.extra_root_certificates {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| assembly_error(&format!("tls.extraRootCertificates: cannot read {}", path.display()), e))?;
        extra_root_pems.push(pem);
    }
    Ok(TlsTrust { extra_root_pems })
}

/// Fills the rotator's credential from the file and the standard Azure environment
/// variables, and reads a client secret from its variable or file.
pub(crate) fn resolve_credential(config: &CredentialConfig) -> Result<RotatorCredential, AssemblyError> {
    resolve_credential_at(config, "azure.credential")
}

/// Like [`resolve_credential`] for the credential configured at `at` (e.g.
/// `identities[0] (customer-a).credential`), which messages name.
pub(crate) fn resolve_credential_at(config: &CredentialConfig, at: &str) -> Result<RotatorCredential, AssemblyError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let required = |value: Option<String>, variable: &str, field: &str| {
        value.or_else(|| env(variable)).ok_or_else(|| {
            AssemblyError(format!("{at}.{field} is not set and neither is {variable}; the azure.workload.identity/use: \"true\" pod label sets it on Kubernetes"))
        })
    };
    Ok(match config {
        CredentialConfig::WorkloadIdentity { tenant_id, client_id, token_file } => RotatorCredential::WorkloadIdentity {
            tenant_id: required(tenant_id.clone(), "AZURE_TENANT_ID", "tenantId")?,
            client_id: required(client_id.clone(), "AZURE_CLIENT_ID", "clientId")?,
            token_file: required(
                token_file.as_ref().map(|p| p.display().to_string()),
                "AZURE_FEDERATED_TOKEN_FILE",
                "tokenFile",
            )?
            .into(),
        },
        CredentialConfig::ManagedIdentity { client_id } => {
            RotatorCredential::ManagedIdentity { client_id: client_id.clone() }
        }
        CredentialConfig::AzureCli { tenant_id } => RotatorCredential::AzureCli { tenant_id: tenant_id.clone() },
        CredentialConfig::ClientSecret { tenant_id, client_id, secret_env, secret_file } => {
            let secret = match (secret_env, secret_file) {
                (Some(variable), None) => env(variable).ok_or_else(|| {
                    AssemblyError(format!("{at}.secretEnv: environment variable {variable} is not set or empty"))
                })?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|s| s.trim_end().to_string())
                    .map_err(|e| assembly_error(&format!("{at}.secretFile: cannot read {}", path.display()), e))?,
                _ => {
                    return Err(AssemblyError(format!(
                        "{at}: a clientSecret credential needs exactly one of secretEnv or secretFile (never the secret itself)"
                    )));
                }
            };
            RotatorCredential::ClientSecret {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                secret: SecretString::from(secret),
            }
        }
    })
}

/// Why no cluster could be found, naming the kubeconfig that was looked for (kube's own
/// message quotes the path twice and leads with the in-cluster attempt).
fn no_cluster(error: kube::config::InferConfigError) -> AssemblyError {
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .filter(|value| !value.is_empty())
        .and_then(|value| std::env::split_paths(&value).next())
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".kube").join("config")));
    match kubeconfig {
        Some(path) if !path.exists() => AssemblyError(format!(
            "kubernetes: no cluster to write Secrets to: not running in a pod (KUBERNETES_SERVICE_HOST is not set) and there is no kubeconfig at {}. Set kubernetes.kubeconfig in the configuration file, or KUBECONFIG",
            path.display()
        )),
        Some(path) => assembly_error(&format!("kubernetes: cannot use the kubeconfig {}", path.display()), error),
        None => assembly_error("kubernetes: not running in a pod and neither KUBECONFIG nor HOME is set to find a kubeconfig", error),
    }
}

/// The Kubernetes client: a kubeconfig when given, else in-cluster, else `$KUBECONFIG`.
pub async fn kube_client(settings: &KubernetesSettings) -> Result<kube::Client, AssemblyError> {
    let options = kube::config::KubeConfigOptions { context: settings.context.clone(), ..Default::default() };
    let kube_config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| assembly_error(&format!("kubernetes.kubeconfig: cannot read {}", path.display()), e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| assembly_error(&format!("kubernetes.kubeconfig: {}", path.display()), e))?
        }
        None if settings.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| assembly_error("kubernetes.context", e))?,
        None => kube::Config::infer().await.map_err(no_cluster)?,
    };
    kube::Client::try_from(kube_config).map_err(|e| assembly_error("kubernetes: cannot build a client", e))
}

/// The quota test mails are paced to: the configured one, else ACS's stricter default
/// (an Azure-managed domain's) for smtp.azurecomm.net, and none for other relays.
fn mail_quota(smtp: &crate::config::SmtpConfig) -> Option<crate::adapters::smtp::quota::MailQuota> {
    use crate::adapters::smtp::quota::MailQuota;
    use crate::config::{MailQuotaConfig, NamedMailQuota};
    match smtp.quota {
        Some(MailQuotaConfig::Named(NamedMailQuota::AzureManaged)) => Some(MailQuota::AZURE_MANAGED),
        Some(MailQuotaConfig::Named(NamedMailQuota::CustomDomain)) => Some(MailQuota::CUSTOM_DOMAIN),
        Some(MailQuotaConfig::Figures { per_minute, per_hour }) => Some(MailQuota { per_minute, per_hour }),
        None => crate::adapters::smtp::quota::default_quota(&smtp.host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AzureSettings, CredentialConfig, TlsSettings};

    fn assembly() -> Assembly {
        let azure = AzureSettings { credential: CredentialConfig::ManagedIdentity { client_id: None }, ..AzureSettings::default() };
        Assembly::new(&azure, &TlsSettings { extra_root_certificates: Vec::new() }, None).unwrap()
    }

    /// An identity's clients are built once and rebuilt when the identity or its Secret
    /// changes (a new resourceVersion), so a rotated identity secret takes effect.
    #[tokio::test]
    async fn an_identitys_clients_are_reused_until_its_version_changes() {
        let assembly = assembly();
        let credential = RotatorCredential::ClientSecret {
            tenant_id: "11111111-1111-1111-1111-111111111111".into(),
            client_id: "22222222-2222-2222-2222-222222222222".into(),
            secret: SecretString::from("first".to_string()),
        };
        let as_version = |version| SignInAs { name: "RotatorIdentity team-a/entra", version, credential: &credential };

        let first = assembly.signed_in(&as_version("7/3")).unwrap();
        let again = assembly.signed_in(&as_version("7/3")).unwrap();
        let changed = assembly.signed_in(&as_version("7/4")).unwrap();
        let after = assembly.signed_in(&as_version("7/4")).unwrap();

        assert!(Arc::ptr_eq(&first, &again), "the same version reuses the clients");
        assert!(!Arc::ptr_eq(&first, &changed), "a new version rebuilds them");
        assert!(Arc::ptr_eq(&changed, &after));
        assert!(!Arc::ptr_eq(&first.directory, &assembly.own.directory), "and never shares the rotator's own");
    }
}
