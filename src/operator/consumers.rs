//! Who may still hold the old secret: the pods of the rotation's namespace that read one
//! of its Secrets, and the workloads of `spec.rollout` whose roll-out has not finished.
//! Revoking while one of them runs on the old value stops its mail, so the engine asks
//! this gate before every revocation ([`RevocationGate`]).
//!
//! Per pod (`env`/`envFrom` secret references, `secret` and `projected` volumes; a
//! `subPath` mount is copied once at start, like an environment variable):
//! - a pod whose template carries the new keyId (`entra-rotator.io/key-id`, set by the
//!   roll-out after the Secret was written) holds the new value;
//! - a pod created after the Secret was written holds it (creation times have whole
//!   seconds: a pod created in the same second is taken for an old one);
//! - a pod that reads the Secret only through plain volumes holds it once the kubelet has
//!   refreshed them: its sync period (1 minute by default) plus the delay of its Secret
//!   cache, bounded by `spec.volumeSyncDelay` (default 2m);
//! - any other pod may hold the old value until it is replaced.
//!
//! When the Secret was written comes from Kubernetes itself: the time of entra-rotator's
//! entry in the Secret's `managedFields`, so it survives controller restarts. Reads
//! Secrets' metadata only, never their values.

use super::crd::{ClientSecretRotationStatus, ConsumersStatus, PodConsumerStatus, WorkloadRef, WorkloadRolloutStatus};
use crate::engine::Outcome;
use super::rollout::{WorkloadRollout, KEY_ID_ANNOTATION};
use crate::adapters::kubernetes::FIELD_MANAGER;
use crate::engine::ports::{Clock, RevocationGate, RevocationHold};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The hold's reason: a consumer may still use the old secret.
pub const CONSUMERS_ON_OLD_SECRET: &str = "ConsumersOnOldSecret";
/// The hold's reason: the rotator could not find out who reads the Secret.
pub const CONSUMER_CHECK_FAILED: &str = "ConsumerCheckFailed";

/// How often a hold is looked at again by default. The controller also watches the pods
/// and wakes a waiting rotation when one changes; this catches what no pod change shows (a
/// workload's status catching up after its last pod), and is the CronJob mode's only look.
pub const RECHECK: Duration = Duration::seconds(30);
/// At most this many consumers are named in messages and status.
const NAMED: usize = 20;

/// The rules a rotation's spec sets for its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerRules {
    pub volume_sync_delay: Duration,
    pub wait_timeout: Duration,
    pub revoke_when_stuck: bool,
}

/// How a pod reads the Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reads {
    /// `env`/`envFrom`: read once at start.
    Env,
    /// A `subPath` mount: copied once at start.
    SubPath,
    /// A plain `secret` or `projected` volume: refreshed by the kubelet.
    Volume,
}

impl Reads {
    pub fn word(self) -> &'static str {
        match self {
            Reads::Env => "env",
            Reads::SubPath => "subPath",
            Reads::Volume => "volume",
        }
    }
}

/// One pod that reads a Secret of the rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodConsumer {
    pub name: String,
    /// The ways it reads it (static ones first).
    pub reads: Vec<Reads>,
    pub holds_new_value: bool,
}

/// One workload of `spec.rollout`, and how far its roll-out has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadProgress {
    /// e.g. `Deployment dify/dify-api`.
    pub name: String,
    pub rolled_out: bool,
    /// What is missing, e.g. `0 of 1 replica(s) updated`.
    pub detail: String,
}

/// What the gate found for one keyId.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerReport {
    pub key_id: Uuid,
    /// When entra-rotator last wrote the Secrets (the latest of them).
    pub written_at: Option<DateTime<Utc>>,
    pub pods: Vec<PodConsumer>,
    pub workloads: Vec<WorkloadProgress>,
    /// Why the rotator could not find out (forbidden, API down).
    pub problem: Option<String>,
    /// Since when revocation has waited for these consumers.
    pub waiting_since: Option<DateTime<Utc>>,
    /// Whether it waited longer than `consumerWaitTimeout`.
    pub timed_out: bool,
    /// Whether the revocation went ahead anyway (`revokeWhenConsumersStuck`).
    pub released_as_stuck: bool,
}

impl ConsumerReport {
    /// The consumers that may still hold an older value: pods, then unfinished roll-outs.
    pub fn on_old_value(&self) -> Vec<String> {
        let pods = self.pods.iter().filter(|p| !p.holds_new_value).map(|p| {
            let reads: Vec<&str> = p.reads.iter().map(|r| r.word()).collect();
            format!("pod {} ({})", p.name, reads.join(", "))
        });
        let workloads = self.workloads.iter().filter(|w| !w.rolled_out).map(|w| format!("{} ({})", w.name, w.detail));
        pods.chain(workloads).collect()
    }
}

/// The gate for one rotation, for one reconcile; keeps what it found for the status.
pub struct ConsumerGate {
    client: kube::Client,
    namespace: String,
    secrets: Vec<String>,
    rollout: WorkloadRollout,
    has_rollout: bool,
    rules: ConsumerRules,
    clock: Arc<dyn Clock>,
    /// The wait recorded in status: since when revocation has waited, for which keyId.
    waiting: Option<(Uuid, DateTime<Utc>)>,
    /// How soon a hold is looked at again.
    recheck: Duration,
    report: Mutex<Option<ConsumerReport>>,
}

impl ConsumerGate {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        namespace: String,
        secrets: Vec<String>,
        workloads: Vec<WorkloadRef>,
        rules: ConsumerRules,
        clock: Arc<dyn Clock>,
        waiting: Option<(Uuid, DateTime<Utc>)>,
    ) -> Self {
        let has_rollout = !workloads.is_empty();
        let rollout = WorkloadRollout::new(client.clone(), namespace.clone(), workloads);
        Self { client, namespace, secrets, rollout, has_rollout, rules, clock, waiting, recheck: RECHECK, report: Mutex::new(None) }
    }

    /// Looks at a hold again after `recheck` instead of [`RECHECK`] (the controller's
    /// `--consumer-recheck`, as it watches the pods).
    pub fn with_recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// What the last look found, if this gate looked.
    pub fn report(&self) -> Option<ConsumerReport> {
        self.report.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Looks at the consumers of `key_id` without deciding anything (for the status when
    /// no revocation was due).
    pub async fn survey(&self, key_id: Uuid) -> ConsumerReport {
        let report = self.look(key_id).await;
        *self.report.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report.clone());
        report
    }

    async fn look(&self, key_id: Uuid) -> ConsumerReport {
        let now = self.clock.now();
        let mut report = ConsumerReport {
            key_id,
            written_at: None,
            pods: Vec::new(),
            workloads: Vec::new(),
            problem: None,
            waiting_since: None,
            timed_out: false,
            released_as_stuck: false,
        };
        if let Err(problem) = self.fill(&mut report, now).await {
            report.problem = Some(problem);
        }
        report
    }

    async fn fill(&self, report: &mut ConsumerReport, now: DateTime<Utc>) -> Result<(), String> {
        let key_id = report.key_id;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for name in &self.secrets {
            let meta = secrets.get_metadata(name).await.map_err(|e| self.failure(&format!("read Secret {}/{name}", self.namespace), "get secrets", &e))?;
            report.written_at = report.written_at.max(written_at(&meta.metadata.managed_fields.unwrap_or_default()));
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let listed = pods.list(&ListParams::default()).await.map_err(|e| self.failure(&format!("list the Pods of namespace {}", self.namespace), "list pods", &e))?;
        for pod in &listed.items {
            if let Some(consumer) = classify(pod, &self.secrets, key_id, report.written_at, now, self.rules.volume_sync_delay) {
                report.pods.push(consumer);
            }
        }
        report.pods.sort_by(|a, b| (a.holds_new_value, &a.name).cmp(&(b.holds_new_value, &b.name)));
        if self.has_rollout {
            for (kind, object) in self.rollout.workloads().await.map_err(|e| e.to_string())? {
                report.workloads.push(progress(&format!("{kind:?} {}/{}", self.namespace, object.metadata.name.clone().unwrap_or_default()), &object, key_id));
            }
        }
        Ok(())
    }

    fn failure(&self, what: &str, verb: &str, error: &kube::Error) -> String {
        match error {
            kube::Error::Api(status) if status.code == 403 => format!(
                "could not {what}: forbidden ({}). The controller's Role needs {verb} in namespace {} (the chart grants pods get, list and watch); until then no old secret is revoked",
                status.message, self.namespace
            ),
            other => format!("could not {what}: {other}; no old secret is revoked until the consumers are known"),
        }
    }
}

#[async_trait]
impl RevocationGate for ConsumerGate {
    async fn hold(&self, key_id: Uuid, _old: &[Uuid]) -> Option<RevocationHold> {
        let now = self.clock.now();
        let mut report = self.look(key_id).await;
        let on_old = report.on_old_value();
        let blocked = report.problem.is_some() || !on_old.is_empty();
        let since = self.waiting.filter(|(waited_for, _)| *waited_for == key_id).map_or(now, |(_, since)| since);
        report.waiting_since = blocked.then_some(since);
        report.timed_out = blocked && now - since >= self.rules.wait_timeout;
        report.released_as_stuck = report.timed_out && self.rules.revoke_when_stuck && report.problem.is_none();
        let hold = (blocked && !report.released_as_stuck).then(|| self.hold_for(&report, &on_old, since, now));
        *self.report.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report);
        hold
    }
}

impl ConsumerGate {
    fn hold_for(&self, report: &ConsumerReport, on_old: &[String], since: DateTime<Utc>, now: DateTime<Utc>) -> RevocationHold {
        let mut recheck = now + self.recheck;
        if !report.timed_out {
            recheck = recheck.min(since + self.rules.wait_timeout);
        }
        if let Some(problem) = &report.problem {
            return RevocationHold { reason: CONSUMER_CHECK_FAILED, message: problem.clone(), recheck_at: recheck };
        }
        let mut named: Vec<String> = on_old.iter().take(NAMED).cloned().collect();
        if on_old.len() > NAMED {
            named.push(format!("and {} more", on_old.len() - NAMED));
        }
        let remedy = if self.has_rollout {
            "the old secret stays live until their roll-out finishes and they are replaced"
        } else {
            "the old secret stays live until they are restarted (kubectl rollout restart, or list their workloads in spec.rollout)"
        };
        let mut message = format!("{} consumer(s) may still use the old secret: {}; {remedy}", on_old.len(), named.join(", "));
        if report.timed_out {
            message.push_str(&format!(
                ". Waiting since {} (longer than consumerWaitTimeout); set revokeWhenConsumersStuck: true to revoke anyway",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        RevocationHold { reason: CONSUMERS_ON_OLD_SECRET, message, recheck_at: recheck }
    }
}

/// The Revoked condition and its reasons.
pub const REVOKED: &str = "Revoked";
pub const CONSUMERS_ON_NEW_SECRET: &str = "ConsumersOnNewSecret";
pub const REVOKED_WHILE_STUCK: &str = "RevokedWhileConsumersStuck";
pub const CONSUMER_WAIT_TIMED_OUT: &str = "ConsumerWaitTimedOut";

/// The wait the status records, for the gate of the next reconcile.
pub fn recorded_wait(status: &ClientSecretRotationStatus) -> Option<(Uuid, DateTime<Utc>)> {
    let consumers = status.consumers.as_ref()?;
    let since = super::status::parse_time(&consumers.waiting_since)?;
    Some((Uuid::parse_str(&consumers.key_id).ok()?, since))
}

/// What a reconcile must announce about the consumers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Announcements {
    /// The wait has just passed consumerWaitTimeout: a Warning Event and a notification.
    pub timed_out: Option<String>,
    /// The old secret was revoked although consumers may still use it.
    pub revoked_while_stuck: Option<String>,
}

/// Writes what the gate found into `next` (consumers, the Revoked and Rotating
/// conditions); looks at the consumers if no revocation asked the gate this time.
pub async fn record(
    gate: &ConsumerGate,
    outcome: &Outcome,
    previous: &ClientSecretRotationStatus,
    next: &mut ClientSecretRotationStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Announcements {
    let (key_id, held) = match outcome {
        Outcome::Settled { key_id, held, .. } => (*key_id, held.as_ref()),
        // An idle reconcile whose consumers were all on this keyId costs no extra request.
        Outcome::UpToDate { key_id, .. }
            if gate.report().is_none()
                && previous.consumers.as_ref().is_some_and(|c| c.key_id == key_id.to_string() && c.on_old_secret == 0) =>
        {
            return Announcements::default();
        }
        Outcome::UpToDate { key_id, .. } => (*key_id, None),
        Outcome::Planned(_) | Outcome::InFlight { .. } => return Announcements::default(),
    };
    let report = match gate.report().filter(|r| r.key_id == key_id) {
        Some(report) => report,
        None => gate.survey(key_id).await,
    };
    let same_wait = previous.consumers.as_ref().is_some_and(|c| c.key_id == key_id.to_string() && c.waiting_since.is_some());
    let already_notified = same_wait && previous.consumers.as_ref().is_some_and(|c| c.wait_notified);
    let mut announce = Announcements::default();
    let time = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let set = |next: &mut ClientSecretRotationStatus, type_: &str, value: bool, reason: &str, message: String| {
        super::status::set_condition(next, type_, value, reason, message, generation, now)
    };
    match held {
        Some(hold) => {
            set(next, REVOKED, false, hold.reason, hold.message.clone());
            set(next, super::status::conditions::ROTATING, true, hold.reason, hold.message.clone());
            if report.timed_out && !already_notified {
                announce.timed_out = Some(hold.message.clone());
            }
        }
        // Only a run that revoked something says so; retireUnmanaged asks the same gate
        // once nothing of ours is pending, and its removals have their own Events.
        None if report.released_as_stuck && matches!(outcome, Outcome::Settled { revoked, .. } if !revoked.is_empty()) => {
            let message = format!(
                "revoked the old secret after waiting since {} although consumers may still use it (revokeWhenConsumersStuck): {}",
                report.waiting_since.map(time).unwrap_or_default(),
                report.on_old_value().join(", ")
            );
            set(next, REVOKED, true, REVOKED_WHILE_STUCK, message.clone());
            announce.revoked_while_stuck = Some(message);
        }
        None if super::status::condition(next, REVOKED).is_some_and(|c| c.status == "False") => {
            set(next, REVOKED, true, CONSUMERS_ON_NEW_SECRET, format!("every consumer holds keyId {key_id}; older secrets were revoked"));
        }
        None => {}
    }
    let on_old = report.on_old_value().len();
    next.consumers = Some(ConsumersStatus {
        key_id: key_id.to_string(),
        secret_written_time: report.written_at.map(time),
        on_old_secret: u32::try_from(on_old).unwrap_or(u32::MAX),
        waiting_since: held.and(report.waiting_since).map(time),
        wait_notified: held.is_some() && (already_notified || announce.timed_out.is_some()),
        pods: report
            .pods
            .iter()
            .take(NAMED)
            .map(|p| PodConsumerStatus {
                name: p.name.clone(),
                reads: p.reads.iter().map(|r| r.word().to_string()).collect(),
                holds_new_value: p.holds_new_value,
            })
            .collect(),
        workloads: report
            .workloads
            .iter()
            .map(|w| WorkloadRolloutStatus { name: w.name.clone(), rolled_out: w.rolled_out, detail: w.detail.clone() })
            .collect(),
    });
    announce
}

fn chrono_time(time: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.0.as_second(), 0)
}

/// When entra-rotator last applied to the Secret: its own `managedFields` entry.
fn written_at(entries: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry]) -> Option<DateTime<Utc>> {
    entries
        .iter()
        .filter(|e| e.manager.as_deref() == Some(FIELD_MANAGER) && e.operation.as_deref() == Some("Apply"))
        .filter_map(|e| e.time.as_ref().and_then(chrono_time))
        .max()
}

/// How `spec` reads any of `secrets`: none when it does not.
fn reads(spec: &PodSpec, secrets: &[String]) -> Vec<Reads> {
    let named = |name: &str| secrets.iter().any(|s| s == name);
    let mut found = Vec::new();
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for container in containers.clone() {
        let env = container.env.iter().flatten().any(|e| {
            e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).is_some_and(|r| named(&r.name))
        });
        let env_from = container.env_from.iter().flatten().any(|e| e.secret_ref.as_ref().is_some_and(|r| named(&r.name)));
        if env || env_from {
            found.push(Reads::Env);
        }
    }
    for volume in spec.volumes.iter().flatten() {
        let direct = volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()).is_some_and(named);
        let projected = volume.projected.as_ref().is_some_and(|p| {
            p.sources.iter().flatten().any(|source| source.secret.as_ref().is_some_and(|s| named(&s.name)))
        });
        if !direct && !projected {
            continue;
        }
        let mounts: Vec<_> = containers.clone().flat_map(|c| c.volume_mounts.iter().flatten()).filter(|m| m.name == volume.name).collect();
        if mounts.iter().any(|m| m.sub_path.is_some() || m.sub_path_expr.is_some()) {
            found.push(Reads::SubPath);
        }
        if mounts.iter().any(|m| m.sub_path.is_none() && m.sub_path_expr.is_none()) {
            found.push(Reads::Volume);
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Whether `pod` reads one of `secrets`, and whether it can hold `key_id`'s value.
fn classify(
    pod: &Pod,
    secrets: &[String],
    key_id: Uuid,
    written_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    volume_sync_delay: Duration,
) -> Option<PodConsumer> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let reads = reads(pod.spec.as_ref()?, secrets);
    if reads.is_empty() {
        return None;
    }
    let key_id = key_id.to_string();
    let carries_key = pod.metadata.annotations.as_ref().and_then(|a| a.get(KEY_ID_ANNOTATION)) == Some(&key_id);
    let created = pod.metadata.creation_timestamp.as_ref().and_then(chrono_time);
    // Whole seconds on both sides: only a later second is surely later.
    let created_after = matches!((created, written_at), (Some(created), Some(written)) if created > written);
    let refreshed = reads == [Reads::Volume] && written_at.is_some_and(|written| now >= written + volume_sync_delay);
    Some(PodConsumer {
        name: pod.metadata.name.clone().unwrap_or_default(),
        reads,
        holds_new_value: carries_key || created_after || refreshed,
    })
}

fn number(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Whether the workload's roll-out to `key_id` has finished, as its controller reports it.
fn progress(name: &str, object: &DynamicObject, key_id: Uuid) -> WorkloadProgress {
    let data = &object.data;
    let key = KEY_ID_ANNOTATION.replace('/', "~1");
    let template_key = data.pointer(&format!("/spec/template/metadata/annotations/{key}")).and_then(Value::as_str);
    let generation = object.metadata.generation.unwrap_or(0);
    let observed = number(data, "/status/observedGeneration");
    let detail = if template_key != Some(key_id.to_string().as_str()) {
        "not restarted with the new keyId yet".to_string()
    } else if observed < generation {
        format!("its controller has not seen the change yet (observedGeneration {observed} of {generation})")
    } else if data.pointer("/status/desiredNumberScheduled").is_some() {
        let desired = number(data, "/status/desiredNumberScheduled");
        let (updated, available) = (number(data, "/status/updatedNumberScheduled"), number(data, "/status/numberAvailable"));
        if updated >= desired && available >= desired { String::new() } else { format!("{updated} of {desired} pod(s) updated, {available} available") }
    } else {
        let desired = data.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let (updated, available, total) =
            (number(data, "/status/updatedReplicas"), number(data, "/status/availableReplicas"), number(data, "/status/replicas"));
        let revisions_differ = data.pointer("/status/updateRevision").is_some()
            && data.pointer("/status/updateRevision") != data.pointer("/status/currentRevision");
        if updated >= desired && available >= desired && total <= updated && !revisions_differ {
            String::new()
        } else {
            format!("{updated} of {desired} replica(s) updated, {available} available, {total} running")
        }
    };
    WorkloadProgress { name: name.to_string(), rolled_out: detail.is_empty(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn pod(created: &str, annotations: Value, spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "api-1", "creationTimestamp": created, "annotations": annotations },
            "spec": spec,
            "status": { "phase": "Running" },
        }))
        .unwrap()
    }

    const KEY: Uuid = Uuid::from_u128(7);
    const WRITTEN: &str = "2026-12-01T10:00:00Z";

    fn judge(pod: &Pod, now: &str) -> Option<(Vec<Reads>, bool)> {
        classify(pod, &["smtp".to_string()], KEY, Some(at(WRITTEN)), at(now), Duration::minutes(2)).map(|c| (c.reads, c.holds_new_value))
    }

    fn env_spec() -> Value {
        json!({ "containers": [{ "name": "api", "env": [{ "name": "SMTP_PASSWORD",
            "valueFrom": { "secretKeyRef": { "name": "smtp", "key": "SMTP_PASSWORD" } } }] }] })
    }

    #[test]
    fn an_env_consumer_holds_the_new_value_only_when_created_after_the_write_or_restarted_with_it() {
        let before = pod("2026-12-01T09:00:00Z", json!({}), env_spec());
        assert_eq!(judge(&before, "2026-12-02T10:00:00Z"), Some((vec![Reads::Env], false)), "a day later it still holds the old value");
        let same_second = pod(WRITTEN, json!({}), env_spec());
        assert_eq!(judge(&same_second, "2026-12-01T10:05:00Z"), Some((vec![Reads::Env], false)), "the same second is not surely after");
        let after = pod("2026-12-01T10:00:01Z", json!({}), env_spec());
        assert_eq!(judge(&after, "2026-12-01T10:05:00Z"), Some((vec![Reads::Env], true)));
        let restarted = pod(WRITTEN, json!({ KEY_ID_ANNOTATION: KEY.to_string() }), env_spec());
        assert_eq!(judge(&restarted, "2026-12-01T10:00:00Z"), Some((vec![Reads::Env], true)));
    }

    #[test]
    fn a_plain_volume_holds_it_after_the_sync_delay_and_a_sub_path_never() {
        let volume = |sub_path: Option<&str>| {
            let mut mount = json!({ "name": "smtp", "mountPath": "/etc/smtp" });
            if let Some(path) = sub_path {
                mount["subPath"] = json!(path);
            }
            json!({ "containers": [{ "name": "api", "volumeMounts": [mount] }],
                "volumes": [{ "name": "smtp", "projected": { "sources": [{ "secret": { "name": "smtp" } }] } }] })
        };
        let plain = pod("2026-12-01T09:00:00Z", json!({}), volume(None));
        assert_eq!(judge(&plain, "2026-12-01T10:01:59Z"), Some((vec![Reads::Volume], false)));
        assert_eq!(judge(&plain, "2026-12-01T10:02:00Z"), Some((vec![Reads::Volume], true)));
        let sub_path = pod("2026-12-01T09:00:00Z", json!({}), volume(Some("password")));
        assert_eq!(judge(&sub_path, "2026-12-02T10:00:00Z"), Some((vec![Reads::SubPath], false)));
        let unrelated = pod("2026-12-01T09:00:00Z", json!({}), json!({ "containers": [{ "name": "x" }] }));
        assert_eq!(judge(&unrelated, "2026-12-01T10:00:00Z"), None);
    }

    fn deployment(template_key: &str, status: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "api", "generation": 2 },
            "spec": { "replicas": 2, "template": { "metadata": { "annotations": { KEY_ID_ANNOTATION: template_key } } } },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_roll_out_is_finished_when_every_replica_is_updated_and_available_and_no_old_one_runs() {
        let key = KEY.to_string();
        let done = deployment(&key, json!({ "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 }));
        assert!(progress("Deployment d/api", &done, KEY).rolled_out);
        let stuck = deployment(&key, json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2 }));
        let seen = progress("Deployment d/api", &stuck, KEY);
        assert_eq!((seen.rolled_out, seen.detail.as_str()), (false, "1 of 2 replica(s) updated, 2 available, 3 running"));
        let unseen = deployment(&key, json!({ "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 }));
        assert!(!progress("Deployment d/api", &unseen, KEY).rolled_out);
        let other_key = deployment("another", json!({ "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 }));
        assert!(!progress("Deployment d/api", &other_key, KEY).rolled_out);
    }
}
