//! The re-read of every store right before `removePassword` (issue 17 item 1, over
//! sockets): a store changed after the engine wrote it blocks the revocation. The real
//! binary against the stand-ins; the vault holds the engine's re-read until the test has
//! changed the secret, so nothing depends on timing.

use entra_rotator_standins::graph::ROUTE_REMOVE_PASSWORD;
use entra_rotator_standins::keyvault::routes::GET_SECRET;
use entra_rotator_standins::scenario::{Scenario, VAULT_SECRET};
use std::process::Output;

async fn run(scenario: &Scenario, extra: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["run", "--config", scenario.config_path.to_str().unwrap()])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn a_vault_changed_after_the_engines_write_blocks_the_revocation() {
    let scenario = Scenario::start().await.unwrap();
    let first = run(&scenario, &[]).await;
    assert!(first.status.success(), "{}", text(&first));
    let first_key = scenario.vault.latest(VAULT_SECRET).unwrap().tags["keyId"].clone();

    // The forced run reads the vault twice: when it observes, and right before revoking.
    let observe = scenario.vault.faults().hold(GET_SECRET);
    let confirm = scenario.vault.faults().hold(GET_SECRET);
    let forced = tokio::spawn({
        let config = scenario.config_path.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
                .args(["run", "--config"])
                .arg(config)
                .arg("--force")
                .env_remove("RUST_LOG")
                .output()
                .await
                .unwrap()
        }
    });
    observe.arrived().await;
    observe.release();
    confirm.arrived().await;
    let written = scenario.vault.latest(VAULT_SECRET).unwrap();
    let new_key = written.tags["keyId"].clone();
    assert_ne!(new_key, first_key, "the engine wrote its new secret before re-reading");
    // Someone (a person, another tool) puts another value there.
    scenario.vault.seed(VAULT_SECRET, "set-by-hand", &[]);
    confirm.release();
    let output = forced.await.unwrap();

    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("Key Vault") && out.contains(&new_key), "the error names the store and the keyId it should hold: {out}");
    assert_eq!(scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD), 0, "nothing revoked");
    let live: Vec<String> = scenario.target_now().passwords.iter().map(|p| p.key_id.to_string()).collect();
    assert!(live.contains(&first_key), "the old secret stays live: {live:?}");
}
