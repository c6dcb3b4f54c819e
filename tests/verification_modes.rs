//! The two proofs (issue 19 item 1) over sockets against the ACS-like relay stand-in, which
//! counts messages, sessions that started DATA and handshakes: a default rotation spends
//! exactly one mail of the application's quota and the run that revokes after the grace
//! period none; `handshake` sends no message at all and still catches a bad secret, a wrong
//! username form and a refused sender.

mod support;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{ProofMode, SmtpVerification, SmtpVerifier};
use entra_rotator::config::{Config, VerificationConfig};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::events::RecordingSink;
use entra_rotator::engine::ports::{Clock, Verifier, VerifyFailureKind};
use entra_rotator::engine::{Engine, Outcome, RunOptions};
use entra_rotator::template::Template;
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The wall clock moved forward by whatever the test adds: Graph's timestamps are real,
/// and the grace period ends when the test says so, without sleeping.
#[derive(Default)]
struct AheadClock(Mutex<chrono::Duration>);

impl AheadClock {
    fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

#[async_trait]
impl Clock for AheadClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().unwrap()
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}

/// The scenario's relay settings with `mode`, as the configuration file would give them.
fn verifier(scenario: &Scenario, mode: ProofMode, adjust: impl FnOnce(&mut SmtpVerification)) -> SmtpVerifier {
    let config = Config::load(&scenario.config_path).unwrap();
    let VerificationConfig::Smtp(smtp) = &config.rotations[0].verification else {
        panic!("the scenario verifies through the relay");
    };
    let mut settings = SmtpVerification {
        port: smtp.port,
        timeout: Duration::from_secs(10),
        mode,
        ..SmtpVerification::new(&smtp.host, smtp.username.clone(), &smtp.from, &smtp.to)
    };
    adjust(&mut settings);
    let trust = TlsTrust {
        extra_root_pems: vec![scenario.pki.ca_pem().to_string()],
    };
    SmtpVerifier::new(settings, &trust).unwrap()
}

fn app(scenario: &Scenario) -> AppRef {
    AppRef {
        tenant_id: scenario.tenant.tenant_id,
        client_id: scenario.target.app_id,
        object_id: None,
    }
}

/// A live secret of the target application that has replicated.
fn working_secret(scenario: &Scenario) -> SecretString {
    let now = Utc::now();
    let added = scenario
        .tenant
        .add_password(scenario.target.object_id, None, now, now + chrono::Duration::days(30))
        .unwrap();
    SecretString::from(added.secret_text)
}

#[tokio::test]
async fn a_default_rotation_sends_one_mail_and_its_revoking_run_none() {
    let scenario = support::scenario().await;
    let mut rotation = support::in_process_rotation(&scenario, Duration::from_secs(10));
    rotation.timing.revoke_grace = chrono::Duration::hours(1);
    let clock = Arc::new(AheadClock::default());
    let engine = Engine::new(clock.clone(), Arc::new(RecordingSink::default()));
    let relay = &scenario.relay;

    engine.run(&rotation, RunOptions::default()).await.unwrap();
    assert_eq!(relay.messages(), 1, "the first secret is proven by one test mail");
    let forced = RunOptions { force: true, dry_run: false };
    let Outcome::Settled { pending, .. } = engine.run(&rotation, forced).await.unwrap() else {
        panic!("the forced rotation settles");
    };
    assert_eq!(pending.len(), 1, "the old secret waits for the grace period");
    assert_eq!(relay.messages(), 2, "one mail for the rotation");
    let handshakes = relay.handshakes();

    clock.advance(chrono::Duration::hours(2));
    let Outcome::Settled { revoked, .. } = engine.run(&rotation, RunOptions::default()).await.unwrap() else {
        panic!("the revoking run settles");
    };
    assert_eq!(revoked, pending, "the old secret is revoked after the grace period");
    assert_eq!(relay.messages(), 2, "the revoking run sent no mail");
    assert_eq!(relay.data_sessions(), 2, "nor started DATA");
    assert_eq!(relay.handshakes(), handshakes + 1, "it re-checked the secret with a handshake");
}

#[tokio::test]
async fn a_rotation_in_handshake_mode_sends_no_mail() {
    let scenario = support::scenario().await;
    let mut rotation = support::in_process_rotation(&scenario, Duration::from_secs(10));
    rotation.verifier = Some(Arc::new(verifier(&scenario, ProofMode::Handshake, |_| {})));
    let (engine, _) = support::engine();

    let outcome = engine.run(&rotation, RunOptions::default()).await.unwrap();
    assert!(matches!(outcome, Outcome::Settled { minted: true, .. }), "{outcome:?}");
    assert_eq!(scenario.relay.messages(), 0);
    assert_eq!(scenario.relay.count("DATA"), 0);
    assert_eq!(scenario.relay.handshakes(), 1);
}

#[tokio::test]
async fn the_handshake_catches_a_bad_secret_a_wrong_username_form_and_a_refused_sender() {
    let scenario = support::scenario().await;
    let secret = working_secret(&scenario);
    let app = app(&scenario);

    let handshake = verifier(&scenario, ProofMode::Handshake, |_| {});
    handshake.verify(&app, &secret).await.expect("a working secret passes the handshake");
    assert_eq!(scenario.relay.handshakes(), 1);

    let error = handshake.verify(&app, &SecretString::from("not-the-secret")).await.unwrap_err();
    assert_eq!(error.kind, VerifyFailureKind::BadCredentials, "{error}");

    // The app's client id where the resource name belongs: a wrong username form.
    let wrong_form = format!("{}|{{{{tenantId}}}}|{ACS_RESOURCE}", app.client_id);
    let misnamed = verifier(&scenario, ProofMode::Handshake, |s| s.username = Template::parse(&wrong_form).unwrap());
    let error = misnamed.verify(&app, &secret).await.unwrap_err();
    assert_eq!(error.kind, VerifyFailureKind::BadCredentials, "{error}");
    assert!(error.message.contains("username form"), "{error}");

    let refused = verifier(&scenario, ProofMode::Handshake, |s| s.from = "ops@contoso.example".into());
    let error = refused.verify(&app, &secret).await.unwrap_err();
    assert_eq!(error.kind, VerifyFailureKind::SenderRejected, "{error}");
    assert!(error.message.contains("ops@contoso.example"), "{error}");

    assert_eq!(scenario.relay.messages(), 0, "no handshake sent a message");
    assert_eq!(scenario.relay.count("DATA"), 0);
}

#[tokio::test]
async fn a_re_check_uses_the_handshake_even_in_deliver_mode() {
    let scenario = support::scenario().await;
    let secret = working_secret(&scenario);
    let deliver = verifier(&scenario, ProofMode::Deliver, |_| {});

    deliver.verify(&app(&scenario), &secret).await.unwrap();
    deliver.recheck(&app(&scenario), &secret).await.unwrap();

    assert_eq!(scenario.relay.messages(), 1, "verify sends the test mail, recheck none");
    assert_eq!(scenario.relay.handshakes(), 1);
}
