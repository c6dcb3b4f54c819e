//! Drift checks in batches (issue 14 item 1), over sockets with the real CronJob pass
//! (`entra-rotator run --namespace`): three ClientSecretRotations with a Key Vault target
//! each are checked with one Graph `$batch` and one page of the vault's listing instead of
//! three GETs of each, and the batched check still notices what a GET each noticed: a
//! secret removed in the portal, a vault value replaced by hand, a status restored from
//! before the last verification. A throttled item is read again alone; an item's 404 or
//! 403 fails its own object only; a vault that may not be listed is read one GET a secret.

use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{
    ROUTE_ADD_PASSWORD, ROUTE_APPLICATIONS_DELTA, ROUTE_BATCH, ROUTE_GET_APPLICATION,
    application_read_route,
};
use entra_rotator_standins::keyvault::{Access, routes as vault};
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use entra_rotator_standins::tenant::StandinApp;
use serde_json::{Value, json};
use tokio::process::Command;

const NAMESPACE: &str = "dify";

struct World {
    scenario: Scenario,
    /// The applications of rotations `mail-0`, `mail-1`, `mail-2`, each stored in vault
    /// secret of the same name.
    apps: Vec<StandinApp>,
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

fn rotator(scenario: &Scenario) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command
        .args([
            "run",
            "--namespace",
            NAMESPACE,
            "--azure-config",
            scenario.config_path.to_str().unwrap(),
        ])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("POD_NAMESPACE", NAMESPACE)
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    command
}

/// Runs one pass; returns its exit code and stdout (one line per rotation).
async fn pass(world: &World) -> (Option<i32>, String) {
    let output = rotator(&world.scenario).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (
        output.status.code(),
        stdout + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Three rotations, rotated once by a first pass; request counts reset after it.
async fn settled() -> World {
    let scenario = Scenario::start().await.unwrap();
    let mut apps = vec![scenario.target.clone()];
    for i in 1..3 {
        let app = scenario.tenant.register_app(&format!("mail-{i}"));
        scenario
            .graph
            .add_owner(app.object_id, scenario.rotator_client_id);
        apps.push(app);
    }
    for (i, app) in apps.iter().enumerate() {
        let name = format!("mail-{i}");
        scenario
            .kubernetes
            .create_rotation(NAMESPACE, &name, spec(&scenario, app, &name))
            .unwrap();
    }
    let world = World { scenario, apps };
    let (code, text) = pass(&world).await;
    assert_eq!(code, Some(0), "{text}");
    for i in 0..3 {
        assert!(text.contains(&format!("dify/mail-{i}: rotated")), "{text}");
    }
    reset(&world);
    world
}

fn reset(world: &World) {
    world.scenario.graph.faults().reset_counts();
    world.scenario.vault.faults().reset_counts();
}

fn ours(world: &World, i: usize) -> Vec<String> {
    let marker = format!("entra-rotator:{NAMESPACE}/mail-{i}");
    let app = world.scenario.tenant.app(world.apps[i].object_id).unwrap();
    app.passwords
        .iter()
        .filter(|p| p.display_name.as_deref() == Some(marker.as_str()))
        .map(|p| p.key_id.to_string())
        .collect()
}

fn stored_key_id(world: &World, i: usize) -> Option<String> {
    world
        .scenario
        .vault
        .latest(&format!("mail-{i}"))
        .and_then(|v| v.tags.get("keyId").cloned())
}

fn counts(world: &World) -> (u64, u64, u64, u64) {
    let (graph, kv) = (world.scenario.graph.faults(), world.scenario.vault.faults());
    (
        graph.count(ROUTE_BATCH),
        graph.count(ROUTE_GET_APPLICATION),
        kv.count(vault::LIST_SECRETS),
        kv.count(vault::GET_SECRET),
    )
}

#[tokio::test]
async fn a_pass_checks_drift_with_one_batch_and_one_page_of_the_vaults_listing() {
    let world = settled().await;
    let (code, text) = pass(&world).await;
    assert_eq!(code, Some(0), "{text}");
    for i in 0..3 {
        assert!(
            text.contains(&format!("dify/mail-{i}: up to date")),
            "{text}"
        );
    }
    assert_eq!(
        counts(&world),
        (1, 3, 1, 0),
        "(batches, application reads inside them, vault listings, vault GETs)"
    );
    assert_eq!(world.scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0);
    assert_eq!(world.scenario.vault.faults().count(vault::SET_SECRET), 0);
}

#[tokio::test]
async fn a_secret_removed_in_the_portal_is_noticed_by_the_batched_check() {
    let world = settled().await;
    let removed = ours(&world, 1);
    assert!(
        world
            .scenario
            .tenant
            .remove_password(world.apps[1].object_id, removed[0].parse().unwrap())
    );
    let (code, text) = pass(&world).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("dify/mail-1: rotated"), "{text}");
    assert!(
        text.contains("dify/mail-0: up to date") && text.contains("dify/mail-2: up to date"),
        "{text}"
    );
    let current = ours(&world, 1);
    assert_eq!(
        current.len(),
        1,
        "a new secret of ours replaces the removed one"
    );
    assert_ne!(current, removed);
    assert_eq!(
        stored_key_id(&world, 1).as_ref(),
        current.first(),
        "and the vault holds it"
    );
    assert_eq!(counts(&world).0, 1, "the check was batched");
}

/// A value typed into the portal carries none of our tags: the listing shows it, and the
/// pass decides exactly what a GET of the secret makes it decide (the secret of ours that
/// no store holds any more is taken for one in flight until orphanGracePeriod, then
/// replaced); nothing is taken for up to date.
#[tokio::test]
async fn a_vault_value_replaced_by_hand_is_noticed_from_the_listing() {
    let world = settled().await;
    let replaced = stored_key_id(&world, 2).unwrap();
    world
        .scenario
        .vault
        .seed("mail-2", "typed into the portal", &[]);
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("dify/mail-2:"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string()
    };

    let (code, batched) = pass(&world).await;
    assert_eq!(code, Some(0), "{batched}");
    assert_eq!(counts(&world).2, 1, "the vault was listed");
    assert!(
        line(&batched).contains(&format!("waiting: keyId {replaced}")),
        "{batched}"
    );
    assert!(
        batched.contains("dify/mail-0: up to date") && batched.contains("dify/mail-1: up to date"),
        "{batched}"
    );

    reset(&world);
    world.scenario.vault.set_access(Access::NoList);
    let (_, one_by_one) = pass(&world).await;
    assert_eq!(
        counts(&world).3,
        3,
        "this time each secret was read with a GET"
    );
    assert_eq!(
        line(&one_by_one),
        line(&batched),
        "the same decision either way"
    );
    assert_eq!(
        world.scenario.vault.latest("mail-2").unwrap().value,
        "typed into the portal",
        "nothing written while waiting"
    );
}

#[tokio::test]
async fn a_restored_status_is_noticed_and_the_stored_secret_proven_again() {
    let world = settled().await;
    // A status from before the last verification (restored from a backup, say).
    world
        .scenario
        .kubernetes
        .patch_rotation_status(NAMESPACE, "mail-0", json!({ "verifiedKeyId": null }))
        .unwrap();
    let handshakes = world.scenario.relay.handshakes();
    let (code, text) = pass(&world).await;
    assert_eq!(code, Some(0), "{text}");
    for i in 0..3 {
        assert!(
            text.contains(&format!("dify/mail-{i}: up to date")),
            "{text}"
        );
    }
    assert_eq!(
        world.scenario.relay.handshakes(),
        handshakes + 1,
        "mail-0's stored secret is proven again"
    );
    let status = world
        .scenario
        .kubernetes
        .rotation(NAMESPACE, "mail-0")
        .unwrap()["status"]
        .clone();
    assert_eq!(
        status["verifiedKeyId"].as_str(),
        ours(&world, 0).first().map(String::as_str)
    );
    assert_eq!(
        counts(&world),
        (1, 3, 1, 1),
        "the one value needed is read with one GET; the rest came from the listing"
    );
}

#[tokio::test]
async fn a_throttled_item_is_read_again_alone_after_its_retry_after() {
    let world = settled().await;
    let throttled = application_read_route(world.apps[1].object_id);
    world
        .scenario
        .graph
        .faults()
        .push(&throttled, Fault::throttle(1));
    let (code, text) = pass(&world).await;
    assert_eq!(code, Some(0), "{text}");
    for i in 0..3 {
        assert!(
            text.contains(&format!("dify/mail-{i}: up to date")),
            "{text}"
        );
    }
    let graph = world.scenario.graph.faults();
    assert_eq!(graph.count(ROUTE_BATCH), 1, "one batch");
    assert_eq!(
        graph.count(&throttled),
        2,
        "the throttled item: once in the batch, once alone"
    );
    assert_eq!(
        graph.count(ROUTE_GET_APPLICATION),
        4,
        "three in the batch, the throttled one again"
    );
    assert_eq!(
        graph.count(&application_read_route(world.apps[0].object_id)),
        1,
        "the others are not read again"
    );
}

#[tokio::test]
async fn an_items_refusal_fails_its_own_object_only() {
    let world = settled().await;
    world.scenario.graph.faults().push(
        &application_read_route(world.apps[2].object_id),
        Fault::status(403),
    );
    let (code, text) = pass(&world).await;
    assert_eq!(code, Some(1), "{text}");
    let failed = text
        .lines()
        .find(|l| l.starts_with("dify/mail-2:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        failed.contains("HTTP 403") && failed.contains(&world.apps[2].app_id.to_string()),
        "names the application and the refusal: {failed}"
    );
    assert!(
        text.contains("dify/mail-0: up to date") && text.contains("dify/mail-1: up to date"),
        "{text}"
    );
    assert_eq!(counts(&world).0, 1);
}

#[tokio::test]
async fn a_vault_that_may_not_be_listed_is_read_one_secret_at_a_time() {
    let world = settled().await;
    world.scenario.vault.set_access(Access::NoList);
    let (code, text) = pass(&world).await;
    assert_eq!(code, Some(0), "{text}");
    for i in 0..3 {
        assert!(
            text.contains(&format!("dify/mail-{i}: up to date")),
            "{text}"
        );
    }
    assert_eq!(
        counts(&world),
        (1, 3, 1, 3),
        "the refused listing, then one GET per secret"
    );
    assert!(
        text.contains("does not have secrets list permission")
            && text.contains("let the rotator list secrets"),
        "the log says why and what saves the requests: {text}"
    );
}

/// After a start every object is due at once: the controller reads their drift checks in
/// one round of Graph's applications/delta (which then keeps its steady drift checks, see
/// tests/delta_drift.rs) and one vault listing before its first pass, and each object's
/// reconcile answers from them (it finds each rotation up to date, as the metrics say,
/// without another read).
#[tokio::test]
async fn the_controllers_first_pass_after_a_start_is_checked_in_batches() {
    let world = settled().await;
    let scenario = &world.scenario;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command
        .args([
            "controller",
            "--namespace",
            NAMESPACE,
            "--lease-namespace",
            NAMESPACE,
            "--identity",
            "replica-a",
        ])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .args(["--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("POD_NAMESPACE", NAMESPACE)
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let _controller = command.spawn().unwrap();
    let reconciled = r#"entra_rotator_reconciles_total{result="up_to_date",reason="UpToDate"} 3"#;
    let mut metrics = String::new();
    for _ in 0..600 {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            metrics = response.text().await.unwrap_or_default();
            if metrics.contains(reconciled) {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains(reconciled),
        "three up-to-date reconciles: {metrics}"
    );
    assert_eq!(scenario.graph.faults().count(ROUTE_APPLICATIONS_DELTA), 1, "one delta page");
    assert_eq!(
        counts(&world),
        (0, 0, 1, 0),
        "(batches, application reads, vault listings, vault GETs)"
    );
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0);
}
