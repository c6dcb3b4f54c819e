//! API economy: requests per rotation and per drift check, counted by the stand-ins, first
//! through the engine in-process (exactly one run each), then through the real controller
//! (what reconciles its own writes trigger, and what an idle hour costs).

use crate::Row;
use crate::probe::{self, Controller, Counts};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use entra_rotator::assembly::{Assembly, kube_client};
use entra_rotator::config::Config;
use entra_rotator::engine::events::RecordingSink;
use entra_rotator::engine::ports::Clock;
use entra_rotator::engine::{Engine, Outcome, RunOptions};
use entra_rotator_standins::graph::{
    ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION, ROUTE_REMOVE_PASSWORD, ROUTE_TOKEN,
};
use entra_rotator_standins::keyvault::routes as vault_routes;
use entra_rotator_standins::kubernetes::WorkloadKind;
use entra_rotator_standins::scenario::{ACS_RESOURCE, SECRET_NAME, Scenario, VAULT_SECRET};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The requests of one measured step, by kind.
struct Economy(Counts);

impl Economy {
    fn describe(&self) -> String {
        let c = &self.0;
        format!(
            "Graph read {}, addPassword {}, removePassword {}, token {}; KV write {}, KV read {}, KV 401 challenge {}; K8s {}; SMTP {}",
            c.graph(ROUTE_GET_APPLICATION),
            c.graph(ROUTE_ADD_PASSWORD),
            c.graph(ROUTE_REMOVE_PASSWORD),
            c.graph(ROUTE_TOKEN),
            c.vault(vault_routes::SET_SECRET),
            c.vault(vault_routes::GET_SECRET),
            c.vault(vault_routes::CHALLENGE),
            c.kubernetes_without_leases(),
            c.smtp_sessions,
        )
    }
}

/// Floors from the issue, in the same order as [`Economy::describe`].
const ROTATION_FLOOR: &str = "Graph read 1, addPassword 1, removePassword 1, token ≤1/h per scope; KV write 1, KV read ≤1; SMTP 1";
const DRIFT_FLOOR: &str = "Graph read 1, KV read 1 (the drift check itself); nothing else";

/// The engine's clock, shifted forward to step past a grace period without waiting.
struct ShiftedClock(Mutex<chrono::Duration>);

#[async_trait]
impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}

/// One process's worth of wiring, like `run --config` or the controller holds.
struct InProcess {
    config: Config,
    assembly: Assembly,
    clock: Arc<ShiftedClock>,
}

impl InProcess {
    async fn new(scenario: &Scenario) -> Self {
        let config =
            Config::load(&scenario.config_path).expect("the scenario's configuration is valid");
        let kube = kube_client(&config.kubernetes)
            .await
            .expect("the Kubernetes stand-in is reachable");
        let assembly = Assembly::new(&config.azure, &config.tls, Some(kube))
            .expect("the scenario's clients build");
        Self {
            config,
            assembly,
            clock: Arc::new(ShiftedClock(Mutex::new(chrono::Duration::zero()))),
        }
    }

    /// One engine run with a freshly built rotation (as each controller reconcile builds one);
    /// returns what it cost.
    async fn run(&self, scenario: &Scenario, force: bool) -> (Outcome, Economy) {
        let before = Counts::of(scenario);
        let rotation = self
            .assembly
            .rotation(&self.config.rotations[0], None)
            .expect("the rotation builds");
        let engine = Engine::new(self.clock.clone(), Arc::new(RecordingSink::default()));
        let outcome = engine
            .run(
                &rotation,
                RunOptions {
                    force,
                    dry_run: false,
                },
            )
            .await
            .expect("the rotation succeeds against the stand-ins");
        (outcome, Economy(Counts::of(scenario).since(&before)))
    }

    fn advance(&self, by: chrono::Duration) {
        *self.clock.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

/// Engine runs in-process against a fresh scenario (Key Vault + Kubernetes Secret targets,
/// SMTP verification), each counted on its own.
pub async fn engine_rows() -> Vec<Row> {
    let scenario = Scenario::start().await.expect("the stand-ins start");
    scenario
        .edit_config("revokeGracePeriod: 0s", "revokeGracePeriod: 1h")
        .expect("the grace period is in the file");
    let process = InProcess::new(&scenario).await;
    let mut rows = Vec::new();

    let (_, first) = process.run(&scenario, false).await;
    rows.push(Row::new(
        "Economy: first rotation of a new process (nothing stored yet; cold token cache)",
        first.describe(),
        "token: 1 per scope (Graph, Key Vault) per hour per identity",
        "tokens are cached by azure_identity until 5 min before expiry; later runs of the process ask for none",
    ));

    let (outcome, drift) = process.run(&scenario, false).await;
    assert!(
        matches!(outcome, Outcome::UpToDate { .. }),
        "nothing is due right after a rotation: {outcome:?}"
    );
    rows.push(Row::new(
        "Economy: drift check, nothing due (one engine run)",
        drift.describe(),
        DRIFT_FLOOR,
        "K8s: the Secret target is read too (1 GET)",
    ));

    let (_, minting) = process.run(&scenario, true).await;
    process.advance(chrono::Duration::hours(2));
    let (outcome, revoking) = process.run(&scenario, false).await;
    assert!(
        matches!(&outcome, Outcome::Settled { revoked, .. } if revoked.len() == 1),
        "the old secret is revoked: {outcome:?}"
    );
    let mut both = minting.0.clone();
    for (counts, more) in [
        (&mut both.graph, &revoking.0.graph),
        (&mut both.vault, &revoking.0.vault),
        (&mut both.kubernetes, &revoking.0.kubernetes),
    ] {
        for (route, n) in more {
            *counts.entry(route.clone()).or_default() += n;
        }
    }
    both.smtp_sessions += revoking.0.smtp_sessions;
    rows.push(Row::new(
        "Economy: rotation, revokeGracePeriod 1h: minting run",
        minting.describe(),
        ROTATION_FLOOR,
        "",
    ));
    rows.push(Row::new(
        "Economy: rotation, revokeGracePeriod 1h: revoking run (after the grace period)",
        revoking.describe(),
        "(this run is also that hour's drift check)",
        "re-verifies before revoking and re-reads every store right before removePassword (safety promises)",
    ));
    rows.push(Row::new(
        "Economy: rotation, revokeGracePeriod 1h: both runs",
        Economy(both).describe(),
        ROTATION_FLOOR,
        "",
    ));

    scenario
        .edit_config("revokeGracePeriod: 1h", "revokeGracePeriod: 0s")
        .expect("the grace period is in the file");
    let process = InProcess::new(&scenario).await;
    process.run(&scenario, false).await; // warm the token cache: measure the rotation alone
    let (outcome, at_once) = process.run(&scenario, true).await;
    assert!(
        matches!(&outcome, Outcome::Settled { revoked, .. } if !revoked.is_empty()),
        "revoked in the same run: {outcome:?}"
    );
    rows.push(Row::new(
        "Economy: rotation, revokeGracePeriod 0s: one run",
        at_once.describe(),
        ROTATION_FLOOR,
        "the second KV read is the re-read right before removePassword",
    ));
    rows
}

/// Mails spent on the application's quota by one rotation (its minting run and the run
/// that revokes after the grace period), in each verification mode.
pub async fn mail_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for mode in ["deliver", "handshake"] {
        let scenario = Scenario::start().await.expect("the stand-ins start");
        scenario
            .edit_config("revokeGracePeriod: 0s", "revokeGracePeriod: 1h")
            .expect("the grace period is in the file");
        scenario
            .edit_config("        host: localhost\n", &format!("        host: localhost\n        mode: {mode}\n"))
            .expect("the relay is in the file");
        let process = InProcess::new(&scenario).await;
        process.run(&scenario, false).await; // the first secret
        let (mails, data, handshakes) = (scenario.relay.messages(), scenario.relay.data_sessions(), scenario.relay.handshakes());
        process.run(&scenario, true).await;
        let minting = scenario.relay.messages() - mails;
        process.advance(chrono::Duration::hours(2));
        let (outcome, _) = process.run(&scenario, false).await;
        assert!(
            matches!(&outcome, Outcome::Settled { revoked, .. } if revoked.len() == 1),
            "the old secret is revoked: {outcome:?}"
        );
        let revoking = scenario.relay.messages() - mails - minting;
        rows.push(Row::new(
            &format!("Quota: mails per rotation, mode {mode} (revokeGracePeriod 1h)"),
            format!(
                "{} mail(s): minting run {minting}, revoking run {revoking}; DATA sessions {}, handshakes {}",
                minting + revoking,
                scenario.relay.data_sessions() - data,
                scenario.relay.handshakes() - handshakes
            ),
            if mode == "deliver" { "1" } else { "0" },
            "counted by the relay stand-in (accepted messages); the revoking run re-checks with the handshake in either mode",
        ));
    }
    rows
}

/// The ClientSecretRotation of the operator tests: Secret + Key Vault targets, SMTP
/// verification, one Deployment rolled out.
fn rotation_spec(scenario: &Scenario, revoke_grace: &str) -> Value {
    json!({
        "application": { "tenantId": scenario.tenant.tenant_id, "clientId": scenario.target.app_id },
        "lifetime": "4320h",
        "revokeGracePeriod": revoke_grace,
        "targets": [
            { "secret": { "name": SECRET_NAME, "keys": { "SMTP_USERNAME": "{{smtpUsername}}", "SMTP_PASSWORD": "{{secret}}" } } },
            { "keyVault": { "vaultUrl": scenario.vault.vault_url(), "secretName": VAULT_SECRET } }
        ],
        "verification": { "smtp": {
            "host": "localhost", "port": scenario.relay.port(),
            "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
            "from": scenario.relay.settings().default_sender().unwrap_or_default(), "to": "canary@contoso.example" } },
        "rollout": [ { "kind": "Deployment", "selector": { "matchLabels": { "app": "dify" } } } ]
    })
}

const NAMESPACE: &str = "dify";
const NAME: &str = "dify-smtp";

fn is_ready(scenario: &Scenario) -> bool {
    scenario
        .kubernetes
        .rotation(NAMESPACE, NAME)
        .and_then(|o| o["status"]["conditions"].as_array().cloned())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// What the real controller costs around one ClientSecretRotation: the first rotation, the
/// quiet time after it, and drift checks; plus the controller's idle memory and a CronJob
/// pass over the same object.
pub async fn controller_rows() -> Vec<Row> {
    let scenario = Scenario::start().await.expect("the stand-ins start");
    scenario
        .kubernetes
        .create_workload(
            NAMESPACE,
            WorkloadKind::Deployment,
            "dify-api",
            &[("app", "dify")],
        )
        .expect("a Deployment");
    scenario
        .kubernetes
        .create_rotation(NAMESPACE, NAME, rotation_spec(&scenario, "0s"))
        .expect("a ClientSecretRotation");
    let mut rows = Vec::new();

    let before = Counts::of(&scenario);
    let controller = Controller::spawn(&scenario, NAMESPACE, "bench-economy", &[]);
    controller.ready().await;
    probe::until(
        "the first rotation is Ready",
        Duration::from_secs(60),
        || is_ready(&scenario),
    )
    .await;
    // Reconciles the rotation's own writes trigger (its Secret write is watched) happen now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = Economy(Counts::of(&scenario).since(&before));
    rows.push(Row::new(
        "Controller: first rotation of a new ClientSecretRotation, until quiet (3 s after Ready)",
        first.describe(),
        ROTATION_FLOOR,
        &format!("K8s: {}", first.0.kubernetes_routes()),
    ));

    let quiet = Duration::from_secs(10);
    let before = Counts::of(&scenario);
    tokio::time::sleep(quiet).await;
    let idle = Counts::of(&scenario).since(&before);
    let per_hour = |n: u64| n as f64 * 3600.0 / quiet.as_secs_f64();
    rows.push(Row::new(
        "Controller: idle, between drift checks (10 s window, drift interval 1h)",
        format!(
            "Graph {}, KV {}, K8s (without Leases) {}; Lease requests {:.0}/h",
            idle.graph.values().sum::<u64>(),
            idle.vault.values().sum::<u64>(),
            idle.kubernetes_without_leases(),
            per_hour(idle.kubernetes_leases())
        ),
        "0 Graph, 0 KV: status writes do not trigger reconciles (predicates::generation)",
        "Lease renewals are per replica, not per rotation",
    ));
    let (rss, _) = probe::memory_kib(controller.pid());
    drop(controller);

    let cronjob = probe::one_shot(
        &scenario,
        &[
            "run",
            "--namespace",
            NAMESPACE,
            "--azure-config",
            &scenario.config_path.to_string_lossy(),
        ],
        false,
    )
    .await;
    assert!(
        cronjob.success && cronjob.stdout.contains("up to date"),
        "the CronJob pass finds nothing due: {}",
        cronjob.stdout
    );

    let controller = Controller::spawn(
        &scenario,
        NAMESPACE,
        "bench-economy",
        &["--drift-interval", "1s"],
    );
    controller.ready().await;
    probe::until(
        "the restarted controller has checked once",
        Duration::from_secs(30),
        || {
            Counts::of(&scenario)
                .since(&before)
                .graph(ROUTE_GET_APPLICATION)
                > 0
        },
    )
    .await;
    let before = Counts::of(&scenario);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let drift = Counts::of(&scenario).since(&before);
    drop(controller);
    let checks = drift.graph(ROUTE_GET_APPLICATION).max(1);
    let per_check = |n: u64| format!("{:.1}", n as f64 / checks as f64);
    rows.push(Row::new(
        "Controller: per drift check (--drift-interval 1s, averaged)",
        format!(
            "Graph read {}, token {}; KV read {}, KV 401 challenge {}; K8s {}; SMTP {} ({checks} checks)",
            per_check(drift.graph(ROUTE_GET_APPLICATION)),
            per_check(drift.graph(ROUTE_TOKEN)),
            per_check(drift.vault(vault_routes::GET_SECRET)),
            per_check(drift.vault(vault_routes::CHALLENGE)),
            per_check(drift.kubernetes_without_leases()),
            per_check(drift.smtp_sessions),
        ),
        DRIFT_FLOOR,
        &format!("per idle hour and app: one drift check (default --drift-interval 1h); K8s: {}", drift.kubernetes_routes()),
    ));
    rows.push(Row::new(
        "Footprint: controller idle RSS (1 ClientSecretRotation)",
        format!("{:.1} MiB", rss as f64 / 1024.0),
        "well below ~20 MB (kube-rs metadata controller, 2,000 objects)",
        "",
    ));
    rows.push(Row::new(
        "Footprint: CronJob pass (`run --namespace`, 1 object, nothing due)",
        format!(
            "{:.1} MiB peak RSS, {:.2} s wall, {:.2} s CPU",
            cronjob.max_rss_kib as f64 / 1024.0,
            cronjob.wall.as_secs_f64(),
            cronjob.cpu.as_secs_f64()
        ),
        "",
        "",
    ));
    rows
}
