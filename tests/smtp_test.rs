//! `entra-rotator smtp-test` end to end: the real binary against the ACS-like relay stand-in
//! over sockets. What a user sees when the relay accepts the credential, the explanation for
//! each known failure, and that the password never shows.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator_standins::smtp::{RelaySettings, SmtpRelayStandin};
use entra_rotator_standins::tenant::Tenant;
use entra_rotator_standins::tls::TestPki;
use std::path::PathBuf;
use std::process::Output;

const RESOURCE: &str = "contoso-acs";
const RECIPIENT: &str = "ops@example.com";

struct Fixture {
    relay: SmtpRelayStandin,
    username: String,
    sender: String,
    secret: String,
    ca_file: PathBuf,
    password_file: PathBuf,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let tenant = Tenant::new();
        let pki = TestPki::generate().unwrap();
        let app = tenant.register_app("dify-mail");
        let now = Utc::now();
        let secret = tenant
            .add_replicated_password(
                app.object_id,
                Some("mail".into()),
                now,
                now + ChronoDuration::days(90),
            )
            .unwrap()
            .secret_text;
        let relay =
            SmtpRelayStandin::start(tenant.clone(), &pki, RelaySettings::azure_managed(RESOURCE))
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, pki.ca_pem()).unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{secret}\n")).unwrap();
        Self {
            username: format!("{RESOURCE}|{}|{}", app.app_id, tenant.tenant_id),
            sender: relay.settings().default_sender().unwrap().to_string(),
            relay,
            secret,
            ca_file,
            password_file,
            dir,
        }
    }

    /// The flags of a working test against the relay's STARTTLS port.
    fn args(&self) -> Vec<String> {
        [
            "smtp-test",
            "--host",
            "localhost",
            "--port",
            &self.relay.port().to_string(),
            "--username",
            &self.username,
            "--from",
            &self.sender,
            "--to",
            RECIPIENT,
            "--password-file",
            self.password_file.to_str().unwrap(),
            "--extra-root-certificate",
            self.ca_file.to_str().unwrap(),
            "--timeout",
            "5s",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs the binary with the working flags, each `(flag, value)` in `changes` replaced
    /// (or removed when the value is `None`).
    async fn run(&self, changes: &[(&str, Option<&str>)]) -> Output {
        let mut args = self.args();
        for (flag, value) in changes {
            let at = args.iter().position(|a| a == flag);
            match (at, value) {
                (Some(at), Some(value)) => args[at + 1] = value.to_string(),
                (Some(at), None) => {
                    args.drain(at..at + 2);
                }
                (None, Some(value)) => args.extend([flag.to_string(), value.to_string()]),
                (None, None) => {}
            }
        }
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            !text(&output).contains(&self.secret),
            "the password leaked: {}",
            text(&output)
        );
        output
    }

    fn wrong_password_file(&self) -> String {
        let path = self.dir.path().join("wrong");
        std::fs::write(&path, "Wr0ng~secret.value").unwrap();
        path.to_str().unwrap().to_string()
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn success_shows_capabilities_tls_and_the_mechanism() {
    let fixture = Fixture::start().await;
    let output = fixture.run(&[]).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    let before = shown
        .split("EHLO capabilities before STARTTLS:")
        .nth(1)
        .unwrap();
    let (before, after) = before.split_once("EHLO capabilities over TLS:").unwrap();
    assert!(
        before.contains("  SIZE 31457280") && before.contains("  STARTTLS"),
        "{shown}"
    );
    assert!(!before.contains("AUTH"), "no AUTH before TLS: {shown}");
    assert!(
        after.contains("  SIZE 31457280") && after.contains("  AUTH LOGIN"),
        "{shown}"
    );
    assert!(shown.contains("TLS: TLS 1.3 with TLS13_"), "{shown}");
    assert!(
        shown.contains(&format!(
            "Authenticating with AUTH LOGIN as {}",
            fixture.username
        )),
        "{shown}"
    );
    assert!(
        shown.contains("OK: the relay accepted the test mail"),
        "{shown}"
    );
    let accepted = fixture.relay.accepted_messages();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].rcpt_to, vec![RECIPIENT.to_string()]);
}

/// Issue 19 item 1: `--mode handshake` checks the credential, sender and recipient without
/// sending: the relay counts no message and no DATA.
#[tokio::test]
async fn handshake_mode_checks_without_sending() {
    let fixture = Fixture::start().await;
    let output = fixture.run(&[("--mode", Some("handshake"))]).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert!(shown.contains("no mail was sent"), "{shown}");
    assert!(!shown.contains("Sending a test mail"), "{shown}");
    assert_eq!(fixture.relay.messages(), 0);
    assert_eq!(fixture.relay.count("DATA"), 0);
    assert_eq!(fixture.relay.handshakes(), 1);

    let refused = fixture
        .run(&[("--mode", Some("handshake")), ("--from", Some("alerts@contoso.example"))])
        .await;
    let shown = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert!(shown.contains("refused the sender alerts@contoso.example"), "{shown}");
}

#[tokio::test]
async fn implicit_tls_is_shown_too() {
    let fixture = Fixture::start().await;
    let port = fixture.relay.implicit_tls_port().to_string();
    let output = fixture
        .run(&[("--port", Some(&port)), ("--tls", Some("implicit"))])
        .await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("TLS: TLS 1.3") && shown.contains("  AUTH LOGIN"),
        "{shown}"
    );
    assert!(!shown.contains("before STARTTLS"), "{shown}");
}

#[tokio::test]
async fn wrong_secret_explains_username_secret_and_role() {
    let fixture = Fixture::start().await;
    let wrong = fixture.wrong_password_file();
    let output = fixture.run(&[("--password-file", Some(&wrong))]).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(shown.contains("535"), "{shown}");
    assert!(
        shown.contains("username form `<resource>|<appId>|<tenantId>`"),
        "{shown}"
    );
    assert!(
        shown.contains("role with Microsoft.Communication/CommunicationServices/Read"),
        "{shown}"
    );
    assert!(!shown.contains("Wr0ng~secret.value"), "{shown}");
    assert!(fixture.relay.accepted_messages().is_empty());
}

#[tokio::test]
async fn auth_plain_explains_login_only() {
    let fixture = Fixture::start().await;
    let output = fixture.run(&[("--auth", Some("plain"))]).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(shown.contains("accepts AUTH LOGIN only"), "{shown}");
    assert!(shown.contains("504 5.7.4"), "{shown}");
}

#[tokio::test]
async fn refused_sender_explains_donotreply() {
    let fixture = Fixture::start().await;
    let output = fixture
        .run(&[("--from", Some("alerts@contoso.example"))])
        .await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("refused the sender alerts@contoso.example"),
        "{shown}"
    );
    assert!(
        shown.contains("only DoNotReply@<guid>.azurecomm.net"),
        "{shown}"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_explained() {
    let fixture = Fixture::start().await;
    let output = fixture.run(&[("--extra-root-certificate", None)]).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("The look at the relay stopped early: TLS handshake after STARTTLS failed"),
        "{shown}"
    );
    assert!(shown.contains("certificate is not trusted"), "{shown}");
    assert!(
        shown.contains("add its CA with --extra-root-certificate"),
        "{shown}"
    );
    assert!(
        shown.contains("EHLO capabilities before STARTTLS:"),
        "what was seen before TLS is still shown: {shown}"
    );
}

#[tokio::test]
async fn closed_port_is_explained() {
    let fixture = Fixture::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = fixture
        .run(&[
            ("--host", Some("127.0.0.1")),
            ("--port", Some(&closed.to_string())),
        ])
        .await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "could not reach the SMTP relay 127.0.0.1:{closed}"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("outbound port 25 is blocked from Azure VMs, use 587"),
        "{shown}"
    );
}

#[tokio::test]
async fn the_password_cannot_be_a_flag_and_must_come_from_somewhere() {
    let fixture = Fixture::start().await;
    let help = fixture.run(&[("--help", Some(""))]).await;
    let help_text = text(&help);
    assert!(
        help_text.contains("--password-env") && help_text.contains("--password-file"),
        "{help_text}"
    );
    assert!(
        !help_text.contains("--password "),
        "no flag takes the password itself: {help_text}"
    );

    let as_flag = fixture.run(&[("--password", Some("hunter2~secret"))]).await;
    assert_eq!(as_flag.status.code(), Some(2));
    assert!(
        text(&as_flag).contains("unexpected argument '--password'"),
        "{}",
        text(&as_flag)
    );
    assert!(fixture.relay.sessions() == 0, "nothing was sent");

    let nowhere = fixture.run(&[("--password-file", None)]).await;
    assert_eq!(nowhere.status.code(), Some(2));
    assert!(
        text(&nowhere).contains("no password: give --password-env NAME or --password-file PATH"),
        "{}",
        text(&nowhere)
    );

    let empty_env = fixture
        .run(&[
            ("--password-file", None),
            ("--password-env", Some("SMTP_TEST_UNSET_VARIABLE")),
        ])
        .await;
    assert_eq!(empty_env.status.code(), Some(2));
    assert!(
        text(&empty_env).contains("SMTP_TEST_UNSET_VARIABLE: the environment variable is not set"),
        "{}",
        text(&empty_env)
    );
}

/// Issue 19 item 4: after a failed connection, no "Authenticating…" or "Sending…" line
/// announces steps that are not going to happen.
#[tokio::test]
async fn no_steps_are_announced_after_the_connection_failed() {
    let fixture = Fixture::start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = fixture
        .run(&[("--host", Some("127.0.0.1")), ("--port", Some(&closed.to_string()))])
        .await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(!shown.contains("Authenticating"), "{shown}");
    assert!(!shown.contains("Sending"), "{shown}");
    assert!(shown.contains("FAILED (Connection)"), "{shown}");
}

/// Issue 19 item 4: smtp-test does not retry, so its advice does not say it does; and the
/// mechanism advice names the flag, not a key that does not exist.
#[tokio::test]
async fn the_advice_names_the_flag_and_promises_no_retry() {
    let fixture = Fixture::start().await;
    let wrong = fixture.wrong_password_file();
    let output = fixture.run(&[("--password-file", Some(&wrong))]).await;
    let shown = text(&output);
    assert!(shown.contains("FAILED (BadCredentials)"), "{shown}");
    assert!(!shown.contains("retried"), "{shown}");
    assert!(shown.contains("run smtp-test again"), "{shown}");

    let output = fixture.run(&[("--auth", Some("plain"))]).await;
    let shown = text(&output);
    assert!(shown.contains("use --auth login"), "{shown}");
    assert!(!shown.contains("mechanism: login"), "{shown}");
}

/// Issue 19 item 4: the advice for an untrusted certificate names the host given, not ACS's.
#[tokio::test]
async fn untrusted_certificate_advice_names_the_host_given() {
    let fixture = Fixture::start().await;
    let output = fixture.run(&[("--extra-root-certificate", None)]).await;
    let shown = text(&output);
    assert!(shown.contains("check the host (localhost)"), "{shown}");
    assert!(!shown.contains("smtp.azurecomm.net)"), "{shown}");
}

/// A TLS server on 127.0.0.1 presenting a self-signed certificate for localhost, a CA
/// certificate (`openssl req -x509` style) or an end-entity one; returns its port and the
/// certificate's PEM.
async fn self_signed_relay(is_ca: bool) -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = if is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    let key = KeyPair::generate().unwrap();
    let certificate = params.self_signed(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![certificate.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // Completes the handshake when the client accepts the certificate, then hangs up.
            let _ = acceptor.accept(socket).await;
        }
    });
    (port, certificate.pem())
}

/// Issue 19 item 4: a self-signed CA certificate given as the extra root fails with
/// CaUsedAsEndEntity; the advice says what is wrong instead of asking for the CA again.
#[tokio::test]
async fn a_self_signed_ca_certificate_on_the_relay_is_explained() {
    let fixture = Fixture::start().await;
    let (port, pem) = self_signed_relay(true).await;
    let certificate = fixture.dir.path().join("self-signed.pem");
    std::fs::write(&certificate, pem).unwrap();
    let certificate = certificate.to_str().unwrap();
    let output = fixture
        .run(&[
            ("--port", Some(&port.to_string())),
            ("--tls", Some("implicit")),
            ("--extra-root-certificate", Some(certificate)),
        ])
        .await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(shown.contains("presents a CA certificate (basicConstraints CA:TRUE) as its own"), "{shown}");
    assert!(shown.contains("adding it to --extra-root-certificate cannot help"), "{shown}");
    assert!(!shown.contains("add its CA with"), "{shown}");

    // The advice's second way out: the same certificate as an end-entity one is accepted.
    let (port, pem) = self_signed_relay(false).await;
    std::fs::write(fixture.dir.path().join("self-signed.pem"), pem).unwrap();
    let output = fixture
        .run(&[
            ("--port", Some(&port.to_string())),
            ("--tls", Some("implicit")),
            ("--extra-root-certificate", Some(certificate)),
        ])
        .await;
    let shown = text(&output);
    assert!(!shown.contains("certificate"), "the end-entity certificate is trusted: {shown}");
}
