//! What lands in `.status`: conditions like cert-manager's (keyed by type, with
//! `observedGeneration`), expiry and renewal times, and the failure count that drives
//! back-off. Pure functions of the previous status and the engine's result.

use super::crd::ClientSecretRotationStatus;
use crate::engine::{EngineError, Outcome};
use chrono::{DateTime, Duration, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types and the reasons set by the controller itself (the engine's reasons and
/// error categories are used as they are).
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const ROTATING: &str = "Rotating";
    pub const VERIFIED: &str = "Verified";
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
    pub const DEGRADED: &str = "Degraded";

    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const ROTATED: &str = "Rotated";
    pub const UP_TO_DATE: &str = "UpToDate";
    pub const PENDING_REVOCATION: &str = "PendingRevocation";
    pub const IN_FLIGHT: &str = "RotationInFlight";
    pub const IDLE: &str = "Idle";
    pub const HEALTHY: &str = "Healthy";
    pub const NOT_EXPIRING: &str = "NotExpiring";
    pub const WITHIN_THRESHOLD: &str = "WithinAlertThreshold";
    pub const VERIFICATION_PASSED: &str = "VerificationPassed";
    pub const VERIFICATION_DISABLED: &str = "VerificationDisabled";
    pub const NOT_YET_VERIFIED: &str = "NotYetVerified";
    pub const IN_PROGRESS: &str = "InProgress";
    pub const INTERNAL_ERROR: &str = "InternalError";
}

use conditions::*;

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parses a timestamp this module wrote.
pub fn parse_time(text: &Option<String>) -> Option<DateTime<Utc>> {
    text.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
}

/// Sets a condition, keeping its transition time when the status did not change.
pub fn set_condition(
    status: &mut ClientSecretRotationStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let value = if value { "True" } else { "False" };
    let transition = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::from_second(now.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)));
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        // The API server caps messages at 32768 bytes. Relay and vault replies end up here:
        // no control characters (terminal escapes, forged extra lines in kubectl output).
        message: one_line(&message).chars().take(4000).collect(),
        observed_generation: generation,
        last_transition_time: transition,
    });
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// `text` with every control character (line breaks, escapes) replaced by a space.
pub fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

pub fn condition<'a>(status: &'a ClientSecretRotationStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The status after a successful engine run.
pub fn after_outcome(
    previous: &ClientSecretRotationStatus,
    outcome: &Outcome,
    generation: Option<i64>,
    now: DateTime<Utc>,
    alert_thresholds: &[Duration],
) -> ClientSecretRotationStatus {
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.failed_attempts = 0;
    status.last_error = None;
    let set = |status: &mut ClientSecretRotationStatus, type_: &str, value: bool, reason: &str, message: String| {
        set_condition(status, type_, value, reason, message, generation, now)
    };
    match outcome {
        Outcome::Planned(_) => {}
        Outcome::UpToDate { key_id, expires, renew_at, retirement } => {
            record_retirement(&mut status, retirement.as_ref(), true, now);
            status.current_key_id = Some(key_id.to_string());
            status.not_after = expires.map(rfc3339);
            status.renewal_time = Some(rfc3339(*renew_at));
            status.pending_revocation.clear();
            status.old_secrets.clear();
            status.revoke_after = None;
            set(&mut status, READY, true, UP_TO_DATE, format!("keyId {key_id} is stored and live; next rotation {}", rfc3339(*renew_at)));
            set(&mut status, ROTATING, false, IDLE, "no rotation in progress".into());
        }
        Outcome::InFlight { key_id, stale_at } => {
            set(&mut status, ROTATING, true, IN_FLIGHT, format!("keyId {key_id} was minted and is not stored yet; cleaned up after {} if it stays unstored", rfc3339(*stale_at)));
        }
        Outcome::Settled { key_id, minted, expires, renew_at, pending, revoke_at, retirement, pending_expires, .. } => {
            record_retirement(&mut status, retirement.as_ref(), false, now);
            status.current_key_id = Some(key_id.to_string());
            status.not_after = expires.map(rfc3339);
            status.renewal_time = renew_at.map(rfc3339);
            if *minted {
                status.last_rotation_time = Some(rfc3339(now));
            }
            status.pending_revocation = pending.iter().map(|id| id.to_string()).collect();
            status.old_secrets = pending
                .iter()
                .take(OLD_LISTED)
                .map(|id| super::crd::OldSecretStatus { key_id: id.to_string(), expires: pending_expires.get(id).copied().map(rfc3339) })
                .collect();
            status.revoke_after = revoke_at.map(rfc3339);
            let message = if *minted { format!("rotated to keyId {key_id}") } else { format!("keyId {key_id} is stored everywhere") };
            set(&mut status, READY, true, if *minted { ROTATED } else { UP_TO_DATE }, message);
            if pending.is_empty() {
                set(&mut status, ROTATING, false, IDLE, "no rotation in progress".into());
            } else {
                set(&mut status, ROTATING, true, PENDING_REVOCATION, format!("{} old secret(s) revoked after {}", pending.len(), revoke_at.map(rfc3339).unwrap_or_default()));
            }
        }
    }
    set(&mut status, DEGRADED, false, HEALTHY, "the last reconcile succeeded".into());
    update_expiry(&mut status, generation, now, alert_thresholds);
    status
}

/// At most this many older secrets of ours are listed with their expiry (normally one or
/// two are live: the grace period keeps only the newest older one).
const OLD_LISTED: usize = 8;

/// At most this many unmanaged secrets, and retired ones, are listed in status.
const UNMANAGED_LISTED: usize = 20;

/// Writes what `retireUnmanaged` found into `status.unmanaged`: the secrets still on the
/// application (`looked`: an up-to-date run, which looks whenever the option is on, found
/// none when `retirement` is `None`) and, newest first, those it removed.
fn record_retirement(status: &mut ClientSecretRotationStatus, retirement: Option<&crate::engine::policy::Retirement>, looked: bool, now: DateTime<Utc>) {
    use super::crd::{RetiredSecretStatus, UnmanagedSecretStatus};
    let Some(retirement) = retirement else {
        if let Some(block) = status.unmanaged.as_mut().filter(|_| looked) {
            block.secrets.clear();
            block.retire_from = None;
        }
        return;
    };
    let block = status.unmanaged.get_or_insert_with(Default::default);
    block.retire_from = Some(rfc3339(retirement.from));
    block.secrets = retirement
        .kept
        .iter()
        .take(UNMANAGED_LISTED)
        .map(|(secret, hold)| UnmanagedSecretStatus {
            key_id: secret.key_id.to_string(),
            display_name: secret.display_name.clone(),
            expires: secret.expires.map(rfc3339),
            held_by: hold.as_ref().map(|hold| format!("{}: {}", hold.reason, one_line(&hold.message))),
        })
        .collect();
    for secret in &retirement.removed {
        block.retired.insert(0, RetiredSecretStatus {
            key_id: secret.key_id.to_string(),
            display_name: secret.display_name.clone(),
            retired_at: rfc3339(now),
        });
    }
    block.retired.truncate(UNMANAGED_LISTED);
}

/// Records that `key_id` passed verification in this reconcile, and sets the Verified
/// condition from what is known: the current secret is verified or it is not (yet).
pub fn record_verification(
    status: &mut ClientSecretRotationStatus,
    verified_now: Option<String>,
    verification_enabled: bool,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    if verified_now.is_some() {
        status.verified_key_id = verified_now;
    }
    let Some(current) = status.current_key_id.clone() else { return };
    if !verification_enabled {
        set_condition(status, VERIFIED, false, VERIFICATION_DISABLED, "spec.verification.disabled is true".into(), generation, now);
    } else if status.verified_key_id.as_deref() == Some(current.as_str()) {
        set_condition(status, VERIFIED, true, VERIFICATION_PASSED, format!("keyId {current} was accepted by the relay"), generation, now);
    } else if condition(status, VERIFIED).is_none_or(|c| c.status == "True") {
        set_condition(status, VERIFIED, false, NOT_YET_VERIFIED, format!("keyId {current} has not passed verification yet"), generation, now);
    }
}

/// The status after a failed engine run: keeps what is known, counts the failure.
pub fn after_error(
    previous: &ClientSecretRotationStatus,
    error: &EngineError,
    generation: Option<i64>,
    now: DateTime<Utc>,
    alert_thresholds: &[Duration],
) -> ClientSecretRotationStatus {
    let mut status = previous.clone();
    status.observed_generation = generation;
    let reason = error.category();
    if error.is_waiting() {
        // The relay's rate or quota limit: waiting, not failing. No failure is counted, and
        // the stores keep the secret that works.
        set_condition(&mut status, DEGRADED, false, reason, error.to_string(), generation, now);
        set_condition(&mut status, READY, false, reason, error.to_string(), generation, now);
        set_condition(&mut status, VERIFIED, false, reason, error.to_string(), generation, now);
        update_expiry(&mut status, generation, now, alert_thresholds);
        return status;
    }
    status.failed_attempts = previous.failed_attempts.saturating_add(1);
    status.last_failure_time = Some(rfc3339(now));
    status.last_error = Some(error.to_string());
    set_condition(&mut status, DEGRADED, true, reason, error.to_string(), generation, now);
    set_condition(&mut status, READY, false, reason, error.to_string(), generation, now);
    if matches!(error, EngineError::Verification { .. }) {
        set_condition(&mut status, VERIFIED, false, reason, error.to_string(), generation, now);
    }
    update_expiry(&mut status, generation, now, alert_thresholds);
    status
}

/// Sets ExpiringSoon from `notAfter` and the thresholds (largest first crossing).
pub fn update_expiry(status: &mut ClientSecretRotationStatus, generation: Option<i64>, now: DateTime<Utc>, thresholds: &[Duration]) {
    let Some(not_after) = parse_time(&status.not_after) else { return };
    let left = not_after - now;
    match crossed_threshold(status, now, thresholds) {
        Some(threshold) => set_condition(
            status,
            EXPIRING_SOON,
            true,
            WITHIN_THRESHOLD,
            format!("the stored secret expires at {} ({} day(s) left, within the {}-day alert threshold)", rfc3339(not_after), left.num_days(), threshold.num_days()),
            generation,
            now,
        ),
        None => set_condition(status, EXPIRING_SOON, false, NOT_EXPIRING, format!("expires at {}", rfc3339(not_after)), generation, now),
    }
}

/// The smallest alert threshold the time left is within, if any.
pub fn crossed_threshold(status: &ClientSecretRotationStatus, now: DateTime<Utc>, thresholds: &[Duration]) -> Option<Duration> {
    let left = parse_time(&status.not_after)? - now;
    thresholds.iter().filter(|t| left <= **t).min().copied()
}

/// The threshold already notified, as recorded in the status.
pub fn notified_threshold(status: &ClientSecretRotationStatus) -> Option<Duration> {
    let text = status.notified_threshold.as_deref()?;
    crate::config::duration::HumanDuration::parse(text).ok().map(|d| d.chrono())
}

/// The next moment an alert threshold is crossed, so the controller wakes up for it.
pub fn next_threshold_crossing(status: &ClientSecretRotationStatus, now: DateTime<Utc>, thresholds: &[Duration]) -> Option<DateTime<Utc>> {
    let not_after = parse_time(&status.not_after)?;
    // Checked: a threshold past the calendar (once `300000y`) crosses never, not a panic.
    thresholds.iter().filter_map(|t| not_after.checked_sub_signed(*t)).filter(|at| *at > now).min()
}

/// Back-off after failures: 30 s doubling per attempt, at most an hour.
pub fn backoff(failed_attempts: u32) -> std::time::Duration {
    let exponent = failed_attempts.saturating_sub(1).min(7);
    std::time::Duration::from_secs(30 * 2u64.pow(exponent)).min(std::time::Duration::from_secs(3600))
}

/// The JSON merge patch (RFC 7396) of the status from `previous` (as last read) to
/// `next`: the fields that changed, `null` for those gone, nothing else; an array
/// (conditions) is sent whole when any of it changed, as merge patches replace arrays.
/// The first pass writes 10,000 statuses, most of whose fields a reconcile leaves alone.
/// Written here because kube and json-patch (already locked) make RFC 6902 patches only.
pub fn merge_patch(previous: &ClientSecretRotationStatus, next: &ClientSecretRotationStatus) -> serde_json::Value {
    let as_json = |status| serde_json::to_value(status).unwrap_or_default();
    diff(&as_json(previous), &as_json(next)).unwrap_or_else(|| serde_json::json!({}))
}

/// What turns `from` into `to`, or `None` when they are equal.
fn diff(from: &serde_json::Value, to: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = serde_json::Map::new();
            for (name, value) in to {
                let changed = match from.get(name) {
                    Some(old) => diff(old, value),
                    None => Some(value.clone()),
                };
                if let Some(changed) = changed {
                    patch.insert(name.clone(), changed);
                }
            }
            for name in from.keys().filter(|name| !to.contains_key(*name)) {
                patch.insert(name.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ if from == to => None,
        _ => Some(to.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::GraphError;
    use uuid::Uuid;

    /// Only what changed goes to the API server: a changed field, a removed one as null,
    /// the conditions whole when one of them changed, and nothing at all for no change.
    #[test]
    fn the_status_patch_holds_only_what_changed() {
        let mut previous = ClientSecretRotationStatus {
            current_key_id: Some("k-1".into()),
            last_error: Some("a refusal".into()),
            not_after: Some("2027-05-30T00:00:00Z".into()),
            ..Default::default()
        };
        set_condition(&mut previous, conditions::READY, false, "GraphFailed", "a refusal".into(), Some(1), now());
        assert_eq!(merge_patch(&previous, &previous), serde_json::json!({}));

        let mut next = previous.clone();
        next.last_error = None;
        next.failed_attempts = 0;
        next.current_key_id = Some("k-2".into());
        set_condition(&mut next, conditions::READY, true, "Rotated", "rotated".into(), Some(1), now());
        let patch = merge_patch(&previous, &next);
        let conditions = serde_json::to_value(&next.conditions).unwrap();
        assert_eq!(patch, serde_json::json!({ "currentKeyId": "k-2", "lastError": null, "conditions": conditions }));
        assert!(patch.get("notAfter").is_none(), "an unchanged field is not sent");
    }

    fn now() -> DateTime<Utc> {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn thresholds() -> Vec<Duration> {
        [30, 14, 7, 1].map(Duration::days).to_vec()
    }

    fn up_to_date(expires_in_days: i64) -> Outcome {
        Outcome::UpToDate {
            key_id: Uuid::nil(),
            expires: Some(now() + Duration::days(expires_in_days)),
            renew_at: now() + Duration::days(expires_in_days - 60),
            retirement: None,
        }
    }

    fn value<'a>(status: &'a ClientSecretRotationStatus, type_: &str) -> (&'a str, &'a str) {
        let c = condition(status, type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn up_to_date_is_ready_and_not_expiring() {
        let status = after_outcome(&Default::default(), &up_to_date(120), Some(3), now(), &thresholds());
        assert_eq!(value(&status, READY), ("True", UP_TO_DATE));
        assert_eq!(value(&status, EXPIRING_SOON), ("False", NOT_EXPIRING));
        assert_eq!(value(&status, DEGRADED), ("False", HEALTHY));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.renewal_time.as_deref(), Some("2027-01-22T12:00:00Z"));
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn crossing_a_threshold_sets_expiring_soon_with_days_left() {
        let status = after_outcome(&Default::default(), &up_to_date(10), None, now(), &thresholds());
        let c = condition(&status, EXPIRING_SOON).unwrap();
        assert_eq!(c.status, "True");
        assert!(c.message.contains("10 day(s) left, within the 14-day alert threshold"), "{}", c.message);
    }

    #[test]
    fn failures_count_up_and_keep_what_is_known() {
        let ok = after_outcome(&Default::default(), &up_to_date(120), None, now(), &thresholds());
        let error = EngineError::Graph(GraphError::Transport { operation: "addPassword".into(), detail: "timed out".into() });
        let once = after_error(&ok, &error, None, now(), &thresholds());
        let twice = after_error(&once, &error, None, now() + Duration::minutes(1), &thresholds());
        assert_eq!(twice.failed_attempts, 2);
        assert_eq!(value(&twice, READY), ("False", "GraphFailed"));
        assert_eq!(value(&twice, DEGRADED), ("True", "GraphFailed"));
        assert_eq!(twice.current_key_id, ok.current_key_id, "what the stores hold is still known");
        let first = condition(&once, DEGRADED).unwrap().last_transition_time.clone();
        assert_eq!(condition(&twice, DEGRADED).unwrap().last_transition_time, first, "unchanged condition keeps its transition time");
        let recovered = after_outcome(&twice, &up_to_date(120), None, now(), &thresholds());
        assert_eq!(recovered.failed_attempts, 0);
        assert_eq!(recovered.last_error, None);
    }

    /// Issue 19 item 2: a relay's rate or quota limit shows as waiting: not Degraded, and no
    /// failure counted.
    #[test]
    fn waiting_for_the_relay_is_not_a_failure() {
        use crate::engine::ports::{VerifyError, VerifyFailureKind};
        let error = EngineError::Verification {
            key_id: Uuid::new_v4(),
            attempts: 3,
            last: VerifyError::new("relay".into(), VerifyFailureKind::Throttled, "452 4.5.3 wait".into()),
        };
        let status = after_error(&ClientSecretRotationStatus::default(), &error, None, now(), &thresholds());
        assert_eq!(status.failed_attempts, 0);
        assert_eq!(status.last_failure_time, None);
        let degraded = condition(&status, DEGRADED).unwrap();
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("False", "WaitingForRelay"));
        let ready = condition(&status, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "WaitingForRelay"));
    }

    #[test]
    fn condition_messages_carry_no_control_characters() {
        let mut status = ClientSecretRotationStatus::default();
        let reply = "451 4.4.3 try later\r\nReady: True\u{1b}[32m".to_string();
        set_condition(&mut status, READY, false, "VerificationFailed", reply, None, now());
        assert_eq!(condition(&status, READY).unwrap().message, "451 4.4.3 try later  Ready: True [32m");
    }

    #[test]
    fn backoff_doubles_from_30s_up_to_an_hour() {
        let seconds: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(seconds, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    /// Regression: `alertThresholds: ["300000y"]` panicked here (`DateTime - TimeDelta
    /// overflowed`) and crash-looped the controller.
    #[test]
    fn a_threshold_past_the_calendar_is_crossed_but_never_scheduled() {
        let huge = crate::config::duration::HumanDuration::parse("300000y").unwrap().chrono();
        let thresholds = [huge, Duration::MAX, Duration::days(1)];
        let status = after_outcome(&Default::default(), &up_to_date(20), None, now(), &thresholds);
        assert_eq!(value(&status, EXPIRING_SOON), ("True", WITHIN_THRESHOLD));
        assert_eq!(next_threshold_crossing(&status, now(), &thresholds), Some(now() + Duration::days(19)));
    }

    #[test]
    fn wakes_up_for_the_next_threshold() {
        let status = after_outcome(&Default::default(), &up_to_date(20), None, now(), &thresholds());
        assert_eq!(next_threshold_crossing(&status, now(), &thresholds()), Some(now() + Duration::days(6)));
    }
}
