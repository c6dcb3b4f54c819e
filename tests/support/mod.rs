//! Shared by the safety tests (`crash_matrix`, `faults`, `hostile_input`): drives the real
//! `entra-rotator` binary as a child process against a [`Scenario`], waits on the
//! stand-ins' request counts to know where the child is blocked, checks the safety
//! invariants, and keeps every byte the children printed for the secret-hygiene check.
//!
//! Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod hostile_smtp;

use base64::Engine as _;
use entra_rotator_standins::faults::Hold;
use entra_rotator_standins::graph::ROUTE_REMOVE_PASSWORD;
use entra_rotator_standins::scenario::{
    ROTATION, SECRET_NAME, SECRET_NAMESPACE, Scenario, VAULT_SECRET,
};
use entra_rotator_standins::tenant::AuthFailure;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a stand-in holds a request the test wants the child blocked on: far longer
/// than any test waits, so the child is always killed while still waiting.
pub const HOLD: Duration = Duration::from_secs(120);
/// How long to wait for a child to reach a point or to finish before declaring it stuck.
const PATIENCE: Duration = Duration::from_secs(60);

/// The Kubernetes Secret key that holds the value (the scenario's `{{secret}}` key).
pub const PASSWORD_KEY: &str = "SMTP_PASSWORD";

/// Everything every child printed, for the secret-hygiene check.
#[derive(Clone, Default)]
pub struct Transcript(Arc<Mutex<Vec<String>>>);

impl Transcript {
    fn push(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_string());
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn bytes(&self) -> usize {
        self.0.lock().unwrap().iter().map(String::len).sum()
    }

    /// Panics if any minted secret value, the rotator's own secret, or their base64 forms
    /// appear anywhere in what the children printed.
    pub fn assert_no_secret_leaked(&self, scenario: &Scenario) {
        let everything = self.0.lock().unwrap().join("\n");
        let mut values = scenario.tenant.minted_values();
        values.push(scenario.rotator_secret.clone());
        for value in &values {
            for form in secret_forms(value) {
                assert!(
                    !everything.contains(&form),
                    "a secret value (or its base64 form) reached a child's output"
                );
            }
        }
    }
}

/// A value as it could leak: verbatim, base64 (Kubernetes data, AUTH LOGIN) and base64url.
pub fn secret_forms(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        value.to_string(),
        STANDARD.encode(value),
        URL_SAFE_NO_PAD.encode(value),
    ]
}

/// What a finished (or killed) child left behind.
pub struct RunOutput {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    /// stdout followed by stderr.
    pub text: String,
}

/// A running `entra-rotator run --config … --log-level trace` child.
pub struct Rotator {
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    transcript: Transcript,
}

impl Rotator {
    /// Starts `run` on `config` with trace logs; `extra` adds flags such as `--force`.
    pub fn spawn(config: &Path, extra: &[&str], transcript: &Transcript) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
        command
            .args(["run", "--config"])
            .arg(config)
            .args(["--log-level", "trace"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the entra-rotator binary starts");
        // Drain the pipes from the start: trace logs would fill them and block the child.
        let stdout = tokio::spawn(read_all(child.stdout.take()));
        let stderr = tokio::spawn(read_all(child.stderr.take()));
        Self {
            child,
            stdout,
            stderr,
            transcript: transcript.clone(),
        }
    }

    /// Polls `condition` until it holds; panics if the child exits first or never gets there.
    pub async fn wait_until(&mut self, what: &str, condition: impl Fn() -> bool) {
        let started = Instant::now();
        while !condition() {
            if let Some(status) = self.child.try_wait().expect("child status") {
                let output = self.collect(status.code()).await;
                panic!(
                    "the child exited ({status}) before {what}:\n{}",
                    tail(&output.text)
                );
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the child never reached {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until the child's request is held by `hold` in a stand-in; panics if the child
    /// exits first or never gets there.
    pub async fn wait_held(&mut self, what: &str, hold: &Hold) {
        if !self.held_or_exited(what, hold).await {
            let status = self.child.wait().await.expect("child status");
            let output = self.collect(status.code()).await;
            panic!(
                "the child exited ({status}) before {what}:\n{}",
                tail(&output.text)
            );
        }
    }

    /// `true` once the child's request is held by `hold`, `false` if the child exited first.
    pub async fn held_or_exited(&mut self, what: &str, hold: &Hold) -> bool {
        let arrived = hold.arrived();
        tokio::pin!(arrived);
        let started = Instant::now();
        loop {
            tokio::select! {
                () = &mut arrived => return true,
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            if self.child.try_wait().expect("child status").is_some() {
                return false;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the child never reached {what}"
            );
        }
    }

    /// SIGKILL (tokio's `start_kill` on unix), then collects what it printed.
    pub async fn kill(mut self) -> RunOutput {
        self.child.start_kill().expect("SIGKILL delivered");
        let status = self.child.wait().await.expect("killed child reaped");
        assert!(status.code().is_none(), "the child was killed, not exited");
        self.collect(None).await
    }

    /// Waits for the child to exit on its own.
    pub async fn finish(mut self) -> RunOutput {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the child finished in time")
            .expect("child reaped");
        self.collect(status.code()).await
    }

    async fn collect(&mut self, code: Option<i32>) -> RunOutput {
        let stdout = (&mut self.stdout).await.unwrap_or_default();
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
        self.transcript.push(&text);
        RunOutput { code, text }
    }
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut buffer = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buffer).await;
    }
    buffer
}

/// What a failure message shows of a child's output: its result lines (the `FAILED …`
/// line among them), its warnings and errors, then the last few lines of the trace.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let telling: Vec<&str> = lines
        .iter()
        .filter(|l| {
            l.starts_with(ROTATION)
                || l.starts_with("error")
                || l.contains("FAILED")
                || l.contains(" WARN ")
                || l.contains(" ERROR ")
        })
        .take(20)
        .copied()
        .collect();
    let last = &lines[lines.len().saturating_sub(8)..];
    format!(
        "{}\n(last lines of the output:)\n{}",
        telling.join("\n"),
        last.join("\n")
    )
}

/// Only the lines the rotator prints for people (stdout and `warn`/`error` logs, and the
/// engine's `info` events), not hyper's and rustls' trace lines.
pub fn engine_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with(ROTATION) || l.contains("rotation=") || l.starts_with("error"))
        .collect()
}

/// The rerun's one-line result, e.g. `settled` or `up to date`, for the table.
pub fn outcome_word(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("dify-smtp: "))
        .unwrap_or("dify-smtp: ?");
    let what = line.trim_start_matches("dify-smtp: ");
    let word = what.split([':', ';']).next().unwrap_or(what);
    let removed = text.contains("minted earlier but its value reached no store");
    let revoked = text.contains("revoked old keyId");
    let mut result = word.to_string();
    if removed {
        result.push_str(", removed the unstored secret");
    }
    if revoked {
        result.push_str(", revoked the old secret");
    }
    result
}

/// Runs the binary to completion.
pub async fn run(scenario: &Scenario, extra: &[&str], transcript: &Transcript) -> RunOutput {
    Rotator::spawn(&scenario.config_path, extra, transcript)
        .finish()
        .await
}

/// Runs to completion and insists on exit code 0.
pub async fn run_ok(scenario: &Scenario, extra: &[&str], transcript: &Transcript) -> RunOutput {
    let output = run(scenario, extra, transcript).await;
    assert_eq!(
        output.code,
        Some(0),
        "run {extra:?} failed:\n{}",
        tail(&output.text)
    );
    output
}

/// The keyIds on the target application that carry our marker.
pub fn our_key_ids(scenario: &Scenario) -> Vec<Uuid> {
    let marker = entra_rotator::domain::marker_for(ROTATION);
    scenario
        .target_now()
        .passwords
        .iter()
        .filter(|p| p.display_name.as_deref() == Some(marker.as_str()))
        .map(|p| p.key_id)
        .collect()
}

/// (Key Vault, Kubernetes Secret) contents: keyId and value.
pub fn stored(scenario: &Scenario) -> [Option<(Option<Uuid>, String)>; 2] {
    let vault = scenario.vault.latest(VAULT_SECRET).map(|v| {
        let key_id = v.tags.get("keyId").and_then(|k| Uuid::parse_str(k).ok());
        (key_id, v.value)
    });
    let secret = scenario
        .kubernetes
        .secret(SECRET_NAMESPACE, SECRET_NAME)
        .and_then(|s| {
            let key_id = s
                .annotations
                .get("entra-rotator.io/key-id")
                .and_then(|k| Uuid::parse_str(k).ok());
            s.data.get(PASSWORD_KEY).map(|v| (key_id, v.clone()))
        });
    [vault, secret]
}

/// The keyIds the two stores record, in configuration order.
pub fn stored_key_ids(scenario: &Scenario) -> [Option<Uuid>; 2] {
    stored(scenario).map(|held| held.and_then(|(key_id, _)| key_id))
}

/// Whether what consumers read right now authenticates against the tenant, in both stores.
pub fn consumers_credential_works(scenario: &Scenario) -> Result<(), String> {
    check_consumers(scenario, false)
}

/// Like [`consumers_credential_works`], but a value Entra has not replicated yet counts as
/// working: it is a live credential of the application and starts authenticating by itself.
pub fn consumers_credential_works_once_replicated(scenario: &Scenario) -> Result<(), String> {
    check_consumers(scenario, true)
}

fn check_consumers(scenario: &Scenario, lag_ok: bool) -> Result<(), String> {
    let client_id = scenario.target.app_id;
    for (name, held) in ["Key Vault", "Kubernetes Secret"]
        .iter()
        .zip(stored(scenario))
    {
        let (key_id, value) = held.ok_or_else(|| format!("{name} holds no value"))?;
        match scenario.tenant.authenticate(client_id, &value) {
            Ok(()) => {}
            Err(AuthFailure::NotYetReplicated) if lag_ok => {}
            Err(failure) => {
                return Err(format!(
                    "{name} holds keyId {key_id:?}, which fails: {failure:?}"
                ));
            }
        }
    }
    Ok(())
}

/// One sample of the world taken by a [`Monitor`].
#[derive(Clone, Debug)]
pub struct Sample {
    pub stored: [Option<Uuid>; 2],
}

/// Samples the world every couple of milliseconds while children run, and records every
/// moment at which a consumer's stored credential did not authenticate.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(Vec<Sample>, Vec<String>)>,
}

/// What a monitor saw.
pub struct Watched {
    pub samples: Vec<Sample>,
    pub violations: Vec<String>,
}

impl Monitor {
    pub fn start(scenario: Arc<Scenario>) -> Self {
        Self::spawn(scenario, false)
    }

    /// A monitor for tests with an Entra replication delay: a stored value that is live but
    /// not replicated yet counts as working.
    pub fn start_allowing_replication_lag(scenario: Arc<Scenario>) -> Self {
        Self::spawn(scenario, true)
    }

    fn spawn(scenario: Arc<Scenario>, lag_ok: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(sample_until(scenario, stop.clone(), lag_ok));
        Self { stop, task }
    }

    pub async fn stop(self) -> Watched {
        self.stop.store(true, Ordering::SeqCst);
        let (samples, violations) = self.task.await.expect("monitor ran");
        Watched {
            samples,
            violations,
        }
    }
}

async fn sample_until(
    scenario: Arc<Scenario>,
    stop: Arc<AtomicBool>,
    lag_ok: bool,
) -> (Vec<Sample>, Vec<String>) {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut violations = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Err(problem) = check_consumers(&scenario, lag_ok) {
            // A store may have been rewritten between our read and the check: only a value
            // that is still what the store holds counts against the promise.
            let again = check_consumers(&scenario, lag_ok);
            // Keep the first few moments: enough to diagnose, short enough to read.
            if let Err(still) = again
                && still == problem
                && violations.len() < 5
            {
                violations.push(format!("{:?}: {problem}", started.elapsed()));
            }
        }
        samples.push(Sample {
            stored: stored_key_ids(&scenario),
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (samples, violations)
}

/// The world at one moment: what the stores hold, our live keyIds, the verifications
/// (test mails and handshakes) the relay accepted.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub stored: [Option<Uuid>; 2],
    pub ours: Vec<Uuid>,
    pub proofs: usize,
}

pub fn snapshot(scenario: &Scenario) -> Snapshot {
    Snapshot {
        stored: stored_key_ids(scenario),
        ours: our_key_ids(scenario),
        proofs: proofs(scenario),
    }
}

/// Checks the world as it stood when a `removePassword` for `removed` arrived (the request
/// held, so nothing moved): both stores held the same live keyId of ours, not the one
/// removed, and the relay had accepted a verification since `proofs_before`.
pub fn assert_revocation_followed_verification(
    case: &str,
    at: &Snapshot,
    removed: Uuid,
    proofs_before: usize,
) {
    let [vault, secret] = at.stored;
    assert!(
        vault.is_some() && vault == secret,
        "{case}: removePassword for {removed} arrived while the stores disagreed: {at:?}"
    );
    let stored = vault.unwrap();
    assert!(
        stored != removed && at.ours.contains(&stored),
        "{case}: removePassword for {removed} arrived while the stored keyId was not a live \
         successor: {at:?}"
    );
    assert!(
        at.proofs > proofs_before,
        "{case}: removePassword for {removed} arrived before the relay had accepted any \
         verification: {at:?}"
    );
}

/// What [`run_checking_revocations`] saw: the run, and the keyIds it removed, split into
/// revocations (a store had held them) and unstored orphans (no store ever had).
pub struct CheckedRun {
    pub output: RunOutput,
    pub revoked: Vec<Uuid>,
    pub orphans: Vec<Uuid>,
}

/// More `removePassword` requests than any one run of the scenario sends.
const MOST_REMOVALS: usize = 4;

/// Runs the binary to completion with every `removePassword` held in the Graph stand-in
/// until the test has looked at the world, then released. Each must remove exactly one
/// keyId of ours; one a store had held (`stored_earlier`, or seen in a store during the
/// run) is a revocation and is checked with [`assert_revocation_followed_verification`]; one
/// no store ever held is an unstored orphan, whose removal needs no verification.
pub async fn run_checking_revocations(
    case: &str,
    scenario: &Scenario,
    extra: &[&str],
    transcript: &Transcript,
    proofs_before: usize,
    stored_earlier: &[Uuid],
) -> CheckedRun {
    let graph = scenario.graph.faults();
    let holds: Vec<Hold> = (0..MOST_REMOVALS)
        .map(|_| graph.hold(ROUTE_REMOVE_PASSWORD))
        .collect();
    let mut child = Rotator::spawn(&scenario.config_path, extra, transcript);
    let mut frozen = Vec::new();
    for hold in &holds {
        if !child.held_or_exited(&format!("{case}: a removePassword"), hold).await {
            break;
        }
        frozen.push(snapshot(scenario));
        hold.release();
    }
    assert!(
        frozen.len() < MOST_REMOVALS,
        "{case}: more removePassword requests than expected"
    );
    // Holds no request took let later requests through at once.
    holds.iter().skip(frozen.len()).for_each(Hold::release);
    let output = child.finish().await;
    let end = snapshot(scenario);
    let ever_stored: Vec<Uuid> = frozen
        .iter()
        .chain([&end])
        .flat_map(|s| s.stored.iter().flatten().copied())
        .chain(stored_earlier.iter().copied())
        .collect();
    let (mut revoked, mut orphans) = (Vec::new(), Vec::new());
    for (index, at) in frozen.iter().enumerate() {
        let after = frozen.get(index + 1).unwrap_or(&end);
        let removed: Vec<Uuid> = at
            .ours
            .iter()
            .filter(|k| !after.ours.contains(k))
            .copied()
            .collect();
        assert_eq!(
            removed.len(),
            1,
            "{case}: removePassword number {} removed one keyId of ours: {at:?} then {after:?}",
            index + 1
        );
        if ever_stored.contains(&removed[0]) {
            assert_revocation_followed_verification(case, at, removed[0], proofs_before);
            revoked.push(removed[0]);
        } else {
            orphans.push(removed[0]);
        }
    }
    CheckedRun {
        output,
        revoked,
        orphans,
    }
}

/// The engine's own log must show `verified keyId K` before every `revoked old keyId X`.
pub fn assert_log_verifies_before_revoking(text: &str) {
    let mut verified = false;
    for line in text.lines() {
        if line.contains("verified keyId") {
            verified = true;
        }
        if line.contains("revoked old keyId") {
            assert!(
                verified,
                "revoked before any verification in this run:\n{}",
                tail(text)
            );
        }
    }
}

/// Verifications the scenario's relay has accepted: test mails and handshakes.
pub fn proofs(scenario: &Scenario) -> usize {
    scenario.relay.messages() + scenario.relay.handshakes() as usize
}

/// A fresh scenario shared with a monitor.
pub async fn scenario() -> Arc<Scenario> {
    Arc::new(Scenario::start().await.expect("stand-ins start"))
}

/// The scenario's rotation wired in this process to the production adapters, with every
/// client timeout set to `timeout` (the binary's are 30 s: too long to wait out in tests)
/// and short retry delays. Revocation and orphan grace periods are 0s.
pub fn in_process_rotation(
    scenario: &Scenario,
    timeout: Duration,
) -> entra_rotator::engine::Rotation {
    in_process_rotation_and_adapters(scenario, timeout).0
}

/// The concrete adapters behind an in-process rotation (the rotation holds them as trait
/// objects), so a test can print what the ones that handled a secret value show in `Debug`.
pub struct Adapters(Vec<Arc<dyn std::fmt::Debug + Send + Sync>>);

impl Adapters {
    /// The `Debug` output of the Graph client, every store and the verifier.
    pub fn debug(&self) -> String {
        self.0.iter().map(|adapter| format!("{adapter:?}\n")).collect()
    }
}

/// [`in_process_rotation`], and its adapters.
pub fn in_process_rotation_and_adapters(
    scenario: &Scenario,
    timeout: Duration,
) -> (entra_rotator::engine::Rotation, Adapters) {
    use entra_rotator::adapters::graph::{GraphClient, GraphConfig, RetryPolicy};
    use entra_rotator::adapters::http::{TlsTrust, azure_client_options, http_client};
    use entra_rotator::adapters::identity::{RotatorCredential, rotator_credential};
    use entra_rotator::adapters::keyvault::{KeyVaultSettings, KeyVaultStore, VaultTrust};
    use entra_rotator::adapters::kubernetes::{
        KubernetesSecretSettings, KubernetesSecretStore, SmtpVariables,
    };
    use entra_rotator::adapters::smtp::{AuthMechanism, SmtpVerification, SmtpVerifier, TlsMode};
    use entra_rotator::config::{Config, CredentialConfig, TargetConfig, VerificationConfig};
    use entra_rotator::domain::{AppRef, SecretString};
    use entra_rotator::engine::policy::Timing;
    use entra_rotator::engine::{Rotation, VerifyRetry};

    let config = Config::load(&scenario.config_path).expect("the scenario's configuration loads");
    let rotation = &config.rotations[0];
    let CredentialConfig::ClientSecret {
        tenant_id,
        client_id,
        ..
    } = &config.azure.credential
    else {
        panic!("the scenario signs the rotator in with a client secret");
    };
    let trust = TlsTrust {
        extra_root_pems: vec![scenario.pki.ca_pem().to_string()],
    };
    let http = http_client(&trust, timeout).unwrap();
    let credential = rotator_credential(
        &RotatorCredential::ClientSecret {
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            secret: SecretString::from(scenario.rotator_secret.clone()),
        },
        Some(&scenario.graph.authority_host()),
        http.clone(),
    )
    .unwrap();
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(2),
    };
    let directory = Arc::new(
        GraphClient::new(
            GraphConfig {
                base_url: scenario.graph.graph_url(),
                retry,
            },
            credential.clone(),
            http.clone(),
        )
        .unwrap(),
    );
    let mut adapters: Vec<Arc<dyn std::fmt::Debug + Send + Sync>> = vec![directory.clone()];

    let mut kube_config = kube::Config::new(scenario.kubernetes.url().parse().unwrap());
    kube_config.root_cert = Some(
        rustls_pemfile::certs(&mut scenario.pki.ca_pem().as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect(),
    );
    kube_config.read_timeout = Some(timeout);
    let kube_client = kube::Client::try_from(kube_config).unwrap();

    let VerificationConfig::Smtp(smtp) = &rotation.verification else {
        panic!("the scenario verifies through the relay");
    };
    let app = AppRef {
        tenant_id: scenario.tenant.tenant_id,
        client_id: scenario.target.app_id,
        object_id: None,
    };
    let username = format!(
        "{}|{}|{}",
        entra_rotator_standins::scenario::ACS_RESOURCE,
        app.client_id,
        app.tenant_id
    );
    let mut stores: Vec<Arc<dyn entra_rotator::engine::ports::SecretStore>> = Vec::new();
    for target in &rotation.targets {
        match target {
            TargetConfig::KeyVault(vault) => {
                let settings =
                    KeyVaultSettings::new(vault.vault_url.as_str(), vault.secret_name.clone());
                let trust = VaultTrust::for_authority(&scenario.graph.authority_host())
                    .with_private_hosts(vault.vault_url.host_str());
                let store = Arc::new(
                    KeyVaultStore::new(
                        settings,
                        &trust,
                        credential.clone(),
                        azure_client_options(http.clone()),
                    )
                    .unwrap(),
                );
                adapters.push(store.clone());
                stores.push(store);
            }
            TargetConfig::KubernetesSecret(secret) => {
                let store = Arc::new(
                KubernetesSecretStore::new(
                    kube_client.clone(),
                    KubernetesSecretSettings {
                        namespace: secret.namespace.clone(),
                        name: secret.name.clone(),
                        keys: secret.keys.clone(),
                        variables: SmtpVariables {
                            smtp_host: Some(smtp.host.clone()),
                            smtp_port: Some(smtp.port),
                            smtp_username: Some(username.clone()),
                            smtp_from: Some(smtp.from.clone()),
                        },
                    },
                )
                .unwrap(),
                );
                adapters.push(store.clone());
                stores.push(store);
            }
        }
    }
    let verifier = Arc::new(SmtpVerifier::new(
        SmtpVerification {
            host: smtp.host.clone(),
            port: smtp.port,
            tls: TlsMode::StartTls,
            mechanism: AuthMechanism::Login,
            username: smtp.username.clone(),
            from: smtp.from.clone(),
            to: smtp.to.clone(),
            timeout,
            mode: entra_rotator::adapters::smtp::ProofMode::Deliver,
        },
        &trust,
    )
    .unwrap());
    adapters.push(verifier.clone());
    let rotation = Rotation {
        name: rotation.name.clone(),
        app,
        timing: Timing {
            lifetime: rotation.lifetime.chrono(),
            renew_before: rotation.renew_before().chrono(),
            revoke_grace: chrono::Duration::zero(),
            orphan_grace: chrono::Duration::zero(),
            retire_unmanaged_after: None,
        },
        directory,
        stores,
        verifier: Some(verifier),
        rollout: None,
        revocation_gate: None,
        verify_retry: VerifyRetry {
            budget: Duration::from_secs(10),
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        },
    };
    (rotation, Adapters(adapters))
}

/// An engine on the wall clock that keeps its events in memory.
pub fn engine() -> (
    entra_rotator::engine::Engine,
    Arc<entra_rotator::engine::events::RecordingSink>,
) {
    let events = Arc::new(entra_rotator::engine::events::RecordingSink::default());
    let engine = entra_rotator::engine::Engine::new(
        Arc::new(entra_rotator::engine::ports::SystemClock),
        events.clone(),
    );
    (engine, events)
}
