//! Alerts before expiry and on failure, end to end: CronJob passes (separate processes, so
//! each is a restart) against the stand-ins, notifications to a local webhook receiver,
//! and the controller's /metrics.

use axum::{routing::post, Json, Router};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::kubernetes::WorkloadKind;
use entra_rotator_standins::scenario::{Scenario, SECRET_NAME};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;

const NAMESPACE: &str = "dify";
const NAME: &str = "dify-smtp";

/// A webhook receiver that records every JSON body; answers `status` (settable).
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    status: Arc<Mutex<u16>>,
}

async fn receiver() -> Receiver {
    let received = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(Mutex::new(200u16));
    let (r, s) = (received.clone(), status.clone());
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let (r, s) = (r.clone(), s.clone());
            async move {
                let code = *s.lock().unwrap();
                if code == 200 {
                    r.lock().unwrap().push(body);
                }
                axum::http::StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, received, status }
}

/// A Scenario whose rotation has a 48h lifetime, so its secret is within the 7-day threshold.
async fn world(receiver: &Receiver) -> (Scenario, std::path::PathBuf) {
    let scenario = Scenario::start().await.unwrap();
    scenario.kubernetes.create_workload(NAMESPACE, WorkloadKind::Deployment, "dify-api", &[("app", "dify")]).unwrap();
    let spec = scenario.rotation_spec(SECRET_NAME, json!({ "lifetime": "48h", "renewBefore": "1h", "revokeGracePeriod": "0s" }));
    scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();
    let settings = scenario.config_path.with_file_name("controller.yaml");
    let base = std::fs::read_to_string(&scenario.config_path).unwrap();
    std::fs::write(&settings, format!("{base}notifications:\n  channels:\n    - webhook:\n        url: {}\n", receiver.url)).unwrap();
    (scenario, settings)
}

async fn pass(scenario: &Scenario, settings: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["run", "--namespace", NAMESPACE, "--azure-config", settings.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .output()
        .await
        .unwrap()
}

fn expiring_events(scenario: &Scenario) -> usize {
    let events = scenario.kubernetes.events(NAMESPACE);
    events.iter().filter(|e| e.reason == "ExpiringSoon" && e.type_ == "Warning").map(|e| e.count as usize).sum()
}

fn kinds(receiver: &Receiver) -> Vec<String> {
    receiver.received.lock().unwrap().iter().map(|b| b["kind"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn one_notification_per_threshold_crossing_across_restarts() {
    let receiver = receiver().await;
    let (scenario, settings) = world(&receiver).await;
    for _ in 0..3 {
        let output = pass(&scenario, &settings).await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(kinds(&receiver), vec!["CredentialExpiring"], "one notification, not one per pass");
    assert_eq!(expiring_events(&scenario), 1, "one Warning Event per crossing");
    let body = receiver.received.lock().unwrap()[0].clone();
    assert_eq!(body["rotation"], "dify/dify-smtp");
    assert!(matches!(body["daysLeft"].as_i64(), Some(1..=2)), "{body}");
    assert!(body["message"].as_str().unwrap().contains("within the 7-day alert threshold"), "{body}");

    // A smaller threshold is crossed: exactly one more.
    scenario.kubernetes.patch_rotation_spec(NAMESPACE, NAME, json!({ "alertThresholds": ["720h", "168h", "48h"] })).unwrap();
    pass(&scenario, &settings).await;
    pass(&scenario, &settings).await;
    assert_eq!(kinds(&receiver), vec!["CredentialExpiring", "CredentialExpiring"]);
    assert_eq!(expiring_events(&scenario), 2);

    let everything = serde_json::to_string(&*receiver.received.lock().unwrap()).unwrap();
    for value in scenario.tenant.minted_values() {
        assert!(!everything.contains(&value), "a secret value reached a notification");
    }
}

#[tokio::test]
async fn undelivered_notifications_are_retried_and_failures_announced_once() {
    let receiver = receiver().await;
    let (scenario, settings) = world(&receiver).await;
    *receiver.status.lock().unwrap() = 500;
    scenario.graph.faults().push_times(ROUTE_ADD_PASSWORD, Fault::status(403), 2);
    assert_eq!(pass(&scenario, &settings).await.status.code(), Some(1));
    assert!(kinds(&receiver).is_empty(), "the receiver was failing");
    let events: Vec<String> = scenario.kubernetes.events(NAMESPACE).into_iter().map(|e| e.reason).collect();
    assert!(events.iter().any(|r| r == "NotificationFailed"), "{events:?}");

    *receiver.status.lock().unwrap() = 200;
    assert_eq!(pass(&scenario, &settings).await.status.code(), Some(1));
    assert_eq!(kinds(&receiver), vec!["RotationFailed"], "delivered on the next pass, once");
    let message = receiver.received.lock().unwrap()[0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("Application.ReadWrite.OwnedBy"), "{message}");

    // Recovery, then the expiry alert for the new secret.
    assert!(pass(&scenario, &settings).await.status.success());
    assert_eq!(kinds(&receiver), vec!["RotationFailed", "CredentialExpiring"]);
}

#[tokio::test]
async fn controller_exposes_expiry_and_request_metrics() {
    let receiver = receiver().await;
    let (scenario, settings) = world(&receiver).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _controller = Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--azure-config", settings.to_str().unwrap()])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut text = String::new();
    for _ in 0..300 {
        if let Ok(response) = reqwest::get(&url).await {
            text = response.text().await.unwrap_or_default();
            if text.contains("entra_rotator_credential_seconds_left{") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app_id = scenario.target.app_id.to_string();
    assert!(text.contains(&format!("entra_rotator_credential_expiry_timestamp_seconds{{rotation=\"dify/dify-smtp\",app_id=\"{app_id}\"")), "{text}");
    assert!(text.contains("entra_rotator_reconciles_total{result=\"rotated\",reason=\"StoredSecretMissing\"} 1"), "{text}");
    assert!(text.contains("entra_rotator_api_requests_total{service=\"graph\",operation=\"addPassword\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("entra_rotator_verification_attempts_count 1"), "{text}");
    assert!(text.contains("entra_rotator_verification_duration_seconds_count 1"), "{text}");
    assert!(text.lines().any(|l| l == "entra_rotator_leader 1"), "the replica that reconciled leads: {text}");
    for value in scenario.tenant.minted_values() {
        assert!(!text.contains(&value), "a secret value reached the metrics");
    }
}

/// `--metrics-addr` moves /metrics (which names every application and keyId) off the
/// probes' address: the probes' port answers 404 for it, the metrics port serves it.
#[tokio::test]
async fn metrics_can_be_served_apart_from_the_probes() {
    let receiver = receiver().await;
    let (scenario, settings) = world(&receiver).await;
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (health, metrics) = (free_port(), free_port());
    let _controller = Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--azure-config", settings.to_str().unwrap()])
        .args(["--health-addr", &format!("127.0.0.1:{health}"), "--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let get = |port: u16, path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        async move { reqwest::get(&url).await.ok().map(|r| r.status().as_u16()) }
    };
    for _ in 0..300 {
        if get(health, "/healthz").await.is_some() && get(metrics, "/metrics").await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(health, "/healthz").await, Some(200));
    assert_eq!(get(health, "/metrics").await, Some(404), "no metrics on the probes' port");
    assert_eq!(get(metrics, "/metrics").await, Some(200));
    assert_eq!(get(metrics, "/healthz").await, Some(404), "the metrics port serves metrics only");
}
