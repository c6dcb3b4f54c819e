//! The Graph stand-in's delta query on applications (`GET /v1.0/applications/delta`) on the
//! wire, as Microsoft Learn's "application: delta" and "Use delta query" describe it, with
//! a plain HTTPS client: a first round paged by `@odata.nextLink` to an `@odata.deltaLink`,
//! `$select` carried by the tokens, a later round with only what changed (credentials
//! added or removed, an application created or deleted, as `@removed`), and an expired
//! token refused as Graph refuses it (400 `syncStateNotFound`).

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator::adapters::http::{TlsTrust, http_client};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{GraphStandin, ROUTE_APPLICATIONS_DELTA};
use entra_rotator_standins::tenant::{StandinApp, Tenant};
use entra_rotator_standins::tls::TestPki;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

struct Env {
    tenant: Tenant,
    graph: GraphStandin,
    http: reqwest::Client,
    token: String,
    /// The rotator's own registration and three more.
    apps: Vec<StandinApp>,
}

async fn env() -> Env {
    let pki = TestPki::generate().unwrap();
    let tenant = Tenant::new();
    let mut apps = vec![tenant.register_app("entra-rotator")];
    apps.extend((0..3).map(|i| tenant.register_app(&format!("mail-{i}"))));
    let graph = GraphStandin::start(tenant.clone(), &pki).await.unwrap();
    let token = tenant.issue_token(apps[0].app_id, "https://graph.microsoft.com/.default", Duration::from_secs(600));
    let trust = TlsTrust { extra_root_pems: vec![pki.ca_pem().to_string()] };
    let http = http_client(&trust, Duration::from_secs(10)).unwrap();
    Env { tenant, graph, http, token, apps }
}

async fn get(env: &Env, url: &str) -> (u16, Value) {
    let response = env.http.get(url).bearer_auth(&env.token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Follows one round from `url`: every page's entries, and the deltaLink.
async fn round(env: &Env, url: &str) -> (Vec<Value>, String) {
    let mut entries = Vec::new();
    let mut url = url.to_string();
    loop {
        let (status, page) = get(env, &url).await;
        assert_eq!(status, 200, "{page}");
        entries.extend(page["value"].as_array().unwrap().iter().cloned());
        match (page["@odata.nextLink"].as_str(), page["@odata.deltaLink"].as_str()) {
            (Some(next), None) => {
                assert!(next.contains("$skiptoken="), "{next}");
                url = next.to_string();
            }
            (None, Some(delta)) => {
                assert!(delta.contains("$deltatoken="), "{delta}");
                return (entries, delta.to_string());
            }
            other => panic!("a page has one of nextLink and deltaLink: {other:?} in {page}"),
        }
    }
}

fn first_url(env: &Env) -> String {
    format!("{}v1.0/applications/delta?$select=id,appId,passwordCredentials", env.graph.graph_url())
}

fn ids(entries: &[Value]) -> BTreeSet<String> {
    entries.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_first_round_pages_every_application_with_the_selected_properties_to_a_delta_link() {
    let env = env().await;
    env.graph.set_delta_page_size(3);
    let (entries, _) = round(&env, &first_url(&env)).await;
    assert_eq!(env.graph.faults().count(ROUTE_APPLICATIONS_DELTA), 2, "4 applications, 3 a page");
    let all: BTreeSet<String> = env.apps.iter().map(|a| a.object_id.to_string()).collect();
    assert_eq!(ids(&entries), all);
    for entry in &entries {
        assert!(entry.get("passwordCredentials").is_some() && entry.get("appId").is_some(), "{entry}");
        assert!(entry.get("displayName").is_none(), "not selected: {entry}");
    }
    // The fully qualified name is the same function.
    let qualified = format!("{}v1.0/applications/microsoft.graph.delta", env.graph.graph_url());
    let (entries, _) = round(&env, &qualified).await;
    assert_eq!(ids(&entries), all);
}

#[tokio::test]
async fn a_round_from_the_delta_link_returns_only_what_changed_and_removed_ones_as_removed() {
    let env = env().await;
    let (_, delta) = round(&env, &first_url(&env)).await;
    let (entries, delta) = round(&env, &delta).await;
    assert!(entries.is_empty(), "nothing changed: {entries:?}");

    let now = Utc::now();
    let added = env.tenant.add_password(env.apps[1].object_id, Some("by hand".into()), now, now + ChronoDuration::days(30)).unwrap();
    let created = env.tenant.register_app("mail-new");
    assert!(env.tenant.delete_app(env.apps[3].object_id, false));
    let (entries, delta) = round(&env, &delta).await;
    assert_eq!(
        ids(&entries),
        [env.apps[1].object_id, created.object_id, env.apps[3].object_id].iter().map(ToString::to_string).collect()
    );
    let changed = entries.iter().find(|e| e["id"] == env.apps[1].object_id.to_string()).unwrap();
    assert_eq!(changed["passwordCredentials"][0]["keyId"], added.key_id.to_string(), "{changed}");
    assert_eq!(changed["appId"], env.apps[1].app_id.to_string(), "the whole selected representation: {changed}");
    let deleted = entries.iter().find(|e| e["id"] == env.apps[3].object_id.to_string()).unwrap();
    assert_eq!(deleted["@removed"]["reason"], "changed", "soft-deleted: {deleted}");

    // A secret removed in the portal is a change too.
    assert!(env.tenant.remove_password(env.apps[1].object_id, added.key_id));
    let (entries, _) = round(&env, &delta).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["passwordCredentials"], Value::Array(vec![]));
}

#[tokio::test]
async fn an_expired_or_unknown_token_is_refused_as_graph_refuses_it() {
    let env = env().await;
    let (_, delta) = round(&env, &first_url(&env)).await;
    env.graph.expire_delta_tokens();
    let (status, body) = get(&env, &delta).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "syncStateNotFound", "{body}");
    let made_up = format!("{}v1.0/applications/delta?$deltatoken=not-a-token", env.graph.graph_url());
    let (status, body) = get(&env, &made_up).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("syncStateNotFound")), "{body}");
    // A new first round works.
    let (entries, _) = round(&env, &first_url(&env)).await;
    assert_eq!(entries.len(), 4);
}

#[tokio::test]
async fn delta_pages_are_counted_and_throttled_like_every_route() {
    let env = env().await;
    env.graph.faults().push(ROUTE_APPLICATIONS_DELTA, Fault::throttle(7));
    let response = env.http.get(first_url(&env)).bearer_auth(&env.token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let (entries, _) = round(&env, &first_url(&env)).await;
    assert_eq!(entries.len(), 4);
    assert_eq!(env.graph.faults().count(ROUTE_APPLICATIONS_DELTA), 2);
}
