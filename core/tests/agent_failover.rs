//! An agent that knows several node addresses tries them in turn: each reconnect goes to the
//! next address, wrapping around (client failover, `tunnox client --server a --server b ...`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::rng::Rng;
use tunnox_core::session::{AuthKey, ClientIdentity};
use tunnox_core::time::Instant;

#[test]
fn reconnects_rotate_through_every_node_address() {
    let identity = ClientIdentity::Login {
        client_id: 42,
        key: AuthKey::derive("secret"),
    };
    let mut now = Instant::ZERO;
    let mut agent = Agent::new(now, AgentConfig::new(identity, 3), Rng::seed_from_u64(1));
    let mut servers = Vec::new();
    for _ in 0..7 {
        let attempt = loop {
            if let Some(AgentOutput::Connect { attempt, server }) = agent.poll_output() {
                servers.push(server);
                break attempt;
            }
            // No dial asked yet: the reconnect backoff runs first.
            now = agent.poll_timeout().expect("a reconnect is scheduled");
            agent.handle_timeout(now);
        };
        agent.connect_failed(now, attempt);
    }
    assert_eq!(servers, vec![0, 1, 2, 0, 1, 2, 0]);
    assert!(!agent.is_stopped(), "an agent never gives up by default");
}
