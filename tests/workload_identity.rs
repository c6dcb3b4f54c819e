//! The chart's default sign-in, Azure workload identity, end to end (issue 12, item 3): the
//! chart rendered with only the identity's client id (plus the stand-ins' endpoints), its
//! CronJob pass run as the pod would run it, with the variables the workload identity
//! webhook injects and a projected service-account token signed by the cluster's issuer.
//! The token stand-in checks that token against the federated credentials of the
//! rotator's identity as Entra does (issuer, subject, audience, signature, lifetime).

use entra_rotator_standins::federation::{FederatedCredential, ServiceAccountIssuer, TOKEN_EXCHANGE_AUDIENCE};
use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::scenario::{Scenario};
use serde::Deserialize as _;
use serde_json::json;
use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

const RELEASE: &str = "rotator";
/// The release namespace, which the CronJob pass watches by default.
const NAMESPACE: &str = "ops";
const ROTATION: &str = "app-smtp";
const SECRET: &str = "app-smtp";
/// Where the chart mounts the extra roots; the test points it at the stand-ins' CA.
const MOUNTED_CA: &str = "/etc/entra-rotator/ca/ca.crt";

fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("ENTRA_ROTATOR_HELM").map(PathBuf::from).unwrap_or_else(|| "helm".into());
    if std::process::Command::new(&path).arg("version").output().is_ok_and(|o| o.status.success()) {
        return Some(path);
    }
    assert!(std::env::var_os("CI").is_none(), "helm not found at {}: .ci/run installs it and sets ENTRA_ROTATOR_HELM", path.display());
    eprintln!("skipped: helm not found; run `bash .ci/run` or set ENTRA_ROTATOR_HELM=/path/to/helm");
    None
}

/// What the pod would run: its arguments, its configuration file, its ServiceAccount.
struct CronJobPod {
    args: Vec<String>,
    service_account: String,
    _dir: tempfile::TempDir,
}

/// Renders the chart in CronJob mode with the default credential (workload identity) and
/// takes the pod's arguments, configuration and ServiceAccount, the configuration's mounted
/// paths moved to files of the test.
fn render_cronjob(helm: &Path, scenario: &Scenario) -> CronJobPod {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/entra-rotator");
    let output = std::process::Command::new(helm)
        .args(["template", RELEASE])
        .arg(chart)
        .args(["--namespace", NAMESPACE, "--set", "mode=cronjob", "--set", "tls.extraRootCertificatesConfigMap=standin-ca"])
        .args(["--set", &format!("azure.workloadIdentity.clientId={}", scenario.rotator_client_id)])
        .args(["--set", &format!("azure.authorityHost={}", scenario.graph.authority_host())])
        .args(["--set", &format!("azure.graphUrl={}", scenario.graph.graph_url())])
        // The relay stand-in is not one of Microsoft's relays: the administrator allows it.
        .args(["--set", "verification.allowedHosts={localhost}"])
        .output()
        .unwrap();
    assert!(output.status.success(), "helm template: {}", String::from_utf8_lossy(&output.stderr));
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(std::str::from_utf8(&output.stdout).unwrap())
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|object| !object.is_null())
        .collect();
    let one = |kind: &str| objects.iter().find(|o| o["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind} rendered"));
    let pod = &one("CronJob")["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["azure.workload.identity/use"].as_str(), Some("true"), "the webhook's opt-in label");
    let service_account = pod["spec"]["serviceAccountName"].as_str().unwrap().to_string();
    assert_eq!(one("ServiceAccount")["metadata"]["name"].as_str(), Some(service_account.as_str()));

    let dir = tempfile::tempdir().unwrap();
    let config = one("ConfigMap")["data"]["azure.yaml"].as_str().unwrap();
    assert!(config.contains("type: workloadIdentity"), "the default credential: {config}");
    let config_path = dir.path().join("azure.yaml");
    std::fs::write(&config_path, config.replace(MOUNTED_CA, scenario.ca_path().to_str().unwrap())).unwrap();
    let args = pod["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|arg| {
            let arg = arg.as_str().unwrap();
            match arg.strip_prefix("--azure-config=") {
                Some(_) => format!("--azure-config={}", config_path.display()),
                None => arg.to_string(),
            }
        })
        .collect();
    CronJobPod { args, service_account, _dir: dir }
}

/// A rotation in the release namespace writing a Kubernetes Secret, verified at the relay.
fn create_rotation(scenario: &Scenario) {
    scenario.kubernetes.create_namespace(NAMESPACE);
    let spec = scenario.rotation_spec(SECRET, json!({}));
    scenario.kubernetes.create_rotation(NAMESPACE, ROTATION, spec).unwrap();
}

/// Runs the pod's command with what the webhook injects: the identity's client id and
/// tenant, the projected token's path and the authority host.
async fn run_pod(scenario: &Scenario, pod: &CronJobPod, token_file: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(&pod.args)
        .env("AZURE_CLIENT_ID", scenario.rotator_client_id.to_string())
        .env("AZURE_TENANT_ID", scenario.tenant.tenant_id.to_string())
        .env("AZURE_FEDERATED_TOKEN_FILE", token_file)
        .env("AZURE_AUTHORITY_HOST", scenario.graph.authority_host().as_str())
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The cluster's issuer, trusted by the tenant (as its discovery document would make it),
/// and a projected token of `service_account` in `dir`.
fn cluster_token(scenario: &Scenario, service_account: &str, dir: &Path) -> (ServiceAccountIssuer, PathBuf) {
    let issuer = ServiceAccountIssuer::new(&format!("https://oidc.cluster.example/{}/", scenario.tenant.tenant_id)).unwrap();
    scenario.tenant.trust_issuer(issuer.issuer(), issuer.public_key());
    let token = issuer
        .token(NAMESPACE, service_account, TOKEN_EXCHANGE_AUDIENCE, chrono::Utc::now(), chrono::Duration::hours(1))
        .unwrap();
    let path = dir.join("azure-identity-token");
    std::fs::write(&path, token).unwrap();
    (issuer, path)
}

#[tokio::test]
async fn the_charts_default_workload_identity_signs_in_and_rotates() {
    let Some(helm) = helm() else { return };
    let scenario = Scenario::start().await.unwrap();
    let pod = render_cronjob(&helm, &scenario);
    let dir = tempfile::tempdir().unwrap();
    let (issuer, token_file) = cluster_token(&scenario, &pod.service_account, dir.path());
    scenario.tenant.add_federated_credential(
        scenario.rotator_client_id,
        FederatedCredential::for_service_account(issuer.issuer(), NAMESPACE, &pod.service_account),
    );
    create_rotation(&scenario);
    let before = scenario.target_now().passwords.len();

    let output = run_pod(&scenario, &pod, &token_file).await;

    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "one secret minted");
    assert_eq!(scenario.target_now().passwords.len(), before + 1, "the new secret is live");
    let stored = scenario.kubernetes.secret(NAMESPACE, SECRET).expect("the Secret is written").data["SMTP_PASSWORD"].clone();
    assert_eq!(scenario.tenant.authenticate(scenario.target.app_id, &stored), Ok(()), "the stored value signs in");
    let status = scenario.kubernetes.rotation(NAMESPACE, ROTATION).unwrap()["status"].clone();
    let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "True", "{status}");
}

#[tokio::test]
async fn a_federated_credential_for_another_subject_is_refused_with_the_subject_to_configure() {
    let Some(helm) = helm() else { return };
    let scenario = Scenario::start().await.unwrap();
    let pod = render_cronjob(&helm, &scenario);
    let dir = tempfile::tempdir().unwrap();
    let (issuer, token_file) = cluster_token(&scenario, &pod.service_account, dir.path());
    // Set up for the ServiceAccount of another release name.
    scenario
        .tenant
        .add_federated_credential(scenario.rotator_client_id, FederatedCredential::for_service_account(issuer.issuer(), NAMESPACE, "entra-rotator"));
    create_rotation(&scenario);

    let output = run_pod(&scenario, &pod, &token_file).await;

    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let subject = format!("system:serviceaccount:{NAMESPACE}:{}", pod.service_account);
    assert!(out.contains("AADSTS700213"), "Entra's code: {out}");
    assert!(out.contains(&format!("--subject {subject}")), "the subject to configure: {out}");
    assert!(out.contains(&format!("--issuer {}", issuer.issuer())), "the issuer to configure: {out}");
    assert!(out.contains(&format!("--audiences {TOKEN_EXCHANGE_AUDIENCE}")), "the audience to configure: {out}");
    assert!(!out.contains(&std::fs::read_to_string(&token_file).unwrap()), "the token itself is never shown");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0, "nothing minted");
}
