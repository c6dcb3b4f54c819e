//! The operator end to end: the real `entra-rotator controller` and CronJob pass, kube's
//! real client and kube-runtime, against the stand-ins over sockets.

use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::kubernetes::WorkloadKind;
use entra_rotator_standins::scenario::{Scenario, ACS_RESOURCE, SECRET_NAME, VAULT_SECRET};
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const NAMESPACE: &str = "dify";
const NAME: &str = "dify-smtp";

fn spec(scenario: &Scenario, revoke_grace: &str) -> Value {
    json!({
        "application": { "tenantId": scenario.tenant.tenant_id, "clientId": scenario.target.app_id },
        "lifetime": "4320h",
        "revokeGracePeriod": revoke_grace,
        "targets": [
            { "secret": { "name": SECRET_NAME, "keys": {
                "SMTP_USERNAME": "{{smtpUsername}}", "SMTP_PASSWORD": "{{secret}}", "SMTP_SERVER": "{{smtpHost}}" } } },
            { "keyVault": { "vaultUrl": scenario.vault.vault_url(), "secretName": VAULT_SECRET } }
        ],
        "verification": { "smtp": {
            "host": "localhost", "port": scenario.relay.port(),
            "username": format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}"),
            "from": scenario.relay.settings().default_sender().unwrap(), "to": "canary@contoso.example",
            "retryBudget": "30s" } },
        "rollout": [ { "kind": "Deployment", "selector": { "matchLabels": { "app": "dify" } } } ]
    })
}

async fn world(revoke_grace: &str) -> Scenario {
    let scenario = Scenario::start().await.unwrap();
    scenario.kubernetes.create_workload(NAMESPACE, WorkloadKind::Deployment, "dify-api", &[("app", "dify")]).unwrap();
    scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec(&scenario, revoke_grace)).unwrap();
    scenario
}

fn rotator(scenario: &Scenario, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command
        .args(args)
        .args(["--azure-config", scenario.config_path.to_str().unwrap()])
        .env("KUBECONFIG", scenario.kubeconfig_path())
        // The rotator's own namespace is its rotations' (as the chart's POD_NAMESPACE says),
        // and the stand-in relay is allowed as an administrator allows a relay of theirs.
        .env("POD_NAMESPACE", NAMESPACE)
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    command
}

fn controller(scenario: &Scenario, identity: &str) -> Child {
    rotator(scenario, &["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", identity, "--health-addr", "127.0.0.1:0", "--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn status(scenario: &Scenario) -> Value {
    scenario.kubernetes.rotation(NAMESPACE, NAME).and_then(|o| o.get("status").cloned()).unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Option<(String, String)> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
    })
}

/// Polls until `done` holds (the controller works asynchronously); fails after a minute.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

fn ours(scenario: &Scenario) -> Vec<String> {
    scenario
        .target_now()
        .passwords
        .iter()
        .filter(|p| p.display_name.as_deref() == Some("entra-rotator:dify/dify-smtp"))
        .map(|p| p.key_id.to_string())
        .collect()
}

#[tokio::test]
async fn controller_rotates_stores_verifies_restarts_and_reports() {
    let scenario = world("0s").await;
    let _controller = controller(&scenario, "replica-a");
    eventually("the rotation is Ready", || condition(&status(&scenario), "Ready").is_some_and(|c| c.0 == "True")).await;

    let status = status(&scenario);
    let key_id = status["currentKeyId"].as_str().unwrap().to_string();
    assert_eq!(ours(&scenario), vec![key_id.clone()]);
    assert_eq!(condition(&status, "Verified").unwrap().0, "True");
    assert_eq!(condition(&status, "ExpiringSoon").unwrap().0, "False");
    assert!(status["notAfter"].is_string() && status["renewalTime"].is_string());
    assert_eq!(status["observedGeneration"], 1);

    let secret = scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).unwrap();
    assert_eq!(secret.annotations["entra-rotator.io/key-id"], key_id);
    assert_eq!(scenario.vault.latest(VAULT_SECRET).unwrap().tags["keyId"], key_id);
    let annotations = scenario.kubernetes.pod_template_annotations(NAMESPACE, WorkloadKind::Deployment, "dify-api");
    assert_eq!(annotations.get("entra-rotator.io/key-id"), Some(&key_id), "the Deployment was restarted with the keyId");

    let reasons: Vec<String> = scenario.kubernetes.events(NAMESPACE).into_iter().map(|e| e.reason).collect();
    for expected in ["Minted", "Stored", "Verified", "Restarted"] {
        assert!(reasons.iter().any(|r| r == expected), "no {expected} Event in {reasons:?}");
    }
    assert!(scenario.target_now().passwords.iter().any(|p| p.key_id == scenario.foreign_key_id), "hand-made secret untouched");

    // A secret deleted out of band is noticed through the Secret watch and restored with
    // the current secret: the same keyId, a value that authenticates, nothing minted.
    let minted = scenario.graph.faults().count(ROUTE_ADD_PASSWORD);
    scenario.kubernetes.delete_secret(NAMESPACE, SECRET_NAME);
    eventually("the deleted Secret is written again", || scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).is_some()).await;
    let restored = scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).unwrap();
    assert_eq!(restored.annotations["entra-rotator.io/key-id"], key_id, "restored with the current keyId");
    scenario
        .tenant
        .authenticate(scenario.target.app_id, &restored.data["SMTP_PASSWORD"])
        .expect("the restored value authenticates");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), minted, "nothing minted to restore it");
    assert_eq!(ours(&scenario), vec![key_id], "still one secret of ours");
}

#[tokio::test]
async fn cronjob_pass_rotates_once_then_finds_nothing_due() {
    let scenario = world("0s").await;
    let first = rotator(&scenario, &["run", "--namespace", NAMESPACE]).output().await.unwrap();
    let text = String::from_utf8_lossy(&first.stdout).to_string() + &String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{text}");
    assert!(text.contains("dify/dify-smtp: rotated: new keyId"), "{text}");
    assert_eq!(condition(&status(&scenario), "Ready").unwrap(), ("True".into(), "Rotated".into()));

    let second = rotator(&scenario, &["run", "--all-namespaces"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.status.success());
    assert!(text.contains("dify/dify-smtp: up to date"), "{text}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1);
}

#[tokio::test]
async fn cronjob_pass_fails_with_exit_1_and_a_degraded_status() {
    let scenario = world("0s").await;
    scenario.graph.faults().push(ROUTE_ADD_PASSWORD, entra_rotator_standins::faults::Fault::status(403));
    let output = rotator(&scenario, &["run", "--namespace", NAMESPACE]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let status = status(&scenario);
    assert_eq!(condition(&status, "Degraded").unwrap(), ("True".into(), "GraphFailed".into()));
    assert_eq!(status["failedAttempts"], 1);
    assert!(status["lastError"].as_str().unwrap().contains("Application.ReadWrite.OwnedBy"));
}

/// A controller whose log lines (stderr, `info`) are collected for the test to read.
struct LoggedController {
    _child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LoggedController {
    fn start(scenario: &Scenario, identity: &str) -> Self {
        let mut child = rotator(scenario, &["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", identity, "--health-addr", "127.0.0.1:0", "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Self { _child: child, lines }
    }

    fn logged(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

fn lease_renewed_at(scenario: &Scenario) -> Value {
    let lease = scenario.kubernetes.lease(NAMESPACE, "entra-rotator-leader").expect("the Lease exists");
    lease["spec"]["renewTime"].clone()
}

fn lease_holder(scenario: &Scenario) -> Option<String> {
    let lease = scenario.kubernetes.lease(NAMESPACE, "entra-rotator-leader")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[tokio::test]
async fn two_controllers_never_rotate_the_same_app_twice() {
    let scenario = world("0s").await;
    let a = LoggedController::start(&scenario, "replica-a");
    eventually("replica-a holds the Lease", || lease_holder(&scenario).as_deref() == Some("replica-a")).await;
    let b = LoggedController::start(&scenario, "replica-b");
    eventually("replica-b runs as a standby", || b.logged("waiting to become the leader")).await;
    eventually("the rotation is Ready", || condition(&status(&scenario), "Ready").is_some_and(|c| c.0 == "True")).await;
    // The standby gets a whole renewal of the Lease after the rotation is Ready to act
    // wrongly: bounded by the leader's renewal, an event, rather than by a sleep.
    let renewed = lease_renewed_at(&scenario);
    eventually("replica-a renews the Lease once more", || lease_renewed_at(&scenario) != renewed).await;
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "exactly one secret minted");
    assert_eq!(ours(&scenario).len(), 1);
    assert_eq!(lease_holder(&scenario).as_deref(), Some("replica-a"), "the first leader keeps the Lease");
    assert!(a.logged("became the leader"), "replica-a leads");
    assert!(!b.logged("became the leader"), "replica-b stays a standby");
}

/// How a leader is stopped mid-rotation: what Kubernetes sends first (SIGTERM: the
/// controller shuts down and exits 0, its rotation cut off), or what it sends once the
/// grace period is over (SIGKILL). Each is tested on its own.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

#[tokio::test]
async fn a_leader_stopped_mid_rotation_is_cleaned_up_by_the_next_one() {
    use std::os::unix::process::ExitStatusExt;
    for stop in [Stop::Term, Stop::Kill] {
        let case = format!("{stop:?}");
        leader_stopped_mid_rotation(stop, &case).await;
    }

    async fn leader_stopped_mid_rotation(stop: Stop, case: &str) {
        use entra_rotator_standins::smtp::SmtpFault;
        let scenario = world("0s").await;
        // The first verification hangs: the leader is stopped after minting, before any
        // store got the secret (secrets are proven before they are stored).
        scenario.relay.inject_fault(SmtpFault::SlowGreeting(Duration::from_secs(120)));
        let mut first = rotator(&scenario, &["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", "replica-a", "--health-addr", "127.0.0.1:0", "--orphan-grace-period", "3s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually("verification has started", || scenario.relay.sessions() >= 1).await;
        assert!(scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).is_none(), "{case}: nothing stored before verification");
        let abandoned = ours(&scenario);
        assert_eq!(abandoned.len(), 1, "{case}");

        let pid = first.id().unwrap().to_string();
        let (signal, expected) = match stop {
            Stop::Term => ("-TERM", (Some(0), None)),
            Stop::Kill => ("-KILL", (None, Some(9))),
        };
        Command::new("kill").args([signal, &pid]).status().await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(60), first.wait())
            .await
            .unwrap_or_else(|_| panic!("{case}: the leader did not end"))
            .unwrap();
        assert_eq!((ended.code(), ended.signal()), expected, "{case}: how the leader ended: {ended}");

        let _second = rotator(&scenario, &["controller", "--namespace", NAMESPACE, "--lease-namespace", NAMESPACE, "--identity", "replica-b", "--health-addr", "127.0.0.1:0", "--orphan-grace-period", "3s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually(&format!("{case}: the next leader finished a rotation"), || {
            condition(&status(&scenario), "Ready").is_some_and(|c| c.0 == "True")
        })
        .await;
        let current = status(&scenario)["currentKeyId"].as_str().unwrap().to_string();
        assert_eq!(ours(&scenario), vec![current.clone()], "{case}: the abandoned secret was removed, one of ours remains");
        assert_ne!(current, abandoned[0], "{case}");
        assert_eq!(scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).unwrap().annotations["entra-rotator.io/key-id"], current, "{case}");
        assert_eq!(condition(&status(&scenario), "Verified").unwrap().0, "True", "{case}");
    }
}

/// The requests one reconcile of an up-to-date rotation sends, per API: what an idle
/// object costs (the drift check), asserted like a request scenario.
#[tokio::test]
async fn an_up_to_date_reconcile_reads_and_writes_nothing_more_than_needed() {
    use entra_rotator_standins::graph::{ROUTE_GET_APPLICATION, ROUTE_REMOVE_PASSWORD};
    use entra_rotator_standins::keyvault::routes as vault;
    use entra_rotator_standins::kubernetes::routes as kube;
    let scenario = world("0s").await;
    assert!(rotator(&scenario, &["run", "--namespace", NAMESPACE]).output().await.unwrap().status.success());
    let settled = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"].clone();
    for faults in [scenario.graph.faults(), scenario.vault.faults(), scenario.kubernetes.faults()] {
        faults.reset_counts();
    }
    let sessions = scenario.relay.sessions();

    assert!(rotator(&scenario, &["run", "--namespace", NAMESPACE]).output().await.unwrap().status.success());

    let graph = scenario.graph.faults();
    assert_eq!((graph.count(ROUTE_GET_APPLICATION), graph.count(ROUTE_ADD_PASSWORD), graph.count(ROUTE_REMOVE_PASSWORD)), (1, 0, 0));
    assert_eq!(graph.count("token"), 2, "a new process needs one token per audience: Graph and Key Vault");
    let vault_reads = scenario.vault.faults().count(vault::GET_SECRET);
    assert_eq!((vault_reads, scenario.vault.faults().count(vault::SET_SECRET)), (1, 0));
    let k8s = scenario.kubernetes.faults();
    assert_eq!(k8s.count(kube::ROTATIONS.list), 1, "one list of the namespace's rotations");
    assert_eq!(k8s.count(kube::ROTATIONS.get_status), 1, "the status is read fresh before writing");
    assert_eq!(k8s.count(kube::GET_SECRET), 1, "the Secret store is read once");
    assert_eq!(k8s.count(kube::PATCH_SECRET), 0);
    assert_eq!(k8s.count(kube::EVENTS.create), 0, "nothing happened, nothing to report");
    assert_eq!(k8s.count(kube::DEPLOYMENTS.patch), 0, "no restart");
    assert_eq!(scenario.relay.sessions(), sessions, "no verification mail for a verified secret");
    let status = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"].clone();
    assert_eq!(status["currentKeyId"], settled["currentKeyId"]);
}
