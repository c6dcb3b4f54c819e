//! A hostile SMTP server for the hostile-input tests: it answers every line the client
//! sends with the next scripted reply, byte for byte (malformed multi-line replies,
//! overlong lines, non-UTF-8, missing CRLF), and hangs up when the script runs out or
//! the client falls silent. Served in clear text or with TLS from the first byte, so the
//! phases after the TLS handshake (AUTH, MAIL, DATA) can be reached too.

use entra_rotator_standins::tls::TestPki;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// How long the server waits for the client's next line before hanging up.
const SILENCE: Duration = Duration::from_millis(300);

/// What the server says: `greeting` on connect, then `replies[i]` after the i-th line read.
#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: Vec<u8>,
    pub replies: Vec<Vec<u8>>,
}

/// A running server; stops when dropped.
pub struct HostileSmtp {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for HostileSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileSmtp {
    /// Serves `script` to every connection; with `tls`, after a TLS handshake (465-style).
    pub async fn start(script: Script, tls: Option<&TestPki>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|pki| TlsAcceptor::from(pki.server_config().unwrap()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let script = script.clone();
                match &acceptor {
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                play(tls, script).await;
                            }
                        });
                    }
                    None => {
                        tokio::spawn(play(tcp, script));
                    }
                }
            }
        });
        Self { addr, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn play<S: AsyncRead + AsyncWrite + Unpin>(stream: S, script: Script) {
    let mut stream = BufReader::new(stream);
    if stream.get_mut().write_all(&script.greeting).await.is_err() {
        return;
    }
    for reply in script.replies {
        let mut line = Vec::new();
        match tokio::time::timeout(SILENCE, stream.read_until(b'\n', &mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        if stream.get_mut().write_all(&reply).await.is_err() {
            return;
        }
    }
    let _ = stream.get_mut().shutdown().await;
}
