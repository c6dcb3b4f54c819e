//! The Kubernetes operator: the `ClientSecretRotation` resource, who may rotate what
//! (`RotationPolicy`, in `authorization`), whose identity signs in (`RotatorIdentity`,
//! `ClusterRotatorIdentity`, in `identity`), the controller that reconciles it with the
//! rotation engine, and the one-shot pass for CronJobs.
//!
//! A face over everything below it (engine, adapters, assembly, config, alerting, metrics,
//! report); never the CLI.
pub mod authorization;
pub mod consumers;
pub mod controller;
pub mod crd;
pub mod identity;
pub mod pass;
pub mod reconcile;
pub mod rollout;
pub mod rotate_request;
pub mod status;
pub mod watched;

use crate::alerting::Notifier;
use crate::assembly::Assembly;
use crate::metrics::Metrics;
use crate::config::ServiceSettings;
use crate::engine::ports::SystemClock;
use kube::runtime::events::{Recorder, Reporter};
use reconcile::Context;
use std::sync::Arc;
use std::time::Duration;

/// How often every rotation is looked at, and how long an unstored secret of ours is left
/// to the run that minted it.
pub struct Timings {
    pub drift_interval: Duration,
    pub orphan_grace: Duration,
    /// How soon a revocation held for consumers is looked at again without a pod change.
    pub consumer_recheck: Duration,
}

/// Who may rotate what without a RotationPolicy: the controller's and the pass's settings.
pub struct Scope {
    /// The namespace watched (`--namespace`) or, failing that, the one the rotator runs
    /// in (`POD_NAMESPACE`); `None`: the client's default namespace (in-cluster, the
    /// service account's).
    pub home_namespace: Option<String>,
    /// `--allow-smtp-host`.
    pub allowed_relays: Vec<authorization::AllowedRelay>,
}

/// Connects to Kubernetes (in-cluster, else `$KUBECONFIG`) and Azure for the controller and
/// the CronJob pass. `instance` names this process in Events (the pod name).
pub async fn context(settings: &ServiceSettings, instance: &str, timings: Timings, scope: Scope) -> anyhow::Result<Context> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach Kubernetes (no in-cluster service account and no usable kubeconfig): {e}")
    })?;
    let authorization = authorization::Authorization {
        home_namespace: scope.home_namespace.unwrap_or_else(|| client.default_namespace().to_string()),
        allowed_relays: scope.allowed_relays,
    };
    let metrics = Arc::new(Metrics::new());
    let assembly = Assembly::observed(&settings.azure, &settings.tls, Some(client.clone()), Some(metrics.clone()))?;
    let notifier = Notifier::new(&settings.notifications, assembly.http(), assembly.trust())?;
    let reporter = Reporter { controller: "entra-rotator".into(), instance: Some(instance.to_string()) };
    Ok(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        assembly,
        clock: Arc::new(SystemClock),
        drift_interval: timings.drift_interval,
        orphan_grace: timings.orphan_grace,
        consumer_recheck: chrono::Duration::from_std(timings.consumer_recheck).unwrap_or(consumers::RECHECK),
        metrics,
        notifier,
        authorization,
        watched: Default::default(),
    })
}
