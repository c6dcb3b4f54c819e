//! The Kubernetes Secret store: keeps the SMTP settings of one workload (for example Dify's
//! `SMTP_USERNAME`, `SMTP_PASSWORD`, `SMTP_SERVER`, …) in a Secret, rendered from templates.
//!
//! Writes use server-side apply with field manager `entra-rotator`: we send only the keys
//! our templates name plus our annotations, so the API server keeps every other key of the
//! Secret (owned by Helm, a person, another controller) untouched, and removes a key we
//! applied before once it leaves our templates. `force=true` is right because every field
//! we apply is ours by configuration: if someone hand-edited `SMTP_PASSWORD`, the rotator
//! must take it back, or consumers would read a value that is about to be revoked.
//!
//! The one shared field is the `app.kubernetes.io/managed-by` label: a Secret created by
//! Helm carries `managed-by: Helm`, and Helm refuses to upgrade a release whose objects lost
//! it. So each write first reads the Secret and applies our label only when the Secret has
//! none or already has ours.
//!
//! A Secret someone else made is not taken over (the confused deputy of issue 12: the
//! rotator may write every Secret of a namespace, a rotation author perhaps none). An
//! existing Secret is written only when it is ours (our annotations or label), empty, or
//! handed over by whoever controls it with the annotation `entra-rotator.io/adopt: "true"`
//! (for a Secret a Helm chart creates for the rotator to fill). A Secret another
//! controller owns (an ownerReference with `controller: true`: an ExternalSecret, a
//! SealedSecret, …) is never written, adopted or not: that controller would overwrite
//! the rotated value. The consent is on the Secret and not in the rotation, as
//! cert-manager and external-secrets refuse a Secret another Certificate or ExternalSecret
//! owns: only who may edit the Secret may hand it over.
//!
//! Reads take the value from the one key whose template is exactly `{{secret}}` and the
//! credential's keyId from the `entra-rotator.io/key-id` annotation.

use crate::domain::{ExposeSecret, SecretString, SecretToStore, StoredSecret};
use crate::engine::ports::{SecretStore, StoreError, StoreErrorKind};
use crate::template::{Template, VARIABLES};
use async_trait::async_trait;
use chrono::SecondsFormat;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;
use zeroize::Zeroize;

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "entra-rotator";
pub const ANNOTATION_APP_ID: &str = "entra-rotator.io/app-id";
pub const ANNOTATION_KEY_ID: &str = "entra-rotator.io/key-id";
/// The rotation that owns the Secret (`namespace/name` for a ClientSecretRotation).
pub const ANNOTATION_ROTATION: &str = "entra-rotator.io/rotation";
pub const ANNOTATION_EXPIRES_AT: &str = "entra-rotator.io/expires-at";
/// Set to `"true"` on an existing Secret by whoever controls it, to let the rotator write into it.
pub const ANNOTATION_ADOPT: &str = "entra-rotator.io/adopt";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "entra-rotator";

/// Values known when the configuration is loaded, for `{{smtpHost}}`, `{{smtpPort}}`,
/// `{{smtpUsername}}` and `{{smtpFrom}}`. A template using one that is `None` is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmtpVariables {
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    /// The relay username, already rendered (e.g. `my-acs|<clientId>|<tenantId>`).
    pub smtp_username: Option<String>,
    pub smtp_from: Option<String>,
}

impl SmtpVariables {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "smtpHost" => self.smtp_host.clone(),
            "smtpPort" => self.smtp_port.map(|p| p.to_string()),
            "smtpUsername" => self.smtp_username.clone(),
            "smtpFrom" => self.smtp_from.clone(),
            _ => None,
        }
    }
}

/// Which Secret, and which keys to keep in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesSecretSettings {
    pub namespace: String,
    pub name: String,
    /// Secret key → template; exactly one template must be `{{secret}}`.
    pub keys: BTreeMap<String, Template>,
    pub variables: SmtpVariables,
}

/// The keys Dify reads for its SMTP mail (`MAIL_TYPE=smtp`), as templates.
pub fn dify_keys() -> BTreeMap<String, Template> {
    [
        ("SMTP_USERNAME", "{{smtpUsername}}"),
        ("SMTP_PASSWORD", "{{secret}}"),
        ("SMTP_SERVER", "{{smtpHost}}"),
        ("SMTP_PORT", "{{smtpPort}}"),
        ("MAIL_DEFAULT_SEND_FROM", "{{smtpFrom}}"),
    ]
    .into_iter()
    .map(|(key, source)| {
        let template =
            Template::parse(source).unwrap_or_else(|e| unreachable!("built-in template: {e}"));
        (key.to_string(), template)
    })
    .collect()
}

/// A Kubernetes Secret store that cannot be set up as configured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubernetesSetupError {
    #[error(
        "namespace {0:?} is not a valid Kubernetes namespace name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidNamespace(String),
    #[error(
        "Secret name {0:?} is not valid: use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    )]
    InvalidName(String),
    #[error(
        "Secret key {0:?} is not valid: keys may only contain letters, digits, '-', '_' and '.'"
    )]
    InvalidKey(String),
    #[error(
        "exactly one key must have the template \"{{{{secret}}}}\" (that key is read back as the stored value); found {found}: {keys}. Add one key such as SMTP_PASSWORD: \"{{{{secret}}}}\""
    )]
    SecretKeyCount { found: usize, keys: String },
    #[error(
        "key {key:?} uses {{{{{variable}}}}} but no {setting} is configured; set it or change the template"
    )]
    MissingVariable {
        key: String,
        variable: String,
        setting: &'static str,
    },
}

fn is_dns_label(s: &str) -> bool {
    let edges_ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    (1..=63).contains(&s.len())
        && edges_ok
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(is_dns_label)
}

fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// Whether `template` renders to the secret and nothing else, whatever the other variables hold.
fn is_exactly_secret(template: &Template) -> bool {
    let markers: BTreeMap<&str, String> = VARIABLES
        .iter()
        .map(|v| (*v, format!("\u{0}{v}\u{0}")))
        .collect();
    let vars: BTreeMap<&str, &str> = markers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    template.render(&vars) == markers["secret"]
}

fn setting_name(variable: &str) -> Option<&'static str> {
    match variable {
        "smtpHost" => Some("SMTP host"),
        "smtpPort" => Some("SMTP port"),
        "smtpUsername" => Some("SMTP username"),
        "smtpFrom" => Some("From address"),
        _ => None,
    }
}

fn validate(settings: &KubernetesSecretSettings) -> Result<String, KubernetesSetupError> {
    if !is_dns_label(&settings.namespace) {
        return Err(KubernetesSetupError::InvalidNamespace(
            settings.namespace.clone(),
        ));
    }
    if !is_dns_subdomain(&settings.name) {
        return Err(KubernetesSetupError::InvalidName(settings.name.clone()));
    }
    for (key, template) in &settings.keys {
        if !is_secret_key(key) {
            return Err(KubernetesSetupError::InvalidKey(key.clone()));
        }
        for variable in ["smtpHost", "smtpPort", "smtpUsername", "smtpFrom"] {
            if template.uses(variable) && settings.variables.get(variable).is_none() {
                return Err(KubernetesSetupError::MissingVariable {
                    key: key.clone(),
                    variable: variable.to_string(),
                    setting: setting_name(variable).unwrap_or(variable),
                });
            }
        }
    }
    let secret_keys: Vec<&String> = settings
        .keys
        .iter()
        .filter(|(_, t)| is_exactly_secret(t))
        .map(|(k, _)| k)
        .collect();
    match secret_keys.as_slice() {
        [only] => Ok((*only).clone()),
        others => Err(KubernetesSetupError::SecretKeyCount {
            found: others.len(),
            keys: if others.is_empty() {
                "none".to_string()
            } else {
                others
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

/// One Kubernetes Secret as a [`SecretStore`].
pub struct KubernetesSecretStore {
    api: Api<Secret>,
    settings: KubernetesSecretSettings,
    /// The key read back as the value: the one whose template is exactly `{{secret}}`.
    secret_key: String,
}

impl fmt::Debug for KubernetesSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesSecretStore")
            .field("namespace", &self.settings.namespace)
            .field("name", &self.settings.name)
            .field("keys", &self.settings.keys)
            .field("secret_key", &self.secret_key)
            .finish_non_exhaustive()
    }
}

/// Holds rendered values (one of them the secret) and wipes them when dropped.
struct RenderedData(BTreeMap<String, ByteString>);

impl Drop for RenderedData {
    fn drop(&mut self) {
        for value in self.0.values_mut() {
            value.0.zeroize();
        }
    }
}

impl KubernetesSecretStore {
    /// `client` is the rotator's Kubernetes client (in-cluster config or kubeconfig).
    pub fn new(
        client: kube::Client,
        settings: KubernetesSecretSettings,
    ) -> Result<Self, KubernetesSetupError> {
        let secret_key = validate(&settings)?;
        let api = Api::namespaced(client, &settings.namespace);
        Ok(Self {
            api,
            settings,
            secret_key,
        })
    }

    fn error(&self, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError {
            store: self.describe(),
            kind,
            message,
        }
    }

    fn render(&self, secret: &SecretToStore<'_>) -> RenderedData {
        let mut values: BTreeMap<&str, String> = BTreeMap::from([
            ("tenantId", secret.app.tenant_id.to_string()),
            ("clientId", secret.app.client_id.to_string()),
            (
                "objectId",
                secret
                    .app
                    .object_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            ),
            ("keyId", secret.key_id.to_string()),
            (
                "expiresAt",
                secret
                    .expires
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .unwrap_or_default(),
            ),
        ]);
        for variable in ["smtpHost", "smtpPort", "smtpUsername", "smtpFrom"] {
            if let Some(value) = self.settings.variables.get(variable) {
                values.insert(variable, value);
            }
        }
        let mut vars: BTreeMap<&str, &str> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
        vars.insert("secret", secret.value.expose_secret());
        RenderedData(
            self.settings
                .keys
                .iter()
                .map(|(key, template)| {
                    (key.clone(), ByteString(template.render(&vars).into_bytes()))
                })
                .collect(),
        )
    }

    /// The object we apply: our keys, our annotations and, unless someone else's
    /// `managed-by` label is there, our label.
    fn desired(
        &self,
        secret: &SecretToStore<'_>,
        data: BTreeMap<String, ByteString>,
        with_label: bool,
    ) -> Secret {
        let mut annotations = BTreeMap::from([
            (
                ANNOTATION_APP_ID.to_string(),
                secret.app.client_id.to_string(),
            ),
            (ANNOTATION_KEY_ID.to_string(), secret.key_id.to_string()),
            (ANNOTATION_ROTATION.to_string(), secret.rotation.to_string()),
        ]);
        if let Some(expires) = secret.expires {
            annotations.insert(
                ANNOTATION_EXPIRES_AT.to_string(),
                expires.to_rfc3339_opts(SecondsFormat::Secs, true),
            );
        }
        let labels = with_label
            .then(|| BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())]));
        Secret {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                annotations: Some(annotations),
                labels,
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    fn refuse_unless_ours(&self, existing: &Secret) -> Result<(), StoreError> {
        match not_ours(existing) {
            Some(why) => Err(self.error(StoreErrorKind::Claimed, format!("not written: {why}"))),
            None => Ok(()),
        }
    }

    fn map_error(&self, verb: &str, err: kube::Error) -> StoreError {
        let (namespace, name) = (&self.settings.namespace, &self.settings.name);
        match err {
            kube::Error::Api(status) => {
                let said = format!("the Kubernetes API answered {} {}: {}", status.code, status.reason, status.message);
                let (kind, advice) = match status.code {
                    403 => (
                        StoreErrorKind::Forbidden,
                        format!(
                            "The rotator's ServiceAccount needs a Role in namespace {namespace} allowing get and patch on secrets with resourceNames [{name}] (and create on secrets while {name} does not exist yet), bound with a RoleBinding"
                        ),
                    ),
                    401 => (
                        StoreErrorKind::Forbidden,
                        "The API server did not accept the rotator's credentials: check the ServiceAccount token or kubeconfig".to_string(),
                    ),
                    404 if status.details.as_ref().is_some_and(|d| d.kind == "namespaces") => (
                        StoreErrorKind::NotFound,
                        format!("Namespace {namespace} does not exist: create it or fix the namespace setting"),
                    ),
                    404 => (StoreErrorKind::NotFound, format!("Check the namespace ({namespace}) and name ({name}) settings")),
                    409 => (
                        StoreErrorKind::Transient,
                        "Someone changed the Secret at the same moment; will try again".to_string(),
                    ),
                    422 | 400 => (
                        StoreErrorKind::Rejected,
                        "The API server refused the Secret as invalid; check the key names and templates".to_string(),
                    ),
                    429 => (StoreErrorKind::Transient, "The API server is throttling the rotator; will try again later".to_string()),
                    code if code >= 500 => (
                        StoreErrorKind::Transient,
                        "The API server had a temporary fault; will try again later".to_string(),
                    ),
                    _ => (StoreErrorKind::Rejected, "See the API server's message".to_string()),
                };
                self.error(kind, format!("could not {verb} the Secret: {said}. {advice}"))
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => self.error(
                StoreErrorKind::Transient,
                format!("could not reach the Kubernetes API to {verb} the Secret ({err}); will try again later"),
            ),
            other => self.error(
                StoreErrorKind::Rejected,
                format!("could not {verb} the Secret: {other}. Check the rotator's Kubernetes client configuration"),
            ),
        }
    }
}

/// Why an existing Secret is not ours to write, or `None` when it is: ours (any rotation's
/// annotations or our label; which rotation is the engine's check), empty, or adopted.
/// Messages name only metadata, never a value.
fn not_ours(secret: &Secret) -> Option<String> {
    let meta = &secret.metadata;
    if let Some(owner) = meta.owner_references.iter().flatten().find(|owner| owner.controller == Some(true)) {
        return Some(format!(
            "it is controlled by {} {} (its ownerReference), which would overwrite whatever the rotator writes; \
             name a Secret of its own in targets[].secret.name (the rotator creates it), and let {} keep this one",
            owner.kind, owner.name, owner.kind
        ));
    }
    let annotations = meta.annotations.as_ref();
    let annotated = |name: &str| annotations.is_some_and(|a| a.contains_key(name));
    let labelled_ours = meta.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)).is_some_and(|v| v == MANAGED_BY);
    let ours = labelled_ours || [ANNOTATION_ROTATION, ANNOTATION_APP_ID, ANNOTATION_KEY_ID].iter().any(|name| annotated(name));
    let empty = secret.data.as_ref().is_none_or(BTreeMap::is_empty) && secret.string_data.as_ref().is_none_or(BTreeMap::is_empty);
    let adopted = annotations.and_then(|a| a.get(ANNOTATION_ADOPT)).is_some_and(|v| v == "true");
    if ours || empty || adopted {
        return None;
    }
    let maker = match meta.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED_BY)) {
        Some(tool) => format!("it is managed by {tool} (label {LABEL_MANAGED_BY})"),
        None => "it was made by someone else (no entra-rotator annotations)".to_string(),
    };
    Some(format!(
        "{maker} and already holds keys, so the rotator does not take it over. If this Secret is meant for the rotator \
         (e.g. a Helm chart creates it for the rotator to fill), whoever manages it annotates it \
         {ANNOTATION_ADOPT}: \"true\"; otherwise name a Secret of its own in targets[].secret.name"
    ))
}

/// Whether another party's `managed-by` label is on the Secret (then we leave it alone).
fn foreign_managed_by(existing: Option<&Secret>) -> bool {
    existing
        .and_then(|s| s.metadata.labels.as_ref())
        .and_then(|labels| labels.get(LABEL_MANAGED_BY))
        .is_some_and(|value| value != MANAGED_BY)
}

#[async_trait]
impl SecretStore for KubernetesSecretStore {
    fn describe(&self) -> String {
        format!(
            "Kubernetes Secret {}/{}",
            self.settings.namespace, self.settings.name
        )
    }

    /// The value under our `{{secret}}` key, with the keyId and owner our annotations
    /// record. A Secret without that key but with our annotations (another rotation's,
    /// with other keys) is returned with an empty value and no keyId, so the engine sees
    /// whose it is and leaves it alone; the value is never used without a keyId.
    async fn read(&self) -> Result<Option<StoredSecret>, StoreError> {
        let Some(secret) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.map_error("read", e))?
        else {
            return Ok(None);
        };
        self.refuse_unless_ours(&secret)?;
        let annotation = |name: &str| secret.metadata.annotations.as_ref().and_then(|a| a.get(name)).cloned();
        let rotation = annotation(ANNOTATION_ROTATION);
        let app_id = annotation(ANNOTATION_APP_ID).and_then(|raw| Uuid::parse_str(&raw).ok());
        let Some(bytes) = secret
            .data
            .and_then(|mut data| data.remove(&self.secret_key))
            .map(|bytes| bytes.0)
        else {
            let owned = rotation.is_some() || app_id.is_some();
            return Ok(owned.then(|| StoredSecret { key_id: None, value: SecretString::from(String::new()), rotation, app_id }));
        };
        let value = String::from_utf8(bytes).map_err(|e| {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            self.error(
                StoreErrorKind::Rejected,
                format!("key {} does not hold UTF-8 text, so it cannot be a client secret; check who writes it", self.secret_key),
            )
        })?;
        let key_id = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_KEY_ID))
            .and_then(|raw| Uuid::parse_str(raw).ok());
        Ok(Some(StoredSecret {
            key_id,
            value: SecretString::from(value),
            rotation,
            app_id,
        }))
    }

    async fn write(&self, secret: &SecretToStore<'_>) -> Result<(), StoreError> {
        let existing = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.map_error("read", e))?;
        // Made by someone else since the engine read it: still not ours.
        if let Some(existing) = &existing {
            self.refuse_unless_ours(existing)?;
        }
        let with_label = !foreign_managed_by(existing.as_ref());
        let mut rendered = self.render(secret);
        let desired = self.desired(secret, std::mem::take(&mut rendered.0), with_label);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let result = self
            .api
            .patch(&self.settings.name, &params, &Patch::Apply(&desired))
            .await;
        // Wipe our copy of the rendered values (the request body is gone with the request).
        drop(RenderedData(desired.data.unwrap_or_default()));
        result.map(drop).map_err(|e| self.map_error("apply", e))
    }
}
