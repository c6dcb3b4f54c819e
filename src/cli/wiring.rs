//! Turns a validated configuration into engine rotations wired to the production
//! adapters, and runs them (`entra-rotator run`).

use crate::report::{error_line, outcome_line};
use super::{EXIT_FAILED, EXIT_INVALID_INPUT};
use crate::assembly::{kube_client, resolve_credential_at, Assembly, AssemblyError, SignInAs};
use crate::config::{Config, TargetConfig};
use crate::engine::events::LogSink;
use crate::engine::ports::{RevocationGate, SystemClock};
use crate::engine::{Engine, Rotation, RunOptions};
use futures::StreamExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// `entra-rotator run`: loads the file, wires every rotation, runs each once, up to
/// `concurrency` at a time; prints one line per rotation in configuration order.
pub async fn run_config_file(path: &Path, dry_run: bool, force: bool, only: &[String], concurrency: usize, lock: &Path) -> ExitCode {
    let config = match load_choosing(path, only) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Held until the run ends; a dry run changes nothing and may look while another runs.
    let _lock = if dry_run {
        None
    } else {
        match super::run_lock::acquire(lock) {
            Ok(lock) => Some(lock),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    };
    let rotations = match wire(&config).await {
        Ok(rotations) => rotations,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let engine = Engine::new(Arc::new(SystemClock), Arc::new(LogSink));
    let options = RunOptions { force, dry_run };
    let chosen = rotations.iter().filter(|r| only.is_empty() || only.contains(&r.name));
    let mut results = futures::stream::iter(chosen)
        .map(|rotation| {
            let engine = &engine;
            async move { (rotation, engine.run(rotation, options).await) }
        })
        .buffered(concurrency.max(1));
    let mut failed = 0;
    while let Some((rotation, result)) = results.next().await {
        match result {
            Ok(outcome) => println!("{}", outcome_line(&rotation.name, &outcome)),
            Err(error) => {
                failed += 1;
                println!("{}", error_line(&rotation.name, &error));
            }
        }
    }
    if failed > 0 { ExitCode::from(EXIT_FAILED) } else { ExitCode::SUCCESS }
}

/// The configuration at `path`, every name of `--only` checked against it; the error is
/// printed and its exit code returned.
pub(crate) fn load_choosing(path: &Path, only: &[String]) -> Result<Config, ExitCode> {
    let config = Config::load(path).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(EXIT_INVALID_INPUT)
    })?;
    if let Some(unknown) = only.iter().find(|name| !config.rotations.iter().any(|r| &r.name == *name)) {
        eprintln!("error: --only {unknown}: no rotation of that name in {}", path.display());
        return Err(ExitCode::from(EXIT_INVALID_INPUT));
    }
    Ok(config)
}

/// Builds every configured rotation with the production adapters.
pub async fn wire(config: &Config) -> Result<Vec<Rotation>, AssemblyError> {
    Ok(assemble(config).await?.1)
}

/// The clients of a configuration, and its rotations (in the file's order) built with them.
pub(crate) async fn assemble(config: &Config) -> Result<(Assembly, Vec<Rotation>), AssemblyError> {
    let needs_kubernetes = config
        .rotations
        .iter()
        .flat_map(|r| &r.targets)
        .any(|t| matches!(t, TargetConfig::KubernetesSecret(_)));
    let kube = if needs_kubernetes { Some(kube_client(&config.kubernetes).await?) } else { None };
    let assembly = Assembly::new(&config.azure, &config.tls, kube)?;
    let rotations = rotations(&assembly, config)?;
    Ok((assembly, rotations))
}

fn rotations(assembly: &Assembly, config: &Config) -> Result<Vec<Rotation>, AssemblyError> {
    let identities = config
        .identities
        .iter()
        .enumerate()
        .map(|(index, identity)| {
            let at = format!("identities[{index}] ({}).credential", identity.name);
            Ok((identity.name.as_str(), (resolve_credential_at(&identity.credential, &at)?, at)))
        })
        .collect::<Result<std::collections::HashMap<_, _>, AssemblyError>>()?;
    config
        .rotations
        .iter()
        .map(|rotation| {
            // The configuration was validated: every identity: names an entry.
            let sign_in_as = || {
                rotation.identity.as_deref().and_then(|name| identities.get(name)).map(|(credential, at)| SignInAs {
                    name: at,
                    version: "",
                    credential,
                })
            };
            let mut built = assembly.rotation_as(rotation, None, sign_in_as())?;
            built.revocation_gate = assembly.sign_in_gate_as(rotation, sign_in_as().as_ref())?.map(|gate| gate as Arc<dyn RevocationGate>);
            Ok(built)
        })
        .collect()
}
