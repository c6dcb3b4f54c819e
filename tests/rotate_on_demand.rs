//! Rotation on demand, end to end: `entra-rotator rotate` (the real binary and kube
//! client) sets the request annotation; CronJob passes and the controller carry each
//! request out once, across restarts, against the stand-ins over sockets.

use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::kubernetes::routes;
use entra_rotator_standins::scenario::{Scenario, SECRET_NAME};
use serde_json::{json, Value};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

const NAMESPACE: &str = "dify";
const NAME: &str = "dify-smtp";

async fn world() -> Scenario {
    let scenario = Scenario::start().await.unwrap();
    let spec = scenario.rotation_spec(SECRET_NAME, json!({ "lifetime": "4320h", "revokeGracePeriod": "1h" }));
    scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();
    scenario
}

fn rotator(scenario: &Scenario, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(args).env("KUBECONFIG", scenario.kubeconfig_path()).env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost").env_remove("RUST_LOG").kill_on_drop(true);
    command
}

fn pass(scenario: &Scenario) -> Command {
    let mut command = rotator(scenario, &["run", "--namespace", NAMESPACE]);
    command.args(["--azure-config", scenario.config_path.to_str().unwrap()]);
    command
}

async fn pass_ok(scenario: &Scenario) -> String {
    let output = pass(scenario).output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

fn status(scenario: &Scenario) -> Value {
    scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"].clone()
}

fn mints(scenario: &Scenario) -> u64 {
    scenario.graph.faults().count(ROUTE_ADD_PASSWORD)
}

#[tokio::test]
async fn a_request_is_recorded_at_once_and_carried_out_once_across_restarts() {
    let scenario = world().await;
    pass_ok(&scenario).await;
    let first = status(&scenario)["currentKeyId"].as_str().unwrap().to_string();

    let output = rotator(&scenario, &["rotate", NAME, "-n", NAMESPACE, "--no-wait"]).output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("requested a rotation of dify/dify-smtp (entra-rotator.io/rotate-requested-at: "), "{}", text(&output));
    let object = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap();
    let requested = object["metadata"]["annotations"]["entra-rotator.io/rotate-requested-at"].as_str().unwrap().to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&requested).is_ok(), "{requested}");
    assert_eq!(mints(&scenario), 1, "--no-wait rotates nothing itself");

    let line = pass_ok(&scenario).await;
    assert!(line.contains("rotated: new keyId"), "{line}");
    let request = status(&scenario)["rotateRequest"].clone();
    let second = status(&scenario)["currentKeyId"].as_str().unwrap().to_string();
    assert_eq!((request["state"].as_str(), request["requestedAt"].as_str()), (Some("Done"), Some(requested.as_str())));
    assert_eq!((request["replacesKeyId"].as_str(), request["keyId"].as_str()), (Some(first.as_str()), Some(second.as_str())));
    assert!(scenario.kubernetes.events(NAMESPACE).iter().any(|e| e.reason == "RotateRequestDone"));

    // Each pass is a new process: the request is not carried out again.
    for _ in 0..2 {
        let line = pass_ok(&scenario).await;
        assert!(line.contains("settled") || line.contains("up to date"), "{line}");
    }
    assert_eq!(mints(&scenario), 2, "one request, one rotation");
}

#[tokio::test]
async fn a_pass_cut_off_after_rotating_but_before_recording_it_does_not_rotate_again() {
    let scenario = world().await;
    pass_ok(&scenario).await;
    let output = rotator(&scenario, &["rotate", NAME, "-n", NAMESPACE, "--no-wait"]).output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));

    // The pass records the request (first status write), rotates, and is killed while its
    // result (second status write) is on the way.
    let faults = scenario.kubernetes.faults();
    let (accepted, result) = (faults.hold(routes::ROTATIONS.patch_status), faults.hold(routes::ROTATIONS.patch_status));
    let mut cut_off = pass(&scenario).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    accepted.arrived().await;
    accepted.release();
    result.arrived().await;
    cut_off.kill().await.unwrap();
    assert_eq!(mints(&scenario), 2, "the request's rotation was minted");
    let stored = scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).unwrap().annotations["entra-rotator.io/key-id"].clone();
    result.release();

    let line = pass_ok(&scenario).await;
    assert!(!line.contains("rotated"), "{line}");
    assert_eq!(mints(&scenario), 2, "the restarted pass found the request carried out");
    let request = status(&scenario)["rotateRequest"].clone();
    assert_eq!((request["state"].as_str(), request["keyId"].as_str()), (Some("Done"), Some(stored.as_str())));
}

#[tokio::test]
async fn rotate_waits_for_the_controller_and_says_which_secret_replaced_which() {
    let scenario = world().await;
    let controller_args = [
        "controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", "replica-a",
        "--health-addr", "127.0.0.1:0", "--azure-config", scenario.config_path.to_str().unwrap(),
    ];
    let _controller = rotator(&scenario, &controller_args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    for _ in 0..600 {
        if status(&scenario)["currentKeyId"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = status(&scenario)["currentKeyId"].as_str().expect("the controller rotated once").to_string();

    let output = rotator(&scenario, &["rotate", NAME, "-n", NAMESPACE, "--timeout", "1m"]).output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let current = status(&scenario)["currentKeyId"].as_str().unwrap().to_string();
    assert_ne!(current, first);
    assert!(text(&output).contains("done: rotation requested at "), "{}", text(&output));
    assert!(text(&output).contains(&format!("keyId {current} replaces {first}")), "{}", text(&output));
    assert_eq!(mints(&scenario), 2);
}

#[tokio::test]
async fn without_a_controller_rotate_times_out_and_says_the_request_stays() {
    let scenario = world().await;
    let output = rotator(&scenario, &["rotate", NAME, "-n", NAMESPACE, "--timeout", "2s"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = text(&output);
    assert!(said.contains("timed out after 2s waiting for the controller to rotate dify/dify-smtp"), "{said}");
    assert!(said.contains("is carried out once, when the controller (or the next CronJob pass) gets to it"), "{said}");

    let missing = rotator(&scenario, &["rotate", "nope", "-n", NAMESPACE]).output().await.unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("ClientSecretRotation dify/nope not found"), "{}", text(&missing));
}

#[tokio::test]
async fn a_compromised_rotation_revokes_every_other_secret_at_once_and_names_the_consumers_left_on_it() {
    let scenario = world().await;
    let reads_env = json!({ "containers": [{ "name": "api", "image": "langgenius/dify-api",
        "envFrom": [{ "secretRef": { "name": SECRET_NAME } }] }] });
    scenario
        .kubernetes
        .create_workload_with(NAMESPACE, entra_rotator_standins::kubernetes::WorkloadKind::Deployment, "dify-api", &[("app", "dify")], reads_env, 1)
        .unwrap();
    pass_ok(&scenario).await;
    // An ordinary request first: the old secret stays for the grace period (1h) and the pod.
    let output = rotator(&scenario, &["rotate", NAME, "-n", NAMESPACE, "--no-wait"]).output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    pass_ok(&scenario).await;
    let ours = |s: &Scenario| -> Vec<String> {
        s.target_now().passwords.iter().filter(|p| p.display_name.as_deref() == Some("entra-rotator:dify/dify-smtp")).map(|p| p.key_id.to_string()).collect()
    };
    assert_eq!(ours(&scenario).len(), 2);

    let output = rotator(&scenario, &["rotate", NAME, "-n", NAMESPACE, "--compromised", "--no-wait"]).output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("loses mail until it restarts, which is better than a leaked secret staying valid"), "{}", text(&output));
    pass_ok(&scenario).await;
    let current = status(&scenario)["currentKeyId"].as_str().unwrap().to_string();
    assert_eq!(ours(&scenario), [current], "one secret of ours is left: no grace period, no consumer wait");
    assert_eq!(mints(&scenario), 3);
    let request = status(&scenario)["rotateRequest"].clone();
    assert_eq!((request["state"].as_str(), request["compromised"].as_bool()), (Some("Done"), Some(true)));
    let message = request["message"].as_str().unwrap();
    let pod = scenario.kubernetes.pods(NAMESPACE)[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert!(message.contains("every other secret of ours was revoked at once"), "{message}");
    assert!(message.contains(&format!("Still on an old value, restart them now: pod {pod} (env)")), "{message}");
    let revoked = status(&scenario)["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Revoked").cloned().unwrap();
    assert_eq!(revoked["reason"], "CompromisedSecretRevoked");
    assert!(scenario.kubernetes.events(NAMESPACE).iter().any(|e| e.reason == "CompromisedSecretRevoked" && e.type_ == "Warning"));

    // The next ordinary request is ordinary again: the flag does not linger.
    let output = rotator(&scenario, &["rotate", NAME, "-n", NAMESPACE, "--no-wait"]).output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    pass_ok(&scenario).await;
    assert_eq!(ours(&scenario).len(), 2, "the old secret is kept again");
    assert_eq!(status(&scenario)["rotateRequest"]["compromised"], false);
}
