//! Changes to applications since the last look: Graph's delta query on applications
//! (`GET /v1.0/applications/delta`, Microsoft Learn "application: delta"; least privileged
//! application permission `Application.ReadWrite.OwnedBy`), for the controller's steady
//! drift checks.
//!
//! A round follows `@odata.nextLink` (`$skiptoken`) page by page to the
//! `@odata.deltaLink` (`$deltatoken`) that starts the next round. The first round
//! enumerates the applications the rotator may read; a later one returns only those
//! changed since, and the deleted ones with `@removed`. Graph returns a changed
//! directory object with at least its changed properties; an application that comes back
//! without `passwordCredentials` is reported as [`DeltaRound::gone`], not guessed at.
//! Every page is an ordinary Graph call: the same token, retries, `Retry-After` and
//! in-flight limit as every read.

use super::{Answer, Call, GraphClient, PAGE_BODY_LIMIT, RetryMode, SELECT_APPLICATION, application_from_body};
use crate::domain::Application;
use crate::engine::ports::GraphError;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use url::Url;
use uuid::Uuid;

/// Where the next round starts: the last round's `@odata.deltaLink`.
#[derive(Clone, Debug)]
pub struct DeltaLink(Url);

/// What one round found.
#[derive(Debug)]
pub struct DeltaRound {
    /// Applications created or changed since the round's start point (all of them in a
    /// first round), with their password credentials.
    pub changed: Vec<Application>,
    /// Object ids of applications deleted, or changed without their credentials in the
    /// answer: what was known of them no longer holds.
    pub gone: Vec<Uuid>,
    pub next: DeltaLink,
}

/// Why a round did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Graph no longer knows the deltaLink's token (identity tokens live 7 days; Graph
    /// answers 400 `syncStateNotFound`, other services 410 Gone): start a first round.
    #[error("Microsoft Graph at {host} no longer knows the delta token of applications/delta ({detail}); a new first round is needed")]
    Stale { host: String, detail: String },
    /// The rotator may not use delta.
    #[error("Microsoft Graph at {host} refused applications/delta (HTTP 403 {code}): grant the rotator Application.ReadWrite.OwnedBy (least privileged for applications/delta) or Application.Read.All, with admin consent; until then drift checks read each application")]
    Refused { host: String, code: String },
    #[error("applications/delta at {host}: {error}")]
    Failed { host: String, error: GraphError },
}

#[derive(Deserialize)]
struct DeltaPage {
    value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

impl GraphClient {
    /// One delta round over the applications: a first round when `from` is `None`, else the
    /// changes since the round that gave `from`.
    pub async fn applications_delta(&self, from: Option<&DeltaLink>) -> Result<DeltaRound, DeltaError> {
        let host = self.api.host_str().unwrap_or_default().to_string();
        let operation = "reading the changes to applications (applications/delta)".to_string();
        let failed = |error: GraphError| match &error {
            GraphError::Api { status: 400, code, message, .. } if code == "syncStateNotFound" => {
                DeltaError::Stale { host: host.clone(), detail: format!("{code}: {message}") }
            }
            GraphError::Api { status: 410, code, message, .. } => {
                DeltaError::Stale { host: host.clone(), detail: format!("{code}: {message}") }
            }
            GraphError::Api { status: 403, code, .. } => DeltaError::Refused { host: host.clone(), code: code.clone() },
            _ => DeltaError::Failed { host: host.clone(), error },
        };
        let mut url = match from {
            Some(DeltaLink(link)) => link.clone(),
            None => {
                let mut url = self.url("applications/delta", &operation).map_err(failed)?;
                url.set_query(Some(SELECT_APPLICATION));
                url
            }
        };
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        loop {
            let call = Call {
                operation: &operation,
                metric: "applicationsDelta",
                method: Method::GET,
                url,
                body: None,
                mode: RetryMode::Always,
                answer: Answer::Public { limit: PAGE_BODY_LIMIT },
            };
            let body = self.send(&call).await.map_err(failed)?;
            let protocol = |detail: String| failed(GraphError::Protocol { operation: operation.clone(), detail });
            let page: DeltaPage = serde_json::from_slice(&body)
                .map_err(|e| protocol(format!("the page is not a delta page of applications: {e}")))?;
            for entry in page.value {
                let id = entry.get("id").and_then(Value::as_str).and_then(|id| Uuid::parse_str(id).ok());
                let Some(id) = id else {
                    return Err(protocol("an application of the page has no id".to_string()));
                };
                if entry.get("@removed").is_some() || entry.get("passwordCredentials").is_none() {
                    gone.push(id);
                    continue;
                }
                match application_from_body(&operation, entry.to_string().as_bytes()) {
                    Ok(application) => changed.push(application),
                    Err(_) => gone.push(id),
                }
            }
            match (page.next_link, page.delta_link) {
                (Some(next), _) => url = self.graph_link(&next, &operation).map_err(failed)?,
                (None, Some(delta)) => {
                    let next = DeltaLink(self.graph_link(&delta, &operation).map_err(failed)?);
                    return Ok(DeltaRound { changed, gone, next });
                }
                (None, None) => return Err(protocol("the last page has neither @odata.nextLink nor @odata.deltaLink".to_string())),
            }
        }
    }
}
