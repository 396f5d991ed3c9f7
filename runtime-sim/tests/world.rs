//! The simulator's own tests: delivery, partitions, resets, crashes, pauses, clocks, datagrams,
//! determinism and a speed measurement (ignored).

// Test helpers outside `#[test]` functions may panic on what they set up themselves.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::*;
use tunnox_runtime_sim::stats::{
    CONNECTION_RESET_BY_STALL, HELD_THEN_RELEASED, PARTITION_HEALED_WITH_DATA_IN_FLIGHT,
};
use tunnox_runtime_sim::*;

fn quiet_config(seed: u64) -> WorldConfig {
    let mut config = WorldConfig::new(seed);
    config.faults = FaultMix::none();
    config.knobs = KnobMix::off();
    config
}

fn client(world: &World, id: HostId) -> &EchoClient {
    world.host::<EchoClient>(id).expect("client")
}

fn echo_server(world: &World, id: HostId) -> &EchoServer {
    world.host::<EchoServer>(id).expect("server")
}

#[test]
fn ordered_exact_delivery_under_chunking_and_latency_tails() {
    for seed in 0..4 {
        let mut config = quiet_config(seed);
        config.net.split_probability = 0.8;
        config.net.split_pieces_max = 8;
        config.net.latency = LatencyModel {
            base: ms(1),
            jitter: ms(5),
            tail_probability: 0.1,
            tail_multiplier_max: 50,
        };
        let (mut world, _server, clients) = echo_world(config, 8, 40_000, 2);
        let at = world
            .run_until_quiet(secs(120), |w| all_done(w, &clients))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", world.describe()));
        assert!(at < secs(120));
        world.run_for(Duration::from_secs(1)).unwrap();
        let stats = world.stats();
        assert_eq!(
            stats.bytes_sent,
            2 * 8 * 2 * 40_000,
            "client bytes plus their echo"
        );
        assert_eq!(
            stats.bytes_delivered, stats.bytes_sent,
            "every byte delivered"
        );
        assert!(
            stats.data_deliveries > 2 * 8 * 2 * (40_000 / 1_500),
            "{stats}"
        );
        assert_eq!(stats.connections_reset, 0);
        for c in &clients {
            assert_eq!(client(&world, *c).completed, 2);
        }
        assert_eq!(
            world.live_connections(),
            0,
            "every connection closed at both ends:\n{}",
            world.describe_connections()
        );
    }
}

#[test]
fn bytewise_knob_delivers_one_byte_at_a_time() {
    let (mut world, _server, clients) = echo_world(quiet_config(3), 2, 3_000, 1);
    let knobs = Knobs {
        split_deliveries_bytewise: true,
        ..Knobs::default()
    };
    world.set_knobs(knobs);
    world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap();
    let stats = world.stats();
    assert_eq!(stats.data_deliveries, stats.bytes_delivered);
}

#[test]
fn partition_stalls_then_heals_with_data_in_flight() {
    let (mut world, server, clients) = echo_world(quiet_config(7), 1, 200_000, 1);
    let c = clients[0];
    world.schedule_fault(
        secs(1),
        FaultAction::Partition {
            a: server,
            b: c,
            duration: Duration::from_secs(3),
        },
    );
    world.run_until(secs(1) + ms(500)).unwrap();
    let before = world.stats().bytes_delivered;
    world.run_until(secs(3)).unwrap();
    assert_eq!(
        world.stats().bytes_delivered,
        before,
        "nothing crosses a partition"
    );
    assert!(world.stats().stalls > 0);
    world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap();
    let stats = world.stats();
    assert!(
        stats.coverage(PARTITION_HEALED_WITH_DATA_IN_FLIGHT) > 0,
        "{stats}"
    );
    assert_eq!(
        stats.connections_reset, 0,
        "a short partition resets nothing"
    );
    assert_eq!(client(&world, c).completed, 1);
    assert!(
        client(&world, c).unsent_max > 10_000,
        "bytes piled up behind the partition"
    );
    assert_eq!(stats.faults(FaultKind::Partition), 1);
}

#[test]
fn a_labelled_connection_healing_with_data_in_flight_bumps_its_label() {
    for labelled in [true, false] {
        let (mut world, server, clients) = echo_world(quiet_config(7), 1, 200_000, 1);
        let c = clients[0];
        if labelled && let Some(client) = world.host_mut::<EchoClient>(c) {
            client.label = Some("echo_healed_with_data_in_flight");
        }
        world.schedule_fault(
            secs(1),
            FaultAction::Partition {
                a: server,
                b: c,
                duration: Duration::from_secs(3),
            },
        );
        world
            .run_until_quiet(secs(60), |w| all_done(w, &clients))
            .unwrap();
        let stats = world.stats();
        assert!(stats.coverage(PARTITION_HEALED_WITH_DATA_IN_FLIGHT) > 0);
        assert_eq!(
            stats.coverage("echo_healed_with_data_in_flight") > 0,
            labelled,
            "{stats}"
        );
    }
}

#[test]
fn long_partition_resets_both_ends_then_client_recovers() {
    let mut config = quiet_config(8);
    config.net.stall_reset_after = Duration::from_secs(2);
    let (mut world, server, clients) = echo_world(config, 1, 200_000, 1);
    let c = clients[0];
    world.schedule_fault(
        secs(1),
        FaultAction::Partition {
            a: server,
            b: c,
            duration: Duration::from_secs(20),
        },
    );
    world.run_until(secs(10)).unwrap();
    assert_eq!(client(&world, c).resets, 1);
    assert_eq!(echo_server(&world, server).resets, 1);
    assert!(world.stats().coverage(CONNECTION_RESET_BY_STALL) >= 1);
    assert!(
        client(&world, c).connect_failures > 0,
        "reconnects time out while cut off"
    );
    world.heal().unwrap();
    world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap();
    world.run_for(Duration::from_secs(1)).unwrap();
    assert_eq!(
        world.live_connections(),
        0,
        "{}",
        world.describe_connections()
    );
}

#[test]
fn one_way_partition_stalls_one_direction() {
    let (mut world, server, clients) = echo_world(quiet_config(9), 1, 1_000_000, 1);
    let c = clients[0];
    world.schedule_fault(
        secs(1),
        FaultAction::OneWayPartition {
            from: server,
            to: c,
            duration: Duration::from_secs(2),
        },
    );
    world.run_until(secs(1) + ms(100)).unwrap();
    let echoed = echo_server(&world, server).bytes_echoed;
    let received = client(&world, c).data_events;
    world.run_until(secs(2)).unwrap();
    assert!(
        echo_server(&world, server).bytes_echoed > echoed,
        "client → server still flows"
    );
    assert_eq!(
        client(&world, c).data_events,
        received,
        "server → client is cut"
    );
    world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap();
}

#[test]
fn hold_then_release_delivers_everything() {
    let (mut world, _server, clients) = echo_world(quiet_config(10), 1, 1_000_000, 1);
    world.schedule_fault(
        secs(1),
        FaultAction::HoldRelease {
            pick: 0,
            duration: Duration::from_secs(2),
        },
    );
    world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap();
    let stats = world.stats();
    assert_eq!(stats.faults(FaultKind::HoldRelease), 1);
    assert!(stats.coverage(HELD_THEN_RELEASED) > 0, "{stats}");
}

/// Bytes queued while a fault holds them back, then `close`: once the fault ends (on its own or
/// by `heal`) the peer gets every byte and then `Eof` within a few seconds, whatever the fault.
#[test]
fn queued_bytes_then_close_reach_the_peer_with_eof_once_faults_end() {
    const TOTAL: u64 = 200_000;
    let long = Duration::from_secs(60);
    let short = Duration::from_secs(1);
    let cases = |r: HostId, s: HostId| {
        [
            // A slow consumer takes ~100 s to absorb TOTAL at this rate: its backlog must flush
            // when the throttle ends, not when its rate would have got through it.
            FaultAction::SlowConsumer {
                host: r,
                bytes_per_sec: 2_000,
                duration: short,
            },
            FaultAction::SlowConsumer {
                host: r,
                bytes_per_sec: 2_000,
                duration: long,
            },
            FaultAction::HoldRelease {
                pick: 0,
                duration: short,
            },
            FaultAction::HoldRelease {
                pick: 0,
                duration: long,
            },
            FaultAction::Partition {
                a: s,
                b: r,
                duration: short,
            },
            FaultAction::OneWayPartition {
                from: s,
                to: r,
                duration: long,
            },
            FaultAction::Isolate {
                host: r,
                duration: short,
            },
        ]
    };
    for i in 0..cases(HostId(0), HostId(1)).len() {
        let mut world = World::new(quiet_config(40 + i as u64));
        let r = world.add_host("collector", Collector::default(), HostOptions::new());
        let s = world.add_host(
            "streamer",
            Streamer::new(r, TOTAL, 10_000, ms(50)),
            HostOptions::new(),
        );
        let fault = cases(r, s)[i].clone();
        world.schedule_fault(Instant::ZERO + ms(200), fault.clone());
        // Long faults are cut short by `heal` at 3 s; short ones end by themselves before.
        world.run_until(secs(3)).unwrap();
        assert!(
            world.host::<Streamer>(s).unwrap().closed,
            "{fault}: sent all"
        );
        world.heal().unwrap();
        let ended = |w: &World| w.host::<Collector>(r).unwrap().ended();
        if let Err(e) = world.run_until_quiet(secs(8), ended) {
            let c = world.host::<Collector>(r).unwrap();
            panic!(
                "{fault}: {e}: received {} of {TOTAL}\n{}",
                c.received,
                world.describe_connections()
            );
        }
        let c = world.host::<Collector>(r).unwrap();
        assert!(c.eof && !c.reset, "{fault}: a clean end");
        assert_eq!(c.received, TOTAL, "{fault}: every byte before the Eof");
        assert_eq!(world.host::<Streamer>(s).unwrap().resets, 0, "{fault}");
        world.run_for(Duration::from_secs(1)).unwrap();
        assert_eq!(
            world.live_connections(),
            0,
            "{fault}: {}",
            world.describe_connections()
        );
    }
}

#[test]
fn crash_resets_peers_and_restart_rebuilds() {
    let (mut world, server, clients) = echo_world(quiet_config(11), 3, 300_000, 1);
    world.schedule_fault(
        secs(1),
        FaultAction::CrashRestart {
            host: server,
            restart_after: Duration::from_secs(1),
        },
    );
    world.run_until(secs(1) + ms(100)).unwrap();
    assert!(!world.is_up(server));
    for c in &clients {
        assert_eq!(
            client(&world, *c).resets,
            1,
            "peer of a crashed host is reset"
        );
    }
    world.run_until(secs(3)).unwrap();
    assert!(world.is_up(server));
    assert_eq!(echo_server(&world, server).crashes, 1);
    assert_eq!(echo_server(&world, server).restarts, 1);
    world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap();

    // A crashed client: the server's end is reset.
    let (mut world, server, clients) = echo_world(quiet_config(12), 1, 300_000, 1);
    world.schedule_fault(
        secs(1),
        FaultAction::CrashRestart {
            host: clients[0],
            restart_after: Duration::from_secs(1),
        },
    );
    world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap();
    assert_eq!(world.host::<EchoServer>(server).unwrap().resets, 1);
    assert_eq!(client(&world, clients[0]).restarts, 1);
}

#[test]
fn refused_and_timed_out_connects() {
    // No server listening: refused. Server partitioned away: timeout.
    let mut world = World::new(quiet_config(13));
    let idle = world.add_host("idle", Recorder::default(), HostOptions::new());
    let c = world.add_host(
        "client",
        EchoClient::new(idle, 10, 1),
        HostOptions::new().start_at(Instant::ZERO + ms(1)),
    );
    world.run_until(secs(1)).unwrap();
    assert!(client(&world, c).connect_failures >= 1);
    assert!(world.stats().connections_refused >= 1);

    let (mut world, server, clients) = echo_world(quiet_config(14), 1, 10, 1);
    world.schedule_fault(
        Instant::ZERO,
        FaultAction::Isolate {
            host: server,
            duration: Duration::from_secs(5),
        },
    );
    world.run_until(secs(4)).unwrap();
    assert!(world.stats().connections_timed_out >= 1);
    assert_eq!(client(&world, clients[0]).completed, 0);
    world
        .run_until_quiet(secs(30), |w| all_done(w, &clients))
        .unwrap();
}

#[test]
fn pause_delays_events_in_order() {
    let mut config = quiet_config(15);
    config.net.latency = LatencyModel::fixed(ms(1));
    config.net.datagram = DatagramConfig {
        drop_probability: 0.0,
        duplicate_probability: 0.0,
        reorder_probability: 0.0,
        reorder_delay_max: Duration::ZERO,
    };
    config.random_clocks = false;
    let mut world = World::new(config);
    let rec = world.add_host("recorder", Recorder::default(), HostOptions::new());
    world.add_host(
        "sender",
        DatagramSender::new(rec, 300, ms(10)),
        HostOptions::new().start_at(Instant::ZERO + ms(1)),
    );
    world.schedule_fault(
        secs(1),
        FaultAction::Pause {
            host: rec,
            duration: Duration::from_secs(1),
        },
    );
    world.run_until(secs(5)).unwrap();
    let log = &world.host::<Recorder>(rec).unwrap().log;
    let seqs: Vec<u64> = log.iter().filter_map(|(_, _, s)| *s).collect();
    assert_eq!(
        seqs,
        (0..300).collect::<Vec<_>>(),
        "all delivered, in order"
    );
    assert!(
        log.iter().all(|(t, _, _)| *t <= secs(1) || *t >= secs(2)),
        "nothing handled while paused"
    );
    let at_resume = log.iter().filter(|(t, _, _)| *t == secs(2)).count();
    assert!(at_resume >= 95, "the backlog lands at resume: {at_resume}");
    assert!(world.stats().events_deferred >= 95);
}

#[test]
fn skewed_drifting_clocks_never_fire_timers_early() {
    let mut config = quiet_config(16);
    config.faults = FaultMix::only(&[FaultKind::ClockSkew, FaultKind::ClockDrift])
        .with_weight(FaultKind::Pause, 1);
    config.faults.drift_ppm_max = 200_000;
    let mut world = World::new(config);
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let clock = ClockSpec {
            offset_ns: i * 123_456_789_011,
            drift_ppm: [-300_000, -1, 0, 7, 1_000, 400_000][i as usize],
        };
        let period = Duration::from_micros(700 + 1_300 * i);
        ids.push(world.add_host(
            format!("ticker{i}"),
            Ticker::new(period),
            HostOptions::new().clock(clock),
        ));
    }
    world.run_chaos(secs(60)).unwrap();
    let stats = world.stats();
    assert!(stats.faults(FaultKind::ClockSkew) > 5, "{stats}");
    assert!(stats.faults(FaultKind::ClockDrift) > 5, "{stats}");
    assert!(stats.timer_checks > 100_000, "{stats}");
    assert_eq!(stats.timer_checks, stats.timers_fired);
    for id in ids {
        assert!(world.host::<Ticker>(id).unwrap().fired > 1_000);
    }
}

#[test]
fn datagram_loss_duplication_and_reordering_match_probabilities() {
    let mut config = quiet_config(17);
    config.net.datagram = DatagramConfig {
        drop_probability: 0.1,
        duplicate_probability: 0.05,
        reorder_probability: 0.1,
        reorder_delay_max: ms(50),
    };
    config.net.latency = LatencyModel::fixed(ms(2));
    let mut world = World::new(config);
    let rec = world.add_host("recorder", Recorder::default(), HostOptions::new());
    let n = 20_000;
    world.add_host(
        "sender",
        DatagramSender::new(rec, n, ms(1)),
        HostOptions::new().start_at(Instant::ZERO + ms(1)),
    );
    world.run_until(secs(30)).unwrap();
    let seqs: Vec<u64> = world
        .host::<Recorder>(rec)
        .unwrap()
        .log
        .iter()
        .filter_map(|(_, _, s)| *s)
        .collect();
    let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let lost = 1.0 - distinct.len() as f64 / n as f64;
    let dup = (seqs.len() - distinct.len()) as f64 / distinct.len() as f64;
    let out_of_order = seqs.windows(2).filter(|w| w[1] < w[0]).count() as f64 / seqs.len() as f64;
    assert!((0.09..0.11).contains(&lost), "loss {lost}");
    assert!((0.04..0.06).contains(&dup), "duplication {dup}");
    // A copy delayed up to 50 ms at 1 ms spacing lands behind later ones almost always.
    assert!(
        (0.07..0.13).contains(&out_of_order),
        "reordered {out_of_order}"
    );
    let stats = world.stats();
    assert_eq!(stats.datagrams_sent, n);
    assert_eq!(stats.datagrams_delivered, seqs.len() as u64);
}

#[test]
fn partitions_drop_datagrams() {
    let mut config = quiet_config(18);
    config.net.datagram.drop_probability = 0.0;
    config.net.datagram.duplicate_probability = 0.0;
    let mut world = World::new(config);
    let rec = world.add_host("recorder", Recorder::default(), HostOptions::new());
    let snd = world.add_host(
        "sender",
        DatagramSender::new(rec, 1_000, ms(10)),
        HostOptions::new(),
    );
    world.schedule_fault(
        secs(2),
        FaultAction::OneWayPartition {
            from: snd,
            to: rec,
            duration: Duration::from_secs(3),
        },
    );
    world.run_until(secs(20)).unwrap();
    let got = world.host::<Recorder>(rec).unwrap().log.len() as u64 - 1;
    let blocked = world.stats().datagrams_blocked;
    assert!((290..=310).contains(&blocked), "blocked {blocked}");
    assert_eq!(got + blocked, 1_000);
}

/// A chaos run of echo clients under every fault kind, then heal and liveness.
fn chaos_run(seed: u64, trace: TraceMode) -> World {
    let mut config = WorldConfig::new(seed);
    config.trace = trace;
    config.knobs.allow_bytewise = false;
    config.net.stall_reset_after = Duration::from_secs(3);
    let (mut world, _server, clients) = echo_world(config, 6, 60_000, 1_000);
    world
        .run_chaos(secs(40))
        .unwrap_or_else(|e| panic!("{e}\n{}", world.describe()));
    world.heal().unwrap();
    // Liveness: after heal every client finishes at least one fresh transfer.
    for c in &clients {
        let cl = world.host_mut::<EchoClient>(*c).unwrap();
        cl.rounds = cl.completed + 2;
    }
    world
        .run_until_quiet(secs(120), |w| all_done(w, &clients))
        .unwrap_or_else(|e| {
            let states: Vec<String> = clients
                .iter()
                .map(|c| format!("{:?}", world.host::<EchoClient>(*c)))
                .collect();
            let tail: Vec<&str> = world.trace_lines().collect();
            let tail = tail[tail.len().saturating_sub(60)..].join("\n");
            panic!(
                "{e}\n{}\n{}\n{}\n{tail}",
                world.describe(),
                world.describe_connections(),
                states.join("\n")
            )
        });
    world
}

#[test]
fn chaos_then_heal_reaches_liveness_and_bites() {
    let mut total = SimStats::default();
    for seed in 100..106 {
        let world = chaos_run(seed, TraceMode::Off);
        let s = world.stats();
        for (k, v) in &s.faults_injected {
            *total.faults_injected.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &s.coverage {
            total.count(k, *v);
        }
        total.connections_reset += s.connections_reset;
        total.stalls += s.stalls;
    }
    for kind in FaultKind::ALL {
        assert!(total.faults(kind) > 0, "{kind} never injected:\n{total}");
    }
    for point in [
        PARTITION_HEALED_WITH_DATA_IN_FLIGHT,
        CONNECTION_RESET_BY_STALL,
        HELD_THEN_RELEASED,
    ] {
        assert!(total.coverage(point) > 0, "{point} never reached:\n{total}");
    }
    assert!(total.connections_reset > 0 && total.stalls > 0);
}

#[test]
fn same_seed_same_trace_hash_different_seeds_differ() {
    let a = chaos_run(7, TraceMode::Off);
    let b = chaos_run(7, TraceMode::Ring(100));
    assert_eq!(a.trace_hash(), b.trace_hash());
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.fault_schedule(), b.fault_schedule());
    assert_eq!(b.trace_lines().count(), 100);
    let c = chaos_run(8, TraceMode::Ring(1000));
    assert_ne!(a.trace_hash(), c.trace_hash());
    assert_ne!(a.fault_schedule(), c.fault_schedule());
}

#[test]
fn fault_schedule_regenerates_identically() {
    let schedule = |seed| {
        let (mut world, _, _) = echo_world(WorldConfig::new(seed), 5, 10, 1);
        world.generate_faults(secs(300));
        (world.fault_schedule().clone(), world.describe())
    };
    let (a, da) = schedule(21);
    let (b, db) = schedule(21);
    assert_eq!(a, b);
    assert_eq!(da, db);
    assert!(a.entries.len() > 100);
    assert!(da.contains("TUNNOX_SIM_SEED=21"), "{da}");
    assert_ne!(a, schedule(22).0);
}

#[test]
fn non_crashable_hosts_are_spared() {
    let mut config = WorldConfig::new(30);
    config.faults = FaultMix::only(&[FaultKind::CrashRestart, FaultKind::Partition]);
    let mut world = World::new(config);
    let server = world.add_host(
        "server",
        EchoServer::default(),
        HostOptions::new().faults(HostFaults::NONE),
    );
    let c = world.add_host(
        "client",
        EchoClient::new(server, 1_000, 1_000),
        HostOptions::new().faults(HostFaults::NONE),
    );
    world.run_chaos(secs(30)).unwrap();
    assert!(world.fault_schedule().entries.is_empty());
    assert_eq!(world.host::<EchoServer>(server).unwrap().crashes, 0);
    assert_eq!(client(&world, c).resets, 0);
}

#[test]
fn global_checker_runs_and_can_fail() {
    let (mut world, _server, clients) = echo_world(quiet_config(31), 2, 10_000, 1);
    let c0 = clients[0];
    world.set_checker(move |w| {
        let cl = w.host::<EchoClient>(c0).ok_or("no client")?;
        if cl.completed > 0 {
            return Err("client 0 finished".to_string());
        }
        Ok(())
    });
    let err = world
        .run_until_quiet(secs(60), |w| all_done(w, &clients))
        .unwrap_err();
    assert!(matches!(err, SimError::Checker { .. }), "{err}");
    assert!(world.stats().checker_runs > 10);
}

#[test]
#[ignore = "measures wall-clock speed; run with --release -- --ignored --nocapture"]
fn speed_events_per_second() {
    let mut config = quiet_config(1);
    config.faults = FaultMix::default();
    config.net.stall_reset_after = Duration::from_secs(3);
    let (mut world, _server, clients) = echo_world(config, 100, 1_000_000, 1_000);
    for c in &clients {
        let cl = world.host_mut::<EchoClient>(*c).unwrap();
        cl.chunk_max = 512;
        cl.send_interval = ms(2);
    }
    let started = std::time::Instant::now();
    world.run_chaos(secs(60)).unwrap();
    let wall = started.elapsed();
    let stats = world.stats();
    let events = stats.events_processed;
    println!(
        "speed: {events} events ({} host events) in {:.3}s wall = {:.0} events/s, {:.0} host events/s; virtual 60s; trace {:016x}\n{stats}",
        stats.host_events,
        wall.as_secs_f64(),
        events as f64 / wall.as_secs_f64(),
        stats.host_events as f64 / wall.as_secs_f64(),
        world.trace_hash()
    );
}

#[test]
#[ignore = "long seed sweep; TUNNOX_SIM_SEEDS=<n> sets how many seeds"]
fn chaos_seed_sweep() {
    let seeds: u64 = std::env::var("TUNNOX_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 1_000..1_000 + seeds {
        let world = chaos_run(seed, TraceMode::Ring(2_000));
        assert!(world.stats().host_events > 0, "seed {seed}");
    }
}
