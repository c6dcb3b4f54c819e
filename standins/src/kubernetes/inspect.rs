//! Test-facing helpers: seed and inspect the stand-in's objects without HTTP. Seeding goes
//! through the same write pipeline as the API (so watches see it and versions move) but is
//! neither counted nor faulted.

use super::KubernetesStandin;
use super::kinds::{ApiError, Kind, WorkloadKind};
use super::objects::{self, Author, Target, Write};
use super::rollout::{self, RolloutMode};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The field manager seeding helpers write as, like a person using `kubectl`.
const SEEDING_MANAGER: &str = "kubectl";

/// One `events.k8s.io/v1` Event as recorded, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandinEvent {
    pub name: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub note: Option<String>,
    pub action: Option<String>,
    pub reporting_controller: Option<String>,
    /// `kind/name` of the object the event is about, e.g. `ClientSecretRotation/dify-smtp`.
    pub regarding: Option<String>,
    /// `series.count` once the Recorder has aggregated repeats; 1 otherwise.
    pub count: u64,
}

impl StandinEvent {
    fn from_json(event: &Value) -> Self {
        let text = |pointer: &str| {
            event
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let regarding = match (text("/regarding/kind"), text("/regarding/name")) {
            (Some(kind), Some(name)) => Some(format!("{kind}/{name}")),
            _ => None,
        };
        Self {
            name: text("/metadata/name").unwrap_or_default(),
            type_: text("/type").unwrap_or_default(),
            reason: text("/reason").unwrap_or_default(),
            note: text("/note"),
            action: text("/action"),
            reporting_controller: text("/reportingController"),
            regarding,
            count: event
                .pointer("/series/count")
                .and_then(Value::as_u64)
                .unwrap_or(1),
        }
    }
}

impl KubernetesStandin {
    fn seed(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        target: Target,
        write: Write,
    ) -> Result<Value, ApiError> {
        let mut cluster = self.shared.cluster();
        if kind.info().namespaced {
            cluster.namespaces.insert(namespace.to_string());
        }
        objects::write(
            &mut cluster,
            kind,
            namespace,
            name,
            target,
            write,
            Author {
                manager: SEEDING_MANAGER,
                strict: false,
            },
        )
        .map(|(_, object)| object)
    }

    fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let cluster = self.shared.cluster();
        cluster
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .map(|object| object.render(kind.info()))
    }

    /// Creates a `ClientSecretRotation` (and its namespace) with `spec`, as `kubectl apply`
    /// of a new object would; returns the stored object.
    pub fn create_rotation(
        &self,
        namespace: &str,
        name: &str,
        spec: Value,
    ) -> Result<Value, ApiError> {
        let body = json!({ "metadata": { "name": name }, "spec": spec });
        self.seed(
            Kind::Rotation,
            namespace,
            name,
            Target::Main,
            Write::Create(body),
        )
    }

    /// Creates a cluster-scoped `RotationPolicy` with `spec`, as an administrator would.
    pub fn create_rotation_policy(&self, name: &str, spec: Value) -> Result<Value, ApiError> {
        let body = json!({ "metadata": { "name": name }, "spec": spec });
        self.seed(
            Kind::RotationPolicy,
            "",
            name,
            Target::Main,
            Write::Create(body),
        )
    }

    /// Creates a `RotatorIdentity` in `namespace` (creating it) with `spec`, as a team would.
    pub fn create_rotator_identity(&self, namespace: &str, name: &str, spec: Value) -> Result<Value, ApiError> {
        let body = json!({ "metadata": { "name": name }, "spec": spec });
        self.seed(Kind::RotatorIdentity, namespace, name, Target::Main, Write::Create(body))
    }

    /// Creates a cluster-scoped `ClusterRotatorIdentity` with `spec`, as an administrator would.
    pub fn create_cluster_rotator_identity(&self, name: &str, spec: Value) -> Result<Value, ApiError> {
        let body = json!({ "metadata": { "name": name }, "spec": spec });
        self.seed(Kind::ClusterRotatorIdentity, "", name, Target::Main, Write::Create(body))
    }

    /// Creates a ServiceAccount in `namespace` (creating it).
    pub fn create_service_account(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let body = json!({ "metadata": { "name": name } });
        self.seed(Kind::ServiceAccount, namespace, name, Target::Main, Write::Create(body))
    }

    /// The whole `ClientSecretRotation`, status and `managedFields` included.
    pub fn rotation(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object(Kind::Rotation, namespace, name)
    }

    /// JSON-merge-patches the rotation's `spec` (a user edit: bumps `metadata.generation`).
    pub fn patch_rotation_spec(
        &self,
        namespace: &str,
        name: &str,
        spec_patch: Value,
    ) -> Result<Value, ApiError> {
        let patch = json!({ "spec": spec_patch });
        self.seed(
            Kind::Rotation,
            namespace,
            name,
            Target::Main,
            Write::MergePatch(patch),
        )
    }

    /// Sets one annotation of the rotation, as `kubectl annotate --overwrite` does (metadata
    /// only: the generation stays).
    pub fn annotate_rotation(&self, namespace: &str, name: &str, key: &str, value: &str) -> Result<Value, ApiError> {
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        self.seed(Kind::Rotation, namespace, name, Target::Main, Write::MergePatch(patch))
    }

    /// JSON-merge-patches the rotation's `status`, as a previous leader would have left it.
    pub fn patch_rotation_status(
        &self,
        namespace: &str,
        name: &str,
        status_patch: Value,
    ) -> Result<Value, ApiError> {
        let patch = json!({ "status": status_patch });
        self.seed(
            Kind::Rotation,
            namespace,
            name,
            Target::Status,
            Write::MergePatch(patch),
        )
    }

    /// Deletes the rotation; `false` if it did not exist.
    pub fn delete_rotation(&self, namespace: &str, name: &str) -> bool {
        objects::delete(&mut self.shared.cluster(), Kind::Rotation, namespace, name).is_ok()
    }

    /// The Events recorded in `namespace`, oldest first.
    pub fn events(&self, namespace: &str) -> Vec<StandinEvent> {
        let cluster = self.shared.cluster();
        let mut events: Vec<(u64, StandinEvent)> = cluster
            .objects
            .iter()
            .filter(|((kind, ns, _), _)| *kind == Kind::Event && ns == namespace)
            .map(|(_, object)| {
                (
                    object.created_version,
                    StandinEvent::from_json(&object.body),
                )
            })
            .collect();
        events.sort_by_key(|(created, _)| *created);
        events.into_iter().map(|(_, event)| event).collect()
    }

    /// The Lease, if it exists.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object(Kind::Lease, namespace, name)
    }

    /// Creates a workload (and its namespace) whose selector and pod template carry
    /// `labels`, with one container and one replica; it rolls out as the mode says
    /// ([`RolloutMode`]), at once by default.
    pub fn create_workload(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        let pod_spec = json!({ "containers": [{ "name": name, "image": "registry.example/app:1" }] });
        self.create_workload_with(namespace, kind, name, labels, pod_spec, 1)
    }

    /// [`create_workload`](Self::create_workload) with a pod spec of the test's choosing
    /// (e.g. one that reads a Secret through `envFrom` or a volume) and `replicas` (ignored
    /// for a DaemonSet, which runs one Pod: the stand-in has one node).
    pub fn create_workload_with(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
        labels: &[(&str, &str)],
        pod_spec: Value,
        replicas: u64,
    ) -> Result<Value, ApiError> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut spec = json!({
            "selector": { "matchLabels": labels },
            "template": { "metadata": { "labels": labels }, "spec": pod_spec },
        });
        if kind != WorkloadKind::DaemonSet {
            spec["replicas"] = json!(replicas);
        }
        if kind == WorkloadKind::StatefulSet {
            spec["serviceName"] = json!(name);
        }
        let body = json!({ "metadata": { "name": name, "labels": labels }, "spec": spec });
        let created = self.seed(
            kind.kind(),
            namespace,
            name,
            Target::Main,
            Write::Create(body),
        )?;
        Ok(self.workload(namespace, kind, name).unwrap_or(created))
    }

    /// Creates a Pod owned by no workload (and its namespace), running and ready, created
    /// now; `spec` as in a manifest.
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        spec: Value,
    ) -> Result<Value, ApiError> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let body = json!({
            "metadata": { "name": name, "labels": labels },
            "spec": spec,
            "status": rollout::pod_status(true),
        });
        self.seed(Kind::Pod, namespace, name, Target::Main, Write::Create(body))
    }

    /// The Pods in `namespace`, oldest first.
    pub fn pods(&self, namespace: &str) -> Vec<Value> {
        let cluster = self.shared.cluster();
        let mut pods: Vec<(u64, Value)> = cluster
            .objects
            .iter()
            .filter(|((kind, ns, _), _)| *kind == Kind::Pod && ns == namespace)
            .map(|(_, object)| (object.created_version, object.render(Kind::Pod.info())))
            .collect();
        pods.sort_by_key(|(created, _)| *created);
        pods.into_iter().map(|(_, pod)| pod).collect()
    }

    /// Deletes a Pod (as `kubectl delete pod`; its workload, if any, does not replace it
    /// until its next roll-out); `false` if it did not exist.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        objects::delete(&mut self.shared.cluster(), Kind::Pod, namespace, name).is_ok()
    }

    /// The whole workload, status included.
    pub fn workload(&self, namespace: &str, kind: WorkloadKind, name: &str) -> Option<Value> {
        self.object(kind.kind(), namespace, name)
    }

    /// The workload's `spec.template.metadata.annotations` (empty if none or no workload).
    pub fn pod_template_annotations(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
    ) -> BTreeMap<String, String> {
        self.workload(namespace, kind, name)
            .and_then(|w| w.pointer("/spec/template/metadata/annotations").cloned())
            .and_then(|a| serde_json::from_value(a).ok())
            .unwrap_or_default()
    }

    /// How workloads roll out from now on ([`RolloutMode::Immediate`] at start).
    pub fn set_rollout_mode(&self, mode: RolloutMode) {
        self.shared.cluster().rollout_mode = mode;
    }

    /// `true`: roll-outs from now on get stuck ([`RolloutMode::Stuck`]); `false`: they
    /// happen at once again, and every workload is rolled out now.
    pub fn hold_rollouts(&self, held: bool) {
        if held {
            self.set_rollout_mode(RolloutMode::Stuck);
            return;
        }
        let mut cluster = self.shared.cluster();
        cluster.rollout_mode = RolloutMode::Immediate;
        let workloads: Vec<(Kind, String, String)> = cluster
            .objects
            .keys()
            .filter(|(kind, _, _)| kind.is_workload())
            .cloned()
            .collect();
        for (kind, namespace, name) in workloads {
            rollout::complete(&mut cluster, kind, &namespace, &name);
        }
    }

    /// Finishes the workload's roll-out now (new Pods replace the old ones, the status
    /// says it is complete), whatever the mode.
    pub fn complete_rollout(&self, namespace: &str, kind: WorkloadKind, name: &str) {
        rollout::complete(&mut self.shared.cluster(), kind.kind(), namespace, name);
    }

    /// Deletes a Secret out of band (as `kubectl delete secret`); `false` if it did not exist.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .cluster()
            .remove_secret(namespace, name)
            .is_some()
    }

    /// The cluster's current `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.shared.cluster().resource_version
    }

    /// Forgets the watch history, as etcd compaction does: a watch from any older
    /// `resourceVersion` then gets `410 Gone` and `kube::runtime::watcher` re-lists.
    pub fn compact_watch_history(&self) {
        self.shared.cluster().compact();
    }
}
