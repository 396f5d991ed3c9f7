//! A node's HTTP endpoints (axum): `/health`, `/ready`, `/version` answer in the JSON envelope
//! `{success, data, error, code}`, and `/metrics` serves Prometheus (OpenMetrics) text. They are
//! read-only and carry no secrets; the management API under `/api/v1`, with its keys, is issue 6.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::NodeMetrics;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The node's metrics.
    pub metrics: Arc<NodeMetrics>,
    /// Whether the node serves clients (false while starting and once draining).
    pub ready: Arc<AtomicBool>,
}

/// The envelope every JSON answer uses.
#[derive(Debug, serde::Serialize)]
pub struct Envelope<T: serde::Serialize> {
    /// Whether the request succeeded.
    pub success: bool,
    /// The answer.
    pub data: Option<T>,
    /// What went wrong, for people.
    pub error: Option<String>,
    /// What went wrong, for programs (0 on success).
    pub code: u32,
}

fn ok<T: serde::Serialize>(data: T) -> Json<Envelope<T>> {
    Json(Envelope {
        success: true,
        data: Some(data),
        error: None,
        code: 0,
    })
}

async fn health() -> impl IntoResponse {
    ok(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<ApiState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, ok(serde_json::json!({ "ready": true })))
    } else {
        let body = Json(Envelope::<serde_json::Value> {
            success: false,
            data: None,
            error: Some("the node is starting or draining".into()),
            code: 503,
        });
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn version() -> impl IntoResponse {
    ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
