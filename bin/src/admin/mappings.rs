//! `tunnox admin mappings …`: where visitors enter, which client dials what.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::error::AdminError;
use super::http::Api;
use super::output::{Column, Output, text, time};
use super::{ListArgs, fetch_list, host_port, item_path, read_json_body, target_json};

/// Mappings.
#[derive(Debug, Subcommand)]
pub enum MappingsCommand {
    /// List mappings.
    List {
        /// Only this user's mappings.
        #[arg(long, value_name = "ID")]
        user: Option<u64>,
        /// Only mappings this client listens for or dials for.
        #[arg(long, value_name = "ID")]
        client: Option<u64>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one mapping.
    Get {
        /// The mapping's id (`m-…`).
        id: String,
    },
    /// Create a mapping, e.g. `--node-port 18080 --target-client 42 --target 127.0.0.1:8080`.
    Create(MappingSpec),
    /// Replace a mapping: flags change those parts of the current one, or --json-body gives
    /// the whole new body. Its clients get the new config.
    Update {
        /// The mapping's id (`m-…`).
        id: String,
        #[command(flatten)]
        spec: MappingSpec,
    },
    /// Delete a mapping: its tunnels end.
    Delete {
        /// The mapping's id (`m-…`).
        id: String,
    },
}

/// A mapping's parts, as flags; or the whole body with `--json-body`.
#[derive(Debug, Args)]
pub struct MappingSpec {
    /// Entry: the node listens on this public port.
    #[arg(long, value_name = "PORT", help_heading = "Entry (one of)")]
    node_port: Option<u16>,
    /// The address a --node-port binds [default: the node's].
    #[arg(
        long,
        value_name = "IP",
        requires = "node_port",
        help_heading = "Entry (one of)"
    )]
    bind: Option<String>,
    /// Entry: --listen-client listens on this `HOST:PORT` (or `PORT` on 127.0.0.1).
    #[arg(long, value_name = "ADDR", help_heading = "Entry (one of)")]
    client_port: Option<String>,
    /// Entry: --listen-client runs a SOCKS5 server on this `HOST:PORT`.
    #[arg(long, value_name = "ADDR", help_heading = "Entry (one of)")]
    socks5: Option<String>,
    /// Entry: the node routes HTTP requests for this host name.
    #[arg(long, value_name = "HOST", help_heading = "Entry (one of)")]
    http_host: Option<String>,
    /// The client that listens, for --client-port and --socks5.
    #[arg(long, value_name = "ID", help_heading = "Entry (one of)")]
    listen_client: Option<u64>,
    /// The client that dials the target.
    #[arg(long, value_name = "ID")]
    target_client: Option<u64>,
    /// What it dials: `HOST:PORT`, `PORT` (on 127.0.0.1) or `dynamic`.
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// The protocol [default: tcp].
    #[arg(long, value_parser = ["tcp", "udp", "http", "socks5"])]
    protocol: Option<String>,
    /// The user that owns the mapping.
    #[arg(long, value_name = "USER")]
    owner: Option<u64>,
    /// The whole request body as JSON, from FILE or `-` for stdin (options, expiry, …).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "node_port", "bind", "client_port", "socks5", "http_host", "listen_client",
            "target_client", "target", "protocol", "owner",
        ]
    )]
    json_body: Option<PathBuf>,
}

impl MappingSpec {
    /// The entry the flags describe, if they describe one.
    fn entry(&self) -> Result<Option<Value>, AdminError> {
        let given = [
            self.node_port.is_some(),
            self.client_port.is_some(),
            self.socks5.is_some(),
            self.http_host.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(AdminError::Usage(
                "give one entry: --node-port, --client-port, --socks5 or --http-host".into(),
            ));
        }
        let listen_client = || {
            self.listen_client.ok_or_else(|| {
                AdminError::Usage("--client-port and --socks5 need --listen-client ID".into())
            })
        };
        let entry = if let Some(port) = self.node_port {
            let mut entry = json!({ "kind": "node_port", "port": port });
            if let Some(bind) = &self.bind {
                entry["bind"] = json!(bind);
            }
            entry
        } else if let Some(addr) = &self.client_port {
            json!({ "kind": "client_port", "listen_client": listen_client()?,
                    "listen_addr": host_port(addr) })
        } else if let Some(addr) = &self.socks5 {
            json!({ "kind": "socks5", "listen_client": listen_client()?,
                    "listen_addr": host_port(addr) })
        } else if let Some(host) = &self.http_host {
            json!({ "kind": "http_host", "host": host })
        } else {
            if self.listen_client.is_some() {
                return Err(AdminError::Usage(
                    "--listen-client goes with --client-port or --socks5".into(),
                ));
            }
            return Ok(None);
        };
        if self.listen_client.is_some() && self.client_port.is_none() && self.socks5.is_none() {
            return Err(AdminError::Usage(
                "--listen-client goes with --client-port or --socks5".into(),
            ));
        }
        Ok(Some(entry))
    }

    /// The body of a new mapping.
    fn create_body(&self) -> Result<Value, AdminError> {
        if let Some(source) = &self.json_body {
            return read_json_body(source);
        }
        let missing = |what: &str| {
            AdminError::Usage(format!(
                "a mapping needs {what} (or give the whole body with --json-body FILE)"
            ))
        };
        let entry = self.entry()?.ok_or_else(|| {
            missing("an entry: --node-port, --client-port, --socks5 or --http-host")
        })?;
        let target_client = self
            .target_client
            .ok_or_else(|| missing("--target-client ID"))?;
        let target = self
            .target
            .as_deref()
            .ok_or_else(|| missing("--target HOST:PORT"))?;
        let mut body = json!({
            "entry": entry,
            "target_client": target_client,
            "target": target_json(target, "--target")?,
        });
        self.set_common(&mut body);
        Ok(body)
    }

    /// The body replacing `current`: its parts with the flags' changes.
    fn update_body(&self, current: &Value) -> Result<Value, AdminError> {
        if let Some(source) = &self.json_body {
            return read_json_body(source);
        }
        let mut body = json!({});
        for key in [
            "entry",
            "target_client",
            "target",
            "protocol",
            "options",
            "owner",
        ] {
            if let Some(value) = current.get(key) {
                body[key] = value.clone();
            }
        }
        let mut changed = false;
        if let Some(entry) = self.entry()? {
            body["entry"] = entry;
            changed = true;
        }
        if let Some(client) = self.target_client {
            body["target_client"] = json!(client);
            changed = true;
        }
        if let Some(target) = &self.target {
            body["target"] = target_json(target, "--target")?;
            changed = true;
        }
        changed |= self.protocol.is_some() || self.owner.is_some();
        self.set_common(&mut body);
        if !changed {
            return Err(AdminError::Usage(
                "nothing to change: give an entry, --target-client, --target, --protocol, \
                 --owner or --json-body"
                    .into(),
            ));
        }
        Ok(body)
    }

    fn set_common(&self, body: &mut Value) {
        if let Some(protocol) = &self.protocol {
            body["protocol"] = json!(protocol);
        }
        if let Some(owner) = self.owner {
            body["owner"] = json!(owner);
        }
    }
}

/// A mapping's entry in a few words, e.g. `node_port :18080` or `client_port 42@127.0.0.1:13306`.
fn entry_summary(entry: &Value) -> String {
    let kind = text(&entry["kind"]);
    match kind.as_str() {
        "node_port" => {
            let bind = entry["bind"].as_str().unwrap_or("");
            format!("node_port {bind}:{}", text(&entry["port"]))
        }
        "client_port" | "socks5" => format!(
            "{kind} {}@{}",
            text(&entry["listen_client"]),
            text(&entry["listen_addr"])
        ),
        "http_host" => format!("http_host {}", text(&entry["host"])),
        _ => text(entry),
    }
}

/// A target in a few words: `host:port` or `dynamic`.
pub fn target_summary(target: &Value) -> String {
    match target["kind"].as_str() {
        Some("fixed") => {
            let host = text(&target["host"]);
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("{host}:{}", text(&target["port"]))
        }
        Some(kind) => kind.to_owned(),
        None => text(target),
    }
}

/// The columns of a mapping list.
pub fn columns() -> [Column; 8] {
    [
        Column {
            title: "ID",
            cell: |m| text(&m["id"]),
        },
        Column {
            title: "ENTRY",
            cell: |m| entry_summary(&m["entry"]),
        },
        Column {
            title: "TARGET CLIENT",
            cell: |m| text(&m["target_client"]),
        },
        Column {
            title: "TARGET",
            cell: |m| target_summary(&m["target"]),
        },
        Column {
            title: "PROTOCOL",
            cell: |m| text(&m["protocol"]),
        },
        Column {
            title: "OWNER",
            cell: |m| text(&m["owner"]),
        },
        Column {
            title: "STATUS",
            cell: |m| text(&m["status"]),
        },
        Column {
            title: "EXPIRES",
            cell: |m| time(&m["expires_at"]),
        },
    ]
}

/// Runs one `mappings` command.
pub async fn run(command: MappingsCommand, api: &Api, out: &mut Output) -> Result<(), AdminError> {
    match command {
        MappingsCommand::List { user, client, list } => {
            let mut filters: Vec<(&str, String)> = Vec::new();
            if let Some(user) = user {
                filters.push(("user", user.to_string()));
            }
            if let Some(client) = client {
                filters.push(("client", client.to_string()));
            }
            let page = fetch_list(api, "/mappings", &filters, &list).await?;
            out.list(&page, &columns());
        }
        MappingsCommand::Get { id } => {
            out.object(
                &api.call(Method::GET, &item_path("/mappings", &id), None)
                    .await?,
            );
        }
        MappingsCommand::Create(spec) => {
            let body = spec.create_body()?;
            out.object(&api.call(Method::POST, "/mappings", Some(&body)).await?);
        }
        MappingsCommand::Update { id, spec } => {
            let path = item_path("/mappings", &id);
            let body = if spec.json_body.is_some() {
                spec.update_body(&Value::Null)?
            } else {
                let current = api.call(Method::GET, &path, None).await?;
                spec.update_body(&current)?
            };
            out.object(&api.call(Method::PUT, &path, Some(&body)).await?);
        }
        MappingsCommand::Delete { id } => {
            let data = api
                .call(Method::DELETE, &item_path("/mappings", &id), None)
                .await?;
            out.message(&format!("deleted mapping {id}"), &data);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MappingSpec {
        MappingSpec {
            node_port: None,
            bind: None,
            client_port: None,
            socks5: None,
            http_host: None,
            listen_client: None,
            target_client: Some(42),
            target: Some("127.0.0.1:8080".into()),
            protocol: None,
            owner: None,
            json_body: None,
        }
    }

    #[test]
    fn flags_make_the_bodies_of_each_entry_kind() {
        let node = MappingSpec {
            node_port: Some(18080),
            ..spec()
        };
        assert_eq!(
            node.create_body().unwrap(),
            json!({"entry": {"kind": "node_port", "port": 18080}, "target_client": 42,
                   "target": {"kind": "fixed", "host": "127.0.0.1", "port": 8080}})
        );
        let client = MappingSpec {
            client_port: Some("13306".into()),
            listen_client: Some(7),
            protocol: Some("udp".into()),
            ..spec()
        };
        let body = client.create_body().unwrap();
        assert_eq!(
            body["entry"],
            json!({"kind": "client_port", "listen_client": 7, "listen_addr": "127.0.0.1:13306"})
        );
        assert_eq!(body["protocol"], "udp");
        let no_listener = MappingSpec {
            client_port: Some("13306".into()),
            ..spec()
        };
        assert!(no_listener.create_body().is_err());
        let two = MappingSpec {
            node_port: Some(1),
            http_host: Some("a.example".into()),
            ..spec()
        };
        assert!(two.create_body().is_err());
        assert!(spec().create_body().is_err(), "an entry is needed");
    }

    #[test]
    fn an_update_keeps_what_the_flags_do_not_change() {
        let current = json!({"id": "m-1", "entry": {"kind": "http_host", "host": "a.example"},
            "target_client": 42, "target": {"kind": "dynamic"}, "protocol": "http",
            "options": {"compression": true}, "owner": 3, "status": "active", "created_at": 1});
        let retarget = MappingSpec {
            target_client: None,
            target: Some("10.0.0.2:80".into()),
            ..spec()
        };
        let body = retarget.update_body(&current).unwrap();
        assert_eq!(body["entry"], current["entry"]);
        assert_eq!(body["options"], current["options"]);
        assert_eq!(body["target"]["host"], "10.0.0.2");
        assert!(body.get("id").is_none() && body.get("status").is_none());
        let nothing = MappingSpec {
            target_client: None,
            target: None,
            ..spec()
        };
        assert!(nothing.update_body(&current).is_err());
    }

    #[test]
    fn entries_and_targets_read_in_a_few_words() {
        assert_eq!(
            entry_summary(&json!({"kind": "node_port", "port": 80})),
            "node_port :80"
        );
        assert_eq!(
            entry_summary(
                &json!({"kind": "socks5", "listen_client": 5, "listen_addr": "0.0.0.0:1080"})
            ),
            "socks5 5@0.0.0.0:1080"
        );
        assert_eq!(
            target_summary(&json!({"kind": "fixed", "host": "::1", "port": 22})),
            "[::1]:22"
        );
    }
}
