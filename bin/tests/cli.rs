//! The real binaries as a user runs them: `tunnox server`, a client offering a service with a
//! connection code, a client redeeming it, bytes through the tunnel, a server restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::Command;
use std::time::Duration;

mod common;

use common::{Proc, ca_and_certificate, echo_service, echo_through, free_port, fresh_dir, http};

#[test]
fn server_and_clients_tunnel_a_service_through_a_connection_code_and_survive_a_restart() {
    let dir = fresh_dir("tunnox-cli");
    let data = dir.join("data");
    let (a_creds, b_creds) = (dir.join("a.json"), dir.join("b.json"));
    let node_port = free_port();
    let listen = format!("127.0.0.1:{node_port}");
    let server_args = [
        "server",
        "--listen",
        &listen,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut server = Proc::spawn(&server_args);
    let fp_line = server.wait_for("fingerprint:");
    let fp = fp_line.rsplit(' ').next().unwrap().to_owned();
    assert!(fp.starts_with("sha256:"), "{fp_line}");

    let service = echo_service().to_string();
    let b = Proc::spawn(&[
        "client",
        "--server",
        &listen,
        "--fingerprint",
        &fp,
        "--credentials",
        b_creds.to_str().unwrap(),
        "tcp",
        &service,
    ]);
    let code_line = b.wait_for("connection code:");
    let code = code_line.rsplit(' ').next().unwrap().to_owned();
    let tunnel_port = free_port();
    let tunnel = format!("127.0.0.1:{tunnel_port}");
    let a = Proc::spawn(&[
        "client",
        "--server",
        &listen,
        "--fingerprint",
        &fp,
        "--credentials",
        a_creds.to_str().unwrap(),
        "use",
        &code,
        "--listen",
        &tunnel,
    ]);
    a.wait_for("ready: listening on");
    assert!(
        echo_through(tunnel_port, 1 << 20),
        "1 MiB through the tunnel"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a_creds).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "saved credentials are private");
    }

    // Restart the node: same fingerprint, clients back, the mapping restored from the store.
    server.terminate();
    let server2 = Proc::spawn(&server_args);
    let fp2 = server2.wait_for("fingerprint:");
    assert_eq!(fp2, fp_line, "the identity is kept");
    assert!(
        echo_through(tunnel_port, 64 * 1024),
        "the mapping works again after the restart"
    );

    // A redeemed code cannot be used again.
    let c = Proc::spawn(&[
        "client",
        "--server",
        &listen,
        "--fingerprint",
        &fp,
        "--credentials",
        dir.join("c.json").to_str().unwrap(),
        "use",
        &code,
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let mut c = c;
    let status = c.child.wait().unwrap();
    assert!(!status.success(), "reusing a code fails");
    drop((a, b, server2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_without_a_way_to_trust_the_node_refuses_to_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_tunnox"))
        .args(["client", "--server", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--fingerprint"), "{stderr}");
}

#[test]
fn a_node_port_mapping_from_the_config_file_reaches_a_registered_client() {
    let dir = fresh_dir("tunnox-cli-config");
    let config = dir.join("tunnox.yaml");
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!(
        "listen: {listen}\ndata_dir: {}\n",
        dir.join("data").display()
    );
    std::fs::write(&config, &base).unwrap();
    let server_args = ["server", "--config", config.to_str().unwrap()];

    // The target client registers first, to learn its id.
    let mut server = Proc::spawn(&server_args);
    let fp_line = server.wait_for("fingerprint:");
    let fp = fp_line.rsplit(' ').next().unwrap().to_owned();
    let creds = dir.join("b.json");
    let b = Proc::spawn(&[
        "client",
        "--server",
        &listen,
        "--fingerprint",
        &fp,
        "--credentials",
        creds.to_str().unwrap(),
    ]);
    let registered = b.wait_for("registered as client");
    let client_id = registered
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches(';')
        .to_owned();

    // The operator adds a node-port mapping to that client and restarts the node.
    let service = echo_service();
    let public = free_port();
    let mapping = format!(
        "mappings:\n  - name: echo\n    entry: {{ kind: node_port, port: {public} }}\n    target_client: {client_id}\n    target: {{ kind: fixed, host: 127.0.0.1, port: {service} }}\n"
    );
    std::fs::write(&config, format!("{base}{mapping}")).unwrap();
    server.terminate();
    let server2 = Proc::spawn(&server_args);
    server2.wait_for("fingerprint:");
    assert!(
        echo_through(public, 256 * 1024),
        "visitors at the node port reach the service"
    );
    drop((b, server2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `tunnox ARGS` to its end; returns whether it succeeded and its stderr.
fn run_to_end(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tunnox"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

#[test]
fn a_node_with_a_configured_certificate_is_trusted_through_its_ca_under_the_server_name() {
    let dir = fresh_dir("tunnox-cli-ca");
    let (ca_pem, cert_pem, key_pem) = ca_and_certificate("node.test");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node-key.pem"),
    );
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let config = dir.join("tunnox.yaml");
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.join("data");
    std::fs::write(
        &config,
        format!(
            "listen: {listen}\ndata_dir: {}\ntls:\n  cert_file: {}\n  key_file: {}\n",
            data.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()]);
    server.wait_for("fingerprint:");
    assert!(
        !data.join("node-cert.der").exists(),
        "no certificate is generated when one is configured"
    );

    let client = |name: &str, server_name: Option<&str>| {
        let creds = dir.join(format!("{name}.json"));
        let mut args = vec![
            "client".to_owned(),
            "--server".to_owned(),
            listen.clone(),
            "--ca-file".to_owned(),
            ca.display().to_string(),
            "--credentials".to_owned(),
            creds.display().to_string(),
        ];
        if let Some(server_name) = server_name {
            args.extend(["--server-name".to_owned(), server_name.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(&args)
    };
    let good = client("good", Some("node.test"));
    good.wait_for("registered as client");
    // Without --server-name the client verifies the host of --server, 127.0.0.1, which the
    // certificate does not name: it must not get a session.
    let by_address = client("by-address", None);
    assert!(
        !by_address.sees("registered as client", Duration::from_secs(3)),
        "a certificate that does not name the server is refused"
    );
    drop((good, by_address, server));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_files_and_trust_flags_that_do_not_fit_are_errors_naming_them() {
    let dir = fresh_dir("tunnox-cli-tls-errors");
    let (ca_pem, cert_pem, _) = ca_and_certificate("node.test");
    let (_, _, other_key_pem) = ca_and_certificate("node.test");
    let (ca, cert, other_key) = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("other-key.pem"),
    );
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&other_key, other_key_pem).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = |tls: &str| {
        let path = dir.join("tunnox.yaml");
        std::fs::write(
            &path,
            format!("listen: {listen}\nstorage: memory\ntls:\n{tls}"),
        )
        .unwrap();
        path.display().to_string()
    };

    let only_cert = config(&format!("  cert_file: {}\n", cert.display()));
    let (ok, stderr) = run_to_end(&["server", "--config", &only_cert]);
    assert!(!ok && stderr.contains("tls.key_file"), "{stderr}");

    let (ok, stderr) = run_to_end(&[
        "server",
        "--listen",
        &listen,
        "--memory-storage",
        "--tls-key-file",
        other_key.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("tls.cert_file"), "{stderr}");

    let mismatched = config(&format!(
        "  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        other_key.display()
    ));
    let (ok, stderr) = run_to_end(&["server", "--config", &mismatched]);
    assert!(!ok && stderr.contains("other-key.pem"), "{stderr}");

    let (ok, stderr) = run_to_end(&[
        "client",
        "--server",
        "127.0.0.1:1",
        "--ca-file",
        ca.to_str().unwrap(),
        "--fingerprint",
        &"00".repeat(32),
    ]);
    assert!(
        !ok && stderr.contains("--ca-file") && stderr.contains("--fingerprint"),
        "{stderr}"
    );

    let missing = dir.join("missing-ca.pem");
    let (ok, stderr) = run_to_end(&[
        "client",
        "--server",
        "127.0.0.1:1",
        "--ca-file",
        missing.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("missing-ca.pem"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_server_serves_health_and_metrics_when_asked() {
    let dir = fresh_dir("tunnox-cli-health");
    let api = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let server = Proc::spawn(&[
        "server",
        "--listen",
        &listen,
        "--insecure-plaintext",
        "--memory-storage",
        "--data-dir",
        dir.to_str().unwrap(),
        "--api-listen",
        &api,
    ]);
    server.wait_for("http endpoints");
    server.wait_for("listening on");
    let (status, health) = http(&api, "GET", "/health", None, None);
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"success\":true"), "{health}");
    let (status, ready) = http(&api, "GET", "/ready", None, None);
    assert_eq!(status, 200, "{ready}");
    let (_, metrics) = http(&api, "GET", "/metrics", None, None);
    assert!(
        metrics.contains("# TYPE tunnox_clients_online gauge"),
        "{metrics}"
    );
    assert!(metrics.contains("tunnox_tunnels_active 0"), "{metrics}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_api_needs_its_key_validates_bodies_and_manages_mappings() {
    let dir = fresh_dir("tunnox-cli-api");
    let api = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "server",
        "--listen",
        &listen,
        "--insecure-plaintext",
        "--memory-storage",
        "--data-dir",
        dir.to_str().unwrap(),
        "--api-listen",
        &api,
    ];
    // First start: a key is generated, printed once, and only its hash kept.
    let mut server = Proc::spawn(&args);
    let line = server.wait_for("admin API key");
    let key = line.rsplit(' ').next().unwrap().to_owned();
    server.wait_for("listening on");
    let kept = std::fs::read_to_string(dir.join("api-key.sha256")).unwrap();
    assert!(
        !kept.contains(&key) && kept.len() == 64,
        "only the hash is kept"
    );

    let key = Some(key.as_str());
    assert_eq!(
        http(&api, "GET", "/api/v1/mappings", None, None).0,
        401,
        "no key"
    );
    assert_eq!(
        http(&api, "GET", "/api/v1/mappings", Some("wrong key"), None).0,
        401
    );
    let (status, body) = http(&api, "GET", "/api/v1/mappings", key, None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"items\":[],\"total\":0"), "{body}");

    // Bodies that are not JSON, or not a mapping, or an invalid one: 400, never 500.
    for bad in ["{", "[]", "{\"entry\": 1}", "{\"unknown\": true}"] {
        let (status, body) = http(&api, "POST", "/api/v1/mappings", key, Some(bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"success\":false"), "{body}");
    }
    let invalid = r#"{"entry":{"kind":"node_port","port":0},"target_client":123456789012,
        "target":{"kind":"fixed","host":"127.0.0.1","port":7}}"#;
    let (status, body) = http(&api, "POST", "/api/v1/mappings", key, Some(invalid));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("\"field\":\"entry.port\""),
        "the offending field is named: {body}"
    );

    let port = free_port();
    let good = format!(
        r#"{{"entry":{{"kind":"node_port","port":{port}}},"target_client":123456789012,
        "target":{{"kind":"fixed","host":"127.0.0.1","port":7}}}}"#
    );
    let (status, body) = http(&api, "POST", "/api/v1/mappings", key, Some(&good));
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let (status, body) = http(&api, "GET", &format!("/api/v1/mappings/{id}"), key, None);
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(&api, "POST", "/api/v1/mappings", key, Some(&good));
    assert_eq!(status, 409, "the same node port twice conflicts");
    assert_eq!(
        http(&api, "DELETE", &format!("/api/v1/mappings/{id}"), key, None).0,
        200
    );
    assert_eq!(
        http(&api, "GET", &format!("/api/v1/mappings/{id}"), key, None).0,
        404
    );
    assert_eq!(
        http(&api, "GET", "/api/v1/mappings/not%20an%20id", key, None).0,
        400
    );
    let (status, body) = http(&api, "GET", "/api/v1/clients", key, None);
    assert_eq!(status, 200, "{body}");

    // The OpenAPI document lists every route, and every operation it lists is served.
    let (status, body) = http(&api, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200, "{body}");
    let document: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let paths = document["paths"].as_object().unwrap();
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort_unstable();
    for route in [
        "/api/v1/users/{id}",
        "/api/v1/codes/{code}/activate",
        "/api/v1/nodes",
    ] {
        assert!(listed.contains(&route), "{route} missing from {listed:?}");
    }
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "123456789012")
                .replace("{code}", "abc-def-234");
            let body = (method == "post").then_some("{}");
            let (status, answer) = http(&api, &method.to_uppercase(), &concrete, key, body);
            let routed = status != 405
                && (status != 404
                    || (answer.contains("\"success\":false") && !answer.contains("no such route")));
            assert!(
                routed,
                "{method} {path} is in the document but not served: {status}"
            );
        }
    }

    // A restart keeps the key and does not print it again.
    server.terminate();
    let again = Proc::spawn(&args);
    assert!(!again.sees("admin API key", Duration::from_secs(2)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configured_limits_take_effect_and_a_zero_or_absurd_one_stops_the_start_naming_the_key() {
    let dir = fresh_dir("tunnox-cli-limits");
    let config = |limits: &str| {
        let path = dir.join("tunnox.yaml");
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:{}\nstorage: memory\ntls: {{ insecure_plaintext: true }}\n\
                 limits:\n{limits}",
                free_port()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    for (key, value) in [
        ("handshake_timeout_secs", "0"),
        ("streams_per_session", "5000000"),
        ("pending_opens_per_session", "-3"),
        ("client_connections_max", "0"),
    ] {
        let file = config(&format!("  {key}: {value}\n"));
        let (ok, stderr) = run_to_end(&["server", "--config", &file]);
        assert!(
            !ok && stderr.contains(&format!("limits.{key}")) && stderr.contains(value),
            "{key}: {value}: {stderr}"
        );
    }

    // A one-second handshake timeout: a silent connection is closed well before the default 10 s.
    let file = config("  handshake_timeout_secs: 1\n  streams_per_session: 16\n");
    let server = Proc::spawn(&["server", "--config", &file]);
    let line = server.wait_for("listening on");
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let mut buf = Vec::new();
    let read = std::io::Read::read_to_end(&mut silent, &mut buf);
    assert!(
        read.is_ok(),
        "the node did not close a silent connection: {read:?}"
    );
}
