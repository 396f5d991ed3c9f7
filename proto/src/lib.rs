//! Protobuf schemas of tunnox, compiled with prost (codegen by protox: no system `protoc`).
//!
//! `wire` holds the control messages carried in client<->node frames (see `tunnox_core::wire`);
//! `broker` holds the envelope of node<->node broker messages (see `tunnox_core::broker`);
//! `storage` holds the `StorageService` (messages, tonic client and server stubs) that
//! `tunnox storage-server` serves and `RemoteStorage` calls.

/// Control messages of the client<->node protocol, version 1.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/tunnox.wire.v1.rs"));
}

/// The envelope of messages between nodes on the cluster broker, version 1.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod broker {
    include!(concat!(env!("OUT_DIR"), "/tunnox.broker.v1.rs"));
}

/// The key/value `StorageService`, version 1: its messages, and with the `grpc` feature the
/// tonic stubs `storage_service_client` and `storage_service_server`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod storage {
    include!(concat!(env!("OUT_DIR"), "/tunnox.storage.v1.rs"));
}

pub use prost::Message;
