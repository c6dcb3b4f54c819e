//! What a first run on a real network meets: a host that does not resolve, a closed port,
//! a port that never answers, a proxy that refuses. The real binary (`run --config`)
//! against the stand-ins, one endpoint of the scenario's configuration pointed at the bad
//! peer; every bad peer is on 127.0.0.1 (the unresolvable name is under `.invalid`, which
//! RFC 6761 guarantees never resolves). Each error must name the host, the port and the
//! cause, and the permanent causes must stop without a minute of retries.

use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::scenario::Scenario;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The wall time a permanent failure may take, the whole process included. The fast path
/// has no timeout or backoff in it (one DNS lookup, one refused tunnel), so it takes well
/// under a second; the bound is generous for a loaded 2-core machine and still far below
/// the ~80 s the retry policies took before.
const PERMANENT_FAILURE_BOUND: Duration = Duration::from_secs(15);

const UNRESOLVABLE: &str = "login.rotator-test.invalid";

fn rotator(config: &Scenario) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command
        .args(["run", "--config", config.config_path.to_str().unwrap()])
        .env("KUBECONFIG", config.kubeconfig_path())
        .env_remove("RUST_LOG");
    for variable in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"] {
        command.env_remove(variable);
    }
    command
}

/// Runs the binary; returns its output and how long it took.
async fn timed(mut command: tokio::process::Command) -> (String, Option<i32>, Duration) {
    let started = Instant::now();
    let output: Output = command.output().await.unwrap();
    let elapsed = started.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (text, output.status.code(), elapsed)
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn an_unresolvable_token_endpoint_is_named_and_fails_fast() {
    let scenario = Scenario::start().await.unwrap();
    let authority = scenario.graph.authority_host();
    scenario
        .edit_config(&format!("authorityHost: {authority}"), &format!("authorityHost: https://{UNRESOLVABLE}"))
        .unwrap();

    let (out, code, elapsed) = timed(rotator(&scenario)).await;

    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("DNS resolution failed for host {UNRESOLVABLE} (port 443, from azure.authorityHost)")), "{out}");
    assert!(!out.contains("retry policy expired"), "a permanent cause is not retried: {out}");
    assert!(!out.contains("Check the rotator's own identity"), "the advice is about the network, not the identity: {out}");
    assert!(elapsed < PERMANENT_FAILURE_BOUND, "took {elapsed:?}: {out}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "nothing was minted");
}

#[tokio::test]
async fn a_closed_graph_port_is_named_and_each_retry_says_why() {
    let scenario = Scenario::start().await.unwrap();
    let port = closed_port();
    let graph = scenario.graph.graph_url();
    scenario.edit_config(&format!("graphUrl: {graph}"), &format!("graphUrl: https://127.0.0.1:{port}")).unwrap();

    let mut command = rotator(&scenario);
    command.args(["--log-level", "info"]);

    let (out, code, _) = timed(command).await;

    assert_eq!(code, Some(1), "{out}");
    let named = format!("connection refused by 127.0.0.1:{port} (from azure.graphUrl)");
    assert!(out.contains(&named), "{out}");
    // Refused is transient: retried with backoff, each retry logged with its cause.
    let retries = out.lines().filter(|l| l.contains("retrying Microsoft Graph call") && l.contains(&named)).count();
    assert!(retries >= 1, "no retry line names the cause: {out}");
}

#[tokio::test]
async fn a_blackholed_relay_port_is_named_with_the_timeout() {
    let scenario = Scenario::start().await.unwrap();
    // Accepts and never says a word: the greeting never comes.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            connections.push(socket);
        }
    });
    let relay_port = scenario.relay.port();
    scenario.edit_config(&format!("port: {relay_port}"), &format!("port: {port}\n        timeout: 1s")).unwrap();
    scenario.edit_config("retryBudget: 30s", "retryBudget: 0s").unwrap();

    let (out, code, _) = timed(rotator(&scenario)).await;
    held.abort();

    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("the SMTP relay localhost:{port} did not answer within 1s while connecting")), "{out}");
}

/// A proxy that answers every CONNECT with 403, recording the targets it was asked for.
async fn refusing_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let record = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let first = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
                record.lock().unwrap().push(first);
                let _ = socket.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
            });
        }
    });
    (port, asked)
}

/// Drops the Kubernetes target and cluster: kube is built without its proxy feature, so a
/// run with HTTPS_PROXY set would fail on it before the case under test.
fn without_kubernetes(scenario: &Scenario) {
    let text = std::fs::read_to_string(&scenario.config_path).unwrap();
    let target = &text[text.find("      - kubernetesSecret:").unwrap()..text.find("    verification:").unwrap()];
    scenario.edit_config(target, "").unwrap();
    let cluster = format!("kubernetes:\n  kubeconfig: {}\n", scenario.kubeconfig_path().display());
    scenario.edit_config(&cluster, "").unwrap();
}

#[tokio::test]
async fn a_proxy_refusing_the_tunnel_is_named_with_its_variable_and_fails_fast() {
    let scenario = Scenario::start().await.unwrap();
    without_kubernetes(&scenario);
    let (proxy_port, asked) = refusing_proxy().await;
    let authority = scenario.graph.authority_host();
    let login = format!("{}:{}", authority.host_str().unwrap(), authority.port_or_known_default().unwrap());
    let mut command = rotator(&scenario);
    command.env_remove("KUBECONFIG").env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"));

    let (out, code, elapsed) = timed(command).await;

    assert_eq!(code, Some(1), "{out}");
    let named = format!("the proxy http://127.0.0.1:{proxy_port} (from HTTPS_PROXY) refused to open a tunnel (CONNECT) to {login} (from azure.authorityHost)");
    assert!(out.contains(&named), "{out}");
    assert!(out.contains("NO_PROXY"), "the advice names NO_PROXY: {out}");
    assert!(elapsed < PERMANENT_FAILURE_BOUND, "took {elapsed:?}: {out}");
    assert_eq!(asked.lock().unwrap().as_slice(), [format!("CONNECT {login} HTTP/1.1")], "one CONNECT, not retried");
}
