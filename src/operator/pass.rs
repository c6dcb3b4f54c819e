//! The CronJob mode: one reconcile of every ClientSecretRotation in a namespace (or all),
//! with the same engine and status handling as the controller, then exit.

use super::crd::ClientSecretRotation;
use super::reconcile::{reconcile_isolated, Context, Read, ReconcileError, Reconciled};
use crate::adapters::drift_batch::Wanted;
use crate::adapters::keyvault::normalized_vault_url;
use crate::domain::AppRef;
use futures::StreamExt;
use kube::api::{Api, ListParams};
use std::future::Future;

/// What a pass did: one summary line per object, and how many failed.
pub struct PassReport {
    pub lines: Vec<String>,
    pub failed: usize,
}

/// Reconciles every object once, `concurrency` at a time, reporting in name order.
/// `namespace: None` means all namespaces. A panic while reconciling one object fails
/// that object; the others are reconciled all the same.
pub async fn run_pass(ctx: &Context, namespace: Option<&str>, concurrency: usize) -> Result<PassReport, kube::Error> {
    let api: Api<ClientSecretRotation> = match namespace {
        Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
        None => Api::all(ctx.client.clone()),
    };
    let mut objects = api.list(&ListParams::default()).await?.items;
    objects.sort_by_key(|o| o.rotation_name());
    let names: Vec<String> = objects.iter().map(ClientSecretRotation::rotation_name).collect();
    // One object reads as it always did (not even the policies are read for it twice);
    // together they read in batches.
    let batched = objects.len() > 1;
    if batched {
        let wanted = drift_checks(ctx, &objects.iter().collect::<Vec<_>>()).await;
        ctx.assembly.begin_drift_batch(&wanted).await;
    }
    let results = reconcile_each(&objects, concurrency, |object| reconcile_isolated(object, Read::Earlier, ctx, None)).await;
    if batched {
        ctx.assembly.end_drift_batch();
    }
    Ok(report(&names, results))
}

/// What the pass's drift checks read, for reading it in batches: the application and the
/// Key Vault targets of every object that will reach Graph as the rotator's own identity
/// (not suspended, no identityRef, allowed by policy), so nothing is read for an object
/// that may not read it.
pub async fn drift_checks(ctx: &Context, objects: &[&ClientSecretRotation]) -> Wanted {
    let allowed = super::authorization::authorized_together(&ctx.client, &ctx.authorization, objects).await;
    let mut wanted = Wanted::default();
    for (object, allowed) in objects.iter().zip(allowed) {
        let spec = &object.spec;
        if !allowed || spec.suspend || spec.identity_ref.is_some() {
            continue;
        }
        let guid = |text: &str| uuid::Uuid::parse_str(text).ok();
        let (Some(tenant_id), Some(client_id)) = (guid(&spec.application.tenant_id), guid(&spec.application.client_id)) else {
            continue;
        };
        let object_id = match spec.application.object_id.as_deref() {
            Some(text) => match guid(text) {
                Some(id) => Some(id),
                None => continue,
            },
            None => None,
        };
        wanted.applications.push(AppRef { tenant_id, client_id, object_id });
        for vault in spec.targets.iter().filter_map(|target| target.key_vault.as_ref()) {
            if let Some(url) = normalized_vault_url(&vault.vault_url) {
                wanted.vault_secrets.entry(url).or_default().push(vault.secret_name.clone());
            }
        }
    }
    wanted
}

/// Runs `reconcile_one` for every object, `concurrency` at a time, results in order.
async fn reconcile_each<'a, T, F, Fut>(objects: &'a [T], concurrency: usize, reconcile_one: F) -> Vec<Fut::Output>
where
    F: Fn(&'a T) -> Fut,
    Fut: Future,
{
    futures::stream::iter(objects).map(reconcile_one).buffered(concurrency.max(1)).collect().await
}

fn report(names: &[String], results: Vec<Result<Reconciled, ReconcileError>>) -> PassReport {
    let mut report = PassReport { lines: Vec::new(), failed: 0 };
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok(reconciled) => {
                report.failed += usize::from(reconciled.failed);
                report.lines.push(reconciled.summary);
            }
            Err(error) => {
                report.failed += 1;
                report.lines.push(format!("{name}: FAILED: {error}"));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::reconcile::isolate;
    use std::time::Duration;

    /// One object whose reconcile panics (a bug; `alertThresholds: ["300000y"]` was one)
    /// fails alone: the pass goes on, the other objects of the same pass are reconciled,
    /// and the report says which failed.
    #[tokio::test]
    async fn a_panicking_reconcile_fails_its_object_and_the_pass_goes_on() {
        let names: Vec<String> = ["dify/a", "dify/panics", "dify/z"].map(String::from).to_vec();
        let results = reconcile_each(&names, 2, |name| async move {
            match isolate(async {
                assert_ne!(name, "dify/panics", "a bug in one reconcile");
                Reconciled { summary: format!("{name}: up to date"), failed: false, requeue_after: Duration::from_secs(60) }
            })
            .await
            {
                Ok(reconciled) => Ok(reconciled),
                Err(_) => Err(ReconcileError::Internal { object: name.clone() }),
            }
        })
        .await;
        let report = report(&names, results);
        assert_eq!(report.failed, 1);
        assert_eq!(report.lines, [
            "dify/a: up to date",
            "dify/panics: FAILED: internal error while reconciling dify/panics; please report it with the controller's log, which has the details",
            "dify/z: up to date",
        ]);
    }
}
