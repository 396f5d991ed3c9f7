//! `tunnox admin clients …`: registered and anonymous clients, their sessions and credentials.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use super::error::AdminError;
use super::http::Api;
use super::output::{Column, Output, text, time};
use super::{ListArgs, fetch_list, mappings};

/// Clients.
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// List clients.
    List {
        /// Only this user's clients.
        #[arg(long, value_name = "ID")]
        user: Option<u64>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one client.
    Get {
        /// The client's id.
        id: u64,
    },
    /// Register a client; prints its id and secret (shown only this once).
    Create {
        /// Its label.
        #[arg(long)]
        label: Option<String>,
        /// The user that owns it.
        #[arg(long, value_name = "USER")]
        owner: Option<u64>,
        /// Also write the id and secret to FILE (mode 0600) for `tunnox client --credentials`.
        #[arg(long, value_name = "FILE")]
        credentials_out: Option<PathBuf>,
    },
    /// Change a client's label, owner or status.
    Update {
        /// The client's id.
        id: u64,
        /// Its new label.
        #[arg(long)]
        label: Option<String>,
        /// Its new owner.
        #[arg(long, value_name = "USER", conflicts_with = "no_owner")]
        owner: Option<u64>,
        /// Make it owned by no user.
        #[arg(long)]
        no_owner: bool,
        /// `active` or `disabled`.
        #[arg(long, value_parser = ["active", "disabled"])]
        status: Option<String>,
    },
    /// Delete a client, with its mappings; its session is closed.
    Delete {
        /// The client's id.
        id: u64,
    },
    /// Close a client's session (it does not reconnect by itself).
    Disconnect {
        /// The client's id.
        id: u64,
    },
    /// Give a client a new secret (printed once); the old one stops working.
    ResetCredentials {
        /// The client's id.
        id: u64,
        /// Also write the id and new secret to FILE (mode 0600) for `tunnox client
        /// --credentials`.
        #[arg(long, value_name = "FILE")]
        credentials_out: Option<PathBuf>,
    },
    /// A client's mappings (as listener or target).
    Mappings {
        /// The client's id.
        id: u64,
        #[command(flatten)]
        list: ListArgs,
    },
}

/// The columns of a client list.
pub fn columns() -> [Column; 8] {
    [
        Column {
            title: "ID",
            cell: |c| text(&c["id"]),
        },
        Column {
            title: "LABEL",
            cell: |c| text(&c["label"]),
        },
        Column {
            title: "OWNER",
            cell: |c| text(&c["owner"]),
        },
        Column {
            title: "KIND",
            cell: |c| text(&c["kind"]),
        },
        Column {
            title: "STATUS",
            cell: |c| text(&c["status"]),
        },
        Column {
            title: "ONLINE",
            cell: |c| text(&c["online"]),
        },
        Column {
            title: "NODE",
            cell: |c| text(&c["node"]),
        },
        Column {
            title: "LAST SEEN",
            cell: |c| time(&c["last_seen"]),
        },
    ]
}

fn client_path(id: u64) -> String {
    format!("/clients/{id}")
}

/// Runs one `clients` command.
pub async fn run(command: ClientsCommand, api: &Api, out: &mut Output) -> Result<(), AdminError> {
    match command {
        ClientsCommand::List { user, list } => {
            let filters: Vec<(&str, String)> =
                user.map(|u| ("user", u.to_string())).into_iter().collect();
            let page = fetch_list(api, "/clients", &filters, &list).await?;
            out.list(&page, &columns());
        }
        ClientsCommand::Get { id } => {
            out.object(&api.call(Method::GET, &client_path(id), None).await?);
        }
        ClientsCommand::Create {
            label,
            owner,
            credentials_out,
        } => {
            let mut body = json!({});
            if let Some(label) = label {
                body["label"] = json!(label);
            }
            if let Some(owner) = owner {
                body["owner"] = json!(owner);
            }
            let data = api.call(Method::POST, "/clients", Some(&body)).await?;
            show_credentials(&data, credentials_out.as_deref(), out)?;
        }
        ClientsCommand::Update {
            id,
            label,
            owner,
            no_owner,
            status,
        } => {
            let mut body = json!({});
            if let Some(label) = label {
                body["label"] = json!(label);
            }
            if let Some(owner) = owner {
                body["owner"] = json!(owner);
            }
            if no_owner {
                body["owner"] = Value::Null;
            }
            if let Some(status) = status {
                body["status"] = json!(status);
            }
            if body.as_object().is_some_and(|m| m.is_empty()) {
                return Err(AdminError::Usage(
                    "nothing to change: give --label, --owner, --no-owner or --status".into(),
                ));
            }
            out.object(
                &api.call(Method::PATCH, &client_path(id), Some(&body))
                    .await?,
            );
        }
        ClientsCommand::Delete { id } => {
            let data = api.call(Method::DELETE, &client_path(id), None).await?;
            let gone = data["mappings_deleted"].as_u64().unwrap_or(0);
            out.message(
                &format!("deleted client {id} and its {gone} mapping(s)"),
                &data,
            );
        }
        ClientsCommand::Disconnect { id } => {
            let path = format!("{}/disconnect", client_path(id));
            let data = api.call(Method::POST, &path, None).await?;
            let sentence = if data["was_online"].as_bool() == Some(true) {
                format!("client {id} disconnected")
            } else {
                format!("client {id} was not online")
            };
            out.message(&sentence, &data);
        }
        ClientsCommand::ResetCredentials {
            id,
            credentials_out,
        } => {
            let path = format!("{}/reset-credentials", client_path(id));
            let data = api.call(Method::POST, &path, None).await?;
            show_credentials(&data, credentials_out.as_deref(), out)?;
        }
        ClientsCommand::Mappings { id, list } => {
            let path = format!("{}/mappings", client_path(id));
            let page = fetch_list(api, &path, &[], &list).await?;
            out.list(&page, &mappings::columns());
        }
    }
    Ok(())
}

/// Prints `{client, secret}` and, if asked, saves it as a credentials file for `tunnox client`.
fn show_credentials(
    data: &Value,
    credentials_out: Option<&Path>,
    out: &mut Output,
) -> Result<(), AdminError> {
    if let Some(path) = credentials_out {
        let (Some(client_id), Some(secret)) =
            (data["client"]["id"].as_u64(), data["secret"].as_str())
        else {
            return Err(AdminError::BadAnswer {
                method: "POST".into(),
                path: "/clients".into(),
                reason: "no client id and secret in the answer".into(),
            });
        };
        crate::client::save_credentials(
            path,
            &crate::client::SavedCredentials {
                client_id,
                secret: secret.to_owned(),
            },
        )
        .map_err(|e| AdminError::Usage(format!("--credentials-out: {e:#}")))?;
        out.notes.push(format!(
            "credentials saved to {} (run: tunnox client --credentials {} --server …)",
            path.display(),
            path.display()
        ));
    }
    if out.json {
        out.object(data);
    } else {
        let mut shown = data["client"].clone();
        if let Some(map) = shown.as_object_mut() {
            map.insert("secret".into(), data["secret"].clone());
        }
        out.object(&shown);
        out.notes
            .push("the secret is shown only now: keep it (or reset the credentials)".into());
    }
    Ok(())
}
