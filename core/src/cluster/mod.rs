//! Cluster logic that does no IO: which node holds a client's session (routes with epochs and
//! leases), how the owner keeps its claim, and how other nodes cache and re-read routes. Node
//! membership records with leases are [`crate::control::NodeRecord`].

pub mod pool;
pub mod route;

pub use pool::{BridgePool, LinkId, PoolAction, PoolConfig, PoolStats};
pub use route::{
    ClientRoute, Ownership, OwnershipEvent, RenewError, RouteCache, RouteConflict, RouteLookup,
};
