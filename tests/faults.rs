//! Faults on every service the rotator talks to, played by the stand-ins over real
//! sockets: throttling with `Retry-After`, 5xx, dropped connections, timeouts, Key Vault
//! failing between mint and store, SMTP 4xx, an Entra replication delay longer than the
//! verification budget, and two runners at once.
//!
//! Each test checks what a user would: the exit code and the message, what Graph and the
//! stores hold afterwards, that the consumers' credential kept working, and that the next
//! run converges. Timeouts are tested in-process with 3 s client timeouts (the binary's are
//! 30 s) against requests the stand-ins never answer. `cargo test --test faults --
//! --nocapture` prints one markdown row per fault, after its assertions passed.

mod support;

use entra_rotator::engine::{EngineError, Outcome, RunOptions};
use entra_rotator_standins::faults::{Fault, Faults};
use entra_rotator_standins::graph::{
    ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION, ROUTE_REMOVE_PASSWORD,
};
use entra_rotator_standins::keyvault::routes as vault_routes;
use entra_rotator_standins::kubernetes::routes as kube_routes;
use entra_rotator_standins::scenario::Scenario;
use entra_rotator_standins::smtp::SmtpFault;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// The in-process client timeout: long enough for any answered request on a loaded
/// machine; the requests meant to time out are never answered.
const TIMEOUT: Duration = Duration::from_secs(3);

fn row(fault: &str, first: &str, next: &str, started: Instant) {
    println!(
        "| {fault} | {first} | {next} | 0 | {:.1} s |",
        started.elapsed().as_secs_f64()
    );
}

/// A scenario with K0 settled, a monitor watching the consumers, and a transcript.
async fn settled() -> (Arc<Scenario>, Transcript, Monitor) {
    let (scenario, transcript) = settled_unwatched().await;
    let monitor = Monitor::start(scenario.clone());
    (scenario, transcript, monitor)
}

async fn settled_unwatched() -> (Arc<Scenario>, Transcript) {
    let scenario = scenario().await;
    let transcript = Transcript::default();
    run_ok(&scenario, &[], &transcript).await;
    (scenario, transcript)
}

/// The end of every test: the consumers never broke, a plain rerun (orphans cleaned at
/// once) leaves exactly one credential of ours in both stores, and nothing leaked.
async fn converges(
    case: &str,
    scenario: &Scenario,
    transcript: &Transcript,
    monitor: Monitor,
) -> String {
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 0s")
        .ok();
    let rerun = run_ok(scenario, &[], transcript).await;
    let watched = monitor.stop().await;
    assert_eq!(
        watched.violations,
        Vec::<String>::new(),
        "{case}: the consumers' credential broke"
    );
    let ours = our_key_ids(scenario);
    assert_eq!(
        ours.len(),
        1,
        "{case}: one credential of ours once converged: {ours:?}"
    );
    assert_eq!(
        stored_key_ids(scenario),
        [Some(ours[0]), Some(ours[0])],
        "{case}: both stores hold the one credential of ours"
    );
    consumers_credential_works(scenario).unwrap_or_else(|e| panic!("{case}: {e}"));
    transcript.assert_no_secret_leaked(scenario);
    outcome_word(&rerun.text)
}

#[tokio::test]
async fn graph_throttling_with_retry_after_is_waited_out() {
    const CASE: &str = "Graph 429 + Retry-After: 1 on GET, addPassword ×2, removePassword";
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let graph = scenario.graph.faults();
    graph.push(ROUTE_GET_APPLICATION, Fault::throttle(1));
    graph.push_times(ROUTE_ADD_PASSWORD, Fault::throttle(1), 2);
    graph.push(ROUTE_REMOVE_PASSWORD, Fault::throttle(1));
    let adds_before = graph.count(ROUTE_ADD_PASSWORD);
    let forced = run_ok(&scenario, &["--force"], &transcript).await;
    assert!(
        forced.text.contains("rotated: new keyId"),
        "{CASE}: {}",
        tail(&forced.text)
    );
    assert_eq!(
        graph.count(ROUTE_ADD_PASSWORD),
        adds_before + 3,
        "two 429s, then one mint"
    );
    assert_eq!(graph.pending(ROUTE_REMOVE_PASSWORD), 0);
    let next = converges(CASE, &scenario, &transcript, monitor).await;
    assert_eq!(next, "up to date", "{CASE}: the next run");
    row(
        CASE,
        "rotated after waiting",
        &next,
        started,
    );
}

#[tokio::test]
async fn graph_throttling_longer_than_the_retry_cap_stops_the_run_and_changes_nothing() {
    const CASE: &str = "Graph 429 + Retry-After: 3600 on addPassword";
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let before = our_key_ids(&scenario);
    scenario
        .graph
        .faults()
        .push(ROUTE_ADD_PASSWORD, Fault::throttle(3600));
    let output = run(&scenario, &["--force"], &transcript).await;
    assert_eq!(output.code, Some(1), "{CASE}: {}", tail(&output.text));
    assert!(
        output
            .text
            .contains("FAILED (GraphFailed; will succeed on a later run"),
        "{CASE}: {}",
        tail(&output.text)
    );
    assert!(output.text.contains("HTTP 429"), "{CASE}: {}", tail(&output.text));
    assert_eq!(our_key_ids(&scenario), before, "nothing minted");
    let next = converges(CASE, &scenario, &transcript, monitor).await;
    assert_eq!(next, "up to date", "{CASE}: the next run");
    row(
        CASE,
        "exit 1, transient, nothing changed",
        &next,
        started,
    );
}

#[tokio::test]
async fn graph_5xx_are_retried_where_safe_and_stop_the_run_where_not() {
    const CASE: &str = "Graph 503 ×2 on GET, 500 ×2 on removePassword; 503 on addPassword";
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let graph = scenario.graph.faults();
    graph.push_times(ROUTE_GET_APPLICATION, Fault::status(503), 2);
    graph.push_times(ROUTE_REMOVE_PASSWORD, Fault::status(500), 2);
    let forced = run_ok(&scenario, &["--force"], &transcript).await;
    assert!(forced.text.contains("revoked"), "{CASE}: {}", tail(&forced.text));

    // addPassword is not idempotent: a 5xx may hide a mint, so it is not repeated blindly.
    let before = our_key_ids(&scenario);
    graph.push(ROUTE_ADD_PASSWORD, Fault::status(503));
    let output = run(&scenario, &["--force"], &transcript).await;
    assert_eq!(output.code, Some(1), "{CASE}: {}", tail(&output.text));
    assert!(output.text.contains("HTTP 503"), "{CASE}: {}", tail(&output.text));
    assert_eq!(our_key_ids(&scenario), before);
    let next = converges(CASE, &scenario, &transcript, monitor).await;
    assert_eq!(next, "up to date", "{CASE}: the next run");
    row(
        CASE,
        "retried; addPassword: exit 1, nothing minted",
        &next,
        started,
    );
}

/// Picks one stand-in's fault queues.
type FaultsOf = fn(&Scenario) -> &Faults;

/// What a forced run does when one connection drops: a request that cannot have acted
/// (a read, a revocation, a Key Vault write, which azure_core retries) is retried and the
/// run rotates; one that may have acted and is not retried blindly stops the run with a
/// transient error (addPassword could have minted; the Kubernetes client does not retry).
#[derive(Clone, Copy, Debug, PartialEq)]
enum FirstRun {
    RodeItOut,
    StoppedTransient,
}

impl FirstRun {
    fn row(self) -> &'static str {
        match self {
            FirstRun::RodeItOut => "rode it out (retried)",
            FirstRun::StoppedTransient => "exit 1, transient",
        }
    }
}

/// A dropped connection on each API, on the call of a forced rotation that is hardest to
/// retry; each has one expected first run and one expected next run.
#[tokio::test]
async fn dropped_connections_on_each_api() {
    use FirstRun::*;
    let cases: [(&str, FaultsOf, &str, FirstRun, &str); 5] = [
        ("Graph GET application", |s| s.graph.faults(), ROUTE_GET_APPLICATION, RodeItOut, "up to date"),
        ("Graph addPassword", |s| s.graph.faults(), ROUTE_ADD_PASSWORD, StoppedTransient, "up to date"),
        ("Graph removePassword", |s| s.graph.faults(), ROUTE_REMOVE_PASSWORD, RodeItOut, "up to date"),
        ("Key Vault set secret", |s| s.vault.faults(), vault_routes::SET_SECRET, RodeItOut, "up to date"),
        (
            "Kubernetes apply Secret",
            |s| s.kubernetes.faults(),
            kube_routes::PATCH_SECRET,
            StoppedTransient,
            "settled, revoked the old secret",
        ),
    ];
    for (name, faults, route, expected_first, expected_next) in cases {
        let case = format!("dropped connection: {name}");
        let started = Instant::now();
        let (scenario, transcript, monitor) = settled().await;
        let k0 = our_key_ids(&scenario);
        faults(&scenario).push(route, Fault::drop_connection());
        let output = run(&scenario, &["--force"], &transcript).await;
        assert_eq!(
            faults(&scenario).pending(route),
            0,
            "{case}: the drop was played"
        );
        match expected_first {
            RodeItOut => {
                assert_eq!(output.code, Some(0), "{case}: {}", tail(&output.text));
                assert!(
                    output.text.contains("rotated: new keyId"),
                    "{case}: {}",
                    tail(&output.text)
                );
                assert!(
                    !our_key_ids(&scenario).contains(&k0[0]),
                    "{case}: the old secret was revoked in the same run"
                );
            }
            StoppedTransient => {
                assert_eq!(output.code, Some(1), "{case}: {}", tail(&output.text));
                let line = output
                    .text
                    .lines()
                    .find(|l| l.contains("FAILED"))
                    .unwrap_or_default();
                assert!(
                    line.contains("will succeed on a later run"),
                    "{case}: transient: {line}"
                );
                assert!(
                    our_key_ids(&scenario).contains(&k0[0]),
                    "{case}: nothing revoked by a run that stopped"
                );
            }
        }
        let next = converges(&case, &scenario, &transcript, monitor).await;
        assert_eq!(next, expected_next, "{case}: the next run");
        row(&case, expected_first.row(), &next, started);
    }
}

#[tokio::test]
async fn key_vault_failing_between_mint_and_store_leaves_an_orphan_the_next_run_removes() {
    const CASE: &str = "Key Vault 403 between mint and store";
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let k0 = our_key_ids(&scenario);
    scenario
        .vault
        .faults()
        .push(vault_routes::SET_SECRET, Fault::status(403));
    let output = run(&scenario, &["--force"], &transcript).await;
    assert_eq!(output.code, Some(1), "{CASE}: {}", tail(&output.text));
    assert!(
        output.text.contains("FAILED (StoreFailed"),
        "{CASE}: {}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("Key Vault"),
        "the error names the store: {}",
        tail(&output.text)
    );
    assert_eq!(
        our_key_ids(&scenario).len(),
        2,
        "the minted secret is on the app, in no store"
    );
    assert_eq!(
        stored_key_ids(&scenario),
        [Some(k0[0]), Some(k0[0])],
        "the stores still hold K0"
    );

    // Within orphanGracePeriod (10m) another runner could be storing it: wait, mint nothing.
    let adds = scenario.graph.faults().count(ROUTE_ADD_PASSWORD);
    let waiting = run_ok(&scenario, &[], &transcript).await;
    assert!(
        waiting.text.contains("dify-smtp: waiting: keyId"),
        "{CASE}: {}",
        tail(&waiting.text)
    );
    assert_eq!(
        scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        adds,
        "no second mint"
    );

    let next = converges(CASE, &scenario, &transcript, monitor).await;
    assert_eq!(next, "up to date, removed the unstored secret", "{CASE}: the next run");
    assert_eq!(
        our_key_ids(&scenario),
        k0,
        "the orphan is gone; K0 stays current"
    );
    row(
        CASE,
        "exit 1 (StoreFailed); next run within 10m waits",
        &format!("{next} (orphan removed with orphanGracePeriod 0s)"),
        started,
    );
}

#[tokio::test]
async fn smtp_4xx_is_retried_until_the_relay_accepts() {
    const CASE: &str = "SMTP 451 4.4.3 ×2 at MAIL FROM, then 421 greeting";
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    scenario
        .edit_config("retryInterval: 1s", "retryInterval: 100ms")
        .unwrap();
    let k0 = our_key_ids(&scenario)[0];
    scenario.relay.inject_temporary_failures(2);
    scenario.relay.inject_fault(SmtpFault::ServiceUnavailable);
    let sessions = scenario.relay.sessions();
    let forced = run_ok(&scenario, &["--force"], &transcript).await;
    assert!(
        forced.text.contains("after 4 attempt(s)"),
        "{CASE}: {}",
        tail(&forced.text)
    );
    assert_eq!(scenario.relay.sessions(), sessions + 4, "{CASE}");
    assert!(!our_key_ids(&scenario).contains(&k0), "{CASE}: the old secret was revoked");
    let next = converges(CASE, &scenario, &transcript, monitor).await;
    assert_eq!(next, "up to date", "{CASE}: the next run");
    row(
        CASE,
        "verified on attempt 4, old revoked",
        &next,
        started,
    );
}

#[tokio::test]
async fn replication_slower_than_the_verification_budget_keeps_the_old_secret_and_fails_loudly() {
    const CASE: &str = "Entra replication 1h > verification budget 1s";
    let started = Instant::now();
    let (scenario, transcript) = settled_unwatched().await;
    // A new secret is proven before any store gets it, so consumers hold a working
    // secret throughout, even while Entra replicates the new one.
    let monitor = Monitor::start(scenario.clone());
    let k0 = our_key_ids(&scenario)[0];
    scenario
        .edit_config("retryInterval: 1s", "retryInterval: 200ms")
        .unwrap();
    scenario
        .edit_config("retryBudget: 30s", "retryBudget: 1s")
        .unwrap();
    scenario
        .tenant
        .set_propagation_delay(Duration::from_secs(3600));
    let removes = scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD);
    let output = run(&scenario, &["--force"], &transcript).await;
    assert_eq!(output.code, Some(1), "{CASE}: {}", tail(&output.text));
    assert!(
        output.text.contains("FAILED (VerificationFailed"),
        "{CASE}: {}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("failed verification after"),
        "{CASE}: {}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("the stores keep the secret that worked"),
        "{CASE}: {}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("it failed verification and was never stored"),
        "{CASE}: {}",
        tail(&output.text)
    );
    assert_eq!(
        scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD),
        removes + 1,
        "only the unverified new secret was removed"
    );
    assert_eq!(our_key_ids(&scenario), vec![k0], "K0 stays live and stored");
    assert_eq!(stored_key_ids(&scenario), [Some(k0), Some(k0)]);

    // Entra catches up; the next run finds K0 stored and working.
    scenario.tenant.set_propagation_delay(Duration::ZERO);
    let next = converges(CASE, &scenario, &transcript, monitor).await;
    assert_eq!(next, "up to date", "{CASE}: the next run");
    assert_eq!(our_key_ids(&scenario), vec![k0]);
    row(
        CASE,
        "exit 1 (VerificationFailed), new secret discarded, stores keep K0, nothing revoked",
        &next,
        started,
    );
}

/// Runner B starts while runner A is between mint and store: B sees A's fresh secret,
/// mints nothing and exits; both end up on A's keyId. B stands for another machine, so it
/// has a lock of its own (on one machine the lock alone keeps B out: tests/run_lock.rs).
/// A's Key Vault write is held in the stand-in until B has finished.
#[tokio::test]
async fn a_second_runner_during_a_rotation_waits_instead_of_minting() {
    const CASE: &str = "two runners, B starts while A stores";
    let started = Instant::now();
    let scenario = scenario().await;
    let transcript = Transcript::default();
    let a_stores = scenario.vault.faults().hold(vault_routes::SET_SECRET);
    let mut a = Rotator::spawn(&scenario.config_path, &[], &transcript);
    a.wait_held("runner A's Key Vault write", &a_stores).await;
    let other_machine = other_machines_lock(&scenario);
    let b = run_ok(&scenario, &["--lock-file", &other_machine], &transcript).await;
    assert!(
        b.text.contains("dify-smtp: waiting: keyId"),
        "{CASE}: {}",
        tail(&b.text)
    );
    a_stores.release();
    let a = a.finish().await;
    assert_eq!(a.code, Some(0), "{CASE}: {}", tail(&a.text));
    assert_eq!(
        scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        1,
        "{CASE}: exactly one secret minted"
    );
    let ours = our_key_ids(&scenario);
    assert_eq!(ours.len(), 1, "{CASE}: {ours:?}");
    assert!(
        b.text.contains(&ours[0].to_string()) && a.text.contains(&ours[0].to_string()),
        "{CASE}: both name the same keyId"
    );
    let again = run_ok(&scenario, &[], &transcript).await;
    assert!(
        again
            .text
            .contains(&format!("up to date: keyId {}", ours[0])),
        "{CASE}: {}",
        tail(&again.text)
    );
    transcript.assert_no_secret_leaked(&scenario);
    row(
        CASE,
        "A rotates; B waits (mints nothing)",
        "up to date on A's keyId",
        started,
    );
}

/// Two runners on two machines (each its own lock) that both observe before either mints:
/// both mint. The stand-in holds both addPassword requests until both runners have sent
/// theirs, then lets A finish before B goes on, so the outcome is the same on every run.
/// The promise still holds: the consumers' credential works throughout and the next run
/// converges on one keyId. The controller's Lease (or a CronJob with
/// `concurrencyPolicy: Forbid`) is what prevents the double mint.
#[tokio::test]
async fn two_runners_observing_at_once_mint_twice_but_lose_nothing() {
    const CASE: &str = "two runners observing at once (--force both)";
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let k0 = our_key_ids(&scenario)[0];
    let graph = scenario.graph.faults();
    let adds = graph.count(ROUTE_ADD_PASSWORD);
    let (a_mints, b_mints) = (graph.hold(ROUTE_ADD_PASSWORD), graph.hold(ROUTE_ADD_PASSWORD));
    let mut a = Rotator::spawn(&scenario.config_path, &["--force"], &transcript);
    a.wait_held("runner A's addPassword", &a_mints).await;
    let other_machine = other_machines_lock(&scenario);
    let mut b = Rotator::spawn(
        &scenario.config_path,
        &["--force", "--lock-file", &other_machine],
        &transcript,
    );
    b.wait_held("runner B's addPassword", &b_mints).await;
    assert_eq!(our_key_ids(&scenario), vec![k0], "{CASE}: both observed K0 alone");

    a_mints.release();
    let a = a.finish().await;
    assert_eq!(a.code, Some(0), "{CASE}: runner A: {}", tail(&a.text));
    let a_key = only_other_key(&scenario, k0, CASE);
    assert_eq!(stored_key_ids(&scenario), [Some(a_key), Some(a_key)], "{CASE}: A stored its keyId");

    b_mints.release();
    let b = b.finish().await;
    assert_eq!(b.code, Some(0), "{CASE}: runner B: {}", tail(&b.text));
    assert_eq!(graph.count(ROUTE_ADD_PASSWORD), adds + 2, "{CASE}: two mints");
    let [vault, secret] = stored_key_ids(&scenario);
    let b_key = vault.expect("Key Vault holds B's keyId");
    assert_eq!(secret, Some(b_key), "{CASE}: the stores agree on B's keyId");
    assert!(b_key != a_key && b_key != k0, "{CASE}: B stored its own keyId");
    assert!(our_key_ids(&scenario).contains(&a_key), "{CASE}: A's keyId stays live after B");
    let next = converges(CASE, &scenario, &transcript, monitor).await;
    assert_eq!(next, "settled, revoked the old secret", "{CASE}: the next run");
    assert_eq!(our_key_ids(&scenario), vec![b_key], "{CASE}: the next run keeps B's keyId");
    row(
        CASE,
        "2 mints; exit codes 0/0; the stores end on B's keyId, A's stays live",
        &next,
        started,
    );
}

/// The one keyId of ours besides `k0`; panics naming `case` if there is not exactly one.
fn only_other_key(scenario: &Scenario, k0: uuid::Uuid, case: &str) -> uuid::Uuid {
    let others: Vec<_> = our_key_ids(scenario).into_iter().filter(|k| *k != k0).collect();
    assert_eq!(others.len(), 1, "{case}: one new keyId of ours: {others:?}");
    others[0]
}

// ---- Timeouts, in process (the binary's client timeouts are 30 s) ----
//
// A timed-out request is one the stand-in never answers while the test runs (it waits
// [`HOLD`], two minutes), so the client's timer always fires first; [`TIMEOUT`] only has to
// be long enough for every other request on a loaded machine.

#[tokio::test]
async fn timeouts_on_reads_and_store_writes_are_retried() {
    const CASE: &str = "timeout (no answer within the 3 s client timeout): Graph GET, Key Vault set";
    let started = Instant::now();
    let (scenario, _transcript, monitor) = settled().await;
    let rotation = in_process_rotation(&scenario, TIMEOUT);
    let (engine, _) = engine();
    let (gets, sets) = (
        scenario.graph.faults().count(ROUTE_GET_APPLICATION),
        scenario.vault.faults().count(vault_routes::SET_SECRET),
    );
    scenario
        .graph
        .faults()
        .push(ROUTE_GET_APPLICATION, Fault::delay(HOLD));
    scenario
        .vault
        .faults()
        .push(vault_routes::SET_SECRET, Fault::delay(HOLD));
    let outcome = engine
        .run(
            &rotation,
            RunOptions {
                force: true,
                dry_run: false,
            },
        )
        .await;
    assert!(
        matches!(outcome, Ok(Outcome::Settled { minted: true, .. })),
        "{CASE}: {outcome:?}"
    );
    assert_eq!(
        scenario.graph.faults().count(ROUTE_GET_APPLICATION),
        gets + 2,
        "{CASE}: the timed-out GET and its retry"
    );
    assert_eq!(
        scenario.vault.faults().count(vault_routes::SET_SECRET),
        sets + 2,
        "{CASE}: the timed-out Key Vault write and its retry"
    );
    let ours = our_key_ids(&scenario);
    assert_eq!(ours.len(), 1, "{CASE}: the old secret was revoked: {ours:?}");
    assert_eq!(stored_key_ids(&scenario), [Some(ours[0]), Some(ours[0])], "{CASE}");
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new(), "{CASE}");
    row(
        CASE,
        "retried, rotated",
        "(settled in the same run)",
        started,
    );
}

#[tokio::test]
async fn add_password_timing_out_after_graph_acted_leaves_an_orphan_the_next_run_removes() {
    const CASE: &str = "timeout on addPassword after Graph acted (answer lost)";
    let started = Instant::now();
    let (scenario, _transcript, monitor) = settled().await;
    let k0 = our_key_ids(&scenario);
    let rotation = in_process_rotation(&scenario, TIMEOUT);
    let (engine, _) = engine();
    let adds = scenario.graph.faults().count(ROUTE_ADD_PASSWORD);
    // Held until the test has minted in Graph's place, then never answered: the stand-in
    // drops a request whose client went away, so the test acts as Graph would have.
    let arrives = scenario.graph.faults().hold(ROUTE_ADD_PASSWORD);
    scenario
        .graph
        .faults()
        .push(ROUTE_ADD_PASSWORD, Fault::delay(HOLD));
    let run = engine.run(
        &rotation,
        RunOptions {
            force: true,
            dry_run: false,
        },
    );
    let graph_acts = async {
        arrives.arrived().await;
        let now = chrono::Utc::now();
        let marker = entra_rotator::domain::marker_for(entra_rotator_standins::scenario::ROTATION);
        scenario.tenant.add_password(
            scenario.target.object_id,
            Some(marker),
            now,
            now + chrono::Duration::days(180),
        );
        arrives.release();
    };
    let (outcome, ()) = tokio::join!(run, graph_acts);
    let error = outcome.unwrap_err();
    assert_eq!(
        our_key_ids(&scenario).len(),
        2,
        "{CASE}: the minted secret is on the app, in no store"
    );
    assert!(
        matches!(error, EngineError::Graph(_)) && error.is_transient(),
        "{CASE}: {error}"
    );
    assert!(error.to_string().contains("timed out"), "{CASE}: {error}");
    assert_eq!(
        scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        adds + 1,
        "{CASE}: not retried: it could have acted"
    );
    let outcome = engine.run(&rotation, RunOptions::default()).await;
    assert!(
        matches!(outcome, Ok(Outcome::UpToDate { .. })),
        "{CASE}: {outcome:?}"
    );
    assert_eq!(our_key_ids(&scenario), k0, "{CASE}: the orphan was removed");
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new(), "{CASE}");
    row(
        CASE,
        "transient error, not retried",
        "orphan removed, up to date",
        started,
    );
}

#[tokio::test]
async fn timeouts_on_the_kubernetes_write_and_the_relay_stop_or_retry_then_converge() {
    const CASE: &str = "timeout: Kubernetes apply, then SMTP greeting";
    let started = Instant::now();
    let (scenario, _transcript, monitor) = settled().await;
    let k0 = our_key_ids(&scenario)[0];
    let rotation = in_process_rotation(&scenario, TIMEOUT);
    let (engine, _) = engine();
    scenario
        .kubernetes
        .faults()
        .push(kube_routes::PATCH_SECRET, Fault::delay(HOLD));
    let first = engine
        .run(
            &rotation,
            RunOptions {
                force: true,
                dry_run: false,
            },
        )
        .await;
    let error = first.expect_err("the Kubernetes write timed out");
    assert!(
        matches!(error, EngineError::Store(_)) && error.is_transient(),
        "{CASE}: {error}"
    );
    assert!(error.to_string().contains("Kubernetes"), "{CASE}: names the store: {error}");
    let k1 = only_other_key(&scenario, k0, CASE);
    assert_eq!(
        stored_key_ids(&scenario),
        [Some(k1), Some(k0)],
        "{CASE}: Key Vault got the verified K1, the Secret keeps K0"
    );

    // The next run re-verifies K1 before revoking K0: its first SMTP session gets no
    // greeting, times out, and the retry goes through.
    let sessions = scenario.relay.sessions();
    scenario.relay.inject_fault(SmtpFault::SlowGreeting(HOLD));
    let second = engine.run(&rotation, RunOptions::default()).await;
    assert!(
        matches!(
            &second,
            Ok(Outcome::Settled { key_id, minted: false, revoked, .. }) if *key_id == k1 && *revoked == [k0]
        ),
        "{CASE}: {second:?}"
    );
    assert_eq!(
        scenario.relay.sessions(),
        sessions + 2,
        "{CASE}: the silent session, then the retry"
    );
    assert_eq!(our_key_ids(&scenario), vec![k1], "{CASE}");
    assert_eq!(stored_key_ids(&scenario), [Some(k1), Some(k1)], "{CASE}");
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new(), "{CASE}");
    row(
        CASE,
        "StoreFailed (transient); Key Vault holds the new secret, the Secret the old",
        "greeting timed out, verification retried, settled (old revoked)",
        started,
    );
}

/// The lock a runner on another machine would take: not the one beside the configuration.
fn other_machines_lock(scenario: &Scenario) -> String {
    scenario.config_path.with_file_name("other-machine.lock").display().to_string()
}
