//! The behaviour behind the performance figures (docs/performance.md), over real sockets:
//! the Graph stand-in's opt-in write budget, the Graph client sharing that budget fairly
//! (every write of a burst lands, none fails), one Key Vault client per vault (the
//! authentication challenge is paid once per process, not once per run), and the
//! concurrency settings' validation. No timings are asserted, only counts and outcomes.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator::adapters::graph::{GraphClient, GraphConfig, RetryPolicy};
use entra_rotator::adapters::http::{TlsTrust, http_client};
use entra_rotator::adapters::identity::{RotatorCredential, rotator_credential};
use entra_rotator::assembly::{Assembly, kube_client};
use entra_rotator::config::Config;
use entra_rotator::domain::{AppRef, SecretString, marker_for};
use entra_rotator::engine::events::RecordingSink;
use entra_rotator::engine::ports::{Directory, GraphError, SystemClock};
use entra_rotator::engine::{Engine, Outcome, RunOptions};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION};
use entra_rotator_standins::keyvault::routes as vault_routes;
use entra_rotator_standins::kubernetes::routes as kube_routes;
use entra_rotator_standins::scenario::Scenario;
use std::sync::Arc;
use std::time::Duration;

/// A Graph client of the scenario's rotator identity with `attempts` tries per call.
fn graph_client(scenario: &Scenario, attempts: u32) -> GraphClient {
    let trust = TlsTrust {
        extra_root_pems: vec![scenario.pki.ca_pem().to_string()],
    };
    let http = http_client(&trust, Duration::from_secs(10)).unwrap();
    let config = Config::load(&scenario.config_path).unwrap();
    let rotator_id = match &config.azure.credential {
        entra_rotator::config::CredentialConfig::ClientSecret { client_id, .. } => {
            client_id.clone()
        }
        other => panic!("the scenario signs in with a client secret, not {other:?}"),
    };
    let identity = RotatorCredential::ClientSecret {
        tenant_id: scenario.tenant.tenant_id.to_string(),
        client_id: rotator_id,
        secret: SecretString::from(scenario.rotator_secret.clone()),
    };
    let credential = rotator_credential(
        &identity,
        Some(&scenario.graph.authority_host()),
        http.clone(),
    )
    .unwrap();
    let retry = RetryPolicy {
        max_attempts: attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
    };
    GraphClient::new(
        GraphConfig {
            base_url: scenario.graph.graph_url(),
            retry,
        },
        credential,
        http,
    )
    .unwrap()
}

fn expiry() -> chrono::DateTime<Utc> {
    Utc::now() + ChronoDuration::days(30)
}

#[tokio::test]
async fn write_budget_answers_429_with_retry_after_beyond_the_budget_and_never_throttles_reads() {
    let scenario = Scenario::start().await.unwrap();
    scenario
        .graph
        .set_write_budget(2, 100, Duration::from_secs(60));
    let graph = graph_client(&scenario, 1);
    let object_id = scenario.target.object_id;

    for _ in 0..2 {
        graph
            .add_password(object_id, &marker_for("budget"), expiry())
            .await
            .unwrap();
    }
    let refused = graph
        .add_password(object_id, &marker_for("budget"), expiry())
        .await
        .unwrap_err();
    match &refused {
        GraphError::Api {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (429, "TooManyRequests"));
            assert!(message.contains("retry after"), "{message}");
        }
        other => panic!("expected Graph's 429, got {other:?}"),
    }
    assert!(refused.is_transient(), "throttling is worth retrying later");
    assert!(
        refused.to_string().contains("will try again later"),
        "{refused}"
    );
    assert_eq!(scenario.graph.throttled_writes(), 1);
    assert_eq!(
        scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        3,
        "the refused write was counted too"
    );

    let app = AppRef {
        tenant_id: scenario.tenant.tenant_id,
        client_id: scenario.target.app_id,
        object_id: None,
    };
    for _ in 0..5 {
        graph.application(&app).await.unwrap();
    }
    assert_eq!(scenario.graph.faults().count(ROUTE_GET_APPLICATION), 5);
    assert_eq!(
        scenario.graph.throttled_writes(),
        1,
        "reads do not spend the write budget"
    );
    assert_eq!(
        scenario.target_now().passwords.len(),
        3,
        "the hand-made secret and the two admitted writes"
    );
}

#[tokio::test]
async fn the_tenant_budget_counts_every_caller_together() {
    let scenario = Scenario::start().await.unwrap();
    // Each caller may write 5 times, the tenant only 2 times in all.
    scenario
        .graph
        .set_write_budget(5, 2, Duration::from_secs(60));
    let (first, second) = (graph_client(&scenario, 1), graph_client(&scenario, 1));
    let object_id = scenario.target.object_id;
    first
        .add_password(object_id, &marker_for("a"), expiry())
        .await
        .unwrap();
    second
        .add_password(object_id, &marker_for("b"), expiry())
        .await
        .unwrap();
    let refused = first
        .add_password(object_id, &marker_for("a"), expiry())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, GraphError::Api { status: 429, .. }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_burst_of_writes_larger_than_the_budget_all_land_by_waiting_out_retry_after() {
    let scenario = Scenario::start().await.unwrap();
    scenario
        .graph
        .set_write_budget(2, 100, Duration::from_secs(1));
    let graph = Arc::new(graph_client(&scenario, 5).with_max_concurrent_requests(3));
    let object_id = scenario.target.object_id;

    let writes = (0..6).map(|i| {
        let graph = graph.clone();
        tokio::spawn(async move {
            graph
                .add_password(object_id, &marker_for(&format!("burst-{i}")), expiry())
                .await
        })
    });
    for write in writes {
        write
            .await
            .unwrap()
            .expect("every write lands within the retry policy");
    }
    let ours = scenario
        .target_now()
        .passwords
        .iter()
        .filter(|p| {
            p.display_name
                .as_deref()
                .is_some_and(|n| n.contains("burst-"))
        })
        .count();
    assert_eq!(ours, 6, "each write minted exactly once");
    assert!(
        scenario.graph.throttled_writes() >= 1,
        "the budget was hit and waited out"
    );
}

#[tokio::test]
async fn stores_of_one_vault_share_a_client_so_the_challenge_is_paid_once_per_process() {
    let scenario = Scenario::start().await.unwrap();
    let config = Config::load(&scenario.config_path).unwrap();
    let kube = kube_client(&config.kubernetes).await.unwrap();
    let assembly = Assembly::new(&config.azure, &config.tls, Some(kube)).unwrap();
    let engine = Engine::new(Arc::new(SystemClock), Arc::new(RecordingSink::default()));

    // Like the controller, build the rotation afresh for every run.
    for _ in 0..3 {
        let rotation = assembly.rotation(&config.rotations[0], None).unwrap();
        engine.run(&rotation, RunOptions::default()).await.unwrap();
    }
    let rotation = assembly.rotation(&config.rotations[0], None).unwrap();
    let idle = engine.run(&rotation, RunOptions::default()).await.unwrap();
    assert!(matches!(idle, Outcome::UpToDate { .. }), "{idle:?}");
    assert_eq!(
        scenario.vault.faults().count(vault_routes::CHALLENGE),
        1,
        "one 401 challenge for the whole process"
    );
    assert_eq!(
        scenario.vault.faults().count(vault_routes::GET_SECRET),
        4,
        "one read per run"
    );
}

#[test]
fn max_concurrent_graph_requests_outside_1_to_64_is_refused_with_the_range() {
    let scenario_like = |value: &str| {
        format!(
            "azure:\n  maxConcurrentGraphRequests: {value}\nrotations:\n  - name: a\n    application: {{ tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47, clientId: 0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11 }}\n    targets:\n      - keyVault: {{ vaultUrl: https://kv.vault.azure.net, secretName: s }}\n    verification: none\n"
        )
    };
    let path = std::path::Path::new("rotator.yaml");
    for bad in ["0", "65"] {
        let error = Config::parse(&scenario_like(bad), path)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("maxConcurrentGraphRequests") && error.contains("use 1 to 64"),
            "{error}"
        );
    }
    let config = Config::parse(&scenario_like("16"), path).unwrap();
    assert_eq!(config.azure.max_concurrent_graph_requests, 16);
    let default = Config::parse(
        &scenario_like("8").replace(
            "  maxConcurrentGraphRequests: 8\n",
            "  graphUrl: https://graph.microsoft.com\n",
        ),
        path,
    )
    .unwrap();
    assert_eq!(
        default.azure.max_concurrent_graph_requests,
        entra_rotator::adapters::graph::DEFAULT_MAX_CONCURRENT_REQUESTS
    );
}

#[tokio::test]
async fn run_and_controller_refuse_a_concurrency_of_zero_and_run_reports_in_configuration_order() {
    let scenario = Scenario::start().await.unwrap();
    let config = scenario.config_path.to_str().unwrap();
    let rotator = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env("KUBECONFIG", scenario.kubeconfig_path());
        command
    };
    for args in [
        vec!["run", "--config", config, "--concurrency", "0"],
        vec!["controller", "--concurrency", "0"],
    ] {
        let output = rotator(&args).output().await.unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("--concurrency"),
            "{args:?}"
        );
    }

    // Four rotations run at once; the first in the file is held (its Kubernetes write, the
    // only one in the file) until the other three have stored, so it finishes last. The
    // results still come out in the file's order.
    let names = with_three_more_rotations(&scenario);
    let held = scenario.kubernetes.faults().hold(kube_routes::PATCH_SECRET);
    let mut child = rotator(&["run", "--config", config, "--concurrency", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), held.arrived())
        .await
        .expect("dify-smtp reached its Kubernetes write");
    while scenario.vault.faults().count(vault_routes::SET_SECRET) < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended while one rotation was held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held.release();
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let reported: Vec<&str> = stdout.lines().filter_map(|l| l.split_once(": rotated: new keyId").map(|(name, _)| name)).collect();
    assert_eq!(reported, names, "results in configuration order:\n{stdout}");
}

/// Gives the scenario's file three more rotations of three new applications, each into its
/// own Key Vault secret, and leaves the first (`dify-smtp`) with only its Kubernetes
/// Secret; returns the rotation names in file order.
fn with_three_more_rotations(scenario: &Scenario) -> Vec<String> {
    let text = std::fs::read_to_string(&scenario.config_path).unwrap();
    let at = text.find("  - name: dify-smtp").expect("the scenario's rotation");
    let first = text[at..].to_string();
    let vault_target = first
        .find("      - keyVault:")
        .map(|start| &first[start..first.find("      - kubernetesSecret:").unwrap()])
        .unwrap()
        .to_string();
    let secret_target = &first[first.find("      - kubernetesSecret:").unwrap()..first.find("    verification:").unwrap()];
    let mut rotations = first.replace(&vault_target, "");
    let mut names = vec!["dify-smtp".to_string()];
    for index in 1..=3 {
        let name = format!("app-{index}");
        let app = scenario.tenant.register_app(&name);
        rotations.push_str(
            &first
                .replace(secret_target, "")
                .replace("name: dify-smtp", &format!("name: {name}"))
                .replace(&scenario.target.app_id.to_string(), &app.app_id.to_string())
                .replace("secretName: dify-smtp-password", &format!("secretName: {name}-password")),
        );
        names.push(name);
    }
    std::fs::write(&scenario.config_path, format!("{}{rotations}", &text[..at])).unwrap();
    names
}

/// Log lines of this test's thread (the tests below run on tokio's current-thread runtime,
/// so every task logs here): how the test learns the Graph client has taken a 429 in.
#[derive(Clone, Default)]
struct LogLines(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogLines {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let lines = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || lines.clone())
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    async fn wait_for(&self, text: &str) {
        for _ in 0..6000 {
            if String::from_utf8_lossy(&self.0.lock().unwrap()).contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never logged {text:?}");
    }
}

/// A write Graph throttles once with `Retry-After: 2`, and a read started once the client
/// has taken the 429 in (it logged the retry); the read's request is held in the stand-in
/// on arrival, so the test sees the moment it was sent.
struct ThrottledWriteThenRead {
    scenario: Scenario,
    started: std::time::Instant,
    write: tokio::task::JoinHandle<Result<(), GraphError>>,
    read: tokio::task::JoinHandle<Result<(), GraphError>>,
    read_arrives: entra_rotator_standins::faults::Hold,
}

const RETRY_AFTER: Duration = Duration::from_secs(2);

impl ThrottledWriteThenRead {
    async fn start(concurrency: usize) -> Self {
        let scenario = Scenario::start().await.unwrap();
        let graph = Arc::new(graph_client(&scenario, 3).with_max_concurrent_requests(concurrency));
        let object_id = scenario.target.object_id;
        let app = AppRef { tenant_id: scenario.tenant.tenant_id, client_id: scenario.target.app_id, object_id: None };
        // Warm the token cache, so the read's first request is the read itself.
        graph.application(&app).await.unwrap();
        scenario.graph.faults().push(ROUTE_ADD_PASSWORD, Fault::throttle(RETRY_AFTER.as_secs()));
        let read_arrives = scenario.graph.faults().hold(ROUTE_GET_APPLICATION);
        let lines = LogLines::default();
        let _capture = lines.capture();
        let started = std::time::Instant::now();
        let write = tokio::spawn({
            let graph = graph.clone();
            async move { graph.add_password(object_id, &marker_for("throttled"), expiry()).await.map(|_| ()) }
        });
        lines.wait_for("retrying Microsoft Graph call").await;
        let read = tokio::spawn(async move { graph.application(&app).await.map(|_| ()) });
        Self { scenario, started, write, read, read_arrives }
    }

    async fn read_arrived(&self) {
        tokio::time::timeout(Duration::from_secs(60), self.read_arrives.arrived()).await.expect("the read reached Graph");
    }

    async fn finish(self) {
        self.read_arrives.release();
        self.write.await.unwrap().expect("the throttled write lands on its retry");
        self.read.await.unwrap().expect("the read is answered");
        assert_eq!(self.scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 2, "the 429 and the retry");
    }
}

/// First come, first served: a throttled call keeps its place while it waits to retry, so
/// with one call in flight at a time the read started meanwhile goes only after the write
/// has landed (with independent retries it would take the free place at once).
#[tokio::test]
async fn a_throttled_call_keeps_its_place_while_it_waits() {
    let calls = ThrottledWriteThenRead::start(1).await;
    calls.read_arrived().await;
    assert_eq!(
        calls.scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        2,
        "the read reached Graph only after the write's retry"
    );
    calls.finish().await;
}

/// A 429 with `Retry-After` pauses every call of the client, not only the throttled one:
/// with room for two calls in flight, the read started after the 429 reaches Graph no
/// sooner than `Retry-After` after the write began. The bound is one-sided: a loaded
/// machine can only make the read later, so it cannot fail a correct client.
#[tokio::test]
async fn a_429_with_retry_after_pauses_every_call_of_the_client() {
    let calls = ThrottledWriteThenRead::start(2).await;
    calls.read_arrived().await;
    let waited = calls.started.elapsed();
    assert!(waited >= RETRY_AFTER, "the read went {waited:?} after the write began, inside the pause");
    calls.finish().await;
}
