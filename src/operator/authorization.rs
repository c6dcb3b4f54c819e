//! Who may rotate what: the cluster-scoped `RotationPolicy` resource and the check every
//! reconcile (controller and CronJob pass) makes before any call to Graph.
//!
//! Without it the rotator is a confused deputy: whoever may create a ClientSecretRotation
//! in a watched namespace could name any application the rotator's identity owns, point
//! verification at a relay of theirs (which gets the new secret in AUTH LOGIN) or name
//! another team's Key Vault. Shaped like external-secrets' ClusterSecretStore `conditions`
//! (namespace names or a label selector say whom a policy serves) and cert-manager's
//! ClusterIssuer (an administrator's cluster-wide object that namespaces may use):
//!
//! - the rotator's own namespace (the one it watches, or runs in) may rotate any
//!   application and write any vault, as before policies existed;
//! - another namespace may only do what one RotationPolicy serving it allows, all of it
//!   (application, every vault, the relay) from the same policy;
//! - every namespace verifies only through Microsoft's relays (`smtp.azurecomm.net`,
//!   `smtp.office365.com`), the hosts the controller's `--allow-smtp-host` lists, or the
//!   hosts of a policy serving it.
//!
//! A denial names the field, the value and what an administrator changes; it never lists
//! what other policies allow (other teams' applications and vaults), only the names of
//! the policies that serve the rotation's namespace.

use super::crd::ClientSecretRotation;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::core::{Selector, SelectorExt};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const GUID_PATTERN: &str = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
const CLIENT_ID_PATTERN: &str = r"^(\*|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$";

/// The condition reason (and Event reason) of a rotation no policy allows.
pub const NOT_ALLOWED_BY_POLICY: &str = "NotAllowedByPolicy";

/// Relays run by Microsoft: a secret sent there reaches no one but Entra's own check.
pub const MICROSOFT_RELAYS: [&str; 2] = ["smtp.azurecomm.net", "smtp.office365.com"];
/// The ports those relays submit mail on (587 and 25 STARTTLS, 465 implicit TLS).
const MICROSOFT_RELAY_PORTS: [u16; 3] = [25, 465, 587];

/// Which namespaces may rotate which applications, write which Key Vaults and verify
/// through which SMTP relays. Cluster-scoped: only an administrator creates one.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "entra-rotator.io",
    version = "v1alpha1",
    kind = "RotationPolicy",
    plural = "rotationpolicies",
    shortname = "rotpol",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicySpec {
    /// The namespaces this policy serves: those matching any entry.
    #[schemars(length(min = 1, max = 32))]
    pub conditions: Vec<PolicyCondition>,
    /// The applications those namespaces may rotate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub applications: Vec<AllowedApplications>,
    /// SMTP relays they may verify through, besides smtp.azurecomm.net and
    /// smtp.office365.com (always allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub verification_hosts: Vec<AllowedRelayHost>,
    /// Key Vaults they may write, e.g. https://team-mail.vault.azure.net.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^https://[^/?#]+/?$")))]
    pub key_vaults: Vec<String>,
}

/// Namespaces by name or by labels (an administrator's labels, not a team's); set at least one.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("size(self.namespaces) > 0 || has(self.namespaceSelector)").message("each condition names namespaces or sets a namespaceSelector"))]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Applications of one tenant.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedApplications {
    /// Directory (tenant) id.
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub tenant_id: String,
    /// Application (client) ids, or "*" for every application of the tenant that the
    /// rotator's identity owns.
    #[schemars(length(min = 1, max = 256), inner(regex(pattern = CLIENT_ID_PATTERN)))]
    pub client_ids: Vec<String>,
}

/// One relay host; `ports` empty means any port.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRelayHost {
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u16>,
}

/// The RotationPolicy CustomResourceDefinition as YAML, as committed under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_yaml::to_string(&RotationPolicy::crd()).expect("a CRD always serializes");
    format!("# Generated by `entra-rotator crd --kind RotationPolicy` from src/operator/authorization.rs; do not edit.\n---\n{crd}")
}

/// A relay the controller's settings allow to every namespace (`--allow-smtp-host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedRelay {
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl AllowedRelay {
    /// `HOST` or `HOST:PORT`, e.g. `relay.contoso.example:587` (a bracketed IPv6 address
    /// takes a port too: `[::1]:2525`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let refuse = || format!("{text:?} is not HOST or HOST:PORT (e.g. relay.contoso.example:587)");
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                (host, Some(port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(refuse)?))
            }
            _ => (text, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(refuse());
        }
        Ok(Self { host: normal_host(host), port })
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        self.host == normal_host(host) && self.port.is_none_or(|p| p == port)
    }
}

impl std::fmt::Display for AllowedRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.port, self.host.contains(':')) {
            (Some(port), true) => write!(f, "[{}]:{port}", self.host),
            (Some(port), false) => write!(f, "{}:{port}", self.host),
            (None, _) => f.write_str(&self.host),
        }
    }
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `https://host[:port]` of a vault URL, the form two spellings of one vault share.
fn normal_vault(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let host = normal_host(url.host_str()?);
    Some(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// The controller's own part of the decision.
#[derive(Clone, Debug)]
pub struct Authorization {
    /// The namespace that may rotate without a policy: the one the rotator watches, or
    /// the one it runs in.
    pub home_namespace: String,
    /// Relays allowed to every namespace besides Microsoft's (`--allow-smtp-host`).
    pub allowed_relays: Vec<AllowedRelay>,
}

/// What one ClientSecretRotation asks for, with the field each value came from.
struct Asks<'a> {
    namespace: &'a str,
    tenant_id: &'a str,
    client_id: &'a str,
    /// (field, vault URL)
    vaults: Vec<(String, &'a str)>,
    relay: Option<(&'a str, u16)>,
    /// The field that names the relay, for messages.
    relay_field: &'static str,
}

impl<'a> Asks<'a> {
    fn of(rotation: &'a ClientSecretRotation) -> Self {
        let spec = &rotation.spec;
        Self {
            namespace: rotation.metadata.namespace.as_deref().unwrap_or_default(),
            tenant_id: &spec.application.tenant_id,
            client_id: &spec.application.client_id,
            vaults: spec
                .targets
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.key_vault.as_ref().map(|v| (format!("spec.targets[{i}].keyVault.vaultUrl"), v.vault_url.as_str())))
                .collect(),
            relay: spec.verification.relay(),
            relay_field: if spec.verification.smtp.is_some() { "spec.verification.smtp.host" } else { "spec.verification.exchangeOnline.host" },
        }
    }
}

/// Why a rotation may not run; the message names the field, the value and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub message: String,
}

impl RotationPolicy {
    fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    fn serves(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        serve_any(&self.spec.conditions, namespace, labels)
    }

    fn has_selector(&self) -> bool {
        self.spec.conditions.iter().any(|c| c.namespace_selector.is_some())
    }

    fn allows_application(&self, tenant_id: &str, client_id: &str) -> bool {
        self.spec.applications.iter().any(|apps| {
            apps.tenant_id.eq_ignore_ascii_case(tenant_id)
                && apps.client_ids.iter().any(|id| id == "*" || id.eq_ignore_ascii_case(client_id))
        })
    }

    fn allows_vault(&self, url: &str) -> bool {
        let Some(wanted) = normal_vault(url) else { return false };
        self.spec.key_vaults.iter().any(|allowed| normal_vault(allowed).as_ref() == Some(&wanted))
    }

    fn allows_relay(&self, host: &str, port: u16) -> bool {
        self.spec
            .verification_hosts
            .iter()
            .any(|allowed| normal_host(&allowed.host) == normal_host(host) && (allowed.ports.is_empty() || allowed.ports.contains(&port)))
    }
}

/// Whether any of `conditions` matches the namespace (by name, or its labels by selector);
/// shared with ClusterRotatorIdentity's conditions.
pub(crate) fn serve_any(conditions: &[PolicyCondition], namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    conditions.iter().any(|condition| {
        condition.namespaces.iter().any(|n| n == namespace)
            || condition.namespace_selector.as_ref().is_some_and(|selector| {
                // A selector that does not parse serves nobody (fail closed).
                Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
            })
    })
}

fn is_microsoft_relay(host: &str, port: u16) -> bool {
    MICROSOFT_RELAYS.contains(&normal_host(host).as_str()) && MICROSOFT_RELAY_PORTS.contains(&port)
}

fn names(policies: &[&RotationPolicy]) -> String {
    policies.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

impl Authorization {
    /// Whether the decision needs the cluster's policies (a rotation in the home
    /// namespace verifying through an allowed relay does not: no API call for it).
    fn needs_policies(&self, asks: &Asks<'_>) -> bool {
        asks.namespace != self.home_namespace || !self.relay_allowed_by_settings(asks)
    }

    fn relay_allowed_by_settings(&self, asks: &Asks<'_>) -> bool {
        asks.relay.is_none_or(|(host, port)| is_microsoft_relay(host, port) || self.allowed_relays.iter().any(|r| r.allows(host, port)))
    }

    /// Whether `rotation` may run, given the policies installed and the labels of its
    /// namespace: the whole decision, without the cluster.
    pub fn decide(&self, rotation: &ClientSecretRotation, policies: &[RotationPolicy], labels: &BTreeMap<String, String>) -> Result<(), Denial> {
        self.decide_asks(&Asks::of(rotation), policies, labels)
    }

    fn decide_asks(&self, asks: &Asks<'_>, policies: &[RotationPolicy], labels: &BTreeMap<String, String>) -> Result<(), Denial> {
        let namespace = asks.namespace;
        let home = namespace == self.home_namespace;
        let relay_by_settings = self.relay_allowed_by_settings(asks);
        if home && relay_by_settings {
            return Ok(());
        }
        let mut candidates: Vec<&RotationPolicy> = policies.iter().filter(|p| p.serves(namespace, labels)).collect();
        let deny = |message: String| Err(Denial { message: format!("{message}; nothing was minted, stored or sent") });
        if !home {
            if candidates.is_empty() {
                return deny(format!(
                    "namespace {namespace:?} may not rotate: it is not the rotator's own namespace ({:?}) and none of the {} RotationPolicy object(s) installed serves it. An administrator adds it to spec.conditions of a RotationPolicy (by name or namespaceSelector)",
                    self.home_namespace,
                    policies.len()
                ));
            }
            let serving = names(&candidates);
            candidates.retain(|p| p.allows_application(asks.tenant_id, asks.client_id));
            if candidates.is_empty() {
                return deny(format!(
                    "spec.application: application {} of tenant {} is not allowed for namespace {namespace:?} by the RotationPolicy object(s) serving it ({serving}). An administrator adds the clientId (or \"*\") for that tenantId to spec.applications of one of them",
                    asks.client_id, asks.tenant_id
                ));
            }
            for (field, vault) in &asks.vaults {
                let allowing = names(&candidates);
                candidates.retain(|p| p.allows_vault(vault));
                if candidates.is_empty() {
                    return deny(format!(
                        "{field}: Key Vault {vault} is not allowed for namespace {namespace:?} with this application by the RotationPolicy object(s) allowing the application ({allowing}). An administrator adds the vault URL to spec.keyVaults of one of them"
                    ));
                }
            }
        }
        if let (false, Some((host, port))) = (relay_by_settings, asks.relay) {
            let considered = if candidates.is_empty() { "no RotationPolicy serves it".to_string() } else { format!("considered: {}", names(&candidates)) };
            candidates.retain(|p| p.allows_relay(host, port));
            if candidates.is_empty() {
                return deny(format!(
                    "{}: the SMTP relay {host}:{port} is not allowed for namespace {namespace:?} ({considered}): only {} (ports 25, 465, 587) are, and what an administrator allows in spec.verificationHosts of a RotationPolicy serving the namespace, or for every namespace with the controller's --allow-smtp-host (chart value verification.allowedHosts). A relay receives the new secret, so it must be one you trust",
                    asks.relay_field,
                    MICROSOFT_RELAYS.join(" and ")
                ));
            }
        }
        Ok(())
    }
}

/// Decides whether `rotation` may run, reading the RotationPolicies (and, for a selector,
/// its namespace's labels) only when the decision needs them. A cluster without the
/// RotationPolicy CRD has no policies; any other failure to read them denies (fail closed).
pub async fn authorize(client: &kube::Client, authorization: &Authorization, rotation: &ClientSecretRotation) -> Result<(), Denial> {
    let asks = Asks::of(rotation);
    if !authorization.needs_policies(&asks) {
        return Ok(());
    }
    let unreadable = |what: &str, error: kube::Error| Denial {
        // The API server's own words (e.g. `403 Forbidden: rotationpolicies... is forbidden`).
        message: format!(
            "cannot read {what} to decide whether namespace {:?} may rotate this application ({error}): the rotator needs get and list on rotationpolicies.entra-rotator.io and get on namespaces (the chart's ClusterRole <release>-entra-rotator-policies grants them); nothing was minted, stored or sent",
            asks.namespace,
            error = match &error {
                kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
                other => other.to_string(),
            },
        ),
    };
    let policies = match Api::<RotationPolicy>::all(client.clone()).list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(error) => return Err(unreadable("the RotationPolicies", error)),
    };
    let labels = if policies.iter().any(RotationPolicy::has_selector) {
        match Api::<Namespace>::all(client.clone()).get(asks.namespace).await {
            Ok(namespace) => namespace.metadata.labels.unwrap_or_default(),
            Err(error) => return Err(unreadable(&format!("the labels of namespace {:?}", asks.namespace), error)),
        }
    } else {
        BTreeMap::new()
    };
    authorization.decide_asks(&asks, &policies, &labels)
}

/// Which of `rotations` [`authorize`] allows, decided together for a pass's batched drift
/// checks: the policies listed once and each namespace's labels read once, instead of once
/// per rotation. A rotation this cannot decide (the cluster refused a read) counts as not
/// allowed here; its own reconcile decides it again and says why.
pub async fn authorized_together(client: &kube::Client, authorization: &Authorization, rotations: &[&ClientSecretRotation]) -> Vec<bool> {
    let asks: Vec<Asks<'_>> = rotations.iter().map(|rotation| Asks::of(rotation)).collect();
    if !asks.iter().any(|asks| authorization.needs_policies(asks)) {
        return vec![true; rotations.len()];
    }
    let policies = match Api::<RotationPolicy>::all(client.clone()).list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(_) => return asks.iter().map(|asks| !authorization.needs_policies(asks)).collect(),
    };
    let mut labels: BTreeMap<&str, Option<BTreeMap<String, String>>> = BTreeMap::new();
    let mut allowed = Vec::with_capacity(asks.len());
    for asks in &asks {
        if !authorization.needs_policies(asks) {
            allowed.push(true);
            continue;
        }
        if !labels.contains_key(asks.namespace) {
            let read = if policies.iter().any(RotationPolicy::has_selector) {
                Api::<Namespace>::all(client.clone()).get(asks.namespace).await.ok().map(|n| n.metadata.labels.unwrap_or_default())
            } else {
                Some(BTreeMap::new())
            };
            labels.insert(asks.namespace, read);
        }
        allowed.push(labels[asks.namespace].as_ref().is_some_and(|labels| authorization.decide_asks(asks, &policies, labels).is_ok()));
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TENANT: &str = "11111111-1111-1111-1111-111111111111";
    const APP: &str = "22222222-2222-2222-2222-222222222222";
    const OTHER_APP: &str = "33333333-3333-3333-3333-333333333333";

    fn rotation(namespace: &str, client_id: &str, vault: &str, host: &str, port: u16) -> ClientSecretRotation {
        serde_json::from_value(json!({
            "apiVersion": "entra-rotator.io/v1alpha1", "kind": "ClientSecretRotation",
            "metadata": { "name": "mail", "namespace": namespace },
            "spec": {
                "application": { "tenantId": TENANT, "clientId": client_id },
                "targets": [ { "secret": { "name": "smtp", "keys": { "P": "{{secret}}" } } }, { "keyVault": { "vaultUrl": vault, "secretName": "smtp" } } ],
                "verification": { "smtp": { "host": host, "port": port, "username": "u", "from": "a@b.c", "to": "d@e.f" } }
            }
        }))
        .unwrap()
    }

    fn policy(name: &str, spec: serde_json::Value) -> RotationPolicy {
        serde_json::from_value(json!({ "apiVersion": "entra-rotator.io/v1alpha1", "kind": "RotationPolicy", "metadata": { "name": name }, "spec": spec })).unwrap()
    }

    fn team_a() -> RotationPolicy {
        policy("team-a", json!({
            "conditions": [ { "namespaces": ["team-a"] } ],
            "applications": [ { "tenantId": TENANT, "clientIds": [APP] } ],
            "keyVaults": ["https://team-a.vault.azure.net"],
        }))
    }

    fn authorization() -> Authorization {
        Authorization { home_namespace: "rotator".into(), allowed_relays: vec![] }
    }

    fn decide(rotation: &ClientSecretRotation, policies: &[RotationPolicy], labels: &[(&str, &str)]) -> Result<(), String> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        authorization().decide(rotation, policies, &labels).map_err(|d| d.message)
    }

    const ACS: &str = "smtp.azurecomm.net";
    const VAULT_A: &str = "https://team-a.vault.azure.net/";

    #[test]
    fn the_home_namespace_needs_no_policy_and_asks_for_none() {
        let home = rotation("rotator", APP, "https://any.vault.azure.net", ACS, 587);
        assert!(!authorization().needs_policies(&Asks::of(&home)));
        assert_eq!(decide(&home, &[], &[]), Ok(()));
    }

    #[test]
    fn another_namespace_without_a_policy_is_told_which_resource_to_change() {
        let denied = decide(&rotation("team-a", APP, VAULT_A, ACS, 587), &[], &[]).unwrap_err();
        assert!(denied.starts_with("namespace \"team-a\" may not rotate: it is not the rotator's own namespace (\"rotator\") and none of the 0 RotationPolicy object(s) installed serves it"), "{denied}");
        assert!(denied.contains("spec.conditions"), "{denied}");
    }

    #[test]
    fn a_policy_allows_its_namespace_its_application_and_its_vault() {
        assert_eq!(decide(&rotation("team-a", APP, VAULT_A, "SMTP.AzureComm.net.", 25), &[team_a()], &[]), Ok(()));
    }

    #[test]
    fn another_application_is_refused_naming_the_field_the_value_and_the_serving_policy_only() {
        let other = policy("team-b", json!({
            "conditions": [ { "namespaces": ["team-b"] } ],
            "applications": [ { "tenantId": TENANT, "clientIds": [OTHER_APP] } ],
            "keyVaults": ["https://team-b.vault.azure.net"],
        }));
        let denied = decide(&rotation("team-a", OTHER_APP, VAULT_A, ACS, 587), &[team_a(), other], &[]).unwrap_err();
        assert!(denied.starts_with(&format!("spec.application: application {OTHER_APP} of tenant {TENANT} is not allowed for namespace \"team-a\" by the RotationPolicy object(s) serving it (team-a)")), "{denied}");
        assert!(!denied.contains("team-b"), "another team's policy is not named: {denied}");
    }

    #[test]
    fn a_foreign_vault_is_refused_naming_the_target() {
        let denied = decide(&rotation("team-a", APP, "https://team-b.vault.azure.net", ACS, 587), &[team_a()], &[]).unwrap_err();
        assert!(denied.starts_with("spec.targets[1].keyVault.vaultUrl: Key Vault https://team-b.vault.azure.net is not allowed"), "{denied}");
    }

    #[test]
    fn an_exchange_online_relay_is_checked_like_any_relay_and_named_by_its_field() {
        let mut exchange = rotation("rotator", APP, VAULT_A, ACS, 587);
        exchange.spec.verification = serde_json::from_value(json!({ "exchangeOnline": {
            "host": "relay.attacker.example", "mailbox": "a@b.c", "to": "d@e.f" } }))
        .unwrap();
        let denied = decide(&exchange, &[], &[]).unwrap_err();
        assert!(denied.starts_with("spec.verification.exchangeOnline.host: the SMTP relay relay.attacker.example:587 is not allowed"), "{denied}");
    }

    #[test]
    fn a_relay_other_than_microsofts_needs_an_explicit_allowance_even_at_home() {
        let home = rotation("rotator", APP, VAULT_A, "relay.attacker.example", 587);
        let denied = decide(&home, &[], &[]).unwrap_err();
        assert!(denied.starts_with("spec.verification.smtp.host: the SMTP relay relay.attacker.example:587 is not allowed for namespace \"rotator\" (no RotationPolicy serves it)"), "{denied}");
        assert!(denied.contains("--allow-smtp-host"), "{denied}");
        // Microsoft's relay host on another port is another server.
        assert!(decide(&rotation("rotator", APP, VAULT_A, ACS, 2525), &[], &[]).is_err());

        let settings = Authorization { allowed_relays: vec![AllowedRelay::parse("Relay.Attacker.example:587").unwrap()], ..authorization() };
        assert_eq!(settings.decide(&home, &[], &BTreeMap::new()), Ok(()));
        let other_port = rotation("rotator", APP, VAULT_A, "relay.attacker.example", 25);
        assert!(settings.decide(&other_port, &[], &BTreeMap::new()).is_err());
    }

    #[test]
    fn a_policy_allows_a_relay_to_the_namespaces_it_serves() {
        let mut with_relay = team_a();
        with_relay.spec.verification_hosts = vec![AllowedRelayHost { host: "mail.team-a.example".into(), ports: vec![587] }];
        assert_eq!(decide(&rotation("team-a", APP, VAULT_A, "mail.team-a.example", 587), &[with_relay.clone()], &[]), Ok(()));
        let denied = decide(&rotation("team-a", APP, VAULT_A, "mail.team-a.example", 2525), &[with_relay], &[]).unwrap_err();
        assert!(denied.contains("the SMTP relay mail.team-a.example:2525 is not allowed for namespace \"team-a\" (considered: team-a)"), "{denied}");
    }

    #[test]
    fn application_vault_and_relay_come_from_one_policy() {
        // The vault policy serves the namespace but does not allow the application.
        let vault_only = policy("vaults", json!({
            "conditions": [ { "namespaces": ["team-a"] } ],
            "applications": [ { "tenantId": TENANT, "clientIds": [OTHER_APP] } ],
            "keyVaults": ["https://shared.vault.azure.net"],
        }));
        let denied = decide(&rotation("team-a", APP, "https://shared.vault.azure.net", ACS, 587), &[team_a(), vault_only], &[]).unwrap_err();
        assert!(denied.contains("by the RotationPolicy object(s) allowing the application (team-a)"), "{denied}");
    }

    #[test]
    fn a_namespace_selector_and_a_tenant_wildcard() {
        let by_label = policy("mail-teams", json!({
            "conditions": [ { "namespaceSelector": { "matchExpressions": [ { "key": "rotator.example/team", "operator": "In", "values": ["mail"] } ] } } ],
            "applications": [ { "tenantId": TENANT.to_uppercase(), "clientIds": ["*"] } ],
            "keyVaults": [VAULT_A],
        }));
        let asks = rotation("anyone", OTHER_APP, "https://TEAM-A.vault.azure.net", ACS, 587);
        let policies = [by_label];
        assert_eq!(decide(&asks, &policies, &[("rotator.example/team", "mail")]), Ok(()));
        assert!(decide(&asks, &policies, &[("rotator.example/team", "web")]).is_err());
        assert!(decide(&asks, &policies, &[]).is_err());
    }

    #[test]
    fn allowed_relays_parse_host_and_port() {
        assert_eq!(AllowedRelay::parse("localhost").unwrap().to_string(), "localhost");
        assert_eq!(AllowedRelay::parse("relay.example:2525").unwrap().to_string(), "relay.example:2525");
        assert_eq!(AllowedRelay::parse("[::1]:25").unwrap().to_string(), "[::1]:25");
        for bad in ["", "relay:0", "relay:x", "smtp://relay", ":25"] {
            assert!(AllowedRelay::parse(bad).is_err(), "{bad:?}");
        }
    }
}
