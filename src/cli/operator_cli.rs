//! `entra-rotator controller` and `entra-rotator run --namespace/--all-namespaces`.

use super::{EXIT_FAILED, EXIT_INVALID_INPUT};
use crate::config::duration::HumanDuration;
use crate::config::ServiceSettings;
use crate::operator::controller::{self, ControllerSettings};
use crate::operator::crd::DEFAULT_ORPHAN_GRACE;
use crate::operator::authorization::AllowedRelay;
use crate::operator::reconcile::Context;
use crate::operator::{context, pass, Scope, Timings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// The azure: and tls: sections (default: public cloud, workload identity).
    #[arg(long)]
    azure_config: Option<PathBuf>,
    /// Look at every rotation at least this often (notices secrets changed out of band);
    /// 10s to 7d.
    #[arg(long, default_value = "1h", value_parser = parse_drift_interval)]
    drift_interval: Duration,
    /// How long a secret minted but not yet stored (being verified) is left to the replica
    /// that minted it before it counts as lost and is removed; keep it above the Lease
    /// duration (15s); at most 1d.
    #[arg(long, default_value = "1m", value_parser = parse_orphan_grace)]
    orphan_grace_period: Duration,
    /// How soon a revocation that waits for consumers is looked at again when no pod
    /// changes (the controller watches the pods of such namespaces and looks at once when
    /// one does); 10s to 1h.
    #[arg(long, default_value = "30s", value_parser = parse_consumer_recheck)]
    consumer_recheck: Duration,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, default_value = "entra-rotator-leader")]
    lease_name: String,
    /// This replica's name in the Lease and in Events.
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    identity: String,
    /// Address of /healthz and /readyz, and of /metrics unless --metrics-addr is given.
    #[arg(long, default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// Serve /metrics here instead, apart from the probes: the metrics list every
    /// application and keyId the controller rotates, e.g. 127.0.0.1:9090 for a scraping
    /// sidecar only (the chart keeps them on the probes' port behind its NetworkPolicy).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Reconciles in progress at once (1 to 256). Graph calls are bounded separately, by
    /// azure.maxConcurrentGraphRequests.
    #[arg(long, default_value_t = super::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Read the drift checks of the first pass after a start in batches (Graph `$batch`, Key
    /// Vault listings); `false` reads each object's when its reconcile comes, as before
    /// (for comparing, or behind a proxy that mishandles `$batch`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    batch_drift_checks: bool,
    /// With batched drift checks, the controller keeps its applications' credentials in
    /// step through Graph's delta query; a drift check that finds them older than this
    /// asks Graph for the changes first. Shorter notices out-of-band changes sooner and
    /// costs more delta requests; 1s to 5m.
    #[arg(long, default_value = "5m", value_parser = parse_delta_refresh)]
    delta_refresh: Duration,
    #[command(flatten)]
    relays: RelayArgs,
}

/// The relays every namespace may verify through (the controller and the CronJob pass).
#[derive(clap::Args)]
pub struct RelayArgs {
    /// Besides smtp.azurecomm.net and smtp.office365.com, an SMTP relay every namespace may
    /// verify through: HOST (any port) or HOST:PORT; repeatable, or comma-separated in the
    /// variable. It receives freshly minted secrets in AUTH: list only relays you trust.
    /// Per team: spec.verificationHosts of a RotationPolicy.
    #[arg(long = "allow-smtp-host", value_name = "HOST[:PORT]", env = "ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", value_delimiter = ',', value_parser = AllowedRelay::parse)]
    allowed_relays: Vec<AllowedRelay>,
}

/// The rotator's own namespace: the one watched, else the pod's (`POD_NAMESPACE`, which
/// the chart sets), else the client's default.
fn scope(namespace: Option<&str>, relays: RelayArgs) -> Scope {
    let home_namespace = namespace.map(str::to_string).or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()));
    Scope { home_namespace, allowed_relays: relays.allowed_relays }
}

/// Bounded: the drift interval becomes a requeue delay, and a timer past the clock's range
/// (`300000y`) panics the controller.
fn parse_drift_interval(text: &str) -> Result<Duration, String> {
    parse_within(text, "--drift-interval", HumanDuration::seconds(10), HumanDuration::days(7))
}

/// Bounded by how old an answer a drift check may decide from (`FRESH_FOR`).
fn parse_delta_refresh(text: &str) -> Result<Duration, String> {
    parse_within(text, "--delta-refresh", HumanDuration::seconds(1), HumanDuration::seconds(300))
}

/// Bounded: it is added to dates; a lost secret should not wait longer than a day.
fn parse_orphan_grace(text: &str) -> Result<Duration, String> {
    parse_within(text, "--orphan-grace-period", HumanDuration::seconds(1), HumanDuration::days(1))
}

/// Bounded: a hold is looked at again at least hourly, and not more often than every 10s.
fn parse_consumer_recheck(text: &str) -> Result<Duration, String> {
    parse_within(text, "--consumer-recheck", HumanDuration::seconds(10), HumanDuration::seconds(3600))
}

fn parse_within(text: &str, flag: &str, min: HumanDuration, max: HumanDuration) -> Result<Duration, String> {
    let duration = HumanDuration::parse(text)?;
    let mut problems = Vec::new();
    duration.check_range(flag, min, max, "see --help", &mut problems);
    problems.pop().map_or(Ok(duration.0), Err)
}

fn default_identity() -> String {
    format!("entra-rotator-{}", uuid::Uuid::new_v4().simple())
}

fn load_settings(path: Option<&Path>) -> Result<ServiceSettings, ExitCode> {
    ServiceSettings::load(path).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(EXIT_INVALID_INPUT)
    })
}

pub async fn run_controller(args: ControllerArgs) -> ExitCode {
    let settings = match load_settings(args.azure_config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let timings = Timings { drift_interval: args.drift_interval, orphan_grace: args.orphan_grace_period, consumer_recheck: args.consumer_recheck };
    let scope = scope(args.namespace.as_deref(), args.relays);
    let ctx = match context(&settings, &args.identity, timings, scope).await {
        Ok(ctx) => Arc::new(ctx),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let controller_settings = ControllerSettings {
        namespace: args.namespace,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity: args.identity,
        health_addr: args.health_addr,
        metrics_addr: args.metrics_addr,
        concurrency: args.concurrency,
        batch_drift_checks: args.batch_drift_checks,
        delta_refresh: args.delta_refresh,
    };
    match controller::run(ctx, controller_settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The settings and the operator context of a one-shot look at the cluster (the CronJob
/// pass, `doctor`).
pub async fn pass_context(namespace: Option<&str>, azure_config: Option<&Path>, relays: RelayArgs) -> Result<(ServiceSettings, Context), ExitCode> {
    let settings = load_settings(azure_config)?;
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "entra-rotator-run".into());
    let timings = Timings {
        drift_interval: Duration::from_secs(3600),
        orphan_grace: DEFAULT_ORPHAN_GRACE,
        consumer_recheck: crate::operator::consumers::RECHECK.to_std().unwrap_or_default(),
    };
    match context(&settings, &instance, timings, scope(namespace, relays)).await {
        Ok(ctx) => Ok((settings, ctx)),
        Err(error) => {
            eprintln!("error: {error}");
            Err(ExitCode::from(EXIT_INVALID_INPUT))
        }
    }
}

pub async fn run_pass(namespace: Option<&str>, azure_config: Option<&Path>, concurrency: usize, relays: RelayArgs) -> ExitCode {
    let ctx = match pass_context(namespace, azure_config, relays).await {
        Ok((_, ctx)) => ctx,
        Err(code) => return code,
    };
    match pass::run_pass(&ctx, namespace, concurrency).await {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            if report.lines.is_empty() {
                println!("no ClientSecretRotation found");
            }
            if report.failed > 0 { ExitCode::from(EXIT_FAILED) } else { ExitCode::SUCCESS }
        }
        Err(error) => {
            eprintln!("error: cannot list ClientSecretRotations: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_durations_past_their_range_are_refused_naming_the_flag() {
        assert_eq!(parse_drift_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_orphan_grace("3s"), Ok(Duration::from_secs(3)));
        let refused = parse_drift_interval("300000y").unwrap_err();
        assert_eq!(refused, "--drift-interval: 300000y is outside 10s..7d; see --help");
        let refused = parse_orphan_grace("300000y").unwrap_err();
        assert_eq!(refused, "--orphan-grace-period: 300000y is outside 1s..1d; see --help");
        assert!(parse_drift_interval("0s").is_err());
    }
}
