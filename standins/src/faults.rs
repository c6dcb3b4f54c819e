//! Fault injection and request counting shared by every HTTP stand-in.
//!
//! A stand-in handler starts with `if let Some(r) = faults.intercept("route").await { return r }`:
//! that counts the request under the route's name (benchmarks report API economy from the
//! counts) and plays the next queued [`Fault`] for that route, if any. Faults are queued per
//! route and used first in, first out, so a test can say "429 once, then 503 twice, then
//! answer normally".
//!
//! A dropped connection cannot be expressed as a response; [`intercept`](Faults::intercept)
//! marks the response instead and [`super::https::serve_tls`] closes the connection without
//! writing anything when it sees the mark.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What an injected fault does once its delay has passed.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultAction {
    /// Answer with this status, an optional `Retry-After` (seconds) and a JSON body
    /// (`None`: the stand-in's usual error body for that status).
    Respond {
        status: u16,
        retry_after: Option<u64>,
        body: Option<Value>,
    },
    /// Handle the request normally (used with a delay to model a slow service).
    Proceed,
    /// Close the connection without answering.
    DropConnection,
}

/// One injected fault: wait `delay`, then do `action`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub delay: Duration,
    pub action: FaultAction,
}

impl Fault {
    /// Answers with `status` and the stand-in's usual error body.
    pub fn status(status: u16) -> Self {
        Self::now(FaultAction::Respond {
            status,
            retry_after: None,
            body: None,
        })
    }

    /// HTTP 429 with `Retry-After: seconds`.
    pub fn throttle(retry_after_seconds: u64) -> Self {
        Self::status(429).retry_after(retry_after_seconds)
    }

    /// Answers normally, but only after `delay`.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay,
            action: FaultAction::Proceed,
        }
    }

    /// Closes the connection without answering.
    pub fn drop_connection() -> Self {
        Self::now(FaultAction::DropConnection)
    }

    /// Adds a `Retry-After` header (seconds) to a status fault.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        if let FaultAction::Respond { retry_after, .. } = &mut self.action {
            *retry_after = Some(seconds);
        }
        self
    }

    /// Replaces the body of a status fault.
    pub fn body(mut self, value: Value) -> Self {
        if let FaultAction::Respond { body, .. } = &mut self.action {
            *body = Some(value);
        }
        self
    }

    /// Waits `delay` before acting.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn now(action: FaultAction) -> Self {
        Self {
            delay: Duration::ZERO,
            action,
        }
    }
}

/// Marks a response whose connection must be closed instead of answered.
#[derive(Clone, Copy, Debug)]
pub struct DropConnectionMark;

type ErrorBody = dyn Fn(u16) -> Value + Send + Sync;

#[derive(Default)]
struct State {
    queues: HashMap<String, VecDeque<Fault>>,
    counts: HashMap<String, u64>,
    holds: HashMap<String, VecDeque<Hold>>,
}

/// A request held in the stand-in until the test lets it go, so that which side of a race
/// wins is the test's decision, not the scheduler's.
#[derive(Clone)]
pub struct Hold {
    arrived: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Hold {
    /// Returns once the held request has arrived (and is waiting).
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }

    /// Lets the held request go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

/// The fault queues and request counts of one stand-in. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    error_body: Arc<ErrorBody>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Faults")
            .field("counts", &state.counts)
            .field(
                "queued",
                &state
                    .queues
                    .iter()
                    .map(|(k, q)| (k, q.len()))
                    .collect::<HashMap<_, _>>(),
            )
            .finish()
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    /// Status faults without a body answer `{"error":{"code":"<reason>","message":"..."}}`.
    pub fn new() -> Self {
        Self::with_error_body(generic_error_body)
    }

    /// Status faults without a body answer `error_body(status)`, the service's own error shape.
    pub fn with_error_body(error_body: impl Fn(u16) -> Value + Send + Sync + 'static) -> Self {
        Self {
            state: Arc::default(),
            error_body: Arc::new(error_body),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        super::lock(&self.state)
    }

    /// Queues `fault` for the next request to `route` not already claimed by an earlier fault.
    pub fn push(&self, route: &str, fault: Fault) {
        self.state()
            .queues
            .entry(route.to_string())
            .or_default()
            .push_back(fault);
    }

    /// Queues `fault` `times` times in a row.
    pub fn push_times(&self, route: &str, fault: Fault, times: usize) {
        let mut state = self.state();
        let queue = state.queues.entry(route.to_string()).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    /// How many faults are still queued for `route`.
    pub fn pending(&self, route: &str) -> usize {
        self.state().queues.get(route).map_or(0, VecDeque::len)
    }

    /// Forgets every queued fault.
    pub fn clear(&self) {
        self.state().queues.clear();
    }

    /// Requests seen per route so far (faulted ones included).
    pub fn counts(&self) -> HashMap<String, u64> {
        self.state().counts.clone()
    }

    /// Requests seen on `route` so far.
    pub fn count(&self, route: &str) -> u64 {
        self.state().counts.get(route).copied().unwrap_or(0)
    }

    /// Sets every count back to zero.
    pub fn reset_counts(&self) {
        self.state().counts.clear();
    }

    /// Holds the next request to `route` until [`Hold::release`]; queued faults play after.
    pub fn hold(&self, route: &str) -> Hold {
        let hold = Hold { arrived: Arc::default(), release: Arc::new(tokio::sync::Semaphore::new(0)) };
        self.state().holds.entry(route.to_string()).or_default().push_back(hold.clone());
        hold
    }

    /// Counts a request to `route` and plays its next queued fault: `Some(response)` when the
    /// handler must return that response instead of doing its work.
    pub async fn intercept(&self, route: &str) -> Option<Response> {
        let hold = self.state().holds.get_mut(route).and_then(VecDeque::pop_front);
        if let Some(hold) = hold {
            hold.arrived.notify_one();
            // The semaphore is never closed, so acquiring only fails if it were.
            if let Ok(permit) = hold.release.acquire().await {
                permit.forget();
            }
        }
        let fault = {
            let mut state = self.state();
            *state.counts.entry(route.to_string()).or_default() += 1;
            state.queues.get_mut(route).and_then(VecDeque::pop_front)
        }?;
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        match fault.action {
            FaultAction::Proceed => None,
            FaultAction::DropConnection => Some(drop_connection_response()),
            FaultAction::Respond {
                status,
                retry_after,
                body,
            } => {
                let body = body.unwrap_or_else(|| (self.error_body)(status));
                Some(fault_response(status, retry_after, body))
            }
        }
    }
}

fn fault_response(status: u16, retry_after: Option<u64>, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn drop_connection_response() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(DropConnectionMark);
    response
}

fn generic_error_body(status: u16) -> Value {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
        .replace(' ', "");
    json!({ "error": { "code": reason, "message": format!("Injected fault: HTTP {status}.") } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn faults_play_in_order_per_route_and_every_request_counts() {
        let faults = Faults::new();
        faults.push("a", Fault::throttle(3));
        faults.push("a", Fault::status(503));

        let first = faults.intercept("a").await.expect("429 queued");
        assert_eq!(first.status(), 429);
        assert_eq!(first.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            faults.intercept("a").await.expect("503 queued").status(),
            503
        );
        assert!(faults.intercept("a").await.is_none());
        assert!(faults.intercept("b").await.is_none());

        assert_eq!(faults.count("a"), 3);
        assert_eq!(faults.counts().get("b"), Some(&1));
    }

    #[tokio::test]
    async fn a_held_request_waits_until_released() {
        let faults = Faults::new();
        let hold = faults.hold("a");
        let request = tokio::spawn({
            let faults = faults.clone();
            async move { faults.intercept("a").await.is_none() }
        });
        hold.arrived().await;
        assert!(!request.is_finished(), "held until released");
        hold.release();
        assert!(request.await.unwrap());
        assert_eq!(faults.count("a"), 1);
    }

    #[tokio::test]
    async fn delay_proceeds_and_drop_is_marked() {
        let faults = Faults::new();
        faults.push("a", Fault::delay(Duration::from_millis(1)));
        faults.push("a", Fault::drop_connection());
        assert!(faults.intercept("a").await.is_none());
        let dropped = faults.intercept("a").await.expect("drop queued");
        assert!(dropped.extensions().get::<DropConnectionMark>().is_some());
    }
}
