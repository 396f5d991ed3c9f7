//! Seeded simulations of tunnox: hosts that wrap the sans-IO node and client, workloads and
//! services, and scenarios run by `tests/` and by `tunnox sim`.

pub mod hosts;
pub mod scenario;
