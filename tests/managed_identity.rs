//! The rotator signs in with a managed identity (issue 12, item 3): azure_identity's
//! App Service source, whose endpoint `IDENTITY_ENDPOINT` can be a loopback address (the VM
//! source's IMDS address is fixed), against the managed-identity stand-in, which issues the
//! tenant's tokens for the identities assigned to the host. The real binary, `run --config`.

use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::managed_identity::{ManagedIdentityStandin, IDENTITY_HEADER};
use entra_rotator_standins::scenario::Scenario;
use std::process::Output;
use uuid::Uuid;

/// The scenario's configuration with the rotator's own credential switched to a managed
/// identity (`client_id`: a user-assigned one).
fn use_managed_identity(scenario: &Scenario, client_id: Option<Uuid>) {
    let text = std::fs::read_to_string(&scenario.config_path).unwrap();
    let start = text.find("  credential:\n").expect("a credential block");
    let end = start + text[start..].find("\n  keyVault:").expect("keyVault follows the credential");
    let chosen = client_id.map(|id| format!("\n    clientId: {id}")).unwrap_or_default();
    let changed = format!("{}  credential:\n    type: managedIdentity{chosen}{}", &text[..start], &text[end..]);
    std::fs::write(&scenario.config_path, changed).unwrap();
}

async fn run_on_host(scenario: &Scenario, host: &ManagedIdentityStandin) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(["run", "--config", scenario.config_path.to_str().unwrap()]).env_remove("RUST_LOG");
    for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT"] {
        command.env_remove(name);
    }
    command.env("IDENTITY_ENDPOINT", host.endpoint()).env("IDENTITY_HEADER", IDENTITY_HEADER);
    command.output().await.unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn a_system_assigned_identity_signs_in_and_rotates() {
    let scenario = Scenario::start().await.unwrap();
    use_managed_identity(&scenario, None);
    let host = ManagedIdentityStandin::start(scenario.tenant.clone(), scenario.rotator_client_id, Vec::new()).await.unwrap();

    let output = run_on_host(&scenario, &host).await;

    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "one secret minted");
    let resources = host.requested_resources();
    assert!(resources.iter().any(|r| r.starts_with(scenario.graph.graph_url().as_str().trim_end_matches('/'))), "a Graph token: {resources:?}");
    assert!(resources.iter().any(|r| r == "https://vault.azure.net"), "a Key Vault token: {resources:?}");
}

#[tokio::test]
async fn a_user_assigned_identity_is_chosen_by_client_id_and_an_unassigned_one_is_refused() {
    let scenario = Scenario::start().await.unwrap();
    let host = ManagedIdentityStandin::start(scenario.tenant.clone(), Uuid::new_v4(), vec![scenario.rotator_client_id]).await.unwrap();

    use_managed_identity(&scenario, Some(Uuid::new_v4()));
    let refused = run_on_host(&scenario, &host).await;
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains("has not been assigned to this resource"), "{out}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "nothing minted");

    use_managed_identity(&scenario, Some(scenario.rotator_client_id));
    let output = run_on_host(&scenario, &host).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "one secret minted");
}
