//! The ClientSecretRotation CRD: committed YAML in sync with the Rust types, and its
//! admission rules (CEL, evaluated locally with kube's CEL interpreter) accepting good
//! objects and refusing bad ones with the message a user would see.

use entra_rotator::operator::crd::{crd_yaml, ClientSecretRotation};
use serde_json::{json, Value};

const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/clientsecretrotations.entra-rotator.io.yaml");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes/dify-smtp-rotation.yaml");

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
    assert!(
        committed == crd_yaml(),
        "crds/ is out of date with src/operator/crd.rs; regenerate it with:\n  cargo run -- crd > crds/clientsecretrotations.entra-rotator.io.yaml"
    );
}

fn example() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap()
}

fn with(mut object: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = object.pointer_mut(parent).unwrap();
    match value {
        Value::Null => {
            target.as_object_mut().unwrap().remove(key);
        }
        value => target[key] = value,
    }
    object
}

/// Parses like the API server would, then evaluates the CEL rules; returns their messages.
fn admission(object: Value) -> Result<ClientSecretRotation, String> {
    let rotation: ClientSecretRotation = serde_json::from_value(object).map_err(|e| e.to_string())?;
    rotation.validate_cel().map_err(|e| e.to_string())?;
    Ok(rotation)
}

#[test]
fn the_dify_example_is_admitted_and_translates_to_a_valid_rotation() {
    let rotation = admission(example()).unwrap();
    let config = rotation.to_rotation_config().unwrap();
    assert_eq!(config.name, "dify/dify-smtp");
    assert_eq!(config.lifetime.0.as_secs(), 180 * 86_400);
    assert_eq!(config.renew_before().0.as_secs(), 60 * 86_400);
}

#[test]
fn cel_rules_refuse_bad_objects_with_clear_messages() {
    let cases = [
        ("/spec/renewBefore", json!("5000h"), "renewBefore must be shorter than lifetime"),
        ("/spec/lifetime", json!("20000h"), "lifetime must be at most 17520h"),
        ("/spec/renewBeforePercentage", json!(30), "set renewBefore or renewBeforePercentage, not both"),
        ("/spec/targets/0/keyVault", json!({"vaultUrl": "https://x.vault.azure.net", "secretName": "s"}), "exactly one of keyVault or secret"),
        ("/spec/targets/0/secret/keys/SMTP_PASSWORD", json!("pw={{secret}}"), "one key must be exactly"),
        ("/spec/verification/smtp/authMechanism", json!("PLAIN"), "accepts AUTH LOGIN only"),
        ("/spec/rollout/0/name", json!("dify-api"), "set exactly one of name or selector"),
    ];
    for (pointer, value, expected) in cases {
        let refused = admission(with(example(), pointer, value.clone()));
        let message = refused.expect_err(&format!("{pointer} = {value} was admitted"));
        assert!(message.contains(expected), "{pointer} = {value}: {message:?} lacks {expected:?}");
    }
}

#[test]
fn verification_must_be_chosen_explicitly() {
    let refused = admission(with(example(), "/spec/verification/smtp", Value::Null));
    assert!(refused.unwrap_err().contains("verification.disabled: true"));
    let disabled = with(with(example(), "/spec/verification/smtp", Value::Null), "/spec/verification/disabled", json!(true));
    assert!(admission(disabled).is_ok());
}

#[test]
fn schema_formats_are_in_the_crd() {
    let crd = crd_yaml();
    for expected in ["pattern: ^[0-9a-fA-F]{8}-", "maximum: 99", "minItems: 1", "x-kubernetes-validations"] {
        assert!(crd.contains(expected), "CRD lacks {expected}");
    }
}

#[test]
fn what_cel_cannot_see_is_caught_before_anything_runs() {
    let rotation = admission(with(example(), "/spec/targets/0/secret/keys/SMTP_SERVER", json!("{{smtp_host}}"))).unwrap();
    let problems = rotation.to_rotation_config().unwrap_err().join("\n");
    assert!(problems.contains("unknown variable {{smtp_host}}"), "{problems}");
}

#[test]
fn a_key_vault_target_may_not_switch_the_challenge_check_off() {
    let vault = json!({ "keyVault": { "vaultUrl": "https://kv-mail.vault.azure.net", "secretName": "smtp", "verifyChallengeResource": false } });
    let refused = admission(with(example(), "/spec/targets", json!([vault]))).unwrap_err();
    assert!(refused.contains("verifyChallengeResource was removed"), "{refused}");
    assert!(refused.contains("azure.keyVault.privateHosts"), "{refused}");

    let plain = json!({ "keyVault": { "vaultUrl": "https://kv-mail.vault.azure.net", "secretName": "smtp" } });
    assert!(admission(with(example(), "/spec/targets", json!([plain]))).is_ok());
}
