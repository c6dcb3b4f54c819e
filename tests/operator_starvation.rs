//! Slot starvation (issue 18, item 5): rotations whose relay answers `451` for the whole
//! retry budget must not hold every reconcile worker of the controller. The real
//! `entra-rotator controller` with its default settings (8 workers, retryBudget 5m)
//! against the stand-ins over sockets.

use entra_rotator_standins::scenario::{Scenario, ACS_RESOURCE};
use entra_rotator_standins::smtp::{RelaySettings, SmtpRelayStandin};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const NAMESPACE: &str = "dify";
/// One more than the controller's default concurrency.
const STUCK: usize = 9;

fn spec(scenario: &Scenario, client_id: &str, secret: &str, relay: &SmtpRelayStandin) -> Value {
    json!({
        "application": { "tenantId": scenario.tenant.tenant_id, "clientId": client_id },
        "targets": [ { "secret": { "name": secret, "keys": { "SMTP_PASSWORD": "{{secret}}" } } } ],
        "verification": { "smtp": {
            "host": "localhost", "port": relay.port(),
            "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
            "from": relay.settings().default_sender().unwrap(), "to": "canary@contoso.example" } },
    })
}

fn controller(scenario: &Scenario) -> Child {
    Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", "replica-a"])
        .args(["--health-addr", "127.0.0.1:0", "--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn condition(scenario: &Scenario, name: &str, type_: &str) -> Option<(String, String)> {
    let object = scenario.kubernetes.rotation(NAMESPACE, name)?;
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
    })
}

/// Polls until `done` holds; fails after a minute (the retry budget is five).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after a minute waiting until {what}");
}

#[tokio::test]
async fn rotations_stuck_verifying_do_not_starve_a_healthy_one() {
    let scenario = Scenario::start().await.unwrap();
    let stuck_relay =
        SmtpRelayStandin::start(scenario.tenant.clone(), &scenario.pki, RelaySettings::azure_managed(ACS_RESOURCE)).await.unwrap();
    stuck_relay.inject_temporary_failures(100_000);
    for index in 0..STUCK {
        let app = scenario.tenant.register_app(&format!("stuck-{index}"));
        let name = format!("stuck-{index}");
        scenario.kubernetes.create_rotation(NAMESPACE, &name, spec(&scenario, &app.app_id.to_string(), &name, &stuck_relay)).unwrap();
    }
    let _controller = controller(&scenario);
    // Every worker is busy with a verification the relay keeps refusing with 451...
    eventually("every worker verifies a stuck rotation", || stuck_relay.sessions() >= 8).await;

    // ...and a healthy rotation created now still gets a worker.
    let healthy = spec(&scenario, &scenario.target.app_id.to_string(), "dify-smtp", &scenario.relay);
    scenario.kubernetes.create_rotation(NAMESPACE, "healthy", healthy).unwrap();
    eventually("the healthy rotation is Ready", || condition(&scenario, "healthy", "Ready").is_some_and(|(s, _)| s == "True")).await;

    // The stuck ones keep their budget: still retrying, none failed or given up yet.
    let sessions = stuck_relay.sessions();
    eventually("the stuck rotations retry again", || stuck_relay.sessions() > sessions).await;
    let in_progress = |name: &str| condition(&scenario, name, "Rotating") == Some(("True".into(), "InProgress".into()));
    eventually("every stuck rotation says it goes on in the background", || (0..STUCK).all(|i| in_progress(&format!("stuck-{i}")))).await;
    for index in 0..STUCK {
        let name = format!("stuck-{index}");
        assert_ne!(condition(&scenario, &name, "Ready").map(|(s, _)| s), Some("True".to_string()), "{name}");
        assert_eq!(condition(&scenario, &name, "Degraded").map(|(s, _)| s), None, "{name} has not failed within its 5m budget");
    }
    assert!(stuck_relay.accepted_messages().is_empty());
}

/// A verification that outlasts the worker's slice (10 s) goes on in the background and is
/// finished by a later reconcile: the status says so meanwhile, and the end is the same as a
/// rotation that held its worker. Entra replicates the new secret only once the test has
/// seen the background state, so the outcome does not depend on timing.
#[tokio::test]
async fn a_verification_longer_than_the_slice_finishes_in_the_background() {
    let scenario = Scenario::start().await.unwrap();
    scenario.tenant.set_propagation_delay(Duration::from_secs(3600));
    let healthy = spec(&scenario, &scenario.target.app_id.to_string(), "dify-smtp", &scenario.relay);
    scenario.kubernetes.create_rotation(NAMESPACE, "slow", healthy).unwrap();
    let _controller = controller(&scenario);

    let in_progress = || condition(&scenario, "slow", "Rotating") == Some(("True".into(), "InProgress".into()));
    eventually("the status says the rotation goes on in the background", in_progress).await;
    scenario.tenant.set_propagation_delay(Duration::ZERO);
    eventually("the rotation is Ready", || condition(&scenario, "slow", "Ready") == Some(("True".into(), "Rotated".into()))).await;
    assert_eq!(condition(&scenario, "slow", "Verified"), Some(("True".into(), "VerificationPassed".into())));
    assert_eq!(condition(&scenario, "slow", "Rotating"), Some(("False".into(), "Idle".into())));
    let status = scenario.kubernetes.rotation(NAMESPACE, "slow").unwrap()["status"].clone();
    let key_id = status["currentKeyId"].as_str().unwrap().to_string();
    assert_eq!(scenario.kubernetes.secret(NAMESPACE, "dify-smtp").unwrap().annotations["entra-rotator.io/key-id"], key_id);
    let reasons: Vec<String> = scenario.kubernetes.events(NAMESPACE).into_iter().map(|e| e.reason).collect();
    for reason in ["Minted", "VerificationRetry", "Verified", "Stored"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason} in {reasons:?}");
    }
    assert_eq!(scenario.relay.accepted_messages().len(), 1, "one test mail, once replicated");
}
