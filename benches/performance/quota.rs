//! 1,000 deliver-mode verifications (one per rotation) on one Azure-managed-domain relay
//! resource: the limiter paces them to 5 mails a minute and 10 an hour, on a simulated
//! clock that the relay stand-in's quota windows read too, so 100 hours take seconds.
//! Reported: the simulated time against the quota's floor, and failures (none expected).

use crate::Row;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::quota::{MailQuota, RelayLimiters};
use entra_rotator::adapters::smtp::{SmtpVerification, SmtpVerifier};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::ports::{Clock, Verifier};
use entra_rotator::template::Template;
use entra_rotator_standins::scenario::{ACS_RESOURCE, Scenario};
use entra_rotator_standins::smtp::{RelayClock, RelaySettings, SmtpRelayStandin, StandinQuota};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROTATIONS: usize = 1_000;

/// Time that passes only when someone sleeps.
struct SimulatedClock(Mutex<DateTime<Utc>>);

#[async_trait]
impl Clock for SimulatedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    async fn sleep(&self, duration: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) +=
            chrono::Duration::from_std(duration).unwrap_or_default();
    }
}

pub async fn rows() -> Vec<Row> {
    let scenario = Scenario::start().await.expect("the stand-ins start");
    let clock = Arc::new(SimulatedClock(Mutex::new(Utc::now())));
    let relay_clock = {
        let clock = clock.clone();
        RelayClock::from_fn(move || clock.now())
    };
    let settings = RelaySettings::azure_managed(ACS_RESOURCE).with_quota(StandinQuota::AZURE_MANAGED, relay_clock);
    let relay = SmtpRelayStandin::start(scenario.tenant.clone(), &scenario.pki, settings)
        .await
        .expect("the relay starts");
    let limiters = RelayLimiters::new(clock.clone());
    let trust = TlsTrust { extra_root_pems: vec![scenario.pki.ca_pem().to_string()] };
    let username = Template::parse(&format!("{ACS_RESOURCE}|{{{{clientId}}}}|{{{{tenantId}}}}")).expect("a template");
    let sender = relay.settings().default_sender().unwrap_or_default().to_string();
    let (start, wall) = (clock.now(), Instant::now());
    let mut failures = 0;
    for index in 0..ROTATIONS {
        let app = scenario.tenant.register_app(&format!("mailer-{index}"));
        let now = Utc::now();
        let secret = scenario
            .tenant
            .add_password(app.object_id, None, now, now + chrono::Duration::days(30))
            .expect("a secret")
            .secret_text;
        let settings = SmtpVerification {
            port: relay.port(),
            ..SmtpVerification::new("localhost", username.clone(), &sender, "ops@example.com")
        };
        let verifier = SmtpVerifier::new(settings, &trust).expect("a verifier");
        let limiter = limiters.for_resource(&verifier.resource(), Some(MailQuota::AZURE_MANAGED));
        // retryBudget at its maximum (1h): each mail waits for the quota at most that long.
        let verifier = verifier.paced(limiter, Duration::from_secs(3600));
        let app = AppRef { tenant_id: scenario.tenant.tenant_id, client_id: app.app_id, object_id: None };
        if verifier.verify(&app, &SecretString::from(secret)).await.is_err() {
            failures += 1;
        }
    }
    let simulated = (clock.now() - start).num_minutes() as f64 / 60.0;
    assert_eq!(relay.messages(), ROTATIONS - failures, "every verification that passed sent one mail");
    vec![Row::new(
        "Quota: 1000 deliver-mode rotations on one Azure-managed-domain resource (5/min, 10/h)",
        format!(
            "{} verified, {failures} failed, {} refused by the relay's quota; {simulated:.2} h simulated ({:.1} s wall)",
            ROTATIONS - failures,
            relay.quota_refusals(),
            wall.elapsed().as_secs_f64()
        ),
        "≥ 99 h: at 10 an hour the 1,000th mail goes no earlier than 99 h after the first (1000 / 10 = 100 hourly windows)",
        "sequential, each rotation asking when the previous one is verified; the limiter and the stand-in's quota read the same simulated clock",
    )]
}
