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
