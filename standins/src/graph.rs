//! A stand-in for Microsoft Graph's application endpoints and the Entra token endpoint
//! (`/{tenant}/oauth2/v2.0/token`), served together over HTTPS on one loopback port.
//!
//! It speaks the real wire formats: Graph's JSON shapes and `$select`, its error body
//! (`error.code`, `error.message`, `error.innerError` with `request-id` and `date`), the
//! `request-id`/`client-request-id` headers, and the token endpoint's OAuth error bodies with
//! `AADSTS` codes. Tokens and secrets come from the shared [`Tenant`].
//!
//! The token endpoint also serves what MSAL-based clients read first: the tenant's OpenID
//! configuration (`/{tenant}/v2.0/.well-known/openid-configuration`) and instance discovery
//! (`/common/discovery/instance`). A tenant may be named by id or by a verified domain
//! ([`Tenant::add_verified_domain`]); clients authenticate by form fields
//! (`client_secret_post`), HTTP Basic (`client_secret_basic`), or a federated token as
//! `client_assertion` (workload identity, checked as in [`super::federation`]).
//!
//! Routes and their names for [`Faults`]: `token`, `getApplication`, `addPassword`,
//! `removePassword`, `listApplications` (`GET /v1.0/applications` with `$top`, `$filter` on
//! `startswith(displayName,…)` or `appId eq '…'` and `@odata.nextLink` paging by opaque
//! `$skiptoken`) and
//! `listOwnedApplications` (`GET /v1.0/servicePrincipals(appId='…')/ownedObjects/microsoft.graph.application`),
//! and `batch` (`POST /v1.0/$batch`, JSON batching as Microsoft Learn's "Combine multiple
//! HTTP requests using JSON batching" describes it: at most 20 requests, each with `id`,
//! `method`, a `url` relative to the version, optional `headers` and `body`; answered 200
//! with `responses` carrying each request's `id`, `status`, `headers` and `body`, in
//! another order than asked, so clients must correlate by `id`). Each request of a batch
//! goes through `batchRequest` (counted, faulted), then its own route, with its own count,
//! faults and throttling; a fault queued under [`application_read_route`] answers for one
//! application only.
//! `applicationsDelta` (`GET /v1.0/applications/delta`, also `/applications/microsoft.graph.delta`)
//! serves Graph's change tracking (see `delta`).
//! Listings also carry the certificate credentials (`keyCredentials`) added with
//! [`GraphStandin::add_certificate`].
//!
//! Opt-in behaviours of the real directory:
//! - write throttling ([`GraphStandin::set_write_budget`]) models Graph's identity and access
//!   limits: writes (`addPassword`, `removePassword`) per calling application in the tenant
//!   and per tenant within a sliding window, refused beyond that with 429, `Retry-After`
//!   saying when the oldest write leaves the window, and `x-ms-throttle-scope` /
//!   `x-ms-throttle-information`; accepted writes past 80 % of a limit carry
//!   `x-ms-throttle-limit-percentage`;
//! - `Application.ReadWrite.OwnedBy` ([`GraphStandin::require_ownership`]): writes to an
//!   application the caller does not own get 403 `Authorization_RequestDenied`;
//! - replication ([`GraphStandin::set_replication_delay`]): a `removePassword` reaching a
//!   replica before the `addPassword` it follows gets Graph's 400 "No password credential
//!   found with keyId …" although the credential exists (and reads show it).

// Helpers short-circuit with a ready axum `Response`; its size does not matter in a stand-in.
#![allow(clippy::result_large_err)]

use super::faults::{DropConnectionMark, Faults};
use super::https::{serve_tls, ServerTask};
use super::federation::{check_assertion, JWT_BEARER_ASSERTION};
use super::tenant::{AuthFailure, IssuedToken, StandinApp, StandinPassword, Tenant};
use super::tls::TestPki;
use crate::MAX_SECRET_LIFETIME_DAYS;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use url::Url;
use uuid::Uuid;

/// Fault route name of the token endpoint.
pub const ROUTE_TOKEN: &str = "token";
/// Fault route name of `GET /v1.0/applications/...`.
pub const ROUTE_GET_APPLICATION: &str = "getApplication";
/// Fault route name of `POST .../addPassword`.
pub const ROUTE_ADD_PASSWORD: &str = "addPassword";
/// Fault route name of `POST .../removePassword`.
pub const ROUTE_REMOVE_PASSWORD: &str = "removePassword";
/// Fault route name of `GET /v1.0/applications` (the collection, paged).
pub const ROUTE_LIST_APPLICATIONS: &str = "listApplications";
/// Fault route name of `GET /v1.0/servicePrincipals(appId='…')/ownedObjects/microsoft.graph.application`.
pub const ROUTE_LIST_OWNED_APPLICATIONS: &str = "listOwnedApplications";
/// `GET /beta/auditLogs/signIns`.
pub const ROUTE_SIGN_INS: &str = "signIns";
/// `POST /v1.0/$batch` (the batch itself; its requests count under their own routes).
pub const ROUTE_BATCH: &str = "batch";
/// Each request inside a batch, counted (and faulted) before its own route: HTTP requests
/// to Graph are all counts but these, less as many again for the routes they went on to.
pub const ROUTE_BATCH_REQUEST: &str = "batchRequest";
/// `GET /v1.0/applications/delta` (or `/applications/microsoft.graph.delta`), each page.
pub const ROUTE_APPLICATIONS_DELTA: &str = "applicationsDelta";

/// The fault route of reads of one application (after [`ROUTE_GET_APPLICATION`] has
/// counted and faulted the request): a fault queued here answers for that application
/// only, e.g. one item of a `$batch` throttled with `Retry-After`.
pub fn application_read_route(object_id: Uuid) -> String {
    format!("{ROUTE_GET_APPLICATION} {object_id}")
}

/// Graph's own application id; tokens for `{it}/.default` are Graph tokens too.
const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
const TOKEN_LIFETIME_SECONDS: u64 = 3599;
const SELECTABLE: &[&str] = &[
    "id",
    "appId",
    "displayName",
    "passwordCredentials",
    "keyCredentials",
    "signInAudience",
];

/// A running Graph + token endpoint stand-in; stops when dropped.
pub struct GraphStandin {
    address: SocketAddr,
    tenant: Tenant,
    faults: Faults,
    listing: listing::Extras,
    budget: budget::WriteBudget,
    directory: Arc<Mutex<DirectorySettings>>,
    /// Keeps the server running; dropping it stops it.
    _server: ServerTask,
}

#[derive(Clone)]
struct AppState {
    tenant: Tenant,
    faults: Faults,
    listing: listing::Extras,
    budget: budget::WriteBudget,
    directory: Arc<Mutex<DirectorySettings>>,
}

/// The opt-in behaviours of the real directory (see the module comment).
#[derive(Default)]
struct DirectorySettings {
    require_ownership: bool,
    /// Applications per page of a delta round (Graph chooses its own; tests set it).
    delta_page_size: Option<usize>,
    replication_delay: Duration,
    audit_log: AuditLogAccess,
}

/// Whether the rotator may read the sign-in log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuditLogAccess {
    #[default]
    Allowed,
    /// `AuditLog.Read.All` not granted: 403 `Authorization_RequestDenied`.
    NoPermission,
    /// The tenant has no Microsoft Entra ID P1/P2 licence: 403
    /// `Authentication_RequestFromNonPremiumTenantOrB2CTenant`.
    NoLicence,
}

impl AppState {
    fn directory(&self) -> MutexGuard<'_, DirectorySettings> {
        crate::lock(&self.directory)
    }
}

/// What the stand-in knows about each request before a handler runs: Graph's ids, which it
/// stamps on the response and repeats in error bodies, and the base URL it was called at.
#[derive(Clone, Debug)]
struct RequestContext {
    request_id: String,
    client_request_id: String,
    /// `https://{Host}`: Graph answers `@odata.context` in terms of the host it was called at.
    base: String,
}

impl GraphStandin {
    /// Starts serving on `127.0.0.1` on a free port, with TLS from `pki`.
    pub async fn start(tenant: Tenant, pki: &TestPki) -> anyhow::Result<Self> {
        let faults = Faults::with_error_body(graph_fault_body);
        let listing = listing::Extras::default();
        let budget = budget::WriteBudget::default();
        let directory = Arc::new(Mutex::new(DirectorySettings::default()));
        let state = AppState {
            tenant: tenant.clone(),
            faults: faults.clone(),
            listing: listing.clone(),
            budget: budget.clone(),
            directory: directory.clone(),
        };
        let (address, server) = serve_tls(router(state), pki).await?;
        Ok(Self {
            address,
            tenant,
            faults,
            listing,
            budget,
            directory,
            _server: server,
        })
    }

    /// The authority host for the token endpoint, e.g. `https://127.0.0.1:41234`.
    pub fn authority_host(&self) -> Url {
        self.base_url()
    }

    /// The Graph base URL, e.g. `https://127.0.0.1:41234`; clients append `/v1.0`.
    pub fn graph_url(&self) -> Url {
        self.base_url()
    }

    /// The fault queues and request counts, keyed by the `ROUTE_*` names.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The tenant this stand-in serves.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// Adds a certificate credential (`keyCredentials`, `AsymmetricX509Cert`, `Verify`)
    /// to the application with this object id; returns its keyId.
    pub fn add_certificate(
        &self,
        object_id: Uuid,
        display_name: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Uuid {
        self.listing
            .add_certificate(object_id, display_name, start, end)
    }

    /// Makes the service principal of `owner_client_id` an owner of the application with
    /// this object id.
    pub fn add_owner(&self, object_id: Uuid, owner_client_id: Uuid) {
        self.listing.add_owner(object_id, owner_client_id);
    }

    /// Makes the user `user_principal_name` an owner of the application with this object
    /// id (listed with `$expand=owners`).
    pub fn add_user_owner(&self, object_id: Uuid, user_principal_name: &str) {
        self.listing.add_user_owner(object_id, user_principal_name);
    }

    /// Takes the service principal of `owner_client_id` off the application's owners.
    pub fn remove_owner(&self, object_id: Uuid, owner_client_id: Uuid) {
        self.listing.remove_owner(object_id, owner_client_id);
    }

    /// Throttles writes from now on: at most `per_app` by each calling application and
    /// `per_tenant` by all callers together within any `window`; a write beyond either is
    /// answered 429 with `Retry-After` (whole seconds, at least 1), as Graph does. Real
    /// limits: 3,000 per app per 150 s and 18,000 per tenant per 5 min.
    pub fn set_write_budget(&self, per_app: usize, per_tenant: usize, window: Duration) {
        self.budget.configure(per_app, per_tenant, window);
    }

    /// From now on callers hold `Application.ReadWrite.OwnedBy` only (the rotator's least
    /// privilege): `addPassword` and `removePassword` on an application the caller is not an
    /// owner of ([`add_owner`](Self::add_owner)) get 403 `Authorization_RequestDenied`, as
    /// Graph answers. Reads stay allowed.
    pub fn require_ownership(&self) {
        crate::lock(&self.directory).require_ownership = true;
    }

    /// What `GET /beta/auditLogs/signIns` answers the rotator from now on.
    pub fn set_audit_log_access(&self, access: AuditLogAccess) {
        crate::lock(&self.directory).audit_log = access;
    }

    /// From now on a password credential is unknown to `removePassword` until `delay` after
    /// its `addPassword` (400 "No password credential found with keyId …"), as when the
    /// removal reaches a directory replica the new credential has not reached yet.
    pub fn set_replication_delay(&self, delay: Duration) {
        crate::lock(&self.directory).replication_delay = delay;
    }

    /// How many writes the write budget refused with 429 so far.
    pub fn throttled_writes(&self) -> u64 {
        self.budget.throttled()
    }

    /// Serves `applications/delta` rounds `per_page` applications a page (at least 1).
    pub fn set_delta_page_size(&self, per_page: usize) {
        crate::lock(&self.directory).delta_page_size = Some(per_page.max(1));
    }

    /// Forgets every delta and skip token issued so far: a round continued from one is
    /// refused as Graph refuses an expired token (400 `syncStateNotFound`).
    pub fn expire_delta_tokens(&self) {
        self.tenant.changes().epoch += 1;
    }

    fn base_url(&self) -> Url {
        let text = format!("https://{}", self.address);
        Url::parse(&text)
            .unwrap_or_else(|_| unreachable!("a socket address always forms a valid URL"))
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery::openid_configuration),
        )
        .route("/common/discovery/instance", get(discovery::instance_discovery))
        .route("/v1.0/applications/{id}", get(get_application))
        .route("/v1.0/applications/{id}/addPassword", post(add_password))
        .route(
            "/v1.0/applications/{id}/removePassword",
            post(remove_password),
        )
        .route("/beta/auditLogs/signIns", get(sign_in_log::list))
        .route("/v1.0/$batch", post(batch::batch))
        .route("/v1.0/applications", get(listing::list_applications))
        .route("/v1.0/applications/delta", get(delta::applications_delta))
        .route("/v1.0/applications/microsoft.graph.delta", get(delta::applications_delta))
        .route(
            "/v1.0/{key}/ownedObjects/microsoft.graph.application",
            get(listing::list_owned_applications),
        )
        .route("/v1.0/{key}", get(get_application_by_key))
        .route("/v1.0/{key}/addPassword", post(add_password_by_key))
        .route("/v1.0/{key}/removePassword", post(remove_password_by_key))
        .fallback(not_found)
        .layer(from_fn(stamp_request_ids))
        .with_state(state)
}

/// Gives each request Graph's `request-id` and echoes (or creates) `client-request-id`.
async fn stamp_request_ids(mut request: Request, next: Next) -> Response {
    let request_id = Uuid::new_v4().to_string();
    let client_request_id = request
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| request_id.clone(), str::to_string);
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("graph.microsoft.com");
    let ids = RequestContext {
        request_id,
        client_request_id,
        base: format!("https://{host}"),
    };
    request.extensions_mut().insert(ids.clone());
    let mut response = next.run(request).await;
    for (name, value) in [
        ("request-id", &ids.request_id),
        ("client-request-id", &ids.client_request_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------------------

async fn token(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(fault) = intercept(&state, ROUTE_TOKEN, &ids).await {
        return fault;
    }
    let mut form: HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    if let Err(refusal) = take_basic_credentials(&headers, &mut form) {
        return refusal.into_response(&ids);
    }
    match grant_token(&state.tenant, &tenant, &form) {
        Ok(access_token) => Json(json!({
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_SECONDS,
            "ext_expires_in": TOKEN_LIFETIME_SECONDS,
            "access_token": access_token,
        }))
        .into_response(),
        Err(refusal) => refusal.into_response(&ids),
    }
}

/// Why the token endpoint refused a request, as Entra words it.
struct TokenRefusal {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl TokenRefusal {
    fn new(status: StatusCode, error: &'static str, code: u32, description: String) -> Self {
        Self {
            status,
            error,
            code,
            description,
        }
    }

    fn into_response(self, ids: &RequestContext) -> Response {
        let body = aad_error_body(self.error, self.code, &self.description, ids);
        (self.status, Json(body)).into_response()
    }
}

/// Client authentication by HTTP Basic (`client_secret_basic`, RFC 6749 section 2.3.1):
/// `base64(urlencode(client_id) ":" urlencode(client_secret))`. Its values fill the form's
/// `client_id` and `client_secret`; a form naming another client is refused.
fn take_basic_credentials(
    headers: &HeaderMap,
    form: &mut HashMap<String, String>,
) -> Result<(), TokenRefusal> {
    use base64::Engine as _;
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return Ok(());
    };
    let malformed = || {
        TokenRefusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'. The Authorization header is not a valid HTTP Basic client authentication.".into(),
        )
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |text: &str| -> String {
        url::form_urlencoded::parse(format!("v={text}").as_bytes())
            .map(|(_, value)| value.into_owned())
            .next()
            .unwrap_or_default()
    };
    let (id, secret) = (unescape(id), unescape(secret));
    if form.get("client_id").is_some_and(|form_id| *form_id != id) {
        return Err(TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50148,
            "AADSTS50148: The client_id in the request body does not match the client_id in the Authorization header.".into(),
        ));
    }
    form.insert("client_id".into(), id);
    form.insert("client_secret".into(), secret);
    Ok(())
}

/// Entra's refusal of an unknown tenant: `invalid_request` at the token endpoint,
/// `invalid_tenant` at the discovery documents.
fn tenant_not_found(error: &'static str, tenant_in_path: &str) -> TokenRefusal {
    TokenRefusal::new(
        StatusCode::BAD_REQUEST,
        error,
        90002,
        format!(
            "AADSTS90002: Tenant '{tenant_in_path}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
        ),
    )
}

fn grant_token(
    tenant: &Tenant,
    tenant_in_path: &str,
    form: &HashMap<String, String>,
) -> Result<String, TokenRefusal> {
    if !tenant.is_named(tenant_in_path) {
        return Err(tenant_not_found("invalid_request", tenant_in_path));
    }
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let grant_type = field("grant_type").ok_or_else(|| missing_parameter("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("AADSTS70003: The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id").ok_or_else(|| missing_parameter("client_id"))?;
    let scope = field("scope").ok_or_else(|| {
        TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90014,
            "AADSTS90014: The required field 'scope' is missing from the credential. Ensure that you have all the necessary parameters for the login request.".into(),
        )
    })?;
    if !scope.ends_with("/.default") || scope.contains(' ') {
        return Err(TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    let Ok(client_uuid) = client_id.parse::<Uuid>() else {
        return Err(unknown_client(client_id, tenant));
    };
    if let Some(assertion) = field("client_assertion") {
        return grant_for_assertion(tenant, client_uuid, field("client_assertion_type"), assertion, scope);
    }
    let secret = field("client_secret").ok_or_else(|| {
        TokenRefusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
        )
    })?;
    match tenant.sign_in(client_uuid, secret, scope.trim_end_matches("/.default")) {
        Ok(()) => Ok(tenant.issue_token(
            client_uuid,
            scope,
            Duration::from_secs(TOKEN_LIFETIME_SECONDS),
        )),
        Err(AuthFailure::UnknownClient) => Err(unknown_client(client_id, tenant)),
        Err(AuthFailure::InvalidSecret | AuthFailure::NotYetReplicated) => Err(TokenRefusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        )),
        Err(AuthFailure::Expired) => Err(TokenRefusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000222,
            format!(
                "AADSTS7000222: The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
            ),
        )),
    }
}

/// Workload identity federation: a JWT of a trusted issuer instead of a secret.
fn grant_for_assertion(
    tenant: &Tenant,
    client_id: Uuid,
    assertion_type: Option<&str>,
    assertion: &str,
    scope: &str,
) -> Result<String, TokenRefusal> {
    if assertion_type != Some(JWT_BEARER_ASSERTION) {
        return Err(TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            700023,
            format!("AADSTS700023: The client_assertion_type must be '{JWT_BEARER_ASSERTION}'."),
        ));
    }
    if tenant.app_by_client_id(client_id).is_none() {
        return Err(unknown_client(&client_id.to_string(), tenant));
    }
    check_assertion(tenant, client_id, assertion, Utc::now())
        .map_err(|refusal| TokenRefusal::new(StatusCode::UNAUTHORIZED, "invalid_client", refusal.code, refusal.description))?;
    Ok(tenant.issue_token(client_id, scope, Duration::from_secs(TOKEN_LIFETIME_SECONDS)))
}

fn missing_parameter(name: &str) -> TokenRefusal {
    TokenRefusal::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        format!("AADSTS900144: The request body must contain the following parameter: '{name}'."),
    )
}

fn unknown_client(client_id: &str, tenant: &Tenant) -> TokenRefusal {
    TokenRefusal::new(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700016,
        format!(
            "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
            tenant.tenant_id
        ),
    )
}

/// Entra's OAuth error body; the description ends with the trace id, the correlation id
/// and the time, each on its own CRLF-separated line as Entra sends them.
fn aad_error_body(error: &str, code: u32, description: &str, ids: &RequestContext) -> Value {
    let now = Utc::now();
    let timestamp = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
    json!({
        "error": error,
        "error_description": format!(
            "{description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {timestamp}",
            ids.request_id, ids.client_request_id
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": ids.request_id,
        "correlation_id": ids.client_request_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    })
}

/// The documents MSAL-based clients (azure-identity, MSAL Python, MSAL.NET) read before
/// they ask for a token: the tenant's OpenID configuration and instance discovery.
mod discovery {
    use super::*;

    /// `GET /{tenant}/v2.0/.well-known/openid-configuration`, for a tenant named by id or
    /// verified domain; the endpoints always carry the tenant id, as Entra's do.
    pub(super) async fn openid_configuration(
        State(state): State<AppState>,
        Extension(ids): Extension<RequestContext>,
        Path(tenant): Path<String>,
    ) -> Response {
        if !state.tenant.is_named(&tenant) {
            return tenant_not_found("invalid_tenant", &tenant).into_response(&ids);
        }
        let authority = format!("{}/{}", ids.base, state.tenant.tenant_id);
        Json(json!({
            "token_endpoint": format!("{authority}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{authority}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{authority}/v2.0"),
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": format!("{authority}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{authority}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{authority}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": format!("{authority}/kerberos"),
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }))
        .into_response()
    }

    /// `GET /common/discovery/instance?api-version=1.1&authorization_endpoint=…`: the
    /// authority is known when the endpoint is this host's; the answer names the tenant's
    /// discovery document and this host as its only alias. Another host is
    /// `invalid_instance` (AADSTS50049), as Entra answers for an authority it does not know.
    pub(super) async fn instance_discovery(
        Extension(ids): Extension<RequestContext>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Response {
        let endpoint = query
            .get("authorization_endpoint")
            .and_then(|e| Url::parse(e).ok());
        // By host name only, as Entra knows its authorities: MSAL sends the authority's
        // host without its port.
        let own = Url::parse(&ids.base).ok();
        let same_host = |e: &Url| own.as_ref().is_some_and(|own| own.host() == e.host());
        let Some(endpoint) = endpoint.filter(same_host) else {
            return TokenRefusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_instance",
                50049,
                "AADSTS50049: Unknown or invalid instance.".into(),
            )
            .into_response(&ids);
        };
        let tenant = endpoint
            .path_segments()
            .and_then(|mut segments| segments.next())
            .filter(|t| !t.is_empty())
            .unwrap_or("common")
            .to_string();
        let authority_host = ids.base.trim_start_matches("https://");
        Json(json!({
            "tenant_discovery_endpoint": format!("{}/{tenant}/v2.0/.well-known/openid-configuration", ids.base),
            "api-version": "1.1",
            "metadata": [{
                "preferred_network": authority_host,
                "preferred_cache": authority_host,
                "aliases": [authority_host],
            }],
        }))
        .into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// Graph application endpoints
// ---------------------------------------------------------------------------------------------

/// How the request named the application.
enum AppAddress {
    ObjectId(String),
    AppId(String),
}

impl AppAddress {
    /// Parses the `applications(appId='…')` alternate-key segment.
    fn from_key_segment(segment: &str) -> Option<Self> {
        let inner = segment.strip_prefix("applications(")?.strip_suffix(')')?;
        let value = inner.strip_prefix("appId=")?;
        let value = value.strip_prefix('\'')?.strip_suffix('\'')?;
        Some(Self::AppId(value.to_string()))
    }

    fn raw(&self) -> &str {
        match self {
            Self::ObjectId(id) | Self::AppId(id) => id,
        }
    }

    /// Finds the application's object id, or the Graph error to answer.
    fn resolve(&self, tenant: &Tenant, ids: &RequestContext) -> Result<Uuid, Response> {
        let Ok(id) = self.raw().parse::<Uuid>() else {
            let message = format!("Invalid object identifier '{}'.", self.raw());
            return Err(graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &message,
                ids,
            ));
        };
        let found = match self {
            Self::ObjectId(_) => tenant.app(id),
            Self::AppId(_) => tenant.app_by_client_id(id),
        };
        found.map(|app| app.object_id).ok_or_else(|| {
            let message = format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            );
            graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", &message, ids)
        })
    }
}

/// Everything a Graph handler needs before doing its work.
struct GraphCall {
    state: AppState,
    ids: RequestContext,
    object_id: Uuid,
    /// For writes past 80 % of a write limit: the share of it used, for the response's
    /// `x-ms-throttle-limit-percentage`.
    limit_used: Option<f64>,
}

impl GraphCall {
    /// The handler's answer, with the throttling header Graph adds near a limit.
    fn finish(&self, mut response: Response) -> Response {
        if let Some(value) = self
            .limit_used
            .and_then(|used| HeaderValue::from_str(&format!("{used:.2}")).ok())
        {
            response
                .headers_mut()
                .insert("x-ms-throttle-limit-percentage", value);
        }
        response
    }
}

/// Counts and faults the route, checks the bearer token, then resolves the application.
async fn begin(
    state: AppState,
    ids: RequestContext,
    route: &str,
    headers: &HeaderMap,
    address: AppAddress,
) -> Result<GraphCall, Response> {
    if let Some(fault) = intercept(&state, route, &ids).await {
        return Err(fault);
    }
    let caller = check_bearer(&state, headers, &ids)?;
    let is_write = route == ROUTE_ADD_PASSWORD || route == ROUTE_REMOVE_PASSWORD;
    let limit_used = if is_write {
        state
            .budget
            .admit(caller.client_id)
            .map_err(|refusal| {
                budget::throttled_response(&refusal, caller.client_id, state.tenant.tenant_id, &ids)
            })?
    } else {
        None
    };
    let object_id = address.resolve(&state.tenant, &ids)?;
    let owned_only = state.directory().require_ownership;
    if is_write && owned_only && !state.listing.is_owned_by(object_id, caller.client_id) {
        return Err(graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
            &ids,
        ));
    }
    Ok(GraphCall {
        state,
        ids,
        object_id,
        limit_used,
    })
}

/// The grant behind the request's bearer token, if it is a valid Graph token.
fn check_bearer(
    state: &AppState,
    headers: &HeaderMap,
    ids: &RequestContext,
) -> Result<IssuedToken, Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(bearer) = bearer else {
        return Err(unauthorized("Access token is empty.", ids));
    };
    let Some(grant) = state.tenant.token(bearer) else {
        return Err(unauthorized("Access token validation failure.", ids));
    };
    let graph_scopes = [
        "https://graph.microsoft.com/.default".to_string(),
        format!("{GRAPH_APP_ID}/.default"),
        format!("{}/.default", ids.base),
    ];
    if !graph_scopes.contains(&grant.scope) {
        return Err(unauthorized(
            "Access token validation failure. Invalid audience.",
            ids,
        ));
    }
    Ok(grant)
}

fn unauthorized(message: &str, ids: &RequestContext) -> Response {
    let mut response = graph_error(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
        ids,
    );
    let challenge = format!(
        "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"{GRAPH_APP_ID}\""
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

async fn get_application(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    read_application(state, ids, &headers, AppAddress::ObjectId(id), &query).await
}

async fn get_application_by_key(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match AppAddress::from_key_segment(&key) {
        Some(address) => read_application(state, ids, &headers, address, &query).await,
        None => unknown_segment(&key, &ids),
    }
}

async fn read_application(
    state: AppState,
    ids: RequestContext,
    headers: &HeaderMap,
    address: AppAddress,
    query: &HashMap<String, String>,
) -> Response {
    let call = match begin(state, ids, ROUTE_GET_APPLICATION, headers, address).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let select = match parse_select(query.get("$select").map(String::as_str), &call.ids) {
        Ok(select) => select,
        Err(response) => return response,
    };
    if let Some(fault) = intercept(&call.state, &application_read_route(call.object_id), &call.ids).await {
        return fault;
    }
    let Some(app) = call.state.tenant.app(call.object_id) else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            "The application was deleted.",
            &call.ids,
        );
    };
    let full = json!({
        "id": app.object_id,
        "appId": app.app_id,
        "displayName": app.display_name,
        "signInAudience": "AzureADMyOrg",
        "keyCredentials": call.state.listing.certificates_json(app.object_id),
        "passwordCredentials": app.passwords.iter().map(password_json).collect::<Vec<_>>(),
    });
    let context = match &select {
        Some(fields) => format!(
            "{}/v1.0/$metadata#applications({})/$entity",
            call.ids.base,
            fields.join(",")
        ),
        None => format!("{}/v1.0/$metadata#applications/$entity", call.ids.base),
    };
    let mut body = Map::new();
    body.insert("@odata.context".into(), Value::String(context));
    if let Value::Object(fields) = full {
        for (name, value) in fields {
            if select.as_ref().is_none_or(|s| s.contains(&name)) {
                body.insert(name, value);
            }
        }
    }
    Json(Value::Object(body)).into_response()
}

/// The `$select` fields, or Graph's error for a property applications do not have.
fn parse_select(
    select: Option<&str>,
    ids: &RequestContext,
) -> Result<Option<Vec<String>>, Response> {
    let Some(select) = select else {
        return Ok(None);
    };
    let fields: Vec<String> = select
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if let Some(unknown) = fields.iter().find(|f| !SELECTABLE.contains(&f.as_str())) {
        let message = format!(
            "Could not find a property named '{unknown}' on type 'microsoft.graph.application'."
        );
        return Err(graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            &message,
            ids,
        ));
    }
    Ok(Some(fields))
}

fn password_json(password: &StandinPassword) -> Value {
    json!({
        "customKeyIdentifier": null,
        "displayName": password.display_name,
        "endDateTime": graph_time(password.end),
        "hint": password.hint,
        "keyId": password.key_id,
        "secretText": null,
        "startDateTime": graph_time(password.start),
    })
}

fn graph_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddPasswordBody {
    password_credential: Option<NewPasswordCredential>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewPasswordCredential {
    display_name: Option<String>,
    start_date_time: Option<DateTime<Utc>>,
    end_date_time: Option<DateTime<Utc>>,
}

async fn add_password(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mint(state, ids, &headers, AppAddress::ObjectId(id), &body).await
}

async fn add_password_by_key(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match AppAddress::from_key_segment(&key) {
        Some(address) => mint(state, ids, &headers, address, &body).await,
        None => unknown_segment(&key, &ids),
    }
}

async fn mint(
    state: AppState,
    ids: RequestContext,
    headers: &HeaderMap,
    address: AppAddress,
    body: &[u8],
) -> Response {
    let call = match begin(state, ids, ROUTE_ADD_PASSWORD, headers, address).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let request: AddPasswordBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return bad_body(&error.to_string(), &call.ids),
    };
    let credential = request
        .password_credential
        .unwrap_or(NewPasswordCredential {
            display_name: None,
            start_date_time: None,
            end_date_time: None,
        });
    let start = credential.start_date_time.unwrap_or_else(Utc::now);
    // Graph's default lifetime for addPassword without endDateTime is two years.
    let end = credential
        .end_date_time
        .unwrap_or(start + chrono::Duration::days(MAX_SECRET_LIFETIME_DAYS));
    if let Err(response) = check_lifetime(start, end, &call.ids) {
        return response;
    }
    let Some(minted) =
        call.state
            .tenant
            .add_password(call.object_id, credential.display_name, start, end)
    else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            "The application was deleted.",
            &call.ids,
        );
    };
    let mut body = password_json(&minted);
    body["secretText"] = Value::String(minted.secret_text);
    body["@odata.context"] = Value::String(format!(
        "{}/v1.0/$metadata#microsoft.graph.passwordCredential",
        call.ids.base
    ));
    call.finish(Json(body).into_response())
}

/// The tenant's app-management policy: a secret ends after it starts, at most two years later.
fn check_lifetime(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    ids: &RequestContext,
) -> Result<(), Response> {
    if end <= start {
        let message = "Invalid value specified for property 'endDateTime' of resource 'PasswordCredential'. endDateTime must be later than startDateTime.";
        return Err(graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            message,
            ids,
        ));
    }
    if end - start > chrono::Duration::days(MAX_SECRET_LIFETIME_DAYS) {
        let message = format!(
            "Credential lifetime exceeds the max value allowed as per assigned policy '{}'.",
            default_policy_id()
        );
        return Err(graph_error(
            StatusCode::BAD_REQUEST,
            "CredentialInvalidLifetimeAsPerAppPolicy",
            &message,
            ids,
        ));
    }
    Ok(())
}

/// The id of the tenant-default app management policy (a fixed, recognisable value).
fn default_policy_id() -> Uuid {
    Uuid::from_u128(0x730)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemovePasswordBody {
    key_id: Option<String>,
}

async fn remove_password(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    revoke(state, ids, &headers, AppAddress::ObjectId(id), &body).await
}

async fn remove_password_by_key(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match AppAddress::from_key_segment(&key) {
        Some(address) => revoke(state, ids, &headers, address, &body).await,
        None => unknown_segment(&key, &ids),
    }
}

async fn revoke(
    state: AppState,
    ids: RequestContext,
    headers: &HeaderMap,
    address: AppAddress,
    body: &[u8],
) -> Response {
    let call = match begin(state, ids, ROUTE_REMOVE_PASSWORD, headers, address).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let request: RemovePasswordBody = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return bad_body(&error.to_string(), &call.ids),
    };
    let Some(key_id) = request.key_id else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "A value is required for property 'keyId' of resource 'removePassword'.",
            &call.ids,
        );
    };
    let delay = call.state.directory().replication_delay;
    let replicated = |key: Uuid| {
        call.state.tenant.app(call.object_id).is_none_or(|app| {
            app.passwords
                .iter()
                .filter(|p| p.key_id == key)
                .all(|p| Instant::now() >= p.minted_at + delay)
        })
    };
    let removed = key_id
        .parse::<Uuid>()
        .is_ok_and(|key| replicated(key) && call.state.tenant.remove_password(call.object_id, key));
    if !removed {
        let message = format!("No password credential found with keyId {key_id}.");
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            &message,
            &call.ids,
        );
    }
    call.finish(StatusCode::NO_CONTENT.into_response())
}

fn bad_body(detail: &str, ids: &RequestContext) -> Response {
    let message = format!("Invalid request body: {detail}");
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", &message, ids)
}

fn unknown_segment(segment: &str, ids: &RequestContext) -> Response {
    let message = format!("Resource not found for the segment '{segment}'.");
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", &message, ids)
}

async fn not_found(Extension(ids): Extension<RequestContext>) -> Response {
    graph_error(StatusCode::NOT_FOUND, "UnknownError", "", &ids)
}

// ---------------------------------------------------------------------------------------------
// Errors and faults
// ---------------------------------------------------------------------------------------------

/// Graph's error body: `{"error":{"code","message","innerError":{...}}}`.
fn graph_error(status: StatusCode, code: &str, message: &str, ids: &RequestContext) -> Response {
    let body = json!({
        "error": { "code": code, "message": message, "innerError": inner_error(ids) }
    });
    (status, Json(body)).into_response()
}

fn inner_error(ids: &RequestContext) -> Value {
    json!({
        "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
        "request-id": ids.request_id,
        "client-request-id": ids.client_request_id,
    })
}

/// The body Graph sends for an injected status (without the per-request `innerError`).
fn graph_fault_body(status: u16) -> Value {
    let (code, message) = match status {
        400 => ("Request_BadRequest", "Invalid request."),
        401 => (
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        ),
        403 => (
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        404 => (
            "Request_ResourceNotFound",
            "Resource does not exist or one of its queried reference-property objects are not present.",
        ),
        429 => (
            "TooManyRequests",
            "Too many requests, please retry after the time given in Retry-After.",
        ),
        503 => (
            "serviceNotAvailable",
            "Service is unavailable, please retry later.",
        ),
        504 => ("GatewayTimeout", "The gateway timed out."),
        s if s >= 500 => ("generalException", "An internal server error occurred."),
        _ => ("UnknownError", "The request failed."),
    };
    json!({ "error": { "code": code, "message": message } })
}

/// Plays a queued fault and dresses its body the way the route's real service would:
/// Entra's OAuth error for the token endpoint, Graph's `innerError` ids elsewhere.
async fn intercept(state: &AppState, route: &str, ids: &RequestContext) -> Option<Response> {
    let response = state.faults.intercept(route).await?;
    if response.status().is_success() || response.extensions().get::<DropConnectionMark>().is_some()
    {
        return Some(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if route == ROUTE_TOKEN {
        if value.get("error_codes").is_none() {
            value = transient_aad_error(parts.status, ids);
        }
    } else if let Some(error) = value.get_mut("error").and_then(Value::as_object_mut) {
        error
            .entry("innerError")
            .or_insert_with(|| inner_error(ids));
    }
    let mut dressed = (parts.status, Json(value)).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            dressed.headers_mut().insert(name, value.clone());
        }
    }
    Some(dressed)
}

fn transient_aad_error(status: StatusCode, ids: &RequestContext) -> Value {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        aad_error_body(
            "temporarily_unavailable",
            90033,
            "AADSTS90033: A transient error has occurred. Please try again.",
            ids,
        )
    } else {
        aad_error_body(
            "invalid_request",
            90000,
            "AADSTS90000: The request was refused.",
            ids,
        )
    }
}

/// `GET /v1.0/applications/delta`: change tracking with delta and skip tokens.
mod delta;

// ---------------------------------------------------------------------------------------------
// Listings: the applications collection and a service principal's owned applications
// ---------------------------------------------------------------------------------------------

/// `GET /v1.0/applications` and `.../ownedObjects/microsoft.graph.application`, paged the
/// way Graph pages directory objects: `$top` (default 100, at most 999), and while more
/// remain an absolute `@odata.nextLink` repeating the query with an opaque `$skiptoken`.
mod listing {
    use super::*;
    use base64::Engine as _;
    use std::sync::{Arc, Mutex, MutexGuard};

    const DEFAULT_PAGE_SIZE: usize = 100;
    const MAX_PAGE_SIZE: usize = 999;
    /// What a `$skiptoken` decodes to, before the last object id of the previous page.
    const TOKEN_PREFIX: &str = "standin-after:";

    /// What Graph knows about applications beyond the shared tenant: certificates and owners.
    #[derive(Clone, Default)]
    pub(super) struct Extras {
        state: Arc<Mutex<ExtrasState>>,
    }

    #[derive(Default)]
    struct ExtrasState {
        certificates: HashMap<Uuid, Vec<Certificate>>,
        /// Application object id → client ids of the service principals owning it.
        owners: HashMap<Uuid, Vec<Uuid>>,
        /// Application object id → its owners that are users (object id, userPrincipalName).
        user_owners: HashMap<Uuid, Vec<(Uuid, String)>>,
    }

    /// Graph expands at most this many objects of a relationship.
    const MAX_EXPANDED: usize = 20;
    /// Graph's largest page when a relationship is expanded.
    const MAX_EXPANDED_PAGE_SIZE: usize = 100;

    #[derive(Clone)]
    struct Certificate {
        key_id: Uuid,
        display_name: String,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    }

    impl Extras {
        fn state(&self) -> MutexGuard<'_, ExtrasState> {
            crate::lock(&self.state)
        }

        pub(super) fn add_certificate(
            &self,
            object_id: Uuid,
            display_name: &str,
            start: DateTime<Utc>,
            end: DateTime<Utc>,
        ) -> Uuid {
            let key_id = Uuid::new_v4();
            let certificate = Certificate {
                key_id,
                display_name: display_name.to_string(),
                start,
                end,
            };
            self.state()
                .certificates
                .entry(object_id)
                .or_default()
                .push(certificate);
            key_id
        }

        pub(super) fn add_owner(&self, object_id: Uuid, owner_client_id: Uuid) {
            self.state()
                .owners
                .entry(object_id)
                .or_default()
                .push(owner_client_id);
        }

        pub(super) fn add_user_owner(&self, object_id: Uuid, user_principal_name: &str) {
            let user = (Uuid::new_v4(), user_principal_name.to_string());
            self.state().user_owners.entry(object_id).or_default().push(user);
        }

        /// `$expand=owners`: users first, then service principals (the stand-in keeps no
        /// object ids of its own for those), at most [`MAX_EXPANDED`].
        fn owners_json(&self, tenant: &crate::tenant::Tenant, object_id: Uuid) -> Vec<Value> {
            let state = self.state();
            let users = state.user_owners.get(&object_id).into_iter().flatten().map(|(id, principal)| {
                let name = principal.split('@').next().unwrap_or_default();
                json!({ "@odata.type": "#microsoft.graph.user", "id": id, "displayName": name, "userPrincipalName": principal, "mail": principal })
            });
            let principals = state.owners.get(&object_id).into_iter().flatten().map(|client_id| {
                let name = tenant.app_by_client_id(*client_id).map(|a| a.display_name);
                json!({ "@odata.type": "#microsoft.graph.servicePrincipal", "appId": client_id, "displayName": name })
            });
            users.chain(principals).take(MAX_EXPANDED).collect()
        }

        pub(super) fn remove_owner(&self, object_id: Uuid, owner_client_id: Uuid) {
            if let Some(owners) = self.state().owners.get_mut(&object_id) {
                owners.retain(|owner| *owner != owner_client_id);
            }
        }

        pub(super) fn certificates_json(&self, object_id: Uuid) -> Vec<Value> {
            let state = self.state();
            let certificates = state
                .certificates
                .get(&object_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            certificates
                .iter()
                .map(|c| {
                    json!({
                        "customKeyIdentifier": null,
                        "displayName": c.display_name,
                        "endDateTime": graph_time(c.end),
                        "key": null,
                        "keyId": c.key_id,
                        "startDateTime": graph_time(c.start),
                        "type": "AsymmetricX509Cert",
                        "usage": "Verify",
                    })
                })
                .collect()
        }

        pub(super) fn is_owned_by(&self, object_id: Uuid, owner_client_id: Uuid) -> bool {
            self.state()
                .owners
                .get(&object_id)
                .is_some_and(|owners| owners.contains(&owner_client_id))
        }
    }

    pub(super) async fn list_applications(
        State(state): State<AppState>,
        Extension(ids): Extension<RequestContext>,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        if let Some(fault) = intercept(&state, ROUTE_LIST_APPLICATIONS, &ids).await {
            return fault;
        }
        if let Err(response) = check_bearer(&state, &headers, &ids) {
            return response;
        }
        let filter = match query
            .get("$filter")
            .map(|f| parse_filter(f, &ids))
            .transpose()
        {
            Ok(filter) => filter,
            Err(response) => return response,
        };
        let apps = state
            .tenant
            .apps()
            .into_iter()
            .filter(|a| filter.as_ref().is_none_or(|f| f.matches(a)))
            .collect();
        page(&state, &ids, "applications", &query, apps, false)
    }

    pub(super) async fn list_owned_applications(
        State(state): State<AppState>,
        Extension(ids): Extension<RequestContext>,
        Path(key): Path<String>,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        if let Some(fault) = intercept(&state, ROUTE_LIST_OWNED_APPLICATIONS, &ids).await {
            return fault;
        }
        if let Err(response) = check_bearer(&state, &headers, &ids) {
            return response;
        }
        let Some(owner) = service_principal_app_id(&key) else {
            return unknown_segment(&key, &ids);
        };
        let owner_exists = owner
            .parse::<Uuid>()
            .ok()
            .and_then(|id| state.tenant.app_by_client_id(id));
        let Some(owner) = owner_exists else {
            let message = format!(
                "Resource '{owner}' does not exist or one of its queried reference-property objects are not present."
            );
            return graph_error(
                StatusCode::NOT_FOUND,
                "Request_ResourceNotFound",
                &message,
                &ids,
            );
        };
        let apps = state
            .tenant
            .apps()
            .into_iter()
            .filter(|a| state.listing.is_owned_by(a.object_id, owner.app_id))
            .collect();
        let path = format!("{key}/ownedObjects/microsoft.graph.application");
        page(&state, &ids, &path, &query, apps, true)
    }

    /// The appId in a `servicePrincipals(appId='…')` segment.
    fn service_principal_app_id(segment: &str) -> Option<&str> {
        segment
            .strip_prefix("servicePrincipals(appId='")?
            .strip_suffix("')")
    }

    /// One page of `apps` in a stable order (by object id), after the `$skiptoken` if any.
    fn page(
        state: &AppState,
        ids: &RequestContext,
        path: &str,
        query: &HashMap<String, String>,
        mut apps: Vec<StandinApp>,
        typed: bool,
    ) -> Response {
        let select = match parse_select(query.get("$select").map(String::as_str), ids) {
            Ok(select) => select,
            Err(response) => return response,
        };
        let expand_owners = match query.get("$expand").map(String::as_str) {
            None => false,
            Some("owners") => true,
            Some(other) => {
                let message = format!("Could not find a property named '{other}' on type 'microsoft.graph.application'.");
                return graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", &message, ids);
            }
        };
        let top = match query.get("$top").map(|t| parse_top(t, ids)).transpose() {
            Ok(top) => top.unwrap_or(DEFAULT_PAGE_SIZE),
            Err(response) => return response,
        };
        // Graph pages expanded listings at most 100 whatever $top says.
        let top = if expand_owners { top.min(MAX_EXPANDED_PAGE_SIZE) } else { top };
        let after = match query
            .get("$skiptoken")
            .map(|t| decode_skiptoken(t, ids))
            .transpose()
        {
            Ok(after) => after,
            Err(response) => return response,
        };
        apps.sort_by_key(|a| a.object_id);
        apps.retain(|a| after.is_none_or(|after| a.object_id > after));
        let more = apps.len() > top;
        apps.truncate(top);

        let value: Vec<Value> = apps
            .iter()
            .map(|app| {
                let mut json = application_json(state, app, select.as_deref(), typed);
                if expand_owners {
                    json["owners"] = Value::Array(state.listing.owners_json(&state.tenant, app.object_id));
                }
                json
            })
            .collect();
        let fields = select
            .as_ref()
            .map(|f| format!("({})", f.join(",")))
            .unwrap_or_default();
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            Value::String(format!("{}/v1.0/$metadata#applications{fields}", ids.base)),
        );
        if let (true, Some(last)) = (more, apps.last()) {
            body.insert(
                "@odata.nextLink".into(),
                Value::String(next_link(ids, path, query, last.object_id)),
            );
        }
        body.insert("value".into(), Value::Array(value));
        Json(Value::Object(body)).into_response()
    }

    pub(super) fn application_json(
        state: &AppState,
        app: &StandinApp,
        select: Option<&[String]>,
        typed: bool,
    ) -> Value {
        let full = json!({
            "id": app.object_id,
            "appId": app.app_id,
            "displayName": app.display_name,
            "signInAudience": "AzureADMyOrg",
            "keyCredentials": state.listing.certificates_json(app.object_id),
            "passwordCredentials": app.passwords.iter().map(password_json).collect::<Vec<_>>(),
        });
        let mut object = Map::new();
        if typed {
            object.insert(
                "@odata.type".into(),
                Value::String("#microsoft.graph.application".into()),
            );
        }
        if let Value::Object(fields) = full {
            for (name, value) in fields {
                if select.is_none_or(|s| s.contains(&name)) {
                    object.insert(name, value);
                }
            }
        }
        Value::Object(object)
    }

    /// The same query with `$skiptoken` replaced, as an absolute URL on the host called.
    fn next_link(
        ids: &RequestContext,
        path: &str,
        query: &HashMap<String, String>,
        last: Uuid,
    ) -> String {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{TOKEN_PREFIX}{last}"));
        let mut pairs: Vec<(&str, &str)> = query
            .iter()
            .filter(|(name, _)| name.as_str() != "$skiptoken")
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        pairs.sort();
        pairs.push(("$skiptoken", &token));
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(name, value)| {
                let value: String =
                    url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
                format!("{name}={value}")
            })
            .collect();
        format!("{}/v1.0/{path}?{}", ids.base, encoded.join("&"))
    }

    fn decode_skiptoken(token: &str, ids: &RequestContext) -> Result<Uuid, Response> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.strip_prefix(TOKEN_PREFIX).and_then(|id| id.parse().ok()))
            .ok_or_else(|| {
                graph_error(
                    StatusCode::BAD_REQUEST,
                    "Directory_ExpiredPageToken",
                    "The specified page token value has expired and can no longer be included in your request.",
                    ids,
                )
            })
    }

    fn parse_top(top: &str, ids: &RequestContext) -> Result<usize, Response> {
        top.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                let message =
                    format!("Invalid page size specified: '{top}'. Must be between 1 and {MAX_PAGE_SIZE} inclusive.");
                graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", &message, ids)
            })
    }

    /// The filters this stand-in serves.
    enum Filter {
        /// `startswith(displayName,'…')`, case-insensitive as Graph's.
        DisplayNameStartsWith(String),
        /// `appId eq '…'`.
        AppId(String),
    }

    impl Filter {
        fn matches(&self, app: &StandinApp) -> bool {
            match self {
                Filter::DisplayNameStartsWith(prefix) => app
                    .display_name
                    .to_lowercase()
                    .starts_with(&prefix.to_lowercase()),
                Filter::AppId(app_id) => app.app_id.to_string().eq_ignore_ascii_case(app_id),
            }
        }
    }

    /// `startswith(displayName,'…')` or `appId eq '…'`; anything else is Graph's 400.
    fn parse_filter(filter: &str, ids: &RequestContext) -> Result<Filter, Response> {
        let trimmed = filter.trim();
        let starts_with = trimmed
            .strip_prefix("startswith(displayName,")
            .and_then(|rest| rest.strip_suffix(')'));
        let app_id = trimmed
            .strip_prefix("appId")
            .map(str::trim_start)
            .and_then(|rest| rest.strip_prefix("eq "));
        let quoted = starts_with.or(app_id).map(str::trim);
        let literal = quoted.and_then(|q| q.strip_prefix('\'')?.strip_suffix('\''));
        match literal {
            // OData doubles single quotes inside string literals.
            Some(literal) if !literal.replace("''", "").contains('\'') => {
                let literal = literal.replace("''", "'");
                Ok(if starts_with.is_some() {
                    Filter::DisplayNameStartsWith(literal)
                } else {
                    Filter::AppId(literal)
                })
            }
            _ => {
                let message = format!(
                    "Unsupported or invalid query filter clause specified for property '{filter}' of resource 'Application'."
                );
                Err(graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    &message,
                    ids,
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Write throttling
// ---------------------------------------------------------------------------------------------

/// Graph's write limits for identity and access, per calling application and per tenant,
/// over a sliding window (off until configured).
mod budget {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::Instant;

    #[derive(Clone, Default)]
    pub(super) struct WriteBudget {
        state: Arc<Mutex<BudgetState>>,
    }

    #[derive(Default)]
    struct BudgetState {
        limits: Option<Limits>,
        /// When each accepted write happened, within the window: per caller, and all callers.
        by_caller: HashMap<Uuid, VecDeque<Instant>>,
        tenant: VecDeque<Instant>,
        throttled: u64,
    }

    #[derive(Clone, Copy)]
    struct Limits {
        per_app: usize,
        per_tenant: usize,
        window: Duration,
    }

    impl WriteBudget {
        fn state(&self) -> MutexGuard<'_, BudgetState> {
            crate::lock(&self.state)
        }

        pub(super) fn configure(&self, per_app: usize, per_tenant: usize, window: Duration) {
            let mut state = self.state();
            state.limits = Some(Limits {
                per_app,
                per_tenant,
                window,
            });
            state.by_caller.clear();
            state.tenant.clear();
        }

        pub(super) fn throttled(&self) -> u64 {
            self.state().throttled
        }

        /// Counts a write by `caller`; `Ok(Some(share))` when it used more than 80 % of a
        /// limit (the larger share of the two), or the refusal when either is used up.
        pub(super) fn admit(&self, caller: Uuid) -> Result<Option<f64>, Throttled> {
            let mut state = self.state();
            let Some(limits) = state.limits else {
                return Ok(None);
            };
            let now = Instant::now();
            let BudgetState {
                by_caller, tenant, ..
            } = &mut *state;
            let mine = by_caller.entry(caller).or_default();
            let app_wait = room_in(mine, limits.per_app, limits.window, now);
            let tenant_wait = room_in(tenant, limits.per_tenant, limits.window, now);
            if app_wait.is_some() || tenant_wait.is_some() {
                state.throttled += 1;
                let scope = if app_wait.is_some() {
                    "Tenant_Application"
                } else {
                    "Tenant"
                };
                let wait = app_wait.into_iter().chain(tenant_wait).max().unwrap_or_default();
                return Err(Throttled { wait, scope });
            }
            mine.push_back(now);
            tenant.push_back(now);
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            let share = (mine.len() as f64 / limits.per_app.max(1) as f64)
                .max(tenant.len() as f64 / limits.per_tenant.max(1) as f64);
            Ok((share > 0.8).then_some(share))
        }
    }

    /// A write refused by the budget: how long until there is room, and which limit.
    pub(super) struct Throttled {
        wait: Duration,
        /// `Tenant_Application` (this caller in this tenant) or `Tenant` (all callers).
        scope: &'static str,
    }

    /// Drops writes older than `window`; `Some(wait)` when `limit` writes remain in it.
    fn room_in(
        writes: &mut VecDeque<Instant>,
        limit: usize,
        window: Duration,
        now: Instant,
    ) -> Option<Duration> {
        while writes
            .front()
            .is_some_and(|at| now.duration_since(*at) >= window)
        {
            writes.pop_front();
        }
        if writes.len() < limit {
            return None;
        }
        let oldest = writes.front().copied().unwrap_or(now);
        Some((oldest + window).saturating_duration_since(now))
    }

    /// Graph's 429: `Retry-After` in whole seconds, rounded up, at least one, and the
    /// throttle headers (`<Scope>/<Limit>/<ApplicationId>/<TenantId>`, the reason).
    pub(super) fn throttled_response(
        refusal: &Throttled,
        caller: Uuid,
        tenant_id: Uuid,
        ids: &RequestContext,
    ) -> Response {
        let wait = refusal.wait;
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        let message = format!(
            "Too many requests, please retry after {seconds} second(s). The application exceeded its write limit for identity and access resources."
        );
        let mut response = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            &message,
            ids,
        );
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        let scope = format!("{}/Write/{caller}/{tenant_id}", refusal.scope);
        if let Ok(value) = HeaderValue::from_str(&scope) {
            headers.insert("x-ms-throttle-scope", value);
        }
        headers.insert(
            "x-ms-throttle-information",
            HeaderValue::from_static("WriteLimitExceeded"),
        );
        response
    }
}

/// `GET /beta/auditLogs/signIns`: the tenant's sign-in log, as the beta API serves it with
/// the filter the rotator uses: `signInEventTypes/any(t: t eq 'servicePrincipal')` (without
/// it the API lists interactive user sign-ins only, so none here), `appId eq '…'` and
/// `createdDateTime ge …`, newest first, `$top` (at most 1000) and `$skiptoken` paging.
/// Each entry carries `servicePrincipalCredentialKeyId`, the keyId of the client secret
/// used. Sign-ins appear after the tenant's reporting latency
/// ([`Tenant::set_sign_in_latency`]).
mod sign_in_log {
    use super::*;

    const MAX_PAGE: usize = 1000;

    #[derive(Default)]
    struct Filter {
        service_principals: bool,
        app_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
    }

    fn parse_filter(text: &str) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for clause in text.split(" and ").map(str::trim) {
            if clause.replace(' ', "") == "signInEventTypes/any(t:teq'servicePrincipal')" {
                filter.service_principals = true;
            } else if let Some(id) = clause.strip_prefix("appId eq '").and_then(|rest| rest.strip_suffix('\'')) {
                filter.app_id = Some(id.parse().map_err(|_| format!("Invalid appId '{id}' in filter"))?);
            } else if let Some(time) = clause.strip_prefix("createdDateTime ge ") {
                let parsed = DateTime::parse_from_rfc3339(time).map_err(|_| format!("Invalid DateTimeOffset '{time}' in filter"))?;
                filter.since = Some(parsed.with_timezone(&Utc));
            } else {
                return Err(format!("Invalid filter clause: {clause}"));
            }
        }
        Ok(filter)
    }

    pub(super) async fn list(
        State(state): State<AppState>,
        Extension(ids): Extension<RequestContext>,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        if let Some(fault) = intercept(&state, ROUTE_SIGN_INS, &ids).await {
            return fault;
        }
        if let Err(refusal) = check_bearer(&state, &headers, &ids) {
            return refusal;
        }
        let access = state.directory().audit_log;
        match access {
            AuditLogAccess::Allowed => {}
            AuditLogAccess::NoPermission => {
                return graph_error(StatusCode::FORBIDDEN, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.", &ids);
            }
            AuditLogAccess::NoLicence => {
                return graph_error(
                    StatusCode::FORBIDDEN,
                    "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                    "Neither tenant is B2C or tenant doesn't have premium license",
                    &ids,
                );
            }
        }
        let filter = match query.get("$filter").map(|f| parse_filter(f)).transpose() {
            Ok(filter) => filter.unwrap_or_default(),
            Err(message) => return graph_error(StatusCode::BAD_REQUEST, "BadRequest", &message, &ids),
        };
        let top = query.get("$top").and_then(|t| t.parse::<usize>().ok()).unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
        let skip = query.get("$skiptoken").and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
        let entries: Vec<_> = if filter.service_principals {
            state
                .tenant
                .apps()
                .into_iter()
                .filter(|app| filter.app_id.is_none_or(|id| id == app.app_id))
                .flat_map(|app| state.tenant.logged_sign_ins(app.app_id))
                .filter(|entry| filter.since.is_none_or(|since| entry.at >= since))
                .collect()
        } else {
            Vec::new()
        };
        let mut entries = entries;
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.at));
        let page: Vec<Value> = entries
            .iter()
            .skip(skip)
            .take(top)
            .map(|entry| {
                json!({
                    "id": Uuid::new_v4(),
                    "createdDateTime": entry.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "appId": entry.app_id,
                    "resourceDisplayName": entry.resource,
                    "signInEventTypes": ["servicePrincipal"],
                    "servicePrincipalCredentialKeyId": entry.key_id,
                    "status": { "errorCode": entry.error_code },
                })
            })
            .collect();
        let mut body = json!({
            "@odata.context": format!("{}/beta/$metadata#auditLogs/signIns", ids.base),
            "value": page,
        });
        if skip + top < entries.len() {
            let mut next = query.clone();
            next.insert("$skiptoken".into(), (skip + top).to_string());
            let encoded: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(next.iter()).finish();
            body["@odata.nextLink"] = json!(format!("{}/beta/auditLogs/signIns?{encoded}", ids.base));
        }
        Json(body).into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON batching: `POST /v1.0/$batch`
// ---------------------------------------------------------------------------------------------

mod batch {
    use super::*;
    use tower::ServiceExt as _;

    /// Graph's limit on the requests of one batch.
    pub(super) const MAX_REQUESTS: usize = 20;

    #[derive(Deserialize)]
    struct BatchBody {
        requests: Option<Vec<Value>>,
    }

    /// One request of the batch, checked.
    struct Item {
        id: String,
        method: axum::http::Method,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<Value>,
    }

    pub(super) async fn batch(
        State(state): State<AppState>,
        Extension(ids): Extension<RequestContext>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        if let Some(fault) = intercept(&state, ROUTE_BATCH, &ids).await {
            return fault;
        }
        if let Err(refusal) = check_bearer(&state, &headers, &ids) {
            return refusal;
        }
        let items = match parse(&body, &ids) {
            Ok(items) => items,
            Err(refusal) => return refusal,
        };
        let mut responses = Vec::with_capacity(items.len());
        // Run in order, answered in reverse: Graph may answer in any order, and a client
        // that pairs answers with requests by position instead of by id is caught here.
        for item in items {
            responses.push(run(&state, &ids, &headers, item).await);
        }
        responses.reverse();
        Json(json!({ "responses": responses })).into_response()
    }

    fn parse(body: &[u8], ids: &RequestContext) -> Result<Vec<Item>, Response> {
        let invalid = |message: &str| graph_error(StatusCode::BAD_REQUEST, "BadRequest", message, ids);
        let parsed: BatchBody = serde_json::from_slice(body).map_err(|e| invalid(&format!("Invalid batch payload: {e}")))?;
        let requests = parsed.requests.ok_or_else(|| invalid("Invalid batch payload: the 'requests' property is missing."))?;
        if requests.is_empty() {
            return Err(invalid("Invalid batch payload: the batch holds no request."));
        }
        if requests.len() > MAX_REQUESTS {
            return Err(invalid(&format!(
                "Invalid batch payload: the number of batch requests ({}) exceeds the limit of {MAX_REQUESTS}.",
                requests.len()
            )));
        }
        let mut items = Vec::with_capacity(requests.len());
        let mut seen = std::collections::HashSet::new();
        for request in requests {
            let text = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_string);
            let (Some(id), Some(method), Some(url)) = (text("id"), text("method"), text("url")) else {
                return Err(invalid("Invalid batch payload: every request needs an id, a method and a url."));
            };
            // Ids are not case-sensitive and must be unique in the batch.
            if !seen.insert(id.to_lowercase()) {
                return Err(invalid(&format!("Invalid batch payload: the request id '{id}' is not unique in the batch.")));
            }
            let method = axum::http::Method::from_bytes(method.to_uppercase().as_bytes())
                .map_err(|_| invalid(&format!("Invalid batch payload: '{method}' is not an HTTP method.")))?;
            if url.contains("://") || url.trim_start_matches('/').starts_with("$batch") {
                return Err(invalid(&format!("Invalid batch payload: the url '{url}' must be relative to the version and not a batch.")));
            }
            let headers: Vec<(String, String)> = request
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            let body = request.get("body").cloned();
            let typed = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
            if body.is_some() && !typed {
                return Err(invalid(&format!("Invalid batch payload: request '{id}' has a body but no Content-Type header.")));
            }
            items.push(Item { id, method, url, headers, body });
        }
        Ok(items)
    }

    /// Sends one request of the batch through the router, with the batch's own bearer token.
    async fn run(state: &AppState, ids: &RequestContext, outer: &HeaderMap, item: Item) -> Value {
        if let Some(fault) = intercept(state, ROUTE_BATCH_REQUEST, ids).await {
            return answer_of(item.id, fault).await;
        }
        let path = format!("/v1.0/{}", item.url.trim_start_matches('/'));
        let mut request = axum::http::Request::builder().method(item.method).uri(path);
        for name in [header::AUTHORIZATION, header::HOST] {
            if let Some(value) = outer.get(&name) {
                request = request.header(name, value);
            }
        }
        if let Some(value) = outer.get("client-request-id") {
            request = request.header("client-request-id", value);
        }
        for (name, value) in &item.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let body = item.body.map(|b| axum::body::Body::from(b.to_string())).unwrap_or_else(axum::body::Body::empty);
        let response = match request.body(body) {
            Ok(request) => match router(state.clone()).oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            Err(e) => return json!({ "id": item.id, "status": 400, "body": { "error": { "code": "BadRequest", "message": format!("Invalid request: {e}") } } }),
        };
        answer_of(item.id, response).await
    }

    /// One entry of `responses`: the request's id with the status, headers and body it got.
    async fn answer_of(id: String, response: Response) -> Value {
        let status = response.status().as_u16();
        let headers: Map<String, Value> = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != header::CONTENT_LENGTH)
            .filter_map(|(name, value)| Some((name.as_str().to_string(), Value::String(value.to_str().ok()?.to_string()))))
            .collect();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap_or_default();
        let mut answer = json!({ "id": id, "status": status, "headers": headers });
        if !bytes.is_empty() {
            answer["body"] = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        }
        answer
    }
}
