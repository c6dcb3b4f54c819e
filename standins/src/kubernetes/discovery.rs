//! API discovery as kubectl and helm read it: `/api`, `/api/v1`, `/apis` and
//! `/apis/{group}/{version}` in the legacy (unaggregated) format.
//!
//! kubectl 1.34 asks for aggregated discovery (`application/json;g=apidiscovery.k8s.io;v=v2;
//! as=APIGroupDiscoveryList`) with plain `application/json` as its last choice; a server
//! without aggregated discovery answers the legacy documents as `application/json`, and the
//! client then fetches each group version, as it does here.

use super::kinds::{ApiError, Kind, KindInfo, every_served_kind};
use super::{Refusal, Shared, ok};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

/// The verbs every resource of the generic store and Secrets accept, as discovery spells them.
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The kinds discovery announces now: the custom resource only once its CRD is registered.
pub(super) fn served(shared: &Shared) -> Vec<Kind> {
    let cluster = shared.cluster();
    every_served_kind()
        .filter(|kind| kind.info().built_in || cluster.custom_resource(*kind).is_some())
        .collect()
}

/// `serverAddressByClientCIDRs`: the address clients reach this server at.
fn server_address(headers: &HeaderMap) -> Value {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    json!([{ "clientCIDR": "0.0.0.0/0", "serverAddress": host }])
}

/// `GET /api`: the core group's versions.
pub(super) async fn core_versions(headers: HeaderMap) -> Response {
    ok(
        StatusCode::OK,
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": server_address(&headers),
        }),
    )
}

/// `GET /apis`: every named group with the versions served.
pub(super) async fn groups(State(shared): State<Shared>) -> Response {
    let mut names: Vec<&str> = Vec::new();
    let mut groups: Vec<Value> = Vec::new();
    for kind in served(&shared) {
        let info = kind.info();
        if info.group.is_empty() || names.contains(&info.group) {
            continue;
        }
        names.push(info.group);
        let version = json!({ "groupVersion": info.api_version(), "version": info.version });
        groups.push(json!({
            "name": info.group,
            "versions": [version],
            "preferredVersion": version,
        }));
    }
    ok(
        StatusCode::OK,
        json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
    )
}

fn resource(info: &KindInfo) -> Value {
    json!({
        "name": info.plural,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": VERBS,
        "shortNames": info.short_names,
    })
}

fn status_resource(info: &KindInfo) -> Value {
    json!({
        "name": format!("{}/status", info.plural),
        "singularName": "",
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": ["get", "patch", "update"],
    })
}

fn resource_list(shared: &Shared, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    if group.is_empty() && version == "v1" {
        resources.push(json!({
            "name": "namespaces", "singularName": "namespace", "namespaced": false,
            "kind": "Namespace", "verbs": ["create", "get", "list", "patch"], "shortNames": ["ns"],
        }));
        resources.push(json!({
            "name": "events", "singularName": "event", "namespaced": true,
            "kind": "Event", "verbs": ["list"], "shortNames": ["ev"],
        }));
    }
    for kind in served(shared) {
        let info = kind.info();
        if info.group != group || info.version != version {
            continue;
        }
        resources.push(resource(info));
        if info.status_subresource {
            resources.push(status_resource(info));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// `GET /api/v1`.
pub(super) async fn core_resources(State(shared): State<Shared>) -> Result<Response, Refusal> {
    resource_list(&shared, "", "v1")
        .map(|list| ok(StatusCode::OK, list))
        .ok_or_else(|| ApiError::no_such_resource().into())
}

/// `GET /apis/{group}/{version}`: 404 for a group version not served, as a real server.
pub(super) async fn group_resources(
    State(shared): State<Shared>,
    Path((group, version)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    resource_list(&shared, &group, &version)
        .map(|list| ok(StatusCode::OK, list))
        .ok_or_else(|| ApiError::no_such_resource().into())
}
