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

/// The body of `POST /api/v1/mappings`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    /// Where visitors enter.
    pub entry: Entry,
    /// The client that dials the target.
    pub target_client: u64,
    /// What it dials.
    pub target: Target,
    /// `tcp` (default), `udp`, `http`, `socks5`.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Limits and options.
    #[serde(default)]
    pub options: MappingOptions,
}

fn parse_mapping_id(id: &str) -> Result<MappingId, ApiError> {
    MappingId::parse(id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: e.to_string(),
        field: Some("id".into()),
    })
}

async fn list_mappings(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let snapshot = ask(&state, |reply| NodeCommand::Snapshot { reply }).await?;
    Ok(ok(snapshot.mappings.into_values().collect::<Vec<_>>()))
}

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

async fn create_mapping(
    State(state): State<ApiState>,
    body: Result<Json<NewMapping>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let mut id_seed = [0u8; 32];
    getrandom_seed(&mut id_seed);
    let id = MappingId::generate(&mut tunnox_core::rng::Rng::from_seed(id_seed));
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

async fn delete_mapping(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_mapping_id(&id)?;
    ask(&state, |reply| NodeCommand::DeleteMapping { id, reply }).await??;
    Ok(ok(serde_json::json!({ "deleted": true })))
}

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

/// 32 bytes from the OS for a fresh id (ids must not be guessable).
fn getrandom_seed(seed: &mut [u8; 32]) {
    use std::io::Read;
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(seed));
    if filled.is_err() {
        // No OS randomness: fall back to the clock (ids stay unique, not unguessable).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
    }
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/mappings", get(list_mappings).post(create_mapping))
        .route("/mappings/{id}", get(get_mapping).delete(delete_mapping))
        .route("/clients", get(list_clients))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .nest("/api/v1", v1)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
