//! The controller's steady drift checks through Graph's delta query (issue 14 items 1 and
//! 4), over sockets: after its first pass the controller keeps its applications'
//! credentials in a mirror fed by `applications/delta` rounds, and each drift check takes
//! its first look at Graph from it. Nine checks of three applications cost one delta
//! request and no GET; a secret removed in the portal after the mirror was filled is
//! noticed (the application is rotated again), and so is a secret added by hand (listed as
//! unmanaged); an expired delta token starts a new round;
//! delta refused (403) falls back to `$batch` and one GET per check, with the same
//! decisions, and says once which permission is missing.

use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_APPLICATIONS_DELTA, ROUTE_BATCH, ROUTE_GET_APPLICATION};
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use entra_rotator_standins::tenant::StandinApp;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::{Child, Command};

const NAMESPACE: &str = "dify";

struct World {
    scenario: Scenario,
    apps: Vec<StandinApp>,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn spec(scenario: &Scenario, app: &StandinApp, secret: &str) -> Value {
    json!({
        "application": { "tenantId": scenario.tenant.tenant_id, "clientId": app.app_id },
        "lifetime": "4320h",
        "revokeGracePeriod": "0s",
        "targets": [ { "keyVault": { "vaultUrl": scenario.vault.vault_url(), "secretName": secret } } ],
        "verification": { "smtp": {
            "host": "localhost", "port": scenario.relay.port(), "mode": "Handshake",
            "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
            "from": scenario.relay.settings().default_sender().unwrap(), "to": "canary@contoso.example" } }
    })
}

/// Three rotations, rotated once by a CronJob pass; request counts reset after it.
async fn settled() -> World {
    settled_with(json!({})).await
}

/// Like [`settled`], each spec with the fields of `extra` besides.
async fn settled_with(extra: Value) -> World {
    let scenario = Scenario::start().await.unwrap();
    let mut apps = vec![scenario.target.clone()];
    for i in 1..3 {
        let app = scenario.tenant.register_app(&format!("mail-{i}"));
        scenario.graph.add_owner(app.object_id, scenario.rotator_client_id);
        apps.push(app);
    }
    for (i, app) in apps.iter().enumerate() {
        let name = format!("mail-{i}");
        let mut spec = spec(&scenario, app, &name);
        for (field, value) in extra.as_object().unwrap() {
            spec[field] = value.clone();
        }
        scenario.kubernetes.create_rotation(NAMESPACE, &name, spec).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["run", "--namespace", NAMESPACE, "--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("POD_NAMESPACE", NAMESPACE)
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{text}");
    scenario.graph.faults().reset_counts();
    scenario.vault.faults().reset_counts();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("controller.log");
    World { scenario, apps, port, log, _dir: dir }
}

/// The controller, checking every object every 10 s, its mirror refreshed when older than
/// `delta_refresh`.
fn controller(world: &World, delta_refresh: &str) -> Child {
    let scenario = &world.scenario;
    Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", "replica-a"])
        .args(["--drift-interval", "10s", "--delta-refresh", delta_refresh])
        .args(["--health-addr", &format!("127.0.0.1:{}", world.port)])
        .args(["--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("POD_NAMESPACE", NAMESPACE)
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&world.log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits (at most two minutes) until the controller's metrics count `at_least` up-to-date
/// reconciles.
async fn up_to_date(world: &World, at_least: u64) {
    let prefix = r#"entra_rotator_reconciles_total{result="up_to_date",reason="UpToDate"} "#;
    let mut metrics = String::new();
    for _ in 0..1200 {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{}/metrics", world.port)).await {
            metrics = response.text().await.unwrap_or_default();
            let count = metrics.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|n| n.trim().parse::<u64>().ok());
            if count.is_some_and(|n| n >= at_least) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{at_least} up-to-date reconciles: {metrics}");
}

fn count(world: &World, route: &str) -> u64 {
    world.scenario.graph.faults().count(route)
}

fn stored_key_id(world: &World, i: usize) -> String {
    let latest = world.scenario.vault.latest(&format!("mail-{i}")).unwrap();
    latest.tags["keyId"].clone()
}

#[tokio::test]
async fn nine_drift_checks_of_three_applications_cost_one_delta_request_and_no_get() {
    let world = settled().await;
    let _controller = controller(&world, "5m");
    up_to_date(&world, 9).await;
    assert_eq!(
        (count(&world, ROUTE_APPLICATIONS_DELTA), count(&world, ROUTE_BATCH), count(&world, ROUTE_GET_APPLICATION)),
        (1, 0, 0),
        "(delta pages, batches, application reads): the first round answers the first pass and the checks after it"
    );
    assert_eq!(count(&world, ROUTE_ADD_PASSWORD), 0);
}

#[tokio::test]
async fn a_secret_removed_in_the_portal_after_the_mirror_was_filled_is_noticed() {
    let world = settled().await;
    let before = stored_key_id(&world, 1);
    let _controller = controller(&world, "1s");
    up_to_date(&world, 3).await;
    assert_eq!(count(&world, ROUTE_GET_APPLICATION), 0, "the first pass answered from the first delta round");
    assert!(world.scenario.tenant.remove_password(world.apps[1].object_id, before.parse().unwrap()));
    for _ in 0..1200 {
        if count(&world, ROUTE_ADD_PASSWORD) > 0 && stored_key_id(&world, 1) != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(stored_key_id(&world, 1), before, "mail-1 rotated again after its secret was removed");
    assert_eq!(count(&world, ROUTE_ADD_PASSWORD), 1, "only mail-1");
    assert!(count(&world, ROUTE_APPLICATIONS_DELTA) >= 2, "a later round brought the removal");
}

#[tokio::test]
async fn an_expired_delta_token_starts_a_new_round() {
    let world = settled().await;
    let _controller = controller(&world, "1s");
    up_to_date(&world, 3).await;
    world.scenario.graph.expire_delta_tokens();
    up_to_date(&world, 6).await;
    assert!(count(&world, ROUTE_APPLICATIONS_DELTA) >= 3, "the first round, the refused token, a new first round");
    assert_eq!(count(&world, ROUTE_GET_APPLICATION), 0, "the new round answered the checks");
    let log = std::fs::read_to_string(&world.log).unwrap();
    assert!(!log.contains("not through applications/delta"), "an expired token does not turn delta off: {log}");
}

#[tokio::test]
async fn delta_refused_falls_back_to_batches_and_reads_and_says_which_permission() {
    let world = settled().await;
    world.scenario.graph.faults().push(ROUTE_APPLICATIONS_DELTA, Fault::status(403));
    let _controller = controller(&world, "1s");
    up_to_date(&world, 6).await;
    assert_eq!(count(&world, ROUTE_APPLICATIONS_DELTA), 1, "asked once");
    assert_eq!(count(&world, ROUTE_BATCH), 1, "the first pass read in a batch");
    assert!(count(&world, ROUTE_GET_APPLICATION) >= 6, "three in the batch, one per later check");
    assert_eq!(count(&world, ROUTE_ADD_PASSWORD), 0, "the same decisions: up to date");
    let log = std::fs::read_to_string(&world.log).unwrap();
    assert_eq!(log.matches("Application.ReadWrite.OwnedBy").count(), 1, "said once: {log}");
}

#[tokio::test]
async fn a_secret_added_by_hand_after_the_mirror_was_filled_is_noticed() {
    let world = settled_with(json!({ "retireUnmanaged": { "after": "1h" } })).await;
    let _controller = controller(&world, "1s");
    up_to_date(&world, 3).await;
    let now = chrono::Utc::now();
    let by_hand = world
        .scenario
        .tenant
        .add_replicated_password(world.apps[1].object_id, Some("created by hand".into()), now, now + chrono::Duration::days(30))
        .unwrap()
        .key_id
        .to_string();
    let listed = |world: &World| {
        let status = world.scenario.kubernetes.rotation(NAMESPACE, "mail-1").unwrap()["status"].clone();
        let secrets = status["unmanaged"]["secrets"].as_array().cloned().unwrap_or_default();
        secrets.iter().any(|s| s["keyId"] == by_hand.as_str())
    };
    for _ in 0..1200 {
        if listed(&world) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed(&world), "the secret added by hand is listed as unmanaged in mail-1's status");
    assert_eq!(count(&world, ROUTE_GET_APPLICATION), 0, "noticed through a delta round, without a GET");
}
