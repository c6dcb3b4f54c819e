//! `GET /v1.0/applications/delta` as Microsoft Graph documents it ("application: delta" and
//! "Use delta query to track changes in Microsoft Graph data"): a round starts without a
//! token (or from the previous round's `@odata.deltaLink`); its pages, of a size the server
//! chooses ([`GraphStandin::set_delta_page_size`](super::GraphStandin::set_delta_page_size),
//! 100 by default), are linked by `@odata.nextLink` with a `$skiptoken`, and the last page
//! carries `@odata.deltaLink` with a `$deltatoken`. `$select` is given on the first request
//! only; the tokens carry it. A round from a deltaLink returns only the applications
//! changed since (credentials added, removed, backdated; created), each with its whole
//! selected representation (the docs: a property that has not changed comes back with its
//! old value), and the deleted ones as `{"id": …, "@removed": {"reason": "changed"}}`
//! (soft-deleted) or `"deleted"` (permanently). A token the stand-in does not know, or one
//! from before [`GraphStandin::expire_delta_tokens`](super::GraphStandin::expire_delta_tokens),
//! gets what Graph answers for an expired token of identity resources: 400
//! `syncStateNotFound` (Microsoft 365 Developer Blog, "Duration of change tracking tokens
//! for identity and education resources").

use super::listing::application_json;
use super::*;
use base64::Engine as _;
use serde::Serialize;

const DEFAULT_DELTA_PAGE_SIZE: usize = 100;
const STALE_TOKEN: &str = "The sync state generation is not found. The delta token is expired and data must be synchronized again.";

/// What a `$skiptoken` or `$deltatoken` carries (opaque to clients).
#[derive(Serialize, Deserialize)]
struct Position {
    epoch: u64,
    /// Changes already seen before this round (0: the first round, everything).
    since: u64,
    /// Changes counted when the round started: the next round starts from there.
    upper: u64,
    /// The last object id of the previous page, within a round.
    after: Option<Uuid>,
    select: Option<Vec<String>>,
}

pub(in crate::graph) async fn applications_delta(
    State(state): State<AppState>,
    Extension(ids): Extension<RequestContext>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(fault) = intercept(&state, ROUTE_APPLICATIONS_DELTA, &ids).await {
        return fault;
    }
    if let Err(response) = check_bearer(&state, &headers, &ids) {
        return response;
    }
    let (epoch, count) = {
        let changes = state.tenant.changes();
        (changes.epoch, changes.count)
    };
    let position = match (query.get("$skiptoken"), query.get("$deltatoken")) {
        (Some(token), None) => decode(token),
        (None, Some(token)) => decode(token).map(|seen| Position {
            since: seen.upper,
            upper: count,
            after: None,
            ..seen
        }),
        (None, None) => match parse_select(query.get("$select").map(String::as_str), &ids) {
            Ok(select) => Some(Position { epoch, since: 0, upper: count, after: None, select }),
            Err(response) => return response,
        },
        (Some(_), Some(_)) => None,
    };
    let Some(position) = position.filter(|p| p.epoch == epoch) else {
        return graph_error(StatusCode::BAD_REQUEST, "syncStateNotFound", STALE_TOKEN, &ids);
    };
    page(&state, &ids, position)
}

fn decode(token: &str) -> Option<Position> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn encode(position: &Position) -> String {
    let json = serde_json::to_vec(position).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// One entry of a round: an application as it is now, or one deleted.
enum Entry {
    Changed(StandinApp),
    Removed(Uuid, &'static str),
}

fn page(state: &AppState, ids: &RequestContext, position: Position) -> Response {
    let per_page = state.directory().delta_page_size.unwrap_or(DEFAULT_DELTA_PAGE_SIZE);
    let mut entries: Vec<(Uuid, Entry)> = {
        let changes = state.tenant.changes();
        let changed: Vec<Uuid> = changes
            .changed
            .iter()
            .filter(|(_, at)| **at > position.since)
            .map(|(id, _)| *id)
            .collect();
        // The first round enumerates what exists; deletions matter only to a later one.
        let removed: Vec<(Uuid, &'static str)> = changes
            .deleted
            .iter()
            .filter(|(_, (at, _))| position.since > 0 && *at > position.since)
            .map(|(id, (_, reason))| (*id, *reason))
            .collect();
        drop(changes);
        let mut entries: Vec<(Uuid, Entry)> = changed
            .into_iter()
            .filter_map(|id| state.tenant.app(id).map(|app| (id, Entry::Changed(app))))
            .collect();
        entries.extend(removed.into_iter().map(|(id, reason)| (id, Entry::Removed(id, reason))));
        entries
    };
    entries.sort_by_key(|(id, _)| *id);
    entries.retain(|(id, _)| position.after.is_none_or(|after| *id > after));
    let more = entries.len() > per_page;
    entries.truncate(per_page);

    let value: Vec<Value> = entries
        .iter()
        .map(|(_, entry)| match entry {
            Entry::Changed(app) => application_json(state, app, position.select.as_deref(), false),
            Entry::Removed(id, reason) => json!({
                "@odata.type": "#microsoft.graph.application",
                "id": id,
                "@removed": { "reason": reason },
            }),
        })
        .collect();
    let fields = position
        .select
        .as_ref()
        .map(|f| format!("({})", f.join(",")))
        .unwrap_or_default();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(format!("{}/v1.0/$metadata#applications{fields}", ids.base)),
    );
    let link = match (more, entries.last()) {
        (true, Some((last, _))) => {
            let next = Position { after: Some(*last), ..position };
            ("@odata.nextLink", format!("{}/v1.0/applications/delta?$skiptoken={}", ids.base, encode(&next)))
        }
        _ => {
            let seen = Position { since: position.upper, after: None, ..position };
            ("@odata.deltaLink", format!("{}/v1.0/applications/delta?$deltatoken={}", ids.base, encode(&seen)))
        }
    };
    body.insert(link.0.into(), Value::String(link.1));
    body.insert("value".into(), Value::Array(value));
    Json(Value::Object(body)).into_response()
}
