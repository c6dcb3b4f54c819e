//! The rotation engine: decides whether an application's secret must rotate and
//! sequences observe → mint → store → verify → revoke.
//!
//! It keeps no state of its own: every run starts from what Graph and the stores say, so
//! a run killed at any point is finished (or undone) by the next one. The decision is the
//! pure [`policy::plan`]; this module carries it out through the [`ports`].
//!
//! Imports only `domain` (and the standard crates): never adapters, configuration or faces.

pub mod events;
pub mod ownership;
pub mod policy;
pub mod ports;
pub mod reasons;

use crate::domain::{marker_for, AppRef, Application, SecretString, SecretToStore};
use chrono::{DateTime, Utc};
use events::{Event, EventSink};
use policy::{Decision, Observed, Plan, Retirement, Timing};
use ports::{
    Clock, Directory, GraphError, Held, RevocationGate, RevocationHold, Rollout, RolloutError, SecretStore, StoreError, StoreErrorKind,
    Verifier, VerifyError,
};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// One configured rotation and the outside world it acts on.
pub struct Rotation {
    /// Unique per application; part of the marker in the secrets' displayName.
    pub name: String,
    pub app: AppRef,
    pub timing: Timing,
    pub directory: Arc<dyn Directory>,
    /// Where consumers read the secret, in the order they are written.
    pub stores: Vec<Arc<dyn SecretStore>>,
    /// `None` when verification is switched off.
    pub verifier: Option<Arc<dyn Verifier>>,
    /// Restarts consumers after a new secret is verified; `None` when nothing needs it.
    pub rollout: Option<Arc<dyn Rollout>>,
    /// Asked before old secrets are revoked; `None` revokes once the grace period is over.
    pub revocation_gate: Option<Arc<dyn RevocationGate>>,
    pub verify_retry: VerifyRetry,
}

/// How long verification keeps trying while Entra replicates a new secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyRetry {
    /// Give up after this much time has passed since the first attempt.
    pub budget: Duration,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for VerifyRetry {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(300),
            initial_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// How a run was asked to behave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Rotate now even if the current secret is far from expiry.
    pub force: bool,
    /// Decide and report, change nothing.
    pub dry_run: bool,
}

/// Whether a run that finds nothing to rotate proves the current secret anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reverify {
    /// Stateless runs: verification happens with each rotation and before each revocation.
    #[default]
    No,
    /// The caller remembers which keyId was last verified (the operator's status): verify
    /// the current secret unless it is that one, e.g. after a verification that gave up.
    UnlessVerified(Option<Uuid>),
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Dry run: this is what would happen.
    Planned(Plan),
    /// Nothing was due (but `retireUnmanaged`, which `retirement` reports).
    UpToDate { key_id: Uuid, expires: Option<DateTime<Utc>>, renew_at: DateTime<Utc>, retirement: Option<Retirement> },
    /// Another runner is mid-rotation; nothing was done.
    InFlight { key_id: Uuid, stale_at: DateTime<Utc> },
    /// The current secret is stored everywhere and verified; `revoked` were removed and
    /// `pending` will be once the grace period ends at `revoke_at`.
    Settled {
        key_id: Uuid,
        minted: bool,
        expires: Option<DateTime<Utc>>,
        /// When this secret is due for renewal.
        renew_at: Option<DateTime<Utc>>,
        revoked: Vec<Uuid>,
        pending: Vec<Uuid>,
        revoke_at: Option<DateTime<Utc>>,
        /// Set when revocation was due but the gate kept `pending` live; `revoke_at` is
        /// then when to ask again.
        held: Option<RevocationHold>,
        /// `retireUnmanaged`, once every older secret of ours is gone.
        retirement: Option<Retirement>,
        /// When each of `pending` expires, as Graph listed it.
        pending_expires: std::collections::BTreeMap<Uuid, DateTime<Utc>>,
    },
}

/// Why a run stopped. Every variant leaves a state the next run can finish.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("keyId {key_id} failed verification after {attempts} attempt(s); nothing was revoked and the stores keep the secret that worked. Last failure: {last}")]
    Verification { key_id: Uuid, attempts: u32, last: VerifyError },
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error("{store} should hold keyId {key_id} but holds {found}; will retry from what the stores say on the next run")]
    StoreChanged { store: String, key_id: Uuid, found: String },
    /// Another rotation owns the application or a store; nothing was read from it or sent.
    #[error("{0}. Nothing was minted, stored, sent or revoked")]
    Claimed(#[from] ownership::Claim),
}

impl EngineError {
    /// A short stable word for metrics labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            EngineError::Graph(_) => "GraphFailed",
            EngineError::Store(e) if e.kind == StoreErrorKind::Claimed => "ClaimedByAnother",
            EngineError::Store(_) => "StoreFailed",
            EngineError::Verification { last, .. } if last.kind == ports::VerifyFailureKind::Throttled => "WaitingForRelay",
            EngineError::Verification { .. } => "VerificationFailed",
            EngineError::Rollout(_) => "RolloutFailed",
            EngineError::StoreChanged { .. } => "StoreChanged",
            EngineError::Claimed(_) => "ClaimedByAnother",
        }
    }

    /// The relay asked us to wait (rate or quota limit) until the run gave up: nothing is
    /// wrong, the next run tries again. Shown as waiting, not as a failure.
    pub fn is_waiting(&self) -> bool {
        matches!(self, EngineError::Verification { last, .. } if last.kind == ports::VerifyFailureKind::Throttled)
    }

    /// Whether the next run can succeed with nobody changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Graph(e) => e.is_transient(),
            EngineError::Store(e) => e.is_transient(),
            EngineError::Verification { last, .. } => last.is_retryable(),
            EngineError::Rollout(e) => e.transient,
            EngineError::StoreChanged { .. } => true,
            EngineError::Claimed(_) => false,
        }
    }
}

/// Carries out plans; holds the clock and where events go.
pub struct Engine {
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
}

/// What each store held when observed: the value too where reading gave it (to resume
/// or re-verify), else the labels only, and the value is read when needed.
struct Observation {
    app: Application,
    stored: Vec<Option<Held>>,
}

impl Engine {
    pub fn new(clock: Arc<dyn Clock>, events: Arc<dyn EventSink>) -> Self {
        Self { clock, events }
    }

    fn emit(&self, rotation: &Rotation, event: Event) {
        self.events.record(&rotation.name, &event);
    }

    /// Runs one rotation once: observe, decide, act.
    pub async fn run(&self, rotation: &Rotation, options: RunOptions) -> Result<Outcome, EngineError> {
        self.run_with(rotation, options, Reverify::No).await
    }

    /// [`run`](Self::run), proving an up-to-date secret again as `reverify` says.
    pub async fn run_with(&self, rotation: &Rotation, options: RunOptions, reverify: Reverify) -> Result<Outcome, EngineError> {
        self.run_observed(rotation, options, reverify, None, Revocation::Ordinary).await
    }

    /// A rotation asked for while `replace` was the current secret: forced while the stores
    /// still hold `replace`, an ordinary run once they hold another. A request is so
    /// carried out once, however often a run is cut off and started again.
    pub async fn run_replacing(&self, rotation: &Rotation, replace: Uuid, reverify: Reverify) -> Result<Outcome, EngineError> {
        self.run_observed(rotation, RunOptions::default(), reverify, Some(replace), Revocation::Ordinary).await
    }

    /// [`run_replacing`](Self::run_replacing) after a leak: once the new secret is stored
    /// and the consumers restarted, every other secret of ours is revoked at once, without
    /// grace period and without asking the revocation gate. A consumer still on the leaked
    /// secret loses mail until it restarts; the leak is worse.
    pub async fn run_compromised(&self, rotation: &Rotation, replace: Option<Uuid>, reverify: Reverify) -> Result<Outcome, EngineError> {
        self.run_observed(rotation, RunOptions::default(), reverify, replace, Revocation::AtOnce).await
    }

    async fn run_observed(
        &self,
        rotation: &Rotation,
        options: RunOptions,
        reverify: Reverify,
        replace: Option<Uuid>,
        revocation: Revocation,
    ) -> Result<Outcome, EngineError> {
        let mut observation = self.observe(rotation).await?;
        let keys: Vec<_> = observation.stored.iter().map(policy::stored_key).collect();
        let now = self.clock.now();
        let current = policy::current_credential(&rotation.name, &observation.app, &keys);
        let replacing = replace.is_some_and(|old| current.is_some_and(|c| c.key_id == old));
        let plan = policy::plan(&Observed {
            rotation: &rotation.name,
            app: &observation.app,
            stored: &keys,
            now,
            forced: options.force || replacing,
            timing: &rotation.timing,
        });
        self.emit(rotation, Event::Observed {
            current: current.map(|c| c.key_id),
            expires: current.and_then(|c| c.end),
            credentials: observation.app.password_credentials.len(),
        });
        if options.dry_run {
            let mut plan = plan;
            if let (Some(retirement), Some(key_id)) = (plan.retire.as_mut(), current.map(|c| c.key_id)) {
                // Only asks (the sign-in log, the pods); removes nothing.
                self.sort_retirement(rotation, key_id, retirement).await;
            }
            return Ok(Outcome::Planned(plan));
        }
        let retire = plan.retire.clone();
        let object_id = observation.app.object_id;
        let listed = observation.app.password_credentials.clone();
        let mut outcome = self.execute(rotation, &mut observation, plan, reverify, revocation).await?;
        if let Outcome::Settled { pending, pending_expires, .. } = &mut outcome {
            *pending_expires = listed.iter().filter(|c| pending.contains(&c.key_id)).filter_map(|c| Some((c.key_id, c.end?))).collect();
        }
        let (Some(retire), Some(key_id)) = (retire, settled_key(&outcome)) else { return Ok(outcome) };
        let retired = self.retire(rotation, object_id, key_id, &observation.stored, retire).await?;
        match &mut outcome {
            Outcome::UpToDate { retirement, .. } | Outcome::Settled { retirement, .. } => *retirement = Some(retired),
            Outcome::Planned(_) | Outcome::InFlight { .. } => {}
        }
        Ok(outcome)
    }

    /// Reads Graph, then (unless another rotation claims the application) every store,
    /// refusing stores another rotation owns before anything acts on their values.
    async fn observe(&self, rotation: &Rotation) -> Result<Observation, EngineError> {
        let app = rotation.directory.application(&rotation.app).await?;
        ownership::check_application(&rotation.name, rotation.app.client_id, &app, self.clock.now())?;
        let mut stored = Vec::with_capacity(rotation.stores.len());
        for store in &rotation.stores {
            let held = store.observe().await?;
            if let Some(held) = &held {
                ownership::check_store(&rotation.name, &app, &store.describe(), &held.labels())?;
            }
            stored.push(held);
        }
        Ok(Observation { app, stored })
    }

    async fn execute(
        &self,
        rotation: &Rotation,
        observation: &mut Observation,
        plan: Plan,
        reverify: Reverify,
        revocation: Revocation,
    ) -> Result<Outcome, EngineError> {
        let object_id = observation.app.object_id;
        for key_id in &plan.remove_orphans {
            rotation.directory.remove_password(object_id, *key_id).await?;
            self.emit(rotation, Event::OrphanRemoved { key_id: *key_id });
        }
        observation.app.password_credentials.retain(|c| !plan.remove_orphans.contains(&c.key_id));
        match plan.decision {
            Decision::UpToDate { key_id, expires, renew_at } => {
                if matches!(reverify, Reverify::UnlessVerified(verified) if verified != Some(key_id)) {
                    let value = self.value_held(rotation, &observation.stored, key_id).await?;
                    self.verify(rotation, key_id, &value, Proof::Recheck).await?;
                }
                Ok(Outcome::UpToDate { key_id, expires, renew_at, retirement: None })
            }
            Decision::InFlight { key_id, stale_at } => {
                self.emit(rotation, Event::Decided {
                    reason: reasons::ROTATION_IN_FLIGHT,
                    message: format!("keyId {key_id} was minted moments ago by another run and is not stored yet; waiting until {}", stale_at.to_rfc3339()),
                });
                Ok(Outcome::InFlight { key_id, stale_at })
            }
            Decision::Rotate(trigger) => {
                self.emit(rotation, Event::Decided { reason: trigger.reason, message: trigger.message });
                self.rotate(rotation, &observation.app, revocation).await
            }
            Decision::CompleteStores { key_id, missing } => {
                self.emit(rotation, Event::Decided {
                    reason: reasons::STORES_OUT_OF_SYNC,
                    message: format!("keyId {key_id} is missing from {} store(s); completing", missing.len()),
                });
                let value = self.value_held(rotation, &observation.stored, key_id).await?;
                let credential = observation.app.credential(key_id).cloned();
                let (start, end) = credential.map(|c| (c.start, c.end)).unwrap_or_default();
                for index in missing {
                    self.store_one(rotation, &rotation.stores[index], key_id, &value, start, end).await?;
                }
                self.settle(rotation, object_id, key_id, &value, false, start, end, &observation.app, revocation).await
            }
            Decision::RevokeOld { key_id, old, revoke_at } => {
                let credential = observation.app.credential(key_id).cloned();
                let (start, end) = credential.map(|c| (c.start, c.end)).unwrap_or_default();
                let renew_at = credential_renewal(rotation, &observation.app, key_id);
                let at_once = revocation == Revocation::AtOnce;
                // Within the grace period only one older secret may wait; more are revoked now.
                if !at_once && self.clock.now() < revoke_at && old.len() <= 1 {
                    return Ok(Outcome::Settled {
                        key_id,
                        minted: false,
                        expires: end,
                        renew_at,
                        revoked: Vec::new(),
                        pending: old,
                        revoke_at: Some(revoke_at),
                        held: None,
                        retirement: None,
                        pending_expires: Default::default(),
                    });
                }
                // Asked before re-verifying: a hold can last hours, and each look would
                // otherwise send a test mail from the application's quota.
                let hold = if at_once { None } else { self.revocation_hold(rotation, key_id, &old).await? };
                if let Some(hold) = hold {
                    return Ok(Outcome::Settled {
                        key_id,
                        minted: false,
                        expires: end,
                        renew_at,
                        revoked: Vec::new(),
                        pending: old,
                        revoke_at: Some(hold.recheck_at),
                        held: Some(hold),
                        retirement: None,
                        pending_expires: Default::default(),
                    });
                }
                let value = self.value_held(rotation, &observation.stored, key_id).await?;
                self.settle(rotation, object_id, key_id, &value, false, start, end, &observation.app, revocation).await
            }
        }
    }

    /// Mint → store everywhere → verify → revoke what is due.
    async fn rotate(&self, rotation: &Rotation, app: &Application, revocation: Revocation) -> Result<Outcome, EngineError> {
        let expires = self.clock.now() + rotation.timing.lifetime;
        let minted = rotation
            .directory
            .add_password(app.object_id, &marker_for(&rotation.name), expires)
            .await?;
        let key_id = minted.credential.key_id;
        let (start, end) = (minted.credential.start, minted.credential.end);
        self.emit(rotation, Event::Minted { key_id, expires: end });
        // Prove the secret before any store gets it: consumers must only ever read a
        // secret that works. Until it is stored, other runs see it as in flight.
        if let Err(error) = self.verify(rotation, key_id, &minted.value, Proof::NewSecret).await {
            self.discard(rotation, app.object_id, key_id).await;
            return Err(error);
        }
        for store in &rotation.stores {
            self.store_one(rotation, store, key_id, &minted.value, start, end).await?;
        }
        let mut app = app.clone();
        app.password_credentials.push(minted.credential.clone());
        self.settle(rotation, app.object_id, key_id, &minted.value, true, start, end, &app, revocation).await
    }

    /// Removes a secret that failed verification: its value reached no store, so nobody
    /// can use it. Right after its addPassword, Graph may answer that it has no such
    /// credential (the removal reached a replica the new secret has not), which the
    /// directory takes for "already gone"; so a read confirms it left. Whatever is left
    /// behind is reported, and a later run removes it as an orphan.
    async fn discard(&self, rotation: &Rotation, object_id: Uuid, key_id: Uuid) {
        let left_behind = match rotation.directory.remove_password(object_id, key_id).await {
            Err(error) => Some(format!("Graph refused the removal: {error}")),
            Ok(()) => match rotation.directory.application(&rotation.app).await {
                Ok(app) if app.credential(key_id).is_some() => Some(
                    "Graph accepted the removal but still lists it (directory replication)".to_string(),
                ),
                Ok(_) => None,
                Err(error) => Some(format!("could not confirm the removal: {error}")),
            },
        };
        self.emit(rotation, Event::Discarded { key_id, left_behind });
    }

    async fn store_one(
        &self,
        rotation: &Rotation,
        store: &Arc<dyn SecretStore>,
        key_id: Uuid,
        value: &SecretString,
        not_before: Option<DateTime<Utc>>,
        expires: Option<DateTime<Utc>>,
    ) -> Result<(), EngineError> {
        store
            .write(&SecretToStore { rotation: &rotation.name, app: &rotation.app, key_id, value, not_before, expires })
            .await?;
        self.emit(rotation, Event::Stored { key_id, store: store.describe() });
        Ok(())
    }

    /// Verifies `key_id` (unless this run minted and verified it), restarts consumers, then
    /// revokes the older secrets of ours whose grace period is over.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        rotation: &Rotation,
        object_id: Uuid,
        key_id: Uuid,
        value: &SecretString,
        minted: bool,
        start: Option<DateTime<Utc>>,
        expires: Option<DateTime<Utc>>,
        app: &Application,
        revocation: Revocation,
    ) -> Result<Outcome, EngineError> {
        let at_once = revocation == Revocation::AtOnce;
        if !minted {
            // Stores only ever receive a secret that passed the full proof, so what is
            // stored needs only to show it still authenticates.
            self.verify(rotation, key_id, value, Proof::Recheck).await?;
        }
        if let Some(rollout) = &rotation.rollout {
            let workloads = rollout.roll_out(key_id).await?;
            if !workloads.is_empty() {
                self.emit(rotation, Event::RolledOut { key_id, workloads });
            }
        }
        let revoke_at = start.unwrap_or_else(|| self.clock.now()) + rotation.timing.revoke_grace;
        let renew_at = credential_renewal(rotation, app, key_id);
        let (due, pending) = revocations(rotation, app, key_id, at_once || self.clock.now() >= revoke_at);
        if !pending.is_empty() {
            self.emit(rotation, Event::RevocationScheduled { key_ids: pending.clone(), at: revoke_at });
        }
        let revoke_at = (!pending.is_empty()).then_some(revoke_at);
        if due.is_empty() {
            return Ok(Outcome::Settled { key_id, minted, expires, renew_at, revoked: due, pending, revoke_at, held: None, retirement: None, pending_expires: Default::default() });
        }
        let hold = if at_once { None } else { self.revocation_hold(rotation, key_id, &due).await? };
        if let Some(hold) = hold {
            let pending = [due, pending].concat();
            let revoke_at = Some(hold.recheck_at);
            return Ok(Outcome::Settled { key_id, minted, expires, renew_at, revoked: Vec::new(), pending, revoke_at, held: Some(hold), retirement: None, pending_expires: Default::default() });
        }
        self.confirm_stores_hold(rotation, key_id).await?;
        for old_key in &due {
            rotation.directory.remove_password(object_id, *old_key).await?;
            self.emit(rotation, Event::Revoked { key_id: *old_key });
        }
        Ok(Outcome::Settled { key_id, minted, expires, renew_at, revoked: due, pending, revoke_at, held: None, retirement: None, pending_expires: Default::default() })
    }

    /// `retireUnmanaged`: once `retirement.from` has passed, asks the revocation gate about
    /// each unmanaged secret (the sign-in log: has it signed in within the window; the
    /// consumers in the cluster: are they all on `key_id`), re-checks that `key_id` still
    /// authenticates and that every store still holds it, then removes those nobody holds.
    async fn retire(
        &self,
        rotation: &Rotation,
        object_id: Uuid,
        key_id: Uuid,
        stored: &[Option<Held>],
        mut retirement: Retirement,
    ) -> Result<Retirement, EngineError> {
        self.sort_retirement(rotation, key_id, &mut retirement).await;
        if retirement.removed.is_empty() {
            return Ok(retirement);
        }
        // Read only now: the plan retires only around a keyId every store holds, and a
        // store observed by its labels gives the value on a read.
        let value = self.value_held(rotation, stored, key_id).await?;
        self.verify(rotation, key_id, &value, Proof::Recheck).await?;
        self.confirm_stores_hold(rotation, key_id).await?;
        let due = std::mem::take(&mut retirement.removed);
        for secret in due {
            rotation.directory.remove_password(object_id, secret.key_id).await?;
            self.emit(rotation, Event::Retired { key_id: secret.key_id, display_name: secret.display_name.clone() });
            retirement.removed.push(secret);
        }
        Ok(retirement)
    }

    /// Moves the unmanaged secrets that may go now from `kept` to `removed`; those held keep
    /// the gate's reason. Asks nothing before `from`, and changes nothing.
    async fn sort_retirement(&self, rotation: &Rotation, key_id: Uuid, retirement: &mut Retirement) {
        if self.clock.now() < retirement.from {
            return;
        }
        for (secret, held) in std::mem::take(&mut retirement.kept) {
            // One keyId at a time: the sign-in log holds the one that signs in, not all.
            let hold = match &rotation.revocation_gate {
                Some(gate) => gate.hold(key_id, &[secret.key_id]).await,
                None => held,
            };
            match hold {
                Some(hold) => {
                    self.emit(rotation, Event::RetirementHeld { key_id: secret.key_id, message: hold.message.clone() });
                    retirement.kept.push((secret, Some(hold)));
                }
                None => retirement.removed.push(secret),
            }
        }
    }

    /// Asks the gate whether `old` may go now that consumers should use `key_id`. The
    /// roll-out is (re)started first, so that a run cut off between storing and restarting
    /// does not leave the consumers waiting for a restart that never comes; it changes
    /// nothing when the workloads already carry `key_id`.
    async fn revocation_hold(&self, rotation: &Rotation, key_id: Uuid, old: &[Uuid]) -> Result<Option<RevocationHold>, EngineError> {
        let Some(gate) = &rotation.revocation_gate else { return Ok(None) };
        if let Some(rollout) = &rotation.rollout {
            let workloads = rollout.roll_out(key_id).await?;
            if !workloads.is_empty() {
                self.emit(rotation, Event::RolledOut { key_id, workloads });
            }
        }
        let hold = gate.hold(key_id, old).await;
        if let Some(hold) = &hold {
            self.emit(rotation, Event::RevocationHeld { key_ids: old.to_vec(), message: hold.message.clone() });
        }
        Ok(hold)
    }

    /// The value of `key_id`, which the plan says some store holds: from a store read
    /// whole, else read now from the first store whose labels name it (observed from a
    /// listing, which carries no values). A store that holds something else by now is a
    /// change the next run starts from.
    async fn value_held(&self, rotation: &Rotation, stored: &[Option<Held>], key_id: Uuid) -> Result<SecretString, EngineError> {
        let read_whole = stored.iter().flatten().find_map(|held| match held {
            Held::Secret(secret) if secret.key_id == Some(key_id) => Some(secret.value.clone()),
            _ => None,
        });
        if let Some(value) = read_whole {
            return Ok(value);
        }
        let labelled = rotation.stores.iter().zip(stored).find(|(_, held)| held.as_ref().is_some_and(|h| h.labels().key_id == Some(key_id)));
        let Some((store, _)) = labelled else {
            unreachable!("the plan only uses a keyId some store holds");
        };
        match store.read().await? {
            Some(secret) if secret.key_id == Some(key_id) => Ok(secret.value),
            other => Err(EngineError::StoreChanged {
                store: store.describe(),
                key_id,
                found: other.and_then(|s| s.key_id).map(|id| format!("keyId {id}")).unwrap_or_else(|| "no secret of ours".into()),
            }),
        }
    }

    /// Re-reads every store right before revoking: if anything changed the stored keyId
    /// since we wrote it (another runner, a person), revoking could break consumers.
    async fn confirm_stores_hold(&self, rotation: &Rotation, key_id: Uuid) -> Result<(), EngineError> {
        for store in &rotation.stores {
            let held = store.read().await?.and_then(|s| s.key_id);
            if held != Some(key_id) {
                return Err(EngineError::StoreChanged {
                    store: store.describe(),
                    key_id,
                    found: held.map(|id| format!("keyId {id}")).unwrap_or_else(|| "no secret of ours".into()),
                });
            }
        }
        Ok(())
    }

    /// Tries the secret through the verifier, retrying while Entra replicates it.
    async fn verify(&self, rotation: &Rotation, key_id: Uuid, value: &SecretString, proof: Proof) -> Result<(), EngineError> {
        let Some(verifier) = &rotation.verifier else {
            self.emit(rotation, Event::VerificationSkipped { key_id });
            return Ok(());
        };
        let started = self.clock.now();
        let policy = &rotation.verify_retry;
        let mut delay = policy.initial_delay;
        let mut attempt = 0;
        // Whether the relay took this secret at some attempt, then asked us to wait.
        let mut throttled_after_auth = false;
        loop {
            attempt += 1;
            let result = match proof {
                Proof::NewSecret => verifier.verify(&rotation.app, value).await,
                Proof::Recheck => verifier.recheck(&rotation.app, value).await,
            };
            let error = match result {
                Ok(()) => {
                    let via = match proof {
                        Proof::NewSecret => verifier.describe(),
                        Proof::Recheck => format!("{} (re-check that it still authenticates)", verifier.describe()),
                    };
                    let took = (self.clock.now() - started).to_std().unwrap_or_default();
                    self.emit(rotation, Event::Verified { key_id, attempts: attempt, via, took });
                    return Ok(());
                }
                Err(error) => error,
            };
            let elapsed = (self.clock.now() - started).to_std().unwrap_or_default();
            let wait = jittered(delay);
            let retry = error.is_retryable() && elapsed + wait <= policy.budget;
            self.emit(rotation, Event::VerificationAttemptFailed {
                attempt,
                retry_in: retry.then_some(wait),
                message: error.to_string(),
            });
            throttled_after_auth |= error.authenticated_then_throttled();
            let only_waiting = matches!(error.kind, ports::VerifyFailureKind::Throttled | ports::VerifyFailureKind::Connection);
            if !retry && throttled_after_auth && only_waiting {
                // The relay took the secret, then only asked us to wait (its rate limit or
                // the sending quota) or could not be reached for the rest of the budget.
                // That proves what the handshake proves; discarding a secret that
                // authenticated would throw away a working credential. A refusal of the
                // secret itself (535) at the last attempt is not waved through.
                self.emit(rotation, Event::Verified {
                    key_id,
                    attempts: attempt,
                    via: format!("{} (AUTH accepted; the rest was deferred by the relay's rate or quota limit)", verifier.describe()),
                    took: elapsed,
                });
                return Ok(());
            }
            if !retry {
                return Err(EngineError::Verification { key_id, attempts: attempt, last: error });
            }
            self.clock.sleep(wait).await;
            delay = (delay * 2).min(policy.max_delay);
        }
    }
}

/// When the older secrets of ours go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revocation {
    /// After the grace period, once the revocation gate lets them.
    Ordinary,
    /// As soon as the new secret is stored everywhere and rolled out (a leak).
    AtOnce,
}

/// What a verification must show. A rotation's full proof (at an SMTP relay, by default a
/// test mail that costs the application's mail quota) is spent once, on the secret just
/// minted; every later look at it (before revoking its predecessor, drift re-checks, the
/// operator's re-verify) only shows that it still authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proof {
    NewSecret,
    Recheck,
}

/// The older secrets of ours around `current`: those to revoke now and those to keep for
/// the grace period. Within it only the newest older one stays, for consumers still
/// switching to `current`; anything older was replaced before it (repeated forced
/// rotations) and goes now, so at most two secrets of ours are live.
fn revocations(rotation: &Rotation, app: &Application, current: Uuid, grace_over: bool) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut older: Vec<&crate::domain::PasswordCredential> = app
        .password_credentials
        .iter()
        .filter(|c| c.is_minted_by(&rotation.name) && c.key_id != current)
        .collect();
    older.sort_by_key(|c| c.start);
    let kept = if grace_over { None } else { older.pop() };
    (older.iter().map(|c| c.key_id).collect(), kept.map(|c| c.key_id).into_iter().collect())
}

/// The keyId a run left settled with no older secret of ours pending: the moment
/// `retireUnmanaged` may look at the others.
fn settled_key(outcome: &Outcome) -> Option<Uuid> {
    match outcome {
        Outcome::UpToDate { key_id, .. } => Some(*key_id),
        Outcome::Settled { key_id, pending, held: None, .. } if pending.is_empty() => Some(*key_id),
        Outcome::Settled { .. } | Outcome::Planned(_) | Outcome::InFlight { .. } => None,
    }
}

fn credential_renewal(rotation: &Rotation, app: &Application, key_id: Uuid) -> Option<DateTime<Utc>> {
    let credential = app.credential(key_id)?;
    policy::renewal_of(&rotation.name, app.app_id, &rotation.timing.renew_before, credential)
}

/// ±20 % jitter so many rotations retrying together spread out.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests;
