//! A read-only look at an SMTP relay for `entra-rotator smtp-test`: the greeting, the EHLO
//! capabilities before and after STARTTLS, and the TLS version and cipher suite negotiated.
//!
//! This is a separate connection from the test mail's on purpose: lettre keeps only the EHLO
//! extensions it knows (`SIZE 31457280` and anything unfamiliar are dropped) and does not
//! expose the rustls session, so neither the capability lines nor the TLS facts can be read
//! from the session that sends the mail. The probe never authenticates and sends no mail;
//! the verdict and its explanation come from [`super::smtp::SmtpVerifier`]. It trusts the same
//! roots as the verifier (webpki roots plus the extra ones).

use super::http::TlsTrust;
use super::smtp::TlsMode;
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest reply line read (RFC 5321 allows 512 octets; be generous, but bounded).
const MAX_LINE: u64 = 4_096;
/// Most lines in one reply.
const MAX_REPLY_LINES: usize = 100;

/// What the probe saw; everything is optional because it stops at the first problem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// The 220 greeting line, e.g. `220 smtp.azurecomm.net ESMTP`.
    pub greeting: Option<String>,
    /// EHLO capabilities on the plain connection, e.g. `SIZE 31457280`, `STARTTLS`.
    pub capabilities_plain: Vec<String>,
    /// EHLO capabilities once encrypted, e.g. `AUTH LOGIN`.
    pub capabilities_tls: Vec<String>,
    pub tls: Option<TlsFacts>,
    /// Where and why the probe stopped early.
    pub stopped: Option<String>,
}

/// The TLS session negotiated with the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFacts {
    /// e.g. `TLS 1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
}

/// Connects to `host:port`, reads the greeting, sends EHLO, upgrades with STARTTLS (or
/// starts with TLS in implicit mode), sends EHLO again and QUIT; bounded by `timeout`.
pub async fn probe(
    host: &str,
    port: u16,
    mode: TlsMode,
    trust: &TlsTrust,
    timeout: Duration,
) -> ProbeReport {
    let mut report = ProbeReport::default();
    let outcome =
        tokio::time::timeout(timeout, converse(host, port, mode, trust, &mut report)).await;
    report.stopped = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(problem)) => Some(problem),
        Err(_) => Some(format!("no answer within {timeout:?}")),
    };
    report
}

async fn converse(
    host: &str,
    port: u16,
    mode: TlsMode,
    trust: &TlsTrust,
    report: &mut ProbeReport,
) -> Result<(), String> {
    let hello = format!("EHLO {}", ClientId::default());
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("could not connect: {e}"))?;
    let connector = connector(trust)?;
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host} is not a valid server name: {e}"))?;
    match mode {
        TlsMode::Implicit => {
            let tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            report.tls = Some(tls_facts(tls.get_ref().1));
            let mut stream = BufReader::new(tls);
            report.greeting = Some(expect(&mut stream, 220).await?.join(" "));
            report.capabilities_tls = ehlo(&mut stream, &hello).await?;
            quit(&mut stream).await;
        }
        TlsMode::StartTls => {
            let mut plain = BufReader::new(tcp);
            report.greeting = Some(expect(&mut plain, 220).await?.join(" "));
            report.capabilities_plain = ehlo(&mut plain, &hello).await?;
            if !report
                .capabilities_plain
                .iter()
                .any(|c| c.eq_ignore_ascii_case("STARTTLS"))
            {
                quit(&mut plain).await;
                return Err("the relay does not offer STARTTLS".into());
            }
            send(&mut plain, "STARTTLS").await?;
            expect(&mut plain, 220).await?;
            let tls = connector
                .connect(server_name, plain.into_inner())
                .await
                .map_err(|e| format!("TLS handshake after STARTTLS failed: {e}"))?;
            report.tls = Some(tls_facts(tls.get_ref().1));
            let mut stream = BufReader::new(tls);
            report.capabilities_tls = ehlo(&mut stream, &hello).await?;
            quit(&mut stream).await;
        }
    }
    Ok(())
}

fn connector(trust: &TlsTrust) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, pem) in trust.extra_root_pems.iter().enumerate() {
        for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let certificate = certificate
                .map_err(|e| format!("extra root certificate #{index} is not PEM: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("extra root certificate #{index} is not usable: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn tls_facts(session: &rustls::ClientConnection) -> TlsFacts {
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let cipher_suite = session.negotiated_cipher_suite().map_or_else(
        || "unknown".to_string(),
        |suite| format!("{:?}", suite.suite()),
    );
    TlsFacts {
        version,
        cipher_suite,
    }
}

/// EHLO's capability lines: the reply without its first line (the server's name).
async fn ehlo<S: AsyncBufRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &str,
) -> Result<Vec<String>, String> {
    send(stream, hello).await?;
    Ok(expect(stream, 250).await?.into_iter().skip(1).collect())
}

async fn quit<S: AsyncBufRead + AsyncWrite + Unpin>(stream: &mut S) {
    // Politeness only: the probe has what it came for.
    if send(stream, "QUIT").await.is_ok() {
        let _ = reply(stream).await;
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, line: &str) -> Result<(), String> {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| format!("could not send {line}: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("could not send {line}: {e}"))
}

/// Reads one reply and checks its code; returns the text of each line.
async fn expect<S: AsyncBufRead + Unpin>(stream: &mut S, code: u16) -> Result<Vec<String>, String> {
    let (got, lines) = reply(stream).await?;
    if got == code {
        Ok(lines)
    } else {
        Err(format!(
            "expected {code}, the relay answered `{got} {}`",
            lines.join(" ")
        ))
    }
}

/// One (possibly multi-line) reply: `250-first`, ..., `250 last`.
async fn reply<S: AsyncBufRead + Unpin>(stream: &mut S) -> Result<(u16, Vec<String>), String> {
    let mut lines = Vec::new();
    loop {
        let mut raw = Vec::new();
        let read = (&mut *stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut raw)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if read == 0 {
            return Err("the relay closed the connection".into());
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an SMTP reply: {line:?}"))?;
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_string());
        if last {
            return Ok((code, lines));
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(format!("a reply of more than {MAX_REPLY_LINES} lines"));
        }
    }
}
