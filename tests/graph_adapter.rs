//! The production Graph client and the rotator's client-secret credential against the Graph
//! and token endpoint stand-in, over real HTTPS sockets.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator::adapters::graph::{GraphClient, GraphConfig, RetryPolicy};
use entra_rotator::adapters::http::{TlsTrust, http_client};
use entra_rotator::adapters::identity::{RotatorCredential, rotator_credential};
use entra_rotator::domain::{AppRef, ExposeSecret, SecretString, marker_for};
use entra_rotator::engine::ports::{Directory, GraphError};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{
    GraphStandin, ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION, ROUTE_REMOVE_PASSWORD, ROUTE_TOKEN,
};
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
    target: StandinApp,
    existing_key: Uuid,
}

async fn env() -> Env {
    let pki = TestPki::generate().unwrap();
    let tenant = Tenant::new();
    let now = Utc::now();
    let rotator = tenant.register_app("entra-rotator");
    let rotator_secret = tenant
        .add_password(
            rotator.object_id,
            Some("rotator".into()),
            now - ChronoDuration::minutes(1),
            now + ChronoDuration::days(30),
        )
        .unwrap()
        .secret_text;
    let target = tenant.register_app("dify-smtp");
    let existing_key = tenant
        .add_password(
            target.object_id,
            Some("made by hand".into()),
            now - ChronoDuration::days(300),
            now + ChronoDuration::days(65),
        )
        .unwrap()
        .key_id;
    let graph = GraphStandin::start(tenant.clone(), &pki).await.unwrap();
    let trust = TlsTrust {
        extra_root_pems: vec![pki.ca_pem().to_string()],
    };
    let http = http_client(&trust, Duration::from_secs(10)).unwrap();
    Env {
        tenant,
        graph,
        http,
        rotator,
        rotator_secret,
        target,
        existing_key,
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(2),
    }
}

fn rotator_identity(env: &Env, secret: &str) -> RotatorCredential {
    RotatorCredential::ClientSecret {
        tenant_id: env.tenant.tenant_id.to_string(),
        client_id: env.rotator.app_id.to_string(),
        secret: SecretString::from(secret.to_string()),
    }
}

fn client_with_secret(env: &Env, secret: &str) -> GraphClient {
    let credential = rotator_credential(
        &rotator_identity(env, secret),
        Some(&env.graph.authority_host()),
        env.http.clone(),
    )
    .unwrap();
    let config = GraphConfig {
        base_url: env.graph.graph_url(),
        retry: fast_retry(),
    };
    GraphClient::new(config, credential, env.http.clone()).unwrap()
}

fn client(env: &Env) -> GraphClient {
    client_with_secret(env, &env.rotator_secret)
}

fn target_ref(env: &Env, with_object_id: bool) -> AppRef {
    AppRef {
        tenant_id: env.tenant.tenant_id,
        client_id: env.target.app_id,
        object_id: with_object_id.then_some(env.target.object_id),
    }
}

#[tokio::test]
async fn reads_the_application_by_object_id_and_by_app_id() {
    let env = env().await;
    let graph = client(&env);

    let by_object = graph.application(&target_ref(&env, true)).await.unwrap();
    let by_app_id = graph.application(&target_ref(&env, false)).await.unwrap();

    assert_eq!(by_object, by_app_id);
    assert_eq!(by_object.object_id, env.target.object_id);
    assert_eq!(by_object.app_id, env.target.app_id);
    assert_eq!(by_object.display_name, "dify-smtp");
    let existing = by_object
        .credential(env.existing_key)
        .expect("the hand-made secret is listed");
    assert_eq!(existing.display_name.as_deref(), Some("made by hand"));
    assert_eq!(existing.hint.as_ref().map(String::len), Some(3));
    assert!(existing.end.is_some_and(|end| end > Utc::now()));
    assert_eq!(env.graph.faults().count(ROUTE_GET_APPLICATION), 2);
}

#[tokio::test]
async fn adds_then_removes_a_password() {
    let env = env().await;
    let graph = client(&env);
    let end = Utc::now() + ChronoDuration::days(180);

    let minted = graph
        .add_password(env.target.object_id, &marker_for("smtp"), end)
        .await
        .unwrap();

    let stored = env.tenant.app(env.target.object_id).unwrap();
    let password = stored
        .passwords
        .iter()
        .find(|p| p.key_id == minted.credential.key_id)
        .expect("minted in the tenant");
    assert_eq!(password.secret_text, minted.value.expose_secret());
    assert_eq!(password.display_name.as_deref(), Some("entra-rotator:smtp"));
    assert!((password.end - end).num_seconds().abs() <= 1);
    assert!(minted.credential.is_minted_by("smtp"));
    assert_eq!(
        minted.credential.hint.as_deref(),
        Some(&minted.value.expose_secret()[..3])
    );

    graph
        .remove_password(env.target.object_id, minted.credential.key_id)
        .await
        .unwrap();
    let after = env.tenant.app(env.target.object_id).unwrap();
    assert!(
        after
            .passwords
            .iter()
            .all(|p| p.key_id != minted.credential.key_id)
    );
    assert!(
        after.passwords.iter().any(|p| p.key_id == env.existing_key),
        "other secrets are untouched"
    );

    // Removing again is a no-op: Graph says the keyId is unknown and the goal is reached.
    graph
        .remove_password(env.target.object_id, minted.credential.key_id)
        .await
        .unwrap();
    assert_eq!(env.graph.faults().count(ROUTE_REMOVE_PASSWORD), 2);
}

#[tokio::test]
async fn an_unknown_application_is_a_404_that_names_it_and_says_what_to_check() {
    let env = env().await;
    let missing = AppRef {
        tenant_id: env.tenant.tenant_id,
        client_id: Uuid::new_v4(),
        object_id: None,
    };

    let error = client(&env).application(&missing).await.unwrap_err();

    let GraphError::Api {
        status,
        code,
        request_id,
        ..
    } = &error
    else {
        panic!("expected an API error, got {error:?}")
    };
    assert_eq!(*status, 404);
    assert_eq!(code, "Request_ResourceNotFound");
    assert!(
        request_id.is_some(),
        "Graph's request-id is kept for support cases"
    );
    let message = error.to_string();
    assert!(
        message.contains(&missing.client_id.to_string()),
        "{message}"
    );
    assert!(
        message.contains("Check the tenantId, clientId and objectId"),
        "{message}"
    );
    assert!(!error.is_transient());
}

#[tokio::test]
async fn forbidden_and_invalid_requests_explain_themselves() {
    let env = env().await;
    let graph = client(&env);
    env.graph
        .faults()
        .push(ROUTE_GET_APPLICATION, Fault::status(403));

    let forbidden = graph
        .application(&target_ref(&env, true))
        .await
        .unwrap_err();
    let message = forbidden.to_string();
    assert!(
        message.contains("HTTP 403 Authorization_RequestDenied"),
        "{message}"
    );
    assert!(
        message.contains("Application.ReadWrite.OwnedBy"),
        "{message}"
    );
    assert!(message.contains("owner of this application"), "{message}");
    assert!(!forbidden.is_transient());

    let three_years = Utc::now() + ChronoDuration::days(3 * 365);
    let too_long = graph
        .add_password(env.target.object_id, &marker_for("smtp"), three_years)
        .await
        .unwrap_err();
    let message = too_long.to_string();
    assert!(
        message.contains("HTTP 400 CredentialInvalidLifetimeAsPerAppPolicy"),
        "{message}"
    );
    assert!(message.contains("at most 730 days"), "{message}");
    assert_eq!(
        env.tenant
            .app(env.target.object_id)
            .unwrap()
            .passwords
            .len(),
        1,
        "nothing was minted"
    );
}

#[tokio::test]
async fn throttling_waits_for_retry_after_then_succeeds() {
    let env = env().await;
    env.graph
        .faults()
        .push(ROUTE_GET_APPLICATION, Fault::throttle(1));

    client(&env)
        .application(&target_ref(&env, true))
        .await
        .unwrap();

    assert_eq!(env.graph.faults().count(ROUTE_GET_APPLICATION), 2);
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retried_on_reads() {
    let env = env().await;
    let faults = env.graph.faults();
    faults.push_times(ROUTE_GET_APPLICATION, Fault::status(503), 2);

    client(&env)
        .application(&target_ref(&env, true))
        .await
        .unwrap();
    assert_eq!(faults.count(ROUTE_GET_APPLICATION), 3);

    faults.reset_counts();
    faults.push(ROUTE_GET_APPLICATION, Fault::drop_connection());
    client(&env)
        .application(&target_ref(&env, true))
        .await
        .unwrap();
    assert_eq!(faults.count(ROUTE_GET_APPLICATION), 2);
}

#[tokio::test]
async fn a_persistent_outage_gives_a_transient_error_after_the_configured_attempts() {
    let env = env().await;
    env.graph
        .faults()
        .push_times(ROUTE_GET_APPLICATION, Fault::status(503), 10);

    let error = client(&env)
        .application(&target_ref(&env, true))
        .await
        .unwrap_err();

    assert!(
        matches!(error, GraphError::Api { status: 503, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(
        error.to_string().contains("it will try again later"),
        "{error}"
    );
    assert_eq!(
        env.graph.faults().count(ROUTE_GET_APPLICATION),
        fast_retry().max_attempts as u64
    );
}

#[tokio::test]
async fn add_password_is_retried_only_when_graph_certainly_did_not_mint() {
    let env = env().await;
    let graph = client(&env);
    let faults = env.graph.faults();
    let end = Utc::now() + ChronoDuration::days(30);

    // A 5xx or a lost answer may hide a minted secret: report it, never mint a second one.
    faults.push(ROUTE_ADD_PASSWORD, Fault::status(500));
    let error = graph
        .add_password(env.target.object_id, &marker_for("smtp"), end)
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    faults.push(ROUTE_ADD_PASSWORD, Fault::drop_connection());
    let error = graph
        .add_password(env.target.object_id, &marker_for("smtp"), end)
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::Transport { .. }), "{error:?}");
    assert_eq!(faults.count(ROUTE_ADD_PASSWORD), 2);

    // 429 means Graph did nothing: retry.
    faults.push(ROUTE_ADD_PASSWORD, Fault::throttle(0));
    graph
        .add_password(env.target.object_id, &marker_for("smtp"), end)
        .await
        .unwrap();
    assert_eq!(faults.count(ROUTE_ADD_PASSWORD), 4);
    assert_eq!(
        env.tenant
            .app(env.target.object_id)
            .unwrap()
            .passwords
            .len(),
        2,
        "exactly one secret minted"
    );
}

#[tokio::test]
async fn a_bad_rotator_secret_is_an_auth_error_that_does_not_quote_the_secret() {
    let env = env().await;
    let wrong = "Wr0ng~secret.value-that-must-not-leak";
    let graph = client_with_secret(&env, wrong);

    let error = graph
        .application(&target_ref(&env, true))
        .await
        .unwrap_err();

    assert!(matches!(error, GraphError::Auth { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("AADSTS7000215"), "{message}");
    assert!(
        message.contains("Check the rotator's own identity"),
        "{message}"
    );
    assert!(!message.contains(wrong) && !format!("{error:?}").contains(wrong));
    assert!(!error.is_transient());
    assert_eq!(
        env.graph.faults().count(ROUTE_GET_APPLICATION),
        0,
        "Graph was not called without a token"
    );
}

#[tokio::test]
async fn one_token_serves_many_graph_calls() {
    let env = env().await;
    let graph = client(&env);

    for _ in 0..3 {
        graph.application(&target_ref(&env, true)).await.unwrap();
    }
    let minted = graph
        .add_password(
            env.target.object_id,
            "entra-rotator:x",
            Utc::now() + ChronoDuration::days(1),
        )
        .await
        .unwrap();
    graph
        .remove_password(env.target.object_id, minted.credential.key_id)
        .await
        .unwrap();

    assert_eq!(env.graph.faults().count(ROUTE_TOKEN), 1);
}

#[tokio::test]
async fn debug_output_never_shows_a_secret() {
    let env = env().await;
    let graph = client(&env);
    let minted = graph
        .add_password(
            env.target.object_id,
            "entra-rotator:x",
            Utc::now() + ChronoDuration::days(1),
        )
        .await
        .unwrap();
    let value = minted.value.expose_secret().to_string();

    assert!(!format!("{minted:?}").contains(&value));
    assert!(!format!("{graph:?}").contains(&env.rotator_secret));
    assert!(
        !format!("{:?}", rotator_identity(&env, &env.rotator_secret)).contains(&env.rotator_secret)
    );
}

#[tokio::test]
async fn the_stand_in_refuses_calls_without_a_graph_token_in_graphs_error_shape() {
    let env = env().await;
    let url = format!(
        "{}v1.0/applications/{}",
        env.graph.graph_url(),
        env.target.object_id
    );

    let response = env
        .http
        .get(&url)
        .header("client-request-id", "abc-123")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
    let request_id = response.headers()["request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(response.headers()["client-request-id"], "abc-123");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        body["error"]["innerError"]["request-id"],
        request_id.as_str()
    );
    assert!(body["error"]["innerError"]["date"].is_string());
}

#[tokio::test]
async fn an_add_password_answer_over_its_limit_is_refused_without_quoting_it() {
    let env = env().await;
    let graph = client(&env);
    let secret = "s".repeat(100 * 1024);
    let answer = serde_json::json!({
        "keyId": Uuid::new_v4(),
        "displayName": marker_for("smtp"),
        "secretText": secret,
    });
    env.graph.faults().push(ROUTE_ADD_PASSWORD, Fault::status(200).body(answer));

    let error = graph
        .add_password(env.target.object_id, &marker_for("smtp"), Utc::now() + ChronoDuration::days(30))
        .await
        .expect_err("an answer over 64 KiB is refused");

    let message = error.to_string();
    assert!(matches!(error, GraphError::Protocol { .. }), "{message}");
    assert!(!error.is_transient(), "the same peer would send the same answer: {message}");
    assert!(message.contains("answered POST /v1.0/applications/"), "{message}");
    assert!(message.contains("with a body over 64 KiB"), "{message}");
    assert!(message.contains("check that azure.graphUrl points at Microsoft Graph"), "{message}");
    assert!(!message.contains("sss"), "the answer is not quoted: {message}");
    assert_eq!(env.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "not retried");
}

#[tokio::test]
async fn a_listing_page_over_its_limit_is_refused() {
    use entra_rotator::adapters::graph::ListScope;
    use entra_rotator_standins::graph::ROUTE_LIST_APPLICATIONS;
    let env = env().await;
    let graph = client(&env);
    let page = serde_json::json!({ "value": [], "padding": "p".repeat(17 * 1024 * 1024) });
    env.graph.faults().push(ROUTE_LIST_APPLICATIONS, Fault::status(200).body(page));

    let mut pages = graph.list_applications(&ListScope::Tenant { name_prefix: None }, 999).unwrap();
    let error = pages.next_page().await.expect_err("a page over 16 MiB is refused");

    let message = error.to_string();
    assert!(message.contains("answered GET /v1.0/applications with a body over 16 MiB"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Fidelity of the stand-in itself: what real clients (MSAL, the Graph SDKs) rely on
// ---------------------------------------------------------------------------------------------

const DOMAIN: &str = "contoso.onmicrosoft.com";

fn graph_token(env: &Env) -> String {
    env.tenant.issue_token(
        env.rotator.app_id,
        "https://graph.microsoft.com/.default",
        Duration::from_secs(600),
    )
}

async fn get_json(
    env: &Env,
    path_and_query: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let url = format!("{}{path_and_query}", env.graph.graph_url());
    let response = env
        .http
        .get(&url)
        .bearer_auth(graph_token(env))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

async fn post_json(
    env: &Env,
    path: &str,
    body: serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let url = format!("{}{path}", env.graph.graph_url());
    let response = env
        .http
        .post(&url)
        .bearer_auth(graph_token(env))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn the_openid_configuration_names_the_tenant_by_id_whether_asked_by_id_or_domain() {
    let env = env().await;
    env.tenant.add_verified_domain(DOMAIN);
    let tenant_id = env.tenant.tenant_id.to_string();
    for name in [tenant_id.as_str(), DOMAIN, "CONTOSO.onmicrosoft.com"] {
        let (status, _, body) = get_json(
            &env,
            &format!("{name}/v2.0/.well-known/openid-configuration"),
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        let base = env
            .graph
            .authority_host()
            .as_str()
            .trim_end_matches('/')
            .to_string();
        assert_eq!(
            body["token_endpoint"],
            format!("{base}/{tenant_id}/oauth2/v2.0/token")
        );
        assert_eq!(
            body["authorization_endpoint"],
            format!("{base}/{tenant_id}/oauth2/v2.0/authorize")
        );
        assert_eq!(body["issuer"], format!("{base}/{tenant_id}/v2.0"));
        let methods = body["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap();
        assert!(
            methods.contains(&"client_secret_basic".into())
                && methods.contains(&"client_secret_post".into())
        );
    }

    let (status, _, body) = get_json(
        &env,
        "fabrikam.onmicrosoft.com/v2.0/.well-known/openid-configuration",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_tenant");
    assert_eq!(body["error_codes"], serde_json::json!([90002]));
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with("AADSTS90002: Tenant 'fabrikam.onmicrosoft.com' not found."),
        "{description}"
    );
    // Entra separates the trace id, correlation id and time by CRLF, and repeats them as fields.
    let lines: Vec<&str> = description.split("\r\n").collect();
    assert_eq!(lines.len(), 4, "{description:?}");
    assert_eq!(
        lines[1],
        format!("Trace ID: {}", body["trace_id"].as_str().unwrap())
    );
    assert_eq!(
        lines[2],
        format!(
            "Correlation ID: {}",
            body["correlation_id"].as_str().unwrap()
        )
    );
    assert_eq!(
        lines[3],
        format!("Timestamp: {}", body["timestamp"].as_str().unwrap())
    );
}

#[tokio::test]
async fn instance_discovery_knows_the_stand_ins_host_and_no_other() {
    let env = env().await;
    let authority = env.graph.authority_host();
    let host = authority.host_str().unwrap();
    // MSAL sends the authority's host without its port.
    let known = format!("https://{host}/{DOMAIN}/oauth2/v2.0/authorize");
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("api-version", "1.1")
        .append_pair("authorization_endpoint", &known)
        .finish();
    let (status, _, body) = get_json(&env, &format!("common/discovery/instance?{query}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["tenant_discovery_endpoint"],
        format!(
            "{}{DOMAIN}/v2.0/.well-known/openid-configuration",
            authority
        )
    );
    assert!(body["metadata"][0]["aliases"].is_array());

    let unknown = "https://login.example.com/common/oauth2/v2.0/authorize";
    let (status, _, body) = get_json(
        &env,
        &format!("common/discovery/instance?api-version=1.1&authorization_endpoint={unknown}"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_instance");
    assert_eq!(body["error_codes"], serde_json::json!([50049]));
}

#[tokio::test]
async fn the_token_endpoint_accepts_http_basic_client_authentication_and_a_domain_as_tenant() {
    use base64::Engine as _;
    let env = env().await;
    env.tenant.add_verified_domain(DOMAIN);
    let token_url = format!("{}{DOMAIN}/oauth2/v2.0/token", env.graph.authority_host());
    let basic = |secret: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            env.rotator.app_id,
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
        ))
    };
    let form = "grant_type=client_credentials&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default";

    let response = env
        .http
        .post(&token_url)
        .header(
            "authorization",
            format!("Basic {}", basic(&env.rotator_secret)),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        env.tenant.token(token).unwrap().client_id,
        env.rotator.app_id
    );

    let response = env
        .http
        .post(&token_url)
        .header("authorization", format!("Basic {}", basic("wrong")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], serde_json::json!([7000215]));
}

#[tokio::test]
async fn a_write_to_an_application_the_rotator_does_not_own_is_denied_and_says_which_permission() {
    let env = env().await;
    env.graph.require_ownership();
    let graph = client(&env);
    let end = Utc::now() + ChronoDuration::days(30);

    let denied = graph
        .add_password(env.target.object_id, &marker_for("smtp"), end)
        .await
        .unwrap_err();

    let GraphError::Api { status, code, .. } = &denied else {
        panic!("expected an API error, got {denied:?}")
    };
    assert_eq!(
        (*status, code.as_str()),
        (403, "Authorization_RequestDenied")
    );
    let message = denied.to_string();
    assert!(
        message.contains("Insufficient privileges to complete the operation"),
        "{message}"
    );
    assert!(message.contains("owner of this application"), "{message}");
    assert_eq!(
        env.tenant
            .app(env.target.object_id)
            .unwrap()
            .passwords
            .len(),
        1,
        "nothing was minted"
    );

    env.graph
        .add_owner(env.target.object_id, env.rotator.app_id);
    let minted = graph
        .add_password(env.target.object_id, &marker_for("smtp"), end)
        .await
        .unwrap();
    graph
        .remove_password(env.target.object_id, minted.credential.key_id)
        .await
        .unwrap();
}

#[tokio::test]
async fn get_application_carries_key_credentials_and_the_collection_filters_by_app_id() {
    let env = env().await;
    let now = Utc::now();
    let certificate = env.graph.add_certificate(
        env.target.object_id,
        "signing",
        now,
        now + ChronoDuration::days(90),
    );

    let (status, _, app) =
        get_json(&env, &format!("v1.0/applications/{}", env.target.object_id)).await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["keyCredentials"][0]["keyId"], certificate.to_string());
    assert_eq!(app["keyCredentials"][0]["type"], "AsymmetricX509Cert");

    let filter = format!("appId eq '{}'", env.target.app_id);
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("$filter", &filter)
        .append_pair("$select", "id,appId")
        .finish();
    let (status, _, page) = get_json(&env, &format!("v1.0/applications?{query}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["value"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["value"][0]["id"], env.target.object_id.to_string());

    let (status, _, refused) = get_json(&env, "v1.0/applications?$filter=appId%20ne%20'x'").await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "Request_UnsupportedQuery");
}

#[tokio::test]
async fn writes_near_and_past_the_limit_carry_graphs_throttle_headers() {
    let env = env().await;
    env.graph
        .set_write_budget(2, 100, Duration::from_secs(3600));
    let path = format!("v1.0/applications/{}/addPassword", env.target.object_id);
    let body = serde_json::json!({"passwordCredential": {"displayName": "x"}});

    let (first, headers, _) = post_json(&env, &path, body.clone()).await;
    assert_eq!(first, 200);
    assert!(
        headers.get("x-ms-throttle-limit-percentage").is_none(),
        "half the limit is below 80 %"
    );
    let (second, headers, _) = post_json(&env, &path, body.clone()).await;
    assert_eq!(second, 200);
    assert_eq!(headers["x-ms-throttle-limit-percentage"], "1.00");
    let (third, headers, refused) = post_json(&env, &path, body).await;
    assert_eq!(third, 429, "{refused}");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        headers["x-ms-throttle-scope"],
        format!(
            "Tenant_Application/Write/{}/{}",
            env.rotator.app_id, env.tenant.tenant_id
        )
        .as_str()
    );
    assert_eq!(headers["x-ms-throttle-information"], "WriteLimitExceeded");
}

#[tokio::test]
async fn a_remove_password_before_replication_is_graphs_400_although_the_credential_exists() {
    let env = env().await;
    env.graph.set_replication_delay(Duration::from_secs(3600));
    let (_, _, minted) = post_json(
        &env,
        &format!("v1.0/applications/{}/addPassword", env.target.object_id),
        serde_json::json!({"passwordCredential": {"displayName": "new"}}),
    )
    .await;
    let key_id = minted["keyId"].as_str().unwrap().to_string();

    let (status, _, body) = post_json(
        &env,
        &format!("v1.0/applications/{}/removePassword", env.target.object_id),
        serde_json::json!({"keyId": key_id}),
    )
    .await;

    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("No password credential found with keyId {key_id}.")
    );
    let listed: Vec<String> = env
        .tenant
        .app(env.target.object_id)
        .unwrap()
        .passwords
        .iter()
        .map(|p| p.key_id.to_string())
        .collect();
    assert!(listed.contains(&key_id), "the credential is still there");
    // One that replicated long ago is removed at once.
    let now = Utc::now();
    let old = env
        .tenant
        .add_replicated_password(
            env.target.object_id,
            Some("old".into()),
            now,
            now + ChronoDuration::days(9),
        )
        .unwrap();
    let (status, _, _) = post_json(
        &env,
        &format!("v1.0/applications/{}/removePassword", env.target.object_id),
        serde_json::json!({"keyId": old.key_id}),
    )
    .await;
    assert_eq!(status, 204);
}

/// Many applications through `$batch`: 20 a batch, answers in the order asked whatever
/// order Graph answers in, each equal to a plain read; an unknown application fails alone.
#[tokio::test]
async fn many_applications_are_read_twenty_a_batch_each_as_a_plain_read_would() {
    use entra_rotator_standins::graph::ROUTE_BATCH;
    let env = env().await;
    let graph = client(&env);
    let mut apps: Vec<AppRef> = (0..24)
        .map(|i| {
            let app = env.tenant.register_app(&format!("mail-{i}"));
            AppRef { tenant_id: env.tenant.tenant_id, client_id: app.app_id, object_id: (i % 2 == 0).then_some(app.object_id) }
        })
        .collect();
    apps.insert(3, AppRef { tenant_id: env.tenant.tenant_id, client_id: Uuid::new_v4(), object_id: Some(Uuid::new_v4()) });
    apps.push(target_ref(&env, true));
    let read = graph.applications(&apps).await;
    assert_eq!(env.graph.faults().count(ROUTE_BATCH), 2, "26 reads: a batch of 20 and one of 6");
    assert_eq!(env.graph.faults().count(ROUTE_GET_APPLICATION), 26);
    for (app, result) in apps.iter().zip(&read) {
        match result {
            Ok(found) => assert_eq!(found.app_id, app.client_id, "answers in the order asked"),
            Err(error) => {
                assert_eq!(app, &apps[3], "only the unknown application fails: {error}");
                assert!(matches!(error, GraphError::Api { status: 404, .. }), "{error}");
                assert!(error.to_string().contains(&app.client_id.to_string()), "names it: {error}");
            }
        }
    }
    assert!(read[3].is_err());
    let target = read.last().unwrap().as_ref().unwrap();
    assert_eq!(target, &graph.application(&target_ref(&env, true)).await.unwrap(), "the same as a plain read");
}

/// A batch Graph (or a proxy before it) refuses whole is read one application at a time.
#[tokio::test]
async fn a_batch_refused_whole_is_read_one_application_at_a_time() {
    use entra_rotator_standins::graph::ROUTE_BATCH;
    let env = env().await;
    let graph = client(&env);
    env.graph.faults().push(ROUTE_BATCH, Fault::status(400));
    let apps = vec![target_ref(&env, true), target_ref(&env, false)];
    let read = graph.applications(&apps).await;
    assert!(read.iter().all(Result::is_ok), "{read:?}");
    assert_eq!(env.graph.faults().count(ROUTE_BATCH), 1);
    assert_eq!(env.graph.faults().count(ROUTE_GET_APPLICATION), 2, "then two plain reads");
}
