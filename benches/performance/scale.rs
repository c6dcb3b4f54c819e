//! Scale: the real controller over 1,000 and 10,000 ClientSecretRotations, none due. The
//! first controller writes every object's initial status; two more, started afterwards (a
//! restart, a new leader), reconcile all of them again with nothing to write: one reading
//! each drift check on its own (`--batch-drift-checks=false`), one in batches. Reported: the
//! CPU time, wall time and Graph, Key Vault and Kubernetes requests of each full pass, and
//! the resident memory with every object cached. Then the steady state: the Graph requests
//! of every object's next drift check (a controller with `--drift-interval 10s`), through
//! Graph's applications/delta (`--delta-refresh 1s`: at most a round a second, against the
//! default 5m's twelve an hour) and with one GET each (`--batch-drift-checks=false`).

use crate::Row;
use crate::probe::{self, Controller, Counts};
use entra_rotator::domain::marker_for;
use entra_rotator_standins::graph::{ROUTE_APPLICATIONS_DELTA, ROUTE_BATCH, ROUTE_BATCH_REQUEST, ROUTE_GET_APPLICATION};
use entra_rotator_standins::keyvault::routes as vault;
use entra_rotator_standins::kubernetes::routes;
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use serde_json::json;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "scale";

/// `n` scaled by `PERF_SCALE` (default 1; e.g. 0.1 for a quick look).
pub fn scaled(n: usize) -> usize {
    let factor: f64 = std::env::var("PERF_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

/// Registers `count` applications, each with a live secret minted by its rotation and
/// stored in Key Vault, and one ClientSecretRotation per application: nothing is due.
fn seed_rotations(scenario: &Scenario, count: usize) {
    let now = chrono::Utc::now();
    let sender = scenario
        .relay
        .settings()
        .default_sender()
        .unwrap_or_default()
        .to_string();
    for i in 0..count {
        let name = format!("rot-{i}");
        let app = scenario.tenant.register_app(&format!("scale-app-{i}"));
        let secret = scenario
            .tenant
            .add_replicated_password(
                app.object_id,
                Some(marker_for(&format!("{NAMESPACE}/{name}"))),
                now,
                now + chrono::Duration::days(180),
            )
            .expect("the application exists");
        scenario.vault.seed(
            &name,
            &secret.secret_text,
            &[("keyId", &secret.key_id.to_string())],
        );
        let spec = json!({
            "application": { "tenantId": scenario.tenant.tenant_id, "clientId": app.app_id, "objectId": app.object_id },
            "lifetime": "4320h",
            "targets": [ { "keyVault": { "vaultUrl": scenario.vault.vault_url(), "secretName": name } } ],
            "verification": { "smtp": {
                "host": "localhost", "port": scenario.relay.port(),
                "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
                "from": sender, "to": "canary@contoso.example" } }
        });
        scenario
            .kubernetes
            .create_rotation(NAMESPACE, &name, spec)
            .expect("a ClientSecretRotation");
    }
}

/// One controller's full pass: CPU and wall time from ready until it has reconciled every
/// object (its own metrics say so), the requests it sent, and its memory after.
struct Pass {
    ready: Duration,
    cpu: Duration,
    wall: Duration,
    cost: Counts,
    rss_kib: u64,
    peak_kib: u64,
}

async fn measure_pass(scenario: &Scenario, count: usize, args: &[&str]) -> Pass {
    let before = Counts::of(scenario);
    let controller = Controller::spawn(scenario, NAMESPACE, "bench-scale", args);
    let ready = controller.ready().await;
    let pid = controller.pid();
    let (cpu_at_ready, ready_at) = (probe::cpu_time(pid), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(900);
    // Every reconcile starts with one status GET: wait on the stand-in's count first, so
    // that the controller's /metrics (whose encoding grows with the objects) is scraped a
    // few times, not 20 times a second through the pass, which cost up to a tenth of the
    // pass's CPU at 3,000 objects (perf, 2026-12-02).
    let status_reads = |counts: &Counts| counts.kubernetes.get(routes::ROTATIONS.get_status).copied().unwrap_or(0);
    while status_reads(&Counts::of(scenario).since(&before)) < count as u64 {
        assert!(Instant::now() < deadline, "timed out waiting until the controller has read every object's status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while controller.reconciles().await < count as u64 {
        assert!(Instant::now() < deadline, "timed out waiting until the controller has reconciled every object");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cpu, wall) = (probe::cpu_time(pid) - cpu_at_ready, ready_at.elapsed());
    let cost = Counts::of(scenario).since(&before);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_kib, peak_kib) = probe::memory_kib(pid);
    Pass { ready, cpu, wall, cost, rss_kib, peak_kib }
}

/// The Graph requests of every object's next drift check after a controller's first pass:
/// counted from when it has reconciled `count` objects until it has reconciled twice that.
async fn measure_steady(scenario: &Scenario, count: usize, args: &[&str]) -> Counts {
    let controller = Controller::spawn(scenario, NAMESPACE, "bench-steady", &[&["--drift-interval", "10s"], args].concat());
    controller.ready().await;
    let deadline = Instant::now() + Duration::from_secs(900);
    while controller.reconciles().await < count as u64 {
        assert!(Instant::now() < deadline, "timed out waiting for the first pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = Counts::of(scenario);
    while controller.reconciles().await < 2 * count as u64 {
        assert!(Instant::now() < deadline, "timed out waiting for the drift checks after the first pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Counts::of(scenario).since(&before)
}

/// The 1,000 and 10,000 rows (scaled by `PERF_SCALE`).
pub async fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for count in [scaled(1_000), scaled(10_000)] {
        rows.extend(at_scale(count).await);
    }
    rows
}

/// `count` objects: the very first pass, then two restarts, one reading each drift check on
/// its own (`--batch-drift-checks=false`, the path before batching) and one batched.
async fn at_scale(count: usize) -> Vec<Row> {
    let scenario = Scenario::start().await.expect("the stand-ins start");
    let seeding = Instant::now();
    seed_rotations(&scenario, count);
    eprintln!("scale: seeded {count} rotations in {:.1} s", seeding.elapsed().as_secs_f64());

    let first = measure_pass(&scenario, count, &[]).await;
    let one_by_one = measure_pass(&scenario, count, &["--batch-drift-checks=false"]).await;
    let batched = measure_pass(&scenario, count, &[]).await;
    let steady_delta = measure_steady(&scenario, count, &["--delta-refresh", "1s"]).await;
    let steady_gets = measure_steady(&scenario, count, &["--batch-drift-checks=false"]).await;
    let per_object = |d: Duration| d.as_secs_f64() * 1e6 / count as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let requests = |pass: &Pass| {
        format!(
            "Graph {} + Key Vault {} = {} requests (Graph: applications/delta {}, $batch {}, getApplication outside a batch {}; KV: GET {}, list {}); K8s (without Leases) {}",
            pass.cost.graph_http(),
            pass.cost.vault_http(),
            pass.cost.graph_http() + pass.cost.vault_http(),
            pass.cost.graph(ROUTE_APPLICATIONS_DELTA),
            pass.cost.graph(ROUTE_BATCH),
            pass.cost.graph(ROUTE_GET_APPLICATION) - pass.cost.graph(ROUTE_BATCH_REQUEST),
            pass.cost.vault(vault::GET_SECRET),
            pass.cost.vault(vault::LIST_SECRETS),
            pass.cost.kubernetes_without_leases(),
        )
    };
    let cpu = |pass: &Pass| {
        format!("{:.2} s CPU ({:.0} µs/object), {:.1} s wall", pass.cpu.as_secs_f64(), per_object(pass.cpu), pass.wall.as_secs_f64())
    };
    vec![
        Row::new(
            &format!("Scale: first full pass, {count} new ClientSecretRotations none due (status written for each)"),
            cpu(&first),
            "10,000: ≤ 5 s CPU",
            &format!(
                "{}; status PATCHes {}; SMTP sessions {} (a new object's stored secret is proven once); ready after {:.2} s",
                requests(&first),
                first.cost.kubernetes.get(routes::ROTATIONS.patch_status).copied().unwrap_or(0),
                first.cost.smtp_sessions,
                first.ready.as_secs_f64()
            ),
        ),
        Row::new(
            &format!("Scale: full pass after a restart, {count} none due, one GET each (--batch-drift-checks=false)"),
            cpu(&one_by_one),
            "",
            &requests(&one_by_one),
        ),
        Row::new(
            &format!("Scale: full pass after a restart, {count} none due, batched"),
            cpu(&batched),
            "10,000: ≤ 1.0 s CPU, ≤ 1,200 Graph + Key Vault requests",
            &requests(&batched),
        ),
        Row::new(
            &format!("Scale: steady drift checks, each of {count} objects checked once more after the first pass"),
            format!(
                "Graph {} requests through delta ({} applications/delta pages, {} getApplication)",
                steady_delta.graph_http(),
                steady_delta.graph(ROUTE_APPLICATIONS_DELTA),
                steady_delta.graph(ROUTE_GET_APPLICATION),
            ),
            "",
            &format!(
                "--drift-interval 10s, --delta-refresh 1s (a round at most each second; the default 5m makes at most 12 rounds an hour); one GET each (--batch-drift-checks=false): Graph {} requests ({} getApplication)",
                steady_gets.graph_http(),
                steady_gets.graph(ROUTE_GET_APPLICATION),
            ),
        ),
        Row::new(
            &format!("Footprint: controller RSS with {count} ClientSecretRotations cached"),
            format!("{:.1} MiB ({:.1} MiB peak)", mib(batched.rss_kib), mib(batched.peak_kib)),
            "10,000: ≤ 30 MiB",
            &format!(
                "after the batched restart pass; after the one-GET-each restart: {:.1} MiB; after the very first pass: {:.1} MiB ({:.1} MiB peak)",
                mib(one_by_one.rss_kib),
                mib(first.rss_kib),
                mib(first.peak_kib)
            ),
        ),
    ]
}
