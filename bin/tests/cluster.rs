//! Three real `tunnox server` processes sharing the machine's Redis (broker: Redis pub/sub with
//! mutual-TLS bridge links, then NATS with plaintext loopback links): clients on different nodes, a mapping whose entry is on one node and target on
//! another, bytes verified; the target's node killed, the target client fails over to another
//! node and new streams work.
//!
//! Needs Redis at 127.0.0.1:6379 (and NATS at 127.0.0.1:4222 for the NATS run): skipped with a
//! printed reason when absent, failed instead when `TUNNOX_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Proc, echo_service, echo_through, free_port, fresh_dir, http};

/// Whether the service at `port` answers; skips (false) or fails as `TUNNOX_REQUIRE_SERVICES` says.
fn service_up(name: &str, port: u16) -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok();
    if !up {
        assert!(
            std::env::var("TUNNOX_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{name} at 127.0.0.1:{port} is required (TUNNOX_REQUIRE_SERVICES=1) but not reachable"
        );
        println!("SKIPPED: {name} at 127.0.0.1:{port} is not reachable");
    }
    up
}

struct Node {
    proc: Proc,
    listen: String,
    /// The management API's address and its admin key.
    api: (String, String),
}

/// Writes a cluster CA and, signed by it, a bridge certificate for 127.0.0.1 for each node.
fn bridge_tls(dir: &Path, ids: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        dir.join("ca.pem"),
        ca_params.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    for id in ids {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{id}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{id}.key")), key.serialize_pem()).unwrap();
    }
}

/// The `cluster.tls` YAML block of node `id`.
fn tls_block(dir: &Path, id: &str) -> String {
    format!(
        "  tls:\n    cert_file: {}\n    key_file: {}\n    ca_file: {}\n",
        dir.join(format!("{id}.pem")).display(),
        dir.join(format!("{id}.key")).display(),
        dir.join("ca.pem").display()
    )
}

fn start_node(dir: &Path, id: &str, prefix: &str, broker: &str, tls: bool) -> Node {
    let listen = format!("127.0.0.1:{}", free_port());
    let bridge = format!("127.0.0.1:{}", free_port());
    let api = format!("127.0.0.1:{}", free_port());
    let config = dir.join(format!("{id}.yaml"));
    std::fs::write(
        &config,
        format!(
            "node_id: {id}\nlisten: {listen}\ntls: {{ insecure_plaintext: true }}\n\
             api_listen: {api}\ndata_dir: {}\n\
             cluster:\n  bridge_listen: {bridge}\n  redis_url: redis://127.0.0.1:6379\n  \
             key_prefix: \"{prefix}\"\n  broker: {broker}\n  nats_url: nats://127.0.0.1:4222\n  \
             token_file: {}\n  lease_ms: 1000\n{}",
            dir.join(id).display(),
            dir.join("token").display(),
            if tls {
                tls_block(dir, id)
            } else {
                String::new()
            }
        ),
    )
    .unwrap();
    let proc = Proc::spawn(&["server", "--config", config.to_str().unwrap()]);
    let key_line = proc.wait_for("admin API key");
    let key = key_line.rsplit(' ').next().unwrap().to_owned();
    proc.wait_for("cluster: bridge on");
    proc.wait_for(&format!("listening on {listen}"));
    Node {
        proc,
        listen,
        api: (api, key),
    }
}

fn client(dir: &Path, name: &str, servers: &[&str], rest: &[&str]) -> Proc {
    let creds = dir.join(format!("{name}.json"));
    let mut args = vec!["client", "--insecure-plaintext", "--credentials"];
    args.push(creds.to_str().unwrap());
    for server in servers {
        args.extend(["--server", server]);
    }
    args.extend(rest);
    Proc::spawn(&args)
}

fn entry_on_one_node_target_on_another_and_failover(broker: &str, tls: bool) {
    let dir = fresh_dir(&format!("tunnox-cluster-{broker}"));
    std::fs::write(dir.join("token"), "a cluster token for the test run\n").unwrap();
    let prefix = format!("tunnox-test-{}-{broker}:", std::process::id());
    let ids = ["n1", "n2", "n3"];
    if tls {
        bridge_tls(&dir, &ids);
    }
    let nodes: Vec<Node> = ids
        .iter()
        .map(|id| start_node(&dir, id, &prefix, broker, tls))
        .collect();

    // The target client offers an echo service on node 2 (node 3 is its second address).
    let service = echo_service().to_string();
    let target = client(
        &dir,
        "target",
        &[&nodes[1].listen, &nodes[2].listen],
        &["tcp", &service],
    );
    let code_line = target.wait_for("connection code:");
    let code = code_line.rsplit(' ').next().unwrap().to_owned();

    // The entry client on node 1 redeems the code made on node 2. The code reaches node 1 over
    // the broker a few milliseconds after node 2 made it; a redeem that arrives first is refused
    // (as "unknown code") and is retried, as a user would.
    let tunnel_port = free_port();
    let tunnel = format!("127.0.0.1:{tunnel_port}");
    let mut attempts = 0;
    let entry = loop {
        attempts += 1;
        let entry = client(
            &dir,
            "entry",
            &[&nodes[0].listen],
            &["use", &code, "--listen", &tunnel],
        );
        if entry.sees("ready: listening on", Duration::from_secs(10)) {
            break entry;
        }
        assert!(
            attempts < 5,
            "the code made on node 2 never became usable on node 1"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        echo_through(tunnel_port, 1 << 20),
        "1 MiB through node 1 → bridge → node 2 → target client, byte-exact"
    );
    cross_node_metrics_moved(&nodes[0].api.0, tunnel_port);
    a_mapping_made_on_a_third_node_reaches_both_clients(&dir, &nodes[2], &service);

    // Node 2 dies; the target client moves to node 3; new streams follow it.
    let mut nodes = nodes;
    let mut dead = nodes.remove(1);
    let _ = dead.proc.child.kill();
    let _ = dead.proc.child.wait();
    assert!(
        echo_through(tunnel_port, 256 * 1024),
        "after node 2 died, streams reach the target through node 3"
    );
    assert!(
        target.sees("connected to node n3", Duration::from_secs(10)),
        "the target client failed over to node 3"
    );
    drop((entry, target, nodes));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client id in a client's credentials file.
fn client_id(dir: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
    saved["client_id"].as_u64().unwrap()
}

/// A mapping created through node 3's API between the entry client (on node 1) and the target
/// client (on node 2) is pushed to both over the cluster and carries bytes; deleted through the
/// same API, the entry client stops listening.
fn a_mapping_made_on_a_third_node_reaches_both_clients(dir: &Path, api_node: &Node, service: &str) {
    // `service` is the echo service's port on 127.0.0.1.
    let (api, key) = (&api_node.api.0, Some(api_node.api.1.as_str()));
    let port = free_port();
    let (entry, target) = (client_id(dir, "entry"), client_id(dir, "target"));
    let body = format!(
        r#"{{"entry":{{"kind":"client_port","listen_client":{entry},"listen_addr":"127.0.0.1:{port}"}},
            "target_client":{target},"target":{{"kind":"fixed","host":"127.0.0.1","port":{service}}}}}"#
    );
    let (status, answer) = http(api, "POST", "/api/v1/mappings", key, Some(&body));
    assert_eq!(status, 201, "{answer}");
    let created: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    assert!(
        echo_through(port, 256 * 1024),
        "the mapping made on node 3 carries bytes from node 1's client to node 2's"
    );
    let (status, answer) = http(api, "DELETE", &format!("/api/v1/mappings/{id}"), key, None);
    assert_eq!(status, 200, "{answer}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry client still listens 10 s after the mapping was deleted on node 3"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the metric line starting with `name` (labels included), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// With a tunnel held open through node 1 to node 2, node 1's `/metrics` shows the stream on
/// the bridge pool, the broker's traffic, the cluster storage's operations, the configuration
/// acknowledgements and the tunnelled bytes by mapping.
fn cross_node_metrics_moved(api: &str, tunnel_port: u16) {
    use std::io::{Read, Write};
    let mut held = std::net::TcpStream::connect(("127.0.0.1", tunnel_port)).unwrap();
    held.write_all(b"x").unwrap();
    let mut echoed = [0u8; 1];
    held.read_exact(&mut echoed).unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // the gauges' sampling interval
    let (status, text) = http(api, "GET", "/metrics", None, None);
    assert_eq!(status, 200, "{text}");
    drop(held);
    let at_least = |name: &str, least: f64| {
        let value = metric(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        assert!(value >= least, "{name} = {value} < {least}\n{text}");
    };
    at_least("tunnox_bridge_links{peer=\"n2\"}", 1.0);
    at_least("tunnox_bridge_pool_streams{peer=\"n2\"}", 1.0);
    let utilisation = metric(&text, "tunnox_bridge_pool_utilisation{peer=\"n2\"}").unwrap();
    assert!(utilisation > 0.0 && utilisation < 1.0, "{utilisation}");
    at_least(
        "tunnox_broker_published_total{topic=\"client.online\"}",
        1.0,
    );
    at_least("tunnox_broker_received_total{topic=\"config.update\"}", 1.0);
    at_least("tunnox_broker_connected", 1.0);
    at_least(
        "tunnox_storage_operations_total{backend=\"cluster\",op=\"hset\",result=\"ok\"}",
        1.0,
    );
    at_least("tunnox_storage_degraded{backend=\"cluster\"}", 0.0);
    // The entry client's configuration when it connected, and again with the redeemed mapping.
    at_least("tunnox_config_push_ack_seconds_count", 2.0);
    at_least("tunnox_streams_opened_total", 1.0);
    let to_target: f64 = text
        .lines()
        .filter(|l| l.starts_with("tunnox_mapping_bytes_total{") && l.contains("to_target"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(to_target >= f64::from(1 << 20), "{to_target}\n{text}");
}

#[test]
fn a_three_node_cluster_on_redis_with_mutual_tls_bridges_carries_cross_node_tunnels_and_survives_a_node_death()
 {
    if service_up("Redis", 6379) {
        entry_on_one_node_target_on_another_and_failover("redis", true);
    }
}

#[test]
fn a_three_node_cluster_with_nats_as_the_broker_does_the_same() {
    if service_up("Redis", 6379) && service_up("NATS", 4222) {
        entry_on_one_node_target_on_another_and_failover("nats", false);
    }
}

#[test]
fn a_plaintext_bridge_off_loopback_or_a_broken_certificate_stops_the_start() {
    let dir = fresh_dir("tunnox-cluster-refusals");
    std::fs::write(dir.join("token"), "a cluster token for the test run\n").unwrap();
    let run = |cluster: &str| {
        let config = dir.join("bad.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\ntls: {{ insecure_plaintext: true }}\ncluster:\n  \
                 redis_url: redis://127.0.0.1:6379\n  token_file: {}\n{cluster}",
                free_port(),
                dir.join("token").display()
            ),
        )
        .unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tunnox"))
            .args(["server", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, err) = run("  bridge_listen: 0.0.0.0:0\n");
    assert!(!ok && err.contains("cluster.tls is missing"), "{err}");
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let junk = dir.join("junk.pem");
    let (ok, err) = run(&format!(
        "  bridge_listen: 127.0.0.1:0\n  tls:\n    cert_file: {0}\n    key_file: {0}\n    ca_file: {0}\n",
        junk.display()
    ));
    assert!(!ok && err.contains("bridge TLS"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
