//! Which of an application's client secrets still sign in: the Entra sign-in log
//! (`GET /beta/auditLogs/signIns`, service-principal sign-ins), whose entries name the keyId
//! of the secret used (`servicePrincipalCredentialKeyId`). It is the one signal for
//! consumers outside the cluster, and for ACS, which signs in with the app's secret on
//! every SMTP AUTH.
//!
//! Only on Graph's beta endpoint: v1.0 lists interactive user sign-ins only. Needs the
//! application permission `AuditLog.Read.All` and a Microsoft Entra ID P1 or P2 licence in
//! the tenant; entries show up minutes after the sign-in (Entra's reporting latency).

use super::{Answer, Call, GraphClient, RetryMode, PAGE_BODY_LIMIT};
use crate::engine::ports::{Clock, GraphError, RevocationGate, RevocationHold};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// At most this many pages (of up to 1,000 sign-ins) are read per question, so an app that
/// signs in all day cannot keep a reconcile busy; what was not reached counts as unknown.
const MAX_PAGES: usize = 20;

/// What the sign-in log says about some keyIds of one application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignInScan {
    /// The last sign-in of each keyId seen in the window (successful or not: a refused
    /// sign-in still shows a consumer holding that secret).
    pub last_seen: BTreeMap<Uuid, DateTime<Utc>>,
    /// False when the page limit stopped the read: keyIds not seen may still have signed in.
    pub complete: bool,
}

#[derive(Deserialize)]
struct Page {
    value: Vec<Entry>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    created_date_time: DateTime<Utc>,
    service_principal_credential_key_id: Option<String>,
}

impl GraphClient {
    /// When each of `key_ids` of the application `app_id` last signed in since `since`.
    /// Stops reading once every keyId was seen (the log is newest first).
    pub async fn last_sign_ins(&self, app_id: Uuid, key_ids: &[Uuid], since: DateTime<Utc>) -> Result<SignInScan, GraphError> {
        let operation = format!("reading the sign-in log for application {app_id} (GET /beta/auditLogs/signIns)");
        let protocol = |detail: String| GraphError::Protocol { operation: operation.clone(), detail };
        let mut url = self.api.join("../beta/auditLogs/signIns").map_err(|e| protocol(e.to_string()))?;
        let filter = format!(
            "appId eq '{app_id}' and createdDateTime ge {} and signInEventTypes/any(t: t eq 'servicePrincipal')",
            since.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        url.query_pairs_mut().append_pair("$filter", &filter).append_pair("$top", "1000");
        let mut last_seen = BTreeMap::new();
        for _ in 0..MAX_PAGES {
            let call = Call {
                operation: &operation,
                metric: "listSignIns",
                method: Method::GET,
                url,
                body: None,
                mode: RetryMode::Always,
                answer: Answer::Public { limit: PAGE_BODY_LIMIT },
            };
            let body = self.send(&call).await?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| protocol(format!("the page is not a sign-in collection: {e}")))?;
            for entry in page.value {
                let Some(key_id) = entry.service_principal_credential_key_id.and_then(|id| Uuid::parse_str(&id).ok()) else { continue };
                if key_ids.contains(&key_id) {
                    last_seen.entry(key_id).or_insert(entry.created_date_time);
                }
            }
            let all_seen = key_ids.iter().all(|id| last_seen.contains_key(id));
            match page.next_link {
                Some(link) if !all_seen => url = self.graph_link(&link, &operation)?,
                _ => return Ok(SignInScan { last_seen, complete: true }),
            }
        }
        Ok(SignInScan { last_seen, complete: false })
    }
}

impl GraphError {
    /// Why the sign-in log cannot be read, when that is the tenant's setup rather than a
    /// fault: what to grant or license. `None` for other errors.
    pub fn sign_in_log_unavailable(&self) -> Option<&'static str> {
        match self {
            GraphError::Api { status: 403, code, .. } if code == "Authentication_RequestFromNonPremiumTenantOrB2CTenant" => Some(
                "the tenant has no Microsoft Entra ID P1 or P2 licence, which reading sign-in logs through Graph requires",
            ),
            GraphError::Api { status: 403, .. } => {
                Some("the rotator's identity lacks the Graph application permission AuditLog.Read.All (admin-consented)")
            }
            _ => None,
        }
    }
}

/// Keeps older secrets live while the sign-in log shows them in use: a keyId that signed in
/// within `unused_for` is not revoked (`revocation.requireUnusedFor`). When the log cannot be
/// read for a reason of the tenant's setup (no licence, no permission), the check steps
/// aside and says so ([`SignInGate::last_check`]); the other checks still apply. Any other
/// failure to read it holds, as not knowing is no proof of disuse.
pub struct SignInGate {
    graph: Arc<GraphClient>,
    app_id: Uuid,
    unused_for: chrono::Duration,
    clock: Arc<dyn Clock>,
    /// What the last question found: read (`Ok`), or skipped and why (`Err`).
    last_check: Mutex<Option<Result<(), String>>>,
}

/// How soon a hold for an unreadable or incomplete log is looked at again.
const RECHECK: chrono::Duration = chrono::Duration::minutes(5);

impl SignInGate {
    pub fn new(graph: Arc<GraphClient>, app_id: Uuid, unused_for: chrono::Duration, clock: Arc<dyn Clock>) -> Self {
        Self { graph, app_id, unused_for, clock, last_check: Mutex::new(None) }
    }

    /// Whether the log was read when last asked, or why the check was skipped; `None` when
    /// nothing was due for revocation, so it was not asked.
    pub fn last_check(&self) -> Option<Result<(), String>> {
        self.last_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn record(&self, checked: Result<(), String>) {
        *self.last_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(checked);
    }

    fn window(&self) -> String {
        let minutes = self.unused_for.num_minutes();
        if minutes % 60 == 0 { format!("{}h", minutes / 60) } else { format!("{minutes}m") }
    }
}

#[async_trait]
impl RevocationGate for SignInGate {
    async fn hold(&self, _key_id: Uuid, old: &[Uuid]) -> Option<RevocationHold> {
        if old.is_empty() {
            return None;
        }
        let now = self.clock.now();
        let scan = self.graph.last_sign_ins(self.app_id, old, now - self.unused_for).await;
        match scan {
            Ok(scan) => {
                self.record(Ok(()));
                if let Some((key_id, at)) = scan.last_seen.iter().max_by_key(|(_, at)| **at) {
                    return Some(RevocationHold {
                        reason: OLD_SECRET_SIGNS_IN,
                        message: format!(
                            "keyId {key_id} of application {} still signs in: last at {} (Entra sign-in log); it is revoked once it has not signed in for {} (requireUnusedFor). Find the consumer still using it (the sign-in's IP address and resource in the Entra admin center) and give it the new value",
                            self.app_id,
                            at.to_rfc3339_opts(SecondsFormat::Secs, true),
                            self.window()
                        ),
                        recheck_at: *at + self.unused_for,
                    });
                }
                (!scan.complete).then(|| RevocationHold {
                    reason: SIGN_IN_LOG_UNREADABLE,
                    message: format!("the sign-in log of application {} is too busy to read in full ({MAX_PAGES} pages); no older secret is revoked until it shows none of them within {}", self.app_id, self.window()),
                    recheck_at: now + RECHECK,
                })
            }
            Err(error) => match error.sign_in_log_unavailable() {
                Some(why) => {
                    let note = format!("the sign-in check (requireUnusedFor) was skipped: {why}; the other checks decided. ({error})");
                    tracing::warn!(application = %self.app_id, "{note}");
                    self.record(Err(note));
                    None
                }
                None => Some(RevocationHold {
                    reason: SIGN_IN_LOG_UNREADABLE,
                    message: format!("could not read the sign-in log, so no older secret is revoked yet: {error}"),
                    recheck_at: now + RECHECK,
                }),
            },
        }
    }
}

/// Hold reasons, for conditions and metrics.
pub const OLD_SECRET_SIGNS_IN: &str = "OldSecretStillSignsIn";
pub const SIGN_IN_LOG_UNREADABLE: &str = "SignInLogUnreadable";
