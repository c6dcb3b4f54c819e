//! `entra-rotator rotate NAME -n NAMESPACE`: asks the controller (or the next CronJob pass)
//! for a rotation now, by setting the annotation `entra-rotator.io/rotate-requested-at` to
//! the current time, and waits until the status says the request is done. Each value is
//! carried out once (see `operator::rotate_request`), so running it again asks again, and a
//! controller restart in between does not rotate twice. `--compromised` also sets
//! `entra-rotator.io/rotate-compromised`: every other secret is revoked at once.

use super::{EXIT_FAILED, EXIT_INVALID_INPUT};
use crate::config::duration::HumanDuration;
use crate::operator::crd::ClientSecretRotation;
use crate::operator::rotate_request::{DONE, INVALID, ROTATE_COMPROMISED, ROTATE_REQUESTED_AT};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct RotateArgs {
    /// The ClientSecretRotation to rotate.
    name: String,
    #[arg(long, short, default_value = "default")]
    namespace: String,
    /// Return once the request is recorded on the object, without waiting for the result.
    #[arg(long)]
    no_wait: bool,
    /// The current secret leaked: once the new one is stored and rolled out, revoke every
    /// other secret of ours at once, without grace period or consumer wait (consumers still
    /// on the old secret lose mail until restarted; the leak is worse).
    #[arg(long)]
    compromised: bool,
    /// How long to wait for the controller to carry the request out.
    #[arg(long, default_value = "10m", value_parser = HumanDuration::parse)]
    timeout: HumanDuration,
}

/// How often the status is read while waiting.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(args: RotateArgs) -> ExitCode {
    match rotate(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

/// A kube client from `$KUBECONFIG` or `~/.kube/config` (in a pod: its service account).
pub(super) async fn client() -> Result<kube::Client, Failure> {
    kube::Client::try_default()
        .await
        .map_err(|e| (EXIT_FAILED, format!("cannot reach Kubernetes (no usable kubeconfig, and not in a cluster): {e}")))
}

/// Says what a refused request to the object means.
pub(super) fn explain(error: kube::Error, what: &str, namespace: &str, name: &str) -> Failure {
    match &error {
        kube::Error::Api(status) if status.code == 404 => (
            EXIT_INVALID_INPUT,
            format!("ClientSecretRotation {namespace}/{name} not found; check the name and namespace (`kubectl get csrot -n {namespace}`)"),
        ),
        kube::Error::Api(status) if status.code == 403 => (
            EXIT_FAILED,
            format!("not allowed to {what} ClientSecretRotation {namespace}/{name}: {}", status.message),
        ),
        other => (EXIT_FAILED, format!("could not {what} ClientSecretRotation {namespace}/{name}: {other}")),
    }
}

async fn rotate(args: &RotateArgs) -> Result<(), Failure> {
    let (namespace, name) = (args.namespace.as_str(), args.name.as_str());
    let api: Api<ClientSecretRotation> = Api::namespaced(client().await?, namespace);
    // Milliseconds, so that two requests within a second are two values.
    let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // null removes a compromised flag left by an earlier request.
    let compromised = args.compromised.then_some("true");
    let patch = json!({ "metadata": { "annotations": { ROTATE_REQUESTED_AT: value, ROTATE_COMPROMISED: compromised } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|e| explain(e, "annotate", namespace, name))?;
    println!("requested a rotation of {namespace}/{name} ({ROTATE_REQUESTED_AT}: {value})");
    if args.compromised {
        println!("compromised: every other secret of ours is revoked as soon as the new one is stored and rolled out, without grace period or waiting for consumers; a consumer still on the old secret loses mail until it restarts, which is better than a leaked secret staying valid");
    }
    if args.no_wait {
        println!("not waiting: the controller rotates it at its next look; follow it with `entra-rotator status {name} -n {namespace}`");
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout.0;
    let mut last_said = None;
    loop {
        let object = api.get_status(name).await.map_err(|e| explain(e, "read", namespace, name))?;
        let status = object.status.unwrap_or_default();
        if let Some(request) = status.rotate_request.as_ref().filter(|r| r.requested_at == value) {
            let message = request.message.clone().unwrap_or_default();
            match request.state.as_str() {
                DONE => {
                    println!("done: {message}");
                    return Ok(());
                }
                INVALID => return Err((EXIT_FAILED, message)),
                _ => {}
            }
        }
        if status.last_error.is_some() && status.last_error != last_said {
            eprintln!("still trying; the last attempt failed: {}", status.last_error.clone().unwrap_or_default());
            last_said = status.last_error.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            return Err((
                EXIT_FAILED,
                format!(
                    "timed out after {} waiting for the controller to rotate {namespace}/{name}. The request stays on the object ({ROTATE_REQUESTED_AT}: {value}) and is carried out once, when the controller (or the next CronJob pass) gets to it: check that it runs, `entra-rotator status {name} -n {namespace}`, and its log",
                    args.timeout
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
