//! Seeded simulation scenarios of tunnox; the tests live in `tests/`.
//!
//! Empty until the simulation issue lands the simulator.
