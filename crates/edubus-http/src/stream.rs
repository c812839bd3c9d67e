//! `GET /v1/stream?types=...`: a live tail of the log as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use edubus_core::ReadQuery;
use futures_util::Stream;
use futures_util::stream;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::query::{StoredEvent, canonical};
use crate::token::{Action, Caller};
use crate::{Backend, Shared};

/// Events sent per read of the log.
const PAGE: usize = 100;
/// Longest wait for new events before checking again.
const POLL: Duration = Duration::from_secs(5);

/// What to follow.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma-separated event types (canonical names, aliases or topics); all when absent.
    types: Option<String>,
    /// Start after this position (default: the current head, i.e. only new events).
    after: Option<u64>,
}

/// Follows new events: one SSE `event` per CloudEvent, `id` = its position, `data` = the
/// structured event. `Last-Event-ID` resumes after that position.
#[utoipa::path(
    get, path = "/v1/stream", tag = "events", params(StreamQuery),
    responses(
        (status = 200, description = "Server-Sent Events", content_type = "text/event-stream", body = String),
        (status = 403, description = "The token may not subscribe to a type", body = ApiError),
        (status = 404, description = "Unknown event type", body = ApiError),
    )
)]
pub(crate) async fn stream<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut types = Vec::new();
    for name in q
        .types
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let name = canonical(&state, name)?;
        if !caller.may(Action::Subscribe, &name) {
            return Err(ApiError::forbidden(format!(
                "token `{}` may not subscribe to `{name}` (needs scope subscribe:{name})",
                caller.name
            )));
        }
        types.push(name);
    }
    if types.is_empty() && !caller.may_any(Action::Subscribe) {
        return Err(ApiError::forbidden(format!(
            "token `{}` has no subscribe scope",
            caller.name
        )));
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let after = match resume.or(q.after) {
        Some(after) => after,
        None => state.bus.backend().head().await?,
    };
    let closing = state.closing.subscribe();
    let tail = Tail {
        state,
        caller,
        types,
        after,
        buffer: Vec::new(),
        closing,
    };
    let events = stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        Some((Ok(event), tail))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The state of one live tail.
struct Tail<B: Backend> {
    state: Shared<B>,
    caller: Caller,
    types: Vec<String>,
    after: u64,
    buffer: Vec<StoredEvent>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl<B: Backend> Tail<B> {
    /// The next event to send; `None` when the server shuts down or the log cannot be read.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffer.pop() {
                let data = serde_json::to_string(&event.event).ok()?;
                let ty = event.event["type"].as_str().unwrap_or_default().to_owned();
                return Some(
                    Event::default()
                        .id(event.position.to_string())
                        .event(ty)
                        .data(data),
                );
            }
            if *self.closing.borrow() {
                return None;
            }
            self.fill().await?;
        }
    }

    /// Reads the next page, waiting for new events when there is none.
    async fn fill(&mut self) -> Option<()> {
        let backend = self.state.bus.backend();
        let query = ReadQuery {
            after: self.after,
            limit: PAGE,
            types: self.types.clone(),
            ..ReadQuery::default()
        };
        let page = match backend.read(query).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "live tail cannot read the log");
                return None;
            }
        };
        if page.is_empty() {
            tokio::select! {
                () = backend.wait(None, self.after, POLL) => {}
                _ = self.closing.changed() => {}
            }
            return Some(());
        }
        self.after = page.last().map_or(self.after, |e| e.position);
        let caller = &self.caller;
        self.buffer = page
            .into_iter()
            .rev()
            .filter(|e| caller.may(Action::Subscribe, &e.envelope.event_type))
            .map(|e| StoredEvent::shown(&self.state, caller, e))
            .collect();
        Some(())
    }
}
