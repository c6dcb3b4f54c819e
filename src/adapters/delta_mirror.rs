//! The controller's steady drift checks, kept in a few requests an hour: a mirror of the
//! password credentials of the applications its rotations name (those signed in as the
//! rotator's own identity), kept fresh by Graph's delta query on applications
//! ([`GraphClient::applications_delta`]) instead of one GET per application per check.
//!
//! As with [`super::drift_batch`], the engine still decides every rotation from its
//! ports: [`MirroredDirectory`] answers only a rotation's *first* look at Graph from the
//! mirror, and only from a round started less than its refresh age ago (at most
//! [`FRESH_FOR`]; a check that finds the mirror older runs one delta round, and
//! concurrent checks wait for that same round).
//! Everything after it (the value reads, the re-read before `removePassword`, writes) goes
//! to Graph. An application the rotator itself writes is dropped from the mirror and is
//! not taken back from a round that started before the write, so its next check reads
//! Graph. Applications outside the wanted set are not kept: memory is bounded by what
//! we rotate.
//!
//! A stale delta token (Graph forgets them after 7 days) starts a new first round. Delta
//! refused (403) or failing for good turns the mirror off, logged once; drift checks then
//! read each application as before.

use super::drift_batch::FRESH_FOR;
use super::graph::{DeltaError, DeltaLink, DeltaRound, GraphClient};
use crate::domain::{AppRef, Application, MintedSecret};
use crate::engine::ports::{Directory, GraphError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The mirror of the wanted applications' credentials.
pub struct DeltaMirror {
    graph: Arc<GraphClient>,
    /// How old a round may be to answer a check (at most [`FRESH_FOR`]).
    refresh: Duration,
    /// Client id → object id when the rotation names it.
    wanted: HashMap<Uuid, Option<Uuid>>,
    /// The delta round state; held through a round, so concurrent checks share it.
    round: tokio::sync::Mutex<RoundState>,
    entries: Mutex<Entries>,
    /// Why delta is not used any more, once it failed for good.
    off: OnceLock<String>,
}

#[derive(Default)]
struct RoundState {
    next: Option<DeltaLink>,
    /// When the last round that finished had started.
    started: Option<Instant>,
    /// When a round last failed for now: checks read Graph themselves for a refresh
    /// period rather than each trying a round of their own.
    failed: Option<Instant>,
}

#[derive(Default)]
struct Entries {
    /// By client id.
    apps: HashMap<Uuid, Application>,
    /// Object id → when the rotator last wrote to it; a round started earlier does not
    /// answer for it.
    written: HashMap<Uuid, Instant>,
}

impl DeltaMirror {
    /// An empty mirror for `wanted`; nothing is read until [`fill`](Self::fill) or a check.
    pub fn new(graph: Arc<GraphClient>, wanted: &[AppRef], refresh: Duration) -> Self {
        Self {
            graph,
            refresh: refresh.min(FRESH_FOR),
            wanted: wanted.iter().map(|app| (app.client_id, app.object_id)).collect(),
            round: Default::default(),
            entries: Default::default(),
            off: OnceLock::new(),
        }
    }

    /// Runs the first round now; `false` when delta cannot be used (logged).
    pub async fn fill(&self) -> bool {
        self.refresh_if_old().await
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wants(&self, app: &Application) -> bool {
        match self.wanted.get(&app.app_id) {
            Some(Some(object_id)) => *object_id == app.object_id,
            Some(None) => true,
            None => false,
        }
    }

    /// What the mirror knows of `app`, from a round started less than the refresh age ago.
    pub async fn application(&self, app: &AppRef) -> Option<Application> {
        if self.off.get().is_some() || !self.wanted.contains_key(&app.client_id) {
            return None;
        }
        if !self.refresh_if_old().await {
            return None;
        }
        let entries = self.entries();
        let known = entries.apps.get(&app.client_id)?;
        app.object_id.is_none_or(|id| id == known.object_id).then(|| known.clone())
    }

    /// The rotator is writing to `object_id`: its next look goes to Graph.
    pub fn forget(&self, object_id: Uuid) {
        let mut entries = self.entries();
        entries.apps.retain(|_, known| known.object_id != object_id);
        entries.written.insert(object_id, Instant::now());
    }

    async fn refresh_if_old(&self) -> bool {
        let mut round = self.round.lock().await;
        if self.off.get().is_some() {
            return false;
        }
        if round.started.is_some_and(|started| started.elapsed() < self.refresh) {
            return true;
        }
        if round.failed.is_some_and(|failed| failed.elapsed() < self.refresh) {
            return false;
        }
        let started = Instant::now();
        let mut first = round.next.is_none();
        let mut result = self.graph.applications_delta(round.next.as_ref()).await;
        if let Err(DeltaError::Stale { .. }) = &result {
            tracing::info!(error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(), "starting a new applications/delta round for the drift checks");
            first = true;
            result = self.graph.applications_delta(None).await;
        }
        match result {
            Ok(DeltaRound { changed, gone, next }) => {
                self.apply(changed, gone, started, first);
                round.next = Some(next);
                round.started = Some(started);
                true
            }
            Err(DeltaError::Failed { error, .. }) if error.is_transient() => {
                // The checks read Graph themselves for now; a later one tries delta again.
                tracing::info!(%error, "applications/delta failed for now; drift checks read their applications themselves meanwhile");
                round.failed = Some(Instant::now());
                false
            }
            Err(error) => {
                let why = error.to_string();
                tracing::warn!(error = %why, "drift checks read each application from now on, not through applications/delta");
                let _ = self.off.set(why);
                self.entries().apps.clear();
                false
            }
        }
    }

    fn apply(&self, changed: Vec<Application>, gone: Vec<Uuid>, started: Instant, first: bool) {
        let mut entries = self.entries();
        if first {
            entries.apps.clear();
        }
        for object_id in gone {
            entries.apps.retain(|_, known| known.object_id != object_id);
        }
        for app in changed.into_iter().filter(|app| self.wants(app)) {
            let written_since = entries.written.get(&app.object_id).is_some_and(|at| *at >= started);
            if written_since {
                entries.apps.remove(&app.app_id);
            } else {
                entries.apps.insert(app.app_id, app);
            }
        }
        // A write before this round started is in it (or in a later one).
        entries.written.retain(|_, at| *at >= started);
    }
}

/// A [`Directory`] whose first read is answered from the mirror when it can; a write drops
/// the application from the mirror before it is sent and again once it is answered, so no
/// round that started before Graph had it answers for that application.
pub struct MirroredDirectory {
    pub inner: Arc<dyn Directory>,
    pub mirror: Arc<DeltaMirror>,
    pub first_read_done: AtomicBool,
}

#[async_trait]
impl Directory for MirroredDirectory {
    async fn application(&self, app: &AppRef) -> Result<Application, GraphError> {
        if !self.first_read_done.swap(true, Ordering::SeqCst)
            && let Some(known) = self.mirror.application(app).await
        {
            return Ok(known);
        }
        self.inner.application(app).await
    }

    async fn add_password(&self, object_id: Uuid, display_name: &str, end: DateTime<Utc>) -> Result<MintedSecret, GraphError> {
        self.mirror.forget(object_id);
        let minted = self.inner.add_password(object_id, display_name, end).await;
        self.mirror.forget(object_id);
        minted
    }

    async fn remove_password(&self, object_id: Uuid, key_id: Uuid) -> Result<(), GraphError> {
        self.mirror.forget(object_id);
        let removed = self.inner.remove_password(object_id, key_id).await;
        self.mirror.forget(object_id);
        removed
    }
}
