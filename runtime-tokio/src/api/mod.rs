//! A node's HTTP endpoints (axum).
//!
//! - `/health`, `/ready`, `/version` and `/metrics` are read-only and carry no secrets.
//! - The management API under `/api/v1` (users, clients, mappings, quotas, connection codes,
//!   stats, nodes) needs a bearer token: an API key or an HS256 JWT ([`auth`]). Requests are
//!   rate-limited per key; read-only tokens may not change anything.
//! - Every JSON answer is the envelope `{success, data, error, code}`; lists are paginated.
//! - `/api/v1/openapi.json` is generated from the same route registrations (utoipa-axum), so it
//!   cannot drift from what is served.
//!
//! | file | concept |
//! |---|---|
//! | `answer` | the envelope, [`ApiError`], pagination, path and body parsing |
//! | `auth` | API keys, JWTs, roles, the per-key rate limit |
//! | `health` | health, readiness, version, metrics |
//! | `users`, `clients`, `mappings`, `codes`, `stats` | the resources of `/api/v1` |

mod answer;
pub mod auth;
mod clients;
mod codes;
mod health;
mod mappings;
mod stats;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tunnox_core::node::Node;
use tunnox_core::time::Instant;

pub use answer::{ApiError, Envelope, Page, Paged};
pub use auth::{ApiAuth, ApiKey, Role, key_digest};

use crate::metrics::NodeMetrics;
use crate::node::{NodeCommand, NodeJob};

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The node's metrics.
    pub metrics: Arc<NodeMetrics>,
    /// Whether the node serves clients (false while starting and once draining).
    pub ready: Arc<AtomicBool>,
    /// The running node, for `/api/v1` (absent: those routes answer 503).
    pub node: Option<mpsc::Sender<NodeCommand>>,
    /// Who may use `/api/v1` (no keys and no JWT secret: everything there is 401).
    pub auth: Arc<ApiAuth>,
}

impl ApiState {
    /// Endpoints with no node and no keys yet.
    pub fn new(metrics: Arc<NodeMetrics>, ready: Arc<AtomicBool>) -> ApiState {
        ApiState {
            metrics,
            ready,
            node: None,
            auth: Arc::new(ApiAuth::default()),
        }
    }

    /// With the running node.
    pub fn with_node(mut self, node: mpsc::Sender<NodeCommand>) -> ApiState {
        self.node = Some(node);
        self
    }

    /// With who may use `/api/v1`.
    pub fn with_auth(mut self, auth: ApiAuth) -> ApiState {
        self.auth = Arc::new(auth);
        self
    }

    /// Sends a command built around `reply` and waits for the answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> NodeCommand,
    ) -> Result<T, ApiError> {
        let node = self.node.as_ref().ok_or_else(ApiError::stopped)?;
        let (reply, answer) = oneshot::channel();
        node.send(command(reply))
            .await
            .map_err(|_| ApiError::stopped())?;
        answer.await.map_err(|_| ApiError::stopped())
    }

    /// Runs `job`, a change, on the node's task and answers once what it changed is durable
    /// in the node's store: a caller never holds an answer (a new secret, say) that a crash
    /// right after could take back. 503 if the store refused the commit.
    async fn change<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Node, Instant) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let answer = self.run(job).await?;
        let written = self.ask(|reply| NodeCommand::Synced { reply }).await?;
        if !written {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the change was made but the store refused to write it",
            ));
        }
        Ok(answer)
    }

    /// Runs `job` on the node's task (reads and changes of its state) and returns its answer.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Node, Instant) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.ask(|reply| {
            NodeCommand::Run(NodeJob::new(move |node, now| {
                let _ = reply.send(job(node, now));
            }))
        })
        .await
    }
}

/// The document's title and the bearer scheme of `/api/v1`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tunnox node API",
        description = "Health, metrics and the management API. Every JSON answer is the envelope \
                       {success, data, error, code}; lists take ?offset&limit and answer \
                       {items, total, offset, limit}."
    ),
    modifiers(&BearerToken)
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "an API key, or an HS256 JWT with `sub`, `exp` and `role`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The routes, and the OpenAPI document built from the same registrations (so it cannot drift
/// from them), served at `/api/v1/openapi.json`.
pub fn router(state: ApiState) -> Router {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    let v1 = OpenApiRouter::new()
        .merge(users::routes())
        .merge(clients::routes())
        .merge(mappings::routes())
        .merge(codes::routes())
        .merge(stats::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::routes())
        .nest("/api/v1", v1)
        .split_for_parts();
    let document = Arc::new(document);
    let router = router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move { axum::Json((*document).clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX));
    let router = match state.auth.cors() {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// Counts each request in the metrics by method (`other` for non-standard ones), route
/// template (`unmatched` for unknown paths) and status, with its latency: labels stay bounded
/// whatever clients send.
async fn count(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    // Any token is a valid HTTP method; only the standard ones get their own label.
    let method: &'static str = match *request.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let response = next.run(request).await;
    state.metrics.api_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
