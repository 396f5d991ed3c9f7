//! What the cluster knows about a client: its owner, kind, status and auth key.

use super::clock::UnixMillis;
use super::credentials::AuthKey;
use super::ids::{ClientId, UserId};
use super::validation::{ValidationError, check_text};

/// Longest client label, in characters.
pub const CLIENT_LABEL_MAX_CHARS: usize = 64;

/// How a client came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// Self-registered without an account; has no owner.
    Anonymous,
    /// Belongs to a user account.
    Registered,
}

/// Whether a client may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    /// May log in and carry traffic.
    Active,
    /// Turned off by its owner or an admin; may be re-enabled.
    Disabled,
    /// Refused for abuse; only an admin lifts it.
    Banned,
}

/// A client as stored: never its secret, only the derived [`AuthKey`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientRecord {
    /// The client's id.
    pub id: ClientId,
    /// The owning user; `None` exactly when the client is anonymous.
    pub owner: Option<UserId>,
    /// Anonymous or registered.
    pub kind: ClientKind,
    /// Free-form name shown in listings, at most 64 characters.
    pub label: String,
    /// What the client must prove knowledge of at login.
    pub auth_key: AuthKey,
    /// Whether it may log in.
    pub status: ClientStatus,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When a node last heard from it, if ever.
    pub last_seen: Option<UnixMillis>,
}

impl ClientRecord {
    /// A fresh active anonymous client.
    pub fn new_anonymous(id: ClientId, auth_key: AuthKey, now: UnixMillis) -> ClientRecord {
        ClientRecord {
            id,
            owner: None,
            kind: ClientKind::Anonymous,
            label: String::new(),
            auth_key,
            status: ClientStatus::Active,
            created_at: now,
            last_seen: None,
        }
    }

    /// A fresh active client owned by `owner`.
    pub fn new_registered(
        id: ClientId,
        owner: UserId,
        label: String,
        auth_key: AuthKey,
        now: UnixMillis,
    ) -> ClientRecord {
        ClientRecord {
            owner: Some(owner),
            kind: ClientKind::Registered,
            label,
            ..ClientRecord::new_anonymous(id, auth_key, now)
        }
    }

    /// Whether the client may log in now.
    pub fn may_log_in(&self) -> bool {
        self.status == ClientStatus::Active
    }

    /// Notes that a node heard from the client at `now`; never moves `last_seen` backwards.
    pub fn record_seen(&mut self, now: UnixMillis) {
        self.last_seen = Some(self.last_seen.map_or(now, |seen| seen.max(now)));
    }

    /// Binds the client to `owner`, making it registered (an anonymous client being claimed).
    pub fn bind_to(&mut self, owner: UserId) {
        self.owner = Some(owner);
        self.kind = ClientKind::Registered;
    }

    /// Checks that kind and owner agree and the label is acceptable.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match (self.kind, self.owner) {
            (ClientKind::Anonymous, Some(_)) => {
                return Err(ValidationError::new(
                    "owner",
                    "an anonymous client has no owner",
                ));
            }
            (ClientKind::Registered, None) => {
                return Err(ValidationError::new(
                    "owner",
                    "a registered client needs an owner",
                ));
            }
            _ => {}
        }
        if self.id.0 == 0 {
            return Err(ValidationError::new("id", "must not be 0"));
        }
        check_text("label", &self.label, CLIENT_LABEL_MAX_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuthKey {
        AuthKey::derive("secret")
    }

    #[test]
    fn constructors_give_consistent_records() {
        let a = ClientRecord::new_anonymous(ClientId(5), key(), UnixMillis(10));
        assert!(a.validate().is_ok());
        assert!(a.may_log_in());
        let r = ClientRecord::new_registered(
            ClientId(6),
            UserId(1),
            "laptop".into(),
            key(),
            UnixMillis(10),
        );
        assert!(r.validate().is_ok());
        assert_eq!(r.owner, Some(UserId(1)));
    }

    #[test]
    fn kind_and_owner_must_agree() {
        let mut a = ClientRecord::new_anonymous(ClientId(5), key(), UnixMillis(10));
        a.owner = Some(UserId(1));
        assert_eq!(a.validate().unwrap_err().field, "owner");
        a.bind_to(UserId(1));
        assert!(a.validate().is_ok());
        a.owner = None;
        assert_eq!(a.validate().unwrap_err().field, "owner");
    }

    #[test]
    fn id_and_label_are_checked() {
        let mut a = ClientRecord::new_anonymous(ClientId(0), key(), UnixMillis(10));
        assert_eq!(a.validate().unwrap_err().field, "id");
        a.id = ClientId(1);
        a.label = "x".repeat(65);
        assert_eq!(a.validate().unwrap_err().field, "label");
        a.label = "tab\there".into();
        assert_eq!(a.validate().unwrap_err().field, "label");
    }

    #[test]
    fn status_gates_login_and_last_seen_only_moves_forward() {
        let mut a = ClientRecord::new_anonymous(ClientId(5), key(), UnixMillis(10));
        a.record_seen(UnixMillis(50));
        a.record_seen(UnixMillis(20));
        assert_eq!(a.last_seen, Some(UnixMillis(50)));
        a.status = ClientStatus::Disabled;
        assert!(!a.may_log_in());
        a.status = ClientStatus::Banned;
        assert!(!a.may_log_in());
    }

    #[test]
    fn serde_round_trip_keeps_only_the_key() {
        let a = ClientRecord::new_registered(
            ClientId(6),
            UserId(1),
            "nas".into(),
            key(),
            UnixMillis(10),
        );
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"kind\":\"registered\""));
        assert!(json.contains("\"status\":\"active\""));
        assert!(!json.contains("secret"));
        assert_eq!(serde_json::from_str::<ClientRecord>(&json).unwrap(), a);
    }
}
