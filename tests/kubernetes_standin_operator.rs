//! The Kubernetes API stand-in as the operator sees it, through kube's real client and
//! kube-runtime's real watcher, Controller and event Recorder over HTTPS: the custom
//! resource with `/status`, list+watch (including streaming lists, `410 Gone` and label
//! selectors), Leases with optimistic concurrency, Events, and workload roll-outs.

use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::kubernetes::{KubernetesStandin, RolloutMode, WorkloadKind, routes};
use entra_rotator_standins::tls::TestPki;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{Controller, controller::Action};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "dify";

struct Fixture {
    cluster: KubernetesStandin,
    client: kube::Client,
}

async fn fixture() -> Fixture {
    let pki = TestPki::generate().unwrap();
    let cluster = KubernetesStandin::start(&pki).await.unwrap();
    cluster.create_namespace(NS);
    let mut config = kube::Config::new(cluster.url().parse().unwrap());
    let ca = rustls_pemfile::certs(&mut pki.ca_pem().as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect();
    config.root_cert = Some(ca);
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    Fixture { cluster, client }
}

fn rotation_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("entra-rotator.io", "v1alpha1", "ClientSecretRotation");
    ApiResource::from_gvk_with_plural(&gvk, "clientsecretrotations")
}

fn spec(client_id: &str) -> Value {
    json!({
        "application": { "tenantId": "7d3f1a52-0000-4000-8000-000000000001", "clientId": client_id },
        "targets": [{ "kubernetesSecret": { "name": "dify-smtp" } }],
    })
}

impl Fixture {
    fn rotations(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), NS, &rotation_resource())
    }

    fn rotation_object(&self, name: &str, client_id: &str) -> DynamicObject {
        let mut object = DynamicObject::new(name, &rotation_resource());
        object.data = json!({ "spec": spec(client_id) });
        object
    }
}

/// The next watcher event, failing the test instead of hanging.
async fn next<S, T>(stream: &mut S) -> T
where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the stream goes on")
        .expect("no watch error")
}

fn generation(object: &DynamicObject) -> Option<i64> {
    object.metadata.generation
}

#[tokio::test]
async fn a_watcher_lists_then_sees_created_and_patched_rotations() {
    let f = fixture().await;
    f.cluster
        .create_rotation(NS, "seeded", spec("c-1"))
        .unwrap();
    let mut events = watcher::watcher(f.rotations(), watcher::Config::default()).boxed();

    assert!(matches!(next(&mut events).await, Event::Init));
    let Event::InitApply(seeded) = next(&mut events).await else {
        panic!("seeded object first")
    };
    assert_eq!(seeded.name_any(), "seeded");
    assert!(matches!(next(&mut events).await, Event::InitDone));

    let created = f
        .rotations()
        .create(
            &PostParams::default(),
            &f.rotation_object("dify-smtp", "c-2"),
        )
        .await
        .unwrap();
    assert_eq!(generation(&created), Some(1));
    let Event::Apply(seen) = next(&mut events).await else {
        panic!("ADDED")
    };
    assert_eq!(seen.name_any(), "dify-smtp");

    let patch = json!({ "spec": { "lifetime": "90d" } });
    f.rotations()
        .patch("dify-smtp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let Event::Apply(modified) = next(&mut events).await else {
        panic!("MODIFIED")
    };
    assert_eq!(generation(&modified), Some(2));
    assert_eq!(modified.data["spec"]["lifetime"], "90d");

    assert!(f.cluster.delete_rotation(NS, "seeded"));
    let Event::Delete(deleted) = next(&mut events).await else {
        panic!("DELETED")
    };
    assert_eq!(deleted.name_any(), "seeded");

    let counts = f.cluster.faults();
    assert_eq!(counts.count(routes::ROTATIONS.list), 1);
    assert_eq!(counts.count(routes::ROTATIONS.watch), 1);
    assert_eq!(counts.count(routes::ROTATIONS.create), 1);
    assert_eq!(counts.count(routes::ROTATIONS.patch), 1);
}

#[tokio::test]
async fn status_writes_do_not_bump_generation_and_main_writes_ignore_status() {
    let f = fixture().await;
    f.cluster.create_rotation(NS, "r", spec("c-1")).unwrap();
    let api = f.rotations();
    let before = api.get("r").await.unwrap();

    let merged = json!({ "status": { "conditions": [{ "type": "Ready", "status": "False" }] } });
    let after_merge = api
        .patch_status("r", &PatchParams::default(), &Patch::Merge(&merged))
        .await
        .unwrap();
    let applied = json!({
        "apiVersion": "entra-rotator.io/v1alpha1", "kind": "ClientSecretRotation",
        "status": { "observedGeneration": 1, "currentKeyId": "k-1" },
    });
    let after_apply = api
        .patch_status(
            "r",
            &PatchParams::apply("entra-rotator").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();

    assert_eq!(generation(&after_merge), Some(1));
    assert_eq!(generation(&after_apply), Some(1));
    let version = |o: &DynamicObject| o.resource_version().unwrap().parse::<u64>().unwrap();
    assert!(version(&before) < version(&after_merge));
    assert!(version(&after_merge) < version(&after_apply));
    assert_eq!(after_apply.data["status"]["currentKeyId"], "k-1");
    assert_eq!(after_apply.data["status"]["conditions"][0]["type"], "Ready");

    // Status through the main resource is ignored; a spec change is a new generation.
    let sneaky = json!({ "spec": { "suspend": true }, "status": { "currentKeyId": "forged" } });
    let main = api
        .patch("r", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .unwrap();
    assert_eq!(generation(&main), Some(2));
    assert_eq!(main.data["status"]["currentKeyId"], "k-1");

    // A status apply that changes nothing keeps the version and fires no event.
    let again = api
        .patch_status(
            "r",
            &PatchParams::apply("entra-rotator").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(version(&again), version(&main));

    let stored = f.cluster.rotation(NS, "r").unwrap();
    let managers: Vec<(&str, Option<&str>)> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["manager"].as_str().unwrap(), m["subresource"].as_str()))
        .collect();
    assert!(
        managers.contains(&("entra-rotator", Some("status"))),
        "{managers:?}"
    );
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_the_state_then_the_changes() {
    let f = fixture().await;
    f.cluster.create_rotation(NS, "a", spec("c-1")).unwrap();
    f.cluster
        .create_rotation("other", "b", spec("c-2"))
        .unwrap();
    let all: Api<DynamicObject> = Api::all_with(f.client.clone(), &rotation_resource());
    let mut events = watcher::watcher(all, watcher::Config::default().streaming_lists()).boxed();

    assert!(matches!(next(&mut events).await, Event::Init));
    let mut names = Vec::new();
    for _ in 0..2 {
        let Event::InitApply(object) = next(&mut events).await else {
            panic!("initial state")
        };
        names.push(format!(
            "{}/{}",
            object.namespace().unwrap(),
            object.name_any()
        ));
    }
    assert_eq!(names, ["dify/a", "other/b"]);
    assert!(matches!(next(&mut events).await, Event::InitDone));

    f.cluster
        .patch_rotation_spec("other", "b", json!({ "suspend": true }))
        .unwrap();
    let Event::Apply(changed) = next(&mut events).await else {
        panic!("MODIFIED")
    };
    assert_eq!(changed.data["spec"]["suspend"], true);
    assert_eq!(f.cluster.faults().count(routes::ROTATIONS.watch_all), 1);
    assert_eq!(f.cluster.faults().count(routes::ROTATIONS.list_all), 0);
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_is_gone_and_the_watcher_relists() {
    let f = fixture().await;
    f.cluster.create_rotation(NS, "a", spec("c-1")).unwrap();
    let old = f.cluster.resource_version().to_string();
    f.cluster
        .patch_rotation_spec(NS, "a", json!({ "suspend": true }))
        .unwrap();
    f.cluster.compact_watch_history();

    let mut raw = f
        .rotations()
        .watch(&WatchParams::default().timeout(5), &old)
        .await
        .unwrap()
        .boxed();
    match raw.next().await.unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }

    // A watcher whose watch must resume from a compacted version lists again.
    let mut events = watcher::watcher(f.rotations(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut events).await, Event::Init));
    assert!(matches!(next(&mut events).await, Event::InitApply(_)));
    assert!(matches!(next(&mut events).await, Event::InitDone));
    f.cluster
        .faults()
        .push(routes::ROTATIONS.watch, Fault::status(500));
    let failed_start = events.next().await.unwrap();
    assert!(
        matches!(failed_start, Err(watcher::Error::WatchStartFailed(_))),
        "{failed_start:?}"
    );
    f.cluster
        .patch_rotation_spec(NS, "a", json!({ "suspend": false }))
        .unwrap();
    f.cluster.compact_watch_history();
    let gone = events.next().await.unwrap();
    assert!(
        matches!(&gone, Err(watcher::Error::WatchError(s)) if s.code == 410),
        "{gone:?}"
    );
    assert!(matches!(next(&mut events).await, Event::Init));
    let Event::InitApply(relisted) = next(&mut events).await else {
        panic!("relisted")
    };
    assert_eq!(relisted.data["spec"]["suspend"], false);
    assert_eq!(f.cluster.faults().count(routes::ROTATIONS.list), 2);
}

#[tokio::test]
async fn leases_refuse_a_second_create_and_a_stale_replace() {
    let f = fixture().await;
    let leases: Api<Lease> = Api::namespaced(f.client.clone(), NS);
    let lease = |holder: &str| -> Lease {
        serde_json::from_value(json!({
            "metadata": { "name": "entra-rotator-leader" },
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 15 },
        }))
        .unwrap()
    };

    let mine = leases
        .create(&PostParams::default(), &lease("pod-a"))
        .await
        .unwrap();
    let refused = leases
        .create(&PostParams::default(), &lease("pod-b"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("API error")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    // pod-a renews with the version it read; pod-b, holding the same old version, loses.
    let mut renewal = mine.clone();
    renewal.spec.as_mut().unwrap().lease_transitions = Some(0);
    let renewed = leases
        .replace("entra-rotator-leader", &PostParams::default(), &renewal)
        .await
        .unwrap();
    assert_ne!(
        renewed.metadata.resource_version,
        mine.metadata.resource_version
    );
    let mut takeover = mine.clone();
    takeover.spec.as_mut().unwrap().holder_identity = Some("pod-b".to_string());
    let stale = leases
        .replace("entra-rotator-leader", &PostParams::default(), &takeover)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = stale else {
        panic!("API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status
            .message
            .contains("leases.coordination.k8s.io \"entra-rotator-leader\""),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("the object has been modified"),
        "{}",
        status.message
    );

    // Without a resourceVersion a Lease update is refused, not applied blindly.
    let mut blind = lease("pod-b");
    blind.metadata.resource_version = None;
    let unconditional = leases
        .replace("entra-rotator-leader", &PostParams::default(), &blind)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = unconditional else {
        panic!("API error")
    };
    assert_eq!(status.code, 422);

    let held = f.cluster.lease(NS, "entra-rotator-leader").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], "pod-a");
    assert_eq!(f.cluster.faults().count(routes::LEASES.replace), 3);
}

#[tokio::test]
async fn lease_patches_respect_a_resource_version_precondition() {
    let f = fixture().await;
    let leases: Api<Lease> = Api::namespaced(f.client.clone(), NS);
    let apply = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "l" }, "spec": { "holderIdentity": "pod-a" },
    });
    let created = leases
        .patch(
            "l",
            &PatchParams::apply("entra-rotator"),
            &Patch::Apply(&apply),
        )
        .await
        .unwrap();
    let version = created.metadata.resource_version.clone().unwrap();
    let take = json!({ "metadata": { "resourceVersion": version }, "spec": { "holderIdentity": "pod-b" } });
    leases
        .patch("l", &PatchParams::default(), &Patch::Merge(&take))
        .await
        .unwrap();
    let again = leases
        .patch("l", &PatchParams::default(), &Patch::Merge(&take))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = again else {
        panic!("API error")
    };
    assert_eq!(status.code, 409);
    assert_eq!(
        f.cluster.lease(NS, "l").unwrap()["spec"]["holderIdentity"],
        "pod-b"
    );

    // Two appliers: the second one's non-forced apply of a field the first owns conflicts.
    let claim = |holder: &str| {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 15 },
        })
    };
    leases
        .patch(
            "m",
            &PatchParams::apply("lm-pod-a"),
            &Patch::Apply(&claim("pod-a")),
        )
        .await
        .unwrap();
    let contested = leases
        .patch(
            "m",
            &PatchParams::apply("lm-pod-b"),
            &Patch::Apply(&claim("pod-b")),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = contested else {
        panic!("API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"lm-pod-a\" using coordination.k8s.io/v1: .spec.holderIdentity"
    );
    // Releasing (strategic-merge nulls) frees the fields, and the next apply wins.
    let release = json!({ "spec": { "holderIdentity": null, "leaseDurationSeconds": null } });
    leases
        .patch(
            "m",
            &PatchParams {
                field_manager: Some("lm-pod-a".into()),
                ..Default::default()
            },
            &Patch::Strategic(&release),
        )
        .await
        .unwrap();
    leases
        .patch(
            "m",
            &PatchParams::apply("lm-pod-b"),
            &Patch::Apply(&claim("pod-b")),
        )
        .await
        .unwrap();
    assert_eq!(
        f.cluster.lease(NS, "m").unwrap()["spec"]["holderIdentity"],
        "pod-b"
    );
}

#[tokio::test]
async fn recorder_events_are_recorded_and_repeats_become_a_series() {
    let f = fixture().await;
    let created = f
        .cluster
        .create_rotation(NS, "dify-smtp", spec("c-1"))
        .unwrap();
    let object: DynamicObject = serde_json::from_value(created).unwrap();
    let reference = object.object_ref(&rotation_resource());
    let reporter = Reporter {
        controller: "entra-rotator".to_string(),
        instance: Some("entra-rotator-0".to_string()),
    };
    let recorder = Recorder::new(f.client.clone(), reporter);
    let minted = RecorderEvent {
        type_: EventType::Normal,
        reason: "SecretMinted".to_string(),
        note: Some("minted keyId 1234 expiring 2026-07-01".to_string()),
        action: "Rotate".to_string(),
        secondary: None,
    };

    recorder.publish(&minted, &reference).await.unwrap();
    recorder.publish(&minted, &reference).await.unwrap();

    let events = f.cluster.events(NS);
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.reason, "SecretMinted");
    assert_eq!(event.type_, "Normal");
    assert_eq!(
        event.note.as_deref(),
        Some("minted keyId 1234 expiring 2026-07-01")
    );
    assert_eq!(
        event.regarding.as_deref(),
        Some("ClientSecretRotation/dify-smtp")
    );
    assert_eq!(event.reporting_controller.as_deref(), Some("entra-rotator"));
    assert_eq!(event.count, 2);
    assert_eq!(f.cluster.faults().count(routes::EVENTS.create), 1);
    assert_eq!(f.cluster.faults().count(routes::EVENTS.patch), 1);

    // A note longer than the API server accepts is refused, as in a real cluster.
    let verbose = RecorderEvent {
        note: Some("x".repeat(1025)),
        reason: "RotationFailed".to_string(),
        ..minted
    };
    let refused = recorder.publish(&verbose, &reference).await.unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("API error")
    };
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        format!(
            "Event.events.k8s.io \"{}\" is invalid: note: Invalid value: \"\": can have at most 1024 characters",
            status.details.as_ref().unwrap().name
        )
    );
    assert_eq!(f.cluster.events(NS).len(), 1);
}

#[tokio::test]
async fn a_strategic_merge_patch_restarts_a_deployment_and_it_rolls_out() {
    let f = fixture().await;
    f.cluster
        .create_workload(NS, WorkloadKind::Deployment, "dify-api", &[("app", "dify")])
        .unwrap();
    f.cluster
        .create_workload(NS, WorkloadKind::Deployment, "other", &[("app", "other")])
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), NS);

    let selected = deployments
        .list(&ListParams::default().labels("app=dify"))
        .await
        .unwrap();
    let names: Vec<String> = selected.items.iter().map(|d| d.name_any()).collect();
    assert_eq!(names, ["dify-api"]);

    let restart = json!({ "spec": { "template": { "metadata": { "annotations": {
        "entra-rotator.io/key-id": "0b6f-key"
    } } } } });
    let patched = deployments
        .patch(
            "dify-api",
            &PatchParams::default(),
            &Patch::Strategic(&restart),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));

    let annotations = f
        .cluster
        .pod_template_annotations(NS, WorkloadKind::Deployment, "dify-api");
    assert_eq!(annotations["entra-rotator.io/key-id"], "0b6f-key");
    let rolled = deployments.get_status("dify-api").await.unwrap();
    assert_eq!(rolled.status.unwrap().observed_generation, Some(2));
    let containers = &rolled.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers.len(), 1, "the patch kept the containers");

    // A held roll-out is seen (observedGeneration current) but does not progress: one new
    // Pod waits for its image, the old one keeps running, until released.
    f.cluster.hold_rollouts(true);
    let again = json!({ "spec": { "template": { "metadata": { "annotations": {
        "entra-rotator.io/key-id": "1c7a-key"
    } } } } });
    deployments
        .patch(
            "dify-api",
            &PatchParams::default(),
            &Patch::Strategic(&again),
        )
        .await
        .unwrap();
    let lagging = f
        .cluster
        .workload(NS, WorkloadKind::Deployment, "dify-api")
        .unwrap();
    assert_eq!(lagging["metadata"]["generation"], 3);
    assert_eq!(lagging["status"]["observedGeneration"], 3);
    assert_eq!(lagging["status"]["updatedReplicas"], 1);
    assert_eq!(lagging["status"]["availableReplicas"], 1);
    assert_eq!(lagging["status"]["unavailableReplicas"], 1);
    assert_eq!(pods_of(&f, "dify").await, [("0b6f-key".to_string(), true), ("1c7a-key".to_string(), false)]);
    f.cluster.hold_rollouts(false);
    let done = f
        .cluster
        .workload(NS, WorkloadKind::Deployment, "dify-api")
        .unwrap();
    assert_eq!(done["status"]["observedGeneration"], 3);
    assert_eq!(done["status"]["updatedReplicas"], 1);
    assert_eq!(done["status"]["unavailableReplicas"], 0);
    assert_eq!(pods_of(&f, "dify").await, [("1c7a-key".to_string(), true)]);
}

/// The pods selected by `app=<app>`, through kube-rs: the keyId annotation each carries
/// from its template, and whether it is ready, in that order.
async fn pods_of(f: &Fixture, app: &str) -> Vec<(String, bool)> {
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), NS);
    let listed = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.unwrap().items;
    let mut found: Vec<(String, bool)> = listed
        .iter()
        .map(|pod| {
            let key_id = pod.annotations().get("entra-rotator.io/key-id").cloned().unwrap_or_default();
            let ready = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|conditions| {
                conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            });
            (key_id, ready)
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn workloads_run_pods_from_their_template_and_roll_them_out_as_the_test_says() {
    let f = fixture().await;
    let reads_secret = json!({ "containers": [{ "name": "api", "image": "langgenius/dify-api",
        "envFrom": [{ "secretRef": { "name": "dify-smtp" } }] }] });
    f.cluster
        .create_workload_with(NS, WorkloadKind::StatefulSet, "worker", &[("app", "worker")], reads_secret.clone(), 2)
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), NS);
    let first = pods.get("worker-0").await.unwrap();
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.containers[0].env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name, "dify-smtp");
    assert!(first.metadata.creation_timestamp.is_some());
    assert_eq!(first.owner_references()[0].kind, "StatefulSet");
    let statefulsets: Api<StatefulSet> = Api::namespaced(f.client.clone(), NS);
    let status = statefulsets.get_status("worker").await.unwrap().status.unwrap();
    assert_eq!((status.updated_replicas, status.ready_replicas), (Some(2), Some(2)));
    assert_eq!(status.current_revision, status.update_revision);

    // Stuck: the new revision is announced and no Pod moves to it.
    f.cluster.set_rollout_mode(RolloutMode::Stuck);
    let restart = json!({ "spec": { "template": { "metadata": { "annotations": { "entra-rotator.io/key-id": "k2" } } } } });
    statefulsets.patch("worker", &PatchParams::default(), &Patch::Merge(&restart)).await.unwrap();
    let status = statefulsets.get_status("worker").await.unwrap().status.unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.updated_replicas, Some(0));
    assert_ne!(status.current_revision, status.update_revision);
    assert_eq!(pods_of(&f, "worker").await, [(String::new(), true), (String::new(), true)]);

    // Completed on the test's word: Pods created anew from the template, same names.
    f.cluster.complete_rollout(NS, WorkloadKind::StatefulSet, "worker");
    let status = statefulsets.get_status("worker").await.unwrap().status.unwrap();
    assert_eq!((status.updated_replicas, status.available_replicas), (Some(2), Some(2)));
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(pods_of(&f, "worker").await, [("k2".to_string(), true), ("k2".to_string(), true)]);
    let replaced = pods.get("worker-0").await.unwrap();
    assert_ne!(replaced.uid(), first.uid(), "worker-0 is a new Pod");

    // A DaemonSet reports its progress in its own fields.
    f.cluster.set_rollout_mode(RolloutMode::Immediate);
    f.cluster.create_workload_with(NS, WorkloadKind::DaemonSet, "agent", &[("app", "agent")], reads_secret, 1).unwrap();
    f.cluster.set_rollout_mode(RolloutMode::Stuck);
    let daemonsets: Api<DaemonSet> = Api::namespaced(f.client.clone(), NS);
    daemonsets.patch("agent", &PatchParams::default(), &Patch::Merge(&restart)).await.unwrap();
    let status = daemonsets.get_status("agent").await.unwrap().status.unwrap();
    assert_eq!((status.observed_generation, status.updated_number_scheduled), (Some(2), Some(0)));
    f.cluster.complete_rollout(NS, WorkloadKind::DaemonSet, "agent");
    let status = daemonsets.get_status("agent").await.unwrap().status.unwrap();
    assert_eq!((status.updated_number_scheduled, status.number_available), (Some(1), Some(1)));
    assert_eq!(pods_of(&f, "agent").await, [("k2".to_string(), true)]);

    // A bare Pod is listed with the others; its projected-volume and subPath references
    // come back as written.
    let bare = json!({
        "containers": [{ "name": "cron", "image": "busybox",
            "volumeMounts": [{ "name": "smtp", "mountPath": "/etc/smtp/password", "subPath": "SMTP_PASSWORD" }] }],
        "volumes": [{ "name": "smtp", "projected": { "sources": [{ "secret": { "name": "dify-smtp" } }] } }],
    });
    f.cluster.create_pod(NS, "cron", &[("app", "cron")], bare).unwrap();
    let cron = pods.get("cron").await.unwrap().spec.unwrap();
    assert_eq!(cron.containers[0].volume_mounts.as_ref().unwrap()[0].sub_path.as_deref(), Some("SMTP_PASSWORD"));
    let projected = cron.volumes.unwrap()[0].projected.clone().unwrap();
    assert_eq!(projected.sources.unwrap()[0].secret.as_ref().unwrap().name, "dify-smtp");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 4, "two StatefulSet Pods, one DaemonSet Pod, the bare one");
}

#[tokio::test]
async fn a_delayed_rollout_finishes_by_itself() {
    let f = fixture().await;
    f.cluster.create_workload(NS, WorkloadKind::Deployment, "api", &[("app", "api")]).unwrap();
    f.cluster.set_rollout_mode(RolloutMode::After(Duration::from_millis(200)));
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), NS);
    let restart = json!({ "spec": { "template": { "metadata": { "annotations": { "entra-rotator.io/key-id": "k2" } } } } });
    deployments.patch("api", &PatchParams::default(), &Patch::Merge(&restart)).await.unwrap();
    for _ in 0..600 {
        let status = deployments.get_status("api").await.unwrap().status.unwrap();
        if status.unavailable_replicas == Some(0) && status.updated_replicas == Some(1) {
            assert_eq!(pods_of(&f, "api").await, [("k2".to_string(), true)]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the delayed roll-out never finished");
}

#[tokio::test]
async fn strategic_merge_and_dry_runs_are_refused_for_the_custom_resource() {
    let f = fixture().await;
    f.cluster.create_rotation(NS, "r", spec("c-1")).unwrap();
    let refused = f
        .rotations()
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Strategic(&json!({ "spec": {} })),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("API error")
    };
    assert_eq!(status.code, 415);

    // Dry runs are refused rather than silently persisted.
    let dry = f
        .rotations()
        .patch(
            "r",
            &PatchParams::default().dry_run(),
            &Patch::Merge(&json!({ "spec": { "suspend": true } })),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = dry else {
        panic!("API error")
    };
    assert_eq!(status.code, 400);
    assert!(status.message.contains("dryRun"), "{}", status.message);
    assert!(
        f.cluster.rotation(NS, "r").unwrap()["spec"]
            .get("suspend")
            .is_none()
    );
}

fn managed_secret(name: &str, managed: bool) -> Secret {
    let labels = if managed {
        json!({ "app.kubernetes.io/managed-by": "entra-rotator" })
    } else {
        json!({ "app.kubernetes.io/managed-by": "helm" })
    };
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "stringData": { "SMTP_PASSWORD": "not-a-real-secret" },
    }))
    .unwrap()
}

#[tokio::test]
async fn secrets_are_listed_and_watched_through_a_label_selector() {
    let f = fixture().await;
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), NS);
    secrets
        .create(&PostParams::default(), &managed_secret("ours", true))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &managed_secret("helms", false))
        .await
        .unwrap();
    let selector = "app.kubernetes.io/managed-by=entra-rotator";

    let listed = secrets
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|s| s.name_any())
            .collect::<Vec<_>>(),
        ["ours"]
    );

    let mut events =
        watcher::watcher(secrets.clone(), watcher::Config::default().labels(selector)).boxed();
    assert!(matches!(next(&mut events).await, Event::Init));
    let Event::InitApply(ours) = next(&mut events).await else {
        panic!("ours")
    };
    assert_eq!(ours.name_any(), "ours");
    assert!(matches!(next(&mut events).await, Event::InitDone));

    // A foreign Secret taking our label enters the selection; ours leaving it is deleted.
    let relabel = |value: &str| json!({ "metadata": { "labels": { "app.kubernetes.io/managed-by": value } } });
    secrets
        .patch(
            "helms",
            &PatchParams::default(),
            &Patch::Merge(&relabel("entra-rotator")),
        )
        .await
        .unwrap();
    let Event::Apply(entered) = next(&mut events).await else {
        panic!("ADDED")
    };
    assert_eq!(entered.name_any(), "helms");
    secrets
        .patch(
            "ours",
            &PatchParams::default(),
            &Patch::Merge(&relabel("someone-else")),
        )
        .await
        .unwrap();
    let Event::Delete(left) = next(&mut events).await else {
        panic!("DELETED")
    };
    assert_eq!(left.name_any(), "ours");
    assert!(f.cluster.delete_secret(NS, "helms"));
    let Event::Delete(gone) = next(&mut events).await else {
        panic!("DELETED")
    };
    assert_eq!(gone.name_any(), "helms");

    assert_eq!(f.cluster.faults().count(routes::LIST_SECRETS), 2);
    assert_eq!(f.cluster.faults().count(routes::WATCH_SECRETS), 1);
}

#[tokio::test]
async fn a_metadata_watcher_across_namespaces_sees_only_metadata() {
    let f = fixture().await;
    f.cluster.put_secret_as("other", "s", "helm", &[("k", "v")]);
    let all: Api<PartialObjectMeta<Secret>> = Api::all(f.client.clone());
    let mut events = watcher::watcher(all, watcher::Config::default()).boxed();
    assert!(matches!(next(&mut events).await, Event::Init));
    let Event::InitApply(listed) = next(&mut events).await else {
        panic!("listed")
    };
    assert_eq!(listed.name_any(), "s");
    assert!(matches!(next(&mut events).await, Event::InitDone));
    f.cluster.put_secret_as(NS, "t", "helm", &[("k", "v")]);
    let Event::Apply(added) = next(&mut events).await else {
        panic!("ADDED")
    };
    assert_eq!(added.namespace().as_deref(), Some(NS));
    assert_eq!(f.cluster.faults().count(routes::WATCH_ALL_SECRETS), 1);

    f.cluster.forbid_namespace("locked");
    let refused = Api::<Secret>::all(f.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("API error")
    };
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains("at the cluster scope"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn injected_faults_reach_the_client_and_every_call_is_counted() {
    let f = fixture().await;
    f.cluster.create_rotation(NS, "r", spec("c-1")).unwrap();
    f.cluster
        .faults()
        .push(routes::ROTATIONS.patch_status, Fault::status(503));
    f.cluster
        .faults()
        .push(routes::LEASES.create, Fault::status(409));
    let status = json!({ "status": { "lastError": "x" } });

    let failed = f
        .rotations()
        .patch_status("r", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_err();
    let kube::Error::Api(refusal) = failed else {
        panic!("API error")
    };
    assert_eq!(
        (refusal.code, refusal.reason.as_str()),
        (503, "ServiceUnavailable")
    );
    f.rotations()
        .patch_status("r", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(f.client.clone(), NS);
    let lease: Lease = serde_json::from_value(json!({ "metadata": { "name": "l" } })).unwrap();
    assert!(leases.create(&PostParams::default(), &lease).await.is_err());

    assert_eq!(f.cluster.faults().count(routes::ROTATIONS.patch_status), 2);
    assert_eq!(f.cluster.faults().count(routes::LEASES.create), 1);
    assert!(f.cluster.lease(NS, "l").is_none());
    assert_eq!(
        f.cluster.rotation(NS, "r").unwrap()["status"]["lastError"],
        "x"
    );
}

#[derive(Debug, thiserror::Error)]
#[error("status patch failed: {0}")]
struct ReconcileError(#[from] kube::Error);

/// A kube-runtime Controller over the custom resource reconciles every generation and
/// writes `observedGeneration` to `/status`, end to end over the stand-in.
#[tokio::test]
async fn a_kube_runtime_controller_reconciles_each_generation() {
    let f = fixture().await;
    f.cluster.create_rotation(NS, "r", spec("c-1")).unwrap();
    let api = f.rotations();

    async fn reconcile(
        object: Arc<DynamicObject>,
        api: Arc<Api<DynamicObject>>,
    ) -> Result<Action, ReconcileError> {
        let status = json!({ "status": { "observedGeneration": object.metadata.generation } });
        api.patch_status(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
        Ok(Action::await_change())
    }
    fn error_policy(
        _: Arc<DynamicObject>,
        _: &ReconcileError,
        _: Arc<Api<DynamicObject>>,
    ) -> Action {
        Action::requeue(Duration::from_millis(50))
    }
    let controller =
        Controller::new_with(api.clone(), watcher::Config::default(), rotation_resource())
            .run(reconcile, error_policy, Arc::new(api.clone()))
            .for_each(|_| async {});
    let running = tokio::spawn(controller);

    // Watches the object until the controller's status patch for `generation` arrives;
    // the minute is a guard against a hang, not a window the outcome depends on.
    let observed = |generation: i64| {
        let api = api.clone();
        async move {
            let reached = move |object: Option<&DynamicObject>| {
                object.is_some_and(|o| o.data["status"]["observedGeneration"] == json!(generation))
            };
            tokio::time::timeout(Duration::from_secs(60), kube::runtime::wait::await_condition(api, "r", reached))
                .await
                .unwrap_or_else(|_| panic!("generation {generation} was never observed"))
                .unwrap();
        }
    };
    observed(1).await;
    f.cluster
        .patch_rotation_spec(NS, "r", json!({ "suspend": true }))
        .unwrap();
    observed(2).await;
    running.abort();
    assert_eq!(
        f.cluster.rotation(NS, "r").unwrap()["metadata"]["generation"],
        2
    );
}

/// kube-lease-manager (what the controller elects its leader with) relies on server-side
/// apply ownership: a second replica's non-forced apply of `holderIdentity` conflicts.
/// pod-a leads first (and keeps renewing in the background); pod-b, started next, contends
/// for two of pod-a's renewals without taking the Lease; once pod-a lets go, pod-b leads.
#[tokio::test]
async fn kube_lease_manager_elects_exactly_one_leader() {
    let f = fixture().await;
    let manager = |identity: &str| {
        kube_lease_manager::LeaseManagerBuilder::new(f.client.clone(), "entra-rotator")
            .with_namespace(NS)
            .with_identity(identity)
            .with_duration(3)
            .with_grace(2)
            .build()
    };
    let lease = |field: &str| {
        f.cluster.lease(NS, "entra-rotator").unwrap()["spec"][field].clone()
    };
    let (mut a_leads, a) = manager("pod-a").await.unwrap().watch().await;
    tokio::time::timeout(Duration::from_secs(10), a_leads.wait_for(|leads| *leads))
        .await
        .expect("pod-a leads")
        .unwrap();
    assert_eq!(lease("holderIdentity"), "pod-a");

    let b = manager("pod-b").await.unwrap();
    let patches = f.cluster.faults().count(routes::LEASES.patch);
    let two_renewals = async {
        let mut renewed = lease("renewTime");
        for _ in 0..2 {
            while lease("renewTime") == renewed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            renewed = lease("renewTime");
        }
    };
    tokio::select! {
        took = b.changed() => panic!("pod-b took the Lease pod-a renews: {took:?}"),
        () = two_renewals => {}
    }
    assert_eq!(lease("holderIdentity"), "pod-a", "pod-a keeps leading");
    assert!(*a_leads.borrow());
    assert!(
        f.cluster.faults().count(routes::LEASES.patch) > patches + 1,
        "the Lease was renewed while pod-b contended"
    );

    // Dropping the receiver makes pod-a's task release the Lease and end.
    drop(a_leads);
    a.await.unwrap().unwrap();
    let took_over = tokio::time::timeout(Duration::from_secs(10), b.changed())
        .await
        .expect("pod-b leads once the Lease is released")
        .unwrap();
    assert!(took_over);
    assert_eq!(lease("holderIdentity"), "pod-b");
}

#[tokio::test]
async fn lists_come_in_pages_with_continue_tokens_and_the_watcher_reads_them_all() {
    let f = fixture().await;
    for i in 0..7 {
        f.cluster.create_rotation(NS, &format!("rotation-{i}"), spec(&format!("client-{i}"))).unwrap();
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(3);
    let mut pages = 0;
    loop {
        let page = f.rotations().list(&params).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|o| o.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = ListParams::default().limit(3).continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("rotation-{i}")).collect::<Vec<_>>(), "every object once, in order");

    let bad = f.rotations().list(&ListParams::default().limit(3).continue_token("not-ours")).await.unwrap_err();
    assert!(matches!(bad, kube::Error::Api(ref status) if status.code == 400), "{bad}");

    // The watcher pages too, and still sees everything.
    let config = watcher::Config::default().page_size(2);
    let mut stream = watcher::watcher(f.rotations(), config).boxed();
    let mut seen = 0;
    while seen < 7 {
        if let Event::InitApply(_) = next(&mut stream).await {
            seen += 1;
        }
    }
}

/// Paging a list while it changes: every page shows the objects as they were when the
/// first page was served (a real API server serves continued lists from that snapshot),
/// and a `continue` token older than the change log's reach is `410 Expired`.
#[tokio::test]
async fn list_pages_are_one_consistent_snapshot_and_old_continue_tokens_expire() {
    let f = fixture().await;
    for name in ["a", "b", "c"] {
        f.cluster.put_secret_as(NS, name, "test", &[("v", "first")]);
    }
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), NS);
    let first = secrets.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |list: &kube::api::ObjectList<Secret>| list.items.iter().map(|s| s.metadata.name.clone().unwrap()).collect::<Vec<_>>();
    assert_eq!(names(&first), ["a", "b"]);
    let token = first.metadata.continue_.clone().expect("a second page");

    f.cluster.put_secret_as(NS, "c", "test", &[("v", "second")]);
    f.cluster.put_secret_as(NS, "d", "test", &[("v", "first")]);
    assert!(f.cluster.delete_secret(NS, "a"));
    let rest = secrets.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();

    assert_eq!(names(&rest), ["c"], "d was created after the first page; it is not in this list");
    let value = rest.items[0].data.as_ref().unwrap()["v"].0.clone();
    assert_eq!(value, b"first", "c as it was when the list began");
    assert_eq!(rest.metadata.resource_version, first.metadata.resource_version);
    assert_eq!(names(&secrets.list(&ListParams::default()).await.unwrap()), ["b", "c", "d"], "a new list sees today");

    f.cluster.compact_watch_history();
    let expired = secrets.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err();
    let kube::Error::Api(status) = expired else { panic!("{expired:?}") };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"), "{status:?}");
}
