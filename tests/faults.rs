//! Faults on every service the rotator talks to, played by the stand-ins over real
//! sockets: throttling with `Retry-After`, 5xx, dropped connections, timeouts, Key Vault
//! failing between mint and store, SMTP 4xx, an Entra replication delay longer than the
//! verification budget, and two runners at once.
//!
//! Each test checks what a user would: the exit code and the message, what Graph and the
//! stores hold afterwards, that the consumers' credential kept working, and that the next
//! run converges. Timeouts are tested in-process with 300 ms client timeouts (the binary's
//! are 30 s). `cargo test --test faults -- --nocapture` prints one markdown row per fault.

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

const TIMEOUT: Duration = Duration::from_millis(300);
/// Longer than [`TIMEOUT`]: the request is answered only after the client gave up.
const SLOW: Duration = Duration::from_millis(900);

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
async fn converges(scenario: &Scenario, transcript: &Transcript, monitor: Monitor) -> String {
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 0s")
        .ok();
    let rerun = run_ok(scenario, &[], transcript).await;
    let watched = monitor.stop().await;
    assert_eq!(
        watched.violations,
        Vec::<String>::new(),
        "the consumers' credential broke"
    );
    let ours = our_key_ids(scenario);
    assert_eq!(
        ours.len(),
        1,
        "one credential of ours once converged: {ours:?}"
    );
    assert_eq!(stored_key_ids(scenario), [Some(ours[0]), Some(ours[0])]);
    consumers_credential_works(scenario).unwrap();
    transcript.assert_no_secret_leaked(scenario);
    outcome_word(&rerun.text)
}

#[tokio::test]
async fn graph_throttling_with_retry_after_is_waited_out() {
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
        "{}",
        tail(&forced.text)
    );
    assert_eq!(
        graph.count(ROUTE_ADD_PASSWORD),
        adds_before + 3,
        "two 429s, then one mint"
    );
    assert_eq!(graph.pending(ROUTE_REMOVE_PASSWORD), 0);
    let next = converges(&scenario, &transcript, monitor).await;
    row(
        "Graph 429 + Retry-After: 1 on GET, addPassword ×2, removePassword",
        "rotated after waiting",
        &next,
        started,
    );
}

#[tokio::test]
async fn graph_throttling_longer_than_the_retry_cap_stops_the_run_and_changes_nothing() {
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let before = our_key_ids(&scenario);
    scenario
        .graph
        .faults()
        .push(ROUTE_ADD_PASSWORD, Fault::throttle(3600));
    let output = run(&scenario, &["--force"], &transcript).await;
    assert_eq!(output.code, Some(1), "{}", tail(&output.text));
    assert!(
        output
            .text
            .contains("FAILED (GraphFailed; will succeed on a later run"),
        "{}",
        tail(&output.text)
    );
    assert!(output.text.contains("HTTP 429"), "{}", tail(&output.text));
    assert_eq!(our_key_ids(&scenario), before, "nothing minted");
    let next = converges(&scenario, &transcript, monitor).await;
    row(
        "Graph 429 + Retry-After: 3600 on addPassword",
        "exit 1, transient, nothing changed",
        &next,
        started,
    );
}

#[tokio::test]
async fn graph_5xx_are_retried_where_safe_and_stop_the_run_where_not() {
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let graph = scenario.graph.faults();
    graph.push_times(ROUTE_GET_APPLICATION, Fault::status(503), 2);
    graph.push_times(ROUTE_REMOVE_PASSWORD, Fault::status(500), 2);
    let forced = run_ok(&scenario, &["--force"], &transcript).await;
    assert!(forced.text.contains("revoked"), "{}", tail(&forced.text));

    // addPassword is not idempotent: a 5xx may hide a mint, so it is not repeated blindly.
    let before = our_key_ids(&scenario);
    graph.push(ROUTE_ADD_PASSWORD, Fault::status(503));
    let output = run(&scenario, &["--force"], &transcript).await;
    assert_eq!(output.code, Some(1), "{}", tail(&output.text));
    assert!(output.text.contains("HTTP 503"), "{}", tail(&output.text));
    assert_eq!(our_key_ids(&scenario), before);
    let next = converges(&scenario, &transcript, monitor).await;
    row(
        "Graph 503 ×2 on GET, 500 ×2 on removePassword; 503 on addPassword",
        "retried; addPassword: exit 1, nothing minted",
        &next,
        started,
    );
}

/// Picks one stand-in's fault queues.
type FaultsOf = fn(&Scenario) -> &Faults;

/// A dropped connection on each API, on the call of a forced rotation that is hardest to
/// retry; the run either rides it out or stops, and the next run converges.
#[tokio::test]
async fn dropped_connections_on_each_api() {
    let cases: [(&str, FaultsOf, &str); 5] = [
        (
            "Graph GET application",
            |s| s.graph.faults(),
            ROUTE_GET_APPLICATION,
        ),
        (
            "Graph addPassword",
            |s| s.graph.faults(),
            ROUTE_ADD_PASSWORD,
        ),
        (
            "Graph removePassword",
            |s| s.graph.faults(),
            ROUTE_REMOVE_PASSWORD,
        ),
        (
            "Key Vault set secret",
            |s| s.vault.faults(),
            vault_routes::SET_SECRET,
        ),
        (
            "Kubernetes apply Secret",
            |s| s.kubernetes.faults(),
            kube_routes::PATCH_SECRET,
        ),
    ];
    for (name, faults, route) in cases {
        let started = Instant::now();
        let (scenario, transcript, monitor) = settled().await;
        faults(&scenario).push(route, Fault::drop_connection());
        let output = run(&scenario, &["--force"], &transcript).await;
        assert_ne!(output.code, Some(2), "{name}: {}", tail(&output.text));
        assert_eq!(
            faults(&scenario).pending(route),
            0,
            "{name}: the drop was played"
        );
        let first = match output.code {
            Some(0) => "rode it out (retried)".to_string(),
            _ => {
                let line = output
                    .text
                    .lines()
                    .find(|l| l.contains("FAILED"))
                    .unwrap_or_default()
                    .to_string();
                assert!(
                    line.contains("will succeed on a later run"),
                    "{name}: transient: {line}"
                );
                "exit 1, transient".to_string()
            }
        };
        let next = converges(&scenario, &transcript, monitor).await;
        row(
            &format!("dropped connection: {name}"),
            &first,
            &next,
            started,
        );
    }
}

#[tokio::test]
async fn key_vault_failing_between_mint_and_store_leaves_an_orphan_the_next_run_removes() {
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let k0 = our_key_ids(&scenario);
    scenario
        .vault
        .faults()
        .push(vault_routes::SET_SECRET, Fault::status(403));
    let output = run(&scenario, &["--force"], &transcript).await;
    assert_eq!(output.code, Some(1), "{}", tail(&output.text));
    assert!(
        output.text.contains("FAILED (StoreFailed"),
        "{}",
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
        "{}",
        tail(&waiting.text)
    );
    assert_eq!(
        scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        adds,
        "no second mint"
    );

    let next = converges(&scenario, &transcript, monitor).await;
    assert_eq!(
        our_key_ids(&scenario),
        k0,
        "the orphan is gone; K0 stays current"
    );
    row(
        "Key Vault 403 between mint and store",
        "exit 1 (StoreFailed); next run within 10m waits",
        &format!("{next} (orphan removed with orphanGracePeriod 0s)"),
        started,
    );
}

#[tokio::test]
async fn smtp_4xx_is_retried_until_the_relay_accepts() {
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    scenario
        .edit_config("retryInterval: 1s", "retryInterval: 100ms")
        .unwrap();
    scenario.relay.inject_temporary_failures(2);
    scenario.relay.inject_fault(SmtpFault::ServiceUnavailable);
    let sessions = scenario.relay.sessions();
    let forced = run_ok(&scenario, &["--force"], &transcript).await;
    assert!(
        forced.text.contains("after 4 attempt(s)"),
        "{}",
        tail(&forced.text)
    );
    assert_eq!(scenario.relay.sessions(), sessions + 4);
    let next = converges(&scenario, &transcript, monitor).await;
    row(
        "SMTP 451 4.4.3 ×2 at MAIL FROM, then 421 greeting",
        "verified on attempt 4, old revoked",
        &next,
        started,
    );
}

#[tokio::test]
async fn replication_slower_than_the_verification_budget_keeps_the_old_secret_and_fails_loudly() {
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
    assert_eq!(output.code, Some(1), "{}", tail(&output.text));
    assert!(
        output.text.contains("FAILED (VerificationFailed"),
        "{}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("failed verification after"),
        "{}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("the stores keep the secret that worked"),
        "{}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("it failed verification and was never stored"),
        "{}",
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
    let next = converges(&scenario, &transcript, monitor).await;
    assert_eq!(our_key_ids(&scenario), vec![k0]);
    row(
        "Entra replication 1h > verification budget 1s",
        "exit 1 (VerificationFailed), new secret discarded, stores keep K0, nothing revoked",
        &next,
        started,
    );
}

/// Runner B starts while runner A is between mint and store: B sees A's fresh secret,
/// mints nothing and exits; both end up on A's keyId. B stands for another machine, so it
/// has a lock of its own (on one machine the lock alone keeps B out: tests/run_lock.rs).
#[tokio::test]
async fn a_second_runner_during_a_rotation_waits_instead_of_minting() {
    let started = Instant::now();
    let scenario = scenario().await;
    let transcript = Transcript::default();
    scenario.vault.faults().push(
        vault_routes::SET_SECRET,
        Fault::delay(Duration::from_millis(1500)),
    );
    let mut a = Rotator::spawn(&scenario.config_path, &[], &transcript);
    let vault = scenario.clone();
    a.wait_until("runner A's Key Vault write", || {
        vault.vault.faults().count(vault_routes::SET_SECRET) > 0
    })
    .await;
    let other_machine = other_machines_lock(&scenario);
    let b = run_ok(&scenario, &["--lock-file", &other_machine], &transcript).await;
    assert!(
        b.text.contains("dify-smtp: waiting: keyId"),
        "{}",
        tail(&b.text)
    );
    let a = a.finish().await;
    assert_eq!(a.code, Some(0), "{}", tail(&a.text));
    assert_eq!(
        scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        1,
        "exactly one secret minted"
    );
    let ours = our_key_ids(&scenario);
    assert_eq!(ours.len(), 1);
    assert!(
        b.text.contains(&ours[0].to_string()) && a.text.contains(&ours[0].to_string()),
        "both name the same keyId"
    );
    let again = run_ok(&scenario, &[], &transcript).await;
    assert!(
        again
            .text
            .contains(&format!("up to date: keyId {}", ours[0])),
        "{}",
        tail(&again.text)
    );
    transcript.assert_no_secret_leaked(&scenario);
    row(
        "two runners, B starts while A stores",
        "A rotates; B waits (mints nothing)",
        "up to date on A's keyId",
        started,
    );
}

/// Two runners on two machines (each its own lock) that both observe before either mints:
/// both mint. The promise still holds: the consumers' credential works throughout and the
/// next run converges on one keyId. The controller's Lease (or a CronJob with
/// `concurrencyPolicy: Forbid`) is what prevents the double mint.
#[tokio::test]
async fn two_runners_observing_at_once_mint_twice_but_lose_nothing() {
    let started = Instant::now();
    let (scenario, transcript, monitor) = settled().await;
    let graph = scenario.graph.faults();
    graph.push_times(
        ROUTE_ADD_PASSWORD,
        Fault::delay(Duration::from_millis(400)),
        2,
    );
    let adds = graph.count(ROUTE_ADD_PASSWORD);
    let mut a = Rotator::spawn(&scenario.config_path, &["--force"], &transcript);
    let other_machine = other_machines_lock(&scenario);
    let mut b = Rotator::spawn(&scenario.config_path, &["--force", "--lock-file", &other_machine], &transcript);
    let s = scenario.clone();
    a.wait_until("both runners minting", || {
        s.graph.faults().count(ROUTE_ADD_PASSWORD) >= adds + 2
    })
    .await;
    b.wait_until("both runners minting", || true).await;
    let (a, b) = (a.finish().await, b.finish().await);
    let codes = [a.code, b.code];
    assert!(
        codes.contains(&Some(0)) || codes.contains(&Some(1)),
        "{codes:?}"
    );
    let next = converges(&scenario, &transcript, monitor).await;
    row(
        "two runners observing at once (--force both)",
        &format!(
            "2 mints; exit codes {:?}/{:?}",
            a.code.unwrap_or(-1),
            b.code.unwrap_or(-1)
        ),
        &next,
        started,
    );
}

// ---- Timeouts, in process (the binary's client timeouts are 30 s) ----

#[tokio::test]
async fn timeouts_on_reads_and_store_writes_are_retried() {
    let started = Instant::now();
    let (scenario, _transcript, monitor) = settled().await;
    let rotation = in_process_rotation(&scenario, TIMEOUT);
    let (engine, _) = engine();
    scenario
        .graph
        .faults()
        .push(ROUTE_GET_APPLICATION, Fault::delay(SLOW));
    scenario
        .vault
        .faults()
        .push(vault_routes::SET_SECRET, Fault::delay(SLOW));
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
        "{outcome:?}"
    );
    assert_eq!(
        scenario.graph.faults().count(ROUTE_GET_APPLICATION),
        3,
        "K0's run, the timed-out GET, its retry"
    );
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new());
    row(
        "timeout (900 ms > 300 ms client timeout): Graph GET, Key Vault set",
        "retried, rotated",
        "(settled in the same run)",
        started,
    );
}

#[tokio::test]
async fn add_password_timing_out_after_graph_acted_leaves_an_orphan_the_next_run_removes() {
    let started = Instant::now();
    let (scenario, _transcript, monitor) = settled().await;
    let k0 = our_key_ids(&scenario);
    let rotation = in_process_rotation(&scenario, TIMEOUT);
    let (engine, _) = engine();
    scenario
        .graph
        .faults()
        .push(ROUTE_ADD_PASSWORD, Fault::delay(SLOW));
    let run = engine.run(
        &rotation,
        RunOptions {
            force: true,
            dry_run: false,
        },
    );
    // Graph acts on the request while the client waits (the stand-in drops a request whose
    // client went away, so the test mints in its place, as Graph would have).
    let graph_acts = async {
        while scenario.graph.faults().count(ROUTE_ADD_PASSWORD) < 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let now = chrono::Utc::now();
        let marker = entra_rotator::domain::marker_for(entra_rotator_standins::scenario::ROTATION);
        scenario.tenant.add_password(
            scenario.target.object_id,
            Some(marker),
            now,
            now + chrono::Duration::days(180),
        );
    };
    let (outcome, ()) = tokio::join!(run, graph_acts);
    let error = outcome.unwrap_err();
    assert_eq!(
        our_key_ids(&scenario).len(),
        2,
        "the minted secret is on the app, in no store"
    );
    assert!(
        matches!(error, EngineError::Graph(_)) && error.is_transient(),
        "{error}"
    );
    assert!(error.to_string().contains("timed out"), "{error}");
    // The stand-in mints once its delay is over, after the client gave up: the answer is lost.
    assert_eq!(
        scenario.graph.faults().count(ROUTE_ADD_PASSWORD),
        2,
        "not retried: it could have acted"
    );
    let outcome = engine.run(&rotation, RunOptions::default()).await;
    assert!(
        matches!(outcome, Ok(Outcome::UpToDate { .. })),
        "{outcome:?}"
    );
    assert_eq!(our_key_ids(&scenario), k0, "the orphan was removed");
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new());
    row(
        "timeout on addPassword after Graph acted (answer lost)",
        "transient error, not retried",
        "orphan removed, up to date",
        started,
    );
}

#[tokio::test]
async fn timeouts_on_the_kubernetes_write_and_the_relay_stop_or_retry_then_converge() {
    let started = Instant::now();
    let (scenario, _transcript, monitor) = settled().await;
    let rotation = in_process_rotation(&scenario, TIMEOUT);
    let (engine, _) = engine();
    scenario
        .kubernetes
        .faults()
        .push(kube_routes::PATCH_SECRET, Fault::delay(SLOW));
    let first = engine
        .run(
            &rotation,
            RunOptions {
                force: true,
                dry_run: false,
            },
        )
        .await;
    if let Err(error) = &first {
        assert!(error.is_transient(), "{error}");
    }
    scenario.relay.inject_fault(SmtpFault::SlowGreeting(SLOW));
    let second = engine.run(&rotation, RunOptions::default()).await;
    assert!(
        matches!(
            second,
            Ok(Outcome::Settled { .. }) | Ok(Outcome::UpToDate { .. })
        ),
        "{second:?}"
    );
    let ours = our_key_ids(&scenario);
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(stored_key_ids(&scenario), [Some(ours[0]), Some(ours[0])]);
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new());
    let first = match first {
        Ok(_) => "rode it out".to_string(),
        Err(e) => format!("{} (transient)", e.category()),
    };
    row(
        "timeout: Kubernetes apply, then SMTP greeting",
        &first,
        "verification retried, settled",
        started,
    );
}

/// The lock a runner on another machine would take: not the one beside the configuration.
fn other_machines_lock(scenario: &Scenario) -> String {
    scenario.config_path.with_file_name("other-machine.lock").display().to_string()
}
