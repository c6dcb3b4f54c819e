//! Secret hygiene without string surgery (issue 13 item 5, issue 19 item 4): SMTP messages
//! are built without the secret, so a one-character or common-word secret ("e", "the",
//! "password") mangles nothing, and what a user reads (errors, Debug, smtp-test's output
//! with logs at trace level, the operator's status) is the same whatever the secret was:
//! it tells nothing about it, even from a relay that echoes what it was sent.

mod support;

use chrono::{TimeZone, Utc};
use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{AuthMechanism, SmtpVerification, SmtpVerifier, TlsMode};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::EngineError;
use entra_rotator::engine::ports::{Verifier, VerifyError, VerifyFailureKind};
use entra_rotator::operator::crd::ClientSecretRotationStatus;
use entra_rotator::operator::status::after_error;
use entra_rotator::template::Template;
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use entra_rotator_standins::tls::TestPki;
use std::time::Duration;
use support::hostile_smtp::{ECHO, HostileSmtp, Script};

/// Short and common secrets, which substring redaction turned into `c[REDACTED]uld`, and a
/// long one that cannot be mistaken for ordinary text.
const SECRETS: [&str; 5] = ["e", "t", "the", "password", "Hygiene~Long.Secret_0123456789"];

fn app(scenario: &Scenario) -> AppRef {
    AppRef {
        tenant_id: scenario.tenant.tenant_id,
        client_id: scenario.target.app_id,
        object_id: None,
    }
}

fn standin_verifier(scenario: &Scenario) -> SmtpVerifier {
    let settings = SmtpVerification {
        port: scenario.relay.port(),
        timeout: Duration::from_secs(10),
        ..SmtpVerification::new(
            "localhost",
            Template::parse(&format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}")).unwrap(),
            scenario.relay.settings().default_sender().unwrap(),
            "ops@example.com",
        )
    };
    let trust = TlsTrust { extra_root_pems: vec![scenario.pki.ca_pem().to_string()] };
    SmtpVerifier::new(settings, &trust).unwrap()
}

/// What a user could read about one failed verification: the error, its Debug form and the
/// status the operator would write from it.
fn everything_shown(error: VerifyError) -> Vec<String> {
    let (shown, debug) = (error.to_string(), format!("{error:?}"));
    let failed = EngineError::Verification { key_id: uuid::Uuid::nil(), attempts: 1, last: error };
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
    let status = after_error(&ClientSecretRotationStatus::default(), &failed, Some(1), now, &[]);
    vec![shown, debug, serde_json::to_string(&status).unwrap()]
}

#[tokio::test]
async fn a_short_or_common_secret_mangles_no_message_and_changes_none() {
    let scenario = support::scenario().await;
    let verifier = standin_verifier(&scenario);
    let mut seen = Vec::new();
    for secret in SECRETS {
        let error = verifier.verify(&app(&scenario), &SecretString::from(secret)).await.unwrap_err();
        assert_eq!(error.kind, VerifyFailureKind::BadCredentials, "{error}");
        let shown = everything_shown(error);
        for text in &shown {
            assert!(!text.contains("REDACTED"), "secret {secret:?} was cut out of: {text}");
            assert!(text.contains("Check the username form `<resource>|<appId>|<tenantId>`"), "{text}");
            assert!(text.contains("Communication Services resource"), "{text}");
        }
        seen.push((secret, shown));
    }
    let (_, first) = &seen[0];
    for (secret, shown) in &seen {
        assert_eq!(shown, first, "what is shown for secret {secret:?} differs: it depends on the secret");
    }
    assert!(!first.iter().any(|text| text.contains(SECRETS[4])), "{first:?}");
}

/// A relay behind TLS that echoes each AUTH line back in its 535 reply.
fn echoing_relay() -> Script {
    Script {
        greeting: b"220 relay.example ESMTP\r\n".to_vec(),
        replies: vec![
            b"250-relay.example\r\n250 AUTH LOGIN\r\n".to_vec(),
            b"334 VXNlcm5hbWU6\r\n".to_vec(),
            b"334 UGFzc3dvcmQ6\r\n".to_vec(),
            format!("535 5.7.8 Authentication failed for {ECHO}\r\n").into_bytes(),
        ],
    }
}

#[tokio::test]
async fn an_echoing_relay_gets_the_same_message_whatever_the_secret() {
    let pki = TestPki::generate().unwrap();
    let relay = HostileSmtp::start_echoing(echoing_relay(), Some(&pki)).await;
    let settings = SmtpVerification {
        port: relay.port(),
        tls: TlsMode::Implicit,
        mechanism: AuthMechanism::Login,
        timeout: Duration::from_secs(10),
        ..SmtpVerification::new(
            "localhost",
            Template::parse("acs|{{clientId}}|{{tenantId}}").unwrap(),
            "DoNotReply@example.azurecomm.net",
            "canary@contoso.example",
        )
    };
    let trust = TlsTrust { extra_root_pems: vec![pki.ca_pem().to_string()] };
    let verifier = SmtpVerifier::new(settings, &trust).unwrap();
    let app = AppRef { tenant_id: uuid::Uuid::nil(), client_id: uuid::Uuid::nil(), object_id: None };
    let mut shown = Vec::new();
    for secret in SECRETS {
        let error = verifier.verify(&app, &SecretString::from(secret)).await.unwrap_err();
        assert!(error.message.contains("answered `535 5.7.8` to AUTH"), "{error}");
        shown.push(everything_shown(error));
    }
    assert!(shown.iter().all(|s| s == &shown[0]), "the echo reached a message: {shown:#?}");
}

/// `smtp-test` with logs at trace level: the verdict line is the same for every secret.
#[tokio::test]
async fn smtp_test_prints_the_same_verdict_whatever_the_secret() {
    let scenario = support::scenario().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, scenario.pki.ca_pem()).unwrap();
    let username = format!("{ACS_RESOURCE}|{}|{}", scenario.target.app_id, scenario.tenant.tenant_id);
    let mut verdicts = Vec::new();
    for secret in SECRETS {
        let password = dir.path().join("password");
        std::fs::write(&password, secret).unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(["smtp-test", "--host", "localhost", "--port", &scenario.relay.port().to_string()])
            .args(["--username", &username, "--from", scenario.relay.settings().default_sender().unwrap()])
            .args(["--to", "ops@example.com", "--timeout", "5s"])
            .arg("--password-file")
            .arg(&password)
            .arg("--extra-root-certificate")
            .arg(&ca)
            .env("RUST_LOG", "trace")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(!text.contains("REDACTED"), "{text}");
        let verdict: Vec<&str> = text.lines().filter(|l| l.starts_with("FAILED") || l.starts_with("A secret")).collect();
        assert!(verdict[0].contains("Check the username form"), "{text}");
        verdicts.push(verdict.join("\n"));
    }
    assert!(verdicts.iter().all(|v| v == &verdicts[0]), "{verdicts:#?}");
}
