//! [`Directory`] over Microsoft Graph's application endpoints (`GET /applications`,
//! `addPassword`, `removePassword`), authenticated with the rotator's own credential.
//!
//! Retries: HTTP 429 waits for `Retry-After`; 5xx, timeouts and connection failures back off
//! exponentially with jitter; all bounded by [`RetryPolicy`]. The loop is written by hand
//! because reqwest has no retry policy that honours `Retry-After`, and because `addPassword`
//! is not idempotent: it is retried only when Graph certainly did not act on it (429, or the
//! connection never opened), so a lost answer never mints a second secret. `removePassword`
//! is idempotent: a keyId the application no longer has counts as removed.
//!
//! Concurrency: at most [`DEFAULT_MAX_CONCURRENT_REQUESTS`] calls (configurable) are in
//! flight per client, admitted first come, first served; a call keeps its place while it
//! waits to retry, so throttled calls finish before new ones start. A 429 with `Retry-After`
//! pauses every call of the client until then, so the write budget is not hammered while
//! it is exhausted and is shared across applications in arrival order.

mod batch;
mod delta;
mod sign_ins;
pub use batch::MAX_BATCH;
pub use delta::{DeltaError, DeltaLink, DeltaRound};
pub use sign_ins::{SignInGate, SignInScan, OLD_SECRET_SIGNS_IN, SIGN_IN_LOG_UNREADABLE};

use super::http::{ApiObserver, BodyError, read_body, read_secret_body};
use super::error_chain::find_cause;
use super::network::{self, NetworkFailure};
use crate::domain::{AppRef, Application, ExposeSecret, MintedSecret, PasswordCredential, SecretString};
use crate::engine::ports::{Directory, GraphError};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Graph's public endpoint.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// Graph calls in flight per client unless configured otherwise.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 8;
const SELECT_APPLICATION: &str = "$select=id,appId,displayName,passwordCredentials";
/// Graph's answer to `removePassword` for a keyId the application does not have.
const NO_SUCH_PASSWORD: &str = "No password credential found with keyId";

/// The largest answer read for one application: an application with many credentials is
/// tens of KiB of JSON.
pub const APPLICATION_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// The largest page of a listing read: [`MAX_PAGE_SIZE`] applications of a few KiB each
/// make 2 to 6 MiB.
pub const PAGE_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The largest answer read from `addPassword` and `removePassword`: one
/// passwordCredential, or an error, is under 1 KiB. Small, because the `addPassword`
/// buffer (it holds the secret) is reserved whole in advance.
pub const WRITE_BODY_LIMIT: usize = 64 * 1024;
/// Ends the message of an answer refused for its size or encoding.
const BODY_ADVICE: &str = "check that azure.graphUrl points at Microsoft Graph";

/// How hard to retry a Graph call that failed transiently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time, with jitter.
    pub base_delay: Duration,
    /// Longest wait between attempts. A `Retry-After` longer than this is not waited out:
    /// the call fails as throttled (a transient error) and the caller tries again later.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Where Graph is and how to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphConfig {
    /// Graph's base URL without the version, e.g. `https://graph.microsoft.us` for US Gov.
    pub base_url: Url,
    pub retry: RetryPolicy,
}

impl GraphConfig {
    /// Graph at `base_url` with the default [`RetryPolicy`].
    pub fn new(base_url: Url) -> Self {
        Self {
            base_url,
            retry: RetryPolicy::default(),
        }
    }
}

impl Default for GraphConfig {
    fn default() -> Self {
        let base_url =
            Url::parse(DEFAULT_GRAPH_URL).unwrap_or_else(|_| unreachable!("constant URL is valid"));
        Self {
            base_url,
            retry: RetryPolicy::default(),
        }
    }
}

/// The Graph configuration cannot work.
#[derive(Debug, thiserror::Error)]
#[error(
    "graph base URL {url} {problem}. Use the Graph endpoint of your cloud, e.g. {DEFAULT_GRAPH_URL}"
)]
pub struct GraphSetupError {
    pub url: String,
    pub problem: &'static str,
}

/// Microsoft Graph client for one tenant's applications.
pub struct GraphClient {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    /// `{base}/v1.0/`.
    api: Url,
    scope: String,
    retry: RetryPolicy,
    observer: Option<Arc<dyn ApiObserver>>,
    /// Bounds the calls in flight; fair (FIFO) admission.
    in_flight: tokio::sync::Semaphore,
    /// The bound itself, for how many batches to prepare at once.
    max_concurrent_requests: usize,
    /// No attempt starts before this instant (set by a 429 with `Retry-After`).
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("api", &self.api.as_str())
            .field("scope", &self.scope)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// `credential` is the rotator's own (see [`super::identity::rotator_credential`]);
    /// `http` comes from [`super::http::http_client`]. Tokens are requested for
    /// `{origin of base_url}/.default`.
    pub fn new(
        config: GraphConfig,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Result<Self, GraphSetupError> {
        let base = config.base_url;
        let problem = |problem| GraphSetupError {
            url: base.to_string(),
            problem,
        };
        if base.scheme() != "https" {
            return Err(problem(
                "is not https:// (the rotator's token must not travel in clear text)",
            ));
        }
        if base.host_str().is_none() {
            return Err(problem("has no host"));
        }
        let scope = format!("{}/.default", base.origin().ascii_serialization());
        let mut with_slash = base.clone();
        if !with_slash.path().ends_with('/') {
            with_slash.set_path(&format!("{}/", with_slash.path()));
        }
        let api = with_slash
            .join("v1.0/")
            .map_err(|_| problem("cannot be extended with /v1.0/"))?;
        Ok(Self {
            http,
            credential,
            api,
            scope,
            retry: config.retry,
            observer: None,
            in_flight: tokio::sync::Semaphore::new(DEFAULT_MAX_CONCURRENT_REQUESTS),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            paused_until: std::sync::Mutex::new(None),
        })
    }

    /// Allows at most `limit` (at least 1) Graph calls in flight at once, retries included.
    pub fn with_max_concurrent_requests(mut self, limit: usize) -> Self {
        self.in_flight = tokio::sync::Semaphore::new(limit.max(1));
        self.max_concurrent_requests = limit.max(1);
        self
    }

    /// Reports every attempt (operation, status, latency) to `observer`, for metrics.
    pub fn with_observer(mut self, observer: Arc<dyn ApiObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, operation: &str, status: Option<u16>, started: std::time::Instant) {
        if let Some(observer) = &self.observer {
            observer.observe("graph", operation, status, started.elapsed());
        }
    }

    /// The bearer token goes wherever `@odata.nextLink` points, so it must point at Graph:
    /// the next page of a listing or of the sign-in log.
    fn graph_link(&self, link: &str, operation: &str) -> Result<Url, GraphError> {
        let protocol = |detail: String| GraphError::Protocol { operation: operation.to_string(), detail };
        let url = Url::parse(link).map_err(|e| protocol(format!("@odata.nextLink {link:?} is not a URL: {e}")))?;
        if url.origin() != self.api.origin() {
            return Err(protocol(format!(
                "@odata.nextLink points at {}, not at Graph ({}); refusing to send the token there",
                url.origin().ascii_serialization(),
                self.api.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }

    /// The token scope used for Graph, e.g. `https://graph.microsoft.com/.default`.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    fn url(&self, path: &str, operation: &str) -> Result<Url, GraphError> {
        self.api.join(path).map_err(|e| GraphError::Protocol {
            operation: operation.to_string(),
            detail: format!("cannot build the request URL: {e}"),
        })
    }

    /// The token as a zeroized copy; the copies inside azure_identity's token cache and in
    /// reqwest's header value (marked sensitive, so never logged) are beyond our reach.
    async fn bearer(&self) -> Result<Zeroizing<String>, GraphError> {
        let token = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            // The network failure azure_identity's error carries, put there by the
            // transport of `super::http`.
            .map_err(|e| match find_cause::<NetworkFailure>(&e) {
                // The token endpoint was not reached: a network fault, not the identity.
                Some(failure) => GraphError::Transport {
                    operation: "the rotator's token (Entra token endpoint)".to_string(),
                    detail: failure.to_string(),
                },
                None => GraphError::Auth { detail: with_causes(&e) },
            })?;
        Ok(Zeroizing::new(token.token.secret().to_string()))
    }

    /// Sends one Graph request, retrying as `mode` allows; returns the body of a 2xx answer.
    async fn send(&self, call: &Call<'_>) -> Result<Zeroizing<Vec<u8>>, GraphError> {
        // The semaphore is never closed; should it be, calls simply go unbounded.
        let _permit = self.in_flight.acquire().await.ok();
        let client_request_id = Uuid::new_v4().to_string();
        let mut attempt = 1;
        loop {
            self.wait_while_paused().await;
            let outcome = self.attempt(call, &client_request_id).await?;
            let (error, wait) = match outcome {
                Attempt::Success(body) => return Ok(body),
                Attempt::Failed { error, wait } => (error, wait),
            };
            let throttled = matches!(wait, Some(Wait::RetryAfter(_)));
            let wait = wait
                .filter(|_| attempt < self.retry.max_attempts)
                .and_then(|w| w.resolve(&self.retry, attempt));
            let Some(wait) = wait else {
                return Err(error);
            };
            if throttled {
                self.pause_for(wait);
            }
            tracing::info!(operation = call.operation, attempt, wait_ms = wait.as_millis() as u64, %error, "retrying Microsoft Graph call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Holds every call of this client back for `wait` (Graph's `Retry-After`).
    fn pause_for(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        *paused = Some(paused.map_or(until, |current| current.max(until)));
    }

    async fn wait_while_paused(&self) {
        let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    async fn attempt(
        &self,
        call: &Call<'_>,
        client_request_id: &str,
    ) -> Result<Attempt, GraphError> {
        let bearer = self.bearer().await?;
        let mut request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .bearer_auth(bearer.as_str())
            .header("client-request-id", client_request_id);
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let started = std::time::Instant::now();
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                self.observe(call.metric, None, started);
                return Ok(transport_failure(call, &error));
            }
        };
        let status = response.status();
        self.observe(call.metric, Some(status.as_u16()), started);
        let headers = response.headers().clone();
        let method = call.method.as_str();
        let read = match call.answer {
            Answer::Public { limit } => read_body(response, method, limit, BODY_ADVICE).await,
            Answer::Secret { limit } => read_secret_body(response, method, limit, BODY_ADVICE).await,
        };
        let body = match read {
            Ok(body) => body,
            Err(BodyError::Read(error)) => return Ok(transport_failure(call, &error)),
            // The same peer would send the same answer: not retried.
            Err(BodyError::Refused(refused)) => {
                return Err(GraphError::Protocol {
                    operation: call.operation.to_string(),
                    detail: refused.to_string(),
                });
            }
        };
        if status.is_success() {
            return Ok(Attempt::Success(body));
        }
        let error = api_error(call.operation, status, &headers, &body);
        let wait = if status == StatusCode::TOO_MANY_REQUESTS {
            Some(retry_after(&headers).map_or(Wait::Backoff, Wait::RetryAfter))
        } else if status.is_server_error() && call.mode == RetryMode::Always {
            Some(Wait::Backoff)
        } else {
            None
        };
        Ok(Attempt::Failed { error, wait })
    }
}

/// One logical Graph call.
struct Call<'a> {
    /// For messages: what and on which object.
    operation: &'a str,
    /// For metrics: a fixed name (`getApplication`, `addPassword`, …).
    metric: &'static str,
    method: Method,
    url: Url,
    body: Option<serde_json::Value>,
    mode: RetryMode,
    answer: Answer,
}

/// How much of the answer to read, and whether it holds a secret.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Public { limit: usize },
    /// Read into a zeroized buffer that is never reallocated.
    Secret { limit: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetryMode {
    /// Safe to repeat: retry throttling, 5xx, timeouts and connection faults.
    Always,
    /// Repeating could act twice: retry only when Graph certainly did not act
    /// (429, or the connection was never established).
    OnlyIfNotActedOn,
}

enum Attempt {
    Success(Zeroizing<Vec<u8>>),
    /// `wait`: `None` when retrying cannot help or is not safe.
    Failed {
        error: GraphError,
        wait: Option<Wait>,
    },
}

enum Wait {
    RetryAfter(Duration),
    Backoff,
}

impl Wait {
    /// How long to wait before attempt `attempt + 1`; `None` when Graph asks for longer
    /// than the policy allows (the caller then reports the throttling instead of waiting).
    fn resolve(self, policy: &RetryPolicy, attempt: u32) -> Option<Duration> {
        match self {
            Wait::RetryAfter(asked) => (asked <= policy.max_delay).then_some(asked),
            Wait::Backoff => Some(jittered_backoff(policy, attempt)),
        }
    }
}

/// Exponential backoff with "equal jitter": between half and all of `base * 2^(attempt-1)`.
fn jittered_backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let ceiling = policy
        .base_delay
        .saturating_mul(1 << exponent)
        .min(policy.max_delay);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((when - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

fn transport_failure(call: &Call<'_>, error: &reqwest::Error) -> Attempt {
    let failure = network::classify(&call.url, "azure.graphUrl", error);
    let permanent = failure.as_ref().is_some_and(NetworkFailure::is_permanent);
    let retryable = !permanent
        && match call.mode {
            RetryMode::Always => {
                error.is_timeout() || error.is_connect() || error.is_request() || error.is_body()
            }
            RetryMode::OnlyIfNotActedOn => error.is_connect(),
        };
    let error = GraphError::Transport {
        operation: call.operation.to_string(),
        detail: failure.map_or_else(|| describe_transport(error), |f| f.to_string()),
    };
    Attempt::Failed {
        error,
        wait: retryable.then_some(Wait::Backoff),
    }
}

/// reqwest's message plus its causes (TLS and connection details live in the sources).
fn describe_transport(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return append_causes("timed out".to_string(), error);
    }
    with_causes(error)
}

/// `error`'s message followed by each cause's (azure_identity puts what the token endpoint
/// did wrong only in the causes).
fn with_causes(error: &dyn std::error::Error) -> String {
    append_causes(error.to_string(), error)
}

fn append_causes(mut detail: String, error: &dyn std::error::Error) -> String {
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their cause's message.
        if !detail.contains(&text) {
            detail.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    detail
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    inner_error: Option<InnerError>,
}

#[derive(Deserialize)]
struct InnerError {
    #[serde(rename = "request-id")]
    request_id: Option<String>,
}

/// The application in a `GET /applications/{id}` answer.
pub(crate) fn application_from_body(operation: &str, body: &[u8]) -> Result<Application, GraphError> {
    let parsed: ApplicationJson = serde_json::from_slice(body).map_err(|e| GraphError::Protocol {
        operation: operation.to_string(),
        detail: e.to_string(),
    })?;
    Ok(Application {
        object_id: parsed.id,
        app_id: parsed.app_id,
        display_name: parsed.display_name.unwrap_or_default(),
        password_credentials: parsed
            .password_credentials
            .into_iter()
            .map(|c| c.into_parts().0)
            .collect(),
    })
}

/// The new secret in an `addPassword` answer.
pub(crate) fn minted_from_body(operation: &str, answer: &[u8]) -> Result<MintedSecret, GraphError> {
    // The answer holds the secret: a parse error must not quote it, so only say where it failed.
    let parsed: PasswordCredentialJson = serde_json::from_slice(answer).map_err(|e| GraphError::Protocol {
        operation: operation.to_string(),
        detail: format!(
            "the answer is not a passwordCredential ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    })?;
    let (credential, secret_text) = parsed.into_parts();
    let value = secret_text.filter(|s| !s.expose_secret().is_empty()).ok_or_else(|| GraphError::Protocol {
        operation: operation.to_string(),
        detail: format!("the answer has no secretText for keyId {}; remove that credential, it cannot be used", credential.key_id),
    })?;
    Ok(MintedSecret { credential, value })
}

/// Graph's error answer as [`GraphError::Api`]; a body that is not Graph's error shape
/// (a proxy's HTML page, say) still yields the status.
pub(crate) fn api_error(operation: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GraphError {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error);
    let header_request_id = headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (code, message, body_request_id) = match parsed {
        Some(error) => (
            error.code.unwrap_or_else(|| "UnknownError".into()),
            error.message.unwrap_or_default(),
            error.inner_error.and_then(|inner| inner.request_id),
        ),
        None => (
            "UnknownError".into(),
            format!("no Graph error body ({} bytes)", body.len()),
            None,
        ),
    };
    GraphError::Api {
        operation: operation.to_string(),
        status: status.as_u16(),
        code,
        message,
        request_id: header_request_id.or(body_request_id),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplicationJson {
    id: Uuid,
    app_id: Uuid,
    display_name: Option<String>,
    #[serde(default)]
    password_credentials: Vec<PasswordCredentialJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PasswordCredentialJson {
    key_id: Uuid,
    display_name: Option<String>,
    start_date_time: Option<DateTime<Utc>>,
    end_date_time: Option<DateTime<Utc>>,
    hint: Option<String>,
    /// Only `addPassword` fills it in. Parsed straight into a zeroizing string; serde_json
    /// copies a string through its own scratch buffer only when it has escapes, which a
    /// generated secret (letters, digits, `~._-`) has not.
    secret_text: Option<SecretString>,
}

impl PasswordCredentialJson {
    fn into_parts(self) -> (PasswordCredential, Option<SecretString>) {
        let credential = PasswordCredential {
            key_id: self.key_id,
            display_name: self.display_name,
            start: self.start_date_time,
            end: self.end_date_time,
            hint: self.hint,
        };
        (credential, self.secret_text)
    }
}

#[async_trait]
impl Directory for GraphClient {
    async fn application(&self, app: &AppRef) -> Result<Application, GraphError> {
        let operation = format!("reading {app}");
        let mut url = self.url(&application_path(app), &operation)?;
        url.set_query(Some(SELECT_APPLICATION));
        let call = Call {
            operation: &operation,
            metric: "getApplication",
            method: Method::GET,
            url,
            body: None,
            mode: RetryMode::Always,
            answer: Answer::Public { limit: APPLICATION_BODY_LIMIT },
        };
        let body = self.send(&call).await?;
        application_from_body(&operation, &body)
    }

    async fn add_password(
        &self,
        object_id: Uuid,
        display_name: &str,
        end: DateTime<Utc>,
    ) -> Result<MintedSecret, GraphError> {
        let operation = format!("addPassword on application object {object_id}");
        let url = self.url(&format!("applications/{object_id}/addPassword"), &operation)?;
        let body = json!({
            "passwordCredential": {
                "displayName": display_name,
                "endDateTime": end.to_rfc3339_opts(SecondsFormat::Secs, true),
            }
        });
        let call = Call {
            operation: &operation,
            metric: "addPassword",
            method: Method::POST,
            url,
            body: Some(body),
            mode: RetryMode::OnlyIfNotActedOn,
            answer: Answer::Secret { limit: WRITE_BODY_LIMIT },
        };
        let answer = self.send(&call).await?;
        minted_from_body(&operation, &answer)
    }

    async fn remove_password(&self, object_id: Uuid, key_id: Uuid) -> Result<(), GraphError> {
        let operation =
            format!("removePassword of keyId {key_id} on application object {object_id}");
        let url = self.url(
            &format!("applications/{object_id}/removePassword"),
            &operation,
        )?;
        let body = json!({ "keyId": key_id });
        let call = Call {
            operation: &operation,
            metric: "removePassword",
            method: Method::POST,
            url,
            body: Some(body),
            mode: RetryMode::Always,
            answer: Answer::Public { limit: WRITE_BODY_LIMIT },
        };
        match self.send(&call).await {
            Ok(_) => Ok(()),
            // Removal is idempotent: the goal is that no such credential exists, and an earlier
            // attempt whose answer was lost may already have removed it.
            Err(error) if is_unknown_key_id(&error) => {
                tracing::info!(%object_id, %key_id, "the credential to remove was already gone");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Where Graph has the application: by object id, or by the `appId` alternate key.
fn application_path(app: &AppRef) -> String {
    match app.object_id {
        Some(object_id) => format!("applications/{object_id}"),
        None => format!("applications(appId='{}')", app.client_id),
    }
}

/// Whether `error` is Graph saying the application has no credential with that keyId.
fn is_unknown_key_id(error: &GraphError) -> bool {
    matches!(error, GraphError::Api { status: 400 | 404, message, .. } if message.contains(NO_SUCH_PASSWORD))
}

// ---------------------------------------------------------------------------------------------
// Listing applications (`entra-rotator scan`)
// ---------------------------------------------------------------------------------------------

/// The fields `scan` reads from each application.
const SELECT_LISTING: &str = "id,appId,displayName,passwordCredentials,keyCredentials";
/// Graph's largest page for directory objects.
pub const MAX_PAGE_SIZE: u16 = 999;
/// Graph's largest page when a relationship is expanded (`$expand` on directory objects,
/// Microsoft Graph known limitations); each expands at most 20 objects.
pub const MAX_EXPANDED_PAGE_SIZE: u16 = 100;

/// Which applications to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListScope {
    /// Every application registration in the tenant, or those whose display name starts
    /// with `name_prefix` (`$filter=startswith(displayName,'…')`, case-insensitive).
    Tenant { name_prefix: Option<String> },
    /// The applications owned by the service principal of this client id
    /// (`/servicePrincipals(appId='…')/ownedObjects/microsoft.graph.application`), which
    /// `Application.ReadWrite.OwnedBy` may read.
    OwnedBy { client_id: Uuid },
}

/// A certificate credential (`keyCredentials`) of an application; Graph never returns the
/// key itself in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCredential {
    pub key_id: Uuid,
    pub display_name: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// `AsymmetricX509Cert`, `Symmetric`, ...
    pub kind: Option<String>,
    /// `Verify` or `Sign`.
    pub usage: Option<String>,
}

/// One application of a listing with both kinds of credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedApplication {
    pub object_id: Uuid,
    pub app_id: Uuid,
    pub display_name: String,
    pub password_credentials: Vec<PasswordCredential>,
    pub key_credentials: Vec<KeyCredential>,
    /// Who owns it, when listed with [`GraphClient::list_applications_with_owners`]: a
    /// user's userPrincipalName, a service principal's displayName; an object id alone
    /// where Graph withheld the rest (no permission to read users).
    pub owners: Vec<String>,
}

/// A listing in progress: one Graph page per [`next_page`](Self::next_page), following
/// `@odata.nextLink`, so memory holds one page however large the tenant.
#[derive(Debug)]
pub struct ApplicationPages<'a> {
    client: &'a GraphClient,
    operation: String,
    next: Option<Url>,
}

#[derive(Deserialize)]
struct PageJson {
    value: Vec<ListedApplicationJson>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedApplicationJson {
    id: Uuid,
    app_id: Uuid,
    display_name: Option<String>,
    #[serde(default)]
    password_credentials: Vec<PasswordCredentialJson>,
    #[serde(default)]
    key_credentials: Vec<KeyCredentialJson>,
    #[serde(default)]
    owners: Vec<OwnerJson>,
}

/// An owner as `$expand=owners` returns it: a user, a service principal, or (without the
/// permission to read that type) only its type and id.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnerJson {
    #[serde(rename = "@odata.type")]
    kind: Option<String>,
    id: Option<String>,
    display_name: Option<String>,
    user_principal_name: Option<String>,
}

impl OwnerJson {
    fn into_name(self) -> String {
        let kind = self.kind.as_deref().and_then(|k| k.strip_prefix("#microsoft.graph.")).unwrap_or("owner");
        match (kind, self.user_principal_name, self.display_name) {
            ("user", Some(principal), _) => principal,
            ("servicePrincipal", _, Some(name)) => format!("{name} (service principal)"),
            (_, _, Some(name)) => name,
            (kind, _, None) => format!("{kind} {}", self.id.unwrap_or_default()),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyCredentialJson {
    key_id: Uuid,
    display_name: Option<String>,
    start_date_time: Option<DateTime<Utc>>,
    end_date_time: Option<DateTime<Utc>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    usage: Option<String>,
}

impl From<ListedApplicationJson> for ListedApplication {
    fn from(json: ListedApplicationJson) -> Self {
        Self {
            object_id: json.id,
            app_id: json.app_id,
            display_name: json.display_name.unwrap_or_default(),
            password_credentials: json
                .password_credentials
                .into_iter()
                .map(|c| c.into_parts().0)
                .collect(),
            key_credentials: json
                .key_credentials
                .into_iter()
                .map(|c| KeyCredential {
                    key_id: c.key_id,
                    display_name: c.display_name,
                    start: c.start_date_time,
                    end: c.end_date_time,
                    kind: c.kind,
                    usage: c.usage,
                })
                .collect(),
            owners: json.owners.into_iter().map(OwnerJson::into_name).collect(),
        }
    }
}

impl GraphClient {
    /// Starts listing the applications in `scope`, `page_size` per page (1 to
    /// [`MAX_PAGE_SIZE`]). Needs `Application.Read.All`, or for [`ListScope::OwnedBy`] also
    /// `Application.ReadWrite.OwnedBy`. Nothing is sent until the first page is asked for.
    pub fn list_applications(
        &self,
        scope: &ListScope,
        page_size: u16,
    ) -> Result<ApplicationPages<'_>, GraphError> {
        self.listing(scope, page_size, false)
    }

    /// Like [`list_applications`](Self::list_applications), each application with its
    /// owners (`$expand=owners`; Graph then pages at most [`MAX_EXPANDED_PAGE_SIZE`] and
    /// expands at most 20 owners each). Users' names need `User.ReadBasic.All` besides.
    pub fn list_applications_with_owners(
        &self,
        scope: &ListScope,
        page_size: u16,
    ) -> Result<ApplicationPages<'_>, GraphError> {
        self.listing(scope, page_size.min(MAX_EXPANDED_PAGE_SIZE), true)
    }

    fn listing(&self, scope: &ListScope, page_size: u16, owners: bool) -> Result<ApplicationPages<'_>, GraphError> {
        let top = page_size.clamp(1, MAX_PAGE_SIZE).to_string();
        let (operation, path, filter) = match scope {
            ListScope::Tenant { name_prefix } => (
                "listing applications".to_string(),
                "applications".to_string(),
                name_prefix.as_deref().map(|prefix| {
                    // OData string literals double their single quotes.
                    format!("startswith(displayName,'{}')", prefix.replace('\'', "''"))
                }),
            ),
            ListScope::OwnedBy { client_id } => (
                format!("listing the applications owned by the service principal of {client_id}"),
                format!(
                    "servicePrincipals(appId='{client_id}')/ownedObjects/microsoft.graph.application"
                ),
                None,
            ),
        };
        let mut url = self.url(&path, &operation)?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("$select", SELECT_LISTING);
            query.append_pair("$top", &top);
            if owners {
                query.append_pair("$expand", "owners");
            }
            if let Some(filter) = &filter {
                query.append_pair("$filter", filter);
            }
        }
        Ok(ApplicationPages {
            client: self,
            operation,
            next: Some(url),
        })
    }
}

impl ApplicationPages<'_> {
    /// The next page, retried like every idempotent Graph call (429 with `Retry-After`, 5xx,
    /// timeouts); `None` once the listing is complete.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ListedApplication>>, GraphError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let call = Call {
            operation: &self.operation,
            metric: "listApplications",
            method: Method::GET,
            url,
            body: None,
            mode: RetryMode::Always,
            answer: Answer::Public { limit: PAGE_BODY_LIMIT },
        };
        let body = self.client.send(&call).await?;
        let page: PageJson = serde_json::from_slice(&body).map_err(|e| GraphError::Protocol {
            operation: self.operation.clone(),
            detail: format!("the page is not an application collection: {e}"),
        })?;
        self.next = page
            .next_link
            .map(|link| self.checked_next_link(&link))
            .transpose()?;
        Ok(Some(
            page.value
                .into_iter()
                .map(ListedApplication::from)
                .collect(),
        ))
    }

    /// The bearer token goes wherever `@odata.nextLink` points, so it must point at Graph.
    fn checked_next_link(&self, link: &str) -> Result<Url, GraphError> {
        self.client.graph_link(link, &self.operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
        for attempt in 1..10 {
            let wait = jittered_backoff(&policy, attempt);
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1))).min(policy.max_delay);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "attempt {attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn retry_after_longer_than_the_cap_is_not_waited_out() {
        let policy = RetryPolicy {
            max_delay: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        assert_eq!(
            Wait::RetryAfter(Duration::from_secs(2)).resolve(&policy, 1),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            Wait::RetryAfter(Duration::from_secs(120)).resolve(&policy, 1),
            None
        );
    }

    #[test]
    fn scope_follows_the_base_url_and_plain_http_is_refused() {
        let credential: Arc<dyn TokenCredential> =
            azure_identity::AzureCliCredential::new(None).expect("builds");
        let config = GraphConfig {
            base_url: Url::parse("https://graph.microsoft.us/").expect("url"),
            ..GraphConfig::default()
        };
        let client =
            GraphClient::new(config, credential.clone(), reqwest::Client::new()).expect("valid");
        assert_eq!(client.scope(), "https://graph.microsoft.us/.default");
        assert_eq!(client.api.as_str(), "https://graph.microsoft.us/v1.0/");

        let plain = GraphConfig {
            base_url: Url::parse("http://graph.local").expect("url"),
            ..GraphConfig::default()
        };
        let error =
            GraphClient::new(plain, credential, reqwest::Client::new()).expect_err("http refused");
        assert!(error.to_string().contains("not https://"), "{error}");
    }
}
