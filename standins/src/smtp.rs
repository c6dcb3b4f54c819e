//! A stand-in for the Azure Communication Services SMTP relay (`smtp.azurecomm.net`).
//!
//! It speaks the relay's dialect over real sockets: a 220 greeting; EHLO advertising
//! `SIZE 31457280` and `STARTTLS`; STARTTLS with the [`TestPki`] certificate; after TLS,
//! `AUTH LOGIN` only (`AUTH PLAIN` gets `504 5.7.4 Unrecognized authentication type`);
//! the three username forms (a custom SMTP username, `<resource>|<appId>|<tenantId>` and the
//! older `<resource>.<appId>.<tenantId>`); the password checked against the shared
//! [`Tenant`], so a freshly minted secret gets `535 5.7.3` until its propagation delay has
//! passed; MailFrom restricted to the domain's allowed senders. Accepted mail is recorded
//! for assertions; the password never is, and is never logged.
//!
//! Hand-rolled over tokio on purpose: no maintained async SMTP server crate reproduces
//! ACS's exact behaviour (which replies, in which state, with which enhanced codes), and
//! the subset of SMTP the relay speaks is small.

use crate::exchange::ExchangeOnline;
use crate::tenant::Tenant;
use crate::tls::TestPki;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The message size limit ACS advertises in its EHLO answer (30 MiB).
pub const ACS_MAX_MESSAGE_SIZE: usize = 31_457_280;
/// The most recipients ACS accepts in one message.
const MAX_RECIPIENTS: usize = 50;
/// Command lines: RFC 5321 allows 512 octets, RFC 4954 raises AUTH lines to 12288.
const MAX_COMMAND_LINE: usize = 12_288;
/// Text lines inside DATA: 998 octets plus CRLF (RFC 5321 section 4.5.3.1.6), plus a
/// transparency dot.
const MAX_TEXT_LINE: usize = 1_001;
/// Bad commands tolerated before the relay hangs up.
const MAX_ERRORS: u32 = 10;
/// How long the relay waits for the next line before it hangs up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Count keys of sessions that started DATA, and of transactions ended before DATA with
/// their recipients accepted (counted before the reply, so a client that has its answer
/// sees the count).
const DATA_SESSION: &str = "data session";
const HANDSHAKE: &str = "handshake";
const RESUMED: &str = "resumed TLS session";
/// Count keys of messages refused by the quota, and of sessions over the connection limit.
const QUOTA_REFUSED: &str = "quota refused";
const SESSION_REFUSED: &str = "session refused";
/// The name the relay gives itself in its greeting and EHLO answer.
const SERVER_NAME: &str = "localhost";

/// How the stand-in relay is configured, like an ACS resource and its email domain.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// The Communication Services resource name: the first part of `<resource>|<appId>|<tenantId>`.
    pub resource_name: String,
    /// The MailFrom addresses the connected domain allows (compared case-insensitively).
    pub allowed_senders: Vec<String>,
    /// Custom SMTP usernames (Email > SMTP credentials on the resource) → the app's client id.
    pub smtp_usernames: HashMap<String, Uuid>,
    /// The largest message accepted, advertised as `SIZE` in the EHLO answer.
    pub max_message_size: usize,
    /// Refuse a disallowed sender at RCPT TO instead of MAIL FROM, with Postfix's wording
    /// (`554 5.7.1 <address>: Sender address rejected: Access denied`): Postfix delays
    /// every restriction to RCPT TO by default (`smtpd_delay_reject = yes`).
    pub refuse_senders_at_rcpt: bool,
    /// The resource's mail quota, counted when a message is accepted; `None`: unlimited.
    pub quota: Option<StandinQuota>,
    /// SMTP sessions open at once; one more is greeted with
    /// `432 4.3.2 Concurrent connections limit exceeded` and hung up on.
    pub max_sessions: Option<usize>,
    /// Where the quota's windows take the time from (a simulated clock in tests).
    pub clock: RelayClock,
    /// Speak Exchange Online's dialect instead of ACS's: AUTH XOAUTH2 with a token of the
    /// shared tenant, basic auth refused, senders checked for SendAs (see [`crate::exchange`]).
    pub exchange_online: Option<ExchangeOnline>,
}

/// A mail quota like ACS's: per minute and per hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandinQuota {
    pub per_minute: usize,
    pub per_hour: usize,
}

impl StandinQuota {
    /// ACS with an Azure-managed domain: 5 mails a minute, 10 an hour (Microsoft Learn,
    /// "Service limits for Azure Communication Services").
    pub const AZURE_MANAGED: Self = Self { per_minute: 5, per_hour: 10 };
}

/// The time the relay's quota windows use.
#[derive(Clone)]
pub struct RelayClock(Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>);

impl RelayClock {
    /// Time from `now`, e.g. a test's simulated clock.
    pub fn from_fn(now: impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        (self.0)()
    }
}

impl Default for RelayClock {
    fn default() -> Self {
        Self::from_fn(chrono::Utc::now)
    }
}

impl std::fmt::Debug for RelayClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayClock")
    }
}

impl RelaySettings {
    /// A resource connected to an Azure-managed domain, where only
    /// `DoNotReply@<guid>.azurecomm.net` may send.
    pub fn azure_managed(resource_name: &str) -> Self {
        Self {
            resource_name: resource_name.to_string(),
            allowed_senders: vec![format!("DoNotReply@{}.azurecomm.net", Uuid::new_v4())],
            smtp_usernames: HashMap::new(),
            max_message_size: ACS_MAX_MESSAGE_SIZE,
            refuse_senders_at_rcpt: false,
            quota: None,
            max_sessions: None,
            clock: RelayClock::default(),
            exchange_online: None,
        }
    }

    /// Exchange Online's client submission (`smtp.office365.com`) with these permission states.
    pub fn exchange_online(exchange: ExchangeOnline) -> Self {
        Self {
            resource_name: "exchange-online".to_string(),
            allowed_senders: Vec::new(),
            exchange_online: Some(exchange),
            ..Self::azure_managed("exchange-online")
        }
    }

    /// Counts mails against `quota` on `clock`.
    pub fn with_quota(mut self, quota: StandinQuota, clock: RelayClock) -> Self {
        self.quota = Some(quota);
        self.clock = clock;
        self
    }

    /// Refuses disallowed senders at RCPT TO, as a Postfix relay does.
    pub fn refusing_senders_at_rcpt(mut self) -> Self {
        self.refuse_senders_at_rcpt = true;
        self
    }

    /// Registers a custom SMTP username for the application `client_id`.
    pub fn with_smtp_username(mut self, username: &str, client_id: Uuid) -> Self {
        self.smtp_usernames.insert(username.to_string(), client_id);
        self
    }

    /// Allows one more MailFrom address (a custom domain's MailFrom addresses).
    pub fn with_allowed_sender(mut self, address: &str) -> Self {
        self.allowed_senders.push(address.to_string());
        self
    }

    /// The first allowed MailFrom address (the `DoNotReply@…` of an Azure-managed domain).
    pub fn default_sender(&self) -> Option<&str> {
        self.allowed_senders.first().map(String::as_str)
    }

    fn allows_sender(&self, address: &str) -> bool {
        // Exchange checks the sender against the mailbox's SendAs rights at DATA instead.
        self.exchange_online.is_some() || self.allowed_senders
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(address))
    }

    /// The application a username stands for, in any of the three accepted forms.
    fn client_id_for(&self, tenant_id: Uuid, username: &str) -> Option<Uuid> {
        if let Some((_, client_id)) = self
            .smtp_usernames
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(username))
        {
            return Some(*client_id);
        }
        // Resource names and GUIDs contain neither '|' nor '.', so either splits in three.
        let parts: Vec<&str> = if username.contains('|') {
            username.split('|').collect()
        } else {
            username.split('.').collect()
        };
        let [resource, app_id, tenant] = parts.as_slice() else {
            return None;
        };
        let app_id = Uuid::parse_str(app_id).ok()?;
        let tenant = Uuid::parse_str(tenant).ok()?;
        (resource.eq_ignore_ascii_case(&self.resource_name) && tenant == tenant_id)
            .then_some(app_id)
    }
}

/// A fault the relay plays on one future session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpFault {
    /// `421 4.3.2 Service not available` instead of the greeting, then hang up.
    ServiceUnavailable,
    /// `451 4.4.3 Temporary server error` in answer to MAIL FROM (after a successful AUTH).
    TemporaryFailureAtMail,
    /// Close the connection right after accepting it, without a greeting.
    DropConnection,
    /// Wait this long before greeting, then behave normally.
    SlowGreeting(Duration),
}

/// One message the relay accepted: the envelope and the raw data (dot-unstuffed).
/// The password used to authenticate is never kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedMessage {
    /// The username the session authenticated with.
    pub username: String,
    /// The application the username stands for.
    pub client_id: Uuid,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
}

impl AcceptedMessage {
    /// The value of the first header called `name` (unfolded), if the message has one.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.data);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            match (&mut value, line.starts_with([' ', '\t'])) {
                (Some(v), true) => v.push_str(line),
                (Some(_), false) => break,
                (None, _) => {
                    if let Some((field, rest)) = line.split_once(':')
                        && field.trim().eq_ignore_ascii_case(name)
                    {
                        value = Some(rest.trim_start().to_string());
                    }
                }
            }
        }
        value
    }
}

/// State shared by the listener and every session.
struct Shared {
    tenant: Tenant,
    settings: RelaySettings,
    acceptor: TlsAcceptor,
    accepted: Mutex<Vec<AcceptedMessage>>,
    faults: Mutex<VecDeque<SmtpFault>>,
    counts: Mutex<HashMap<String, u64>>,
    /// When the messages of the last hour were accepted, for the quota.
    quota_log: Mutex<VecDeque<chrono::DateTime<chrono::Utc>>>,
    open_sessions: std::sync::atomic::AtomicUsize,
}

use super::https::ServerTask;
use super::lock as locked;

impl Shared {
    fn count(&self, key: &str) {
        *locked(&self.counts).entry(key.to_string()).or_default() += 1;
    }

    fn count_resumption<S>(&self, tls: &tokio_rustls::server::TlsStream<S>) {
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.count(RESUMED);
        }
    }

    /// Whether one more message fits the quota now; if so it is counted.
    fn take_quota(&self) -> bool {
        let Some(quota) = self.settings.quota else {
            return true;
        };
        let now = self.settings.clock.now();
        let mut log = locked(&self.quota_log);
        while log.front().is_some_and(|at| *at <= now - chrono::Duration::hours(1)) {
            log.pop_front();
        }
        let last_minute = log.iter().filter(|at| **at > now - chrono::Duration::minutes(1)).count();
        if log.len() >= quota.per_hour || last_minute >= quota.per_minute {
            return false;
        }
        log.push_back(now);
        true
    }
}

/// Counts an open session until dropped.
struct OpenSession(Arc<Shared>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.open_sessions.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A running stand-in relay; stops when dropped.
pub struct SmtpRelayStandin {
    addr: SocketAddr,
    implicit_tls_addr: SocketAddr,
    shared: Arc<Shared>,
    /// Keep the accept loops running; dropping them stops the relay.
    _tasks: Vec<ServerTask>,
}

impl SmtpRelayStandin {
    /// Starts the relay on 127.0.0.1: one port speaking SMTP with STARTTLS (like 587) and
    /// one speaking implicit TLS (465-style, which ACS itself does not offer).
    pub async fn start(
        tenant: Tenant,
        pki: &TestPki,
        settings: RelaySettings,
    ) -> anyhow::Result<Self> {
        let acceptor = TlsAcceptor::from(pki.server_config()?);
        let starttls_listener = TcpListener::bind("127.0.0.1:0").await?;
        let implicit_listener = TcpListener::bind("127.0.0.1:0").await?;
        let shared = Arc::new(Shared {
            tenant,
            settings,
            acceptor,
            accepted: Mutex::default(),
            faults: Mutex::default(),
            counts: Mutex::default(),
            quota_log: Mutex::default(),
            open_sessions: std::sync::atomic::AtomicUsize::new(0),
        });
        Ok(Self {
            addr: starttls_listener.local_addr()?,
            implicit_tls_addr: implicit_listener.local_addr()?,
            _tasks: vec![
                ServerTask::new(tokio::spawn(accept_loop(starttls_listener, shared.clone(), false))),
                ServerTask::new(tokio::spawn(accept_loop(implicit_listener, shared.clone(), true))),
            ],
            shared,
        })
    }

    /// The STARTTLS port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The STARTTLS port (the relay's 587).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The implicit-TLS port (465-style).
    pub fn implicit_tls_port(&self) -> u16 {
        self.implicit_tls_addr.port()
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.shared.settings
    }

    /// Every message accepted so far, oldest first.
    pub fn accepted_messages(&self) -> Vec<AcceptedMessage> {
        locked(&self.shared.accepted).clone()
    }

    /// The next `n` sessions get `451 4.4.3 Temporary server error` at MAIL FROM.
    pub fn inject_temporary_failures(&self, n: usize) {
        for _ in 0..n {
            self.inject_fault(SmtpFault::TemporaryFailureAtMail);
        }
    }

    /// Queues a fault for the next session that has none yet.
    pub fn inject_fault(&self, fault: SmtpFault) {
        locked(&self.shared.faults).push_back(fault);
    }

    /// How many connections the relay has accepted.
    pub fn sessions(&self) -> u64 {
        self.count("session")
    }

    /// Counts of sessions (`"session"`) and of commands by verb (`"EHLO"`, `"AUTH"`, ...).
    pub fn counts(&self) -> HashMap<String, u64> {
        locked(&self.shared.counts).clone()
    }

    /// Messages accepted so far (what the resource's mail quota counts).
    pub fn messages(&self) -> usize {
        locked(&self.shared.accepted).len()
    }

    /// Sessions that started DATA at least once (a test mail was attempted).
    pub fn data_sessions(&self) -> u64 {
        self.count(DATA_SESSION)
    }

    /// Mail transactions abandoned by RSET or QUIT after their recipients were accepted:
    /// the handshake proof, which sends no message.
    pub fn handshakes(&self) -> u64 {
        self.count(HANDSHAKE)
    }

    /// TLS handshakes that resumed an earlier session instead of a full handshake.
    pub fn resumed_tls_sessions(&self) -> u64 {
        self.count(RESUMED)
    }

    /// Messages refused because the quota was spent.
    pub fn quota_refusals(&self) -> u64 {
        self.count(QUOTA_REFUSED)
    }

    /// Sessions refused over the connection limit.
    pub fn session_refusals(&self) -> u64 {
        self.count(SESSION_REFUSED)
    }

    /// One entry of [`counts`](Self::counts); 0 when never seen.
    pub fn count(&self, key: &str) -> u64 {
        locked(&self.shared.counts).get(key).copied().unwrap_or(0)
    }
}

/// Accepts connections until aborted; aborting drops the JoinSet, which ends every session.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, implicit_tls: bool) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    sessions.spawn(serve_connection(shared.clone(), stream, peer, implicit_tls));
                }
                Err(error) => tracing::debug!(%error, "SMTP stand-in: accept failed"),
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
) {
    shared.count("session");
    let open = shared.open_sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let _open = OpenSession(shared.clone());
    if shared.settings.max_sessions.is_some_and(|max| open > max) {
        // Exchange Online's documented reply for too many concurrent connections.
        shared.count(SESSION_REFUSED);
        let mut tcp = tcp;
        let _ = reply(&mut tcp, "432 4.3.2 Concurrent connections limit exceeded").await;
        return;
    }
    let fault = locked(&shared.faults).pop_front();
    let mut session = Session::new(shared.clone(), peer, fault);
    let outcome = if implicit_tls {
        match shared.acceptor.accept(tcp).await {
            Ok(tls) => {
                shared.count_resumption(&tls);
                session.tls = true;
                session.run(tls).await.map(|_| ())
            }
            Err(error) => Err(error),
        }
    } else {
        session.run_with_starttls(tcp).await
    };
    if let Err(error) = outcome {
        tracing::debug!(%peer, %error, "SMTP stand-in: session ended with an I/O error");
    }
}

/// Why a conversation on one stream ended.
enum Ending {
    /// QUIT, hang-up by the relay, or the client went away.
    Closed,
    /// The client asked for STARTTLS and got `220`: continue on a TLS stream.
    StartTls,
}

/// What one command line asked for.
enum Flow {
    Continue,
    Ending(Ending),
}

/// A line read with a length limit.
enum Line {
    Text(Zeroizing<Vec<u8>>),
    TooLong,
    Eof,
}

#[derive(Clone)]
struct Authenticated {
    username: String,
    client_id: Uuid,
}

#[derive(Default)]
struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    fault: Option<SmtpFault>,
    tls: bool,
    greeted: bool,
    authenticated: Option<Authenticated>,
    transaction: Option<Transaction>,
    errors: u32,
    /// Whether this session has started DATA before.
    sent_data: bool,
}

impl Session {
    fn new(shared: Arc<Shared>, peer: SocketAddr, fault: Option<SmtpFault>) -> Self {
        Self {
            shared,
            peer,
            fault,
            tls: false,
            greeted: false,
            authenticated: None,
            transaction: None,
            errors: 0,
            sent_data: false,
        }
    }

    /// Port 587: greets in plain text and switches to TLS on STARTTLS.
    async fn run_with_starttls(&mut self, tcp: TcpStream) -> io::Result<()> {
        let mut reader = BufReader::new(tcp);
        if let Ending::StartTls = self.run_on(&mut reader, true).await? {
            if !reader.buffer().is_empty() {
                // Commands pipelined behind STARTTLS were sent in clear text; honouring them
                // would let a man in the middle inject commands (RFC 3207 section 4.2).
                return Ok(());
            }
            let tls = self.shared.acceptor.accept(reader.into_inner()).await?;
            self.shared.count_resumption(&tls);
            // RFC 3207: the client must forget everything and start over with EHLO.
            self.tls = true;
            self.greeted = false;
            self.authenticated = None;
            self.transaction = None;
            self.run_on(&mut BufReader::new(tls), false).await?;
        }
        Ok(())
    }

    /// Implicit TLS: the whole session runs on the TLS stream.
    async fn run<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
    ) -> io::Result<Ending> {
        self.run_on(&mut BufReader::new(stream), true).await
    }

    async fn run_on<S>(&mut self, stream: &mut BufReader<S>, greet: bool) -> io::Result<Ending>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let ending = self.converse(stream, greet).await?;
        if let Ending::Closed = ending {
            // On TLS this sends close_notify, so clients see a clean end, not a truncation.
            let _ = stream.get_mut().shutdown().await;
        }
        Ok(ending)
    }

    async fn converse<S>(&mut self, stream: &mut BufReader<S>, greet: bool) -> io::Result<Ending>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        if greet && !self.greet(stream.get_mut()).await? {
            return Ok(Ending::Closed);
        }
        loop {
            let line = match tokio::time::timeout(IDLE_TIMEOUT, read_line(stream, MAX_COMMAND_LINE))
                .await
            {
                Ok(line) => line?,
                Err(_) => {
                    reply(
                        stream.get_mut(),
                        "421 4.4.2 Connection timed out, closing transmission channel",
                    )
                    .await?;
                    return Ok(Ending::Closed);
                }
            };
            let flow = match line {
                Line::Eof => return Ok(Ending::Closed),
                Line::TooLong => {
                    self.refuse(stream.get_mut(), "500 5.5.2 Line too long")
                        .await?
                }
                Line::Text(text) => self.command(stream, &text).await?,
            };
            if let Flow::Ending(ending) = flow {
                return Ok(ending);
            }
        }
    }

    /// Sends the greeting, or plays a connection-level fault; `false` when the session is over.
    async fn greet<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<bool> {
        match self.fault.clone() {
            Some(SmtpFault::DropConnection) => return Ok(false),
            Some(SmtpFault::ServiceUnavailable) => {
                reply(
                    w,
                    "421 4.3.2 Service not available, closing transmission channel",
                )
                .await?;
                return Ok(false);
            }
            Some(SmtpFault::SlowGreeting(delay)) => tokio::time::sleep(delay).await,
            _ => {}
        }
        let now = chrono::Utc::now().to_rfc2822();
        reply(
            w,
            &format!("220 {SERVER_NAME} Microsoft ESMTP MAIL Service ready at {now}"),
        )
        .await?;
        Ok(true)
    }

    async fn command<S>(&mut self, stream: &mut BufReader<S>, line: &[u8]) -> io::Result<Flow>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, argument) = match text.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument.trim()),
            None => (text.to_ascii_uppercase(), ""),
        };
        const KNOWN: &[&str] = &[
            "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT",
        ];
        let counted = if KNOWN.contains(&verb.as_str()) {
            verb.as_str()
        } else {
            "unknown"
        };
        self.shared.count(counted);
        tracing::debug!(peer = %self.peer, verb = counted, "SMTP stand-in command");
        let w = stream.get_mut();
        match verb.as_str() {
            "EHLO" => self.ehlo(w, argument).await,
            "HELO" => self.helo(w, argument).await,
            "STARTTLS" => self.starttls(w, argument).await,
            "AUTH" => self.auth(stream, argument).await,
            "MAIL" => self.mail(w, argument).await,
            "RCPT" => self.rcpt(w, argument).await,
            "DATA" => self.data(stream, argument).await,
            "RSET" => {
                self.end_transaction();
                ok(w, "250 2.0.0 Resetting").await
            }
            "NOOP" => ok(w, "250 2.0.0 OK").await,
            "QUIT" => {
                self.end_transaction();
                reply(w, "221 2.0.0 Service closing transmission channel").await?;
                Ok(Flow::Ending(Ending::Closed))
            }
            _ => self.refuse(w, "500 5.3.3 Unrecognized command").await,
        }
    }

    /// Drops the mail transaction, counting it as a handshake when its recipients were
    /// accepted.
    fn end_transaction(&mut self) {
        if self.transaction.take().is_some_and(|t| !t.rcpt_to.is_empty()) {
            self.shared.count(HANDSHAKE);
        }
    }

    /// Answers a bad command and hangs up once the client has made too many.
    async fn refuse<W: AsyncWrite + Unpin>(&mut self, w: &mut W, answer: &str) -> io::Result<Flow> {
        self.errors += 1;
        reply(w, answer).await?;
        if self.errors >= MAX_ERRORS {
            reply(
                w,
                "421 4.7.0 Too many errors on this connection, closing transmission channel",
            )
            .await?;
            return Ok(Flow::Ending(Ending::Closed));
        }
        Ok(Flow::Continue)
    }

    async fn ehlo<W: AsyncWrite + Unpin>(&mut self, w: &mut W, domain: &str) -> io::Result<Flow> {
        if domain.is_empty() {
            return self.refuse(w, "501 5.5.4 Invalid domain name").await;
        }
        self.greeted = true;
        self.transaction = None;
        let mut lines = vec![
            format!("{SERVER_NAME} Hello [{}]", self.peer.ip()),
            format!("SIZE {}", self.shared.settings.max_message_size),
            "PIPELINING".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "8BITMIME".to_string(),
        ];
        let auth = match self.shared.settings.exchange_online {
            Some(_) => "AUTH LOGIN XOAUTH2",
            None => "AUTH LOGIN",
        };
        lines.push(if self.tls { auth } else { "STARTTLS" }.to_string());
        reply_lines(w, 250, &lines).await?;
        Ok(Flow::Continue)
    }

    async fn helo<W: AsyncWrite + Unpin>(&mut self, w: &mut W, domain: &str) -> io::Result<Flow> {
        if domain.is_empty() {
            return self.refuse(w, "501 5.5.4 Invalid domain name").await;
        }
        self.greeted = true;
        self.transaction = None;
        ok(w, &format!("250 {SERVER_NAME} Hello [{}]", self.peer.ip())).await
    }

    async fn starttls<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        argument: &str,
    ) -> io::Result<Flow> {
        if self.tls {
            return self.refuse(w, "503 5.5.1 TLS already active").await;
        }
        if !argument.is_empty() {
            return self
                .refuse(w, "501 5.5.4 Syntax error, STARTTLS takes no arguments")
                .await;
        }
        reply(w, "220 2.0.0 SMTP server ready").await?;
        Ok(Flow::Ending(Ending::StartTls))
    }

    async fn auth<S>(&mut self, stream: &mut BufReader<S>, argument: &str) -> io::Result<Flow>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let w = stream.get_mut();
        if !self.greeted {
            return self.refuse(w, "503 5.5.1 Send hello first").await;
        }
        if !self.tls {
            return self
                .refuse(w, "530 5.7.0 Must issue a STARTTLS command first")
                .await;
        }
        if self.authenticated.is_some() {
            return self.refuse(w, "503 5.5.1 Already authenticated").await;
        }
        if self.transaction.is_some() {
            return self
                .refuse(w, "503 5.5.1 AUTH not allowed during a mail transaction")
                .await;
        }
        let mut words = argument.split_whitespace();
        let Some(mechanism) = words.next() else {
            return self
                .refuse(w, "501 5.5.4 Syntax error, AUTH needs a mechanism")
                .await;
        };
        if let Some(exchange) = self.shared.settings.exchange_online.clone() {
            return self.auth_exchange(w, &exchange, mechanism, words.next()).await;
        }
        if !mechanism.eq_ignore_ascii_case("LOGIN") {
            return self
                .refuse(w, "504 5.7.4 Unrecognized authentication type")
                .await;
        }
        let initial_username = words
            .next()
            .map(|word| Zeroizing::new(word.as_bytes().to_vec()));
        self.auth_login(stream, initial_username).await
    }

    /// Exchange Online: AUTH XOAUTH2 with its initial response (what lettre, MSAL samples
    /// and smtplib send); basic auth is refused.
    async fn auth_exchange<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        exchange: &ExchangeOnline,
        mechanism: &str,
        initial: Option<&str>,
    ) -> io::Result<Flow> {
        if mechanism.eq_ignore_ascii_case("LOGIN") {
            return self.refuse(w, crate::exchange::BASIC_AUTH_REFUSED).await;
        }
        if !mechanism.eq_ignore_ascii_case("XOAUTH2") {
            return self.refuse(w, "504 5.7.4 Unrecognized authentication type").await;
        }
        let Some(response) = initial.and_then(|word| decode_base64(word.as_bytes())) else {
            return self.auth_answer_unreadable(w).await;
        };
        match exchange.authenticate(&self.shared.tenant, &response) {
            Ok((username, client_id)) => {
                self.authenticated = Some(Authenticated { username, client_id });
                ok(w, "235 2.7.0 Authentication successful").await
            }
            Err(answer) => self.refuse(w, answer).await,
        }
    }

    /// AUTH LOGIN: username and password, each base64 encoded, each after a 334 prompt
    /// (the username may come with the command, the "initial response").
    async fn auth_login<S>(
        &mut self,
        stream: &mut BufReader<S>,
        initial: Option<Zeroizing<Vec<u8>>>,
    ) -> io::Result<Flow>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let username = match initial {
            Some(encoded) => decode_base64(&encoded),
            None => match self.prompt(stream, "334 VXNlcm5hbWU6").await? {
                Some(answer) => answer,
                None => return Ok(Flow::Ending(Ending::Closed)),
            },
        };
        let Some(username) = username else {
            return self.auth_answer_unreadable(stream.get_mut()).await;
        };
        let password = match self.prompt(stream, "334 UGFzc3dvcmQ6").await? {
            Some(Some(password)) => password,
            Some(None) => return self.auth_answer_unreadable(stream.get_mut()).await,
            None => return Ok(Flow::Ending(Ending::Closed)),
        };
        let username = String::from_utf8_lossy(&username).into_owned();
        let password = SecretString::from(String::from_utf8_lossy(&password).into_owned());
        let w = stream.get_mut();
        match self.check_credentials(&username, &password) {
            Some(client_id) => {
                self.authenticated = Some(Authenticated {
                    username,
                    client_id,
                });
                ok(w, "235 2.7.0 Authentication successful").await
            }
            None => {
                self.refuse(w, "535 5.7.3 Authentication unsuccessful")
                    .await
            }
        }
    }

    /// Sends a 334 prompt and reads the answer: `None` on hang-up, `Some(None)` when the
    /// answer is not base64 (or `*`, the client cancelling).
    async fn prompt<S>(
        &mut self,
        stream: &mut BufReader<S>,
        prompt: &str,
    ) -> io::Result<Option<Option<Zeroizing<Vec<u8>>>>>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        reply(stream.get_mut(), prompt).await?;
        match read_line(stream, MAX_COMMAND_LINE).await? {
            Line::Eof => Ok(None),
            Line::TooLong => Ok(Some(None)),
            Line::Text(line) => Ok(Some(decode_base64(&line))),
        }
    }

    async fn auth_answer_unreadable<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> io::Result<Flow> {
        self.refuse(
            w,
            "501 5.5.2 Cannot decode response, authentication cancelled",
        )
        .await
    }

    /// The application behind `username` if `password` is one of its live, replicated secrets.
    fn check_credentials(&self, username: &str, password: &SecretString) -> Option<Uuid> {
        let tenant = &self.shared.tenant;
        let Some(client_id) = self
            .shared
            .settings
            .client_id_for(tenant.tenant_id, username)
        else {
            tracing::debug!(
                username,
                "SMTP stand-in: AUTH refused, unknown username form or resource"
            );
            return None;
        };
        match tenant.sign_in(client_id, password.expose_secret(), "smtp") {
            Ok(()) => Some(client_id),
            Err(reason) => {
                tracing::debug!(username, ?reason, "SMTP stand-in: AUTH refused");
                None
            }
        }
    }

    async fn mail<W: AsyncWrite + Unpin>(&mut self, w: &mut W, argument: &str) -> io::Result<Flow> {
        if !self.greeted {
            return self.refuse(w, "503 5.5.1 Send hello first").await;
        }
        if self.authenticated.is_none() {
            return self
                .refuse(w, "530 5.7.57 Client not authenticated to send mail")
                .await;
        }
        if self.transaction.is_some() {
            return self.refuse(w, "503 5.5.1 Sender already specified").await;
        }
        let Some((address, parameters)) = path_argument(argument, "FROM:") else {
            return self
                .refuse(
                    w,
                    "501 5.5.4 Invalid arguments, expected MAIL FROM:<address>",
                )
                .await;
        };
        if declared_size(parameters)
            .is_some_and(|size| size > self.shared.settings.max_message_size)
        {
            return self
                .refuse(
                    w,
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                )
                .await;
        }
        if self.fault == Some(SmtpFault::TemporaryFailureAtMail) {
            self.fault = None;
            return self
                .refuse(
                    w,
                    "451 4.4.3 Temporary server error. Please try again later",
                )
                .await;
        }
        // The exact wording ACS uses for a refused MailFrom is not published; this is the
        // reply Microsoft's SMTP front ends give when the sender is not allowed.
        if !self.shared.settings.allows_sender(address) && !self.shared.settings.refuse_senders_at_rcpt {
            return self
                .refuse(
                    w,
                    "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                )
                .await;
        }
        self.transaction = Some(Transaction {
            mail_from: address.to_string(),
            rcpt_to: Vec::new(),
        });
        ok(w, "250 2.1.0 Sender OK").await
    }

    async fn rcpt<W: AsyncWrite + Unpin>(&mut self, w: &mut W, argument: &str) -> io::Result<Flow> {
        let Some(transaction) = self.transaction.as_mut() else {
            return self.refuse(w, "503 5.5.1 Need mail command").await;
        };
        let Some((address, _)) = path_argument(argument, "TO:").filter(|(a, _)| a.contains('@'))
        else {
            return self.refuse(w, "501 5.1.3 Invalid address").await;
        };
        if transaction.rcpt_to.len() >= MAX_RECIPIENTS {
            return self.refuse(w, "452 4.5.3 Too many recipients").await;
        }
        if !self.shared.settings.allows_sender(&transaction.mail_from) {
            let answer = format!(
                "554 5.7.1 <{}>: Sender address rejected: Access denied",
                transaction.mail_from
            );
            return self.refuse(w, &answer).await;
        }
        transaction.rcpt_to.push(address.to_string());
        ok(w, "250 2.1.5 Recipient OK").await
    }

    async fn data<S>(&mut self, stream: &mut BufReader<S>, argument: &str) -> io::Result<Flow>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let w = stream.get_mut();
        if !argument.is_empty() {
            return self
                .refuse(w, "501 5.5.4 Syntax error, DATA takes no arguments")
                .await;
        }
        let has_recipients = self
            .transaction
            .as_ref()
            .is_some_and(|t| !t.rcpt_to.is_empty());
        if !has_recipients {
            return self.refuse(w, "503 5.5.1 Need rcpt command").await;
        }
        if !std::mem::replace(&mut self.sent_data, true) {
            self.shared.count(DATA_SESSION);
        }
        reply(w, "354 Start mail input; end with <CRLF>.<CRLF>").await?;
        let Some(content) = read_data(stream, self.shared.settings.max_message_size).await? else {
            return Ok(Flow::Ending(Ending::Closed));
        };
        let transaction = self.transaction.take().unwrap_or_default();
        let w = stream.get_mut();
        match content {
            DataContent::TooLarge => {
                self.refuse(
                    w,
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                )
                .await
            }
            DataContent::LineTooLong => {
                self.refuse(w, "500 5.5.6 Message line longer than 1000 characters")
                    .await
            }
            DataContent::Message(_) if !self.shared.take_quota() => {
                // ACS publishes no SMTP wording for a spent quota; this is Exchange Online's
                // documented refusal for its sending quota (Microsoft Learn, "Message storage
                // and concurrent connection throttling for SMTP Authenticated Submission").
                self.shared.count(QUOTA_REFUSED);
                self.refuse(
                    w,
                    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [sending quota exceeded]",
                )
                .await
            }
            DataContent::Message(data) => {
                let authenticated = self.authenticated.clone();
                let Some(Authenticated {
                    username,
                    client_id,
                }) = authenticated
                else {
                    return self
                        .refuse(w, "530 5.7.57 Client not authenticated to send mail")
                        .await;
                };
                if let Some(exchange) = &self.shared.settings.exchange_online
                    && !exchange.may_send_as(&username, &transaction.mail_from)
                {
                    let answer = ExchangeOnline::send_as_denied(&username, &transaction.mail_from);
                    return self.refuse(w, &answer).await;
                }
                locked(&self.shared.accepted).push(AcceptedMessage {
                    username,
                    client_id,
                    mail_from: transaction.mail_from,
                    rcpt_to: transaction.rcpt_to,
                    data,
                });
                let id = Uuid::new_v4();
                ok(
                    w,
                    &format!("250 2.6.0 <{id}@{SERVER_NAME}> Queued mail for delivery"),
                )
                .await
            }
        }
    }
}

/// `FROM:<address> PARAMS` → (`address`, `PARAMS`); `None` on a syntax error.
fn path_argument<'a>(argument: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let (address, parameters) = inner.split_once('>')?;
    (!address.contains(['<', ' '])).then_some((address, parameters.trim()))
}

/// The `SIZE=` parameter of MAIL FROM, if any.
fn declared_size(parameters: &str) -> Option<usize> {
    parameters.split_whitespace().find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse().ok())
            .flatten()
    })
}

fn decode_base64(line: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let trimmed = line.trim_ascii();
    if trimmed == b"*" {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .ok()
        .map(Zeroizing::new)
}

enum DataContent {
    Message(Vec<u8>),
    TooLarge,
    LineTooLong,
}

/// Reads DATA up to the lone `.`, undoing dot-stuffing. Oversized content is read and
/// dropped so the session stays in step with the client. `None` when the client hung up.
async fn read_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max_size: usize,
) -> io::Result<Option<DataContent>> {
    let mut data = Vec::new();
    let (mut too_large, mut line_too_long) = (false, false);
    loop {
        let line = match read_line(reader, MAX_TEXT_LINE).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => {
                line_too_long = true;
                continue;
            }
            Line::Text(line) => line,
        };
        if line.as_slice() == b".\r\n" || line.as_slice() == b".\n" {
            break;
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + unstuffed.len() > max_size {
            too_large = true;
        }
        if !too_large && !line_too_long {
            data.extend_from_slice(unstuffed);
        }
    }
    Ok(Some(match (too_large, line_too_long) {
        (true, _) => DataContent::TooLarge,
        (_, true) => DataContent::LineTooLong,
        _ => DataContent::Message(data),
    }))
}

/// Reads one line (up to and including `\n`) of at most `max` bytes. A longer line is
/// consumed to its end and reported as [`Line::TooLong`], so memory stays bounded.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Zeroizing::new(Vec::new());
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..=end], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > max {
            too_long = true;
        } else {
            line.extend_from_slice(chunk);
        }
        let consumed = chunk.len();
        reader.consume(consumed);
        if complete {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            });
        }
    }
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, line: &str) -> io::Result<()> {
    w.write_all(format!("{line}\r\n").as_bytes()).await?;
    w.flush().await
}

async fn ok<W: AsyncWrite + Unpin>(w: &mut W, line: &str) -> io::Result<Flow> {
    reply(w, line).await?;
    Ok(Flow::Continue)
}

/// A multi-line reply: `250-first`, ..., `250 last`.
async fn reply_lines<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u16,
    lines: &[String],
) -> io::Result<()> {
    let last = lines.len().saturating_sub(1);
    let text: String = lines
        .iter()
        .enumerate()
        .map(|(i, line)| format!("{code}{}{line}\r\n", if i == last { ' ' } else { '-' }))
        .collect();
    w.write_all(text.as_bytes()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_three_username_forms() {
        let tenant_id = Uuid::new_v4();
        let app = Uuid::new_v4();
        let custom_app = Uuid::new_v4();
        let settings =
            RelaySettings::azure_managed("contoso-acs").with_smtp_username("dify-smtp", custom_app);
        assert_eq!(
            settings.client_id_for(tenant_id, &format!("contoso-acs|{app}|{tenant_id}")),
            Some(app)
        );
        assert_eq!(
            settings.client_id_for(tenant_id, &format!("contoso-acs.{app}.{tenant_id}")),
            Some(app)
        );
        assert_eq!(
            settings.client_id_for(tenant_id, "DIFY-smtp"),
            Some(custom_app)
        );
        let other_tenant = Uuid::new_v4();
        assert_eq!(
            settings.client_id_for(tenant_id, &format!("contoso-acs|{app}|{other_tenant}")),
            None
        );
        assert_eq!(
            settings.client_id_for(tenant_id, &format!("other-acs|{app}|{tenant_id}")),
            None
        );
        assert_eq!(
            settings.client_id_for(tenant_id, &format!("contoso-acs|{app}")),
            None
        );
        assert_eq!(settings.client_id_for(tenant_id, "nobody"), None);
    }

    #[test]
    fn parses_mail_paths_and_size() {
        assert_eq!(
            path_argument("FROM:<a@b.c> SIZE=10", "FROM:"),
            Some(("a@b.c", "SIZE=10"))
        );
        assert_eq!(path_argument("from: <a@b.c>", "FROM:"), Some(("a@b.c", "")));
        assert_eq!(path_argument("TO:a@b.c", "TO:"), None);
        assert_eq!(path_argument("FROM:<a@b.c", "FROM:"), None);
        assert_eq!(path_argument("é", "FROM:"), None);
        assert_eq!(
            declared_size("BODY=8BITMIME SIZE=31457281"),
            Some(31_457_281)
        );
        assert_eq!(declared_size("SIZE=x"), None);
    }

    #[tokio::test]
    async fn unstuffs_dots_and_bounds_sizes() {
        let mut input: &[u8] = b"Subject: x\r\n\r\n..leading dot\r\nbody\r\n.\r\nNOOP\r\n";
        let Some(DataContent::Message(data)) = read_data(&mut input, 1000).await.unwrap() else {
            panic!("message expected")
        };
        assert_eq!(data, b"Subject: x\r\n\r\n.leading dot\r\nbody\r\n");
        assert_eq!(input, b"NOOP\r\n", "stops right after the terminating dot");

        let mut big: &[u8] = b"0123456789\r\n0123456789\r\n.\r\n";
        assert!(matches!(
            read_data(&mut big, 15).await.unwrap(),
            Some(DataContent::TooLarge)
        ));

        let long = format!("{}\r\n.\r\n", "x".repeat(2000));
        assert!(matches!(
            read_data(&mut long.as_bytes(), 10_000).await.unwrap(),
            Some(DataContent::LineTooLong)
        ));
    }

    /// A bare-hands SMTP client, to drive the relay where lettre would not go.
    mod raw {
        use super::*;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, ServerName};
        use tokio::io::AsyncRead;

        pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
        impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

        pub struct Client {
            stream: BufReader<Box<dyn Io>>,
        }

        impl Client {
            pub async fn connect(relay: &SmtpRelayStandin) -> Self {
                let tcp = TcpStream::connect(relay.addr()).await.unwrap();
                Self {
                    stream: BufReader::new(Box::new(tcp)),
                }
            }

            pub async fn send(&mut self, line: &str) {
                self.stream
                    .get_mut()
                    .write_all(format!("{line}\r\n").as_bytes())
                    .await
                    .unwrap();
            }

            /// One reply; multi-line replies joined with `\n`. Empty when the relay hung up.
            pub async fn reply(&mut self) -> String {
                let mut lines = Vec::new();
                loop {
                    let mut line = String::new();
                    if self.stream.read_line(&mut line).await.unwrap() == 0 {
                        return lines.join("\n");
                    }
                    let line = line.trim_end().to_string();
                    let last = line.as_bytes().get(3) != Some(&b'-');
                    lines.push(line);
                    if last {
                        return lines.join("\n");
                    }
                }
            }

            pub async fn command(&mut self, line: &str) -> String {
                self.send(line).await;
                self.reply().await
            }

            pub async fn start_tls(self, pki: &TestPki) -> Self {
                let mut roots = rustls::RootCertStore::empty();
                for der in CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()) {
                    roots.add(der.unwrap()).unwrap();
                }
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector
                    .connect(name, self.stream.into_inner())
                    .await
                    .unwrap();
                Self {
                    stream: BufReader::new(Box::new(tls)),
                }
            }
        }
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    struct Relay {
        relay: SmtpRelayStandin,
        pki: TestPki,
        username: String,
        secret: String,
        sender: String,
    }

    async fn relay() -> Relay {
        let tenant = Tenant::new();
        let pki = TestPki::generate().unwrap();
        let app = tenant.register_app("mailer");
        let now = chrono::Utc::now();
        let secret = tenant
            .add_password(app.object_id, None, now, now + chrono::Duration::days(1))
            .unwrap()
            .secret_text;
        let settings = RelaySettings::azure_managed("contoso-acs");
        let sender = settings.default_sender().unwrap().to_string();
        let username = format!("contoso-acs|{}|{}", app.app_id, tenant.tenant_id);
        let relay = SmtpRelayStandin::start(tenant, &pki, settings)
            .await
            .unwrap();
        Relay {
            relay,
            pki,
            username,
            secret,
            sender,
        }
    }

    /// Greeted, EHLO'd, upgraded to TLS and EHLO'd again.
    async fn tls_client(r: &Relay) -> raw::Client {
        let mut client = raw::Client::connect(&r.relay).await;
        assert!(client.reply().await.starts_with("220 "));
        client.command("EHLO client.example").await;
        assert_eq!(
            client.command("STARTTLS").await,
            "220 2.0.0 SMTP server ready"
        );
        let mut client = client.start_tls(&r.pki).await;
        client.command("EHLO client.example").await;
        client
    }

    #[tokio::test]
    async fn speaks_the_acs_dialect_before_and_after_starttls() {
        let r = relay().await;
        let mut client = raw::Client::connect(&r.relay).await;
        assert!(
            client
                .reply()
                .await
                .starts_with("220 localhost Microsoft ESMTP MAIL Service ready")
        );
        let ehlo = client.command("EHLO client.example").await;
        assert!(
            ehlo.contains("250-SIZE 31457280") && ehlo.ends_with("250 STARTTLS"),
            "{ehlo}"
        );
        assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
        assert_eq!(
            client.command("AUTH LOGIN").await,
            "530 5.7.0 Must issue a STARTTLS command first"
        );
        assert_eq!(
            client.command(&format!("MAIL FROM:<{}>", r.sender)).await,
            "530 5.7.57 Client not authenticated to send mail"
        );
        assert_eq!(
            client.command("STARTTLS").await,
            "220 2.0.0 SMTP server ready"
        );
        let mut client = client.start_tls(&r.pki).await;
        let ehlo = client.command("EHLO client.example").await;
        assert!(
            ehlo.contains("250-SIZE 31457280") && ehlo.ends_with("250 AUTH LOGIN"),
            "{ehlo}"
        );
        assert!(
            !ehlo.contains("STARTTLS") && !ehlo.contains("PLAIN"),
            "{ehlo}"
        );
        let plain = format!("\0{}\0{}", r.username, r.secret);
        assert_eq!(
            client.command(&format!("AUTH PLAIN {}", b64(&plain))).await,
            "504 5.7.4 Unrecognized authentication type"
        );
        // AUTH LOGIN with the username as initial response.
        assert_eq!(
            client
                .command(&format!("AUTH LOGIN {}", b64(&r.username)))
                .await,
            "334 UGFzc3dvcmQ6"
        );
        assert_eq!(
            client.command(&b64(&r.secret)).await,
            "235 2.7.0 Authentication successful"
        );
        assert_eq!(
            client.command("AUTH LOGIN").await,
            "503 5.5.1 Already authenticated"
        );
        assert_eq!(client.command("NOOP").await, "250 2.0.0 OK");
    }

    #[tokio::test]
    async fn accepts_mail_with_dot_stuffing_and_enforces_limits() {
        let r = relay().await;
        let mut client = tls_client(&r).await;
        assert_eq!(client.command("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
        assert_eq!(client.command(&b64(&r.username)).await, "334 UGFzc3dvcmQ6");
        assert_eq!(
            client.command(&b64(&r.secret)).await,
            "235 2.7.0 Authentication successful"
        );
        assert_eq!(
            client.command("RCPT TO:<ops@example.com>").await,
            "503 5.5.1 Need mail command"
        );
        let too_big = format!("MAIL FROM:<{}> SIZE={}", r.sender, ACS_MAX_MESSAGE_SIZE + 1);
        assert!(client.command(&too_big).await.starts_with("552 5.3.4"));
        assert!(
            client
                .command("MAIL FROM:<someone@contoso.example>")
                .await
                .starts_with("550 5.7.60")
        );
        assert_eq!(
            client.command(&format!("MAIL FROM:<{}>", r.sender)).await,
            "250 2.1.0 Sender OK"
        );
        assert_eq!(client.command("DATA").await, "503 5.5.1 Need rcpt command");
        assert_eq!(
            client.command("RCPT TO:<ops@example.com>").await,
            "250 2.1.5 Recipient OK"
        );
        assert!(client.command("DATA").await.starts_with("354 "));
        client
            .send("Subject: hello\r\n\r\n..starts with a dot\r\nend")
            .await;
        let queued = client.command(".").await;
        assert!(
            queued.starts_with("250 2.6.0 <") && queued.ends_with("Queued mail for delivery"),
            "{queued}"
        );
        assert_eq!(
            client.command("QUIT").await,
            "221 2.0.0 Service closing transmission channel"
        );

        let messages = r.relay.accepted_messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(
            messages[0].data,
            b"Subject: hello\r\n\r\n.starts with a dot\r\nend\r\n"
        );
        assert_eq!(messages[0].username, r.username);
        assert!(
            !format!("{messages:?}").contains(&r.secret),
            "the password is never recorded"
        );
        assert_eq!(r.relay.count("MAIL"), 3);
    }

    #[tokio::test]
    async fn refuses_bad_passwords_and_garbage_politely() {
        let r = relay().await;
        let mut client = tls_client(&r).await;
        assert_eq!(
            client
                .command(&format!("AUTH LOGIN {}", b64(&r.username)))
                .await,
            "334 UGFzc3dvcmQ6"
        );
        assert_eq!(
            client.command(&b64("wrong")).await,
            "535 5.7.3 Authentication unsuccessful"
        );
        assert_eq!(
            client.command("AUTH LOGIN !!notbase64").await,
            "501 5.5.2 Cannot decode response, authentication cancelled"
        );
        assert_eq!(client.command("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
        assert_eq!(
            client.command("*").await,
            "501 5.5.2 Cannot decode response, authentication cancelled"
        );
        assert_eq!(
            client.command(&"X".repeat(MAX_COMMAND_LINE + 10)).await,
            "500 5.5.2 Line too long"
        );
        assert_eq!(
            client.command("\u{1}\u{fffd} garbage").await,
            "500 5.3.3 Unrecognized command"
        );
        assert_eq!(
            client.command("MAIL FROM:nonsense").await,
            "530 5.7.57 Client not authenticated to send mail"
        );
        assert_eq!(client.command("RSET").await, "250 2.0.0 Resetting");
        // Six errors so far; the tenth makes the relay hang up.
        for _ in 0..4 {
            assert_eq!(
                client.command("BOGUS").await,
                "500 5.3.3 Unrecognized command"
            );
        }
        assert_eq!(
            client.reply().await,
            "421 4.7.0 Too many errors on this connection, closing transmission channel"
        );
        assert_eq!(client.reply().await, "", "the relay hung up");
        assert_eq!(r.relay.count("unknown"), 5);
    }

    #[test]
    fn reads_folded_headers() {
        let message = AcceptedMessage {
            username: "u".into(),
            client_id: Uuid::nil(),
            mail_from: "a@b".into(),
            rcpt_to: vec![],
            data: b"From: a@b\r\nSubject: entra-rotator\r\n verification\r\nTo: c@d\r\n\r\nSubject: body".to_vec(),
        };
        assert_eq!(
            message.header("subject").as_deref(),
            Some("entra-rotator verification")
        );
        assert_eq!(message.header("X-Missing"), None);
    }
}
