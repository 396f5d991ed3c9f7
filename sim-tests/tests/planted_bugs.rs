//! The sweep must find bugs: each planted bug (compiled in with the core's `planted-bugs`
//! feature, switched on per run) is caught within the seed list, and the failing seed replays to
//! the same trace hash.

#![allow(clippy::print_stdout)]

use tunnox_core::planted::PlantedBug;
use tunnox_sim_tests::scenario::{ScenarioConfig, run};

const SEEDS: std::ops::Range<u64> = 0..64;

fn first_catch(bug: PlantedBug) {
    // The same scenario without the bug passes at the seeds below (single_node_sweep covers
    // 0..512), so a failure here is the bug's doing.
    for seed in SEEDS {
        let config = ScenarioConfig {
            planted: Some(bug),
            ..ScenarioConfig::small(seed)
        };
        if let Err(failure) = run(&config) {
            println!("{} caught at seed {seed}: {}", bug.name(), failure.error);
            let again = run(&config)
                .err()
                .unwrap_or_else(|| panic!("seed {seed} did not fail again"));
            assert_eq!(again.trace_hash, failure.trace_hash, "the replay differs");
            assert_eq!(again.events, failure.events);
            return;
        }
    }
    panic!("{} was never caught in seeds {SEEDS:?}", bug.name());
}

#[test]
fn catches_dropped_window_updates() {
    first_catch(PlantedBug::DropWindowUpdate);
}

#[test]
fn catches_fin_not_propagated() {
    first_catch(PlantedBug::FinNotPropagated);
}

#[test]
fn catches_heartbeat_timeout_off_by_one() {
    first_catch(PlantedBug::HeartbeatTimeoutOffByOne);
}

#[test]
fn catches_frame_length_off_by_one() {
    first_catch(PlantedBug::FrameLengthOffByOne);
}

#[test]
fn bugs_are_off_unless_planted() {
    // The planted switch is per run: a clean run after a planted one passes.
    let _ = run(&ScenarioConfig {
        planted: Some(PlantedBug::FrameLengthOffByOne),
        ..ScenarioConfig::small(0)
    });
    assert!(run(&ScenarioConfig::small(0)).is_ok());
}
