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
//!
//! lettre gets the session only once it is encrypted, through a stream that bounds every
//! reply: connecting, the plaintext exchange and STARTTLS happen in `wire`, which
//! refuses overlong replies and bytes injected after STARTTLS. The same session
//! ([`SmtpRelay`]) serves the verifier, `smtp-test` and the email notifier.
//!
//! Messages are built without the secret, so nothing has to be cut out of them afterwards
//! (replacing the secret's text garbles every message for a short or common-word secret and
//! tells which characters it holds). The only text that is not ours is the relay's, and a
//! relay may echo what it was sent: so replies to AUTH, the one command that carries the
//! credential, are quoted by their code and enhanced code only, never their text, and
//! nothing lettre reports about a failed AUTH is quoted either. Replies to every other
//! command (greeting, EHLO, STARTTLS, MAIL FROM, RCPT TO, DATA) are quoted, stripped of
//! control characters and bounded to [`MAX_REPLY_TEXT`] characters: none of them answers
//! anything that carried the secret.

pub mod exchange_online;
pub mod quota;
pub(crate) mod wire;

use crate::adapters::http::TlsTrust;
use crate::domain::{AppRef, ExposeSecret, SecretString};
use crate::engine::ports::{Verifier, VerifyError, VerifyFailureKind};
use crate::template::Template;
use async_trait::async_trait;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use quota::RelayLimiter;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;
use wire::{Plaintext, ReplyLimit, WireError};

/// The submission port ACS documents (25 works too, but is blocked outbound from Azure VMs).
pub const DEFAULT_PORT: u16 = 587;
/// How long one verification session may take, connect to QUIT.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a relay's reply text an explanation quotes, in characters.
pub const MAX_REPLY_TEXT: usize = 300;

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
    /// AUTH XOAUTH2 with an Entra access token as the password (Exchange Online).
    Xoauth2,
}

impl AuthMechanism {
    fn lettre(self) -> Mechanism {
        match self {
            AuthMechanism::Login => Mechanism::Login,
            AuthMechanism::Plain => Mechanism::Plain,
            AuthMechanism::Xoauth2 => Mechanism::Xoauth2,
        }
    }
}

/// What a verification of a newly minted secret proves at the relay.
///
/// An enum, not a switch: other proofs (Exchange Online's AUTH XOAUTH2) are further modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProofMode {
    /// A test mail: STARTTLS, AUTH, MAIL FROM, RCPT TO and DATA. The only proof that the
    /// relay delivers for this app, and it costs one mail of the resource's quota.
    #[default]
    Deliver,
    /// STARTTLS, AUTH, MAIL FROM, RCPT TO, then RSET and QUIT: no message, no quota spent.
    /// Proves the secret authenticates and the sender and recipient are accepted, not that
    /// the relay delivers.
    Handshake,
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
    /// How a newly minted secret is proven; re-checks of a proven one always use the
    /// handshake.
    pub mode: ProofMode,
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
            mode: ProofMode::Deliver,
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

/// One SMTP relay and how to reach it: the session that sends a mail, shared by the
/// verifier, `smtp-test` and the email notifier, with every failure explained in words.
pub struct SmtpRelay {
    host: String,
    port: u16,
    tls: TlsMode,
    mechanism: AuthMechanism,
    timeout: Duration,
    connector: TlsConnector,
    /// Whose replies the explanations read: ACS's, or Exchange Online's.
    dialect: Dialect,
}

/// Which service's replies and set-up an explanation speaks of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// Azure Communication Services (and relays like it).
    Acs,
    /// Exchange Online client submission with OAuth ([`exchange_online`]).
    ExchangeOnline,
}

impl fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SmtpRelay {
    /// Builds the TLS trust for `host` (system roots plus `trust`).
    pub fn new(
        host: &str,
        port: u16,
        tls: TlsMode,
        mechanism: AuthMechanism,
        timeout: Duration,
        trust: &TlsTrust,
    ) -> Result<Self, SmtpSetupError> {
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
            mechanism,
            timeout,
            connector: tls_connector(host, trust)?,
            dialect: Dialect::Acs,
        })
    }

    /// `SMTP relay smtp.azurecomm.net:587 (STARTTLS, AUTH LOGIN)`.
    pub fn describe(&self) -> String {
        let tls = match self.tls {
            TlsMode::StartTls => "STARTTLS",
            TlsMode::Implicit => "implicit TLS",
        };
        format!(
            "SMTP relay {}:{} ({tls}, AUTH {})",
            self.host,
            self.port,
            mechanism_name(self.mechanism)
        )
    }

    /// One session sending `message` to its envelope's recipients as `username`, its
    /// failure explained in words.
    pub async fn send(
        &self,
        username: &str,
        secret: &SecretString,
        message: Message,
    ) -> Result<(), VerifyError> {
        let envelope = message.envelope().clone();
        let email = message.formatted();
        self.run(username, secret, &envelope, Some(&email)).await
    }

    /// One session that authenticates as `username` and has the envelope's sender and
    /// recipients accepted, then sends RSET and QUIT instead of a message: no mail, no
    /// quota spent.
    pub async fn handshake(
        &self,
        username: &str,
        secret: &SecretString,
        envelope: &Envelope,
    ) -> Result<(), VerifyError> {
        self.run(username, secret, envelope, None).await
    }

    async fn run(
        &self,
        username: &str,
        secret: &SecretString,
        envelope: &Envelope,
        email: Option<&[u8]>,
    ) -> Result<(), VerifyError> {
        let mut phase = Phase::Connect;
        let outcome = tokio::time::timeout(
            self.timeout,
            self.session(username, secret, envelope, email, &mut phase),
        )
        .await;
        match outcome.unwrap_or(Err(Failure::TimedOut)) {
            Ok(()) => Ok(()),
            Err(failure) => {
                let (kind, message) = self.explain(phase, failure, username, envelope);
                Err(VerifyError {
                    target: self.describe(),
                    kind,
                    message,
                    authenticated: phase.after_auth(),
                })
            }
        }
    }

    /// One SMTP session; `phase` says how far it got when it fails.
    async fn session(
        &self,
        username: &str,
        secret: &SecretString,
        envelope: &Envelope,
        email: Option<&[u8]>,
        phase: &mut Phase,
    ) -> Result<(), Failure> {
        let hello = ClientId::default();
        *phase = Phase::Connect;
        let mut conn = self.connect(&hello, phase).await?;
        let result = self
            .converse(&mut conn, username, secret, envelope, email, phase)
            .await;
        match &result {
            // The mail (or the handshake) is accepted at this point; a failed QUIT changes
            // nothing.
            Ok(()) => {
                let _ = conn.quit().await;
            }
            // The relay answered: the stream is sound, say QUIT politely.
            Err(failure) if failure.relay_answered() => conn.abort().await,
            // Network failure or a broken limit: the stream is unusable, just drop it.
            Err(_) => {}
        }
        result
    }

    /// Connects, encrypts (STARTTLS or implicit TLS) and hands the session to lettre,
    /// which has then read the greeting and the EHLO answer over TLS.
    async fn connect(
        &self,
        hello: &ClientId,
        phase: &mut Phase,
    ) -> Result<AsyncSmtpConnection, Failure> {
        let stream = match self.tls {
            TlsMode::Implicit => {
                let plain = Plaintext::connect(&self.host, self.port).await?;
                let peer = plain.peer();
                wire::bounded(plain.handshake(&self.connector, &self.host).await?, peer)
            }
            TlsMode::StartTls => {
                let mut plain = Plaintext::connect(&self.host, self.port).await?;
                plain.expect(220).await?;
                let capabilities = plain.ehlo(hello).await?;
                *phase = Phase::StartTls;
                if !capabilities
                    .iter()
                    .any(|c| c.trim().eq_ignore_ascii_case("STARTTLS"))
                {
                    plain.quit().await;
                    return Err(Failure::StartTlsNotOffered);
                }
                let peer = plain.peer();
                let tls = plain.starttls(&self.connector, &self.host).await?;
                wire::resumed_after_starttls(tls, peer)
            }
        };
        Ok(AsyncSmtpConnection::connect_with_transport(stream, hello).await?)
    }

    async fn converse(
        &self,
        conn: &mut AsyncSmtpConnection,
        username: &str,
        secret: &SecretString,
        envelope: &Envelope,
        email: Option<&[u8]>,
        phase: &mut Phase,
    ) -> Result<(), Failure> {
        *phase = Phase::Auth;
        let mechanism = self.mechanism.lettre();
        if !conn.server_info().supports_auth_mechanism(mechanism) {
            return Err(Failure::MechanismNotOffered {
                offered: offered_mechanisms(conn),
            });
        }
        // This copy of the secret belongs to lettre from here on, which clones it into the
        // AUTH command strings it builds; lettre offers no way to zeroize either.
        let credentials =
            Credentials::new(username.to_string(), secret.expose_secret().to_string());
        conn.auth(&[mechanism], &credentials).await?;
        *phase = Phase::MailFrom;
        conn.command(Mail::new(envelope.from().cloned(), vec![]))
            .await?;
        *phase = Phase::RcptTo;
        for recipient in envelope.to() {
            conn.command(Rcpt::new(recipient.clone(), vec![])).await?;
        }
        let Some(email) = email else {
            // The handshake's proof is complete once the recipients are accepted; RSET ends
            // the transaction without a message, and its answer changes nothing.
            let _ = conn.command(Rset).await;
            return Ok(());
        };
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
        envelope: &Envelope,
    ) -> (VerifyFailureKind, String) {
        match failure {
            Failure::TimedOut => (
                VerifyFailureKind::Connection,
                format!(
                    "the SMTP relay {}:{} did not answer within {:?} {phase}. {CONNECTION_ADVICE}",
                    self.host, self.port, self.timeout
                ),
            ),
            Failure::StartTlsNotOffered => (
                VerifyFailureKind::Tls,
                format!(
                    "the SMTP relay {}:{} does not offer STARTTLS, so the credential was not sent. \
                     ACS offers STARTTLS on port 587; for a port that speaks TLS from the start (465) set tls: implicit",
                    self.host, self.port
                ),
            ),
            Failure::MechanismNotOffered { offered } => (
                VerifyFailureKind::MechanismRejected,
                format!(
                    "the SMTP relay does not offer AUTH {} (it offers: {}). {MECHANISM_ADVICE}",
                    mechanism_name(self.mechanism),
                    if offered.is_empty() {
                        "no AUTH at all".to_string()
                    } else {
                        offered.join(", ")
                    }
                ),
            ),
            Failure::Wire(error) => self.explain_wire(phase, error, username, envelope),
            Failure::Smtp(error) => match error.status() {
                Some(code) => {
                    let text = lettre_reply_text(&error);
                    self.explain_reply(phase, u16::from(code), &text, username, envelope)
                }
                None => self.explain_transport(phase, &error),
            },
        }
    }

    /// Failures before lettre took over: connecting, the plaintext exchange, STARTTLS and
    /// the TLS handshake.
    fn explain_wire(
        &self,
        phase: Phase,
        error: WireError,
        username: &str,
        envelope: &Envelope,
    ) -> (VerifyFailureKind, String) {
        let (host, port) = (&self.host, self.port);
        match error {
            WireError::Resolve(io) => (
                VerifyFailureKind::UnknownHost,
                format!(
                    "the SMTP relay host {host} does not resolve ({io}); nothing was sent. Check the host name \
                     (ACS: smtp.azurecomm.net, Exchange Online: smtp.office365.com) and that the rotator's DNS \
                     can resolve it; not retried before the next run"
                ),
            ),
            WireError::Connect(io) => (
                VerifyFailureKind::Connection,
                format!("could not reach the SMTP relay {host}:{port}: {io}. {CONNECTION_ADVICE}"),
            ),
            WireError::Reply { code, text } => {
                self.explain_reply(phase, code, &text, username, envelope)
            }
            WireError::Limit(limit) => self.explain_limit(phase, limit),
            WireError::BytesAfterStartTls => (
                VerifyFailureKind::Tls,
                format!(
                    "the SMTP relay {host}:{port} sent bytes after STARTTLS reply: possible STARTTLS command \
                     injection (CVE-2011-0411 class). The session was stopped before the TLS handshake and the \
                     credential was not sent. Something on the path to the relay (or the relay itself) writes \
                     into the plaintext connection: check for proxies and that this host and port are the relay"
                ),
            ),
            WireError::Tls(io) => (
                VerifyFailureKind::Tls,
                format!(
                    "the TLS handshake with the SMTP relay {host}:{port} failed {phase}: {}. {}",
                    root_cause(&io),
                    tls_advice(host, rustls_error(&io))
                ),
            ),
            WireError::NotAReply(line) => {
                self.unreadable(phase, &format!("not an SMTP reply: `{line}`"))
            }
            WireError::Io(io) => self.unreadable(phase, &root_cause(&io)),
        }
    }

    fn explain_limit(&self, phase: Phase, limit: ReplyLimit) -> (VerifyFailureKind, String) {
        (
            VerifyFailureKind::Other,
            format!(
                "the SMTP relay {}:{} sent {limit} {phase}, so the session was stopped before reading more. \
                 This is not an SMTP relay that works: check the host and port (ACS: smtp.azurecomm.net, port 587)",
                self.host, self.port
            ),
        )
    }

    fn unreadable(&self, phase: Phase, detail: &str) -> (VerifyFailureKind, String) {
        (
            VerifyFailureKind::Connection,
            format!(
                "the SMTP relay {}:{} closed the connection or answered something unreadable {phase} ({detail}). \
                 It will be tried again; if it keeps happening, check that this host and port are an SMTP relay \
                 and that no proxy or firewall cuts SMTP sessions",
                self.host, self.port
            ),
        )
    }

    /// A reply with a failure code, explained by the command that drew it.
    fn explain_reply(
        &self,
        phase: Phase,
        code: u16,
        text: &str,
        username: &str,
        envelope: &Envelope,
    ) -> (VerifyFailureKind, String) {
        let text = sanitize_reply(text);
        let enhanced = enhanced_code(&format!("{code} {text}"));
        if self.dialect == Dialect::ExchangeOnline
            && let Some(explained) = exchange_online::explain_reply(phase, code, enhanced.as_deref(), &text, username, envelope)
        {
            return explained;
        }
        // A reply to AUTH may echo the credential it answers: only its codes are shown.
        let reply = match (phase, &enhanced) {
            (Phase::Auth, Some(enhanced)) => format!("{code} {enhanced}"),
            (Phase::Auth, None) => code.to_string(),
            _ if text.is_empty() => code.to_string(),
            _ => format!("{code} {text}"),
        };
        let kind = match phase {
            _ if (400..500).contains(&code) || is_throttling(&text) => VerifyFailureKind::Throttled,
            Phase::Auth if code == 535 => VerifyFailureKind::BadCredentials,
            Phase::Auth if code == 504 || enhanced.as_deref() == Some("5.7.4") => {
                VerifyFailureKind::MechanismRejected
            }
            Phase::Auth if code == 530 || code == 538 => VerifyFailureKind::Tls,
            Phase::Auth if enhanced.as_deref() == Some("5.7.30") => VerifyFailureKind::MechanismRejected,
            Phase::MailFrom => VerifyFailureKind::SenderRejected,
            Phase::RcptTo if refuses_sender(&text, enhanced.as_deref()) => {
                VerifyFailureKind::SenderRejected
            }
            Phase::RcptTo => VerifyFailureKind::RecipientRejected,
            _ => VerifyFailureKind::Other,
        };
        let sender = envelope
            .from()
            .map(ToString::to_string)
            .unwrap_or_else(|| "<>".to_string());
        let recipients: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        let advice = match kind {
            VerifyFailureKind::Throttled => THROTTLED_ADVICE.to_string(),
            VerifyFailureKind::BadCredentials => format!(
                "The relay refused username `{username}` with this secret. {CREDENTIALS_ADVICE}"
            ),
            VerifyFailureKind::MechanismRejected if enhanced.as_deref() == Some("5.7.30") => {
                exchange_online::BASIC_AUTH_ADVICE.to_string()
            }
            VerifyFailureKind::MechanismRejected => MECHANISM_ADVICE.to_string(),
            VerifyFailureKind::Tls => {
                "The relay wants an encrypted connection before AUTH; use tls: startTls on port 587"
                    .to_string()
            }
            VerifyFailureKind::SenderRejected => {
                format!("The relay refused the sender {sender}. {SENDER_ADVICE}")
            }
            VerifyFailureKind::RecipientRejected => match recipients.as_slice() {
                [one] => format!(
                    "The relay refused the recipient {one}; check the verification `to` address"
                ),
                many => format!(
                    "The relay refused one of the recipients {}; check the `to` addresses",
                    many.join(", ")
                ),
            },
            _ => "See the relay's reply for the reason".to_string(),
        };
        (
            kind,
            format!("the SMTP relay answered `{reply}` {phase}. {advice}"),
        )
    }

    /// lettre's failures without an SMTP reply: network, TLS, a broken limit, or an
    /// unreadable answer.
    fn explain_transport(&self, phase: Phase, error: &SmtpError) -> (VerifyFailureKind, String) {
        if let Some(limit) = ReplyLimit::find(error) {
            return self.explain_limit(phase, limit);
        }
        // What lettre reports about a failed AUTH may carry the relay's answer, which may
        // echo the credential: it is not quoted.
        let detail = match phase {
            Phase::Auth => "not quoted: an answer to AUTH may echo the credential".to_string(),
            _ => sanitize_reply(&root_cause(error)),
        };
        if error.is_timeout() {
            return (
                VerifyFailureKind::Connection,
                format!(
                    "the SMTP relay {}:{} timed out {phase} ({detail}). {CONNECTION_ADVICE}",
                    self.host, self.port
                ),
            );
        }
        if error.is_tls() || rustls_error(error).is_some() {
            return (
                VerifyFailureKind::Tls,
                format!(
                    "the TLS connection with the SMTP relay {}:{} failed {phase}: {detail}. {}",
                    self.host,
                    self.port,
                    tls_advice(&self.host, rustls_error(error))
                ),
            );
        }
        self.unreadable(phase, &detail)
    }
}

/// Proves a secret at an SMTP relay: a new one as its [`ProofMode`] says (a test mail by
/// default), one already proven by the handshake alone, so a rotation costs at most one mail.
pub struct SmtpVerifier {
    settings: SmtpVerification,
    relay: SmtpRelay,
    from: Mailbox,
    to: Mailbox,
    /// The relay resource's mail quota and session bound, when paced, and the longest a
    /// test mail may wait for the quota.
    limiter: Option<(Arc<RelayLimiter>, Duration)>,
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
        let relay = SmtpRelay::new(
            &settings.host,
            settings.port,
            settings.tls,
            settings.mechanism,
            settings.timeout,
            trust,
        )?;
        Ok(Self {
            settings,
            relay,
            from,
            to,
            limiter: None,
        })
    }

    /// Paces test mails to `limiter`'s quota, each waiting at most `max_wait` (the
    /// rotation's verification budget), and bounds the sessions it allows.
    pub fn paced(mut self, limiter: Arc<RelayLimiter>, max_wait: Duration) -> Self {
        self.limiter = Some((limiter, max_wait));
        self
    }

    /// The relay resource whose quota the test mails spend: the relay and the sending
    /// domain (one Communication Services email domain), e.g.
    /// `smtp.azurecomm.net:587/<guid>.azurecomm.net`.
    pub fn resource(&self) -> String {
        quota::resource_key(&self.settings.host, self.settings.port, self.from.email.domain())
    }

    /// This process has spent the relay resource's quota until `free_at`: nothing was sent.
    fn quota_spent(&self, free_at: chrono::DateTime<chrono::Utc>) -> VerifyError {
        VerifyError::new(
            self.describe(),
            VerifyFailureKind::Throttled,
            format!(
                "the test mails of this process have spent the mail quota of {} until {}, later than this \
                 verification may wait; nothing was sent. The rotation waits and tries again; to spend no \
                 mail at all, set verification.smtp.mode: handshake",
                self.resource(),
                free_at.to_rfc3339()
            ),
        )
    }

    /// A handshake, within the session bound.
    async fn paced_handshake(&self, username: &str, secret: &SecretString) -> Result<(), VerifyError> {
        let _session = match &self.limiter {
            Some((limiter, _)) => Some(limiter.session().await),
            None => None,
        };
        self.relay.handshake(username, secret, &self.envelope()).await
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

    /// Proves `secret` as `username` (taken as is, no template) the way `mode` says, for
    /// `entra-rotator smtp-test`; a failure carries the same phase-exact explanation as
    /// [`verify`](Verifier::verify).
    pub async fn check(
        &self,
        username: &str,
        secret: &SecretString,
        mode: ProofMode,
    ) -> Result<(), VerifyError> {
        if mode == ProofMode::Handshake {
            return self.relay.handshake(username, secret, &self.envelope()).await;
        }
        let message = self.message(
            "entra-rotator smtp-test".to_string(),
            "entra-rotator smtp-test sent this message to check the SMTP relay settings.\r\n\
             No action is needed.\r\n"
                .to_string(),
        );
        self.deliver(username, secret, message).await
    }

    /// The verification's sender and recipient, for a handshake without a message.
    fn envelope(&self) -> Envelope {
        Envelope::new(Some(self.from.email.clone()), vec![self.to.email.clone()])
            .expect("an envelope with a recipient is always valid")
    }

    async fn deliver(
        &self,
        username: &str,
        secret: &SecretString,
        message: Result<Message, lettre::error::Error>,
    ) -> Result<(), VerifyError> {
        let message = message.map_err(|e| {
            VerifyError::new(
                self.describe(),
                VerifyFailureKind::Other,
                format!("could not build the verification mail: {e}"),
            )
        })?;
        self.relay.send(username, secret, message).await
    }
}

#[async_trait]
impl Verifier for SmtpVerifier {
    fn describe(&self) -> String {
        self.relay.describe()
    }

    async fn verify(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError> {
        let username = self.username_for(app);
        if self.settings.mode == ProofMode::Handshake {
            return self.paced_handshake(&username, secret).await;
        }
        // The quota first, so no session is held while waiting for it.
        let (waited, _session) = match &self.limiter {
            Some((limiter, max_wait)) => match limiter.mail(*max_wait).await {
                Ok(waited) => (waited, Some(limiter.session().await)),
                Err(free_at) => return Err(self.quota_spent(free_at)),
            },
            None => (Duration::ZERO, None),
        };
        if !waited.is_zero() {
            tracing::info!(
                relay = %self.resource(),
                "waited {waited:.1?} for room in the relay's mail quota before the test mail"
            );
        }
        self.deliver(&username, secret, self.test_message(app)).await
    }

    async fn recheck(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError> {
        self.paced_handshake(&self.username_for(app), secret).await
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

impl Phase {
    /// Whether AUTH had succeeded when the session stopped here.
    fn after_auth(self) -> bool {
        matches!(self, Phase::MailFrom | Phase::RcptTo | Phase::Data)
    }
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
    Wire(WireError),
    StartTlsNotOffered,
    MechanismNotOffered { offered: Vec<String> },
    TimedOut,
}

impl Failure {
    /// Whether the relay sent a reply, i.e. the connection is still in step.
    fn relay_answered(&self) -> bool {
        match self {
            Failure::Smtp(error) => error.status().is_some(),
            // Failures before lettre had the stream: there is no session left to QUIT.
            Failure::Wire(_) => false,
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

impl From<WireError> for Failure {
    fn from(error: WireError) -> Self {
        Failure::Wire(error)
    }
}

const CREDENTIALS_ADVICE: &str = "Check the username form `<resource>|<appId>|<tenantId>` (the Communication Services \
resource name, the app's client id, the tenant id) or the custom SMTP username, the client secret, and that the \
app has a role with Microsoft.Communication/CommunicationServices/Read and \
Microsoft.Communication/EmailServices/Write on the Communication Services resource. A brand-new secret is \
refused until Entra has replicated it (seconds to minutes)";

const MECHANISM_ADVICE: &str = "The ACS relay accepts AUTH LOGIN only; set authMechanism: LOGIN \
(clients using AUTH PLAIN, such as Go's smtp.PlainAuth, get 504 5.7.4)";

const SENDER_ADVICE: &str = "An Azure-managed domain accepts only DoNotReply@<guid>.azurecomm.net as MailFrom; \
a custom domain needs verified SPF and DKIM records and the address added under MailFrom addresses, and the \
domain must be connected to the Communication Services resource";

const THROTTLED_ADVICE: &str = "The relay asks to wait: a rate or connection limit, the sending quota (ACS \
counts mails per subscription: 5 a minute and 10 an hour on an Azure-managed domain, 30 and 100 on a custom \
domain), or a temporary fault. Nothing is wrong with the credential for that; try again after a minute, since \
asking sooner counts against the quota again";

/// Reply texts that mean a rate or quota limit even under a 5xx code, matched in lower case:
/// - Exchange Online, Microsoft Learn "Message storage and concurrent connection throttling
///   for SMTP Authenticated Submission": past the daily recipient rate limit,
///   `554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException`;
/// - Exchange Online, Microsoft Learn "Continuous error throttling for SMTP AUTH
///   submissions": `550 5.2.251` to `550 5.2.255 Sender throttled due to continuous … errors`;
/// - ACS publishes no SMTP wording for its quota (its REST API answers 429 with
///   Retry-After: Learn "Service limits for Azure Communication Services"), so the generic
///   words of rate and quota refusals count too.
///
/// A full mailbox (`554 5.2.2 mailbox full; …QuotaExceededException`) is not among them: it
/// does not clear by waiting.
const THROTTLING_TEXTS: &[&str] = &[
    "submissionquotaexceeded",
    "throttl",
    "rate limit",
    "quota exceeded",
    "exceeded the quota",
];

/// Whether a reply's text says a rate or quota limit (see [`THROTTLING_TEXTS`]).
fn is_throttling(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    THROTTLING_TEXTS.iter().any(|needle| text.contains(needle))
}

/// Whether a refusal at RCPT TO is about the sender, not the recipient. Postfix evaluates
/// every restriction at RCPT TO by default (`smtpd_delay_reject = yes`), so a refused sender
/// reads `554 5.7.1 <x@y>: Sender address rejected: …` there; RFC 3463's 5.1.7 and 5.1.8
/// are the sender's address codes.
fn refuses_sender(text: &str, enhanced: Option<&str>) -> bool {
    let text = text.to_ascii_lowercase();
    matches!(enhanced, Some("5.1.7" | "5.1.8"))
        || (text.contains("sender") && !text.contains("recipient"))
}

const CONNECTION_ADVICE: &str = "Check the host and port (ACS: smtp.azurecomm.net, port 587 with STARTTLS) and \
firewalls or proxies in between; outbound port 25 is blocked from Azure VMs, use 587";

fn tls_advice(host: &str, error: Option<&rustls::Error>) -> String {
    match error {
        // webpki refuses a CA certificate (basicConstraints CA:TRUE) as the server's own,
        // trusted or not; rustls reports it only as an `Other` certificate error, so it is
        // recognised by name.
        Some(rustls::Error::InvalidCertificate(invalid))
            if format!("{invalid:?}").contains("CaUsedAsEndEntity") =>
        {
            format!(
                "The relay {host} presents a CA certificate (basicConstraints CA:TRUE) as its own, as a \
                 self-signed certificate made with `openssl req -x509` usually is. TLS clients refuse that even \
                 when it is trusted, so adding it to tls.extraRootCertificates cannot help: give the relay a \
                 certificate for {host} signed by a CA and trust that CA under tls.extraRootCertificates, or \
                 re-create the self-signed certificate as an end-entity one (basicConstraints CA:FALSE, a \
                 subjectAltName for {host})"
            )
        }
        Some(rustls::Error::InvalidCertificate(_)) => format!(
            "The relay's certificate is not trusted or does not match the host name: check the host \
             ({host}), and if a TLS-inspecting proxy or a private CA sits in between add its CA under \
             tls.extraRootCertificates"
        ),
        _ => "Check the TLS mode and port: 587 speaks STARTTLS, 465 speaks TLS from the start; and check for \
             proxies that interfere with TLS"
            .to_string(),
    }
}

fn mechanism_name(mechanism: AuthMechanism) -> &'static str {
    match mechanism {
        AuthMechanism::Login => "LOGIN",
        AuthMechanism::Plain => "PLAIN",
        AuthMechanism::Xoauth2 => "XOAUTH2",
    }
}

fn offered_mechanisms(conn: &AsyncSmtpConnection) -> Vec<String> {
    [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
        .into_iter()
        .filter(|m| conn.server_info().supports_auth_mechanism(*m))
        .map(|m| format!("AUTH {m}"))
        .collect()
}

/// `5.7.3 Authentication unsuccessful`: lettre keeps the reply's text as the error's source.
fn lettre_reply_text(error: &SmtpError) -> String {
    use std::error::Error as _;
    error.source().map(ToString::to_string).unwrap_or_default()
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
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    super::error_chain::find_cause(error)
}

/// The innermost cause, e.g. `Connection refused (os error 111)` or
/// `invalid peer certificate: UnknownIssuer`; lettre's own layers only repeat "Connection error".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Relay text made fit to show: control characters removed (a newline or tab becomes a
/// space), and at most [`MAX_REPLY_TEXT`] characters.
pub fn sanitize_reply(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter_map(|c| match c {
            '\r' | '\n' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect();
    let cleaned = cleaned.trim();
    match cleaned.char_indices().nth(MAX_REPLY_TEXT) {
        Some((cut, _)) => format!("{}…", &cleaned[..cut]),
        None => cleaned.to_string(),
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

/// The TLS client of every relay connection, one per set of trusted roots in the process:
/// rustls keeps its session cache in the client configuration, so with one shared
/// configuration a verification after the first resumes its TLS session with the relay
/// instead of a full handshake with certificate checks, and the root store is not rebuilt
/// for every rotation (a first pass over 10,000 new rotations proves 10,000 stored secrets:
/// docs/performance.md). A resumed session was verified against the same roots.
fn tls_connector(host: &str, trust: &TlsTrust) -> Result<TlsConnector, SmtpSetupError> {
    static SHARED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<Vec<String>, TlsConnector>>> =
        std::sync::LazyLock::new(Default::default);
    let shared = || SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(connector) = shared().get(&trust.extra_root_pems) {
        return Ok(connector.clone());
    }
    let connector = new_tls_connector(host, trust)?;
    shared().insert(trust.extra_root_pems.clone(), connector.clone());
    Ok(connector)
}

fn new_tls_connector(host: &str, trust: &TlsTrust) -> Result<TlsConnector, SmtpSetupError> {
    let mut roots = Vec::new();
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
        roots.extend(certificates);
    }
    wire::connector(roots).map_err(|detail| SmtpSetupError::Tls {
        host: host.to_string(),
        detail,
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
    fn reply_text_is_bounded_and_free_of_control_characters() {
        let shown = sanitize_reply(&format!("5.7.1 \x1b[31mred\x07\r\n{}", "x".repeat(1000)));
        assert!(shown.starts_with("5.7.1 [31mred "), "{shown}");
        assert_eq!(shown.chars().count(), MAX_REPLY_TEXT + 1);
        assert!(!shown.chars().any(char::is_control));
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
