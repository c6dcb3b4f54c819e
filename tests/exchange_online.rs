//! Exchange Online verification over sockets: the new secret buys a token at the token
//! stand-in, AUTH XOAUTH2 presents it to the Exchange dialect of the relay stand-in, and
//! each permission state an administrator can get wrong is explained with its fix. Then a
//! rotation end to end in config-file mode.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator::adapters::http::{TlsTrust, http_client};
use entra_rotator::adapters::smtp::exchange_online::{
    DEFAULT_SCOPE, ExchangeOnlineVerification, ExchangeOnlineVerifier,
};
use entra_rotator::adapters::smtp::{ProofMode, SmtpVerification, SmtpVerifier};
use entra_rotator::domain::{AppRef, SecretString};
use entra_rotator::engine::ports::{Verifier, VerifyError, VerifyFailureKind};
use entra_rotator::template::Template;
use entra_rotator_standins::exchange::ExchangeOnline;
use entra_rotator_standins::graph::GraphStandin;
use entra_rotator_standins::scenario::{Scenario, SECRET_NAME, SECRET_NAMESPACE, write_private};
use entra_rotator_standins::smtp::{RelaySettings, SmtpRelayStandin};
use entra_rotator_standins::tenant::{EXCHANGE_ONLINE_RESOURCE, StandinApp, Tenant};
use entra_rotator_standins::tls::TestPki;
use std::time::Duration;

const MAILBOX: &str = "dify@contoso.example";
const RECIPIENT: &str = "ops@example.com";

struct Fixture {
    tenant: Tenant,
    pki: TestPki,
    graph: GraphStandin,
    exchange: ExchangeOnline,
    relay: SmtpRelayStandin,
    app: StandinApp,
    secret: String,
}

impl Fixture {
    async fn start() -> Self {
        let tenant = Tenant::new();
        let pki = TestPki::generate().unwrap();
        let graph = GraphStandin::start(tenant.clone(), &pki).await.unwrap();
        let exchange = ExchangeOnline::new();
        let relay = SmtpRelayStandin::start(tenant.clone(), &pki, RelaySettings::exchange_online(exchange.clone()))
            .await
            .unwrap();
        let app = tenant.register_app("dify-mail");
        let now = Utc::now();
        let secret = tenant
            .add_password(app.object_id, Some("entra-rotator:dify".into()), now, now + ChronoDuration::days(90))
            .unwrap()
            .secret_text;
        Self { tenant, pki, graph, exchange, relay, app, secret }
    }

    /// The app set up as Microsoft documents: SMTP.SendAsApp consented, service principal
    /// registered, FullAccess on the mailbox.
    fn authorize(&self) {
        self.exchange.authorize(&self.tenant, self.app.app_id, MAILBOX);
    }

    fn app_ref(&self) -> AppRef {
        AppRef { tenant_id: self.tenant.tenant_id, client_id: self.app.app_id, object_id: Some(self.app.object_id) }
    }

    fn trust(&self) -> TlsTrust {
        TlsTrust { extra_root_pems: vec![self.pki.ca_pem().to_string()] }
    }

    fn verifier(&self, adjust: impl FnOnce(&mut ExchangeOnlineVerification)) -> ExchangeOnlineVerifier {
        let mut settings = ExchangeOnlineVerification {
            host: "127.0.0.1".into(),
            port: self.relay.port(),
            mailbox: MAILBOX.into(),
            from: MAILBOX.into(),
            to: RECIPIENT.into(),
            scope: DEFAULT_SCOPE.into(),
            authority_host: self.graph.authority_host(),
            timeout: Duration::from_secs(10),
            mode: ProofMode::Deliver,
        };
        adjust(&mut settings);
        let http = http_client(&self.trust(), Duration::from_secs(10)).unwrap();
        ExchangeOnlineVerifier::new(settings, &self.trust(), http).unwrap()
    }

    async fn verify(&self, verifier: &ExchangeOnlineVerifier, secret: &str) -> Result<(), VerifyError> {
        verifier.verify(&self.app_ref(), &SecretString::from(secret.to_string())).await
    }

    /// Neither the secret nor any token issued appears in `text`.
    fn assert_no_credentials_in(&self, text: &str) {
        assert!(!text.contains(&self.secret), "the secret leaked: {text}");
        for token in self.tenant.issued_token_values() {
            assert!(!text.contains(&token), "a token leaked: {text}");
        }
    }
}

#[tokio::test]
async fn the_new_secret_buys_a_token_that_sends_as_the_mailbox() {
    let f = Fixture::start().await;
    f.authorize();
    f.verify(&f.verifier(|_| {}), &f.secret).await.unwrap();

    let sent = f.relay.accepted_messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].username, MAILBOX);
    assert_eq!(sent[0].client_id, f.app.app_id);
    assert_eq!(sent[0].mail_from, MAILBOX);
    assert!(f.tenant.issued_scopes().contains(&DEFAULT_SCOPE.to_string()));

    // The handshake proves the same without a message.
    f.verify(&f.verifier(|s| s.mode = ProofMode::Handshake), &f.secret).await.unwrap();
    assert_eq!(f.relay.messages(), 1, "the handshake sent nothing");
    assert_eq!(f.relay.handshakes(), 1);
}

#[tokio::test]
async fn each_permission_state_is_explained_with_its_fix() {
    type Setup = fn(&Fixture);
    let cases: [(&str, Setup, VerifyFailureKind, &str); 6] = [
        ("no SMTP.SendAsApp", |_| {}, VerifyFailureKind::Other, "without the application permission SMTP.SendAsApp"),
        (
            "service principal not registered",
            |f| {
                f.tenant.grant_app_role(f.app.app_id, EXCHANGE_ONLINE_RESOURCE, "SMTP.SendAsApp");
                f.exchange.add_mailbox_permission(MAILBOX, f.app.app_id);
            },
            VerifyFailureKind::Other,
            "New-ServicePrincipal -AppId",
        ),
        (
            "no mailbox permission",
            |f| {
                f.tenant.grant_app_role(f.app.app_id, EXCHANGE_ONLINE_RESOURCE, "SMTP.SendAsApp");
                f.exchange.register_service_principal(f.app.app_id);
            },
            VerifyFailureKind::Other,
            "Add-MailboxPermission -Identity dify@contoso.example",
        ),
        (
            "SMTP AUTH off for the tenant",
            |f| {
                f.authorize();
                f.exchange.set_smtp_auth_disabled_for_tenant(true);
            },
            VerifyFailureKind::Other,
            "turned off for the whole organisation",
        ),
        (
            "SMTP AUTH off for the mailbox",
            |f| {
                f.authorize();
                f.exchange.set_smtp_auth_disabled_for_mailbox(MAILBOX, true);
            },
            VerifyFailureKind::Other,
            "Set-CASMailbox -Identity dify@contoso.example -SmtpClientAuthenticationDisabled $false",
        ),
        ("SendAs denied", |f| f.authorize(), VerifyFailureKind::SenderRejected, "may not send as alerts@contoso.example"),
    ];
    for (state, setup, kind, fix) in cases {
        let f = Fixture::start().await;
        setup(&f);
        let verifier = f.verifier(|s| {
            if state == "SendAs denied" {
                s.from = "alerts@contoso.example".into();
            }
        });
        let error = f.verify(&verifier, &f.secret).await.unwrap_err();
        let shown = error.to_string();
        assert_eq!(error.kind, kind, "{state}: {shown}");
        assert!(shown.contains(fix), "{state}: {shown}");
        assert!(shown.contains(MAILBOX) && shown.contains(&f.app.app_id.to_string()), "{state}: names mailbox and app: {shown}");
        assert!(!error.is_retryable(), "{state}: waiting does not fix a permission");
        f.assert_no_credentials_in(&format!("{shown} {error:?}"));
        assert_eq!(f.relay.messages(), 0, "{state}");
    }
}

#[tokio::test]
async fn a_token_without_the_role_is_refused_before_connecting() {
    let f = Fixture::start().await;
    f.verify(&f.verifier(|_| {}), &f.secret).await.unwrap_err();
    assert_eq!(f.relay.sessions(), 0, "no session with a token Exchange would refuse");
}

#[tokio::test]
async fn basic_auth_gets_the_retirement_refusal_and_advice_to_use_oauth() {
    let f = Fixture::start().await;
    f.authorize();
    let mut settings = SmtpVerification::new("127.0.0.1", Template::parse(MAILBOX).unwrap(), MAILBOX, RECIPIENT);
    settings.port = f.relay.port();
    let verifier = SmtpVerifier::new(settings, &f.trust()).unwrap();
    let error = verifier.verify(&f.app_ref(), &SecretString::from(f.secret.clone())).await.unwrap_err();
    let shown = error.to_string();
    assert_eq!(error.kind, VerifyFailureKind::MechanismRejected, "{shown}");
    assert!(shown.contains("550 5.7.30") && shown.contains("AUTH XOAUTH2"), "{shown}");
    f.assert_no_credentials_in(&shown);
}

#[tokio::test]
async fn token_refusals_name_the_reason_and_only_replication_is_retried() {
    let f = Fixture::start().await;
    f.authorize();
    f.tenant.set_propagation_delay(Duration::from_secs(3600));
    let now = Utc::now();
    let fresh = f
        .tenant
        .add_password(f.app.object_id, None, now, now + ChronoDuration::days(90))
        .unwrap()
        .secret_text;
    let error = f.verify(&f.verifier(|_| {}), &fresh).await.unwrap_err();
    let shown = error.to_string();
    assert!(error.is_retryable(), "a secret Entra has not replicated yet is tried again: {shown}");
    assert!(shown.contains("AADSTS7000215") && shown.contains("replicated"), "{shown}");
    assert!(!shown.contains(&fresh), "{shown}");

    let expired = f
        .tenant
        .add_replicated_password(f.app.object_id, None, now - ChronoDuration::days(2), now - ChronoDuration::days(1))
        .unwrap()
        .secret_text;
    let error = f.verify(&f.verifier(|_| {}), &expired).await.unwrap_err();
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("AADSTS7000222") && error.to_string().contains("expired"), "{error}");

    let stranger = AppRef { client_id: uuid::Uuid::new_v4(), ..f.app_ref() };
    let error = f.verifier(|_| {}).verify(&stranger, &SecretString::from(f.secret.clone())).await.unwrap_err();
    assert!(error.to_string().contains("AADSTS700016") && error.to_string().contains("application.clientId"), "{error}");
    assert_eq!(f.relay.sessions(), 0, "no token, no session");
}

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn a_rotation_from_a_config_file_proves_the_new_secret_through_exchange_online() {
    let scenario = Scenario::start().await.unwrap();
    let exchange = ExchangeOnline::new();
    let relay = SmtpRelayStandin::start(
        scenario.tenant.clone(),
        &scenario.pki,
        RelaySettings::exchange_online(exchange.clone()),
    )
    .await
    .unwrap();
    exchange.authorize(&scenario.tenant, scenario.target.app_id, MAILBOX);
    // Entra takes a moment to replicate the new secret: the token is refused meanwhile.
    scenario.tenant.set_propagation_delay(Duration::from_secs(2));
    let config = std::fs::read_to_string(&scenario.config_path).unwrap();
    let head = config.split("    verification:\n").next().unwrap();
    let config = format!(
        "{head}    verification:\n      exchangeOnline:\n        host: localhost\n        port: {}\n        mailbox: {MAILBOX}\n        to: {RECIPIENT}\n        retryInterval: 1s\n        retryBudget: 60s\n",
        relay.port()
    );
    write_private(&scenario.config_path, config.as_bytes()).unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["run", "--config", scenario.config_path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let shown = text(&output);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("dify-smtp: rotated: new keyId"), "{shown}");
    let sent = relay.accepted_messages();
    assert_eq!(sent.len(), 1, "one verification mail through Exchange Online");
    assert_eq!((sent[0].username.as_str(), sent[0].mail_from.as_str()), (MAILBOX, MAILBOX));
    let secret = scenario.kubernetes.secret(SECRET_NAMESPACE, SECRET_NAME).unwrap();
    assert_eq!(secret.data["SMTP_USERNAME"], MAILBOX);
    assert_eq!(secret.data["MAIL_DEFAULT_SEND_FROM"], MAILBOX);
    for value in scenario.tenant.minted_values().iter().chain(&scenario.tenant.issued_token_values()) {
        assert!(!shown.contains(value.as_str()), "a secret or token in the output: {shown}");
    }
}

async fn smtp_test(f: &Fixture, dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, f.pki.ca_pem()).unwrap();
    let password = dir.join("secret");
    std::fs::write(&password, format!("{}\n", f.secret)).unwrap();
    let (port, tenant, client) = (f.relay.port().to_string(), f.tenant.tenant_id.to_string(), f.app.app_id.to_string());
    let authority = f.graph.authority_host().to_string();
    let mut args = vec![
        "smtp-test", "--xoauth2", "--host", "localhost", "--port", &port, "--tenant-id", &tenant, "--client-id", &client,
        "--authority-host", &authority, "--username", MAILBOX, "--from", MAILBOX, "--to", RECIPIENT,
        "--password-file", password.to_str().unwrap(), "--extra-root-certificate", ca.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator")).args(args).env_remove("RUST_LOG").output().await.unwrap()
}

#[tokio::test]
async fn smtp_test_xoauth2_proves_the_secret_and_diagnoses_the_same_states() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start().await;
    f.authorize();
    let ok = smtp_test(&f, dir.path(), &[]).await;
    let shown = text(&ok);
    assert!(ok.status.success(), "{shown}");
    assert!(shown.contains("AUTH XOAUTH2") && shown.contains("OK: the relay accepted the test mail"), "{shown}");
    assert_eq!(f.relay.messages(), 1);

    f.exchange.set_smtp_auth_disabled_for_mailbox(MAILBOX, true);
    let refused = smtp_test(&f, dir.path(), &["--mode", "handshake"]).await;
    let shown = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert!(shown.contains("Set-CASMailbox -Identity dify@contoso.example"), "{shown}");
    f.assert_no_credentials_in(&shown);
}

/// smtplib, a client we did not write, authenticates with XOAUTH2 as Microsoft documents it
/// and meets the basic-auth refusal: what the stand-in models holds for it too.
#[tokio::test]
async fn smtplib_speaks_xoauth2_with_the_exchange_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start().await;
    f.authorize();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, f.pki.ca_pem()).unwrap();
    let token = f.tenant.issue_token(f.app.app_id, DEFAULT_SCOPE, Duration::from_secs(3600));
    let output = tokio::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/smtplib_xoauth2.py"))
        .env("RELAY_HOST", "localhost")
        .env("RELAY_PORT", f.relay.port().to_string())
        .env("RELAY_CA", &ca)
        .env("RELAY_MAILBOX", MAILBOX)
        .env("RELAY_TOKEN", &token)
        .env("RELAY_PASSWORD", &f.secret)
        .output()
        .await
        .expect("python3 runs");
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    let steps: std::collections::HashMap<String, serde_json::Value> = printed
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|step| (step["step"].as_str().unwrap().to_string(), step))
        .collect();
    assert_eq!(steps["ehlo_after_tls"]["auth"], "LOGIN XOAUTH2", "{printed}");
    assert_eq!(steps["basic_auth"]["code"], 550, "{printed}");
    assert!(steps["basic_auth"]["reply"].as_str().unwrap().contains("5.7.30 Basic authentication is not supported"), "{printed}");
    assert_eq!(steps["xoauth2"]["code"], 235, "{printed}");
    assert_eq!(steps["sendmail"]["refused"], serde_json::json!([]), "{printed}");
    assert_eq!(f.relay.accepted_messages()[0].username, MAILBOX);
}
