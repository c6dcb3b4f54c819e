//! `entra-rotator status NAME -n NAMESPACE` (cmctl status is the model): one object's
//! whole story from what Kubernetes holds: conditions, the current and pending keyIds,
//! the consumers and whether each holds the current value, the last Events, and what the
//! controller does next and when. Reads only the object and its Events; never a Secret.

use super::rotate::{client, explain};
use crate::operator::crd::{ClientSecretRotation, ClientSecretRotationStatus};
use crate::operator::status::{backoff, condition, conditions, parse_time};
use chrono::{DateTime, Utc};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use std::fmt::Write as _;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The ClientSecretRotation.
    name: String,
    #[arg(long, short, default_value = "default")]
    namespace: String,
    /// How many of the latest Events to show.
    #[arg(long, default_value_t = 10)]
    events: usize,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let (namespace, name) = (args.namespace.as_str(), args.name.as_str());
    let shown = async {
        let client = client().await?;
        let rotations: Api<ClientSecretRotation> = Api::namespaced(client.clone(), namespace);
        let object = rotations.get(name).await.map_err(|e| explain(e, "read", namespace, name))?;
        let events: Api<Event> = Api::namespaced(client, namespace);
        let selector = format!("regarding.kind=ClientSecretRotation,regarding.name={name}");
        // Events are secondary: a refusal is said in place of them.
        let events = events.list(&ListParams::default().fields(&selector)).await.map(|l| l.items).map_err(|e| e.to_string());
        Ok::<_, (u8, String)>(render(&object, events, args.events, Utc::now()))
    };
    match shown.await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `in 3d 4h` / `5m ago`, for a person reading it.
fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = at - now;
    let seconds = delta.num_seconds().unsigned_abs();
    let amount = match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    };
    if delta.num_seconds() >= 0 { format!("in {amount}") } else { format!("{amount} ago") }
}

/// The whole report, as printed.
pub fn render(object: &ClientSecretRotation, events: Result<Vec<Event>, String>, last: usize, now: DateTime<Utc>) -> String {
    let status = object.status.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "ClientSecretRotation {}", object.rotation_name());
    let _ = writeln!(out, "  application {} (tenant {})", object.spec.application.client_id, object.spec.application.tenant_id);

    let _ = writeln!(out, "Conditions:");
    if status.conditions.is_empty() {
        let _ = writeln!(out, "  none yet: the controller has not reconciled this object");
    }
    for c in &status.conditions {
        let _ = writeln!(out, "  {:<13} {:<5} {:<22} {}", c.type_, c.status, c.reason, c.message);
    }

    let _ = writeln!(out, "Secrets:");
    match &status.current_key_id {
        Some(key_id) => {
            let expires = parse_time(&status.not_after)
                .map(|at| format!("expires {} ({})", time(at), relative(at, now)))
                .unwrap_or_else(|| "expiry unknown".into());
            let verified = if status.verified_key_id.as_ref() == Some(key_id) { "verified" } else { "not verified yet" };
            let _ = writeln!(out, "  current  keyId {key_id}  {expires}, {verified}");
        }
        None => {
            let _ = writeln!(out, "  current  none stored yet");
        }
    }
    for key_id in &status.pending_revocation {
        // Written by controllers since oldSecrets; older ones recorded the keyIds alone.
        let expires = status
            .old_secrets
            .iter()
            .find(|old| &old.key_id == key_id)
            .and_then(|old| parse_time(&old.expires))
            .map(|at| format!("expires {} ({}), ", time(at), relative(at, now)))
            .unwrap_or_default();
        let _ = writeln!(out, "  old      keyId {key_id}  {expires}still live, awaiting revocation");
    }
    if let Some(unmanaged) = &status.unmanaged {
        let from = parse_time(&unmanaged.retire_from).map(|at| format!("{} ({})", time(at), relative(at, now)));
        for secret in &unmanaged.secrets {
            let expires = parse_time(&secret.expires).map(|at| format!("expires {}", time(at))).unwrap_or_else(|| "expiry unknown".into());
            let fate = match (&secret.held_by, &from) {
                (Some(held), _) => format!("kept live: {held}"),
                (None, Some(from)) => format!("retired from {from} (retireUnmanaged)"),
                (None, None) => "not retired".into(),
            };
            let _ = writeln!(out, "  unmanaged keyId {} {}  {expires}, {fate}", secret.key_id, display(&secret.display_name));
        }
        for secret in &unmanaged.retired {
            let _ = writeln!(out, "  retired  keyId {} {}  removed {} (retireUnmanaged)", secret.key_id, display(&secret.display_name), secret.retired_at);
        }
    }
    if let Some(request) = &status.rotate_request {
        let _ = writeln!(
            out,
            "  rotate request {} {}: {}",
            request.requested_at,
            request.state,
            request.message.as_deref().unwrap_or_default()
        );
    }

    if let Some(consumers) = &status.consumers {
        let written = consumers.secret_written_time.as_deref().map(|t| format!(", Secret written {t}")).unwrap_or_default();
        let _ = writeln!(out, "Consumers (should hold keyId {}{written}):", consumers.key_id);
        if consumers.pods.is_empty() && consumers.workloads.is_empty() {
            let _ = writeln!(out, "  no pod in the namespace reads the Secrets");
        }
        for pod in &consumers.pods {
            let holds = if pod.holds_new_value { "holds the current value" } else { "MAY HOLD AN OLD VALUE" };
            let _ = writeln!(out, "  pod {:<40} {:<14} {holds}", pod.name, pod.reads.join(","));
        }
        for workload in &consumers.workloads {
            let state = if workload.rolled_out { "rolled out".to_string() } else { format!("ROLL-OUT NOT FINISHED: {}", workload.detail) };
            let _ = writeln!(out, "  {:<44} {state}", workload.name);
        }
    }

    let _ = writeln!(out, "Next:");
    let _ = writeln!(out, "  {}", next_step(object, &status, now));

    let _ = writeln!(out, "Events (latest {last}):");
    match events {
        Ok(mut events) => {
            events.sort_by_key(event_time);
            let skip = events.len().saturating_sub(last);
            if events.is_empty() {
                let _ = writeln!(out, "  none");
            }
            for event in &events[skip..] {
                let at = event_time(event).map(time).unwrap_or_default();
                let count = event.series.as_ref().map(|s| format!(" (x{})", s.count)).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {at} {:<7} {:<22} {}{count}",
                    event.type_.as_deref().unwrap_or_default(),
                    event.reason.as_deref().unwrap_or_default(),
                    event.note.as_deref().unwrap_or_default()
                );
            }
        }
        Err(problem) => {
            let _ = writeln!(out, "  could not list them: {problem}");
        }
    }
    out
}

/// A displayName as a person reads it: quoted, as it may hold anything.
fn display(name: &Option<String>) -> String {
    name.as_deref().map(|name| format!("{:?}", crate::operator::status::one_line(name))).unwrap_or_else(|| "(no displayName)".into())
}

fn event_time(event: &Event) -> Option<DateTime<Utc>> {
    let micro = event.series.as_ref().map(|s| &s.last_observed_time.0).or(event.event_time.as_ref().map(|t| &t.0))?;
    DateTime::from_timestamp(micro.as_second(), 0)
}

/// What the controller will do next, and when, from the status it wrote.
fn next_step(object: &ClientSecretRotation, status: &ClientSecretRotationStatus, now: DateTime<Utc>) -> String {
    if object.spec.suspend {
        return "nothing: spec.suspend is true (status and alerts continue)".into();
    }
    if status.rotate_request.as_ref().is_some_and(|r| r.state == crate::operator::rotate_request::PENDING) {
        return "rotate, as requested, at its next look".into();
    }
    if condition(status, conditions::DEGRADED).is_some_and(|c| c.status == "True") {
        let retry = parse_time(&status.last_failure_time)
            .and_then(|at| chrono::Duration::from_std(backoff(status.failed_attempts)).ok().map(|b| at + b))
            .map(|at| format!("{} ({})", time(at), relative(at, now)))
            .unwrap_or_else(|| "soon".into());
        return format!(
            "retry after {} failed attempt(s) at {retry}; last error: {}",
            status.failed_attempts,
            status.last_error.as_deref().unwrap_or_default()
        );
    }
    if let Some(consumers) = status.consumers.as_ref().filter(|c| c.waiting_since.is_some()) {
        return format!(
            "revoke {} once every consumer holds keyId {} (the controller looks again when a pod of the namespace changes, and every 30s by default: --consumer-recheck); waiting since {}, consumerWaitTimeout {}{}",
            status.pending_revocation.join(", "),
            consumers.key_id,
            consumers.waiting_since.as_deref().unwrap_or_default(),
            object.spec.consumer_wait_timeout,
            if object.spec.revoke_when_consumers_stuck { ", then revoked anyway (revokeWhenConsumersStuck)" } else { ", after which it alerts and keeps waiting" }
        );
    }
    if let (false, Some(at)) = (status.pending_revocation.is_empty(), parse_time(&status.revoke_after)) {
        return format!("revoke {} at {} ({}), after the grace period and a re-verification", status.pending_revocation.join(", "), time(at), relative(at, now));
    }
    match parse_time(&status.renewal_time) {
        Some(at) => format!("rotate at {} ({})", time(at), relative(at, now)),
        None => "reconcile: nothing is known about this rotation yet".into(),
    }
}
