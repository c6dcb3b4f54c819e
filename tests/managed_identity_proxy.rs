//! The managed-identity endpoint is never reached through a proxy (issue 18, item 6): with
//! `HTTP_PROXY`/`HTTPS_PROXY` set and no `NO_PROXY`, a proxy would otherwise receive the
//! token request and could answer with a token of its choosing.
//!
//! azure_identity's VM endpoint (169.254.169.254) is a constant, so the test takes the
//! App Service source, whose endpoint comes from `IDENTITY_ENDPOINT` and can be on
//! 127.0.0.1; both sources send through the same client. The real binary runs as a child
//! with its own environment, so the proxy variables touch no other test.

use entra_rotator_standins::https::ServerTask;
use entra_rotator_standins::scenario::Scenario;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// A plain-HTTP server on 127.0.0.1 that records each request line and answers `status`.
struct Recorder {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    _task: ServerTask,
}

impl Recorder {
    async fn start(status: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let recorded = lines.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else { continue };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
                        if !matches!(tcp.read(&mut byte).await, Ok(1)) {
                            break;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head);
                    recorded.lock().unwrap().push(text.lines().next().unwrap_or_default().to_string());
                    let body = r#"{"error":{"code":"BadRequest","message":"recorded"}}"#;
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self {
            port,
            lines,
            _task: ServerTask::new(task),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// The scenario's configuration with the rotator's own credential switched to a
/// system-assigned managed identity.
fn use_managed_identity(scenario: &Scenario) {
    let text = std::fs::read_to_string(&scenario.config_path).unwrap();
    let start = text.find("  credential:\n").expect("a credential block");
    let end = start + text[start..].find("\ntls:").expect("tls follows the credential");
    let changed = format!("{}  credential:\n    type: managedIdentity{}", &text[..start], &text[end..]);
    std::fs::write(&scenario.config_path, changed).unwrap();
}

#[tokio::test]
async fn managed_identity_token_request_bypasses_the_system_proxy() {
    let scenario = Scenario::start().await.unwrap();
    use_managed_identity(&scenario);
    let proxy = Recorder::start("403 Forbidden").await;
    let identity = Recorder::start("400 Bad Request").await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command
        .args(["run", "--config", scenario.config_path.to_str().unwrap(), "--dry-run"])
        .env_remove("RUST_LOG");
    for name in ["NO_PROXY", "no_proxy", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT"] {
        command.env_remove(name);
    }
    // The endpoints speak plain HTTP, so HTTP_PROXY is the variable that applies to them
    // (HTTPS_PROXY would also make the Kubernetes client refuse to start).
    for name in ["HTTP_PROXY", "http_proxy"] {
        command.env(name, &proxy_url);
    }
    for name in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        command.env_remove(name);
    }
    command
        .env("IDENTITY_ENDPOINT", format!("http://127.0.0.1:{}/msi/token", identity.port))
        .env("IDENTITY_HEADER", "stand-in");
    let output = command.output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));

    assert_eq!(output.status.code(), Some(1), "the endpoint refuses, so the run fails:\n{text}");
    assert!(text.contains("could not get a Microsoft Graph token"), "{text}");
    assert_eq!(proxy.lines(), Vec::<String>::new(), "requests reached the proxy:\n{text}");
    let asked = identity.lines();
    assert!(
        !asked.is_empty() && asked.iter().all(|line| line.starts_with("GET /msi/token?")),
        "the identity endpoint was asked directly: {asked:?}\n{text}"
    );
}
