//! `POST /v1/events`: the CloudEvents HTTP binding in structured, binary and batch modes.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edubus_catalog::resolve::resolve;
use edubus_core::{Envelope, Error, Issue};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::token::{Action, Caller};
use crate::{Backend, Shared};

/// Structured mode: one event, attributes and `data` in one JSON object.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Batch mode: a JSON array of structured events.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// What `POST /v1/events` appended, one entry per event in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    /// The events, in request order.
    pub events: Vec<PublishedEvent>,
}

/// One published event.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedEvent {
    /// The event id.
    pub id: String,
    /// Its position in the log.
    pub position: u64,
    /// True when an identical event with this id was already stored.
    pub duplicate: bool,
}

/// How the request carries its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Structured,
    Batch,
    Binary,
}

/// Publishes one event (structured or binary mode) or a batch, all or nothing.
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    request_body(content = Object, description = "A CloudEvent (structured `application/cloudevents+json`, \
        binary `ce-*` headers with JSON data) or a batch (`application/cloudevents-batch+json`)"),
    responses(
        (status = 202, description = "Appended (or already stored with the same content)", body = Published),
        (status = 400, description = "Malformed, with pointers to where", body = ApiError),
        (status = 401, description = "No valid token", body = ApiError),
        (status = 403, description = "The token may not publish this type", body = ApiError),
        (status = 404, description = "Unknown event type, with the nearest names", body = ApiError),
        (status = 409, description = "The id is stored with different content", body = ApiError),
        (status = 413, description = "Body over the size limit", body = ApiError),
        (status = 415, description = "Unsupported content type", body = ApiError),
        (status = 422, description = "Schema violation, with JSON pointers", body = ApiError),
        (status = 429, description = "Over capacity; see Retry-After", body = ApiError),
    )
)]
pub(crate) async fn publish<B: Backend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mode = mode(&headers)?;
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than the {} byte limit",
                state.config.body_limit
            ),
        ),
        status => ApiError::new(status, r.body_text()),
    })?;
    let mut envelopes = match mode {
        Mode::Structured => vec![structured(&body)?],
        Mode::Batch => batch(&body)?,
        Mode::Binary => vec![binary(&headers, &body)?],
    };
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|t| is_traceparent(t));
    for env in &mut envelopes {
        if env.traceparent.is_none() {
            env.traceparent = traceparent.map(str::to_owned);
        }
    }
    if let Some(first) = envelopes.first() {
        tracing::Span::current().record(
            "correlation_id",
            tracing::field::display(first.correlation_id()),
        );
    }
    authorize(&state, &caller, &envelopes)?;
    let appended = match state.bus.publish_batch(envelopes.clone()).await {
        Ok(appended) => appended,
        Err(e @ Error::Invalid { .. }) => return Err(explain(&state, &envelopes, mode, e)),
        Err(e) => return Err(e.into()),
    };
    let events = appended
        .into_iter()
        .map(|a| PublishedEvent {
            id: a.id,
            position: a.position,
            duplicate: a.duplicate,
        })
        .collect();
    Ok((StatusCode::ACCEPTED, axum::Json(Published { events })).into_response())
}

/// The mode from `Content-Type`; anything but CloudEvents or JSON data is `415`.
fn mode(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        STRUCTURED => Ok(Mode::Structured),
        BATCH => Ok(Mode::Batch),
        "application/json" => Ok(Mode::Binary),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(Mode::Binary),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type {ct:?}: send {STRUCTURED}, {BATCH}, or JSON data \
                 with ce-* headers (binary mode)"
            ),
        )),
    }
}

fn invalid_envelope(issues: Vec<Issue>) -> ApiError {
    ApiError::malformed("invalid CloudEvents envelope", issues)
}

fn structured(body: &[u8]) -> Result<Envelope, ApiError> {
    Envelope::from_json(body).map_err(|e| invalid_envelope(e.issues()))
}

fn batch(body: &[u8]) -> Result<Vec<Envelope>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_envelope(vec![Issue::new("", format!("not valid JSON: {e}"))]))?;
    let Value::Array(items) = value else {
        let issue = Issue::new("", "a batch must be a JSON array of structured events");
        return Err(invalid_envelope(vec![issue]));
    };
    if items.is_empty() {
        return Err(invalid_envelope(vec![Issue::new("", "the batch is empty")]));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(map) = item else {
                let issue = Issue::new("", "a structured event must be a JSON object");
                return Err(invalid_envelope(vec![issue]).at_index(i));
            };
            Envelope::try_from(map).map_err(|e| invalid_envelope(e.issues()).at_index(i))
        })
        .collect()
}

/// Binary mode: attributes from `ce-*` headers (percent-decoded), `data` from the body.
fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Envelope, ApiError> {
    let mut map = Map::new();
    let mut issues = Vec::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        match percent_decode(value.as_bytes()) {
            Some(text) => {
                map.insert(attr.to_owned(), Value::String(text));
            }
            None => issues.push(Issue::at_member(attr, "header value is not UTF-8 text")),
        }
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        map.insert("datacontenttype".into(), ct.into());
    }
    if !body.is_empty() {
        match serde_json::from_slice::<Value>(body) {
            Ok(data) => {
                map.insert("data".into(), data);
            }
            Err(e) => issues.push(Issue::new("/data", format!("not valid JSON: {e}"))),
        }
    }
    let env = Envelope::try_from(map);
    match env {
        Ok(env) if issues.is_empty() => Ok(env),
        Ok(_) => Err(invalid_envelope(issues)),
        Err(e) => {
            issues.extend(e.issues());
            issues.sort();
            Err(invalid_envelope(issues))
        }
    }
}

/// Decodes `%XX` escapes (the HTTP binding's encoding of header values).
fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `value` is a W3C `traceparent`: `vv-<32 hex>-<16 hex>-ff`.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `403` unless the caller may publish every event's (canonical) type.
fn authorize<B: Backend>(
    state: &Shared<B>,
    caller: &Caller,
    envelopes: &[Envelope],
) -> Result<(), ApiError> {
    let catalog = state.bus.validator().catalog();
    for env in envelopes {
        let name = resolve(catalog, &env.event_type)
            .map_or(env.event_type.as_str(), |r| r.event.name.as_str());
        if !caller.may(Action::Publish, name) {
            return Err(ApiError::forbidden(format!(
                "token `{}` may not publish `{name}` (needs scope publish:{name})",
                caller.name
            )));
        }
    }
    Ok(())
}

/// The precise error of a rejected publish: the first event that fails validation.
fn explain<B: Backend>(
    state: &Shared<B>,
    envelopes: &[Envelope],
    mode: Mode,
    e: Error,
) -> ApiError {
    let validator = state.bus.validator();
    envelopes
        .iter()
        .enumerate()
        .find_map(|(i, env)| {
            let err = ApiError::from(validator.validate(env).err()?);
            Some(if mode == Mode::Batch {
                err.at_index(i)
            } else {
                err
            })
        })
        .unwrap_or_else(|| e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode(b"100%").as_deref(), Some("100%"));
    }

    #[test]
    fn traceparents_are_checked_for_shape() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent("00-xyz-00f067aa0ba902b7-01"));
    }
}
