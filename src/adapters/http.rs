//! The one HTTP client set-up shared by the Graph and Key Vault adapters and by the
//! rotator's own credential: rustls, a per-request timeout, and optional extra trusted
//! root certificates (for TLS-inspecting proxies, private clouds, and the stand-ins).

use std::sync::Arc;
use std::time::Duration;

/// Extra CA certificates, PEM encoded, trusted in addition to the system's.
#[derive(Clone, Debug, Default)]
pub struct TlsTrust {
    pub extra_root_pems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("extra root certificate #{index} is not a valid PEM certificate: {detail}. Check tls.extraRootCertificates")]
    BadCertificate { index: usize, detail: String },
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

/// Builds a reqwest client (rustls) that trusts the system roots plus `trust`.
pub fn http_client(trust: &TlsTrust, timeout: Duration) -> Result<reqwest::Client, HttpSetupError> {
    let mut certificates = Vec::new();
    for (index, pem) in trust.extra_root_pems.iter().enumerate() {
        let bundle = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| HttpSetupError::BadCertificate { index, detail: e.to_string() })?;
        if bundle.is_empty() {
            return Err(HttpSetupError::BadCertificate { index, detail: "no certificate found".into() });
        }
        certificates.extend(bundle);
    }
    reqwest::Client::builder()
        .tls_certs_merge(certificates)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

/// azure_core client options that send through `client`.
pub fn azure_client_options(client: reqwest::Client) -> azure_core::http::ClientOptions {
    azure_core::http::ClientOptions {
        transport: Some(azure_core::http::Transport::new(Arc::new(client))),
        ..Default::default()
    }
}

/// Sees every request an adapter sends (one call per attempt), for metrics. Never sees
/// bodies or headers, so it cannot leak a secret.
pub trait ApiObserver: Send + Sync {
    /// `service` is e.g. `graph` or `keyvault`; `status` is `None` when no answer came.
    fn observe(&self, service: &'static str, operation: &str, status: Option<u16>, elapsed: Duration);
}

/// An azure_core per-try policy reporting each Key Vault attempt to an [`ApiObserver`].
pub struct ObservingPolicy {
    pub service: &'static str,
    pub observer: Arc<dyn ApiObserver>,
}

impl std::fmt::Debug for ObservingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservingPolicy").field("service", &self.service).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl azure_core::http::policies::Policy for ObservingPolicy {
    async fn send(
        &self,
        ctx: &azure_core::http::Context,
        request: &mut azure_core::http::Request,
        next: &[Arc<dyn azure_core::http::policies::Policy>],
    ) -> azure_core::http::policies::PolicyResult {
        // The operation is the HTTP method and the collection, e.g. `PUT secrets`: bounded,
        // and free of secret names.
        let collection = request.url().path_segments().and_then(|mut s| s.next()).unwrap_or("").to_string();
        let operation = format!("{} {collection}", request.method());
        let started = std::time::Instant::now();
        let result = match next.split_first() {
            Some((policy, rest)) => policy.send(ctx, request, rest).await,
            None => return Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Other, "no transport policy")),
        };
        let status = result.as_ref().ok().map(|r| u16::from(r.status()));
        self.observer.observe(self.service, &operation, status, started.elapsed());
        result
    }
}
