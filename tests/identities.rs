//! Identities per team or tenant (issue 12 item 2): a ClientSecretRotation's
//! `spec.identityRef` names a RotatorIdentity of its own namespace or a
//! ClusterRotatorIdentity that serves it, and the rotator signs in to Entra as that identity
//! for Graph. Each test runs the real CronJob pass over every namespace against the
//! stand-ins, Graph requiring `Application.ReadWrite.OwnedBy` ownership, so a rotation
//! only succeeds when the identity it names owns the application. Each attack shows
//! nothing minted (for the refusals before Graph: not even a token asked for), stored or
//! sent.

use entra_rotator::operator::identity::{self, IdentityKind};
use entra_rotator_standins::federation::{FederatedCredential, ServiceAccountIssuer, TOKEN_EXCHANGE_AUDIENCE};
use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION, ROUTE_TOKEN};
use entra_rotator_standins::scenario::{Scenario, SECRET_NAMESPACE};
use serde_json::{json, Value};
use std::process::Output;
use uuid::Uuid;

/// The rotator's own namespace (POD_NAMESPACE), where a cluster identity's Secret lives.
const HOME: &str = SECRET_NAMESPACE;
const TEAM_A: &str = "team-a";
const TEAM_B: &str = "team-b";
const NAME: &str = "mail";
const SECRET: &str = "app-smtp";
const CREDENTIAL_SECRET: &str = "rotator-credential";

#[test]
fn committed_identity_crds_match_the_rust_types() {
    for (kind, file) in [
        (IdentityKind::RotatorIdentity, "rotatoridentities.entra-rotator.io.yaml"),
        (IdentityKind::ClusterRotatorIdentity, "clusterrotatoridentities.entra-rotator.io.yaml"),
    ] {
        let committed = std::fs::read_to_string(format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_default();
        assert!(
            committed == identity::crd_yaml(kind),
            "crds/{file} is out of date with src/operator/identity.rs; regenerate it with:\n  cargo run -- crd --kind {kind:?} > crds/{file}"
        );
    }
}

/// The identity kinds' CEL rules, evaluated locally as the API server would at admission:
/// a namespaced identity may not ask for managed identity, and each names one way to sign in.
#[test]
fn admission_refuses_a_namespaced_managed_identity_and_ambiguous_sign_ins() {
    use entra_rotator::operator::identity::{ClusterRotatorIdentity, RotatorIdentity};
    let guid = "11111111-1111-1111-1111-111111111111";
    let secret = json!({ "tenantId": guid, "clientId": guid, "secretRef": { "name": "s", "key": "k" } });
    let workload = json!({ "tenantId": guid, "clientId": guid, "serviceAccountRef": { "name": "mailer" } });
    let namespaced = |spec: Value| {
        let object: RotatorIdentity = serde_json::from_value(json!({
            "apiVersion": "entra-rotator.io/v1alpha1", "kind": "RotatorIdentity", "metadata": { "name": "x", "namespace": "team-a" }, "spec": spec })).unwrap();
        object.validate_cel().map_err(|e| e.to_string())
    };
    let cluster = |spec: Value| {
        let object: ClusterRotatorIdentity = serde_json::from_value(json!({
            "apiVersion": "entra-rotator.io/v1alpha1", "kind": "ClusterRotatorIdentity", "metadata": { "name": "x" }, "spec": spec })).unwrap();
        object.validate_cel().map_err(|e| e.to_string())
    };

    assert_eq!(namespaced(json!({ "clientSecret": secret })), Ok(()));
    assert_eq!(namespaced(json!({ "workloadIdentity": workload })), Ok(()));
    let managed = namespaced(json!({ "managedIdentity": {} })).unwrap_err();
    assert!(managed.contains("a RotatorIdentity may not use managed identity"), "{managed}");
    let both = namespaced(json!({ "clientSecret": secret, "workloadIdentity": workload })).unwrap_err();
    assert!(both.contains("set exactly one of workloadIdentity and clientSecret"), "{both}");

    assert_eq!(cluster(json!({ "managedIdentity": {} })), Ok(()));
    for spec in [json!({}), json!({ "managedIdentity": {}, "clientSecret": secret })] {
        let refused = cluster(spec.clone()).unwrap_err();
        assert!(refused.contains("set exactly one of workloadIdentity, clientSecret and managedIdentity"), "{spec}: {refused}");
    }
}

/// The identities the README shows are admitted as they are written.
#[test]
fn the_readme_identities_are_admitted() {
    use entra_rotator::operator::identity::{ClusterRotatorIdentity, RotatorIdentity};
    use serde::Deserialize as _;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("#### Whose identity signs in").nth(1).unwrap().split("\n### ").next().unwrap();
    let mut seen = Vec::new();
    for block in section.split("```yaml\n").skip(1).filter_map(|rest| rest.split("```").next()) {
        for document in serde_yaml::Deserializer::from_str(block) {
            let object = Value::deserialize(document).unwrap();
            match object["kind"].as_str() {
                Some("RotatorIdentity") => serde_json::from_value::<RotatorIdentity>(object.clone()).unwrap().validate_cel().unwrap(),
                Some("ClusterRotatorIdentity") => serde_json::from_value::<ClusterRotatorIdentity>(object.clone()).unwrap().validate_cel().unwrap(),
                _ => continue,
            }
            seen.push(object["metadata"]["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["customer-fabrikam", "customer-northwind", "entra"]);
}

/// The CronJob pass over every namespace, as the chart runs it with `watch.allNamespaces`.
async fn pass(scenario: &Scenario) -> Output {
    pass_with_token(scenario, None).await
}

/// The same, with the pod's projected service-account token at `token_file`.
async fn pass_with_token(scenario: &Scenario, token_file: Option<&std::path::Path>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command
        .args(["run", "--all-namespaces", "--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("POD_NAMESPACE", HOME)
        .env_remove("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .env_remove("RUST_LOG");
    if let Some(file) = token_file {
        command.env("AZURE_FEDERATED_TOKEN_FILE", file);
    }
    command.output().await.unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A team: its namespace, the application it sends mail with, and the Entra identity
/// (an app registration with a client secret) that owns that application.
struct Team {
    namespace: &'static str,
    app_id: Uuid,
    app_object_id: Uuid,
    identity_client_id: Uuid,
}

/// Registers the team's application and its own rotator identity, which owns it; a
/// RotationPolicy lets the namespace rotate the application through the relay stand-in.
/// The identity's client secret is put into `secret_namespace`'s Secret `rotator-credential`.
fn team(scenario: &Scenario, namespace: &'static str, secret_namespace: &str) -> Team {
    let now = chrono::Utc::now();
    let app = scenario.tenant.register_app(&format!("{namespace}-mail"));
    let identity = scenario.tenant.register_app(&format!("{namespace}-rotator"));
    let password = scenario
        .tenant
        .add_replicated_password(identity.object_id, Some("rotator".into()), now, now + chrono::Duration::days(365))
        .unwrap();
    scenario.graph.add_owner(app.object_id, identity.app_id);
    scenario
        .kubernetes
        .create_rotation_policy(namespace, json!({
            "conditions": [ { "namespaces": [namespace] } ],
            "applications": [ { "tenantId": scenario.tenant.tenant_id, "clientIds": [app.app_id] } ],
            "verificationHosts": [ { "host": "localhost", "ports": [scenario.relay.port()] } ],
        }))
        .unwrap();
    scenario.kubernetes.put_secret_as(secret_namespace, CREDENTIAL_SECRET, "kubectl-create", &[("clientSecret", &password.secret_text)]);
    Team { namespace, app_id: app.app_id, app_object_id: app.object_id, identity_client_id: identity.app_id }
}

fn client_secret_sign_in(scenario: &Scenario, team: &Team) -> Value {
    json!({ "clientSecret": {
        "tenantId": scenario.tenant.tenant_id, "clientId": team.identity_client_id,
        "secretRef": { "name": CREDENTIAL_SECRET, "key": "clientSecret" } } })
}

fn rotation(scenario: &Scenario, app_id: Uuid, identity_ref: Value) -> Value {
    scenario.rotation_spec(SECRET, json!({
        "application": { "tenantId": scenario.tenant.tenant_id, "clientId": app_id },
        "revokeGracePeriod": "0s",
        "identityRef": identity_ref,
    }))
}

fn ready(scenario: &Scenario, namespace: &str) -> Value {
    let status = scenario.kubernetes.rotation(namespace, NAME).unwrap()["status"].clone();
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap_or_else(|| panic!("no Ready: {status}")).clone()
}

/// The pass refused `namespace`'s rotation with IdentityRefused before any call to Graph
/// (no token asked for), a Warning Event saying the same, nothing minted, stored or sent.
async fn assert_refused(scenario: &Scenario, namespace: &str, expected: &[&str]) {
    let output = pass(scenario).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let ready = ready(scenario, namespace);
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("IdentityRefused")), "{ready}");
    let message = ready["message"].as_str().unwrap();
    for fragment in expected {
        assert!(message.contains(fragment), "{fragment:?} missing from: {message}");
    }
    assert!(message.ends_with("nothing was minted, stored or sent"), "{message}");
    let events = scenario.kubernetes.events(namespace);
    assert!(
        events.iter().any(|e| e.reason == "IdentityRefused" && e.type_ == "Warning" && e.note.as_deref().unwrap_or_default().contains(expected[0])),
        "no Warning Event saying {:?}: {events:?}",
        expected[0]
    );
    let graph = scenario.graph.faults();
    assert_eq!((graph.count(ROUTE_TOKEN), graph.count(ROUTE_GET_APPLICATION), graph.count(ROUTE_ADD_PASSWORD)), (0, 0, 0), "Graph was called");
    assert_eq!(scenario.relay.sessions(), 0, "the relay was contacted");
    assert!(scenario.kubernetes.secret(namespace, SECRET).is_none(), "the Secret was written");
}

/// Two teams, each with its own RotatorIdentity (its own app registration and client
/// secret, in its own namespace), each rotating its own application: Graph accepts each
/// mint only because the team's identity owns the application (the controller's own
/// identity owns neither).
#[tokio::test]
async fn two_teams_rotate_each_with_its_own_identity() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.require_ownership();
    // The scenario's rotator owns its target; here only the identities under test do.
    scenario.graph.remove_owner(scenario.target.object_id, scenario.rotator_client_id);
    let teams = [team(&scenario, TEAM_A, TEAM_A), team(&scenario, TEAM_B, TEAM_B)];
    for team in &teams {
        scenario.kubernetes.create_rotator_identity(team.namespace, "entra", client_secret_sign_in(&scenario, team)).unwrap();
        scenario.kubernetes.create_rotation(team.namespace, NAME, rotation(&scenario, team.app_id, json!({ "name": "entra" }))).unwrap();
    }

    let output = pass(&scenario).await;

    assert!(output.status.success(), "{}", text(&output));
    for team in &teams {
        let ready = ready(&scenario, team.namespace);
        assert_eq!(ready["status"], "True", "{}: {ready}", team.namespace);
        let stored = scenario.kubernetes.secret(team.namespace, SECRET).unwrap();
        let app = scenario.tenant.app(team.app_object_id).unwrap();
        let minted = app.passwords.iter().find(|p| p.secret_text == stored.data["SMTP_PASSWORD"]);
        assert!(minted.is_some(), "{}: its Secret holds a secret of its own application", team.namespace);
    }
}

/// A ClusterRotatorIdentity an administrator creates for a managed-service provider's
/// customer: its client secret sits in the rotator's namespace, and it serves the
/// namespaces its conditions name.
#[tokio::test]
async fn a_cluster_identity_serves_the_namespaces_its_conditions_name() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.require_ownership();
    // The scenario's rotator owns its target; here only the identities under test do.
    scenario.graph.remove_owner(scenario.target.object_id, scenario.rotator_client_id);
    let customer = team(&scenario, TEAM_A, HOME);
    let mut spec = client_secret_sign_in(&scenario, &customer);
    spec["conditions"] = json!([ { "namespaces": [TEAM_A] } ]);
    scenario.kubernetes.create_cluster_rotator_identity("customer-a", spec).unwrap();
    let reference = json!({ "kind": "ClusterRotatorIdentity", "name": "customer-a" });
    scenario.kubernetes.create_rotation(TEAM_A, NAME, rotation(&scenario, customer.app_id, reference)).unwrap();

    let output = pass(&scenario).await;

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(ready(&scenario, TEAM_A)["status"], "True");
    assert!(scenario.kubernetes.secret(TEAM_A, SECRET).is_some());
}

/// Team a names the RotatorIdentity that team b created in its own namespace: a namespaced
/// identity serves only its namespace, and the refusal does not say whether it exists
/// elsewhere.
#[tokio::test]
async fn an_identity_of_another_namespace_is_refused() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.require_ownership();
    // The scenario's rotator owns its target; here only the identities under test do.
    scenario.graph.remove_owner(scenario.target.object_id, scenario.rotator_client_id);
    let b = team(&scenario, TEAM_B, TEAM_B);
    scenario.kubernetes.create_rotator_identity(TEAM_B, "team-b-entra", client_secret_sign_in(&scenario, &b)).unwrap();
    team(&scenario, TEAM_A, TEAM_A);
    // Team a's rotation of team b's application would be refused by policy first; it names
    // an application its policy allows and team b's identity.
    let a_app = scenario.tenant.apps().into_iter().find(|a| a.display_name == "team-a-mail").unwrap();
    scenario.kubernetes.create_rotation(TEAM_A, NAME, rotation(&scenario, a_app.app_id, json!({ "name": "team-b-entra" }))).unwrap();

    assert_refused(&scenario, TEAM_A, &["spec.identityRef: RotatorIdentity team-a/team-b-entra does not exist", "serves only rotations of its own namespace"]).await;
}

#[tokio::test]
async fn a_cluster_identity_from_a_namespace_it_does_not_serve_is_refused() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.require_ownership();
    // The scenario's rotator owns its target; here only the identities under test do.
    scenario.graph.remove_owner(scenario.target.object_id, scenario.rotator_client_id);
    let a = team(&scenario, TEAM_A, HOME);
    let mut spec = client_secret_sign_in(&scenario, &a);
    spec["conditions"] = json!([ { "namespaces": [TEAM_B] } ]);
    scenario.kubernetes.create_cluster_rotator_identity("customer-b", spec).unwrap();
    let reference = json!({ "kind": "ClusterRotatorIdentity", "name": "customer-b" });
    scenario.kubernetes.create_rotation(TEAM_A, NAME, rotation(&scenario, a.app_id, reference)).unwrap();

    assert_refused(&scenario, TEAM_A, &["spec.identityRef: ClusterRotatorIdentity customer-b does not serve namespace \"team-a\"", "spec.conditions"]).await;
}

/// A namespaced identity asking for the node's managed identity (the CRD's CEL rule
/// refuses it at admission; the controller refuses it too, for a cluster whose CRD predates
/// the rule).
#[tokio::test]
async fn a_namespaced_identity_may_not_use_managed_identity() {
    let scenario = Scenario::start().await.unwrap();
    let a = team(&scenario, TEAM_A, TEAM_A);
    scenario.kubernetes.create_rotator_identity(TEAM_A, "node", json!({ "managedIdentity": {} })).unwrap();
    scenario.kubernetes.create_rotation(TEAM_A, NAME, rotation(&scenario, a.app_id, json!({ "name": "node" }))).unwrap();

    assert_refused(&scenario, TEAM_A, &["RotatorIdentity team-a/node: spec.managedIdentity is not allowed in a namespaced identity", "ClusterRotatorIdentity"]).await;
}

/// Workload identity through a ServiceAccount: the Entra identity is federated with team
/// b's ServiceAccount `mailer` only. Team a names a ServiceAccount of the same name in its
/// namespace; the rotator can only get team a's token (TokenRequest in the identity's own
/// namespace), whose subject Entra refuses: nothing minted. Team b, with the same identity
/// spec, rotates.
#[tokio::test]
async fn a_workload_identity_federated_with_another_namespace_is_refused_by_entra() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.require_ownership();
    // The scenario's rotator owns its target; here only the identities under test do.
    scenario.graph.remove_owner(scenario.target.object_id, scenario.rotator_client_id);
    let issuer = ServiceAccountIssuer::new(&format!("https://oidc.cluster.example/{}/", scenario.tenant.tenant_id)).unwrap();
    scenario.tenant.trust_issuer(issuer.issuer(), issuer.public_key());
    scenario.kubernetes.sign_service_account_tokens(issuer.clone());
    // One Entra identity owning both applications, federated with team-b/mailer only.
    let shared = scenario.tenant.register_app("team-b-federated");
    scenario.tenant.add_federated_credential(shared.app_id, FederatedCredential::for_service_account(issuer.issuer(), TEAM_B, "mailer"));
    let apps = [TEAM_A, TEAM_B].map(|namespace| {
        let t = team(&scenario, namespace, namespace);
        scenario.graph.add_owner(t.app_object_id, shared.app_id);
        scenario.kubernetes.create_service_account(namespace, "mailer").unwrap();
        let sign_in = json!({ "workloadIdentity": {
            "tenantId": scenario.tenant.tenant_id, "clientId": shared.app_id, "serviceAccountRef": { "name": "mailer" } } });
        scenario.kubernetes.create_rotator_identity(namespace, "federated", sign_in).unwrap();
        t
    });
    scenario.kubernetes.create_rotation(TEAM_A, NAME, rotation(&scenario, apps[0].app_id, json!({ "name": "federated" }))).unwrap();

    let output = pass(&scenario).await;

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let refused = ready(&scenario, TEAM_A);
    let message = refused["message"].as_str().unwrap();
    assert_eq!(refused["status"], "False", "{refused}");
    assert!(message.contains("AADSTS700213") || message.contains("AADSTS70021"), "Entra's refusal of the subject: {message}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "nothing minted");
    assert_eq!(scenario.relay.sessions(), 0, "nothing sent");
    assert!(scenario.kubernetes.secret(TEAM_A, SECRET).is_none(), "nothing stored");
    assert!(scenario.tenant.app(apps[0].app_object_id).unwrap().passwords.is_empty());

    scenario.kubernetes.create_rotation(TEAM_B, NAME, rotation(&scenario, apps[1].app_id, json!({ "name": "federated" }))).unwrap();
    pass(&scenario).await;

    assert_eq!(ready(&scenario, TEAM_B)["status"], "True", "team b's own ServiceAccount signs in: {}", ready(&scenario, TEAM_B));
    assert!(scenario.kubernetes.secret(TEAM_B, SECRET).is_some());
}

/// Config-file mode (`run --config`): a rotation names one of `identities:` with
/// `identity:` and signs in as it; the file's `azure.credential` (which owns nothing here)
/// stays the default for the others.
#[tokio::test]
async fn a_configuration_file_rotation_signs_in_as_the_identity_it_names() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.require_ownership();
    // The scenario's rotator owns its target; here only the identities under test do.
    scenario.graph.remove_owner(scenario.target.object_id, scenario.rotator_client_id);
    let now = chrono::Utc::now();
    let customer = scenario.tenant.register_app("customer-rotator");
    let password = scenario
        .tenant
        .add_replicated_password(customer.object_id, Some("rotator".into()), now, now + chrono::Duration::days(365))
        .unwrap();
    scenario.graph.add_owner(scenario.target.object_id, customer.app_id);
    let secret_file = scenario.config_path.with_file_name("customer-secret");
    std::fs::write(&secret_file, &password.secret_text).unwrap();
    let config = std::fs::read_to_string(&scenario.config_path).unwrap();
    let identities = format!(
        "identities:\n  - name: customer\n    credential:\n      type: clientSecret\n      tenantId: {}\n      clientId: {}\n      secretFile: {}\nrotations:\n",
        scenario.tenant.tenant_id,
        customer.app_id,
        secret_file.display()
    );
    let run = |text: String| {
        let path = scenario.config_path.with_file_name("identities.yaml");
        std::fs::write(&path, text).unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator")).args(["run", "--config"]).arg(path).env_remove("RUST_LOG").output()
    };

    let before = scenario.tenant.app(scenario.target.object_id).unwrap().passwords.len();
    let as_the_rotator = run(config.replacen("rotations:\n", &identities, 1)).await.unwrap();

    assert_eq!(as_the_rotator.status.code(), Some(1), "azure.credential owns nothing: {}", text(&as_the_rotator));
    assert_eq!(scenario.tenant.app(scenario.target.object_id).unwrap().passwords.len(), before, "Graph refused the mint");

    let named = config.replacen("rotations:\n", &identities, 1).replacen("    application:\n", "    identity: customer\n    application:\n", 1);
    let as_the_customer = run(named).await.unwrap();

    assert!(as_the_customer.status.success(), "{}", text(&as_the_customer));
    assert!(scenario.kubernetes.secret(SECRET_NAMESPACE, "dify-smtp").is_some(), "stored");
    assert!(!text(&as_the_customer).contains(&password.secret_text));
}

/// A managed-service provider's ClusterRotatorIdentity with workload identity: another
/// Entra identity (e.g. in a customer's tenant) federated with the rotator's own
/// ServiceAccount signs in with the pod's projected token, for the namespace it serves.
#[tokio::test]
async fn a_cluster_workload_identity_signs_in_with_the_rotators_own_token() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.require_ownership();
    // The scenario's rotator owns its target; here only the identities under test do.
    scenario.graph.remove_owner(scenario.target.object_id, scenario.rotator_client_id);
    let issuer = ServiceAccountIssuer::new(&format!("https://oidc.cluster.example/{}/", scenario.tenant.tenant_id)).unwrap();
    scenario.tenant.trust_issuer(issuer.issuer(), issuer.public_key());
    let customer = team(&scenario, TEAM_A, HOME);
    let federated = scenario.tenant.register_app("customer-a-federated");
    scenario.tenant.add_federated_credential(federated.app_id, FederatedCredential::for_service_account(issuer.issuer(), HOME, "entra-rotator"));
    scenario.graph.add_owner(customer.app_object_id, federated.app_id);
    scenario
        .kubernetes
        .create_cluster_rotator_identity("customer-a", json!({
            "conditions": [ { "namespaces": [TEAM_A] } ],
            "workloadIdentity": { "tenantId": scenario.tenant.tenant_id, "clientId": federated.app_id },
        }))
        .unwrap();
    let reference = json!({ "kind": "ClusterRotatorIdentity", "name": "customer-a" });
    scenario.kubernetes.create_rotation(TEAM_A, NAME, rotation(&scenario, customer.app_id, reference)).unwrap();
    let token_file = scenario.config_path.with_file_name("projected-token");
    let now = chrono::Utc::now();
    std::fs::write(&token_file, issuer.token(HOME, "entra-rotator", TOKEN_EXCHANGE_AUDIENCE, now, chrono::Duration::hours(1)).unwrap()).unwrap();

    let without_token = pass(&scenario).await;

    assert_eq!(without_token.status.code(), Some(1), "{}", text(&without_token));
    let refused = ready(&scenario, TEAM_A);
    assert_eq!(refused["reason"], "IdentityRefused", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("AZURE_FEDERATED_TOKEN_FILE is not set"), "{refused}");

    let output = pass_with_token(&scenario, Some(&token_file)).await;

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(ready(&scenario, TEAM_A)["status"], "True");
    assert!(scenario.kubernetes.secret(TEAM_A, SECRET).is_some());
}
