//! Many application reads in few requests: Graph's JSON batching (`POST /v1.0/$batch`,
//! Microsoft Learn, "Combine multiple HTTP requests using JSON batching"), for the drift
//! checks of a whole pass.
//!
//! At most [`MAX_BATCH`] reads per batch. Graph answers every read with its own status,
//! headers and body, in any order (paired by `id`). Each read is throttled on its own: an
//! item answered 429 (or 5xx) is read again alone, once its `Retry-After` has passed (which,
//! as for every 429, pauses every call of the client); an item's own refusal (404, 403) is
//! that application's error and nobody else's. A batch refused whole, or an answer that
//! cannot be understood, falls back to one read per application.

use super::{
    Answer, Call, GraphClient, PAGE_BODY_LIMIT, RetryMode, SELECT_APPLICATION, api_error,
    application_from_body, application_path, retry_after,
};
use crate::domain::{AppRef, Application};
use crate::engine::ports::GraphError;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Graph's limit on the requests of one batch.
pub const MAX_BATCH: usize = 20;

#[derive(Deserialize)]
struct BatchAnswer {
    responses: Vec<ItemAnswer>,
}

#[derive(Deserialize)]
struct ItemAnswer {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, String>,
    body: Option<Value>,
}

/// What one item of a batch came to.
enum Item {
    Done(Result<Application, GraphError>),
    /// Throttled or a temporary fault: read alone.
    Again,
}

impl GraphClient {
    /// Reads every application of `apps`, answers in the same order: [`MAX_BATCH`] per
    /// `$batch`, batches sent as the client's concurrency allows; a single application is
    /// read with a plain GET.
    pub async fn applications(&self, apps: &[AppRef]) -> Vec<Result<Application, GraphError>> {
        if let [app] = apps {
            return vec![crate::engine::ports::Directory::application(self, app).await];
        }
        futures::stream::iter(apps.chunks(MAX_BATCH))
            .map(|chunk| self.batch_of(chunk))
            .buffered(self.max_concurrent_requests)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    async fn batch_of(&self, apps: &[AppRef]) -> Vec<Result<Application, GraphError>> {
        let read_alone = |app| crate::engine::ports::Directory::application(self, app);
        let items = match self.send_batch(apps).await {
            Ok(items) => items,
            Err(error) => {
                tracing::warn!(%error, reads = apps.len(), "Microsoft Graph did not answer a batch of application reads; reading them one at a time");
                return futures::future::join_all(apps.iter().map(read_alone)).await;
            }
        };
        let again: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| matches!(item, Item::Again))
            .map(|(i, _)| i)
            .collect();
        let mut retried = futures::future::join_all(again.iter().map(|&i| read_alone(&apps[i])))
            .await
            .into_iter();
        items
            .into_iter()
            .map(|item| match item {
                Item::Done(result) => result,
                Item::Again => retried
                    .next()
                    .unwrap_or_else(|| unreachable!("one retry per item read again")),
            })
            .collect()
    }

    /// One `$batch` of reads of `apps`, each item's answer in the order of `apps`.
    async fn send_batch(&self, apps: &[AppRef]) -> Result<Vec<Item>, GraphError> {
        let operation = format!("reading {} applications in one $batch", apps.len());
        let requests: Vec<Value> = apps
            .iter()
            .enumerate()
            .map(|(i, app)| json!({ "id": i.to_string(), "method": "GET", "url": format!("/{}?{SELECT_APPLICATION}", application_path(app)) }))
            .collect();
        let call = Call {
            operation: &operation,
            metric: "batch",
            method: Method::POST,
            url: self.url("$batch", &operation)?,
            body: Some(json!({ "requests": requests })),
            // Reads only: repeating the batch acts on nothing.
            mode: RetryMode::Always,
            answer: Answer::Public {
                limit: PAGE_BODY_LIMIT,
            },
        };
        let body = self.send(&call).await?;
        let protocol = |detail: String| GraphError::Protocol {
            operation: operation.clone(),
            detail,
        };
        let answer: BatchAnswer = serde_json::from_slice(&body)
            .map_err(|e| protocol(format!("the answer is not a batch response: {e}")))?;
        let mut by_id: HashMap<String, ItemAnswer> = answer
            .responses
            .into_iter()
            .map(|item| (item.id.clone(), item))
            .collect();
        let mut items = Vec::with_capacity(apps.len());
        for (i, app) in apps.iter().enumerate() {
            let answer = by_id
                .remove(&i.to_string())
                .ok_or_else(|| protocol(format!("no answer for request {i} ({app})")))?;
            items.push(self.item(app, answer));
        }
        Ok(items)
    }

    fn item(&self, app: &AppRef, answer: ItemAnswer) -> Item {
        let operation = format!("reading {app}");
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers: HeaderMap = answer
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::try_from(name.as_str()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        let body = answer.body.map(|body| body.to_string()).unwrap_or_default();
        if status.is_success() {
            return Item::Done(application_from_body(&operation, body.as_bytes()));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            match retry_after(&headers) {
                // Longer than the retry policy waits: reported as throttled, like a plain read.
                Some(wait) if wait > self.retry.max_delay => {}
                Some(wait) => {
                    self.pause_for(wait);
                    return Item::Again;
                }
                None => return Item::Again,
            }
        } else if status.is_server_error() {
            return Item::Again;
        }
        Item::Done(Err(api_error(
            &operation,
            status,
            &headers,
            body.as_bytes(),
        )))
    }
}
