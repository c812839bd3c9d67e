//! The reference flows' read models and staff actions: `GET /v1/flows`,
//! `GET /v1/flows/students/{id}`, `GET /v1/flows/applications[/{id}]`,
//! `GET /v1/flows/access/{id}`, `GET /v1/flows/orders/{id}`, `GET /v1/flows/batches/{id}` and
//! `POST /v1/flows/applications/{id}/approve`.
//!
//! A read model shows what the events it is built from said, so reading it needs the `read`
//! scope on every one of those event types ([`View::sources`]); fields named like a PII field
//! of those events are redacted for callers without `pii:read`, as in event data.

use std::collections::BTreeSet;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edubus_catalog::Catalog;
use edubus_flows::FlowBackend;
use edubus_flows::read::{self, Approve, ReadModels, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::redact::REDACTED;
use crate::token::{Action, Caller};
use crate::{Backend, Shared};

/// Applications listed when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Most applications listed at once.
const MAX_LIMIT: usize = 1000;

/// The read models of `state`'s backend, their tables created on first use (a gateway may
/// run without the flows' worker).
async fn models<B: FlowBackend>(state: &Shared<B>) -> Result<ReadModels<B>, ApiError> {
    let backend = state.bus.backend();
    state
        .flows_ready
        .get_or_try_init(|| backend.prepare())
        .await?;
    Ok(ReadModels::new(backend.clone()))
}

/// `403` unless `caller` may read every event type `view` is built from.
fn authorize(caller: &Caller, view: View) -> Result<(), ApiError> {
    let missing: Vec<&str> = view
        .sources()
        .iter()
        .copied()
        .filter(|t| !caller.may(Action::Read, t))
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(ApiError::forbidden(format!(
            "token `{}` may not read the {} read model: it shows {}, and the token lacks \
             read on {}",
            caller.name,
            view.name(),
            view.sources().join(", "),
            missing.join(", ")
        ))),
    }
}

/// The names of the fields the catalog marks as PII in any version of `view`'s sources.
pub fn pii_fields(catalog: &Catalog, view: View) -> BTreeSet<String> {
    catalog
        .events()
        .filter(|e| view.sources().contains(&e.name.as_str()))
        .flat_map(|e| e.fields.iter().filter(|f| f.pii).map(|f| f.name.clone()))
        .collect()
}

/// Replaces, at any depth of `doc`, the value of every member named in `names` (unless it is
/// null) with [`REDACTED`].
pub fn redact_document(doc: &mut Value, names: &BTreeSet<String>) {
    match doc {
        Value::Object(map) => {
            for (name, value) in map.iter_mut() {
                if names.contains(name) && !value.is_null() {
                    *value = REDACTED.into();
                } else {
                    redact_document(value, names);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_document(v, names)),
        _ => {}
    }
}

/// `doc` as `caller` may see it.
fn shown<B: Backend>(state: &Shared<B>, caller: &Caller, view: View, mut doc: Value) -> Value {
    if !caller.sees_pii() {
        redact_document(&mut doc, &pii_fields(state.bus.validator().catalog(), view));
    }
    doc
}

/// `404` for a document that does not exist.
fn not_found(view: View, id: &str) -> ApiError {
    let detail = match view {
        View::Student => format!(
            "no student `{id}`: no provisioned record, attendance record or course grade has \
             this student id"
        ),
        other => format!(
            "no {} `{id}` in the read model (table {})",
            other.name(),
            other.table().sql_name()
        ),
    };
    ApiError::new(StatusCode::NOT_FOUND, detail)
}

/// One document of `view`, checked and redacted for `caller`.
async fn one<B: FlowBackend>(
    state: &Shared<B>,
    caller: &Caller,
    view: View,
    id: &str,
) -> Result<Json<Value>, ApiError> {
    authorize(caller, view)?;
    match models(state).await?.get(view, id).await? {
        Some(doc) => Ok(Json(shown(state, caller, view, doc))),
        None => Err(not_found(view, id)),
    }
}

/// The number of documents of every read-model table.
#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    /// Documents per table: `applications`, `students`, `attendance`, `grades`, ...
    #[schema(value_type = Object)]
    pub tables: std::collections::BTreeMap<&'static str, u64>,
}

/// Documents per read-model table (needs any `read` scope).
#[utoipa::path(
    get, path = "/v1/flows", tag = "flows",
    responses(
        (status = 200, description = "Documents per table", body = Counts),
        (status = 403, description = "The token has no read scope", body = ApiError),
    )
)]
pub(crate) async fn counts<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Counts>, ApiError> {
    if !caller.may_any(Action::Read) {
        return Err(ApiError::forbidden(format!(
            "token `{}` has no read scope",
            caller.name
        )));
    }
    let tables = models(&state).await?.counts().await?;
    Ok(Json(Counts { tables }))
}

/// A student: the provisioned record, the attendance record with its totals and every course
/// grade.
#[utoipa::path(
    get, path = "/v1/flows/students/{id}", tag = "flows",
    params(("id" = String, Path, description = "The student id")),
    responses(
        (status = 200, description = "`{student_id, student, attendance, grades}`; PII redacted without pii:read", body = Object),
        (status = 403, description = "The token may not read the events the view is built from", body = ApiError),
        (status = 404, description = "No record of this student", body = ApiError),
    )
)]
pub(crate) async fn student<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    one(&state, &caller, View::Student, &id).await
}

/// An enrollment application.
#[utoipa::path(
    get, path = "/v1/flows/applications/{id}", tag = "flows",
    params(("id" = String, Path, description = "The application id")),
    responses(
        (status = 200, description = "The application document; PII redacted without pii:read", body = Object),
        (status = 403, description = "The token may not read enrollment events", body = ApiError),
        (status = 404, description = "No application has this id", body = ApiError),
    )
)]
pub(crate) async fn application<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    one(&state, &caller, View::Application, &id).await
}

/// Filters of `GET /v1/flows/applications`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApplicationsQuery {
    /// At most this many applications (default 100, at most 1000).
    limit: Option<usize>,
}

/// A list of applications.
#[derive(Debug, Serialize, ToSchema)]
pub struct Applications {
    /// Waiting for approval first, then provisioned; oldest submission first in each group.
    #[schema(value_type = Vec<Object>)]
    pub applications: Vec<Value>,
}

/// Enrollment applications, those waiting for approval first.
#[utoipa::path(
    get, path = "/v1/flows/applications", tag = "flows", params(ApplicationsQuery),
    responses(
        (status = 200, description = "The applications; PII redacted without pii:read", body = Applications),
        (status = 403, description = "The token may not read enrollment events", body = ApiError),
    )
)]
pub(crate) async fn applications<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ApplicationsQuery>,
) -> Result<Json<Applications>, ApiError> {
    authorize(&caller, View::Application)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let all = models(&state).await?.applications(limit).await?;
    let applications = all
        .into_iter()
        .map(|doc| shown(&state, &caller, View::Application, doc))
        .collect();
    Ok(Json(Applications { applications }))
}

/// A course-access record.
#[utoipa::path(
    get, path = "/v1/flows/access/{id}", tag = "flows",
    params(("id" = String, Path, description = "The access id")),
    responses(
        (status = 200, description = "The access document; PII redacted without pii:read", body = Object),
        (status = 403, description = "The token may not read order and access events", body = ApiError),
        (status = 404, description = "No access record has this id", body = ApiError),
    )
)]
pub(crate) async fn access<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    one(&state, &caller, View::Access, &id).await
}

/// A paid order and the access it granted.
#[utoipa::path(
    get, path = "/v1/flows/orders/{id}", tag = "flows",
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order document; PII redacted without pii:read", body = Object),
        (status = 403, description = "The token may not read order and access events", body = ApiError),
        (status = 404, description = "No order has this id", body = ApiError),
    )
)]
pub(crate) async fn order<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    one(&state, &caller, View::Order, &id).await
}

/// An essay batch of the assessment pipeline.
#[utoipa::path(
    get, path = "/v1/flows/batches/{id}", tag = "flows",
    params(("id" = String, Path, description = "The batch id")),
    responses(
        (status = 200, description = "The batch document; PII redacted without pii:read", body = Object),
        (status = 403, description = "The token may not read the essay pipeline's events", body = ApiError),
        (status = 404, description = "No batch has this id", body = ApiError),
    )
)]
pub(crate) async fn batch<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    one(&state, &caller, View::Batch, &id).await
}

/// The body of `POST /v1/flows/applications/{id}/approve` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// The staff member approving [default: an id derived from the token's name].
    #[schema(value_type = Option<String>, format = "uuid")]
    pub approved_by: Option<uuid::Uuid>,
    /// Staff notes about the applicant.
    pub notes: Option<String>,
}

/// The `enrollment.approved` event an approval published.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovedEvent {
    /// The event id.
    pub id: String,
    /// Its position in the log.
    pub position: u64,
    /// The application approved.
    pub application_id: String,
    /// The enrollment's correlation id.
    pub correlation_id: String,
    /// The `enrollment.submitted` event the approval is caused by.
    pub causation_id: String,
}

/// Approves an application: publishes `enrollment.approved` caused by its
/// `enrollment.submitted` (needs `publish` on `enrollment.approved`).
#[utoipa::path(
    post, path = "/v1/flows/applications/{id}/approve", tag = "flows",
    params(("id" = String, Path, description = "The application id")),
    request_body(content = ApproveBody, description = "Optional: who approves and notes"),
    responses(
        (status = 202, description = "Published", body = ApprovedEvent),
        (status = 400, description = "Malformed body", body = ApiError),
        (status = 403, description = "The token may not publish enrollment.approved", body = ApiError),
        (status = 404, description = "No application has this id", body = ApiError),
        (status = 409, description = "Already provisioned, or approved and waiting for provisioning; nothing published", body = ApiError),
    )
)]
pub(crate) async fn approve<B: FlowBackend>(
    State(state): State<Shared<B>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !caller.may(Action::Publish, "enrollment.approved") {
        return Err(ApiError::forbidden(format!(
            "token `{}` may not approve applications (needs scope publish:enrollment.approved)",
            caller.name
        )));
    }
    let body: ApproveBody = match body.iter().all(u8::is_ascii_whitespace) {
        true => ApproveBody::default(),
        false => serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not an approval ({{\"approved_by\", \"notes\"}}): {e}"),
            )
        })?,
    };
    models(&state).await?;
    let actor = format!("token:{}", caller.name);
    let request = Approve {
        application_id: id,
        approved_by: body.approved_by.unwrap_or_else(|| read::staff_id(&actor)),
        notes: body.notes,
        actor: Some(actor),
    };
    let approved = read::approve(&state.bus, request).await?;
    let out = ApprovedEvent {
        id: approved.id,
        position: approved.position,
        application_id: approved.application_id,
        correlation_id: approved.correlation_id,
        causation_id: approved.causation_id,
    };
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pii_members_are_redacted_at_any_depth() {
        let names: BTreeSet<String> = ["student_id".to_owned(), "guardian_id".to_owned()].into();
        let mut doc = serde_json::json!({
            "student_id": "s", "homeroom_id": "h", "optional": null,
            "grades": [{"student_id": "s", "letter": "A"}],
            "student": {"guardian_id": "g", "course_ids": ["c"]},
        });
        redact_document(&mut doc, &names);
        assert_eq!(doc["student_id"], REDACTED);
        assert_eq!(doc["grades"][0]["student_id"], REDACTED);
        assert_eq!(doc["grades"][0]["letter"], "A");
        assert_eq!(doc["student"]["guardian_id"], REDACTED);
        assert_eq!(doc["student"]["course_ids"][0], "c");
        assert_eq!(doc["homeroom_id"], "h");
        assert!(doc["optional"].is_null());
    }

    #[test]
    fn every_view_is_built_from_catalog_events() {
        let catalog = edubus_events::catalog();
        for view in View::ALL {
            for source in view.sources() {
                assert!(catalog.latest(source).is_some(), "{view:?}: {source}");
            }
        }
    }

    #[test]
    fn the_student_view_redacts_codes_and_guardians() {
        let names = pii_fields(edubus_events::catalog(), View::Student);
        for name in [
            "student_id",
            "student_code",
            "guardian_id",
            "student_temp_id",
        ] {
            assert!(names.contains(name), "{name}: {names:?}");
        }
        assert!(!names.contains("homeroom_id"));
    }
}
