//! The small traits through which the engine talks to the outside world.
//!
//! Production implementations live in [`crate::adapters`]; the engine's tests use
//! in-memory fakes. Each error type says what failed, on which object, and whether
//! trying again later can help ([`is_transient`](GraphError::is_transient)).

use crate::domain::{AppRef, Application, MintedSecret, SecretString, SecretToStore, StoredLabels, StoredSecret};
use async_trait::async_trait;
use std::sync::Arc;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// Microsoft Graph's application endpoints.
#[async_trait]
pub trait Directory: Send + Sync {
    /// Reads the application with its `passwordCredentials`.
    async fn application(&self, app: &AppRef) -> Result<Application, GraphError>;
    /// `addPassword`: mints a new secret; the value is returned exactly once.
    async fn add_password(
        &self,
        object_id: Uuid,
        display_name: &str,
        end: DateTime<Utc>,
    ) -> Result<MintedSecret, GraphError>;
    /// `removePassword`: revokes the secret with `key_id`.
    async fn remove_password(&self, object_id: Uuid, key_id: Uuid) -> Result<(), GraphError>;
}

/// A place consumers read the credential from (Key Vault secret, Kubernetes Secret).
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Names the object for humans, e.g. `Key Vault https://kv.vault.azure.net secret smtp`.
    fn describe(&self) -> String;
    /// The current value and the keyId recorded with it; `None` when nothing is stored.
    async fn read(&self) -> Result<Option<StoredSecret>, StoreError>;
    /// What the store holds, for deciding: the whole secret by default. A store answered
    /// from a listing of its vault (drift checks in batches) knows only the labels; the
    /// engine then reads the value if, and only if, the plan needs it.
    async fn observe(&self) -> Result<Option<Held>, StoreError> {
        Ok(self.read().await?.map(Held::Secret))
    }
    /// Writes the value durably; returns only once the store has accepted it.
    async fn write(&self, secret: &SecretToStore<'_>) -> Result<(), StoreError>;
}

/// What observing a store found.
#[derive(Debug)]
pub enum Held {
    /// Read whole, value included.
    Secret(StoredSecret),
    /// Only what is recorded next to the value (a vault listing carries no values).
    Labels(StoredLabels),
}

impl Held {
    pub fn labels(&self) -> StoredLabels {
        match self {
            Held::Secret(secret) => secret.labels(),
            Held::Labels(labels) => labels.clone(),
        }
    }
}

/// Proves a secret works by using it the way consumers do (one attempt).
#[async_trait]
pub trait Verifier: Send + Sync {
    fn describe(&self) -> String;
    /// The full proof configured for a newly minted secret (at the SMTP relay, a test mail
    /// unless the rotation chose the handshake).
    async fn verify(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError>;
    /// Shows that a secret proven once still authenticates, spending nothing the
    /// application needs (at the SMTP relay, the handshake: no mail, no quota).
    async fn recheck(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError>;
}

/// Makes consumers pick up a newly stored secret (restarts workloads that read it at
/// start). Called after verification and before any old secret is revoked; must be
/// idempotent, because a resumed run calls it again for the same keyId.
#[async_trait]
pub trait Rollout: Send + Sync {
    /// Returns what was restarted, for events (e.g. `Deployment dify/api`).
    async fn roll_out(&self, key_id: Uuid) -> Result<Vec<String>, RolloutError>;
}

/// Says whether older secrets may be revoked now that `key_id` is stored and verified:
/// a consumer that read an older value (a pod that took it into an environment variable,
/// a roll-out that has not finished) keeps them live. Asked right before every
/// revocation; a failure to find out is a hold too, whose message says what to fix.
#[async_trait]
pub trait RevocationGate: Send + Sync {
    /// `None`: revoke `old`. `Some`: keep the older secrets, and ask again at `recheck_at`.
    async fn hold(&self, key_id: Uuid, old: &[Uuid]) -> Option<RevocationHold>;
}

/// Several gates (the consumers in Kubernetes, the sign-in log), asked in order: the first
/// that holds keeps the older secrets.
pub struct Gates(pub Vec<Arc<dyn RevocationGate>>);

#[async_trait]
impl RevocationGate for Gates {
    async fn hold(&self, key_id: Uuid, old: &[Uuid]) -> Option<RevocationHold> {
        for gate in &self.0 {
            if let Some(hold) = gate.hold(key_id, old).await {
                return Some(hold);
            }
        }
        None
    }
}

/// Why the older secrets stay live for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationHold {
    /// A stable word for conditions and metrics, e.g. `ConsumersOnOldSecret`.
    pub reason: &'static str,
    /// Names the consumers (pods, workloads) and what would release them.
    pub message: String,
    pub recheck_at: DateTime<Utc>,
}

/// A workload could not be restarted; names it and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("could not restart {workload}: {message}")]
pub struct RolloutError {
    pub workload: String,
    pub message: String,
    pub transient: bool,
}

/// Time, injected so expiry logic and retries are tested without sleeping.
#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    async fn sleep(&self, duration: Duration);
}

/// The wall clock and tokio's timer.
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}

/// A failure talking to Microsoft Graph (or to the token endpoint on its behalf).
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error body.
    #[error("Microsoft Graph refused {operation}: HTTP {status} {code}: {message}{}. {}",
        request_id.as_deref().map(|id| format!(" (request-id {id})")).unwrap_or_default(),
        graph_hint(*status, code))]
    Api {
        operation: String,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The rotator could not get a token for Graph.
    #[error("could not get a Microsoft Graph token for the rotator: {detail}. Check the rotator's own identity (workload identity federation, managed identity, client secret or `az login`)")]
    Auth { detail: String },
    /// Network, TLS or timeout after the retries ran out.
    #[error("could not reach Microsoft Graph for {operation}: {detail}")]
    Transport { operation: String, detail: String },
    /// Graph answered something we cannot understand.
    #[error("unexpected answer from Microsoft Graph for {operation}: {detail}")]
    Protocol { operation: String, detail: String },
}

fn graph_hint(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (403, _) => "The rotator needs Application.ReadWrite.OwnedBy (admin-consented) and must be an owner of this application",
        (404, _) => "Check the tenantId, clientId and objectId of the application",
        (400, _) => "The request was rejected as invalid; check the lifetime (at most 730 days) and any tenant app-management policy",
        (429, _) => "Graph throttled the rotator; it will try again later",
        (s, _) if s >= 500 => "Graph had an internal error; it will try again later",
        _ => "See the Graph error code for details",
    }
}

impl GraphError {
    /// Whether retrying later can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            GraphError::Api { status, .. } => *status == 429 || *status >= 500,
            GraphError::Transport { .. } => true,
            GraphError::Auth { .. } | GraphError::Protocol { .. } => false,
        }
    }
}

/// What kind of store failure happened, which decides retrying and the advice given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The rotator is not allowed to read or write the object.
    Forbidden,
    /// A Key Vault secret of that name is soft-deleted and blocks the name.
    SoftDeleted,
    /// The vault, namespace or object does not exist.
    NotFound,
    /// Throttling, a 5xx or a network fault: retrying later can help.
    Transient,
    /// Someone else owns the object (another controller, or a Secret nobody handed to the
    /// rotator): the rotator leaves it alone.
    Claimed,
    /// Any other refusal.
    Rejected,
}

/// A failure of one store, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {message}")]
pub struct StoreError {
    pub store: String,
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }
}

/// Why a test mail through the relay failed, in the terms a user can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyFailureKind {
    /// 535: username form, secret, or the app's role on the Communication Services resource.
    /// A brand-new secret also gets 535 until Entra has replicated it.
    BadCredentials,
    /// 504 5.7.4: the relay accepts AUTH LOGIN only.
    MechanismRejected,
    /// The relay refused the From address.
    SenderRejected,
    /// The relay refused the recipient.
    RecipientRejected,
    /// TLS handshake or certificate problem.
    Tls,
    /// Could not connect, or the connection dropped.
    Connection,
    /// The relay's host name does not resolve: a wrong host, or a DNS the rotator cannot
    /// use. Not retried: a name that does not resolve now will not within the retry budget,
    /// and the next run tries again.
    UnknownHost,
    /// The relay asks us to wait: a 4xx reply at any phase (rate or connection limits, the
    /// sending quota, a temporary fault), or a 5xx whose text is a throttling or quota
    /// refusal of Exchange Online or ACS. Retried after the limit's window; never a reason
    /// to discard a secret that authenticated.
    Throttled,
    /// Anything else the relay said.
    Other,
}

/// A failed verification attempt; `message` already explains what to check.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {message}")]
pub struct VerifyError {
    pub target: String,
    pub kind: VerifyFailureKind,
    pub message: String,
    /// The relay accepted the secret (AUTH succeeded) before it refused something later.
    pub authenticated: bool,
}

impl VerifyError {
    /// A refusal that does not depend on the secret: `message`, nothing authenticated.
    pub fn new(target: String, kind: VerifyFailureKind, message: String) -> Self {
        Self { target, kind, message, authenticated: false }
    }

    /// The relay took the secret and then asked us to wait (rate or quota limit): the
    /// secret is proven to authenticate, only the rest of the proof was deferred.
    pub fn authenticated_then_throttled(&self) -> bool {
        self.authenticated && self.kind == VerifyFailureKind::Throttled
    }

    /// Whether another attempt can succeed: a new secret gets 535 until Entra replicated it,
    /// and connection faults and 4xx replies are temporary.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            VerifyFailureKind::BadCredentials
                | VerifyFailureKind::Connection
                | VerifyFailureKind::Throttled
        )
    }
}
