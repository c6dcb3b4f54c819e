//! A stand-in for Microsoft Graph's application endpoints and the Entra token endpoint
//! (`/{tenant}/oauth2/v2.0/token`), served together over HTTPS on one loopback port.
//!
//! It speaks the real wire formats: Graph's JSON shapes and `$select`, its error body
//! (`error.code`, `error.message`, `error.innerError` with `request-id` and `date`), the
//! `request-id`/`client-request-id` headers, and the token endpoint's OAuth error bodies with
//! `AADSTS` codes. Tokens and secrets come from the shared [`Tenant`].
//!
//! Routes and their names for [`Faults`]: `token`, `getApplication`, `addPassword`,
//! `removePassword`, `listApplications` (`GET /v1.0/applications` with `$top`, `$filter` on
//! `startswith(displayName,…)` and `@odata.nextLink` paging by opaque `$skiptoken`) and
//! `listOwnedApplications` (`GET /v1.0/servicePrincipals(appId='…')/ownedObjects/microsoft.graph.application`).
//! Listings also carry the certificate credentials (`keyCredentials`) added with
//! [`GraphStandin::add_certificate`].
//!
//! Opt-in write throttling ([`GraphStandin::set_write_budget`]) models Graph's identity and
//! access limits: writes (`addPassword`, `removePassword`) per calling application in the
//! tenant and per tenant within a sliding window, refused beyond that with 429 and a
//! `Retry-After` saying when the oldest write leaves the window.

// Helpers short-circuit with a ready axum `Response`; its size does not matter in a stand-in.
#![allow(clippy::result_large_err)]

use super::faults::{DropConnectionMark, Faults};
use super::https::{serve_tls, ServerTask};
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
use std::time::Duration;
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
    /// Keeps the server running; dropping it stops it.
    _server: ServerTask,
}

#[derive(Clone)]
struct AppState {
    tenant: Tenant,
    faults: Faults,
    listing: listing::Extras,
    budget: budget::WriteBudget,
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
        let state = AppState {
            tenant: tenant.clone(),
            faults: faults.clone(),
            listing: listing.clone(),
            budget: budget.clone(),
        };
        let (address, server) = serve_tls(router(state), pki).await?;
        Ok(Self {
            address,
            tenant,
            faults,
            listing,
            budget,
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

    /// Throttles writes from now on: at most `per_app` by each calling application and
    /// `per_tenant` by all callers together within any `window`; a write beyond either is
    /// answered 429 with `Retry-After` (whole seconds, at least 1), as Graph does. Real
    /// limits: 3,000 per app per 150 s and 18,000 per tenant per 5 min.
    pub fn set_write_budget(&self, per_app: usize, per_tenant: usize, window: Duration) {
        self.budget.configure(per_app, per_tenant, window);
    }

    /// How many writes the write budget refused with 429 so far.
    pub fn throttled_writes(&self) -> u64 {
        self.budget.throttled()
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
        .route("/v1.0/applications/{id}", get(get_application))
        .route("/v1.0/applications/{id}/addPassword", post(add_password))
        .route(
            "/v1.0/applications/{id}/removePassword",
            post(remove_password),
        )
        .route("/v1.0/applications", get(listing::list_applications))
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
    body: Bytes,
) -> Response {
    if let Some(fault) = intercept(&state, ROUTE_TOKEN, &ids).await {
        return fault;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
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

fn grant_token(
    tenant: &Tenant,
    tenant_in_path: &str,
    form: &HashMap<String, String>,
) -> Result<String, TokenRefusal> {
    if !tenant_in_path.eq_ignore_ascii_case(&tenant.tenant_id.to_string()) {
        return Err(TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "AADSTS90002: Tenant '{tenant_in_path}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
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
    let secret = field("client_secret").ok_or_else(|| {
        TokenRefusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
        )
    })?;
    let Ok(client_uuid) = client_id.parse::<Uuid>() else {
        return Err(unknown_client(client_id, tenant));
    };
    match tenant.authenticate(client_uuid, secret) {
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

/// Entra's OAuth error body; the description ends with the trace and correlation ids.
fn aad_error_body(error: &str, code: u32, description: &str, ids: &RequestContext) -> Value {
    let now = Utc::now();
    let timestamp = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
    json!({
        "error": error,
        "error_description": format!(
            "{description} Trace ID: {} Correlation ID: {} Timestamp: {timestamp}",
            ids.request_id, ids.client_request_id
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": ids.request_id,
        "correlation_id": ids.client_request_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    })
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
    if route == ROUTE_ADD_PASSWORD || route == ROUTE_REMOVE_PASSWORD {
        state
            .budget
            .admit(caller.client_id)
            .map_err(|wait| budget::throttled_response(wait, &ids))?;
    }
    let object_id = address.resolve(&state.tenant, &ids)?;
    Ok(GraphCall {
        state,
        ids,
        object_id,
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
        "keyCredentials": [],
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
    Json(body).into_response()
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
    let removed = key_id
        .parse::<Uuid>()
        .is_ok_and(|key| call.state.tenant.remove_password(call.object_id, key));
    if !removed {
        let message = format!("No password credential found with keyId {key_id}.");
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            &message,
            &call.ids,
        );
    }
    StatusCode::NO_CONTENT.into_response()
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
    }

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

        fn certificates_json(&self, object_id: Uuid) -> Vec<Value> {
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

        fn is_owned_by(&self, object_id: Uuid, owner_client_id: Uuid) -> bool {
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
        let prefix = match query
            .get("$filter")
            .map(|f| parse_startswith(f, &ids))
            .transpose()
        {
            Ok(prefix) => prefix,
            Err(response) => return response,
        };
        let matches = |name: &str| {
            prefix
                .as_deref()
                .is_none_or(|p| name.to_lowercase().starts_with(&p.to_lowercase()))
        };
        let apps = state
            .tenant
            .apps()
            .into_iter()
            .filter(|a| matches(&a.display_name))
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
        let top = match query.get("$top").map(|t| parse_top(t, ids)).transpose() {
            Ok(top) => top.unwrap_or(DEFAULT_PAGE_SIZE),
            Err(response) => return response,
        };
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
            .map(|app| application_json(state, app, select.as_deref(), typed))
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

    fn application_json(
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

    /// The prefix of `startswith(displayName,'…')`, the one filter this stand-in serves.
    fn parse_startswith(filter: &str, ids: &RequestContext) -> Result<String, Response> {
        let literal = filter
            .trim()
            .strip_prefix("startswith(displayName,")
            .and_then(|rest| rest.strip_suffix(')'))
            .map(str::trim)
            .and_then(|quoted| quoted.strip_prefix('\'')?.strip_suffix('\''));
        match literal {
            // OData doubles single quotes inside string literals.
            Some(literal) if !literal.replace("''", "").contains('\'') => {
                Ok(literal.replace("''", "'"))
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

        /// Counts a write by `caller`, or says how long until the budget has room for it.
        pub(super) fn admit(&self, caller: Uuid) -> Result<(), Duration> {
            let mut state = self.state();
            let Some(limits) = state.limits else {
                return Ok(());
            };
            let now = Instant::now();
            let BudgetState {
                by_caller, tenant, ..
            } = &mut *state;
            let mine = by_caller.entry(caller).or_default();
            let waits = [
                room_in(mine, limits.per_app, limits.window, now),
                room_in(tenant, limits.per_tenant, limits.window, now),
            ];
            match waits.into_iter().flatten().max() {
                Some(wait) => {
                    state.throttled += 1;
                    Err(wait)
                }
                None => {
                    mine.push_back(now);
                    tenant.push_back(now);
                    Ok(())
                }
            }
        }
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

    /// Graph's 429: `Retry-After` in whole seconds, rounded up, at least one.
    pub(super) fn throttled_response(wait: Duration, ids: &RequestContext) -> Response {
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
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}
