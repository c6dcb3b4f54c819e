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
    if let Some(dir) = scenario.config_path.parent() {
        keep_private(dir).map_err(|e| anyhow::anyhow!("cannot restrict the permissions of {}: {e}", dir.display()))?;
    }
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

/// The demo's folder holds the stand-in rotator's client secret: only the user running the
/// demo may read it (folder 0700, files 0600). The folder is created 0700, so the files
/// were never readable by anyone else before this tightens them.
fn keep_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// What the demo writes (the rotator's secret among it) is the user's alone.
    #[tokio::test]
    async fn the_demo_files_are_readable_by_their_owner_only() {
        let scenario = Scenario::start().await.unwrap();
        let dir = scenario.config_path.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        keep_private(dir).unwrap();
        assert_eq!(mode(dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(files.iter().any(|f| f.ends_with("rotator-secret")), "{files:?}");
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
}
