//! A node's HTTP endpoints (axum): `/health`, `/ready`, `/version` answer in the JSON envelope
//! `{success, data, error, code}`, and `/metrics` serves Prometheus (OpenMetrics) text; they are
//! read-only and carry no secrets. The management API under `/api/v1` (mappings and clients so
//! far) needs `Authorization: Bearer <key>`: the node keeps only the key's SHA-256 and compares
//! in constant time; a missing or wrong key is 401, never anything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tunnox_core::control::{ClientId, Entry, Mapping, MappingId, MappingOptions, Protocol, Target};
use tunnox_core::node::AdminError;

use crate::metrics::NodeMetrics;
use crate::node::NodeCommand;

/// Largest request body accepted.
const BODY_BYTES_MAX: usize = 64 * 1024;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The node's metrics.
    pub metrics: Arc<NodeMetrics>,
    /// Whether the node serves clients (false while starting and once draining).
    pub ready: Arc<AtomicBool>,
    /// The running node, for `/api/v1` (absent: those routes answer 503).
    pub node: Option<mpsc::Sender<NodeCommand>>,
    /// SHA-256 of the admin API key (absent: `/api/v1` refuses everything with 401).
    pub admin_key_sha256: Option<[u8; 32]>,
}

/// SHA-256 of an API key, as [`ApiState::admin_key_sha256`] holds it.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
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

/// Whether the process runs.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "the process runs")))]
async fn health() -> impl IntoResponse {
    ok(serde_json::json!({ "status": "ok" }))
}

/// Whether the node serves clients.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "the node serves clients"),
    (status = 503, description = "starting or draining"),
))]
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

/// The version of this build.
#[utoipa::path(get, path = "/version", responses((status = 200, description = "the version")))]
async fn version() -> impl IntoResponse {
    ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// Prometheus metrics, OpenMetrics text.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text")))]
async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// A failed request: its status and what to say.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Envelope {
            success: false,
            data: self
                .field
                .map(|field| serde_json::json!({ "field": field })),
            error: Some(self.message),
            code: u32::from(self.status.as_u16()),
        });
        (self.status, body).into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::Invalid(v) => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: v.to_string(),
                field: Some(v.field),
            },
            AdminError::Quota(q) => ApiError::new(StatusCode::FORBIDDEN, q.to_string()),
            AdminError::Conflict(what) => {
                ApiError::new(StatusCode::CONFLICT, format!("{what} is already used"))
            }
            AdminError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("no such {what}"))
            }
        }
    }
}

fn stopped() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is not running")
}

/// Checks `Authorization: Bearer <key>` against the admin key's digest.
async fn require_key(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(key_digest);
    let valid = match (given, state.admin_key_sha256) {
        // Both are digests of fixed length; compare without an early exit.
        (Some(given), Some(expected)) => {
            given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        }
        _ => false,
    };
    if valid {
        next.run(request).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "a valid API key is required").into_response()
    }
}

async fn ask<T>(
    state: &ApiState,
    command: impl FnOnce(oneshot::Sender<T>) -> NodeCommand,
) -> Result<T, ApiError> {
    let node = state.node.as_ref().ok_or_else(stopped)?;
    let (reply, answer) = oneshot::channel();
    node.send(command(reply)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())
}

/// The body of `POST /api/v1/mappings` (the shapes of docs/configuration.md's `mappings:`).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    /// Where visitors enter: `{kind: node_port, port, bind?}`, `{kind: client_port,
    /// listen_client, listen_addr}`, `{kind: socks5, …}`, `{kind: http_host, host}`.
    #[schema(value_type = Object)]
    pub entry: Entry,
    /// The client that dials the target.
    pub target_client: u64,
    /// What it dials: `{kind: fixed, host, port}` or `{kind: dynamic}`.
    #[schema(value_type = Object)]
    pub target: Target,
    /// `tcp` (default), `udp`, `http`, `socks5`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub protocol: Option<Protocol>,
    /// Limits and options.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: MappingOptions,
}

fn parse_mapping_id(id: &str) -> Result<MappingId, ApiError> {
    MappingId::parse(id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: e.to_string(),
        field: Some("id".into()),
    })
}

/// Every mapping.
#[utoipa::path(get, path = "/mappings", security(("api_key" = [])), responses(
    (status = 200, description = "every mapping"),
    (status = 401, description = "a valid API key is required"),
))]
async fn list_mappings(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let snapshot = ask(&state, |reply| NodeCommand::Snapshot { reply }).await?;
    Ok(ok(snapshot.mappings.into_values().collect::<Vec<_>>()))
}

/// One mapping.
#[utoipa::path(get, path = "/mappings/{id}", security(("api_key" = [])),
    params(("id" = String, Path, description = "the mapping id")),
    responses(
        (status = 200, description = "the mapping"),
        (status = 400, description = "not a mapping id"),
        (status = 401, description = "a valid API key is required"),
        (status = 404, description = "no such mapping"),
    ))]
async fn get_mapping(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_mapping_id(&id)?;
    let snapshot = ask(&state, |reply| NodeCommand::Snapshot { reply }).await?;
    let mapping = snapshot
        .mappings
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no mapping {id}")))?;
    Ok(ok(mapping))
}

/// Creates a mapping; its clients get the new config at once.
#[utoipa::path(post, path = "/mappings", security(("api_key" = [])), request_body = NewMapping,
    responses(
        (status = 201, description = "created, with its id"),
        (status = 400, description = "not JSON, not this shape, or an invalid value (data.field names it)"),
        (status = 401, description = "a valid API key is required"),
        (status = 403, description = "a quota forbids it"),
        (status = 409, description = "its node port or host is taken"),
    ))]
async fn create_mapping(
    State(state): State<ApiState>,
    body: Result<Json<NewMapping>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    // Ids must not be guessable: from the OS, or not at all.
    let seed = crate::random::os_random::<32>().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no OS randomness for a new id",
        )
    })?;
    let id = MappingId::generate(&mut tunnox_core::rng::Rng::from_seed(seed));
    let mut mapping = Mapping::tcp(
        id,
        body.entry,
        ClientId(body.target_client),
        "",
        0,
        crate::clock::wall_now(),
    );
    mapping.target = body.target;
    mapping.protocol = body.protocol.unwrap_or(Protocol::Tcp);
    mapping.options = body.options;
    let answer = ask(&state, |reply| NodeCommand::PutMapping {
        mapping: Box::new(mapping.clone()),
        reply,
    })
    .await?;
    answer?;
    Ok((StatusCode::CREATED, ok(mapping)))
}

/// Deletes a mapping: its tunnels end and its clients get new config.
#[utoipa::path(delete, path = "/mappings/{id}", security(("api_key" = [])),
    params(("id" = String, Path, description = "the mapping id")),
    responses(
        (status = 200, description = "deleted"),
        (status = 401, description = "a valid API key is required"),
        (status = 404, description = "no such mapping"),
    ))]
async fn delete_mapping(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_mapping_id(&id)?;
    ask(&state, |reply| NodeCommand::DeleteMapping { id, reply }).await??;
    Ok(ok(serde_json::json!({ "deleted": true })))
}

/// Every client (never key material).
#[utoipa::path(get, path = "/clients", security(("api_key" = [])), responses(
    (status = 200, description = "id, label, owner, status, last seen of every client"),
    (status = 401, description = "a valid API key is required"),
))]
async fn list_clients(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let snapshot = ask(&state, |reply| NodeCommand::Snapshot { reply }).await?;
    let clients: Vec<_> = snapshot
        .clients
        .values()
        .map(|c| {
            // Never the key material: id, label, owner, status, last seen.
            serde_json::json!({
                "id": c.id,
                "label": c.label,
                "owner": c.owner,
                "status": c.status,
                "last_seen": c.last_seen,
            })
        })
        .collect();
    Ok(ok(clients))
}

/// The document's title and the bearer scheme of `/api/v1`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "tunnox node API", description = "Health, metrics and the management API."),
    modifiers(&BearerKey)
)]
struct ApiDoc;

struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes, and the OpenAPI document built from the same registrations (so it cannot drift
/// from them), served at `/api/v1/openapi.json`.
pub fn router(state: ApiState) -> Router {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let v1 = OpenApiRouter::new()
        .routes(routes!(list_mappings, create_mapping))
        .routes(routes!(get_mapping, delete_mapping))
        .routes(routes!(list_clients))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(version))
        .routes(routes!(metrics))
        .nest("/api/v1", v1)
        .split_for_parts();
    let document = Arc::new(document);
    router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json((*document).clone()) }
            }),
        )
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
