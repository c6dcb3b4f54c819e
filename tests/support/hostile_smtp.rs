//! A hostile SMTP server for the hostile-input tests: it answers every line the client
//! sends with the next scripted reply, byte for byte (malformed multi-line replies,
//! overlong lines, non-UTF-8, missing CRLF), and hangs up when the script runs out or
//! the client falls silent. Served in clear text or with TLS from the first byte, so the
//! phases after the TLS handshake (AUTH, MAIL, DATA) can be reached too.
//!
//! Also: a relay that floods (a line or a multi-line reply without end), one that echoes
//! what it was sent back in its replies, and one that injects replies after STARTTLS.

use entra_rotator_standins::tls::TestPki;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// How long the server waits for the client's next line before hanging up. It stands in
/// for the client's own timeout when a hostile reply leaves the client waiting for more
/// (without it each such case waits out the verifier's timeout: 73 s instead of 7 s for
/// the SMTP property). It cannot change what a test asserts: every case must fail naming
/// the relay, and a hang-up is such a failure; the tests that assert a particular refusal
/// (STARTTLS injection, floods, echoes) check its message, which a hang-up would not give.
const SILENCE: Duration = Duration::from_millis(300);

/// What the server says: `greeting` on connect, then `replies[i]` after the i-th line read.
#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: Vec<u8>,
    pub replies: Vec<Vec<u8>>,
}

/// Marks where an echoing server puts the line it received last (without its CRLF).
pub const ECHO: &str = "{received}";

/// How much a flooding server sends at most before hanging up: four times the memory bound
/// the tests assert, enough to show unbounded growth without exhausting a shared machine.
pub const FLOOD_BYTES: usize = 256 << 20;

/// A relay that floods: `greeting`, then after `after_lines` lines from the client,
/// `unit` over and over (up to [`FLOOD_BYTES`]).
#[derive(Clone, Debug)]
pub struct Flood {
    pub greeting: Vec<u8>,
    pub after_lines: usize,
    pub unit: Vec<u8>,
}

/// A running server; stops when dropped.
pub struct HostileSmtp {
    addr: SocketAddr,
    task: JoinHandle<()>,
    lines_over_tls: Arc<AtomicUsize>,
}

impl Drop for HostileSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileSmtp {
    /// Serves `script` to every connection; with `tls`, after a TLS handshake (465-style).
    pub async fn start(script: Script, tls: Option<&TestPki>) -> Self {
        Self::serve(tls, move |stream| play(stream, script.clone(), false)).await
    }

    /// Like [`start`](Self::start), with every [`ECHO`] in a reply replaced by the line the
    /// server received last: a relay that echoes what it was sent.
    pub async fn start_echoing(script: Script, tls: Option<&TestPki>) -> Self {
        Self::serve(tls, move |stream| play(stream, script.clone(), true)).await
    }

    /// Serves `flood` to every connection; with `tls`, after a TLS handshake.
    pub async fn flood(flood: Flood, tls: Option<&TestPki>) -> Self {
        Self::serve(tls, move |stream| play_flood(stream, flood.clone())).await
    }

    /// A STARTTLS relay with an on-path writer: `plain` is played in clear text and its
    /// last reply answers STARTTLS (so it can carry injected replies after `220`); then the
    /// server upgrades to TLS and answers every line with `over_tls`, the genuine relay
    /// refusing everything. [`lines_over_tls`](Self::lines_over_tls) counts what it got.
    pub async fn start_with_starttls(
        plain: Script,
        over_tls: &'static [u8],
        pki: &TestPki,
    ) -> Self {
        let acceptor = TlsAcceptor::from(pki.server_config().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines_over_tls = Arc::new(AtomicUsize::new(0));
        let counter = lines_over_tls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (plain, acceptor, counter) = (plain.clone(), acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(tcp);
                    if !play_lines(&mut stream, &plain, false).await {
                        return;
                    }
                    let Ok(tls) = acceptor.accept(stream.into_inner()).await else {
                        return;
                    };
                    let mut tls = BufReader::new(tls);
                    loop {
                        let mut line = Vec::new();
                        match tokio::time::timeout(SILENCE, tls.read_until(b'\n', &mut line)).await
                        {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        if tls.get_mut().write_all(over_tls).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            task,
            lines_over_tls,
        }
    }

    async fn serve<F, Fut>(tls: Option<&TestPki>, handle: F) -> Self
    where
        F: Fn(Box<dyn Stream>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|pki| TlsAcceptor::from(pki.server_config().unwrap()));
        let handle = Arc::new(handle);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let handle = handle.clone();
                match &acceptor {
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                handle(Box::new(tls)).await;
                            }
                        });
                    }
                    None => {
                        tokio::spawn(handle(Box::new(tcp)));
                    }
                }
            }
        });
        Self {
            addr,
            task,
            lines_over_tls: Arc::default(),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Lines received after the TLS upgrade (see [`start_with_starttls`](Self::start_with_starttls)).
    pub fn lines_over_tls(&self) -> usize {
        self.lines_over_tls.load(Ordering::SeqCst)
    }
}

/// A server-side connection, clear text or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

async fn play(stream: Box<dyn Stream>, script: Script, echo: bool) {
    let mut stream = BufReader::new(stream);
    if play_lines(&mut stream, &script, echo).await {
        let _ = stream.get_mut().shutdown().await;
    }
}

/// Plays `script`; false when the client fell silent or went away.
async fn play_lines<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    script: &Script,
    echo: bool,
) -> bool {
    if stream.get_mut().write_all(&script.greeting).await.is_err() {
        return false;
    }
    for reply in &script.replies {
        let mut line = Vec::new();
        match tokio::time::timeout(SILENCE, stream.read_until(b'\n', &mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
        let reply = if echo {
            let received = String::from_utf8_lossy(&line);
            String::from_utf8_lossy(reply)
                .replace(ECHO, received.trim_end())
                .into_bytes()
        } else {
            reply.clone()
        };
        if stream.get_mut().write_all(&reply).await.is_err() {
            return false;
        }
    }
    true
}

async fn play_flood(stream: Box<dyn Stream>, flood: Flood) {
    let mut stream = BufReader::new(stream);
    if stream.get_mut().write_all(&flood.greeting).await.is_err() {
        return;
    }
    for _ in 0..flood.after_lines {
        let mut line = Vec::new();
        match tokio::time::timeout(SILENCE, stream.read_until(b'\n', &mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    let chunk = flood.unit.repeat((64 << 10) / flood.unit.len().max(1) + 1);
    let mut sent = 0;
    while sent < FLOOD_BYTES {
        if stream.get_mut().write_all(&chunk).await.is_err() {
            return;
        }
        sent += chunk.len();
    }
    let _ = stream.get_mut().shutdown().await;
}
