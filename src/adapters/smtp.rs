//! Verifies a client secret the way consumers use it: one SMTP session through the relay
//! (Azure Communication Services: `smtp.azurecomm.net:587`, STARTTLS, AUTH LOGIN) that
//! sends a short test mail. A failure is explained in words: which of the username form,
//! the secret, the app's role, the sender address, TLS or the port is wrong.
//!
//! Built on lettre. Its `AsyncSmtpTransport::send` runs connect, STARTTLS, AUTH, MAIL,
//! RCPT and DATA inside one call, and its error carries the reply code and text but not
//! the command that drew it; yet the same `550` means "sender refused" after MAIL FROM and
//! "recipient refused" after RCPT TO, and guessing from enhanced codes or reply text breaks
//! with every relay that words things differently. So we drive lettre's
//! `AsyncSmtpConnection` (what `AsyncSmtpTransport` uses underneath) one command at a
//! time and record the phase before each step: every failure is attributed to the exact
//! command that failed, whatever the relay's wording.

use crate::adapters::http::TlsTrust;
use crate::domain::{AppRef, ExposeSecret, SecretString};
use crate::engine::ports::{Verifier, VerifyError, VerifyFailureKind};
use crate::template::Template;
use async_trait::async_trait;
use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The submission port ACS documents (25 works too, but is blocked outbound from Azure VMs).
pub const DEFAULT_PORT: u16 = 587;
/// How long one verification session may take, connect to QUIT.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the connection is encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS, required (ACS, port 587 or 25).
    #[default]
    StartTls,
    /// TLS from the first byte (port 465 style).
    Implicit,
}

/// The SASL mechanism used to authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthMechanism {
    /// AUTH LOGIN, the only mechanism ACS accepts.
    #[default]
    Login,
    /// AUTH PLAIN, for relays other than ACS.
    Plain,
}

impl AuthMechanism {
    fn lettre(self) -> Mechanism {
        match self {
            AuthMechanism::Login => Mechanism::Login,
            AuthMechanism::Plain => Mechanism::Plain,
        }
    }
}

/// Where and how to send the verification mail.
#[derive(Clone, Debug)]
pub struct SmtpVerification {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub mechanism: AuthMechanism,
    /// The SMTP username; may use `{{tenantId}}`, `{{clientId}}` and `{{objectId}}`,
    /// e.g. `my-acs|{{clientId}}|{{tenantId}}`, or be a fixed custom SMTP username.
    pub username: Template,
    /// The MailFrom address (`DoNotReply@<guid>.azurecomm.net` on an Azure-managed domain);
    /// `Name <address>` is accepted.
    pub from: String,
    /// Who receives the verification mail.
    pub to: String,
    /// How long one whole session may take.
    pub timeout: Duration,
}

impl SmtpVerification {
    /// Port 587, STARTTLS, AUTH LOGIN and a 30 s timeout: what ACS expects.
    pub fn new(host: &str, username: Template, from: &str, to: &str) -> Self {
        Self {
            host: host.to_string(),
            port: DEFAULT_PORT,
            tls: TlsMode::StartTls,
            mechanism: AuthMechanism::Login,
            username,
            from: from.to_string(),
            to: to.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A verifier that cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    #[error(
        "SMTP verification {field} {value:?} is not an email address ({detail}); write it like DoNotReply@<guid>.azurecomm.net or `Name <address>`"
    )]
    BadAddress {
        field: &'static str,
        value: String,
        detail: String,
    },
    #[error(
        "extra root certificate #{index} for the SMTP relay is not a valid PEM certificate: {detail}. Check tls.extraRootCertificates"
    )]
    BadCertificate { index: usize, detail: String },
    #[error("could not set up TLS for the SMTP relay {host}: {detail}. Check the host name")]
    Tls { host: String, detail: String },
}

/// Sends one test mail per [`verify`](Verifier::verify) through an SMTP relay.
pub struct SmtpVerifier {
    settings: SmtpVerification,
    tls: TlsParameters,
    from: Mailbox,
    to: Mailbox,
}

impl fmt::Debug for SmtpVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SmtpVerifier {
    /// Checks the addresses and builds the TLS parameters (system roots plus `trust`).
    pub fn new(settings: SmtpVerification, trust: &TlsTrust) -> Result<Self, SmtpSetupError> {
        let from = parse_mailbox("from", &settings.from)?;
        let to = parse_mailbox("to", &settings.to)?;
        let tls = tls_parameters(&settings.host, trust)?;
        Ok(Self {
            settings,
            tls,
            from,
            to,
        })
    }

    fn username_for(&self, app: &AppRef) -> String {
        let tenant_id = app.tenant_id.to_string();
        let client_id = app.client_id.to_string();
        let object_id = app.object_id.map(|id| id.to_string()).unwrap_or_default();
        let vars = BTreeMap::from([
            ("tenantId", tenant_id.as_str()),
            ("clientId", client_id.as_str()),
            ("objectId", object_id.as_str()),
        ]);
        self.settings.username.render(&vars)
    }

    fn test_message(&self, app: &AppRef) -> Result<Message, lettre::error::Error> {
        self.message(
            format!(
                "entra-rotator verification for application {}",
                app.client_id
            ),
            format!(
                "entra-rotator sent this message to check that the SMTP credential of {app} \
                 works after a secret rotation.\r\nNo action is needed.\r\n"
            ),
        )
    }

    fn message(&self, subject: String, body: String) -> Result<Message, lettre::error::Error> {
        Message::builder()
            .from(self.from.clone())
            .to(self.to.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
    }

    /// Sends one test mail as `username` (taken as is, no template), for
    /// `entra-rotator smtp-test`; a failure carries the same phase-exact explanation as
    /// [`verify`](Verifier::verify).
    pub async fn send_test_mail(
        &self,
        username: &str,
        secret: &SecretString,
    ) -> Result<(), VerifyError> {
        let message = self.message(
            "entra-rotator smtp-test".to_string(),
            "entra-rotator smtp-test sent this message to check the SMTP relay settings.\r\n\
             No action is needed.\r\n"
                .to_string(),
        );
        self.deliver(username, secret, message).await
    }

    /// One session sending `message`, its failure explained in words.
    async fn deliver(
        &self,
        username: &str,
        secret: &SecretString,
        message: Result<Message, lettre::error::Error>,
    ) -> Result<(), VerifyError> {
        let fail = |kind, message: String| VerifyError {
            target: self.describe(),
            kind,
            message: redact(&message, secret),
        };
        let email = message
            .map_err(|e| {
                fail(
                    VerifyFailureKind::Other,
                    format!("could not build the verification mail: {e}"),
                )
            })?
            .formatted();
        let mut phase = Phase::Connect;
        let outcome = tokio::time::timeout(
            self.settings.timeout,
            self.session(username, secret, &email, &mut phase),
        )
        .await;
        match outcome.unwrap_or(Err(Failure::TimedOut)) {
            Ok(()) => Ok(()),
            Err(failure) => {
                let (kind, message) = self.explain(phase, failure, username);
                Err(fail(kind, message))
            }
        }
    }

    /// One SMTP session; `phase` says how far it got when it fails.
    async fn session(
        &self,
        username: &str,
        secret: &SecretString,
        email: &[u8],
        phase: &mut Phase,
    ) -> Result<(), Failure> {
        let s = &self.settings;
        let hello = ClientId::default();
        *phase = Phase::Connect;
        let implicit = (s.tls == TlsMode::Implicit).then(|| self.tls.clone());
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (s.host.as_str(), s.port),
            Some(s.timeout),
            &hello,
            implicit,
            None,
        )
        .await?;
        let result = self
            .converse(&mut conn, &hello, username, secret, email, phase)
            .await;
        match &result {
            // The mail is accepted at this point; a failed QUIT changes nothing.
            Ok(()) => {
                let _ = conn.quit().await;
            }
            // The relay answered: the stream is sound, say QUIT politely.
            Err(failure) if failure.relay_answered() => conn.abort().await,
            // Network or TLS failure: the stream is unusable (after a failed STARTTLS
            // lettre has no stream left to write QUIT to), so just drop it.
            Err(_) => {}
        }
        result
    }

    async fn converse(
        &self,
        conn: &mut AsyncSmtpConnection,
        hello: &ClientId,
        username: &str,
        secret: &SecretString,
        email: &[u8],
        phase: &mut Phase,
    ) -> Result<(), Failure> {
        if self.settings.tls == TlsMode::StartTls {
            *phase = Phase::StartTls;
            if !conn.can_starttls() {
                return Err(Failure::StartTlsNotOffered);
            }
            conn.starttls(self.tls.clone(), hello).await?;
        }
        *phase = Phase::Auth;
        let mechanism = self.settings.mechanism.lettre();
        if !conn.server_info().supports_auth_mechanism(mechanism) {
            return Err(Failure::MechanismNotOffered {
                offered: offered_mechanisms(conn),
            });
        }
        let credentials =
            Credentials::new(username.to_string(), secret.expose_secret().to_string());
        conn.auth(&[mechanism], &credentials).await?;
        *phase = Phase::MailFrom;
        conn.command(Mail::new(Some(self.from.email.clone()), vec![]))
            .await?;
        *phase = Phase::RcptTo;
        conn.command(Rcpt::new(self.to.email.clone(), vec![]))
            .await?;
        *phase = Phase::Data;
        conn.command(Data).await?;
        conn.message(email).await?;
        Ok(())
    }

    fn explain(
        &self,
        phase: Phase,
        failure: Failure,
        username: &str,
    ) -> (VerifyFailureKind, String) {
        let s = &self.settings;
        match failure {
            Failure::TimedOut => (
                VerifyFailureKind::Connection,
                format!(
                    "the SMTP relay {}:{} did not answer within {:?} {phase}. {CONNECTION_ADVICE}",
                    s.host, s.port, s.timeout
                ),
            ),
            Failure::StartTlsNotOffered => (
                VerifyFailureKind::Tls,
                format!(
                    "the SMTP relay {}:{} does not offer STARTTLS, so the credential was not sent. \
                     ACS offers STARTTLS on port 587; for a port that speaks TLS from the start (465) set tls: implicit",
                    s.host, s.port
                ),
            ),
            Failure::MechanismNotOffered { offered } => (
                VerifyFailureKind::MechanismRejected,
                format!(
                    "the SMTP relay does not offer AUTH {} (it offers: {}). {MECHANISM_ADVICE}",
                    mechanism_name(s.mechanism),
                    if offered.is_empty() {
                        "no AUTH at all".to_string()
                    } else {
                        offered.join(", ")
                    }
                ),
            ),
            Failure::Smtp(error) => self.explain_smtp(phase, &error, username),
        }
    }

    fn explain_smtp(
        &self,
        phase: Phase,
        error: &SmtpError,
        username: &str,
    ) -> (VerifyFailureKind, String) {
        let s = &self.settings;
        let Some(code) = error.status() else {
            return self.explain_transport(phase, error);
        };
        let code = u16::from(code);
        let reply = reply_text(code, error);
        let enhanced = enhanced_code(&reply);
        let kind = match phase {
            _ if (400..500).contains(&code) => VerifyFailureKind::Temporary,
            Phase::Auth if code == 535 => VerifyFailureKind::BadCredentials,
            Phase::Auth if code == 504 || enhanced.as_deref() == Some("5.7.4") => {
                VerifyFailureKind::MechanismRejected
            }
            Phase::Auth if code == 530 || code == 538 => VerifyFailureKind::Tls,
            Phase::MailFrom => VerifyFailureKind::SenderRejected,
            Phase::RcptTo => VerifyFailureKind::RecipientRejected,
            _ => VerifyFailureKind::Other,
        };
        let advice = match kind {
            VerifyFailureKind::Temporary => TEMPORARY_ADVICE.to_string(),
            VerifyFailureKind::BadCredentials => format!(
                "The relay refused username `{username}` with this secret. {CREDENTIALS_ADVICE}"
            ),
            VerifyFailureKind::MechanismRejected => MECHANISM_ADVICE.to_string(),
            VerifyFailureKind::Tls => {
                "The relay wants an encrypted connection before AUTH; use tls: startTls on port 587"
                    .to_string()
            }
            VerifyFailureKind::SenderRejected => {
                format!("The relay refused the sender {}. {SENDER_ADVICE}", s.from)
            }
            VerifyFailureKind::RecipientRejected => {
                format!(
                    "The relay refused the recipient {}; check the verification `to` address",
                    s.to
                )
            }
            _ => "See the relay's reply for the reason".to_string(),
        };
        (
            kind,
            format!("the SMTP relay answered `{reply}` {phase}. {advice}"),
        )
    }

    /// Failures without an SMTP reply: network, TLS, or an unreadable answer.
    fn explain_transport(&self, phase: Phase, error: &SmtpError) -> (VerifyFailureKind, String) {
        let s = &self.settings;
        let detail = root_cause(error);
        if error.is_timeout() {
            return (
                VerifyFailureKind::Connection,
                format!(
                    "the SMTP relay {}:{} timed out {phase} ({detail}). {CONNECTION_ADVICE}",
                    s.host, s.port
                ),
            );
        }
        // A connection cut during the STARTTLS handshake is a TLS failure too (a proxy
        // that refuses TLS, a relay that does not speak it on this port).
        if error.is_tls() || rustls_error(error).is_some() || phase == Phase::StartTls {
            return (
                VerifyFailureKind::Tls,
                format!(
                    "the TLS handshake with the SMTP relay {}:{} failed {phase}: {detail}. {}",
                    s.host,
                    s.port,
                    tls_advice(rustls_error(error))
                ),
            );
        }
        if phase == Phase::Connect && !error.is_response() {
            return (
                VerifyFailureKind::Connection,
                format!(
                    "could not reach the SMTP relay {}:{}: {detail}. {CONNECTION_ADVICE}",
                    s.host, s.port
                ),
            );
        }
        (
            VerifyFailureKind::Connection,
            format!(
                "the SMTP relay {}:{} closed the connection or answered something unreadable {phase} ({detail}). \
                 It will be tried again; if it keeps happening, check that this host and port are an SMTP relay \
                 and that no proxy or firewall cuts SMTP sessions",
                s.host, s.port
            ),
        )
    }
}

#[async_trait]
impl Verifier for SmtpVerifier {
    fn describe(&self) -> String {
        let s = &self.settings;
        let tls = match s.tls {
            TlsMode::StartTls => "STARTTLS",
            TlsMode::Implicit => "implicit TLS",
        };
        format!(
            "SMTP relay {}:{} ({tls}, AUTH {})",
            s.host,
            s.port,
            mechanism_name(s.mechanism)
        )
    }

    async fn verify(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError> {
        let username = self.username_for(app);
        self.deliver(&username, secret, self.test_message(app))
            .await
    }
}

/// Which command the session was at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connect,
    StartTls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "while connecting (greeting and EHLO)",
            Phase::StartTls => "during STARTTLS",
            Phase::Auth => "to AUTH",
            Phase::MailFrom => "to MAIL FROM",
            Phase::RcptTo => "to RCPT TO",
            Phase::Data => "to the message (DATA)",
        })
    }
}

/// Why a session failed.
enum Failure {
    Smtp(SmtpError),
    StartTlsNotOffered,
    MechanismNotOffered { offered: Vec<String> },
    TimedOut,
}

impl Failure {
    /// Whether the relay sent a reply, i.e. the connection is still in step.
    fn relay_answered(&self) -> bool {
        match self {
            Failure::Smtp(error) => error.status().is_some(),
            Failure::StartTlsNotOffered | Failure::MechanismNotOffered { .. } => true,
            Failure::TimedOut => false,
        }
    }
}

impl From<SmtpError> for Failure {
    fn from(error: SmtpError) -> Self {
        Failure::Smtp(error)
    }
}

const CREDENTIALS_ADVICE: &str = "Check the username form `<resource>|<appId>|<tenantId>` (the Communication Services \
resource name, the app's client id, the tenant id) or the custom SMTP username, the client secret, and that the \
app has a role with Microsoft.Communication/CommunicationServices/Read and \
Microsoft.Communication/EmailServices/Write on the Communication Services resource. A brand-new secret is \
refused until Entra has replicated it (seconds to minutes), so this is retried before it counts as a failure";

const MECHANISM_ADVICE: &str = "The ACS relay accepts AUTH LOGIN only; set mechanism: login \
(clients using AUTH PLAIN, such as Go's smtp.PlainAuth, get 504 5.7.4)";

const SENDER_ADVICE: &str = "An Azure-managed domain accepts only DoNotReply@<guid>.azurecomm.net as MailFrom; \
a custom domain needs verified SPF and DKIM records and the address added under MailFrom addresses, and the \
domain must be connected to the Communication Services resource";

const TEMPORARY_ADVICE: &str = "This is a temporary refusal (throttling, the sending quota, or a fault at the \
relay); it will be tried again later";

const CONNECTION_ADVICE: &str = "Check the host and port (ACS: smtp.azurecomm.net, port 587 with STARTTLS) and \
firewalls or proxies in between; outbound port 25 is blocked from Azure VMs, use 587";

fn tls_advice(error: Option<&rustls::Error>) -> &'static str {
    match error {
        Some(rustls::Error::InvalidCertificate(_)) => {
            "The relay's certificate is not trusted or does not match the host name: check the host \
             (smtp.azurecomm.net), and if a TLS-inspecting proxy or a private CA sits in between add its CA \
             under tls.extraRootCertificates"
        }
        _ => {
            "Check the TLS mode and port: 587 speaks STARTTLS, 465 speaks TLS from the start; and check for \
             proxies that interfere with TLS"
        }
    }
}

fn mechanism_name(mechanism: AuthMechanism) -> &'static str {
    match mechanism {
        AuthMechanism::Login => "LOGIN",
        AuthMechanism::Plain => "PLAIN",
    }
}

fn offered_mechanisms(conn: &AsyncSmtpConnection) -> Vec<String> {
    [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
        .into_iter()
        .filter(|m| conn.server_info().supports_auth_mechanism(*m))
        .map(|m| format!("AUTH {m}"))
        .collect()
}

/// `535 5.7.3 Authentication unsuccessful`: lettre keeps the reply's text as the error's source.
fn reply_text(code: u16, error: &SmtpError) -> String {
    use std::error::Error as _;
    match error.source() {
        Some(text) => format!("{code} {text}"),
        None => code.to_string(),
    }
}

/// The enhanced status code (`5.7.4`) at the start of a reply's text, if present.
fn enhanced_code(reply: &str) -> Option<String> {
    let candidate = reply.split_whitespace().nth(1)?;
    let parts: Vec<&str> = candidate.split('.').collect();
    let valid = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    valid.then(|| candidate.to_string())
}

/// The rustls error behind a TLS failure; tokio-rustls wraps it in an `io::Error`.
fn rustls_error(error: &SmtpError) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = source {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        source = current.source();
    }
    None
}

/// The innermost cause, e.g. `Connection refused (os error 111)` or
/// `invalid peer certificate: UnknownIssuer`; lettre's own layers only repeat "Connection error".
fn root_cause(error: &SmtpError) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Belt and braces: a relay that echoes what it was sent must not leak the secret.
fn redact(message: &str, secret: &SecretString) -> String {
    let value = secret.expose_secret();
    if value.is_empty() {
        message.to_string()
    } else {
        message.replace(value, "[REDACTED]")
    }
}

fn parse_mailbox(field: &'static str, value: &str) -> Result<Mailbox, SmtpSetupError> {
    value
        .parse::<Mailbox>()
        .map_err(|e| SmtpSetupError::BadAddress {
            field,
            value: value.to_string(),
            detail: e.to_string(),
        })
}

fn tls_parameters(host: &str, trust: &TlsTrust) -> Result<TlsParameters, SmtpSetupError> {
    let mut builder = TlsParameters::builder(host.to_string());
    for (index, pem) in trust.extra_root_pems.iter().enumerate() {
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| SmtpSetupError::BadCertificate {
                    index,
                    detail: e.to_string(),
                })?;
        if certificates.is_empty() {
            return Err(SmtpSetupError::BadCertificate {
                index,
                detail: "no certificate found".into(),
            });
        }
        for der in certificates {
            let certificate = Certificate::from_der(der.to_vec()).map_err(|e| {
                SmtpSetupError::BadCertificate {
                    index,
                    detail: e.to_string(),
                }
            })?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build_rustls().map_err(|e| SmtpSetupError::Tls {
        host: host.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_enhanced_codes() {
        assert_eq!(
            enhanced_code("504 5.7.4 Unrecognized authentication type").as_deref(),
            Some("5.7.4")
        );
        assert_eq!(enhanced_code("535 Authentication failed"), None);
        assert_eq!(enhanced_code("550"), None);
    }

    #[test]
    fn redacts_the_secret() {
        let secret = SecretString::from("s3cr3t~value");
        assert_eq!(
            redact("got s3cr3t~value back", &secret),
            "got [REDACTED] back"
        );
    }

    #[test]
    fn refuses_addresses_that_are_not_addresses() {
        let settings = SmtpVerification::new(
            "relay",
            Template::parse("u").unwrap(),
            "not an address",
            "a@b.c",
        );
        let err = SmtpVerifier::new(settings, &TlsTrust::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("from \"not an address\" is not an email address"),
            "{err}"
        );
    }
}
