//! The Kubernetes operator: the `ClientSecretRotation` resource, the controller that
//! reconciles it with the rotation engine, and the one-shot pass for CronJobs.
//!
//! A face over everything below it (engine, adapters, assembly, config, alerting, metrics,
//! report); never the CLI.
pub mod consumers;
pub mod controller;
pub mod crd;
pub mod pass;
pub mod reconcile;
pub mod rollout;
pub mod rotate_request;
pub mod status;

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
}

/// Connects to Kubernetes (in-cluster, else `$KUBECONFIG`) and Azure for the controller and
/// the CronJob pass. `instance` names this process in Events (the pod name).
pub async fn context(settings: &ServiceSettings, instance: &str, timings: Timings) -> anyhow::Result<Context> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach Kubernetes (no in-cluster service account and no usable kubeconfig): {e}")
    })?;
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
        metrics,
        notifier,
    })
}
