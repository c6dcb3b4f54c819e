//! Engine tests over in-memory fakes: one per decision and per failure class.

use super::ports::*;
use super::*;
use crate::domain::{ExposeSecret, MintedSecret, PasswordCredential, StoredLabels, StoredSecret};
use async_trait::async_trait;
use chrono::Duration as Days;
use events::RecordingSink;
use std::sync::Mutex;

const ROTATION: &str = "dify-smtp";

struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

#[async_trait]
impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
    async fn sleep(&self, duration: Duration) {
        self.advance(chrono::Duration::from_std(duration).unwrap());
    }
}

/// Graph as a list of credentials plus the values it minted.
struct FakeDirectory {
    clock: Arc<FakeClock>,
    app: Mutex<Application>,
    minted_values: Mutex<Vec<String>>,
    writes: Mutex<u32>,
    refuse_add: Mutex<Option<u16>>,
}

impl FakeDirectory {
    fn credentials(&self) -> Vec<PasswordCredential> {
        self.app.lock().unwrap().password_credentials.clone()
    }
    fn has(&self, key_id: Uuid) -> bool {
        self.credentials().iter().any(|c| c.key_id == key_id)
    }
    fn writes(&self) -> u32 {
        *self.writes.lock().unwrap()
    }
    /// A credential minted by someone else (or by a run that crashed before storing).
    fn add_existing(&self, display_name: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> Uuid {
        let key_id = Uuid::new_v4();
        self.app.lock().unwrap().password_credentials.push(PasswordCredential {
            key_id,
            display_name: Some(display_name.into()),
            start: Some(start),
            end: Some(end),
            hint: Some("abc".into()),
        });
        key_id
    }
}

fn graph_error(status: u16) -> GraphError {
    GraphError::Api {
        operation: "addPassword".into(),
        status,
        code: "Authorization_RequestDenied".into(),
        message: "Insufficient privileges to complete the operation.".into(),
        request_id: None,
    }
}

#[async_trait]
impl Directory for FakeDirectory {
    async fn application(&self, _app: &AppRef) -> Result<Application, GraphError> {
        Ok(self.app.lock().unwrap().clone())
    }
    async fn add_password(&self, _object_id: Uuid, display_name: &str, end: DateTime<Utc>) -> Result<MintedSecret, GraphError> {
        if let Some(status) = *self.refuse_add.lock().unwrap() {
            return Err(graph_error(status));
        }
        *self.writes.lock().unwrap() += 1;
        let value = format!("s3cr3t-{}", Uuid::new_v4().simple());
        let credential = PasswordCredential {
            key_id: Uuid::new_v4(),
            display_name: Some(display_name.into()),
            start: Some(self.clock.now()),
            end: Some(end),
            hint: Some(value[..3].into()),
        };
        self.app.lock().unwrap().password_credentials.push(credential.clone());
        self.minted_values.lock().unwrap().push(value.clone());
        Ok(MintedSecret { credential, value: SecretString::from(value) })
    }
    async fn remove_password(&self, _object_id: Uuid, key_id: Uuid) -> Result<(), GraphError> {
        *self.writes.lock().unwrap() += 1;
        let mut app = self.app.lock().unwrap();
        let before = app.password_credentials.len();
        app.password_credentials.retain(|c| c.key_id != key_id);
        if app.password_credentials.len() == before {
            return Err(graph_error(404));
        }
        Ok(())
    }
}

#[derive(Default)]
struct FakeStore {
    name: String,
    held: Mutex<Option<(Option<Uuid>, String)>>,
    fail_writes: Mutex<Option<StoreErrorKind>>,
    /// What somebody puts into the store right after our next write (a person, another
    /// runner): the engine's re-read before revoking must see it.
    changed_after_write: Mutex<Option<(Uuid, String)>>,
    /// Observed by its labels only, as from a listing of its vault (no value).
    labels_only: Mutex<bool>,
    /// What somebody puts into the store right after it was observed.
    changed_after_observe: Mutex<Option<(Uuid, String)>>,
    /// Reads of the value so far.
    reads: Mutex<u32>,
}

impl FakeStore {
    fn named(name: &str) -> Arc<Self> {
        Arc::new(Self { name: name.into(), ..Default::default() })
    }
    fn key_id(&self) -> Option<Uuid> {
        self.held.lock().unwrap().as_ref().and_then(|h| h.0)
    }
    fn value(&self) -> Option<String> {
        self.held.lock().unwrap().as_ref().map(|h| h.1.clone())
    }
    fn put(&self, key_id: Uuid, value: &str) {
        *self.held.lock().unwrap() = Some((Some(key_id), value.into()));
    }
}

#[async_trait]
impl SecretStore for FakeStore {
    fn describe(&self) -> String {
        self.name.clone()
    }
    async fn observe(&self) -> Result<Option<Held>, StoreError> {
        let labels = self.held.lock().unwrap().as_ref().map(|(key_id, _)| StoredLabels { key_id: *key_id, rotation: None, app_id: None });
        let labels_only = *self.labels_only.lock().unwrap();
        let held = match labels_only {
            true => labels.map(Held::Labels),
            false => self.read().await?.map(Held::Secret),
        };
        if let Some((key_id, value)) = self.changed_after_observe.lock().unwrap().take() {
            self.put(key_id, &value);
        }
        Ok(held)
    }
    async fn read(&self) -> Result<Option<StoredSecret>, StoreError> {
        *self.reads.lock().unwrap() += 1;
        Ok(self.held.lock().unwrap().as_ref().map(|(key_id, value)| StoredSecret {
            key_id: *key_id,
            value: SecretString::from(value.clone()),
            rotation: None,
            app_id: None,
        }))
    }
    async fn write(&self, secret: &SecretToStore<'_>) -> Result<(), StoreError> {
        if let Some(kind) = *self.fail_writes.lock().unwrap() {
            return Err(StoreError { store: self.name.clone(), kind, message: "refused".into() });
        }
        self.put(secret.key_id, secret.value.expose_secret());
        if let Some((key_id, value)) = self.changed_after_write.lock().unwrap().take() {
            self.put(key_id, &value);
        }
        Ok(())
    }
}

/// Accepts only secrets the directory minted, failing the first `refusals` attempts.
struct FakeVerifier {
    directory: Arc<FakeDirectory>,
    refusals: Mutex<Vec<VerifyFailureKind>>,
    /// Whether the refusals come after the relay accepted AUTH.
    refuse_after_auth: Mutex<bool>,
    /// Every attempt, full proofs and re-checks together.
    attempts: Mutex<u32>,
    /// Attempts at the full proof (at a relay: a test mail each).
    full_proofs: Mutex<u32>,
    /// At each attempt, the keyIds the stores hold (what consumers read at that moment).
    stores: Mutex<Vec<Arc<FakeStore>>>,
    seen: Mutex<Vec<Vec<Option<Uuid>>>>,
}

#[async_trait]
impl Verifier for FakeVerifier {
    fn describe(&self) -> String {
        "fake relay".into()
    }
    async fn verify(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError> {
        *self.full_proofs.lock().unwrap() += 1;
        self.recheck(app, secret).await
    }
    async fn recheck(&self, _app: &AppRef, secret: &SecretString) -> Result<(), VerifyError> {
        *self.attempts.lock().unwrap() += 1;
        let held = self.stores.lock().unwrap().iter().map(|s| s.key_id()).collect();
        self.seen.lock().unwrap().push(held);
        let fail = |kind| Err(VerifyError::new("fake relay".into(), kind, "refused".into()));
        if let Some(kind) = self.refusals.lock().unwrap().pop() {
            let authenticated = *self.refuse_after_auth.lock().unwrap();
            return Err(VerifyError { authenticated, ..VerifyError::new("fake relay".into(), kind, "refused".into()) });
        }
        let known = self.directory.minted_values.lock().unwrap().iter().any(|v| v == secret.expose_secret());
        if known { Ok(()) } else { fail(VerifyFailureKind::BadCredentials) }
    }
}

struct World {
    clock: Arc<FakeClock>,
    directory: Arc<FakeDirectory>,
    vault: Arc<FakeStore>,
    secret: Arc<FakeStore>,
    verifier: Arc<FakeVerifier>,
    sink: Arc<RecordingSink>,
    rotation: Rotation,
    engine: Engine,
}

fn world(revoke_grace: chrono::Duration) -> World {
    let clock = Arc::new(FakeClock(Mutex::new("2026-11-23T12:00:00Z".parse().unwrap())));
    let app = Application {
        object_id: Uuid::new_v4(),
        app_id: Uuid::new_v4(),
        display_name: "dify-mail".into(),
        password_credentials: Vec::new(),
    };
    let directory = Arc::new(FakeDirectory {
        clock: clock.clone(),
        app: Mutex::new(app.clone()),
        minted_values: Mutex::default(),
        writes: Mutex::default(),
        refuse_add: Mutex::default(),
    });
    let vault = FakeStore::named("Key Vault kv/smtp");
    let secret = FakeStore::named("Secret dify/smtp");
    let verifier = Arc::new(FakeVerifier {
        directory: directory.clone(),
        refusals: Mutex::default(),
        refuse_after_auth: Mutex::default(),
        attempts: Mutex::default(),
        full_proofs: Mutex::default(),
        stores: Mutex::new(vec![vault.clone(), secret.clone()]),
        seen: Mutex::default(),
    });
    let sink = Arc::new(RecordingSink::default());
    let rotation = Rotation {
        name: ROTATION.into(),
        app: AppRef { tenant_id: Uuid::new_v4(), client_id: app.app_id, object_id: Some(app.object_id) },
        timing: Timing {
            lifetime: Days::days(180),
            renew_before: Days::days(60),
            revoke_grace,
            orphan_grace: Days::minutes(10),
            retire_unmanaged_after: None,
        },
        directory: directory.clone(),
        stores: vec![vault.clone(), secret.clone()],
        verifier: Some(verifier.clone()),
        rollout: None,
        revocation_gate: None,
        verify_retry: VerifyRetry::default(),
    };
    let engine = Engine::new(clock.clone(), sink.clone());
    World { clock, directory, vault, secret, verifier, sink, rotation, engine }
}

impl World {
    async fn run(&self) -> Result<Outcome, EngineError> {
        self.engine.run(&self.rotation, RunOptions::default()).await
    }
    fn reasons(&self) -> Vec<&'static str> {
        self.sink
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Decided { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    }
    /// Rotates once from empty stores and returns the keyId everyone holds; a minute
    /// passes afterwards, as it would between two real runs.
    async fn settled(&self) -> Uuid {
        let key_id = match self.run().await.unwrap() {
            Outcome::Settled { key_id, .. } => key_id,
            other => panic!("expected a settled rotation, got {other:?}"),
        };
        self.clock.advance(Days::minutes(1));
        key_id
    }
}

#[tokio::test]
async fn first_run_mints_stores_everywhere_and_verifies() {
    let w = world(Days::zero());
    let outcome = w.run().await.unwrap();
    let Outcome::Settled { key_id, minted: true, revoked, pending, .. } = outcome else {
        panic!("unexpected {outcome:?}");
    };
    assert!(revoked.is_empty() && pending.is_empty());
    assert_eq!(w.vault.key_id(), Some(key_id));
    assert_eq!(w.secret.key_id(), Some(key_id));
    assert_eq!(w.vault.value(), w.directory.minted_values.lock().unwrap().first().cloned());
    assert_eq!(w.reasons(), vec![reasons::STORED_SECRET_MISSING]);
    let minted = w.directory.credentials();
    assert_eq!(minted[0].display_name.as_deref(), Some("entra-rotator:dify-smtp"));
    assert_eq!(minted[0].end, Some(w.clock.now() + Days::days(180)));
}

#[tokio::test]
async fn up_to_date_run_writes_nothing_and_names_the_renewal_time() {
    let w = world(Days::zero());
    let key_id = w.settled().await;
    let writes = w.directory.writes();
    let Outcome::UpToDate { key_id: current, renew_at, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(current, key_id);
    assert_eq!(w.directory.writes(), writes, "an idle run must not write to Graph");
    let expiry = w.clock.now() + Days::days(180);
    assert!(renew_at <= expiry - Days::days(60) && renew_at >= expiry - Days::days(66), "{renew_at}");
}

#[tokio::test]
async fn nearing_expiry_rotates_and_revokes_the_old_secret_after_verification() {
    let w = world(Days::zero());
    let old = w.settled().await;
    w.clock.advance(Days::days(125));
    let Outcome::Settled { key_id, minted: true, revoked, .. } = w.run().await.unwrap() else { panic!() };
    assert_ne!(key_id, old);
    assert_eq!(revoked, vec![old]);
    assert!(!w.directory.has(old) && w.directory.has(key_id));
    assert_eq!(w.vault.key_id(), Some(key_id));
    assert_eq!(w.reasons().last(), Some(&reasons::CREDENTIAL_NEARING_EXPIRY));
}

#[tokio::test]
async fn grace_period_delays_revocation_to_a_later_run() {
    let w = world(Days::hours(1));
    let old = w.settled().await;
    let Outcome::Settled { key_id, pending, revoke_at: Some(at), .. } =
        w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(pending, vec![old]);
    assert_eq!(at, w.clock.now() + Days::hours(1));
    assert!(w.directory.has(old), "old secret kept during the grace period");
    // Before the grace ends, another run changes nothing.
    let attempts = *w.verifier.attempts.lock().unwrap();
    assert!(matches!(w.run().await.unwrap(), Outcome::Settled { pending, .. } if pending == vec![old]));
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts);
    w.clock.advance(Days::hours(1));
    let Outcome::Settled { key_id: current, revoked, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!((current, revoked), (key_id, vec![old]));
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts + 1, "re-verified right before revoking");
    assert!(!w.directory.has(old));
}

/// Issue 19 item 1: the full proof (a test mail at a relay) is spent once per rotation, on
/// the secret just minted; the run that revokes after the grace period, a resumed run that
/// completes the stores and the operator's re-verify only re-check.
#[tokio::test]
async fn only_the_newly_minted_secret_gets_the_full_proof() {
    let w = world(Days::hours(1));
    w.settled().await;
    assert_eq!(*w.verifier.full_proofs.lock().unwrap(), 1, "the first rotation's one mail");
    let Outcome::Settled { key_id, pending, .. } =
        w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(pending.len(), 1);
    assert_eq!(*w.verifier.full_proofs.lock().unwrap(), 2, "one mail for the forced rotation");
    let attempts = *w.verifier.attempts.lock().unwrap();

    w.clock.advance(Days::hours(1));
    let Outcome::Settled { revoked, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(revoked, pending);
    w.engine.run_with(&w.rotation, RunOptions::default(), Reverify::UnlessVerified(None)).await.unwrap();
    *w.secret.held.lock().unwrap() = None;
    let Outcome::Settled { key_id: completed, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(completed, key_id);

    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts + 3, "revoking run, re-verify and completion each re-checked");
    assert_eq!(*w.verifier.full_proofs.lock().unwrap(), 2, "and none of them sent a mail");
}

#[tokio::test]
async fn stored_secret_deleted_out_of_band_is_replaced() {
    let w = world(Days::zero());
    let key_id = w.settled().await;
    w.directory.app.lock().unwrap().password_credentials.clear();
    let Outcome::Settled { key_id: new, minted: true, .. } = w.run().await.unwrap() else { panic!() };
    assert_ne!(new, key_id);
    assert_eq!(w.reasons().last(), Some(&reasons::STORED_SECRET_NOT_LIVE));
}

#[tokio::test]
async fn expired_secret_is_replaced() {
    let w = world(Days::zero());
    w.settled().await;
    w.clock.advance(Days::days(181));
    w.run().await.unwrap();
    assert_eq!(w.reasons().last(), Some(&reasons::CREDENTIAL_EXPIRED));
}

#[tokio::test]
async fn minted_but_unstored_secret_waits_for_its_runner_then_is_removed() {
    let w = world(Days::zero());
    let current = w.settled().await;
    // A run minted this and died before storing it.
    let orphan = w.directory.add_existing("entra-rotator:dify-smtp", w.clock.now(), w.clock.now() + Days::days(180));
    let Outcome::InFlight { key_id, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(key_id, orphan);
    assert_eq!(w.directory.credentials().len(), 2, "no second mint while one is in flight");
    w.clock.advance(Days::minutes(10));
    let Outcome::UpToDate { key_id, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(key_id, current);
    assert!(!w.directory.has(orphan), "the unusable secret is removed");
}

#[tokio::test]
async fn crash_between_stores_is_completed_from_the_store_that_has_it() {
    let w = world(Days::zero());
    let old = w.settled().await;
    let old_value = w.secret.value().unwrap();
    // The previous run minted `new`, wrote it to the vault, and died.
    let new = w.directory.add_existing("entra-rotator:dify-smtp", w.clock.now(), w.clock.now() + Days::days(180));
    w.directory.minted_values.lock().unwrap().push("new-value".into());
    w.vault.put(new, "new-value");
    let Outcome::Settled { key_id, minted: false, revoked, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!((key_id, revoked), (new, vec![old]));
    assert_eq!(w.secret.value().as_deref(), Some("new-value"));
    assert_ne!(old_value, "new-value");
    assert_eq!(w.reasons().last(), Some(&reasons::STORES_OUT_OF_SYNC));
}

#[tokio::test]
async fn store_failure_after_verification_is_resumed_by_the_next_run() {
    let w = world(Days::zero());
    let old = w.settled().await;
    *w.secret.fail_writes.lock().unwrap() = Some(StoreErrorKind::Transient);
    let err = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap_err();
    assert!(matches!(err, EngineError::Store(_)) && err.is_transient(), "{err}");
    assert!(w.directory.has(old), "old secret kept");
    assert_eq!(w.secret.key_id(), Some(old), "consumers of the failed store keep the old secret");
    *w.secret.fail_writes.lock().unwrap() = None;
    let Outcome::Settled { key_id, revoked, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(revoked, vec![old]);
    assert_eq!(w.secret.key_id(), Some(key_id));
    assert_eq!(w.directory.credentials().len(), 1);
}

#[tokio::test]
async fn stores_only_ever_receive_a_verified_secret() {
    let w = world(Days::zero());
    let old = w.settled().await;
    *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::BadCredentials; 2];
    w.verifier.seen.lock().unwrap().clear();
    let Outcome::Settled { key_id, .. } = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap() else {
        panic!()
    };
    let seen = w.verifier.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![vec![Some(old), Some(old)]; 3], "while the new secret was being proven, consumers read the old one");
    assert_eq!((w.vault.key_id(), w.secret.key_id()), (Some(key_id), Some(key_id)));
}

#[tokio::test]
async fn verification_retries_through_propagation_delay() {
    let w = world(Days::zero());
    *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::BadCredentials; 3];
    let start = w.clock.now();
    w.settled().await;
    assert_eq!(*w.verifier.attempts.lock().unwrap(), 4);
    assert!(w.clock.now() > start, "waited between attempts");
    let took = w.sink.events().into_iter().find_map(|(_, e)| match e {
        Event::Verified { attempts: 4, took, .. } => Some(took),
        _ => None,
    });
    let waited = (w.clock.now() - start).to_std().unwrap();
    assert!(took.is_some_and(|took| took > std::time::Duration::ZERO && took <= waited), "the time the retries took, on the injected clock: {took:?} of {waited:?}");
}

/// Issue 19 item 2: a relay that took the new secret and then only asked us to wait (its
/// rate limit, the sending quota) for the whole budget has proven the secret authenticates:
/// it is stored, not discarded.
#[tokio::test]
async fn a_secret_that_authenticated_is_kept_when_the_relay_only_throttles() {
    let w = world(Days::zero());
    let old = w.settled().await;
    *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::Throttled; 1000];
    *w.verifier.refuse_after_auth.lock().unwrap() = true;
    let start = w.clock.now();
    let Outcome::Settled { key_id, minted: true, revoked, .. } =
        w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap()
    else {
        panic!()
    };
    // It kept retrying until the next wait (at most the longest delay plus its 20 % jitter)
    // would pass the budget; the wait drawn decides exactly when, so bound, not equal.
    let retry = &w.rotation.verify_retry;
    let spent = (w.clock.now() - start).to_std().unwrap();
    assert!(spent + retry.max_delay * 6 / 5 > retry.budget, "retried through the budget first: {spent:?}");
    assert!(w.directory.has(key_id), "the secret that authenticated is kept");
    assert_eq!((w.vault.key_id(), w.secret.key_id()), (Some(key_id), Some(key_id)));
    assert_eq!(revoked, vec![old]);
}

/// A secret that authenticated once but is refused outright (535) at the last attempt is
/// not waved through as "only throttled".
#[tokio::test]
async fn a_refusal_after_throttling_is_not_taken_for_waiting() {
    let w = world(Days::zero());
    let old = w.settled().await;
    // Popped from the end: throttled after AUTH first, then refused for the whole budget.
    let mut refusals = vec![VerifyFailureKind::BadCredentials; 1000];
    refusals.push(VerifyFailureKind::Throttled);
    *w.verifier.refusals.lock().unwrap() = refusals;
    *w.verifier.refuse_after_auth.lock().unwrap() = true;
    let err = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap_err();
    let EngineError::Verification { last, .. } = &err else { panic!("{err:?}") };
    assert_eq!(last.kind, VerifyFailureKind::BadCredentials, "{err}");
    assert_eq!(w.vault.key_id(), Some(old), "the stores keep the secret that works");
}

/// A relay that throttles before AUTH proves nothing about the secret: it is discarded
/// (its value reached no store) and the run reports waiting, not a failure to fix.
#[tokio::test]
async fn throttling_before_auth_is_waiting_not_failing() {
    let w = world(Days::zero());
    let old = w.settled().await;
    *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::Throttled; 1000];
    let err = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap_err();
    assert!(err.is_waiting() && err.is_transient(), "{err}");
    assert_eq!(err.category(), "WaitingForRelay");
    assert_eq!(w.vault.key_id(), Some(old), "consumers keep the secret that works");
}

#[tokio::test]
async fn permanent_verification_failure_keeps_the_old_secret_stored_and_discards_the_new() {
    let w = world(Days::zero());
    let old = w.settled().await;
    *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::MechanismRejected];
    let err = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap_err();
    let EngineError::Verification { attempts: 1, key_id, .. } = &err else { panic!("{err:?}") };
    assert!(!err.is_transient());
    assert!(w.directory.has(old), "never revoke before verification");
    assert!(!w.directory.has(*key_id), "the unverified secret is removed at once");
    assert_eq!((w.vault.key_id(), w.secret.key_id()), (Some(old), Some(old)), "stores untouched");
    assert!(err.to_string().contains("the stores keep the secret that worked"), "{err}");
}

#[tokio::test]
async fn propagation_longer_than_the_budget_fails_without_revoking() {
    let w = world(Days::zero());
    let old = w.settled().await;
    *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::BadCredentials; 1000];
    let start = w.clock.now();
    let err = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap_err();
    let EngineError::Verification { attempts, .. } = err else { panic!() };
    assert!(attempts > 3);
    assert!(w.clock.now() - start <= Days::seconds(300), "stays within the budget");
    assert!(w.directory.has(old));
    assert_eq!(w.directory.credentials().len(), 1, "the new secret was discarded");
    // Once secrets work again, a later forced run rotates.
    w.verifier.refusals.lock().unwrap().clear();
    let Outcome::Settled { revoked, .. } = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap() else { panic!() };
    assert_eq!(revoked, vec![old]);
}

#[tokio::test]
async fn graph_refusal_changes_nothing() {
    let w = world(Days::zero());
    *w.directory.refuse_add.lock().unwrap() = Some(403);
    let err = w.run().await.unwrap_err();
    assert!(matches!(err, EngineError::Graph(_)) && !err.is_transient());
    assert!(err.to_string().contains("Application.ReadWrite.OwnedBy"), "{err}");
    assert_eq!(w.vault.key_id(), None);
}

#[tokio::test]
async fn secrets_we_did_not_mint_are_never_touched() {
    let w = world(Days::zero());
    let now = w.clock.now();
    let theirs = w.directory.add_existing("created by hand", now - Days::days(700), now + Days::days(1));
    w.settled().await;
    w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap();
    assert!(w.directory.has(theirs));
    assert_eq!(w.directory.credentials().len(), 2);
}

#[tokio::test]
async fn an_application_another_rotation_owns_is_refused_before_any_store_is_read() {
    let w = world(Days::zero());
    let now = w.clock.now();
    let other_rotation = w.directory.add_existing("entra-rotator:other", now, now + Days::days(1));
    w.vault.put(other_rotation, "their value");

    let error = w.run().await.unwrap_err();

    assert_eq!(error.category(), "ClaimedByAnother");
    assert!(!error.is_transient());
    assert!(error.to_string().contains("already rotated by \"other\""), "{error}");
    assert_eq!(w.directory.writes(), 0, "nothing minted or revoked");
    assert_eq!(*w.verifier.attempts.lock().unwrap(), 0, "their value was sent nowhere");
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let w = world(Days::zero());
    let outcome = w.engine.run(&w.rotation, RunOptions { force: false, dry_run: true }).await.unwrap();
    let Outcome::Planned(plan) = outcome else { panic!() };
    assert_eq!(plan.decision.reason(), reasons::STORED_SECRET_MISSING);
    assert_eq!(w.directory.writes(), 0);
    assert_eq!(w.vault.key_id(), None);
}

#[tokio::test]
async fn a_store_changed_behind_our_back_blocks_revocation() {
    let w = world(Days::hours(1));
    let old = w.settled().await;
    w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap();
    w.clock.advance(Days::hours(1));
    w.secret.put(old, "someone restored the old value");
    let outcome = w.run().await.unwrap();
    // The stores disagree now: the newest keyId is copied back, then the old one goes.
    assert!(matches!(outcome, Outcome::Settled { ref revoked, .. } if revoked == &vec![old]), "{outcome:?}");
    assert_eq!(w.secret.key_id(), w.vault.key_id());
}

#[tokio::test]
async fn events_and_errors_never_carry_the_secret_value() {
    let w = world(Days::zero());
    *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::BadCredentials];
    let outcome = w.run().await.unwrap();
    let err = {
        *w.verifier.refusals.lock().unwrap() = vec![VerifyFailureKind::SenderRejected];
        w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap_err()
    };
    let mut text = format!("{outcome:?}\n{err}\n{err:?}\n");
    for (_, event) in w.sink.events() {
        text.push_str(&format!("{event}\n{event:?}\n"));
    }
    for value in w.directory.minted_values.lock().unwrap().iter() {
        assert!(!text.contains(value.as_str()), "secret value leaked into:\n{text}");
    }
    assert!(text.contains("minted keyId"));
}

/// Records when it ran relative to Graph's state.
struct FakeRollout {
    directory: Arc<FakeDirectory>,
    credentials_seen: Mutex<Vec<usize>>,
}

#[async_trait]
impl Rollout for FakeRollout {
    async fn roll_out(&self, _key_id: Uuid) -> Result<Vec<String>, RolloutError> {
        self.credentials_seen.lock().unwrap().push(self.directory.credentials().len());
        Ok(vec!["Deployment dify/api".into()])
    }
}

#[tokio::test]
async fn rollout_happens_after_verification_and_before_revocation() {
    let mut w = world(Days::zero());
    let rollout = Arc::new(FakeRollout { directory: w.directory.clone(), credentials_seen: Mutex::default() });
    w.rotation.rollout = Some(rollout.clone());
    w.settled().await;
    w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap();
    // First rotation: one credential; second: old and new both live while restarting.
    assert_eq!(*rollout.credentials_seen.lock().unwrap(), vec![1, 2]);
    assert_eq!(w.directory.credentials().len(), 1, "old one revoked after the roll-out");
    let restarted = w.sink.events().into_iter().any(|(_, e)| matches!(e, Event::RolledOut { .. }));
    assert!(restarted);
}

#[tokio::test]
async fn a_secret_that_never_passed_verification_is_verified_when_asked() {
    let mut w = world(Days::zero());
    // Stored while verification was switched off, then switched on.
    w.rotation.verifier = None;
    w.settled().await;
    w.rotation.verifier = Some(w.verifier.clone());
    let attempts = *w.verifier.attempts.lock().unwrap();
    // A stateless run cannot know; it finds the stored secret up to date.
    assert!(matches!(w.run().await.unwrap(), Outcome::UpToDate { .. }));
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts);
    // The operator remembers nothing was verified: the secret is proven now.
    let Outcome::UpToDate { key_id, .. } =
        w.engine.run_with(&w.rotation, RunOptions::default(), Reverify::UnlessVerified(None)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts + 1);
    // Once verified, it is not tried again.
    w.engine.run_with(&w.rotation, RunOptions::default(), Reverify::UnlessVerified(Some(key_id))).await.unwrap();
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts + 1);
}

#[tokio::test]
async fn repeated_forced_rotations_inside_the_grace_period_leave_two_secrets_of_ours_live() {
    let w = world(Days::hours(1));
    let first = w.settled().await;
    let force = RunOptions { force: true, dry_run: false };
    let Outcome::Settled { key_id: second, pending, .. } = w.engine.run(&w.rotation, force).await.unwrap() else { panic!() };
    assert_eq!(pending, [first], "the previous secret waits for the grace period");
    w.clock.advance(Days::minutes(1));

    let Outcome::Settled { key_id: third, revoked, pending, revoke_at, .. } = w.engine.run(&w.rotation, force).await.unwrap() else {
        panic!()
    };

    assert_eq!(revoked, [first], "the oldest goes once the newest is verified and stored");
    assert_eq!(pending, [second], "the one consumers may still be switching from stays");
    assert_eq!(revoke_at, Some(w.clock.now() + Days::hours(1)));
    let ours: Vec<Uuid> = w.directory.credentials().iter().filter(|c| c.is_minted_by(&w.rotation.name)).map(|c| c.key_id).collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert!(w.directory.has(second) && w.directory.has(third) && !w.directory.has(first));
    assert_eq!(w.vault.key_id(), Some(third));
}

/// The re-read of every store right before `removePassword`: a store changed after the
/// engine wrote it blocks the revocation, and the old secret stays live.
#[tokio::test]
async fn a_store_changed_after_our_write_blocks_revocation() {
    let w = world(Days::zero());
    let old = w.settled().await;
    let removals_before = w.directory.writes();
    *w.secret.changed_after_write.lock().unwrap() = Some((old, "the old value, put back by hand".into()));

    let error = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap_err();

    let EngineError::StoreChanged { store, found, .. } = &error else { panic!("{error:?}") };
    assert_eq!(store, "Secret dify/smtp");
    assert_eq!(found, &format!("keyId {old}"));
    assert!(error.is_transient());
    assert!(w.directory.has(old), "the old secret, which a store holds again, is still live");
    assert_eq!(w.directory.writes(), removals_before + 1, "the addPassword only: no removePassword");
    assert!(!w.sink.events().iter().any(|(_, e)| matches!(e, Event::Revoked { .. })));
}

/// A gate that holds while `holding` is set, and counts how often it was asked.
#[derive(Default)]
struct FakeGate {
    holding: Mutex<bool>,
    asked: Mutex<u32>,
}

#[async_trait]
impl RevocationGate for FakeGate {
    async fn hold(&self, _key_id: Uuid, _old: &[Uuid]) -> Option<RevocationHold> {
        *self.asked.lock().unwrap() += 1;
        self.holding.lock().unwrap().then(|| RevocationHold {
            reason: "ConsumersOnOldSecret",
            message: "pod dify/api-1 (env)".into(),
            recheck_at: "2030-01-01T00:00:00Z".parse().unwrap(),
        })
    }
}

#[tokio::test]
async fn a_holding_gate_keeps_the_old_secret_live_without_reverifying_until_it_lets_go() {
    let mut w = world(Days::zero());
    let gate = Arc::new(FakeGate::default());
    *gate.holding.lock().unwrap() = true;
    w.rotation.revocation_gate = Some(gate.clone());
    let old = w.settled().await;
    let Outcome::Settled { key_id, revoked, pending, held: Some(hold), revoke_at, .. } =
        w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap()
    else {
        panic!()
    };
    assert!(revoked.is_empty());
    assert_eq!(pending, vec![old]);
    assert_eq!(revoke_at, Some(hold.recheck_at), "asked again when the gate says");
    assert!(w.directory.has(old) && w.directory.has(key_id));

    let attempts = *w.verifier.attempts.lock().unwrap();
    let Outcome::Settled { held: Some(_), .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts, "a held look sends no test mail");
    assert!(w.directory.has(old));

    *gate.holding.lock().unwrap() = false;
    let Outcome::Settled { revoked, held: None, .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(revoked, vec![old]);
    assert!(!w.directory.has(old));
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts + 1, "re-verified right before revoking");
}

#[tokio::test]
async fn a_requested_rotation_replaces_the_secret_it_was_asked_about_once() {
    let w = world(Days::zero());
    let first = w.settled().await;
    let Outcome::Settled { key_id: second, minted: true, .. } = w.engine.run_replacing(&w.rotation, first, Reverify::No).await.unwrap() else {
        panic!()
    };
    assert_ne!(second, first);
    // Run again for the same request (a restart before it was recorded): nothing more.
    let again = w.engine.run_replacing(&w.rotation, first, Reverify::No).await.unwrap();
    assert!(matches!(again, Outcome::UpToDate { key_id, .. } if key_id == second), "{again:?}");
    assert_eq!(w.directory.app.lock().unwrap().password_credentials.len(), 1);
}

#[tokio::test]
async fn a_compromised_rotation_revokes_every_other_secret_at_once_without_asking_the_gate() {
    let mut w = world(Days::hours(1));
    let gate = Arc::new(FakeGate::default());
    *gate.holding.lock().unwrap() = true;
    w.rotation.revocation_gate = Some(gate.clone());
    let first = w.settled().await;
    let Outcome::Settled { key_id: second, .. } = w.engine.run(&w.rotation, RunOptions { force: true, dry_run: false }).await.unwrap() else {
        panic!()
    };
    let asked = *gate.asked.lock().unwrap();
    let Outcome::Settled { key_id: third, minted: true, revoked, pending, held: None, .. } =
        w.engine.run_compromised(&w.rotation, Some(second), Reverify::No).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((revoked.len(), pending.len()), (2, 0), "both older secrets go at once, grace period or not");
    assert!(!w.directory.has(first) && !w.directory.has(second) && w.directory.has(third));
    assert_eq!(*gate.asked.lock().unwrap(), asked, "the consumer wait is skipped");
    assert_eq!(w.vault.key_id(), Some(third));
}

/// `retireUnmanaged`: a hand-made secret goes once the current secret of ours has been in
/// place for `after`, never before, and never while a gate holds it; a secret marked by
/// another rotation (expired, so it claims nothing) is never touched; a dry run removes
/// nothing and says what it would.
#[tokio::test]
async fn retire_unmanaged_removes_only_unmarked_secrets_after_the_window_and_while_no_gate_holds() {
    let mut w = world(Days::zero());
    w.rotation.timing.retire_unmanaged_after = Some(Days::days(7));
    let gate = Arc::new(FakeGate::default());
    w.rotation.revocation_gate = Some(gate.clone());
    let now = w.clock.now();
    let by_hand = w.directory.add_existing("created by hand", now - Days::days(90), now + Days::days(30));
    let theirs = w.directory.add_existing("entra-rotator:another", now - Days::days(90), now - Days::days(1));
    let ours = w.settled().await;

    let Outcome::UpToDate { retirement: Some(waiting), .. } = w.run().await.unwrap() else { panic!() };
    assert!(waiting.removed.is_empty(), "{waiting:?}");
    assert_eq!(waiting.kept.iter().map(|(s, _)| s.key_id).collect::<Vec<_>>(), [by_hand]);
    assert_eq!(Some(waiting.from), w.directory.credentials().iter().find(|c| c.key_id == ours).and_then(|c| c.start).map(|s| s + Days::days(7)));

    w.clock.advance(Days::days(7));
    *gate.holding.lock().unwrap() = true;
    let Outcome::UpToDate { retirement: Some(held), .. } = w.run().await.unwrap() else { panic!() };
    assert!(held.removed.is_empty() && held.kept[0].1.is_some(), "{held:?}");
    assert!(w.directory.has(by_hand));

    *gate.holding.lock().unwrap() = false;
    let Outcome::Planned(plan) = w.engine.run(&w.rotation, RunOptions { force: false, dry_run: true }).await.unwrap() else { panic!() };
    assert_eq!(plan.retire.map(|r| r.removed.iter().map(|s| s.key_id).collect::<Vec<_>>()), Some(vec![by_hand]));
    assert!(w.directory.has(by_hand), "a dry run removes nothing");

    let attempts = *w.verifier.attempts.lock().unwrap();
    let Outcome::UpToDate { retirement: Some(done), .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(done.removed.iter().map(|s| s.key_id).collect::<Vec<_>>(), [by_hand]);
    assert!(!w.directory.has(by_hand) && w.directory.has(theirs) && w.directory.has(ours));
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts + 1, "the current secret is re-checked first");
    assert!(w.sink.events().iter().any(|(_, e)| matches!(e, Event::Retired { key_id, .. } if *key_id == by_hand)));

    let Outcome::UpToDate { retirement: None, .. } = w.run().await.unwrap() else { panic!("nothing unmanaged is left") };
}

/// `retireUnmanaged` around stores observed by their labels (a drift check in batches): the
/// value for the re-check before removing is read then, and a run with nothing left to
/// retire reads no value at all.
#[tokio::test]
async fn retire_unmanaged_reads_the_value_of_a_store_observed_by_its_labels_only_when_something_goes() {
    let mut w = world(Days::zero());
    w.rotation.timing.retire_unmanaged_after = Some(Days::days(7));
    let now = w.clock.now();
    let by_hand = w.directory.add_existing("created by hand", now - Days::days(90), now + Days::days(30));
    let ours = w.settled().await;
    w.clock.advance(Days::days(7));
    for store in [&w.vault, &w.secret] {
        *store.labels_only.lock().unwrap() = true;
    }
    let attempts = *w.verifier.attempts.lock().unwrap();

    let Outcome::UpToDate { retirement: Some(done), .. } = w.run().await.unwrap() else { panic!() };
    assert_eq!(done.removed.iter().map(|s| s.key_id).collect::<Vec<_>>(), [by_hand]);
    assert!(!w.directory.has(by_hand) && w.directory.has(ours));
    assert_eq!(*w.verifier.attempts.lock().unwrap(), attempts + 1, "re-checked with the value read from a store");

    let reads = |w: &World| (*w.vault.reads.lock().unwrap(), *w.secret.reads.lock().unwrap());
    let before = reads(&w);
    let Outcome::UpToDate { retirement: None, .. } = w.run().await.unwrap() else { panic!("nothing unmanaged is left") };
    assert_eq!(reads(&w), before, "nothing to retire, no value read");
}

/// Stores observed by their labels only (a vault's listing, for drift checks in batches):
/// a run with nothing to do reads no value; a run that must prove the stored secret again
/// reads it from one store, once.
#[tokio::test]
async fn a_store_observed_by_its_labels_is_read_only_when_its_value_is_needed() {
    let w = world(Days::zero());
    let key_id = w.settled().await;
    for store in [&w.vault, &w.secret] {
        *store.labels_only.lock().unwrap() = true;
        *store.reads.lock().unwrap() = 0;
    }
    let outcome = w.engine.run_with(&w.rotation, RunOptions::default(), Reverify::UnlessVerified(Some(key_id))).await.unwrap();
    assert!(matches!(outcome, Outcome::UpToDate { key_id: k, .. } if k == key_id), "{outcome:?}");
    assert_eq!((*w.vault.reads.lock().unwrap(), *w.secret.reads.lock().unwrap()), (0, 0), "nothing to do, no value read");

    let proofs = *w.verifier.attempts.lock().unwrap();
    w.engine.run_with(&w.rotation, RunOptions::default(), Reverify::UnlessVerified(None)).await.unwrap();
    assert_eq!(*w.verifier.attempts.lock().unwrap(), proofs + 1, "the stored secret is proven again");
    assert_eq!((*w.vault.reads.lock().unwrap(), *w.secret.reads.lock().unwrap()), (1, 0), "with the value of one store");
}

/// The value is read after the decision: a store that holds another keyId by then stops
/// the run, naming it, before anything is proven or changed.
#[tokio::test]
async fn a_store_changed_between_its_labels_and_its_value_stops_the_run() {
    let w = world(Days::zero());
    let key_id = w.settled().await;
    for store in [&w.vault, &w.secret] {
        *store.labels_only.lock().unwrap() = true;
    }
    let other = Uuid::new_v4();
    *w.vault.changed_after_observe.lock().unwrap() = Some((other, "put there by hand".into()));
    let proofs = *w.verifier.attempts.lock().unwrap();
    let error = w.engine.run_with(&w.rotation, RunOptions::default(), Reverify::UnlessVerified(None)).await.unwrap_err();
    assert!(matches!(&error, EngineError::StoreChanged { store, key_id: k, .. } if store == "Key Vault kv/smtp" && *k == key_id), "{error}");
    assert!(error.to_string().contains(&format!("holds keyId {other}")), "{error}");
    assert_eq!(*w.verifier.attempts.lock().unwrap(), proofs, "nothing proven");
    assert_eq!(w.directory.credentials().len(), 1, "nothing minted or revoked");
}
