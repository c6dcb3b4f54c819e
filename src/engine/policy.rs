//! The decision: from what Graph and the stores say, what must happen now.
//!
//! Pure functions only: no I/O, no clock. "Should we mint a new secret?" is an ordered
//! list of named checks ([`RENEWAL_CHECKS`]); the first that fires gives the reason.

use super::ports::RevocationHold;
use super::reasons;
use super::ports::Held;
use crate::domain::{Application, PasswordCredential, MARKER_PREFIX};
use chrono::{DateTime, Duration, Utc};
use std::hash::{DefaultHasher, Hash, Hasher};
use uuid::Uuid;

/// The timing knobs of one rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Lifetime of each new secret.
    pub lifetime: Duration,
    /// Rotate this long before the current secret expires.
    pub renew_before: Duration,
    /// Keep an old secret this long after its successor was minted, so consumers switch.
    pub revoke_grace: Duration,
    /// A secret we minted but no store holds is left alone this long: another runner may be
    /// about to store it. After that its value is lost for good and it is removed.
    pub orphan_grace: Duration,
    /// `retireUnmanaged.after`: remove the application's password credentials that no
    /// rotation minted once the current secret has been in place this long. Off when `None`.
    pub retire_unmanaged_after: Option<Duration>,
}

/// What the stores hold, per store, in configuration order (metadata only).
pub type StoredKeys = [Option<Option<Uuid>>];

/// Everything the decision looks at.
pub struct Observed<'a> {
    pub rotation: &'a str,
    pub app: &'a Application,
    /// Per store: `None` when empty, `Some(None)` when it holds a value we did not tag.
    pub stored: &'a StoredKeys,
    pub now: DateTime<Utc>,
    pub forced: bool,
    pub timing: &'a Timing,
}

/// Why a new secret is minted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub reason: &'static str,
    pub message: String,
}

/// What must happen now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Mint a new secret, store it everywhere, verify it, then revoke older ones of ours.
    Rotate(Trigger),
    /// The newest stored secret is missing from some stores: copy it there, verify, revoke older.
    CompleteStores { key_id: Uuid, missing: Vec<usize> },
    /// The current secret is stored everywhere; older secrets of ours remain. They are
    /// revoked, after the current one is verified, from `revoke_at` on.
    RevokeOld { key_id: Uuid, old: Vec<Uuid>, revoke_at: DateTime<Utc> },
    /// A secret of ours was minted moments ago and no store holds it yet: another runner
    /// is probably storing it. Do nothing until `stale_at`.
    InFlight { key_id: Uuid, stale_at: DateTime<Utc> },
    /// Nothing to do before `renew_at`.
    UpToDate { key_id: Uuid, expires: Option<DateTime<Utc>>, renew_at: DateTime<Utc> },
}

impl Decision {
    /// The reason word for reports and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Rotate(trigger) => trigger.reason,
            Decision::CompleteStores { .. } => reasons::STORES_OUT_OF_SYNC,
            Decision::RevokeOld { .. } => reasons::OLD_SECRETS_PENDING_REVOCATION,
            Decision::InFlight { .. } => reasons::ROTATION_IN_FLIGHT,
            Decision::UpToDate { .. } => reasons::UP_TO_DATE,
        }
    }
}

/// The decision plus the clean-up that precedes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Secrets we minted whose value reached no store and never will: remove them first.
    pub remove_orphans: Vec<Uuid>,
    pub decision: Decision,
    /// `retireUnmanaged`: set when it is on, the current secret is stored everywhere and
    /// the application has password credentials no rotation minted.
    pub retire: Option<Retirement>,
}

/// A password credential of the application that carries no `entra-rotator:` marker: made
/// by hand, by Terraform, in the portal. Never ours, never another rotation's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmanaged {
    pub key_id: Uuid,
    pub display_name: Option<String>,
    pub expires: Option<DateTime<Utc>>,
}

impl Unmanaged {
    /// `keyId K ("name")`, for reports and events (names and keyIds only).
    pub fn describe(&self) -> String {
        match &self.display_name {
            Some(name) => format!("keyId {} ({name:?})", self.key_id),
            None => format!("keyId {} (no displayName)", self.key_id),
        }
    }
}

/// What `retireUnmanaged` does with the unmanaged password credentials of the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retirement {
    /// From when they may go: `after` past the start of the current secret of ours.
    pub from: DateTime<Utc>,
    /// Removed by this run (in a dry run: would be removed).
    pub removed: Vec<Unmanaged>,
    /// Still on the application: not due yet, or held (the sign-in log shows it in use, a
    /// consumer in the cluster is not on the current secret).
    pub kept: Vec<(Unmanaged, Option<RevocationHold>)>,
}

/// The unmanaged password credentials `retireUnmanaged` would remove around `current`.
/// Certificates (`keyCredentials`) are not password credentials and never appear here.
pub fn retirement(observed: &Observed, current: &PasswordCredential) -> Option<Retirement> {
    let after = observed.timing.retire_unmanaged_after?;
    let unmanaged: Vec<Unmanaged> = observed
        .app
        .password_credentials
        .iter()
        .filter(|c| c.key_id != current.key_id)
        .filter(|c| !c.display_name.as_deref().is_some_and(|name| name.starts_with(MARKER_PREFIX)))
        .map(|c| Unmanaged { key_id: c.key_id, display_name: c.display_name.clone(), expires: c.end })
        .collect();
    if unmanaged.is_empty() {
        return None;
    }
    // Graph always reports startDateTime; without it the secret's age is unknown: not yet.
    let from = current.start.map_or(DateTime::<Utc>::MAX_UTC, |start| start + after);
    Some(Retirement { from, removed: Vec::new(), kept: unmanaged.into_iter().map(|u| (u, None)).collect() })
}

/// The input of the renewal checks: the newest live credential all stores agree on.
pub struct RenewalInput<'a> {
    pub observed: &'a Observed<'a>,
    pub current: Option<&'a PasswordCredential>,
    /// A store holds a keyId that Graph does not know (deleted out of band or expired).
    pub stored_but_not_live: Option<Uuid>,
}

pub type RenewalCheck = fn(&RenewalInput) -> Option<Trigger>;

/// The checks, in order; the first that fires names the reason.
pub const RENEWAL_CHECKS: &[RenewalCheck] = &[
    forced_by_user,
    stored_secret_not_live,
    stored_secret_missing,
    credential_expired,
    credential_nearing_expiry,
];

pub fn forced_by_user(input: &RenewalInput) -> Option<Trigger> {
    input.observed.forced.then(|| Trigger {
        reason: reasons::FORCED_BY_USER,
        message: "rotation requested by the user".into(),
    })
}

pub fn stored_secret_not_live(input: &RenewalInput) -> Option<Trigger> {
    let key_id = input.stored_but_not_live?;
    input.current.is_none().then(|| Trigger {
        reason: reasons::STORED_SECRET_NOT_LIVE,
        message: format!(
            "the stored secret (keyId {key_id}) is no longer a live credential of the application"
        ),
    })
}

pub fn stored_secret_missing(input: &RenewalInput) -> Option<Trigger> {
    input.current.is_none().then(|| Trigger {
        reason: reasons::STORED_SECRET_MISSING,
        message: "no store holds a secret minted by entra-rotator for this application".into(),
    })
}

pub fn credential_expired(input: &RenewalInput) -> Option<Trigger> {
    let end = input.current?.end?;
    (end <= input.observed.now).then(|| Trigger {
        reason: reasons::CREDENTIAL_EXPIRED,
        message: format!("the stored secret expired at {}", end.to_rfc3339()),
    })
}

pub fn credential_nearing_expiry(input: &RenewalInput) -> Option<Trigger> {
    let current = input.current?;
    let renew_at = renewal_time(input.observed, current)?;
    (input.observed.now >= renew_at).then(|| Trigger {
        reason: reasons::CREDENTIAL_NEARING_EXPIRY,
        message: format!(
            "the stored secret expires at {}; renewal was due at {}",
            current.end.map(|e| e.to_rfc3339()).unwrap_or_default(),
            renew_at.to_rfc3339()
        ),
    })
}

/// When the current secret is renewed: `renewBefore` ahead of its expiry, moved earlier by
/// a stable per-application jitter of up to a tenth of `renewBefore`, so that applications
/// created together do not all rotate (and send verification mail) in the same hour.
pub fn renewal_time(observed: &Observed, current: &PasswordCredential) -> Option<DateTime<Utc>> {
    renewal_of(observed.rotation, observed.app.app_id, &observed.timing.renew_before, current)
}

/// [`renewal_time`] from its parts, for callers without a full observation.
pub fn renewal_of(rotation: &str, app_id: Uuid, renew_before: &Duration, current: &PasswordCredential) -> Option<DateTime<Utc>> {
    let end = current.end?;
    let mut hasher = DefaultHasher::new();
    (rotation, app_id).hash(&mut hasher);
    let per_mille = (hasher.finish() % 1000) as i32;
    let jitter = *renew_before / 10 * per_mille / 1000;
    Some(end - *renew_before - jitter)
}

/// The newest credential of this rotation's that some store holds and Graph still lists.
/// A stored credential without our marker is never adopted as ours: the rotation mints
/// its own instead of re-verifying or copying somebody else's.
pub fn current_credential<'a>(rotation: &str, app: &'a Application, stored: &StoredKeys) -> Option<&'a PasswordCredential> {
    let stored_ids: Vec<Uuid> = stored.iter().flatten().flatten().copied().collect();
    app.password_credentials
        .iter()
        .filter(|c| c.is_minted_by(rotation) && stored_ids.contains(&c.key_id))
        .max_by_key(|c| c.start)
}

/// Decides what to do. Secrets without our marker are never scheduled for removal.
pub fn plan(observed: &Observed) -> Plan {
    let ours: Vec<&PasswordCredential> = observed
        .app
        .password_credentials
        .iter()
        .filter(|c| c.is_minted_by(observed.rotation))
        .collect();
    let stored_ids: Vec<Uuid> = observed.stored.iter().flatten().flatten().copied().collect();

    let current = current_credential(observed.rotation, observed.app, observed.stored);
    let stored_but_not_live = stored_ids
        .iter()
        .copied()
        .find(|id| observed.app.credential(*id).is_none());

    // Ours, in no store, and newer than what is stored: minted by a run that did not finish.
    let unstored_newer: Vec<&PasswordCredential> = ours
        .iter()
        .copied()
        .filter(|c| !stored_ids.contains(&c.key_id))
        .filter(|c| current.is_none_or(|cur| c.start >= cur.start))
        .collect();
    let (stale, fresh): (Vec<_>, Vec<_>) = unstored_newer.into_iter().partition(|c| {
        c.start.is_none_or(|start| start + observed.timing.orphan_grace <= observed.now)
    });
    let remove_orphans: Vec<Uuid> = stale.iter().map(|c| c.key_id).collect();

    if let Some(in_flight) = fresh.iter().max_by_key(|c| c.start) {
        let stale_at = in_flight.start.unwrap_or(observed.now) + observed.timing.orphan_grace;
        return Plan {
            remove_orphans,
            decision: Decision::InFlight { key_id: in_flight.key_id, stale_at },
            retire: None,
        };
    }

    let input = RenewalInput { observed, current, stored_but_not_live };
    if let Some(trigger) = RENEWAL_CHECKS.iter().find_map(|check| check(&input)) {
        return Plan { remove_orphans, decision: Decision::Rotate(trigger), retire: None };
    }
    let current = current.expect("the renewal checks fire when no secret is stored");

    let missing: Vec<usize> = observed
        .stored
        .iter()
        .enumerate()
        .filter(|(_, held)| **held != Some(Some(current.key_id)))
        .map(|(index, _)| index)
        .collect();
    if !missing.is_empty() {
        return Plan {
            remove_orphans,
            decision: Decision::CompleteStores { key_id: current.key_id, missing },
            retire: None,
        };
    }

    let retire = retirement(observed, current);
    let old: Vec<Uuid> = ours
        .iter()
        .filter(|c| c.key_id != current.key_id && !remove_orphans.contains(&c.key_id))
        .map(|c| c.key_id)
        .collect();
    if !old.is_empty() {
        let revoke_at = current.start.unwrap_or(observed.now) + observed.timing.revoke_grace;
        return Plan {
            remove_orphans,
            decision: Decision::RevokeOld { key_id: current.key_id, old, revoke_at },
            retire,
        };
    }

    let renew_at = renewal_time(observed, current).unwrap_or(DateTime::<Utc>::MAX_UTC);
    Plan {
        remove_orphans,
        decision: Decision::UpToDate { key_id: current.key_id, expires: current.end, renew_at },
        retire,
    }
}

/// The metadata [`plan`] looks at for one store's content.
pub fn stored_key(stored: &Option<Held>) -> Option<Option<Uuid>> {
    stored.as_ref().map(|held| held.labels().key_id)
}
