//! The CronJob mode: one reconcile of every ClientSecretRotation in a namespace (or all),
//! with the same engine and status handling as the controller, then exit.

use super::crd::ClientSecretRotation;
use super::reconcile::{reconcile, Context};
use futures::StreamExt;
use kube::api::{Api, ListParams};

/// What a pass did: one summary line per object, and how many failed.
pub struct PassReport {
    pub lines: Vec<String>,
    pub failed: usize,
}

/// Reconciles every object once, `concurrency` at a time, reporting in name order.
/// `namespace: None` means all namespaces.
pub async fn run_pass(ctx: &Context, namespace: Option<&str>, concurrency: usize) -> Result<PassReport, kube::Error> {
    let api: Api<ClientSecretRotation> = match namespace {
        Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
        None => Api::all(ctx.client.clone()),
    };
    let mut objects = api.list(&ListParams::default()).await?.items;
    objects.sort_by_key(|o| o.rotation_name());
    let mut report = PassReport { lines: Vec::new(), failed: 0 };
    let mut results = futures::stream::iter(&objects)
        .map(|object| async move { (object, reconcile(object, ctx).await) })
        .buffered(concurrency.max(1));
    while let Some((object, result)) = results.next().await {
        match result {
            Ok(reconciled) => {
                report.failed += usize::from(reconciled.failed);
                report.lines.push(reconciled.summary);
            }
            Err(error) => {
                report.failed += 1;
                report.lines.push(format!("{}: FAILED: {error}", object.rotation_name()));
            }
        }
    }
    Ok(report)
}
