//! A rotation owns its application and its stores: another ClientSecretRotation (in
//! another namespace or the same one) naming them is refused before anything is read from
//! them, minted, stored or sent. The real CronJob pass against the stand-ins over sockets,
//! with a second relay playing the intruder's host that would harvest the secret.

use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::scenario::{Scenario, ACS_RESOURCE, SECRET_NAME, SECRET_NAMESPACE, VAULT_SECRET};
use entra_rotator_standins::smtp::{RelaySettings, SmtpRelayStandin};
use serde_json::{json, Value};
use std::process::Output;
use uuid::Uuid;

fn rotator(scenario: &Scenario, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command
        .args(args)
        .args(["--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env_remove("RUST_LOG");
    command
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

struct Application {
    client_id: Uuid,
    object_id: Option<Uuid>,
}

fn spec(scenario: &Scenario, app: &Application, secret_name: &str, relay: &SmtpRelayStandin) -> Value {
    json!({
        "application": { "tenantId": scenario.tenant.tenant_id, "clientId": app.client_id, "objectId": app.object_id },
        "revokeGracePeriod": "0s",
        "targets": [
            { "keyVault": { "vaultUrl": scenario.vault.vault_url(), "secretName": VAULT_SECRET } },
            { "secret": { "name": secret_name, "keys": { "SMTP_PASSWORD": "{{secret}}" } } }
        ],
        "verification": { "smtp": {
            "host": "localhost", "port": relay.port(),
            "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
            "from": relay.settings().default_sender().unwrap(), "to": "canary@contoso.example" } }
    })
}

/// Team dify's rotation has run once: the application, the vault secret and the Secret
/// are its own. Returns the intruder's relay, which no secret must ever reach.
async fn owned_world() -> (Scenario, SmtpRelayStandin) {
    let scenario = Scenario::start().await.unwrap();
    let victim = Application { client_id: scenario.target.app_id, object_id: None };
    scenario.kubernetes.create_rotation(SECRET_NAMESPACE, "dify-smtp", spec(&scenario, &victim, SECRET_NAME, &scenario.relay)).unwrap();
    let first = rotator(&scenario, &["run", "--namespace", SECRET_NAMESPACE]).output().await.unwrap();
    assert!(first.status.success(), "the owner's rotation runs: {}", text(&first));
    // An administrator's policy that lets the intruder's namespace use the same tenant and
    // vault: ownership is the defence these tests pin, behind the policy (tests/rotation_policy.rs).
    scenario
        .kubernetes
        .create_rotation_policy("everyone", json!({
            "conditions": [ { "namespaces": ["intruder", SECRET_NAMESPACE] } ],
            "applications": [ { "tenantId": scenario.tenant.tenant_id, "clientIds": ["*"] } ],
            "keyVaults": [scenario.vault.vault_url()],
        }))
        .unwrap();
    let intruders_relay = SmtpRelayStandin::start(scenario.tenant.clone(), &scenario.pki, RelaySettings::azure_managed(ACS_RESOURCE))
        .await
        .unwrap();
    (scenario, intruders_relay)
}

/// What must hold after the intruder's pass: it failed on its own object, naming the owner,
/// and nothing of the owner's was read out, copied, re-verified, overwritten or revoked.
async fn assert_refused(scenario: &Scenario, relay: &SmtpRelayStandin, namespace: &str, name: &str, expected: &str) {
    let before_versions = scenario.vault.versions(VAULT_SECRET).len();
    let before_mints = scenario.graph.faults().count(ROUTE_ADD_PASSWORD);
    let owners_key = scenario.vault.latest(VAULT_SECRET).unwrap().tags["keyId"].clone();

    let output = rotator(scenario, &["run", "--all-namespaces"]).output().await.unwrap();

    let case = format!("{namespace}/{name}");
    assert_eq!(output.status.code(), Some(1), "{case}: {}", text(&output));
    let status = scenario.kubernetes.rotation(namespace, name).unwrap()["status"].clone();
    let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "False", "{case}: {status}");
    assert_eq!(ready["reason"], "ClaimedByAnother", "{case}: {status}");
    assert!(ready["message"].as_str().unwrap().contains(expected), "{case}: {ready}");
    assert_eq!(relay.sessions(), 0, "{case}: the intruder's relay was contacted");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), before_mints, "{case}: a secret was minted");
    assert_eq!(scenario.vault.versions(VAULT_SECRET).len(), before_versions, "{case}: the owner's vault secret was written");
    assert_eq!(scenario.vault.latest(VAULT_SECRET).unwrap().tags["keyId"], owners_key, "{case}");
    assert!(scenario.kubernetes.secret(namespace, "loot").is_none(), "{case}: a value was copied into the intruder's Secret");
    let owner = scenario.kubernetes.rotation(SECRET_NAMESPACE, "dify-smtp").unwrap()["status"].clone();
    assert_eq!(owner["currentKeyId"].as_str(), Some(owners_key.as_str()), "{case}: the owner still holds its secret");
}

#[tokio::test]
async fn a_rotation_in_another_namespace_naming_an_owned_application_is_refused() {
    let (scenario, relay) = owned_world().await;
    scenario.kubernetes.create_namespace("intruder");
    let victim = Application { client_id: scenario.target.app_id, object_id: None };
    scenario.kubernetes.create_rotation("intruder", "harvest", spec(&scenario, &victim, "loot", &relay)).unwrap();

    assert_refused(&scenario, &relay, "intruder", "harvest", "already rotated by \"dify/dify-smtp\"").await;
}

#[tokio::test]
async fn a_rotation_naming_another_rotations_vault_secret_is_refused() {
    let (scenario, relay) = owned_world().await;
    // Its own application (owned by the rotator too), the owner's vault secret, same namespace.
    let own = scenario.tenant.register_app("intruder-mail");
    let app = Application { client_id: own.app_id, object_id: None };
    scenario.kubernetes.create_rotation(SECRET_NAMESPACE, "harvest", spec(&scenario, &app, "loot", &relay)).unwrap();

    assert_refused(&scenario, &relay, SECRET_NAMESPACE, "harvest", "holds the secret of rotation \"dify/dify-smtp\"").await;
}

#[tokio::test]
async fn an_object_id_of_another_application_is_refused() {
    let (scenario, relay) = owned_world().await;
    scenario.kubernetes.create_namespace("intruder");
    // A clientId an allow-list might permit, with the owner's application as objectId.
    let own = scenario.tenant.register_app("intruder-mail");
    let app = Application { client_id: own.app_id, object_id: Some(scenario.target.object_id) };
    scenario.kubernetes.create_rotation("intruder", "harvest", spec(&scenario, &app, "loot", &relay)).unwrap();

    assert_refused(&scenario, &relay, "intruder", "harvest", &format!("not the clientId {}", own.app_id)).await;
}
