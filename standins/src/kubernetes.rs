//! A minimal Kubernetes API server over HTTPS that `kube::Client` and `kube::runtime`
//! (watcher, Controller, event Recorder) talk to unchanged.
//!
//! For core/v1 Secrets it implements what the rotator's correctness rests on, the way the
//! real API server does:
//! - server-side apply (`PATCH` with `application/apply-patch+yaml`, `fieldManager`,
//!   `force`): each field manager owns the `data` keys, annotations and labels it applied;
//!   a key a manager applied before and omits now is removed unless another manager also
//!   owns it; applying a different value to a key another manager owns is a 409 conflict
//!   unless `force=true`, which moves the ownership;
//! - JSON merge, strategic merge and JSON patches and `POST` creates, recorded as `Update`
//!   operations; a JSON patch that sets `managedFields` replaces them, and client-side
//!   apply's fields listed in its last-applied annotation pass to server-side apply
//!   without a conflict (kubectl's migration from one to the other);
//! - `resourceVersion`, `uid`, `creationTimestamp`, `managedFields`;
//! - `metav1.Status` errors (404 `NotFound`, 403 `Forbidden`, 409 `Conflict`/`AlreadyExists`,
//!   422 `Invalid`);
//! - list and watch, namespaced and cluster-wide, with label and field selectors.
//!
//! For the operator it serves, through one generic object store (see `objects`):
//! `ClientSecretRotation` (`entra-rotator.io/v1alpha1`, with `/status`), `events.k8s.io/v1`
//! Events, `coordination.k8s.io/v1` Leases, and `apps/v1` Deployments, StatefulSets and
//! DaemonSets; each with get, list, watch (see `watch`), create, replace, merge/JSON/
//! strategic-merge patch, server-side apply and delete.
//!
//! For kubectl and helm (tests/kubectl_against_standin.rs drives it with both): discovery
//! (`/api`, `/apis`, legacy format, see `discovery`), OpenAPI v3 (`openapi`), server-side
//! `Table`s for `kubectl get` (`table`), Namespaces (`namespaces`), and
//! `apiextensions.k8s.io/v1` CustomResourceDefinitions whose schema, defaults and CEL rules
//! admit the custom resource (`crds`). Paths it does not serve answer the API server's 404.
//!
//! Only flat maps are modelled for Secrets (they have no deeper structure worth owning).
//! Requests are counted per route (see [`routes`]) and faults are played before any work.

use super::faults::Faults;
use super::https::{ServerTask, serve_tls};
use super::tls::TestPki;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

mod api;
mod core_events;
mod crds;
mod discovery;
mod document;
mod inspect;
mod kinds;
mod namespaces;
mod objects;
mod openapi;
mod protobuf;
mod rollout;
mod selectors;
mod table;
mod watch;

pub use inspect::StandinEvent;
pub use kinds::{ApiError, WorkloadKind};
pub use rollout::RolloutMode;

/// Route names under which requests are counted and faults are queued: the HTTP method
/// (`WATCH` for `GET …?watch=true`) and the path template, e.g.
/// `PATCH /apis/entra-rotator.io/v1alpha1/namespaces/{namespace}/clientsecretrotations/{name}/status`.
pub mod routes {
    /// The route names of one kind of resource.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct RouteSet {
        /// `GET` on the namespaced collection (without `watch=true`).
        pub list: &'static str,
        /// `GET` on the collection across all namespaces.
        pub list_all: &'static str,
        /// `GET …?watch=true` on the namespaced collection.
        pub watch: &'static str,
        /// `GET …?watch=true` across all namespaces.
        pub watch_all: &'static str,
        pub get: &'static str,
        pub create: &'static str,
        pub replace: &'static str,
        pub patch: &'static str,
        pub delete: &'static str,
        pub get_status: &'static str,
        pub replace_status: &'static str,
        pub patch_status: &'static str,
    }

    macro_rules! route_set {
        ($base:literal, $plural:literal) => {
            RouteSet {
                list: concat!("GET ", $base, "/namespaces/{namespace}/", $plural),
                list_all: concat!("GET ", $base, "/", $plural),
                watch: concat!("WATCH ", $base, "/namespaces/{namespace}/", $plural),
                watch_all: concat!("WATCH ", $base, "/", $plural),
                get: concat!(
                    "GET ",
                    $base,
                    "/namespaces/{namespace}/",
                    $plural,
                    "/{name}"
                ),
                create: concat!("POST ", $base, "/namespaces/{namespace}/", $plural),
                replace: concat!(
                    "PUT ",
                    $base,
                    "/namespaces/{namespace}/",
                    $plural,
                    "/{name}"
                ),
                patch: concat!(
                    "PATCH ",
                    $base,
                    "/namespaces/{namespace}/",
                    $plural,
                    "/{name}"
                ),
                delete: concat!(
                    "DELETE ",
                    $base,
                    "/namespaces/{namespace}/",
                    $plural,
                    "/{name}"
                ),
                get_status: concat!(
                    "GET ",
                    $base,
                    "/namespaces/{namespace}/",
                    $plural,
                    "/{name}/status"
                ),
                replace_status: concat!(
                    "PUT ",
                    $base,
                    "/namespaces/{namespace}/",
                    $plural,
                    "/{name}/status"
                ),
                patch_status: concat!(
                    "PATCH ",
                    $base,
                    "/namespaces/{namespace}/",
                    $plural,
                    "/{name}/status"
                ),
            }
        };
    }

    /// `ClientSecretRotation`: every route, `/status` included.
    pub const ROTATIONS: RouteSet =
        route_set!("/apis/entra-rotator.io/v1alpha1", "clientsecretrotations");
    /// `events.k8s.io/v1` Events: every route but `/status`.
    pub const EVENTS: RouteSet = route_set!("/apis/events.k8s.io/v1", "events");
    /// `coordination.k8s.io/v1` Leases: every route but `/status`.
    pub const LEASES: RouteSet = route_set!("/apis/coordination.k8s.io/v1", "leases");
    /// `apps/v1` workloads: every route, `/status` included.
    pub const DEPLOYMENTS: RouteSet = route_set!("/apis/apps/v1", "deployments");
    pub const STATEFULSETS: RouteSet = route_set!("/apis/apps/v1", "statefulsets");
    pub const DAEMONSETS: RouteSet = route_set!("/apis/apps/v1", "daemonsets");
    /// core/v1 Secrets: every route but `/status`.
    pub const SECRETS: RouteSet = route_set!("/api/v1", "secrets");
    /// What `helm install` of the chart creates, stored and served.
    pub const CONFIGMAPS: RouteSet = route_set!("/api/v1", "configmaps");
    pub const SERVICES: RouteSet = route_set!("/api/v1", "services");
    pub const SERVICEACCOUNTS: RouteSet = route_set!("/api/v1", "serviceaccounts");
    pub const ROLES: RouteSet = route_set!("/apis/rbac.authorization.k8s.io/v1", "roles");
    pub const ROLEBINDINGS: RouteSet =
        route_set!("/apis/rbac.authorization.k8s.io/v1", "rolebindings");
    /// Cluster-scoped: only `list`/`list_all`, `create` and the item routes are meaningful
    /// (named like the namespaced ones, as the generic handlers count them).
    pub const CLUSTERROLES: RouteSet =
        route_set!("/apis/rbac.authorization.k8s.io/v1", "clusterroles");
    pub const CLUSTERROLEBINDINGS: RouteSet =
        route_set!("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings");
    pub const PODDISRUPTIONBUDGETS: RouteSet =
        route_set!("/apis/policy/v1", "poddisruptionbudgets");
    /// Cluster-scoped like ClusterRoles (named like the namespaced routes).
    pub const ROTATION_POLICIES: RouteSet =
        route_set!("/apis/entra-rotator.io/v1alpha1", "rotationpolicies");
    pub const ROTATOR_IDENTITIES: RouteSet =
        route_set!("/apis/entra-rotator.io/v1alpha1", "rotatoridentities");
    /// Cluster-scoped like RotationPolicies.
    pub const CLUSTER_ROTATOR_IDENTITIES: RouteSet =
        route_set!("/apis/entra-rotator.io/v1alpha1", "clusterrotatoridentities");
    /// `POST /api/v1/namespaces/{namespace}/serviceaccounts/{name}/token` (TokenRequest).
    pub const CREATE_SERVICE_ACCOUNT_TOKEN: &str = "POST /api/v1/namespaces/{namespace}/serviceaccounts/{name}/token";
    pub const VALIDATINGADMISSIONPOLICIES: RouteSet =
        route_set!("/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicies");
    pub const VALIDATINGADMISSIONPOLICYBINDINGS: RouteSet =
        route_set!("/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicybindings");
    /// core/v1 Pods: what the rotator lists to find the consumers of a Secret.
    pub const PODS: RouteSet = route_set!("/api/v1", "pods");
    /// `apiextensions.k8s.io/v1` CustomResourceDefinitions are cluster-scoped: their routes
    /// have no `/namespaces/{namespace}` (the namespaced names are unused).
    pub const CUSTOM_RESOURCE_DEFINITIONS: RouteSet = RouteSet {
        list: "GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        list_all: "GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        watch: "WATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        watch_all: "WATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        get: "GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
        create: "POST /apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        replace: "PUT /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
        patch: "PATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
        delete: "DELETE /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
        get_status: "GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}/status",
        replace_status: "PUT /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}/status",
        patch_status: "PATCH /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}/status",
    };

    pub const GET_SECRET: &str = SECRETS.get;
    pub const PATCH_SECRET: &str = SECRETS.patch;
    pub const CREATE_SECRET: &str = SECRETS.create;
    pub const LIST_SECRETS: &str = SECRETS.list;
    pub const LIST_ALL_SECRETS: &str = SECRETS.list_all;
    pub const WATCH_SECRETS: &str = SECRETS.watch;
    pub const WATCH_ALL_SECRETS: &str = SECRETS.watch_all;
    pub const VERSION: &str = "GET /version";
}

/// The user the stand-in says was refused, as a service account would be named.
const REFUSED_USER: &str = "system:serviceaccount:entra-rotator:entra-rotator";

/// One field of a Secret that a manager can own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Data(String),
    Annotation(String),
    Label(String),
    Type,
}

impl Field {
    /// The field's path as a conflict message spells it, e.g. `.data.SMTP_PASSWORD`.
    fn path(&self) -> String {
        match self {
            Field::Data(key) => format!(".data.{key}"),
            Field::Annotation(key) => format!(".metadata.annotations.{key}"),
            Field::Label(key) => format!(".metadata.labels.{key}"),
            Field::Type => ".type".to_string(),
        }
    }
}

/// `Apply` for server-side apply, `Update` for every other write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ManagedEntry {
    fields: BTreeSet<Field>,
    time: String,
}

#[derive(Clone, PartialEq, Eq)]
struct SecretObject {
    uid: String,
    creation_timestamp: String,
    resource_version: u64,
    type_: String,
    data: BTreeMap<String, Vec<u8>>,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    /// As sent when the Secret was created (external-secrets and sealed-secrets create
    /// theirs with a controller reference); later writes keep it.
    owner_references: Option<Value>,
    managed: BTreeMap<(String, Operation), ManagedEntry>,
}

/// A value a field holds, to compare what a manager applies with what is there.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FieldValue {
    Bytes(Vec<u8>),
    Text(String),
}

impl SecretObject {
    fn new(resource_version: u64) -> Self {
        Self {
            uid: Uuid::new_v4().to_string(),
            creation_timestamp: now(),
            resource_version,
            type_: "Opaque".to_string(),
            data: BTreeMap::new(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            owner_references: None,
            managed: BTreeMap::new(),
        }
    }

    fn get(&self, field: &Field) -> Option<FieldValue> {
        match field {
            Field::Data(key) => self.data.get(key).cloned().map(FieldValue::Bytes),
            Field::Annotation(key) => self.annotations.get(key).cloned().map(FieldValue::Text),
            Field::Label(key) => self.labels.get(key).cloned().map(FieldValue::Text),
            Field::Type => Some(FieldValue::Text(self.type_.clone())),
        }
    }

    fn set(&mut self, field: &Field, value: FieldValue) {
        match (field, value) {
            (Field::Data(key), FieldValue::Bytes(bytes)) => {
                self.data.insert(key.clone(), bytes);
            }
            (Field::Annotation(key), FieldValue::Text(text)) => {
                self.annotations.insert(key.clone(), text);
            }
            (Field::Label(key), FieldValue::Text(text)) => {
                self.labels.insert(key.clone(), text);
            }
            (Field::Type, FieldValue::Text(text)) => self.type_ = text,
            // Parsing builds data fields from bytes and the others from text.
            _ => {}
        }
    }

    fn remove(&mut self, field: &Field) {
        match field {
            Field::Data(key) => {
                self.data.remove(key);
            }
            Field::Annotation(key) => {
                self.annotations.remove(key);
            }
            Field::Label(key) => {
                self.labels.remove(key);
            }
            Field::Type => {}
        }
    }

    /// Managers other than `(manager, operation)` owning `field`.
    fn other_owners(&self, field: &Field, manager: &str, operation: Operation) -> Vec<String> {
        self.managed
            .iter()
            .filter(|((m, op), entry)| {
                (m.as_str(), *op) != (manager, operation) && entry.fields.contains(field)
            })
            .map(|((m, _), _)| m.clone())
            .collect()
    }

    /// Takes `field` away from every manager but `keep` (from all when `None`).
    fn disown(&mut self, field: &Field, keep: Option<(&str, Operation)>) {
        for ((m, op), entry) in self.managed.iter_mut() {
            if Some((m.as_str(), *op)) != keep {
                entry.fields.remove(field);
            }
        }
    }

    fn record(
        &mut self,
        manager: &str,
        operation: Operation,
        fields: impl IntoIterator<Item = Field>,
    ) {
        let entry = self
            .managed
            .entry((manager.to_string(), operation))
            .or_insert_with(|| ManagedEntry {
                fields: BTreeSet::new(),
                time: now(),
            });
        entry.fields.extend(fields);
        entry.time = now();
        self.managed.retain(|_, e| !e.fields.is_empty());
    }

    /// Equal apart from timestamps: decides whether a write changed anything.
    fn same_content(&self, other: &SecretObject) -> bool {
        let owned = |o: &SecretObject| -> Vec<((String, Operation), BTreeSet<Field>)> {
            o.managed
                .iter()
                .map(|(k, e)| (k.clone(), e.fields.clone()))
                .collect()
        };
        self.type_ == other.type_
            && self.data == other.data
            && self.annotations == other.annotations
            && self.labels == other.labels
            && owned(self) == owned(other)
    }

    fn to_json(&self, namespace: &str, name: &str) -> Value {
        let managed_fields: Vec<Value> = self
            .managed
            .iter()
            .map(|((manager, operation), entry)| {
                json!({
                    "manager": manager,
                    "operation": operation.as_str(),
                    "apiVersion": "v1",
                    "time": entry.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&entry.fields),
                })
            })
            .collect();
        let mut metadata = json!({
            "name": name,
            "namespace": namespace,
            "uid": self.uid,
            "resourceVersion": self.resource_version.to_string(),
            "creationTimestamp": self.creation_timestamp,
            "managedFields": managed_fields,
        });
        if !self.annotations.is_empty() {
            metadata["annotations"] = json!(self.annotations);
        }
        if !self.labels.is_empty() {
            metadata["labels"] = json!(self.labels);
        }
        if let Some(owners) = &self.owner_references {
            metadata["ownerReferences"] = owners.clone();
        }
        let data: BTreeMap<&String, String> = self
            .data
            .iter()
            .map(|(k, v)| (k, BASE64.encode(v)))
            .collect();
        let mut object = json!({ "kind": "Secret", "apiVersion": "v1", "metadata": metadata, "type": self.type_ });
        if !data.is_empty() {
            object["data"] = json!(data);
        }
        object
    }
}

/// The `fieldsV1` trie of a set of flat fields.
fn fields_v1(fields: &BTreeSet<Field>) -> Value {
    let mut root = Map::new();
    let mut insert = |path: &[&str], key: &str| {
        let mut node = &mut root;
        for part in path {
            node = node
                .entry(format!("f:{part}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap_or_else(|| unreachable!("trie nodes are objects"));
        }
        node.insert(format!("f:{key}"), json!({}));
    };
    for field in fields {
        match field {
            Field::Data(key) => insert(&["data"], key),
            Field::Annotation(key) => insert(&["metadata", "annotations"], key),
            Field::Label(key) => insert(&["metadata", "labels"], key),
            Field::Type => insert(&[], "type"),
        }
    }
    Value::Object(root)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A snapshot of one Secret for assertions. `Debug` hides the data values.
#[derive(Clone, PartialEq, Eq)]
pub struct StandinSecret {
    /// The data, decoded (lossily) as UTF-8.
    pub data: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub resource_version: u64,
    pub uid: String,
    /// The fields each `(manager, operation)` owns.
    pub managed_fields: BTreeMap<(String, Operation), BTreeSet<Field>>,
}

impl StandinSecret {
    /// The data keys `manager` owns through server-side apply.
    pub fn applied_keys(&self, manager: &str) -> BTreeSet<String> {
        self.managed_fields
            .get(&(manager.to_string(), Operation::Apply))
            .into_iter()
            .flatten()
            .filter_map(|f| match f {
                Field::Data(key) => Some(key.clone()),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Debug for StandinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandinSecret")
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .field("annotations", &self.annotations)
            .field("labels", &self.labels)
            .field("resource_version", &self.resource_version)
            .field("managed_fields", &self.managed_fields)
            .finish_non_exhaustive()
    }
}

struct Cluster {
    namespaces: BTreeSet<String>,
    forbidden: BTreeSet<String>,
    /// Labels set with `label_namespace`, besides `kubernetes.io/metadata.name`.
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<(String, String), SecretObject>,
    /// Every other kind, keyed by kind, namespace and name.
    objects: BTreeMap<(kinds::Kind, String, String), objects::StoredObject>,
    history: watch::History,
    /// How workloads roll out after a template change.
    rollout_mode: rollout::RolloutMode,
    /// Roll-outs begun and not finished, with when they finish (`None`: when the test says).
    pending_rollouts: BTreeMap<(kinds::Kind, String, String), Option<std::time::Instant>>,
    /// Signs the tokens the TokenRequest API hands out (`sign_service_account_tokens`).
    service_account_issuer: Option<crate::federation::ServiceAccountIssuer>,
    resource_version: u64,
}

impl Cluster {
    fn new() -> Self {
        Self {
            namespaces: BTreeSet::from(["default".to_string()]),
            forbidden: BTreeSet::new(),
            namespace_labels: BTreeMap::new(),
            secrets: BTreeMap::new(),
            objects: BTreeMap::new(),
            history: watch::History::new(),
            rollout_mode: rollout::RolloutMode::Immediate,
            pending_rollouts: BTreeMap::new(),
            service_account_issuer: None,
            resource_version: 0,
        }
    }

    fn next_resource_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Removes a Secret, recording its `DELETED` event; the object as it was deleted.
    fn remove_secret(&mut self, namespace: &str, name: &str) -> Option<Value> {
        let secret = self
            .secrets
            .remove(&(namespace.to_string(), name.to_string()))?;
        let version = self.next_resource_version();
        let mut object = secret.to_json(namespace, name);
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.record_change(
            kinds::Kind::Secret,
            namespace,
            watch::ChangeType::Deleted,
            object.clone(),
            None,
        );
        Some(object)
    }
}

#[derive(Clone)]
struct Shared {
    faults: Faults,
    cluster: Arc<Mutex<Cluster>>,
}

impl Shared {
    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        super::lock(&self.cluster)
    }
}

/// A running stand-in API server; stops when dropped. Namespace `default` exists.
pub struct KubernetesStandin {
    url: String,
    shared: Shared,
    /// Keeps the server running; dropping it stops it.
    _task: ServerTask,
    /// Finishes delayed roll-outs ([`RolloutMode::After`]); stops with the server.
    _rollouts: ServerTask,
}

impl fmt::Debug for KubernetesStandin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesStandin")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl KubernetesStandin {
    /// Starts serving on a free loopback port with TLS from `pki`.
    pub async fn start(pki: &TestPki) -> anyhow::Result<Self> {
        let shared = Shared {
            faults: Faults::with_error_body(fault_status),
            cluster: Arc::new(Mutex::new(Cluster::new())),
        };
        let (address, task) = serve_tls(router(shared.clone()), pki).await?;
        let cluster = Arc::downgrade(&shared.cluster);
        let rollouts = ServerTask::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
            loop {
                tick.tick().await;
                let Some(cluster) = cluster.upgrade() else { return };
                rollout::complete_due(&mut super::lock(&cluster));
            }
        }));
        Ok(Self {
            url: format!("https://{address}"),
            shared,
            _task: task,
            _rollouts: rollouts,
        })
    }

    /// The API server URL for `kube::Config::new`, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Fault queues and request counts, keyed by [`routes`].
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    pub fn create_namespace(&self, namespace: &str) {
        self.shared
            .cluster()
            .namespaces
            .insert(namespace.to_string());
    }

    /// Makes `POST …/serviceaccounts/{name}/token` (the TokenRequest API) answer with tokens
    /// `issuer` signs, as the cluster's service-account issuer does; without it, 503.
    pub fn sign_service_account_tokens(&self, issuer: crate::federation::ServiceAccountIssuer) {
        self.shared.cluster().service_account_issuer = Some(issuer);
    }

    /// Labels `namespace` (creating it), as a platform team labels the namespaces a
    /// policy's `namespaceSelector` matches.
    pub fn label_namespace(&self, namespace: &str, key: &str, value: &str) {
        let mut cluster = self.shared.cluster();
        cluster.namespaces.insert(namespace.to_string());
        cluster
            .namespace_labels
            .entry(namespace.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
    }

    /// Every request about Secrets in `namespace` is refused with 403, as when the
    /// rotator's ServiceAccount has no Role there.
    pub fn forbid_namespace(&self, namespace: &str) {
        self.shared
            .cluster()
            .forbidden
            .insert(namespace.to_string());
    }

    /// A snapshot of the Secret, if it exists.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<StandinSecret> {
        let cluster = self.shared.cluster();
        let object = cluster
            .secrets
            .get(&(namespace.to_string(), name.to_string()))?;
        Some(StandinSecret {
            data: object
                .data
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            annotations: object.annotations.clone(),
            labels: object.labels.clone(),
            resource_version: object.resource_version,
            uid: object.uid.clone(),
            managed_fields: object
                .managed
                .iter()
                .map(|(k, e)| (k.clone(), e.fields.clone()))
                .collect(),
        })
    }

    /// Writes `data` keys into the Secret (creating it and its namespace if needed) as an
    /// `Update` by `manager`, the way `kubectl edit` or a Helm release would.
    pub fn put_secret_as(&self, namespace: &str, name: &str, manager: &str, data: &[(&str, &str)]) {
        let fields = data.iter().map(|(k, v)| (Field::Data(k.to_string()), FieldValue::Bytes(v.as_bytes().to_vec())));
        self.update_secret_as(namespace, name, manager, fields.collect());
    }

    /// Sets labels and annotations on the Secret (creating it if needed) as an `Update` by
    /// `manager`, e.g. Helm's `app.kubernetes.io/managed-by: Helm`.
    pub fn put_secret_metadata_as(
        &self,
        namespace: &str,
        name: &str,
        manager: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) {
        let text = |v: &str| FieldValue::Text(v.to_string());
        let fields = labels
            .iter()
            .map(|(k, v)| (Field::Label(k.to_string()), text(v)))
            .chain(annotations.iter().map(|(k, v)| (Field::Annotation(k.to_string()), text(v))));
        self.update_secret_as(namespace, name, manager, fields.collect());
    }

    fn update_secret_as(&self, namespace: &str, name: &str, manager: &str, fields: Vec<(Field, FieldValue)>) {
        let mut cluster = self.shared.cluster();
        cluster.namespaces.insert(namespace.to_string());
        let version = cluster.next_resource_version();
        let key = (namespace.to_string(), name.to_string());
        let previous = cluster
            .secrets
            .get(&key)
            .map(|o| o.to_json(namespace, name));
        let object = cluster
            .secrets
            .entry(key)
            .or_insert_with(|| SecretObject::new(version));
        for (field, value) in fields {
            object.set(&field, value);
            object.disown(&field, Some((manager, Operation::Update)));
            object.record(manager, Operation::Update, [field]);
        }
        object.resource_version = version;
        let current = object.to_json(namespace, name);
        let change = if previous.is_some() {
            watch::ChangeType::Modified
        } else {
            watch::ChangeType::Added
        };
        cluster.record_change(kinds::Kind::Secret, namespace, change, current, previous);
    }
}

fn router(shared: Shared) -> Router {
    let collection = "/apis/{group}/{version}/namespaces/{namespace}/{plural}";
    let item = "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}";
    let status = "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status";
    Router::new()
        .route("/version", get(version))
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route(
            "/api/v1/namespaces",
            get(namespaces::list).post(namespaces::create),
        )
        .route(
            "/api/v1/namespaces/{namespace}",
            get(namespaces::get).patch(namespaces::patch),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{plural}",
            get(api::core_collection).post(api::core_create),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{plural}/{name}",
            get(api::core_get_item)
                .put(api::core_replace_item)
                .patch(api::core_patch_item)
                .delete(api::core_delete_item),
        )
        .route("/apis", get(discovery::groups))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route(
            "/api/v1/namespaces/{namespace}/secrets",
            get(api::secrets_in_namespace).post(create_secret),
        )
        .route(
            "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            axum::routing::post(create_service_account_token),
        )
        .route("/api/v1/secrets", get(api::all_secrets))
        .route("/api/v1/events", get(core_events::everywhere))
        .route(
            "/api/v1/namespaces/{namespace}/events",
            get(core_events::in_namespace),
        )
        .route("/api/v1/{plural}", get(api::core_list_all))
        .route(
            "/api/v1/namespaces/{namespace}/secrets/{name}",
            get(get_secret)
                .patch(patch_secret)
                .put(replace_secret)
                .delete(delete_secret),
        )
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/api/{version}", get(openapi::core_document))
        .route(
            "/openapi/v3/apis/{group}/{version}",
            get(openapi::group_document),
        )
        .route(
            "/apis/{group}/{version}/{plural}",
            get(api::cluster_collection).post(api::cluster_create),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}",
            get(api::cluster_get_item)
                .put(api::cluster_replace_item)
                .patch(api::cluster_patch_item)
                .delete(api::cluster_delete_item),
        )
        .route(
            collection,
            get(api::namespaced_collection).post(api::create),
        )
        .route(
            item,
            get(api::get_item)
                .put(api::replace_item)
                .patch(api::patch_item)
                .delete(api::delete_item),
        )
        .route(
            status,
            get(api::get_status)
                .put(api::replace_status)
                .patch(api::patch_status),
        )
        .fallback(|| async { Refusal::from(kinds::ApiError::no_such_resource()) })
        .method_not_allowed_fallback(|| async {
            Refusal::from(kinds::ApiError::method_not_allowed())
        })
        .with_state(shared)
}

type Params = Query<HashMap<String, String>>;

/// A `metav1.Status` answer sent instead of doing the work (boxed: responses are large).
struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Refusal {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    Refusal::from((code, axum::Json(body)).into_response())
}

fn not_found(name: &str) -> Refusal {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("secrets \"{name}\" not found"),
        json!({ "name": name, "kind": "secrets" }),
    )
}

/// The TokenRequest API: a token of an existing ServiceAccount for the audiences asked
/// (the first one is signed in), for `expirationSeconds` (default 1 h, at least 10 min).
async fn create_service_account_token(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if let Some(fault) = shared.faults.intercept(routes::CREATE_SERVICE_ACCOUNT_TOKEN).await {
        return Ok(fault);
    }
    let body = protobuf::request_body(&headers, &body)?;
    let cluster = shared.cluster();
    let key = (kinds::Kind::ServiceAccount, namespace.clone(), name.clone());
    if !cluster.objects.contains_key(&key) {
        return Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("serviceaccounts \"{name}\" not found"),
            json!({ "name": name, "kind": "serviceaccounts" }),
        ));
    }
    let Some(issuer) = cluster.service_account_issuer.clone() else {
        return Err(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the stand-in has no service-account issuer (sign_service_account_tokens)".to_string(),
            json!({}),
        ));
    };
    drop(cluster);
    let audience = body.pointer("/spec/audiences/0").and_then(Value::as_str).unwrap_or_default().to_string();
    let seconds = body.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
    if audience.is_empty() || seconds < 600 {
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "TokenRequest is invalid: spec.audiences must name one audience and spec.expirationSeconds must be at least 600".to_string(),
            json!({ "name": name, "kind": "TokenRequest" }),
        ));
    }
    let now = Utc::now();
    let lifetime = chrono::Duration::seconds(seconds);
    let token = issuer.token(&namespace, &name, &audience, now, lifetime).map_err(|e| {
        status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string(), json!({}))
    })?;
    let answer = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": { "name": name, "namespace": namespace, "creationTimestamp": null },
        "spec": { "audiences": [audience], "expirationSeconds": seconds },
        "status": {
            "token": token,
            "expirationTimestamp": (now + lifetime).to_rfc3339_opts(SecondsFormat::Secs, true),
        },
    });
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

fn namespace_not_found(namespace: &str) -> Refusal {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("namespaces \"{namespace}\" not found"),
        json!({ "name": namespace, "kind": "namespaces" }),
    )
}

fn forbidden(verb: &str, namespace: &str, name: Option<&str>) -> Refusal {
    let subject = name.map_or("secrets".to_string(), |n| format!("secrets \"{n}\""));
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{REFUSED_USER}\" cannot {verb} resource \"secrets\" in API group \"\" in the namespace \"{namespace}\""
        ),
        json!({ "name": name.unwrap_or_default(), "kind": "secrets" }),
    )
}

fn bad_request(message: String) -> Refusal {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}))
}

fn invalid(name: &str, detail: String) -> Refusal {
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("Secret \"{name}\" is invalid: {detail}"),
        json!({ "name": name, "kind": "Secret" }),
    )
}

/// The body of an injected status fault, as a `metav1.Status`.
fn fault_status(code: u16) -> Value {
    let (reason, message) = match code {
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request",
        ),
        409 => (
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
        ),
        s if s >= 500 => (
            "InternalError",
            "an error on the server has prevented the request from succeeding",
        ),
        _ => ("BadRequest", "injected fault"),
    };
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {}, "code": code,
    })
}

fn ok(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

async fn version(State(shared): State<Shared>) -> Response {
    if let Some(fault) = shared.faults.intercept(routes::VERSION).await {
        return fault;
    }
    let body =
        json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64" });
    ok(StatusCode::OK, body)
}

/// `PUT`: the body replaces the Secret's data, annotations, labels and type, written as an
/// `Update` (what helm does to its release Secrets).
async fn replace_secret(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if let Some(fault) = shared.faults.intercept(routes::SECRETS.replace).await {
        return Ok(fault);
    }
    if shared.cluster().forbidden.contains(&namespace) {
        return Err(forbidden("update", &namespace, Some(&name)));
    }
    let body = protobuf::request_body(&headers, &body)?;
    check_name_matches(&body, &name)?;
    let mut assigned = assignments(&name, &body)?;
    let manager = update_manager(&params, &headers);
    let mut cluster = shared.cluster();
    let key = (namespace.clone(), name.clone());
    let Some(existing) = cluster.secrets.get(&key).cloned() else {
        return Err(not_found(&name));
    };
    check_resource_version(&body, Some(&existing))?;
    for field in assignments(&name, &existing.to_json(&namespace, &name))?.into_keys() {
        assigned.entry(field).or_insert(None);
    }
    let mut object = existing.clone();
    update_fields(&mut object, &manager, assigned);
    Ok(store(
        &mut cluster,
        key,
        Some(existing),
        object,
        &namespace,
        &name,
    ))
}

/// `DELETE`: answers the deleted Secret, as the API server does for objects without
/// finalizers.
async fn delete_secret(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    if let Some(fault) = shared.faults.intercept(routes::SECRETS.delete).await {
        return Ok(fault);
    }
    if shared.cluster().forbidden.contains(&namespace) {
        return Err(forbidden("delete", &namespace, Some(&name)));
    }
    let deleted = shared.cluster().remove_secret(&namespace, &name);
    deleted
        .map(|object| ok(StatusCode::OK, object))
        .ok_or_else(|| not_found(&name))
}

async fn get_secret(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    if let Some(fault) = shared.faults.intercept(routes::GET_SECRET).await {
        return Ok(fault);
    }
    let cluster = shared.cluster();
    if cluster.forbidden.contains(&namespace) {
        return Err(forbidden("get", &namespace, Some(&name)));
    }
    match cluster.secrets.get(&(namespace.clone(), name.clone())) {
        Some(object) if table::wanted(&headers) => {
            let rendered = object.to_json(&namespace, &name);
            Ok(ok(
                StatusCode::OK,
                table::of_object(&cluster, kinds::Kind::Secret, &rendered),
            ))
        }
        Some(object) => Ok(ok(StatusCode::OK, object.to_json(&namespace, &name))),
        None => Err(not_found(&name)),
    }
}

/// The writable fields a request body sets, with their values (`None`: remove, merge patch only).
type Assignments = BTreeMap<Field, Option<FieldValue>>;

/// Reads `data`, `stringData`, `metadata.annotations`, `metadata.labels` and `type`.
fn assignments(name: &str, body: &Value) -> Result<Assignments, Refusal> {
    let mut out = Assignments::new();
    let mut push_map = |map: Option<&Value>,
                        make: &dyn Fn(&str) -> Field,
                        decode: &dyn Fn(&str) -> Result<FieldValue, Refusal>|
     -> Result<(), Refusal> {
        let Some(map) = map.and_then(Value::as_object) else {
            return Ok(());
        };
        for (key, value) in map {
            let assigned = match value {
                Value::Null => None,
                Value::String(text) => Some(decode(text)?),
                other => {
                    return Err(bad_request(format!(
                        "{key}: expected a string, got {other}"
                    )));
                }
            };
            out.insert(make(key), assigned);
        }
        Ok(())
    };
    let data_key = |key: &str| Field::Data(key.to_string());
    let decode_base64 = |text: &str| {
        BASE64
            .decode(text)
            .map(FieldValue::Bytes)
            .map_err(|e| bad_request(format!("illegal base64 data in Secret data: {e}")))
    };
    let as_bytes = |text: &str| Ok(FieldValue::Bytes(text.as_bytes().to_vec()));
    let as_text = |text: &str| Ok(FieldValue::Text(text.to_string()));
    push_map(body.get("data"), &data_key, &decode_base64)?;
    push_map(body.get("stringData"), &data_key, &as_bytes)?;
    let metadata = body.get("metadata");
    push_map(
        metadata.and_then(|m| m.get("annotations")),
        &|k| Field::Annotation(k.to_string()),
        &as_text,
    )?;
    push_map(
        metadata.and_then(|m| m.get("labels")),
        &|k| Field::Label(k.to_string()),
        &as_text,
    )?;
    if let Some(type_) = body.get("type").and_then(Value::as_str) {
        out.insert(Field::Type, Some(FieldValue::Text(type_.to_string())));
    }
    validate_keys(name, &out)?;
    Ok(out)
}

fn validate_keys(name: &str, assignments: &Assignments) -> Result<(), Refusal> {
    for field in assignments.keys() {
        if let Field::Data(key) = field {
            let valid = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !valid {
                return Err(invalid(
                    name,
                    format!(
                        "data[{key}]: Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_name_matches(body: &Value, name: &str) -> Result<(), Refusal> {
    match body.pointer("/metadata/name").and_then(Value::as_str) {
        Some(in_body) if in_body != name => Err(bad_request(format!(
            "the name of the object ({in_body}) does not match the name on the URL ({name})"
        ))),
        _ => Ok(()),
    }
}

fn check_resource_version(body: &Value, object: Option<&SecretObject>) -> Result<(), Refusal> {
    let Some(wanted) = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    else {
        return Ok(());
    };
    if object.is_some_and(|o| o.resource_version.to_string() == wanted) {
        return Ok(());
    }
    Err(status(
        StatusCode::CONFLICT,
        "Conflict",
        "Operation cannot be fulfilled on secrets: the object has been modified; please apply your changes to the latest version and try again".to_string(),
        json!({ "kind": "secrets" }),
    ))
}

/// The manager of a non-apply write: `fieldManager`, else the User-Agent's first word.
fn update_manager(params: &HashMap<String, String>, headers: &HeaderMap) -> String {
    params.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    })
}

async fn patch_secret(
    State(shared): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if let Some(fault) = shared.faults.intercept(routes::PATCH_SECRET).await {
        return Ok(fault);
    }
    if shared.cluster().forbidden.contains(&namespace) {
        return Err(forbidden("patch", &namespace, Some(&name)));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    match media_type {
        "application/apply-patch+yaml" => apply(&shared, &namespace, &name, &params, &body),
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            merge(&shared, &namespace, &name, &params, &headers, &body)
        }
        "application/json-patch+json" => {
            json_patch(&shared, &namespace, &name, &params, &headers, &body)
        }
        other => Err(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
            ),
            json!({}),
        )),
    }
}

fn apply(
    shared: &Shared,
    namespace: &str,
    name: &str,
    params: &HashMap<String, String>,
    body: &[u8],
) -> Result<Response, Refusal> {
    let Some(manager) = params.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".to_string(),
        ));
    };
    let force = params.get("force").is_some_and(|f| f == "true");
    let body: Value = serde_yaml::from_slice(body)
        .map_err(|e| bad_request(format!("error decoding YAML: {e}")))?;
    if body.get("apiVersion").and_then(Value::as_str) != Some("v1")
        || body.get("kind").and_then(Value::as_str) != Some("Secret")
    {
        return Err(bad_request(
            "apply patches must set apiVersion: v1 and kind: Secret".to_string(),
        ));
    }
    check_name_matches(&body, name)?;
    let assigned = assignments(name, &body)?;
    let mut cluster = shared.cluster();
    if !cluster.namespaces.contains(namespace) {
        return Err(namespace_not_found(namespace));
    }
    let key = (namespace.to_string(), name.to_string());
    check_resource_version(&body, cluster.secrets.get(&key))?;
    let existing = cluster.secrets.get(&key).cloned();
    let next_version = cluster.resource_version + 1;
    let mut object = existing
        .clone()
        .unwrap_or_else(|| SecretObject::new(next_version));
    apply_fields(&mut object, manager, force, assigned)?;
    Ok(store(&mut cluster, key, existing, object, namespace, name))
}

/// Server-side apply of flat fields by `manager`: conflicts, forced takeover, removal of
/// fields the manager no longer applies, then the new values and ownership.
fn apply_fields(
    object: &mut SecretObject,
    manager: &str,
    force: bool,
    assigned: Assignments,
) -> Result<(), Refusal> {
    let applied: BTreeMap<Field, FieldValue> = assigned
        .into_iter()
        .filter_map(|(field, value)| value.map(|v| (field, v)))
        .collect();
    let last_applied = last_applied_fields(object);
    let mut conflicts = Vec::new();
    for (field, value) in &applied {
        if object.get(field).as_ref() == Some(value) {
            continue;
        }
        for other in object.other_owners(field, manager, Operation::Apply) {
            // The API server's last-applied manager: client-side apply's fields that its
            // last-applied configuration lists are handed over to server-side apply without
            // a conflict (`kubectl apply --server-side` after `kubectl apply`).
            if other == CLIENT_SIDE_APPLY && last_applied.contains(field) {
                object.disown(field, Some((manager, Operation::Apply)));
                continue;
            }
            conflicts.push((other, field.clone()));
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict(&conflicts));
        }
        for (_, field) in &conflicts {
            object.disown(field, Some((manager, Operation::Apply)));
        }
    }
    let previously = object
        .managed
        .remove(&(manager.to_string(), Operation::Apply))
        .map(|entry| entry.fields)
        .unwrap_or_default();
    for dropped in previously.iter().filter(|f| !applied.contains_key(*f)) {
        if object
            .other_owners(dropped, manager, Operation::Apply)
            .is_empty()
        {
            object.remove(dropped);
        }
    }
    for (field, value) in &applied {
        object.set(field, value.clone());
    }
    object.record(manager, Operation::Apply, applied.into_keys());
    Ok(())
}

/// The field manager of `kubectl apply` without `--server-side`.
const CLIENT_SIDE_APPLY: &str = "kubectl-client-side-apply";

/// The fields the `kubectl.kubernetes.io/last-applied-configuration` annotation sets.
fn last_applied_fields(object: &SecretObject) -> BTreeSet<Field> {
    let Some(last) = object
        .annotations
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return BTreeSet::new();
    };
    let keys = |value: &Value| -> Vec<String> {
        value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect()
    };
    let mut fields = BTreeSet::new();
    fields.extend(keys(&last["data"]).into_iter().map(Field::Data));
    fields.extend(keys(&last["stringData"]).into_iter().map(Field::Data));
    fields.extend(
        keys(&last["metadata"]["annotations"])
            .into_iter()
            .map(Field::Annotation),
    );
    fields.extend(
        keys(&last["metadata"]["labels"])
            .into_iter()
            .map(Field::Label),
    );
    if last.get("type").is_some() {
        fields.insert(Field::Type);
    }
    fields
}

fn conflict(conflicts: &[(String, Field)]) -> Refusal {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(manager, field)| format!("conflict with \"{manager}\" using v1: {}", field.path()))
        .collect();
    let causes: Vec<Value> = conflicts
        .iter()
        .zip(&lines)
        .map(|((_, field), line)| json!({ "reason": "FieldManagerConflict", "message": line, "field": field.path() }))
        .collect();
    let noun = if conflicts.len() == 1 {
        "conflict"
    } else {
        "conflicts"
    };
    let message = if lines.len() == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!(
            "Apply failed with {} {noun}: {}",
            lines.len(),
            lines.join("\n")
        )
    };
    status(
        StatusCode::CONFLICT,
        "Conflict",
        message,
        json!({ "causes": causes }),
    )
}

/// A JSON patch (RFC 6902, what kubectl sends to migrate managed fields to server-side
/// apply): played on the Secret as JSON; the writable fields it changes are written as an
/// `Update`, the ones it removes are removed.
fn json_patch(
    shared: &Shared,
    namespace: &str,
    name: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let operations: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("error decoding JSON: {e}")))?;
    let manager = update_manager(params, headers);
    let mut cluster = shared.cluster();
    let key = (namespace.to_string(), name.to_string());
    let Some(existing) = cluster.secrets.get(&key).cloned() else {
        return Err(not_found(name));
    };
    let mut patched = existing.to_json(namespace, name);
    document::json_patch(&mut patched, &operations).map_err(|e| invalid(name, e))?;
    check_resource_version(&patched, Some(&existing))?;
    let mut assigned = assignments(name, &patched)?;
    let before = assignments(name, &existing.to_json(namespace, name))?;
    for field in before.into_keys() {
        assigned.entry(field).or_insert(None);
    }
    let mut object = existing.clone();
    update_fields(&mut object, &manager, assigned);
    let rendered_before = existing.to_json(namespace, name);
    let sent_managed = patched.pointer("/metadata/managedFields");
    if sent_managed != rendered_before.pointer("/metadata/managedFields") {
        // A write that sets managedFields replaces them (how kubectl hands client-side
        // apply ownership over to server-side apply).
        object.managed = parse_managed_fields(sent_managed.unwrap_or(&Value::Null))
            .map_err(|e| invalid(name, format!("metadata.managedFields: Invalid value: {e}")))?;
    }
    Ok(store(
        &mut cluster,
        key,
        Some(existing),
        object,
        namespace,
        name,
    ))
}

/// Reads `metadata.managedFields` as a client sent them: manager, operation and the flat
/// fields of their `fieldsV1` trie.
fn parse_managed_fields(
    entries: &Value,
) -> Result<BTreeMap<(String, Operation), ManagedEntry>, String> {
    let mut out = BTreeMap::new();
    for entry in entries.as_array().into_iter().flatten() {
        let manager = entry["manager"]
            .as_str()
            .ok_or("every entry needs a manager")?;
        let operation = match entry["operation"].as_str() {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => return Err(format!("operation {other:?}: must be Apply or Update")),
        };
        let trie = &entry["fieldsV1"];
        let keys = |node: &Value| -> Vec<String> {
            node.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("f:").map(str::to_string))
                .collect()
        };
        let mut fields = BTreeSet::new();
        fields.extend(keys(&trie["f:data"]).into_iter().map(Field::Data));
        fields.extend(
            keys(&trie["f:metadata"]["f:annotations"])
                .into_iter()
                .map(Field::Annotation),
        );
        fields.extend(
            keys(&trie["f:metadata"]["f:labels"])
                .into_iter()
                .map(Field::Label),
        );
        if trie.get("f:type").is_some() {
            fields.insert(Field::Type);
        }
        let time = entry["time"].as_str().map_or_else(now, str::to_string);
        out.insert(
            (manager.to_string(), operation),
            ManagedEntry { fields, time },
        );
    }
    Ok(out)
}

fn merge(
    shared: &Shared,
    namespace: &str,
    name: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("error decoding JSON: {e}")))?;
    let assigned = assignments(name, &body)?;
    let manager = update_manager(params, headers);
    let mut cluster = shared.cluster();
    let key = (namespace.to_string(), name.to_string());
    let Some(existing) = cluster.secrets.get(&key).cloned() else {
        return Err(not_found(name));
    };
    check_resource_version(&body, Some(&existing))?;
    let mut object = existing.clone();
    update_fields(&mut object, &manager, assigned);
    Ok(store(
        &mut cluster,
        key,
        Some(existing),
        object,
        namespace,
        name,
    ))
}

/// A non-apply write: changed fields move to `manager`; nulls remove the field.
fn update_fields(object: &mut SecretObject, manager: &str, assigned: Assignments) {
    let mut owned = Vec::new();
    for (field, value) in assigned {
        match value {
            Some(value) => {
                if object.get(&field).as_ref() != Some(&value) {
                    object.disown(&field, Some((manager, Operation::Update)));
                }
                object.set(&field, value);
                owned.push(field);
            }
            None => {
                object.remove(&field);
                object.disown(&field, None);
            }
        }
    }
    object.record(manager, Operation::Update, owned);
}

async fn create_secret(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if let Some(fault) = shared.faults.intercept(routes::CREATE_SECRET).await {
        return Ok(fault);
    }
    let body = protobuf::request_body(&headers, &body)?;
    let Some(name) = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(invalid(
            "",
            "metadata.name: Required value: name or generateName is required".to_string(),
        ));
    };
    if shared.cluster().forbidden.contains(&namespace) {
        return Err(forbidden("create", &namespace, None));
    }
    let assigned = assignments(&name, &body)?;
    let manager = update_manager(&params, &headers);
    let mut cluster = shared.cluster();
    if !cluster.namespaces.contains(&namespace) {
        return Err(namespace_not_found(&namespace));
    }
    let key = (namespace.clone(), name.clone());
    if cluster.secrets.contains_key(&key) {
        return Err(status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("secrets \"{name}\" already exists"),
            json!({ "name": name, "kind": "secrets" }),
        ));
    }
    let mut object = SecretObject::new(cluster.resource_version + 1);
    object.owner_references = body.pointer("/metadata/ownerReferences").filter(|owners| owners.is_array()).cloned();
    update_fields(&mut object, &manager, assigned);
    Ok(store(&mut cluster, key, None, object, &namespace, &name))
}

/// Saves `object`, bumping `resourceVersion` only when something changed (a no-op apply
/// leaves the object as it was, as on a real API server), and answers with it: 201 when
/// the write created it.
fn store(
    cluster: &mut Cluster,
    key: (String, String),
    existing: Option<SecretObject>,
    mut object: SecretObject,
    namespace: &str,
    name: &str,
) -> Response {
    let code = if existing.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    match &existing {
        Some(existing) if existing.same_content(&object) => {
            let body = existing.to_json(namespace, name);
            return ok(code, body);
        }
        _ => object.resource_version = cluster.next_resource_version(),
    }
    let body = object.to_json(namespace, name);
    let (change, previous) = match existing {
        Some(existing) => (
            watch::ChangeType::Modified,
            Some(existing.to_json(namespace, name)),
        ),
        None => (watch::ChangeType::Added, None),
    };
    cluster.record_change(
        kinds::Kind::Secret,
        namespace,
        change,
        body.clone(),
        previous,
    );
    cluster.secrets.insert(key, object);
    ok(code, body)
}
