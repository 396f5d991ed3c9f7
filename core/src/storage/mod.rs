//! Storage logic that does no IO: the cache-aside rules the hybrid storage (a cache in front of a
//! remote source of truth) follows, and that the simulator checks.

pub mod cache;

pub use cache::{
    CacheAside, CacheEntry, CachePolicy, CacheStats, Lookup, ReadOutcome, ReadTicket, SourceDown,
    Versioned, replaces,
};
