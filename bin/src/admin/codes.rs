//! `tunnox admin codes …`: connection codes, one-time offers of a target client's service.

use clap::Subcommand;
use hyper::Method;
use serde_json::json;

use super::error::AdminError;
use super::http::Api;
use super::mappings::target_summary;
use super::output::{Column, Output, text, time};
use super::{ListArgs, fetch_list, host_port, item_path, target_json};

/// Connection codes.
#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// List connection codes.
    List {
        /// Only codes offering this client's services.
        #[arg(long, value_name = "ID")]
        client: Option<u64>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one code.
    Get {
        /// The code, `abc-def-123`.
        code: String,
    },
    /// Create a code offering a service that --target-client reaches.
    Create {
        /// The client that dials the target.
        #[arg(long, value_name = "ID")]
        target_client: u64,
        /// What it dials: `HOST:PORT` or `PORT` (on 127.0.0.1).
        #[arg(long, value_name = "TARGET")]
        target: Option<String>,
        /// The protocol [default: tcp].
        #[arg(long, value_parser = ["tcp", "udp", "socks5"])]
        protocol: Option<String>,
        /// Seconds the code can be activated.
        #[arg(long, value_name = "SECS")]
        activation_ttl_secs: Option<u64>,
        /// Seconds the mapping it creates lives.
        #[arg(long, value_name = "SECS")]
        mapping_ttl_secs: Option<u64>,
        /// What the code is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Revoke a code: it can no longer be activated.
    Revoke {
        /// The code.
        code: String,
    },
    /// Activate a code: --listen-client listens on --listen-addr for the offered service.
    Activate {
        /// The code.
        code: String,
        /// The client that listens.
        #[arg(long, value_name = "ID")]
        listen_client: u64,
        /// Where it listens: `HOST:PORT` or `PORT` (on 127.0.0.1).
        #[arg(long, value_name = "ADDR")]
        listen_addr: String,
    },
}

fn columns() -> [Column; 7] {
    [
        Column {
            title: "CODE",
            cell: |c| text(&c["code"]),
        },
        Column {
            title: "TARGET CLIENT",
            cell: |c| text(&c["target_client"]),
        },
        Column {
            title: "PROTOCOL",
            cell: |c| text(&c["protocol"]),
        },
        Column {
            title: "TARGET",
            cell: |c| target_summary(&c["target"]),
        },
        Column {
            title: "STATE",
            cell: |c| code_state(&c["state"]),
        },
        Column {
            title: "DEADLINE",
            cell: |c| time(&c["activation_deadline"]),
        },
        Column {
            title: "DESCRIPTION",
            cell: |c| text(&c["description"]),
        },
    ]
}

/// A code's state: `unused`, `used` or `revoked` (the API gives core's `{state, …}` form).
fn code_state(state: &serde_json::Value) -> String {
    text(state.get("state").unwrap_or(state))
}

/// Runs one `codes` command.
pub async fn run(command: CodesCommand, api: &Api, out: &mut Output) -> Result<(), AdminError> {
    match command {
        CodesCommand::List { client, list } => {
            let filters: Vec<(&str, String)> = client
                .map(|c| ("client", c.to_string()))
                .into_iter()
                .collect();
            let page = fetch_list(api, "/codes", &filters, &list).await?;
            out.list(&page, &columns());
        }
        CodesCommand::Get { code } => {
            out.object(
                &api.call(Method::GET, &item_path("/codes", &code), None)
                    .await?,
            );
        }
        CodesCommand::Create {
            target_client,
            target,
            protocol,
            activation_ttl_secs,
            mapping_ttl_secs,
            description,
        } => {
            let mut body = json!({ "target_client": target_client });
            if let Some(target) = target {
                body["target"] = target_json(&target, "--target")?;
            }
            if let Some(protocol) = protocol {
                body["protocol"] = json!(protocol);
            }
            if let Some(secs) = activation_ttl_secs {
                body["activation_ttl_secs"] = json!(secs);
            }
            if let Some(secs) = mapping_ttl_secs {
                body["mapping_ttl_secs"] = json!(secs);
            }
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            out.object(&api.call(Method::POST, "/codes", Some(&body)).await?);
        }
        CodesCommand::Revoke { code } => {
            let path = format!("{}/revoke", item_path("/codes", &code));
            out.object(&api.call(Method::POST, &path, None).await?);
        }
        CodesCommand::Activate {
            code,
            listen_client,
            listen_addr,
        } => {
            let path = format!("{}/activate", item_path("/codes", &code));
            let body = json!({ "listen_client": listen_client,
                               "listen_addr": host_port(&listen_addr) });
            out.object(&api.call(Method::POST, &path, Some(&body)).await?);
        }
    }
    Ok(())
}
