//! The Graph stand-in's JSON batching (`POST /v1.0/$batch`) on the wire, as Microsoft
//! Learn's "Combine multiple HTTP requests using JSON batching" describes it, with a plain
//! HTTPS client: answers correlated by `id`, per-request status and headers, one request
//! throttled or refused alone, and the batch refused whole when it breaks the format.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator::adapters::http::{TlsTrust, http_client};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{
    GraphStandin, ROUTE_BATCH, ROUTE_GET_APPLICATION, application_read_route,
};
use entra_rotator_standins::tenant::{StandinApp, Tenant};
use entra_rotator_standins::tls::TestPki;
use serde_json::{Value, json};
use std::time::Duration;

struct Env {
    graph: GraphStandin,
    http: reqwest::Client,
    token: String,
    apps: Vec<StandinApp>,
}

async fn env() -> Env {
    let pki = TestPki::generate().unwrap();
    let tenant = Tenant::new();
    let rotator = tenant.register_app("entra-rotator");
    let apps: Vec<StandinApp> = (0..3)
        .map(|i| tenant.register_app(&format!("mail-{i}")))
        .collect();
    let now = Utc::now();
    for app in &apps {
        tenant
            .add_password(
                app.object_id,
                Some("by hand".into()),
                now,
                now + ChronoDuration::days(30),
            )
            .unwrap();
    }
    let graph = GraphStandin::start(tenant.clone(), &pki).await.unwrap();
    let token = tenant.issue_token(
        rotator.app_id,
        "https://graph.microsoft.com/.default",
        Duration::from_secs(600),
    );
    let trust = TlsTrust {
        extra_root_pems: vec![pki.ca_pem().to_string()],
    };
    let http = http_client(&trust, Duration::from_secs(10)).unwrap();
    Env {
        graph,
        http,
        token,
        apps,
    }
}

async fn post_batch(env: &Env, body: Value) -> (u16, Value) {
    let url = format!("{}v1.0/$batch", env.graph.graph_url());
    let response = env
        .http
        .post(url)
        .bearer_auth(&env.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn read(id: &str, app: &StandinApp) -> Value {
    json!({ "id": id, "method": "GET", "url": format!("/applications/{}?$select=id,appId,passwordCredentials", app.object_id) })
}

fn answer<'a>(body: &'a Value, id: &str) -> &'a Value {
    body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no answer for {id}: {body}"))
}

#[tokio::test]
async fn each_request_is_answered_under_its_id_with_its_own_status() {
    let env = env().await;
    let missing = uuid::Uuid::new_v4();
    let body = json!({ "requests": [
        read("a", &env.apps[0]),
        // The alternate key and no leading slash, as Learn's own example writes it.
        { "id": "b", "method": "GET", "url": format!("applications(appId='{}')?$select=id,appId", env.apps[1].app_id) },
        { "id": "c", "method": "GET", "url": format!("/applications/{missing}") },
    ]});
    let (status, body) = post_batch(&env, body).await;
    assert_eq!(status, 200, "{body}");
    let order: Vec<&str> = body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_ne!(
        order,
        ["a", "b", "c"],
        "answers come in another order: clients must pair them by id"
    );
    let a = answer(&body, "a");
    assert_eq!(a["status"], 200);
    assert_eq!(a["body"]["id"], env.apps[0].object_id.to_string());
    assert_eq!(
        a["body"]["passwordCredentials"][0]["displayName"],
        "by hand"
    );
    assert!(
        a["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("application/json"),
        "{a}"
    );
    assert_eq!(
        answer(&body, "b")["body"]["appId"],
        env.apps[1].app_id.to_string()
    );
    let c = answer(&body, "c");
    assert_eq!(c["status"], 404);
    assert_eq!(c["body"]["error"]["code"], "Request_ResourceNotFound");
    assert_eq!(env.graph.faults().count(ROUTE_BATCH), 1);
    assert_eq!(
        env.graph.faults().count(ROUTE_GET_APPLICATION),
        3,
        "each request goes through its own route"
    );
}

#[tokio::test]
async fn one_request_is_throttled_alone_with_its_retry_after() {
    let env = env().await;
    env.graph.faults().push(
        &application_read_route(env.apps[1].object_id),
        Fault::throttle(3),
    );
    let requests: Vec<Value> = env
        .apps
        .iter()
        .enumerate()
        .map(|(i, app)| read(&i.to_string(), app))
        .collect();
    let (status, body) = post_batch(&env, json!({ "requests": requests })).await;
    assert_eq!(status, 200, "the batch itself succeeds");
    let throttled = answer(&body, "1");
    assert_eq!(throttled["status"], 429);
    assert_eq!(throttled["headers"]["retry-after"], "3");
    assert_eq!(throttled["body"]["error"]["code"], "TooManyRequests");
    for id in ["0", "2"] {
        assert_eq!(answer(&body, id)["status"], 200, "{id} is answered");
    }
}

#[tokio::test]
async fn a_batch_breaking_the_format_is_refused_whole() {
    let env = env().await;
    let too_many: Vec<Value> = (0..21)
        .map(|i| read(&i.to_string(), &env.apps[i % 3]))
        .collect();
    let cases = [
        ("21 requests", json!({ "requests": too_many })),
        (
            "ids differing only in case",
            json!({ "requests": [read("x", &env.apps[0]), read("X", &env.apps[1])] }),
        ),
        (
            "a request without a url",
            json!({ "requests": [{ "id": "1", "method": "GET" }] }),
        ),
        (
            "a body without Content-Type",
            json!({ "requests": [{ "id": "1", "method": "POST", "url": format!("/applications/{}/addPassword", env.apps[0].object_id), "body": {} }] }),
        ),
        ("no requests", json!({})),
    ];
    for (case, body) in cases {
        let (status, answer) = post_batch(&env, body).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(answer["error"]["code"], "BadRequest", "{case}");
    }
    assert_eq!(
        env.graph.faults().count(ROUTE_GET_APPLICATION),
        0,
        "nothing of a refused batch ran"
    );
}

#[tokio::test]
async fn a_batch_needs_a_graph_token() {
    let env = env().await;
    let url = format!("{}v1.0/$batch", env.graph.graph_url());
    let response = env
        .http
        .post(url)
        .json(&json!({ "requests": [read("1", &env.apps[0])] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
