//! The bytes of an SMTP session below lettre: connecting, the plaintext exchange up to and
//! including the STARTTLS upgrade, the TLS handshake, and a stream that bounds every reply
//! read from the relay. Shared by the verifier, `smtp-test`'s probe and the email notifier.
//!
//! Two lettre behaviours make this necessary, and lettre offers no hook for either:
//! - it reads a reply with `read_line` into a growing `String` and checks the length only
//!   once the line has ended, so a relay that never sends a line feed grows it without
//!   bound (seen: 2.6 GB in 7 s);
//! - after STARTTLS it keeps whatever its read buffer holds past the `220` reply and reads
//!   it as if it had come over TLS, so an on-path writer can forge the replies to AUTH and
//!   DATA (the CVE-2011-0411 class; see docs/upstream/lettre-starttls-injection.md).
//!
//! lettre does accept an existing stream (`AsyncSmtpConnection::connect_with_transport`),
//! so the plaintext part and the handshake happen here, and lettre gets a
//! [`BoundedStream`] that refuses an overlong line or reply before lettre buffers it.

use lettre::transport::smtp::client::AsyncTokioStream;
use lettre::transport::smtp::commands::{Ehlo, Starttls};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::ServerName;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest reply line accepted, CRLF included. RFC 5321 §4.5.3.1.5 allows 512 octets;
/// about twice that leaves room for relays that overstep it, as lettre's own check does.
pub const MAX_LINE: usize = 1000;
/// Most lines in one (multi-line) reply. EHLO answers, the longest real ones, list a dozen
/// extensions or so; RFC 5321 sets no limit.
pub const MAX_REPLY_LINES: usize = 100;

/// Stands in for the greeting lettre waits for when it takes over a session that is
/// already past STARTTLS: lettre can only start a session at the greeting
/// (`connect_with_transport` reads one and discards its text), and after STARTTLS a relay
/// sends none, just the answer to the next EHLO.
const RESUMED_GREETING: &[u8] = b"220 session resumed after STARTTLS\r\n";

/// A reply that broke a limit, refused before it was buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyLimit {
    #[error("a reply line longer than {MAX_LINE} octets (RFC 5321 allows 512)")]
    LineTooLong,
    #[error("a reply of more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    /// lettre's EHLO parser panics on such a line (docs/upstream/lettre-ehlo-whitespace-panic.md).
    #[error("a reply line whose text is only blanks")]
    BlankText,
}

impl ReplyLimit {
    /// The limit behind an I/O error, also through lettre's error (which keeps the
    /// `io::Error` as its source).
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<ReplyLimit> {
        crate::adapters::error_chain::find_cause::<ReplyLimit>(error).copied()
    }
}

/// What went wrong below lettre. The caller adds the relay's host:port and the phase.
#[derive(Debug)]
pub enum WireError {
    /// The relay's host name did not resolve to any address.
    Resolve(io::Error),
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// Reading or writing failed, or the relay hung up.
    Io(io::Error),
    /// The relay broke a [`ReplyLimit`].
    Limit(ReplyLimit),
    /// A line that is not an SMTP reply (already sanitized for display).
    NotAReply(String),
    /// A well-formed reply with a code other than the one expected.
    Reply { code: u16, text: String },
    /// Bytes arrived after the 220 answer to STARTTLS, before the TLS handshake.
    BytesAfterStartTls,
    /// The TLS handshake failed.
    Tls(io::Error),
}

impl WireError {
    fn from_read(error: io::Error) -> Self {
        match ReplyLimit::find(&error) {
            Some(limit) => WireError::Limit(limit),
            None => WireError::Io(error),
        }
    }
}

/// One reply: its code and the text of each line.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

/// The plaintext part of a session: the connection, read through a bounded buffer.
pub struct Plaintext {
    stream: BufReader<BoundedStream<TcpStream>>,
    peer: SocketAddr,
}

impl Plaintext {
    /// Connects to `host:port` (every address it resolves to, in turn). Resolving first,
    /// on its own, tells a name that does not resolve from a host that does not answer.
    pub async fn connect(host: &str, port: u16) -> Result<Self, WireError> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(WireError::Resolve)?
            .collect();
        if addresses.is_empty() {
            return Err(WireError::Resolve(io::Error::new(io::ErrorKind::NotFound, "the name has no addresses")));
        }
        let tcp = TcpStream::connect(addresses.as_slice())
            .await
            .map_err(WireError::Connect)?;
        let peer = tcp.peer_addr().map_err(WireError::Connect)?;
        Ok(Self {
            stream: BufReader::new(BoundedStream::new(tcp, peer, &[])),
            peer,
        })
    }

    /// Reads one reply and checks its code.
    pub async fn expect(&mut self, code: u16) -> Result<Reply, WireError> {
        let reply = read_reply(&mut self.stream).await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(WireError::Reply {
                code: reply.code,
                text: reply.lines.join(" "),
            })
        }
    }

    /// Sends EHLO; returns the capability lines (the reply without the server's name).
    pub async fn ehlo(&mut self, hello: &ClientId) -> Result<Vec<String>, WireError> {
        self.send(&Ehlo::new(hello.clone()).to_string()).await?;
        Ok(self.expect(250).await?.lines.into_iter().skip(1).collect())
    }

    /// Sends STARTTLS, reads the 220 answer, refuses anything the relay sent after it,
    /// and does the TLS handshake with `host`'s certificate checked.
    pub async fn starttls(
        mut self,
        connector: &TlsConnector,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, WireError> {
        self.send(&Starttls.to_string()).await?;
        self.expect(220).await?;
        // The classic fix (Postfix, 2011): anything already received now was sent in
        // plaintext, yet would be read as if it came over TLS. A relay that pipelines
        // nothing has sent nothing more; so more bytes mean someone is injecting replies.
        if !self.stream.buffer().is_empty() {
            return Err(WireError::BytesAfterStartTls);
        }
        let tcp = self.stream.into_inner().into_inner();
        handshake(connector, host, tcp).await
    }

    /// The TLS handshake on a connection that speaks TLS from the first byte (implicit TLS).
    pub async fn handshake(
        self,
        connector: &TlsConnector,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, WireError> {
        handshake(connector, host, self.stream.into_inner().into_inner()).await
    }

    /// QUIT, for a session that ends here; failures do not matter any more.
    pub async fn quit(mut self) {
        if self.send("QUIT\r\n").await.is_ok() {
            let _ = read_reply(&mut self.stream).await;
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    async fn send(&mut self, command: &str) -> Result<(), WireError> {
        send(self.stream.get_mut(), command).await
    }
}

async fn handshake(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, WireError> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        WireError::Tls(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} is not a valid TLS server name: {e}"),
        ))
    })?;
    connector.connect(name, tcp).await.map_err(WireError::Tls)
}

/// A TLS stream whose replies are bounded, for reading them with [`read_reply`].
pub fn bounded(tls: TlsStream<TcpStream>, peer: SocketAddr) -> Box<dyn AsyncTokioStream> {
    Box::new(BoundedStream::new(tls, peer, &[]))
}

/// The bounded TLS stream for lettre once the session is past STARTTLS: it starts with
/// the stand-in greeting lettre expects.
pub fn resumed_after_starttls(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
) -> Box<dyn AsyncTokioStream> {
    Box::new(BoundedStream::new(tls, peer, RESUMED_GREETING))
}

/// Writes one command line (with its CRLF).
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, command: &str) -> Result<(), WireError> {
    stream
        .write_all(command.as_bytes())
        .await
        .map_err(WireError::Io)?;
    stream.flush().await.map_err(WireError::Io)
}

/// The trust used for every SMTP TLS handshake: the public web PKI roots plus `extra`
/// (the same roots lettre would use, with the ring-free aws-lc-rs provider).
pub fn connector(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, certificate) in extra.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|e| format!("extra root certificate #{index} is not usable: {e}"))?;
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

/// One (possibly multi-line) reply: `250-first`, ..., `250 last`. Its size is bounded by
/// the [`BoundedStream`] underneath.
pub async fn read_reply<S: tokio::io::AsyncBufRead + Unpin>(
    stream: &mut S,
) -> Result<Reply, WireError> {
    let mut lines = Vec::new();
    loop {
        let mut raw = Vec::new();
        let read = stream
            .read_until(b'\n', &mut raw)
            .await
            .map_err(WireError::from_read)?;
        if read == 0 {
            return Err(WireError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the relay closed the connection",
            )));
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let code = line
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| WireError::NotAReply(super::sanitize_reply(line)))?;
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_string());
        if last {
            return Ok(Reply { code, lines });
        }
    }
}

/// A stream whose reads fail, before handing the bytes on, once the relay sends a line
/// longer than [`MAX_LINE`] or a reply of more than [`MAX_REPLY_LINES`] lines. Everything
/// a relay sends is replies, so this bounds what any reader above it buffers.
struct BoundedStream<S> {
    inner: S,
    peer: SocketAddr,
    /// Served before the first byte of `inner`.
    prelude: &'static [u8],
    /// The current line so far: its length, and its first four bytes (`250-`).
    line_len: usize,
    line_start: [u8; 4],
    /// Lines of the current reply that said another line follows.
    continued_lines: usize,
    /// The current line's text after the code and separator (at most [`MAX_LINE`] bytes).
    text: Vec<u8>,
}

impl<S> BoundedStream<S> {
    fn new(inner: S, peer: SocketAddr, prelude: &'static [u8]) -> Self {
        Self {
            inner,
            peer,
            prelude,
            line_len: 0,
            line_start: [0; 4],
            continued_lines: 0,
            text: Vec::new(),
        }
    }

    fn into_inner(self) -> S {
        self.inner
    }

    /// Follows the replies byte by byte; fails at the first byte past a limit.
    fn check(&mut self, received: &[u8]) -> Result<(), ReplyLimit> {
        for &byte in received {
            if self.line_len < self.line_start.len() {
                self.line_start[self.line_len] = byte;
            }
            self.line_len += 1;
            if self.line_len > self.line_start.len() && byte != b'\r' && byte != b'\n' {
                self.text.push(byte);
            }
            if byte == b'\n' {
                let text = String::from_utf8_lossy(&self.text);
                if !text.is_empty() && text.split_whitespace().next().is_none() {
                    return Err(ReplyLimit::BlankText);
                }
                self.text.clear();
                if self.line_len > 4 && self.line_start[3] == b'-' {
                    self.continued_lines += 1;
                    if self.continued_lines >= MAX_REPLY_LINES {
                        return Err(ReplyLimit::TooManyLines);
                    }
                } else {
                    self.continued_lines = 0;
                }
                self.line_len = 0;
            } else if self.line_len > MAX_LINE {
                return Err(ReplyLimit::LineTooLong);
            }
        }
        Ok(())
    }
}

impl<S> fmt::Debug for BoundedStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BoundedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prelude.is_empty() {
            let n = this.prelude.len().min(buf.remaining());
            buf.put_slice(&this.prelude[..n]);
            this.prelude = &this.prelude[n..];
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let checked = this.check(&buf.filled()[before..]);
                if let Err(limit) = checked {
                    // Hand nothing of the offending chunk on.
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, limit)));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BoundedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S> AsyncTokioStream for BoundedStream<S>
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin,
{
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// What the plaintext reader and lettre each get of `bytes` from a relay (for the fuzz
/// targets): the replies our reader parses until the end or its first refusal, and the
/// bytes the bounded stream under lettre lets through before it refuses.
#[cfg(feature = "fuzzing")]
pub(crate) async fn as_read_from_a_relay(bytes: &[u8]) -> (Vec<Reply>, Vec<u8>) {
    use tokio::io::AsyncReadExt as _;
    let peer = SocketAddr::from(([127, 0, 0, 1], 25));
    let mut replies = Vec::new();
    let mut plaintext = BufReader::new(BoundedStream::new(bytes, peer, &[]));
    while let Ok(reply) = read_reply(&mut plaintext).await {
        replies.push(reply);
    }
    let mut under_lettre = BoundedStream::new(bytes, peer, &[]);
    let (mut passed, mut chunk) = (Vec::new(), [0u8; 64]);
    while let Ok(read @ 1..) = under_lettre.read(&mut chunk).await {
        passed.extend_from_slice(&chunk[..read]);
    }
    (replies, passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded() -> BoundedStream<()> {
        BoundedStream::new((), "127.0.0.1:25".parse().unwrap(), &[])
    }

    #[test]
    fn a_line_without_end_is_refused_at_the_limit() {
        let mut stream = bounded();
        assert_eq!(stream.check(&[b'2'; MAX_LINE]), Ok(()));
        assert_eq!(stream.check(b"5"), Err(ReplyLimit::LineTooLong));
    }

    #[test]
    fn an_endless_multi_line_reply_is_refused_and_a_long_session_is_not() {
        let mut stream = bounded();
        for _ in 0..MAX_REPLY_LINES * 3 {
            assert_eq!(
                stream.check(b"250-SIZE 31457280\r\n250 AUTH LOGIN\r\n"),
                Ok(())
            );
        }
        let endless = b"250-X\r\n".repeat(MAX_REPLY_LINES);
        assert_eq!(stream.check(&endless), Err(ReplyLimit::TooManyLines));
    }

    /// Found by the smtp_replies fuzz target: lettre's EHLO parser panics on this line.
    #[test]
    fn a_line_of_only_blanks_is_refused_before_lettre_reads_it() {
        for blank in [&b"250 \t\r\n"[..], b"250-  \r\n", b"250\t\t\t \r\n", "250-\u{3000}\r\n".as_bytes()] {
            let mut stream = bounded();
            assert_eq!(stream.check(b"250-relay.example\r\n"), Ok(()));
            assert_eq!(stream.check(blank), Err(ReplyLimit::BlankText), "{:?}", String::from_utf8_lossy(blank));
        }
        let mut stream = bounded();
        assert_eq!(stream.check(b"250-relay.example\r\n250-\r\n250 AUTH LOGIN\r\n"), Ok(()), "an empty line is fine");
    }
}
