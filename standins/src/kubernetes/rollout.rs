//! Workload roll-outs and the Pods they run, as the controller-manager (Deployment,
//! StatefulSet and DaemonSet controllers, the ReplicaSet controller) and the kubelet would
//! leave them: a workload's Pods carry its pod template (labels, annotations, spec) and a
//! template hash label; a template change replaces them with Pods created now, and the
//! workload's status reports the progress with the fields the real controllers write.
//!
//! How a roll-out proceeds is the test's choice ([`RolloutMode`]): at once (the default),
//! stuck (an image that never pulls: a new Pod that never becomes ready, old Pods left
//! running, status saying so), or completed after a delay. A stuck roll-out finishes only
//! when the test says so, so no outcome depends on timing.

use super::Cluster;
use super::kinds::Kind;
use super::objects::{self, Author, Target, Write};
use serde_json::{Value, json};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// How workloads roll out after a change of their pod template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutMode {
    /// Old Pods are replaced and the status completed in the same instant.
    #[default]
    Immediate,
    /// The roll-out starts and never finishes: a new Pod is created but never becomes
    /// ready, old Pods keep running, and the status says so, until the test completes it.
    Stuck,
    /// As `Stuck`, then completed once this much time has passed.
    After(Duration),
}

/// Who writes Pods and workload status.
const CONTROLLER: Author<'static> = Author {
    manager: "kube-controller-manager",
    strict: false,
};

/// The label that ties a Pod to its template: `pod-template-hash` for Deployments (set by
/// the ReplicaSet), `controller-revision-hash` for StatefulSets and DaemonSets.
fn hash_label(kind: Kind) -> &'static str {
    if kind == Kind::Deployment {
        "pod-template-hash"
    } else {
        "controller-revision-hash"
    }
}

/// A short stable hash of the pod template, as the controllers name revisions with.
fn template_hash(template: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    template.to_string().hash(&mut hasher);
    format!("{:010x}", hasher.finish() & 0xff_ffff_ffff)
}

fn random_suffix() -> String {
    std::iter::repeat_with(|| fastrand::alphanumeric().to_ascii_lowercase())
        .take(5)
        .collect()
}

/// The workload's `spec.replicas` (1 when unset, and for a DaemonSet: one node).
fn desired(kind: Kind, workload: &Value) -> u64 {
    if kind == Kind::DaemonSet {
        return 1;
    }
    workload
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

/// Called after every write that leaves a workload's `observedGeneration` behind.
pub(super) fn spec_changed(cluster: &mut Cluster, kind: Kind, namespace: &str, name: &str) {
    let key = (kind, namespace.to_string(), name.to_string());
    match cluster.rollout_mode {
        RolloutMode::Immediate => complete(cluster, kind, namespace, name),
        RolloutMode::Stuck => {
            start(cluster, kind, namespace, name);
            cluster.pending_rollouts.insert(key, None);
        }
        RolloutMode::After(delay) => {
            start(cluster, kind, namespace, name);
            cluster
                .pending_rollouts
                .insert(key, Some(Instant::now() + delay));
        }
    }
}

/// Completes the roll-outs whose delay has passed (the stand-in's background tick).
pub(super) fn complete_due(cluster: &mut Cluster) {
    let now = Instant::now();
    let due: Vec<_> = cluster
        .pending_rollouts
        .iter()
        .filter(|(_, at)| at.is_some_and(|at| at <= now))
        .map(|(key, _)| key.clone())
        .collect();
    for (kind, namespace, name) in due {
        complete(cluster, kind, &namespace, &name);
    }
}

fn workload(cluster: &Cluster, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
    cluster
        .objects
        .get(&(kind, namespace.to_string(), name.to_string()))
        .map(|object| object.body.clone())
}

/// The Pods a workload owns: those whose controller reference names it (a Deployment's
/// through its ReplicaSet `<name>-<hash>`).
fn owned_pods(cluster: &Cluster, kind: Kind, namespace: &str, name: &str) -> Vec<Value> {
    let owner_kind = if kind == Kind::Deployment {
        "ReplicaSet"
    } else {
        kind.info().kind
    };
    cluster
        .objects
        .iter()
        .filter(|((k, ns, _), _)| *k == Kind::Pod && ns == namespace)
        .map(|(_, object)| object.body.clone())
        .filter(|pod| {
            pod.pointer("/metadata/ownerReferences/0")
                .is_some_and(|owner| {
                    let owner_name = owner["name"].as_str().unwrap_or_default();
                    owner["kind"] == owner_kind
                        && (owner_name == name
                            || (kind == Kind::Deployment
                                && owner_name
                                    .strip_prefix(name)
                                    .and_then(|rest| rest.strip_prefix('-'))
                                    .is_some_and(|hash| !hash.contains('-'))))
                })
        })
        .collect()
}

fn pod_hash(kind: Kind, pod: &Value) -> Option<String> {
    pod.pointer(&format!("/metadata/labels/{}", hash_label(kind)))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn pod_name(pod: &Value) -> String {
    pod.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Status of a Pod that runs (ready) or waits for its image (not ready).
pub(super) fn pod_status(ready: bool) -> Value {
    let flag = if ready { "True" } else { "False" };
    let mut status = json!({
        "phase": if ready { "Running" } else { "Pending" },
        "conditions": [
            { "type": "Ready", "status": flag },
            { "type": "ContainersReady", "status": flag },
        ],
        "startTime": super::now(),
    });
    if !ready {
        status["containerStatuses"] = json!([{
            "name": "app", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image" } },
        }]);
    }
    status
}

/// Creates one Pod from the workload's template, as its controller would.
fn create_pod(cluster: &mut Cluster, kind: Kind, workload: &Value, ordinal: u64, ready: bool) {
    let namespace = workload["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
    let name = workload["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let template = workload.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let (pod, owner) = match kind {
        Kind::Deployment => (
            format!("{name}-{hash}-{}", random_suffix()),
            json!({ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"), "controller": true }),
        ),
        Kind::StatefulSet => (
            format!("{name}-{ordinal}"),
            json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "controller": true }),
        ),
        _ => (
            format!("{name}-{}", random_suffix()),
            json!({ "apiVersion": "apps/v1", "kind": kind.info().kind, "name": name, "controller": true }),
        ),
    };
    let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    labels[hash_label(kind)] = json!(hash);
    let mut metadata = json!({ "name": pod, "labels": labels, "ownerReferences": [owner] });
    if let Some(annotations) = template.pointer("/metadata/annotations") {
        metadata["annotations"] = annotations.clone();
    }
    let body = json!({
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
        "status": pod_status(ready),
    });
    let created = objects::write(cluster, Kind::Pod, &namespace, &pod, Target::Main, Write::Create(body), CONTROLLER);
    if let Err(error) = created {
        tracing::debug!(%error, "stand-in could not create a Pod");
    }
}

fn write_status(cluster: &mut Cluster, kind: Kind, namespace: &str, name: &str, status: Value) {
    let patch = json!({ "status": status });
    let written = objects::write(cluster, kind, namespace, name, Target::Status, Write::MergePatch(patch), CONTROLLER);
    if let Err(error) = written {
        tracing::debug!(%error, "stand-in could not write a workload's status");
    }
}

fn delete_pod(cluster: &mut Cluster, namespace: &str, pod: &Value) {
    if let Err(error) = objects::delete(cluster, Kind::Pod, namespace, &pod_name(pod)) {
        tracing::debug!(%error, "stand-in could not delete a Pod");
    }
}

/// A roll-out that has begun and does not progress: the controller has seen the new
/// template (`observedGeneration` is current) but no new Pod becomes available, so the
/// old Pods keep running. A Deployment surges one new Pod that waits for its image; a
/// StatefulSet's update revision differs from its current one; a DaemonSet has no
/// updated Pod scheduled.
fn start(cluster: &mut Cluster, kind: Kind, namespace: &str, name: &str) {
    let Some(object) = workload(cluster, kind, namespace, name) else {
        return;
    };
    let generation = object.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
    let replicas = desired(kind, &object);
    let hash = template_hash(object.pointer("/spec/template").unwrap_or(&Value::Null));
    let pods = owned_pods(cluster, kind, namespace, name);
    let old = pods.iter().filter(|p| pod_hash(kind, p).as_deref() != Some(&hash)).count() as u64;
    let status = match kind {
        Kind::Deployment => {
            if pods.iter().all(|p| pod_hash(kind, p).as_deref() != Some(&hash)) {
                create_pod(cluster, kind, &object, 0, false);
            }
            json!({
                "observedGeneration": generation, "replicas": old + 1, "updatedReplicas": 1,
                "readyReplicas": old, "availableReplicas": old, "unavailableReplicas": 1,
            })
        }
        Kind::StatefulSet => {
            let current = object
                .pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{name}-initial"));
            json!({
                "observedGeneration": generation, "replicas": replicas, "readyReplicas": old,
                "currentReplicas": old, "updatedReplicas": 0, "availableReplicas": old,
                "currentRevision": current, "updateRevision": format!("{name}-{hash}"),
            })
        }
        _ => json!({
            "observedGeneration": generation, "desiredNumberScheduled": 1,
            "currentNumberScheduled": 1, "updatedNumberScheduled": 0,
            "numberReady": old, "numberAvailable": old, "numberUnavailable": 1 - old.min(1),
            "numberMisscheduled": 0,
        }),
    };
    write_status(cluster, kind, namespace, name, status);
}

/// Finishes a roll-out: every Pod of an older template is replaced by one created now from
/// the current template, all run and are ready, and the status says the roll-out is
/// complete. Completing a finished roll-out changes nothing.
pub(super) fn complete(cluster: &mut Cluster, kind: Kind, namespace: &str, name: &str) {
    cluster
        .pending_rollouts
        .remove(&(kind, namespace.to_string(), name.to_string()));
    let Some(object) = workload(cluster, kind, namespace, name) else {
        return;
    };
    let hash = template_hash(object.pointer("/spec/template").unwrap_or(&Value::Null));
    let replicas = desired(kind, &object);
    let mut current = 0;
    for pod in owned_pods(cluster, kind, namespace, name) {
        if pod_hash(kind, &pod).as_deref() != Some(&hash) || current >= replicas {
            delete_pod(cluster, namespace, &pod);
        } else {
            current += 1;
            if pod.pointer("/status/phase") != Some(&json!("Running")) {
                let patch = json!({ "status": pod_status(true) });
                let _ = objects::write(cluster, Kind::Pod, namespace, &pod_name(&pod), Target::Main, Write::MergePatch(patch), CONTROLLER);
            }
        }
    }
    let existing: Vec<String> = owned_pods(cluster, kind, namespace, name).iter().map(pod_name).collect();
    let mut ordinal = 0;
    while current < replicas {
        if kind != Kind::StatefulSet || !existing.contains(&format!("{name}-{ordinal}")) {
            create_pod(cluster, kind, &object, ordinal, true);
            current += 1;
        }
        ordinal += 1;
    }
    let generation = object.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
    let status = match kind {
        Kind::DaemonSet => json!({
            "observedGeneration": generation, "desiredNumberScheduled": 1,
            "currentNumberScheduled": 1, "updatedNumberScheduled": 1,
            "numberReady": 1, "numberAvailable": 1, "numberUnavailable": 0, "numberMisscheduled": 0,
        }),
        Kind::StatefulSet => json!({
            "observedGeneration": generation, "replicas": replicas, "readyReplicas": replicas,
            "currentReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
            "currentRevision": format!("{name}-{hash}"), "updateRevision": format!("{name}-{hash}"),
        }),
        _ => json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas, "unavailableReplicas": 0,
        }),
    };
    write_status(cluster, kind, namespace, name, status);
}
