//! `GET /openapi.json`: the OpenAPI 3.1 document of this API, generated from the handlers.

use axum::Json;
use utoipa::OpenApi;

use crate::{catalog, error, flows, health, metrics, ops, publish, query, stream};

/// The API description, assembled from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "edubus HTTP API", description = "Publish CloudEvents, query the log, read the catalog and the flows' read models, watch health."),
    paths(
        publish::publish, query::list, query::get, query::trace, stream::stream,
        catalog::list, catalog::show, catalog::schema, catalog::asyncapi,
        ops::subscriptions, ops::dlq_list, ops::dlq_show, ops::dlq_replay, ops::dlq_purge,
        flows::counts, flows::student, flows::applications, flows::application, flows::approve,
        flows::access, flows::order, flows::batch,
        health::events, health::live, health::ready, metrics::scrape, document,
    ),
    components(schemas(
        error::ApiError, publish::Published, publish::PublishedEvent, query::EventPage,
        query::StoredEvent, ops::Selection, ops::Affected, health::Status, health::SubscriptionHealth,
        flows::Counts, flows::Applications, flows::ApproveBody, flows::ApprovedEvent,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme every route but `/healthz` uses when tokens are configured.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "catalog",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
