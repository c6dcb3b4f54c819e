//! A read-only look at an SMTP relay for `entra-rotator smtp-test`: the greeting, the EHLO
//! capabilities before and after STARTTLS, and the TLS version and cipher suite negotiated.
//!
//! This is a separate connection from the test mail's on purpose: lettre keeps only the EHLO
//! extensions it knows (`SIZE 31457280` and anything unfamiliar are dropped) and does not
//! expose the rustls session, so neither the capability lines nor the TLS facts can be read
//! from the session that sends the mail. The probe never authenticates and sends no mail;
//! the verdict and its explanation come from [`super::smtp::SmtpVerifier`]. It trusts the same
//! roots as the verifier (webpki roots plus the extra ones), and reads through the same
//! `wire` code: bounded replies, and no bytes accepted after the answer to STARTTLS.

use super::http::TlsTrust;
use super::smtp::wire::{self, Plaintext, WireError};
use super::smtp::{TlsMode, sanitize_reply};
use lettre::transport::smtp::commands::Ehlo;
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncWrite, BufReader};
use tokio_rustls::TlsConnector;

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
    let hello = ClientId::default();
    let connector = connector(trust)?;
    let stop = |step: &'static str| move |error: WireError| stopped(host, port, step, error);
    let mut plain = Plaintext::connect(host, port)
        .await
        .map_err(stop("connecting"))?;
    let peer = plain.peer();
    let mut stream = match mode {
        TlsMode::Implicit => {
            let tls = plain
                .handshake(&connector, host)
                .await
                .map_err(stop("the TLS handshake"))?;
            report.tls = Some(tls_facts(tls.get_ref().1));
            let mut stream = BufReader::new(wire::bounded(tls, peer));
            let greeting = wire::read_reply(&mut stream)
                .await
                .map_err(stop("the greeting"))?;
            report.greeting = Some(shown(&greeting.lines).join(" "));
            stream
        }
        TlsMode::StartTls => {
            let greeting = plain.expect(220).await.map_err(stop("the greeting"))?;
            report.greeting = Some(shown(&greeting.lines).join(" "));
            report.capabilities_plain = shown(&plain.ehlo(&hello).await.map_err(stop("EHLO"))?);
            if !report
                .capabilities_plain
                .iter()
                .any(|c| c.eq_ignore_ascii_case("STARTTLS"))
            {
                plain.quit().await;
                return Err("the relay does not offer STARTTLS".into());
            }
            let tls = plain
                .starttls(&connector, host)
                .await
                .map_err(stop("STARTTLS"))?;
            report.tls = Some(tls_facts(tls.get_ref().1));
            BufReader::new(wire::bounded(tls, peer))
        }
    };
    report.capabilities_tls = shown(
        &ehlo(&mut stream, &hello)
            .await
            .map_err(stop("EHLO over TLS"))?,
    );
    // Politeness only: the probe has what it came for.
    if wire::send(&mut stream, "QUIT\r\n").await.is_ok() {
        let _ = wire::read_reply(&mut stream).await;
    }
    Ok(())
}

/// Why the probe stopped at `step`, in words.
fn stopped(host: &str, port: u16, step: &str, error: WireError) -> String {
    match error {
        WireError::Resolve(e) => format!("the host name {host} does not resolve: {e}"),
        WireError::Connect(e) => format!("could not connect: {e}"),
        WireError::Io(e) => format!("{step} failed: {e}"),
        WireError::Limit(limit) => format!(
            "{host}:{port} sent {limit} in {step}, so the probe stopped before reading more"
        ),
        WireError::NotAReply(line) => format!("not an SMTP reply in {step}: `{line}`"),
        WireError::Reply { code, text } => format!(
            "the relay answered `{code} {}` to {step}",
            sanitize_reply(&text)
        ),
        WireError::BytesAfterStartTls => format!(
            "{host}:{port} sent bytes after STARTTLS reply: possible STARTTLS command injection \
             (CVE-2011-0411 class); the probe stopped before the TLS handshake"
        ),
        WireError::Tls(e) if step == "STARTTLS" => {
            format!("TLS handshake after STARTTLS failed: {e}")
        }
        WireError::Tls(e) => format!("TLS handshake failed: {e}"),
    }
}

/// Relay text as shown on a terminal: no control characters (no escape sequences), bounded.
fn shown(lines: &[String]) -> Vec<String> {
    lines.iter().map(|line| sanitize_reply(line)).collect()
}

fn connector(trust: &TlsTrust) -> Result<TlsConnector, String> {
    let mut roots = Vec::new();
    for (index, pem) in trust.extra_root_pems.iter().enumerate() {
        for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.push(
                certificate
                    .map_err(|e| format!("extra root certificate #{index} is not PEM: {e}"))?,
            );
        }
    }
    wire::connector(roots)
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
    hello: &ClientId,
) -> Result<Vec<String>, WireError> {
    wire::send(stream, &Ehlo::new(hello.clone()).to_string()).await?;
    let reply = wire::read_reply(stream).await?;
    if reply.code != 250 {
        return Err(WireError::Reply {
            code: reply.code,
            text: reply.lines.join(" "),
        });
    }
    Ok(reply.lines.into_iter().skip(1).collect())
}
