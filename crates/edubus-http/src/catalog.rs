//! The catalog: `GET /v1/catalog`, `/v1/catalog/{name}`, `/v1/catalog/{name}/schema` and
//! `/asyncapi.yaml`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edubus_catalog::emit::{asyncapi, json_schema, spec::event_json};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::query::canonical;
use crate::{Backend, Shared};

/// Every event version of the catalog.
#[utoipa::path(
    get, path = "/v1/catalog", tag = "catalog",
    responses((status = 200, description = "`{events: [...]}`, every event version", body = Object))
)]
pub(crate) async fn list<B: Backend>(State(state): State<Shared<B>>) -> Json<Value> {
    let events: Vec<Value> = state
        .bus
        .validator()
        .catalog()
        .events()
        .map(event_json)
        .collect();
    Json(json!({ "events": events }))
}

/// Every version of one event, by canonical name, alias or topic.
#[utoipa::path(
    get, path = "/v1/catalog/{name}", tag = "catalog",
    params(("name" = String, Path, description = "Canonical name, alias or topic")),
    responses(
        (status = 200, description = "`{name, versions: [...]}`", body = Object),
        (status = 404, description = "Unknown event, with the nearest names", body = ApiError),
    )
)]
pub(crate) async fn show<B: Backend>(
    State(state): State<Shared<B>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = canonical(&state, &name)?;
    let versions: Vec<Value> = state
        .bus
        .validator()
        .catalog()
        .versions(&name)
        .into_iter()
        .map(event_json)
        .collect();
    Ok(Json(json!({ "name": name, "versions": versions })))
}

/// Which version's schema to serve.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SchemaQuery {
    /// The version (default: the latest).
    version: Option<u32>,
}

/// The JSON Schema (Draft 2020-12) of one event version's payload.
#[utoipa::path(
    get, path = "/v1/catalog/{name}/schema", tag = "catalog",
    params(("name" = String, Path, description = "Canonical name, alias or topic"), SchemaQuery),
    responses(
        (status = 200, description = "The JSON Schema", content_type = "application/schema+json", body = Object),
        (status = 404, description = "Unknown event or version", body = ApiError),
    )
)]
pub(crate) async fn schema<B: Backend>(
    State(state): State<Shared<B>>,
    Path(name): Path<String>,
    Query(q): Query<SchemaQuery>,
) -> Result<Response, ApiError> {
    let name = canonical(&state, &name)?;
    let catalog = state.bus.validator().catalog();
    let spec = match q.version {
        Some(v) => catalog.get(&name, v),
        None => catalog.latest(&name),
    };
    let Some(spec) = spec else {
        let known: Vec<String> = catalog
            .versions(&name)
            .iter()
            .map(|e| e.version.to_string())
            .collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "`{name}` has no version {}; known versions: {}",
                q.version.unwrap_or_default(),
                known.join(", ")
            ),
        ));
    };
    let body = serde_json::to_vec_pretty(&json_schema::event_schema(spec)).unwrap_or_default();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/schema+json"),
    );
    Ok(response)
}

/// The AsyncAPI 3.0 document of the catalog, as YAML.
#[utoipa::path(
    get, path = "/asyncapi.yaml", tag = "catalog",
    responses((status = 200, description = "AsyncAPI 3.0 document", content_type = "application/yaml", body = String))
)]
pub(crate) async fn asyncapi<B: Backend>(State(state): State<Shared<B>>) -> Response {
    let doc = asyncapi::document(state.bus.validator().catalog());
    let mut response = doc.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    response
}
