//! Identities per team or tenant: how the rotator signs in to Entra for one rotation, named
//! by its `spec.identityRef`. Without a reference the controller's own identity signs in,
//! as before identities existed.
//!
//! Shaped like cert-manager's Issuer/ClusterIssuer and external-secrets'
//! SecretStore/ClusterSecretStore, so that nobody signs in with credentials their namespace
//! was not given:
//!
//! - a `RotatorIdentity` (namespaced) serves only rotations of its own namespace. It signs in
//!   with a client secret from a Secret of that namespace, or with workload identity through
//!   a ServiceAccount of that namespace: the rotator asks the TokenRequest API for that
//!   ServiceAccount's token (audience `api://AzureADTokenExchange`) and presents it to Entra
//!   (cert-manager's `serviceAccountRef`), so a team can only use Entra identities federated
//!   with its own ServiceAccounts. It may not use managed identity: that is the node's.
//! - a `ClusterRotatorIdentity` (cluster-scoped, an administrator's) serves the rotator's
//!   own namespace and the namespaces its own `spec.conditions` name. It signs in with a
//!   client secret from a Secret in the rotator's namespace (cert-manager's cluster resource
//!   namespace), with workload identity through the rotator's own projected token, or with
//!   managed identity.
//!
//! The cluster identity lists whom it serves itself (ClusterSecretStore's `conditions`)
//! rather than through RotationPolicy: the administrator sees whom an identity serves in the
//! identity, and a policy written before the identity existed grants nothing new. The
//! RotationPolicy still decides which applications, vaults and relays a namespace may use
//! (checked first), whatever identity signs in.
//!
//! Everything here runs before any call to Graph. A refusal names the identity and what is
//! wrong; a secret value never reaches a message.

use super::authorization::{serve_any, Denial, PolicyCondition};
use super::crd::ClientSecretRotation;
use crate::adapters::identity::{RotatorCredential, ServiceAccountToken};
use crate::domain::SecretString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::Api;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const GUID_PATTERN: &str = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// The condition reason (and Event reason) of a rotation whose identity cannot be used.
pub const IDENTITY_REFUSED: &str = "IdentityRefused";

/// How rotations of one namespace sign in to Entra.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "entra-rotator.io",
    version = "v1alpha1",
    kind = "RotatorIdentity",
    plural = "rotatoridentities",
    shortname = "rotid",
    namespaced,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[x_kube(
    validation = Rule::new("!has(self.managedIdentity)").message("a RotatorIdentity may not use managed identity (the node's identity, shared by every namespace): an administrator creates a ClusterRotatorIdentity for it"),
    validation = Rule::new("has(self.workloadIdentity) != has(self.clientSecret)").message("set exactly one of workloadIdentity and clientSecret")
)]
#[serde(rename_all = "camelCase")]
pub struct RotatorIdentitySpec {
    /// Workload identity through a ServiceAccount of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<NamespacedWorkloadIdentity>,
    /// An app registration's client secret, from a Secret of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretSignIn>,
    /// Not allowed here (refused at admission and by the controller): only a
    /// ClusterRotatorIdentity may use the node's managed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentitySignIn>,
}

/// How rotations of the namespaces an administrator chooses sign in to Entra.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "entra-rotator.io",
    version = "v1alpha1",
    kind = "ClusterRotatorIdentity",
    plural = "clusterrotatoridentities",
    shortname = "crotid",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[x_kube(validation = Rule::new("(has(self.workloadIdentity) ? 1 : 0) + (has(self.clientSecret) ? 1 : 0) + (has(self.managedIdentity) ? 1 : 0) == 1").message("set exactly one of workloadIdentity, clientSecret and managedIdentity"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterRotatorIdentitySpec {
    /// The namespaces that may use this identity, besides the rotator's own: those
    /// matching any entry (names, or a namespaceSelector on labels an administrator sets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub conditions: Vec<PolicyCondition>,
    /// Workload identity with the rotator's own projected service-account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<ClusterWorkloadIdentity>,
    /// An app registration's client secret, from a Secret in the rotator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretSignIn>,
    /// The managed identity of the node or host the rotator runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentitySignIn>,
}

/// An Entra identity federated with a ServiceAccount of the identity's namespace
/// (subject `system:serviceaccount:<namespace>:<name>`, audience `api://AzureADTokenExchange`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedWorkloadIdentity {
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub tenant_id: String,
    /// The client id of the managed identity or app registration federated with the ServiceAccount.
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub client_id: String,
    /// The ServiceAccount (in this namespace) whose token is presented.
    pub service_account_ref: ServiceAccountRef,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An Entra identity federated with the rotator's own ServiceAccount.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterWorkloadIdentity {
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub tenant_id: String,
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub client_id: String,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretSignIn {
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub tenant_id: String,
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub client_id: String,
    /// The key of a Secret holding the client secret (in the identity's namespace; for a
    /// ClusterRotatorIdentity, in the rotator's).
    pub secret_ref: SecretKeyRef,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentitySignIn {
    /// A user-assigned identity's client id; without it, the system-assigned identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub client_id: Option<String>,
}

/// Which identity a ClientSecretRotation signs in with.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRef {
    /// RotatorIdentity (default; in the rotation's namespace) or ClusterRotatorIdentity.
    #[serde(default)]
    pub kind: IdentityKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdentityKind {
    #[default]
    RotatorIdentity,
    ClusterRotatorIdentity,
}

/// The CustomResourceDefinition of one identity kind as YAML, as committed under `crds/`.
pub fn crd_yaml(kind: IdentityKind) -> String {
    use kube::CustomResourceExt;
    let (crd, name) = match kind {
        IdentityKind::RotatorIdentity => (RotatorIdentity::crd(), "RotatorIdentity"),
        IdentityKind::ClusterRotatorIdentity => (ClusterRotatorIdentity::crd(), "ClusterRotatorIdentity"),
    };
    let crd = serde_yaml::to_string(&crd).expect("a CRD always serializes");
    format!("# Generated by `entra-rotator crd --kind {name}` from src/operator/identity.rs; do not edit.\n---\n{crd}")
}

/// An identity ready to sign in: what it is, which version of it (and of its Secret) the
/// credential was built from, and the credential.
#[derive(Debug)]
pub struct ResolvedIdentity {
    /// `RotatorIdentity team-a/mail`, for messages and as the cache key.
    pub name: String,
    /// Changes whenever the identity or its Secret does, so the cached clients are rebuilt.
    pub version: String,
    pub credential: RotatorCredential,
}

fn refused(message: String) -> Denial {
    Denial { message: format!("{message}; nothing was minted, stored or sent") }
}

fn read_failure(what: &str, permission: &str, error: &kube::Error) -> Denial {
    let said = match error {
        kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
        other => other.to_string(),
    };
    refused(format!("cannot read {what} ({said}): the rotator needs {permission}"))
}

/// Finds the identity `rotation` names and builds its credential, or says why it may not be
/// used. `None`: no reference, the controller's own identity signs in. `home_namespace` is
/// the rotator's own (where a cluster identity's Secret is, and served by every one).
pub async fn resolve(client: &kube::Client, home_namespace: &str, rotation: &ClientSecretRotation) -> Result<Option<ResolvedIdentity>, Denial> {
    let Some(reference) = &rotation.spec.identity_ref else { return Ok(None) };
    let namespace = rotation.metadata.namespace.as_deref().unwrap_or_default();
    match reference.kind {
        IdentityKind::RotatorIdentity => resolve_namespaced(client, namespace, &reference.name).await.map(Some),
        IdentityKind::ClusterRotatorIdentity => resolve_cluster(client, home_namespace, namespace, &reference.name).await.map(Some),
    }
}

async fn resolve_namespaced(client: &kube::Client, namespace: &str, name: &str) -> Result<ResolvedIdentity, Denial> {
    let described = format!("RotatorIdentity {namespace}/{name}");
    let identity = match Api::<RotatorIdentity>::namespaced(client.clone(), namespace).get_opt(name).await {
        Ok(Some(identity)) => identity,
        // Whether one of that name exists in another namespace is not this namespace's business.
        Ok(None) => {
            return Err(refused(format!(
                "spec.identityRef: {described} does not exist. A RotatorIdentity serves only rotations of its own namespace: create one in {namespace:?}, or ask an administrator for a ClusterRotatorIdentity that serves it (kind: ClusterRotatorIdentity)"
            )))
        }
        Err(error) => return Err(read_failure(&described, "get on rotatoridentities.entra-rotator.io in that namespace", &error)),
    };
    let version = identity.metadata.resource_version.clone().unwrap_or_default();
    let spec = &identity.spec;
    if spec.managed_identity.is_some() {
        return Err(refused(format!(
            "{described}: spec.managedIdentity is not allowed in a namespaced identity: the managed identity is the node's, shared by every namespace. An administrator creates a ClusterRotatorIdentity with managedIdentity that serves {namespace:?}"
        )));
    }
    match (&spec.workload_identity, &spec.client_secret) {
        (Some(workload), None) => {
            // Not read here: the rotator may only create tokens of ServiceAccounts, and the
            // TokenRequest's 404 says the same when the account is missing.
            let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
            let account = &workload.service_account_ref.name;
            Ok(ResolvedIdentity {
                name: described,
                version,
                credential: RotatorCredential::ServiceAccountToken {
                    tenant_id: workload.tenant_id.clone(),
                    client_id: workload.client_id.clone(),
                    token: Box::new(ServiceAccountToken::new(accounts, namespace, account)),
                },
            })
        }
        (None, Some(secret)) => {
            let (value, secret_version) = secret_value(client, &described, namespace, secret).await?;
            Ok(ResolvedIdentity {
                name: described,
                version: format!("{version}/{secret_version}"),
                credential: RotatorCredential::ClientSecret {
                    tenant_id: secret.tenant_id.clone(),
                    client_id: secret.client_id.clone(),
                    secret: value,
                },
            })
        }
        _ => Err(refused(format!("{described}: set exactly one of spec.workloadIdentity and spec.clientSecret"))),
    }
}

async fn resolve_cluster(client: &kube::Client, home_namespace: &str, namespace: &str, name: &str) -> Result<ResolvedIdentity, Denial> {
    let described = format!("ClusterRotatorIdentity {name}");
    let identity = match Api::<ClusterRotatorIdentity>::all(client.clone()).get_opt(name).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return Err(refused(format!("spec.identityRef: {described} does not exist; an administrator creates it"))),
        Err(error) => return Err(read_failure(&described, "get on clusterrotatoridentities.entra-rotator.io", &error)),
    };
    let spec = &identity.spec;
    if namespace != home_namespace {
        let labels = if spec.conditions.iter().any(|c| c.namespace_selector.is_some()) {
            match Api::<Namespace>::all(client.clone()).get(namespace).await {
                Ok(found) => found.metadata.labels.unwrap_or_default(),
                Err(error) => return Err(read_failure(&format!("the labels of namespace {namespace:?}"), "get on namespaces", &error)),
            }
        } else {
            BTreeMap::new()
        };
        if !serve_any(&spec.conditions, namespace, &labels) {
            return Err(refused(format!(
                "spec.identityRef: {described} does not serve namespace {namespace:?}. An administrator adds the namespace to the identity's spec.conditions (by name or namespaceSelector)"
            )));
        }
    }
    let version = identity.metadata.resource_version.clone().unwrap_or_default();
    let credential = match (&spec.workload_identity, &spec.client_secret, &spec.managed_identity) {
        (Some(workload), None, None) => {
            let token_file = std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").filter(|f| !f.is_empty()).ok_or_else(|| {
                refused(format!(
                    "{described}: spec.workloadIdentity needs the rotator's projected service-account token, but AZURE_FEDERATED_TOKEN_FILE is not set: give the rotator's pod the azure.workload.identity/use: \"true\" label (the chart's azure.workloadIdentity)"
                ))
            })?;
            RotatorCredential::WorkloadIdentity {
                tenant_id: workload.tenant_id.clone(),
                client_id: workload.client_id.clone(),
                token_file: token_file.into(),
            }
        }
        (None, Some(secret), None) => {
            let (value, secret_version) = secret_value(client, &described, home_namespace, secret).await?;
            return Ok(ResolvedIdentity {
                name: described,
                version: format!("{version}/{secret_version}"),
                credential: RotatorCredential::ClientSecret {
                    tenant_id: secret.tenant_id.clone(),
                    client_id: secret.client_id.clone(),
                    secret: value,
                },
            });
        }
        (None, None, Some(managed)) => RotatorCredential::ManagedIdentity { client_id: managed.client_id.clone() },
        _ => return Err(refused(format!("{described}: set exactly one of spec.workloadIdentity, spec.clientSecret and spec.managedIdentity"))),
    };
    Ok(ResolvedIdentity { name: described, version, credential })
}

/// The client secret an identity's `secretRef` names, and the Secret's resourceVersion.
async fn secret_value(client: &kube::Client, described: &str, namespace: &str, secret: &ClientSecretSignIn) -> Result<(SecretString, String), Denial> {
    let reference = &secret.secret_ref;
    let at = format!("{described}: spec.clientSecret.secretRef: Secret {namespace}/{}", reference.name);
    let found = match Api::<Secret>::namespaced(client.clone(), namespace).get_opt(&reference.name).await {
        Ok(Some(found)) => found,
        Ok(None) => return Err(refused(format!("{at} does not exist; create it with the client secret of application {} under key {}", secret.client_id, reference.key))),
        Err(error) => return Err(read_failure(&format!("Secret {namespace}/{}", reference.name), "get on that Secret", &error)),
    };
    let version = found.metadata.resource_version.clone().unwrap_or_default();
    let mut bytes = found.data.and_then(|mut data| data.remove(&reference.key)).map(|bytes| bytes.0).unwrap_or_default();
    let value = std::str::from_utf8(&bytes).ok().map(str::trim).filter(|text| !text.is_empty()).map(|text| SecretString::from(text.to_string()));
    zeroize::Zeroize::zeroize(&mut bytes);
    match value {
        Some(value) => Ok((value, version)),
        None => Err(refused(format!("{at} has no key {:?} holding the client secret (missing, empty or not UTF-8): put the client secret of application {} there", reference.key, secret.client_id))),
    }
}
