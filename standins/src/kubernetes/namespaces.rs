//! core/v1 Namespaces as kubectl and helm use them: `get` (kubectl checks the namespace
//! when an object is not found), `list`, `create`, and `patch` (helm's
//! `--create-namespace` server-side applies one). A namespace is a name and the labels
//! the test set (`label_namespace`) besides `kubernetes.io/metadata.name`: labels and
//! annotations sent are not kept, and with no finalizers or termination modelled,
//! `delete` is refused with 405, as a server refuses a verb it does not serve.

use super::kinds::ApiError;
use super::table;
use super::{Cluster, Refusal, Shared, ok};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

fn namespace(cluster: &Cluster, name: &str) -> Value {
    let mut labels = cluster.namespace_labels.get(name).cloned().unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".to_string(), name.to_string());
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": { "name": name, "labels": labels },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" },
    })
}

fn not_found(name: &str) -> Refusal {
    ApiError::namespace_not_found(name).into()
}

/// `GET /api/v1/namespaces/{namespace}`.
pub(super) async fn get(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let cluster = shared.cluster();
    if !cluster.namespaces.contains(&name) {
        return Err(not_found(&name));
    }
    let object = namespace(&cluster, &name);
    if table::wanted(&headers) {
        return Ok(ok(StatusCode::OK, table::of_namespaces(&[object])));
    }
    Ok(ok(StatusCode::OK, object))
}

/// `GET /api/v1/namespaces`.
pub(super) async fn list(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let cluster = shared.cluster();
    let items: Vec<Value> = cluster.namespaces.iter().map(|n| namespace(&cluster, n)).collect();
    if table::wanted(&headers) {
        return ok(StatusCode::OK, table::of_namespaces(&items));
    }
    let metadata = json!({ "resourceVersion": cluster.resource_version.to_string() });
    ok(
        StatusCode::OK,
        json!({ "kind": "NamespaceList", "apiVersion": "v1", "metadata": metadata, "items": items }),
    )
}

/// `PATCH /api/v1/namespaces/{namespace}`: a server-side apply creates a missing
/// namespace; any patch of an existing one answers it; other patches of a missing one 404.
pub(super) async fn patch(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let applying = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/apply-patch+yaml"));
    let mut cluster = shared.cluster();
    if cluster.namespaces.contains(&name) {
        return Ok(ok(StatusCode::OK, namespace(&cluster, &name)));
    }
    if !applying {
        return Err(not_found(&name));
    }
    cluster.namespaces.insert(name.clone());
    Ok(ok(StatusCode::CREATED, namespace(&cluster, &name)))
}

/// `POST /api/v1/namespaces`: 409 `AlreadyExists` for a namespace that exists.
pub(super) async fn create(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let body = super::protobuf::request_body(&headers, &body)?;
    let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "Namespace \"\" is invalid: metadata.name: Required value: name or generateName is required".to_string(),
            json!({ "kind": "Namespace" }),
        )
        .into());
    };
    let mut cluster = shared.cluster();
    if !cluster.namespaces.insert(name.to_string()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("namespaces \"{name}\" already exists"),
            json!({ "name": name, "kind": "namespaces" }),
        )
        .into());
    }
    Ok(ok(StatusCode::CREATED, namespace(&cluster, name)))
}
