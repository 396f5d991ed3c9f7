//! Seeded simulations of tunnox: hosts that wrap the sans-IO node and client, workloads and
//! services, the cluster's storage and broker, and scenarios run by `tests/` and by `tunnox sim`.

pub mod cluster;
pub mod hosts;
pub mod scenario;
