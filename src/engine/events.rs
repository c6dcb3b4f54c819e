//! What the engine reports while it works. Events name keyIds, stores and attempts,
//! never secret values; sinks turn them into logs, a demo timeline, or Kubernetes Events.

use chrono::{DateTime, Utc};
use std::fmt;
use std::sync::Mutex;
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Observed { current: Option<Uuid>, expires: Option<DateTime<Utc>>, credentials: usize },
    Decided { reason: &'static str, message: String },
    OrphanRemoved { key_id: Uuid },
    /// A secret that failed verification; `left_behind` says why it is still on the
    /// application when its removal did not take.
    Discarded { key_id: Uuid, left_behind: Option<String> },
    Minted { key_id: Uuid, expires: Option<DateTime<Utc>> },
    Stored { key_id: Uuid, store: String },
    VerificationAttemptFailed { attempt: u32, retry_in: Option<std::time::Duration>, message: String },
    /// `took`: from the first attempt until the relay accepted the secret.
    Verified { key_id: Uuid, attempts: u32, via: String, took: std::time::Duration },
    VerificationSkipped { key_id: Uuid },
    RolledOut { key_id: Uuid, workloads: Vec<String> },
    RevocationScheduled { key_ids: Vec<Uuid>, at: DateTime<Utc> },
    /// Revocation was due and is held back because consumers may still use `key_ids`.
    RevocationHeld { key_ids: Vec<Uuid>, message: String },
    Revoked { key_id: Uuid },
    /// `retireUnmanaged` removed a password credential no rotation minted.
    Retired { key_id: Uuid, display_name: Option<String> },
    /// `retireUnmanaged` was due for `key_id`, and a check keeps it live.
    RetirementHeld { key_id: Uuid, message: String },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Observed { current: Some(key_id), expires, credentials } => write!(
                f,
                "observed {credentials} password credential(s); stored secret keyId {key_id} expires {}",
                expires.map(|e| e.to_rfc3339()).unwrap_or_else(|| "never".into())
            ),
            Event::Observed { current: None, credentials, .. } => write!(
                f,
                "observed {credentials} password credential(s); no store holds a live secret of ours"
            ),
            Event::Decided { reason, message } => write!(f, "decided: {reason}: {message}"),
            Event::OrphanRemoved { key_id } => {
                write!(f, "removed keyId {key_id}: minted earlier but its value reached no store")
            }
            Event::Discarded { key_id, left_behind: None } => {
                write!(f, "removed keyId {key_id}: it failed verification and was never stored")
            }
            Event::Discarded { key_id, left_behind: Some(why) } => write!(
                f,
                "keyId {key_id} failed verification and was never stored, but is still on the application ({why}); nobody holds its value, and a later run removes it as an orphan once orphanGracePeriod has passed"
            ),
            Event::Minted { key_id, expires } => write!(
                f,
                "minted keyId {key_id}, expires {}",
                expires.map(|e| e.to_rfc3339()).unwrap_or_else(|| "never".into())
            ),
            Event::Stored { key_id, store } => write!(f, "stored keyId {key_id} in {store}"),
            Event::VerificationAttemptFailed { attempt, retry_in, message } => match retry_in {
                Some(wait) => write!(f, "verification attempt {attempt} failed, retrying in {wait:.1?}: {message}"),
                None => write!(f, "verification attempt {attempt} failed: {message}"),
            },
            Event::Verified { key_id, attempts, via, .. } => {
                write!(f, "verified keyId {key_id} through {via} after {attempts} attempt(s)")
            }
            Event::VerificationSkipped { key_id } => {
                write!(f, "verification of keyId {key_id} skipped: none configured")
            }
            Event::RolledOut { key_id, workloads } => {
                write!(f, "restarted {} to pick up keyId {key_id}", workloads.join(", "))
            }
            Event::RevocationScheduled { key_ids, at } => write!(
                f,
                "old keyId(s) {} will be revoked from {} (grace period)",
                join(key_ids),
                at.to_rfc3339()
            ),
            Event::RevocationHeld { key_ids, message } => {
                write!(f, "old keyId(s) {} stay live: {message}", join(key_ids))
            }
            Event::Revoked { key_id } => write!(f, "revoked old keyId {key_id}"),
            Event::Retired { key_id, display_name } => write!(
                f,
                "retired unmanaged keyId {key_id} ({}): not minted by entra-rotator, removed by retireUnmanaged",
                display_name.as_deref().map(|name| format!("{name:?}")).unwrap_or_else(|| "no displayName".into())
            ),
            Event::RetirementHeld { key_id, message } => {
                write!(f, "unmanaged keyId {key_id} stays live (retireUnmanaged): {message}")
            }
        }
    }
}

fn join(ids: &[Uuid]) -> String {
    ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
}

/// Receives the engine's events for one rotation.
pub trait EventSink: Send + Sync {
    fn record(&self, rotation: &str, event: &Event);
}

/// Logs every event through `tracing`.
pub struct LogSink;

impl EventSink for LogSink {
    fn record(&self, rotation: &str, event: &Event) {
        match event {
            Event::VerificationAttemptFailed { .. } => tracing::warn!(rotation, "{event}"),
            _ => tracing::info!(rotation, "{event}"),
        }
    }
}

/// Keeps events in memory (the demo's timeline, tests).
#[derive(Default)]
pub struct RecordingSink {
    events: Mutex<Vec<(String, Event)>>,
}

impl RecordingSink {
    pub fn events(&self) -> Vec<(String, Event)> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for RecordingSink {
    fn record(&self, rotation: &str, event: &Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push((rotation.to_string(), event.clone()));
        }
    }
}
