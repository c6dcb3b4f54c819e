//! Hostile input, generated with proptest (cargo-fuzz needs a nightly toolchain, which this
//! project does not use): the configuration file, durations and templates, Microsoft
//! Graph and Key Vault answers (malformed JSON, wrong types, huge bodies, served by the
//! stand-ins as 200 answers), and SMTP replies (malformed multi-line, overlong lines,
//! non-UTF-8, early close, from a scripted server).
//!
//! For every case: no panic, an error that says what is wrong, and nothing changed on the
//! application or in the stores. Case counts are small and fixed so the suite stays fast;
//! `cargo test --test hostile_input -- --nocapture` prints the counts and times.

mod support;

use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{AuthMechanism, SmtpVerification, SmtpVerifier, TlsMode};
use entra_rotator::config::Config;
use entra_rotator::config::duration::HumanDuration;
use entra_rotator::engine::{Outcome, RunOptions};
use entra_rotator::engine::ports::Verifier;
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION};
use entra_rotator_standins::keyvault::routes as vault_routes;
use entra_rotator_standins::scenario::Scenario;
use entra_rotator_standins::tls::TestPki;
use entra_rotator::template::Template;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};
use support::hostile_smtp::{HostileSmtp, Script};
use support::*;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

fn row(target: &str, cases: u32, started: Instant) {
    println!(
        "| {target} | {cases} | {:.1} s | 0 | 0 |",
        started.elapsed().as_secs_f64()
    );
}

/// A valid configuration, the seed the mutations start from.
fn valid_config() -> String {
    format!(
        r#"azure:
  credential:
    type: clientSecret
    tenantId: {t}
    clientId: {c}
    secretFile: /run/secrets/rotator
rotations:
  - name: dify-smtp
    application:
      tenantId: {t}
      clientId: {c}
    lifetime: 180d
    renewBefore: 30d
    revokeGracePeriod: 1h
    orphanGracePeriod: 10m
    targets:
      - keyVault:
          vaultUrl: https://kv.vault.azure.net
          secretName: dify-smtp-password
      - kubernetesSecret:
          namespace: dify
          name: dify-smtp
          keys:
            SMTP_PASSWORD: "{{{{secret}}}}"
            SMTP_USERNAME: "{{{{smtpUsername}}}}"
    verification:
      smtp:
        username: "acs|{{{{clientId}}}}|{{{{tenantId}}}}"
        from: DoNotReply@example.azurecomm.net
        to: canary@contoso.example
        retryBudget: 5m
        retryInterval: 5s
        timeout: 30s
"#,
        t = "72f988bf-86f1-41af-91ab-2d7cd011db47",
        c = "0b6a4f7e-3d52-4d2b-9a8e-8f3c2b1a0e11",
    )
}

/// The seed with one byte range replaced by generated text (keeps most of the structure,
/// so the mutations reach the validation and not only the YAML parser).
fn mutated_config() -> impl Strategy<Value = String> {
    let seed = valid_config();
    let len = seed.len();
    (0..len, 0usize..40, "(?s).{0,40}").prop_map(move |(at, cut, insert)| {
        let mut text = seed.clone();
        let at = floor_char_boundary(&text, at);
        let end = floor_char_boundary(&text, (at + cut).min(len));
        text.replace_range(at..end, &insert);
        text
    })
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[test]
fn configuration_parsing_never_panics_and_names_the_problem() {
    let started = Instant::now();
    let cases = 256;
    let strategy = prop_oneof![mutated_config(), "(?s).{0,300}"];
    let accepted = std::cell::Cell::new(0u32);
    runner(cases)
        .run(&strategy, |text| {
            match Config::parse(&text, Path::new("rotator.yaml")) {
                // What an accepted file promises the engine, as a user reads it.
                Ok(config) => {
                    prop_assert!(!config.rotations.is_empty(), "accepted without a rotation");
                    for rotation in &config.rotations {
                        let name = &rotation.name;
                        prop_assert!(!name.is_empty(), "accepted a rotation without a name");
                        for id in [&rotation.application.tenant_id, &rotation.application.client_id] {
                            prop_assert!(uuid::Uuid::parse_str(id).is_ok(), "{name}: accepted {id:?} as a GUID");
                        }
                        prop_assert!(
                            !rotation.lifetime.0.is_zero() && rotation.lifetime <= HumanDuration::days(730),
                            "{name}: accepted lifetime {}", rotation.lifetime
                        );
                        prop_assert!(rotation.renew_before() < rotation.lifetime, "{name}: renewBefore {} accepted", rotation.renew_before());
                        prop_assert!(
                            rotation.revoke_grace_period <= rotation.lifetime && rotation.orphan_grace_period <= rotation.lifetime,
                            "{name}: a grace period longer than the lifetime accepted"
                        );
                        prop_assert!(!rotation.targets.is_empty(), "{name}: accepted without a store");
                    }
                    accepted.set(accepted.get() + 1);
                }
                Err(error) => {
                    let message = error.to_string();
                    prop_assert!(
                        message.starts_with("rotator.yaml"),
                        "names the file: {message}"
                    );
                    prop_assert!(
                        message.len() > "rotator.yaml: ".len() + 10,
                        "says what: {message}"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.get();
    assert!(accepted < cases, "some hostile files must be refused");
    row(
        &format!("configuration file (mutated valid file, random text; {accepted} accepted and checked, the rest refused)"),
        cases,
        started,
    );
}

#[test]
fn durations_parse_or_say_how_to_write_them() {
    let started = Instant::now();
    let cases = 256;
    let strategy = prop_oneof![
        "[0-9]{0,25}[a-z]{0,8}( [0-9]{0,5}[a-z]{0,3})?",
        "(?s).{0,30}"
    ];
    runner(cases)
        .run(&strategy, |text| {
            match HumanDuration::parse(&text) {
                Ok(duration) => {
                    // What is printed back (in messages, `status`) reads as the same duration.
                    let printed = duration.to_string();
                    prop_assert_eq!(HumanDuration::parse(&printed), Ok(duration), "{:?} printed as {}", text, printed);
                    prop_assert!(duration.chrono() >= chrono::Duration::zero(), "{text:?}");
                }
                Err(message) => prop_assert!(message.contains("write it like 180d"), "{message}"),
            }
            Ok(())
        })
        .unwrap();
    row("durations", cases, started);
}

#[test]
fn every_duration_field_accepts_only_what_the_engine_can_compute_with() {
    let started = Instant::now();
    let cases = 128;
    let fields = [
        "lifetime: 180d",
        "renewBefore: 30d",
        "revokeGracePeriod: 1h",
        "orphanGracePeriod: 10m",
        "retryBudget: 5m",
        "retryInterval: 5s",
        "timeout: 30s",
    ];
    let strategy = (0..fields.len(), "[0-9]{1,20}(ns|us|ms|s|m|h|d|w|M|y)");
    runner(cases)
        .run(&strategy, |(field, value)| {
            let line = fields[field];
            let key = line.split(':').next().unwrap();
            let text = valid_config().replace(line, &format!("{key}: {value}"));
            if let Ok(config) = Config::parse(&text, Path::new("rotator.yaml")) {
                let rotation = &config.rotations[0];
                // What the engine adds to "now" and to start times: must not overflow.
                let now = chrono::Utc::now();
                for duration in [
                    rotation.lifetime,
                    rotation.renew_before(),
                    rotation.revoke_grace_period,
                    rotation.orphan_grace_period,
                ] {
                    prop_assert!(
                        now.checked_add_signed(duration.chrono()).is_some(),
                        "{key}: {value} was accepted but overflows a date"
                    );
                }
                // Verification patience: bounded, and never a loop without a pause.
                let entra_rotator::config::VerificationConfig::Smtp(smtp) = &rotation.verification else {
                    unreachable!("the seed verifies through SMTP")
                };
                prop_assert!(smtp.retry_budget.0 <= Duration::from_secs(3600), "retryBudget: {value} accepted");
                prop_assert!(smtp.retry_interval.0 >= Duration::from_millis(100), "retryInterval: {value} accepted");
                prop_assert!((1..=300).contains(&smtp.timeout.0.as_secs()), "timeout: {value} accepted");
            } else {
                let error = Config::parse(&text, Path::new("rotator.yaml")).unwrap_err().to_string();
                // A text that is no duration at all is named with its line (YAML's own error).
                prop_assert!(
                    error.contains(key) || error.contains(&format!("{value:?} is not a duration")),
                    "{key}: {value} refused without naming the field or the value: {error}"
                );
            }
            Ok(())
        })
        .unwrap();
    row(
        "duration fields of a rotation (accepted values stay computable)",
        cases,
        started,
    );
}

/// The operator's duration fields (as a cluster without CEL would pass them): converted
/// or refused naming the field, and whatever is accepted goes through the status and
/// wake-up arithmetic without a panic (`alertThresholds: ["300000y"]` crash-looped the
/// controller).
#[test]
fn every_duration_of_a_rotation_object_is_refused_or_computable() {
    use entra_rotator::operator::crd::ClientSecretRotation;
    use entra_rotator::operator::status;
    let started = Instant::now();
    let cases = 128;
    let example: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes/dify-smtp-rotation.yaml")).unwrap(),
    )
    .unwrap();
    let fields = ["lifetime", "renewBefore", "revokeGracePeriod", "alertThresholds", "retryBudget", "lifetime with renewBeforePercentage"];
    let strategy = (0..fields.len(), "[0-9]{1,20}(ns|us|ms|s|m|h|d|w|M|y)");
    runner(cases)
        .run(&strategy, |(field, value)| {
            let mut object = example.clone();
            let spec = &mut object["spec"];
            match fields[field] {
                "alertThresholds" => spec["alertThresholds"] = json!(["24h", value]),
                "retryBudget" => spec["verification"]["smtp"]["retryBudget"] = json!(value),
                "lifetime with renewBeforePercentage" => {
                    spec.as_object_mut().unwrap().remove("renewBefore");
                    spec["renewBeforePercentage"] = json!(99);
                    spec["lifetime"] = json!(value);
                }
                name => spec[name] = json!(value),
            }
            let rotation: ClientSecretRotation = serde_json::from_value(object).unwrap();
            match rotation.to_rotation_config() {
                Ok(_) => {
                    let thresholds = entra_rotator::operator::crd::alert_thresholds(&rotation.spec.alert_thresholds, &mut Vec::new());
                    let now = chrono::Utc::now();
                    let outcome = entra_rotator::engine::Outcome::UpToDate {
                        key_id: uuid::Uuid::nil(),
                        expires: Some(now + chrono::Duration::days(700)),
                        renew_at: now + chrono::Duration::days(600),
                        retirement: None,
                    };
                    let after = status::after_outcome(&Default::default(), &outcome, None, now, &thresholds);
                    // The wake-up for the next alert lies between now and the expiry.
                    if let Some(wake) = status::next_threshold_crossing(&after, now, &thresholds) {
                        prop_assert!(
                            wake > now && wake <= now + chrono::Duration::days(700),
                            "{}: {value} wakes the controller at {wake}", fields[field]
                        );
                    }
                }
                Err(problems) => {
                    let name = fields[field].split(' ').next().unwrap();
                    prop_assert!(problems.iter().any(|p| p.contains(name)), "{name}: {value} refused without naming it: {problems:?}");
                }
            }
            Ok(())
        })
        .unwrap();
    row("duration fields of a ClientSecretRotation (refused or computable)", cases, started);
}

#[test]
fn templates_parse_or_name_the_template() {
    let started = Instant::now();
    let cases = 256;
    let strategy = prop_oneof![
        "(\\{\\{ ?[a-zA-Z]{0,12} ?\\}?\\}?|[^{}]{0,5}|\\{|\\}){0,8}",
        "(?s).{0,60}"
    ];
    runner(cases)
        .run(&strategy, |text| {
            match Template::parse(&text) {
                Ok(template) => {
                    // No placeholder survives into a rendered username or Secret key.
                    let rendered = template.render(&Default::default());
                    prop_assert!(!rendered.contains("{{"), "{text:?} rendered as {rendered:?}");
                }
                Err(error) => {
                    prop_assert!(error.to_string().contains(&format!("{text:?}")), "{error}")
                }
            }
            Ok(())
        })
        .unwrap();
    row("username and key templates", cases, started);
}

/// Arbitrary JSON: the shapes a broken proxy or a changed API could send.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "(?s).{0,20}".prop_map(Value::String),
        Just(json!("00000000-0000-0000-0000-00000000000z")),
        Just(json!("2026-13-45T99:99:99Z")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("(id|appId|keyId|displayName|passwordCredentials|secretText|endDateTime|value|attributes|tags|[a-z]{1,8})", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid application answer with one field replaced by arbitrary JSON.
fn wrong_typed_application(scenario: &Scenario) -> impl Strategy<Value = Value> {
    let valid = json!({
        "id": scenario.target.object_id,
        "appId": scenario.target.app_id,
        "displayName": "dify-mail",
        "passwordCredentials": [{
            "keyId": uuid::Uuid::new_v4(),
            "displayName": "entra-rotator:dify-smtp",
            "startDateTime": "2026-01-01T00:00:00Z",
            "endDateTime": "2026-07-01T00:00:00Z",
            "hint": "abc",
            "secretText": null
        }]
    });
    let fields = ["id", "appId", "displayName", "passwordCredentials"];
    (0..fields.len(), json_value()).prop_map(move |(field, replacement)| {
        let mut answer = valid.clone();
        answer[fields[field]] = replacement;
        answer
    })
}

/// Whether Graph's answer to the application read must be refused: it is no object, its
/// `id` or `appId` is not the application's (no generated string is a GUID), its
/// `displayName` is neither a string nor null, or its `passwordCredentials` is not a list
/// of credentials with GUID keyIds (no generated object has one: only the valid answer's
/// own credential passes, and it is well-typed throughout).
fn must_refuse_application_answer(body: &Value) -> bool {
    let Some(answer) = body.as_object() else {
        return true;
    };
    let is_uuid = |field: &str| answer.get(field).and_then(Value::as_str).is_some_and(|s| uuid::Uuid::parse_str(s).is_ok());
    let name_ok = matches!(answer.get("displayName"), None | Some(Value::Null | Value::String(_)));
    let credentials_ok = match answer.get("passwordCredentials") {
        None => true,
        Some(Value::Array(items)) => items.iter().all(|item| {
            item.get("keyId").and_then(Value::as_str).is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
        }),
        Some(_) => false,
    };
    !is_uuid("id") || !is_uuid("appId") || !name_ok || !credentials_ok
}

/// A well-formed application answer that differs from the truth in what Graph may change:
/// any display name (or none), no secrets listed, or one secret the stores never held.
fn well_formed_application(scenario: &Scenario) -> impl Strategy<Value = Value> {
    let (id, app_id) = (scenario.target.object_id, scenario.target.app_id);
    let display_name = prop_oneof![Just(Value::Null), "(?s).{0,20}".prop_map(Value::String)];
    (display_name, any::<bool>()).prop_map(move |(display_name, listed)| {
        let credentials = if listed {
            json!([{ "keyId": uuid::Uuid::new_v4(), "displayName": "entra-rotator:dify-smtp", "endDateTime": "2026-07-01T00:00:00Z" }])
        } else {
            json!([])
        };
        json!({ "id": id, "appId": app_id, "displayName": display_name, "passwordCredentials": credentials })
    })
}

/// Graph answers `200 OK` with hostile bodies to the read and to addPassword. A hostile
/// answer stops the run with a protocol error, nothing minted or stored, no value leaked;
/// a well-formed one is read and the forced rotation goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_answers_malformed_wrong_typed_or_huge_change_nothing() {
    let started = Instant::now();
    let scenario = scenario().await;
    let transcript = Transcript::default();
    run_ok(&scenario, &[], &transcript).await;
    let state = std::cell::RefCell::new((our_key_ids(&scenario), stored_key_ids(&scenario)));
    let rotation = in_process_rotation(&scenario, Duration::from_secs(5));
    let (engine, _) = engine();
    let handle = tokio::runtime::Handle::current();
    let cases = 96;
    let strategy = (
        any::<bool>(),
        prop_oneof![json_value(), wrong_typed_application(&scenario), well_formed_application(&scenario)],
    );
    let (refused, must_refuse, read) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    let result = tokio::task::block_in_place(|| {
        runner(cases).run(&strategy, |(on_mint, body)| {
            let route = if on_mint {
                ROUTE_ADD_PASSWORD
            } else {
                ROUTE_GET_APPLICATION
            };
            let refusal_due = on_mint || must_refuse_application_answer(&body);
            let adds = scenario.graph.faults().count(ROUTE_ADD_PASSWORD);
            scenario
                .graph
                .faults()
                .push(route, Fault::status(200).body(body.clone()));
            let outcome = handle.block_on(engine.run(
                &rotation,
                RunOptions {
                    force: true,
                    dry_run: false,
                },
            ));
            scenario.graph.faults().clear();
            let minted = scenario.graph.faults().count(ROUTE_ADD_PASSWORD) - adds;
            let now = (our_key_ids(&scenario), stored_key_ids(&scenario));
            match outcome {
                Err(error) => {
                    refused.set(refused.get() + 1);
                    must_refuse.set(must_refuse.get() + u32::from(refusal_due));
                    prop_assert!(refusal_due, "a well-formed application answer was refused: {body} -> {error}");
                    prop_assert!(
                        error.to_string().contains("Microsoft Graph"),
                        "names Graph: {error}"
                    );
                    prop_assert!(now == *state.borrow(), "a refused answer changed something");
                }
                // A well-formed application answer (its display name or its secret list
                // differs from the truth) is read, and the forced rotation goes ahead for
                // real: one secret minted, stored everywhere, working.
                Ok(outcome) => {
                    prop_assert!(!refusal_due, "a hostile answer was accepted: {body} -> {outcome:?}");
                    read.set(read.get() + 1);
                    let Outcome::Settled { key_id, minted: true, .. } = outcome else {
                        return Err(TestCaseError::fail(format!("a forced run after a well-formed read rotates: {outcome:?}")));
                    };
                    prop_assert_eq!(minted, 1, "one secret minted");
                    prop_assert!(now.0.contains(&key_id), "the new secret is live: {:?}", now);
                    prop_assert_eq!(now.1, [Some(key_id); 2], "both stores hold the new secret");
                    consumers_credential_works(&scenario).map_err(TestCaseError::fail)?;
                    *state.borrow_mut() = now;
                }
            }
            Ok(())
        })
    });
    result.unwrap();
    let (refused, must_refuse, read) = (refused.get(), must_refuse.get(), read.get());
    assert_eq!(refused, must_refuse, "every refusal was due");
    assert!(refused > 0 && read > 0, "the cases reached both hostile and well-formed answers: {refused} refused, {read} read");
    assert_eq!(refused + read, cases, "every case refused or read");

    // Huge bodies: 8 MiB of JSON, valid and not.
    let huge = "x".repeat(8 << 20);
    for body in [json!({ "id": huge }), json!([huge])] {
        scenario
            .graph
            .faults()
            .push(ROUTE_GET_APPLICATION, Fault::status(200).body(body));
        let error = engine
            .run(
                &rotation,
                RunOptions {
                    force: true,
                    dry_run: false,
                },
            )
            .await
            .unwrap_err();
        assert!(
            error.to_string().len() < 4096,
            "the error does not quote the body"
        );
    }
    // A leaky malformed addPassword answer: the value must not reach the error.
    scenario.graph.faults().push(
        ROUTE_ADD_PASSWORD,
        Fault::status(200)
            .body(json!({ "keyId": 42, "secretText": "Leaky~Secret.Value_0123456789abcdefghijk" })),
    );
    let error = engine
        .run(
            &rotation,
            RunOptions {
                force: true,
                dry_run: false,
            },
        )
        .await
        .unwrap_err();
    assert!(
        !format!("{error} {error:?}").contains("Leaky~Secret"),
        "{error}"
    );
    assert_eq!(
        (our_key_ids(&scenario), stored_key_ids(&scenario)),
        state.into_inner()
    );
    transcript.assert_no_secret_leaked(&scenario);
    row(
        &format!("Graph answers (200 with arbitrary or wrong-typed JSON, 8 MiB bodies; {refused} refused, each due; {read} well-formed application answers read, the forced rotation then minting one working secret)"),
        cases + 3,
        started,
    );
}

/// Key Vault answers `200 OK` with hostile bodies to the read: the store reports an
/// error naming the vault, the run stops before minting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_vault_answers_malformed_or_wrong_typed_change_nothing() {
    let started = Instant::now();
    let scenario = scenario().await;
    let transcript = Transcript::default();
    run_ok(&scenario, &[], &transcript).await;
    let state = std::cell::RefCell::new((our_key_ids(&scenario), stored_key_ids(&scenario)));
    let rotation = in_process_rotation(&scenario, Duration::from_secs(5));
    let (engine, _) = engine();
    let handle = tokio::runtime::Handle::current();
    let cases = 96;
    let valid = json!({
        "value": STORED_VALUE,
        "id": format!("{}/secrets/x/0123", scenario.vault.vault_url()),
        "attributes": { "enabled": true, "created": 1, "updated": 1 },
        "tags": { "keyId": uuid::Uuid::new_v4() }
    });
    let fields = ["value", "id", "attributes", "tags"];
    let strategy = prop_oneof![
        json_value(),
        (0..fields.len(), json_value()).prop_map(move |(field, replacement)| {
            let mut answer = valid.clone();
            answer[fields[field]] = replacement;
            answer
        }),
    ];
    let (refused, must_refuse, accepted) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    let result = tokio::task::block_in_place(|| {
        runner(cases).run(&strategy, |body| {
            let refusal_due = must_refuse_vault_answer(&body);
            let adds = scenario.graph.faults().count(ROUTE_ADD_PASSWORD);
            let sets = scenario.vault.faults().count(vault_routes::SET_SECRET);
            scenario
                .vault
                .faults()
                .push(vault_routes::GET_SECRET, Fault::status(200).body(body.clone()));
            let outcome = handle.block_on(engine.run(&rotation, RunOptions::default()));
            scenario.vault.faults().clear();
            let minted = scenario.graph.faults().count(ROUTE_ADD_PASSWORD) - adds;
            let now = (our_key_ids(&scenario), stored_key_ids(&scenario));
            match &outcome {
                Err(error) => {
                    refused.set(refused.get() + 1);
                    must_refuse.set(must_refuse.get() + u32::from(refusal_due));
                    prop_assert!(
                        error.to_string().contains("Key Vault"),
                        "names the vault: {error}"
                    );
                    prop_assert!(
                        !format!("{error} {error:?}").contains(STORED_VALUE),
                        "the stored value reached the error: {error}"
                    );
                    prop_assert!(now == *state.borrow(), "a refused answer changed something");
                }
                // An answer that reads as a value we did not write (its keyId tag is no
                // live secret of ours) while the Kubernetes Secret holds the current one:
                // the engine writes the current secret back to the vault, mints nothing.
                Ok(outcome) => {
                    prop_assert!(!refusal_due, "a wrong-typed value or tags was accepted: {body} -> {outcome:?}");
                    accepted.set(accepted.get() + 1);
                    let current = state.borrow().1[1].expect("the Secret holds the current keyId");
                    prop_assert!(
                        matches!(outcome, Outcome::Settled { key_id, minted: false, .. } if *key_id == current),
                        "a foreign value in the vault is repaired from the current secret: {outcome:?}"
                    );
                    prop_assert_eq!(minted, 0, "nothing minted: {:?}", outcome);
                    prop_assert!(now == *state.borrow(), "the stores are back on the current secret: {now:?}");
                    let writes = scenario.vault.faults().count(vault_routes::SET_SECRET) - sets;
                    prop_assert_eq!(writes, 1, "the vault was written once: {:?}", outcome);
                }
            }
            consumers_credential_works(&scenario).map_err(TestCaseError::fail)?;
            Ok(())
        })
    });
    result.unwrap();
    let (refused, must_refuse, accepted) = (refused.get(), must_refuse.get(), accepted.get());
    assert!(must_refuse > 0, "the cases reached wrong-typed values and tags");
    assert_eq!(refused + accepted, cases, "every case refused or read");
    transcript.assert_no_secret_leaked(&scenario);
    row(
        &format!("Key Vault answers (200 with arbitrary or wrong-typed JSON; {refused} refused, {must_refuse} of them wrong-typed value or tags; {accepted} read as a foreign value and repaired from the current secret, nothing minted)"),
        cases,
        started,
    );
}

/// The value in the Key Vault answers the property starts from.
const STORED_VALUE: &str = "Stored~Value.In_The_Vault_0123456789";

/// Whether Key Vault's answer to a read must be refused: it is no object, its `value` is
/// not a string, or its `tags` are neither absent nor a map of strings.
fn must_refuse_vault_answer(body: &Value) -> bool {
    let Some(answer) = body.as_object() else {
        return true;
    };
    let value_ok = matches!(answer.get("value"), Some(Value::String(_)));
    let tags_ok = match answer.get("tags") {
        None | Some(Value::Null) => true,
        Some(Value::Object(tags)) => tags.values().all(Value::is_string),
        Some(_) => false,
    };
    !value_ok || !tags_ok
}

/// One hostile SMTP reply line or block.
fn hostile_reply() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Well-formed replies with arbitrary codes.
        (100u16..600, "[ -~]{0,40}")
            .prop_map(|(code, text)| format!("{code} {text}\r\n").into_bytes()),
        // Multi-line replies whose codes disagree or never end.
        (200u16..260, 200u16..600, 0usize..4).prop_map(|(a, b, n)| {
            let mut reply = format!("{a}-first\r\n").repeat(n);
            reply.push_str(&format!("{b} last\r\n"));
            reply.into_bytes()
        }),
        Just(b"250-no final line\r\n".to_vec()),
        // Overlong lines, bare LF, no line end, non-UTF-8, NUL, garbage.
        (1usize..70_000).prop_map(|n| format!("250 {}\r\n", "A".repeat(n)).into_bytes()),
        Just(b"250 bare line feed\n".to_vec()),
        Just(b"250 no line end".to_vec()),
        Just(b"25".to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"\xff\xfe\x00 220 \x00\r\n".to_vec()),
    ]
}

fn hostile_script() -> impl Strategy<Value = (bool, Script)> {
    let greeting = prop_oneof![Just(b"220 relay ready\r\n".to_vec()), hostile_reply()];
    (
        any::<bool>(),
        greeting,
        prop::collection::vec(hostile_reply(), 0..8),
    )
        .prop_map(|(tls, greeting, replies)| (tls, Script { greeting, replies }))
}

/// The verifier against scripted replies, before STARTTLS and (with TLS from the first
/// byte) in AUTH, MAIL, RCPT and DATA: an error naming the relay, never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_replies_malformed_overlong_or_cut_short_fail_clearly() {
    let started = Instant::now();
    let pki = TestPki::generate().unwrap();
    let trust = TlsTrust {
        extra_root_pems: vec![pki.ca_pem().to_string()],
    };
    let app = entra_rotator::domain::AppRef {
        tenant_id: uuid::Uuid::new_v4(),
        client_id: uuid::Uuid::new_v4(),
        object_id: None,
    };
    let secret = entra_rotator::domain::SecretString::from(
        "Hostile~Test.Secret_value_0123456789abcd".to_string(),
    );
    let handle = tokio::runtime::Handle::current();
    let cases = 64;
    let verified = Cell::new(0u32);
    let result = tokio::task::block_in_place(|| {
        runner(cases).run(&hostile_script(), |(tls, script)| {
            handle.block_on(async {
                let greeted = script.greeting.starts_with(b"220 ");
                let server = HostileSmtp::start(script, tls.then_some(&pki)).await;
                let verifier = SmtpVerifier::new(
                    SmtpVerification {
                        host: "localhost".into(),
                        port: server.port(),
                        tls: if tls {
                            TlsMode::Implicit
                        } else {
                            TlsMode::StartTls
                        },
                        mechanism: AuthMechanism::Login,
                        username: Template::parse("acs|{{clientId}}|{{tenantId}}").unwrap(),
                        from: "DoNotReply@example.azurecomm.net".into(),
                        to: "canary@contoso.example".into(),
                        timeout: Duration::from_secs(3),
                        mode: entra_rotator::adapters::smtp::ProofMode::Deliver,
                    },
                    &trust,
                )
                .unwrap();
                match verifier.verify(&app, &secret).await {
                    // Only a relay that greeted with 220 can have taken the test mail.
                    Ok(()) => {
                        prop_assert!(greeted, "verified through a relay that never greeted");
                        verified.set(verified.get() + 1);
                        Ok(())
                    }
                    Err(error) => {
                        let message = error.to_string();
                        prop_assert!(
                            message.contains(&format!("localhost:{}", server.port())),
                            "names the relay: {message}"
                        );
                        prop_assert!(
                            !message.contains("Hostile~Test"),
                            "the secret leaked into: {message}"
                        );
                        prop_assert!(
                            message.len() < 8192,
                            "the error does not quote an overlong reply in full"
                        );
                        Ok(())
                    }
                }
            })
        })
    });
    result.unwrap();
    let verified = verified.get();
    assert!(verified < cases, "hostile replies must fail verification");
    row(
        &format!("SMTP replies (malformed multi-line, 70 kB lines, non-UTF-8, early close; plain and TLS; {} failed naming the relay)", cases - verified),
        cases,
        started,
    );
}

/// Regression: `revokeGracePeriod: 300000y` used to be accepted, and the engine's date
/// arithmetic (`start + grace`) then panicked mid-run. Now the file is refused up front.
#[tokio::test]
async fn a_grace_period_past_the_calendar_is_refused_before_anything_runs() {
    let text = valid_config().replace("revokeGracePeriod: 1h", "revokeGracePeriod: 300000y");
    let error = Config::parse(&text, Path::new("rotator.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("revokeGracePeriod: 300000y is longer than lifetime 180d"),
        "{error}"
    );

    let scenario = scenario().await;
    scenario
        .edit_config("orphanGracePeriod: 10m", "orphanGracePeriod: 300000y")
        .unwrap();
    let output = run(&scenario, &["--force"], &Transcript::default()).await;
    assert_eq!(output.code, Some(2), "{}", tail(&output.text));
    assert!(
        output
            .text
            .contains("orphanGracePeriod: 300000y is longer than lifetime"),
        "{}",
        tail(&output.text)
    );
    assert!(!output.text.contains("panicked"), "{}", tail(&output.text));
    assert_eq!(
        scenario.graph.faults().count(ROUTE_GET_APPLICATION),
        0,
        "nothing was read or changed"
    );
}
