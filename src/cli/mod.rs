//! The command line, a face over everything below it: `run` (a configuration file, or one
//! CronJob pass), `controller`, `scan`, `smtp-test`, `crd` and, with the `demo` feature,
//! `demo` (the whole loop against the local stand-ins) and `playground` (the stand-ins and a
//! controller left running for trying things by hand). Nothing under `src/` imports it.

#[cfg(feature = "demo")]
mod demo;
mod doctor;
#[cfg(feature = "demo")]
mod playground;
mod operator_cli;
mod rotate;
mod run_lock;
mod scan;
mod smtp_test;
mod status;
mod wiring;

use clap::{Parser, Subcommand, ValueEnum};
use operator_cli::ControllerArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "entra-rotator", version, about = "Rotates the Entra ID client secrets behind ACS SMTP credentials, safely")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, e.g. `info` or `entra_rotator=debug` (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Parse and check the command line, then exit 0 without doing anything (for checking
    /// the arguments a chart or a unit file passes; exit 2 names what is wrong).
    #[arg(long, global = true, hide = true)]
    check_args: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Rotate every application that is due, once, and exit: those of a configuration
    /// file (machines without Kubernetes), or the ClientSecretRotations of a namespace
    /// (CronJob mode, status written like the controller does).
    ///
    /// Exit code 0 when every rotation succeeded or had nothing to do, 1 when any failed,
    /// 2 when the configuration is invalid (then nothing was changed).
    #[command(group(clap::ArgGroup::new("source").required(true).args(["config", "namespace", "all_namespaces"])))]
    Run {
        /// The YAML configuration (see examples/rotator.yaml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// CronJob mode: the ClientSecretRotations of this namespace.
        #[arg(long, short)]
        namespace: Option<String>,
        /// CronJob mode: the ClientSecretRotations of every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
        /// CronJob mode: the azure: and tls: sections (default: public cloud, workload identity).
        #[arg(long, conflicts_with = "config")]
        azure_config: Option<PathBuf>,
        /// Print what would happen and change nothing (configuration file only).
        #[arg(long, requires = "config")]
        dry_run: bool,
        /// Rotate now even if the current secret is far from expiry (configuration file only).
        #[arg(long, requires = "config")]
        force: bool,
        /// Only the rotations with these names (repeatable; configuration file only).
        #[arg(long = "only", value_name = "NAME", requires = "config")]
        only: Vec<String>,
        /// The lock that keeps two runs of one configuration apart (configuration file only;
        /// default `.<file name>.lock` beside it). A run that finds it held says by whom and
        /// exits 1 without doing anything; dry runs take no lock.
        #[arg(long, value_name = "PATH", requires = "config")]
        lock_file: Option<PathBuf>,
        /// Rotations in progress at once (1 to 256). Graph calls are bounded separately, by
        /// azure.maxConcurrentGraphRequests; results are printed in configuration order.
        #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// CronJob mode only.
        #[command(flatten)]
        relays: operator_cli::RelayArgs,
    },
    /// Run the Kubernetes controller: reconcile ClientSecretRotations, with leader election.
    Controller(ControllerArgs),
    /// Run the whole loop twice on local stand-ins of Graph, Key Vault, Kubernetes and the
    /// ACS SMTP relay, and print the timeline.
    #[cfg(feature = "demo")]
    Demo,
    /// Start the local stand-ins and a controller against them and keep them running, with
    /// a kubeconfig, a CA, a configuration file and a ClientSecretRotation in DIR, so you
    /// can try kubectl, `run --config`, `smtp-test` and swaks by hand. Ctrl-C stops it.
    #[cfg(feature = "demo")]
    Playground {
        /// Where the files are written (created if missing; left in place afterwards).
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Ask for a rotation of a ClientSecretRotation now, and wait until it is done.
    ///
    /// Sets the annotation entra-rotator.io/rotate-requested-at to the current time; the
    /// controller (or the next CronJob pass) rotates once per value and records it in
    /// status. Needs patch and get on clientsecretrotations in the namespace. Exit codes:
    /// 0 done (or recorded, with --no-wait), 1 it failed or timed out, 2 no such object.
    Rotate(rotate::RotateArgs),
    /// Show a ClientSecretRotation's whole story: conditions, current and old keyIds with
    /// expiry, the consumers and whether each holds the current value, the latest Events,
    /// and what the controller does next and when.
    ///
    /// Reads the object and its Events (get on clientsecretrotations, list on
    /// events.k8s.io events); never a Secret. Exit codes: 0 shown, 1 Kubernetes could not
    /// be reached, 2 no such object.
    Status(status::StatusArgs),
    /// Print a CustomResourceDefinition (YAML), generated from the Rust types; `crds/`
    /// holds the same text.
    Crd {
        /// ClientSecretRotation (namespaced, what to rotate), RotationPolicy
        /// (cluster-scoped, who may rotate what), RotatorIdentity or ClusterRotatorIdentity
        /// (how to sign in to Entra, for one namespace or the namespaces an administrator chooses).
        #[arg(long, default_value = "ClientSecretRotation", value_parser = ["ClientSecretRotation", "RotationPolicy", "RotatorIdentity", "ClusterRotatorIdentity"])]
        kind: String,
    },
    /// Check, changing nothing, what each rotation needs (of a configuration file with
    /// --config, or the ClientSecretRotations of --namespace/--all-namespaces, after their
    /// RotationPolicy and identity): Graph signs the rotator in and reads the application, the
    /// rotator owns it (so addPassword is allowed), every store can be read, and the secret
    /// stored now has not expired and still authenticates at the relay (a handshake: no mail
    /// sent). Lists the permissions needed.
    ///
    /// Exit codes: 0 every check passed, 1 a check failed (the FAIL lines say what to fix),
    /// 2 the configuration is invalid.
    Doctor(doctor::DoctorArgs),
    /// List every app registration's password and certificate credentials with expiry and
    /// days left (table, JSON or CSV).
    ///
    /// Reads Microsoft Graph with the application permission Application.Read.All (for
    /// --owned, Application.ReadWrite.OwnedBy is enough), page by page, honouring throttling.
    /// Sign in with --config (the azure: and tls: sections of a `run` file) or the flags;
    /// without --client-secret-*, --managed-identity or --azure-cli, workload identity
    /// (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE) is used.
    ///
    /// Exit codes: 0 nothing expiring (or no --fail-within), 1 a credential expires within
    /// --fail-within (or has expired), 2 bad input or sign-in/permission refused, 3 the scan
    /// could not finish (the output is incomplete).
    Scan(scan::ScanArgs),
    /// Diagnose an SMTP relay (Azure Communication Services): show its EHLO capabilities
    /// before and after STARTTLS, the TLS version and cipher suite, send one test mail, and
    /// explain a failure in words.
    ///
    /// The password (the Entra app's client secret) comes from --password-env,
    /// --password-file or a prompt without echo; it is never taken as a flag value and never
    /// printed. Exit codes: 0 the relay accepted the test mail, 1 it did not (the reason is
    /// printed), 2 bad input.
    SmtpTest(smtp_test::SmtpTestArgs),
    /// Print a shell completion script, e.g. `entra-rotator completions bash >
    /// /etc/bash_completion.d/entra-rotator` (zsh: into a directory of your fpath as
    /// `_entra-rotator`; fish: ~/.config/fish/completions/entra-rotator.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `entra-rotator man > /usr/local/share/man/man1/entra-rotator.1`.
    Man,
}

/// Rotations in progress at once unless `--concurrency` says otherwise (`run`, `controller`).
pub(crate) const DEFAULT_CONCURRENCY: u16 = 8;

/// Exit codes shared by the commands.
pub(crate) const EXIT_FAILED: u8 = 1;
pub(crate) const EXIT_INVALID_INPUT: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_args {
        return ExitCode::SUCCESS;
    }
    init_logging(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run { config: Some(config), dry_run, force, only, concurrency, lock_file, .. } => {
                let lock = lock_file.unwrap_or_else(|| run_lock::default_path(&config));
                wiring::run_config_file(&config, dry_run, force, &only, concurrency.into(), &lock).await
            }
            Command::Run { namespace, azure_config, concurrency, relays, .. } => {
                operator_cli::run_pass(namespace.as_deref(), azure_config.as_deref(), concurrency.into(), relays).await
            }
            Command::Controller(args) => operator_cli::run_controller(args).await,
            #[cfg(feature = "demo")]
            Command::Demo => demo::run().await,
            #[cfg(feature = "demo")]
            Command::Playground { dir } => playground::run(dir).await,
            Command::Rotate(args) => rotate::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Crd { kind } => {
                match kind.as_str() {
                    "RotationPolicy" => print!("{}", crate::operator::authorization::crd_yaml()),
                    "RotatorIdentity" => print!("{}", crate::operator::identity::crd_yaml(crate::operator::identity::IdentityKind::RotatorIdentity)),
                    "ClusterRotatorIdentity" => {
                        print!("{}", crate::operator::identity::crd_yaml(crate::operator::identity::IdentityKind::ClusterRotatorIdentity))
                    }
                    _ => print!("{}", crate::operator::crd::crd_yaml()),
                }
                ExitCode::SUCCESS
            }
            Command::Doctor(args) => doctor::run(args).await,
            Command::Scan(args) => scan::run(args).await,
            Command::SmtpTest(args) => smtp_test::run(args).await,
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "entra-rotator", &mut std::io::stdout());
                ExitCode::SUCCESS
            }
            Command::Man => match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: cannot write the man page: {error}");
                    ExitCode::from(EXIT_FAILED)
                }
            },
        }
    })
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org): log
    // files and collectors get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
