//! Workload identity federation, both ends: a Kubernetes cluster's service-account token
//! issuer (the API server signing the projected token the Azure workload identity webhook
//! mounts), and the checks Entra makes of such a token when a client presents it as its
//! `client_assertion`, with the `AADSTS` codes Entra answers for each mismatch.
//!
//! Entra fetches the issuer's signing keys through the issuer's OpenID discovery document;
//! here the tenant is told the issuer's public key directly ([`Tenant::trust_issuer`]), which
//! is what that discovery yields. A token is a JWS with RS256, as the API server signs them.
//! The JWT handling is a few lines of base64 and JSON over aws-lc-rs (already the stand-ins'
//! crypto), so no JWT crate is added for it.

use super::tenant::Tenant;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The audience Entra expects in a federated token (`api://AzureADTokenExchange`).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The `client_assertion_type` of a JWT client assertion (RFC 7523).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A federated identity credential on an application or managed identity: Entra trusts
/// tokens of `issuer` for `subject` with one of `audiences`. Matched case-sensitively.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

impl FederatedCredential {
    /// The credential an administrator creates for a Kubernetes service account
    /// (`az identity federated-credential create --subject system:serviceaccount:NS:SA`).
    pub fn for_service_account(issuer: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            name: format!("{namespace}-{service_account}"),
            issuer: issuer.to_string(),
            subject: service_account_subject(namespace, service_account),
            audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_string()],
        }
    }
}

/// The subject claim of a service account's token.
pub fn service_account_subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// A cluster's service-account token issuer: signs projected tokens as the API server does.
#[derive(Clone)]
pub struct ServiceAccountIssuer {
    issuer: String,
    key: Arc<KeyPair>,
    key_id: String,
}

impl std::fmt::Debug for ServiceAccountIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountIssuer").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl ServiceAccountIssuer {
    /// A new issuer with a fresh RSA key, e.g. `https://oidc.prod-aks.azure.com/<id>/`.
    pub fn new(issuer: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("cannot generate an RSA key"))?;
        Ok(Self { issuer: issuer.to_string(), key: Arc::new(key), key_id: Uuid::new_v4().simple().to_string() })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public key (DER `RSAPublicKey`) the issuer's discovery document would publish.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// A projected service-account token for `audience`, valid from `issued_at` for
    /// `lifetime`, with the claims the API server writes.
    pub fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        issued_at: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> anyhow::Result<String> {
        let header = json!({ "alg": "RS256", "kid": self.key_id });
        let claims = json!({
            "aud": [audience],
            "exp": (issued_at + lifetime).timestamp(),
            "iat": issued_at.timestamp(),
            "nbf": issued_at.timestamp(),
            "iss": self.issuer,
            "sub": service_account_subject(namespace, service_account),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": { "name": service_account, "uid": Uuid::new_v4() },
            },
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signed.as_bytes(), &mut signature)
            .map_err(|_| anyhow::anyhow!("cannot sign the token"))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// Why Entra refused a client assertion: the AADSTS code and its description.
#[derive(Debug)]
pub struct AssertionRefusal {
    pub code: u32,
    pub description: String,
}

impl AssertionRefusal {
    fn new(code: u32, description: String) -> Self {
        Self { code, description }
    }
}

/// What Entra reads of a federated token.
struct Assertion {
    issuer: String,
    subject: String,
    audiences: Vec<String>,
    not_before: i64,
    expires: i64,
    signed: String,
    signature: Vec<u8>,
}

fn parse(assertion: &str) -> Option<Assertion> {
    let mut parts = assertion.split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
    let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
    if header["alg"] != "RS256" {
        return None;
    }
    let claims: Value = serde_json::from_slice(&decode(claims)?).ok()?;
    let text = |name: &str| claims[name].as_str().map(str::to_string);
    let audiences = match &claims["aud"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many.iter().filter_map(|a| a.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    let (signed, _) = assertion.rsplit_once('.')?;
    Some(Assertion {
        issuer: text("iss")?,
        subject: text("sub")?,
        audiences,
        not_before: claims["nbf"].as_i64().unwrap_or(i64::MIN),
        expires: claims["exp"].as_i64()?,
        signed: signed.to_string(),
        signature: decode(signature)?,
    })
}

const CHECK_ADVICE: &str = "Check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation";

/// Checks `assertion` for the application `client_id` the way Entra does for workload
/// identity federation: a federated credential must match issuer, subject and audience
/// exactly, the issuer's key must verify the signature, and the token must be current.
pub fn check_assertion(tenant: &Tenant, client_id: Uuid, assertion: &str, now: DateTime<Utc>) -> Result<(), AssertionRefusal> {
    let Some(assertion) = parse(assertion) else {
        return Err(AssertionRefusal::new(50027, "AADSTS50027: JWT token is invalid or malformed.".into()));
    };
    let credentials = tenant.federated_credentials(client_id);
    let (issuer, subject) = (&assertion.issuer, &assertion.subject);
    if credentials.is_empty() {
        let audience = assertion.audiences.join(",");
        return Err(AssertionRefusal::new(
            70021,
            format!("AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. Assertion Audience: '{audience}'. {CHECK_ADVICE}"),
        ));
    }
    let same_issuer: Vec<&FederatedCredential> = credentials.iter().filter(|c| c.issuer == *issuer).collect();
    if same_issuer.is_empty() {
        return Err(AssertionRefusal::new(
            700211,
            format!("AADSTS700211: No matching federated identity record found for presented assertion issuer '{issuer}'. {CHECK_ADVICE}"),
        ));
    }
    let same_subject: Vec<&&FederatedCredential> = same_issuer.iter().filter(|c| c.subject == *subject).collect();
    if same_subject.is_empty() {
        return Err(AssertionRefusal::new(
            700213,
            format!("AADSTS700213: No matching federated identity record found for presented assertion subject '{subject}'. {CHECK_ADVICE}"),
        ));
    }
    if !same_subject.iter().any(|c| c.audiences.iter().any(|a| assertion.audiences.contains(a))) {
        let audience = assertion.audiences.join(",");
        return Err(AssertionRefusal::new(
            700212,
            format!("AADSTS700212: No matching federated identity record found for presented assertion audience '{audience}'. {CHECK_ADVICE}"),
        ));
    }
    let Some(key) = tenant.issuer_key(issuer) else {
        return Err(AssertionRefusal::new(
            50166,
            format!("AADSTS50166: Request to External OIDC endpoint failed. The issuer '{issuer}' publishes no discovery document Entra can reach."),
        ));
    };
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key).verify(assertion.signed.as_bytes(), &assertion.signature).is_err() {
        return Err(AssertionRefusal::new(700027, "AADSTS700027: Client assertion failed signature validation.".into()));
    }
    let now_seconds = now.timestamp();
    if now_seconds < assertion.not_before || now_seconds >= assertion.expires {
        let at = |seconds: i64| DateTime::from_timestamp(seconds, 0).map(|t| t.to_rfc2822()).unwrap_or_default();
        return Err(AssertionRefusal::new(
            700024,
            format!(
                "AADSTS700024: Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}.",
                at(now_seconds),
                at(assertion.not_before),
                at(assertion.expires)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://oidc.cluster.example/abc/";

    fn tenant_trusting(issuer: &ServiceAccountIssuer, credential: FederatedCredential) -> (Tenant, Uuid) {
        let tenant = Tenant::new();
        let app = tenant.register_app("rotator");
        tenant.add_federated_credential(app.app_id, credential);
        tenant.trust_issuer(issuer.issuer(), issuer.public_key());
        (tenant, app.app_id)
    }

    fn code(result: Result<(), AssertionRefusal>) -> Option<u32> {
        result.err().map(|refusal| refusal.code)
    }

    #[test]
    fn a_token_of_the_federated_service_account_is_accepted_and_each_mismatch_has_its_code() {
        let issuer = ServiceAccountIssuer::new(ISSUER).unwrap();
        let (tenant, app) = tenant_trusting(&issuer, FederatedCredential::for_service_account(ISSUER, "ops", "entra-rotator"));
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let token = |ns: &str, sa: &str, aud: &str| issuer.token(ns, sa, aud, now, hour).unwrap();

        assert_eq!(code(check_assertion(&tenant, app, &token("ops", "entra-rotator", TOKEN_EXCHANGE_AUDIENCE), now)), None);
        let wrong_subject = check_assertion(&tenant, app, &token("ops", "other", TOKEN_EXCHANGE_AUDIENCE), now).unwrap_err();
        assert_eq!(wrong_subject.code, 700213);
        assert!(wrong_subject.description.contains("'system:serviceaccount:ops:other'"), "{}", wrong_subject.description);
        assert_eq!(code(check_assertion(&tenant, app, &token("ops", "entra-rotator", "api://other"), now)), Some(700212));
        assert_eq!(code(check_assertion(&tenant, app, &token("ops", "entra-rotator", TOKEN_EXCHANGE_AUDIENCE), now + hour)), Some(700024));
        assert_eq!(code(check_assertion(&tenant, app, "not.a.jwt", now)), Some(50027));

        let elsewhere = ServiceAccountIssuer::new("https://elsewhere.example/").unwrap();
        let foreign = elsewhere.token("ops", "entra-rotator", TOKEN_EXCHANGE_AUDIENCE, now, hour).unwrap();
        assert_eq!(code(check_assertion(&tenant, app, &foreign, now)), Some(700211));
        assert_eq!(code(check_assertion(&tenant, Uuid::new_v4(), &token("ops", "entra-rotator", TOKEN_EXCHANGE_AUDIENCE), now)), Some(70021));
    }

    #[test]
    fn a_token_signed_by_another_key_of_the_same_issuer_name_is_refused() {
        let issuer = ServiceAccountIssuer::new(ISSUER).unwrap();
        let impostor = ServiceAccountIssuer::new(ISSUER).unwrap();
        let (tenant, app) = tenant_trusting(&issuer, FederatedCredential::for_service_account(ISSUER, "ops", "entra-rotator"));
        let now = Utc::now();
        let forged = impostor.token("ops", "entra-rotator", TOKEN_EXCHANGE_AUDIENCE, now, chrono::Duration::hours(1)).unwrap();
        assert_eq!(code(check_assertion(&tenant, app, &forged, now)), Some(700027));
    }
}
