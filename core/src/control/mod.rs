//! The control-plane domain model and its rules: users and quotas, clients and their credentials,
//! mappings (entry → target client → target), connection codes, node records.
//!
//! Everything here is plain data plus the decisions made about it (`validate`, quota checks, code
//! activation, expiry). Nothing reads a clock or draws OS randomness: wall time arrives as
//! [`UnixMillis`] from the caller and random ids come from a seeded [`crate::rng::Rng`]. Records
//! are serde structs so storage, the broker and the management API can carry them as they are.
//!
//! | file | concept |
//! |---|---|
//! | `ids` | [`UserId`], [`ClientId`], [`NodeId`], [`MappingId`] |
//! | `clock` | [`UnixMillis`], wall time for expiry and leases |
//! | `user` | [`User`] and its [`Quota`] |
//! | `credentials` | [`ClientSecret`] and the [`AuthKey`] derived from it |
//! | `client` | [`ClientRecord`] |
//! | `addr` | `host:port` parsing: [`HostPort`], [`Host`] |
//! | `cidr` | [`Cidr`] networks for source allow-lists |
//! | `entry`, `target`, `protocol`, `options` | the parts of a mapping |
//! | `mapping` | [`Mapping`] and its consistency rules |
//! | `code` | [`Code`], the typed `abc-def-123` form |
//! | `connection_code` | [`ConnectionCode`], its lifecycle and single use |
//! | `node` | [`NodeRecord`] |
//! | `validation` | [`ValidationError`] |

mod addr;
mod cidr;
mod client;
mod clock;
mod code;
mod connection_code;
mod credentials;
mod entry;
mod ids;
mod mapping;
mod node;
mod options;
mod protocol;
mod target;
mod user;
mod validation;

pub use addr::{
    AddrError, Host, HostPort, NameProblem, check_host_name, check_http_host, parse_port,
};
pub use cidr::{Cidr, CidrError};
pub use client::{CLIENT_LABEL_MAX_CHARS, ClientKind, ClientRecord, ClientStatus};
pub use clock::UnixMillis;
pub use code::{ALPHABET as CODE_ALPHABET, CODE_LEN, Code, CodeParseError};
pub use connection_code::{
    ACTIVATION_TTL_MAX, ACTIVATION_TTL_MIN, CodeError, CodeRequest, CodeState, ConnectionCode,
    DEFAULT_ACTIVATION_TTL, DEFAULT_MAPPING_TTL, DESCRIPTION_MAX_CHARS, MAPPING_TTL_MAX,
    MAPPING_TTL_MIN,
};
pub use credentials::{AUTH_KEY_CONTEXT, AuthKey, ClientSecret};
pub use entry::Entry;
pub use ids::{ClientId, MappingId, NodeId, UserId};
pub use mapping::{Mapping, MappingStatus};
pub use node::{NodeLoad, NodeRecord};
pub use options::{MappingOptions, SOURCE_CIDRS_MAX};
pub use protocol::{Protocol, UnknownProtocol};
pub use target::Target;
pub use user::{Quota, QuotaError, User};
pub use validation::ValidationError;
