//! The Kubernetes Secret store against the API server stand-in, through `kube::Client` over
//! HTTPS: server-side apply keeps other owners' keys, drops keys we stop applying, and the
//! errors say which Role is missing.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use entra_rotator::adapters::kubernetes::{
    KubernetesSecretSettings, KubernetesSecretStore, KubernetesSetupError, SmtpVariables, dify_keys,
};
use entra_rotator::domain::{AppRef, ExposeSecret, SecretString, SecretToStore};
use entra_rotator::engine::ports::{SecretStore, StoreErrorKind};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::kubernetes::{KubernetesStandin, routes};
use entra_rotator_standins::tls::TestPki;
use entra_rotator::template::Template;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use uuid::Uuid;

const NAMESPACE: &str = "dify";
const NAME: &str = "dify-smtp";

struct Fixture {
    cluster: KubernetesStandin,
    pki: TestPki,
    app: AppRef,
}

async fn fixture() -> Fixture {
    let pki = TestPki::generate().unwrap();
    let cluster = KubernetesStandin::start(&pki).await.unwrap();
    cluster.create_namespace(NAMESPACE);
    let app = AppRef {
        tenant_id: Uuid::new_v4(),
        client_id: Uuid::new_v4(),
        object_id: Some(Uuid::new_v4()),
    };
    Fixture { cluster, pki, app }
}

impl Fixture {
    /// A kube client that trusts the stand-in's CA, with or without kube's own retries.
    fn client(&self, retry: bool) -> kube::Client {
        let mut config = kube::Config::new(self.cluster.url().parse().unwrap());
        let ca = rustls_pemfile::certs(&mut self.pki.ca_pem().as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
        config.root_cert = Some(ca);
        config.default_retry = retry;
        kube::Client::try_from(config).unwrap()
    }

    fn settings(&self, keys: BTreeMap<String, Template>) -> KubernetesSecretSettings {
        KubernetesSecretSettings {
            namespace: NAMESPACE.to_string(),
            name: NAME.to_string(),
            keys,
            variables: SmtpVariables {
                smtp_host: Some("smtp.azurecomm.net".to_string()),
                smtp_port: Some(587),
                smtp_username: Some(format!(
                    "my-acs|{}|{}",
                    self.app.client_id, self.app.tenant_id
                )),
                smtp_from: Some("DoNotReply@contoso.azurecomm.net".to_string()),
            },
        }
    }

    fn store_with(&self, keys: BTreeMap<String, Template>) -> KubernetesSecretStore {
        KubernetesSecretStore::new(self.client(true), self.settings(keys)).unwrap()
    }

    fn store(&self) -> KubernetesSecretStore {
        self.store_with(dify_keys())
    }

    /// Merge-patches the Secret's metadata as its manager (`helm`) would.
    async fn patch_metadata(&self, metadata: serde_json::Value) {
        let api: Api<Secret> = Api::namespaced(self.client(true), NAMESPACE);
        let params = PatchParams { field_manager: Some("helm".into()), ..Default::default() };
        api.patch(NAME, &params, &Patch::Merge(&serde_json::json!({ "metadata": metadata }))).await.unwrap();
    }

    /// Hands the Secret over to the rotator, as whoever manages it would.
    async fn adopt(&self) {
        self.patch_metadata(serde_json::json!({ "annotations": { "entra-rotator.io/adopt": "true" } })).await;
    }
}

fn to_store<'a>(app: &'a AppRef, key_id: Uuid, value: &'a SecretString) -> SecretToStore<'a> {
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    SecretToStore {
        rotation: "dify/dify-smtp",
        app,
        key_id,
        value,
        not_before: Some(start),
        expires: Some(start + ChronoDuration::days(90)),
    }
}

#[tokio::test]
async fn write_renders_the_templates_and_read_returns_value_and_key_id() {
    let f = fixture().await;
    let store = f.store();
    let value = SecretString::from("k8s~secret.value_0123456789abcdefghijklmn");
    let key_id = Uuid::new_v4();
    let secret = to_store(&f.app, key_id, &value);

    store.write(&secret).await.unwrap();
    let read = store.read().await.unwrap().unwrap();

    assert_eq!(read.value.expose_secret(), value.expose_secret());
    assert_eq!(read.key_id, Some(key_id));
    let stored = f.cluster.secret(NAMESPACE, NAME).unwrap();
    assert_eq!(stored.data["SMTP_PASSWORD"], value.expose_secret());
    assert_eq!(
        stored.data["SMTP_USERNAME"],
        format!("my-acs|{}|{}", f.app.client_id, f.app.tenant_id)
    );
    assert_eq!(stored.data["SMTP_SERVER"], "smtp.azurecomm.net");
    assert_eq!(stored.data["SMTP_PORT"], "587");
    assert_eq!(
        stored.data["MAIL_DEFAULT_SEND_FROM"],
        "DoNotReply@contoso.azurecomm.net"
    );
    assert_eq!(
        stored.annotations["entra-rotator.io/app-id"],
        f.app.client_id.to_string()
    );
    assert_eq!(
        stored.annotations["entra-rotator.io/key-id"],
        key_id.to_string()
    );
    assert_eq!(
        stored.annotations["entra-rotator.io/expires-at"],
        secret
            .expires
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    );
    assert_eq!(
        stored.labels["app.kubernetes.io/managed-by"],
        "entra-rotator"
    );
    assert_eq!(
        stored.applied_keys("entra-rotator"),
        dify_keys().into_keys().collect()
    );
    // A write is one read (to respect a foreign managed-by label) and one apply.
    assert_eq!(f.cluster.faults().count(routes::GET_SECRET), 2);
    assert_eq!(f.cluster.faults().count(routes::PATCH_SECRET), 1);
}

#[tokio::test]
async fn reading_a_missing_secret_or_key_is_none() {
    let f = fixture().await;
    let store = f.store();
    assert!(store.read().await.unwrap().is_none());

    f.cluster
        .put_secret_as(NAMESPACE, NAME, "helm", &[("SECRET_KEY", "app-key")]);
    f.adopt().await;
    assert!(store.read().await.unwrap().is_none());
}

#[tokio::test]
async fn keys_owned_by_another_manager_survive_our_apply() {
    let f = fixture().await;
    f.cluster.put_secret_as(
        NAMESPACE,
        NAME,
        "helm",
        &[("SECRET_KEY", "app-key"), ("DB_PASSWORD", "db")],
    );
    f.adopt().await;
    let value = SecretString::from("v1");

    f.store()
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();

    let stored = f.cluster.secret(NAMESPACE, NAME).unwrap();
    assert_eq!(stored.data["SECRET_KEY"], "app-key");
    assert_eq!(stored.data["DB_PASSWORD"], "db");
    assert_eq!(stored.data["SMTP_PASSWORD"], "v1");
    assert!(!stored.applied_keys("entra-rotator").contains("SECRET_KEY"));
}

#[tokio::test]
async fn a_key_removed_from_our_templates_disappears_on_the_next_apply() {
    let f = fixture().await;
    f.cluster
        .put_secret_as(NAMESPACE, NAME, "helm", &[("SECRET_KEY", "app-key")]);
    f.adopt().await;
    let value = SecretString::from("v1");
    f.store()
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();

    let mut fewer = dify_keys();
    fewer.remove("SMTP_SERVER");
    f.store_with(fewer)
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();

    let stored = f.cluster.secret(NAMESPACE, NAME).unwrap();
    assert!(!stored.data.contains_key("SMTP_SERVER"), "{stored:?}");
    assert!(stored.data.contains_key("SMTP_PORT"));
    assert_eq!(stored.data["SECRET_KEY"], "app-key");
}

#[tokio::test]
async fn a_hand_edited_password_is_taken_back() {
    let f = fixture().await;
    let first = SecretString::from("first");
    f.store().write(&to_store(&f.app, Uuid::new_v4(), &first)).await.unwrap();
    f.cluster.put_secret_as(
        NAMESPACE,
        NAME,
        "kubectl-edit",
        &[("SMTP_PASSWORD", "typed-by-hand")],
    );
    let value = SecretString::from("rotated");

    f.store()
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();

    let stored = f.cluster.secret(NAMESPACE, NAME).unwrap();
    assert_eq!(stored.data["SMTP_PASSWORD"], "rotated");
    assert!(
        stored
            .applied_keys("entra-rotator")
            .contains("SMTP_PASSWORD")
    );
    let hand_owned = stored
        .managed_fields
        .keys()
        .any(|(manager, _)| manager == "kubectl-edit");
    assert!(
        !hand_owned,
        "the hand edit no longer owns anything: {stored:?}"
    );
}

#[tokio::test]
async fn a_helm_managed_by_label_is_left_alone() {
    let f = fixture().await;
    f.cluster
        .put_secret_as(NAMESPACE, NAME, "helm", &[("SECRET_KEY", "app-key")]);
    let api: Api<Secret> = Api::namespaced(f.client(true), NAMESPACE);
    let label = serde_json::json!({
        "metadata": {
            "labels": { "app.kubernetes.io/managed-by": "Helm" },
            "annotations": { "entra-rotator.io/adopt": "true" },
        }
    });
    api.patch(
        NAME,
        &PatchParams {
            field_manager: Some("helm".into()),
            ..Default::default()
        },
        &Patch::Merge(&label),
    )
    .await
    .unwrap();
    let value = SecretString::from("v1");

    f.store()
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();

    let stored = f.cluster.secret(NAMESPACE, NAME).unwrap();
    assert_eq!(stored.labels["app.kubernetes.io/managed-by"], "Helm");
    assert_eq!(stored.data["SMTP_PASSWORD"], "v1");
}

#[tokio::test]
async fn a_second_write_replaces_value_and_key_id() {
    let f = fixture().await;
    let store = f.store();
    let (first, second) = (SecretString::from("first"), SecretString::from("second"));
    let second_key = Uuid::new_v4();

    store
        .write(&to_store(&f.app, Uuid::new_v4(), &first))
        .await
        .unwrap();
    let version_after_first = f.cluster.secret(NAMESPACE, NAME).unwrap().resource_version;
    store
        .write(&to_store(&f.app, second_key, &second))
        .await
        .unwrap();
    let read = store.read().await.unwrap().unwrap();

    assert_eq!(read.value.expose_secret(), "second");
    assert_eq!(read.key_id, Some(second_key));
    assert!(f.cluster.secret(NAMESPACE, NAME).unwrap().resource_version > version_after_first);
}

#[tokio::test]
async fn forbidden_names_the_role_that_is_missing() {
    let f = fixture().await;
    f.cluster.forbid_namespace(NAMESPACE);
    let store = f.store();
    let value = SecretString::from("v1");

    let read = store.read().await.unwrap_err();
    let write = store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();

    for err in [read, write] {
        assert_eq!(err.kind, StoreErrorKind::Forbidden);
        let text = err.to_string();
        assert!(text.contains("Kubernetes Secret dify/dify-smtp"), "{text}");
        assert!(text.contains("Role in namespace dify allowing get and patch on secrets with resourceNames [dify-smtp]"), "{text}");
    }
}

#[tokio::test]
async fn a_missing_namespace_is_not_found() {
    let f = fixture().await;
    let store = KubernetesSecretStore::new(
        f.client(true),
        KubernetesSecretSettings {
            namespace: "nowhere".into(),
            ..f.settings(dify_keys())
        },
    )
    .unwrap();
    let value = SecretString::from("v1");

    let err = store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();

    assert_eq!(err.kind, StoreErrorKind::NotFound);
    assert!(
        err.to_string().contains("Namespace nowhere does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn a_503_is_retried_by_kube_and_a_persistent_one_is_transient() {
    let f = fixture().await;
    let value = SecretString::from("v1");
    f.cluster
        .faults()
        .push(routes::PATCH_SECRET, Fault::status(503));

    f.store()
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();
    assert_eq!(f.cluster.faults().count(routes::PATCH_SECRET), 2);

    let without_retries =
        KubernetesSecretStore::new(f.client(false), f.settings(dify_keys())).unwrap();
    f.cluster
        .faults()
        .push(routes::PATCH_SECRET, Fault::status(503));
    let err = without_retries
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Transient);
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn exactly_one_key_must_be_the_secret() {
    let f = fixture().await;
    let template = |s: &str| Template::parse(s).unwrap();
    let none = BTreeMap::from([("SMTP_PASSWORD".to_string(), template("password={{secret}}"))]);
    let two = BTreeMap::from([
        ("SMTP_PASSWORD".to_string(), template("{{secret}}")),
        ("MAIL_PASSWORD".to_string(), template("{{ secret }}")),
    ]);

    let err_none = KubernetesSecretStore::new(f.client(true), f.settings(none)).unwrap_err();
    let err_two = KubernetesSecretStore::new(f.client(true), f.settings(two)).unwrap_err();

    assert!(matches!(
        err_none,
        KubernetesSetupError::SecretKeyCount { found: 0, .. }
    ));
    assert!(matches!(
        err_two,
        KubernetesSetupError::SecretKeyCount { found: 2, .. }
    ));
    assert!(
        err_two.to_string().contains("MAIL_PASSWORD, SMTP_PASSWORD"),
        "{err_two}"
    );
}

#[tokio::test]
async fn a_template_needing_an_unset_variable_is_refused() {
    let f = fixture().await;
    let mut settings = f.settings(dify_keys());
    settings.variables.smtp_from = None;

    let err = KubernetesSecretStore::new(f.client(true), settings).unwrap_err();

    assert!(
        matches!(err, KubernetesSetupError::MissingVariable { ref key, .. } if key == "MAIL_DEFAULT_SEND_FROM")
    );
    assert!(err.to_string().contains("From address"), "{err}");
}

#[tokio::test]
async fn debug_output_and_errors_never_show_the_value() {
    let f = fixture().await;
    let store = f.store();
    let value = SecretString::from("do-not-print-me-42");
    store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();
    f.cluster.forbid_namespace(NAMESPACE);
    let err = store
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap_err();

    let texts = [
        format!("{store:?}"),
        format!("{err:?}"),
        err.to_string(),
        format!("{:?}", f.cluster.secret(NAMESPACE, NAME).unwrap()),
    ];
    for text in texts {
        assert!(!text.contains("do-not-print-me"), "{text}");
    }
}

#[tokio::test]
async fn another_manager_cannot_apply_over_our_keys_without_force() {
    let f = fixture().await;
    let value = SecretString::from("ours");
    f.store()
        .write(&to_store(&f.app, Uuid::new_v4(), &value))
        .await
        .unwrap();
    let api: Api<Secret> = Api::namespaced(f.client(false), NAMESPACE);
    let theirs = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": NAME },
        "stringData": { "SMTP_PASSWORD": "theirs" },
    });

    let err = api
        .patch(
            NAME,
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap_err();

    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!(status.code, 409);
    assert!(
        status
            .message
            .contains(r#"conflict with "entra-rotator" using v1: .data.SMTP_PASSWORD"#),
        "{}",
        status.message
    );
    assert_eq!(
        f.cluster.secret(NAMESPACE, NAME).unwrap().data["SMTP_PASSWORD"],
        "ours"
    );
}

/// What a user checks after pointing a rotation at a Secret someone else made: the
/// rotator refuses it before reading a value (so before the engine mints), says whose it
/// is and what to do, and leaves every key as it was.
#[tokio::test]
async fn a_secret_made_by_someone_else_is_not_taken_over() {
    for helm in [false, true] {
        let f = fixture().await;
        f.cluster.put_secret_as(NAMESPACE, NAME, "kubectl-create", &[("SMTP_PASSWORD", "someone-elses")]);
        if helm {
            f.patch_metadata(serde_json::json!({ "labels": { "app.kubernetes.io/managed-by": "Helm" } })).await;
        }
        let store = f.store();
        let value = SecretString::from("rotated");

        let read = store.read().await.unwrap_err();
        let write = store.write(&to_store(&f.app, Uuid::new_v4(), &value)).await.unwrap_err();

        for error in [&read, &write] {
            assert_eq!(error.kind, StoreErrorKind::Claimed, "{error}");
            let message = error.to_string();
            assert!(message.starts_with("Kubernetes Secret dify/dify-smtp: not written: "), "{message}");
            let whose = if helm { "managed by Helm" } else { "made by someone else" };
            assert!(message.contains(whose), "{message}");
            assert!(message.contains("entra-rotator.io/adopt: \"true\""), "{message}");
            assert!(!message.contains("someone-elses"), "no value in the message: {message}");
        }
        let stored = f.cluster.secret(NAMESPACE, NAME).unwrap();
        assert_eq!(stored.data.len(), 1, "{stored:?}");
        assert_eq!(stored.data["SMTP_PASSWORD"], "someone-elses");
        assert!(!stored.annotations.contains_key("entra-rotator.io/key-id"));
    }
}

/// An empty Secret (a placeholder, e.g. made by a chart) is filled without adoption.
#[tokio::test]
async fn an_empty_secret_is_filled() {
    let f = fixture().await;
    let api: Api<Secret> = Api::namespaced(f.client(true), NAMESPACE);
    let placeholder: Secret = serde_json::from_value(serde_json::json!({ "metadata": { "name": NAME } })).unwrap();
    api.create(&Default::default(), &placeholder).await.unwrap();
    let value = SecretString::from("v1");

    f.store().write(&to_store(&f.app, Uuid::new_v4(), &value)).await.unwrap();

    assert_eq!(f.cluster.secret(NAMESPACE, NAME).unwrap().data["SMTP_PASSWORD"], "v1");
}

/// A Secret another controller owns (an ExternalSecret's, a SealedSecret's) is refused even
/// when annotated for adoption: that controller would overwrite the rotated value.
#[tokio::test]
async fn a_secret_another_controller_owns_is_refused_even_when_adopted() {
    let f = fixture().await;
    let api: Api<Secret> = Api::namespaced(f.client(true), NAMESPACE);
    let owned: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": NAME,
            "annotations": { "entra-rotator.io/adopt": "true" },
            "ownerReferences": [ {
                "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret", "name": "smtp",
                "uid": "5f0c1d7e-2b7a-4c4e-9d2f-3a1b2c3d4e5f", "controller": true, "blockOwnerDeletion": true,
            } ],
        },
        "stringData": { "SMTP_PASSWORD": "from-the-vault" },
    }))
    .unwrap();
    api.create(&Default::default(), &owned).await.unwrap();
    let value = SecretString::from("rotated");

    let error = f.store().write(&to_store(&f.app, Uuid::new_v4(), &value)).await.unwrap_err();

    assert_eq!(error.kind, StoreErrorKind::Claimed);
    let message = error.to_string();
    assert!(message.contains("controlled by ExternalSecret smtp"), "{message}");
    assert!(message.contains("name a Secret of its own"), "{message}");
    assert_eq!(f.cluster.secret(NAMESPACE, NAME).unwrap().data["SMTP_PASSWORD"], "from-the-vault");
}
