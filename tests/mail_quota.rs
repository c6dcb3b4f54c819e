//! The mail quota (issue 19 items 2 and 5), over sockets against the relay stand-in, which
//! counts mails per minute and per hour like ACS and refuses beyond them. Time is simulated:
//! the test's clock moves only when something sleeps, and the stand-in's quota windows
//! read the same clock, so an hour of pacing takes no time and nothing depends on timing.

mod support;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::quota::{MailQuota, RelayLimiters};
use entra_rotator::adapters::smtp::{SmtpVerification, SmtpVerifier};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::events::RecordingSink;
use entra_rotator::engine::ports::{Clock, Verifier};
use entra_rotator::engine::{Engine, Outcome, RunOptions};
use entra_rotator::template::Template;
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use entra_rotator_standins::smtp::{RelayClock, RelaySettings, SmtpRelayStandin, StandinQuota};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time that passes only when someone sleeps.
struct SimulatedClock(Mutex<DateTime<Utc>>);

impl SimulatedClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Utc::now())))
    }
}

#[async_trait]
impl Clock for SimulatedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
    async fn sleep(&self, duration: Duration) {
        *self.0.lock().unwrap() += chrono::Duration::from_std(duration).unwrap();
    }
}

/// A relay stand-in with `quota`, its windows on `clock`.
async fn relay_with_quota(scenario: &Scenario, quota: StandinQuota, clock: &Arc<SimulatedClock>) -> SmtpRelayStandin {
    let clock = clock.clone();
    let settings = RelaySettings::azure_managed(ACS_RESOURCE).with_quota(quota, RelayClock::from_fn(move || clock.now()));
    SmtpRelayStandin::start(scenario.tenant.clone(), &scenario.pki, settings).await.unwrap()
}

fn verifier(scenario: &Scenario, relay: &SmtpRelayStandin) -> SmtpVerifier {
    let settings = SmtpVerification {
        port: relay.port(),
        timeout: Duration::from_secs(10),
        ..SmtpVerification::new(
            "localhost",
            Template::parse(&format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}")).unwrap(),
            relay.settings().default_sender().unwrap(),
            "ops@example.com",
        )
    };
    let trust = TlsTrust { extra_root_pems: vec![scenario.pki.ca_pem().to_string()] };
    SmtpVerifier::new(settings, &trust).unwrap()
}

#[tokio::test]
async fn twenty_rotations_under_the_managed_domain_quota_are_paced_not_failed() {
    let scenario = support::scenario().await;
    let clock = SimulatedClock::new();
    let relay = relay_with_quota(&scenario, StandinQuota::AZURE_MANAGED, &clock).await;
    let limiters = RelayLimiters::new(clock.clone());
    let start = clock.now();

    for index in 0..20 {
        let app = scenario.tenant.register_app(&format!("mailer-{index}"));
        let now = Utc::now();
        let secret = scenario.tenant.add_password(app.object_id, None, now, now + chrono::Duration::days(30)).unwrap().secret_text;
        let unpaced = verifier(&scenario, &relay);
        let limiter = limiters.for_resource(&unpaced.resource(), Some(MailQuota::AZURE_MANAGED));
        // A rotation with the longest verification budget there is (retryBudget: 1h).
        let verifier = unpaced.paced(limiter, Duration::from_secs(3600));
        let app = AppRef { tenant_id: scenario.tenant.tenant_id, client_id: app.app_id, object_id: None };
        verifier.verify(&app, &SecretString::from(secret)).await.unwrap_or_else(|e| panic!("rotation {index}: {e}"));
    }

    assert_eq!(relay.messages(), 20, "every rotation sent its test mail");
    assert_eq!(relay.quota_refusals(), 0, "none was refused for the quota: they were paced");
    let waited = clock.now() - start;
    assert!(waited >= chrono::Duration::minutes(60), "10 an hour: the 11th waits for the hour, waited {waited}");
    assert!(waited < chrono::Duration::minutes(65), "and no longer than the quota needs, waited {waited}");
}

#[tokio::test]
async fn an_over_quota_reply_never_discards_a_secret_that_authenticated() {
    let scenario = support::scenario().await;
    let clock = SimulatedClock::new();
    // A quota the application has already spent: every test mail is refused.
    let spent = StandinQuota { per_minute: 0, per_hour: 0 };
    let relay = relay_with_quota(&scenario, spent, &clock).await;
    let mut rotation = support::in_process_rotation(&scenario, Duration::from_secs(10));
    rotation.verifier = Some(Arc::new(verifier(&scenario, &relay)));
    let engine = Engine::new(clock.clone(), Arc::new(RecordingSink::default()));

    let outcome = engine.run(&rotation, RunOptions::default()).await.unwrap();

    let Outcome::Settled { key_id, minted: true, .. } = outcome else {
        panic!("the rotation settles: {outcome:?}");
    };
    assert!(relay.quota_refusals() >= 1, "the relay refused for its quota");
    assert_eq!(relay.messages(), 0);
    assert!(support::our_key_ids(&scenario).contains(&key_id), "the secret that authenticated was not removed");
    assert_eq!(support::stored_key_ids(&scenario), [Some(key_id); 2], "and every store holds it");
}

/// The stand-in models ACS's connection limit: one session too many is refused with
/// Exchange Online's documented `432 4.3.2`, which the verifier reads as "wait".
#[tokio::test]
async fn a_session_over_the_relays_connection_limit_is_told_to_wait() {
    use tokio::io::AsyncBufReadExt as _;
    let scenario = support::scenario().await;
    let settings = RelaySettings { max_sessions: Some(1), ..RelaySettings::azure_managed(ACS_RESOURCE) };
    let relay = SmtpRelayStandin::start(scenario.tenant.clone(), &scenario.pki, settings).await.unwrap();
    let mut held = tokio::io::BufReader::new(tokio::net::TcpStream::connect(relay.addr()).await.unwrap());
    let mut greeting = String::new();
    held.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("220 "), "the first session is served: {greeting}");

    let app = AppRef { tenant_id: scenario.tenant.tenant_id, client_id: scenario.target.app_id, object_id: None };
    let error = verifier(&scenario, &relay).verify(&app, &SecretString::from("any")).await.unwrap_err();
    assert_eq!(error.kind, entra_rotator::engine::ports::VerifyFailureKind::Throttled, "{error}");
    assert!(error.message.contains("432 4.3.2 Concurrent connections limit exceeded"), "{error}");
    assert_eq!(relay.session_refusals(), 1);
}
