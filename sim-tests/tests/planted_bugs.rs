//! The sweep must find bugs: each planted bug (compiled in with the core's `planted-bugs`
//! feature, switched on per run) is caught within the seed list, and the failing seed replays to
//! the same trace hash.

#![allow(clippy::print_stdout)]

use tunnox_core::planted::PlantedBug;
use tunnox_sim_tests::cluster::{self, ClusterScenario};
use tunnox_sim_tests::scenario::{ScenarioConfig, run};

const SEEDS: std::ops::Range<u64> = 0..64;

/// Seeds of the cluster sweep tried per planted cluster bug (cluster_sweep covers 0..512).
const CLUSTER_SEEDS: std::ops::Range<u64> = 0..128;

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

fn first_cluster_catch(bug: PlantedBug) {
    // The same scenario without the bug passes at these seeds (cluster_sweep), so a failure
    // here is the bug's doing.
    for seed in CLUSTER_SEEDS {
        let config = ClusterScenario {
            planted: Some(bug),
            ..ClusterScenario::for_sweep(seed)
        };
        if let Err(failure) = cluster::run(&config) {
            println!("{} caught at seed {seed}: {}", bug.name(), failure.error);
            let again = cluster::run(&config)
                .err()
                .unwrap_or_else(|| panic!("seed {seed} did not fail again"));
            assert_eq!(again.trace_hash, failure.trace_hash, "the replay differs");
            assert_eq!(again.events, failure.events);
            return;
        }
    }
    panic!(
        "{} was never caught in cluster seeds {CLUSTER_SEEDS:?}",
        bug.name()
    );
}

#[test]
fn catches_forwarded_open_served_onward() {
    first_cluster_catch(PlantedBug::ForwardedOpenServedOnward);
}

#[test]
fn catches_stale_route_kept_on_target_offline() {
    first_cluster_catch(PlantedBug::StaleRouteKeptOnTargetOffline);
}

#[test]
fn catches_pool_redialling_a_departed_peer() {
    first_cluster_catch(PlantedBug::PoolRedialsDepartedPeer);
}

#[test]
fn catches_inbox_delivering_duplicates() {
    first_cluster_catch(PlantedBug::InboxDeliversDuplicates);
}

#[test]
fn catches_membership_lease_ignored() {
    first_cluster_catch(PlantedBug::MembershipLeaseIgnored);
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
