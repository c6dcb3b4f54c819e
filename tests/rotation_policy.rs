//! Many teams, one rotator: a ClientSecretRotation may only rotate the applications, write
//! the vaults and verify through the relays that a RotationPolicy serving its namespace
//! allows (its own namespace excepted for applications and vaults; Microsoft's relays
//! excepted for verification). One test per way in, each over sockets with the real
//! CronJob pass against the stand-ins, each showing that nothing was minted (no Graph call
//! at all), stored (no vault or Secret write) or sent (the intruder's relay was never
//! contacted), and that the refusal says what is not allowed and which resource changes it.

use entra_rotator::operator::crd::ClientSecretRotation;
use entra_rotator::operator::authorization::{self, Authorization, RotationPolicy};
use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION, ROUTE_TOKEN};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::keyvault::routes as vault_routes;
use entra_rotator_standins::kubernetes::routes as kube_routes;
use entra_rotator_standins::scenario::{Scenario, ACS_RESOURCE, SECRET_NAME, SECRET_NAMESPACE, VAULT_SECRET};
use entra_rotator_standins::smtp::{RelaySettings, SmtpRelayStandin};
use serde::Deserialize;
use serde_json::{json, Value};
use std::process::Output;
use uuid::Uuid;

/// The rotator's own namespace (the pod's, as the chart's POD_NAMESPACE says).
const HOME: &str = SECRET_NAMESPACE;
/// A team's namespace.
const TEAM: &str = "team-a";
const NAME: &str = "mail";

const POLICY_CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/rotationpolicies.entra-rotator.io.yaml");

#[test]
fn committed_policy_crd_matches_the_rust_types() {
    let committed = std::fs::read_to_string(POLICY_CRD_FILE).unwrap_or_default();
    assert!(
        committed == authorization::crd_yaml(),
        "crds/ is out of date with src/operator/authorization.rs; regenerate it with:\n  cargo run -- crd --kind RotationPolicy > crds/rotationpolicies.entra-rotator.io.yaml"
    );
}

/// The CronJob pass over every namespace, as the chart runs it with `watch.allNamespaces`;
/// no relay is allowed beyond Microsoft's by the controller's settings.
async fn pass(scenario: &Scenario) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["run", "--all-namespaces", "--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("POD_NAMESPACE", HOME)
        .env_remove("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// What a rotation asks for.
struct Asks<'a> {
    client_id: Uuid,
    vault_url: String,
    relay: (&'a str, u16),
}

fn spec(scenario: &Scenario, asks: &Asks<'_>) -> Value {
    json!({
        "application": { "tenantId": scenario.tenant.tenant_id, "clientId": asks.client_id },
        "revokeGracePeriod": "0s",
        "targets": [
            { "secret": { "name": SECRET_NAME, "keys": { "SMTP_PASSWORD": "{{secret}}" } } },
            { "keyVault": { "vaultUrl": asks.vault_url, "secretName": VAULT_SECRET } }
        ],
        "verification": { "smtp": {
            "host": asks.relay.0, "port": asks.relay.1,
            "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
            "from": scenario.relay.settings().default_sender().unwrap(), "to": "canary@contoso.example" } }
    })
}

/// What team-a is meant to have: the scenario's application, vault and relay.
fn own(scenario: &Scenario) -> Asks<'static> {
    Asks { client_id: scenario.target.app_id, vault_url: scenario.vault.vault_url(), relay: ("localhost", scenario.relay.port()) }
}

/// Team a's policy: its namespace (by name), its application, its vault and its relay
/// (localhost on the stand-in relay's port only).
fn team_a_policy(scenario: &Scenario) -> Value {
    json!({
        "conditions": [ { "namespaces": [TEAM] } ],
        "applications": [ { "tenantId": scenario.tenant.tenant_id, "clientIds": [scenario.target.app_id] } ],
        "keyVaults": [scenario.vault.vault_url()],
        "verificationHosts": [ { "host": "localhost", "ports": [scenario.relay.port()] } ],
    })
}

/// Another team's policy, whose contents must never show in team a's status or Events.
const TEAM_B_VAULT: &str = "https://team-b-secrets.vault.azure.net";
fn team_b_policy(scenario: &Scenario, app: Uuid) -> Value {
    json!({
        "conditions": [ { "namespaces": ["team-b"] } ],
        "applications": [ { "tenantId": scenario.tenant.tenant_id, "clientIds": [app] } ],
        "keyVaults": [TEAM_B_VAULT],
        "verificationHosts": [ { "host": "relay.team-b.example" } ],
    })
}

async fn intruders_relay(scenario: &Scenario) -> SmtpRelayStandin {
    SmtpRelayStandin::start(scenario.tenant.clone(), &scenario.pki, RelaySettings::azure_managed(ACS_RESOURCE)).await.unwrap()
}

fn ready(scenario: &Scenario, namespace: &str) -> Value {
    let status = scenario.kubernetes.rotation(namespace, NAME).unwrap()["status"].clone();
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap_or_else(|| panic!("no Ready: {status}")).clone()
}

/// The pass failed on the rotation with NotAllowedByPolicy, a message containing each of
/// `expected` and none of `never`, a Warning Event saying the same, and nothing reached
/// Graph, a vault, a Secret or a relay.
async fn assert_denied(scenario: &Scenario, relays: &[&SmtpRelayStandin], namespace: &str, expected: &[&str], never: &[&str]) {
    let output = pass(scenario).await;

    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("{namespace}/{NAME}: not allowed by policy: ")), "{out}");
    let ready = ready(scenario, namespace);
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("NotAllowedByPolicy")), "{ready}");
    let message = ready["message"].as_str().unwrap();
    for fragment in expected {
        assert!(message.contains(fragment), "{fragment:?} missing from: {message}");
    }
    for fragment in never {
        assert!(!message.contains(fragment), "{fragment:?} leaked into: {message}");
    }
    assert!(message.ends_with("nothing was minted, stored or sent"), "{message}");
    let events = scenario.kubernetes.events(namespace);
    let warning = events
        .iter()
        .find(|e| e.reason == "NotAllowedByPolicy" && e.note.as_deref().unwrap_or_default().contains(expected[0]))
        .unwrap_or_else(|| panic!("no Event saying {:?}: {events:?}", expected[0]));
    assert_eq!(warning.type_, "Warning");

    let graph = scenario.graph.faults();
    assert_eq!((graph.count(ROUTE_TOKEN), graph.count(ROUTE_GET_APPLICATION), graph.count(ROUTE_ADD_PASSWORD)), (0, 0, 0), "Graph was called");
    let vault = scenario.vault.faults();
    assert_eq!((vault.count(vault_routes::GET_SECRET), vault.count(vault_routes::SET_SECRET)), (0, 0), "the vault was contacted");
    assert!(scenario.vault.versions(VAULT_SECRET).is_empty(), "the vault secret was written");
    assert!(scenario.kubernetes.secret(namespace, SECRET_NAME).is_none(), "the Secret was written");
    for relay in relays {
        assert_eq!(relay.sessions(), 0, "relay on port {} was contacted", relay.port());
    }
}

#[tokio::test]
async fn a_namespace_no_policy_serves_may_not_rotate() {
    let scenario = Scenario::start().await.unwrap();
    scenario.kubernetes.create_rotation(TEAM, NAME, spec(&scenario, &own(&scenario))).unwrap();
    let other = scenario.tenant.register_app("team-b-mail");
    scenario.kubernetes.create_rotation_policy("team-b", team_b_policy(&scenario, other.app_id)).unwrap();

    let expected = [
        "namespace \"team-a\" may not rotate: it is not the rotator's own namespace (\"dify\") and none of the 1 RotationPolicy object(s) installed serves it",
        "spec.conditions of a RotationPolicy",
    ];
    assert_denied(&scenario, &[&scenario.relay], TEAM, &expected, &["team-b", TEAM_B_VAULT, &other.app_id.to_string()]).await;
}

#[tokio::test]
async fn an_application_the_namespace_may_not_rotate_is_refused() {
    let scenario = Scenario::start().await.unwrap();
    scenario.kubernetes.create_rotation_policy("team-a", team_a_policy(&scenario)).unwrap();
    // Team b's application, also owned by the rotator's identity.
    let other = scenario.tenant.register_app("team-b-mail");
    scenario.kubernetes.create_rotation_policy("team-b", team_b_policy(&scenario, other.app_id)).unwrap();
    let asks = Asks { client_id: other.app_id, ..own(&scenario) };
    scenario.kubernetes.create_rotation(TEAM, NAME, spec(&scenario, &asks)).unwrap();

    let expected = [
        &format!("spec.application: application {} of tenant {} is not allowed for namespace \"team-a\" by the RotationPolicy object(s) serving it (team-a)", other.app_id, scenario.tenant.tenant_id)[..],
        "to spec.applications of one of them",
    ];
    assert_denied(&scenario, &[&scenario.relay], TEAM, &expected, &["team-b", TEAM_B_VAULT]).await;
    assert!(scenario.tenant.app(other.object_id).unwrap().passwords.is_empty(), "team b's application got no secret");
}

#[tokio::test]
async fn a_foreign_verification_host_is_refused_in_every_namespace() {
    let scenario = Scenario::start().await.unwrap();
    let intruder = intruders_relay(&scenario).await;
    scenario.kubernetes.create_rotation_policy("team-a", team_a_policy(&scenario)).unwrap();
    // Another host, and the allowed host on another port: both are somebody else's server.
    for (namespace, host) in [(TEAM, "127.0.0.1"), (TEAM, "localhost"), (HOME, "localhost")] {
        let case = format!("{namespace}, {host}:{}", intruder.port());
        scenario.kubernetes.create_rotation(namespace, NAME, spec(&scenario, &Asks { relay: (host, intruder.port()), ..own(&scenario) })).unwrap();
        let considered = if namespace == TEAM { "considered: team-a" } else { "no RotationPolicy serves it" };
        let expected = [
            &format!("spec.verification.smtp.host: the SMTP relay {host}:{} is not allowed for namespace \"{namespace}\" ({considered})", intruder.port())[..],
            "only smtp.azurecomm.net and smtp.office365.com (ports 25, 465, 587) are",
            "spec.verificationHosts of a RotationPolicy serving the namespace",
            "--allow-smtp-host",
        ];
        assert_denied(&scenario, &[&scenario.relay, &intruder], namespace, &expected, &[]).await;
        assert!(scenario.kubernetes.delete_rotation(namespace, NAME), "{case}");
    }
}

#[tokio::test]
async fn a_foreign_vault_is_refused() {
    let scenario = Scenario::start().await.unwrap();
    let mut policy = team_a_policy(&scenario);
    policy["keyVaults"] = json!(["https://team-a-secrets.vault.azure.net"]);
    scenario.kubernetes.create_rotation_policy("team-a", policy).unwrap();
    // The scenario's vault plays another team's.
    scenario.kubernetes.create_rotation(TEAM, NAME, spec(&scenario, &own(&scenario))).unwrap();

    let expected = [
        &format!("spec.targets[1].keyVault.vaultUrl: Key Vault {} is not allowed for namespace \"team-a\" with this application by the RotationPolicy object(s) allowing the application (team-a)", scenario.vault.vault_url())[..],
        "to spec.keyVaults of one of them",
    ];
    assert_denied(&scenario, &[&scenario.relay], TEAM, &expected, &[]).await;
}

/// A rotator that cannot read the policies (its ClusterRole missing) refuses rather than
/// guesses: the refusal says which permission is missing.
#[tokio::test]
async fn policies_that_cannot_be_read_refuse_rather_than_allow() {
    let scenario = Scenario::start().await.unwrap();
    scenario.kubernetes.create_rotation_policy("team-a", team_a_policy(&scenario)).unwrap();
    scenario.kubernetes.create_rotation(TEAM, NAME, spec(&scenario, &own(&scenario))).unwrap();
    scenario.kubernetes.faults().push(kube_routes::ROTATION_POLICIES.list, Fault::status(403));

    let expected = [
        "cannot read the RotationPolicies to decide whether namespace \"team-a\" may rotate this application (403 ",
        "the rotator needs get and list on rotationpolicies.entra-rotator.io",
    ];
    assert_denied(&scenario, &[&scenario.relay], TEAM, &expected, &[]).await;
}

/// A Secret target that already exists and belongs to another rotation of the same
/// namespace (the only namespace a Secret target can be in) is refused before anything is
/// minted or sent: ownership (`ClaimedByAnother`) covers it, behind the policy.
#[tokio::test]
async fn a_secret_another_rotation_owns_is_not_taken_over() {
    let scenario = Scenario::start().await.unwrap();
    // The home namespace may rotate anything; its relay is allowed by a policy.
    scenario
        .kubernetes
        .create_rotation_policy("home-relay", json!({
            "conditions": [ { "namespaces": [HOME] } ],
            "verificationHosts": [ { "host": "localhost", "ports": [scenario.relay.port()] } ],
        }))
        .unwrap();
    scenario.kubernetes.create_rotation(HOME, "owner", spec(&scenario, &own(&scenario))).unwrap();
    let first = pass(&scenario).await;
    assert!(first.status.success(), "the owner's rotation runs: {}", text(&first));
    let owned = scenario.kubernetes.secret(HOME, SECRET_NAME).unwrap();
    assert_eq!(owned.annotations["entra-rotator.io/rotation"], "dify/owner");
    let (mints, sessions) = (scenario.graph.faults().count(ROUTE_ADD_PASSWORD), scenario.relay.sessions());

    // Another rotation with an application of its own, naming the owner's Secret only.
    let own_app = scenario.tenant.register_app("intruder-mail");
    let mut intruder = spec(&scenario, &Asks { client_id: own_app.app_id, ..own(&scenario) });
    intruder["targets"] = json!([ { "secret": { "name": SECRET_NAME, "keys": { "SMTP_PASSWORD": "{{secret}}" } } } ]);
    scenario.kubernetes.create_rotation(HOME, NAME, intruder).unwrap();
    let output = pass(&scenario).await;

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let ready = ready(&scenario, HOME);
    assert_eq!(ready["reason"], "ClaimedByAnother", "{ready}");
    assert!(ready["message"].as_str().unwrap().contains("Kubernetes Secret dify/dify-smtp holds the secret of rotation \"dify/owner\""), "{ready}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), mints, "nothing minted");
    assert_eq!(scenario.relay.sessions(), sessions, "nothing sent");
    let after = scenario.kubernetes.secret(HOME, SECRET_NAME).unwrap();
    assert_eq!((after.data, after.annotations), (owned.data, owned.annotations), "the owner's Secret is untouched");
    assert!(scenario.tenant.app(own_app.object_id).unwrap().passwords.is_empty());
}

/// A Secret target that exists and was made by someone else (here by a Helm release, with
/// a key of its own) is not taken over: ClaimedByAnother saying whose it is and how to hand
/// it over, before anything is minted or sent, the Secret as it was. Once whoever manages
/// the Secret annotates it `entra-rotator.io/adopt: "true"`, the rotation writes into it
/// and keeps the other key.
#[tokio::test]
async fn a_secret_made_by_someone_else_is_not_taken_over_unless_handed_over() {
    let scenario = Scenario::start().await.unwrap();
    scenario
        .kubernetes
        .create_rotation_policy("home-relay", json!({
            "conditions": [ { "namespaces": [HOME] } ],
            "verificationHosts": [ { "host": "localhost", "ports": [scenario.relay.port()] } ],
        }))
        .unwrap();
    scenario.kubernetes.put_secret_as(HOME, SECRET_NAME, "helm", &[("SMTP_PASSWORD", "helms-value"), ("DB_URL", "postgres://db")]);
    scenario.kubernetes.put_secret_metadata_as(HOME, SECRET_NAME, "helm", &[("app.kubernetes.io/managed-by", "Helm")], &[]);
    let before = scenario.kubernetes.secret(HOME, SECRET_NAME).unwrap();
    scenario.kubernetes.create_rotation(HOME, NAME, spec(&scenario, &own(&scenario))).unwrap();

    let output = pass(&scenario).await;

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let ready = ready(&scenario, HOME);
    assert_eq!(ready["reason"], "ClaimedByAnother", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(message.contains("Kubernetes Secret dify/dify-smtp: not written: it is managed by Helm"), "{ready}");
    assert!(message.contains("entra-rotator.io/adopt: \"true\""), "{ready}");
    assert!(!message.contains("helms-value"), "{ready}");
    let warned = scenario.kubernetes.events(HOME).iter().any(|e| e.reason == "ClaimedByAnother" && e.type_ == "Warning");
    assert!(warned, "a Warning Event: {:?}", scenario.kubernetes.events(HOME));
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "nothing minted");
    assert_eq!(scenario.relay.sessions(), 0, "nothing sent");
    assert!(scenario.vault.versions(VAULT_SECRET).is_empty(), "nothing stored in the vault");
    let after = scenario.kubernetes.secret(HOME, SECRET_NAME).unwrap();
    assert_eq!((after.data, after.annotations, after.labels), (before.data, before.annotations, before.labels), "the Secret is as it was");

    scenario.kubernetes.put_secret_metadata_as(HOME, SECRET_NAME, "helm", &[], &[("entra-rotator.io/adopt", "true")]);
    let adopted = pass(&scenario).await;

    assert!(adopted.status.success(), "handed over, it rotates: {}", text(&adopted));
    let filled = scenario.kubernetes.secret(HOME, SECRET_NAME).unwrap();
    assert_ne!(filled.data["SMTP_PASSWORD"], "helms-value");
    assert_eq!(filled.data["DB_URL"], "postgres://db", "Helm's other key is kept");
    assert_eq!(filled.labels["app.kubernetes.io/managed-by"], "Helm", "and so is its label");
    assert_eq!(filled.annotations["entra-rotator.io/rotation"], "dify/mail");
}

/// The controller (all namespaces, as with `watch.allNamespaces`) refuses the same way:
/// the check sits in the reconcile both modes share.
#[tokio::test]
async fn the_controller_refuses_a_namespace_no_policy_serves() {
    let scenario = Scenario::start().await.unwrap();
    scenario.kubernetes.create_rotation(TEAM, NAME, spec(&scenario, &own(&scenario))).unwrap();
    let _controller = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["controller", "--identity", "replica-a", "--health-addr", "127.0.0.1:0"])
        .args(["--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("POD_NAMESPACE", HOME)
        .env_remove("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The status is written before the Event: wait for both, then look.
    let warned = || scenario.kubernetes.events(TEAM).iter().any(|e| e.reason == "NotAllowedByPolicy" && e.type_ == "Warning");
    let decided = || {
        let status = scenario.kubernetes.rotation(TEAM, NAME).map(|r| r["status"].clone()).unwrap_or_default();
        status["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready")
    };
    for _ in 0..600 {
        if decided() && warned() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let ready = ready(&scenario, TEAM);
    assert_eq!(ready["reason"], "NotAllowedByPolicy", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(message.starts_with("namespace \"team-a\" may not rotate: it is not the rotator's own namespace (\"dify\")"), "{message}");
    assert!(warned(), "a Warning Event");
    let graph = scenario.graph.faults();
    assert_eq!((graph.count(ROUTE_GET_APPLICATION), graph.count(ROUTE_ADD_PASSWORD)), (0, 0), "Graph was called");
    assert_eq!(scenario.relay.sessions(), 0);
}

/// What a policy allows runs: the whole loop, in a namespace the policy selects by a
/// label the platform team set, through the relay the policy names.
#[tokio::test]
async fn what_a_policy_allows_is_rotated() {
    let scenario = Scenario::start().await.unwrap();
    let mut by_label = team_a_policy(&scenario);
    by_label["conditions"] = json!([ { "namespaceSelector": { "matchLabels": { "platform.contoso.com/team": "mail" } } } ]);
    scenario.kubernetes.create_rotation_policy("team-a", by_label).unwrap();
    scenario.kubernetes.create_rotation(TEAM, NAME, spec(&scenario, &own(&scenario))).unwrap();
    let unlabelled = pass(&scenario).await;
    assert_eq!(unlabelled.status.code(), Some(1), "not served before the label: {}", text(&unlabelled));
    assert_eq!(ready(&scenario, TEAM)["reason"], "NotAllowedByPolicy");
    scenario.kubernetes.label_namespace(TEAM, "platform.contoso.com/team", "mail");

    let output = pass(&scenario).await;

    assert!(output.status.success(), "{}", text(&output));
    let ready = ready(&scenario, TEAM);
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("Rotated")), "{ready}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1);
    assert!(scenario.kubernetes.secret(TEAM, SECRET_NAME).is_some());
    assert_eq!(scenario.vault.versions(VAULT_SECRET).len(), 1);
}

/// A template may only fill keys of its own target: a key that is not a Secret key (a
/// path to another object or an annotation) and a username carrying the secret (it would
/// travel to the relay and into errors as a name) are refused before anything runs.
#[tokio::test]
async fn a_template_reaching_outside_its_target_is_refused() {
    let scenario = Scenario::start().await.unwrap();
    scenario.kubernetes.create_rotation_policy("team-a", team_a_policy(&scenario)).unwrap();
    let cases = [
        ("/targets/0/secret/keys", json!({ "../../team-b/secrets/smtp": "{{secret}}" }), "\"../../team-b/secrets/smtp\" is not a valid Secret key"),
        ("/targets/0/secret/keys", json!({ "metadata/annotations/loot": "{{secret}}" }), "\"metadata/annotations/loot\" is not a valid Secret key"),
        ("/verification/smtp/username", json!("{{secret}}"), "spec.verification.smtp.username: must not contain {{secret}}"),
    ];
    for (pointer, value, expected) in cases {
        let mut spec = spec(&scenario, &own(&scenario));
        *spec.pointer_mut(pointer).unwrap() = value.clone();
        scenario.kubernetes.create_rotation(TEAM, NAME, spec).unwrap();

        let output = pass(&scenario).await;

        let case = format!("{pointer} = {value}");
        assert_eq!(output.status.code(), Some(1), "{case}: {}", text(&output));
        let ready = ready(&scenario, TEAM);
        assert_eq!(ready["reason"], "InvalidSpec", "{case}: {ready}");
        assert!(ready["message"].as_str().unwrap().contains(expected), "{case}: {ready}");
        assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "{case}");
        assert!(scenario.kubernetes.secret(TEAM, SECRET_NAME).is_none(), "{case}");
        assert_eq!(scenario.relay.sessions(), 0, "{case}");
        assert!(scenario.kubernetes.delete_rotation(TEAM, NAME), "{case}");
    }
}

/// The README's two-team example (examples/kubernetes/two-teams.yaml) passes admission and
/// means what the README says: each team rotates its own application into its own vault
/// through its relay, and neither can reach the other's.
#[test]
fn the_two_team_example_lets_each_team_rotate_only_its_own() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes/two-teams.yaml")).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let administrators_part = &text[text.find("apiVersion").unwrap()..text.find("---\n# The teams' part").unwrap()];
    assert!(readme.contains(administrators_part), "README.md shows the example's policies as they are in the file");
    let mut policies = Vec::new();
    let mut rotations = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object = Value::deserialize(document).unwrap();
        match object["kind"].as_str() {
            Some("RotationPolicy") => {
                let policy: RotationPolicy = serde_json::from_value(object).unwrap();
                policy.validate_cel().unwrap();
                policies.push(policy);
            }
            Some("ClientSecretRotation") => {
                let rotation: ClientSecretRotation = serde_json::from_value(object).unwrap();
                rotation.validate_cel().unwrap();
                rotation.to_rotation_config().unwrap();
                rotations.push(rotation);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let [dify, helpdesk] = &rotations[..] else { panic!("two rotations") };
    let authorization = Authorization { home_namespace: "entra-rotator".into(), allowed_relays: vec![] };
    let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let dify_labels = labels(&[("kubernetes.io/metadata.name", "dify")]);
    let support_labels = labels(&[("kubernetes.io/metadata.name", "helpdesk"), ("platform.contoso.com/team", "support")]);

    assert_eq!(authorization.decide(dify, &policies, &dify_labels), Ok(()));
    assert_eq!(authorization.decide(helpdesk, &policies, &support_labels), Ok(()));
    // Without the platform team's label, the helpdesk namespace is served by no policy.
    let unlabelled = labels(&[("kubernetes.io/metadata.name", "helpdesk")]);
    assert!(authorization.decide(helpdesk, &policies, &unlabelled).unwrap_err().message.contains("none of the 2 RotationPolicy object(s) installed serves it"));
    // Team dify naming the support tenant's application, vault or relay.
    let mut reaching = dify.clone();
    reaching.spec.application = helpdesk.spec.application.clone();
    let refused = authorization.decide(&reaching, &policies, &dify_labels).unwrap_err().message;
    let (tenant, client) = (&helpdesk.spec.application.tenant_id, &helpdesk.spec.application.client_id);
    assert_eq!(
        refused,
        format!("spec.application: application {client} of tenant {tenant} is not allowed for namespace \"dify\" by the RotationPolicy object(s) serving it (team-dify). An administrator adds the clientId (or \"*\") for that tenantId to spec.applications of one of them; nothing was minted, stored or sent"),
        "the README quotes this message"
    );
    let mut reaching = dify.clone();
    reaching.spec.targets[1] = helpdesk.spec.targets[1].clone();
    assert!(authorization.decide(&reaching, &policies, &dify_labels).unwrap_err().message.starts_with("spec.targets[1].keyVault.vaultUrl: "));
    let mut reaching = dify.clone();
    reaching.spec.verification = helpdesk.spec.verification.clone();
    assert!(authorization.decide(&reaching, &policies, &dify_labels).unwrap_err().message.starts_with("spec.verification.smtp.host: "));
}
