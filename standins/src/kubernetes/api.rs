//! HTTP handlers for the generic kinds (`/apis/{group}/{version}/…`) and for listing and
//! watching Secrets. Each handler resolves the kind, counts the request under its route
//! name (see [`super::routes`]) and plays any queued fault before doing any work.

use super::kinds::{ApiError, Kind, KindInfo};
use super::objects::{self, Author, Target, Write};
use super::table;
use super::watch::{self, Selection, WatchRequest};
use super::{Params, REFUSED_USER, Refusal, Shared, forbidden, ok, update_manager};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;

type Collection = Path<(String, String, String, String)>;
type ClusterCollection = Path<(String, String, String)>;
type Item = Path<(String, String, String, String, String)>;

fn find(group: &str, version: &str, plural: &str) -> Result<Kind, Refusal> {
    Kind::find(group, version, plural).ok_or_else(|| ApiError::no_such_resource().into())
}

/// The kind at a path that names an object's scope: a namespaced kind only under
/// `namespaces/{namespace}/`, a cluster-scoped one only without; anything else is the
/// API server's 404.
fn find_scoped(group: &str, version: &str, namespace: &str, plural: &str) -> Result<Kind, Refusal> {
    let kind = find(group, version, plural)?;
    if kind.info().namespaced == namespace.is_empty() {
        return Err(ApiError::no_such_resource().into());
    }
    Ok(kind)
}

/// `fieldValidation=Strict` (kubectl's default): unknown fields are refused, not dropped.
fn strict(params: &HashMap<String, String>) -> bool {
    params.get("fieldValidation").is_some_and(|v| v == "Strict")
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
}

/// The stand-in does not model dry runs; refusing them beats persisting what a test
/// believes was only tried.
fn refuse_dry_run(params: &HashMap<String, String>) -> Result<(), ApiError> {
    match params.get("dryRun") {
        Some(mode) => Err(ApiError::bad_request(format!(
            "the Kubernetes stand-in does not support dryRun={mode}; send the request without dryRun"
        ))),
        None => Ok(()),
    }
}

fn is_watch(params: &HashMap<String, String>) -> bool {
    params.get("watch").is_some_and(|w| w == "true" || w == "1")
}

/// `GET` on a namespaced collection: a list, or a watch with `watch=true`.
pub(super) async fn namespaced_collection(
    State(shared): State<Shared>,
    Path((group, version, namespace, plural)): Collection,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let kind = find_scoped(&group, &version, &namespace, &plural)?;
    list_or_watch(shared, kind, Some(namespace), params, headers).await
}

/// `GET` on a collection across all namespaces.
pub(super) async fn cluster_collection(
    State(shared): State<Shared>,
    Path((group, version, plural)): ClusterCollection,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let kind = find(&group, &version, &plural)?;
    let namespace = (!kind.info().namespaced).then(String::new);
    list_or_watch(shared, kind, namespace, params, headers).await
}

/// `GET /api/v1/namespaces/{namespace}/secrets`.
pub(super) async fn secrets_in_namespace(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    list_or_watch(shared, Kind::Secret, Some(namespace), params, headers).await
}

/// `GET /api/v1/secrets`.
pub(super) async fn all_secrets(
    State(shared): State<Shared>,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    list_or_watch(shared, Kind::Secret, None, params, headers).await
}

async fn list_or_watch(
    shared: Shared,
    kind: Kind,
    namespace: Option<String>,
    params: HashMap<String, String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let routes = kind.info().routes;
    let watching = is_watch(&params);
    let route = match (watching, namespace.is_some()) {
        (false, true) => routes.list,
        (false, false) => routes.list_all,
        (true, true) => routes.watch,
        (true, false) => routes.watch_all,
    };
    if let Some(fault) = shared.faults.intercept(route).await {
        return Ok(fault);
    }
    if kind == Kind::Secret {
        check_secrets_allowed(&shared, namespace.as_deref(), watching)?;
    }
    let selection = Selection::parse(kind, namespace, &params, &headers)?;
    if watching {
        let request = WatchRequest::parse(selection, &params)?;
        Ok(watch::watch(shared, request))
    } else {
        let page = watch::Page::parse(&params).map_err(ApiError::bad_request)?;
        let cluster = shared.cluster();
        let list = watch::list(&cluster, &selection, &page)?;
        if table::wanted(&headers) {
            return Ok(ok(StatusCode::OK, table::of_list(&cluster, kind, &list)));
        }
        Ok(ok(StatusCode::OK, list))
    }
}

/// Secrets in a forbidden namespace are refused; across all namespaces, any forbidden
/// namespace means the ClusterRole is missing.
fn check_secrets_allowed(
    shared: &Shared,
    namespace: Option<&str>,
    watching: bool,
) -> Result<(), Refusal> {
    let verb = if watching { "watch" } else { "list" };
    let cluster = shared.cluster();
    match namespace {
        Some(ns) if cluster.forbidden.contains(ns) => Err(forbidden(verb, ns, None)),
        None if !cluster.forbidden.is_empty() => Err(super::status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "secrets is forbidden: User \"{REFUSED_USER}\" cannot {verb} resource \"secrets\" in API group \"\" at the cluster scope"
            ),
            json!({ "kind": "secrets" }),
        )),
        _ => Ok(()),
    }
}

/// `POST` to a namespaced collection.
pub(super) async fn create(
    State(shared): State<Shared>,
    Path((group, version, namespace, plural)): Collection,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    create_in(
        shared,
        (group, version, namespace, plural),
        params,
        headers,
        body,
    )
    .await
}

/// `POST` to a cluster-scoped collection.
pub(super) async fn cluster_create(
    State(shared): State<Shared>,
    Path((group, version, plural)): ClusterCollection,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    create_in(
        shared,
        (group, version, String::new(), plural),
        params,
        headers,
        body,
    )
    .await
}

async fn create_in(
    shared: Shared,
    (group, version, namespace, plural): (String, String, String, String),
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let kind = find_scoped(&group, &version, &namespace, &plural)?;
    let info = kind.info();
    if let Some(fault) = shared.faults.intercept(info.routes.create).await {
        return Ok(fault);
    }
    refuse_dry_run(&params)?;
    let body = super::protobuf::request_body(&headers, &body)?;
    let name = objects::name_to_create(info, &body)?;
    let manager = update_manager(&params, &headers);
    let (code, object) = objects::write(
        &mut shared.cluster(),
        kind,
        &namespace,
        &name,
        Target::Main,
        Write::Create(body),
        Author {
            manager: &manager,
            strict: strict(&params),
        },
    )?;
    Ok(ok(code, object))
}

/// The route name of a request to the main resource or to its `/status`.
fn route_for(target: Target, main: &'static str, status: &'static str) -> &'static str {
    match target {
        Target::Main => main,
        Target::Status => status,
    }
}

async fn get(
    shared: Shared,
    path: (String, String, String, String, String),
    target: Target,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (group, version, namespace, plural, name) = path;
    let kind = find_scoped(&group, &version, &namespace, &plural)?;
    let info = kind.info();
    let route = route_for(target, info.routes.get, info.routes.get_status);
    if let Some(fault) = shared.faults.intercept(route).await {
        return Ok(fault);
    }
    if target == Target::Status && !info.status_subresource {
        return Err(ApiError::no_such_resource().into());
    }
    let cluster = shared.cluster();
    let object = cluster
        .objects
        .get(&(kind, namespace, name.clone()))
        .ok_or_else(|| info.not_found(&name))?;
    let rendered = object.render(info);
    if table::wanted(&headers) {
        return Ok(ok(
            StatusCode::OK,
            table::of_object(&cluster, kind, &rendered),
        ));
    }
    Ok(ok(StatusCode::OK, rendered))
}

async fn replace(
    shared: Shared,
    path: (String, String, String, String, String),
    target: Target,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (group, version, namespace, plural, name) = path;
    let kind = find_scoped(&group, &version, &namespace, &plural)?;
    let info = kind.info();
    let route = route_for(target, info.routes.replace, info.routes.replace_status);
    if let Some(fault) = shared.faults.intercept(route).await {
        return Ok(fault);
    }
    refuse_dry_run(&params)?;
    let body = super::protobuf::request_body(&headers, &body)?;
    let manager = update_manager(&params, &headers);
    let (code, object) = objects::write(
        &mut shared.cluster(),
        kind,
        &namespace,
        &name,
        target,
        Write::Replace(body),
        Author {
            manager: &manager,
            strict: strict(&params),
        },
    )?;
    Ok(ok(code, object))
}

async fn patch(
    shared: Shared,
    path: (String, String, String, String, String),
    target: Target,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (group, version, namespace, plural, name) = path;
    let kind = find_scoped(&group, &version, &namespace, &plural)?;
    let info = kind.info();
    let route = route_for(target, info.routes.patch, info.routes.patch_status);
    if let Some(fault) = shared.faults.intercept(route).await {
        return Ok(fault);
    }
    refuse_dry_run(&params)?;
    let (write, manager) = decode_patch(info, &params, &headers, &body)?;
    let (code, object) = objects::write(
        &mut shared.cluster(),
        kind,
        &namespace,
        &name,
        target,
        write,
        Author {
            manager: &manager,
            strict: strict(&params),
        },
    )?;
    Ok(ok(code, object))
}

/// The write a `PATCH` asks for, by `Content-Type`, and the field manager making it.
fn decode_patch(
    info: &KindInfo,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Write, String), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    let manager = || update_manager(params, headers);
    match media_type {
        "application/apply-patch+yaml" => {
            let Some(manager) = params.get("fieldManager").filter(|m| !m.is_empty()) else {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".to_string(),
                ));
            };
            let config: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            if config.get("apiVersion").is_none() || config.get("kind").is_none() {
                return Err(ApiError::bad_request(format!(
                    "apply patches must set apiVersion: {} and kind: {}",
                    info.api_version(),
                    info.kind
                )));
            }
            let force = params.get("force").is_some_and(|f| f == "true");
            Ok((Write::Apply { config, force }, manager.clone()))
        }
        "application/merge-patch+json" => Ok((Write::MergePatch(parse_json(body)?), manager())),
        "application/json-patch+json" => Ok((Write::JsonPatch(parse_json(body)?), manager())),
        "application/strategic-merge-patch+json" if info.built_in => {
            Ok((Write::StrategicMerge(parse_json(body)?), manager()))
        }
        other => Err(ApiError::unsupported_media_type(other, info.built_in)),
    }
}

async fn delete(
    shared: Shared,
    path: (String, String, String, String, String),
) -> Result<Response, Refusal> {
    let (group, version, namespace, plural, name) = path;
    let kind = find_scoped(&group, &version, &namespace, &plural)?;
    let info = kind.info();
    if let Some(fault) = shared.faults.intercept(info.routes.delete).await {
        return Ok(fault);
    }
    let object = objects::delete(&mut shared.cluster(), kind, &namespace, &name)?;
    Ok(ok(StatusCode::OK, object))
}

pub(super) async fn get_item(
    State(shared): State<Shared>,
    Path(path): Item,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    get(shared, path, Target::Main, headers).await
}

pub(super) async fn get_status(
    State(shared): State<Shared>,
    Path(path): Item,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    get(shared, path, Target::Status, headers).await
}

pub(super) async fn replace_item(
    State(shared): State<Shared>,
    Path(path): Item,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    replace(shared, path, Target::Main, params, headers, body).await
}

pub(super) async fn replace_status(
    State(shared): State<Shared>,
    Path(path): Item,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    replace(shared, path, Target::Status, params, headers, body).await
}

pub(super) async fn patch_item(
    State(shared): State<Shared>,
    Path(path): Item,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    patch(shared, path, Target::Main, params, headers, body).await
}

pub(super) async fn patch_status(
    State(shared): State<Shared>,
    Path(path): Item,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    patch(shared, path, Target::Status, params, headers, body).await
}

pub(super) async fn delete_item(
    State(shared): State<Shared>,
    Path(path): Item,
) -> Result<Response, Refusal> {
    delete(shared, path).await
}

type ClusterItem = Path<(String, String, String, String)>;

/// The 5-part path of a cluster-scoped object: its namespace is empty.
fn at_top(
    (group, version, plural, name): (String, String, String, String),
) -> (String, String, String, String, String) {
    (group, version, String::new(), plural, name)
}

pub(super) async fn cluster_get_item(
    State(shared): State<Shared>,
    Path(path): ClusterItem,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    get(shared, at_top(path), Target::Main, headers).await
}

pub(super) async fn cluster_replace_item(
    State(shared): State<Shared>,
    Path(path): ClusterItem,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    replace(shared, at_top(path), Target::Main, params, headers, body).await
}

pub(super) async fn cluster_patch_item(
    State(shared): State<Shared>,
    Path(path): ClusterItem,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    patch(shared, at_top(path), Target::Main, params, headers, body).await
}

pub(super) async fn cluster_delete_item(
    State(shared): State<Shared>,
    Path(path): ClusterItem,
) -> Result<Response, Refusal> {
    delete(shared, at_top(path)).await
}

type CoreCollection = Path<(String, String)>;
type CoreItem = Path<(String, String, String)>;

/// The 5-part path of a core/v1 object (`/api/v1/namespaces/{namespace}/{plural}/{name}`).
fn core(
    (namespace, plural, name): (String, String, String),
) -> (String, String, String, String, String) {
    (String::new(), "v1".to_string(), namespace, plural, name)
}

/// `GET /api/v1/namespaces/{namespace}/{plural}` for the core kinds of the generic store.
pub(super) async fn core_collection(
    State(shared): State<Shared>,
    Path((namespace, plural)): CoreCollection,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let kind = find_scoped("", "v1", &namespace, &plural)?;
    list_or_watch(shared, kind, Some(namespace), params, headers).await
}

pub(super) async fn core_create(
    State(shared): State<Shared>,
    Path((namespace, plural)): CoreCollection,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    create_in(
        shared,
        (String::new(), "v1".to_string(), namespace, plural),
        params,
        headers,
        body,
    )
    .await
}

pub(super) async fn core_get_item(
    State(shared): State<Shared>,
    Path(path): CoreItem,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    get(shared, core(path), Target::Main, headers).await
}

pub(super) async fn core_replace_item(
    State(shared): State<Shared>,
    Path(path): CoreItem,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    replace(shared, core(path), Target::Main, params, headers, body).await
}

pub(super) async fn core_patch_item(
    State(shared): State<Shared>,
    Path(path): CoreItem,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    patch(shared, core(path), Target::Main, params, headers, body).await
}

pub(super) async fn core_delete_item(
    State(shared): State<Shared>,
    Path(path): CoreItem,
) -> Result<Response, Refusal> {
    delete(shared, core(path)).await
}

/// `GET /api/v1/{plural}`: a core kind across all namespaces.
pub(super) async fn core_list_all(
    State(shared): State<Shared>,
    Path(plural): Path<String>,
    axum::extract::Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let kind = find("", "v1", &plural)?;
    list_or_watch(shared, kind, None, params, headers).await
}
