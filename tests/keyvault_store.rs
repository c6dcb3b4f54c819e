//! The Key Vault store against the Key Vault stand-in, over HTTPS: what lands in the vault,
//! what comes back, and what a user is told when the vault refuses.

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::{ExponentialRetryOptions, RetryOptions};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use entra_rotator::adapters::http::{TlsTrust, azure_client_options, http_client};
use entra_rotator::adapters::identity::{RotatorCredential, rotator_credential};
use entra_rotator::adapters::keyvault::{
    CONTENT_TYPE, KeyVaultSettings, KeyVaultSetupError, KeyVaultStore, VaultTrust,
};
use entra_rotator::domain::{AppRef, ExposeSecret, SecretString, SecretToStore};
use entra_rotator::engine::ports::{SecretStore, StoreErrorKind};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::GraphStandin;
use entra_rotator_standins::keyvault::{Access, KeyVaultStandin, routes};
use entra_rotator_standins::tenant::Tenant;
use entra_rotator_standins::tls::TestPki;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const SECRET_NAME: &str = "acs-smtp-password";

/// Issues tokens straight from the stand-in tenant: the credential is an injected
/// dependency, and this one stands for the rotator's identity.
#[derive(Debug)]
struct TenantCredential {
    tenant: Tenant,
    client_id: Uuid,
    /// Issue tokens for this scope instead of the one asked for (a misconfigured identity).
    scope_override: Option<&'static str>,
}

#[async_trait]
impl TokenCredential for TenantCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let scope = self.scope_override.unwrap_or(scopes[0]);
        let token = self
            .tenant
            .issue_token(self.client_id, scope, Duration::from_secs(3600));
        Ok(AccessToken {
            token: Secret::new(token),
            expires_on: azure_core::time::OffsetDateTime::now_utc()
                + azure_core::time::Duration::hours(1),
        })
    }
}

struct Fixture {
    tenant: Tenant,
    pki: TestPki,
    vault: KeyVaultStandin,
    app: AppRef,
}

async fn fixture() -> Fixture {
    let tenant = Tenant::new();
    let pki = TestPki::generate().unwrap();
    let vault = KeyVaultStandin::start(tenant.clone(), &pki).await.unwrap();
    let app = AppRef {
        tenant_id: tenant.tenant_id,
        client_id: Uuid::new_v4(),
        object_id: Some(Uuid::new_v4()),
    };
    Fixture {
        tenant,
        pki,
        vault,
        app,
    }
}

impl Fixture {
    fn settings(&self) -> KeyVaultSettings {
        KeyVaultSettings::new(self.vault.vault_url(), SECRET_NAME)
    }

    /// Public cloud, with the stand-in's host trusted as a private vault host name: a vault
    /// at 127.0.0.1 cannot be under vault.azure.net, as the challenge check demands.
    fn trust(&self) -> VaultTrust {
        public_cloud().with_private_hosts(["127.0.0.1"])
    }

    fn http(&self) -> reqwest::Client {
        let trust = TlsTrust {
            extra_root_pems: vec![self.pki.ca_pem().to_string()],
        };
        http_client(&trust, Duration::from_secs(10)).unwrap()
    }

    fn credential(&self, scope_override: Option<&'static str>) -> Arc<dyn TokenCredential> {
        Arc::new(TenantCredential {
            tenant: self.tenant.clone(),
            client_id: Uuid::new_v4(),
            scope_override,
        })
    }

    /// The production store with the SDK's retries shortened to milliseconds.
    fn store_with(
        &self,
        settings: KeyVaultSettings,
        credential: Arc<dyn TokenCredential>,
    ) -> KeyVaultStore {
        self.store_trusting(settings, &self.trust(), credential)
    }

    fn store_trusting(
        &self,
        settings: KeyVaultSettings,
        trust: &VaultTrust,
        credential: Arc<dyn TokenCredential>,
    ) -> KeyVaultStore {
        let mut options = azure_client_options(self.http());
        options.retry = RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(2),
            max_retries: 3,
            max_total_elapsed: azure_core::time::Duration::seconds(10),
            max_delay: azure_core::time::Duration::milliseconds(20),
        });
        KeyVaultStore::new(settings, trust, credential, options).unwrap()
    }

    fn store(&self) -> KeyVaultStore {
        self.store_with(self.settings(), self.credential(None))
    }
}

fn whole_seconds(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(time.timestamp(), 0).unwrap()
}

fn to_store<'a>(app: &'a AppRef, key_id: Uuid, value: &'a SecretString) -> SecretToStore<'a> {
    let start = whole_seconds(Utc::now());
    SecretToStore {
        rotation: "dify/dify-smtp",
        app,
        key_id,
        value,
        not_before: Some(start),
        expires: Some(start + ChronoDuration::days(180)),
    }
}

#[tokio::test]
async fn write_then_read_round_trips_value_key_id_and_attributes() {
    let f = fixture().await;
    let store = f.store();
    let value = SecretString::from("abc~DEF.ghi_jkl-0123456789abcdefghijklmno");
    let key_id = Uuid::new_v4();
    let secret = to_store(&f.app, key_id, &value);

    store.write(&secret).await.unwrap();
    let read = store.read().await.unwrap().expect("a value is stored");

    assert_eq!(read.value.expose_secret(), value.expose_secret());
    assert_eq!(read.key_id, Some(key_id));

    let stored = f.vault.latest(SECRET_NAME).unwrap();
    assert_eq!(stored.content_type.as_deref(), Some(CONTENT_TYPE));
    assert!(stored.enabled);
    assert_eq!(stored.expires, secret.expires.map(|t| t.timestamp()));
    assert_eq!(stored.not_before, secret.not_before.map(|t| t.timestamp()));
    assert_eq!(stored.tags["managed-by"], "entra-rotator");
    assert_eq!(stored.tags["appId"], f.app.client_id.to_string());
    assert_eq!(stored.tags["tenantId"], f.app.tenant_id.to_string());
    assert_eq!(stored.tags["keyId"], key_id.to_string());

    // One challenge round trip per client, then one request per operation.
    let faults = f.vault.faults();
    assert_eq!(faults.count(routes::CHALLENGE), 1);
    assert_eq!(faults.count(routes::SET_SECRET), 1);
    assert_eq!(faults.count(routes::GET_SECRET), 1);
}

#[tokio::test]
async fn a_token_from_the_token_endpoint_works_end_to_end() {
    let f = fixture().await;
    let graph = GraphStandin::start(f.tenant.clone(), &f.pki).await.unwrap();
    let rotator = f.tenant.register_app("rotator");
    let now = Utc::now();
    let password = f
        .tenant
        .add_password(rotator.object_id, None, now, now + ChronoDuration::days(30))
        .unwrap();
    let identity = RotatorCredential::ClientSecret {
        tenant_id: f.tenant.tenant_id.to_string(),
        client_id: rotator.app_id.to_string(),
        secret: SecretString::from(password.secret_text),
    };
    let credential =
        rotator_credential(&identity, Some(&graph.authority_host()), f.http()).unwrap();
    let store = f.store_with(f.settings(), credential);
    let value = SecretString::from("value-through-a-real-token");

    store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();

    assert_eq!(
        f.vault.latest(SECRET_NAME).unwrap().value,
        "value-through-a-real-token"
    );
}

#[tokio::test]
async fn reading_a_missing_secret_is_none() {
    let f = fixture().await;
    assert!(f.store().read().await.unwrap().is_none());
}

#[tokio::test]
async fn a_value_without_key_id_tag_reads_with_no_key_id() {
    let f = fixture().await;
    f.vault
        .seed(SECRET_NAME, "set-by-hand", &[("owner", "ops")]);

    let read = f.store().read().await.unwrap().unwrap();

    assert_eq!(read.value.expose_secret(), "set-by-hand");
    assert_eq!(read.key_id, None);
}

#[tokio::test]
async fn a_soft_deleted_name_says_to_recover_or_purge() {
    let f = fixture().await;
    f.vault.soft_delete(SECRET_NAME);
    let store = f.store();
    let value = SecretString::from("new-value");

    let err = store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();

    assert_eq!(err.kind, StoreErrorKind::SoftDeleted);
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains(&f.vault.vault_url()) && text.contains(SECRET_NAME),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "az keyvault secret recover --vault-name <vault name> --name {SECRET_NAME}"
        )),
        "{text}"
    );
    assert!(text.contains("az keyvault secret purge"), "{text}");
    // A deleted secret reads as nothing stored.
    assert!(store.read().await.unwrap().is_none());
}

#[tokio::test]
async fn forbidden_says_which_role_to_grant() {
    let f = fixture().await;
    let store = f.store();
    let value = SecretString::from("v");

    f.vault.set_access(Access::ReadOnly);
    let write = store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();
    f.vault.set_access(Access::None);
    let read = store.read().await.unwrap_err();

    for err in [&write, &read] {
        assert_eq!(err.kind, StoreErrorKind::Forbidden);
        let text = err.to_string();
        assert!(text.contains("Key Vault Secrets Officer"), "{text}");
        assert!(text.contains("access policies"), "{text}");
        assert!(text.contains(SECRET_NAME), "{text}");
    }
    assert!(write.to_string().contains("write (set)"));
    assert!(read.to_string().contains("read (get)"));
}

#[tokio::test]
async fn a_second_write_adds_a_version_and_read_returns_it() {
    let f = fixture().await;
    let store = f.store();
    let (first, second) = (
        SecretString::from("first-value"),
        SecretString::from("second-value"),
    );
    let (first_key, second_key) = (Uuid::new_v4(), Uuid::new_v4());

    store
        .write(&to_store(&f.app, first_key, &first))
        .await
        .unwrap();
    store
        .write(&to_store(&f.app, second_key, &second))
        .await
        .unwrap();
    let read = store.read().await.unwrap().unwrap();

    let versions = f.vault.versions(SECRET_NAME);
    assert_eq!(versions.len(), 2);
    assert_ne!(versions[0].version, versions[1].version);
    assert_eq!(versions[0].tags["keyId"], first_key.to_string());
    assert_eq!(read.value.expose_secret(), "second-value");
    assert_eq!(read.key_id, Some(second_key));
}

#[tokio::test]
async fn a_503_is_retried_by_the_sdk() {
    let f = fixture().await;
    let store = f.store();
    f.vault
        .faults()
        .push(routes::SET_SECRET, Fault::status(503).retry_after(0));
    let value = SecretString::from("after-a-hiccup");

    store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();

    assert_eq!(f.vault.faults().count(routes::SET_SECRET), 2);
    assert_eq!(f.vault.versions(SECRET_NAME).len(), 1);
}

#[tokio::test]
async fn a_persistent_503_is_transient_and_names_the_secret() {
    let f = fixture().await;
    let store = f.store();
    f.vault
        .faults()
        .push_times(routes::GET_SECRET, Fault::status(503), 10);

    let err = store.read().await.unwrap_err();

    assert_eq!(err.kind, StoreErrorKind::Transient);
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(text.contains(SECRET_NAME) && text.contains("503"), "{text}");
    assert!(text.contains("try again later"), "{text}");
    // The first try and the three retries the test's retry options allow.
    assert_eq!(f.vault.faults().count(routes::GET_SECRET), 4);
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let f = fixture().await;
    let store = f.store_with(
        f.settings(),
        f.credential(Some("https://graph.microsoft.com/.default")),
    );

    let err = store.read().await.unwrap_err();

    assert_eq!(err.kind, StoreErrorKind::Forbidden);
    assert!(err.to_string().contains("AKV10022"), "{err}");
}

#[tokio::test]
async fn challenge_resource_verification_refuses_a_vault_outside_the_vault_domain() {
    let f = fixture().await;
    let store = f.store_trusting(f.settings(), &public_cloud(), f.credential(None));

    let err = store.read().await.unwrap_err();

    assert_eq!(err.kind, StoreErrorKind::Rejected);
    assert!(err.to_string().contains("challenge resource"), "{err}");
    assert_eq!(
        f.vault.faults().count(routes::GET_SECRET),
        0,
        "no token was sent"
    );
}

#[tokio::test]
async fn bad_settings_are_refused_before_any_request() {
    let f = fixture().await;
    let credential = f.credential(None);
    let options = || azure_client_options(f.http());

    let bad_name = KeyVaultStore::new(
        KeyVaultSettings::new(f.vault.vault_url(), "smtp_password"),
        &f.trust(),
        credential.clone(),
        options(),
    );
    let plain_http = KeyVaultStore::new(
        KeyVaultSettings::new("http://kv.vault.azure.net", SECRET_NAME),
        &f.trust(),
        credential,
        options(),
    );

    assert!(matches!(
        bad_name,
        Err(KeyVaultSetupError::InvalidSecretName { .. })
    ));
    assert!(
        bad_name
            .unwrap_err()
            .to_string()
            .contains("letters, digits and dashes")
    );
    assert!(plain_http.unwrap_err().to_string().contains("https"));
}

#[tokio::test]
async fn debug_output_and_errors_never_show_the_value() {
    let f = fixture().await;
    let store = f.store();
    let value = SecretString::from("do-not-print-me-0123456789");
    store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();
    f.vault
        .faults()
        .push_times(routes::GET_SECRET, Fault::status(500), 10);

    let err = store.read().await.unwrap_err();
    let read_back = {
        f.vault.faults().clear();
        store.read().await.unwrap().unwrap()
    };

    for text in [
        format!("{store:?}"),
        format!("{err:?}"),
        err.to_string(),
        format!("{read_back:?}"),
    ] {
        assert!(!text.contains("do-not-print-me"), "{text}");
    }
    assert!(!format!("{:?}", f.vault.latest(SECRET_NAME).unwrap()).contains("do-not-print-me"));
}

fn public_cloud() -> VaultTrust {
    VaultTrust::for_authority(&"https://login.microsoftonline.com".parse().unwrap())
}

/// A host named as a vault whose challenge asks for another audience (Graph, ARM, or a
/// resource of its own) gets no token, whether its host is trusted as a private vault host
/// (the SDK's domain check off: our audience guard refuses) or not (the SDK refuses). The
/// guard's refusal of a challenge that passes the SDK's check is a unit test in
/// src/adapters/keyvault.rs: no host name other than an IP resolves to loopback here.
#[tokio::test]
async fn a_challenge_for_another_audience_gets_no_token() {
    let foreign = [
        "https://graph.microsoft.com",
        "https://management.azure.com",
        "https://attacker.example",
    ];
    for resource in foreign {
        for private in [true, false] {
            let f = fixture().await;
            f.vault.impersonate(resource);
            let trust = if private { f.trust() } else { public_cloud() };
            let store = f.store_trusting(f.settings(), &trust, f.credential(None));

            let err = store.read().await.unwrap_err();

            let case = format!("challenge for {resource}, private host: {private}");
            assert_eq!(f.vault.bearer_requests(), 0, "{case}: the host received a token");
            assert!(f.tenant.issued_scopes().is_empty(), "{case}: a token was issued: {:?}", f.tenant.issued_scopes());
            assert_eq!(err.kind, StoreErrorKind::Rejected, "{case}: {err}");
            let text = err.to_string();
            assert!(text.contains(&f.vault.vault_url()), "{case}: the error names the host: {text}");
            if private {
                assert!(
                    text.contains(&format!("{resource}/.default")) && text.contains("not Key Vault's"),
                    "{case}: the error names the scope asked for: {text}"
                );
            } else {
                assert!(text.contains("challenge resource"), "{case}: {text}");
            }
        }
    }
}

#[tokio::test]
async fn a_vault_is_asked_for_the_audience_of_its_cloud() {
    let f = fixture().await;
    let store = f.store_with(f.settings(), f.credential(None));

    store.read().await.unwrap();

    assert_eq!(f.tenant.issued_scopes(), ["https://vault.azure.net/.default"]);
    for (authority, audience) in [
        ("https://login.microsoftonline.com", "https://vault.azure.net"),
        ("https://login.chinacloudapi.cn", "https://vault.azure.cn"),
        ("https://login.microsoftonline.us", "https://vault.usgovcloudapi.net"),
    ] {
        assert_eq!(VaultTrust::for_authority(&authority.parse().unwrap()).audience, audience);
    }
}

#[tokio::test]
async fn a_deletion_still_in_progress_is_retried_later_not_a_rejection() {
    let f = fixture().await;
    f.vault.seed(SECRET_NAME, "old-value", &[]);
    f.vault.hold_deletions();
    f.vault.soft_delete(SECRET_NAME);
    let store = f.store();
    let value = SecretString::from("new-value");

    let err = store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();

    assert_eq!(err.kind, StoreErrorKind::Transient, "{err}");
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(text.contains("ObjectIsBeingDeleted") || text.contains("being deleted"), "{text}");
    assert!(text.contains(&f.vault.vault_url()) && text.contains(SECRET_NAME), "{text}");
    assert!(!text.contains("new-value"), "{text}");

    // Once the deletion has finished the name is soft-deleted: recover or purge.
    f.vault.finish_deletions();
    let err = store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::SoftDeleted, "{err}");
}

/// A raw request to the vault with a Key Vault token from the shared tenant.
async fn raw(f: &Fixture, method: reqwest::Method, path_and_query: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let token = f.tenant.issue_token(
        Uuid::new_v4(),
        "https://vault.azure.net/.default",
        Duration::from_secs(600),
    );
    let url = format!("{}{path_and_query}", f.vault.vault_url());
    let mut request = f.http().request(method, &url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn the_vault_serves_the_api_versions_current_sdks_send_and_refuses_others_as_key_vault_does() {
    let f = fixture().await;
    f.vault.seed(SECRET_NAME, "value", &[]);
    // Python azure-keyvault-secrets 4.12 defaults to 2026-04-01; the Rust SDK sends 2025-07-01.
    for version in ["2026-04-01", "2025-07-01", "7.6", "7.5", "7.4", "7.0", "2016-10-01"] {
        let (status, body) = raw(&f, reqwest::Method::GET, &format!("/secrets/{SECRET_NAME}/?api-version={version}"), None).await;
        assert_eq!(status, 200, "api-version {version}: {body}");
    }
    for version in ["2015-06-01", "7.7", "2099-01-01", "latest"] {
        let (status, body) = raw(&f, reqwest::Method::GET, &format!("/secrets/{SECRET_NAME}/?api-version={version}"), None).await;
        assert_eq!(status, 400, "api-version {version}: {body}");
        assert_eq!(body["error"]["code"], "BadParameter");
        assert_eq!(
            body["error"]["message"],
            format!("The specified version ({version}) is not recognized. Consider using the latest supported version (2026-04-01).")
        );
    }
}

#[tokio::test]
async fn listings_page_by_maxresults_with_next_links() {
    let f = fixture().await;
    for name in ["alpha", "bravo", "charlie"] {
        f.vault.seed(name, "value", &[]);
    }
    f.vault.seed("alpha", "second", &[]);
    let mut names = Vec::new();
    let mut next = Some("/secrets?api-version=2026-04-01&maxresults=2".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let (status, body) = raw(&f, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for item in body["value"].as_array().unwrap() {
            assert!(item.get("value").is_none(), "listings carry no values: {item}");
            names.push(item["id"].as_str().unwrap().rsplit('/').next().unwrap().to_string());
        }
        next = body["nextLink"].as_str().map(|link| link.trim_start_matches(&f.vault.vault_url()).to_string());
    }
    assert_eq!(pages, 2);
    assert_eq!(names, ["alpha", "bravo", "charlie"]);

    let (_, first) = raw(&f, reqwest::Method::GET, "/secrets/alpha/versions?api-version=7.6&maxresults=1", None).await;
    assert_eq!(first["value"].as_array().unwrap().len(), 1);
    let link = first["nextLink"].as_str().expect("a second version remains");
    let (_, second) = raw(&f, reqwest::Method::GET, link.trim_start_matches(&f.vault.vault_url()), None).await;
    assert_eq!(second["value"].as_array().unwrap().len(), 1);
    assert!(second["nextLink"].is_null());

    let (status, body) = raw(&f, reqwest::Method::GET, "/secrets?api-version=7.6&maxresults=26", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "BadParameter");
}

#[tokio::test]
async fn patch_updates_a_versions_attributes_and_tags_but_not_its_value() {
    let f = fixture().await;
    let version = f.vault.seed(SECRET_NAME, "kept-value", &[("keyId", "k1")]);
    let patch = serde_json::json!({"attributes": {"enabled": false, "exp": 2_000_000_000}, "tags": {"retired": "yes"}, "contentType": "text/plain"});

    let (status, body) = raw(&f, reqwest::Method::PATCH, &format!("/secrets/{SECRET_NAME}/{}?api-version=2026-04-01", version.version), Some(patch)).await;

    assert_eq!(status, 200, "{body}");
    assert!(body.get("value").is_none(), "{body}");
    assert_eq!(body["attributes"]["enabled"], false);
    let stored = f.vault.latest(SECRET_NAME).unwrap();
    assert!(!stored.enabled);
    assert_eq!(stored.expires, Some(2_000_000_000));
    assert_eq!(stored.tags.get("retired").map(String::as_str), Some("yes"));
    assert_eq!(stored.tags.get("keyId"), None, "given tags replace all tags, as Key Vault does");
    assert_eq!(stored.value, "kept-value");
}

#[tokio::test]
async fn the_challenge_names_the_authority_the_vault_was_given() {
    let f = fixture().await;
    f.vault.set_authority("https://127.0.0.1:4443/");
    let response = f
        .http()
        .get(format!("{}/secrets/{SECRET_NAME}/?api-version=2026-04-01", f.vault.vault_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(r#"Bearer authorization="https://127.0.0.1:4443/{}", resource="https://vault.azure.net""#, f.tenant.tenant_id)
    );
}
