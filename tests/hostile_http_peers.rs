//! Hostile HTTP peers (issue 18, item 3): a host the configuration names (a vaultUrl, the
//! graphUrl, the authority host) answers with a gzip bomb or a body without end. The real
//! binary (`run --dry-run`, everything else on the stand-ins) must fail the rotation with
//! an error naming the host, the request and the limit, and its peak memory must stay
//! under [`PEAK_RSS_BOUND_KIB`] (the chart's memory limit is 128 Mi; before the fix a 2 MB
//! gzip body took the process to about 4 GB).
//!
//! Peak memory is the child's own maximum resident set size as the kernel reports it when
//! the child is reaped (`wait4`), so parallel tests do not disturb each other's figure.

use entra_rotator_standins::https::ServerTask;
use entra_rotator_standins::scenario::{Scenario, VAULT_SECRET};
use entra_rotator_standins::tls::TestPki;
use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The whole process, peak resident set: generous for a CLI run (about 20 MiB measured),
/// far below what reading any of these answers whole takes.
const PEAK_RSS_BOUND_KIB: i64 = 200 * 1024;
/// What the gzip bomb inflates to.
const BOMB_INFLATED_BYTES: usize = 2 << 30;
/// What the endless body announces and would send if the client kept reading.
const ENDLESS_BODY_BYTES: u64 = 1 << 30;

/// What the hostile host answers to every request.
#[derive(Clone)]
enum Answer {
    /// `200`, `Content-Encoding: gzip`, a small body inflating to [`BOMB_INFLATED_BYTES`].
    GzipBomb(Arc<Vec<u8>>),
    /// `200`, plain JSON (`{"value":"aaaa…`) of [`ENDLESS_BODY_BYTES`].
    EndlessJson,
}

/// A gzip member of about 2 MiB inflating to `inflated` bytes of zeros: one block of
/// 1 MiB of zeros, compressed once and ended by a sync flush (so it ends on a byte
/// boundary and refers only to zeros), repeated. The trailer's CRC is left zero: a
/// client that inflates has spent the memory long before it checks it.
fn gzip_bomb(inflated: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    const BLOCK: usize = 1 << 20;
    let zeros = vec![0u8; BLOCK];
    let mut compress = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(64 << 10);
    compress.compress_vec(&zeros, &mut block, FlushCompress::Sync).unwrap();
    assert_eq!(compress.total_in(), BLOCK as u64, "one call compresses the whole block");
    let mut end = Vec::with_capacity(64);
    compress.compress_vec(&[], &mut end, FlushCompress::Finish).unwrap();

    let repeats = inflated / BLOCK;
    let mut bomb = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..repeats {
        bomb.extend_from_slice(&block);
    }
    bomb.extend_from_slice(&end);
    bomb.extend_from_slice(&[0; 4]); // CRC-32, not computed
    bomb.extend_from_slice(&(inflated as u32).to_le_bytes()); // ISIZE, modulo 2^32
    bomb
}

/// A hostile HTTPS host on 127.0.0.1, counting the requests it answered.
struct HostileHost {
    url: String,
    requests: Arc<AtomicUsize>,
    _task: ServerTask,
}

impl HostileHost {
    async fn start(pki: &TestPki, answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let acceptor = TlsAcceptor::from(pki.server_config().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, answer, counter) = (acceptor.clone(), answer.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    if read_request_head(&mut tls).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        // The client hangs up once it has refused the answer.
                        let _ = write_answer(&mut tls, &answer).await;
                    }
                });
            }
        });
        Self {
            url,
            requests,
            _task: ServerTask::new(task),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads up to the end of the request head; the request body, if any, is ignored.
async fn read_request_head(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 << 10 || !matches!(tls.read(&mut byte).await, Ok(1)) {
            return false;
        }
        head.push(byte[0]);
    }
    true
}

async fn write_answer(tls: &mut (impl tokio::io::AsyncWrite + Unpin), answer: &Answer) -> std::io::Result<()> {
    match answer {
        Answer::GzipBomb(bomb) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                bomb.len()
            );
            tls.write_all(head.as_bytes()).await?;
            tls.write_all(bomb).await?;
        }
        Answer::EndlessJson => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {ENDLESS_BODY_BYTES}\r\nconnection: close\r\n\r\n"
            );
            tls.write_all(head.as_bytes()).await?;
            let start = b"{\"value\":\"";
            tls.write_all(start).await?;
            let chunk = vec![b'a'; 64 << 10];
            let mut left = ENDLESS_BODY_BYTES - start.len() as u64;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                tls.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
        }
    }
    tls.flush().await
}

/// A finished `entra-rotator` child.
struct Finished {
    code: Option<i32>,
    output: String,
    peak_rss_kib: i64,
}

/// Runs `entra-rotator run --config <config> --dry-run` to its end and reaps it with
/// `wait4`, which reports the child's peak resident set size.
// The child is reaped by wait4, which std's `Child::wait` cannot replace: it drops the
// resource usage.
#[allow(clippy::zombie_processes)]
fn run_dry(config: &std::path::Path) -> Finished {
    let mut child = Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["run", "--config", config.to_str().unwrap(), "--dry-run"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    let readers = [stdout, stderr].map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain integers, valid when zeroed; wait4 writes `status` and
    // `usage` through pointers to live locals, and reaps only our own child `pid` (std's
    // `Child` is never waited on, so nothing else reaps it).
    let (reaped, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let reaped = libc::wait4(pid, &mut status, 0, &mut usage);
        (reaped, usage)
    };
    assert_eq!(reaped, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let output = readers.map(|reader| reader.join().unwrap()).join("");
    Finished {
        code: std::process::ExitStatus::from_raw(status).code(),
        output,
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss,
    }
}

/// Which host turns hostile.
#[derive(Clone, Copy, Debug)]
enum Peer {
    KeyVault,
    Graph,
    TokenEndpoint,
}

/// Replaces `peer`'s URL in the scenario's configuration by the hostile host, runs the
/// binary, and checks the run failed with `expected` in its output, contacted the host,
/// and stayed under the memory bound. Prints the figure for the record.
async fn assert_refused(peer: Peer, answer: Answer, expected: &[&str]) {
    let scenario = Scenario::start().await.unwrap();
    let hostile = HostileHost::start(&scenario.pki, answer).await;
    let (from, to) = match peer {
        Peer::KeyVault => (format!("vaultUrl: {}", scenario.vault.vault_url()), format!("vaultUrl: {}", hostile.url)),
        Peer::Graph => (format!("graphUrl: {}", scenario.graph.graph_url()), format!("graphUrl: {}", hostile.url)),
        Peer::TokenEndpoint => (
            format!("authorityHost: {}", scenario.graph.authority_host()),
            format!("authorityHost: {}", hostile.url),
        ),
    };
    scenario.edit_config(&from, &to).unwrap();

    // The child runs on a blocking thread while this runtime serves the stand-ins and the
    // hostile host.
    let config = scenario.config_path.clone();
    let finished = tokio::task::spawn_blocking(move || run_dry(&config)).await.unwrap();

    eprintln!("{peer:?}: peak RSS {} KiB; output:\n{}", finished.peak_rss_kib, finished.output);
    assert!(hostile.requests() >= 1, "the hostile {peer:?} was never asked:\n{}", finished.output);
    assert_eq!(finished.code, Some(1), "{}", finished.output);
    for part in expected {
        assert!(finished.output.contains(part), "missing {part:?} in:\n{}", finished.output);
    }
    assert!(!finished.output.contains("challenge resource"), "the refusal is not blamed on the challenge:\n{}", finished.output);
    assert!(
        finished.peak_rss_kib < PEAK_RSS_BOUND_KIB,
        "peak RSS {} KiB, bound {PEAK_RSS_BOUND_KIB} KiB",
        finished.peak_rss_kib
    );
}

fn bomb() -> Answer {
    Answer::GzipBomb(Arc::new(gzip_bomb(BOMB_INFLATED_BYTES)))
}

const ENCODED: &str = "with a body in content-encoding \"gzip\", which it did not ask for; the rotator refuses encoded answers";

#[tokio::test]
async fn key_vault_gzip_bomb_on_the_first_request_is_refused_unread() {
    let vault = format!("answered GET /secrets/{VAULT_SECRET}");
    assert_refused(Peer::KeyVault, bomb(), &[&vault, ENCODED, "check that vaultUrl points at an Azure Key Vault"]).await;
}

#[tokio::test]
async fn key_vault_endless_json_is_cut_at_the_limit() {
    let vault = format!("answered GET /secrets/{VAULT_SECRET}");
    assert_refused(Peer::KeyVault, Answer::EndlessJson, &[&vault, "with a body over 1 MiB; the rotator refuses larger answers"]).await;
}

#[tokio::test]
async fn graph_gzip_bomb_on_get_application_is_refused_unread() {
    assert_refused(Peer::Graph, bomb(), &["answered GET /v1.0/applications(appId=", ENCODED, "check that azure.graphUrl points at Microsoft Graph"]).await;
}

#[tokio::test]
async fn graph_endless_json_is_cut_at_the_limit() {
    assert_refused(Peer::Graph, Answer::EndlessJson, &["answered GET /v1.0/applications(appId=", "with a body over 4 MiB; the rotator refuses larger answers"]).await;
}

#[tokio::test]
async fn token_endpoint_gzip_bomb_is_refused_unread() {
    assert_refused(Peer::TokenEndpoint, bomb(), &["/oauth2/v2.0/token", ENCODED, "check that azure.authorityHost is the Entra login endpoint"]).await;
}

#[tokio::test]
async fn token_endpoint_endless_json_is_cut_at_the_limit() {
    assert_refused(Peer::TokenEndpoint, Answer::EndlessJson, &["/oauth2/v2.0/token", "with a body over 1 MiB; the rotator refuses larger answers"]).await;
}
