//! `entra-rotator run` and `entra-rotator demo` end to end: the real binary, the
//! production clients, the stand-ins over sockets.

use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::ROUTE_ADD_PASSWORD;
use entra_rotator_standins::scenario::{Scenario, SECRET_NAME, SECRET_NAMESPACE, VAULT_SECRET};
use std::process::Output;

fn rotator(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(args).env_remove("RUST_LOG");
    command
}

async fn run(scenario: &Scenario, extra: &[&str]) -> Output {
    let config = scenario.config_path.to_str().unwrap();
    let mut args = vec!["run", "--config", config];
    args.extend_from_slice(extra);
    rotator(&args).output().await.unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn our_key_ids(scenario: &Scenario) -> Vec<uuid::Uuid> {
    scenario
        .target_now()
        .passwords
        .iter()
        .filter(|p| p.display_name.as_deref() == Some("entra-rotator:dify-smtp"))
        .map(|p| p.key_id)
        .collect()
}

#[tokio::test]
async fn run_rotates_then_reports_up_to_date_and_dry_run_changes_nothing() {
    let scenario = Scenario::start().await.unwrap();

    let dry = run(&scenario, &["--dry-run"]).await;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("dify-smtp: would mint a new secret (StoredSecretMissing"), "{}", text(&dry));
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 0);
    assert!(scenario.vault.latest(VAULT_SECRET).is_none());

    let first = run(&scenario, &[]).await;
    assert!(first.status.success(), "{}", text(&first));
    let ours = our_key_ids(&scenario);
    assert_eq!(ours.len(), 1);
    let key_id = ours[0].to_string();
    assert!(text(&first).contains(&format!("dify-smtp: rotated: new keyId {key_id} verified and stored")), "{}", text(&first));
    assert_eq!(scenario.vault.latest(VAULT_SECRET).unwrap().tags["keyId"], key_id);
    let secret = scenario.kubernetes.secret(SECRET_NAMESPACE, SECRET_NAME).unwrap();
    assert_eq!(secret.annotations["entra-rotator.io/key-id"], key_id);
    assert_eq!(scenario.relay.accepted_messages().len(), 1, "one verification mail");

    let second = run(&scenario, &[]).await;
    assert!(second.status.success());
    assert!(text(&second).contains(&format!("dify-smtp: up to date: keyId {key_id}")), "{}", text(&second));
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "an idle run mints nothing");

    let forced = run(&scenario, &["--force"]).await;
    assert!(forced.status.success(), "{}", text(&forced));
    let now_ours = our_key_ids(&scenario);
    assert_eq!(now_ours.len(), 1, "old secret revoked (grace period 0s)");
    assert_ne!(now_ours[0], ours[0]);
    assert!(scenario.target_now().passwords.iter().any(|p| p.key_id == scenario.foreign_key_id), "hand-made secret untouched");
}

#[tokio::test]
async fn grace_period_keeps_the_old_secret_until_a_later_run() {
    let scenario = Scenario::start().await.unwrap();
    scenario.edit_config("revokeGracePeriod: 0s", "revokeGracePeriod: 1h").unwrap();
    assert!(run(&scenario, &[]).await.status.success());
    let forced = run(&scenario, &["--force"]).await;
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(text(&forced).contains("revoked from"), "{}", text(&forced));
    assert_eq!(our_key_ids(&scenario).len(), 2, "old secret kept for the grace period");
}

#[tokio::test]
async fn graph_refusal_fails_the_run_with_advice_and_exit_code_1() {
    let scenario = Scenario::start().await.unwrap();
    scenario.graph.faults().push(ROUTE_ADD_PASSWORD, Fault::status(403));
    let output = run(&scenario, &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let message = text(&output);
    assert!(message.contains("dify-smtp: FAILED (GraphFailed; needs a fix before the next run)"), "{message}");
    assert!(message.contains("Application.ReadWrite.OwnedBy"), "{message}");
    assert!(scenario.vault.latest(VAULT_SECRET).is_none());
}

#[tokio::test]
async fn invalid_configuration_exits_2_and_changes_nothing() {
    let scenario = Scenario::start().await.unwrap();
    scenario.edit_config("lifetime: 180d", "lifetime: 800d").unwrap();
    let output = run(&scenario, &[]).await;
    assert_eq!(output.status.code(), Some(2));
    let message = text(&output);
    assert!(message.contains("lifetime: 800d is outside 1s..730d"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(scenario.graph.faults().count("token"), 0, "not even a token was requested");
}

#[tokio::test]
async fn unknown_rotation_name_in_only_is_refused() {
    let scenario = Scenario::start().await.unwrap();
    let output = run(&scenario, &["--only", "dify-smpt"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("--only dify-smpt: no rotation of that name"), "{}", text(&output));
}

#[tokio::test]
async fn no_secret_value_reaches_the_output_even_with_trace_logs() {
    let scenario = Scenario::start().await.unwrap();
    let config = scenario.config_path.to_str().unwrap();
    let mut outputs = Vec::new();
    for extra in [&[][..], &["--force"][..], &["--force", "--log-format", "json"][..]] {
        let mut args = vec!["run", "--config", config, "--log-level", "trace"];
        args.extend_from_slice(extra);
        // Each run mints while Entra has not replicated, so its first verification fails
        // and is retried; Entra catches up once the second attempt has started.
        scenario.tenant.set_propagation_delay(std::time::Duration::from_secs(3600));
        let sessions = scenario.relay.sessions();
        let child = rotator(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // Drained from the start: trace logs would fill the pipes and block the child.
        let child = tokio::spawn(child.wait_with_output());
        for _ in 0..6000 {
            if scenario.relay.sessions() >= sessions + 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        scenario.tenant.set_propagation_delay(std::time::Duration::ZERO);
        let output = child.await.unwrap().unwrap();
        assert!(output.status.success(), "{extra:?}: {}", text(&output));
        assert!(scenario.relay.sessions() >= sessions + 2, "{extra:?}: verification was retried");
        outputs.push(text(&output));
    }
    let everything = outputs.join("\n");
    assert!(everything.contains("verification attempt 1 failed"), "the run went through a retry");
    let mut values = scenario.tenant.minted_values();
    values.push(scenario.rotator_secret.clone());
    assert!(values.len() >= 4);
    for value in values {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&value);
        assert!(!everything.contains(&value), "a secret value reached the output");
        assert!(!everything.contains(&encoded), "a base64-encoded secret value reached the output");
    }
}

/// A line with what varies between runs (ids, times, ports, dates) flattened: runs of
/// hex digits and dashes holding a digit become `<id>`, every digit `0`, runs of `0` and of
/// spaces one character.
fn shape(text: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..].iter().take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase() || **c == '-').count();
        if run >= 8 && chars[i..i + run].iter().any(char::is_ascii_digit) {
            out.push_str("<id>");
            i += run;
            continue;
        }
        let c = if chars[i].is_ascii_digit() { '0' } else { chars[i] };
        if !(c == '0' && out.ends_with('0') || c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// The README's sample demo output: the `text` block under "What the demo shows".
fn readme_demo_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## What the demo shows").unwrap()..];
    let block = &section[section.find("```text\n").unwrap() + 8..];
    block[..block.find("```").unwrap()].lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect()
}

#[tokio::test]
async fn demo_shows_the_whole_loop() {
    let output = rotator(&["demo"]).output().await.unwrap();
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    let lines: Vec<String> = shown.lines().map(shape).collect();
    let mut next = 0;
    for expected in readme_demo_lines().iter().filter(|l| l.trim() != "…") {
        let fragments: Vec<String> = expected.split('…').map(shape).filter(|f| !f.trim().is_empty()).collect();
        let found = lines[next..].iter().position(|line| {
            let mut rest = line.as_str();
            fragments.iter().all(|fragment| match rest.find(fragment.trim()) {
                Some(at) => {
                    rest = &rest[at + fragment.trim().len()..];
                    true
                }
                None => false,
            })
        });
        let Some(offset) = found else {
            panic!("the README's demo line {expected:?} is not in the demo's output (after line {next}), which is:\n{shown}");
        };
        next += offset + 1;
    }
    assert!(shown.contains("\"created by hand\""), "the hand-made secret is still there:\n{shown}");
}
