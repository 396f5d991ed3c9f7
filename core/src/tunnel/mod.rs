//! The life of one tunnelled connection, as the node sees it.
//!
//! An entry (a listen client's stream, or a visitor the node accepted on a node port) asks for a
//! tunnel by mapping id. [`TunnelTable`] decides — the node, never the client: the mapping must
//! exist, be active and unexpired, name this entry, allow the visitor's address, stay within the
//! mapping's and the owner's connection quotas, and its target client must be online. It then
//! asks the driver to open a stream to the target client carrying the address to dial; the
//! target's answer (its dial result) accepts or refuses the entry with a typed [`OpenError`].
//! While relaying, FIN on one end becomes FIN on the other, and a reset, a lost session or a
//! deleted mapping resets the other end. [`udp`] frames datagrams of many UDP flows on one stream.

mod payload;
mod table;
pub mod udp;

#[cfg(test)]
mod tests;

pub use payload::{
    DialFailure, OpenError, PayloadError, decode_open, decode_result, encode_open, encode_result,
};
pub use table::{
    Endpoint, OpenContext, OpenRequest, TunnelAction, TunnelConfig, TunnelId, TunnelOutcome,
    TunnelTable,
};
