//! Revocation waits for the consumers, end to end: CronJob passes of the real binary
//! (each a fresh process, so every wait is picked up from the status) against the
//! stand-ins, with Pods that read the Secret through env, a stuck roll-out, and a plain
//! volume. No pass waits for time to pass except where the rule is about time, and then
//! only until a wall-clock instant the test computed (never for an outcome to race).

use axum::{routing::post, Json, Router};
use chrono::{DateTime, Utc};
use entra_rotator_standins::kubernetes::WorkloadKind;
use entra_rotator_standins::scenario::{Scenario, SECRET_NAME};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::process::Command;

const NAMESPACE: &str = "dify";
const NAME: &str = "dify-smtp";

/// Records every webhook notification body.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

async fn receiver() -> Receiver {
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, received }
}

struct World {
    scenario: Scenario,
    settings: PathBuf,
    receiver: Receiver,
}

fn env_reader() -> Value {
    json!({ "containers": [{ "name": "api", "image": "langgenius/dify-api",
        "envFrom": [{ "secretRef": { "name": SECRET_NAME } }] }] })
}

async fn world(extra_spec: Value) -> World {
    let receiver = receiver().await;
    let scenario = Scenario::start().await.unwrap();
    let mut spec = scenario.rotation_spec(SECRET_NAME, json!({ "lifetime": "4320h", "revokeGracePeriod": "0s" }));
    for (key, value) in extra_spec.as_object().unwrap() {
        spec[key] = value.clone();
    }
    scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();
    let settings = scenario.config_path.with_file_name("controller.yaml");
    let base = std::fs::read_to_string(&scenario.config_path).unwrap();
    std::fs::write(&settings, format!("{base}notifications:\n  channels:\n    - webhook:\n        url: {}\n", receiver.url)).unwrap();
    World { scenario, settings, receiver }
}

impl World {
    /// One CronJob pass; its result line.
    async fn pass(&self) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(["run", "--namespace", NAMESPACE, "--azure-config", self.settings.to_str().unwrap()])
            .env("KUBECONFIG", self.scenario.kubeconfig_path())
            .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
            .env_remove("RUST_LOG")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout
    }

    /// Asks for a rotation (the rotate-requested-at annotation), which the next pass carries
    /// out. Not a renewBefore close to the lifetime: whether that is due depends on the
    /// application's renewal jitter, drawn from its id.
    async fn rotate_next_pass(&self) -> String {
        let requested = chrono::Utc::now().to_rfc3339();
        self.scenario.kubernetes.annotate_rotation(NAMESPACE, NAME, entra_rotator::operator::rotate_request::ROTATE_REQUESTED_AT, &requested).unwrap();
        let line = self.pass().await;
        assert!(line.contains("rotated: new keyId"), "{line}");
        line
    }

    fn status(&self) -> Value {
        self.scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"].clone()
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let status = self.status();
        let found = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).cloned().unwrap_or(Value::Null);
        let text = |field: &str| found[field].as_str().unwrap_or_default().to_string();
        (text("status"), text("reason"), text("message"))
    }

    fn ours(&self) -> Vec<String> {
        let mut ours: Vec<(std::time::Instant, String)> = self
            .scenario
            .target_now()
            .passwords
            .iter()
            .filter(|p| p.display_name.as_deref() == Some("entra-rotator:dify/dify-smtp"))
            .map(|p| (p.minted_at, p.key_id.to_string()))
            .collect();
        ours.sort();
        ours.into_iter().map(|(_, key_id)| key_id).collect()
    }

    fn warnings(&self, reason: &str) -> u64 {
        let events = self.scenario.kubernetes.events(NAMESPACE);
        events.iter().filter(|e| e.reason == reason && e.type_ == "Warning").map(|e| e.count).sum()
    }

    fn notifications(&self) -> Vec<String> {
        self.receiver.received.lock().unwrap().iter().map(|b| b["kind"].as_str().unwrap().to_string()).collect()
    }

    /// Waits until the wall clock is past the second in which the Secret was last written,
    /// so a Pod created from now on is surely younger than the value.
    async fn after_the_write(&self) {
        let written: DateTime<Utc> = self.status()["consumers"]["secretWrittenTime"].as_str().unwrap().parse().unwrap();
        let past = written + chrono::Duration::seconds(1);
        while Utc::now() < past {
            tokio::time::sleep((past - Utc::now()).to_std().unwrap_or_default()).await;
        }
    }

    fn consumer_pods(&self) -> Vec<(String, bool)> {
        let mut pods: Vec<(String, bool)> = self.status()["consumers"]["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["reads"][0].as_str().unwrap().to_string(), p["holdsNewValue"].as_bool().unwrap()))
            .collect();
        pods.sort();
        pods
    }
}

fn pod_names(scenario: &Scenario) -> Vec<String> {
    scenario.kubernetes.pods(NAMESPACE).iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn env_consumers_that_are_not_restarted_keep_the_old_secret_live_until_replaced() {
    let w = world(json!({})).await;
    w.scenario.kubernetes.create_workload_with(NAMESPACE, WorkloadKind::Deployment, "dify-api", &[("app", "dify")], env_reader(), 2).unwrap();
    w.pass().await;
    let first = w.ours();
    assert_eq!(first.len(), 1);
    assert_eq!(w.consumer_pods(), [("env".to_string(), false), ("env".to_string(), false)], "found, and reported as not on the new value");

    let line = w.rotate_next_pass().await;
    let [old, new] = <[String; 2]>::try_from(w.ours()).unwrap();
    assert_eq!(old, first[0]);
    assert!(line.contains(&format!("{old} kept live (ConsumersOnOldSecret)")), "{line}");
    let (status, reason, message) = w.condition("Revoked");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ConsumersOnOldSecret"));
    for pod in pod_names(&w.scenario) {
        assert!(message.contains(&format!("pod {pod} (env)")), "{message}");
    }
    assert!(message.contains("kubectl rollout restart"), "without spec.rollout the user is told to restart them: {message}");
    assert_eq!(w.status()["consumers"]["onOldSecret"], 2);
    assert_eq!(w.status()["consumers"]["keyId"], new.as_str());
    assert!(w.warnings("ConsumersOnOldSecret") >= 1);

    // Another pass (a restart) changes nothing while the pods run.
    w.pass().await;
    assert_eq!(w.ours(), [old.clone(), new.clone()]);
    let waiting_since = w.status()["consumers"]["waitingSince"].clone();
    assert!(waiting_since.is_string());

    // The pods are replaced (as `kubectl rollout restart` would): now the old one goes.
    w.after_the_write().await;
    for pod in pod_names(&w.scenario) {
        w.scenario.kubernetes.delete_pod(NAMESPACE, &pod);
    }
    w.scenario.kubernetes.complete_rollout(NAMESPACE, WorkloadKind::Deployment, "dify-api");
    let line = w.pass().await;
    assert!(line.contains(&format!("revoked {old}")), "{line}");
    assert_eq!(w.ours(), [new]);
    assert_eq!(w.condition("Revoked").1, "ConsumersOnNewSecret");
    assert_eq!(w.consumer_pods(), [("env".to_string(), true), ("env".to_string(), true)]);
    assert!(w.status()["consumers"].get("waitingSince").is_none());
    assert!(w.notifications().is_empty(), "no wait passed consumerWaitTimeout");
}

#[tokio::test]
async fn a_stuck_rollout_holds_revocation_alerts_after_the_bound_and_revokes_only_when_told() {
    let w = world(json!({
        "rollout": [ { "kind": "Deployment", "name": "dify-api" } ],
        "consumerWaitTimeout": "24h",
    }))
    .await;
    w.scenario.kubernetes.create_workload_with(NAMESPACE, WorkloadKind::Deployment, "dify-api", &[("app", "dify")], env_reader(), 1).unwrap();
    w.pass().await;
    assert_eq!(w.consumer_pods(), [("env".to_string(), true)], "the roll-out restarted the pod with the new keyId");

    w.scenario.kubernetes.hold_rollouts(true);
    w.rotate_next_pass().await;
    let [old, new] = <[String; 2]>::try_from(w.ours()).unwrap();
    let (status, reason, message) = w.condition("Revoked");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ConsumersOnOldSecret"), "{message}");
    assert!(message.contains("Deployment dify/dify-api (1 of 1 replica(s) updated, 1 available, 2 running)"), "{message}");
    let workloads = w.status()["consumers"]["workloads"].clone();
    assert_eq!(workloads[0]["rolledOut"], false, "{workloads}");

    // A day passes (the wait's start is status, so the test moves it back a day).
    let day_ago = (Utc::now() - chrono::Duration::hours(25)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut consumers = w.status()["consumers"].clone();
    consumers["waitingSince"] = json!(day_ago);
    w.scenario.kubernetes.patch_rotation_status(NAMESPACE, NAME, json!({ "consumers": consumers })).unwrap();
    w.pass().await;
    w.pass().await;
    assert_eq!(w.notifications(), ["ConsumersOnOldSecret"], "one notification per wait, across restarts");
    assert_eq!(w.warnings("ConsumerWaitTimedOut"), 1);
    assert_eq!(w.ours(), [old.clone(), new.clone()], "the bound alerts; it does not revoke");
    assert!(w.condition("Revoked").2.contains("set revokeWhenConsumersStuck: true"), "{:?}", w.condition("Revoked"));
    let body = w.receiver.received.lock().unwrap()[0].clone();
    assert!(body["message"].as_str().unwrap().contains("Deployment dify/dify-api"), "{body}");

    // Told to: the old secret goes although the roll-out is still stuck, and it is said.
    w.scenario.kubernetes.patch_rotation_spec(NAMESPACE, NAME, json!({ "revokeWhenConsumersStuck": true })).unwrap();
    let line = w.pass().await;
    assert!(line.contains(&format!("revoked {old}")), "{line}");
    assert_eq!(w.ours(), [new]);
    assert_eq!(w.condition("Revoked").1, "RevokedWhileConsumersStuck");
    assert_eq!(w.warnings("RevokedWhileConsumersStuck"), 1);
}

#[tokio::test]
async fn a_plain_volume_consumer_is_revoked_after_its_sync_delay_and_a_sub_path_one_is_not() {
    let volume = |sub_path: Option<&str>| {
        let mut mount = json!({ "name": "smtp", "mountPath": "/etc/smtp" });
        if let Some(path) = sub_path {
            mount["subPath"] = json!(path);
        }
        json!({ "containers": [{ "name": "cron", "image": "busybox", "volumeMounts": [mount] }],
            "volumes": [{ "name": "smtp", "secret": { "secretName": SECRET_NAME } }] })
    };
    let w = world(json!({ "volumeSyncDelay": "1h" })).await;
    w.scenario.kubernetes.create_pod(NAMESPACE, "reader", &[("app", "reader")], volume(None)).unwrap();
    w.pass().await;
    w.rotate_next_pass().await;
    let [old, new] = <[String; 2]>::try_from(w.ours()).unwrap();
    assert!(w.condition("Revoked").2.contains("pod reader (volume)"), "{:?}", w.condition("Revoked"));

    // The kubelet refreshes the volume within the delay; with a delay that has passed,
    // the old secret goes.
    w.scenario.kubernetes.patch_rotation_spec(NAMESPACE, NAME, json!({ "volumeSyncDelay": "1s" })).unwrap();
    w.after_the_write().await;
    let line = w.pass().await;
    assert!(line.contains(&format!("revoked {old}")), "{line}");
    assert_eq!(w.ours(), std::slice::from_ref(&new));
    assert_eq!(w.consumer_pods(), [("volume".to_string(), true)]);

    // A subPath mount is copied once at start: it holds the value it started with.
    w.scenario.kubernetes.delete_pod(NAMESPACE, "reader");
    w.scenario.kubernetes.create_pod(NAMESPACE, "copier", &[("app", "copier")], volume(Some("SMTP_PASSWORD"))).unwrap();
    w.after_the_write().await;
    w.rotate_next_pass().await;
    assert_eq!(w.ours().len(), 2);
    let message = w.condition("Revoked").2;
    assert!(message.contains("1 consumer(s) may still use the old secret: pod copier (subPath)"), "{message}");
}

mod watched {
    //! The controller watches the pods (by metadata) of namespaces where a revocation waits
    //! for consumers: a pod replacement wakes the waiting rotation at once. The test runs
    //! the controller with `--consumer-recheck 1h` and `--drift-interval 7d`, so within the
    //! test's life nothing but a pod change can make it look again.

    use super::*;
    use entra_rotator_standins::kubernetes::routes;
    use std::process::Stdio;

    /// Polls `done` (every 100 ms, for at most a minute: far less than the hour the
    /// controller would otherwise wait).
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..600 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{what}: not within a minute");
    }

    #[tokio::test]
    async fn a_pod_replacement_wakes_the_waiting_rotation_without_waiting_for_a_recheck() {
        let w = world(json!({ "rollout": [ { "kind": "Deployment", "name": "dify-api" } ] })).await;
        w.scenario.kubernetes.create_workload_with(NAMESPACE, WorkloadKind::Deployment, "dify-api", &[("app", "dify")], env_reader(), 1).unwrap();
        w.pass().await;
        // Roll-outs get stuck from now on: a rotation leaves the old secret held for the pod.
        w.scenario.kubernetes.hold_rollouts(true);
        let line = w.rotate_next_pass().await;
        assert!(line.contains("kept live (ConsumersOnOldSecret)"), "{line}");
        let current = w.status()["currentKeyId"].as_str().unwrap().to_string();
        assert_eq!(w.ours().len(), 2, "the old secret is live while its pod runs");

        let held_before = w.warnings("ConsumersOnOldSecret");
        let args = [
            "controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", "replica-a", "--health-addr", "127.0.0.1:0",
            "--consumer-recheck", "1h", "--drift-interval", "7d", "--azure-config", w.settings.to_str().unwrap(),
        ];
        let _controller = Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(args)
            .env("KUBECONFIG", w.scenario.kubeconfig_path())
            .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Its first look holds again (the roll-out is still stuck), and it watches the pods:
        // a watch replays every change after the listing it started from.
        let faults = w.scenario.kubernetes.faults();
        until("the controller's first look, held", || w.warnings("ConsumersOnOldSecret") > held_before).await;
        until("the pod watch", || faults.count(routes::PODS.watch) > 0).await;
        assert_eq!(w.ours().len(), 2);

        // The roll-out finishes: the pod is replaced, and that alone wakes the rotation.
        w.scenario.kubernetes.complete_rollout(NAMESPACE, WorkloadKind::Deployment, "dify-api");
        until("the old secret revoked once its pod was replaced", || w.ours() == [current.clone()]).await;
        until("Revoked=True", || w.condition("Revoked").0 == "True").await;
        assert_eq!(w.condition("Revoked").1, "ConsumersOnNewSecret");
    }
}
