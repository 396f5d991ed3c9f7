//! tunnox-runtime-sim: the deterministic simulator that drives `tunnox-core`.
//!
//! Empty until the simulation issue lands the event queue, network and fault model.
