//! `retireUnmanaged` (issue 11 item 5) end to end, over sockets against the stand-ins: the
//! real `entra-rotator run --config` and the CronJob pass remove the application's hand-made
//! secret only once the current secret of ours has been in place for `after`, never a
//! certificate nor another rotation's secret, not while the hand-made secret still signs in
//! (`requireUnusedFor`), and `--dry-run` removes nothing while saying what it would.
//!
//! The wait is counted from the current secret's `startDateTime`, so the tests move that
//! start into the past (`Tenant::backdate_password`) instead of waiting.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator_standins::graph::ROUTE_REMOVE_PASSWORD;
use entra_rotator_standins::scenario::{Scenario, ROTATION, SECRET_NAME};
use serde_json::json;
use std::process::Output;
use tokio::process::Command;
use uuid::Uuid;

fn rotator(scenario: &Scenario, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(args).env("KUBECONFIG", scenario.kubeconfig_path()).env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost").env_remove("RUST_LOG");
    command
}

async fn run(scenario: &Scenario, extra: &[&str]) -> String {
    let output = rotator(scenario, &["run", "--config", scenario.config_path.to_str().unwrap()]).args(extra).output().await.unwrap();
    ok(output)
}

fn ok(output: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    text
}

fn has(scenario: &Scenario, key_id: Uuid) -> bool {
    scenario.target_now().passwords.iter().any(|p| p.key_id == key_id)
}

/// The live secret of `rotation`'s, by its marker.
fn ours(scenario: &Scenario, rotation: &str) -> Vec<Uuid> {
    let marker = format!("entra-rotator:{rotation}");
    scenario.target_now().passwords.iter().filter(|p| p.display_name.as_deref() == Some(marker.as_str())).map(|p| p.key_id).collect()
}

/// As if the current secret of ours had been minted `by` earlier.
fn age_ours(scenario: &Scenario, rotation: &str, by: ChronoDuration) {
    for key_id in ours(scenario, rotation) {
        assert!(scenario.tenant.backdate_password(scenario.target.object_id, key_id, by));
    }
}

fn removals(scenario: &Scenario) -> u64 {
    scenario.graph.faults().count(ROUTE_REMOVE_PASSWORD)
}

/// The scenario's file with `retireUnmanaged: {after: 1h}` (and `extra` lines), a
/// certificate on the application and an expired secret another rotation minted.
async fn world(extra: &str) -> (Scenario, Uuid) {
    let scenario = Scenario::start().await.unwrap();
    let lines = format!("    revokeGracePeriod: 0s\n    retireUnmanaged:\n      after: 1h\n{extra}");
    scenario.edit_config("    revokeGracePeriod: 0s\n", &lines).unwrap();
    let now = Utc::now();
    scenario.graph.add_certificate(scenario.target.object_id, "signing certificate", now - ChronoDuration::days(1), now + ChronoDuration::days(300));
    // Expired, so it claims nothing; still another rotation's, so it is never ours to remove.
    let theirs = scenario
        .tenant
        .add_replicated_password(scenario.target.object_id, Some("entra-rotator:team-b/mail".into()), now - ChronoDuration::days(100), now - ChronoDuration::days(1))
        .unwrap()
        .key_id;
    (scenario, theirs)
}

#[tokio::test]
async fn the_hand_made_secret_goes_only_after_the_window_and_a_dry_run_only_says_so() {
    let (scenario, theirs) = world("").await;
    let by_hand = scenario.foreign_key_id;
    run(&scenario, &[]).await;
    let current = ours(&scenario, ROTATION);
    assert_eq!(current.len(), 1);

    let before = run(&scenario, &[]).await;
    assert!(before.contains(&format!("unmanaged keyId {by_hand} (\"created by hand\") to be retired from ")), "{before}");
    assert!(has(&scenario, by_hand), "not before the window");

    age_ours(&scenario, ROTATION, ChronoDuration::minutes(61));
    let removals_before = removals(&scenario);
    let planned = run(&scenario, &["--dry-run"]).await;
    assert!(planned.contains(&format!("would retire unmanaged keyId {by_hand} (\"created by hand\") (retireUnmanaged)")), "{planned}");
    assert!(has(&scenario, by_hand) && removals(&scenario) == removals_before, "a dry run removes nothing");

    let retired = run(&scenario, &[]).await;
    assert!(retired.contains(&format!("retired unmanaged keyId {by_hand} (\"created by hand\")")), "{retired}");
    assert!(!has(&scenario, by_hand));
    // One removePassword, for the hand-made secret: the certificate's keyId and the other
    // rotation's secret were never sent.
    assert_eq!(removals(&scenario), removals_before + 1);
    assert!(has(&scenario, theirs), "another rotation's secret stays");
    assert_eq!(ours(&scenario, ROTATION), current, "the current secret of ours stays, and is what the stores hold");
    let secret = scenario.kubernetes.secret("dify", SECRET_NAME).unwrap();
    scenario.tenant.authenticate(scenario.target.app_id, &secret.data["SMTP_PASSWORD"]).unwrap();

    let after = run(&scenario, &[]).await;
    assert!(after.contains("up to date") && !after.contains("unmanaged"), "{after}");
}

#[tokio::test]
async fn a_hand_made_secret_that_still_signs_in_stays_until_unused_for_the_window() {
    let (scenario, _) = world("    requireUnusedFor: 1h\n").await;
    let by_hand = scenario.foreign_key_id;
    run(&scenario, &[]).await;
    // A consumer outside the cluster still sends mail with the hand-made secret.
    let value = scenario.target_now().passwords.into_iter().find(|p| p.key_id == by_hand).unwrap().secret_text;
    scenario.tenant.sign_in(scenario.target.app_id, &value, "smtp").unwrap();
    age_ours(&scenario, ROTATION, ChronoDuration::minutes(61));

    let held = run(&scenario, &[]).await;
    assert!(held.contains(&format!("unmanaged keyId {by_hand} (\"created by hand\") kept live (OldSecretStillSignsIn)")), "{held}");
    assert!(held.contains("still signs in"), "{held}");
    assert!(has(&scenario, by_hand));
    let planned = run(&scenario, &["--dry-run"]).await;
    assert!(planned.contains("kept live (OldSecretStillSignsIn)") && !planned.contains("would retire"), "{planned}");

    // An hour later in the log's terms, with no sign-in since.
    scenario.tenant.backdate_sign_ins(ChronoDuration::minutes(61));
    let retired = run(&scenario, &[]).await;
    assert!(retired.contains(&format!("retired unmanaged keyId {by_hand}")), "{retired}");
    assert!(!has(&scenario, by_hand));
}

mod operator {
    //! The same from a ClientSecretRotation (`spec.retireUnmanaged`), CronJob pass: the
    //! status lists the hand-made secret with when it goes, then as retired; an Event and
    //! `entra-rotator status` say which keyId went.

    use super::*;

    const NAMESPACE: &str = "dify";
    const NAME: &str = "app-smtp";

    async fn pass(scenario: &Scenario) -> String {
        let args = ["run", "--namespace", NAMESPACE, "--azure-config", scenario.config_path.to_str().unwrap()];
        ok(rotator(scenario, &args).output().await.unwrap())
    }

    #[tokio::test]
    async fn the_status_says_when_the_hand_made_secret_goes_and_then_that_it_went() {
        let scenario = Scenario::start().await.unwrap();
        let by_hand = scenario.foreign_key_id.to_string();
        let spec = scenario.rotation_spec("app-smtp", json!({ "lifetime": "4320h", "revokeGracePeriod": "0s", "retireUnmanaged": { "after": "1h" } }));
        scenario.kubernetes.create_rotation(NAMESPACE, NAME, spec).unwrap();
        pass(&scenario).await;
        pass(&scenario).await;
        let status = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"].clone();
        let waiting = &status["unmanaged"];
        assert_eq!(waiting["secrets"][0]["keyId"], by_hand.as_str(), "{status}");
        assert_eq!(waiting["secrets"][0]["displayName"], "created by hand", "{status}");
        assert!(waiting["retireFrom"].is_string() && waiting["retired"].as_array().is_some_and(Vec::is_empty), "{status}");

        age_ours(&scenario, "dify/app-smtp", ChronoDuration::minutes(61));
        let line = pass(&scenario).await;
        assert!(line.contains(&format!("retired unmanaged keyId {by_hand}")), "{line}");
        let status = scenario.kubernetes.rotation(NAMESPACE, NAME).unwrap()["status"].clone();
        let done = &status["unmanaged"];
        assert_eq!(done["retired"][0]["keyId"], by_hand.as_str(), "{status}");
        assert_eq!(done["retired"][0]["displayName"], "created by hand", "{status}");
        assert!(done["secrets"].as_array().is_some_and(Vec::is_empty), "nothing unmanaged is left: {status}");
        assert!(!has(&scenario, scenario.foreign_key_id));
        let event = scenario.kubernetes.events(NAMESPACE).into_iter().find(|e| e.reason == "RetiredUnmanaged").expect("a RetiredUnmanaged Event");
        let note = event.note.unwrap_or_default();
        assert!(note.contains(&by_hand) && note.contains("created by hand"), "{note}");

        let shown = ok(rotator(&scenario, &["status", NAME, "-n", NAMESPACE]).output().await.unwrap());
        assert!(shown.contains(&format!("retired  keyId {by_hand} \"created by hand\"")), "{shown}");
    }
}
