//! Scale: the real controller over 10,000 ClientSecretRotations, none due. The first
//! controller writes every object's initial status; a second one, started afterwards (a
//! restart, a new leader), reconciles all of them again with nothing to write. Reported: the
//! CPU time and wall time of each full pass, and the resident memory with every object cached.

use crate::Row;
use crate::probe::{self, Controller, Counts};
use entra_rotator::domain::marker_for;
use entra_rotator_standins::graph::ROUTE_GET_APPLICATION;
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

/// One controller's full pass: CPU and wall time from ready until `done`, and memory after.
struct Pass {
    ready: Duration,
    cpu: Duration,
    wall: Duration,
    rss_kib: u64,
    peak_kib: u64,
}

async fn measure_pass(scenario: &Scenario, args: &[&str], done: impl Fn(&Counts) -> bool) -> Pass {
    let controller = Controller::spawn(scenario, NAMESPACE, "bench-scale", args);
    let ready = controller.ready().await;
    let pid = controller.pid();
    let (cpu_at_ready, ready_at) = (probe::cpu_time(pid), Instant::now());
    probe::until(
        "the controller has reconciled every object",
        Duration::from_secs(900),
        || done(&Counts::of(scenario)),
    )
    .await;
    let (cpu, wall) = (probe::cpu_time(pid) - cpu_at_ready, ready_at.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_kib, peak_kib) = probe::memory_kib(pid);
    Pass {
        ready,
        cpu,
        wall,
        rss_kib,
        peak_kib,
    }
}

pub async fn rows() -> Vec<Row> {
    let count = scaled(10_000);
    let scenario = Scenario::start().await.expect("the stand-ins start");
    let seeding = Instant::now();
    seed_rotations(&scenario, count);
    eprintln!(
        "scale: seeded {count} rotations in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let before = Counts::of(&scenario);
    let first = measure_pass(&scenario, &[], |now| {
        now.since(&before)
            .kubernetes
            .get(routes::ROTATIONS.patch_status)
            .copied()
            .unwrap_or(0)
            >= count as u64
    })
    .await;
    let before = Counts::of(&scenario);
    let again = measure_pass(&scenario, &[], |now| {
        now.since(&before).graph(ROUTE_GET_APPLICATION) >= count as u64
    })
    .await;
    let restart_cost = Counts::of(&scenario).since(&before);
    let per_object = |d: Duration| d.as_secs_f64() * 1e6 / count as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    vec![
        Row::new(
            &format!(
                "Scale: first full pass, {count} ClientSecretRotations none due (status written for each)"
            ),
            format!(
                "{:.2} s CPU ({:.0} µs/object), {:.1} s wall",
                first.cpu.as_secs_f64(),
                per_object(first.cpu),
                first.wall.as_secs_f64()
            ),
            "well under 1 s CPU",
            &format!(
                "default --concurrency; ready after {:.2} s",
                first.ready.as_secs_f64()
            ),
        ),
        Row::new(
            &format!("Scale: full pass after a restart, {count} none due (nothing to write)"),
            format!(
                "{:.2} s CPU ({:.0} µs/object), {:.1} s wall",
                again.cpu.as_secs_f64(),
                per_object(again.cpu),
                again.wall.as_secs_f64()
            ),
            "well under 1 s CPU",
            &format!(
                "every object gets its drift check: Graph read {}, KV read {}, K8s (without Leases) {}",
                restart_cost.graph(ROUTE_GET_APPLICATION),
                restart_cost.vault(entra_rotator_standins::keyvault::routes::GET_SECRET),
                restart_cost.kubernetes_without_leases()
            ),
        ),
        Row::new(
            &format!("Footprint: controller RSS with {count} ClientSecretRotations cached"),
            format!(
                "{:.1} MiB ({:.1} MiB peak)",
                mib(again.rss_kib),
                mib(again.peak_kib)
            ),
            "well below ~20 MB (kube-rs metadata controller, 2,000 objects); cert-manager 27.5 MB",
            &format!(
                "after the first pass: {:.1} MiB ({:.1} MiB peak)",
                mib(first.rss_kib),
                mib(first.peak_kib)
            ),
        ),
    ]
}
