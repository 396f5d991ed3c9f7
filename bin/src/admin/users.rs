//! `tunnox admin users …`: users, their quotas and their usage.

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::error::AdminError;
use super::http::Api;
use super::output::{Column, Output, byte_limit, text, time};
use super::{ListArgs, clients, fetch_list, mappings};

/// Users and their quotas.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users.
    List(ListArgs),
    /// Show one user.
    Get {
        /// The user's id.
        id: u64,
    },
    /// Create a user (quota fields not given keep the node's defaults).
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Change a user's name, quota or state (quota fields not given keep their value).
    Update {
        /// The user's id.
        id: u64,
        /// Its new name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        quota: QuotaArgs,
        /// Disable the user.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Enable the user.
        #[arg(long)]
        enable: bool,
    },
    /// Delete a user (refused while it owns clients or mappings).
    Delete {
        /// The user's id.
        id: u64,
    },
    /// A user's quota.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// A user's usage: clients, mappings, bytes.
    Stats {
        /// The user's id.
        id: u64,
    },
    /// A user's clients.
    Clients {
        /// The user's id.
        id: u64,
        #[command(flatten)]
        list: ListArgs,
    },
    /// A user's mappings.
    Mappings {
        /// The user's id.
        id: u64,
        #[command(flatten)]
        list: ListArgs,
    },
}

/// `tunnox admin users quota …`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a user's quota.
    Get {
        /// The user's id.
        id: u64,
    },
    /// Change a user's quota (fields not given keep their value).
    Set {
        /// The user's id.
        id: u64,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

/// Quota fields; each one given replaces that field.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// Clients the user may own.
    #[arg(long, value_name = "N")]
    max_clients: Option<u32>,
    /// Mappings the user may own.
    #[arg(long, value_name = "N")]
    max_mappings: Option<u32>,
    /// Concurrent tunnelled connections over all its mappings.
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Bandwidth over all its mappings, bytes per second (0 = unlimited).
    #[arg(long, value_name = "BYTES")]
    bandwidth_bytes_per_sec: Option<u64>,
    /// Traffic per calendar month, bytes (0 = unlimited).
    #[arg(long, value_name = "BYTES")]
    monthly_traffic_bytes: Option<u64>,
}

impl QuotaArgs {
    fn is_empty(&self) -> bool {
        self.max_clients.is_none()
            && self.max_mappings.is_none()
            && self.max_connections.is_none()
            && self.bandwidth_bytes_per_sec.is_none()
            && self.monthly_traffic_bytes.is_none()
    }

    /// `base` (a whole quota) with the given fields replaced.
    fn applied_to(&self, mut base: Value) -> Value {
        let mut set = |name: &str, value: Option<u64>| {
            if let (Some(value), Some(map)) = (value, base.as_object_mut()) {
                map.insert(name.into(), json!(value));
            }
        };
        set("max_clients", self.max_clients.map(u64::from));
        set("max_mappings", self.max_mappings.map(u64::from));
        set("max_connections", self.max_connections.map(u64::from));
        set("bandwidth_bytes_per_sec", self.bandwidth_bytes_per_sec);
        set("monthly_traffic_bytes", self.monthly_traffic_bytes);
        base
    }
}

/// The core's default quota, the base of a new user's.
fn default_quota() -> Value {
    serde_json::to_value(tunnox_core::control::Quota::default())
        .unwrap_or_else(|_| Value::Object(Default::default()))
}

fn columns() -> [Column; 7] {
    [
        Column {
            title: "ID",
            cell: |u| text(&u["id"]),
        },
        Column {
            title: "NAME",
            cell: |u| text(&u["name"]),
        },
        Column {
            title: "DISABLED",
            cell: |u| text(&u["disabled"]),
        },
        Column {
            title: "CLIENTS",
            cell: |u| text(&u["quota"]["max_clients"]),
        },
        Column {
            title: "MAPPINGS",
            cell: |u| text(&u["quota"]["max_mappings"]),
        },
        Column {
            title: "MONTHLY",
            cell: |u| byte_limit(&u["quota"]["monthly_traffic_bytes"]),
        },
        Column {
            title: "CREATED",
            cell: |u| time(&u["created_at"]),
        },
    ]
}

fn user_path(id: u64) -> String {
    format!("/users/{id}")
}

/// Runs one `users` command.
pub async fn run(command: UsersCommand, api: &Api, out: &mut Output) -> Result<(), AdminError> {
    match command {
        UsersCommand::List(list) => {
            let page = fetch_list(api, "/users", &[], &list).await?;
            out.list(&page, &columns());
        }
        UsersCommand::Get { id } => {
            out.object(&api.call(Method::GET, &user_path(id), None).await?);
        }
        UsersCommand::Create {
            name,
            quota,
            disabled,
        } => {
            let mut body = json!({ "name": name });
            if !quota.is_empty() {
                body["quota"] = quota.applied_to(default_quota());
            }
            if disabled {
                body["disabled"] = json!(true);
            }
            out.object(&api.call(Method::POST, "/users", Some(&body)).await?);
        }
        UsersCommand::Update {
            id,
            name,
            quota,
            disable,
            enable,
        } => {
            let mut body = json!({});
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if !quota.is_empty() {
                // PATCH takes a whole quota: start from the current one.
                let user = api.call(Method::GET, &user_path(id), None).await?;
                body["quota"] = quota.applied_to(user["quota"].clone());
            }
            if disable || enable {
                body["disabled"] = json!(disable);
            }
            if body.as_object().is_some_and(|m| m.is_empty()) {
                return Err(AdminError::Usage(
                    "nothing to change: give --name, a quota flag, --disable or --enable".into(),
                ));
            }
            out.object(&api.call(Method::PATCH, &user_path(id), Some(&body)).await?);
        }
        UsersCommand::Delete { id } => {
            let data = api.call(Method::DELETE, &user_path(id), None).await?;
            out.message(&format!("deleted user {id}"), &data);
        }
        UsersCommand::Quota(QuotaCommand::Get { id }) => {
            let path = format!("{}/quota", user_path(id));
            out.object(&api.call(Method::GET, &path, None).await?);
        }
        UsersCommand::Quota(QuotaCommand::Set { id, quota }) => {
            if quota.is_empty() {
                return Err(AdminError::Usage(
                    "nothing to change: give at least one quota flag (see --help)".into(),
                ));
            }
            let path = format!("{}/quota", user_path(id));
            let current = api.call(Method::GET, &path, None).await?;
            let body = quota.applied_to(current);
            out.object(&api.call(Method::PUT, &path, Some(&body)).await?);
        }
        UsersCommand::Stats { id } => {
            let path = format!("{}/stats", user_path(id));
            out.object(&api.call(Method::GET, &path, None).await?);
        }
        UsersCommand::Clients { id, list } => {
            let path = format!("{}/clients", user_path(id));
            let page = fetch_list(api, &path, &[], &list).await?;
            out.list(&page, &clients::columns());
        }
        UsersCommand::Mappings { id, list } => {
            let path = format!("{}/mappings", user_path(id));
            let page = fetch_list(api, &path, &[], &list).await?;
            out.list(&page, &mappings::columns());
        }
    }
    Ok(())
}
