//! The crash-point matrix: the real `entra-rotator run` child is SIGKILLed at every
//! boundary of the rotation loop, then run again, and the safety promise is checked.
//!
//! No test branch exists in the product: a stand-in holds the request the child sends at
//! the named point (or the relay holds its SMTP session), the test polls the stand-in's
//! request counts until the child is blocked there, and kills it. Every row starts from a
//! settled rotation (keyId K0 stored and working), kills a `--force` run, then reruns with
//! `orphanGracePeriod: 0s` and asserts:
//! - at every sampled moment (every few ms, through the kill and the rerun) the value in
//!   Key Vault and in the Kubernetes Secret authenticates against the tenant;
//! - after the rerun no secret of ours exists that no store holds;
//! - every `removePassword`, held by the stand-in while the test looks, removed exactly one
//!   keyId of ours and arrived while both stores held a live successor and after the relay
//!   accepted a verification (a test mail or a handshake); the engine's log says `verified` first; each row's
//!   counts of revocations and removed orphans are what the row expects;
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
    /// Whether the child is stopped with its `removePassword` for K0 in flight.
    fn holds_a_revocation(self) -> bool {
        matches!(
            self,
            Hold::RevokeLanded
                | Hold::Request {
                    route: ROUTE_REMOVE_PASSWORD,
                    ..
                }
        )
    }

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

/// How many old secrets were revoked (after their successor was verified and stored)
/// and how many unstored orphans were removed, over the killed run and the rerun.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Removals {
    revoked: usize,
    orphans: usize,
}

/// Settles K0, kills a forced rotation at `hold`, reruns, checks every invariant and that
/// the removals were `expected`.
async fn crash_at(point: &'static str, hold: Hold, expected: Removals) -> Row {
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
    // The child is blocked in the stand-in: the world stands still while we look at it.
    let at_the_kill = snapshot(&scenario);
    let mut revoked_in_kill = 0;
    if hold.holds_a_revocation() {
        assert_revocation_followed_verification(point, &at_the_kill, k0[0], proofs_before_kill);
        revoked_in_kill = 1;
    }
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
    consumers_credential_works(&scenario)
        .unwrap_or_else(|e| panic!("{point}, after the kill: {e}"));
    let ours_after_kill = our_key_ids(&scenario).len();
    let stored_earlier: Vec<_> = killed
        .samples
        .iter()
        .chain([&Sample { stored: stored_key_ids(&scenario) }])
        .flat_map(|s| s.stored.iter().flatten().copied())
        .chain(k0.iter().copied())
        .collect();

    // The rerun: a plain run, orphans cleaned at once. Each removePassword is held until
    // the test has looked at the world as it was when the revocation was asked for.
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 0s")
        .unwrap();
    let monitor = Monitor::start(scenario.clone());
    let proofs_before_rerun = proofs(&scenario);
    let rerun = run_checking_revocations(
        point,
        &scenario,
        &[],
        &transcript,
        proofs_before_rerun,
        &stored_earlier,
    )
    .await;
    assert_eq!(rerun.output.code, Some(0), "{point}: the rerun: {}", tail(&rerun.output.text));
    let watched = monitor.stop().await;
    assert_eq!(
        watched.violations,
        Vec::<String>::new(),
        "{point}: consumers broke in the rerun"
    );
    assert_log_verifies_before_revoking(&rerun.output.text);
    let removals = Removals {
        revoked: revoked_in_kill + rerun.revoked.len(),
        orphans: rerun.orphans.len(),
    };
    assert_eq!(removals, expected, "{point}: what was removed");

    assert_settled_with_one_credential(&scenario, point);
    transcript.assert_no_secret_leaked(&scenario);
    Row {
        point,
        ours_after_kill,
        rerun: outcome_word(&rerun.output.text),
        revocations: removals.revoked,
        orphans: removals.orphans,
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
        Removals { revoked: 0, orphans: 0 },
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
        Removals { revoked: 0, orphans: 0 },
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
        Removals { revoked: 0, orphans: 0 },
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
        Removals { revoked: 0, orphans: 1 },
    )
    .await;
    assert_eq!(
        row.ours_after_kill, 2,
        "{}: the minted secret existed unstored after the kill", row.point
    );
    assert!(
        row.rerun.contains("removed the unstored secret"),
        "{}: {}",
        row.point, row.rerun
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
        Removals { revoked: 1, orphans: 0 },
    )
    .await;
    assert!(
        row.rerun.starts_with("settled"),
        "{}: the rerun completes the stores: {}",
        row.point, row.rerun
    );
    row.print();
}

#[tokio::test]
async fn kill_after_mint_before_verification() {
    let row = crash_at("after mint (verification connecting)", Hold::RelayGreeting, Removals { revoked: 0, orphans: 1 }).await;
    assert!(row.rerun.contains("removed the unstored secret"), "{}: {}", row.point, row.rerun);
    row.print();
}

#[tokio::test]
async fn kill_during_verification_retries() {
    crash_at(
        "during verification (2 × 451, retrying)",
        Hold::RelayAfterRetries,
        Removals { revoked: 0, orphans: 1 },
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
        Removals { revoked: 2, orphans: 0 },
    )
    .await;
    assert!(
        row.rerun.contains("revoked the old secret"),
        "{}: {}",
        row.point, row.rerun
    );
    row.print();
}

#[tokio::test]
async fn kill_after_revoke_landed_but_its_answer_was_lost() {
    let row = crash_at(
        "after revoke (Graph acted, answer lost)",
        Hold::RevokeLanded,
        Removals { revoked: 1, orphans: 0 },
    )
    .await;
    assert_eq!(row.ours_after_kill, 1, "{}: K0 removed as Graph would", row.point);
    row.print();
}

/// With a grace period the old secret outlives the rerun, but never more than two of ours.
#[tokio::test]
async fn kill_with_a_grace_period_leaves_at_most_two_credentials() {
    const POINT: &str = "after Key Vault write, revokeGracePeriod 1h";
    let started = Instant::now();
    let scenario = scenario().await;
    scenario
        .edit_config("revokeGracePeriod: 0s", "revokeGracePeriod: 1h")
        .unwrap();
    let transcript = Transcript::default();
    run_ok(&scenario, &[], &transcript).await;
    let k0 = our_key_ids(&scenario);
    let monitor = Monitor::start(scenario.clone());
    let proofs_before = proofs(&scenario);
    let blocked = Hold::Request {
        service: Service::Kubernetes,
        route: kube_routes::PATCH_SECRET,
    }
    .arm(&scenario);
    let mut child = Rotator::spawn(&scenario.config_path, &["--force"], &transcript);
    child.wait_until("the Kubernetes write", blocked).await;
    child.kill().await;
    scenario.kubernetes.faults().clear();
    let stored_after_kill: Vec<_> = stored_key_ids(&scenario).into_iter().flatten().chain(k0.iter().copied()).collect();
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 0s")
        .unwrap();
    let rerun = run_checking_revocations(POINT, &scenario, &[], &transcript, proofs_before, &stored_after_kill).await;
    assert_eq!(rerun.output.code, Some(0), "{POINT}: {}", tail(&rerun.output.text));
    let watched = monitor.stop().await;
    assert_eq!(watched.violations, Vec::<String>::new(), "{POINT}");
    assert_eq!(
        (rerun.revoked.len(), rerun.orphans.len()),
        (0, 0),
        "{POINT}: nothing removed inside the grace period"
    );
    let ours = our_key_ids(&scenario);
    assert_eq!(
        ours.len(),
        2,
        "{POINT}: the old secret waits for its grace period: {ours:?}"
    );
    assert!(ours.contains(&k0[0]), "{POINT}: K0 is one of the two");
    let [vault, secret] = stored_key_ids(&scenario);
    assert!(
        vault.is_some() && vault == secret && vault != Some(k0[0]),
        "{POINT}: both stores hold the new secret"
    );
    assert!(rerun.output.text.contains("revoked from"), "{POINT}: {}", tail(&rerun.output.text));
    transcript.assert_no_secret_leaked(&scenario);
    Row {
        point: POINT,
        ours_after_kill: 2,
        rerun: outcome_word(&rerun.output.text) + ", old secret kept for its grace period (2 live)",
        revocations: 0,
        orphans: 0,
        samples: watched.samples.len(),
        seconds: started.elapsed().as_secs_f64(),
    }
    .print();
}

/// Secret values live in `secrecy::SecretString` (redacted `Debug`, zeroized on drop) from
/// the Graph answer to the store write. Checked on the objects that handled a value: the
/// `Debug` output of the minted secret, of what the stores hold, of the value on its way to
/// a store, of the engine's outcomes and events, of the verifier's refusal, and of the real
/// adapters (Graph client, both stores, verifier) after they minted, verified, wrote and
/// read the values, holds none of the values minted.
#[tokio::test]
async fn secret_values_never_reach_debug_output_events_or_errors() {
    use entra_rotator::domain::{ExposeSecret, MintedSecret, SecretString, SecretToStore, StoredSecret};
    use entra_rotator::engine::RunOptions;

    fn held_in_secrecy(_: &SecretString) {}

    let scenario = scenario().await;
    let (rotation, adapters) = in_process_rotation_and_adapters(&scenario, Duration::from_secs(5));
    let (engine, events) = engine();
    let first = engine.run(&rotation, RunOptions::default()).await.unwrap();
    let forced = engine
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
        "{minted:?}\n{stored:?}\n{to_store:?}\n{first:?}\n{forced:?}\n{:?}\n{verify_error:?}\n{verify_error}\n{}",
        events.events(),
        adapters.debug(),
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
    let stored_values: Vec<_> = stored.iter().flatten().map(|s| s.value.expose_secret().to_string()).collect();
    assert_eq!(stored_values.len(), 2, "both stores held a value while their Debug was taken");
    for value in values.iter().chain(&stored_values) {
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

/// Operator points: the real CronJob pass (`entra-rotator run --namespace`) is killed while
/// a roll-out is under way and while revocation waits for a consumer, then run again. A
/// Deployment reads the Secret through `envFrom`, so its pods hold the value they started
/// with; lost = 0 means: the Secret's value authenticates, and so does the value every
/// running pod may hold (the old keyId stays live while an old pod runs).
mod operator_points {
    use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_REMOVE_PASSWORD};
    use entra_rotator_standins::kubernetes::{routes, WorkloadKind};
    use entra_rotator_standins::scenario::{Scenario, SECRET_NAME};
    use serde_json::json;
    use std::process::Stdio;
    use std::time::Instant;
    use tokio::process::Command;

    const NAMESPACE: &str = "dify";
    const NAME: &str = "dify-smtp";

    fn pass(scenario: &Scenario) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
        command
            .args(["run", "--namespace", NAMESPACE, "--azure-config", scenario.config_path.to_str().unwrap()])
            .env("KUBECONFIG", scenario.kubeconfig_path())
            .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn pass_line(scenario: &Scenario) -> String {
        let output = pass(scenario).output().await.unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// K0 settled, stored in the Secret, the Deployment's pod started on it; roll-outs from
    /// now on get stuck until the test completes them.
    async fn settled() -> Scenario {
        let scenario = Scenario::start().await.unwrap();
        let reads_env = json!({ "containers": [{ "name": "api", "image": "langgenius/dify-api",
            "envFrom": [{ "secretRef": { "name": SECRET_NAME } }] }] });
        scenario.kubernetes.create_workload_with(NAMESPACE, WorkloadKind::Deployment, "dify-api", &[("app", "dify")], reads_env, 1).unwrap();
        let spec = scenario.rotation_spec(SECRET_NAME, json!({ "lifetime": "4320h", "revokeGracePeriod": "0s", "rollout": [ { "kind": "Deployment", "name": "dify-api" } ] }));
        scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();
        pass_line(&scenario).await;
        scenario.kubernetes.hold_rollouts(true);
        scenario
    }

    fn ours(scenario: &Scenario) -> Vec<String> {
        let app = scenario.target_now();
        app.passwords.iter().filter(|p| p.display_name.as_deref() == Some("entra-rotator:dify/dify-smtp")).map(|p| p.key_id.to_string()).collect()
    }

    /// The keyIds the running (ready) pods may hold: the template's keyId they carry, or,
    /// for the roll-out's first pod, the one it started on.
    fn held_by_pods(scenario: &Scenario) -> Vec<String> {
        scenario
            .kubernetes
            .pods(NAMESPACE)
            .iter()
            .filter(|pod| pod["status"]["phase"] == "Running")
            .map(|pod| pod["metadata"]["annotations"]["entra-rotator.io/key-id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Nothing lost: the Secret's value works, and every keyId a running pod holds is live.
    fn assert_nothing_lost(scenario: &Scenario, point: &str) {
        let secret = scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).unwrap();
        scenario
            .tenant
            .authenticate(scenario.target.app_id, &secret.data["SMTP_PASSWORD"])
            .unwrap_or_else(|e| panic!("{point}: the Secret's value does not authenticate: {e:?}"));
        let live = ours(scenario);
        for held in held_by_pods(scenario) {
            assert!(live.contains(&held), "{point}: a running pod holds keyId {held}, which is no longer live ({live:?})");
        }
    }

    /// Kills a pass at its pods list (the consumer check): the rotating pass itself, right
    /// after it stored the new secret and started the roll-out, or (`held_before`) the pass
    /// after one that already held the old secret. Then reruns with the roll-out still
    /// stuck, completes it, reruns again; checks nothing was lost at each step.
    async fn crash_while_listing_pods(point: &'static str, held_before: bool) {
        let started = Instant::now();
        let scenario = settled().await;
        // A rotate request (handled once), not a renewBefore close to the lifetime: whether
        // that is due depends on the application's renewal jitter, drawn from its id.
        if held_before {
            // One pass rotates and ends holding the old secret for the stuck roll-out.
            request(&scenario, &[]).await;
            let line = pass_line(&scenario).await;
            assert!(line.contains("kept live (ConsumersOnOldSecret)"), "{line}");
        } else {
            request(&scenario, &[]).await;
        }
        let held = scenario.kubernetes.faults().hold(routes::PODS.list);
        let mut child = pass(&scenario).spawn().unwrap();
        held.arrived().await;
        child.kill().await.unwrap();
        held.release();
        let after_kill = ours(&scenario).len();
        assert_eq!(after_kill, 2, "{point}: the old secret is live while its pod runs");
        assert_nothing_lost(&scenario, point);

        // The restart finds the roll-out still stuck: nothing is revoked.
        let line = pass_line(&scenario).await;
        assert!(line.contains("kept live (ConsumersOnOldSecret)"), "{point}: {line}");
        assert_nothing_lost(&scenario, point);
        // The roll-out finishes; the next pass revokes the old secret.
        scenario.kubernetes.complete_rollout(NAMESPACE, WorkloadKind::Deployment, "dify-api");
        let rerun = pass_line(&scenario).await;
        assert!(rerun.contains("revoked"), "{point}: {rerun}");
        assert_eq!(ours(&scenario).len(), 1, "{point}");
        assert_nothing_lost(&scenario, point);
        println!(
            "| {point} | {after_kill} | held (roll-out stuck), then revoked once it finished | 0 | {:.1} s |",
            started.elapsed().as_secs_f64()
        );
    }

    #[tokio::test]
    async fn kill_after_rollout_started_before_the_consumer_check() {
        crash_while_listing_pods("operator: after the roll-out started (pods list in flight)", false).await;
    }

    #[tokio::test]
    async fn kill_while_waiting_for_consumers() {
        crash_while_listing_pods("operator: while waiting for consumers (pods list in flight)", true).await;
    }

    /// `entra-rotator rotate --compromised`, the CLI setting the annotations.
    async fn request(scenario: &Scenario, extra: &[&str]) {
        let output = Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(["rotate", NAME, "-n", NAMESPACE, "--no-wait"])
            .args(extra)
            .env("KUBECONFIG", scenario.kubeconfig_path())
            .env_remove("RUST_LOG")
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    /// Kills the pass that carries out `rotate --compromised` while its first
    /// `removePassword` is in flight (two older secrets of ours are live: the grace period is
    /// 1h). At that moment the new secret must be stored and proven; the restart must finish
    /// the revocations without minting again: one secret of ours left, and it works.
    #[tokio::test]
    async fn kill_during_a_compromised_revoke() {
        let point = "operator: during a compromised revoke (first removePassword in flight)";
        let started = Instant::now();
        let scenario = Scenario::start().await.unwrap();
        let spec = scenario.rotation_spec(SECRET_NAME, json!({ "lifetime": "4320h", "revokeGracePeriod": "1h" }));
        scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();
        pass_line(&scenario).await;
        request(&scenario, &[]).await;
        pass_line(&scenario).await;
        let before = ours(&scenario);
        assert_eq!(before.len(), 2, "the replaced secret waits for its grace period");
        request(&scenario, &["--compromised"]).await;

        let proofs_before = super::proofs(&scenario);
        // Never released: the killed pass's removal must not land after the kill.
        let held = scenario.graph.faults().hold(ROUTE_REMOVE_PASSWORD);
        let mut child = pass(&scenario).spawn().unwrap();
        held.arrived().await;
        let secret = scenario.kubernetes.secret(NAMESPACE, SECRET_NAME).unwrap();
        let current = secret.annotations["entra-rotator.io/key-id"].clone();
        assert!(!before.contains(&current), "{point}: the stores hold the new secret before anything is revoked");
        assert!(super::proofs(&scenario) > proofs_before, "{point}: the relay proved the new secret first");
        child.kill().await.unwrap();
        let after_kill = ours(&scenario).len();
        assert_eq!(after_kill, 3, "{point}: the held removal did not land");
        assert_nothing_lost(&scenario, point);

        let rerun = pass_line(&scenario).await;
        assert!(rerun.contains("revoked"), "{point}: {rerun}");
        assert_eq!(ours(&scenario), std::slice::from_ref(&current), "{point}: every other secret of ours is revoked");
        assert_nothing_lost(&scenario, point);
        assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 3, "{point}: the restart minted nothing");
        let request = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"]["rotateRequest"].clone();
        assert_eq!((request["state"].as_str(), request["keyId"].as_str()), (Some("Done"), Some(current.as_str())), "{point}: {request}");
        println!(
            "| {point} | {after_kill} | every other secret of ours revoked at once, nothing minted again | 0 | {:.1} s |",
            started.elapsed().as_secs_f64()
        );
    }
}
