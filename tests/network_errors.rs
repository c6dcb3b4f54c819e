//! What a first run on a real network meets: a host that does not resolve, a closed port,
//! a port that never answers, a proxy that refuses. The real binary (`run --config`)
//! against the stand-ins, one endpoint of the scenario's configuration pointed at the bad
//! peer; every bad peer is on 127.0.0.1 (the unresolvable name is under `.invalid`, which
//! RFC 6761 guarantees never resolves). Each error must name the host, the port and the
//! cause, and the permanent causes must stop at their first attempt instead of a minute of
//! retries. Attempts are counted from the log, not timed: the Azure SDK logs every failed
//! attempt at `info` ("Failed response", with the URL), and the verifier each of its own.

use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::scenario::Scenario;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const UNRESOLVABLE: &str = "login.rotator-test.invalid";

/// `run --config` of the scenario's configuration.
fn rotator(scenario: &Scenario) -> tokio::process::Command {
    let mut command = binary(scenario);
    command.args(["run", "--config", scenario.config_path.to_str().unwrap()]);
    command
}

/// The binary, with no proxy or log filter from the test's environment.
fn binary(scenario: &Scenario) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.env("KUBECONFIG", scenario.kubeconfig_path()).env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost").env_remove("RUST_LOG");
    for variable in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"] {
        command.env_remove(variable);
    }
    command
}

/// Runs the binary with `--log-level info`; returns what it printed and its exit code.
async fn run_logged(mut command: tokio::process::Command) -> (String, Option<i32>) {
    command.args(["--log-level", "info"]);
    let output: Output = command.output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (text, output.status.code())
}

/// How many requests to `host` the Azure SDK logged as failed: one per attempt.
fn sdk_attempts(out: &str, host: &str) -> usize {
    out.lines().filter(|l| l.contains(" INFO ") && l.contains("Failed response") && l.contains(&format!("url: https://{host}"))).count()
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

    let (out, code) = run_logged(rotator(&scenario)).await;

    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("DNS resolution failed for host {UNRESOLVABLE} (port 443, from azure.authorityHost)")), "{out}");
    assert!(!out.contains("retry policy expired"), "a permanent cause is not retried: {out}");
    assert!(!out.contains("Check the rotator's own identity"), "the advice is about the network, not the identity: {out}");
    assert_eq!(sdk_attempts(&out, UNRESOLVABLE), 1, "one attempt, not retried: {out}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "nothing was minted");
}

#[tokio::test]
async fn a_closed_graph_port_is_named_and_each_retry_says_why() {
    let scenario = Scenario::start().await.unwrap();
    let port = closed_port();
    let graph = scenario.graph.graph_url();
    scenario.edit_config(&format!("graphUrl: {graph}"), &format!("graphUrl: https://127.0.0.1:{port}")).unwrap();

    let (out, code) = run_logged(rotator(&scenario)).await;

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

    let (out, code) = run_logged(rotator(&scenario)).await;
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

    let (out, code) = run_logged(command).await;

    assert_eq!(code, Some(1), "{out}");
    let named = format!("the proxy http://127.0.0.1:{proxy_port} (from HTTPS_PROXY) refused to open a tunnel (CONNECT) to {login} (from azure.authorityHost)");
    assert!(out.contains(&named), "{out}");
    assert!(out.contains("NO_PROXY"), "the advice names NO_PROXY: {out}");
    assert_eq!(sdk_attempts(&out, &login), 1, "one attempt, not retried: {out}");
    assert_eq!(asked.lock().unwrap().as_slice(), [format!("CONNECT {login} HTTP/1.1")], "one CONNECT, not retried");
}

#[tokio::test]
async fn an_unresolvable_vault_is_named_and_fails_fast() {
    let scenario = Scenario::start().await.unwrap();
    let vault = scenario.vault.vault_url();
    scenario.edit_config(&format!("vaultUrl: {vault}"), "vaultUrl: https://vault.rotator-test.invalid").unwrap();

    let (out, code) = run_logged(rotator(&scenario)).await;

    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DNS resolution failed for host vault.rotator-test.invalid (port 443, from vaultUrl)"), "{out}");
    assert!(out.contains("the vault name is part of the host name"), "{out}");
    assert_eq!(sdk_attempts(&out, "vault.rotator-test.invalid"), 1, "one attempt, not retried: {out}");
}

#[tokio::test]
async fn an_untrusted_certificate_names_the_trust_store_and_fails_fast() {
    let scenario = Scenario::start().await.unwrap();
    // The stand-ins' CA is trusted only through this line.
    let ca = format!("extraRootCertificates: [{}]", scenario.ca_path().display());
    scenario.edit_config(&ca, "extraRootCertificates: []").unwrap();
    let authority = scenario.graph.authority_host();
    let login = format!("{}:{}", authority.host_str().unwrap(), authority.port_or_known_default().unwrap());

    let (out, code) = run_logged(rotator(&scenario)).await;

    assert_eq!(code, Some(1), "{out}");
    let named = format!("TLS failed with {login} (from azure.authorityHost): the certificate's issuer is not trusted by the system's trust store");
    assert!(out.contains(&named) && out.contains("add its CA certificate to tls.extraRootCertificates"), "{out}");
    assert_eq!(sdk_attempts(&out, &login), 1, "one attempt, not retried: {out}");
}

/// A TLS server on 127.0.0.1 whose certificate (from a CA the rotator is told to trust)
/// names another host; returns its port and the CA's PEM.
async fn server_for_another_name() -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec!["another-host.example".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // The client aborts the handshake; nothing to serve.
            let _ = acceptor.accept(socket).await;
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn a_certificate_for_another_name_is_named_and_fails_fast() {
    let scenario = Scenario::start().await.unwrap();
    let (port, ca_pem) = server_for_another_name().await;
    let extra_ca = scenario.config_path.with_file_name("another-ca.pem");
    std::fs::write(&extra_ca, ca_pem).unwrap();
    let ca = format!("extraRootCertificates: [{}", scenario.ca_path().display());
    scenario.edit_config(&ca, &format!("{ca}, {}", extra_ca.display())).unwrap();
    let authority = scenario.graph.authority_host();
    scenario.edit_config(&format!("authorityHost: {authority}"), &format!("authorityHost: https://127.0.0.1:{port}")).unwrap();

    let (out, code) = run_logged(rotator(&scenario)).await;

    assert_eq!(code, Some(1), "{out}");
    let named = format!("TLS failed with 127.0.0.1:{port} (from azure.authorityHost): the certificate is not valid for the name 127.0.0.1");
    assert!(out.contains(&named), "{out}");
    assert_eq!(sdk_attempts(&out, &format!("127.0.0.1:{port}")), 1, "one attempt, not retried: {out}");
}

/// The rotator's credential for the in-process test: never asked, since the vault is never
/// reached to send its challenge.
#[derive(Debug)]
struct NoCredential;

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for NoCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, "not asked in this test"))
    }
}

/// Log lines, as the binary writes them, into a buffer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_azure_sdk_attempt_at_a_closed_vault_port_is_logged_at_info_with_its_cause() {
    use entra_rotator::adapters::http::{TlsTrust, azure_client_options, http_client};
    use entra_rotator::adapters::keyvault::{KeyVaultSettings, KeyVaultStore, VaultTrust};
    use entra_rotator::engine::ports::{SecretStore, StoreErrorKind};
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let port = closed_port();
    let http = http_client(&TlsTrust::default(), Duration::from_secs(10)).unwrap();
    let mut options = azure_client_options(http);
    // azure_core's own backoff, shortened to milliseconds: the first try and three retries.
    options.retry = azure_core::http::RetryOptions::fixed(azure_core::http::FixedRetryOptions {
        delay: azure_core::time::Duration::milliseconds(5),
        max_retries: 3,
        max_total_elapsed: azure_core::time::Duration::seconds(30),
    });
    let trust = VaultTrust::for_authority(&"https://login.microsoftonline.com".parse().unwrap()).with_private_hosts(["127.0.0.1"]);
    let settings = KeyVaultSettings::new(format!("https://127.0.0.1:{port}"), "smtp-password");
    let store = KeyVaultStore::new(settings, &trust, Arc::new(NoCredential), options).unwrap();

    let error = store.read().await.unwrap_err();

    let named = format!("connection refused by 127.0.0.1:{port} (from vaultUrl)");
    assert_eq!(error.kind, StoreErrorKind::Transient, "{error}");
    assert!(error.to_string().contains(&named), "{error}");
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // azure_core's logging policy logs each failed attempt at info; the cause is named in it.
    let attempts = logs.lines().filter(|l| l.contains(" INFO ") && l.contains(&named)).count();
    assert_eq!(attempts, 4, "one info line per attempt: {logs}");
}

#[tokio::test]
async fn a_webhook_at_a_closed_port_is_named_without_its_token() {
    use entra_rotator_standins::faults::Fault;
    use entra_rotator_standins::scenario::SECRET_NAME;
    const NAMESPACE: &str = "dify";
    let scenario = Scenario::start().await.unwrap();
    let port = closed_port();
    let token = "sig=hook-token-that-must-not-leak";
    let spec = scenario.rotation_spec(SECRET_NAME, serde_json::json!({}));
    scenario.kubernetes.create_rotation(NAMESPACE, "dify-smtp", spec).unwrap();
    let settings = scenario.config_path.with_file_name("controller.yaml");
    let base = std::fs::read_to_string(&scenario.config_path).unwrap();
    let hook = format!("http://127.0.0.1:{port}/hook?{token}");
    std::fs::write(&settings, format!("{base}notifications:\n  channels:\n    - webhook:\n        url: \"{hook}\"\n")).unwrap();
    // A rotation that fails, so there is something to notify.
    scenario.graph.faults().push(ROUTE_ADD_PASSWORD, Fault::status(403));

    let mut command = binary(&scenario);
    command.args(["run", "--namespace", NAMESPACE, "--azure-config", settings.to_str().unwrap()]);
    let (out, code) = run_logged(command).await;

    assert_eq!(code, Some(1), "{out}");
    let events = scenario.kubernetes.events(NAMESPACE);
    let failed = events.iter().find(|e| e.reason == "NotificationFailed").unwrap_or_else(|| panic!("{events:?}\n{out}"));
    let note = failed.note.clone().unwrap_or_default();
    assert!(note.contains(&format!("connection refused by 127.0.0.1:{port} (from notifications.channels[].webhook.url)")), "{note}");
    assert!(!note.contains(token) && !out.contains(token), "{note}\n{out}");
}

#[tokio::test]
async fn an_unresolvable_relay_is_named_with_the_resolver_answer() {
    let scenario = Scenario::start().await.unwrap();
    scenario.edit_config("host: localhost", "host: relay.rotator-test.invalid").unwrap();

    let (out, code) = run_logged(rotator(&scenario)).await;

    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the SMTP relay host relay.rotator-test.invalid does not resolve (failed to lookup address"), "{out}");
    assert!(out.contains("Check the host name"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("verification attempt")).count(), 1, "one attempt, not retried: {out}");
}
