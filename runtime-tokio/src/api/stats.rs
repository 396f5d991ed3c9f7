//! `/api/v1/stats` and `/api/v1/nodes`: what this node carries now, its traffic per mapping, and
//! the cluster's nodes as this node sees them.

use axum::extract::{Path, State};
use axum::response::Response;
use tunnox_core::control::NodeId;
use tunnox_core::node::Node;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::answer::{Query, ok};
use super::{ApiError, ApiState, Page};

/// The routes of this file.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(realtime))
        .routes(routes!(traffic))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node))
}

/// This node now.
#[derive(Debug, serde::Serialize)]
struct Realtime {
    node: String,
    clients_online: usize,
    connections: usize,
    tunnels_active: usize,
    streams_active: usize,
    bytes_to_target: u64,
    bytes_to_entry: u64,
    users: usize,
    clients: usize,
    mappings: usize,
    codes: usize,
}

/// One mapping's traffic through this node.
#[derive(Debug, serde::Serialize)]
struct Traffic {
    mapping: String,
    bytes_to_target: u64,
    bytes_to_entry: u64,
    tunnels: u64,
}

/// A node of the cluster, as this node sees it.
#[derive(Debug, serde::Serialize)]
struct NodeView {
    id: String,
    /// Whether it is the node answering.
    #[serde(rename = "self")]
    is_self: bool,
    /// Bridge links from this node to it (none for itself).
    bridge_links: u32,
    /// Streams those links carry now.
    bridge_streams: u32,
    /// Clients online (known for the node answering only).
    clients_online: Option<usize>,
}

/// Live figures of this node, and totals since it started.
#[utoipa::path(get, path = "/stats", security(("api_key" = [])), responses(
    (status = 200, description = "clients online, connections, tunnels, streams, bytes, object counts"),
))]
async fn realtime(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let stats = state
        .run(|node, _| {
            let (to_target, to_entry) = node.traffic().values().fold((0u64, 0u64), |(t, e), m| {
                (
                    t.saturating_add(m.bytes_to_target),
                    e.saturating_add(m.bytes_to_entry),
                )
            });
            let s = node.state();
            Realtime {
                node: node.node_id().to_owned(),
                clients_online: node.online_clients(),
                connections: node.connection_count(),
                tunnels_active: node.tunnel_count(),
                streams_active: node.stream_count(),
                bytes_to_target: to_target,
                bytes_to_entry: to_entry,
                users: s.users.len(),
                clients: s.clients.len(),
                mappings: s.mappings.len(),
                codes: s.codes.len(),
            }
        })
        .await?;
    Ok(ok(stats))
}

/// Bytes and tunnels per mapping through this node since it started (ended and live tunnels).
#[utoipa::path(get, path = "/stats/traffic", security(("api_key" = [])), params(Page),
    responses((status = 200, description = "a page of {mapping, bytes_to_target, bytes_to_entry, tunnels}")))]
async fn traffic(
    State(state): State<ApiState>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let paged = state
        .run(move |node, _| {
            let traffic = node.traffic();
            page.of(traffic.into_iter().map(|(mapping, t)| Traffic {
                mapping: mapping.to_string(),
                bytes_to_target: t.bytes_to_target,
                bytes_to_entry: t.bytes_to_entry,
                tunnels: t.tunnels,
            }))
        })
        .await??;
    Ok(ok(paged))
}

/// This node and the live members it knows, in id order.
fn nodes(node: &Node) -> Vec<NodeView> {
    let mut views = vec![NodeView {
        id: node.node_id().to_owned(),
        is_self: true,
        bridge_links: 0,
        bridge_streams: 0,
        clients_online: Some(node.online_clients()),
    }];
    let usage = node.bridge_usage();
    for peer in node.pool().members() {
        let (links, streams) = usage
            .iter()
            .find(|u| &u.peer == peer)
            .map_or((0, 0), |u| (u.links, u.streams));
        views.push(NodeView {
            id: peer.to_string(),
            is_self: false,
            bridge_links: links,
            bridge_streams: streams,
            clients_online: None,
        });
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    views
}

/// The cluster's live nodes (just this one when it runs alone).
#[utoipa::path(get, path = "/nodes", security(("api_key" = [])), params(Page),
    responses((status = 200, description = "a page of nodes")))]
async fn list_nodes(
    State(state): State<ApiState>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let paged = state
        .run(move |node, _| page.of(nodes(node).into_iter()))
        .await??;
    Ok(ok(paged))
}

/// One node.
#[utoipa::path(get, path = "/nodes/{id}", security(("api_key" = [])),
    params(("id" = String, Path, description = "the node id")),
    responses(
        (status = 200, description = "the node"),
        (status = 400, description = "not a node id"),
        (status = 404, description = "not a live member"),
    ))]
async fn get_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = NodeId::parse(&id).map_err(|e| ApiError::invalid("id", e.to_string()))?;
    let found = state
        .run(move |node, _| nodes(node).into_iter().find(|view| view.id == id.as_str()))
        .await?
        .ok_or_else(|| ApiError::not_found("node"))?;
    Ok(ok(found))
}
