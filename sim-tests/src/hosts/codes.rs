//! Connection codes in the simulation: some clients offer codes, others redeem them while faults
//! hit, and a shared board records every outcome so a run can check that no code was ever
//! redeemed twice.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// What the clients of one run did with connection codes (shared by the agent hosts; the world
/// is single-threaded, so a `RefCell` suffices).
#[derive(Debug, Default)]
pub struct CodeBoard {
    /// Codes offered, in the order they were created.
    pub offered: Vec<String>,
    /// Successful redemptions per code.
    pub redeemed: BTreeMap<String, u32>,
    /// Failed redemptions by error kind.
    pub refused: BTreeMap<String, u64>,
}

/// A board the agents of one run share.
pub type SharedBoard = Rc<RefCell<CodeBoard>>;

impl CodeBoard {
    /// A new shared board.
    pub fn shared() -> SharedBoard {
        Rc::new(RefCell::new(CodeBoard::default()))
    }

    /// Checks that no code was redeemed more than once.
    pub fn check(&self) -> Result<(), String> {
        match self.redeemed.iter().find(|(_, n)| **n > 1) {
            Some((code, n)) => Err(format!("connection code {code} was redeemed {n} times")),
            None => Ok(()),
        }
    }
}

/// What one agent does with codes, and when (offsets from the host's first start, in its own
/// clock).
#[derive(Debug, Clone)]
pub enum CodeRole {
    /// Offers a code for `host:port` at each time.
    Offer {
        /// When.
        at: Vec<tunnox_runtime_sim::Duration>,
        /// The service the code exposes.
        host: String,
        /// Its port.
        port: u16,
    },
    /// Redeems a random offered code at each time, listening on `first_port + n`.
    Redeem {
        /// When.
        at: Vec<tunnox_runtime_sim::Duration>,
        /// The first listen port used.
        first_port: u16,
    },
}

impl CodeRole {
    /// The offsets, in order.
    pub fn times(&self) -> &[tunnox_runtime_sim::Duration] {
        match self {
            CodeRole::Offer { at, .. } | CodeRole::Redeem { at, .. } => at,
        }
    }
}
