//! The Graph client reads the Entra sign-in log (issue 11 item 2, the adapter half): which
//! client secrets of an application still sign in, by keyId, against the Graph stand-in's
//! log over HTTPS. The stand-in records every sign-in at its token endpoint (and every
//! relay AUTH) with the keyId of the secret used, visible after the tenant's latency.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator::adapters::graph::{GraphClient, GraphConfig};
use entra_rotator::adapters::http::{http_client, TlsTrust};
use entra_rotator::adapters::identity::{rotator_credential, RotatorCredential};
use entra_rotator::domain::SecretString;
use entra_rotator_standins::graph::{AuditLogAccess, GraphStandin};
use entra_rotator_standins::tenant::{StandinApp, Tenant};
use entra_rotator_standins::tls::TestPki;
use std::time::Duration;
use uuid::Uuid;

struct Env {
    tenant: Tenant,
    graph: GraphStandin,
    http: reqwest::Client,
    rotator: StandinApp,
    rotator_secret: String,
    /// The application whose secrets are looked up: an old and a new one.
    app: StandinApp,
    old: (Uuid, String),
    new: (Uuid, String),
}

async fn env() -> Env {
    let pki = TestPki::generate().unwrap();
    let tenant = Tenant::new();
    let now = Utc::now();
    let password = |app: &StandinApp, name: &str| {
        let minted = tenant.add_password(app.object_id, Some(name.into()), now - ChronoDuration::minutes(1), now + ChronoDuration::days(30)).unwrap();
        (minted.key_id, minted.secret_text)
    };
    let rotator = tenant.register_app("entra-rotator");
    let (_, rotator_secret) = password(&rotator, "rotator");
    let app = tenant.register_app("dify-mail");
    let (old, new) = (password(&app, "old"), password(&app, "new"));
    let graph = GraphStandin::start(tenant.clone(), &pki).await.unwrap();
    let http = http_client(&TlsTrust { extra_root_pems: vec![pki.ca_pem().to_string()] }, Duration::from_secs(10)).unwrap();
    Env { tenant, graph, http, rotator, rotator_secret, app, old, new }
}

fn credential(env: &Env, app: &StandinApp, secret: &str) -> std::sync::Arc<dyn azure_core::credentials::TokenCredential> {
    let identity = RotatorCredential::ClientSecret {
        tenant_id: env.tenant.tenant_id.to_string(),
        client_id: app.app_id.to_string(),
        secret: SecretString::from(secret.to_string()),
    };
    rotator_credential(&identity, Some(&env.graph.authority_host()), env.http.clone()).unwrap()
}

fn rotator_client(env: &Env) -> GraphClient {
    GraphClient::new(GraphConfig::new(env.graph.graph_url()), credential(env, &env.rotator, &env.rotator_secret), env.http.clone()).unwrap()
}

/// A consumer of the application signs in with `secret` at the token endpoint.
async fn consumer_signs_in(env: &Env, secret: &str) {
    let scope = format!("{}/.default", env.graph.graph_url().as_str().trim_end_matches('/'));
    credential(env, &env.app, secret).get_token(&[scope.as_str()], None).await.unwrap();
}

#[tokio::test]
async fn the_log_names_the_secret_that_signed_in_once_its_latency_has_passed() {
    let env = env().await;
    env.tenant.set_sign_in_latency(Duration::from_secs(3600));
    consumer_signs_in(&env, &env.old.1).await;
    let graph = rotator_client(&env);
    let keys = [env.old.0, env.new.0];
    let since = Utc::now() - ChronoDuration::hours(1);

    let before = graph.last_sign_ins(env.app.app_id, &keys, since).await.unwrap();
    assert!(before.last_seen.is_empty() && before.complete, "not in the log yet: {before:?}");

    env.tenant.set_sign_in_latency(Duration::ZERO);
    let after = graph.last_sign_ins(env.app.app_id, &keys, since).await.unwrap();
    assert!(after.last_seen.contains_key(&env.old.0), "the old secret signed in: {after:?}");
    assert!(!after.last_seen.contains_key(&env.new.0), "the new one did not: {after:?}");
    assert!(graph.last_sign_ins(env.app.app_id, &keys, Utc::now() + ChronoDuration::minutes(1)).await.unwrap().last_seen.is_empty(), "outside the window");
}

#[tokio::test]
async fn a_busy_log_is_read_page_by_page_and_the_read_is_bounded() {
    let env = env().await;
    consumer_signs_in(&env, &env.old.1).await;
    // 2,500 newer sign-ins with the new secret: the old one is on the third page.
    for _ in 0..2_500 {
        env.tenant.sign_in(env.app.app_id, &env.new.1, "smtp").unwrap();
    }
    let graph = rotator_client(&env);
    let since = Utc::now() - ChronoDuration::hours(1);

    let scan = graph.last_sign_ins(env.app.app_id, &[env.old.0, env.new.0], since).await.unwrap();

    assert!(scan.complete, "{scan:?}");
    assert!(scan.last_seen.contains_key(&env.old.0) && scan.last_seen.contains_key(&env.new.0), "{scan:?}");
    assert!(env.graph.faults().count(entra_rotator_standins::graph::ROUTE_SIGN_INS) >= 3, "three pages or more");
}

#[tokio::test]
async fn a_tenant_without_the_licence_or_the_permission_says_which() {
    for (access, expected) in [
        (AuditLogAccess::NoLicence, "Microsoft Entra ID P1 or P2 licence"),
        (AuditLogAccess::NoPermission, "AuditLog.Read.All"),
    ] {
        let env = env().await;
        env.graph.set_audit_log_access(access);

        let error = rotator_client(&env).last_sign_ins(env.app.app_id, &[env.old.0], Utc::now() - ChronoDuration::hours(1)).await.unwrap_err();

        assert_eq!(error.sign_in_log_unavailable().map(|why| why.contains(expected)), Some(true), "{access:?}: {error}");
        assert!(error.to_string().contains("403"), "{access:?}: {error}");
    }
}

mod revocation {
    //! The check end to end (`run --config` with `requireUnusedFor`): an old secret that
    //! still signs in is not revoked; once the log shows it unused for the window, it is;
    //! a tenant whose log cannot be read says so and leaves the decision to the other checks.

    use chrono::Duration as ChronoDuration;
    use entra_rotator_standins::graph::AuditLogAccess;
    use entra_rotator_standins::scenario::Scenario;
    use std::process::Output;
    use uuid::Uuid;

    async fn run(scenario: &Scenario, extra: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(["run", "--config", scenario.config_path.to_str().unwrap()])
            .args(extra)
            .env("KUBECONFIG", scenario.kubeconfig_path())
            .env_remove("RUST_LOG")
            .output()
            .await
            .unwrap()
    }

    fn text(output: &Output) -> String {
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    /// Our secrets on the target, oldest first, with their values.
    fn ours(scenario: &Scenario) -> Vec<(Uuid, String)> {
        let mut mine: Vec<_> = scenario.target_now().passwords.into_iter().filter(|p| p.key_id != scenario.foreign_key_id).collect();
        mine.sort_by_key(|p| p.start);
        mine.into_iter().map(|p| (p.key_id, p.secret_text)).collect()
    }

    /// A scenario whose rotation waits for the sign-in log (one hour unused), with one
    /// secret of ours rotated in and a second minted by `--force`, the first still signing in.
    async fn rotated_twice_with_the_first_still_signing_in(access: AuditLogAccess) -> (Scenario, Uuid, Output) {
        let scenario = Scenario::start().await.unwrap();
        scenario.edit_config("    revokeGracePeriod: 0s\n", "    revokeGracePeriod: 0s\n    requireUnusedFor: 1h\n").unwrap();
        scenario.graph.set_audit_log_access(access);
        let first = run(&scenario, &[]).await;
        assert!(first.status.success(), "{}", text(&first));
        let (first_key, first_value) = ours(&scenario)[0].clone();
        // A consumer outside the cluster (a VM, a SaaS app) still uses the first secret.
        scenario.tenant.sign_in(scenario.target.app_id, &first_value, "smtp").unwrap();
        let second = run(&scenario, &["--force"]).await;
        (scenario, first_key, second)
    }

    #[tokio::test]
    async fn an_old_secret_that_still_signs_in_stays_until_it_has_been_unused_for_the_window() {
        let (scenario, first_key, second) = rotated_twice_with_the_first_still_signing_in(AuditLogAccess::Allowed).await;

        let out = text(&second);
        assert!(second.status.success(), "{out}");
        assert!(out.contains(&format!("keyId {first_key}")) && out.contains("still signs in"), "the hold names the key: {out}");
        assert!(ours(&scenario).iter().any(|(key, _)| *key == first_key), "the first secret is still live");

        // An hour later in the log's terms: no sign-in with the first secret since.
        scenario.tenant.backdate_sign_ins(ChronoDuration::minutes(61));
        let third = run(&scenario, &[]).await;

        assert!(third.status.success(), "{}", text(&third));
        let left = ours(&scenario);
        assert_eq!(left.len(), 1, "only the newest secret of ours is live: {left:?}");
        assert_ne!(left[0].0, first_key);
        assert!(!text(&third).contains("still signs in"), "{}", text(&third));
    }

    #[tokio::test]
    async fn a_tenant_without_the_licence_skips_the_check_and_says_so() {
        let (scenario, first_key, second) = rotated_twice_with_the_first_still_signing_in(AuditLogAccess::NoLicence).await;

        let out = text(&second);
        assert!(second.status.success(), "{out}");
        assert!(out.contains("sign-in check (requireUnusedFor) was skipped") && out.contains("P1 or P2 licence"), "{out}");
        assert!(!ours(&scenario).iter().any(|(key, _)| *key == first_key), "the other checks decided: revoked");
    }
}

mod operator {
    //! The same check from a ClientSecretRotation (`spec.requireUnusedFor`), CronJob pass:
    //! a rotator without AuditLog.Read.All revokes on the other checks, and the status's
    //! SignInCheck condition says what to grant.

    use entra_rotator_standins::graph::AuditLogAccess;
    use entra_rotator_standins::scenario::{Scenario};
    use serde_json::json;

    const NAMESPACE: &str = "dify";
    const NAME: &str = "app-smtp";

    async fn pass(scenario: &Scenario) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(["run", "--namespace", NAMESPACE, "--azure-config", scenario.config_path.to_str().unwrap()])
            .env("KUBECONFIG", scenario.kubeconfig_path())
            .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
            .env_remove("RUST_LOG")
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    }

    #[tokio::test]
    async fn without_audit_log_read_all_the_status_says_the_check_was_skipped_and_what_to_grant() {
        let scenario = Scenario::start().await.unwrap();
        scenario.graph.set_audit_log_access(AuditLogAccess::NoPermission);
        let spec = scenario.rotation_spec("app-smtp", json!({ "lifetime": "4320h", "revokeGracePeriod": "0s", "requireUnusedFor": "1h" }));
        scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();
        pass(&scenario).await;
        // A rotation asked for (the annotation): the next pass rotates and revokes the first secret.
        let requested = chrono::Utc::now().to_rfc3339();
        scenario.kubernetes.annotate_rotation(NAMESPACE, NAME, entra_rotator::operator::rotate_request::ROTATE_REQUESTED_AT, &requested).unwrap();
        pass(&scenario).await;

        let status = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"].clone();
        let condition = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "SignInCheck").cloned().unwrap_or_default();
        assert_eq!(condition["status"], "False", "{status}");
        assert_eq!(condition["reason"], "SignInLogUnavailable", "{status}");
        assert!(condition["message"].as_str().unwrap_or_default().contains("AuditLog.Read.All"), "{status}");
        let ours = scenario.target_now().passwords.into_iter().filter(|p| p.key_id != scenario.foreign_key_id).count();
        assert_eq!(ours, 1, "the other checks let the first secret go");
    }
}
