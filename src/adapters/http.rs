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
