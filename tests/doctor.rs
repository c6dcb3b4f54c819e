//! `entra-rotator doctor` (issue 13 item 2): the preflight against the demo's stand-ins,
//! with the real binary over sockets. It passes where a rotation would succeed, changes
//! nothing, and names the failing check for each way the next run would fail.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_REMOVE_PASSWORD};
use entra_rotator_standins::keyvault::Access;
use entra_rotator_standins::scenario::{Scenario, VAULT_SECRET};
use std::process::Output;

async fn rotator(scenario: &Scenario, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(args)
        .args(["--config", scenario.config_path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The scenario after one rotation: a secret of ours stored in both stores.
async fn rotated() -> Scenario {
    let scenario = Scenario::start().await.unwrap();
    let first = rotator(&scenario, &["run"]).await;
    assert!(first.status.success(), "{}", text(&first));
    scenario
}

/// The lines of `out` marked FAIL.
fn failures(out: &str) -> Vec<&str> {
    out.lines().filter(|line| line.trim_start().starts_with("[FAIL]")).collect()
}

#[tokio::test]
async fn doctor_passes_on_the_demos_stand_ins_and_changes_nothing() {
    let scenario = rotated().await;
    let (mails, writes) = (scenario.relay.accepted_messages().len(), scenario.vault.versions(VAULT_SECRET).len());

    let output = rotator(&scenario, &["doctor"]).await;

    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert_eq!(failures(&out), Vec::<&str>::new(), "{out}");
    for expected in ["[ok  ] Microsoft Graph", "[ok  ] ownership", "[ok  ] Key Vault", "[ok  ] Kubernetes Secret", "authenticates (handshake: no mail sent)", "needs: Graph application permission Application.ReadWrite.OwnedBy"] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.contains("doctor: 1 rotation(s) ready"), "{out}");
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "only the first run minted");
    assert_eq!(scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD), 0);
    assert_eq!(scenario.relay.accepted_messages().len(), mails, "no mail sent");
    assert_eq!(scenario.vault.versions(VAULT_SECRET).len(), writes, "nothing written");
}

#[tokio::test]
async fn before_the_first_run_it_passes_and_says_what_the_first_run_does() {
    let scenario = Scenario::start().await.unwrap();

    let output = rotator(&scenario, &["doctor"]).await;

    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("empty (the first run writes it)") && out.contains("nothing of ours is stored yet"), "{out}");
}

#[tokio::test]
async fn doctor_names_the_failing_check() {
    // Not an owner: the rotation names an application the rotator does not own.
    let scenario = rotated().await;
    let stranger = scenario.tenant.register_app("someone-elses-app");
    scenario.edit_config(&scenario.target.app_id.to_string(), &stranger.app_id.to_string()).unwrap();
    let output = rotator(&scenario, &["doctor"]).await;
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(failures(&out).iter().any(|line| line.contains("is not an owner of application") && line.contains("az ad app owner add")), "not an owner: {out}");

    // Missing Key Vault permission.
    let scenario = rotated().await;
    scenario.vault.set_access(Access::None);
    let output = rotator(&scenario, &["doctor"]).await;
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(failures(&out).iter().any(|line| line.contains("Key Vault") && line.contains(&scenario.vault.vault_url())), "missing Key Vault permission: {out}");

    // An expired stored secret: both stores hold a secret of ours that has expired.
    let scenario = Scenario::start().await.unwrap();
    let now = Utc::now();
    let expired = scenario
        .tenant
        .add_replicated_password(scenario.target.object_id, Some("entra-rotator dify-smtp".into()), now - ChronoDuration::days(200), now - ChronoDuration::days(1))
        .unwrap();
    let tags = [("managed-by", "entra-rotator"), ("keyId", &expired.key_id.to_string()[..]), ("appId", &scenario.target.app_id.to_string()[..]), ("rotation", "dify-smtp")];
    scenario.vault.seed(VAULT_SECRET, &expired.secret_text, &tags);
    let output = rotator(&scenario, &["doctor"]).await;
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(failures(&out).iter().any(|line| line.contains(&format!("keyId {}) expired", expired.key_id))), "expired stored secret: {out}");

    // An unreachable relay.
    let scenario = rotated().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    scenario.edit_config(&format!("port: {}", scenario.relay.port()), &format!("port: {closed}")).unwrap();
    let output = rotator(&scenario, &["doctor"]).await;
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(failures(&out).iter().any(|line| line.contains(&format!("localhost:{closed}"))), "unreachable relay: {out}");
}

mod cluster {
    //! `doctor --namespace` / `--all-namespaces`: the ClientSecretRotations of the cluster,
    //! prepared as the CronJob pass prepares them.

    use entra_rotator_standins::scenario::{Scenario};
    use serde_json::json;
    use std::process::Output;

    fn spec(scenario: &Scenario) -> serde_json::Value {
        scenario.rotation_spec("app-smtp", json!({}))
    }

    async fn rotator(scenario: &Scenario, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(args)
            .args(["--azure-config", scenario.config_path.to_str().unwrap()])
            .env("KUBECONFIG", scenario.kubeconfig_path())
            .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
            .env_remove("RUST_LOG")
            .output()
            .await
            .unwrap()
    }

    fn text(output: &Output) -> String {
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    #[tokio::test]
    async fn the_clusters_rotations_are_checked_as_the_cronjob_pass_sees_them() {
        let scenario = Scenario::start().await.unwrap();
        scenario.kubernetes.create_rotation("dify", "app-smtp", spec(&scenario)).unwrap();
        let pass = rotator(&scenario, &["run", "--namespace", "dify"]).await;
        assert!(pass.status.success(), "{}", text(&pass));

        let ready = rotator(&scenario, &["doctor", "--namespace", "dify"]).await;
        let out = text(&ready);
        assert_eq!(ready.status.code(), Some(0), "{out}");
        assert!(out.contains("dify/app-smtp (application") && out.contains("authenticates (handshake: no mail sent)"), "{out}");

        // A rotation in a namespace no RotationPolicy serves: refused before any call to Graph.
        scenario.kubernetes.create_namespace("intruder");
        scenario.kubernetes.create_rotation("intruder", "app-smtp", spec(&scenario)).unwrap();
        let everywhere = rotator(&scenario, &["doctor", "--all-namespaces", "--namespace", "dify"]).await;
        assert_eq!(everywhere.status.code(), Some(2), "--namespace and --all-namespaces together are refused: {}", text(&everywhere));
        let all = rotator(&scenario, &["doctor", "--all-namespaces"]).await;
        let out = text(&all);
        assert_eq!(all.status.code(), Some(1), "{out}");
        assert!(out.lines().any(|line| line.contains("[FAIL] NotAllowedByPolicy") && line.contains("intruder")), "{out}");
    }
}
