//! OpenAPI v3 as kubectl reads it: the root document (`/openapi/v3`) lists one document per
//! group version; each (`/openapi/v3/apis/{group}/{version}`) names the kinds it serves
//! (`x-kubernetes-group-version-kind`) and offers `fieldValidation` on `PATCH`, so kubectl
//! leaves field validation to the server (`fieldValidation=Strict`) instead of validating
//! against schemas the stand-in does not carry. A custom resource whose CRD is registered
//! carries the CRD's `openAPIV3Schema` (which `kubectl explain` reads); built-in kinds get an
//! open object schema, so `kubectl explain` has nothing to say about them.
//!
//! `/openapi/v2` is not served: kubectl 1.34 and helm 4 read v3 and only fall back to v2
//! when v3 is missing, and a 404 is what a server without v2 answers.

use super::kinds::{Kind, KindInfo};
use super::{Refusal, Shared, ok};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

/// The group version's path as the root document keys it: `api/v1`, `apis/apps/v1`.
fn document_path(info: &KindInfo) -> String {
    if info.group.is_empty() {
        format!("api/{}", info.version)
    } else {
        format!("apis/{}/{}", info.group, info.version)
    }
}

/// `GET /openapi/v3`: one entry per group version served.
pub(super) async fn root(State(shared): State<Shared>) -> Response {
    let mut paths = Map::new();
    for kind in super::discovery::served(&shared) {
        let path = document_path(kind.info());
        let url = format!(
            "/openapi/v3/{path}?hash={}",
            shared.cluster().resource_version
        );
        paths.insert(path, json!({ "serverRelativeURL": url }));
    }
    ok(StatusCode::OK, json!({ "paths": paths }))
}

fn gvk(info: &KindInfo) -> Value {
    json!({ "group": info.group, "version": info.version, "kind": info.kind })
}

/// The schema name a real server uses, e.g. `io.k8s.api.core.v1.Secret` or, for a custom
/// resource, `io.entra-rotator.v1alpha1.ClientSecretRotation` (the group reversed).
fn schema_name(info: &KindInfo) -> String {
    let package = match info.group {
        "" => "io.k8s.api.core".to_string(),
        "apps" | "coordination.k8s.io" | "events.k8s.io" => {
            format!(
                "io.k8s.api.{}",
                info.group.split('.').next().unwrap_or(info.group)
            )
        }
        group => group.split('.').rev().collect::<Vec<_>>().join("."),
    };
    format!("{package}.{}.{}", info.version, info.kind)
}

fn operation(info: &KindInfo, verb: &str) -> Value {
    operation_for(
        gvk(info),
        &schema_name(info),
        info.built_in,
        verb,
        info.kind,
    )
}

/// One operation on a path: the parameters kubectl looks for, the media types a `PATCH`
/// accepts (strategic merge for built-in kinds only) and the kind it is about.
fn operation_for(gvk: Value, schema: &str, built_in: bool, verb: &str, kind: &str) -> Value {
    let parameter = |name: &str| json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } });
    let mut media_types = vec!["application/json"];
    if verb == "patch" {
        media_types = vec![
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ];
        if built_in {
            media_types.push("application/strategic-merge-patch+json");
        }
    }
    let content: Map<String, Value> = media_types
        .into_iter()
        .map(|t| {
            (
                t.to_string(),
                json!({ "schema": { "$ref": format!("#/components/schemas/{schema}") } }),
            )
        })
        .collect();
    json!({
        "requestBody": { "content": content },
        "operationId": format!("{verb}{kind}"),
        "parameters": [parameter("dryRun"), parameter("fieldManager"), parameter("fieldValidation")],
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": gvk,
        "responses": { "200": { "description": "OK" } },
    })
}

/// `GET /openapi/v3/api/v1` and `GET /openapi/v3/apis/{group}/{version}`.
fn document(shared: &Shared, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for kind in super::discovery::served(shared) {
        let info = kind.info();
        if info.group != group || info.version != version {
            continue;
        }
        let base = format!("/{}", document_path(info));
        paths.insert(
            format!("{base}/namespaces/{{namespace}}/{}", info.plural),
            json!({ "post": operation(info, "post") }),
        );
        paths.insert(
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
            json!({ "put": operation(info, "put"), "patch": operation(info, "patch") }),
        );
        let mut schema = custom_schema(shared, kind).unwrap_or_else(
            || json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true }),
        );
        schema["x-kubernetes-group-version-kind"] = json!([gvk(info)]);
        schemas.insert(schema_name(info), schema);
    }
    if group.is_empty() && version == "v1" {
        // Namespaces are served outside the generic store (see `namespaces`).
        let namespace = json!({ "group": "", "version": "v1", "kind": "Namespace" });
        let schema = "io.k8s.api.core.v1.Namespace";
        let patch = operation_for(namespace.clone(), schema, true, "patch", "Namespace");
        paths.insert(
            "/api/v1/namespaces/{name}".to_string(),
            json!({ "patch": patch }),
        );
        schemas.insert(
            schema.to_string(),
            json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true, "x-kubernetes-group-version-kind": [namespace] }),
        );
    }
    if schemas.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": "v1.34.0" },
        "paths": paths,
        "components": { "schemas": schemas },
    }))
}

/// A registered CRD's schema for `kind`.
fn custom_schema(shared: &Shared, kind: Kind) -> Option<Value> {
    shared
        .cluster()
        .custom_resource(kind)
        .map(|custom| custom.schema)
}

fn answer(shared: &Shared, group: &str, version: &str) -> Result<Response, Refusal> {
    document(shared, group, version)
        .map(|doc| ok(StatusCode::OK, doc))
        .ok_or_else(|| super::kinds::ApiError::no_such_resource().into())
}

/// `GET /openapi/v3/api/{version}`.
pub(super) async fn core_document(
    State(shared): State<Shared>,
    Path(version): Path<String>,
) -> Result<Response, Refusal> {
    answer(&shared, "", &version)
}

/// `GET /openapi/v3/apis/{group}/{version}`.
pub(super) async fn group_document(
    State(shared): State<Shared>,
    Path((group, version)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    answer(&shared, &group, &version)
}
