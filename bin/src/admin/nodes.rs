//! `tunnox admin nodes …`: the nodes of the cluster as the API's node sees them.

use clap::Subcommand;
use hyper::Method;

use super::error::AdminError;
use super::http::Api;
use super::output::{Column, Output, text};
use super::{ListArgs, fetch_list, item_path};

/// Nodes.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List the cluster's nodes.
    List(ListArgs),
    /// Show one node.
    Get {
        /// The node's id.
        id: String,
    },
}

fn columns() -> [Column; 5] {
    [
        Column {
            title: "ID",
            cell: |n| text(&n["id"]),
        },
        Column {
            title: "ADDR",
            cell: |n| text(&n["addr"]),
        },
        Column {
            title: "BRIDGE ADDR",
            cell: |n| text(&n["bridge_addr"]),
        },
        Column {
            title: "SELF",
            cell: |n| text(&n["self"]),
        },
        Column {
            title: "CLIENTS ONLINE",
            cell: |n| text(&n["clients_online"]),
        },
    ]
}

/// Runs one `nodes` command.
pub async fn run(command: NodesCommand, api: &Api, out: &mut Output) -> Result<(), AdminError> {
    match command {
        NodesCommand::List(list) => {
            let page = fetch_list(api, "/nodes", &[], &list).await?;
            out.list(&page, &columns());
        }
        NodesCommand::Get { id } => {
            out.object(
                &api.call(Method::GET, &item_path("/nodes", &id), None)
                    .await?,
            );
        }
    }
    Ok(())
}
