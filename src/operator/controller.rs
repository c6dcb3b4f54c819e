//! `entra-rotator controller`: watches ClientSecretRotations (and the Secrets it writes),
//! reconciles each when it changes or when it is due, while holding a Lease so that only
//! one replica ever rotates. Pods are watched by metadata too: a change to a pod in a
//! namespace where a rotation waits for its consumers wakes that rotation, so a replaced
//! pod releases the old secret without waiting for the next look.

use super::crd::ClientSecretRotation;
use super::reconcile::{reconcile_isolated, BackgroundRuns, Context, Read, ReconcileError, Reconciled};
use super::watched::WatchedRotations;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use crate::adapters::drift_batch::Wanted;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where and how the controller runs.
pub struct ControllerSettings {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    /// Namespace and name of the Lease used for leader election.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
    /// Serves /healthz and /readyz, and /metrics unless `metrics_addr` is set.
    pub health_addr: SocketAddr,
    /// Serves /metrics apart from the probes (they list every application and keyId, so
    /// they may belong on a narrower address than the probes).
    pub metrics_addr: Option<SocketAddr>,
    /// Reconciles in progress at once.
    pub concurrency: u16,
    /// Read the first pass's drift checks in batches, and the later ones through delta.
    pub batch_drift_checks: bool,
    /// How old the delta mirror may be when a drift check reads it.
    pub delta_refresh: Duration,
}

/// Runs until SIGTERM/SIGINT, or until leadership is lost (then returns an error so the
/// process exits and Kubernetes restarts it as a standby).
pub async fn run(ctx: Arc<Context>, settings: ControllerSettings) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(serve_health(settings.health_addr, settings.metrics_addr, ready.clone(), ctx.metrics.clone()));

    let lease = kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    // A standby is healthy and ready: it serves probes while waiting for the Lease.
    ready.store(true, Ordering::Relaxed);
    tracing::info!(identity = %settings.identity, lease = %settings.lease_name, "waiting to become the leader");
    while !*leader.borrow_and_update() {
        if leader.changed().await.is_err() {
            anyhow::bail!("the leader-election task stopped");
        }
    }
    tracing::info!(identity = %settings.identity, "became the leader; reconciling");
    // Never set back: on losing the Lease the process exits, /metrics with it.
    ctx.metrics.set_leader(true);

    let result = tokio::select! {
        () = run_controller(ctx, &settings) => Ok(()),
        lost = leadership_lost(&mut leader) => Err(lost),
    };
    drop(leader);
    let _ = lease_task.await;
    health.abort();
    result
}

async fn leadership_lost(leader: &mut tokio::sync::watch::Receiver<bool>) -> anyhow::Error {
    loop {
        if leader.changed().await.is_err() || !*leader.borrow() {
            return anyhow::anyhow!("lost the leader Lease; exiting so that only the new leader rotates");
        }
    }
}

async fn run_controller(ctx: Arc<Context>, settings: &ControllerSettings) {
    let namespace = settings.namespace.as_deref();
    let rotations: Api<PartialObjectMeta<ClientSecretRotation>> = scoped(&ctx.client, namespace);
    let secrets: Api<Secret> = scoped(&ctx.client, namespace);
    let rotations_for_batch: Api<ClientSecretRotation> = scoped(&ctx.client, namespace);
    // Cached by metadata only: each reconcile reads the whole object (see `reconcile_cached`).
    // Reconcile on spec changes and rotate requests only: our own status writes must not
    // trigger a reconcile, or every reconcile would cost Graph and Key Vault reads twice.
    let (reader, writer) = kube::runtime::reflector::store();
    let rotation_stream = watcher(rotations, watcher::Config::default())
        .default_backoff()
        .modify(keep_what_scheduling_reads)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(generation_or_rotate_request, Default::default());
    if settings.batch_drift_checks {
        batch_first_pass(&ctx, &rotations_for_batch, settings.delta_refresh).await;
    }
    let pods: Api<PartialObjectMeta<Pod>> = scoped(&ctx.client, namespace);
    let (lookup, waiting) = (ctx.clone(), ctx.clone());
    let background = Arc::new(BackgroundRuns::default());
    let runs = background.clone();
    Controller::for_stream(rotation_stream, reader)
        .watches_stream(secret_changes(secrets), move |secret: Secret| rotations_writing(&lookup.watched, &secret))
        .watches_stream(pod_changes(pods), move |pod: PartialObjectMeta<Pod>| rotations_waiting_in(&waiting.watched, &pod))
        // No debounce: a namespace whose pods change more often than its period would
        // postpone the waiting rotation's reconcile for good. The scheduler already runs at
        // most one reconcile per object and folds the triggers that arrive meanwhile into
        // one more.
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency.max(1)))
        .shutdown_on_signal()
        .run(
            move |object, ctx: Arc<Context>| {
                let background = runs.clone();
                async move {
                    let reconciled = reconcile_cached(&object, &ctx, &background).await?;
                    tracing::info!(requeue_in = ?reconciled.requeue_after, "{}", reconciled.summary);
                    Ok::<_, ReconcileError>(Action::requeue(reconciled.requeue_after))
                }
            },
            |object, error, _ctx| {
                let rotation = format!("{}/{}", object.metadata.namespace.as_deref().unwrap_or_default(), object.metadata.name.as_deref().unwrap_or_default());
                tracing::warn!(%rotation, %error, "reconcile failed; retrying in 30s");
                Action::requeue(Duration::from_secs(30))
            },
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    background.wait_all().await;
}

/// `K`s of one namespace, or of all when `None`.
fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Objects listed per page while gathering the first pass's drift checks.
const FIRST_PASS_PAGE: u32 = 500;

/// After a start (or a change of leader) every object is due at once: their drift checks
/// are read in batches first (a paged list of the objects, then Graph's `$batch` and the
/// vaults' listings; see `adapters::drift_batch`), and the first pass's reconciles take
/// their first reads from that batch. Objects that come later, and reads after the
/// batch's freshness, go one by one as before. A failure to list only costs the batching.
async fn batch_first_pass(ctx: &Arc<Context>, rotations: &Api<ClientSecretRotation>, delta_refresh: Duration) {
    let mut wanted = Wanted::default();
    let mut params = ListParams::default().limit(FIRST_PASS_PAGE);
    loop {
        let page = match rotations.list(&params).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "could not list the ClientSecretRotations to batch their first drift checks; each reads for itself");
                return;
            }
        };
        let next = page.metadata.continue_.filter(|token| !token.is_empty());
        // One object alone reads as it always did (not even the policies twice).
        if next.is_none() && wanted.applications.is_empty() && page.items.len() < 2 {
            return;
        }
        wanted.merge(super::pass::drift_checks(ctx, &page.items.iter().collect::<Vec<_>>()).await);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    if wanted.applications.len() < 2 {
        return;
    }
    // The steady drift checks go through applications/delta; its first round answers the
    // first pass's Graph reads too, so the batch reads only the vaults.
    if ctx.assembly.start_delta_mirror(&wanted.applications, delta_refresh).await {
        wanted.applications.clear();
    }
    ctx.assembly.begin_drift_batch(&wanted).await;
    let ctx = ctx.clone();
    // What the first pass did not take is of no use later (too old): let it go.
    tokio::spawn(async move {
        tokio::time::sleep(crate::adapters::drift_batch::FRESH_FOR).await;
        ctx.assembly.end_drift_batch();
    });
}

/// Reconciles the rotation `cached` names, read whole first: the cache holds its metadata
/// only, and the read is also the guard against a stale status (the cache may predate our
/// last status write, which writing from it would undo). A panic fails this object only;
/// the long waits do not hold the worker.
async fn reconcile_cached(
    cached: &PartialObjectMeta<ClientSecretRotation>,
    ctx: &Context,
    background: &BackgroundRuns,
) -> Result<Reconciled, ReconcileError> {
    let (namespace, name) = (cached.metadata.namespace.clone().unwrap_or_default(), cached.metadata.name.clone().unwrap_or_default());
    let api: Api<ClientSecretRotation> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = match api.get_status(&name).await {
        Ok(object) => object,
        Err(kube::Error::Api(refusal)) if refusal.code == 404 => {
            ctx.watched.forget(&namespace, &name);
            return Ok(Reconciled { summary: format!("{namespace}/{name}: deleted"), failed: false, requeue_after: ctx.drift_interval });
        }
        Err(source) => return Err(ReconcileError::Status { object: format!("{namespace}/{name}"), source }),
    };
    ctx.watched.record(&object, &object.status.clone().unwrap_or_default());
    reconcile_isolated(&object, Read::JustNow, ctx, Some(background)).await
}

/// Cuts a cached ClientSecretRotation's metadata down to what scheduling reads: name,
/// namespace, uid, resourceVersion, generation and the two rotate-request annotations.
/// Labels, other annotations (`kubectl.kubernetes.io/last-applied-configuration` repeats
/// the whole spec), managedFields and owner references are dropped before they are stored
/// (docs/performance.md).
fn keep_what_scheduling_reads(rotation: &mut PartialObjectMeta<ClientSecretRotation>) {
    let meta = &mut rotation.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|name, _| name == super::rotate_request::ROTATE_REQUESTED_AT || name == super::rotate_request::ROTATE_COMPROMISED);
    }
}

/// Our Secrets as they change. A deletion is marked with a deletion timestamp (the watch
/// delivers the last state, which may not carry one) so the mapper can tell it apart.
fn secret_changes(secrets: Api<Secret>) -> impl futures::Stream<Item = Result<Secret, watcher::Error>> + Send + 'static {
    let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=entra-rotator");
    watcher(secrets, config).default_backoff().filter_map(|event| {
        futures::future::ready(match event {
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => Some(Ok(secret)),
            Ok(watcher::Event::Delete(mut secret)) => {
                secret.metadata.deletion_timestamp.get_or_insert(Time(Timestamp::now()));
                Some(Ok(secret))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        })
    })
}

/// Pods as they change, by metadata only (no spec, no status: the consumer check lists the
/// pods it needs when it runs). Not the initial listing: every rotation is reconciled at
/// start anyway.
fn pod_changes(
    pods: Api<PartialObjectMeta<Pod>>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Pod>, watcher::Error>> + Send + 'static {
    watcher(pods, watcher::Config::default()).default_backoff().filter_map(|event| {
        futures::future::ready(match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) => Some(Ok(pod)),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        })
    })
}

/// The rotations of `pod`'s namespace whose revocation waits for their consumers
/// (`status.consumers.waitingSince`): a pod created, ready or gone may be what releases it.
/// Other rotations are not woken by pods.
fn rotations_waiting_in(watched: &WatchedRotations, pod: &PartialObjectMeta<Pod>) -> Vec<ObjectRef<PartialObjectMeta<ClientSecretRotation>>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    watched.waiting_in(namespace).into_iter().map(|name| ObjectRef::new(&name).within(namespace)).collect()
}

/// The rotations that write `secret` (same namespace, a `secret` target with its name),
/// unless the Secret holds exactly the keyId the rotation's status expects: our own
/// writes must not cost a reconcile (and Graph and Key Vault reads) each.
fn rotations_writing(watched: &WatchedRotations, secret: &Secret) -> Vec<ObjectRef<PartialObjectMeta<ClientSecretRotation>>> {
    let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
    let Some(name) = secret.metadata.name.as_deref() else { return Vec::new() };
    let held = secret.metadata.annotations.as_ref().and_then(|a| a.get("entra-rotator.io/key-id"));
    watched
        .writing(namespace, name, held, secret.metadata.deletion_timestamp.is_some())
        .into_iter()
        .map(|rotation| ObjectRef::new(&rotation).within(namespace))
        .collect()
}

/// `/healthz`, `/readyz` and `/metrics` (Prometheus text format) on `addr`, or `/metrics`
/// on `metrics_addr` alone when it is set.
async fn serve_health(addr: SocketAddr, metrics_addr: Option<SocketAddr>, ready: Arc<AtomicBool>, metrics: Arc<crate::metrics::Metrics>) {
    use axum::{http::StatusCode, routing::get, Router};
    let metrics_route = get(move || {
        let metrics = metrics.clone();
        async move { ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], metrics.encode()) }
    });
    let app = Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }
        }),
    );
    match metrics_addr {
        Some(metrics_addr) => {
            tokio::join!(serve(addr, app), serve(metrics_addr, Router::new().route("/metrics", metrics_route)));
        }
        None => serve(addr, app.route("/metrics", metrics_route)).await,
    }
}

async fn serve(addr: SocketAddr, app: axum::Router) {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%addr, %error, "the health or metrics endpoint stopped");
            }
        }
        Err(error) => tracing::error!(%addr, %error, "cannot serve the health or metrics endpoint"),
    }
}

/// Changes when the spec does (`metadata.generation`) or a rotation is requested (the
/// annotation `entra-rotator.io/rotate-requested-at`, which leaves the generation alone).
fn generation_or_rotate_request(rotation: &PartialObjectMeta<ClientSecretRotation>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rotation.metadata.generation.hash(&mut hasher);
    kube::ResourceExt::annotations(rotation).get(super::rotate_request::ROTATE_REQUESTED_AT).hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The cache keeps what scheduling and the predicate read of the metadata, and nothing
    /// else (a metadata watch brings neither spec nor status).
    #[test]
    fn the_cache_keeps_only_what_scheduling_reads() {
        let full = json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "dify-smtp", "namespace": "dify", "uid": "u-1", "resourceVersion": "7", "generation": 3,
                "labels": { "team": "mail" },
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    "entra-rotator.io/rotate-requested-at": "2026-12-01T00:00:00Z",
                    "entra-rotator.io/rotate-compromised": "true"
                },
                "managedFields": [ { "manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": { "f:spec": {} } } ]
            }
        });
        let original: PartialObjectMeta<ClientSecretRotation> = serde_json::from_value(full).unwrap();
        let mut lean = original.clone();
        keep_what_scheduling_reads(&mut lean);
        assert_eq!((&lean.metadata.name, &lean.metadata.namespace, &lean.metadata.uid), (&original.metadata.name, &original.metadata.namespace, &original.metadata.uid));
        assert_eq!((&lean.metadata.resource_version, lean.metadata.generation), (&original.metadata.resource_version, original.metadata.generation));
        let kept: Vec<&String> = lean.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(kept, ["entra-rotator.io/rotate-compromised", "entra-rotator.io/rotate-requested-at"]);
        assert!(lean.metadata.managed_fields.is_none() && lean.metadata.labels.is_none());
        // The same answers from the lean object as from the whole one.
        assert_eq!(generation_or_rotate_request(&lean), generation_or_rotate_request(&original));
    }
}
