//! Shared by the safety tests (`crash_matrix`, `faults`, `hostile_input`): drives the real
//! `entra-rotator` binary as a child process against a [`Scenario`], waits on the
//! stand-ins' request counts to know where the child is blocked, checks the safety
//! invariants, and keeps every byte the children printed for the secret-hygiene check.
//!
//! Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod hostile_smtp;

use base64::Engine as _;
use entra_rotator::standins::graph::ROUTE_REMOVE_PASSWORD;
use entra_rotator::standins::scenario::{
    ROTATION, SECRET_NAME, SECRET_NAMESPACE, Scenario, VAULT_SECRET,
};
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

/// The last lines of a long trace, for panic messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Only the lines the rotator prints for people (stdout and `warn`/`error` logs, and the
/// engine's `info` events), not hyper's and rustls' trace lines.
pub fn engine_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with(ROTATION) || l.contains("rotation=") || l.starts_with("error"))
        .collect()
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
    let client_id = scenario.target.app_id;
    for (name, held) in ["Key Vault", "Kubernetes Secret"]
        .iter()
        .zip(stored(scenario))
    {
        let (key_id, value) = held.ok_or_else(|| format!("{name} holds no value"))?;
        scenario
            .tenant
            .authenticate(client_id, &value)
            .map_err(|failure| {
                format!("{name} holds keyId {key_id:?}, which fails: {failure:?}")
            })?;
    }
    Ok(())
}

/// One sample of the world taken by a [`Monitor`].
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub stored: [Option<Uuid>; 2],
    pub ours: Vec<Uuid>,
    pub mails: usize,
    pub remove_requests: u64,
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
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(sample_until(scenario, stop.clone()));
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
) -> (Vec<Sample>, Vec<String>) {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut violations = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Err(problem) = consumers_credential_works(&scenario) {
            // A store may have been rewritten between our read and the check: only a value
            // that is still what the store holds counts against the promise.
            let again = consumers_credential_works(&scenario);
            if let Err(still) = again
                && still == problem
            {
                violations.push(format!("{:?}: {problem}", started.elapsed()));
            }
        }
        samples.push(Sample {
            at: started.elapsed(),
            stored: stored_key_ids(&scenario),
            ours: our_key_ids(&scenario),
            mails: scenario.relay.accepted_messages().len(),
            remove_requests: scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD),
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (samples, violations)
}

/// Checks every revocation a monitor saw. When a `removePassword` request arrived (the
/// stand-in holds it briefly, so the state is frozen) for a keyId that a store ever held,
/// both stores held another live keyId of ours and the relay had accepted a verification
/// mail since `mails_before`. A keyId no store ever held is an unstored orphan: removing
/// it needs no verification. Returns (revocations checked, orphans removed).
pub fn assert_revocations_followed_verification(
    watched: &Watched,
    mails_before: usize,
    stored_earlier: &[Uuid],
) -> (usize, usize) {
    let samples = &watched.samples;
    let ever_stored: Vec<Uuid> = samples
        .iter()
        .flat_map(|s| s.stored.iter().flatten().copied())
        .chain(stored_earlier.iter().copied())
        .collect();
    let (mut revocations, mut orphans) = (0, 0);
    for (index, pair) in samples.windows(2).enumerate() {
        let (before, at) = (&pair[0], &pair[1]);
        if at.remove_requests == before.remove_requests {
            continue;
        }
        let later = samples[index + 1..].iter().find(|s| s.ours != at.ours);
        let removed: Vec<Uuid> = later
            .map(|l| {
                at.ours
                    .iter()
                    .filter(|k| !l.ours.contains(k))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        if !removed.is_empty() && removed.iter().all(|k| !ever_stored.contains(k)) {
            orphans += 1;
            continue;
        }
        revocations += 1;
        let [vault, secret] = at.stored;
        assert!(
            vault.is_some() && vault == secret,
            "removePassword arrived while the stores disagreed: {at:?}"
        );
        assert!(
            at.ours.contains(&vault.unwrap()) && !removed.contains(&vault.unwrap()),
            "removePassword arrived while the stored keyId was not live, or was the one removed: {at:?}"
        );
        assert!(
            at.mails > mails_before,
            "removePassword arrived before any verification mail was accepted: {at:?}"
        );
    }
    (revocations, orphans)
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

/// A fresh scenario shared with a monitor.
pub async fn scenario() -> Arc<Scenario> {
    Arc::new(Scenario::start().await.expect("stand-ins start"))
}
