//! One line per rotation for people, after a run: what the CLI prints and what the
//! operator writes into status and Events, so both faces say the same thing. Below both
//! faces; imports only the engine.

use crate::engine::policy::{Decision, Retirement};
use crate::engine::{EngineError, Outcome};
use chrono::{DateTime, Utc};
use uuid::Uuid;

fn day(at: &Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "never".into())
}

fn ids(ids: &[Uuid]) -> String {
    ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
}

/// Describes what a run did (or would do, for a dry run).
pub fn outcome_line(name: &str, outcome: &Outcome) -> String {
    let what = match outcome {
        Outcome::Planned(plan) => {
            let clean = if plan.remove_orphans.is_empty() {
                String::new()
            } else {
                format!("remove unstored keyId(s) {}; then ", ids(&plan.remove_orphans))
            };
            let action = match &plan.decision {
                Decision::Rotate(trigger) => format!("mint a new secret ({}: {})", trigger.reason, trigger.message),
                Decision::CompleteStores { key_id, missing } => {
                    format!("copy keyId {key_id} to {} store(s) that lack it, verify, revoke older", missing.len())
                }
                Decision::RevokeOld { key_id, old, revoke_at } => format!(
                    "verify keyId {key_id}, then revoke {} from {}",
                    ids(old),
                    day(&Some(*revoke_at))
                ),
                Decision::InFlight { key_id, stale_at } => {
                    format!("wait: keyId {key_id} is being stored by another run (until {})", day(&Some(*stale_at)))
                }
                Decision::UpToDate { key_id, expires, renew_at } if clean.is_empty() => {
                    return format!(
                        "{name}: nothing to do until {}: keyId {key_id} expires {}{}",
                        day(&Some(*renew_at)),
                        day(expires),
                        plan.retire.as_ref().map(|r| retirement(r, true)).unwrap_or_default()
                    );
                }
                Decision::UpToDate { key_id, expires, renew_at } => format!(
                    "nothing more until {}: keyId {key_id} expires {}",
                    day(&Some(*renew_at)),
                    day(expires)
                ),
            };
            let retire = plan.retire.as_ref().map(|r| retirement(r, true)).unwrap_or_default();
            format!("would {clean}{action}{retire}")
        }
        Outcome::UpToDate { key_id, expires, renew_at, retirement: retired } => format!(
            "up to date: keyId {key_id} expires {}; next rotation {}{}",
            day(expires),
            day(&Some(*renew_at)),
            retired.as_ref().map(|r| retirement(r, false)).unwrap_or_default()
        ),
        Outcome::InFlight { key_id, stale_at } => format!(
            "waiting: keyId {key_id} was minted by another run moments ago; it is cleaned up after {} if still unstored",
            day(&Some(*stale_at))
        ),
        Outcome::Settled { key_id, minted, expires, revoked, pending, revoke_at, held, retirement: retired, .. } => {
            let mut line = if *minted {
                format!("rotated: new keyId {key_id} verified and stored, expires {}", day(expires))
            } else {
                format!("settled: keyId {key_id} stored everywhere and verified, expires {}", day(expires))
            };
            if !revoked.is_empty() {
                line.push_str(&format!("; revoked {}", ids(revoked)));
            }
            match held {
                Some(hold) => line.push_str(&format!("; {} kept live ({}): {}", ids(pending), hold.reason, hold.message)),
                None if !pending.is_empty() => line.push_str(&format!("; {} revoked from {}", ids(pending), day(revoke_at))),
                None => {}
            }
            if let Some(retired) = retired {
                line.push_str(&retirement(retired, false));
            }
            line
        }
    };
    format!("{name}: {what}")
}

/// What `retireUnmanaged` did (or, `planned`, would do) with the secrets no rotation minted:
/// `; retired …; kept …` (keyIds and displayNames only).
fn retirement(retirement: &Retirement, planned: bool) -> String {
    let list = |secrets: Vec<String>| secrets.join(", ");
    let mut text = String::new();
    if !retirement.removed.is_empty() {
        let verb = if planned { "would retire" } else { "retired" };
        let removed = list(retirement.removed.iter().map(|s| s.describe()).collect());
        text.push_str(&format!("; {verb} unmanaged {removed} (retireUnmanaged)"));
    }
    let (held, waiting): (Vec<_>, Vec<_>) = retirement.kept.iter().partition(|(_, hold)| hold.is_some());
    if !waiting.is_empty() {
        let waiting = list(waiting.iter().map(|(s, _)| s.describe()).collect());
        let verb = if planned { "would be retired" } else { "to be retired" };
        text.push_str(&format!("; unmanaged {waiting} {verb} from {} (retireUnmanaged)", day(&Some(retirement.from))));
    }
    for (secret, hold) in held {
        if let Some(hold) = hold {
            text.push_str(&format!("; unmanaged {} kept live ({}): {}", secret.describe(), hold.reason, hold.message));
        }
    }
    text
}

pub fn error_line(name: &str, error: &EngineError) -> String {
    if error.is_waiting() {
        return format!("{name}: WAITING ({}; the relay's rate or quota limit, a later run tries again; the stores keep the secret that works): {error}", error.category());
    }
    let retry = if error.is_transient() { "will succeed on a later run if the fault clears" } else { "needs a fix before the next run" };
    format!("{name}: FAILED ({}; {retry}): {error}", error.category())
}
