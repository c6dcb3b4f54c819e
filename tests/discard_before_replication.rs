//! A secret that fails verification is removed at once; right after its addPassword,
//! Graph may answer the removal with "No password credential found with keyId …" (the
//! removal reached a directory replica the new secret has not). The run must then say the
//! truth: the secret is still on the application, nobody holds its value, and a later
//! run removes it as an orphan. Played by the stand-ins over real sockets.

mod support;

use entra_rotator_standins::graph::ROUTE_REMOVE_PASSWORD;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_discard_graph_has_not_replicated_yet_is_reported_as_left_behind_and_removed_later() {
    let scenario = scenario().await;
    let transcript = Transcript::default();
    run_ok(&scenario, &[], &transcript).await;
    let k0 = our_key_ids(&scenario)[0];
    scenario
        .edit_config("retryInterval: 1s", "retryInterval: 200ms")
        .unwrap();
    scenario
        .edit_config("retryBudget: 30s", "retryBudget: 1s")
        .unwrap();
    // The new secret never authenticates within the budget, and the directory has not
    // replicated it when the rotator tries to remove it.
    scenario
        .tenant
        .set_propagation_delay(Duration::from_secs(3600));
    scenario
        .graph
        .set_replication_delay(Duration::from_secs(3600));
    let removes = scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD);

    let output = run(&scenario, &["--force"], &transcript).await;

    assert_eq!(output.code, Some(1), "{}", tail(&output.text));
    assert!(
        output.text.contains("FAILED (VerificationFailed"),
        "{}",
        tail(&output.text)
    );
    assert_eq!(
        scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD),
        removes + 1
    );
    let ours = our_key_ids(&scenario);
    assert_eq!(
        ours.len(),
        2,
        "the unverified secret is still on the application: {ours:?}"
    );
    let left = ours.iter().copied().find(|k| *k != k0).unwrap();
    assert!(
        !output.text.contains(&format!("removed keyId {left}")),
        "the run must not claim a removal that did not happen:\n{}",
        tail(&output.text)
    );
    assert!(
        output.text.contains(&format!(
            "keyId {left} failed verification and was never stored, but is still on the application"
        )),
        "{}",
        tail(&output.text)
    );
    assert!(
        output.text.contains("a later run removes it as an orphan"),
        "{}",
        tail(&output.text)
    );
    assert_eq!(
        stored_key_ids(&scenario),
        [Some(k0), Some(k0)],
        "the stores keep K0"
    );
    consumers_credential_works(&scenario).unwrap();

    // The directory catches up; past orphanGracePeriod the next run removes the orphan.
    scenario.graph.set_replication_delay(Duration::ZERO);
    scenario.tenant.set_propagation_delay(Duration::ZERO);
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 0s")
        .unwrap();
    let rerun = run_ok(&scenario, &[], &transcript).await;
    assert!(
        rerun.text.contains(&format!("removed keyId {left}")),
        "{}",
        tail(&rerun.text)
    );
    assert_eq!(our_key_ids(&scenario), vec![k0]);
    transcript.assert_no_secret_leaked(&scenario);
}
