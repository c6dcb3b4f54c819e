//! One reconcile of one ClientSecretRotation: translate the spec, run the engine, publish
//! what happened as Kubernetes Events, write the status, and say when to look again.
//! Shared by the controller and the CronJob pass.

use super::consumers::{self, ConsumerGate};
use super::rotate_request;
use super::crd::ClientSecretRotation;
use super::rollout::WorkloadRollout;
use super::status::{self, conditions};
use crate::alerting::{Notification, Notifier, CONSUMERS_STUCK, EXPIRING, FAILED};
use crate::assembly::Assembly;
use crate::metrics::{CredentialLabels, Metrics};
use crate::config::duration::HumanDuration;
use crate::engine::events::{Event as EngineEvent, RecordingSink};
use crate::adapters::graph::SignInGate;
use crate::engine::ports::{Clock, Gates, RevocationGate, Rollout};
use crate::engine::{Engine, EngineError, Outcome, Reverify, Rotation, RunOptions};
use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub assembly: Assembly,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
    /// Look at every rotation at least this often, to notice secrets added or removed
    /// out of band.
    pub drift_interval: Duration,
    /// How long a secret minted but not yet stored is left to the run that minted it.
    pub orphan_grace: Duration,
    /// How soon a revocation held for consumers is looked at again without a pod change.
    pub consumer_recheck: chrono::Duration,
    pub metrics: Arc<Metrics>,
    /// `None` when no notification channel is configured.
    pub notifier: Option<Notifier>,
    /// Who may rotate what without a RotationPolicy.
    pub authorization: super::authorization::Authorization,
    /// What the controller's mappers know of each rotation (its cache holds metadata only).
    pub watched: super::watched::WatchedRotations,
}

/// The result of one reconcile, for logs, the CronJob pass and the requeue.
#[derive(Debug)]
pub struct Reconciled {
    pub summary: String,
    pub failed: bool,
    pub requeue_after: Duration,
}

/// Only Kubernetes itself failing (the status write) and bugs are errors here; rotation
/// failures are recorded in the status and retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("could not read or write the status of {object}: {source}")]
    Status { object: String, source: kube::Error },
    #[error("internal error while reconciling {object}; please report it with the controller's log, which has the details")]
    Internal { object: String },
}

/// How long a controller reconcile waits for its engine run before it gives the worker
/// back. A verification may wait for Entra for the whole retryBudget (up to an hour); a
/// worker held that long starves every other rotation once a few relays keep answering
/// 451. The run goes on in the background, and a later reconcile collects its result.
pub const ENGINE_SLICE: Duration = Duration::from_secs(10);

/// The Revoked reason and Warning Event after `rotate --compromised`.
const COMPROMISED_SECRET_REVOKED: &str = "CompromisedSecretRevoked";

/// How soon a rotation whose engine run goes on in the background is looked at again.
const BACKGROUND_POLL: Duration = Duration::from_secs(5);

type EngineResult = Result<Outcome, EngineError>;

/// Condition: whether the sign-in log could be read before the last revocation.
pub const SIGN_IN_CHECK: &str = "SignInCheck";

/// The revocation gates of a run, kept to read what they found once it ends.
#[derive(Clone, Default)]
struct Gatekeepers {
    consumers: Option<Arc<ConsumerGate>>,
    sign_in: Option<Arc<SignInGate>>,
}

impl Gatekeepers {
    /// All of them as the engine's one gate, consumers first.
    fn gate(&self) -> Option<Arc<dyn RevocationGate>> {
        let gates: Vec<Arc<dyn RevocationGate>> = self
            .consumers
            .iter()
            .map(|gate| gate.clone() as Arc<dyn RevocationGate>)
            .chain(self.sign_in.iter().map(|gate| gate.clone() as Arc<dyn RevocationGate>))
            .collect();
        (!gates.is_empty()).then(|| Arc::new(Gates(gates)) as Arc<dyn RevocationGate>)
    }
}

/// An engine run that outlived the reconcile that started it.
struct BackgroundRun {
    generation: Option<i64>,
    sink: Arc<RecordingSink>,
    gates: Gatekeepers,
    /// Events already published as Kubernetes Events.
    published: usize,
    handle: tokio::task::JoinHandle<EngineResult>,
}

/// The controller's engine runs still going after their reconcile gave its worker back,
/// by rotation. The run keeps the minted secret's value in memory and its own retry
/// budget, so it finishes (or discards the secret) exactly as if the worker had waited.
#[derive(Default)]
pub struct BackgroundRuns(std::sync::Mutex<std::collections::HashMap<String, BackgroundRun>>);

enum Resumed {
    Nothing,
    StillRunning,
    Finished(BackgroundRun),
}

impl BackgroundRuns {
    fn resume(&self, rotation: &str) -> Resumed {
        let mut runs = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match runs.get(rotation) {
            None => Resumed::Nothing,
            Some(run) if !run.handle.is_finished() => Resumed::StillRunning,
            Some(_) => runs.remove(rotation).map_or(Resumed::Nothing, Resumed::Finished),
        }
    }

    fn keep(&self, rotation: String, run: BackgroundRun) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(rotation, run);
    }

    /// Waits for every run still going, as the controller stops on SIGTERM: a rotation
    /// half done is finished within the pod's grace period rather than cut off (either is
    /// safe; the next leader starts from what Graph and the stores say).
    pub async fn wait_all(&self) {
        let handles: Vec<_> =
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain().map(|(_, run)| run.handle).collect();
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// A panic is not caught here: it is re-raised in the reconcile, which fails that object
/// ([`reconcile_isolated`]).
fn joined(result: Result<EngineResult, tokio::task::JoinError>, object: &str) -> Result<EngineResult, ReconcileError> {
    match result {
        Ok(result) => Ok(result),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(ReconcileError::Internal { object: object.to_string() }),
    }
}

/// A panic caught by [`isolate`].
#[derive(Debug, PartialEq, Eq)]
pub struct Panicked;

/// Runs `future`, turning a panic into `Err(Panicked)`, so that one object's bug fails
/// that object and not the process (`alertThresholds: ["300000y"]` once crash-looped
/// the controller this way). The panic hook has printed the message to the log already.
pub async fn isolate<F: std::future::Future>(future: F) -> Result<F::Output, Panicked> {
    use futures::FutureExt;
    // Unwind safety: what a reconcile shares (the context's clients, metrics and caches)
    // is behind locks that tolerate poisoning, or is read-only.
    std::panic::AssertUnwindSafe(future).catch_unwind().await.map_err(|_| Panicked)
}

/// When `object` was read, which decides whether its status can be started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Just now, for this reconcile: its status is the latest.
    JustNow,
    /// Earlier (a listing): this process may have written its status since, and writing
    /// from an older one would undo that, so the status is read again.
    Earlier,
}

/// [`reconcile`], with a panic turned into a failure of this object: its status says so
/// (Ready False, reason InternalError), and the other objects go on.
pub async fn reconcile_isolated(
    object: &ClientSecretRotation,
    read: Read,
    ctx: &Context,
    background: Option<&BackgroundRuns>,
) -> Result<Reconciled, ReconcileError> {
    match isolate(reconcile(object, read, ctx, background)).await {
        Ok(result) => result,
        Err(Panicked) => {
            record_internal_error(ctx, object).await;
            Err(ReconcileError::Internal { object: object.rotation_name() })
        }
    }
}

async fn record_internal_error(ctx: &Context, object: &ClientSecretRotation) {
    let Ok(previous) = fresh_status(ctx, object).await else { return };
    let (now, generation) = (ctx.clock.now(), object.metadata.generation);
    let message = "internal error while reconciling; please report it with the controller's log (it names the cause). Retried with back-off; the next attempt starts again from what Graph and the stores hold".to_string();
    let mut next = previous.clone();
    next.last_error = Some(message.clone());
    status::set_condition(&mut next, conditions::READY, false, conditions::INTERNAL_ERROR, message.clone(), generation, now);
    status::set_condition(&mut next, conditions::DEGRADED, true, conditions::INTERNAL_ERROR, message.clone(), generation, now);
    if let Err(error) = write_status(ctx, object, &previous, &next).await {
        tracing::warn!(rotation = %object.rotation_name(), %error, "could not record the internal error in the status");
    }
    publish(ctx, object, EventType::Warning, conditions::INTERNAL_ERROR, &message).await;
}

/// Reconciles one object once. With `background` (the controller), an engine run that
/// takes longer than [`ENGINE_SLICE`] goes on without holding the worker; without it (the
/// CronJob pass), the reconcile waits for the run.
pub async fn reconcile(
    object: &ClientSecretRotation,
    read: Read,
    ctx: &Context,
    background: Option<&BackgroundRuns>,
) -> Result<Reconciled, ReconcileError> {
    let name = object.rotation_name();
    let resumed = match background.map(|runs| runs.resume(&name)) {
        Some(Resumed::StillRunning) => {
            return Ok(Reconciled {
                summary: format!("{name}: still rotating (the engine run goes on in the background)"),
                failed: false,
                requeue_after: BACKGROUND_POLL,
            });
        }
        Some(Resumed::Finished(run)) => Some(run),
        Some(Resumed::Nothing) | None => None,
    };
    let now = ctx.clock.now();
    let previous = match read {
        Read::JustNow => object.status.clone().unwrap_or_default(),
        Read::Earlier => fresh_status(ctx, object).await?,
    };
    // A rotate request is recorded before anything is minted for it (see rotate_request).
    let mut accepted = previous.clone();
    let request = rotate_request::accept(object, &mut accepted);
    if accepted.rotate_request != previous.rotate_request {
        write_status(ctx, object, &previous, &accepted).await?;
        if let Some(refused) = accepted.rotate_request.as_ref().filter(|r| r.state == rotate_request::INVALID) {
            publish(ctx, object, EventType::Warning, "RotateRequestInvalid", refused.message.as_deref().unwrap_or_default()).await;
        }
    }
    let previous = accepted;
    let thresholds = alert_thresholds(object);
    let verification_enabled = object.spec.verification.enabled();
    let (sink, result, generation, gates) = match resumed {
        Some(run) => {
            let events = run.sink.events();
            publish_events(ctx, object, &events[run.published.min(events.len())..]).await;
            (run.sink, joined(run.handle.await, &name)?, run.generation, run.gates)
        }
        None => match start(object, ctx, &previous, &thresholds, now, background, request).await? {
            Started::Done(sink, result, gates) => {
                publish_events(ctx, object, &sink.events()).await;
                (sink, *result, object.metadata.generation, gates)
            }
            Started::Returned(reconciled) => return Ok(reconciled),
        },
    };
    if let Err(error) = &result {
        publish(ctx, object, EventType::Warning, error.category(), &error.to_string()).await;
    }
    let events = sink.events();
    let (mut next, summary, failed, mut soonest) = match &result {
        Ok(outcome) => (
            status::after_outcome(&previous, outcome, generation, now, &thresholds),
            crate::report::outcome_line(&name, outcome),
            false,
            due_time(outcome),
        ),
        Err(error) => {
            let next = status::after_error(&previous, error, generation, now, &thresholds);
            // Waiting for the relay's rate or quota limit counts no failure; its window is a minute.
            let wait = if error.is_waiting() { std::time::Duration::from_secs(60) } else { status::backoff(next.failed_attempts) };
            let retry = now + chrono::Duration::from_std(wait).unwrap_or_default();
            (next, crate::report::error_line(&name, error), true, Some(retry))
        }
    };
    let verified_now = events.iter().rev().find_map(|(_, e)| match e {
        EngineEvent::Verified { key_id, .. } => Some(key_id.to_string()),
        _ => None,
    });
    status::record_verification(&mut next, verified_now, verification_enabled, generation, now);
    if let (Some(gate), Ok(outcome)) = (&gates.consumers, &result) {
        let announced = consumers::record(gate, outcome, &previous, &mut next, generation, now).await;
        if !announce_consumers(ctx, object, &mut next, announced, now).await {
            soonest = soonest.min(Some(now + chrono::Duration::minutes(1)));
        }
    } else if let Ok(Outcome::Settled { held: Some(hold), .. }) = &result {
        status::set_condition(&mut next, consumers::REVOKED, false, hold.reason, hold.message.clone(), generation, now);
    }
    if let Some(checked) = gates.sign_in.as_ref().and_then(|gate| gate.last_check()) {
        match checked {
            Ok(()) => status::set_condition(&mut next, SIGN_IN_CHECK, true, "SignInLogRead", "the Entra sign-in log was read before revoking (requireUnusedFor)".into(), generation, now),
            Err(skipped) => {
                status::set_condition(&mut next, SIGN_IN_CHECK, false, "SignInLogUnavailable", skipped.clone(), generation, now);
                publish(ctx, object, EventType::Warning, "SignInLogUnavailable", &skipped).await;
            }
        }
    }
    let on_old_value = gates.consumers.as_ref().and_then(|gate| gate.report()).map(|report| report.on_old_value()).unwrap_or_default();
    if let Some((done, compromised)) = result.as_ref().ok().and_then(|outcome| rotate_request::finish(&mut next, outcome, &on_old_value)) {
        if compromised {
            status::set_condition(&mut next, consumers::REVOKED, true, COMPROMISED_SECRET_REVOKED, done.clone(), generation, now);
            publish(ctx, object, EventType::Warning, COMPROMISED_SECRET_REVOKED, &done).await;
        } else {
            publish(ctx, object, EventType::Normal, "RotateRequestDone", &done).await;
        }
    }
    record_metrics(ctx, object, &next, &result, &events, now);
    if !notify(ctx, object, &mut next, result.as_ref().err(), &thresholds, now).await {
        // Undelivered notifications are retried soon, not at the next due time.
        soonest = soonest.min(Some(now + chrono::Duration::minutes(1))).or(Some(now + chrono::Duration::minutes(1)));
    }
    write_status(ctx, object, &previous, &next).await?;
    let requeue_after = if generation == object.metadata.generation {
        next_wake(&next, now, &thresholds, soonest, ctx.drift_interval)
    } else {
        // A background run of an older spec finished; the current one has not run yet.
        Duration::from_secs(1)
    };
    Ok(Reconciled { summary, failed, requeue_after })
}

/// What [`start`] did: ran the engine to the end, or answered without it (suspended,
/// invalid spec, or the run went to the background).
enum Started {
    // Boxed: an outcome is a few hundred bytes, a refusal a few dozen.
    Done(Arc<RecordingSink>, Box<EngineResult>, Gatekeepers),
    Returned(Reconciled),
}

/// Translates the spec and starts the engine run, unless the object is suspended or its
/// spec unusable.
async fn start(
    object: &ClientSecretRotation,
    ctx: &Context,
    previous: &super::crd::ClientSecretRotationStatus,
    thresholds: &[chrono::Duration],
    now: DateTime<Utc>,
    background: Option<&BackgroundRuns>,
    request: Option<rotate_request::Request>,
) -> Result<Started, ReconcileError> {
    let name = object.rotation_name();
    let generation = object.metadata.generation;
    if object.spec.suspend {
        let mut next = previous.clone();
        next.observed_generation = generation;
        status::set_condition(&mut next, conditions::ROTATING, false, conditions::SUSPENDED, "spec.suspend is true; nothing is rotated".into(), generation, now);
        status::update_expiry(&mut next, generation, now, thresholds);
        write_status(ctx, object, previous, &next).await?;
        let requeue = next_wake(&next, now, thresholds, None, ctx.drift_interval);
        return Ok(Started::Returned(Reconciled { summary: format!("{name}: suspended"), failed: false, requeue_after: requeue }));
    }

    let Prepared { mut rotation, sign_in } = match prepare(object, ctx).await {
        Ok(prepared) => prepared,
        Err(Unprepared::Refused { reason, denial }) => {
            return refuse_before_graph(object, ctx, previous.clone(), reason, denial, now).await.map(Started::Returned);
        }
        Err(Unprepared::Invalid(problems)) => {
            return refuse_spec(object, ctx, previous.clone(), problems, now).await.map(Started::Returned);
        }
    };
    let consumer_gate = match object.consumer_rules() {
        Ok(rules) if !object.secret_names().is_empty() => Some(Arc::new(ConsumerGate::new(
            ctx.client.clone(),
            object.metadata.namespace.clone().unwrap_or_default(),
            object.secret_names(),
            object.spec.rollout.clone(),
            rules,
            ctx.clock.clone(),
            consumers::recorded_wait(previous),
        ).with_recheck(ctx.consumer_recheck))),
        _ => None,
    };
    let gates = Gatekeepers { consumers: consumer_gate, sign_in };
    rotation.revocation_gate = gates.gate();

    let sink = Arc::new(RecordingSink::default());
    let engine = Engine::new(ctx.clock.clone(), sink.clone());
    let reverify = if object.spec.verification.enabled() {
        let verified = previous.verified_key_id.as_deref().and_then(|id| uuid::Uuid::parse_str(id).ok());
        Reverify::UnlessVerified(verified)
    } else {
        Reverify::No
    };
    // A task of its own: it can outlive this reconcile (below), and a panic in it stays in it.
    let mut handle = tokio::spawn(async move {
        match request {
            Some(rotate_request::Request { replace, compromised: true }) => engine.run_compromised(&rotation, replace, reverify).await,
            Some(rotate_request::Request { replace: Some(key_id), .. }) => engine.run_replacing(&rotation, key_id, reverify).await,
            Some(rotate_request::Request { replace: None, .. }) | None => engine.run_with(&rotation, RunOptions::default(), reverify).await,
        }
    });
    let Some(runs) = background else {
        return Ok(Started::Done(sink, Box::new(joined(handle.await, &name)?), gates));
    };
    match tokio::time::timeout(ENGINE_SLICE, &mut handle).await {
        Ok(result) => Ok(Started::Done(sink, Box::new(joined(result, &name)?), gates)),
        Err(_) => {
            let events = sink.events();
            publish_events(ctx, object, &events).await;
            let last = events.last().map(|(_, e)| e.to_string()).unwrap_or_default();
            let mut next = previous.clone();
            next.observed_generation = generation;
            let message = format!("the rotation goes on in the background (e.g. verification retrying while Entra replicates a new secret); last step: {last}");
            status::set_condition(&mut next, conditions::ROTATING, true, conditions::IN_PROGRESS, message, generation, now);
            write_status(ctx, object, previous, &next).await?;
            runs.keep(name.clone(), BackgroundRun { generation, sink, gates, published: events.len(), handle });
            Ok(Started::Returned(Reconciled {
                summary: format!("{name}: still rotating; the worker is given back while the engine run goes on"),
                failed: false,
                requeue_after: BACKGROUND_POLL,
            }))
        }
    }
}

/// A rotation of `object` wired to the adapters, signed in as the identity it names, with
/// its sign-in check: what [`start`] runs and `entra-rotator doctor` checks.
pub struct Prepared {
    pub rotation: Rotation,
    pub sign_in: Option<Arc<SignInGate>>,
}

/// Why `object` cannot be run: refused before any call to Graph (a RotationPolicy, its
/// identity), or an invalid spec.
pub enum Unprepared {
    Refused { reason: &'static str, denial: super::authorization::Denial },
    Invalid(String),
}

/// Decides, before anything reaches Graph, a vault or a relay, whether `object` may run and
/// as whom, then builds its rotation.
pub async fn prepare(object: &ClientSecretRotation, ctx: &Context) -> Result<Prepared, Unprepared> {
    // Whose application, vault and relay these are is the administrator's to decide, not
    // the rotation author's.
    super::authorization::authorize(&ctx.client, &ctx.authorization, object)
        .await
        .map_err(|denial| Unprepared::Refused { reason: super::authorization::NOT_ALLOWED_BY_POLICY, denial })?;
    // Whose identity signs in is decided before any call to Graph too.
    let identity = super::identity::resolve(&ctx.client, &ctx.authorization.home_namespace, object)
        .await
        .map_err(|denial| Unprepared::Refused { reason: super::identity::IDENTITY_REFUSED, denial })?;
    let mut config = object
        .consumer_rules()
        .and_then(|_| object.to_rotation_config())
        .map_err(|problems| Unprepared::Invalid(problems.join("; ")))?;
    config.orphan_grace_period = HumanDuration(ctx.orphan_grace);
    let rollout: Option<Arc<dyn Rollout>> = (!object.spec.rollout.is_empty()).then(|| {
        Arc::new(WorkloadRollout::new(
            ctx.client.clone(),
            object.metadata.namespace.clone().unwrap_or_default(),
            object.spec.rollout.clone(),
        )) as Arc<dyn Rollout>
    });
    let sign_in_as = || {
        identity.as_ref().map(|identity| crate::assembly::SignInAs {
            name: &identity.name,
            version: &identity.version,
            credential: &identity.credential,
        })
    };
    let invalid = |error: crate::assembly::AssemblyError| Unprepared::Invalid(error.to_string());
    let sign_in = ctx.assembly.sign_in_gate_as(&config, sign_in_as().as_ref()).map_err(invalid)?;
    let rotation = ctx.assembly.rotation_as(&config, rollout, sign_in_as()).map_err(invalid)?;
    Ok(Prepared { rotation, sign_in })
}

fn record_metrics(
    ctx: &Context,
    object: &ClientSecretRotation,
    next: &super::crd::ClientSecretRotationStatus,
    result: &Result<Outcome, EngineError>,
    events: &[(String, EngineEvent)],
    now: DateTime<Utc>,
) {
    if let Some(consumers) = &next.consumers {
        ctx.metrics.set_consumers_on_old_secret(&object.rotation_name(), consumers.on_old_secret);
    }
    let rotation = object.rotation_name();
    let decided = events.iter().find_map(|(_, e)| match e {
        EngineEvent::Decided { reason, .. } => Some(*reason),
        _ => None,
    });
    let (label, reason) = match result {
        Ok(Outcome::UpToDate { .. }) => ("up_to_date", "UpToDate"),
        Ok(Outcome::InFlight { .. }) => ("in_flight", "RotationInFlight"),
        Ok(Outcome::Settled { minted: true, .. }) => ("rotated", decided.unwrap_or("Rotated")),
        Ok(Outcome::Settled { .. }) => ("settled", decided.unwrap_or("Settled")),
        Ok(Outcome::Planned(_)) => ("planned", "DryRun"),
        Err(error) => ("failed", error.category()),
    };
    ctx.metrics.count_reconcile(label, reason);
    if label == "rotated" {
        ctx.metrics.set_last_success(&rotation, now);
    }
    for (_, event) in events {
        if let EngineEvent::Verified { attempts, took, .. } = event {
            ctx.metrics.observe_verification(*attempts);
            ctx.metrics.observe_verification_duration(*took);
        }
    }
    if let Err(EngineError::Verification { attempts, .. }) = result {
        ctx.metrics.observe_verification(*attempts);
    }
    if let (Some(key_id), Some(expires)) = (&next.current_key_id, status::parse_time(&next.not_after)) {
        let labels = CredentialLabels { rotation, app_id: object.spec.application.client_id.clone(), key_id: key_id.clone() };
        ctx.metrics.set_credential(labels, expires);
    }
}

/// Announces what is due, once: a Warning Event and a notification per threshold crossing
/// per keyId, a notification per run of failures (the failure itself already has its
/// Warning Event). Records it in `next`; returns false when a delivery failed, so that it
/// is tried again soon.
async fn notify(
    ctx: &Context,
    object: &ClientSecretRotation,
    next: &mut super::crd::ClientSecretRotationStatus,
    error: Option<&EngineError>,
    thresholds: &[chrono::Duration],
    now: DateTime<Utc>,
) -> bool {
    let mut delivered = true;
    let base = Notification {
        kind: EXPIRING,
        rotation: object.rotation_name(),
        application_id: object.spec.application.client_id.clone(),
        key_id: next.current_key_id.clone(),
        expires_at: status::parse_time(&next.not_after),
        days_left: status::parse_time(&next.not_after).map(|at| (at - now).num_days()),
        message: String::new(),
    };
    if let Some(threshold) = status::crossed_threshold(next, now, thresholds) {
        let notified = status::notified_threshold(next).filter(|_| next.notified_key_id == next.current_key_id);
        if notified.is_none_or(|done| threshold < done) {
            let notification = Notification {
                message: format!(
                    "The stored client secret is within the {}-day alert threshold. entra-rotator rotates it at the renewal time; if this keeps coming, check the rotation's status and Events.",
                    threshold.num_days()
                ),
                ..base.clone()
            };
            let note = format!("{} day(s) left: {}", notification.days_left.unwrap_or_default(), notification.message);
            publish(ctx, object, EventType::Warning, conditions::EXPIRING_SOON, &note).await;
            match deliver(ctx, &notification).await {
                Ok(()) => {
                    next.notified_threshold = Some(HumanDuration(threshold.to_std().unwrap_or_default()).to_string());
                    next.notified_key_id = next.current_key_id.clone();
                }
                Err(problem) => {
                    delivered = false;
                    publish(ctx, object, EventType::Warning, "NotificationFailed", &problem.to_string()).await;
                }
            }
        }
    }
    match error {
        Some(error) if !next.failure_notified => {
            let notification = Notification { kind: FAILED, message: error.to_string(), ..base };
            match deliver(ctx, &notification).await {
                Ok(()) => next.failure_notified = true,
                Err(problem) => {
                    delivered = false;
                    publish(ctx, object, EventType::Warning, "NotificationFailed", &problem.to_string()).await;
                }
            }
        }
        Some(_) => {}
        None => next.failure_notified = false,
    }
    delivered
}

/// Publishes what the consumer check found that a person must hear about: a wait past
/// consumerWaitTimeout (Warning Event and notification, once per wait) and a revocation
/// made although consumers were stuck. Returns false when a delivery failed.
async fn announce_consumers(
    ctx: &Context,
    object: &ClientSecretRotation,
    next: &mut super::crd::ClientSecretRotationStatus,
    announced: consumers::Announcements,
    now: DateTime<Utc>,
) -> bool {
    let mut delivered = true;
    if let Some(message) = announced.revoked_while_stuck {
        publish(ctx, object, EventType::Warning, consumers::REVOKED_WHILE_STUCK, &message).await;
    }
    if let Some(message) = announced.timed_out {
        let message = format!("revocation has waited longer than consumerWaitTimeout: {message}");
        publish(ctx, object, EventType::Warning, consumers::CONSUMER_WAIT_TIMED_OUT, &message).await;
        let notification = Notification {
            kind: CONSUMERS_STUCK,
            rotation: object.rotation_name(),
            application_id: object.spec.application.client_id.clone(),
            key_id: next.current_key_id.clone(),
            expires_at: status::parse_time(&next.not_after),
            days_left: status::parse_time(&next.not_after).map(|at| (at - now).num_days()),
            message,
        };
        if let Err(problem) = deliver(ctx, &notification).await {
            delivered = false;
            if let Some(consumers) = next.consumers.as_mut() {
                consumers.wait_notified = false;
            }
            publish(ctx, object, EventType::Warning, "NotificationFailed", &problem.to_string()).await;
        }
    }
    delivered
}

async fn deliver(ctx: &Context, notification: &Notification) -> Result<(), crate::alerting::NotifyError> {
    match &ctx.notifier {
        Some(notifier) => notifier.notify(notification).await,
        None => Ok(()),
    }
}

/// When the engine itself needs to act again.
fn due_time(outcome: &Outcome) -> Option<DateTime<Utc>> {
    let due = match outcome {
        Outcome::Planned(_) => None,
        Outcome::UpToDate { renew_at, .. } => Some(*renew_at),
        Outcome::InFlight { stale_at, .. } => Some(*stale_at),
        Outcome::Settled { revoke_at: Some(at), .. } => Some(*at),
        Outcome::Settled { renew_at, .. } => *renew_at,
    };
    let retirement = match outcome {
        Outcome::UpToDate { retirement: Some(retirement), .. } | Outcome::Settled { retirement: Some(retirement), .. } => Some(retirement),
        _ => None,
    };
    // retireUnmanaged: when the unmanaged secrets fall due, or when a hold is looked at again.
    let retire = retirement.and_then(|r| {
        r.kept.iter().map(|(_, hold)| hold.as_ref().map_or(r.from, |hold| hold.recheck_at)).min()
    });
    match (due, retire) {
        (Some(due), Some(retire)) => Some(due.min(retire)),
        (due, retire) => due.or(retire),
    }
}

/// The earliest of: the engine's due time, the next alert threshold, the drift check.
fn next_wake(
    next: &super::crd::ClientSecretRotationStatus,
    now: DateTime<Utc>,
    thresholds: &[chrono::Duration],
    due: Option<DateTime<Utc>>,
    drift: Duration,
) -> Duration {
    let candidates = [due, status::next_threshold_crossing(next, now, thresholds)];
    let soonest = candidates.into_iter().flatten().map(|at| (at - now).to_std().unwrap_or_default()).min();
    soonest.unwrap_or(drift).clamp(Duration::from_secs(1), drift)
}

/// The usable thresholds; the spec check (`to_rotation_config`) reports the others.
fn alert_thresholds(object: &ClientSecretRotation) -> Vec<chrono::Duration> {
    super::crd::alert_thresholds(&object.spec.alert_thresholds, &mut Vec::new())
}

async fn refuse_spec(
    object: &ClientSecretRotation,
    ctx: &Context,
    previous: super::crd::ClientSecretRotationStatus,
    problems: String,
    now: DateTime<Utc>,
) -> Result<Reconciled, ReconcileError> {
    let generation = object.metadata.generation;
    let mut next = previous.clone();
    next.observed_generation = generation;
    next.last_error = Some(problems.clone());
    let message = format!("the spec cannot be used, nothing was changed: {problems}");
    status::set_condition(&mut next, conditions::READY, false, conditions::INVALID_SPEC, message.clone(), generation, now);
    status::set_condition(&mut next, conditions::DEGRADED, true, conditions::INVALID_SPEC, message.clone(), generation, now);
    write_status(ctx, object, &previous, &next).await?;
    publish(ctx, object, EventType::Warning, conditions::INVALID_SPEC, &message).await;
    Ok(Reconciled {
        summary: format!("{}: invalid spec: {problems}", object.rotation_name()),
        failed: true,
        requeue_after: ctx.drift_interval,
    })
}

/// How soon a rotation no policy allows (or whose identity is refused) is looked at again:
/// policies and identities are not watched, and a denied rotation costs a few Kubernetes
/// reads, no Graph call.
const POLICY_RECHECK: Duration = Duration::from_secs(60);

/// Ready=False with `reason` and a Warning Event, for a rotation stopped before any call to
/// Graph (not allowed by policy, or its identity refused).
async fn refuse_before_graph(
    object: &ClientSecretRotation,
    ctx: &Context,
    previous: super::crd::ClientSecretRotationStatus,
    reason: &'static str,
    denial: super::authorization::Denial,
    now: DateTime<Utc>,
) -> Result<Reconciled, ReconcileError> {
    let generation = object.metadata.generation;
    let mut next = previous.clone();
    next.observed_generation = generation;
    next.last_error = Some(denial.message.clone());
    status::set_condition(&mut next, conditions::READY, false, reason, denial.message.clone(), generation, now);
    status::set_condition(&mut next, conditions::DEGRADED, true, reason, denial.message.clone(), generation, now);
    write_status(ctx, object, &previous, &next).await?;
    // Once per denial, not once per recheck: the Event would repeat every minute.
    if previous.last_error.as_deref() != Some(denial.message.as_str()) {
        publish(ctx, object, EventType::Warning, reason, &denial.message).await;
    }
    ctx.metrics.count_reconcile("failed", reason);
    Ok(Reconciled {
        summary: match reason {
            super::authorization::NOT_ALLOWED_BY_POLICY => format!("{}: not allowed by policy: {}", object.rotation_name(), denial.message),
            _ => format!("{}: identity refused: {}", object.rotation_name(), denial.message),
        },
        failed: true,
        requeue_after: POLICY_RECHECK.min(ctx.drift_interval),
    })
}

async fn fresh_status(ctx: &Context, object: &ClientSecretRotation) -> Result<super::crd::ClientSecretRotationStatus, ReconcileError> {
    let api: Api<ClientSecretRotation> =
        Api::namespaced(ctx.client.clone(), object.metadata.namespace.as_deref().unwrap_or_default());
    let name = object.metadata.name.clone().unwrap_or_default();
    api.get_status(&name)
        .await
        .map(|latest| latest.status.unwrap_or_default())
        .map_err(|source| ReconcileError::Status { object: object.rotation_name(), source })
}

/// Writes `next` unless it equals `previous` (the status as last read).
async fn write_status(
    ctx: &Context,
    object: &ClientSecretRotation,
    previous: &super::crd::ClientSecretRotationStatus,
    next: &super::crd::ClientSecretRotationStatus,
) -> Result<(), ReconcileError> {
    if previous == next {
        return Ok(());
    }
    let api: Api<ClientSecretRotation> =
        Api::namespaced(ctx.client.clone(), object.metadata.namespace.as_deref().unwrap_or_default());
    let name = object.metadata.name.clone().unwrap_or_default();
    // Only what changed: the first pass writes every object's status.
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status::merge_patch(previous, next) })))
        .await
        .map_err(|source| ReconcileError::Status { object: object.rotation_name(), source })?;
    ctx.watched.record(object, next);
    Ok(())
}

/// The Event reason for each engine step, and whether it is a warning.
fn event_kind(event: &EngineEvent) -> Option<(EventType, &'static str)> {
    Some(match event {
        EngineEvent::Observed { .. } | EngineEvent::Decided { .. } => return None,
        EngineEvent::OrphanRemoved { .. } => (EventType::Normal, "OrphanRemoved"),
        EngineEvent::Discarded { .. } => (EventType::Warning, "Discarded"),
        EngineEvent::Minted { .. } => (EventType::Normal, "Minted"),
        EngineEvent::Stored { .. } => (EventType::Normal, "Stored"),
        EngineEvent::VerificationAttemptFailed { .. } => (EventType::Warning, "VerificationRetry"),
        EngineEvent::Verified { .. } => (EventType::Normal, "Verified"),
        EngineEvent::VerificationSkipped { .. } => (EventType::Warning, "VerificationSkipped"),
        EngineEvent::RolledOut { .. } => (EventType::Normal, "Restarted"),
        EngineEvent::RevocationScheduled { .. } => (EventType::Normal, "RevocationScheduled"),
        EngineEvent::RevocationHeld { .. } => (EventType::Warning, super::consumers::CONSUMERS_ON_OLD_SECRET),
        EngineEvent::Revoked { .. } => (EventType::Normal, "Revoked"),
        EngineEvent::Retired { .. } => (EventType::Normal, "RetiredUnmanaged"),
        EngineEvent::RetirementHeld { .. } => (EventType::Normal, "RetirementHeld"),
    })
}

async fn publish_events(ctx: &Context, object: &ClientSecretRotation, events: &[(String, EngineEvent)]) {
    for (_, event) in events {
        if let Some((type_, reason)) = event_kind(event) {
            publish(ctx, object, type_, reason, &event.to_string()).await;
        }
    }
}

/// The API server refuses Event notes over 1024 bytes; cut at a character boundary.
fn truncate_bytes(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Publishes one Event; a failure to record it is logged, never fatal.
async fn publish(ctx: &Context, object: &ClientSecretRotation, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate_bytes(&status::one_line(note), 1024)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(rotation = %object.rotation_name(), %error, "could not record a Kubernetes Event");
    }
}
