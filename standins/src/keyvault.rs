//! A local Azure Key Vault speaking the secrets REST API over HTTPS, in every api-version
//! today's SDKs send ([`API_VERSIONS`]: `2026-04-01`, the default of Python's
//! azure-keyvault-secrets 4.12; `2025-07-01`, the one `azure_security_keyvault_secrets` 1.0
//! sends; `7.0` to `7.6`, `2016-10-01`); any other is refused with 400 `BadParameter`.
//!
//! What it models, because the rotator's safety depends on it:
//! - challenge authentication: a request without `Authorization` gets 401 with
//!   `WWW-Authenticate: Bearer authorization="…", resource="https://vault.azure.net"`; only
//!   bearer tokens the shared [`Tenant`] issued for the Key Vault scope are accepted;
//! - versions: every `PUT /secrets/{name}` adds a version; `GET /secrets/{name}/` is the latest;
//!   `PATCH /secrets/{name}/{version}` updates a version's attributes, content type and tags;
//! - listings: `GET /secrets` and `GET /secrets/{name}/versions` page by `maxresults`
//!   (default and most 25) with an absolute `nextLink` carrying an opaque `$skiptoken`;
//! - soft delete: a deleted name answers 404 to reads and 409 `ObjectIsDeletedButRecoverable`
//!   to writes until it is recovered or purged. While a deletion is still in progress
//!   ([`KeyVaultStandin::hold_deletions`]) writes, purge and recover get 409
//!   `ObjectIsBeingDeleted` and the deleted secret is not yet readable, as in Azure, where
//!   that lasts seconds;
//! - authorisation: [`Access`] makes the vault refuse callers the way Azure RBAC does (403).
//!
//! Errors carry Key Vault's shape `{"error":{"code","message","innererror"?}}`. Requests are
//! counted per route (see [`routes`]) and faults are played only after authentication, where
//! a real vault's throttling and outages apply to a caller.

use super::faults::Faults;
use super::https::{serve_tls, ServerTask};
use super::tenant::Tenant;
use super::tls::TestPki;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The scope a token must have been issued for.
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";
/// The api-version `azure_security_keyvault_secrets` 1.0 sends.
pub const API_VERSION: &str = "2025-07-01";
/// The newest api-version the vault serves (the default of Python's azure-keyvault-secrets 4.12).
pub const LATEST_API_VERSION: &str = "2026-04-01";
/// Every api-version the vault serves: those the current Azure SDKs know.
pub const API_VERSIONS: &[&str] = &[
    LATEST_API_VERSION,
    API_VERSION,
    "7.6",
    "7.5",
    "7.4",
    "7.3",
    "7.2",
    "7.1",
    "7.0",
    "2016-10-01",
];
/// The page size of listings when `maxresults` is not given, and the most it may ask.
const MAX_PAGE_SIZE: usize = 25;
/// Days a deleted secret stays recoverable.
pub const RECOVERABLE_DAYS: i64 = 90;
const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
const MAX_VALUE_BYTES: usize = 25 * 1024;

/// Route names under which requests are counted and faults are queued.
pub mod routes {
    pub const SET_SECRET: &str = "PUT /secrets/{name}";
    pub const GET_SECRET: &str = "GET /secrets/{name}/{version}";
    pub const GET_SECRET_VERSIONS: &str = "GET /secrets/{name}/versions";
    pub const LIST_SECRETS: &str = "GET /secrets";
    pub const UPDATE_SECRET: &str = "PATCH /secrets/{name}/{version}";
    pub const DELETE_SECRET: &str = "DELETE /secrets/{name}";
    pub const GET_DELETED_SECRET: &str = "GET /deletedsecrets/{name}";
    pub const PURGE_DELETED_SECRET: &str = "DELETE /deletedsecrets/{name}";
    pub const RECOVER_DELETED_SECRET: &str = "POST /deletedsecrets/{name}/recover";
    /// Requests without a token, answered with the authentication challenge.
    pub const CHALLENGE: &str = "401 challenge";
}

/// What the vault lets callers do, as their role assignments would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// "Key Vault Secrets Officer": everything.
    Full,
    /// "Key Vault Secrets User": get and list only.
    ReadOnly,
    /// No role on the vault: every data operation is refused.
    None,
    /// An access policy granting every secret permission but `list`: reads and writes of
    /// a named secret work, `GET /secrets` is refused.
    NoList,
}

/// One version of a secret as the vault holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub version: String,
    pub value: String,
    pub content_type: Option<String>,
    pub enabled: bool,
    /// `nbf` and `exp`, unix seconds.
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub tags: BTreeMap<String, String>,
}

impl fmt::Debug for StoredVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredVersion")
            .field("version", &self.version)
            .field("value", &"[REDACTED]")
            .field("content_type", &self.content_type)
            .field("enabled", &self.enabled)
            .field("not_before", &self.not_before)
            .field("expires", &self.expires)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
struct Deletion {
    deleted_date: i64,
    scheduled_purge_date: i64,
    /// Still being deleted: the name is neither a secret nor a readable deleted secret yet.
    in_progress: bool,
}

#[derive(Debug, Default)]
struct SecretEntry {
    versions: Vec<StoredVersion>,
    deleted: Option<Deletion>,
}

impl SecretEntry {
    fn latest(&self) -> Option<&StoredVersion> {
        self.versions.last()
    }
}

#[derive(Debug)]
struct Vault {
    secrets: BTreeMap<String, SecretEntry>,
    access: Access,
    /// The resource its challenge names: Key Vault's own, or another one when the vault
    /// plays a host that harvests tokens ([`KeyVaultStandin::impersonate`]).
    challenge_resource: String,
    /// The authority host its challenge names (`authorization="{it}/{tenant id}"`).
    authority: String,
    /// Requests that carried an `Authorization` header, whatever their token.
    bearer_requests: u64,
    /// Deletions stay in progress until [`KeyVaultStandin::finish_deletions`].
    hold_deletions: bool,
}

#[derive(Clone)]
struct Shared {
    tenant: Tenant,
    faults: Faults,
    vault: Arc<Mutex<Vault>>,
}

impl Shared {
    fn vault(&self) -> MutexGuard<'_, Vault> {
        super::lock(&self.vault)
    }
}

/// A running stand-in vault; stops when dropped.
pub struct KeyVaultStandin {
    url: String,
    shared: Shared,
    /// Keeps the server running; dropping it stops it.
    _task: ServerTask,
}

impl fmt::Debug for KeyVaultStandin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultStandin")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl KeyVaultStandin {
    /// Starts an empty vault on a free loopback port, serving TLS with `pki`.
    pub async fn start(tenant: Tenant, pki: &TestPki) -> anyhow::Result<Self> {
        let shared = Shared {
            tenant,
            faults: Faults::with_error_body(fault_body),
            vault: Arc::new(Mutex::new(Vault {
                secrets: BTreeMap::new(),
                access: Access::Full,
                challenge_resource: KEY_VAULT_RESOURCE.to_string(),
                authority: "https://login.microsoftonline.com".to_string(),
                bearer_requests: 0,
                hold_deletions: false,
            })),
        };
        let (address, task) = serve_tls(router(shared.clone()), pki).await?;
        Ok(Self {
            url: format!("https://{address}"),
            shared,
            _task: task,
        })
    }

    /// The vault URI, e.g. `https://127.0.0.1:41234`.
    pub fn vault_url(&self) -> String {
        self.url.clone()
    }

    /// Fault queues and request counts, keyed by [`routes`].
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Makes the challenge name `resource` (e.g. Graph's or ARM's) instead of Key Vault's,
    /// as a host set up to harvest the caller's tokens would.
    pub fn impersonate(&self, resource: &str) {
        self.shared.vault().challenge_resource = resource.to_string();
    }

    /// Makes the challenge's `authorization` name this authority host (e.g. the Graph
    /// stand-in's token endpoint host) instead of `https://login.microsoftonline.com`, so
    /// clients that follow the challenge ask the stand-in for their token.
    pub fn set_authority(&self, authority_host: &str) {
        self.shared.vault().authority = authority_host.trim_end_matches('/').to_string();
    }

    /// From now on a deletion stays in progress (409 `ObjectIsBeingDeleted` to writes, purge
    /// and recover; the deleted secret 404) until [`finish_deletions`](Self::finish_deletions):
    /// the window Azure keeps for seconds after a delete, held open for as long as a test needs.
    pub fn hold_deletions(&self) {
        self.shared.vault().hold_deletions = true;
    }

    /// Completes every deletion in progress and stops holding new ones.
    pub fn finish_deletions(&self) {
        let mut vault = self.shared.vault();
        vault.hold_deletions = false;
        for deletion in vault.secrets.values_mut().filter_map(|e| e.deleted.as_mut()) {
            deletion.in_progress = false;
        }
    }

    /// How many requests carried an `Authorization` header, valid or not.
    pub fn bearer_requests(&self) -> u64 {
        self.shared.vault().bearer_requests
    }

    /// Every version of `name`, oldest first (deleted secrets included).
    pub fn versions(&self, name: &str) -> Vec<StoredVersion> {
        self.shared
            .vault()
            .secrets
            .get(name)
            .map(|e| e.versions.clone())
            .unwrap_or_default()
    }

    /// The latest version of `name`, whether or not it is deleted.
    pub fn latest(&self, name: &str) -> Option<StoredVersion> {
        self.shared
            .vault()
            .secrets
            .get(name)
            .and_then(|e| e.latest().cloned())
    }

    /// Whether `name` is in the deleted-but-recoverable state.
    pub fn is_soft_deleted(&self, name: &str) -> bool {
        self.shared
            .vault()
            .secrets
            .get(name)
            .is_some_and(|e| e.deleted.is_some())
    }

    /// Deletes `name` the way `DELETE /secrets/{name}` does (it stays recoverable).
    /// Creates a one-version secret first when `name` does not exist, so a test can
    /// start from "somebody deleted the secret". Returns `false` if already deleted.
    pub fn soft_delete(&self, name: &str) -> bool {
        let mut vault = self.shared.vault();
        let in_progress = vault.hold_deletions;
        let entry = vault.secrets.entry(name.to_string()).or_default();
        if entry.deleted.is_some() {
            return false;
        }
        if entry.versions.is_empty() {
            entry.versions.push(new_version(
                "deleted-value".to_string(),
                &SetSecretBody::default(),
            ));
        }
        entry.deleted = Some(deletion_now(in_progress));
        true
    }

    /// Stores a version written by somebody else (no rotator tags unless given).
    pub fn seed(&self, name: &str, value: &str, tags: &[(&str, &str)]) -> StoredVersion {
        let body = SetSecretBody {
            tags: Some(
                tags.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..SetSecretBody::default()
        };
        let version = new_version(value.to_string(), &body);
        let mut vault = self.shared.vault();
        vault
            .secrets
            .entry(name.to_string())
            .or_default()
            .versions
            .push(version.clone());
        version
    }

    /// Changes what callers may do from now on.
    pub fn set_access(&self, access: Access) {
        self.shared.vault().access = access;
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/secrets", get(list_secrets))
        .route(
            "/secrets/{name}",
            put(set_secret).get(get_latest).delete(delete_secret),
        )
        .route("/secrets/{name}/", get(get_latest).patch(update_latest))
        .route("/secrets/{name}/versions", get(list_versions))
        .route(
            "/secrets/{name}/{version}",
            get(get_version).patch(update_version),
        )
        .route(
            "/deletedsecrets/{name}",
            get(get_deleted).delete(purge_deleted),
        )
        .route("/deletedsecrets/{name}/recover", post(recover_deleted))
        .with_state(shared)
}

/// The data action each operation needs, as Azure RBAC names it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Get,
    Set,
    Update,
    List,
    ListVersions,
    Delete,
    GetDeleted,
    Purge,
    Recover,
}

impl Action {
    fn is_read(self) -> bool {
        matches!(
            self,
            Action::Get | Action::List | Action::ListVersions | Action::GetDeleted
        )
    }

    fn rbac_name(self) -> &'static str {
        match self {
            Action::Get => "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            Action::Set => "Microsoft.KeyVault/vaults/secrets/setSecret/action",
            Action::Update => "Microsoft.KeyVault/vaults/secrets/update/action",
            Action::List | Action::ListVersions | Action::GetDeleted => {
                "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
            }
            Action::Delete => "Microsoft.KeyVault/vaults/secrets/delete",
            Action::Purge => "Microsoft.KeyVault/vaults/deletedSecrets/delete",
            Action::Recover => "Microsoft.KeyVault/vaults/deletedSecrets/recover/action",
        }
    }
}

type Params = Query<HashMap<String, String>>;

/// An answer sent instead of doing the work (boxed: responses are large).
struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// Authentication, faults, api-version, authorisation and the name check, in the order a
/// real vault applies them. `Err` is the answer to send instead of doing the work.
async fn admit(
    shared: &Shared,
    route: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    action: Action,
    name: &str,
) -> Result<(), Refusal> {
    let caller = authenticate(shared, headers).await?;
    if let Some(fault) = shared.faults.intercept(route).await {
        return Err(fault.into());
    }
    check_api_version(params)?;
    let access = shared.vault().access;
    let allowed = match access {
        Access::Full => true,
        Access::ReadOnly => action.is_read(),
        Access::None => false,
        Access::NoList => action != Action::List,
    };
    if !allowed && access == Access::NoList {
        return Err(forbidden_by_policy(shared, caller).into());
    }
    if !allowed {
        return Err(forbidden(shared, caller, action, name).into());
    }
    check_name(name)
}

async fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Uuid, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if headers.contains_key(header::AUTHORIZATION) {
        shared.vault().bearer_requests += 1;
    }
    let Some(bearer) = bearer else {
        if let Some(fault) = shared.faults.intercept(routes::CHALLENGE).await {
            return Err(fault.into());
        }
        return Err(unauthorized(
            shared,
            "AKV10000: Request is missing a Bearer or PoP token.",
        )
        .into());
    };
    let Some(token) = shared.tenant.token(bearer) else {
        return Err(unauthorized(
            shared,
            "AKV10032: Invalid issuer. The token was not issued by this tenant or has expired.",
        )
        .into());
    };
    if !token.scope.starts_with(KEY_VAULT_RESOURCE) {
        return Err(unauthorized(
            shared,
            &format!(
                "AKV10022: Invalid audience. Expected {KEY_VAULT_RESOURCE}, found: {}.",
                token.scope
            ),
        )
        .into());
    }
    Ok(token.client_id)
}

fn unauthorized(shared: &Shared, message: &str) -> Response {
    let mut response = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None);
    let challenge = {
        let vault = shared.vault();
        format!(
            r#"Bearer authorization="{}/{}", resource="{}""#,
            vault.authority, shared.tenant.tenant_id, vault.challenge_resource
        )
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn forbidden(shared: &Shared, caller: Uuid, action: Action, name: &str) -> Response {
    let tenant = shared.tenant.tenant_id;
    let message = format!(
        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={caller};iss=https://sts.windows.net/{tenant}/\r\nAction: '{}'\r\nResource: '/vaults/standin/secrets/{name}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: standin;location=local\r\n",
        action.rbac_name()
    );
    kv_error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &message,
        Some("ForbiddenByRbac"),
    )
}

/// An access policy's refusal of `list`, in Key Vault's words.
fn forbidden_by_policy(shared: &Shared, caller: Uuid) -> Response {
    let tenant = shared.tenant.tenant_id;
    let message = format!(
        "The user, group or application 'appid={caller};iss=https://sts.windows.net/{tenant}/' does not have secrets list permission on key vault 'standin;location=local'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
    );
    kv_error(StatusCode::FORBIDDEN, "Forbidden", &message, Some("AccessDenied"))
}

fn check_api_version(params: &HashMap<String, String>) -> Result<(), Refusal> {
    match params.get("api-version") {
        Some(v) if API_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(v) => Err(bad_parameter(&format!(
            "The specified version ({v}) is not recognized. Consider using the latest supported version ({LATEST_API_VERSION})."
        ))
        .into()),
        None => Err(bad_parameter("The api-version query parameter is missing.").into()),
    }
}

/// An empty `name` is the collection (`GET /secrets`), which has none to check.
fn check_name(name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Ok(());
    }
    let valid = (1..=127).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(bad_parameter(&format!("The request URI contains an invalid name: {name}")).into())
    }
}

fn bad_parameter(message: &str) -> Response {
    kv_error(StatusCode::BAD_REQUEST, "BadParameter", message, None)
}

fn kv_error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut error = json!({ "code": code, "message": message });
    if let Some(inner) = inner {
        error["innererror"] = json!({ "code": inner });
    }
    (status, axum::Json(json!({ "error": error }))).into_response()
}

/// The body of an injected status fault, in Key Vault's shape.
fn fault_body(status: u16) -> Value {
    let (code, message) = match status {
        429 => (
            "Throttled",
            "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
        ),
        503 => (
            "ServiceUnavailable",
            "The service is temporarily unavailable. Please retry later.",
        ),
        s if s >= 500 => (
            "InternalServerError",
            "An internal server error occurred. Please retry later.",
        ),
        _ => ("BadRequest", "Injected fault."),
    };
    json!({ "error": { "code": code, "message": message } })
}

fn secret_not_found(name: &str) -> Response {
    kv_error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!(
            "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
        None,
    )
}

fn deleted_secret_not_found(name: &str) -> Response {
    kv_error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!("Deleted Secret not found: {name}"),
        None,
    )
}

/// `https://<Host header>`: ids name the vault the way the caller addressed it.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}")
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetSecretBody {
    value: Option<String>,
    content_type: Option<String>,
    attributes: Option<AttributesBody>,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct AttributesBody {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

fn new_version(value: String, body: &SetSecretBody) -> StoredVersion {
    let now = Utc::now().timestamp();
    let attributes = body.attributes.as_ref();
    StoredVersion {
        version: Uuid::new_v4().simple().to_string(),
        value,
        content_type: body.content_type.clone(),
        enabled: attributes.and_then(|a| a.enabled).unwrap_or(true),
        not_before: attributes.and_then(|a| a.nbf),
        expires: attributes.and_then(|a| a.exp),
        created: now,
        updated: now,
        tags: body.tags.clone().unwrap_or_default(),
    }
}

fn deletion_now(in_progress: bool) -> Deletion {
    let now = Utc::now().timestamp();
    Deletion {
        deleted_date: now,
        scheduled_purge_date: now + RECOVERABLE_DAYS * 24 * 3600,
        in_progress,
    }
}

/// Key Vault's answer while a deletion of `name` is still in progress.
fn being_deleted() -> Response {
    kv_error(
        StatusCode::CONFLICT,
        "Conflict",
        "Secret is currently being deleted.",
        Some("ObjectIsBeingDeleted"),
    )
}

/// A SecretBundle (with the value) or, for listings and deletions, its properties only.
fn bundle(base: &str, name: &str, version: &StoredVersion, with_value: bool) -> Value {
    let mut attributes = json!({
        "enabled": version.enabled,
        "created": version.created,
        "updated": version.updated,
        "recoveryLevel": RECOVERY_LEVEL,
        "recoverableDays": RECOVERABLE_DAYS,
    });
    if let Some(nbf) = version.not_before {
        attributes["nbf"] = json!(nbf);
    }
    if let Some(exp) = version.expires {
        attributes["exp"] = json!(exp);
    }
    let mut body = json!({
        "id": format!("{base}/secrets/{name}/{}", version.version),
        "attributes": attributes,
    });
    if with_value {
        body["value"] = json!(version.value);
    }
    if let Some(content_type) = &version.content_type {
        body["contentType"] = json!(content_type);
    }
    if !version.tags.is_empty() {
        body["tags"] = json!(version.tags);
    }
    body
}

fn deleted_bundle(base: &str, name: &str, version: &StoredVersion, deletion: Deletion) -> Value {
    let mut body = bundle(base, name, version, false);
    body["recoveryId"] = json!(format!("{base}/deletedsecrets/{name}"));
    body["deletedDate"] = json!(deletion.deleted_date);
    body["scheduledPurgeDate"] = json!(deletion.scheduled_purge_date);
    body
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn set_secret(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = admit(
        &shared,
        routes::SET_SECRET,
        &headers,
        &params,
        Action::Set,
        &name,
    )
    .await
    {
        return response.into_response();
    }
    let Ok(body) = serde_json::from_slice::<SetSecretBody>(&body) else {
        return bad_parameter("The request body is not a valid SecretSetParameters JSON object.");
    };
    let Some(value) = body.value.clone() else {
        return bad_parameter("Property value is required.");
    };
    if value.len() > MAX_VALUE_BYTES {
        return bad_parameter("The secret value exceeds the maximum size of 25 KB.");
    }
    let mut vault = shared.vault();
    let entry = vault.secrets.entry(name.clone()).or_default();
    if entry.deleted.is_some_and(|d| d.in_progress) {
        return being_deleted();
    }
    if entry.deleted.is_some() {
        return kv_error(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
            ),
            Some("ObjectIsDeletedButRecoverable"),
        );
    }
    let version = new_version(value, &body);
    entry.versions.push(version.clone());
    ok(bundle(&base_url(&headers), &name, &version, true))
}

async fn get_latest(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    get_secret(&shared, &name, None, &params, &headers).await
}

async fn get_version(
    State(shared): State<Shared>,
    Path((name, version)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    get_secret(&shared, &name, Some(&version), &params, &headers).await
}

async fn get_secret(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    if let Err(response) = admit(
        shared,
        routes::GET_SECRET,
        headers,
        params,
        Action::Get,
        name,
    )
    .await
    {
        return response.into_response();
    }
    let vault = shared.vault();
    let found = vault
        .secrets
        .get(name)
        .filter(|e| e.deleted.is_none())
        .and_then(|entry| match version {
            Some(wanted) => entry.versions.iter().find(|v| v.version == wanted),
            None => entry.latest(),
        });
    match found {
        Some(v) if !v.enabled => kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Operation get is not allowed on a disabled secret.",
            Some("SecretDisabled"),
        ),
        Some(v) => ok(bundle(&base_url(headers), name, v, true)),
        None => secret_not_found(&version.map_or(name.to_string(), |v| format!("{name}/{v}"))),
    }
}

async fn list_versions(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let route = routes::GET_SECRET_VERSIONS;
    if let Err(response) = admit(
        &shared,
        route,
        &headers,
        &params,
        Action::ListVersions,
        &name,
    )
    .await
    {
        return response.into_response();
    }
    let base = base_url(&headers);
    let vault = shared.vault();
    let versions: Vec<(String, Value)> = vault
        .secrets
        .get(&name)
        .filter(|e| e.deleted.is_none())
        .map(|e| {
            e.versions
                .iter()
                .map(|v| (v.version.clone(), bundle(&base, &name, v, false)))
                .collect()
        })
        .unwrap_or_default();
    drop(vault);
    page(&format!("{base}/secrets/{name}/versions"), &params, versions)
}

/// `GET /secrets`: the latest version of every secret not deleted, without values, ids
/// without version, as Key Vault lists them.
async fn list_secrets(
    State(shared): State<Shared>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let route = routes::LIST_SECRETS;
    if let Err(response) = admit(&shared, route, &headers, &params, Action::List, "").await {
        return response.into_response();
    }
    let base = base_url(&headers);
    let vault = shared.vault();
    let items: Vec<(String, Value)> = vault
        .secrets
        .iter()
        .filter(|(_, e)| e.deleted.is_none())
        .filter_map(|(name, e)| {
            let mut item = bundle(&base, name, e.latest()?, false);
            item["id"] = json!(format!("{base}/secrets/{name}"));
            Some((name.clone(), item))
        })
        .collect();
    drop(vault);
    page(&format!("{base}/secrets"), &params, items)
}

/// One page of `items` (keyed by what orders them) after the `$skiptoken` if any, with
/// a `nextLink` repeating the query while more remain.
fn page(collection: &str, params: &HashMap<String, String>, mut items: Vec<(String, Value)>) -> Response {
    use base64::Engine as _;
    let size = match params.get("maxresults") {
        None => MAX_PAGE_SIZE,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return bad_parameter(&format!(
                    "Invalid value for maxresults: {text}. The value must be between 1 and {MAX_PAGE_SIZE}."
                ));
            }
        },
    };
    let after = match params.get("$skiptoken") {
        None => None,
        Some(token) => match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
        {
            Some(after) => Some(after),
            None => return bad_parameter(&format!("The $skiptoken value {token} is not valid.")),
        },
    };
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.retain(|(key, _)| after.as_ref().is_none_or(|after| key > after));
    let more = items.len() > size;
    items.truncate(size);
    let next_link = match (more, items.last()) {
        (true, Some((last, _))) => {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last);
            let version = params.get("api-version").map_or(API_VERSION, String::as_str);
            json!(format!(
                "{collection}?api-version={version}&$skiptoken={token}&maxresults={size}"
            ))
        }
        _ => Value::Null,
    };
    let value: Vec<Value> = items.into_iter().map(|(_, item)| item).collect();
    ok(json!({ "value": value, "nextLink": next_link }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateSecretBody {
    content_type: Option<String>,
    attributes: Option<AttributesBody>,
    tags: Option<BTreeMap<String, String>>,
}

async fn update_latest(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update_secret(&shared, &name, None, &params, &headers, &body).await
}

async fn update_version(
    State(shared): State<Shared>,
    Path((name, version)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    update_secret(&shared, &name, Some(&version), &params, &headers, &body).await
}

/// `PATCH /secrets/{name}/{version}`: changes what the body names (attributes, content
/// type, tags: given tags replace all tags) and answers the properties without the value.
async fn update_secret(
    shared: &Shared,
    name: &str,
    version: Option<&str>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let route = routes::UPDATE_SECRET;
    if let Err(response) = admit(shared, route, headers, params, Action::Update, name).await {
        return response.into_response();
    }
    let Ok(update) = serde_json::from_slice::<UpdateSecretBody>(body) else {
        return bad_parameter("The request body is not a valid SecretUpdateParameters JSON object.");
    };
    let mut vault = shared.vault();
    let found = vault
        .secrets
        .get_mut(name)
        .filter(|e| e.deleted.is_none())
        .and_then(|entry| match version {
            Some(wanted) => entry.versions.iter_mut().find(|v| v.version == wanted),
            None => entry.versions.last_mut(),
        });
    let Some(stored) = found else {
        return secret_not_found(&version.map_or(name.to_string(), |v| format!("{name}/{v}")));
    };
    if let Some(content_type) = update.content_type {
        stored.content_type = Some(content_type);
    }
    if let Some(attributes) = update.attributes {
        if let Some(enabled) = attributes.enabled {
            stored.enabled = enabled;
        }
        if attributes.nbf.is_some() {
            stored.not_before = attributes.nbf;
        }
        if attributes.exp.is_some() {
            stored.expires = attributes.exp;
        }
    }
    if let Some(tags) = update.tags {
        stored.tags = tags;
    }
    stored.updated = Utc::now().timestamp();
    ok(bundle(&base_url(headers), name, stored, false))
}

async fn delete_secret(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = admit(
        &shared,
        routes::DELETE_SECRET,
        &headers,
        &params,
        Action::Delete,
        &name,
    )
    .await
    {
        return response.into_response();
    }
    let mut vault = shared.vault();
    let in_progress = vault.hold_deletions;
    let Some(entry) = vault.secrets.get_mut(&name).filter(|e| e.deleted.is_none()) else {
        return secret_not_found(&name);
    };
    let deletion = deletion_now(in_progress);
    entry.deleted = Some(deletion);
    match entry.latest() {
        Some(latest) => ok(deleted_bundle(&base_url(&headers), &name, latest, deletion)),
        None => secret_not_found(&name),
    }
}

async fn get_deleted(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let route = routes::GET_DELETED_SECRET;
    if let Err(response) = admit(&shared, route, &headers, &params, Action::GetDeleted, &name).await
    {
        return response.into_response();
    }
    let vault = shared.vault();
    let found = vault.secrets.get(&name).and_then(|e| {
        e.deleted
            .filter(|d| !d.in_progress)
            .and_then(|deletion| e.latest().map(|latest| (latest, deletion)))
    });
    match found {
        Some((latest, deletion)) => {
            ok(deleted_bundle(&base_url(&headers), &name, latest, deletion))
        }
        None => deleted_secret_not_found(&name),
    }
}

async fn purge_deleted(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let route = routes::PURGE_DELETED_SECRET;
    if let Err(response) = admit(&shared, route, &headers, &params, Action::Purge, &name).await {
        return response.into_response();
    }
    let mut vault = shared.vault();
    let deletion = vault.secrets.get(&name).and_then(|e| e.deleted);
    if deletion.is_some_and(|d| d.in_progress) {
        return being_deleted();
    }
    if deletion.is_some() {
        vault.secrets.remove(&name);
        StatusCode::NO_CONTENT.into_response()
    } else {
        deleted_secret_not_found(&name)
    }
}

async fn recover_deleted(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let route = routes::RECOVER_DELETED_SECRET;
    if let Err(response) = admit(&shared, route, &headers, &params, Action::Recover, &name).await {
        return response.into_response();
    }
    let mut vault = shared.vault();
    let Some(entry) = vault.secrets.get_mut(&name).filter(|e| e.deleted.is_some()) else {
        return deleted_secret_not_found(&name);
    };
    if entry.deleted.is_some_and(|d| d.in_progress) {
        return being_deleted();
    }
    entry.deleted = None;
    match entry.latest() {
        Some(latest) => ok(bundle(&base_url(&headers), &name, latest, false)),
        None => deleted_secret_not_found(&name),
    }
}
