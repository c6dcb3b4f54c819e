//! `entra-rotator doctor`: a preflight that changes nothing, for the rotations of a
//! configuration file (`--config`) or the ClientSecretRotations of a cluster (`--namespace`,
//! `--all-namespaces`, as the CronJob pass sees them: the RotationPolicy and the identity
//! each names are decided first). For each rotation, a checklist of what its next run needs: Microsoft Graph signs the rotator in
//! and reads the application; the rotator owns it (without that, `addPassword` is refused
//! under `Application.ReadWrite.OwnedBy`); every store can be read; the secret stored now
//! still authenticates at the relay (the handshake: no mail, no quota) and has not expired;
//! and the permissions the rotator needs, listed. Exit 0 only when every check passed.
//!
//! Writing is not tried: neither Key Vault nor a Secret lets the rotator ask "could I
//! write?" without writing, so a missing write permission shows only at the first run.

use super::{EXIT_FAILED, EXIT_INVALID_INPUT};
use crate::adapters::graph::ListScope;
use crate::assembly::{resolve_credential, Assembly};
use crate::config::{RotationConfig, TargetConfig};
use crate::domain::Application;
use crate::engine::Rotation;
use crate::operator::crd::ClientSecretRotation;
use crate::operator::reconcile::{prepare, Unprepared};
use chrono::Utc;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use uuid::Uuid;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "namespace", "all_namespaces"])))]
pub struct DoctorArgs {
    /// The configuration file `entra-rotator run --config` reads.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The ClientSecretRotations of this namespace (the kubeconfig's cluster).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The ClientSecretRotations of every namespace.
    #[arg(long)]
    pub all_namespaces: bool,
    /// With --namespace/--all-namespaces: the controller's settings (the chart's azure.yaml).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub azure_config: Option<PathBuf>,
    #[command(flatten)]
    pub relays: super::operator_cli::RelayArgs,
    /// Check only these rotations (repeatable; a file's names, or NAMESPACE/NAME); default all.
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,
}

/// How many owned applications are read per page when looking for ownership.
const OWNED_PAGE: u16 = 100;

enum Verdict {
    Ok,
    Fail,
    /// Could not be checked here; not a failure, says why.
    Skipped,
}

struct Check {
    verdict: Verdict,
    text: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skip",
        };
        write!(f, "  [{mark}] {}", self.text)
    }
}

fn ok(text: String) -> Check {
    Check { verdict: Verdict::Ok, text }
}

fn fail(text: String) -> Check {
    Check { verdict: Verdict::Fail, text }
}

fn skipped(text: String) -> Check {
    Check { verdict: Verdict::Skipped, text }
}

pub async fn run(args: DoctorArgs) -> ExitCode {
    match &args.config {
        Some(path) => file(path, &args.only).await,
        None => cluster(args).await,
    }
}

/// The rotations of a configuration file.
async fn file(path: &std::path::Path, only: &[String]) -> ExitCode {
    let config = match super::wiring::load_choosing(path, only) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (assembly, rotations) = match super::wiring::assemble(&config).await {
        Ok(built) => built,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let own = own_client_id(&config.azure.credential);
    let mut report = Report::default();
    for (rotation_config, rotation) in config.rotations.iter().zip(&rotations) {
        if !only.is_empty() && !only.contains(&rotation_config.name) {
            continue;
        }
        // A rotation that names another identity signs in as that one; whose ownership to
        // look up is then the identity's, not the rotator's own.
        let signer = match &rotation_config.identity {
            None => Signer::Own(own),
            Some(identity) => Signer::Identity(identity),
        };
        let checks = checks(&assembly, rotation, signer).await;
        report.rotation(&rotation_config.name, &rotation_config.application.client_id, &checks, &permissions(rotation_config));
    }
    report.finish()
}

/// The ClientSecretRotations of a namespace or of all, each prepared as the CronJob pass
/// prepares it: what a RotationPolicy or its identity refuses is a failing check.
async fn cluster(args: DoctorArgs) -> ExitCode {
    let namespace = args.namespace.as_deref();
    let (settings, ctx) = match super::operator_cli::pass_context(namespace, args.azure_config.as_deref(), args.relays).await {
        Ok(built) => built,
        Err(code) => return code,
    };
    let api: kube::Api<ClientSecretRotation> = match namespace {
        Some(namespace) => kube::Api::namespaced(ctx.client.clone(), namespace),
        None => kube::Api::all(ctx.client.clone()),
    };
    let mut objects = match api.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(error) => {
            eprintln!("error: cannot list ClientSecretRotations: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    objects.sort_by_key(ClientSecretRotation::rotation_name);
    let own = own_client_id(&settings.azure.credential);
    let mut report = Report::default();
    for object in objects.iter().filter(|o| args.only.is_empty() || args.only.contains(&o.rotation_name())) {
        let client_id = object.spec.application.client_id.clone();
        let (checks, needs) = match prepare(object, &ctx).await {
            Ok(prepared) => {
                let signer = match &object.spec.identity_ref {
                    None => Signer::Own(own),
                    Some(identity) => Signer::Identity(&identity.name),
                };
                let needs = object.to_rotation_config().map(|config| permissions(&config)).unwrap_or_default();
                (checks(&ctx.assembly, &prepared.rotation, signer).await, needs)
            }
            Err(Unprepared::Refused { reason, denial }) => (vec![fail(format!("{reason}: {}", denial.message))], String::new()),
            Err(Unprepared::Invalid(problems)) => (vec![fail(format!("the spec is invalid: {problems}"))], String::new()),
        };
        report.rotation(&object.rotation_name(), &client_id, &checks, &needs);
    }
    if report.checked == 0 {
        println!("no ClientSecretRotation found");
    }
    report.finish()
}

/// The printed checklist and its verdict.
#[derive(Default)]
struct Report {
    checked: usize,
    not_ready: Vec<String>,
}

impl Report {
    fn rotation(&mut self, name: &str, client_id: &str, checks: &[Check], needs: &str) {
        self.checked += 1;
        println!("{name} (application {client_id})");
        for check in checks {
            println!("{check}");
        }
        if !needs.is_empty() {
            println!("  needs: {needs}");
        }
        if checks.iter().any(|c| matches!(c.verdict, Verdict::Fail)) {
            self.not_ready.push(name.to_string());
        }
    }

    fn finish(self) -> ExitCode {
        if self.not_ready.is_empty() {
            println!("doctor: {} rotation(s) ready; nothing was changed", self.checked);
            ExitCode::SUCCESS
        } else {
            println!(
                "doctor: {} of {} rotation(s) not ready ({}): fix the FAIL lines above; nothing was changed",
                self.not_ready.len(),
                self.checked,
                self.not_ready.join(", ")
            );
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Who signs in for a rotation: the rotator (its client id, when its sign-in says it) or
/// a named identity of the file.
enum Signer<'a> {
    Own(Option<Uuid>),
    Identity(&'a str),
}

/// The rotator's own client id, when its sign-in says it.
fn own_client_id(credential: &crate::config::CredentialConfig) -> Option<Uuid> {
    resolve_credential(credential).ok()?.client_id()?.parse().ok()
}

async fn checks(assembly: &Assembly, rotation: &Rotation, signer: Signer<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let app = match rotation.directory.application(&rotation.app).await {
        Ok(app) => {
            checks.push(ok(format!(
                "Microsoft Graph: the rotator signs in and reads application {} ({:?}, {} client secret(s))",
                app.app_id,
                app.display_name,
                app.password_credentials.len()
            )));
            Some(app)
        }
        Err(error) => {
            checks.push(fail(format!("Microsoft Graph: {error}")));
            None
        }
    };
    if let Some(app) = &app {
        checks.push(match signer {
            Signer::Own(rotator) => ownership(assembly, app, rotator).await,
            Signer::Identity(name) => skipped(format!("ownership: this rotation signs in as identity {name:?}, which must own the application for addPassword; doctor looks up the rotator's own ownership only")),
        });
    }
    let mut stored = Vec::new();
    for store in &rotation.stores {
        match store.read().await {
            Ok(Some(secret)) => {
                let holds = secret.key_id.map_or_else(|| "a value entra-rotator did not write".to_string(), |id| format!("keyId {id}"));
                checks.push(ok(format!("{}: readable, holds {holds}", store.describe())));
                stored.push(secret);
            }
            Ok(None) => checks.push(ok(format!("{}: readable, empty (the first run writes it)", store.describe()))),
            Err(error) => checks.push(fail(error.to_string())),
        }
    }
    let current = stored.iter().find(|s| s.key_id.is_some());
    if let (Some(app), Some(secret)) = (&app, current) {
        checks.push(expiry(app, secret.key_id.unwrap_or_default()));
    }
    match (&rotation.verifier, current) {
        (None, _) => checks.push(skipped("verification is off for this rotation".into())),
        (Some(verifier), None) => checks.push(skipped(format!(
            "{}: nothing of ours is stored yet; the first run mints a secret and proves it there",
            verifier.describe()
        ))),
        (Some(verifier), Some(secret)) => match verifier.recheck(&rotation.app, &secret.value).await {
            Ok(()) => checks.push(ok(format!(
                "{}: the stored secret (keyId {}) authenticates (handshake: no mail sent)",
                verifier.describe(),
                secret.key_id.unwrap_or_default()
            ))),
            Err(error) => checks.push(fail(format!("handshake with the stored secret (keyId {}): {error}", secret.key_id.unwrap_or_default()))),
        },
    }
    checks
}

async fn ownership(assembly: &Assembly, app: &Application, rotator: Option<Uuid>) -> Check {
    let Some(rotator) = rotator else {
        return skipped(
            "ownership: the rotator's sign-in does not say its client id, so what it owns cannot be listed; it must be an owner of the application for addPassword".into(),
        );
    };
    let graph = assembly.graph();
    let mut pages = match graph.list_applications(&ListScope::OwnedBy { client_id: rotator }, OWNED_PAGE) {
        Ok(pages) => pages,
        Err(error) => return fail(format!("ownership: {error}")),
    };
    loop {
        match pages.next_page().await {
            Ok(Some(page)) if page.iter().any(|owned| owned.object_id == app.object_id) => {
                return ok(format!("ownership: the rotator (client {rotator}) owns the application, so addPassword is allowed"));
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                return fail(format!(
                    "ownership: the rotator (client {rotator}) is not an owner of application {} ({:?}); under Application.ReadWrite.OwnedBy, addPassword would be refused. Add it: `az ad app owner add --id {} --owner-object-id <object id of the rotator's service principal>`",
                    app.app_id, app.display_name, app.app_id
                ));
            }
            Err(error) => return fail(format!("ownership: {error}")),
        }
    }
}

/// A stored secret past its endDateTime no longer signs in anywhere: consumers are broken
/// now, whatever the next run does.
fn expiry(app: &Application, key_id: Uuid) -> Check {
    let end = |credential: &crate::domain::PasswordCredential| credential.end.map_or_else(|| "no end date".to_string(), |end| end.to_rfc3339());
    match app.credential(key_id) {
        Some(credential) if credential.end.is_some_and(|end| end <= Utc::now()) => fail(format!(
            "the stored secret (keyId {key_id}) expired at {}: consumers reading it cannot sign in. Run `entra-rotator run --config … --force` to rotate now",
            end(credential)
        )),
        Some(credential) => ok(format!("the stored secret (keyId {key_id}) is live until {}", end(credential))),
        None => fail(format!(
            "the stored keyId {key_id} is not a credential of the application any more (removed by hand?): consumers reading it cannot sign in. Run `entra-rotator run --config … --force`"
        )),
    }
}

/// What the rotator needs for this rotation, in the words of the places that grant it.
fn permissions(config: &RotationConfig) -> String {
    let mut needs = vec!["Graph application permission Application.ReadWrite.OwnedBy (admin consent) and ownership of the application".to_string()];
    if config.require_unused_for.is_some() {
        needs.push("AuditLog.Read.All (requireUnusedFor)".into());
    }
    for target in &config.targets {
        needs.push(match target {
            TargetConfig::KeyVault(vault) => format!("Key Vault Secrets Officer on {} (secret get and set)", vault.vault_url),
            TargetConfig::KubernetesSecret(secret) => format!("Kubernetes get, create, patch on Secret {}/{}", secret.namespace, secret.name),
        });
    }
    needs.join("; ")
}
