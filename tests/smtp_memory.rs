//! Relays that never stop talking: a greeting without a line end, an EHLO answer without a
//! last line, in clear text and over TLS, against the verifier, `smtp-test`'s probe and the
//! email notifier. Each fails with an error naming the relay, the phase and the limit, and
//! the process's peak memory stays within [`MEMORY_BOUND_MIB`].
//!
//! Regression (issue 18, item 3): lettre read a reply line before checking its length; a
//! greeting without a line feed grew the process to 2.6 GB in 7 s.
//!
//! One test in its own binary, so that the peak memory measured is this test's alone.

mod support;

use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{AuthMechanism, SmtpVerification, SmtpVerifier, TlsMode};
use entra_rotator::adapters::smtp_probe::probe;
use entra_rotator::alerting::{Notification, NotificationSettings, Notifier};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::ports::Verifier;
use entra_rotator_standins::tls::TestPki;
use entra_rotator::template::Template;
use std::time::Duration;
use support::hostile_smtp::{FLOOD_BYTES, Flood, HostileSmtp};

/// How much the process's peak resident memory may grow over all cases together. The
/// chart's memory limit is 128 Mi; a flooding relay gets a quarter of it at most.
const MEMORY_BOUND_MIB: u64 = 64;

const LINE_LIMIT: &str = "a reply line longer than 1000 octets (RFC 5321 allows 512)";
const LINES_LIMIT: &str = "a reply of more than 100 lines";

/// `VmHWM` (peak resident set) of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn endless_greeting() -> Flood {
    Flood {
        greeting: b"220 ".to_vec(),
        after_lines: 0,
        unit: b"A".to_vec(),
    }
}

fn endless_ehlo() -> Flood {
    Flood {
        greeting: b"220 relay.example ESMTP\r\n".to_vec(),
        after_lines: 1,
        unit: b"250-SIZE 31457280\r\n".to_vec(),
    }
}

fn verifier(port: u16, tls: TlsMode, trust: &TlsTrust) -> SmtpVerifier {
    SmtpVerifier::new(
        SmtpVerification {
            host: "localhost".into(),
            port,
            tls,
            mechanism: AuthMechanism::Login,
            username: Template::parse("acs|{{clientId}}|{{tenantId}}").unwrap(),
            from: "DoNotReply@example.azurecomm.net".into(),
            to: "canary@contoso.example".into(),
            timeout: Duration::from_secs(20),
            mode: entra_rotator::adapters::smtp::ProofMode::Deliver,
        },
        trust,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_replies_fail_cleanly_within_a_memory_bound() {
    let pki = TestPki::generate().unwrap();
    let trust = TlsTrust {
        extra_root_pems: vec![pki.ca_pem().to_string()],
    };
    let app = AppRef {
        tenant_id: uuid::Uuid::new_v4(),
        client_id: uuid::Uuid::new_v4(),
        object_id: None,
    };
    let secret = SecretString::from("Flood~Test.Secret_value_0123456789".to_string());
    let before = peak_rss_kib();

    // The verifier (and so `smtp-test`'s verdict), each case with its phase.
    let cases = [
        (
            endless_greeting(),
            None,
            TlsMode::StartTls,
            LINE_LIMIT,
            "while connecting",
        ),
        (
            endless_ehlo(),
            None,
            TlsMode::StartTls,
            LINES_LIMIT,
            "while connecting",
        ),
        (
            endless_greeting(),
            Some(&pki),
            TlsMode::Implicit,
            LINE_LIMIT,
            "while connecting",
        ),
        (
            endless_ehlo(),
            Some(&pki),
            TlsMode::Implicit,
            LINES_LIMIT,
            "while connecting",
        ),
    ];
    for (flood, tls, mode, limit, phase) in cases {
        let relay = HostileSmtp::flood(flood, tls).await;
        let error = verifier(relay.port(), mode, &trust)
            .verify(&app, &secret)
            .await
            .unwrap_err();
        let expected = format!(
            "the SMTP relay localhost:{} sent {limit} {phase}",
            relay.port()
        );
        assert!(error.to_string().contains(&expected), "{error}");
    }

    // smtp-test's look at the relay.
    for (flood, limit, step) in [
        (endless_greeting(), LINE_LIMIT, "the greeting"),
        (endless_ehlo(), LINES_LIMIT, "EHLO"),
    ] {
        let relay = HostileSmtp::flood(flood, None).await;
        let report = probe(
            "localhost",
            relay.port(),
            TlsMode::StartTls,
            &trust,
            Duration::from_secs(20),
        )
        .await;
        let expected = format!("localhost:{} sent {limit} in {step}", relay.port());
        let stopped = report.stopped.unwrap_or_default();
        assert!(stopped.contains(&expected), "{stopped}");
    }

    // The email notifier.
    let relay = HostileSmtp::flood(endless_greeting(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "Flood~Test.Secret_value_0123456789").unwrap();
    let settings: NotificationSettings = serde_yaml::from_str(&format!(
        "channels:\n  - email:\n      host: localhost\n      port: {}\n      username: alerts\n      \
         passwordFile: {}\n      from: DoNotReply@example.azurecomm.net\n      to: [ops@contoso.example]\n",
        relay.port(),
        password_file.display()
    ))
    .unwrap();
    let notifier = Notifier::new(&settings, reqwest::Client::new(), trust.clone())
        .unwrap()
        .unwrap();
    let error = notifier
        .notify(&Notification {
            kind: entra_rotator::alerting::FAILED,
            rotation: "dify/dify-smtp".into(),
            application_id: app.client_id.to_string(),
            key_id: None,
            expires_at: None,
            days_left: None,
            message: "verification failed".into(),
        })
        .await
        .unwrap_err();
    let expected = format!(
        "the SMTP relay localhost:{} sent {LINE_LIMIT} while connecting",
        relay.port()
    );
    assert!(error.to_string().contains(&expected), "{error}");

    let grown_mib = (peak_rss_kib().saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "peak RSS grew by {grown_mib:.1} MiB over 7 flooding relays (each offering {} MiB); bound {MEMORY_BOUND_MIB} MiB",
        FLOOD_BYTES >> 20
    );
    assert!(
        grown_mib < MEMORY_BOUND_MIB as f64,
        "peak RSS grew by {grown_mib:.1} MiB, more than {MEMORY_BOUND_MIB} MiB"
    );
}
