//! Stored events: `GET /v1/events`, `GET /v1/events/{id}`, `GET /v1/trace/{correlation_id}`.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edubus_catalog::resolve::{ResolveError, resolve};
use edubus_core::{EventStore, ReadQuery, Recorded};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::publish::STRUCTURED;
use crate::token::{Action, Caller};
use crate::trace::Tree;
use crate::{Backend, Shared, redact};

/// Page size when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Largest page served.
const MAX_LIMIT: usize = 1000;

/// Filters of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this correlation id.
    correlation_id: Option<String>,
    /// Only events with this partition key.
    key: Option<String>,
    /// Only events of this type (canonical name, alias or topic).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Only events after this position (default 0).
    after: Option<u64>,
    /// At most this many events (default 100, at most 1000).
    limit: Option<usize>,
}

/// A page of stored events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// The events, by position.
    pub events: Vec<StoredEvent>,
    /// Pass as `after` to read the next page.
    pub next_after: u64,
}

/// A stored event: where it is in the log and the CloudEvent itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredEvent {
    /// Position in the global log.
    pub position: u64,
    /// Stream (topic).
    pub stream: String,
    /// Partition of the stream.
    pub partition: u32,
    /// Partition key (redacted when it is personal data and the caller lacks `pii:read`).
    pub key: String,
    /// When the store recorded it.
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: Timestamp,
    /// The CloudEvent in structured JSON form.
    #[schema(value_type = Object)]
    pub event: Value,
}

impl StoredEvent {
    /// `event` as shown to `caller`: PII redacted unless the caller may see it.
    pub(crate) fn shown<B: Backend>(
        state: &Shared<B>,
        caller: &Caller,
        mut event: Recorded,
    ) -> Self {
        if !caller.sees_pii() {
            redact::recorded(state.bus.validator().catalog(), &mut event);
        }
        Self {
            position: event.position,
            stream: event.stream,
            partition: event.partition,
            key: event.key,
            recorded_at: event.recorded_at,
            event: serde_json::to_value(&event.envelope).unwrap_or(Value::Null),
        }
    }
}

/// The canonical name of `name`, or `404` with the nearest names.
pub(crate) fn canonical<B: Backend>(state: &Shared<B>, name: &str) -> Result<String, ApiError> {
    match resolve(state.bus.validator().catalog(), name) {
        Ok(r) => Ok(r.event.name.clone()),
        Err(ResolveError::Unknown { nearest, total, .. }) => Err(ApiError {
            nearest: nearest.clone(),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown event type `{name}`; did you mean {}? ({total} events in the catalog)",
                    nearest.join(", ")
                ),
            )
        }),
        Err(e @ ResolveError::Ambiguous { .. }) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
        }
    }
}

/// Stored events, oldest first, filtered; types the token may not read are left out.
#[utoipa::path(
    get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 403, description = "The token may not read this type", body = ApiError),
        (status = 404, description = "Unknown event type", body = ApiError),
    )
)]
pub(crate) async fn list<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let types = match &q.event_type {
        Some(name) => vec![canonical(&state, name)?],
        None => Vec::new(),
    };
    if let Some(name) = types.first().filter(|t| !caller.may(Action::Read, t)) {
        return Err(ApiError::forbidden(format!(
            "token `{}` may not read `{name}` (needs scope read:{name})",
            caller.name
        )));
    }
    let after = q.after.unwrap_or(0);
    let query = ReadQuery {
        after,
        limit: q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        types,
        key: q.key,
        correlation_id: q.correlation_id,
        ..ReadQuery::default()
    };
    let events = state.bus.backend().read(query).await?;
    let next_after = events.last().map_or(after, |e| e.position);
    let events = events
        .into_iter()
        .filter(|e| caller.may(Action::Read, &e.envelope.event_type))
        .map(|e| StoredEvent::shown(&state, &caller, e))
        .collect();
    Ok(Json(EventPage { events, next_after }))
}

/// One stored event as `application/cloudevents+json`, its position in `Edubus-Position`.
#[utoipa::path(
    get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event id")),
    responses(
        (status = 200, description = "The CloudEvent (structured mode)", content_type = "application/cloudevents+json", body = Object),
        (status = 403, description = "The token may not read this type", body = ApiError),
        (status = 404, description = "No event has this id", body = ApiError),
    )
)]
pub(crate) async fn get<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(event) = EventStore::get(state.bus.backend(), &id).await? else {
        return Err(edubus_core::Error::not_found("event", id).into());
    };
    let ty = &event.envelope.event_type;
    if !caller.may(Action::Read, ty) {
        return Err(ApiError::forbidden(format!(
            "token `{}` may not read `{ty}` (needs scope read:{ty})",
            caller.name
        )));
    }
    let shown = StoredEvent::shown(&state, &caller, event);
    let body = serde_json::to_vec(&shown.event).unwrap_or_default();
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(STRUCTURED));
    headers.insert("edubus-position", HeaderValue::from(shown.position));
    Ok(response)
}

/// The causation tree of a correlation id, with what each subscription did with each event.
#[utoipa::path(
    get, path = "/v1/trace/{correlation_id}", tag = "events",
    params(("correlation_id" = String, Path, description = "The correlation id")),
    responses(
        (status = 200, description = "The tree: roots with their caused events", body = Object),
        (status = 403, description = "The token has no read scope", body = ApiError),
        (status = 404, description = "No event has this correlation id", body = ApiError),
    )
)]
pub(crate) async fn trace<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(correlation_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !caller.may_any(Action::Read) {
        return Err(ApiError::forbidden(format!(
            "token `{}` has no read scope",
            caller.name
        )));
    }
    let Some(mut tree) = Tree::load(state.bus.backend(), &correlation_id).await? else {
        return Err(edubus_core::Error::not_found("correlation id", correlation_id).into());
    };
    if !caller.sees_pii() {
        let catalog = state.bus.validator().catalog();
        tree.events
            .iter_mut()
            .for_each(|e| redact::recorded(catalog, e));
    }
    Ok(Json(tree.to_json(&correlation_id)))
}
