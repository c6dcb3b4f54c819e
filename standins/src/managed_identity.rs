//! The managed-identity endpoint of App Service / Container Apps / Arc-style hosts
//! (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, API version 2019-08-01), over plain HTTP on a
//! loopback port as the platform serves it. azure_identity's virtual-machine source
//! (IMDS) has a fixed address, 169.254.169.254; this endpoint is the one a test can place.
//!
//! It issues the shared tenant's tokens for the identities assigned to the "host": the
//! system-assigned one, and user-assigned ones chosen by `client_id`. What it refuses, as
//! the platform does: a request without the `X-IDENTITY-HEADER` secret (401), and an
//! identity not assigned to the host (400, which azure_identity words "The requested
//! identity has not been assigned to this resource").

use super::https::ServerTask;
use super::tenant::Tenant;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use uuid::Uuid;

/// The header secret the host hands its processes in `IDENTITY_HEADER`.
pub const IDENTITY_HEADER: &str = "stand-in-identity-header";
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Clone)]
struct Host {
    tenant: Tenant,
    system_assigned: Uuid,
    user_assigned: Vec<Uuid>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// A running managed-identity endpoint; dropping it stops the server.
pub struct ManagedIdentityStandin {
    port: u16,
    host: Host,
    _task: ServerTask,
}

impl ManagedIdentityStandin {
    /// Serves tokens for `system_assigned` (a client id of the tenant) and for the
    /// `user_assigned` client ids.
    pub async fn start(tenant: Tenant, system_assigned: Uuid, user_assigned: Vec<Uuid>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let host = Host { tenant, system_assigned, user_assigned, requests: Arc::default() };
        let router = Router::new().route("/msi/token", get(token)).with_state(host.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { port, host, _task: ServerTask::new(task) })
    }

    /// The value for `IDENTITY_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/msi/token", self.port)
    }

    /// The `resource` of each token request, in order.
    pub fn requested_resources(&self) -> Vec<String> {
        crate::lock(&self.host.requests).clone()
    }
}

async fn token(State(host): State<Host>, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Response {
    if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some(IDENTITY_HEADER) {
        return refuse(StatusCode::UNAUTHORIZED, "The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER.");
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return refuse(StatusCode::BAD_REQUEST, "api-version 2019-08-01 is required.");
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, "The resource parameter is required.");
    };
    let identity = match query.get("client_id") {
        None => host.system_assigned,
        Some(id) => match id.parse::<Uuid>().ok().filter(|id| host.user_assigned.contains(id)) {
            Some(id) => id,
            None => return refuse(StatusCode::BAD_REQUEST, "No managed identity with this client_id is assigned to this resource."),
        },
    };
    crate::lock(&host.requests).push(resource.clone());
    let scope = format!("{}/.default", resource.trim_end_matches('/'));
    let access_token = host.tenant.issue_token(identity, &scope, TOKEN_LIFETIME);
    let expires_on = chrono::Utc::now().timestamp() + TOKEN_LIFETIME.as_secs() as i64;
    Json(json!({
        "access_token": access_token,
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": identity,
    }))
    .into_response()
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "statusCode": status.as_u16(), "message": message }))).into_response()
}
