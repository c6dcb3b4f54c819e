//! 1,000 applications due at once, rotated by `entra-rotator run --config` against a Graph
//! stand-in that enforces a write budget (per calling app and per tenant, 429 +
//! Retry-After), scaled down from Graph's 3,000 writes per 150 s so the run takes seconds.
//! Each rotation writes twice (addPassword, then removePassword with revokeGracePeriod 0s),
//! so the budget allows no faster than `(ceil(writes / per_app) - 1) × window`.

use crate::Row;
use crate::probe::{self, Counts};
use crate::scale::scaled;
use entra_rotator::domain::marker_for;
use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_REMOVE_PASSWORD};
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

const PER_APP: usize = 200;
const PER_TENANT: usize = 300;
const WINDOW: Duration = Duration::from_secs(2);
const CONCURRENCY: &str = "32";

/// Registers `count` applications whose secret (ours, stored in Key Vault) expires in 10
/// days, and writes a `run` configuration rotating them; returns its path.
fn seed_due_apps(scenario: &Scenario, prefix: &str, count: usize) -> PathBuf {
    let now = chrono::Utc::now();
    let header =
        std::fs::read_to_string(&scenario.config_path).expect("the scenario's configuration");
    let header = header.split("rotations:").next().unwrap_or_default();
    let sender = scenario
        .relay
        .settings()
        .default_sender()
        .unwrap_or_default()
        .to_string();
    let mut config = format!("{header}rotations:\n");
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let app = scenario.tenant.register_app(&name);
        let secret = scenario
            .tenant
            .add_replicated_password(
                app.object_id,
                Some(marker_for(&name)),
                now,
                now + chrono::Duration::days(10),
            )
            .expect("the application exists");
        scenario.vault.seed(
            &name,
            &secret.secret_text,
            &[("keyId", &secret.key_id.to_string())],
        );
        let _ = write!(
            config,
            r#"  - name: {name}
    application: {{ tenantId: {tenant}, clientId: {client}, objectId: {object} }}
    revokeGracePeriod: 0s
    targets:
      - keyVault: {{ vaultUrl: "{vault}", secretName: {name} }}
    verification:
      smtp: {{ host: localhost, port: {port}, username: "{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}", from: "{sender}", to: canary@contoso.example, retryInterval: 1s }}
"#,
            tenant = scenario.tenant.tenant_id,
            client = app.app_id,
            object = app.object_id,
            vault = scenario.vault.vault_url(),
            port = scenario.relay.port(),
        );
    }
    let path = scenario
        .config_path
        .with_file_name(format!("{prefix}.yaml"));
    std::fs::write(&path, config).expect("the configuration is written");
    path
}

/// Every application of `prefix` holds exactly one secret, a new one (the seeded one
/// expired in 10 days; a new one lives 180).
fn all_rotated_once(scenario: &Scenario, prefix: &str, count: usize) -> bool {
    let renewed = chrono::Utc::now() + chrono::Duration::days(100);
    let apps: std::collections::HashMap<String, _> = scenario
        .tenant
        .apps()
        .into_iter()
        .map(|a| (a.display_name.clone(), a))
        .collect();
    (0..count).all(|i| {
        apps.get(&format!("{prefix}-{i}"))
            .is_some_and(|app| app.passwords.len() == 1 && app.passwords[0].end > renewed)
    })
}

struct Run {
    wall: Duration,
    cpu: Duration,
    writes: u64,
}

async fn rotate_all(scenario: &Scenario, prefix: &str, count: usize, concurrency: &str) -> Run {
    let config = seed_due_apps(scenario, prefix, count);
    let before = Counts::of(scenario);
    let run = probe::one_shot(
        scenario,
        &[
            "run",
            "--config",
            &config.to_string_lossy(),
            "--concurrency",
            concurrency,
        ],
        true,
    )
    .await;
    assert!(
        run.success,
        "every rotation of {prefix} succeeded (exit code 0)"
    );
    assert!(
        all_rotated_once(scenario, prefix, count),
        "every application of {prefix} was rotated exactly once"
    );
    let cost = Counts::of(scenario).since(&before);
    Run {
        wall: run.wall,
        cpu: run.cpu,
        writes: cost.graph(ROUTE_ADD_PASSWORD) + cost.graph(ROUTE_REMOVE_PASSWORD),
    }
}

pub async fn rows() -> Vec<Row> {
    let count = scaled(1_000);
    let sequential_count = scaled(100);
    let scenario = Scenario::start().await.expect("the stand-ins start");
    // Make sure no app id collides between the sets (names are what the checks look up).
    let tag = Uuid::new_v4().simple().to_string()[..6].to_string();

    let sequential = rotate_all(&scenario, &format!("seq{tag}"), sequential_count, "1").await;
    let unthrottled = rotate_all(&scenario, &format!("free{tag}"), count, CONCURRENCY).await;
    scenario.graph.set_write_budget(PER_APP, PER_TENANT, WINDOW);
    let throttled_before = scenario.graph.throttled_writes();
    let budgeted = rotate_all(&scenario, &format!("due{tag}"), count, CONCURRENCY).await;
    let refused = scenario.graph.throttled_writes() - throttled_before;

    let writes = 2 * count;
    let windows = writes.div_ceil(PER_APP).saturating_sub(1);
    let floor = WINDOW * windows as u32;
    let ratio = budgeted.wall.as_secs_f64() / floor.as_secs_f64().max(f64::EPSILON);
    vec![
        Row::new(
            &format!(
                "Scale: {count} apps due at once, write budget {PER_APP}/app and {PER_TENANT}/tenant per {} s",
                WINDOW.as_secs()
            ),
            format!(
                "all {count} rotated, 0 failed; {:.1} s wall = {ratio:.2} × floor; {refused} writes answered 429 ({} write requests in all); {:.1} s CPU",
                budgeted.wall.as_secs_f64(),
                budgeted.writes,
                budgeted.cpu.as_secs_f64()
            ),
            &format!(
                "floor {:.0} s: {writes} writes through {PER_APP} per {} s",
                floor.as_secs_f64(),
                WINDOW.as_secs()
            ),
            &format!(
                "run --concurrency {CONCURRENCY}, {} Graph requests in flight (default)",
                entra_rotator::adapters::graph::DEFAULT_MAX_CONCURRENT_REQUESTS
            ),
        ),
        Row::new(
            &format!("Scale: the same {count} apps without a write budget"),
            format!(
                "{:.1} s wall, {:.1} s CPU ({:.0} rotations/s)",
                unthrottled.wall.as_secs_f64(),
                unthrottled.cpu.as_secs_f64(),
                count as f64 / unthrottled.wall.as_secs_f64()
            ),
            "(what the machine allows: the rotator and every stand-in share its cores)",
            &format!("run --concurrency {CONCURRENCY}"),
        ),
        Row::new(
            &format!(
                "Scale: {sequential_count} apps due, run --concurrency 1 (the old sequential run)"
            ),
            format!(
                "{:.1} s wall ({:.0} ms per rotation; {count} apps would take ~{:.0} s)",
                sequential.wall.as_secs_f64(),
                sequential.wall.as_secs_f64() * 1000.0 / sequential_count as f64,
                sequential.wall.as_secs_f64() * count as f64 / sequential_count as f64
            ),
            "",
            "",
        ),
    ]
}
