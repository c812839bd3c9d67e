#![doc = include_str!("../README.md")]

pub mod catalog;
pub mod config;
pub mod error;
pub mod flows;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod publish;
pub mod query;
pub mod redact;
pub mod stream;
pub mod token;
pub mod trace;
pub mod webhook;

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edubus_core::Result;
use edubus_runtime::Bus;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{OnceCell, Semaphore, watch};
use tracing::Instrument as _;

pub use config::{HealthThresholds, HttpConfig, TokenConfig};
pub use error::ApiError;
pub use webhook::{WebhookConfig, WebhookRetry};

pub use edubus_core::Backend;
pub use edubus_flows::FlowBackend;

/// What every handler shares.
pub(crate) struct AppState<B: Backend> {
    pub(crate) bus: Bus<B>,
    pub(crate) config: HttpConfig,
    pub(crate) tokens: token::Tokens,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) baseline: Mutex<health::Baseline>,
    pub(crate) in_flight: Arc<Semaphore>,
    /// Turns true when the server shuts down, ending live tails.
    pub(crate) closing: watch::Sender<bool>,
    /// Set once the flows' read-model tables are known to exist.
    pub(crate) flows_ready: OnceCell<()>,
}

pub(crate) type Shared<B> = Arc<AppState<B>>;

/// The HTTP gateway over one backend: its router and a graceful server.
pub struct Gateway {
    router: Router,
    closing: watch::Sender<bool>,
}

impl Gateway {
    /// A gateway publishing through `bus` and serving the reference flows' read models
    /// ([`flows`]); fails on a malformed token or scope in `config`.
    ///
    /// Installs the process-wide Prometheus recorder ([`metrics::install`]) if none is yet.
    pub fn new<B: FlowBackend>(bus: Bus<B>, config: HttpConfig) -> Result<Self> {
        let tokens = token::Tokens::new(&config.tokens)?;
        let metrics = metrics::install();
        let (closing, _) = watch::channel(false);
        let state = Arc::new(AppState {
            baseline: Mutex::new(health::Baseline::now(&metrics.render())),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            bus,
            tokens,
            metrics,
            closing: closing.clone(),
            flows_ready: OnceCell::new(),
            config,
        });
        Ok(Self {
            router: router(state),
            closing,
        })
    }

    /// The routes, for embedding in another server or testing.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then ends live tails and finishes the
    /// requests in flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let closing = self.closing;
        axum::serve(listener, self.router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = closing.send(true);
            })
            .await
    }
}

fn router<B: FlowBackend>(state: Shared<B>) -> Router {
    let body_limit = state.config.body_limit;
    let api = Router::new()
        .route(
            "/v1/events",
            post(publish::publish::<B>).get(query::list::<B>),
        )
        .route("/v1/events/{id}", get(query::get::<B>))
        .route("/v1/trace/{correlation_id}", get(query::trace::<B>))
        .route("/v1/stream", get(stream::stream::<B>))
        .route("/v1/catalog", get(catalog::list::<B>))
        .route("/v1/catalog/{name}", get(catalog::show::<B>))
        .route("/v1/catalog/{name}/schema", get(catalog::schema::<B>))
        .route("/asyncapi.yaml", get(catalog::asyncapi::<B>))
        .route("/openapi.json", get(openapi::document))
        .route("/v1/subscriptions", get(ops::subscriptions::<B>))
        .route("/v1/dlq", get(ops::dlq_list::<B>))
        .route("/v1/dlq/{id}", get(ops::dlq_show::<B>))
        .route("/v1/dlq/replay", post(ops::dlq_replay::<B>))
        .route("/v1/dlq/purge", post(ops::dlq_purge::<B>))
        .route("/v1/flows", get(flows::counts::<B>))
        .route("/v1/flows/students/{id}", get(flows::student::<B>))
        .route("/v1/flows/applications", get(flows::applications::<B>))
        .route("/v1/flows/applications/{id}", get(flows::application::<B>))
        .route(
            "/v1/flows/applications/{id}/approve",
            post(flows::approve::<B>),
        )
        .route("/v1/flows/access/{id}", get(flows::access::<B>))
        .route("/v1/flows/orders/{id}", get(flows::order::<B>))
        .route("/v1/flows/batches/{id}", get(flows::batch::<B>))
        .route("/health/events", get(health::events::<B>))
        .route("/readyz", get(health::ready::<B>))
        .route("/metrics", get(metrics::scrape::<B>))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::<B>,
        ));
    Router::new()
        .merge(api)
        .route("/healthz", get(health::live))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), admit::<B>))
        .with_state(state)
}

/// Bounds the requests in flight (`429` with `Retry-After` past capacity) and runs each in a
/// span carrying its method, path, `traceparent` and (once known) correlation id.
async fn admit<B: Backend>(State(state): State<Shared<B>>, req: Request, next: Next) -> Response {
    let Ok(_permit) = Arc::clone(&state.in_flight).try_acquire_owned() else {
        return ApiError::overloaded(state.config.retry_after_secs).into_response();
    };
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!(
        "http_request",
        method = %req.method(),
        path = %req.uri().path(),
        traceparent = %traceparent,
        correlation_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    async move {
        let response = next.run(req).await;
        tracing::Span::current().record("status", response.status().as_u16());
        tracing::debug!("request handled");
        response
    }
    .instrument(span)
    .await
}

/// Identifies the caller from `Authorization: Bearer <token>` when tokens are configured;
/// `401` without a known token.
async fn authenticate<B: Backend>(
    State(state): State<Shared<B>>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = if state.tokens.enabled() {
        let secret = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match secret.and_then(|s| state.tokens.authenticate(s)) {
            Some(caller) => caller,
            None => {
                let mut response = ApiError::unauthorized().into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        }
    } else {
        token::Caller::anonymous()
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
