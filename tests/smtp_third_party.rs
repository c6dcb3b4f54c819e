//! The SMTP verifier against a third-party server (aiosmtpd) configured like the ACS relay:
//! STARTTLS required, AUTH LOGIN only, one username and password. Our own stand-in is then
//! not the only judge of the verifier's SMTP.
//!
//! Needs python3 with aiosmtpd (`pip install aiosmtpd`). Without it the tests print a skip
//! notice and pass, except under CI (env var `CI` set), where they fail.

use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{AuthMechanism, SmtpVerification, SmtpVerifier};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::ports::{Verifier, VerifyFailureKind};
use entra_rotator_standins::tls::TestPki;
use entra_rotator::template::Template;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

const SCRIPT: &str = "tests/support/acs_like_smtpd.py";
const SENDER: &str = "DoNotReply@00000000-0000-0000-0000-000000000001.azurecomm.net";
const PASSWORD: &str = "Zq8~third.party_secret-value-0123456789ab";

/// Whether python3 can import aiosmtpd; otherwise explains how to get it.
async fn aiosmtpd_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .await;
    if probe.is_ok_and(|output| output.status.success()) {
        return true;
    }
    let advice = "python3 with aiosmtpd is needed for the third-party SMTP tests: run `pip install aiosmtpd`";
    assert!(std::env::var_os("CI").is_none(), "{advice}");
    eprintln!("skipping: {advice}");
    false
}

/// aiosmtpd running the ACS-like configuration, killed when dropped.
struct ThirdPartyRelay {
    _child: Child,
    _files: tempfile::TempDir,
    port: u16,
    ca_pem: String,
}

impl ThirdPartyRelay {
    async fn start(username: &str) -> Self {
        let pki = TestPki::generate().unwrap();
        let files = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &str| {
            let path = files.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let cert = write("cert.pem", &pki.server_cert_pem());
        let key = write("key.pem", &pki.server_key_pem());
        let password_file = write("password", PASSWORD);
        let mut child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT))
            .args([
                "--port",
                "0",
                "--username",
                username,
                "--allowed-sender",
                SENDER,
            ])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--password-file")
            .arg(&password_file)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let port = read_port(&mut child).await;
        Self {
            _child: child,
            _files: files,
            port,
            ca_pem: pki.ca_pem().to_string(),
        }
    }

    fn verifier(&self, username: &str, adjust: impl FnOnce(&mut SmtpVerification)) -> SmtpVerifier {
        let mut settings = SmtpVerification::new(
            "localhost",
            Template::parse(username).unwrap(),
            SENDER,
            "ops@example.com",
        );
        settings.port = self.port;
        settings.timeout = Duration::from_secs(10);
        adjust(&mut settings);
        SmtpVerifier::new(
            settings,
            &TlsTrust {
                extra_root_pems: vec![self.ca_pem.clone()],
            },
        )
        .unwrap()
    }
}

/// Waits for the script's `listening on 127.0.0.1:<port>` line.
async fn read_port(child: &mut Child) -> u16 {
    let stdout = child.stdout.take().unwrap();
    let mut first_line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        BufReader::new(stdout).read_line(&mut first_line),
    )
    .await
    .expect("aiosmtpd did not start listening within 20 s")
    .unwrap();
    first_line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from {SCRIPT}: {first_line:?}"))
}

fn app() -> AppRef {
    AppRef {
        tenant_id: Uuid::new_v4(),
        client_id: Uuid::new_v4(),
        object_id: None,
    }
}

#[tokio::test]
async fn aiosmtpd_configured_like_acs_agrees_with_our_classification() {
    if !aiosmtpd_available().await {
        return;
    }
    let app = app();
    let username = format!("contoso-acs|{}|{}", app.client_id, app.tenant_id);
    let relay = ThirdPartyRelay::start(&username).await;
    let template = "contoso-acs|{{clientId}}|{{tenantId}}";
    let secret = SecretString::from(PASSWORD);

    relay
        .verifier(template, |_| {})
        .verify(&app, &secret)
        .await
        .unwrap();

    let wrong = relay
        .verifier(template, |_| {})
        .verify(&app, &SecretString::from("wrong-secret"))
        .await
        .unwrap_err();
    assert_eq!(wrong.kind, VerifyFailureKind::BadCredentials, "{wrong}");
    assert!(wrong.message.contains("535 5.7.3"), "{}", wrong.message);

    // aiosmtpd, like ACS, advertises only AUTH LOGIN, so the verifier refuses PLAIN before
    // sending it; sent anyway, aiosmtpd would answer `504 5.5.4 Unrecognized authentication type`.
    let plain = relay
        .verifier(template, |s| s.mechanism = AuthMechanism::Plain)
        .verify(&app, &secret)
        .await
        .unwrap_err();
    assert_eq!(plain.kind, VerifyFailureKind::MechanismRejected, "{plain}");
    assert!(
        plain.message.contains("it offers: AUTH LOGIN"),
        "{}",
        plain.message
    );

    let sender = relay
        .verifier(template, |s| s.from = "noreply@contoso.example".into())
        .verify(&app, &secret)
        .await
        .unwrap_err();
    assert_eq!(sender.kind, VerifyFailureKind::SenderRejected, "{sender}");

    for error in [&wrong, &plain, &sender] {
        assert!(
            !format!("{error} {error:?}").contains(PASSWORD),
            "the secret leaked: {error}"
        );
    }
}
