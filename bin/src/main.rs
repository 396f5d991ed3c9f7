//! The `tunnox` command: server, client, admin, sim, storage-server and quickstart.

// A command-line program: printing to stdout is its job.
#![allow(clippy::print_stdout)]

mod admin;
mod client;
mod config;
mod quickstart;
mod server;
mod sim;
mod storage_server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tunnox: NAT traversal and port mapping with clustered nodes.
#[derive(Debug, Parser)]
#[command(name = "tunnox", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads for sockets and TLS. The protocol state machine of a node or client runs
    /// on one task either way; more threads spread socket I/O and TLS over more cores. One
    /// measured fastest on a 2-core machine shared with the traffic's endpoints
    /// (bench/RESULTS.md).
    #[arg(
        long,
        global = true,
        env = "TUNNOX_THREADS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    threads: u16,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node that clients connect to.
    Server(server::ServerArgs),
    /// Run a client that keeps a session to a node and serves its mappings.
    Client(client::ClientArgs),
    /// Manage users, clients, mappings, codes and nodes through a node's management API.
    Admin(admin::AdminArgs),
    /// Run one deterministic simulation and print its summary.
    Sim(sim::SimArgs),
    /// Serve the StorageService over the embedded store.
    StorageServer(storage_server::StorageServerArgs),
    /// Start a node, two clients and an echo target on loopback and tunnel bytes through them.
    Quickstart,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let threads = usize::from(cli.threads);
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Sim(args) => sim::main(args)?,
        Command::Server(args) => runtime()?.block_on(server::run(args))?,
        Command::Client(args) => runtime()?.block_on(client::run(args))?,
        Command::Admin(args) => return Ok(runtime()?.block_on(admin::run(args))),
        Command::StorageServer(args) => runtime()?.block_on(storage_server::run(args))?,
        Command::Quickstart => {
            let report = runtime()?.block_on(quickstart::run())?;
            quickstart::print(&report);
        }
    }
    Ok(ExitCode::SUCCESS)
}
