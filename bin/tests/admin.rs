//! `tunnox admin` as an operator runs it: against a real `tunnox server` with its API on, every
//! resource in tables and in `--json`, the key from a flag, the environment or a config file,
//! and exit codes that say what failed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

use common::{Proc, ca_and_certificate, echo_service, echo_through, free_port, fresh_dir};

const KEY: &str = "admin-test-key-0123456789";

/// A node with its API on, started with `TUNNOX_API_KEY`.
struct Node {
    _server: Proc,
    listen: String,
    api: String,
    dir: PathBuf,
}

impl Node {
    fn start(name: &str) -> Node {
        let dir = fresh_dir(name);
        let api = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_tunnox"));
        command.env("TUNNOX_API_KEY", KEY).args([
            "server",
            "--listen",
            &listen,
            "--insecure-plaintext",
            "--memory-storage",
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--api-listen",
            &api,
        ]);
        let server = Proc::start(command);
        server.wait_for("http endpoints");
        server.wait_for("listening on");
        Node {
            _server: server,
            listen,
            api,
            dir,
        }
    }

    /// `tunnox admin --api URL ARGS` with the key in `TUNNOX_API_KEY`.
    fn admin(&self, args: &[&str]) -> Outcome {
        let url = format!("http://{}", self.api);
        let mut full = vec!["--api", url.as_str()];
        full.extend_from_slice(args);
        run_admin(&self.dir, &full, &[("TUNNOX_API_KEY", KEY)], None)
    }

    /// `tunnox admin … --json`, which must succeed: the printed data.
    fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let outcome = self.admin(&full);
        outcome.assert_ok(args);
        serde_json::from_str(&outcome.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", outcome.stdout))
    }

    /// `tunnox admin ARGS` in table form, which must succeed: what it printed.
    fn table(&self, args: &[&str]) -> String {
        let outcome = self.admin(args);
        outcome.assert_ok(args);
        outcome.stdout
    }
}

/// How a `tunnox admin` run ended.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn assert_ok(&self, args: &[&str]) {
        assert_eq!(self.code, 0, "{args:?} failed: {}", self.stderr);
    }
}

/// `tunnox admin ARGS` with only `envs` set of its variables, `HOME` at `home` (so no real
/// config file is read), and `stdin` fed if given.
fn run_admin(home: &Path, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunnox"));
    command
        .arg("admin")
        .args(args)
        .env_remove("TUNNOX_API_URL")
        .env_remove("TUNNOX_API_KEY")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The ids in a `--json` list.
fn ids(list: &Value) -> Vec<Value> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|item| item["id"].clone())
        .collect()
}

#[test]
fn mappings_are_created_listed_shown_and_deleted_with_exit_codes_for_failures() {
    let node = Node::start("tunnox-admin-mappings");
    let port = free_port();
    let port_text = port.to_string();
    let created = node.json(&[
        "mappings",
        "create",
        "--node-port",
        &port_text,
        "--target-client",
        "123456789012",
        "--target",
        "127.0.0.1:7",
    ]);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("m-"), "{created}");
    assert_eq!(created["entry"]["port"], port);
    assert_eq!(created["target"]["host"], "127.0.0.1");

    // The table names the mapping in a few words; --json gives the list's data.
    let table = node.table(&["mappings", "list"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("ENTRY"),
        "{table}"
    );
    let row = lines
        .find(|l| l.contains(&id))
        .expect("the mapping is listed");
    assert!(row.contains(&format!("node_port :{port}")), "{row}");
    assert!(row.contains("127.0.0.1:7"), "{row}");
    let list = node.json(&["mappings", "list"]);
    assert_eq!(ids(&list), [Value::from(id.clone())]);
    assert_eq!(list["total"], 1);

    let shown = node.table(&["mappings", "get", &id]);
    assert!(
        shown.contains("target.port") && shown.contains("123456789012"),
        "{shown}"
    );
    assert_eq!(node.json(&["mappings", "get", &id])["id"], id.as_str());

    // The same node port again: 409, exit 8, the API's reason on stderr.
    let again = node.admin(&[
        "mappings",
        "create",
        "--node-port",
        &port_text,
        "--target-client",
        "123456789012",
        "--target",
        "7",
    ]);
    assert_eq!(again.code, 8, "{again:?}");
    assert!(
        again.stderr.contains("409") && again.stderr.contains(&port_text),
        "{again:?}"
    );

    // An invalid body from stdin: 400 naming the field, exit 4.
    let invalid = r#"{"entry":{"kind":"node_port","port":0},"target_client":5,
        "target":{"kind":"fixed","host":"127.0.0.1","port":7}}"#;
    let url = format!("http://{}", node.api);
    let rejected = run_admin(
        &node.dir,
        &["--api", &url, "mappings", "create", "--json-body", "-"],
        &[("TUNNOX_API_KEY", KEY)],
        Some(invalid),
    );
    assert_eq!(rejected.code, 4, "{rejected:?}");
    assert!(rejected.stderr.contains("entry.port"), "{rejected:?}");

    // Flags that do not make a mapping are refused before anything is sent: exit 2.
    let half = node.admin(&[
        "mappings",
        "create",
        "--client-port",
        "13306",
        "--target",
        "7",
    ]);
    assert_eq!(half.code, 2, "{half:?}");
    assert!(half.stderr.contains("--listen-client"), "{half:?}");

    let deleted = node.table(&["mappings", "delete", &id]);
    assert!(
        deleted.contains(&format!("deleted mapping {id}")),
        "{deleted}"
    );
    let gone = node.admin(&["mappings", "get", &id]);
    assert_eq!(gone.code, 7, "404 is exit 7: {gone:?}");
    assert!(gone.stderr.contains("404"), "{gone:?}");
    assert_eq!(node.json(&["mappings", "list"])["total"], 0);
    let _ = std::fs::remove_dir_all(&node.dir);
}

#[test]
fn the_key_comes_from_a_flag_the_environment_or_a_config_file_in_that_order() {
    let node = Node::start("tunnox-admin-key");
    let home = node.dir.join("home");
    let url = format!("http://{}", node.api);
    let list = ["clients", "list", "--json"];

    // No key anywhere: a usage error that says where a key can come from.
    let none = run_admin(&home, &["--api", &url, "clients", "list"], &[], None);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(none.stderr.contains("TUNNOX_API_KEY"), "{none:?}");

    // A wrong key: 401, exit 5, and the key itself is never printed.
    let wrong_key = "wrong-key-that-must-not-be-printed";
    let wrong = run_admin(
        &home,
        &["--api", &url, "--key", wrong_key, "clients", "list"],
        &[],
        None,
    );
    assert_eq!(wrong.code, 5, "{wrong:?}");
    assert!(wrong.stderr.contains("401"), "{wrong:?}");
    assert!(!wrong.stderr.contains(wrong_key) && !wrong.stdout.contains(wrong_key));

    // From the environment (URL and key), and a flag beats the environment.
    let env = [("TUNNOX_API_URL", url.as_str()), ("TUNNOX_API_KEY", KEY)];
    run_admin(&home, &list, &env, None).assert_ok(&list);
    let flag_wins = run_admin(&home, &["--key", wrong_key, "clients", "list"], &env, None);
    assert_eq!(flag_wins.code, 5, "{flag_wins:?}");

    // The default config file, ~/.config/tunnox/admin.yaml, with the key in a file beside it.
    let config_dir = home.join(".config").join("tunnox");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("key"), format!("{KEY}\n")).unwrap();
    std::fs::write(
        config_dir.join("admin.yaml"),
        format!("api_url: {url}\napi_key_file: key\n"),
    )
    .unwrap();
    run_admin(&home, &list, &[], None).assert_ok(&list);
    // The environment beats the file.
    let env_wins = run_admin(&home, &list, &[("TUNNOX_API_KEY", wrong_key)], None);
    assert_eq!(env_wins.code, 5, "{env_wins:?}");

    // --config FILE with the key inline; an unknown key in it is an error naming it.
    let other = node.dir.join("other.yaml");
    std::fs::write(&other, format!("api_url: {url}\napi_key: {KEY}\n")).unwrap();
    let with_config = ["--config", other.to_str().unwrap(), "clients", "list"];
    run_admin(&node.dir, &with_config, &[], None).assert_ok(&with_config);
    std::fs::write(&other, format!("api_url: {url}\napi_kye: {KEY}\n")).unwrap();
    let typo = run_admin(&node.dir, &with_config, &[], None);
    assert_eq!(typo.code, 2, "{typo:?}");
    assert!(
        typo.stderr.contains("api_kye") && !typo.stderr.contains(KEY),
        "{typo:?}"
    );

    // Nothing listening: exit 3, naming the URL.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = run_admin(&home, &["--api", &dead, "clients", "list"], &[], None);
    assert_eq!(unreachable.code, 3, "{unreachable:?}");
    assert!(unreachable.stderr.contains(&dead), "{unreachable:?}");
    let _ = std::fs::remove_dir_all(&node.dir);
}

#[test]
fn users_own_clients_and_mappings_and_an_admin_made_client_carries_traffic() {
    let node = Node::start("tunnox-admin-users");
    let user = node.json(&["users", "create", "--name", "alice", "--max-clients", "3"]);
    let user_id = user["id"].as_u64().expect("a numeric user id");
    let uid = user_id.to_string();
    assert_eq!(user["name"], "alice");
    assert_eq!(user["quota"]["max_clients"], 3);

    // A quota flag changes only its field.
    let updated = node.json(&["users", "update", &uid, "--max-mappings", "7"]);
    assert_eq!(updated["quota"]["max_clients"], 3);
    assert_eq!(updated["quota"]["max_mappings"], 7);
    node.json(&[
        "users",
        "quota",
        "set",
        &uid,
        "--monthly-traffic-bytes",
        "1048576",
    ]);
    let quota = node.json(&["users", "quota", "get", &uid]);
    assert_eq!(quota["monthly_traffic_bytes"], 1_048_576);
    assert_eq!(quota["max_mappings"], 7);
    let table = node.table(&["users", "list"]);
    let row = table
        .lines()
        .find(|l| l.contains("alice"))
        .expect("alice is listed");
    assert!(row.starts_with(&uid) && row.contains("1.0 MiB"), "{table}");
    assert_eq!(ids(&node.json(&["users", "list"])), [Value::from(user_id)]);

    // A client of hers, with credentials saved for `tunnox client`.
    let creds = node.dir.join("web.json");
    let created = node.json(&[
        "clients",
        "create",
        "--label",
        "web",
        "--owner",
        &uid,
        "--credentials-out",
        creds.to_str().unwrap(),
    ]);
    let client_id = created["client"]["id"]
        .as_u64()
        .expect("a numeric client id");
    let cid = client_id.to_string();
    assert!(!created["secret"].as_str().unwrap().is_empty());
    assert_eq!(created["client"]["owner"], user_id);
    let shown = node.table(&["clients", "get", &cid]);
    assert!(shown.contains("label") && shown.contains("web"), "{shown}");
    assert_eq!(
        ids(&node.json(&["clients", "list", "--user", &uid])),
        [Value::from(client_id)]
    );
    assert_eq!(
        ids(&node.json(&["users", "clients", &uid])),
        [Value::from(client_id)]
    );

    // Her mapping: a node port to an echo service the client reaches.
    let echo = echo_service().to_string();
    let public = free_port();
    let public_text = public.to_string();
    let mapping = node.json(&[
        "mappings",
        "create",
        "--node-port",
        &public_text,
        "--target-client",
        &cid,
        "--target",
        &echo,
        "--owner",
        &uid,
    ]);
    let mapping_id = mapping["id"].as_str().unwrap().to_owned();
    let client = Proc::spawn(&[
        "client",
        "--server",
        &node.listen,
        "--insecure-plaintext",
        "--credentials",
        creds.to_str().unwrap(),
    ]);
    client.wait_for(&format!("as client {cid}"));
    assert!(
        echo_through(public, 64 * 1024),
        "the admin-made client serves the mapping"
    );
    for listing in [
        node.json(&["mappings", "list", "--client", &cid]),
        node.json(&["mappings", "list", "--user", &uid]),
        node.json(&["users", "mappings", &uid]),
        node.json(&["clients", "mappings", &cid]),
    ] {
        assert_eq!(ids(&listing), [Value::from(mapping_id.clone())]);
    }
    let stats = node.json(&["users", "stats", &uid]);
    assert_eq!(
        (stats["clients"].as_u64(), stats["mappings"].as_u64()),
        (Some(1), Some(1))
    );
    let online = node.json(&["clients", "get", &cid]);
    assert_eq!(online["online"], true, "{online}");

    // She cannot go while she owns things: 409, exit 8.
    let refused = node.admin(&["users", "delete", &uid]);
    assert_eq!(refused.code, 8, "{refused:?}");

    let kicked = node.json(&["clients", "disconnect", &cid]);
    assert_eq!(kicked["was_online"], true);
    let deleted = node.json(&["clients", "delete", &cid]);
    assert_eq!(deleted["mappings_deleted"], 1);
    assert_eq!(node.admin(&["mappings", "get", &mapping_id]).code, 7);
    assert_eq!(node.admin(&["clients", "get", &cid]).code, 7);
    let gone = node.table(&["users", "delete", &uid]);
    assert!(gone.contains(&format!("deleted user {uid}")), "{gone}");
    assert_eq!(node.admin(&["users", "get", &uid]).code, 7);
    drop(client);
    let _ = std::fs::remove_dir_all(&node.dir);
}

#[test]
fn clients_are_updated_and_get_new_credentials() {
    let node = Node::start("tunnox-admin-clients");
    let created = node.json(&["clients", "create", "--label", "db"]);
    let cid = created["client"]["id"].as_u64().unwrap().to_string();
    let table = node.admin(&["clients", "create", "--label", "second"]);
    table.assert_ok(&["clients", "create"]);
    assert!(table.stdout.contains("secret"), "{table:?}");
    assert!(table.stderr.contains("shown only now"), "{table:?}");

    let user = node.json(&["users", "create", "--name", "bob"]);
    let uid = user["id"].as_u64().unwrap().to_string();
    let updated = node.json(&[
        "clients", "update", &cid, "--label", "db-2", "--owner", &uid, "--status", "disabled",
    ]);
    assert_eq!(updated["label"], "db-2");
    assert_eq!(updated["owner"], user["id"]);
    assert_eq!(updated["status"], "disabled");
    let unowned = node.json(&["clients", "update", &cid, "--no-owner"]);
    assert_eq!(unowned["owner"], Value::Null);

    let reset = node.json(&["clients", "reset-credentials", &cid]);
    assert_ne!(reset["secret"], created["secret"]);
    let offline = node.json(&["clients", "disconnect", &cid]);
    assert_eq!(offline["was_online"], false);

    // Pages: two clients, one per page, and --all follows them.
    let first = node.json(&["clients", "list", "--limit", "1"]);
    assert_eq!((first["total"].as_u64(), ids(&first).len()), (Some(2), 1));
    let second = node.json(&["clients", "list", "--limit", "1", "--offset", "1"]);
    assert_ne!(ids(&first), ids(&second));
    let all = node.json(&["clients", "list", "--limit", "1", "--all"]);
    assert_eq!(ids(&all).len(), 2);
    let more = node.admin(&["clients", "list", "--limit", "1"]);
    assert!(more.stderr.contains("--offset 1"), "{more:?}");
    let _ = std::fs::remove_dir_all(&node.dir);
}

/// A code's state, from core's `{"state": {"state": "used", …}}` form or a plain string.
fn code_state(code: &Value) -> &str {
    let state = &code["state"];
    state["state"]
        .as_str()
        .or(state.as_str())
        .unwrap_or_default()
}

#[test]
fn codes_stats_and_nodes() {
    let node = Node::start("tunnox-admin-codes");
    let target = node.json(&["clients", "create", "--label", "target"]);
    let listener = node.json(&["clients", "create", "--label", "listener"]);
    let (tid, lid) = (
        target["client"]["id"].as_u64().unwrap().to_string(),
        listener["client"]["id"].as_u64().unwrap().to_string(),
    );
    let code = node.json(&[
        "codes",
        "create",
        "--target-client",
        &tid,
        "--target",
        "127.0.0.1:5432",
        "--description",
        "the database",
    ]);
    let text = code["code"].as_str().unwrap().to_owned();
    assert_eq!(code_state(&code), "unused");
    assert_eq!(
        node.json(&["codes", "get", &text])["description"],
        "the database"
    );
    let table = node.table(&["codes", "list", "--client", &tid]);
    assert!(
        table.contains(&text) && table.contains("127.0.0.1:5432"),
        "{table}"
    );

    let listen = format!("127.0.0.1:{}", free_port());
    let mapping = node.json(&[
        "codes",
        "activate",
        &text,
        "--listen-client",
        &lid,
        "--listen-addr",
        &listen,
    ]);
    assert_eq!(mapping["entry"]["listen_addr"], listen.as_str());
    assert_eq!(code_state(&node.json(&["codes", "get", &text])), "used");

    let other = node.json(&["codes", "create", "--target-client", &tid, "--target", "22"]);
    let other = other["code"].as_str().unwrap().to_owned();
    assert_eq!(
        code_state(&node.json(&["codes", "revoke", &other])),
        "revoked"
    );
    assert_eq!(node.json(&["codes", "list"])["total"], 2);

    let stats = node.json(&["stats"]);
    assert_eq!(stats["clients"], 2);
    assert_eq!(stats["mappings"], 1);
    assert!(node.table(&["stats"]).contains("clients_online"));
    assert!(node.json(&["stats", "traffic"])["items"].is_array());

    let nodes = node.json(&["nodes", "list"]);
    let this = &nodes["items"][0];
    assert_eq!(this["self"], true, "{nodes}");
    let id = this["id"].as_str().unwrap();
    assert_eq!(node.json(&["nodes", "get", id])["id"], id);
    assert_eq!(node.admin(&["nodes", "get", "no-such-node"]).code, 7);
    let _ = std::fs::remove_dir_all(&node.dir);
}

/// An https server on 127.0.0.1 with `cert_pem` for `localhost`, answering every request with
/// `body` in a 200; its port.
fn https_server(cert_pem: &str, key_pem: &str, body: &'static str) -> u16 {
    use std::io::Read;
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, ServerConnection, StreamOwned, crypto};

    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let connection = ServerConnection::new(config.clone()).unwrap();
            let mut tls = StreamOwned::new(connection, tcp);
            // A client that refuses the certificate ends the handshake here.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if head.ends_with(b"\r\n\r\n") {
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    });
    port
}

#[test]
fn https_is_verified_against_a_ca_file_or_the_system_roots() {
    let dir = fresh_dir("tunnox-admin-https");
    let (ca_pem, cert_pem, key_pem) = ca_and_certificate("localhost");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let port = https_server(
        &cert_pem,
        &key_pem,
        r#"{"success":true,"data":{"items":[{"id":"n1","addr":null,"bridge_addr":null,
            "self":true,"clients_online":0}],"total":1,"offset":0,"limit":50},
            "error":null,"code":0}"#,
    );
    let url = format!("https://localhost:{port}");
    let key = [("TUNNOX_API_KEY", KEY)];

    let trusted = run_admin(
        &dir,
        &[
            "--api",
            &url,
            "--ca-file",
            ca.to_str().unwrap(),
            "nodes",
            "list",
        ],
        &key,
        None,
    );
    trusted.assert_ok(&["nodes", "list"]);
    assert!(
        trusted.stdout.lines().nth(1).unwrap().starts_with("n1 "),
        "{trusted:?}"
    );

    // The system's roots do not include this CA: the certificate is refused, nothing is sent.
    let refused = run_admin(&dir, &["--api", &url, "nodes", "list"], &key, None);
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(
        refused.stderr.contains(&url) && refused.stderr.contains("certificate"),
        "{refused:?}"
    );

    // A CA file for a plain-http URL is a mistake worth saying.
    let plain = run_admin(
        &dir,
        &[
            "--api",
            "http://127.0.0.1:1",
            "--ca-file",
            ca.to_str().unwrap(),
            "nodes",
            "list",
        ],
        &key,
        None,
    );
    assert_eq!(plain.code, 2, "{plain:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
