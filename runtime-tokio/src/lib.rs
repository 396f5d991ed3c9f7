//! tunnox-runtime-tokio: drives `tunnox-core` state machines on tokio.
//!
//! [`node::NodeDriver`] runs a `Node` over TCP (client connections, node-port visitors),
//! [`agent::AgentDriver`] runs an `Agent` (its node connection, listeners, target dials);
//! [`storage`] keeps a node's control state across restarts and holds the key/value `Storage`
//! backends (memory, Redis, embedded, remote over gRPC, and a Redis cache in front of any);
//! [`broker`] carries pub/sub between the nodes of a cluster (memory, Redis, NATS); [`bridge`]
//! carries bridge links between nodes over tonic, and [`cluster`] keeps membership, routes and the
//! shared state in Redis; [`net`] is where the drivers get their connections (the machine's TCP,
//! or a simulated network); [`api`] serves health, metrics ([`metrics`]) and the management API
//! over HTTP. Each driver is one task owning its
//! state machine; every socket is a reader task (pausable, so back-pressure stops reading), and
//! the driver writes plain TCP sockets directly, starting a writer task only for what cannot go
//! out at once (TLS sessions always have one). [`tls`] holds node identities and client trust.

pub mod agent;
pub mod api;
pub mod bridge;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod metrics;
pub mod net;
pub mod node;
pub mod random;
pub mod socket;
pub mod storage;
pub mod tls;
