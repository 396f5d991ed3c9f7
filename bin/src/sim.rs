//! `tunnox sim`: run one deterministic simulation and print what happened.

use anyhow::{Context, bail};
use clap::Args;
use tunnox_core::planted::PlantedBug;
use tunnox_runtime_sim::{Duration, FaultKind, FaultMix};
use tunnox_sim_tests::scenario::{ScenarioConfig, run};

/// Options of `tunnox sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The seed; the same seed replays the same run, event for event.
    #[arg(long)]
    seed: u64,
    /// Scenario: `small` (10 clients, the CI sweep) or `standard` (100 clients, 1,000 streams).
    #[arg(long, default_value = "small")]
    scenario: String,
    /// Client agents.
    #[arg(long)]
    clients: Option<u32>,
    /// Mappings.
    #[arg(long)]
    mappings: Option<u32>,
    /// Visitor hosts.
    #[arg(long)]
    visitors: Option<u32>,
    /// Connections per visitor.
    #[arg(long)]
    connections: Option<u32>,
    /// Largest bytes one visitor connection sends.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Chaos phase length in virtual seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Faults: `all`, `none`, or a comma list of kinds (partition, isolate, one_way_partition,
    /// swizzle_clog, hold_release, latency_spike, connection_reset, crash_restart, pause,
    /// clock_skew, clock_drift, slow_consumer).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Draw no BUGGIFY knobs.
    #[arg(long)]
    no_knobs: bool,
    /// Allow the knob that delivers stream bytes one at a time.
    #[arg(long)]
    bytewise: bool,
    /// No mapping changes while traffic flows.
    #[arg(long)]
    no_admin_changes: bool,
    /// Plant a bug (needs a build with `--features planted`): drop-window-update,
    /// fin-not-propagated, heartbeat-timeout-off-by-one, frame-length-off-by-one.
    #[arg(long)]
    planted: Option<String>,
    /// Print the event trace (on failure, the last lines; TUNNOX_SIM_TRACE_LINES sets how many).
    #[arg(long)]
    trace: bool,
}

fn fault_mix(spec: &str) -> anyhow::Result<FaultMix> {
    match spec {
        "all" => Ok(FaultMix::default()),
        "none" => Ok(FaultMix::none()),
        list => {
            let mut kinds = Vec::new();
            for name in list.split(',').map(str::trim) {
                let kind = FaultKind::ALL
                    .into_iter()
                    .find(|k| k.name() == name)
                    .with_context(|| format!("unknown fault kind `{name}`"))?;
                kinds.push(kind);
            }
            Ok(FaultMix::only(&kinds))
        }
    }
}

/// Runs the simulation; an error means the run failed (after printing why and how to replay).
pub fn main(args: SimArgs) -> anyhow::Result<()> {
    let mut config = match args.scenario.as_str() {
        "small" => ScenarioConfig::small(args.seed),
        "standard" => ScenarioConfig::standard(args.seed),
        other => bail!("unknown scenario `{other}` (small, standard)"),
    };
    config.clients = args.clients.unwrap_or(config.clients);
    config.mappings = args.mappings.unwrap_or(config.mappings);
    config.visitors = args.visitors.unwrap_or(config.visitors);
    config.connections_per_visitor = args.connections.unwrap_or(config.connections_per_visitor);
    config.max_bytes = args.max_bytes.unwrap_or(config.max_bytes);
    if let Some(secs) = args.duration {
        config.chaos = Duration::from_secs(secs);
    }
    config.faults = fault_mix(&args.faults)?;
    config.knobs = !args.no_knobs;
    config.bytewise = args.bytewise;
    config.admin_changes = !args.no_admin_changes;
    config.trace = args.trace;
    if let Some(name) = &args.planted {
        let bug =
            PlantedBug::from_name(name).with_context(|| format!("unknown planted bug `{name}`"))?;
        if !cfg!(feature = "planted") {
            bail!(
                "this build has no planted bugs: build with `cargo run --features planted -- sim ...`"
            );
        }
        config.planted = Some(bug);
    }
    let started = std::time::Instant::now();
    match run(&config) {
        Ok(report) => {
            let wall = started.elapsed();
            let simulated = config.chaos + report.healed_after;
            for line in &report.trace {
                println!("{line}");
            }
            print!("{}", report.summary());
            println!(
                "wall {:.3}s  {:.0} events/s  {:.1} simulated s per wall s",
                wall.as_secs_f64(),
                report.stats.events_processed as f64 / wall.as_secs_f64().max(1e-9),
                simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9)
            );
            Ok(())
        }
        Err(failure) => {
            println!("{failure}");
            println!(
                "replay: tunnox sim --seed {} --scenario {}{}",
                args.seed,
                args.scenario,
                args.planted
                    .as_ref()
                    .map(|b| format!(" --planted {b}"))
                    .unwrap_or_default()
            );
            bail!("simulation failed at seed {}", args.seed)
        }
    }
}
