//! Which session is the live one for each client, so a second login replaces the first cleanly.

use std::collections::BTreeMap;

/// Identifies one session (connection) within a node.
pub type SessionKey = u64;

/// Maps each logged-in client to its one live session.
#[derive(Debug, Default, Clone)]
pub struct SessionRegistry {
    by_client: BTreeMap<u64, SessionKey>,
}

impl SessionRegistry {
    /// An empty registry.
    pub fn new() -> SessionRegistry {
        SessionRegistry::default()
    }

    /// Records `session` as the live session of `client_id`. Returns the session it replaces,
    /// which the node must close with GOAWAY(Replaced).
    pub fn register(&mut self, client_id: u64, session: SessionKey) -> Option<SessionKey> {
        self.by_client
            .insert(client_id, session)
            .filter(|old| *old != session)
    }

    /// Forgets `session` if it is still the live one of `client_id`; a replaced session's late
    /// teardown leaves its successor in place. Returns whether it was removed.
    pub fn unregister(&mut self, client_id: u64, session: SessionKey) -> bool {
        if self.by_client.get(&client_id) == Some(&session) {
            self.by_client.remove(&client_id);
            true
        } else {
            false
        }
    }

    /// The live session of `client_id`.
    pub fn live_session(&self, client_id: u64) -> Option<SessionKey> {
        self.by_client.get(&client_id).copied()
    }

    /// Number of clients online.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no client is online.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Checks that no session is live for two clients.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (client, session) in &self.by_client {
            if !seen.insert(*session) {
                return Err(format!(
                    "session {session} is live for two clients (one is {client})"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_login_replaces_the_first_and_late_teardown_is_harmless() {
        let mut r = SessionRegistry::new();
        assert_eq!(r.register(7, 100), None);
        assert_eq!(r.register(7, 101), Some(100));
        // The replaced session's teardown must not log the client out.
        assert!(!r.unregister(7, 100));
        assert_eq!(r.live_session(7), Some(101));
        assert!(r.unregister(7, 101));
        assert!(r.is_empty());
        assert_eq!(r.register(8, 5), None);
        assert_eq!(
            r.register(8, 5),
            None,
            "re-registering the same session replaces nothing"
        );
        r.check_invariants().unwrap();
    }
}
