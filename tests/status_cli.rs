//! `entra-rotator status`, end to end: the real binary and kube client against the
//! Kubernetes stand-in, after CronJob passes that rotated and then held the old secret for
//! a consumer that was not restarted.

use entra_rotator_standins::kubernetes::WorkloadKind;
use entra_rotator_standins::scenario::{Scenario, SECRET_NAME};
use serde_json::json;
use tokio::process::Command;

const NAMESPACE: &str = "dify";
const NAME: &str = "dify-smtp";

fn rotator(scenario: &Scenario, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(args).env("KUBECONFIG", scenario.kubeconfig_path()).env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost").env_remove("RUST_LOG").kill_on_drop(true);
    command
}

async fn pass(scenario: &Scenario) {
    let output = rotator(scenario, &["run", "--namespace", NAMESPACE, "--azure-config", scenario.config_path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

async fn status(scenario: &Scenario, name: &str) -> (Option<i32>, String) {
    let output = rotator(scenario, &["status", name, "-n", NAMESPACE]).output().await.unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn status_tells_the_whole_story_of_a_rotation_waiting_for_its_consumers() {
    let scenario = Scenario::start().await.unwrap();
    let reads_env = json!({ "containers": [{ "name": "api", "image": "langgenius/dify-api",
        "envFrom": [{ "secretRef": { "name": SECRET_NAME } }] }] });
    scenario.kubernetes.create_workload_with(NAMESPACE, WorkloadKind::Deployment, "dify-api", &[("app", "dify")], reads_env, 1).unwrap();
    let spec = scenario.rotation_spec(SECRET_NAME, json!({ "lifetime": "4320h", "revokeGracePeriod": "0s" }));
    scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();

    let (code, fresh) = status(&scenario, NAME).await;
    assert_eq!(code, Some(0), "{fresh}");
    assert!(fresh.contains("none yet: the controller has not reconciled this object"), "{fresh}");

    pass(&scenario).await;
    let old = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"]["currentKeyId"].as_str().unwrap().to_string();
    // A rotation asked for (the annotation): a new secret, the old one held for the pod.
    let requested = chrono::Utc::now().to_rfc3339();
    scenario.kubernetes.annotate_rotation(NAMESPACE, NAME, entra_rotator::operator::rotate_request::ROTATE_REQUESTED_AT, &requested).unwrap();
    pass(&scenario).await;
    let new = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"]["currentKeyId"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    let pod = scenario.kubernetes.pods(NAMESPACE)[0]["metadata"]["name"].as_str().unwrap().to_string();

    let (code, shown) = status(&scenario, NAME).await;
    assert_eq!(code, Some(0), "{shown}");
    let lines: Vec<&str> = shown.lines().collect();
    let line_with = |needle: &str| lines.iter().find(|l| l.contains(needle)).copied().unwrap_or_else(|| panic!("no line with {needle:?} in:\n{shown}"));
    assert_eq!(lines[0], "ClientSecretRotation dify/dify-smtp");
    assert!(line_with("Ready ").contains("True"), "{shown}");
    let revoked = line_with("Revoked ");
    assert!(revoked.contains(" False ") && revoked.contains(" ConsumersOnOldSecret ") && revoked.contains(&pod), "{shown}");
    let current = line_with("current  keyId");
    assert!(current.contains(&new) && current.contains("expires 20") && current.contains("(in 179d), verified"), "{current}");
    let old_expires = scenario.target_now().passwords.iter().find(|p| p.key_id.to_string() == old).unwrap().end;
    let old_expires = old_expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old_line = line_with("old      keyId");
    assert!(old_line.contains(&format!("{old}  expires {old_expires} (in 179d), still live, awaiting revocation")), "{old_line}");
    assert!(line_with("Consumers (should hold keyId").contains(&new), "{shown}");
    let consumer = line_with(&format!("  pod {pod} "));
    assert!(consumer.contains("env") && consumer.contains("MAY HOLD AN OLD VALUE"), "{consumer}");
    let next = lines[lines.iter().position(|l| *l == "Next:").unwrap() + 1];
    assert!(next.contains(&format!("revoke {old} once every consumer holds keyId {new}")), "{next}");
    assert!(next.contains("consumerWaitTimeout 24h, after which it alerts and keeps waiting"), "{next}");
    let events = &lines[lines.iter().position(|l| l.starts_with("Events (latest 10):")).unwrap() + 1..];
    for reason in ["Minted", "Verified", "Stored", "ConsumersOnOldSecret"] {
        assert!(events.iter().any(|l| l.contains(reason)), "no {reason} Event in:\n{shown}");
    }
    assert!(events.len() <= 10);
    for value in scenario.tenant.minted_values() {
        assert!(!shown.contains(&value), "a secret value was printed");
    }

    let (code, missing) = status(&scenario, "nope").await;
    assert_eq!(code, Some(2), "{missing}");
    assert!(missing.contains("ClientSecretRotation dify/nope not found"), "{missing}");
}
