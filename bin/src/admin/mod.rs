//! `tunnox admin`: the management API from the command line. Tables for people, `--json` for
//! programs (the answer's `data`), and an exit code that says what failed (see
//! [`AdminError::exit_code`]).

mod clients;
mod codes;
mod error;
mod http;
mod mappings;
mod nodes;
mod output;
mod settings;
mod stats;
mod users;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use error::AdminError;
use http::{Api, encode_component};
use output::{Output, Page};
use settings::ConnectionArgs;

/// Options of `tunnox admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print the answer's data as pretty JSON instead of a table.
    #[arg(long, global = true, help_heading = "Admin options")]
    json: bool,
    /// What to manage.
    #[command(subcommand)]
    resource: Resource,
}

/// The API's resources.
#[derive(Debug, Subcommand)]
enum Resource {
    /// Users and their quotas.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Clients: list, create, disconnect, reset credentials.
    #[command(subcommand)]
    Clients(clients::ClientsCommand),
    /// Mappings: list, create, replace, delete.
    #[command(subcommand)]
    Mappings(mappings::MappingsCommand),
    /// Connection codes: list, create, revoke, activate.
    #[command(subcommand)]
    Codes(codes::CodesCommand),
    /// This node's live figures, or its traffic per mapping.
    Stats(stats::StatsArgs),
    /// The cluster's nodes.
    #[command(subcommand)]
    Nodes(nodes::NodesCommand),
}

/// Paging of a list.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Skip this many items.
    #[arg(long, default_value_t = 0, conflicts_with = "all")]
    offset: u64,
    /// At most this many items, 1-1000 [default: the API's, 50]; the page size with --all.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    limit: Option<u64>,
    /// Every item: follow the pages to the end.
    #[arg(long)]
    all: bool,
}

/// Largest page asked for with `--all`.
const PAGE_LIMIT_MAX: u64 = 1000;

/// Runs `tunnox admin`; what failed goes to stderr and picks the exit code.
pub async fn run(args: AdminArgs) -> ExitCode {
    let mut out = Output {
        json: args.json,
        ..Output::default()
    };
    let result = execute(args, &mut out).await;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = stdout.write_all(out.stdout.as_bytes());
    let _ = stdout.flush();
    for note in &out.notes {
        eprintln!("{note}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunnox admin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(args: AdminArgs, out: &mut Output) -> Result<(), AdminError> {
    let settings = args.connection.resolve()?;
    let api = Api::new(
        settings.base,
        settings.key,
        settings.ca_file.as_deref(),
        Duration::from_secs(settings.timeout_secs),
    )?;
    match args.resource {
        Resource::Users(command) => users::run(command, &api, out).await,
        Resource::Clients(command) => clients::run(command, &api, out).await,
        Resource::Mappings(command) => mappings::run(command, &api, out).await,
        Resource::Codes(command) => codes::run(command, &api, out).await,
        Resource::Stats(command) => stats::run(command, &api, out).await,
        Resource::Nodes(command) => nodes::run(command, &api, out).await,
    }
}

/// `GET path?filters&offset&limit`, one page or (`--all`) every page.
pub async fn fetch_list(
    api: &Api,
    path: &str,
    filters: &[(&str, String)],
    list: &ListArgs,
) -> Result<Page, AdminError> {
    let start = if list.all { 0 } else { list.offset };
    let limit = if list.all {
        Some(list.limit.unwrap_or(PAGE_LIMIT_MAX))
    } else {
        list.limit
    };
    let mut items = Vec::new();
    let mut offset = start;
    loop {
        let mut query: Vec<(&str, String)> = filters.to_vec();
        if offset > 0 {
            query.push(("offset", offset.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let target = with_query(path, &query);
        let data = api.call(Method::GET, &target, None).await?;
        let (page_items, total) = page_of(data).ok_or_else(|| AdminError::BadAnswer {
            method: "GET".into(),
            path: target.clone(),
            reason: "not a list {items, total, offset, limit}".into(),
        })?;
        let got = page_items.len() as u64;
        items.extend(page_items);
        let total = total.unwrap_or(offset + got);
        if !list.all || got == 0 || offset + got >= total {
            return Ok(Page {
                items,
                total,
                offset: start,
            });
        }
        offset += got;
    }
}

/// A list's items and total: `{items, total, …}`, or a bare array (every item).
fn page_of(data: Value) -> Option<(Vec<Value>, Option<u64>)> {
    match data {
        Value::Array(items) => {
            let total = items.len() as u64;
            Some((items, Some(total)))
        }
        Value::Object(mut map) => {
            let total = map.get("total").and_then(Value::as_u64);
            match map.remove("items") {
                Some(Value::Array(items)) => Some((items, total)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `path?k=v&…` with the values percent-encoded.
fn with_query(path: &str, query: &[(&str, String)]) -> String {
    let mut target = path.to_owned();
    for (i, (key, value)) in query.iter().enumerate() {
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str(key);
        target.push('=');
        target.push_str(&encode_component(value));
    }
    target
}

/// `/collection/{id}` with the id percent-encoded.
pub fn item_path(collection: &str, id: &str) -> String {
    format!("{collection}/{}", encode_component(id))
}

/// A JSON body from `FILE`, or from stdin for `-`.
pub fn read_json_body(source: &std::path::Path) -> Result<Value, AdminError> {
    use std::io::Read;
    const BODY_BYTES_MAX: u64 = 1024 * 1024;
    let mut text = String::new();
    let name = source.display().to_string();
    let read = if name == "-" {
        std::io::stdin()
            .take(BODY_BYTES_MAX + 1)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(source)
            .and_then(|f| f.take(BODY_BYTES_MAX + 1).read_to_string(&mut text))
    };
    let shown = if name == "-" { "stdin" } else { name.as_str() };
    read.map_err(|e| AdminError::Usage(format!("--json-body: cannot read {shown}: {e}")))?;
    if text.len() as u64 > BODY_BYTES_MAX {
        return Err(AdminError::Usage(format!(
            "--json-body: {shown} is larger than {BODY_BYTES_MAX} bytes"
        )));
    }
    serde_json::from_str(&text)
        .map_err(|e| AdminError::Usage(format!("--json-body: {shown} is not JSON: {e}")))
}

/// `HOST:PORT`, or a bare `PORT` meaning `127.0.0.1:PORT`.
pub fn host_port(text: &str) -> String {
    if text.parse::<u16>().is_ok() {
        format!("127.0.0.1:{text}")
    } else {
        text.to_owned()
    }
}

/// `{kind: fixed, host, port}` from `HOST:PORT` (or `PORT`), `{kind: dynamic}` from `dynamic`.
pub fn target_json(text: &str, flag: &str) -> Result<Value, AdminError> {
    if text == "dynamic" {
        return Ok(serde_json::json!({ "kind": "dynamic" }));
    }
    let full = host_port(text);
    let bad = || {
        AdminError::Usage(format!(
            "{flag} {text:?}: expected HOST:PORT, PORT or dynamic"
        ))
    };
    let (host, port) = full.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(serde_json::json!({ "kind": "fixed", "host": host, "port": port }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_come_as_objects_or_bare_arrays() {
        let (items, total) =
            page_of(json!({"items": [1, 2], "total": 9, "offset": 0, "limit": 2})).unwrap();
        assert_eq!((items.len(), total), (2, Some(9)));
        let (items, total) = page_of(json!([1, 2, 3])).unwrap();
        assert_eq!((items.len(), total), (3, Some(3)));
        assert!(page_of(json!({"id": 1})).is_none());
    }

    #[test]
    fn targets_and_queries_are_written_as_the_api_expects() {
        assert_eq!(
            target_json("db.local:5432", "--target").unwrap(),
            json!({"kind": "fixed", "host": "db.local", "port": 5432})
        );
        assert_eq!(
            target_json("8080", "--target").unwrap(),
            json!({"kind": "fixed", "host": "127.0.0.1", "port": 8080})
        );
        assert_eq!(target_json("[::1]:22", "--target").unwrap()["host"], "::1");
        assert_eq!(
            target_json("dynamic", "--target").unwrap(),
            json!({"kind": "dynamic"})
        );
        assert!(target_json("nohost", "--target").is_err());
        assert!(target_json(":80", "--target").is_err());
        assert_eq!(
            with_query("/mappings", &[("user", "3".into()), ("offset", "0".into())]),
            "/mappings?user=3&offset=0"
        );
        assert_eq!(item_path("/codes", "abc def"), "/codes/abc%20def");
    }
}
