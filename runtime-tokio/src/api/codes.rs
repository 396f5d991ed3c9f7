//! `/api/v1/codes`: connection codes made and redeemed on behalf of clients (what clients do
//! for themselves over their session, `tunnox client code …`).

use axum::extract::{Path, State};
use axum::response::Response;
use tunnox_core::control::{ClientId, CodeRequest, Protocol, Target};
use tunnox_core::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answer::{Body, Query, code, created, ok};
use super::{ApiError, ApiState, Page};

/// The routes of this file.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_codes, create_code))
        .routes(routes!(get_code))
        .routes(routes!(revoke_code))
        .routes(routes!(activate_code))
}

/// The body of `POST /api/v1/codes`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCode {
    /// The client that will dial the target.
    pub target_client: u64,
    /// `tcp` (default), `udp` or `socks5`.
    #[schema(value_type = Option<String>)]
    pub protocol: Option<Protocol>,
    /// `{kind: fixed, host, port}` (tcp and udp), absent for socks5.
    #[schema(value_type = Option<Object>)]
    pub target: Option<Target>,
    /// How long the code may be redeemed, seconds (default 10 minutes).
    pub activation_ttl_secs: Option<u64>,
    /// How long the mapping it creates lives, seconds (default 7 days).
    pub mapping_ttl_secs: Option<u64>,
    /// Free text shown in listings.
    #[serde(default)]
    pub description: String,
}

/// The body of `POST /api/v1/codes/{code}/activate`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// The client that will listen.
    pub listen_client: u64,
    /// Where it listens, `host:port`.
    pub listen_addr: String,
}

/// `?client=&offset=&limit=` of `GET /api/v1/codes`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct CodeFilter {
    /// Only codes this client offered.
    client: Option<u64>,
    /// Items to skip [0].
    offset: Option<usize>,
    /// Items to return, 1-1000 [50].
    limit: Option<usize>,
}

/// Every connection code (unused, used and revoked), or one client's.
#[utoipa::path(get, path = "/codes", security(("api_key" = [])), params(CodeFilter),
    responses(
        (status = 200, description = "a page of codes"),
        (status = 400, description = "a bad query"),
    ))]
async fn list_codes(
    State(state): State<ApiState>,
    Query(filter): Query<CodeFilter>,
) -> Result<Response, ApiError> {
    let page = Page {
        offset: filter.offset,
        limit: filter.limit,
    };
    let client = filter.client.map(ClientId);
    let paged = state
        .run(move |node, _| {
            let codes = node
                .state()
                .codes
                .values()
                .filter(|c| client.is_none_or(|id| c.target_client() == id));
            Ok::<_, ApiError>(page.of(codes)?.cloned())
        })
        .await??;
    Ok(ok(paged))
}

/// Issues a code for `target_client`.
#[utoipa::path(post, path = "/codes", security(("api_key" = [])), request_body = NewCode,
    responses(
        (status = 201, description = "the code"),
        (status = 400, description = "an invalid value (data.field names it)"),
        (status = 404, description = "no such client"),
    ))]
async fn create_code(
    State(state): State<ApiState>,
    Body(body): Body<NewCode>,
) -> Result<Response, ApiError> {
    let protocol = body.protocol.unwrap_or(Protocol::Tcp);
    let target = match (protocol, body.target) {
        (Protocol::Socks5, None) => Target::Dynamic,
        (_, Some(target)) => target,
        (_, None) => {
            return Err(ApiError::invalid(
                "target",
                "a tcp or udp code needs a target",
            ));
        }
    };
    let mut request = CodeRequest::new(ClientId(body.target_client), target, protocol)
        .with_description(body.description);
    if let Some(secs) = body.activation_ttl_secs {
        request = request.with_activation_ttl(Duration::from_secs(secs));
    }
    if let Some(secs) = body.mapping_ttl_secs {
        request = request.with_mapping_ttl(Duration::from_secs(secs));
    }
    let issued = state
        .change(move |node, now| node.issue_code(now, request))
        .await??;
    Ok(created(issued))
}

/// One code.
#[utoipa::path(get, path = "/codes/{code}", security(("api_key" = [])),
    params(("code" = String, Path, description = "the code, abc-def-123")),
    responses(
        (status = 200, description = "the code"),
        (status = 400, description = "not a code"),
        (status = 404, description = "no such code"),
    ))]
async fn get_code(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let code = code(&text)?;
    let found = state
        .run(move |node, _| node.state().codes.get(&code).cloned())
        .await?
        .ok_or_else(|| ApiError::not_found("connection code"))?;
    Ok(ok(found))
}

/// Revokes an unused code.
#[utoipa::path(post, path = "/codes/{code}/revoke", security(("api_key" = [])),
    params(("code" = String, Path, description = "the code")),
    responses(
        (status = 200, description = "the revoked code"),
        (status = 404, description = "no such code"),
        (status = 409, description = "already used or revoked"),
    ))]
async fn revoke_code(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let code = code(&text)?;
    let revoked = state
        .change(move |node, now| node.revoke_code(now, &code))
        .await??;
    Ok(ok(revoked))
}

/// Redeems a code for `listen_client`: the mapping is created and the code spent.
#[utoipa::path(post, path = "/codes/{code}/activate", security(("api_key" = [])),
    request_body = Activation,
    params(("code" = String, Path, description = "the code")),
    responses(
        (status = 201, description = "the new mapping"),
        (status = 400, description = "an invalid listen address, or the code's own client"),
        (status = 404, description = "no such code or client"),
        (status = 409, description = "expired, used or revoked"),
    ))]
async fn activate_code(
    State(state): State<ApiState>,
    Path(text): Path<String>,
    Body(body): Body<Activation>,
) -> Result<Response, ApiError> {
    let code = code(&text)?;
    let mapping = state
        .change(move |node, now| {
            node.redeem_code(now, ClientId(body.listen_client), &code, &body.listen_addr)
        })
        .await??;
    Ok(created(mapping))
}
