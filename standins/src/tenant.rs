//! The in-memory Entra tenant shared by the stand-ins: application registrations with
//! their password credentials, the tokens issued, and Entra's replication delay.

use super::federation::FederatedCredential;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One password credential as the stand-in keeps it, value included.
#[derive(Clone, Debug)]
pub struct StandinPassword {
    pub key_id: Uuid,
    pub display_name: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub hint: String,
    /// The value; only the stand-in keeps it, real Entra keeps a hash.
    pub secret_text: String,
    /// When it was minted.
    pub minted_at: Instant,
    /// From when it authenticates everywhere (Entra's replication delay).
    pub replicated_at: Instant,
}

/// One application registration.
#[derive(Clone, Debug)]
pub struct StandinApp {
    pub object_id: Uuid,
    pub app_id: Uuid,
    pub display_name: String,
    pub passwords: Vec<StandinPassword>,
}

/// Why the tenant refused a client secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No application has that client id.
    UnknownClient,
    /// The secret matches no live credential of the application.
    InvalidSecret,
    /// The secret exists but Entra has not replicated it yet.
    NotYetReplicated,
    /// The secret matched a credential past its endDateTime.
    Expired,
}

#[derive(Debug, Default)]
struct State {
    apps: HashMap<Uuid, StandinApp>,
    /// Issued bearer tokens: token → (client id, audience, expiry).
    tokens: HashMap<String, IssuedToken>,
    propagation_delay: Duration,
    /// Every secret value ever minted, revoked ones included, so tests can search
    /// logs and outputs for any of them.
    minted_values: Vec<String>,
    /// Domain names (e.g. `contoso.onmicrosoft.com`) that name this tenant as its id does.
    verified_domains: Vec<String>,
    /// Federated identity credentials per application (client) id.
    federated_credentials: HashMap<Uuid, Vec<FederatedCredential>>,
    /// Signing keys (DER `RSAPublicKey`) of the token issuers Entra can discover.
    issuer_keys: HashMap<String, Vec<u8>>,
    /// Service-principal sign-ins with a client secret, oldest first.
    sign_ins: Vec<SignIn>,
    /// How long a sign-in takes to show in the sign-in log.
    sign_in_latency: Duration,
    /// Application permissions granted with admin consent: (client id, resource) → roles,
    /// e.g. `SMTP.SendAsApp` on `https://outlook.office365.com`.
    app_roles: HashMap<(Uuid, String), Vec<String>>,
    /// Change tracking for `applications/delta`: a counter bumped by every change of an
    /// application, and the count at each application's last change.
    changes: Changes,
}

/// When each application last changed or was deleted, counted in changes to the tenant.
#[derive(Debug, Default)]
pub struct Changes {
    /// Changes so far; a delta token records how many it has seen.
    pub count: u64,
    /// Object id → the change count at its last change (creation included).
    pub changed: HashMap<Uuid, u64>,
    /// Object id → the change count at its deletion, and Graph's `@removed` reason:
    /// `changed` (soft-deleted, restorable) or `deleted` (permanently).
    pub deleted: HashMap<Uuid, (u64, &'static str)>,
    /// Tokens carry the epoch they were issued in; expiring them all starts a new one.
    pub epoch: u64,
}

impl Changes {
    fn touch(&mut self, object_id: Uuid) {
        self.count += 1;
        self.changed.insert(object_id, self.count);
    }
}

/// One service-principal sign-in with a client secret, as the sign-in log records it: the
/// credential's keyId, when, for which resource, and Entra's error code (0: success).
#[derive(Clone, Debug)]
pub struct SignIn {
    pub app_id: Uuid,
    pub key_id: Uuid,
    pub at: DateTime<Utc>,
    /// The resource the token was for, or `smtp` for a relay's AUTH.
    pub resource: String,
    pub error_code: u32,
    recorded: Instant,
}

/// A bearer token the token endpoint issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub client_id: Uuid,
    /// The scope it was issued for, e.g. `https://graph.microsoft.com/.default`.
    pub scope: String,
    pub expires_at: DateTime<Utc>,
    /// The application permissions (`roles` claim) consented for the scope's resource.
    pub roles: Vec<String>,
}

struct ChangesGuard<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for ChangesGuard<'_> {
    type Target = Changes;
    fn deref(&self) -> &Changes {
        &self.0.changes
    }
}

impl std::ops::DerefMut for ChangesGuard<'_> {
    fn deref_mut(&mut self) -> &mut Changes {
        &mut self.0.changes
    }
}

/// Exchange Online's resource (scope `https://outlook.office365.com/.default`): its tokens
/// are JWT-shaped, as Entra's access tokens are, so a client can read their `roles`.
pub const EXCHANGE_ONLINE_RESOURCE: &str = "https://outlook.office365.com";

/// The shared tenant. Cheap to clone; every clone sees the same state.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub tenant_id: Uuid,
    state: Arc<Mutex<State>>,
}

impl Tenant {
    pub fn new() -> Self {
        Self { tenant_id: Uuid::new_v4(), state: Arc::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        super::lock(&self.state)
    }

    /// Lets sign-ins name the tenant by `domain` (e.g. `contoso.onmicrosoft.com`), as a
    /// tenant's verified domains do.
    pub fn add_verified_domain(&self, domain: &str) {
        self.state().verified_domains.push(domain.to_ascii_lowercase());
    }

    /// Whether `name` (a tenant id or a verified domain, any case) names this tenant.
    pub fn is_named(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.tenant_id.to_string())
            || self.state().verified_domains.contains(&name.to_ascii_lowercase())
    }

    /// Registers an application and returns it.
    pub fn register_app(&self, display_name: &str) -> StandinApp {
        let app = StandinApp {
            object_id: Uuid::new_v4(),
            app_id: Uuid::new_v4(),
            display_name: display_name.to_string(),
            passwords: Vec::new(),
        };
        let mut state = self.state();
        state.apps.insert(app.object_id, app.clone());
        state.changes.touch(app.object_id);
        app
    }

    /// Deletes an application: as the portal's Delete does (soft-deleted, restorable for
    /// 30 days; delta reports it removed with reason `changed`), or `permanently` (reason
    /// `deleted`). `false` when no application has that object id.
    pub fn delete_app(&self, object_id: Uuid, permanently: bool) -> bool {
        let mut state = self.state();
        if state.apps.remove(&object_id).is_none() {
            return false;
        }
        state.changes.count += 1;
        let count = state.changes.count;
        state.changes.changed.remove(&object_id);
        let reason = if permanently { "deleted" } else { "changed" };
        state.changes.deleted.insert(object_id, (count, reason));
        true
    }

    /// The change tracking of `applications/delta`, to read or to change.
    pub fn changes(&self) -> impl std::ops::DerefMut<Target = Changes> + '_ {
        ChangesGuard(self.state())
    }

    /// A snapshot of the application with this object id.
    pub fn app(&self, object_id: Uuid) -> Option<StandinApp> {
        self.state().apps.get(&object_id).cloned()
    }

    /// A snapshot of the application with this appId (client id).
    pub fn app_by_client_id(&self, app_id: Uuid) -> Option<StandinApp> {
        self.state().apps.values().find(|a| a.app_id == app_id).cloned()
    }

    /// Snapshots of every application, in no particular order.
    pub fn apps(&self) -> Vec<StandinApp> {
        self.state().apps.values().cloned().collect()
    }

    /// Mints a password credential the way `addPassword` does and returns it (value included).
    /// `None` when no application has that object id.
    pub fn add_password(
        &self,
        object_id: Uuid,
        display_name: Option<String>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Option<StandinPassword> {
        let secret_text = generate_secret_text();
        let password = StandinPassword {
            key_id: Uuid::new_v4(),
            display_name,
            start,
            end,
            hint: secret_text.chars().take(3).collect(),
            secret_text,
            minted_at: Instant::now(),
            replicated_at: Instant::now(),
        };
        let mut state = self.state();
        let password = StandinPassword { replicated_at: password.minted_at + state.propagation_delay, ..password };
        let app = state.apps.get_mut(&object_id)?;
        app.passwords.push(password.clone());
        state.minted_values.push(password.secret_text.clone());
        state.changes.touch(object_id);
        Some(password)
    }

    /// Like [`add_password`](Self::add_password) for a secret minted long ago: Entra has
    /// replicated it, so the propagation delay does not apply (the rotator's own secret,
    /// hand-made secrets).
    pub fn add_replicated_password(
        &self,
        object_id: Uuid,
        display_name: Option<String>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Option<StandinPassword> {
        let password = self.add_password(object_id, display_name, start, end)?;
        let long_ago = password.minted_at.checked_sub(Duration::from_secs(86_400))?;
        let mut state = self.state();
        let stored = state
            .apps
            .get_mut(&object_id)?
            .passwords
            .iter_mut()
            .find(|p| p.key_id == password.key_id)?;
        stored.minted_at = long_ago;
        stored.replicated_at = long_ago;
        Some(stored.clone())
    }

    /// Moves a password credential's `startDateTime` `by` into the past, as if it had been
    /// minted that much earlier (for tests of a wait counted from it, without waiting).
    pub fn backdate_password(&self, object_id: Uuid, key_id: Uuid, by: chrono::Duration) -> bool {
        let mut state = self.state();
        let password = state.apps.get_mut(&object_id).and_then(|app| app.passwords.iter_mut().find(|p| p.key_id == key_id));
        let found = password.map(|p| p.start -= by).is_some();
        if found {
            state.changes.touch(object_id);
        }
        found
    }

    /// Removes a password credential; `false` when the app or the keyId is unknown.
    pub fn remove_password(&self, object_id: Uuid, key_id: Uuid) -> bool {
        let mut state = self.state();
        let Some(app) = state.apps.get_mut(&object_id) else { return false };
        let before = app.passwords.len();
        app.passwords.retain(|p| p.key_id != key_id);
        let removed = app.passwords.len() != before;
        if removed {
            state.changes.touch(object_id);
        }
        removed
    }

    /// Every secret value minted so far, including revoked ones.
    pub fn minted_values(&self) -> Vec<String> {
        self.state().minted_values.clone()
    }

    /// How long a newly minted secret is refused before it authenticates. Secrets already
    /// replicated stay so; those still replicating now finish `delay` after their minting.
    pub fn set_propagation_delay(&self, delay: Duration) {
        let mut state = self.state();
        state.propagation_delay = delay;
        let now = Instant::now();
        for password in state.apps.values_mut().flat_map(|app| app.passwords.iter_mut()) {
            if password.replicated_at > now {
                password.replicated_at = password.minted_at + delay;
            }
        }
    }

    /// Adds a federated identity credential to the application with this client id.
    pub fn add_federated_credential(&self, client_id: Uuid, credential: FederatedCredential) {
        self.state().federated_credentials.entry(client_id).or_default().push(credential);
    }

    /// The federated identity credentials of the application with this client id.
    pub fn federated_credentials(&self, client_id: Uuid) -> Vec<FederatedCredential> {
        self.state().federated_credentials.get(&client_id).cloned().unwrap_or_default()
    }

    /// Lets Entra verify tokens of `issuer` with `public_key`, as the issuer's OpenID
    /// discovery document would.
    pub fn trust_issuer(&self, issuer: &str, public_key: Vec<u8>) {
        self.state().issuer_keys.insert(issuer.to_string(), public_key);
    }

    /// The signing key of `issuer`, if Entra can discover it.
    pub fn issuer_key(&self, issuer: &str) -> Option<Vec<u8>> {
        self.state().issuer_keys.get(issuer).cloned()
    }

    /// Checks a client secret the way Entra does at sign-in.
    pub fn authenticate(&self, client_id: Uuid, secret: &str) -> Result<(), AuthFailure> {
        self.check_secret(client_id, secret).1
    }

    /// [`authenticate`](Self::authenticate), recorded in the sign-in log when the secret is
    /// one of the application's (also when it was refused as expired or not yet
    /// replicated: the log shows who still uses a key). `resource` is what it was for.
    pub fn sign_in(&self, client_id: Uuid, secret: &str, resource: &str) -> Result<(), AuthFailure> {
        let (key_id, result) = self.check_secret(client_id, secret);
        if let Some(key_id) = key_id {
            let error_code = match result {
                Ok(()) => 0,
                Err(AuthFailure::Expired) => 7000222,
                Err(_) => 7000215,
            };
            self.state().sign_ins.push(SignIn {
                app_id: client_id,
                key_id,
                at: Utc::now(),
                resource: resource.to_string(),
                error_code,
                recorded: Instant::now(),
            });
        }
        result
    }

    /// The keyId of the matching credential, if any, and the verdict.
    fn check_secret(&self, client_id: Uuid, secret: &str) -> (Option<Uuid>, Result<(), AuthFailure>) {
        let state = self.state();
        let Some(app) = state.apps.values().find(|a| a.app_id == client_id) else {
            return (None, Err(AuthFailure::UnknownClient));
        };
        let Some(password) = app.passwords.iter().find(|p| constant_time_eq(p.secret_text.as_bytes(), secret.as_bytes())) else {
            return (None, Err(AuthFailure::InvalidSecret));
        };
        let verdict = if password.end <= Utc::now() {
            Err(AuthFailure::Expired)
        } else if Instant::now() < password.replicated_at {
            Err(AuthFailure::NotYetReplicated)
        } else {
            Ok(())
        };
        (Some(password.key_id), verdict)
    }

    /// Moves every recorded sign-in `by` into the past, as if that much time had gone by
    /// since (for tests of a window without waiting it out).
    pub fn backdate_sign_ins(&self, by: chrono::Duration) {
        for sign_in in &mut self.state().sign_ins {
            sign_in.at -= by;
        }
    }

    /// How long a sign-in takes to appear in the log (Entra's reporting latency).
    pub fn set_sign_in_latency(&self, latency: Duration) {
        self.state().sign_in_latency = latency;
    }

    /// The sign-ins of `app_id` the log shows now, newest first.
    pub fn logged_sign_ins(&self, app_id: Uuid) -> Vec<SignIn> {
        let state = self.state();
        let visible_before = Instant::now().checked_sub(state.sign_in_latency);
        let mut shown: Vec<SignIn> = state
            .sign_ins
            .iter()
            .filter(|s| s.app_id == app_id && visible_before.is_some_and(|cutoff| s.recorded <= cutoff))
            .cloned()
            .collect();
        shown.reverse();
        shown
    }

    /// Grants the application `client_id` the application permission `role` on `resource`
    /// with admin consent (e.g. `SMTP.SendAsApp` on [`EXCHANGE_ONLINE_RESOURCE`]).
    pub fn grant_app_role(&self, client_id: Uuid, resource: &str, role: &str) {
        self.state().app_roles.entry((client_id, resource.to_string())).or_default().push(role.to_string());
    }

    /// Issues a bearer token for `client_id` and `scope`, valid for `lifetime`. Tokens for
    /// Exchange Online, or for a resource with granted roles, are shaped like Entra's JWTs
    /// (header, claims with `aud`, `appid`, `tid`, `roles`, `exp`, and a signature part that
    /// nobody here checks); others are opaque.
    pub fn issue_token(&self, client_id: Uuid, scope: &str, lifetime: Duration) -> String {
        let resource = scope.trim_end_matches("/.default");
        let expires_at = Utc::now() + lifetime;
        let mut state = self.state();
        let roles = state.app_roles.get(&(client_id, resource.to_string())).cloned();
        let token = match &roles {
            Some(_) => jwt_shaped(self.tenant_id, client_id, resource, roles.as_deref().unwrap_or_default(), expires_at),
            None if resource == EXCHANGE_ONLINE_RESOURCE => jwt_shaped(self.tenant_id, client_id, resource, &[], expires_at),
            None => format!("standin.{}", Uuid::new_v4().simple()),
        };
        let issued = IssuedToken { client_id, scope: scope.to_string(), expires_at, roles: roles.unwrap_or_default() };
        state.tokens.insert(token.clone(), issued);
        token
    }

    /// The scopes of every token issued so far, in no particular order.
    pub fn issued_scopes(&self) -> Vec<String> {
        self.state().tokens.values().map(|t| t.scope.clone()).collect()
    }

    /// Every token issued so far, so tests can search outputs for them.
    pub fn issued_token_values(&self) -> Vec<String> {
        self.state().tokens.keys().cloned().collect()
    }

    /// The token's grant if it was issued here and has not expired.
    pub fn token(&self, bearer: &str) -> Option<IssuedToken> {
        let state = self.state();
        let issued = state.tokens.get(bearer)?;
        (issued.expires_at > Utc::now()).then(|| issued.clone())
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self::new()
    }
}

/// An access token shaped like Entra's v1 tokens: base64url header, claims and a random
/// signature part. Entra leaves `roles` out when the app has none on the resource.
fn jwt_shaped(tenant_id: Uuid, client_id: Uuid, resource: &str, roles: &[String], expires_at: DateTime<Utc>) -> String {
    use base64::Engine as _;
    let encode = |value: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": "standin"});
    let mut claims = serde_json::json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant_id}/"),
        "iat": Utc::now().timestamp(),
        "nbf": Utc::now().timestamp(),
        "exp": expires_at.timestamp(),
        "appid": client_id.to_string(),
        "tid": tenant_id.to_string(),
        "ver": "1.0",
    });
    if !roles.is_empty() {
        claims["roles"] = serde_json::json!(roles);
    }
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes());
    format!("{}.{}.{signature}", encode(&header), encode(&claims))
}

/// A value shaped like Entra's: 40 characters from its alphabet, including `~` and `.`.
fn generate_secret_text() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~._-";
    (0..40).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
