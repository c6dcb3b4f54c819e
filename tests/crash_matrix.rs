//! The crash-point matrix: the real `entra-rotator run` child is SIGKILLed at every
//! boundary of the rotation loop, then run again, and the safety promise is checked.
//!
//! No test branch exists in the product: a stand-in holds the request the child sends at
//! the named point (or the relay holds its SMTP session), the test polls the stand-in's
//! request counts until the child is blocked there, and kills it. Every row starts from a
//! settled rotation (keyId K0 stored and working), kills a `--force` run, then reruns with
//! `orphanGracePeriod: 0s` and asserts:
//! - at every sampled moment (every ~2 ms, through the kill and the rerun) the value in
//!   Key Vault and in the Kubernetes Secret authenticates against the tenant;
//! - after the rerun no secret of ours exists that no store holds;
//! - every `removePassword` arrived while both stores held a live successor and after the
//!   relay accepted a verification mail, and the engine's log says `verified` first;
//! - exactly one credential of ours is live (the scenario's `revokeGracePeriod` is 0s),
//!   at most two with a grace period;
//! - no secret value, nor its base64 form, reached any child's output (trace logs).
//!
//! `cargo test --test crash_matrix -- --nocapture` prints one markdown row per crash point
//! (see docs/safety.md).

mod support;

use entra_rotator_standins::faults::{Fault, FaultAction, Faults};
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

#[derive(Clone, Copy, Debug)]
enum Service {
    Graph,
    Vault,
    Kubernetes,
}

fn faults(scenario: &Scenario, service: Service) -> &Faults {
    match service {
        Service::Graph => scenario.graph.faults(),
        Service::Vault => scenario.vault.faults(),
        Service::Kubernetes => scenario.kubernetes.faults(),
    }
}

/// How the child is stopped at a point.
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// The stand-in holds the next request on `route`, then closes the connection without
    /// acting on it (the child is killed long before).
    Request {
        service: Service,
        route: &'static str,
    },
    /// As `Request` on `removePassword`, but the test removes the old keyId while the child
    /// waits: Graph acted, the answer was lost with the process.
    RevokeLanded,
    /// The relay holds the next SMTP session before its greeting.
    RelayGreeting,
    /// The relay answers `451 4.4.3` at MAIL FROM twice (the engine backs off and retries),
    /// then holds the third session before its greeting.
    RelayAfterRetries,
}

impl Hold {
    /// Queues the hold; returns what the child must have done for it to be blocked there.
    fn arm(self, scenario: &Arc<Scenario>) -> Box<dyn Fn() -> bool> {
        let held = Fault {
            delay: HOLD,
            action: FaultAction::DropConnection,
        };
        let s = scenario.clone();
        match self {
            Hold::Request { service, route } => {
                let baseline = faults(scenario, service).count(route);
                faults(scenario, service).push(route, held);
                Box::new(move || faults(&s, service).count(route) > baseline)
            }
            Hold::RevokeLanded => Hold::Request {
                service: Service::Graph,
                route: ROUTE_REMOVE_PASSWORD,
            }
            .arm(scenario),
            Hold::RelayGreeting => {
                let baseline = scenario.relay.sessions();
                scenario.relay.inject_fault(SmtpFault::SlowGreeting(HOLD));
                Box::new(move || s.relay.sessions() > baseline)
            }
            Hold::RelayAfterRetries => {
                let baseline = scenario.relay.sessions();
                scenario.relay.inject_temporary_failures(2);
                scenario.relay.inject_fault(SmtpFault::SlowGreeting(HOLD));
                Box::new(move || s.relay.sessions() >= baseline + 3)
            }
        }
    }
}

/// What one row of the matrix found, printed for docs/safety.md.
struct Row {
    point: &'static str,
    ours_after_kill: usize,
    rerun: String,
    /// Revocations whose timing was checked against verification, and orphans removed.
    revocations: usize,
    orphans: usize,
    samples: usize,
    seconds: f64,
}

impl Row {
    fn print(&self) {
        println!(
            "| {} | {} | {} | {} | {} | {} | 0 | {:.1} s |",
            self.point,
            self.ours_after_kill,
            self.rerun,
            self.revocations,
            self.orphans,
            self.samples,
            self.seconds
        );
    }
}

/// Settles K0, kills a forced rotation at `hold`, reruns, checks every invariant.
async fn crash_at(point: &'static str, hold: Hold) -> Row {
    let started = Instant::now();
    let scenario = scenario().await;
    let transcript = Transcript::default();
    run_ok(&scenario, &[], &transcript).await;
    let k0 = our_key_ids(&scenario);
    assert_eq!(k0.len(), 1);
    consumers_credential_works(&scenario).unwrap();

    // The killed run.
    let monitor = Monitor::start(scenario.clone());
    let proofs_before_kill = proofs(&scenario);
    let blocked = hold.arm(&scenario);
    let mut child = Rotator::spawn(&scenario.config_path, &["--force"], &transcript);
    child.wait_until(point, blocked).await;
    if let Hold::RevokeLanded = hold {
        assert!(
            scenario
                .tenant
                .remove_password(scenario.target.object_id, k0[0])
        );
    }
    child.kill().await;
    for service in [Service::Graph, Service::Vault, Service::Kubernetes] {
        faults(&scenario, service).clear();
    }
    let killed = monitor.stop().await;
    assert_eq!(
        killed.violations,
        Vec::<String>::new(),
        "{point}: consumers broke"
    );
    let (revoked_in_kill, _) =
        assert_revocations_followed_verification(&killed, proofs_before_kill, &k0);
    consumers_credential_works(&scenario)
        .unwrap_or_else(|e| panic!("{point}, after the kill: {e}"));
    let ours_after_kill = our_key_ids(&scenario).len();

    // The rerun: a plain run, orphans cleaned at once. Each removePassword is held 150 ms
    // so the monitor sees the world as it was when the revocation was asked for.
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 0s")
        .unwrap();
    scenario.graph.faults().push_times(
        ROUTE_REMOVE_PASSWORD,
        Fault::delay(Duration::from_millis(150)),
        3,
    );
    let monitor = Monitor::start(scenario.clone());
    let proofs_before_rerun = proofs(&scenario);
    let rerun = run_ok(&scenario, &[], &transcript).await;
    let watched = monitor.stop().await;
    assert_eq!(
        watched.violations,
        Vec::<String>::new(),
        "{point}: consumers broke in the rerun"
    );
    let (revocations, orphans) =
        assert_revocations_followed_verification(&watched, proofs_before_rerun, &k0);
    assert_log_verifies_before_revoking(&rerun.text);

    assert_settled_with_one_credential(&scenario, point);
    transcript.assert_no_secret_leaked(&scenario);
    Row {
        point,
        ours_after_kill,
        rerun: outcome_word(&rerun.text),
        revocations: revoked_in_kill + revocations,
        orphans,
        samples: killed.samples.len() + watched.samples.len(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// After a finished run with `revokeGracePeriod: 0s`: one credential of ours, stored in
/// both stores, working; the hand-made secret untouched.
fn assert_settled_with_one_credential(scenario: &Scenario, point: &str) {
    let ours = our_key_ids(scenario);
    assert_eq!(
        ours.len(),
        1,
        "{point}: exactly one credential of ours, found {ours:?}"
    );
    let [vault, secret] = stored_key_ids(scenario);
    assert_eq!(
        vault,
        Some(ours[0]),
        "{point}: Key Vault holds the live credential"
    );
    assert_eq!(
        secret,
        Some(ours[0]),
        "{point}: the Kubernetes Secret holds the live credential"
    );
    consumers_credential_works(scenario)
        .unwrap_or_else(|e| panic!("{point}, after the rerun: {e}"));
    assert!(
        scenario
            .target_now()
            .passwords
            .iter()
            .any(|p| p.key_id == scenario.foreign_key_id),
        "{point}: the hand-made secret is untouched"
    );
}

#[tokio::test]
async fn kill_during_observe_while_reading_graph() {
    crash_at(
        "during observe (GET application)",
        Hold::Request {
            service: Service::Graph,
            route: ROUTE_GET_APPLICATION,
        },
    )
    .await
    .print();
}

#[tokio::test]
async fn kill_during_observe_while_reading_key_vault() {
    crash_at(
        "during observe (Key Vault read)",
        Hold::Request {
            service: Service::Vault,
            route: vault_routes::GET_SECRET,
        },
    )
    .await
    .print();
}

#[tokio::test]
async fn kill_after_observe_with_add_password_in_flight() {
    crash_at(
        "after observe (addPassword sent, not acted on)",
        Hold::Request {
            service: Service::Graph,
            route: ROUTE_ADD_PASSWORD,
        },
    )
    .await
    .print();
}

#[tokio::test]
async fn kill_after_verification_before_any_store_write() {
    let row = crash_at(
        "after verification (Key Vault write in flight)",
        Hold::Request {
            service: Service::Vault,
            route: vault_routes::SET_SECRET,
        },
    )
    .await;
    assert_eq!(
        row.ours_after_kill, 2,
        "the minted secret existed unstored after the kill"
    );
    assert!(
        row.rerun.contains("removed the unstored secret"),
        "{}",
        row.rerun
    );
    row.print();
}

#[tokio::test]
async fn kill_after_key_vault_write_before_kubernetes_write() {
    let row = crash_at(
        "after Key Vault write (Kubernetes write in flight)",
        Hold::Request {
            service: Service::Kubernetes,
            route: kube_routes::PATCH_SECRET,
        },
    )
    .await;
    assert!(
        row.rerun.starts_with("settled"),
        "the rerun completes the stores: {}",
        row.rerun
    );
    row.print();
}

#[tokio::test]
async fn kill_after_mint_before_verification() {
    let row = crash_at("after mint (verification connecting)", Hold::RelayGreeting).await;
    assert!(row.rerun.contains("removed the unstored secret"), "{}", row.rerun);
    row.print();
}

#[tokio::test]
async fn kill_during_verification_retries() {
    crash_at(
        "during verification (2 × 451, retrying)",
        Hold::RelayAfterRetries,
    )
    .await
    .print();
}

#[tokio::test]
async fn kill_after_verification_before_revoke() {
    let row = crash_at(
        "after every store write, before revoke (removePassword in flight)",
        Hold::Request {
            service: Service::Graph,
            route: ROUTE_REMOVE_PASSWORD,
        },
    )
    .await;
    assert!(
        row.rerun.contains("revoked the old secret"),
        "{}",
        row.rerun
    );
    row.print();
}

#[tokio::test]
async fn kill_after_revoke_landed_but_its_answer_was_lost() {
    let row = crash_at(
        "after revoke (Graph acted, answer lost)",
        Hold::RevokeLanded,
    )
    .await;
    assert_eq!(row.ours_after_kill, 1);
    row.print();
}

/// With a grace period the old secret outlives the rerun, but never more than two of ours.
#[tokio::test]
async fn kill_with_a_grace_period_leaves_at_most_two_credentials() {
    let started = Instant::now();
    let scenario = scenario().await;
    scenario
        .edit_config("revokeGracePeriod: 0s", "revokeGracePeriod: 1h")
        .unwrap();
    let transcript = Transcript::default();
    run_ok(&scenario, &[], &transcript).await;
    let k0 = our_key_ids(&scenario);
    let monitor = Monitor::start(scenario.clone());
    let blocked = Hold::Request {
        service: Service::Kubernetes,
        route: kube_routes::PATCH_SECRET,
    }
    .arm(&scenario);
    let mut child = Rotator::spawn(&scenario.config_path, &["--force"], &transcript);
    child.wait_until("the Kubernetes write", blocked).await;
    child.kill().await;
    scenario.kubernetes.faults().clear();
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 0s")
        .unwrap();
    let rerun = run_ok(&scenario, &[], &transcript).await;
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new());
    let (revocations, orphans) = assert_revocations_followed_verification(&watched, 0, &k0);
    let ours = our_key_ids(&scenario);
    assert_eq!(
        ours.len(),
        2,
        "the old secret waits for its grace period: {ours:?}"
    );
    let [vault, secret] = stored_key_ids(&scenario);
    assert!(
        vault.is_some() && vault == secret,
        "both stores hold the new secret"
    );
    assert!(rerun.text.contains("revoked from"), "{}", tail(&rerun.text));
    transcript.assert_no_secret_leaked(&scenario);
    Row {
        point: "after Key Vault write, revokeGracePeriod 1h",
        ours_after_kill: 2,
        rerun: outcome_word(&rerun.text) + ", old secret kept for its grace period (2 live)",
        revocations,
        orphans,
        samples: watched.samples.len(),
        seconds: started.elapsed().as_secs_f64(),
    }
    .print();
}

/// Secret values live in `secrecy::SecretString` (redacted `Debug`, zeroized on drop) from
/// the Graph answer to the store write. Checked on the real adapters: the `Debug` output of
/// every value-carrying type, of the adapters, of the engine's events and of errors holds
/// none of the values minted.
#[tokio::test]
async fn secret_values_never_reach_debug_output_events_or_errors() {
    use entra_rotator::domain::{MintedSecret, SecretString, SecretToStore, StoredSecret};
    use entra_rotator::engine::RunOptions;

    fn held_in_secrecy(_: &SecretString) {}

    let scenario = scenario().await;
    let rotation = in_process_rotation(&scenario, Duration::from_secs(5));
    let (engine, events) = engine();
    engine.run(&rotation, RunOptions::default()).await.unwrap();
    engine
        .run(
            &rotation,
            RunOptions {
                force: true,
                dry_run: false,
            },
        )
        .await
        .unwrap();

    // Minted while Entra is slow to replicate, so the verifier's refusal is exercised too.
    scenario
        .tenant
        .set_propagation_delay(Duration::from_secs(3600));
    let object_id = scenario.target.object_id;
    let marker = entra_rotator::domain::marker_for("debug-check");
    let end = chrono::Utc::now() + chrono::Duration::days(1);
    let minted: MintedSecret = rotation
        .directory
        .add_password(object_id, &marker, end)
        .await
        .unwrap();
    held_in_secrecy(&minted.value);
    let stored: Vec<Option<StoredSecret>> = read_all_stores(&rotation).await;
    for held in stored.iter().flatten() {
        held_in_secrecy(&held.value);
    }
    let to_store = SecretToStore {
        rotation: "debug-check",
        app: &rotation.app,
        key_id: minted.credential.key_id,
        value: &minted.value,
        not_before: None,
        expires: Some(end),
    };
    let verify_error = rotation
        .verifier
        .as_ref()
        .unwrap()
        .verify(&rotation.app, &minted.value)
        .await
        .unwrap_err();

    let debug = format!(
        "{minted:?}\n{stored:?}\n{to_store:?}\n{:?}\n{verify_error:?}\n{verify_error}\n{:?}\n{:?}\n{:?}",
        events.events(),
        rotation
            .stores
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>(),
        rotation.app,
        rotation.timing,
    );
    assert!(
        debug.contains("REDACTED"),
        "secrecy's redaction shows: {debug}"
    );
    let values = scenario.tenant.minted_values();
    assert!(
        values.len() >= 4,
        "K0, K1, the debug-check secret, the foreign one"
    );
    for value in &values {
        for form in secret_forms(value) {
            assert!(
                !debug.contains(&form),
                "a secret value reached Debug output or an error"
            );
        }
    }
    scenario.tenant.set_propagation_delay(Duration::ZERO);
}

async fn read_all_stores(
    rotation: &entra_rotator::engine::Rotation,
) -> Vec<Option<entra_rotator::domain::StoredSecret>> {
    let mut held = Vec::new();
    for store in &rotation.stores {
        held.push(store.read().await.unwrap());
    }
    held
}
