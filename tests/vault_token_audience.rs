//! A host named as a Key Vault never gets a token for anything but Key Vault, whoever
//! names it and whatever its challenge asks for; and a rotation can no longer switch the
//! challenge check off. The real binary (`run --config` and the CronJob pass) against the
//! stand-ins over sockets, the vault stand-in playing a token-harvesting host.

use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::scenario::{Scenario, VAULT_SECRET};
use serde_json::json;
use std::process::Output;

/// What the challenge of a harvesting host asks for: Graph (the rotator's
/// Application.ReadWrite.OwnedBy), ARM, and a resource of its own.
const FOREIGN_RESOURCES: [&str; 3] = ["https://graph.microsoft.com", "https://management.azure.com", "https://attacker.example"];

fn rotator(scenario: &Scenario, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(args).env("KUBECONFIG", scenario.kubeconfig_path()).env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost").env_remove("RUST_LOG");
    command
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The scenario trusts the stand-in vault's host as a private vault host (the SDK's
/// challenge check off for it); `private: false` removes that, so the check is on.
async fn harvesting_vault(resource: &str, private: bool) -> Scenario {
    let scenario = Scenario::start().await.unwrap();
    scenario.vault.impersonate(resource);
    if !private {
        scenario.edit_config("privateHosts: [127.0.0.1]", "privateHosts: []").unwrap();
    }
    scenario
}

fn assert_no_token_left(scenario: &Scenario, case: &str) {
    assert_eq!(scenario.vault.bearer_requests(), 0, "{case}: the host received a bearer token");
    // The rotator's own Graph tokens are for the Graph stand-in's URL, not these.
    let foreign: Vec<String> = scenario
        .tenant
        .issued_scopes()
        .into_iter()
        .filter(|scope| FOREIGN_RESOURCES.iter().any(|resource| scope.starts_with(resource)))
        .collect();
    assert!(foreign.is_empty(), "{case}: tokens issued for {foreign:?}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "{case}: a secret was minted");
}

#[tokio::test]
async fn run_config_sends_a_harvesting_vault_no_token_and_mints_nothing() {
    for resource in FOREIGN_RESOURCES {
        for private in [true, false] {
            for dry_run in [true, false] {
                let case = format!("challenge for {resource}, private host {private}, dry run {dry_run}");
                let scenario = harvesting_vault(resource, private).await;
                let mut args = vec!["run", "--config", scenario.config_path.to_str().unwrap()];
                if dry_run {
                    args.push("--dry-run");
                }
                let output = rotator(&scenario, &args).output().await.unwrap();

                let out = text(&output);
                assert_eq!(output.status.code(), Some(1), "{case}: {out}");
                assert_no_token_left(&scenario, &case);
                assert!(out.contains(&scenario.vault.vault_url()), "{case}: the error names the host: {out}");
                if private {
                    assert!(out.contains(&format!("{resource}/.default")) && out.contains("not Key Vault's"), "{case}: the error names the scope: {out}");
                } else {
                    assert!(out.contains("challenge resource"), "{case}: {out}");
                }
            }
        }
    }
}

fn rotation_spec(scenario: &Scenario, vault: serde_json::Value) -> serde_json::Value {
    scenario.rotation_spec("unused", json!({ "targets": [ { "keyVault": vault } ] }))
}

#[tokio::test]
async fn the_cronjob_pass_sends_a_harvesting_vault_no_token_and_mints_nothing() {
    for private in [true, false] {
        let case = format!("challenge for Graph, private host {private}");
        let scenario = harvesting_vault("https://graph.microsoft.com", private).await;
        let vault = json!({ "vaultUrl": scenario.vault.vault_url(), "secretName": VAULT_SECRET });
        scenario.kubernetes.create_rotation("dify", "dify-smtp", rotation_spec(&scenario, vault)).unwrap();

        let output = rotator(&scenario, &["run", "--namespace", "dify", "--azure-config", scenario.config_path.to_str().unwrap()])
            .output()
            .await
            .unwrap();

        assert_eq!(output.status.code(), Some(1), "{case}: {}", text(&output));
        assert_no_token_left(&scenario, &case);
        let status = scenario.kubernetes.rotation("dify", "dify-smtp").unwrap()["status"].to_string();
        assert!(status.contains(&scenario.vault.vault_url()), "{case}: status names the host: {status}");
    }
}

/// A ClientSecretRotation that still carries the removed field (its CRD not yet upgraded,
/// so admission let it through) is refused by the controller, and nothing is contacted.
#[tokio::test]
async fn a_rotation_carrying_verify_challenge_resource_is_refused_by_the_controller() {
    let scenario = Scenario::start().await.unwrap();
    let vault = json!({ "vaultUrl": scenario.vault.vault_url(), "secretName": VAULT_SECRET, "verifyChallengeResource": false });
    scenario.kubernetes.create_rotation("dify", "dify-smtp", rotation_spec(&scenario, vault)).unwrap();

    let output = rotator(&scenario, &["run", "--namespace", "dify", "--azure-config", scenario.config_path.to_str().unwrap()])
        .output()
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let status = scenario.kubernetes.rotation("dify", "dify-smtp").unwrap()["status"].to_string();
    assert!(status.contains("verifyChallengeResource is no longer a per-target setting"), "{status}");
    assert!(status.contains("azure.keyVault.privateHosts"), "{status}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0);
    assert_eq!(scenario.vault.faults().count(entra_rotator_standins::keyvault::routes::CHALLENGE), 0, "the vault was not contacted");
}

#[tokio::test]
async fn a_configuration_file_carrying_verify_challenge_resource_is_refused_with_where_it_went() {
    let scenario = Scenario::start().await.unwrap();
    scenario
        .edit_config(&format!("secretName: {VAULT_SECRET}\n"), &format!("secretName: {VAULT_SECRET}\n          verifyChallengeResource: false\n"))
        .unwrap();

    let output = rotator(&scenario, &["run", "--config", scenario.config_path.to_str().unwrap()]).output().await.unwrap();

    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(out.contains("targets[0].keyVault.verifyChallengeResource"), "{out}");
    assert!(out.contains("list that host under azure.keyVault.privateHosts"), "{out}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0);
}
