//! Hostile SMTP peers against the verifier, `smtp-test` and the email notifier, over
//! sockets on 127.0.0.1: replies injected after STARTTLS (the CVE-2011-0411 class) and a
//! relay that echoes the AUTH argument back. What a user would check: the verification
//! fails and says why, no forged success, and the credential shows in no form.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{
    AuthMechanism, MAX_REPLY_TEXT, SmtpVerification, SmtpVerifier, TlsMode,
};
use entra_rotator::alerting::{Notification, NotificationSettings, Notifier};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::ports::{Verifier, VerifyFailureKind};
use entra_rotator_standins::tls::TestPki;
use entra_rotator::template::Template;
use std::process::Output;
use std::time::Duration;
use support::hostile_smtp::{ECHO, HostileSmtp, Script};

const SECRET: &str = "Echo~Test.Secret_value_0123456789abcd";
const USERNAME: &str = "contoso-acs|11111111-2222-3333-4444-555555555555|tenant";
const INJECTION: &str =
    "bytes after STARTTLS reply: possible STARTTLS command injection (CVE-2011-0411 class)";

/// What an on-path writer sends in one write after the client's STARTTLS: the genuine `220`,
/// then forged answers to EHLO, AUTH, MAIL, RCPT, DATA and the message, which a client that
/// keeps its plaintext buffer reads as if they had come over TLS.
const INJECTED: &[u8] = b"220 2.0.0 go ahead\r\n\
250-relay.example\r\n250 AUTH LOGIN PLAIN\r\n\
235 2.7.0 Authentication successful\r\n\
250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n\
354 go ahead\r\n250 2.6.0 queued\r\n";

/// The genuine relay, behind TLS, refuses every command.
const REFUSED: &[u8] = b"554 5.7.1 refused\r\n";

fn injecting_relay_script() -> Script {
    Script {
        greeting: b"220 relay.example ESMTP\r\n".to_vec(),
        replies: vec![
            b"250-relay.example\r\n250-STARTTLS\r\n250 SIZE 31457280\r\n".to_vec(),
            INJECTED.to_vec(),
        ],
    }
}

fn trust(pki: &TestPki) -> TlsTrust {
    TlsTrust {
        extra_root_pems: vec![pki.ca_pem().to_string()],
    }
}

fn app() -> AppRef {
    AppRef {
        tenant_id: uuid::Uuid::new_v4(),
        client_id: uuid::Uuid::new_v4(),
        object_id: None,
    }
}

fn verifier(port: u16, tls: TlsMode, mechanism: AuthMechanism, pki: &TestPki) -> SmtpVerifier {
    SmtpVerifier::new(
        SmtpVerification {
            host: "localhost".into(),
            port,
            tls,
            mechanism,
            username: Template::parse(USERNAME).unwrap(),
            from: "DoNotReply@example.azurecomm.net".into(),
            to: "canary@contoso.example".into(),
            timeout: Duration::from_secs(10),
            mode: entra_rotator::adapters::smtp::ProofMode::Deliver,
        },
        &trust(pki),
    )
    .unwrap()
}

/// The credential as it crosses the wire: plain, AUTH LOGIN's base64(secret) and AUTH
/// PLAIN's base64("\0user\0secret"), XOAUTH2's base64("user=…\x01auth=Bearer token\x01\x01"),
/// each with and without padding, and URL-safe.
fn credential_forms() -> Vec<String> {
    let mut forms = vec![SECRET.to_string()];
    let xoauth2 = format!("user={USERNAME}\x01auth=Bearer {SECRET}\x01\x01");
    for value in [SECRET.to_string(), format!("\0{USERNAME}\0{SECRET}"), xoauth2] {
        let encoded = STANDARD.encode(&value);
        forms.push(encoded.trim_end_matches('=').to_string());
        forms.push(encoded);
        forms.push(URL_SAFE_NO_PAD.encode(&value));
    }
    forms
}

fn assert_no_credential(text: &str) {
    for form in credential_forms() {
        assert!(
            !text.contains(&form),
            "the credential leaked as {form:?}: {text}"
        );
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `entra-rotator smtp-test` against the relay on `port`, logging at trace level.
async fn smtp_test(port: u16, tls: &str, auth: &str, pki: &TestPki) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pki.ca_pem()).unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, SECRET).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args([
            "smtp-test",
            "--host",
            "localhost",
            "--port",
            &port.to_string(),
        ])
        .args(["--tls", tls, "--auth", auth, "--username", USERNAME])
        .args([
            "--from",
            "DoNotReply@example.azurecomm.net",
            "--to",
            "canary@contoso.example",
        ])
        .arg("--password-file")
        .arg(&password_file)
        .arg("--extra-root-certificate")
        .arg(&ca_file)
        .args(["--timeout", "10s"])
        .env("RUST_LOG", "trace")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

/// Regression (issue 18, item 4): replies injected after `220 go ahead` used to be read as
/// if they came over TLS, and the verification succeeded while the genuine relay refused
/// every command. Now the session stops before the handshake; the credential is not sent.
#[tokio::test]
async fn replies_injected_after_starttls_are_refused_by_the_verifier() {
    let pki = TestPki::generate().unwrap();
    let relay = HostileSmtp::start_with_starttls(injecting_relay_script(), REFUSED, &pki).await;
    let verifier = verifier(relay.port(), TlsMode::StartTls, AuthMechanism::Login, &pki);

    let error = verifier
        .verify(&app(), &SecretString::from(SECRET.to_string()))
        .await
        .expect_err("a forged success: the injected 235/250 replies were believed");

    assert_eq!(error.kind, VerifyFailureKind::Tls);
    let shown = error.to_string();
    assert!(shown.contains(INJECTION), "{shown}");
    assert!(
        shown.contains(&format!("localhost:{}", relay.port())),
        "{shown}"
    );
    assert!(shown.contains("the credential was not sent"), "{shown}");
    assert_eq!(relay.lines_over_tls(), 0, "nothing was sent over TLS");
}

#[tokio::test]
async fn smtp_test_refuses_replies_injected_after_starttls() {
    let pki = TestPki::generate().unwrap();
    let relay = HostileSmtp::start_with_starttls(injecting_relay_script(), REFUSED, &pki).await;

    let output = smtp_test(relay.port(), "starttls", "login", &pki).await;

    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(!shown.contains("OK:"), "a forged success: {shown}");
    assert!(
        shown.contains(&format!(
            "FAILED (Tls): the SMTP relay localhost:{} sent {INJECTION}",
            relay.port()
        )),
        "{shown}"
    );
    assert!(
        shown.contains("The look at the relay stopped early") && shown.contains(INJECTION),
        "the probe refuses it too: {shown}"
    );
    assert_eq!(relay.lines_over_tls(), 0, "nothing was sent over TLS");
}

#[tokio::test]
async fn the_email_notifier_refuses_replies_injected_after_starttls() {
    let pki = TestPki::generate().unwrap();
    let relay = HostileSmtp::start_with_starttls(injecting_relay_script(), REFUSED, &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, SECRET).unwrap();
    let settings: NotificationSettings = serde_yaml::from_str(&format!(
        "channels:\n  - email:\n      host: localhost\n      port: {}\n      username: {USERNAME:?}\n      \
         passwordFile: {}\n      from: DoNotReply@example.azurecomm.net\n      to: [ops@contoso.example]\n",
        relay.port(),
        password_file.display()
    ))
    .unwrap();
    let notifier = Notifier::new(&settings, reqwest::Client::new(), trust(&pki))
        .unwrap()
        .unwrap();

    let error = notifier
        .notify(&Notification {
            kind: entra_rotator::alerting::FAILED,
            rotation: "dify/dify-smtp".into(),
            application_id: uuid::Uuid::new_v4().to_string(),
            key_id: None,
            expires_at: None,
            days_left: None,
            message: "verification failed".into(),
        })
        .await
        .expect_err("a forged delivery: the injected replies were believed");

    let shown = error.to_string();
    assert!(shown.contains(INJECTION), "{shown}");
    assert!(
        shown.contains(&format!("email via localhost:{}", relay.port())),
        "{shown}"
    );
    assert_no_credential(&shown);
    assert_eq!(relay.lines_over_tls(), 0, "nothing was sent over TLS");
}

/// A relay (behind TLS from the first byte) that echoes each AUTH argument back in its
/// replies, with control characters and a long tail, and refuses with 535.
fn echoing_relay_script(mechanism: AuthMechanism) -> Script {
    let echo_535 = format!(
        "535 5.7.8 Authentication failed for {ECHO} \x1b]8;;https://evil.example\x07click\x1b]8;;\x07 {}\r\n",
        "padding ".repeat(60)
    );
    let auth = match mechanism {
        // AUTH LOGIN, then the username and the secret, each in base64.
        AuthMechanism::Login => vec![
            b"334 VXNlcm5hbWU6\r\n".to_vec(),
            b"334 UGFzc3dvcmQ6\r\n".to_vec(),
            echo_535.into_bytes(),
        ],
        // AUTH PLAIN with base64("\0user\0secret"), AUTH XOAUTH2 with
        // base64("user=…\x01auth=Bearer token\x01\x01"), on the same line.
        AuthMechanism::Plain | AuthMechanism::Xoauth2 => vec![echo_535.into_bytes()],
    };
    let mut replies = vec![b"250-relay.example\r\n250 AUTH LOGIN PLAIN XOAUTH2\r\n".to_vec()];
    replies.extend(auth);
    Script {
        greeting: b"220 relay.example ESMTP\r\n".to_vec(),
        replies,
    }
}

/// Regression (issue 18, item 6): only the plain secret was redacted, so a relay echoing
/// AUTH LOGIN's base64(secret) or AUTH PLAIN's base64("\0user\0secret") put the credential
/// into the error, and from there into logs, Events and status.
#[tokio::test]
async fn an_echoed_auth_argument_reaches_no_error_in_any_form() {
    let pki = TestPki::generate().unwrap();
    for mechanism in [AuthMechanism::Login, AuthMechanism::Plain, AuthMechanism::Xoauth2] {
        let relay = HostileSmtp::start_echoing(echoing_relay_script(mechanism), Some(&pki)).await;
        let verifier = verifier(relay.port(), TlsMode::Implicit, mechanism, &pki);

        let error = verifier
            .verify(&app(), &SecretString::from(SECRET.to_string()))
            .await
            .unwrap_err();

        let shown = error.to_string();
        assert_eq!(error.kind, VerifyFailureKind::BadCredentials, "{shown}");
        // A reply to AUTH is quoted by its codes only: its text may echo the credential.
        assert!(
            shown.contains("the SMTP relay answered `535 5.7.8` to AUTH"),
            "{shown}"
        );
        assert!(!shown.contains("Authentication failed for"), "{shown}");
        assert_no_credential(&shown);
        assert_no_credential(&format!("{error:?}"));
        assert!(
            !shown.chars().any(char::is_control),
            "control characters: {shown:?}"
        );
        let quoted = shown.split('`').nth(1).unwrap();
        assert!(
            quoted.chars().count() <= MAX_REPLY_TEXT + 5,
            "the reply is quoted in full ({} characters): {quoted}",
            quoted.chars().count()
        );
    }
}

#[tokio::test]
async fn smtp_test_shows_an_echoed_auth_argument_in_no_form_even_at_trace_level() {
    let pki = TestPki::generate().unwrap();
    for (mechanism, flag) in [
        (AuthMechanism::Login, "login"),
        (AuthMechanism::Plain, "plain"),
    ] {
        let relay = HostileSmtp::start_echoing(echoing_relay_script(mechanism), Some(&pki)).await;

        let output = smtp_test(relay.port(), "implicit", flag, &pki).await;

        let shown = text(&output);
        assert!(shown.contains("FAILED (BadCredentials)"), "{shown}");
        assert_no_credential(&shown);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !stdout.contains('\x1b'),
            "the relay's escape sequence reached the terminal: {stdout:?}"
        );
    }
}

/// Found by the smtp_replies fuzz target (docs/upstream/lettre-ehlo-whitespace-panic.md):
/// an EHLO line of only blanks made lettre's capability parser panic, so one reply line
/// from a relay could stop the process. It is refused before lettre reads it.
#[tokio::test]
async fn an_ehlo_line_of_only_blanks_fails_the_verification_instead_of_panicking() {
    let pki = TestPki::generate().unwrap();
    let script = Script {
        greeting: b"220 relay.example ESMTP\r\n".to_vec(),
        replies: vec![b"250-relay.example\r\n250 \t\r\n".to_vec()],
    };
    let relay = HostileSmtp::start(script, Some(&pki)).await;
    let verifier = verifier(relay.port(), TlsMode::Implicit, AuthMechanism::Login, &pki);

    let error = verifier.verify(&app(), &SecretString::from(SECRET.to_string())).await.expect_err("the relay's answer is unusable");

    let shown = error.to_string();
    assert!(shown.contains("only blanks"), "{shown}");
    assert!(shown.contains(&format!("localhost:{}", relay.port())), "{shown}");
}
