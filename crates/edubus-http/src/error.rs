//! Errors as HTTP responses: RFC 9457 problem details with the pointer-level issues.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edubus_catalog::validate::ValidationError;
use edubus_core::{Error, Issue};
use serde::Serialize;
use utoipa::ToSchema;

/// Media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response: status, a title, a detail and, where they help, the issues (each with a
/// JSON pointer into the request) and the nearest known event names.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiError {
    /// The HTTP status code.
    pub status: u16,
    /// A short, fixed summary of the problem kind.
    pub title: String,
    /// What went wrong with this request.
    pub detail: String,
    /// Each problem with the JSON pointer of where it is (for a batch, `/<index>/...`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub issues: Vec<Issue>,
    /// For an unknown event type, the nearest known names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nearest: Vec<String>,
    /// Seconds to wait before retrying (`429`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, the status's reason as title, and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail: detail.into(),
            issues: Vec::new(),
            nearest: Vec::new(),
            retry_after: None,
        }
    }

    /// `400` with issues.
    pub fn malformed(detail: impl Into<String>, issues: Vec<Issue>) -> Self {
        Self {
            issues,
            ..Self::new(StatusCode::BAD_REQUEST, detail)
        }
    }

    /// `401`: no token or an unknown one.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "a valid API token is required: send `Authorization: Bearer <token>`",
        )
    }

    /// `403`: the token lacks the scope.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    /// `429` with `Retry-After`.
    pub fn overloaded(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests in flight; retry later",
            )
        }
    }

    /// Prefixes every issue pointer with `/<index>`: the position in a batch.
    pub fn at_index(mut self, index: usize) -> Self {
        for issue in &mut self.issues {
            issue.pointer = format!("/{index}{}", issue.pointer);
        }
        self.detail = format!("event {index} of the batch: {}", self.detail);
        self
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        let detail = match &e {
            Error::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Self {
            issues: e.issues().to_vec(),
            ..Self::new(status, detail)
        }
    }
}

impl From<ValidationError> for ApiError {
    /// Unknown type or version `404`, schema violation `422`, anything else `400`.
    fn from(e: ValidationError) -> Self {
        let status = match &e {
            ValidationError::UnknownType { .. } | ValidationError::UnknownVersion { .. } => {
                StatusCode::NOT_FOUND
            }
            ValidationError::Data { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        let nearest = match &e {
            ValidationError::UnknownType { nearest, .. } => nearest.clone(),
            _ => Vec::new(),
        };
        let detail = match &e {
            ValidationError::Envelope(_) => "invalid CloudEvents envelope".to_owned(),
            ValidationError::Data { event, .. } => format!("`data` does not match {event}"),
            other => other.to_string(),
        };
        Self {
            issues: e.issues(),
            nearest,
            ..Self::new(status, detail)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
