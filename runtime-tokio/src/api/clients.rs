//! `/api/v1/clients`: clients, their sessions and their credentials. Key material never leaves
//! the node; a secret is shown once, when a client is created or its credentials are reset.

use axum::extract::{Path, State};
use axum::response::Response;
use tunnox_core::control::{
    ClientId, ClientKind, ClientRecord, ClientSecret, ClientStatus, UnixMillis, UserId,
};
use tunnox_core::node::{ClientUpdate, Node};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answer::{Body, Query, client_id, created, ok};
use super::{ApiError, ApiState, Page};
use crate::node::NodeCommand;

/// The routes of this file.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_clients, create_client))
        .routes(routes!(get_client, update_client, delete_client))
        .routes(routes!(disconnect_client))
        .routes(routes!(reset_credentials))
        .routes(routes!(list_client_mappings))
}

/// A client as the API shows it (never key material).
#[derive(Debug, serde::Serialize)]
pub(super) struct ClientView {
    id: ClientId,
    label: String,
    owner: Option<UserId>,
    kind: ClientKind,
    status: ClientStatus,
    /// Whether it has a session: here, or on the node its route names.
    pub(super) online: bool,
    /// The node its session is on, as this node knows it.
    node: Option<String>,
    created_at: UnixMillis,
    last_seen: Option<UnixMillis>,
}

impl ClientView {
    /// `record` as `node` sees it now.
    pub(super) fn of(node: &Node, record: &ClientRecord) -> ClientView {
        let session_node = if node.session_of(record.id).is_some() {
            Some(node.node_id().to_owned())
        } else {
            node.route_of(record.id).map(ToString::to_string)
        };
        ClientView {
            id: record.id,
            label: record.label.clone(),
            owner: record.owner,
            kind: record.kind,
            status: record.status,
            online: session_node.is_some(),
            node: session_node,
            created_at: record.created_at,
            last_seen: record.last_seen,
        }
    }
}

/// `owner`'s clients in `node`'s state.
pub(super) fn owned_by(node: &Node, owner: UserId) -> impl Iterator<Item = &ClientRecord> {
    node.state()
        .clients
        .values()
        .filter(move |c| c.owner == Some(owner))
}

/// `?user=&offset=&limit=` of `GET /api/v1/clients`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ClientFilter {
    /// Only this user's clients.
    user: Option<u64>,
    /// Items to skip [0].
    offset: Option<usize>,
    /// Items to return, 1-1000 [50].
    limit: Option<usize>,
}

/// The body of `POST /api/v1/clients`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// A label, at most 64 characters.
    #[serde(default)]
    pub label: String,
    /// The owning user (absent: an anonymous client).
    pub owner: Option<u64>,
}

/// The body of `PATCH /api/v1/clients/{id}`: what changes.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientPatch {
    /// A new label.
    pub label: Option<String>,
    /// A new owner; `null` makes it anonymous.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub owner: Option<Option<u64>>,
    /// `active`, `disabled` or `banned` (not active: its session ends).
    #[schema(value_type = Option<String>)]
    pub status: Option<ClientStatus>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// A client and its secret, shown only in this answer (no `Debug`: it must never be logged).
#[derive(serde::Serialize)]
struct WithSecret {
    client: ClientView,
    secret: String,
}

impl WithSecret {
    fn new(node: &Node, id: ClientId, secret: &ClientSecret) -> Result<WithSecret, ApiError> {
        let record = node
            .state()
            .clients
            .get(&id)
            .ok_or_else(|| ApiError::not_found("client"))?;
        Ok(WithSecret {
            client: ClientView::of(node, record),
            secret: secret.expose_secret().to_owned(),
        })
    }
}

fn find(node: &Node, id: ClientId) -> Result<&ClientRecord, ApiError> {
    node.state()
        .clients
        .get(&id)
        .ok_or_else(|| ApiError::not_found("client"))
}

/// Every client, or one user's.
#[utoipa::path(get, path = "/clients", security(("api_key" = [])), params(ClientFilter),
    responses(
        (status = 200, description = "a page of clients"),
        (status = 400, description = "a bad query"),
        (status = 401, description = "a valid token is required"),
    ))]
async fn list_clients(
    State(state): State<ApiState>,
    Query(filter): Query<ClientFilter>,
) -> Result<Response, ApiError> {
    let page = Page {
        offset: filter.offset,
        limit: filter.limit,
    };
    let user = filter.user.map(UserId);
    let paged = state
        .run(move |node, _| {
            let clients = node
                .state()
                .clients
                .values()
                .filter(|c| user.is_none() || c.owner == user);
            page.of(clients)?.try_map(|c| Ok(ClientView::of(node, c)))
        })
        .await??;
    Ok(ok(paged))
}

/// Creates a client; the answer holds its secret, shown only this once.
#[utoipa::path(post, path = "/clients", security(("api_key" = [])), request_body = NewClient,
    responses(
        (status = 201, description = "{client, secret}"),
        (status = 400, description = "an invalid value (data.field names it)"),
        (status = 403, description = "the owner's quota is full, or the token may only read"),
        (status = 404, description = "no such owner"),
    ))]
async fn create_client(
    State(state): State<ApiState>,
    Body(body): Body<NewClient>,
) -> Result<Response, ApiError> {
    let answer = state
        .change(move |node, now| {
            let (id, secret) = node.create_client(now, body.owner.map(UserId), &body.label)?;
            WithSecret::new(node, id, &secret)
        })
        .await??;
    Ok(created(answer))
}

/// One client.
#[utoipa::path(get, path = "/clients/{id}", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the client id")),
    responses(
        (status = 200, description = "the client"),
        (status = 400, description = "not a client id"),
        (status = 404, description = "no such client"),
    ))]
async fn get_client(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = client_id(&id)?;
    let view = state
        .run(move |node, _| find(node, id).map(|c| ClientView::of(node, c)))
        .await??;
    Ok(ok(view))
}

/// Changes a client's label, owner or status.
#[utoipa::path(patch, path = "/clients/{id}", security(("api_key" = [])), request_body = ClientPatch,
    params(("id" = u64, Path, description = "the client id")),
    responses(
        (status = 200, description = "the changed client"),
        (status = 400, description = "an invalid value (data.field names it)"),
        (status = 403, description = "the new owner's quota is full"),
        (status = 404, description = "no such client or owner"),
    ))]
async fn update_client(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Body(patch): Body<ClientPatch>,
) -> Result<Response, ApiError> {
    let id = client_id(&id)?;
    let update = ClientUpdate {
        label: patch.label,
        owner: patch.owner.map(|o| o.map(UserId)),
        status: patch.status,
    };
    let view = state
        .change(move |node, now| {
            let record = node.update_client(now, id, update)?;
            Ok::<_, ApiError>(ClientView::of(node, &record))
        })
        .await??;
    Ok(ok(view))
}

/// Deletes a client, the mappings it takes part in and the codes it offered; its session ends.
#[utoipa::path(delete, path = "/clients/{id}", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the client id")),
    responses(
        (status = 200, description = "{deleted, mappings_deleted}"),
        (status = 404, description = "no such client"),
    ))]
async fn delete_client(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = client_id(&id)?;
    let mappings = state
        .change(move |node, now| node.delete_client(now, id))
        .await??;
    Ok(ok(
        serde_json::json!({ "deleted": true, "mappings_deleted": mappings }),
    ))
}

/// Closes a client's session wherever it is (GOAWAY Kicked: it does not reconnect by itself).
#[utoipa::path(post, path = "/clients/{id}/disconnect", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the client id")),
    responses(
        (status = 200, description = "{was_online, node}"),
        (status = 404, description = "no such client"),
    ))]
async fn disconnect_client(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let client = client_id(&id)?;
    let view = state
        .run(move |node, _| find(node, client).map(|c| ClientView::of(node, c)))
        .await??;
    // Kick goes to the cluster when the session is not here.
    state
        .ask(|reply| NodeCommand::Kick { client, reply })
        .await?;
    Ok(ok(
        serde_json::json!({ "was_online": view.online, "node": view.node }),
    ))
}

/// Gives a client a new secret (shown only in this answer): the old one stops working at once
/// and its session ends.
#[utoipa::path(post, path = "/clients/{id}/reset-credentials", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the client id")),
    responses(
        (status = 200, description = "{client, secret}"),
        (status = 404, description = "no such client"),
    ))]
async fn reset_credentials(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = client_id(&id)?;
    let answer = state
        .change(move |node, now| {
            let (_, secret) = node.reset_credentials(now, id)?;
            WithSecret::new(node, id, &secret)
        })
        .await??;
    Ok(ok(answer))
}

/// The mappings a client takes part in (as entry or target).
#[utoipa::path(get, path = "/clients/{id}/mappings", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the client id"), Page),
    responses(
        (status = 200, description = "a page of mappings"),
        (status = 404, description = "no such client"),
    ))]
async fn list_client_mappings(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let id = client_id(&id)?;
    let paged = state
        .run(move |node, _| {
            find(node, id)?;
            Ok::<_, ApiError>(page.of(node.state().mappings_of(id))?.cloned())
        })
        .await??;
    Ok(ok(paged))
}
