//! Shared helpers of the tunnox benchmarks (see `benches/` and RESULTS.md).
