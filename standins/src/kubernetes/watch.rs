//! List and watch, the way `kube::runtime::watcher` consumes them.
//!
//! Every change to any object is kept in a bounded history keyed by `resourceVersion`.
//! - `LIST` answers the current state with the current `resourceVersion` in the list
//!   metadata, in pages of `limit` items with a `continue` token (as the API server does;
//!   the watcher asks for 500 at a time); later pages show the objects as they are then,
//!   under the first page's `resourceVersion`, and a watch from it replays any change;
//!   `resourceVersion`/`resourceVersionMatch` are
//!   answered with the most recent state, which satisfies `NotOlderThan` and unset).
//! - `WATCH` (`?watch=true`) streams newline-delimited JSON events: from
//!   `resourceVersion=N`, every change after N; with `resourceVersion` unset or `0`, synthetic
//!   `ADDED` events for the current state first; with `sendInitialEvents=true` (streaming
//!   lists), those followed by a `BOOKMARK` annotated `k8s.io/initial-events-end`. A version
//!   older than the history answers an `ERROR` event with `410 Expired`, after which the
//!   watcher re-lists. Under a label selector an object that stops matching is `DELETED`
//!   and one that starts matching is `ADDED`, as on a real server. The stream ends after
//!   `timeoutSeconds` with a `BOOKMARK` when `allowWatchBookmarks=true`.
//! - `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1` (what
//!   `metadata_watcher` sends) answers metadata-only objects;
//!   `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` (`kubectl get -w`) one-row
//!   `Table`s (see `table`).

use super::kinds::{ApiError, Kind};
use super::selectors::{FieldSelector, LabelSelector};
use super::{Cluster, Shared};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How many changes the history keeps before the oldest versions answer `410 Gone`.
const HISTORY_LIMIT: usize = 4096;
/// The server's default watch length when `timeoutSeconds` is not sent.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

#[derive(Clone, Debug)]
struct Change {
    kind: Kind,
    namespace: String,
    resource_version: u64,
    change: ChangeType,
    object: Value,
    previous: Option<Value>,
}

/// The change log that watches replay, and the signal that wakes them.
pub(super) struct History {
    changes: VecDeque<Change>,
    /// Versions up to this one are gone from the log: watching from them is `410`.
    compacted_through: u64,
    updates: watch::Sender<u64>,
}

impl History {
    pub(super) fn new() -> Self {
        Self {
            changes: VecDeque::new(),
            compacted_through: 0,
            updates: watch::Sender::new(0),
        }
    }
}

impl Cluster {
    /// Logs a change made at the current `resourceVersion` and wakes the watches.
    pub(super) fn record_change(
        &mut self,
        kind: Kind,
        namespace: &str,
        change: ChangeType,
        object: Value,
        previous: Option<Value>,
    ) {
        let resource_version = self.resource_version;
        let history = &mut self.history;
        history.changes.push_back(Change {
            kind,
            namespace: namespace.to_string(),
            resource_version,
            change,
            object,
            previous,
        });
        while history.changes.len() > HISTORY_LIMIT {
            if let Some(dropped) = history.changes.pop_front() {
                history.compacted_through = dropped.resource_version;
            }
        }
        history.updates.send_replace(resource_version);
    }

    /// Forgets the change log, as etcd compaction does: watching from any earlier
    /// version is then `410 Gone`.
    pub(super) fn compact(&mut self) {
        self.history.changes.clear();
        self.history.compacted_through = self.resource_version;
    }

    /// The current objects of `kind` (in `namespace`, or all), ordered by namespace and name.
    fn snapshot(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        let in_scope = |ns: &str| namespace.is_none_or(|wanted| wanted == ns);
        if kind == Kind::Secret {
            return self
                .secrets
                .iter()
                .filter(|((ns, _), _)| in_scope(ns))
                .map(|((ns, name), secret)| secret.to_json(ns, name))
                .collect();
        }
        let info = kind.info();
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && in_scope(ns))
            .map(|(_, object)| object.render(info))
            .collect()
    }
}

/// Which objects a list or watch is about.
pub(super) struct Selection {
    pub kind: Kind,
    pub namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    metadata_only: bool,
    /// `kubectl get -w`: each event carries a one-row `Table`.
    table: bool,
}

impl Selection {
    /// Reads `labelSelector`, `fieldSelector` and the metadata-only `Accept` header.
    pub(super) fn parse(
        kind: Kind,
        namespace: Option<String>,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let labels = LabelSelector::parse(param("labelSelector")).map_err(ApiError::bad_request)?;
        let extra_fields: &[&str] = match kind {
            Kind::Secret => &["type"],
            // What `kubectl events --for` and describers select events.k8s.io Events on.
            Kind::Event => &[
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "regarding.apiVersion",
                "reason",
                "reportingController",
                "type",
            ],
            _ => &[],
        };
        let fields = FieldSelector::parse(param("fieldSelector"), extra_fields)
            .map_err(ApiError::bad_request)?;
        let metadata_only = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"));
        Ok(Self {
            kind,
            namespace,
            labels,
            fields,
            metadata_only,
            table: super::table::wanted(headers),
        })
    }

    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    fn in_namespace(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    /// The object as this request wants it on the wire.
    fn shape(&self, object: &Value) -> Value {
        if self.metadata_only {
            json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"],
            })
        } else {
            object.clone()
        }
    }

    /// The object as a watch event carries it: a `Table` row when asked for, else shaped.
    fn render(&self, cluster: &Cluster, object: &Value) -> Value {
        if self.table {
            super::table::of_object(cluster, self.kind, object)
        } else {
            self.shape(object)
        }
    }

    fn bookmark(&self, resource_version: u64, initial_events_end: bool) -> Value {
        let info = self.kind.info();
        let (kind, api_version) = if self.metadata_only {
            (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            )
        } else {
            (info.kind.to_string(), info.api_version())
        };
        let mut metadata =
            json!({ "resourceVersion": resource_version.to_string(), "creationTimestamp": null });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata })
    }
}

/// Where a list page starts: the `continue` token of the previous page.
pub(super) struct Page {
    pub limit: Option<usize>,
    /// `(resourceVersion of the first page, namespace/name of the last item sent)`.
    pub after: Option<(u64, String)>,
}

impl Page {
    /// Reads `limit` and `continue`; a token we did not issue is a 400, as on a real server.
    pub(super) fn parse(
        params: &std::collections::HashMap<String, String>,
    ) -> Result<Self, String> {
        let limit = params
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let after = match params.get("continue").filter(|c| !c.is_empty()) {
            None => None,
            Some(token) => {
                let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|text| {
                        text.split_once('|')
                            .map(|(rv, key)| (rv.parse::<u64>().ok(), key.to_string()))
                    });
                match decoded {
                    Some((Some(rv), key)) => Some((rv, key)),
                    _ => return Err("continue key is not valid".into()),
                }
            }
        };
        Ok(Self { limit, after })
    }
}

fn object_key(object: &Value) -> String {
    let metadata = &object["metadata"];
    format!(
        "{}/{}",
        metadata["namespace"].as_str().unwrap_or(""),
        metadata["name"].as_str().unwrap_or("")
    )
}

impl Cluster {
    /// The objects of `kind` as they were at `resource_version`, ordered by
    /// `namespace/name`: today's, with the changes made since undone from the change log.
    /// `None` when the log no longer reaches back that far (compacted).
    fn snapshot_at(&self, kind: Kind, namespace: Option<&str>, resource_version: u64) -> Option<Vec<Value>> {
        if self.history.compacted_through > resource_version {
            return None;
        }
        let in_scope = |ns: &str| namespace.is_none_or(|wanted| wanted == ns);
        let mut objects: std::collections::BTreeMap<String, Value> =
            self.snapshot(kind, namespace).into_iter().map(|object| (object_key(&object), object)).collect();
        let since = self.history.changes.iter().rev().take_while(|c| c.resource_version > resource_version);
        for change in since.filter(|c| c.kind == kind && in_scope(&c.namespace)) {
            let key = object_key(&change.object);
            match (change.change, &change.previous) {
                (ChangeType::Added, _) => {
                    objects.remove(&key);
                }
                (ChangeType::Modified, Some(previous)) => {
                    objects.insert(key, previous.clone());
                }
                (ChangeType::Modified, None) => {}
                (ChangeType::Deleted, _) => {
                    objects.insert(key, change.object.clone());
                }
            }
        }
        Some(objects.into_values().collect())
    }
}

/// A `continue` token from before the change log's reach, answered as the API server
/// answers one older than etcd's compaction.
fn continue_expired() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".to_string(),
        json!({}),
    )
}

/// The list answer: one page of matching objects and the version a watch continues from.
/// Every page of one list shows the objects as they were when its first page was served,
/// as from a real API server.
pub(super) fn list(cluster: &Cluster, selection: &Selection, page: &Page) -> Result<Value, ApiError> {
    let info = selection.kind.info();
    let resource_version = page
        .after
        .as_ref()
        .map_or(cluster.resource_version, |(rv, _)| *rv);
    let matching: Vec<Value> = cluster
        .snapshot_at(selection.kind, selection.namespace.as_deref(), resource_version)
        .ok_or_else(continue_expired)?
        .into_iter()
        .filter(|object| selection.matches(object))
        .filter(|object| {
            page.after
                .as_ref()
                .is_none_or(|(_, after)| object_key(object).as_str() > after.as_str())
        })
        .collect();
    let taken = page.limit.unwrap_or(usize::MAX).min(matching.len());
    let remaining = matching.len() - taken;
    let next = (remaining > 0).then(|| {
        let last = object_key(&matching[taken - 1]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{resource_version}|{last}"))
    });
    let items: Vec<Value> = matching[..taken]
        .iter()
        .map(|object| {
            let mut item = selection.shape(object);
            // Built-in list items carry no type; the list says it.
            if info.built_in
                && !selection.metadata_only
                && let Some(map) = item.as_object_mut()
            {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let (kind, api_version) = if selection.metadata_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (format!("{}List", info.kind), info.api_version())
    };
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if let Some(token) = next {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items }))
}

/// Where a watch starts.
enum Start {
    /// The current state as synthetic `ADDED` events; with the streaming-list end marker.
    Snapshot { end_marker: bool },
    /// Every change after this `resourceVersion`.
    After(u64),
}

/// A watch request, validated.
pub(super) struct WatchRequest {
    selection: Selection,
    start: Start,
    bookmarks: bool,
    timeout: Duration,
}

impl WatchRequest {
    pub(super) fn parse(
        selection: Selection,
        params: &HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let flag = |name: &str| params.get(name).is_some_and(|v| v == "true" || v == "1");
        let bookmarks = flag("allowWatchBookmarks");
        let resource_version = params
            .get("resourceVersion")
            .map(String::as_str)
            .unwrap_or_default();
        let start = if flag("sendInitialEvents") {
            if params.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
                || !bookmarks
            {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true".to_string(),
                    json!({ "kind": "ListOptions", "group": "meta.k8s.io" }),
                ));
            }
            Start::Snapshot { end_marker: true }
        } else if resource_version.is_empty() || resource_version == "0" {
            Start::Snapshot { end_marker: false }
        } else {
            let after = resource_version.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {resource_version:?}"))
            })?;
            Start::After(after)
        };
        let timeout = match params.get("timeoutSeconds") {
            Some(seconds) => Duration::from_secs(seconds.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds: {seconds:?}"))
            })?),
            None => DEFAULT_WATCH_TIMEOUT,
        };
        Ok(Self {
            selection,
            start,
            bookmarks,
            timeout,
        })
    }
}

/// One line of a watch stream.
fn event_line(event_type: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": event_type, "object": object }))
        .unwrap_or_else(|_| unreachable!("JSON values serialize"));
    line.push(b'\n');
    Bytes::from(line)
}

fn expired(wanted: u64, oldest: u64) -> Bytes {
    event_line(
        "ERROR",
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {wanted} ({oldest})"),
            "reason": "Expired", "code": 410,
        }),
    )
}

/// The state of one open watch stream.
struct Stream {
    shared: Shared,
    selection: Selection,
    bookmarks: bool,
    last_seen: u64,
    queued: VecDeque<Bytes>,
    updates: watch::Receiver<u64>,
    deadline: Instant,
    finished: bool,
}

impl Stream {
    fn open(shared: Shared, request: WatchRequest) -> Self {
        let mut queued = VecDeque::new();
        let (last_seen, updates, finished) = {
            let cluster = shared.cluster();
            let selection = &request.selection;
            let mut finished = false;
            let last_seen = match request.start {
                Start::Snapshot { end_marker } => {
                    for object in cluster.snapshot(selection.kind, selection.namespace.as_deref()) {
                        if selection.matches(&object) {
                            queued.push_back(event_line(
                                "ADDED",
                                selection.render(&cluster, &object),
                            ));
                        }
                    }
                    if end_marker {
                        queued.push_back(event_line(
                            "BOOKMARK",
                            selection.bookmark(cluster.resource_version, true),
                        ));
                    }
                    cluster.resource_version
                }
                Start::After(version) if version < cluster.history.compacted_through => {
                    queued.push_back(expired(version, cluster.history.compacted_through + 1));
                    finished = true;
                    version
                }
                Start::After(version) => version,
            };
            (last_seen, cluster.history.updates.subscribe(), finished)
        };
        Self {
            shared,
            selection: request.selection,
            bookmarks: request.bookmarks,
            last_seen,
            queued,
            updates,
            deadline: Instant::now() + request.timeout,
            finished,
        }
    }

    /// Queues the events for changes after `last_seen`, or `410` if they are gone.
    fn catch_up(&mut self) {
        self.updates.borrow_and_update();
        let cluster = self.shared.cluster();
        if self.last_seen < cluster.history.compacted_through {
            self.queued.push_back(expired(
                self.last_seen,
                cluster.history.compacted_through + 1,
            ));
            self.finished = true;
            return;
        }
        let since = self.last_seen;
        for change in cluster
            .history
            .changes
            .iter()
            .filter(|c| c.resource_version > since)
        {
            self.last_seen = change.resource_version;
            if change.kind != self.selection.kind || !self.selection.in_namespace(&change.namespace)
            {
                continue;
            }
            if let Some(event_type) = self.event_type(change) {
                let object = self.selection.render(&cluster, &change.object);
                self.queued.push_back(event_line(event_type, object));
            }
        }
    }

    /// The event a selective watch sees for a change: objects entering the selection are
    /// added, objects leaving it are deleted.
    fn event_type(&self, change: &Change) -> Option<&'static str> {
        let now_matches = self.selection.matches(&change.object);
        let matched_before = change
            .previous
            .as_ref()
            .is_some_and(|p| self.selection.matches(p));
        match change.change {
            ChangeType::Added => now_matches.then_some("ADDED"),
            ChangeType::Deleted => now_matches.then_some("DELETED"),
            ChangeType::Modified => match (matched_before, now_matches) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }

    async fn next_chunk(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if let Some(chunk) = self.queued.pop_front() {
                return Some((Ok(chunk), self));
            }
            if self.finished {
                return None;
            }
            self.catch_up();
            if !self.queued.is_empty() || self.finished {
                continue;
            }
            tokio::select! {
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                    }
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    if self.bookmarks {
                        let version = self.shared.cluster().resource_version;
                        self.queued.push_back(event_line("BOOKMARK", self.selection.bookmark(version, false)));
                    }
                    self.finished = true;
                }
            }
        }
    }
}

/// A streaming `200 OK` of watch events.
pub(super) fn watch(shared: Shared, request: WatchRequest) -> Response {
    let stream = Stream::open(shared, request);
    let body = Body::from_stream(futures::stream::unfold(stream, Stream::next_chunk));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
