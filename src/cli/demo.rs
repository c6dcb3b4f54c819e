//! `entra-rotator demo`: starts the stand-ins in-process, writes a configuration file that
//! points the production clients at them, and runs the whole loop twice (the second time
//! with Entra replication delay, so verification has to retry). Nothing leaves the machine.

use crate::report::{error_line, outcome_line};
use super::wiring::wire;
use super::EXIT_FAILED;
use crate::config::Config;
use crate::engine::events::{Event, EventSink};
use crate::engine::ports::SystemClock;
use crate::engine::{Engine, Rotation, RunOptions};
use entra_rotator_standins::scenario::{Scenario, SECRET_NAME, SECRET_NAMESPACE, VAULT_SECRET};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Prints each engine event as it happens, with the time since the demo started.
struct Timeline {
    started: Instant,
}

impl EventSink for Timeline {
    fn record(&self, _rotation: &str, event: &Event) {
        println!("  [{:>5.1}s] {event}", self.started.elapsed().as_secs_f64());
    }
}

pub async fn run() -> ExitCode {
    match demo().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILED),
        Err(error) => {
            eprintln!("error: the demo could not run: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn demo() -> anyhow::Result<bool> {
    println!("entra-rotator demo: the whole rotation loop against local stand-ins (nothing leaves this machine)\n");
    let scenario = Scenario::start().await?;
    println!("Stand-ins (real wire formats, real sockets):");
    println!("  Microsoft Graph + Entra token endpoint  {}", scenario.graph.graph_url());
    println!("  Azure Key Vault                         {}", scenario.vault.vault_url());
    println!("  Kubernetes API (Secrets)                {}", scenario.kubernetes.url());
    println!("  ACS SMTP relay (STARTTLS, AUTH LOGIN)   127.0.0.1:{}\n", scenario.relay.port());
    println!(
        "Application dify-mail (clientId {}) has one secret, created by hand, expiring in 20 days;",
        scenario.target.app_id
    );
    println!("the rotator never touches secrets it did not mint.");
    println!("Configuration: {} (the format `entra-rotator run --config` reads)\n", scenario.config_path.display());

    let config = Config::load(&scenario.config_path)?;
    let rotations = wire(&config).await?;
    let rotation = &rotations[0];
    let engine = Engine::new(Arc::new(SystemClock), Arc::new(Timeline { started: Instant::now() }));

    println!("Run 1: nothing is stored yet, so the rotator mints, verifies, stores.");
    let first = run_once(&engine, rotation, false).await;

    println!("\nRun 2: forced rotation; Entra now takes 2s to replicate a new secret, so verification retries.");
    scenario.tenant.set_propagation_delay(Duration::from_secs(2));
    let second = run_once(&engine, rotation, true).await;

    print_final_state(&scenario);
    Ok(first && second)
}

async fn run_once(engine: &Engine, rotation: &Rotation, force: bool) -> bool {
    match engine.run(rotation, RunOptions { force, dry_run: false }).await {
        Ok(outcome) => {
            println!("  => {}", outcome_line(&rotation.name, &outcome));
            true
        }
        Err(error) => {
            println!("  => {}", error_line(&rotation.name, &error));
            false
        }
    }
}

fn print_final_state(scenario: &Scenario) {
    println!("\nWhat the services hold now:");
    let app = scenario.target_now();
    println!("  Graph: dify-mail has {} password credential(s):", app.passwords.len());
    for password in &app.passwords {
        println!(
            "    keyId {}  {:<26} expires {}",
            password.key_id,
            format!("{:?}", password.display_name.as_deref().unwrap_or("")),
            password.end.format("%Y-%m-%d")
        );
    }
    if let Some(latest) = scenario.vault.latest(VAULT_SECRET) {
        println!(
            "  Key Vault: {VAULT_SECRET} has {} version(s); the latest is tagged {:?}",
            scenario.vault.versions(VAULT_SECRET).len(),
            latest.tags
        );
    }
    if let Some(secret) = scenario.kubernetes.secret(SECRET_NAMESPACE, SECRET_NAME) {
        let keys: Vec<String> = secret
            .data
            .iter()
            .map(|(k, v)| if k == "SMTP_PASSWORD" { format!("{k}=<{} chars>", v.len()) } else { format!("{k}={v}") })
            .collect();
        println!("  Kubernetes Secret {SECRET_NAMESPACE}/{SECRET_NAME}: {}", keys.join(" "));
        println!("    annotations {:?}", secret.annotations);
    }
    println!(
        "  SMTP relay: {} verification mail(s) accepted over {} session(s)",
        scenario.relay.accepted_messages().len(),
        scenario.relay.sessions()
    );
}
