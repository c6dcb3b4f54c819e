//! The SMTP verifier against the ACS-like relay stand-in, over real sockets: what a user
//! sees when the credential works, and the explanation they get for each way it can fail.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator::adapters::http::TlsTrust;
use entra_rotator::adapters::smtp::{AuthMechanism, SmtpVerification, SmtpVerifier, TlsMode};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::ports::{Verifier, VerifyError, VerifyFailureKind};
use entra_rotator_standins::smtp::{RelaySettings, SmtpFault, SmtpRelayStandin};
use entra_rotator_standins::tenant::{StandinApp, Tenant};
use entra_rotator_standins::tls::TestPki;
use entra_rotator::template::Template;
use std::time::Duration;

const RESOURCE: &str = "contoso-acs";
const PIPE_FORM: &str = "contoso-acs|{{clientId}}|{{tenantId}}";
const RECIPIENT: &str = "ops@example.com";

struct Fixture {
    tenant: Tenant,
    pki: TestPki,
    relay: SmtpRelayStandin,
    app: StandinApp,
    secret: String,
}

impl Fixture {
    async fn start() -> Self {
        Self::with_settings(|_, settings| settings).await
    }

    async fn with_settings(
        adjust: impl FnOnce(&StandinApp, RelaySettings) -> RelaySettings,
    ) -> Self {
        let tenant = Tenant::new();
        let pki = TestPki::generate().unwrap();
        let app = tenant.register_app("dify-mail");
        let now = Utc::now();
        let secret = tenant
            .add_password(
                app.object_id,
                Some("entra-rotator:dify".into()),
                now,
                now + ChronoDuration::days(90),
            )
            .unwrap()
            .secret_text;
        let settings = adjust(&app, RelaySettings::azure_managed(RESOURCE));
        let relay = SmtpRelayStandin::start(tenant.clone(), &pki, settings)
            .await
            .unwrap();
        Self {
            tenant,
            pki,
            relay,
            app,
            secret,
        }
    }

    fn app_ref(&self) -> AppRef {
        AppRef {
            tenant_id: self.tenant.tenant_id,
            client_id: self.app.app_id,
            object_id: Some(self.app.object_id),
        }
    }

    fn sender(&self) -> String {
        self.relay.settings().default_sender().unwrap().to_string()
    }

    fn settings(&self, username: &str) -> SmtpVerification {
        let mut settings = SmtpVerification::new(
            "127.0.0.1",
            Template::parse(username).unwrap(),
            &self.sender(),
            RECIPIENT,
        );
        settings.port = self.relay.port();
        settings.timeout = Duration::from_secs(10);
        settings
    }

    fn trust(&self) -> TlsTrust {
        TlsTrust {
            extra_root_pems: vec![self.pki.ca_pem().to_string()],
        }
    }

    fn verifier(&self, adjust: impl FnOnce(&mut SmtpVerification)) -> SmtpVerifier {
        let mut settings = self.settings(PIPE_FORM);
        adjust(&mut settings);
        SmtpVerifier::new(settings, &self.trust()).unwrap()
    }

    async fn verify_with(&self, verifier: &SmtpVerifier, secret: &str) -> Result<(), VerifyError> {
        verifier
            .verify(&self.app_ref(), &SecretString::from(secret.to_string()))
            .await
    }

    /// Asserts the error neither says nor prints the secret, and returns it.
    fn checked(&self, error: VerifyError) -> VerifyError {
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(&self.secret), "the secret leaked: {text}");
        }
        error
    }
}

#[tokio::test]
async fn a_working_credential_sends_the_verification_mail() {
    let f = Fixture::start().await;
    let verifier = f.verifier(|_| {});

    f.verify_with(&verifier, &f.secret).await.unwrap();

    let messages = f.relay.accepted_messages();
    assert_eq!(messages.len(), 1);
    let mail = &messages[0];
    assert_eq!(mail.mail_from, f.sender());
    assert_eq!(mail.rcpt_to, vec![RECIPIENT.to_string()]);
    assert_eq!(mail.client_id, f.app.app_id);
    assert_eq!(
        mail.username,
        format!("{RESOURCE}|{}|{}", f.app.app_id, f.tenant.tenant_id)
    );
    let subject = mail.header("Subject").unwrap();
    assert!(subject.contains("entra-rotator verification"), "{subject}");
    let text = String::from_utf8_lossy(&mail.data);
    assert!(
        !text.contains(&f.secret),
        "the secret must not travel in the mail"
    );
    assert_eq!(
        f.relay.sessions(),
        1,
        "one verification is one SMTP session"
    );
    assert_eq!(f.relay.count("AUTH"), 1);
    assert_eq!(
        verifier.describe(),
        format!(
            "SMTP relay 127.0.0.1:{} (STARTTLS, AUTH LOGIN)",
            f.relay.port()
        )
    );
}

#[tokio::test]
async fn all_three_username_forms_authenticate() {
    let f = Fixture::with_settings(|app, settings| {
        settings.with_smtp_username("dify-smtp", app.app_id)
    })
    .await;

    for username in [
        PIPE_FORM,
        "contoso-acs.{{clientId}}.{{tenantId}}",
        "dify-smtp",
    ] {
        let verifier = f.verifier(|s| {
            s.username = Template::parse(username).unwrap();
        });
        f.verify_with(&verifier, &f.secret)
            .await
            .unwrap_or_else(|e| panic!("{username}: {e}"));
    }
    let usernames: Vec<String> = f
        .relay
        .accepted_messages()
        .into_iter()
        .map(|m| m.username)
        .collect();
    assert_eq!(
        usernames,
        vec![
            format!("{RESOURCE}|{}|{}", f.app.app_id, f.tenant.tenant_id),
            format!("{RESOURCE}.{}.{}", f.app.app_id, f.tenant.tenant_id),
            "dify-smtp".to_string(),
        ]
    );
}

#[tokio::test]
async fn a_wrong_secret_is_explained_as_bad_credentials() {
    let f = Fixture::start().await;
    let verifier = f.verifier(|_| {});

    let error = f.checked(
        f.verify_with(&verifier, "not-the-secret")
            .await
            .unwrap_err(),
    );

    assert_eq!(error.kind, VerifyFailureKind::BadCredentials);
    assert!(
        error.is_retryable(),
        "a fresh secret gets 535 until Entra replicated it"
    );
    for expected in [
        "answered `535 5.7.3` to AUTH",
        "<resource>|<appId>|<tenantId>",
        &format!("{RESOURCE}|{}|{}", f.app.app_id, f.tenant.tenant_id),
        "Microsoft.Communication/CommunicationServices/Read",
        "EmailServices/Write",
        "replicated",
    ] {
        assert!(
            error.message.contains(expected),
            "missing {expected:?} in: {}",
            error.message
        );
    }
    assert!(
        error.to_string().starts_with("SMTP relay 127.0.0.1:"),
        "{error}"
    );
    assert!(f.relay.accepted_messages().is_empty());
}

#[tokio::test]
async fn a_username_for_another_tenant_is_refused() {
    let f = Fixture::start().await;
    let verifier = f.verifier(|s| {
        s.username = Template::parse(&format!(
            "{RESOURCE}|{{{{clientId}}}}|{}",
            uuid::Uuid::new_v4()
        ))
        .unwrap();
    });
    let error = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());
    assert_eq!(error.kind, VerifyFailureKind::BadCredentials, "{error}");
}

#[tokio::test]
async fn a_new_secret_is_refused_until_entra_has_replicated_it() {
    let f = Fixture::start().await;
    // Entra replicates when the test says so, not after a window the test must hit.
    f.tenant.set_propagation_delay(Duration::from_secs(3600));
    let now = Utc::now();
    let fresh = f
        .tenant
        .add_password(f.app.object_id, None, now, now + ChronoDuration::days(30))
        .unwrap()
        .secret_text;
    let verifier = f.verifier(|_| {});

    let first = f.verify_with(&verifier, &fresh).await.unwrap_err();
    assert_eq!(first.kind, VerifyFailureKind::BadCredentials, "{first}");
    assert!(first.is_retryable());
    assert!(!first.to_string().contains(&fresh));

    f.tenant.set_propagation_delay(Duration::ZERO);
    f.verify_with(&verifier, &fresh).await.unwrap();
    assert_eq!(f.relay.accepted_messages().len(), 1);
}

#[tokio::test]
async fn auth_plain_is_explained_as_mechanism_rejected() {
    let f = Fixture::start().await;
    let verifier = f.verifier(|s| s.mechanism = AuthMechanism::Plain);

    let error = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());

    assert_eq!(error.kind, VerifyFailureKind::MechanismRejected);
    assert!(!error.is_retryable());
    assert!(
        error.message.contains("AUTH LOGIN only"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("it offers: AUTH LOGIN"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_sender_the_domain_does_not_allow_is_explained() {
    let f = Fixture::start().await;
    let verifier = f.verifier(|s| s.from = "Dify <noreply@contoso.example>".into());

    let error = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());

    assert_eq!(error.kind, VerifyFailureKind::SenderRejected);
    assert!(!error.is_retryable());
    for expected in [
        "MAIL FROM",
        "550 5.7.60",
        "DoNotReply@<guid>.azurecomm.net",
        "SPF",
        "DKIM",
        "MailFrom",
    ] {
        assert!(
            error.message.contains(expected),
            "missing {expected:?} in: {}",
            error.message
        );
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_failure() {
    let f = Fixture::start().await;
    let verifier = SmtpVerifier::new(f.settings(PIPE_FORM), &TlsTrust::default()).unwrap();

    let error = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());

    assert_eq!(error.kind, VerifyFailureKind::Tls);
    assert!(error.message.contains("STARTTLS"), "{}", error.message);
    assert!(
        error.message.contains("tls.extraRootCertificates"),
        "{}",
        error.message
    );
    assert_eq!(
        f.relay.count("AUTH"),
        0,
        "no credential is sent over an untrusted connection"
    );
}

#[tokio::test]
async fn implicit_tls_works_on_a_465_style_port_and_fails_clearly_on_a_starttls_port() {
    let f = Fixture::start().await;
    let implicit = f.verifier(|s| {
        s.tls = TlsMode::Implicit;
        s.port = f.relay.implicit_tls_port();
    });
    f.verify_with(&implicit, &f.secret).await.unwrap();

    let wrong_port = f.verifier(|s| s.tls = TlsMode::Implicit);
    let error = f.checked(f.verify_with(&wrong_port, &f.secret).await.unwrap_err());
    assert_eq!(error.kind, VerifyFailureKind::Tls, "{error}");
    assert!(
        error.message.contains("587 speaks STARTTLS"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connection_failure_that_mentions_port_25() {
    let f = Fixture::start().await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let verifier = f.verifier(|s| s.port = closed_port);

    let error = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());

    assert_eq!(error.kind, VerifyFailureKind::Connection);
    assert!(error.is_retryable());
    assert!(
        error.message.contains(&format!("127.0.0.1:{closed_port}")),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("port 25 is blocked"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_temporary_refusal_is_retryable_and_the_next_attempt_succeeds() {
    let f = Fixture::start().await;
    f.relay.inject_temporary_failures(1);
    let verifier = f.verifier(|_| {});

    let error = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());
    assert_eq!(error.kind, VerifyFailureKind::Throttled);
    assert!(error.is_retryable());
    assert!(error.message.contains("451 4.4.3"), "{}", error.message);
    assert!(error.message.contains("asks to wait"), "{}", error.message);

    f.verify_with(&verifier, &f.secret).await.unwrap();
    assert_eq!(f.relay.sessions(), 2);
}

#[tokio::test]
async fn a_relay_that_is_unavailable_or_hangs_up_is_retryable() {
    let f = Fixture::start().await;
    f.relay.inject_fault(SmtpFault::ServiceUnavailable);
    f.relay.inject_fault(SmtpFault::DropConnection);
    let verifier = f.verifier(|_| {});

    let unavailable = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());
    assert_eq!(
        unavailable.kind,
        VerifyFailureKind::Throttled,
        "{unavailable}"
    );
    assert!(
        unavailable.message.contains("421 4.3.2"),
        "{}",
        unavailable.message
    );

    let dropped = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());
    assert_eq!(dropped.kind, VerifyFailureKind::Connection, "{dropped}");
    assert!(dropped.is_retryable());
}

#[tokio::test]
async fn a_slow_relay_hits_the_timeout() {
    let f = Fixture::start().await;
    f.relay
        .inject_fault(SmtpFault::SlowGreeting(Duration::from_secs(5)));
    let verifier = f.verifier(|s| s.timeout = Duration::from_millis(200));

    let error = f.checked(f.verify_with(&verifier, &f.secret).await.unwrap_err());

    assert_eq!(error.kind, VerifyFailureKind::Connection, "{error}");
    assert!(
        error.message.contains("did not answer within"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_verifier_never_shows_the_secret() {
    let f = Fixture::start().await;
    let verifier = f.verifier(|_| {});
    f.verify_with(&verifier, &f.secret).await.unwrap();
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(&f.secret), "{debug}");
    assert!(debug.contains("SmtpVerifier"), "{debug}");
    for message in f.relay.accepted_messages() {
        assert!(!format!("{message:?}").contains(&f.secret));
    }
}

/// Rotations verify one after another through the same relay (10,000 new objects prove
/// 10,000 stored secrets in a controller's first pass): verifiers built apart from each
/// other share the process's TLS client, so each session after the first resumes its TLS
/// session instead of a full handshake with certificate checks (docs/performance.md).
#[tokio::test]
async fn verifications_after_the_first_resume_their_tls_session() {
    let f = Fixture::start().await;
    for _ in 0..3 {
        let verifier = f.verifier(|settings| {
            settings.mode = entra_rotator::adapters::smtp::ProofMode::Handshake;
        });
        f.verify_with(&verifier, &f.secret).await.unwrap();
    }
    assert_eq!(f.relay.sessions(), 3);
    assert_eq!(
        f.relay.resumed_tls_sessions(),
        2,
        "the second and third sessions resume the first one's TLS session"
    );
}
