//! Footprint: the release binary's size, the controller's start-to-ready time and idle
//! memory, and `scan`'s peak memory over 5,000 and 50,000 app registrations (it streams
//! page by page, so the peak should not grow with the tenant).

use crate::Row;
use crate::probe::{self, BINARY, Controller};
use crate::scale::scaled;
use entra_rotator_standins::scenario::Scenario;
use std::path::Path;
use std::time::Duration;

const STARTS: usize = 5;

/// Registers `count` more applications, each with one password credential.
fn register_apps(scenario: &Scenario, from: usize, count: usize) {
    let now = chrono::Utc::now();
    for i in from..from + count {
        let app = scenario.tenant.register_app(&format!("tenant-app-{i:05}"));
        scenario
            .tenant
            .add_replicated_password(
                app.object_id,
                Some("made by hand".into()),
                now,
                now + chrono::Duration::days(90 + (i % 400) as i64),
            )
            .expect("the application exists");
    }
}

async fn scan(scenario: &Scenario) -> probe::OneShot {
    let config = scenario.config_path.to_string_lossy().to_string();
    let run = probe::one_shot(
        scenario,
        &[
            "scan",
            "--config",
            &config,
            "--output",
            "csv",
            "--page-size",
            "999",
        ],
        true,
    )
    .await;
    assert!(run.wall > Duration::ZERO, "scan ran under GNU time");
    run
}

pub async fn rows() -> Vec<Row> {
    let mut rows = vec![Row::new(
        "Footprint: release binary size",
        format!("{:.1} MiB", probe::size_mib(Path::new(BINARY))),
        "",
        "stripped, thin LTO (profile.release); the bench profile builds the same",
    )];

    let scenario = Scenario::start().await.expect("the stand-ins start");
    scenario.kubernetes.create_namespace("empty");
    let mut starts = Vec::new();
    let mut idle_kib = 0;
    for _ in 0..STARTS {
        let controller = Controller::spawn(&scenario, "empty", "bench-footprint", &[]);
        starts.push(controller.ready().await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        idle_kib = probe::memory_kib(controller.pid()).0;
    }
    starts.sort();
    rows.push(Row::new(
        "Footprint: controller start to ready (/readyz 200)",
        format!("{:.0} ms median, {:.0} ms slowest of {STARTS}", starts[STARTS / 2].as_secs_f64() * 1e3, starts[STARTS - 1].as_secs_f64() * 1e3),
        "",
        "process spawn to the first 200 on /readyz (Kubernetes and Azure clients built, Lease manager started)",
    ));
    rows.push(Row::new(
        "Footprint: controller idle RSS, no ClientSecretRotation",
        format!("{:.1} MiB", idle_kib as f64 / 1024.0),
        "",
        "",
    ));

    let (small, large) = (scaled(5_000), scaled(50_000));
    register_apps(&scenario, 0, small);
    let first = scan(&scenario).await;
    register_apps(&scenario, small, large - small);
    let second = scan(&scenario).await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    rows.push(Row::new(
        &format!(
            "Footprint: scan peak RSS, {small} vs {large} app registrations (CSV, 999 per page)"
        ),
        format!(
            "{:.1} MiB vs {:.1} MiB ({:.1} s vs {:.1} s wall)",
            mib(first.max_rss_kib),
            mib(second.max_rss_kib),
            first.wall.as_secs_f64(),
            second.wall.as_secs_f64()
        ),
        "flat: memory holds one page",
        "",
    ));
    rows
}
