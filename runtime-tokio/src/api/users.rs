//! `/api/v1/users`: users, their quotas, and what they own.

use axum::extract::{Path, State};
use axum::response::Response;
use tunnox_core::control::{Quota, User, UserId};
use tunnox_core::node::{AdminError, Node};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answer::{Body, Query, created, ok, user_id};
use super::clients::{ClientView, owned_by};
use super::{ApiError, ApiState, Page};

/// The routes of this file.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(list_user_clients))
        .routes(routes!(list_user_mappings))
        .routes(routes!(get_quota, set_quota))
        .routes(routes!(user_stats))
}

/// The body of `POST /api/v1/users`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1-64 characters.
    pub name: String,
    /// Limits (absent: the defaults).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub quota: Option<Quota>,
    /// Whether its clients are refused.
    #[serde(default)]
    pub disabled: bool,
}

/// The body of `PATCH /api/v1/users/{id}`: what changes.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// A new name.
    pub name: Option<String>,
    /// New limits (the whole quota).
    #[schema(value_type = Option<Object>)]
    pub quota: Option<Quota>,
    /// Disable (its clients' sessions end) or enable.
    pub disabled: Option<bool>,
}

/// What a user owns and moves, as this node sees it.
#[derive(Debug, serde::Serialize)]
struct UserStats {
    user: u64,
    clients: usize,
    clients_online: usize,
    mappings: usize,
    bytes_to_target: u64,
    bytes_to_entry: u64,
}

/// Every user.
#[utoipa::path(get, path = "/users", security(("api_key" = [])), params(Page), responses(
    (status = 200, description = "a page of users"),
    (status = 400, description = "a bad offset or limit"),
    (status = 401, description = "a valid token is required"),
))]
async fn list_users(
    State(state): State<ApiState>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let paged = state
        .run(move |node, _| Ok::<_, ApiError>(page.of(node.state().users.values())?.cloned()))
        .await??;
    Ok(ok(paged))
}

/// Creates a user.
#[utoipa::path(post, path = "/users", security(("api_key" = [])), request_body = NewUser,
    responses(
        (status = 201, description = "the new user"),
        (status = 400, description = "not this shape, or an invalid value (data.field names it)"),
        (status = 401, description = "a valid token is required"),
        (status = 403, description = "the token may only read"),
    ))]
async fn create_user(
    State(state): State<ApiState>,
    Body(body): Body<NewUser>,
) -> Result<Response, ApiError> {
    let user = state
        .change(move |node, now| {
            node.create_user(
                now,
                &body.name,
                body.quota.unwrap_or_default(),
                body.disabled,
            )
        })
        .await??;
    Ok(created(user))
}

/// 404 unless user `id` exists.
fn require(node: &Node, id: UserId) -> Result<(), ApiError> {
    if node.state().users.contains_key(&id) {
        Ok(())
    } else {
        Err(ApiError::not_found("user"))
    }
}

/// Finds user `id` in `node`'s state.
fn find(node: &Node, id: UserId) -> Option<User> {
    node.state().users.get(&id).cloned()
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the user id")),
    responses(
        (status = 200, description = "the user"),
        (status = 400, description = "not a user id"),
        (status = 404, description = "no such user"),
    ))]
async fn get_user(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    let user = state.run(move |node, _| find(node, id)).await?;
    Ok(ok(user.ok_or_else(|| ApiError::not_found("user"))?))
}

/// Changes a user's name, quota or whether it is disabled.
#[utoipa::path(patch, path = "/users/{id}", security(("api_key" = [])), request_body = UserPatch,
    params(("id" = u64, Path, description = "the user id")),
    responses(
        (status = 200, description = "the changed user"),
        (status = 400, description = "an invalid value (data.field names it)"),
        (status = 404, description = "no such user"),
    ))]
async fn update_user(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Body(patch): Body<UserPatch>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    let user = state
        .change(move |node, now| {
            let mut user = find(node, id).ok_or(AdminError::NotFound("user"))?;
            if let Some(name) = patch.name {
                user.name = name;
            }
            if let Some(quota) = patch.quota {
                user.quota = quota;
            }
            if let Some(disabled) = patch.disabled {
                user.disabled = disabled;
            }
            node.update_user(now, user.clone()).map(|()| user)
        })
        .await??;
    Ok(ok(user))
}

/// Deletes a user that owns nothing.
#[utoipa::path(delete, path = "/users/{id}", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the user id")),
    responses(
        (status = 200, description = "deleted"),
        (status = 404, description = "no such user"),
        (status = 409, description = "it still owns clients or mappings"),
    ))]
async fn delete_user(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    state.change(move |node, _| node.delete_user(id)).await??;
    Ok(ok(serde_json::json!({ "deleted": true })))
}

/// A user's clients.
#[utoipa::path(get, path = "/users/{id}/clients", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the user id"), Page),
    responses(
        (status = 200, description = "a page of its clients"),
        (status = 404, description = "no such user"),
    ))]
async fn list_user_clients(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    let paged = state
        .run(move |node, _| {
            require(node, id)?;
            page.of(owned_by(node, id))?
                .try_map(|c| Ok(ClientView::of(node, c)))
        })
        .await??;
    Ok(ok(paged))
}

/// A user's mappings.
#[utoipa::path(get, path = "/users/{id}/mappings", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the user id"), Page),
    responses(
        (status = 200, description = "a page of its mappings"),
        (status = 404, description = "no such user"),
    ))]
async fn list_user_mappings(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    let paged = state
        .run(move |node, _| {
            require(node, id)?;
            let owned = node
                .state()
                .mappings
                .values()
                .filter(|m| m.owner == Some(id));
            Ok::<_, ApiError>(page.of(owned)?.cloned())
        })
        .await??;
    Ok(ok(paged))
}

/// A user's quota.
#[utoipa::path(get, path = "/users/{id}/quota", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the user id")),
    responses(
        (status = 200, description = "the quota"),
        (status = 404, description = "no such user"),
    ))]
async fn get_quota(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    let user = state.run(move |node, _| find(node, id)).await?;
    Ok(ok(user.ok_or_else(|| ApiError::not_found("user"))?.quota))
}

/// Replaces a user's quota (existing clients and mappings beyond it stay; new ones are refused).
#[utoipa::path(put, path = "/users/{id}/quota", security(("api_key" = [])),
    request_body(content = Object, description = "the whole quota"),
    params(("id" = u64, Path, description = "the user id")),
    responses(
        (status = 200, description = "the new quota"),
        (status = 400, description = "not a quota"),
        (status = 404, description = "no such user"),
    ))]
async fn set_quota(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Body(quota): Body<Quota>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    let quota = state
        .change(move |node, now| {
            let mut user = find(node, id).ok_or(AdminError::NotFound("user"))?;
            user.quota = quota;
            node.update_user(now, user.clone()).map(|()| user.quota)
        })
        .await??;
    Ok(ok(quota))
}

/// What a user owns and its traffic through this node.
#[utoipa::path(get, path = "/users/{id}/stats", security(("api_key" = [])),
    params(("id" = u64, Path, description = "the user id")),
    responses(
        (status = 200, description = "clients, clients online, mappings, bytes"),
        (status = 404, description = "no such user"),
    ))]
async fn user_stats(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = user_id(&id)?;
    let stats = state
        .run(move |node, _| {
            find(node, id)?;
            let clients: Vec<_> = owned_by(node, id).collect();
            let online = clients
                .iter()
                .filter(|c| ClientView::of(node, c).online)
                .count();
            let traffic = node.traffic();
            let mut stats = UserStats {
                user: id.0,
                clients: clients.len(),
                clients_online: online,
                mappings: node.state().mappings_owned_by(id),
                bytes_to_target: 0,
                bytes_to_entry: 0,
            };
            for mapping in node
                .state()
                .mappings
                .values()
                .filter(|m| m.owner == Some(id))
            {
                if let Some(t) = traffic.get(&mapping.id) {
                    stats.bytes_to_target += t.bytes_to_target;
                    stats.bytes_to_entry += t.bytes_to_entry;
                }
            }
            Some(stats)
        })
        .await?;
    Ok(ok(stats.ok_or_else(|| ApiError::not_found("user"))?))
}
