//! `/api/v1/mappings`: what is exposed where. Every change pushes new config to the clients
//! involved, on whatever node they are (through the cluster's `config.update`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use tunnox_core::control::{
    ClientId, Entry, Mapping, MappingId, MappingOptions, Protocol, Target, UserId,
};
use tunnox_core::node::AdminError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answer::{Body, Query, created, mapping_id, ok};
use super::{ApiError, ApiState, Page};

/// The routes of this file.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_mappings, create_mapping))
        .routes(routes!(get_mapping, replace_mapping, delete_mapping))
}

/// The body of `POST /api/v1/mappings` and `PUT /api/v1/mappings/{id}` (the shapes of
/// docs/configuration.md's `mappings:`).
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
    /// The user it is charged to (its quota applies).
    pub owner: Option<u64>,
}

impl NewMapping {
    /// The mapping this body describes, with `id` and `created_at`.
    fn into_mapping(self, id: MappingId, previous: Option<&Mapping>) -> Mapping {
        let created_at = previous.map_or_else(crate::clock::wall_now, |p| p.created_at);
        let mut mapping = Mapping::tcp(
            id,
            self.entry,
            ClientId(self.target_client),
            "",
            0,
            created_at,
        );
        mapping.target = self.target;
        mapping.protocol = self.protocol.unwrap_or(Protocol::Tcp);
        mapping.options = self.options;
        mapping.owner = self.owner.map(UserId);
        if let Some(previous) = previous {
            mapping.status = previous.status;
            mapping.expires_at = previous.expires_at;
        }
        mapping
    }
}

/// `?user=&client=&offset=&limit=` of `GET /api/v1/mappings`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct MappingFilter {
    /// Only mappings charged to this user.
    user: Option<u64>,
    /// Only mappings this client takes part in (as entry or target).
    client: Option<u64>,
    /// Items to skip [0].
    offset: Option<usize>,
    /// Items to return, 1-1000 [50].
    limit: Option<usize>,
}

/// Every mapping, or one user's or one client's.
#[utoipa::path(get, path = "/mappings", security(("api_key" = [])), params(MappingFilter),
    responses(
        (status = 200, description = "a page of mappings"),
        (status = 400, description = "a bad query"),
        (status = 401, description = "a valid token is required"),
    ))]
async fn list_mappings(
    State(state): State<ApiState>,
    Query(filter): Query<MappingFilter>,
) -> Result<Response, ApiError> {
    let page = Page {
        offset: filter.offset,
        limit: filter.limit,
    };
    let user = filter.user.map(UserId);
    let client = filter.client.map(ClientId);
    let paged = state
        .run(move |node, _| {
            let mappings = node.state().mappings.values().filter(|m| {
                user.is_none_or(|u| m.owner == Some(u)) && client.is_none_or(|c| m.involves(c))
            });
            Ok::<_, ApiError>(page.of(mappings)?.cloned())
        })
        .await??;
    Ok(ok(paged))
}

/// One mapping.
#[utoipa::path(get, path = "/mappings/{id}", security(("api_key" = [])),
    params(("id" = String, Path, description = "the mapping id")),
    responses(
        (status = 200, description = "the mapping"),
        (status = 400, description = "not a mapping id"),
        (status = 401, description = "a valid token is required"),
        (status = 404, description = "no such mapping"),
    ))]
async fn get_mapping(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = mapping_id(&id)?;
    let mapping = state
        .run(move |node, _| node.state().mappings.get(&id).cloned())
        .await?
        .ok_or_else(|| ApiError::not_found("mapping"))?;
    Ok(ok(mapping))
}

/// Creates a mapping; its clients get the new config at once.
#[utoipa::path(post, path = "/mappings", security(("api_key" = [])), request_body = NewMapping,
    responses(
        (status = 201, description = "created, with its id"),
        (status = 400, description = "not JSON, not this shape, or an invalid value (data.field names it)"),
        (status = 401, description = "a valid token is required"),
        (status = 403, description = "a quota forbids it, or the token may only read"),
        (status = 404, description = "no such owner"),
        (status = 409, description = "its node port or host is taken"),
    ))]
async fn create_mapping(
    State(state): State<ApiState>,
    Body(body): Body<NewMapping>,
) -> Result<Response, ApiError> {
    // Ids must not be guessable: from the OS, or not at all.
    let seed = crate::random::os_random::<32>().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no OS randomness for a new id",
        )
    })?;
    let id = MappingId::generate(&mut tunnox_core::rng::Rng::from_seed(seed));
    let mapping = body.into_mapping(id, None);
    let stored = mapping.clone();
    state
        .change(move |node, now| node.put_mapping(now, stored))
        .await??;
    Ok(created(mapping))
}

/// Replaces a mapping (same id); its live tunnels end if where it leads changed, and its
/// clients get the new config.
#[utoipa::path(put, path = "/mappings/{id}", security(("api_key" = [])), request_body = NewMapping,
    params(("id" = String, Path, description = "the mapping id")),
    responses(
        (status = 200, description = "the new mapping"),
        (status = 400, description = "an invalid value (data.field names it)"),
        (status = 404, description = "no such mapping"),
        (status = 409, description = "its node port or host is taken"),
    ))]
async fn replace_mapping(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Body(body): Body<NewMapping>,
) -> Result<Response, ApiError> {
    let id = mapping_id(&id)?;
    let mapping = state
        .change(move |node, now| {
            let previous = node
                .state()
                .mappings
                .get(&id)
                .cloned()
                .ok_or(AdminError::NotFound("mapping"))?;
            let mapping = body.into_mapping(id, Some(&previous));
            node.put_mapping(now, mapping.clone()).map(|()| mapping)
        })
        .await??;
    Ok(ok(mapping))
}

/// Deletes a mapping: its tunnels end and its clients get new config.
#[utoipa::path(delete, path = "/mappings/{id}", security(("api_key" = [])),
    params(("id" = String, Path, description = "the mapping id")),
    responses(
        (status = 200, description = "deleted"),
        (status = 401, description = "a valid token is required"),
        (status = 404, description = "no such mapping"),
    ))]
async fn delete_mapping(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = mapping_id(&id)?;
    state
        .change(move |node, now| node.delete_mapping(now, &id))
        .await??;
    Ok(ok(serde_json::json!({ "deleted": true })))
}
