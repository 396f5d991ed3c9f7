//! Connection codes: a target client offers a service under a short one-time [`Code`]; the first
//! listen client to redeem it before the deadline gets a mapping, and nobody else ever does.
//!
//! Decisions:
//! - the code is single-use: after one successful [`ConnectionCode::activate`] every later attempt
//!   fails with [`CodeError::AlreadyUsed`]; failed attempts (expired, invalid listen address,
//!   self-activation) leave it unused;
//! - a client redeeming its own code is refused ([`CodeError::SelfActivation`]) and the code stays
//!   usable: a code exists to be shared, so this is almost always a paste into the wrong terminal,
//!   and burning the code for a pointless self-mapping would force the sharer to make a new one;
//! - the mapping is charged to the code's `owner` (the offering side), since the redeemer may be
//!   anonymous; quota checks belong to the caller, before activation;
//! - the code is usable while `now < activation_deadline`; the mapping lives `mapping_ttl` from the
//!   moment of activation.

use super::clock::{UnixMillis, duration_millis};
use super::code::Code;
use super::entry::Entry;
use super::ids::{ClientId, MappingId, UserId};
use super::mapping::{Mapping, MappingStatus};
use super::options::MappingOptions;
use super::protocol::Protocol;
use super::target::Target;
use super::validation::{ValidationError, check_text};
use crate::rng::Rng;
use crate::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a fresh code can be redeemed, unless asked otherwise: 10 minutes.
pub const DEFAULT_ACTIVATION_TTL: Duration = Duration::from_secs(10 * 60);
/// How long the mapping from a redeemed code lives, unless asked otherwise: 7 days.
pub const DEFAULT_MAPPING_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Shortest activation window: 1 minute (enough to read a code out over the phone).
pub const ACTIVATION_TTL_MIN: Duration = MINUTE;
/// Longest activation window: 24 hours (a guessable short code must not lie around for long).
pub const ACTIVATION_TTL_MAX: Duration = DAY;
/// Shortest mapping lifetime: 1 minute.
pub const MAPPING_TTL_MIN: Duration = MINUTE;
/// Longest mapping lifetime: 365 days (codes are for ad-hoc sharing; permanent mappings are made
/// through the management API).
pub const MAPPING_TTL_MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Longest description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 256;

/// Where a code is in its life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CodeState {
    /// Not redeemed yet (it may still have expired).
    Unused,
    /// Redeemed once, for good.
    Used {
        /// The listen client that redeemed it.
        by: ClientId,
        /// The mapping it created.
        mapping: MappingId,
        /// When.
        at: UnixMillis,
    },
    /// Withdrawn by its creator before use.
    Revoked {
        /// When.
        at: UnixMillis,
    },
}

/// Why a code cannot be redeemed or revoked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// The activation deadline has passed.
    #[error("connection code expired at {at}")]
    Expired {
        /// The deadline.
        at: UnixMillis,
    },
    /// The code has been redeemed already.
    #[error("connection code has already been used")]
    AlreadyUsed,
    /// The code was revoked.
    #[error("connection code was revoked at {at}")]
    Revoked {
        /// When it was revoked.
        at: UnixMillis,
    },
    /// The target client tried to redeem its own code.
    #[error("a client cannot redeem its own connection code")]
    SelfActivation,
    /// The mapping it would create is invalid (e.g. a bad listen address).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// What a target client asks for when it creates a code; [`CodeRequest::new`] fills the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRequest {
    /// The client offering the service (it will dial the target).
    pub target_client: ClientId,
    /// Who the resulting mapping is charged to.
    pub owner: Option<UserId>,
    /// What the target client dials: fixed for tcp/udp, dynamic for socks5.
    pub target: Target,
    /// tcp or udp with a fixed target, socks5 with a dynamic one.
    pub protocol: Protocol,
    /// How long the code can be redeemed, within 1 minute ..= 24 hours.
    pub activation_ttl: Duration,
    /// How long the resulting mapping lives, within 1 minute ..= 365 days.
    pub mapping_ttl: Duration,
    /// Free text shown to the redeemer, at most 256 characters.
    pub description: String,
}

impl CodeRequest {
    /// A request with the default TTLs (10 minutes to redeem, a 7-day mapping), no owner and no
    /// description.
    pub fn new(target_client: ClientId, target: Target, protocol: Protocol) -> CodeRequest {
        CodeRequest {
            target_client,
            owner: None,
            target,
            protocol,
            activation_ttl: DEFAULT_ACTIVATION_TTL,
            mapping_ttl: DEFAULT_MAPPING_TTL,
            description: String::new(),
        }
    }

    /// Sets the owner the mapping is charged to.
    pub fn with_owner(mut self, owner: UserId) -> CodeRequest {
        self.owner = Some(owner);
        self
    }

    /// Sets how long the code can be redeemed.
    pub fn with_activation_ttl(mut self, ttl: Duration) -> CodeRequest {
        self.activation_ttl = ttl;
        self
    }

    /// Sets how long the resulting mapping lives.
    pub fn with_mapping_ttl(mut self, ttl: Duration) -> CodeRequest {
        self.mapping_ttl = ttl;
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> CodeRequest {
        self.description = description.into();
        self
    }

    /// Checks TTL bounds, target, protocol and description; errors name the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.target_client.0 == 0 {
            return Err(ValidationError::new("target_client", "must not be 0"));
        }
        if !(ACTIVATION_TTL_MIN..=ACTIVATION_TTL_MAX).contains(&self.activation_ttl) {
            return Err(ValidationError::new(
                "activation_ttl",
                "must be 1 minute to 24 hours",
            ));
        }
        if !(MAPPING_TTL_MIN..=MAPPING_TTL_MAX).contains(&self.mapping_ttl) {
            return Err(ValidationError::new(
                "mapping_ttl",
                "must be 1 minute to 365 days",
            ));
        }
        self.target.validate()?;
        match (&self.target, self.protocol) {
            (Target::Fixed { .. }, Protocol::Tcp | Protocol::Udp) => {}
            (Target::Dynamic, Protocol::Socks5) => {}
            (Target::Fixed { .. }, Protocol::Socks5) | (Target::Dynamic, _) => {
                return Err(ValidationError::new(
                    "protocol",
                    "a dynamic target goes with socks5, a fixed one with tcp or udp",
                ));
            }
            (_, Protocol::Http) => {
                return Err(ValidationError::new(
                    "protocol",
                    "connection codes carry tcp, udp or socks5 (http is served by host name)",
                ));
            }
        }
        check_text("description", &self.description, DESCRIPTION_MAX_CHARS)
    }
}

/// A one-time code and the offer behind it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionCode {
    code: Code,
    target_client: ClientId,
    owner: Option<UserId>,
    target: Target,
    protocol: Protocol,
    created_at: UnixMillis,
    activation_deadline: UnixMillis,
    #[serde(rename = "mapping_ttl_ms", with = "duration_millis")]
    mapping_ttl: Duration,
    state: CodeState,
    description: String,
}

impl ConnectionCode {
    /// Creates an unused code from a validated `request` at `now`. `code` comes from
    /// [`Code::generate`]; the caller claims it in storage and retries with a new one on collision.
    pub fn issue(
        code: Code,
        request: CodeRequest,
        now: UnixMillis,
    ) -> Result<ConnectionCode, ValidationError> {
        request.validate()?;
        Ok(ConnectionCode {
            code,
            target_client: request.target_client,
            owner: request.owner,
            target: request.target,
            protocol: request.protocol,
            created_at: now,
            activation_deadline: now.saturating_add(request.activation_ttl),
            mapping_ttl: request.mapping_ttl,
            state: CodeState::Unused,
            description: request.description,
        })
    }

    /// The code itself.
    pub fn code(&self) -> &Code {
        &self.code
    }

    /// The client offering the service.
    pub fn target_client(&self) -> ClientId {
        self.target_client
    }

    /// Who the mapping will be charged to.
    pub fn owner(&self) -> Option<UserId> {
        self.owner
    }

    /// What the target client will dial.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The protocol of the mapping to be.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// When the code was issued.
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// The first instant at which the code can no longer be redeemed.
    pub fn activation_deadline(&self) -> UnixMillis {
        self.activation_deadline
    }

    /// How long the mapping will live once created.
    pub fn mapping_ttl(&self) -> Duration {
        self.mapping_ttl
    }

    /// Unused, used or revoked.
    pub fn state(&self) -> &CodeState {
        &self.state
    }

    /// The creator's description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether someone could redeem the code at `now`.
    pub fn is_redeemable(&self, now: UnixMillis) -> bool {
        self.state == CodeState::Unused && now < self.activation_deadline
    }

    /// Redeems the code for `listen_client`, which will listen on `listen_addr`: returns the new
    /// mapping (a `client_port` entry, or `socks5` for a dynamic target) expiring `mapping_ttl`
    /// from `now`, and marks the code used. On any error the code is unchanged.
    pub fn activate(
        &mut self,
        now: UnixMillis,
        listen_client: ClientId,
        listen_addr: &str,
        rng: &mut Rng,
    ) -> Result<Mapping, CodeError> {
        match &self.state {
            CodeState::Unused => {}
            CodeState::Used { .. } => return Err(CodeError::AlreadyUsed),
            CodeState::Revoked { at } => return Err(CodeError::Revoked { at: *at }),
        }
        if now >= self.activation_deadline {
            return Err(CodeError::Expired {
                at: self.activation_deadline,
            });
        }
        if listen_client == self.target_client {
            return Err(CodeError::SelfActivation);
        }
        let listen_addr = listen_addr.to_owned();
        let entry = match self.target {
            Target::Dynamic => Entry::Socks5 {
                listen_client,
                listen_addr,
            },
            Target::Fixed { .. } => Entry::ClientPort {
                listen_client,
                listen_addr,
            },
        };
        let mapping = Mapping {
            id: MappingId::generate(rng),
            owner: self.owner,
            entry,
            target_client: self.target_client,
            target: self.target.clone(),
            protocol: self.protocol,
            options: MappingOptions::default(),
            created_at: now,
            expires_at: Some(now.saturating_add(self.mapping_ttl)),
            status: MappingStatus::Active,
        };
        mapping.validate()?;
        self.state = CodeState::Used {
            by: listen_client,
            mapping: mapping.id.clone(),
            at: now,
        };
        Ok(mapping)
    }

    /// Withdraws an unused code (expired or not); a used or already revoked code cannot be revoked.
    pub fn revoke(&mut self, now: UnixMillis) -> Result<(), CodeError> {
        match &self.state {
            CodeState::Unused => {
                self.state = CodeState::Revoked { at: now };
                Ok(())
            }
            CodeState::Used { .. } => Err(CodeError::AlreadyUsed),
            CodeState::Revoked { at } => Err(CodeError::Revoked { at: *at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    const TARGET: ClientId = ClientId(200);
    const LISTEN: ClientId = ClientId(100);
    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    fn fixed() -> Target {
        Target::Fixed {
            host: "10.0.0.5".into(),
            port: 3306,
        }
    }

    fn issue(request: CodeRequest) -> ConnectionCode {
        let code = Code::generate(&mut Rng::seed_from_u64(1));
        ConnectionCode::issue(code, request, T0).unwrap()
    }

    fn tcp_code() -> ConnectionCode {
        issue(CodeRequest::new(TARGET, fixed(), Protocol::Tcp).with_owner(UserId(7)))
    }

    #[test]
    fn defaults_are_ten_minutes_and_seven_days() {
        let c = tcp_code();
        assert_eq!(c.activation_deadline(), UnixMillis(T0.0 + 10 * 60 * 1000));
        assert_eq!(c.mapping_ttl(), Duration::from_secs(7 * 86_400));
        assert_eq!(c.state(), &CodeState::Unused);
        assert!(c.is_redeemable(T0));
    }

    #[test]
    fn activation_creates_a_valid_client_port_mapping_with_the_right_expiry() {
        let mut c = tcp_code();
        let now = UnixMillis(T0.0 + 60_000);
        let m = c
            .activate(now, LISTEN, "127.0.0.1:13306", &mut Rng::seed_from_u64(2))
            .unwrap();
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(
            m.entry,
            Entry::ClientPort {
                listen_client: LISTEN,
                listen_addr: "127.0.0.1:13306".into()
            }
        );
        assert_eq!(m.target_client, TARGET);
        assert_eq!(m.target, fixed());
        assert_eq!(m.protocol, Protocol::Tcp);
        assert_eq!(m.owner, Some(UserId(7)));
        assert_eq!(m.created_at, now);
        assert_eq!(m.expires_at, Some(UnixMillis(now.0 + 7 * 86_400_000)));
        assert!(m.is_usable(now));
        assert_eq!(
            c.state(),
            &CodeState::Used {
                by: LISTEN,
                mapping: m.id.clone(),
                at: now
            }
        );
        assert!(!c.is_redeemable(now));
    }

    #[test]
    fn dynamic_targets_give_socks5_mappings() {
        let mut c = issue(
            CodeRequest::new(TARGET, Target::Dynamic, Protocol::Socks5)
                .with_mapping_ttl(Duration::from_secs(3_600)),
        );
        let m = c
            .activate(T0, LISTEN, "127.0.0.1:1080", &mut Rng::seed_from_u64(2))
            .unwrap();
        assert_eq!(
            m.entry,
            Entry::Socks5 {
                listen_client: LISTEN,
                listen_addr: "127.0.0.1:1080".into()
            }
        );
        assert_eq!(m.expires_at, Some(UnixMillis(T0.0 + 3_600_000)));
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn a_code_is_single_use() {
        let mut c = tcp_code();
        let mut rng = Rng::seed_from_u64(3);
        c.activate(T0, LISTEN, "127.0.0.1:1", &mut rng).unwrap();
        let before = c.clone();
        assert_eq!(
            c.activate(T0, LISTEN, "127.0.0.1:1", &mut rng),
            Err(CodeError::AlreadyUsed)
        );
        assert_eq!(
            c.activate(T0, ClientId(300), "127.0.0.1:2", &mut rng),
            Err(CodeError::AlreadyUsed)
        );
        assert_eq!(c, before);
    }

    #[test]
    fn the_deadline_is_exclusive() {
        let mut c = tcp_code();
        let deadline = c.activation_deadline();
        let mut rng = Rng::seed_from_u64(4);
        assert_eq!(
            c.activate(deadline, LISTEN, "127.0.0.1:1", &mut rng),
            Err(CodeError::Expired { at: deadline })
        );
        assert_eq!(
            c.activate(UnixMillis(deadline.0 + 1), LISTEN, "127.0.0.1:1", &mut rng),
            Err(CodeError::Expired { at: deadline })
        );
        assert_eq!(c.state(), &CodeState::Unused);
        assert!(
            c.activate(UnixMillis(deadline.0 - 1), LISTEN, "127.0.0.1:1", &mut rng)
                .is_ok()
        );
    }

    #[test]
    fn revoked_codes_cannot_be_used_and_used_codes_cannot_be_revoked() {
        let mut c = tcp_code();
        let mut rng = Rng::seed_from_u64(5);
        let at = UnixMillis(T0.0 + 5);
        assert_eq!(c.revoke(at), Ok(()));
        assert_eq!(
            c.activate(at, LISTEN, "127.0.0.1:1", &mut rng),
            Err(CodeError::Revoked { at })
        );
        assert_eq!(
            c.revoke(UnixMillis(T0.0 + 9)),
            Err(CodeError::Revoked { at })
        );

        let mut used = tcp_code();
        used.activate(T0, LISTEN, "127.0.0.1:1", &mut rng).unwrap();
        assert_eq!(used.revoke(T0), Err(CodeError::AlreadyUsed));
        assert!(matches!(used.state(), CodeState::Used { .. }));

        let mut stale = tcp_code();
        assert_eq!(
            stale.revoke(UnixMillis(u64::MAX)),
            Ok(()),
            "an expired unused code may be revoked"
        );
    }

    #[test]
    fn self_activation_is_refused_and_leaves_the_code_usable() {
        let mut c = tcp_code();
        let mut rng = Rng::seed_from_u64(6);
        assert_eq!(
            c.activate(T0, TARGET, "127.0.0.1:1", &mut rng),
            Err(CodeError::SelfActivation)
        );
        assert!(c.is_redeemable(T0));
        assert!(c.activate(T0, LISTEN, "127.0.0.1:1", &mut rng).is_ok());
    }

    #[test]
    fn an_invalid_listen_address_is_reported_and_leaves_the_code_usable() {
        let mut c = tcp_code();
        let mut rng = Rng::seed_from_u64(7);
        let err = c.activate(T0, LISTEN, "127.0.0.1:0", &mut rng).unwrap_err();
        let CodeError::Invalid(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(e.field, "entry.listen_addr");
        assert!(matches!(
            c.activate(T0, ClientId(0), "127.0.0.1:1", &mut rng),
            Err(CodeError::Invalid(_))
        ));
        assert!(c.is_redeemable(T0));
    }

    #[test]
    fn requests_are_validated() {
        let base = || CodeRequest::new(TARGET, fixed(), Protocol::Tcp);
        let min = Duration::from_secs(60);
        assert_eq!(base().with_activation_ttl(min).validate(), Ok(()));
        assert_eq!(base().with_activation_ttl(DAY).validate(), Ok(()));
        assert_eq!(base().with_mapping_ttl(min).validate(), Ok(()));
        assert_eq!(base().with_mapping_ttl(MAPPING_TTL_MAX).validate(), Ok(()));
        assert_eq!(base().with_description("my database").validate(), Ok(()));
        assert_eq!(
            CodeRequest::new(TARGET, fixed(), Protocol::Udp).validate(),
            Ok(())
        );
        let cases = [
            (
                base().with_activation_ttl(min - Duration::from_millis(1)),
                "activation_ttl",
            ),
            (
                base().with_activation_ttl(DAY + Duration::from_millis(1)),
                "activation_ttl",
            ),
            (base().with_activation_ttl(Duration::ZERO), "activation_ttl"),
            (
                base().with_mapping_ttl(min - Duration::from_millis(1)),
                "mapping_ttl",
            ),
            (
                base().with_mapping_ttl(MAPPING_TTL_MAX + Duration::from_secs(3_600)),
                "mapping_ttl",
            ),
            (base().with_description("x".repeat(257)), "description"),
            (
                CodeRequest::new(ClientId(0), fixed(), Protocol::Tcp),
                "target_client",
            ),
            (
                CodeRequest::new(
                    TARGET,
                    Target::Fixed {
                        host: "h".into(),
                        port: 0,
                    },
                    Protocol::Tcp,
                ),
                "target.port",
            ),
            (
                CodeRequest::new(
                    TARGET,
                    Target::Fixed {
                        host: "a b".into(),
                        port: 1,
                    },
                    Protocol::Tcp,
                ),
                "target.host",
            ),
            (
                CodeRequest::new(TARGET, Target::Dynamic, Protocol::Tcp),
                "protocol",
            ),
            (
                CodeRequest::new(TARGET, fixed(), Protocol::Socks5),
                "protocol",
            ),
            (
                CodeRequest::new(TARGET, fixed(), Protocol::Http),
                "protocol",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(request.validate().unwrap_err().field, field, "{request:?}");
            let code = Code::generate(&mut Rng::seed_from_u64(1));
            assert_eq!(
                ConnectionCode::issue(code, request, T0).unwrap_err().field,
                field
            );
        }
    }

    #[test]
    fn serde_round_trip_in_every_state() {
        let mut rng = Rng::seed_from_u64(8);
        let unused = tcp_code();
        let mut used = tcp_code();
        used.activate(T0, LISTEN, "127.0.0.1:1", &mut rng).unwrap();
        let mut revoked = tcp_code();
        revoked.revoke(T0).unwrap();
        for c in [unused, used, revoked] {
            let json = serde_json::to_string(&c).unwrap();
            assert!(json.contains("\"mapping_ttl_ms\":604800000"), "{json}");
            assert_eq!(serde_json::from_str::<ConnectionCode>(&json).unwrap(), c);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Activate { client: u64, at_ms: u64 },
        Revoke { at_ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (199u64..=202, 0u64..700_000)
                .prop_map(|(client, at_ms)| Op::Activate { client, at_ms }),
            (0u64..700_000).prop_map(|at_ms| Op::Revoke { at_ms }),
        ]
    }

    proptest! {
        #[test]
        fn at_most_one_activation_ever_succeeds(ops in proptest::collection::vec(op(), 0..20)) {
            let mut c = tcp_code();
            let mut rng = Rng::seed_from_u64(9);
            let mut successes = 0;
            let mut revoked = false;
            for op in ops {
                match op {
                    Op::Activate { client, at_ms } => {
                        let before = c.clone();
                        let now = UnixMillis(T0.0 + at_ms);
                        match c.activate(now, ClientId(client), "127.0.0.1:9000", &mut rng) {
                            Ok(m) => {
                                prop_assert!(!revoked && successes == 0);
                                prop_assert!(now < c.activation_deadline() && client != TARGET.0);
                                prop_assert_eq!(m.validate(), Ok(()));
                                successes += 1;
                            }
                            Err(_) => prop_assert_eq!(&c, &before),
                        }
                    }
                    Op::Revoke { at_ms } => {
                        let ok = c.revoke(UnixMillis(T0.0 + at_ms)).is_ok();
                        prop_assert_eq!(ok, !revoked && successes == 0);
                        revoked |= ok;
                    }
                }
            }
            prop_assert!(successes <= 1);
        }
    }
}
