//! How the verifier reads a relay's refusals (issue 19 item 2), over sockets on 127.0.0.1:
//! a 4xx at any phase and the 5xx texts Exchange Online uses for throttling mean "wait"
//! (`Throttled`, retryable, and whether AUTH had already succeeded), and a sender refused
//! at RCPT TO, as Postfix does by default, is blamed on the sender, not the recipient.

mod support;

use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{AuthMechanism, ProofMode, SmtpVerification, SmtpVerifier, TlsMode};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::ports::{Verifier, VerifyError, VerifyFailureKind};
use entra_rotator::template::Template;
use entra_rotator_standins::scenario::ACS_RESOURCE;
use entra_rotator_standins::smtp::{RelaySettings, SmtpRelayStandin};
use entra_rotator_standins::tls::TestPki;
use std::time::Duration;
use support::hostile_smtp::{HostileSmtp, Script};

const EHLO: &str = "250-relay.example\r\n250 AUTH LOGIN\r\n";
const AUTH_OK: [&str; 3] = ["334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n", "235 2.7.0 Authentication successful\r\n"];
const MAIL_OK: &str = "250 2.1.0 Sender OK\r\n";
const RCPT_OK: &str = "250 2.1.5 Recipient OK\r\n";
const DATA_OK: &str = "354 Start mail input; end with <CRLF>.<CRLF>\r\n";

/// Where a scripted relay refuses.
#[derive(Clone, Copy, Debug)]
enum At {
    Greeting,
    Auth,
    MailFrom,
    RcptTo,
    Data,
}

/// A relay (TLS from the first byte) that accepts everything up to `at`, then answers `refusal`.
fn refusing(at: At, refusal: &str) -> Script {
    let refusal = format!("{refusal}\r\n");
    let mut replies: Vec<String> = vec![EHLO.into()];
    let greeting = match at {
        At::Greeting => return Script { greeting: refusal.into_bytes(), replies: Vec::new() },
        _ => "220 relay.example ESMTP\r\n".to_string(),
    };
    match at {
        At::Greeting => unreachable!(),
        At::Auth => replies.push(refusal),
        At::MailFrom => {
            replies.extend(AUTH_OK.map(String::from));
            replies.push(refusal);
        }
        At::RcptTo => {
            replies.extend(AUTH_OK.map(String::from));
            replies.extend([MAIL_OK.into(), refusal]);
        }
        At::Data => {
            replies.extend(AUTH_OK.map(String::from));
            replies.extend([MAIL_OK.into(), RCPT_OK.into(), DATA_OK.into()]);
            // The server answers every line; the client reads its answer after the final dot.
            replies.extend(std::iter::repeat_n(refusal, 100));
        }
    }
    Script {
        greeting: greeting.into_bytes(),
        replies: replies.into_iter().map(String::into_bytes).collect(),
    }
}

fn app() -> AppRef {
    AppRef {
        tenant_id: uuid::Uuid::new_v4(),
        client_id: uuid::Uuid::new_v4(),
        object_id: None,
    }
}

async fn verify_against(script: Script, pki: &TestPki) -> VerifyError {
    let relay = HostileSmtp::start(script, Some(pki)).await;
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
    verifier.verify(&app(), &SecretString::from("Relay.Replies~secret")).await.unwrap_err()
}

#[tokio::test]
async fn a_4xx_at_any_phase_means_wait() {
    let pki = TestPki::generate().unwrap();
    let cases = [
        (At::Greeting, "421 4.3.2 Service not available", false),
        (At::Auth, "454 4.7.0 Temporary authentication failure", false),
        (At::MailFrom, "451 4.4.3 Temporary server error. Please try again later", true),
        (At::RcptTo, "432 4.3.2 Concurrent connections limit exceeded", true),
        (At::Data, "452 4.3.1 Insufficient system resources", true),
    ];
    for (at, refusal, authenticated) in cases {
        let error = verify_against(refusing(at, refusal), &pki).await;
        assert_eq!(error.kind, VerifyFailureKind::Throttled, "{at:?}: {error}");
        assert!(error.is_retryable(), "{at:?}");
        assert_eq!(error.authenticated, authenticated, "{at:?}: {error}");
        assert!(error.message.contains("asks to wait"), "{at:?}: {error}");
    }
}

/// The texts are Exchange Online's, from Microsoft Learn ("Message storage and concurrent
/// connection throttling for SMTP Authenticated Submission", "Continuous error throttling
/// for SMTP AUTH submissions"); a full mailbox is a 5.2.2 that waiting does not clear.
#[tokio::test]
async fn exchange_online_throttling_texts_mean_wait_even_under_5xx() {
    let pki = TestPki::generate().unwrap();
    let quota = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception";
    let error = verify_against(refusing(At::Data, quota), &pki).await;
    assert_eq!(error.kind, VerifyFailureKind::Throttled, "{error}");
    assert!(error.authenticated, "AUTH had succeeded: {error}");

    let continuous = "550 5.2.252 Sender throttled due to continuous send as denied errors.";
    let error = verify_against(refusing(At::MailFrom, continuous), &pki).await;
    assert_eq!(error.kind, VerifyFailureKind::Throttled, "{error}");

    let full = "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded";
    let error = verify_against(refusing(At::Data, full), &pki).await;
    assert_eq!(error.kind, VerifyFailureKind::Other, "a full mailbox is not a rate limit: {error}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_sender_refused_at_rcpt_to_is_blamed_on_the_sender() {
    let pki = TestPki::generate().unwrap();
    let postfix = "554 5.7.1 <DoNotReply@example.azurecomm.net>: Sender address rejected: Access denied";
    let error = verify_against(refusing(At::RcptTo, postfix), &pki).await;
    assert_eq!(error.kind, VerifyFailureKind::SenderRejected, "{error}");
    assert!(error.message.contains("refused the sender DoNotReply@example.azurecomm.net"), "{error}");
    assert!(!error.message.contains("refused the recipient"), "{error}");

    let recipient = "550 5.1.1 <canary@contoso.example>: Recipient address rejected: User unknown";
    let error = verify_against(refusing(At::RcptTo, recipient), &pki).await;
    assert_eq!(error.kind, VerifyFailureKind::RecipientRejected, "{error}");
}

/// The relay stand-in refusing senders the Postfix way, in both proofs.
#[tokio::test]
async fn the_stand_in_refusing_senders_at_rcpt_to_gets_a_sender_explanation() {
    let scenario = support::scenario().await;
    let relay = SmtpRelayStandin::start(
        scenario.tenant.clone(),
        &scenario.pki,
        RelaySettings::azure_managed(ACS_RESOURCE).refusing_senders_at_rcpt(),
    )
    .await
    .unwrap();
    let now = chrono::Utc::now();
    let secret = scenario
        .tenant
        .add_password(scenario.target.object_id, None, now, now + chrono::Duration::days(30))
        .unwrap()
        .secret_text;
    let trust = TlsTrust { extra_root_pems: vec![scenario.pki.ca_pem().to_string()] };
    let app = AppRef { tenant_id: scenario.tenant.tenant_id, client_id: scenario.target.app_id, object_id: None };
    for mode in [ProofMode::Deliver, ProofMode::Handshake] {
        let settings = SmtpVerification {
            port: relay.port(),
            timeout: Duration::from_secs(10),
            mode,
            ..SmtpVerification::new(
                "localhost",
                Template::parse(&format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}")).unwrap(),
                "alerts@contoso.example",
                "ops@example.com",
            )
        };
        let verifier = SmtpVerifier::new(settings, &trust).unwrap();
        let error = verifier.verify(&app, &SecretString::from(secret.clone())).await.unwrap_err();
        assert_eq!(error.kind, VerifyFailureKind::SenderRejected, "{mode:?}: {error}");
        assert!(error.message.contains("RCPT TO") && error.message.contains("Sender address rejected"), "{error}");
        assert!(error.message.contains("refused the sender alerts@contoso.example"), "{error}");
    }
    assert_eq!(relay.messages(), 0);
}
