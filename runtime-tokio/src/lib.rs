//! tunnox-runtime-tokio: drives `tunnox-core` state machines on tokio.
//!
//! Empty until the single-node issue lands the TCP/TLS transports and the node and client
//! drivers; nothing here pretends to work before then.
