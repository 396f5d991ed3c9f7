//! `tunnox admin stats [traffic]`: this node's live figures, and its traffic per mapping.

use clap::{Args, Subcommand};
use hyper::Method;

use super::error::AdminError;
use super::http::Api;
use super::output::{Column, Output, bytes, text};
use super::{ListArgs, fetch_list};

/// `tunnox admin stats`: the node's live figures, or a breakdown.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A breakdown instead of the node's totals.
    #[command(subcommand)]
    breakdown: Option<StatsCommand>,
}

/// Breakdowns of the node's figures.
#[derive(Debug, Subcommand)]
enum StatsCommand {
    /// Bytes and tunnels per mapping on this node since it started.
    Traffic(ListArgs),
}

fn traffic_columns() -> [Column; 4] {
    [
        Column {
            title: "MAPPING",
            cell: |t| text(&t["mapping"]),
        },
        Column {
            title: "TO TARGET",
            cell: |t| bytes(&t["bytes_to_target"]),
        },
        Column {
            title: "TO ENTRY",
            cell: |t| bytes(&t["bytes_to_entry"]),
        },
        Column {
            title: "TUNNELS",
            cell: |t| text(&t["tunnels"]),
        },
    ]
}

/// Runs `stats`.
pub async fn run(args: StatsArgs, api: &Api, out: &mut Output) -> Result<(), AdminError> {
    match args.breakdown {
        None => out.object(&api.call(Method::GET, "/stats", None).await?),
        Some(StatsCommand::Traffic(list)) => {
            let page = fetch_list(api, "/stats/traffic", &[], &list).await?;
            out.list(&page, &traffic_columns());
        }
    }
    Ok(())
}
