//! `/health`, `/ready`, `/version` and `/metrics`: read-only, no token, no secrets.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answer::ok;
use super::{ApiError, ApiState};

/// The routes of this file.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(version))
        .routes(routes!(metrics))
}

/// Whether the process runs.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "the process runs")))]
async fn health() -> Response {
    ok(serde_json::json!({ "status": "ok" }))
}

/// Whether the node serves clients.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "the node serves clients"),
    (status = 503, description = "starting or draining"),
))]
async fn ready(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        ok(serde_json::json!({ "ready": true }))
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is starting or draining",
        )
        .into_response()
    }
}

/// The version of this build.
#[utoipa::path(get, path = "/version", responses((status = 200, description = "the version")))]
async fn version() -> Response {
    ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// Prometheus metrics, OpenMetrics text.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text")))]
async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
