//! The management API against a real node (and real agents where sessions matter): every
//! resource's routes, their status codes and envelope, pagination, auth (keys, roles, JWTs, the
//! rate limit, CORS), and arbitrary bodies never causing a server error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tunnox_core::agent::AgentOutput;
use tunnox_core::control::{ClientId, ClientSecret};
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_runtime_tokio::api::{ApiAuth, ApiKey, ApiState, Role, key_digest, router};
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::metrics::NodeMetrics;
use tunnox_runtime_tokio::node::{NodeCommand, NodeDriver, spawn_node};

use common::{echo_server, free_port, start_agent};

const ADMIN: &str = "admin-key-0123456789";
const READER: &str = "read-key-0123456789";
const JWT_SECRET: &[u8] = b"jwt-secret-jwt-secret-jwt-secret";

struct Api {
    router: Router,
    metrics: Arc<NodeMetrics>,
    node: mpsc::Sender<NodeCommand>,
    node_addr: SocketAddr,
}

fn auth() -> ApiAuth {
    ApiAuth::new(vec![
        ApiKey {
            name: "ops".into(),
            sha256: key_digest(ADMIN),
            role: Role::Admin,
        },
        ApiKey {
            name: "dashboard".into(),
            sha256: key_digest(READER),
            role: Role::Read,
        },
    ])
    .with_jwt_secret(JWT_SECRET)
    .unwrap()
    .with_rate_limit(100_000, 100_000)
}

async fn start(auth: ApiAuth) -> Api {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = listener.local_addr().unwrap();
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        NodeConfig::new("node-1"),
        ControlState::default(),
        Rng::seed_from_u64(7),
    );
    let driver = NodeDriver::new(node, clock, None, "127.0.0.1");
    let (node, task) = spawn_node(driver, listener);
    std::mem::forget(task);
    let metrics = Arc::new(NodeMetrics::new());
    let state = ApiState::new(metrics.clone(), Arc::new(AtomicBool::new(true)))
        .with_node(node.clone())
        .with_auth(auth);
    Api {
        router: router(state),
        metrics,
        node,
        node_addr,
    }
}

impl Api {
    /// One request; the status and the JSON body (Null if it is not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.raw(method, path, token, body.map(String::into_bytes))
            .await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A new anonymous client's id.
    async fn new_client(&self) -> u64 {
        self.expect(Method::POST, "/api/v1/clients", Some(json!({})), 201)
            .await["client"]["id"]
            .as_u64()
            .unwrap()
    }

    /// A request with the admin key that must answer `expected`; its `data`.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> Value {
        let (status, answer) = self.call(method.clone(), path, Some(ADMIN), body).await;
        assert_eq!(status.as_u16(), expected, "{method} {path}: {answer}");
        assert_eq!(answer["success"], expected < 300, "{answer}");
        let code = if expected < 300 {
            0
        } else {
            u64::from(expected)
        };
        assert_eq!(answer["code"], code, "{answer}");
        answer["data"].clone()
    }
}

fn mapping_body(port: u16, target_client: u64, target_port: u16) -> Value {
    json!({
        "entry": {"kind": "node_port", "port": port, "bind": "127.0.0.1"},
        "target_client": target_client,
        "target": {"kind": "fixed", "host": "127.0.0.1", "port": target_port},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_quotas_and_clients_with_their_errors() {
    let api = start(auth()).await;
    let user = api
        .expect(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "alice"})),
            201,
        )
        .await;
    let uid = user["id"].as_u64().unwrap();
    assert_eq!(user["name"], "alice");
    assert_eq!(user["quota"]["max_clients"], 10, "the default quota");
    let data = api
        .expect(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "  "})),
            400,
        )
        .await;
    assert_eq!(data["field"], "name");
    let data = api
        .expect(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "x", "colour": 1})),
            400,
        )
        .await;
    assert!(data.is_null() || data["field"].is_string());
    api.expect(Method::GET, &format!("/api/v1/users/{uid}"), None, 200)
        .await;
    api.expect(Method::GET, "/api/v1/users/123456789012", None, 404)
        .await;
    let data = api
        .expect(Method::GET, "/api/v1/users/alice", None, 400)
        .await;
    assert_eq!(data["field"], "id");
    let renamed = api
        .expect(
            Method::PATCH,
            &format!("/api/v1/users/{uid}"),
            Some(json!({"name": "alice b"})),
            200,
        )
        .await;
    assert_eq!(renamed["name"], "alice b");

    // Quota: one client only.
    let quota = api
        .expect(
            Method::PUT,
            &format!("/api/v1/users/{uid}/quota"),
            Some(json!({"max_clients": 1, "max_mappings": 5})),
            200,
        )
        .await;
    assert_eq!(quota["max_clients"], 1);
    assert_eq!(
        quota["max_connections"], 200,
        "absent quota fields keep their defaults"
    );
    let read = api
        .expect(
            Method::GET,
            &format!("/api/v1/users/{uid}/quota"),
            None,
            200,
        )
        .await;
    assert_eq!(read, quota);
    api.expect(
        Method::PUT,
        &format!("/api/v1/users/{uid}/quota"),
        Some(json!({"max_clients": "many"})),
        400,
    )
    .await;

    let made = api
        .expect(
            Method::POST,
            "/api/v1/clients",
            Some(json!({"label": "laptop", "owner": uid})),
            201,
        )
        .await;
    let cid = made["client"]["id"].as_u64().unwrap();
    assert_eq!(made["client"]["owner"], uid);
    assert_eq!(made["client"]["kind"], "registered");
    assert_eq!(made["client"]["online"], false);
    assert!(ClientSecret::parse(made["secret"].as_str().unwrap()).is_ok());
    api.expect(
        Method::POST,
        "/api/v1/clients",
        Some(json!({"owner": uid})),
        403,
    )
    .await;
    api.expect(
        Method::POST,
        "/api/v1/clients",
        Some(json!({"owner": 999_999_999_999u64})),
        404,
    )
    .await;
    let anonymous = api
        .expect(
            Method::POST,
            "/api/v1/clients",
            Some(json!({"label": "kiosk"})),
            201,
        )
        .await;
    let anon_id = anonymous["client"]["id"].as_u64().unwrap();

    // Key material never appears.
    let one = api
        .expect(Method::GET, &format!("/api/v1/clients/{cid}"), None, 200)
        .await;
    assert!(
        one.get("auth_key").is_none() && one.get("secret").is_none(),
        "{one}"
    );

    let all = api.expect(Method::GET, "/api/v1/clients", None, 200).await;
    assert_eq!(all["total"], 2);
    let mine = api
        .expect(
            Method::GET,
            &format!("/api/v1/clients?user={uid}"),
            None,
            200,
        )
        .await;
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["items"][0]["id"], cid);
    let theirs = api
        .expect(
            Method::GET,
            &format!("/api/v1/users/{uid}/clients"),
            None,
            200,
        )
        .await;
    assert_eq!(theirs["items"], mine["items"]);
    api.expect(Method::GET, "/api/v1/clients?user=x", None, 400)
        .await;
    api.expect(Method::GET, "/api/v1/clients?colour=red", None, 400)
        .await;

    // Moving the anonymous client to alice breaks her quota; to nobody is fine.
    api.expect(
        Method::PATCH,
        &format!("/api/v1/clients/{anon_id}"),
        Some(json!({"owner": uid})),
        403,
    )
    .await;
    let patched = api
        .expect(
            Method::PATCH,
            &format!("/api/v1/clients/{cid}"),
            Some(json!({"owner": null, "label": "spare", "status": "disabled"})),
            200,
        )
        .await;
    assert_eq!(patched["owner"], Value::Null);
    assert_eq!(patched["kind"], "anonymous");
    assert_eq!(patched["status"], "disabled");
    api.expect(
        Method::PATCH,
        &format!("/api/v1/clients/{cid}"),
        Some(json!({"status": "gone"})),
        400,
    )
    .await;

    // A user that owns something cannot go; once it owns nothing it can.
    let back = api
        .expect(
            Method::PATCH,
            &format!("/api/v1/clients/{cid}"),
            Some(json!({"owner": uid})),
            200,
        )
        .await;
    assert_eq!(back["owner"], uid);
    api.expect(Method::DELETE, &format!("/api/v1/users/{uid}"), None, 409)
        .await;
    let stats = api
        .expect(
            Method::GET,
            &format!("/api/v1/users/{uid}/stats"),
            None,
            200,
        )
        .await;
    assert_eq!(
        (stats["clients"].as_u64(), stats["mappings"].as_u64()),
        (Some(1), Some(0))
    );
    let deleted = api
        .expect(Method::DELETE, &format!("/api/v1/clients/{cid}"), None, 200)
        .await;
    assert_eq!(deleted["mappings_deleted"], 0);
    api.expect(Method::GET, &format!("/api/v1/clients/{cid}"), None, 404)
        .await;
    api.expect(Method::DELETE, &format!("/api/v1/users/{uid}"), None, 200)
        .await;
    api.expect(Method::GET, &format!("/api/v1/users/{uid}"), None, 404)
        .await;
    let users = api.expect(Method::GET, "/api/v1/users", None, 200).await;
    assert_eq!(users["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_are_paged_filtered_replaced_and_deleted() {
    let api = start(auth()).await;
    let a = api.new_client().await;
    let b = api.new_client().await;
    let ports = [free_port(), free_port(), free_port()];
    let mut ids = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let target = if i == 0 { a } else { b };
        let made = api
            .expect(
                Method::POST,
                "/api/v1/mappings",
                Some(mapping_body(*port, target, 9)),
                201,
            )
            .await;
        ids.push(made["id"].as_str().unwrap().to_owned());
    }
    let data = api
        .expect(
            Method::POST,
            "/api/v1/mappings",
            Some(mapping_body(ports[0], b, 9)),
            409,
        )
        .await;
    assert!(data.is_null());
    let data = api
        .expect(
            Method::POST,
            "/api/v1/mappings",
            Some(mapping_body(0, b, 9)),
            400,
        )
        .await;
    assert_eq!(data["field"], "entry.port");

    let page = api
        .expect(Method::GET, "/api/v1/mappings?limit=2", None, 200)
        .await;
    assert_eq!(
        (
            page["total"].as_u64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(3), 2)
    );
    let rest = api
        .expect(Method::GET, "/api/v1/mappings?limit=2&offset=2", None, 200)
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    let mut seen: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["items"].as_array().unwrap())
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "two pages hold every mapping once");
    for bad in ["limit=0", "limit=1001", "offset=-1", "limit=x"] {
        api.expect(Method::GET, &format!("/api/v1/mappings?{bad}"), None, 400)
            .await;
    }
    let of_b = api
        .expect(
            Method::GET,
            &format!("/api/v1/mappings?client={b}"),
            None,
            200,
        )
        .await;
    assert_eq!(of_b["total"], 2);
    let of_a = api
        .expect(
            Method::GET,
            &format!("/api/v1/clients/{a}/mappings"),
            None,
            200,
        )
        .await;
    assert_eq!(of_a["items"][0]["id"], ids[0].as_str());

    // Replace keeps the id and creation time, changes the rest.
    let before = api
        .expect(
            Method::GET,
            &format!("/api/v1/mappings/{}", ids[0]),
            None,
            200,
        )
        .await;
    let moved_to = free_port();
    let replaced = api
        .expect(
            Method::PUT,
            &format!("/api/v1/mappings/{}", ids[0]),
            Some(mapping_body(moved_to, a, 10)),
            200,
        )
        .await;
    assert_eq!(replaced["id"], before["id"]);
    assert_eq!(replaced["created_at"], before["created_at"]);
    assert_eq!(replaced["entry"]["port"], moved_to);
    api.expect(
        Method::PUT,
        "/api/v1/mappings/m-000000000000",
        Some(mapping_body(free_port(), a, 10)),
        404,
    )
    .await;
    api.expect(
        Method::PUT,
        &format!("/api/v1/mappings/{}", ids[0]),
        Some(json!({})),
        400,
    )
    .await;

    // Moving a mapping to an owner whose quota is full is refused like creating one.
    let full = api
        .expect(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "full", "quota": {"max_mappings": 0}})),
            201,
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let mut owned = mapping_body(moved_to, a, 10);
    owned["owner"] = json!(full);
    api.expect(
        Method::PUT,
        &format!("/api/v1/mappings/{}", ids[0]),
        Some(owned),
        403,
    )
    .await;

    // Deleting a client takes its mappings with it.
    let gone = api
        .expect(Method::DELETE, &format!("/api/v1/clients/{b}"), None, 200)
        .await;
    assert_eq!(gone["mappings_deleted"], 2);
    let left = api.expect(Method::GET, "/api/v1/mappings", None, 200).await;
    assert_eq!(left["total"], 1);
    api.expect(
        Method::DELETE,
        &format!("/api/v1/mappings/{}", ids[0]),
        None,
        200,
    )
    .await;
    api.expect(
        Method::DELETE,
        &format!("/api/v1/mappings/{}", ids[0]),
        None,
        404,
    )
    .await;
    api.expect(Method::GET, "/api/v1/mappings/nonsense", None, 400)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_codes_are_issued_listed_redeemed_and_revoked() {
    let api = start(auth()).await;
    let target = api.new_client().await;
    let listener = api.new_client().await;
    let body = json!({
        "target_client": target,
        "target": {"kind": "fixed", "host": "127.0.0.1", "port": 5432},
        "description": "db",
    });
    let code = api
        .expect(Method::POST, "/api/v1/codes", Some(body.clone()), 201)
        .await;
    let text = code["code"].as_str().unwrap().to_owned();
    assert_eq!(code["state"]["state"], "unused");
    let data = api
        .expect(
            Method::POST,
            "/api/v1/codes",
            Some(json!({"target_client": target})),
            400,
        )
        .await;
    assert_eq!(data["field"], "target");
    api.expect(
        Method::POST,
        "/api/v1/codes",
        Some(json!({"target_client": 999_999_999_999u64, "target": body["target"]})),
        404,
    )
    .await;
    let listed = api
        .expect(
            Method::GET,
            &format!("/api/v1/codes?client={target}"),
            None,
            200,
        )
        .await;
    assert_eq!(listed["items"][0]["code"], text.as_str());
    api.expect(Method::GET, &format!("/api/v1/codes/{text}"), None, 200)
        .await;
    api.expect(Method::GET, "/api/v1/codes/not-a-code!", None, 400)
        .await;

    let own = json!({"listen_client": target, "listen_addr": "127.0.0.1:15432"});
    let data = api
        .expect(
            Method::POST,
            &format!("/api/v1/codes/{text}/activate"),
            Some(own),
            400,
        )
        .await;
    assert_eq!(data["field"], "listen_client");
    let redeem = json!({"listen_client": listener, "listen_addr": "127.0.0.1:15432"});
    let mapping = api
        .expect(
            Method::POST,
            &format!("/api/v1/codes/{text}/activate"),
            Some(redeem.clone()),
            201,
        )
        .await;
    assert_eq!(mapping["entry"]["listen_client"], listener);
    assert_eq!(mapping["target_client"], target);
    api.expect(
        Method::POST,
        &format!("/api/v1/codes/{text}/activate"),
        Some(redeem.clone()),
        409,
    )
    .await;
    api.expect(
        Method::POST,
        &format!("/api/v1/codes/{text}/revoke"),
        None,
        409,
    )
    .await;
    let used = api
        .expect(Method::GET, &format!("/api/v1/codes/{text}"), None, 200)
        .await;
    assert_eq!(used["state"]["state"], "used");

    let second = api
        .expect(Method::POST, "/api/v1/codes", Some(body), 201)
        .await;
    let second = second["code"].as_str().unwrap().to_owned();
    let revoked = api
        .expect(
            Method::POST,
            &format!("/api/v1/codes/{second}/revoke"),
            None,
            200,
        )
        .await;
    assert_eq!(revoked["state"]["state"], "revoked");
    api.expect(
        Method::POST,
        &format!("/api/v1/codes/{second}/activate"),
        Some(redeem),
        409,
    )
    .await;
}

/// The next session end an agent reports, within 5 s.
async fn next_disconnect(outputs: &mut mpsc::Receiver<AgentOutput>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), outputs.recv()).await {
            Ok(Some(
                AgentOutput::Disconnected { reason, .. } | AgentOutput::Stopped { reason },
            )) => {
                return format!("{reason:?}");
            }
            Ok(Some(_)) => {}
            Ok(None) => return "agent ended".into(),
            Err(_) => panic!("no disconnect within 5 s"),
        }
    }
}

fn secret(answer: &Value) -> (ClientId, ClientSecret) {
    (
        ClientId(answer["client"]["id"].as_u64().unwrap()),
        ClientSecret::parse(answer["secret"].as_str().unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_on_disconnect_reset_and_disable_and_traffic_is_counted() {
    let api = start(auth()).await;
    let (target, target_secret) = secret(
        &api.expect(Method::POST, "/api/v1/clients", Some(json!({})), 201)
            .await,
    );
    let mut agent = start_agent(api.node_addr, target, &target_secret, 11).await;
    let view = api
        .expect(
            Method::GET,
            &format!("/api/v1/clients/{}", target.0),
            None,
            200,
        )
        .await;
    assert_eq!(
        (view["online"].as_bool(), view["node"].as_str()),
        (Some(true), Some("node-1"))
    );

    // Traffic through a node-port mapping shows in the stats.
    let echo = echo_server().await;
    let port = free_port();
    let mapping = api
        .expect(
            Method::POST,
            "/api/v1/mappings",
            Some(mapping_body(port, target.0, echo.port())),
            201,
        )
        .await;
    let sent = vec![7u8; 100_000];
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match common::try_round_trip(port, sent.clone()).await {
                Ok(back) if back.len() == sent.len() => return back,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(back, sent);
    let traffic = api
        .expect(Method::GET, "/api/v1/stats/traffic", None, 200)
        .await;
    let row = &traffic["items"][0];
    assert_eq!(row["mapping"], mapping["id"]);
    assert!(row["bytes_to_target"].as_u64().unwrap() >= 100_000, "{row}");
    assert!(row["bytes_to_entry"].as_u64().unwrap() >= 100_000, "{row}");
    let stats = api.expect(Method::GET, "/api/v1/stats", None, 200).await;
    assert_eq!(stats["node"], "node-1");
    assert_eq!(stats["clients_online"], 1);
    assert_eq!(stats["mappings"], 1);
    assert!(stats["bytes_to_target"].as_u64().unwrap() >= 100_000);
    let nodes = api.expect(Method::GET, "/api/v1/nodes", None, 200).await;
    assert_eq!(nodes["items"][0]["id"], "node-1");
    assert_eq!(nodes["items"][0]["self"], true);
    api.expect(Method::GET, "/api/v1/nodes/node-1", None, 200)
        .await;
    api.expect(Method::GET, "/api/v1/nodes/node-9", None, 404)
        .await;
    api.expect(Method::GET, "/api/v1/nodes/NODE!", None, 400)
        .await;

    // Disconnect: GOAWAY Kicked, and the agent stays away.
    let answer = api
        .expect(
            Method::POST,
            &format!("/api/v1/clients/{}/disconnect", target.0),
            None,
            200,
        )
        .await;
    assert_eq!(answer["was_online"], true);
    assert!(next_disconnect(&mut agent).await.contains("Kicked"));

    // Reset: the old secret no longer logs in, the new one does, and the session it had ends.
    let mut agent = start_agent(api.node_addr, target, &target_secret, 12).await;
    let reset = api
        .expect(
            Method::POST,
            &format!("/api/v1/clients/{}/reset-credentials", target.0),
            None,
            200,
        )
        .await;
    let (_, new_secret) = secret(&reset);
    assert_ne!(new_secret.expose_secret(), target_secret.expose_secret());
    assert!(next_disconnect(&mut agent).await.contains("Kicked"));
    // An agent with the old secret never gets a session: it stops (the helper panics with
    // "agent ended") or keeps retrying past the timeout.
    let (node_addr, old) = (api.node_addr, target_secret.clone());
    let refused = tokio::spawn(async move { start_agent(node_addr, target, &old, 13).await });
    match tokio::time::timeout(Duration::from_secs(3), refused).await {
        Ok(Ok(_)) => panic!("the old secret must not log in"),
        Ok(Err(e)) => assert!(e.is_panic()),
        Err(_) => {}
    }
    let mut agent = start_agent(api.node_addr, target, &new_secret, 14).await;

    // Disabling the client ends its session too.
    api.expect(
        Method::PATCH,
        &format!("/api/v1/clients/{}", target.0),
        Some(json!({"status": "disabled"})),
        200,
    )
    .await;
    assert!(next_disconnect(&mut agent).await.contains("Kicked"));
    drop(api.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_jwts_and_the_rate_limit() {
    let api = start(auth()).await;
    let (status, answer) = api.call(Method::GET, "/api/v1/users", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (answer["success"].as_bool(), answer["code"].as_u64()),
        (Some(false), Some(401))
    );
    for token in ["wrong-key-0123456789", "", "Bearer", "a.b.c"] {
        let (status, _) = api
            .call(Method::GET, "/api/v1/users", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let (status, _) = api
        .call(Method::GET, "/api/v1/users", Some(READER), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = api
        .call(
            Method::POST,
            "/api/v1/users",
            Some(READER),
            Some(json!({"name": "eve"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");

    let exp = wall_now().0 / 1000 + 600;
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
        )
        .unwrap()
    };
    let admin = sign(json!({"sub": "ci", "exp": exp, "role": "admin"}));
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let reader = sign(json!({"sub": "grafana", "exp": exp}));
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&reader),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let expired = sign(json!({"sub": "ci", "exp": 1_000_000_000u64, "role": "admin"}));
    let (status, _) = api
        .call(Method::GET, "/api/v1/users", Some(&expired), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Health and the document need no token.
    let (status, _) = api.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);

    // Three requests at once per key, then one a second: the fourth is 429 with Retry-After,
    // and another key is not affected.
    let limited = start(auth().with_rate_limit(3, 1)).await;
    for _ in 0..3 {
        let (status, _) = limited
            .call(Method::GET, "/api/v1/stats", Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let request = Request::get("/api/v1/stats")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let response = limited.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let (status, _) = limited
        .call(Method::GET, "/api/v1/stats", Some(READER), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_configured_origins_only() {
    let api = start(
        auth()
            .with_cors_origins(&["https://console.example".into()])
            .unwrap(),
    )
    .await;
    let preflight = |origin: &'static str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/v1/users")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let response = api
        .router
        .clone()
        .oneshot(preflight("https://console.example"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://console.example"
    );
    let response = api
        .router
        .clone()
        .oneshot(preflight("https://evil.example"))
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    // Without configured origins there are no CORS headers at all.
    let plain = start(auth()).await;
    let response = plain
        .router
        .clone()
        .oneshot(preflight("https://console.example"))
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

/// Every operation of the OpenAPI document, with its path parameters filled in.
async fn operations(api: &Api) -> Vec<(Method, String)> {
    let (status, document) = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "123456789012")
                .replace("{code}", "abc-def-234");
            operations.push((
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                concrete,
            ));
        }
    }
    operations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_and_every_listed_route_is_served() {
    let api = start(auth()).await;
    let (_, document) = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    let mut paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/api/v1/clients",
            "/api/v1/clients/{id}",
            "/api/v1/clients/{id}/disconnect",
            "/api/v1/clients/{id}/mappings",
            "/api/v1/clients/{id}/reset-credentials",
            "/api/v1/codes",
            "/api/v1/codes/{code}",
            "/api/v1/codes/{code}/activate",
            "/api/v1/codes/{code}/revoke",
            "/api/v1/mappings",
            "/api/v1/mappings/{id}",
            "/api/v1/nodes",
            "/api/v1/nodes/{id}",
            "/api/v1/stats",
            "/api/v1/stats/traffic",
            "/api/v1/users",
            "/api/v1/users/{id}",
            "/api/v1/users/{id}/clients",
            "/api/v1/users/{id}/mappings",
            "/api/v1/users/{id}/quota",
            "/api/v1/users/{id}/stats",
            "/health",
            "/metrics",
            "/ready",
            "/version",
        ]
    );
    let operations = operations(&api).await;
    assert_eq!(operations.len(), 36, "{operations:?}");
    for (method, path) in operations {
        let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
        let (status, answer) = api.call(method.clone(), &path, Some(ADMIN), body).await;
        // Served: answered by the route in the envelope (a 404 names a missing object, not a
        // missing route), never 405 and never a server error.
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !status.is_server_error(),
            "{method} {path}: {status}"
        );
        if path.starts_with("/api/") {
            assert!(answer["success"].is_boolean(), "{method} {path}: {answer}");
            if status == StatusCode::NOT_FOUND {
                assert_ne!(answer["error"], "no such route", "{method} {path}");
            }
        }
    }
    // Every request was counted by its route template, and unknown paths under one label.
    let text = api.metrics.encode();
    assert!(
        text.contains(
            r#"tunnox_api_requests_total{method="GET",route="/api/v1/users/{id}",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tunnox_api_request_seconds_count{method="POST",route="/api/v1/mappings"} 1"#
        ),
        "{text}"
    );
    let (status, answer) = api
        .call(Method::GET, "/api/v1/nothing-here", Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no such route"))
    );
    let text = api.metrics.encode();
    assert!(
        text.contains(r#"route="unmatched",status="404"} 1"#),
        "{text}"
    );
    // Made-up methods share one label, so no client can grow the metrics without bound.
    for method in ["FOO", "BAR1", "BAZ2"] {
        let made_up = Method::from_bytes(method.as_bytes()).unwrap();
        api.call(made_up, "/anything", None, None).await;
    }
    let text = api.metrics.encode();
    assert!(
        text.contains(r#"method="other",route="unmatched",status="404"} 3"#),
        "{text}"
    );
    assert!(!text.contains("FOO"), "{text}");
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,24}".prop_map(Value::from),
            prop_oneof![
                Just("node_port"),
                Just("client_port"),
                Just("http_host"),
                Just("socks5"),
                Just("fixed"),
                Just("dynamic"),
                Just("tcp"),
                Just("udp"),
                Just("admin"),
                Just("127.0.0.1:80"),
                Just("disabled"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let keys = prop_oneof![
                Just("name".to_owned()),
                Just("entry".to_owned()),
                Just("kind".to_owned()),
                Just("port".to_owned()),
                Just("target".to_owned()),
                Just("target_client".to_owned()),
                Just("host".to_owned()),
                Just("owner".to_owned()),
                Just("label".to_owned()),
                Just("status".to_owned()),
                Just("quota".to_owned()),
                Just("max_clients".to_owned()),
                Just("listen_client".to_owned()),
                Just("listen_addr".to_owned()),
                Just("protocol".to_owned()),
                Just("options".to_owned()),
                "[a-z_]{1,12}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Bodies for every operation that takes one: JSON of any shape, and raw bytes.
    #[derive(Debug, Clone)]
    enum Input {
        Json(Value),
        Bytes(Vec<u8>),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            4 => json_value().prop_map(Input::Json),
            1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Input::Bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bodies_and_ids_get_4xx_or_success_never_5xx(
            inputs in prop::collection::vec(input(), 20),
            ids in prop::collection::vec("[ -~]{0,16}", 4),
        ) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let api = start(auth()).await;
                let operations = operations(&api).await;
                for (i, (method, path)) in operations.iter().enumerate() {
                    let with_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
                    let id: String = ids[i % ids.len()].chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                    let path = if id.is_empty() { path.clone() } else {
                        path.replace("123456789012", &id).replace("abc-def-234", &id)
                    };
                    let body = with_body.then(|| match &inputs[i % inputs.len()] {
                        Input::Json(v) => v.to_string().into_bytes(),
                        Input::Bytes(b) => b.clone(),
                    });
                    let (status, answer) = api.raw(method.clone(), &path, Some(ADMIN), body).await;
                    prop_assert!(!status.is_server_error(), "{} {}: {} {}", method, path, status, answer);
                    if path.starts_with("/api/") && status.is_client_error() {
                        prop_assert_eq!(answer["success"].as_bool(), Some(false));
                    }
                }
                Ok(())
            })?;
        }
    }
}
