//! core/v1 Events (`/api/v1/namespaces/{namespace}/events`): the older view of the same
//! events the controller writes through `events.k8s.io/v1`, as the API server serves one
//! store under both APIs. `kubectl describe` lists them with a field selector on
//! `involvedObject`. Read-only here (list): a write through core/v1 gets 405, as a verb a
//! server does not serve; the rotator writes through `events.k8s.io/v1`.

use super::kinds::{ApiError, Kind};
use super::selectors::{FieldSelector, LabelSelector};
use super::{Params, Refusal, Shared, ok};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The fields a core/v1 Event list can be selected on, as on a real server.
const SELECTABLE: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// An `events.k8s.io/v1` Event in its core/v1 form (the API server's conversion).
fn to_core(event: &Value) -> Value {
    let mut core = json!({
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": event["metadata"],
        "involvedObject": event["regarding"],
        "reason": event["reason"],
        "message": event["note"],
        "type": event["type"],
        "eventTime": event["eventTime"],
        "action": event["action"],
        "reportingComponent": event["reportingController"],
        "reportingInstance": event["reportingInstance"],
        "source": event.get("deprecatedSource").cloned().unwrap_or(json!({})),
        "firstTimestamp": event.get("deprecatedFirstTimestamp").cloned().unwrap_or(Value::Null),
        "lastTimestamp": event.get("deprecatedLastTimestamp").cloned().unwrap_or(Value::Null),
        "count": event.get("deprecatedCount").cloned().unwrap_or(Value::Null),
    });
    for (from, to) in [("related", "related"), ("series", "series")] {
        if let Some(value) = event.get(from) {
            core[to] = value.clone();
        }
    }
    core
}

fn list(
    shared: &Shared,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<Response, Refusal> {
    let text = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
    let fields =
        FieldSelector::parse(text("fieldSelector"), SELECTABLE).map_err(ApiError::bad_request)?;
    let labels = LabelSelector::parse(text("labelSelector")).map_err(ApiError::bad_request)?;
    let cluster = shared.cluster();
    let info = Kind::Event.info();
    let items: Vec<Value> = cluster
        .objects
        .iter()
        .filter(|((kind, ns, _), _)| {
            *kind == Kind::Event && namespace.is_none_or(|wanted| wanted == ns)
        })
        .map(|(_, event)| to_core(&event.render(info)))
        .filter(|event| fields.matches(event) && labels.matches(event))
        .collect();
    let metadata = json!({ "resourceVersion": cluster.resource_version.to_string() });
    Ok(ok(
        StatusCode::OK,
        json!({ "kind": "EventList", "apiVersion": "v1", "metadata": metadata, "items": items }),
    ))
}

/// `GET /api/v1/namespaces/{namespace}/events`.
pub(super) async fn in_namespace(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    axum::extract::Query(params): Params,
) -> Result<Response, Refusal> {
    list(&shared, Some(&namespace), &params)
}

/// `GET /api/v1/events`.
pub(super) async fn everywhere(
    State(shared): State<Shared>,
    axum::extract::Query(params): Params,
) -> Result<Response, Refusal> {
    list(&shared, None, &params)
}
