//! Drift checks that fall due together, gathered in few requests: the applications of a
//! pass read through Graph's `$batch` (20 a request), the Key Vault targets of one vault
//! read from the vault's listing (25 secrets a page, tags but no values), where one GET
//! each was sent before.
//!
//! Why a batch taken ahead and answered through the ports, not batching in the engine:
//! the engine decides one rotation at a time from what its ports say, and must keep doing
//! so. A [`DriftBatch`] is taken once for the whole pass; each rotation's *first* look at
//! Graph and at each of its vault targets is answered from it ([`BatchedDirectory`],
//! [`BatchedStore`]), once, and everything after that (the value when the plan needs it,
//! the re-read right before `removePassword`, writes, a second read) goes to Graph and the
//! vault as before. So every decision is the engine's own, from the same answers a GET
//! would have given at the time the batch was taken; an answer older than [`FRESH_FOR`]
//! is not used.

use super::graph::GraphClient;
use super::keyvault::{KeyVaultClients, KeyVaultStore, Listed};
use crate::domain::{AppRef, Application, SecretToStore, StoredLabels, StoredSecret};
use crate::engine::ports::{Directory, GraphError, Held, SecretStore, StoreError};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a batch answers for; a rotation reached later reads for itself. A pass that
/// waits minutes for a verification must not decide from what Graph said before.
pub const FRESH_FOR: Duration = Duration::from_secs(300);

/// What a pass will look at: the applications, and the Key Vault targets by vault.
#[derive(Debug, Default)]
pub struct Wanted {
    pub applications: Vec<AppRef>,
    /// Vault URL (as the store normalises it) → secret names.
    pub vault_secrets: BTreeMap<String, Vec<String>>,
}

impl Wanted {
    /// Adds what `more` names (another page of objects).
    pub fn merge(&mut self, more: Wanted) {
        self.applications.extend(more.applications);
        for (vault_url, names) in more.vault_secrets {
            self.vault_secrets
                .entry(vault_url)
                .or_default()
                .extend(names);
        }
    }
}

/// The answers of one pass's batched reads, each handed out once.
pub struct DriftBatch {
    taken: Instant,
    applications: Mutex<HashMap<AppRef, Result<Application, GraphError>>>,
    /// (vault URL, secret name) → what the listing says it holds (`None`: nothing).
    secrets: Mutex<HashMap<(String, String), Option<StoredLabels>>>,
}

impl DriftBatch {
    /// Reads what `wanted` names: Graph in batches, each vault's listing (given up for
    /// one GET per secret where the vault refuses to list, or where listing would cost
    /// more pages than the GETs it replaces).
    pub async fn take(
        graph: &GraphClient,
        vaults: &KeyVaultClients,
        credential: Arc<dyn TokenCredential>,
        client_options: impl Fn() -> ClientOptions,
        wanted: &Wanted,
    ) -> Self {
        let taken = Instant::now();
        let mut apps = wanted.applications.clone();
        apps.sort_by_key(|app| (app.tenant_id, app.client_id, app.object_id));
        apps.dedup();
        let read = graph.applications(&apps).await;
        let applications = apps.into_iter().zip(read).collect();
        let mut secrets = HashMap::new();
        for (vault_url, names) in &wanted.vault_secrets {
            // A page costs a request, like a GET: list only while it is cheaper.
            if names.len() < 2 {
                continue;
            }
            let listing = match vaults
                .list(
                    vault_url,
                    names.len() - 1,
                    credential.clone(),
                    &client_options,
                )
                .await
            {
                Ok(listing) => listing,
                Err(failed) => {
                    tracing::warn!(%failed, "drift checks of this vault go one secret at a time");
                    continue;
                }
            };
            for name in names {
                let answer = match listing.secrets.get(name) {
                    Some(Listed::Labels(labels)) => Some(labels.clone()),
                    // Not enabled: only a read says what that means (Key Vault's refusal).
                    Some(Listed::Disabled) => continue,
                    None if listing.complete => None,
                    None => continue,
                };
                secrets.insert((vault_url.clone(), name.clone()), answer);
            }
        }
        Self {
            taken,
            applications: Mutex::new(applications),
            secrets: Mutex::new(secrets),
        }
    }

    fn fresh(&self) -> bool {
        self.taken.elapsed() < FRESH_FOR
    }

    fn application(&self, app: &AppRef) -> Option<Result<Application, GraphError>> {
        let answer = self
            .applications
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(app);
        answer.filter(|_| self.fresh())
    }

    fn labels(&self, vault_url: &str, name: &str) -> Option<Option<StoredLabels>> {
        let answer = self
            .secrets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(vault_url.to_string(), name.to_string()));
        answer.filter(|_| self.fresh())
    }
}

/// A [`Directory`] whose first read of each application is answered from the batch.
pub struct BatchedDirectory {
    pub inner: Arc<dyn Directory>,
    pub batch: Arc<DriftBatch>,
}

#[async_trait]
impl Directory for BatchedDirectory {
    async fn application(&self, app: &AppRef) -> Result<Application, GraphError> {
        match self.batch.application(app) {
            Some(answer) => answer,
            None => self.inner.application(app).await,
        }
    }

    async fn add_password(
        &self,
        object_id: Uuid,
        display_name: &str,
        end: DateTime<Utc>,
    ) -> Result<crate::domain::MintedSecret, GraphError> {
        self.inner.add_password(object_id, display_name, end).await
    }

    async fn remove_password(&self, object_id: Uuid, key_id: Uuid) -> Result<(), GraphError> {
        self.inner.remove_password(object_id, key_id).await
    }
}

/// A Key Vault store whose first observation is answered from its vault's listing.
pub struct BatchedStore {
    pub inner: KeyVaultStore,
    pub batch: Arc<DriftBatch>,
}

#[async_trait]
impl SecretStore for BatchedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn read(&self) -> Result<Option<StoredSecret>, StoreError> {
        self.inner.read().await
    }

    async fn observe(&self) -> Result<Option<Held>, StoreError> {
        match self
            .batch
            .labels(self.inner.vault_url(), self.inner.secret_name())
        {
            Some(listed) => Ok(listed.map(Held::Labels)),
            None => self.inner.observe().await,
        }
    }

    async fn write(&self, secret: &SecretToStore<'_>) -> Result<(), StoreError> {
        self.inner.write(secret).await
    }
}
