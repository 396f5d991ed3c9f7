//! Single-node simulations: one node, many clients, mappings changing under traffic, every fault
//! kind, invariants after every event, then heal and liveness. A failure prints
//! `TUNNOX_SIM_SEED=<n>` and the command that replays it; `TUNNOX_SIM_SEEDS=<k>` adds k random
//! seeds to each sweep.

#![allow(clippy::print_stdout)]

use tunnox_sim_tests::scenario::{ScenarioConfig, run, seeds, sweep, total_coverage};

/// Seeds of the CI sweep.
const SWEEP_SEEDS: std::ops::Range<u64> = 0..512;

#[test]
fn single_node_sweep() {
    let seeds = seeds(SWEEP_SEEDS);
    let reports = sweep("single_node_sweep", &seeds, ScenarioConfig::small);
    let coverage = total_coverage(&reports);
    let events: u64 = reports.iter().map(|r| r.stats.events_processed).sum();
    let checks: u64 = reports
        .iter()
        .map(|r| r.stats.invariant_checks + r.stats.checker_runs)
        .sum();
    let streams: u64 = reports.iter().map(|r| r.visitors.opened).sum();
    let faults: u64 = reports
        .iter()
        .map(|r| r.stats.faults_injected.values().sum::<u64>())
        .sum();
    println!(
        "{} seeds: {events} events, {checks} invariant checks, {faults} faults, {streams} streams",
        seeds.len()
    );
    println!("coverage: {coverage:?}");
    if seeds.len() < 100 {
        return; // a replay of one seed: the coverage bar is for the sweep
    }
    // Chaos that never bites proves nothing: every one of these states must have been reached.
    for counter in [
        "partition_healed_with_data_in_flight",
        "connection_reset_by_stall",
        "held_then_released",
        "crash_with_live_connections",
        "pause_deferred_events",
        "reconnected",
        "heartbeat_timeout",
        "open_refused",
        "visitor_streams_reset",
        "visitor_completed",
        "window_exhausted",
        "stale_frames_ignored",
        "rst_crossed_fin",
        "visitor_aborted",
        "code_offered",
        "code_redeemed",
        "code_refused",
    ] {
        assert!(
            coverage.get(counter).copied().unwrap_or(0) > 0,
            "coverage counter {counter} stayed at zero"
        );
    }
    assert!(faults > seeds.len() as u64, "faults were injected");
}

#[test]
fn large_single_node_under_faults() {
    // 100 clients, 50 mappings, 1,000 visitor streams, 60 s of chaos; and once 200 clients.
    let seeds = seeds([11, 12]);
    let reports = sweep(
        "large_single_node_under_faults",
        &seeds,
        ScenarioConfig::standard,
    );
    for r in &reports {
        println!("{}", r.summary());
        assert!(
            r.visitors.opened >= 900,
            "the workload ran: {} streams",
            r.visitors.opened
        );
    }
    let big = sweep("large_single_node_under_faults", &seeds[..1], |seed| {
        ScenarioConfig {
            clients: 200,
            mappings: 100,
            ..ScenarioConfig::standard(seed)
        }
    });
    println!("{}", big[0].summary());
}

#[test]
fn bytewise_deliveries() {
    // Every stream byte delivered on its own: decoders see every possible split.
    let seeds = seeds(100..116);
    sweep("bytewise_deliveries", &seeds, |seed| ScenarioConfig {
        bytewise: true,
        max_bytes: 2_048,
        connections_per_visitor: 10,
        ..ScenarioConfig::small(seed)
    });
}

#[test]
fn same_seed_same_trace() {
    for seed in [1u64, 7, 42, 1234] {
        let a = run(&ScenarioConfig::small(seed))
            .map_err(|f| f.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let b = run(&ScenarioConfig::small(seed))
            .map_err(|f| f.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.stats.events_processed, b.stats.events_processed);
        // A readable trace changes nothing that is hashed.
        let traced = run(&ScenarioConfig {
            trace: true,
            ..ScenarioConfig::small(seed)
        })
        .map_err(|f| f.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.trace_hash, traced.trace_hash,
            "tracing changed seed {seed}"
        );
    }
    let other = run(&ScenarioConfig::small(8))
        .map_err(|f| f.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let first = run(&ScenarioConfig::small(7))
        .map_err(|f| f.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        other.trace_hash, first.trace_hash,
        "different seeds, different runs"
    );
}
