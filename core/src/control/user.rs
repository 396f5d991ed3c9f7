//! User accounts and the quota each one is held to.

use super::clock::UnixMillis;
use super::ids::UserId;
use super::validation::{ValidationError, check_text};

/// Longest user name, in characters.
pub const USER_NAME_MAX_CHARS: usize = 64;

/// An account that owns clients and mappings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The account's id.
    pub id: UserId,
    /// Display name, 1-64 characters without control characters.
    pub name: String,
    /// Limits on what the user may create and use.
    pub quota: Quota,
    /// When the account was created.
    pub created_at: UnixMillis,
    /// A disabled user's clients may not log in and its mappings carry no traffic.
    pub disabled: bool,
}

impl User {
    /// Checks the fields a caller can get wrong (the name).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.name.trim().is_empty() {
            return Err(ValidationError::new("name", "must not be empty"));
        }
        check_text("name", &self.name, USER_NAME_MAX_CHARS)
    }
}

/// What a user may create and use.
///
/// Count limits are plain upper bounds: `0` means none allowed (so a mistaken `0` fails closed).
/// The two rate/volume limits use `0` for unlimited, since a zero rate would be meaningless.
/// Defaults: 10 clients, 50 mappings, 200 concurrent connections, unlimited bandwidth and traffic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Clients the user may own.
    pub max_clients: u32,
    /// Mappings the user may own.
    pub max_mappings: u32,
    /// Concurrent tunnelled connections over all the user's mappings.
    pub max_connections: u32,
    /// Bandwidth over all the user's mappings, bytes per second; `0` = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    /// Traffic per calendar month, bytes in both directions; `0` = unlimited.
    pub monthly_traffic_bytes: u64,
}

impl Default for Quota {
    fn default() -> Quota {
        Quota {
            max_clients: 10,
            max_mappings: 50,
            max_connections: 200,
            bandwidth_bytes_per_sec: 0,
            monthly_traffic_bytes: 0,
        }
    }
}

/// A quota limit that an action would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The user already owns `max` clients.
    #[error("client limit reached: {current} of {max} clients")]
    Clients {
        /// Clients the user owns now.
        current: u32,
        /// The limit.
        max: u32,
    },
    /// The user already owns `max` mappings.
    #[error("mapping limit reached: {current} of {max} mappings")]
    Mappings {
        /// Mappings the user owns now.
        current: u32,
        /// The limit.
        max: u32,
    },
    /// The user's mappings already carry `max` concurrent connections.
    #[error("connection limit reached: {current} of {max} concurrent connections")]
    Connections {
        /// Open connections now.
        current: u32,
        /// The limit.
        max: u32,
    },
    /// This month's traffic has used up the allowance.
    #[error("monthly traffic limit reached: {used_bytes} of {max_bytes} bytes used")]
    MonthlyTraffic {
        /// Bytes transferred this month.
        used_bytes: u64,
        /// The allowance.
        max_bytes: u64,
    },
}

impl Quota {
    /// Whether one more client may be added to the `current` ones.
    pub fn check_new_client(&self, current: u32) -> Result<(), QuotaError> {
        if current < self.max_clients {
            Ok(())
        } else {
            Err(QuotaError::Clients {
                current,
                max: self.max_clients,
            })
        }
    }

    /// Whether one more mapping may be added to the `current` ones.
    pub fn check_new_mapping(&self, current: u32) -> Result<(), QuotaError> {
        if current < self.max_mappings {
            Ok(())
        } else {
            Err(QuotaError::Mappings {
                current,
                max: self.max_mappings,
            })
        }
    }

    /// Whether one more connection may be opened next to the `current` open ones.
    pub fn check_new_connection(&self, current: u32) -> Result<(), QuotaError> {
        if current < self.max_connections {
            Ok(())
        } else {
            Err(QuotaError::Connections {
                current,
                max: self.max_connections,
            })
        }
    }

    /// Whether traffic may still flow after `used_this_month` bytes this month.
    pub fn check_traffic(&self, used_this_month: u64) -> Result<(), QuotaError> {
        if self.monthly_traffic_bytes == 0 || used_this_month < self.monthly_traffic_bytes {
            Ok(())
        } else {
            Err(QuotaError::MonthlyTraffic {
                used_bytes: used_this_month,
                max_bytes: self.monthly_traffic_bytes,
            })
        }
    }

    /// Bytes left this month after `used_this_month`, or `None` when traffic is unlimited.
    pub fn traffic_remaining(&self, used_this_month: u64) -> Option<u64> {
        (self.monthly_traffic_bytes != 0)
            .then(|| self.monthly_traffic_bytes.saturating_sub(used_this_month))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> Quota {
        Quota {
            max_clients: 2,
            max_mappings: 3,
            max_connections: 4,
            bandwidth_bytes_per_sec: 0,
            monthly_traffic_bytes: 1_000,
        }
    }

    #[test]
    fn count_limits_allow_below_and_refuse_at_and_above() {
        let q = quota();
        assert_eq!(q.check_new_client(0), Ok(()));
        assert_eq!(q.check_new_client(1), Ok(()));
        assert_eq!(
            q.check_new_client(2),
            Err(QuotaError::Clients { current: 2, max: 2 })
        );
        assert_eq!(
            q.check_new_client(3),
            Err(QuotaError::Clients { current: 3, max: 2 })
        );
        assert_eq!(q.check_new_mapping(2), Ok(()));
        assert_eq!(
            q.check_new_mapping(3),
            Err(QuotaError::Mappings { current: 3, max: 3 })
        );
        assert_eq!(
            q.check_new_mapping(u32::MAX),
            Err(QuotaError::Mappings {
                current: u32::MAX,
                max: 3
            })
        );
        assert_eq!(q.check_new_connection(3), Ok(()));
        assert_eq!(
            q.check_new_connection(4),
            Err(QuotaError::Connections { current: 4, max: 4 })
        );
        assert_eq!(
            q.check_new_connection(5),
            Err(QuotaError::Connections { current: 5, max: 4 })
        );
    }

    #[test]
    fn zero_count_limits_allow_nothing() {
        let q = Quota {
            max_clients: 0,
            max_mappings: 0,
            max_connections: 0,
            ..Quota::default()
        };
        assert!(q.check_new_client(0).is_err());
        assert!(q.check_new_mapping(0).is_err());
        assert!(q.check_new_connection(0).is_err());
    }

    #[test]
    fn traffic_limit_applies_at_and_around_the_allowance() {
        let q = quota();
        assert_eq!(q.check_traffic(0), Ok(()));
        assert_eq!(q.check_traffic(999), Ok(()));
        assert_eq!(
            q.check_traffic(1_000),
            Err(QuotaError::MonthlyTraffic {
                used_bytes: 1_000,
                max_bytes: 1_000
            })
        );
        assert!(q.check_traffic(1_001).is_err());
        assert_eq!(q.traffic_remaining(400), Some(600));
        assert_eq!(q.traffic_remaining(4_000), Some(0));
        let unlimited = Quota::default();
        assert_eq!(unlimited.check_traffic(u64::MAX), Ok(()));
        assert_eq!(unlimited.traffic_remaining(5), None);
    }

    #[test]
    fn errors_name_the_limit_and_the_numbers() {
        let e = quota().check_new_mapping(3).unwrap_err();
        assert_eq!(e.to_string(), "mapping limit reached: 3 of 3 mappings");
        let e = quota().check_traffic(1_500).unwrap_err();
        assert_eq!(
            e.to_string(),
            "monthly traffic limit reached: 1500 of 1000 bytes used"
        );
    }

    #[test]
    fn defaults_fill_missing_quota_fields() {
        let q: Quota = serde_json::from_str(r#"{"max_mappings": 5}"#).unwrap();
        assert_eq!(
            q,
            Quota {
                max_mappings: 5,
                ..Quota::default()
            }
        );
        assert_eq!(Quota::default().max_clients, 10);
    }

    #[test]
    fn user_names_are_checked() {
        let mut u = User {
            id: UserId(1),
            name: "alice".into(),
            quota: Quota::default(),
            created_at: UnixMillis(0),
            disabled: false,
        };
        assert!(u.validate().is_ok());
        for bad in ["", "  ", "a\u{7}b", &"x".repeat(65)] {
            u.name = bad.to_owned();
            assert_eq!(u.validate().unwrap_err().field, "name", "{bad:?}");
        }
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(serde_json::from_str::<User>(&json).unwrap(), u);
    }
}
