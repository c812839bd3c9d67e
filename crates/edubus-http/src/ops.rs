//! Subscriptions and dead letters: `GET /v1/subscriptions`, `GET /v1/dlq`, `GET /v1/dlq/{id}`,
//! `POST /v1/dlq/replay`, `POST /v1/dlq/purge` (the DLQ routes need `admin`).

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use edubus_core::{DeadLetterQueue, EventStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::query::StoredEvent;
use crate::token::Caller;
use crate::{Backend, Shared};

/// Every registered subscription with its health numbers.
#[utoipa::path(
    get, path = "/v1/subscriptions", tag = "operations",
    responses((status = 200, description = "`{subscriptions: [{name, types, ordered, lag, pending, dlq_depth, consumers, ...}]}`", body = Object))
)]
pub(crate) async fn subscriptions<B: Backend>(
    State(state): State<Shared<B>>,
) -> Result<Json<Value>, ApiError> {
    let backend = state.bus.backend();
    let specs = backend.subscriptions().await?;
    let stats = backend.stats().await?;
    let subs: Vec<Value> = specs
        .iter()
        .map(|spec| {
            let mut v = json!({ "name": spec.name, "types": spec.types, "ordered": spec.ordered });
            if let Some(s) = stats.iter().find(|s| s.subscription == spec.name) {
                v["lag"] = s.lag.into();
                v["pending"] = s.pending.into();
                v["dlq_depth"] = s.dlq_depth.into();
                v["consumers"] = s.consumers.into();
                v["leased_partitions"] = s.leased_partitions.into();
                v["last_event_at"] = json!(s.last_event_at);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "subscriptions": subs })))
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    match caller.is_admin() {
        true => Ok(()),
        false => Err(ApiError::forbidden(format!(
            "token `{}` may not manage dead letters (needs scope admin)",
            caller.name
        ))),
    }
}

/// Filters of `GET /v1/dlq`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqQuery {
    /// Only this subscription's entries.
    subscription: Option<String>,
    /// Only entries with an id above this.
    after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

/// Dead letters, oldest first.
#[utoipa::path(
    get, path = "/v1/dlq", tag = "dead letters", params(DlqQuery),
    responses(
        (status = 200, description = "`{entries: [...]}`", body = Object),
        (status = 403, description = "Needs admin", body = ApiError),
    )
)]
pub(crate) async fn dlq_list<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DlqQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&caller)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let backend = state.bus.backend();
    let entries = DeadLetterQueue::list(
        backend,
        q.subscription.as_deref(),
        q.after.unwrap_or(0),
        limit,
    )
    .await?;
    Ok(Json(json!({ "entries": entries })))
}

/// One dead letter with the stored event.
#[utoipa::path(
    get, path = "/v1/dlq/{id}", tag = "dead letters",
    params(("id" = u64, Path, description = "Entry id")),
    responses(
        (status = 200, description = "The entry and `event`", body = Object),
        (status = 403, description = "Needs admin", body = ApiError),
        (status = 404, description = "No such entry", body = ApiError),
    )
)]
pub(crate) async fn dlq_show<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&caller)?;
    let backend = state.bus.backend();
    let Some(entry) = DeadLetterQueue::get(backend, id).await? else {
        return Err(edubus_core::Error::not_found("dead letter", id.to_string()).into());
    };
    let event = EventStore::get(backend, &entry.letter.event_id)
        .await?
        .map(|e| StoredEvent::shown(&state, &caller, e));
    let mut out = serde_json::to_value(&entry).unwrap_or(Value::Null);
    out["event"] = serde_json::to_value(event).unwrap_or(Value::Null);
    Ok(Json(out))
}

/// The entries a replay or purge acts on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Entry ids.
    pub ids: Vec<u64>,
}

/// How many entries an action touched.
#[derive(Debug, Serialize, ToSchema)]
pub struct Affected {
    /// Entries replayed or purged.
    pub affected: u64,
}

/// Queues dead letters for redelivery to their own subscription, marked as replays.
#[utoipa::path(
    post, path = "/v1/dlq/replay", tag = "dead letters", request_body = Selection,
    responses(
        (status = 200, description = "How many were queued", body = Affected),
        (status = 403, description = "Needs admin", body = ApiError),
    )
)]
pub(crate) async fn dlq_replay<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Json(sel): Json<Selection>,
) -> Result<Json<Affected>, ApiError> {
    require_admin(&caller)?;
    let actor = format!("http:{}", caller.name);
    let affected = DeadLetterQueue::replay(state.bus.backend(), &sel.ids, &actor).await?;
    Ok(Json(Affected { affected }))
}

/// Deletes dead letters.
#[utoipa::path(
    post, path = "/v1/dlq/purge", tag = "dead letters", request_body = Selection,
    responses(
        (status = 200, description = "How many were deleted", body = Affected),
        (status = 403, description = "Needs admin", body = ApiError),
    )
)]
pub(crate) async fn dlq_purge<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Json(sel): Json<Selection>,
) -> Result<Json<Affected>, ApiError> {
    require_admin(&caller)?;
    let actor = format!("http:{}", caller.name);
    let affected = DeadLetterQueue::purge(state.bus.backend(), &sel.ids, &actor).await?;
    Ok(Json(Affected { affected }))
}
