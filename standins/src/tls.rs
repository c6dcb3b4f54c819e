//! A throw-away certificate authority for the stand-ins.
//!
//! The production clients insist on HTTPS (azure_identity refuses an authority host
//! without it), so the stand-ins serve TLS with a certificate for `localhost` and
//! `127.0.0.1` signed by a CA generated at start. Clients trust that CA through the
//! same `tls.extraRootCertificates` setting users need behind TLS-inspecting proxies.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// A CA and one server certificate it signed.
pub struct TestPki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
}

impl TestPki {
    /// Generates a fresh CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn generate() -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "entra-rotator stand-in CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        server_params.distinguished_name.push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca)?;

        Ok(Self {
            ca_pem: ca.pem(),
            server_chain: vec![server_cert.der().clone()],
            server_key_der: server_key.serialize_der(),
        })
    }

    /// The CA certificate, PEM encoded, for clients to trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate chain, PEM encoded, for third-party servers in tests.
    pub fn server_cert_pem(&self) -> String {
        self.server_chain.iter().map(|der| pem_block("CERTIFICATE", der)).collect()
    }

    /// The server's private key (PKCS#8), PEM encoded, for third-party servers in tests.
    pub fn server_key_pem(&self) -> String {
        pem_block("PRIVATE KEY", &self.server_key_der)
    }

    /// A rustls server configuration presenting the server certificate.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(self.server_chain.clone(), key)?;
        Ok(Arc::new(config))
    }
}

/// Wraps DER bytes in a PEM block with 64-character lines.
fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        encoded.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}
