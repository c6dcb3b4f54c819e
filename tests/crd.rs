//! The ClientSecretRotation CRD: committed YAML in sync with the Rust types, and its
//! admission rules (CEL, evaluated locally with kube's CEL interpreter; the schema's
//! formats, through the Kubernetes stand-in's admission) accepting good objects and
//! refusing bad ones with the message a user would see.

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

/// Issue 19 item 3: exchangeOnline is a third choice, exclusive with the others, with
/// Exchange Online's defaults, and the relay it names is what authorization checks.
#[test]
fn exchange_online_verification_is_admitted_alone_with_its_defaults() {
    let exchange = json!({"mailbox": "dify@contoso.com", "to": "canary@contoso.com"});
    let both = with(example(), "/spec/verification/exchangeOnline", exchange.clone());
    assert!(admission(both).unwrap_err().contains("verification.exchangeOnline"));
    let alone = with(with(example(), "/spec/verification/smtp", Value::Null), "/spec/verification/exchangeOnline", exchange);
    let rotation = admission(alone).unwrap();
    assert_eq!(rotation.spec.verification.relay(), Some(("smtp.office365.com", 587)));
    let config = rotation.to_rotation_config().unwrap();
    let entra_rotator::config::VerificationConfig::ExchangeOnline(exchange) = config.verification else {
        panic!("exchangeOnline")
    };
    assert_eq!(exchange.scope, "https://outlook.office365.com/.default");
    assert_eq!(exchange.sender(), "dify@contoso.com");
}

/// The schema's formats as an API server applies them: the CRD is registered in the
/// Kubernetes stand-in (which evaluates schemas and CEL rules as the API server does), and
/// objects with a bad GUID, a bad duration, a percentage past 99 or no target are refused
/// with 422, the field and the rule; nothing is stored. The example itself is admitted.
#[tokio::test]
async fn the_api_server_refuses_bad_formats_naming_the_field() {
    use entra_rotator_standins::kubernetes::KubernetesStandin;
    use entra_rotator_standins::tls::TestPki;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, ApiResource, DynamicObject, PostParams};
    use kube::CustomResourceExt as _;

    let pki = TestPki::generate().unwrap();
    let cluster = KubernetesStandin::start(&pki).await.unwrap();
    cluster.create_namespace("dify");
    let mut config = kube::Config::new(cluster.url().parse().unwrap());
    config.root_cert = Some(rustls_pemfile::certs(&mut pki.ca_pem().as_bytes()).map(|c| c.unwrap().to_vec()).collect());
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    Api::<CustomResourceDefinition>::all(client.clone()).create(&PostParams::default(), &ClientSecretRotation::crd()).await.unwrap();
    let resource = ApiResource::erase::<ClientSecretRotation>(&());
    let rotations: Api<DynamicObject> = Api::namespaced_with(client, "dify", &resource);
    let create = |object: Value| {
        let rotations = rotations.clone();
        async move { rotations.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await }
    };

    // (pointer, bad value, what the refusal must say)
    let cases = [
        ("/spec/application/clientId", json!("not-a-guid"), "spec.application.clientId in body should match '^[0-9a-fA-F]{8}-"),
        ("/spec/application/tenantId", json!("72f988bf-86f1-41af-91ab-2d7cd011db4"), "spec.application.tenantId in body should match"),
        ("/spec/lifetime", json!("180 days"), "spec.lifetime in body should match"),
        ("/spec/revokeGracePeriod", json!("soon"), "spec.revokeGracePeriod in body should match"),
        ("/spec/renewBeforePercentage", json!(100), "spec.renewBeforePercentage in body should be less than or equal to 99"),
        ("/spec/targets", json!([]), "spec.targets in body should have at least 1 items"),
    ];
    for (pointer, value, expected) in cases {
        let mut object = with(example(), pointer, value.clone());
        if pointer == "/spec/renewBeforePercentage" {
            object = with(object, "/spec/renewBefore", Value::Null);
        }
        let refused = create(object).await.expect_err(&format!("{pointer} = {value} was admitted"));
        let kube::Error::Api(answer) = &refused else { panic!("{pointer} = {value}: {refused}") };
        assert_eq!(answer.code, 422, "{pointer} = {value}: {answer:?}");
        assert!(answer.message.contains(expected), "{pointer} = {value}: {:?} lacks {expected:?}", answer.message);
        assert!(cluster.rotation("dify", "dify-smtp").is_none(), "{pointer} = {value}: a refused rotation is not stored");
    }
    create(example()).await.expect("the example is admitted");
    assert!(cluster.rotation("dify", "dify-smtp").is_some());
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

/// Every duration field at its extremes: admitted at the edge, refused just past it by a
/// CEL rule that names the field and the range, and (for a cluster without CEL, or the
/// `300000y` that once crash-looped the controller) refused by the conversion with the
/// field, the value and the range.
#[test]
fn every_duration_field_is_bounded_at_admission_and_in_the_conversion() {
    // (pointer, largest admitted, refused just past, the CEL message)
    let cases = [
        ("/spec/lifetime", json!("17520h"), json!("17521h"), "lifetime must be at most 17520h"),
        ("/spec/revokeGracePeriod", json!("4320h"), json!("4321h"), "revokeGracePeriod must be at most the lifetime"),
        ("/spec/alertThresholds", json!(["17520h", "24h"]), json!(["24h", "17521h"]), "each alertThresholds entry must be at most 17520h"),
        ("/spec/verification/smtp/retryBudget", json!("1h"), json!("61m"), "retryBudget must be at most 1h"),
        ("/spec/renewBefore", json!("4319h"), json!("4320h"), "renewBefore must be shorter than lifetime"),
    ];
    for (pointer, edge, past, message) in cases {
        let admitted = admission(with(example(), pointer, edge.clone())).unwrap_or_else(|e| panic!("{pointer} = {edge}: {e}"));
        admitted.to_rotation_config().unwrap_or_else(|e| panic!("{pointer} = {edge} admitted but not usable: {e:?}"));
        let refused = admission(with(example(), pointer, past.clone())).expect_err(&format!("{pointer} = {past} was admitted"));
        assert!(refused.contains(message), "{pointer} = {past}: {refused:?} lacks {message:?}");
    }

    let shortest = with(with(example(), "/spec/renewBefore", Value::Null), "/spec/revokeGracePeriod", json!("1h"));
    admission(with(shortest.clone(), "/spec/lifetime", json!("1h"))).unwrap().to_rotation_config().unwrap();
    let refused = admission(with(shortest, "/spec/lifetime", json!("59m"))).unwrap_err();
    assert!(refused.contains("lifetime must be at least 1h"), "{refused}");

    // What the API server's pattern keeps out, should it reach the controller anyway.
    let converted = [
        ("/spec/lifetime", json!("300000y"), "spec.lifetime: 300000y is outside 1s..730d"),
        ("/spec/revokeGracePeriod", json!("300000y"), "spec.revokeGracePeriod: 300000y is longer than lifetime 180d"),
        ("/spec/alertThresholds", json!(["24h", "300000y"]), "spec.alertThresholds[1]: 300000y is outside 0s..730d"),
        ("/spec/alertThresholds", json!(["soon"]), "spec.alertThresholds[0]: \"soon\" is not a duration"),
        ("/spec/verification/smtp/retryBudget", json!("87600h"), "spec.verification.smtp.retryBudget: 3650d is outside 0s..1h"),
    ];
    for (pointer, value, message) in converted {
        let object: ClientSecretRotation = serde_json::from_value(with(example(), pointer, value.clone())).unwrap();
        let problems = object.to_rotation_config().expect_err(&format!("{pointer} = {value} converted")).join("; ");
        assert!(problems.contains(message), "{pointer} = {value}: {problems:?} lacks {message:?}");
    }

    // The schema bounds every duration text so CEL's duration() can always evaluate it.
    let crd: Value = serde_yaml::from_str(crd_yaml().trim_start_matches(|c| c != '\n').trim_start_matches(['\n', '-'])).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in [&spec["lifetime"], &spec["renewBefore"], &spec["revokeGracePeriod"], &spec["alertThresholds"]["items"], &spec["verification"]["properties"]["smtp"]["properties"]["retryBudget"]] {
        assert_eq!(field["maxLength"], 32, "{field}");
        assert!(field["pattern"].as_str().unwrap().contains("{1,7}"), "{field}");
    }
    assert_eq!(spec["alertThresholds"]["maxItems"], 8);
}

/// Regression: `renewBeforePercentage` of a lifetime near the largest duration overflowed
/// (`Duration * 99`) and panicked in the conversion; now the lifetime is refused.
#[test]
fn a_percentage_of_a_lifetime_past_the_calendar_is_refused_not_a_panic() {
    let object = with(with(example(), "/spec/renewBefore", Value::Null), "/spec/renewBeforePercentage", json!(99));
    let object: ClientSecretRotation = serde_json::from_value(with(object, "/spec/lifetime", json!("500000000000y"))).unwrap();
    let problems = object.to_rotation_config().unwrap_err().join("; ");
    assert!(problems.contains("spec.lifetime: ") && problems.contains("is outside 1s..730d"), "{problems}");
}

/// Issue 19 item 2: a ClientSecretRotation sets the mail quota its test mails are paced to,
/// by preset or in figures, and admission refuses a half-given one.
#[test]
fn the_mail_quota_is_set_by_preset_or_figures() {
    use entra_rotator::config::{MailQuotaConfig, NamedMailQuota, VerificationConfig};
    let quota_of = |quota: Value| {
        let config = admission(with(example(), "/spec/verification/smtp/quota", quota)).unwrap().to_rotation_config().unwrap();
        match config.verification {
            VerificationConfig::Smtp(smtp) => smtp.quota,
            _ => panic!("the example verifies at the relay"),
        }
    };
    assert_eq!(quota_of(json!({ "preset": "CustomDomain" })), Some(MailQuotaConfig::Named(NamedMailQuota::CustomDomain)));
    assert_eq!(quota_of(json!({ "perMinute": 2, "perHour": 20 })), Some(MailQuotaConfig::Figures { per_minute: 2, per_hour: 20 }));
    let refused = admission(with(example(), "/spec/verification/smtp/quota", json!({ "perMinute": 2 }))).unwrap_err();
    assert!(refused.contains("give a preset (AzureManaged or CustomDomain), or both perMinute and perHour"), "{refused}");
    let backwards = admission(with(example(), "/spec/verification/smtp/quota", json!({ "perMinute": 20, "perHour": 2 }))).unwrap().to_rotation_config().unwrap_err();
    assert!(backwards.join("; ").contains("quota: perMinute 20 and perHour 2 must be"), "{backwards:?}");
}

/// `retireUnmanaged.after`: CEL keeps it within 1h and the lifetime; the conversion also
/// refuses a wait the current secret never reaches (it is renewed `renewBefore` early and
/// the count starts again), naming the field and the bound.
#[test]
fn retire_unmanaged_after_is_bounded_at_admission_and_in_the_conversion() {
    let after = |text: &str| with(example(), "/spec/retireUnmanaged", json!({ "after": text }));
    // The example: lifetime 4320h, renewBefore 1440h.
    let config = admission(after("168h")).unwrap().to_rotation_config().unwrap();
    assert_eq!(config.retire_unmanaged.map(|r| r.after.0.as_secs()), Some(7 * 86_400));
    admission(after("2879h")).unwrap().to_rotation_config().unwrap();
    for past in ["59m", "4320h"] {
        let refused = admission(after(past)).expect_err(&format!("after {past} was admitted"));
        assert!(refused.contains("retireUnmanaged.after must be at least 1h and shorter than lifetime"), "{past}: {refused}");
    }
    let problems = admission(after("2880h")).unwrap().to_rotation_config().unwrap_err().join("; ");
    assert!(problems.contains("spec.retireUnmanaged.after: 120d must be at least 1h and shorter than lifetime minus renewBefore (120d)"), "{problems}");
}
