//! The durable control state a node serves: users, clients and mappings.

use std::collections::BTreeMap;

use crate::control::{
    ClientId, ClientRecord, Code, ConnectionCode, Entry, Mapping, MappingId, User, UserId,
};

/// Everything a node must find again after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlState {
    /// Users by id.
    pub users: BTreeMap<UserId, User>,
    /// Clients by id.
    pub clients: BTreeMap<ClientId, ClientRecord>,
    /// Mappings by id.
    pub mappings: BTreeMap<MappingId, Mapping>,
    /// Connection codes by code (unused, used and revoked ones until they are removed).
    #[serde(default)]
    pub codes: BTreeMap<Code, ConnectionCode>,
}

/// One durable change, emitted by the node for its storage to apply in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StateChange {
    /// Insert or replace a user.
    PutUser(User),
    /// Remove a user (one that owns no clients or mappings).
    DeleteUser(UserId),
    /// Insert or replace a client.
    PutClient(ClientRecord),
    /// Remove a client (its mappings are deleted first, each by its own change).
    DeleteClient(ClientId),
    /// Insert or replace a mapping.
    PutMapping(Mapping),
    /// Remove a mapping.
    DeleteMapping(MappingId),
    /// Insert or replace a connection code.
    PutCode(ConnectionCode),
    /// Remove a connection code.
    DeleteCode(Code),
}

impl ControlState {
    /// Applies one change (what storage does, and what a restarted node replays).
    pub fn apply(&mut self, change: &StateChange) {
        match change {
            StateChange::PutUser(user) => {
                self.users.insert(user.id, user.clone());
            }
            StateChange::DeleteUser(id) => {
                self.users.remove(id);
            }
            StateChange::PutClient(client) => {
                self.clients.insert(client.id, client.clone());
            }
            StateChange::DeleteClient(id) => {
                self.clients.remove(id);
            }
            StateChange::PutMapping(mapping) => {
                self.mappings.insert(mapping.id.clone(), mapping.clone());
            }
            StateChange::DeleteMapping(id) => {
                self.mappings.remove(id);
            }
            StateChange::PutCode(code) => {
                self.codes.insert(code.code().clone(), code.clone());
            }
            StateChange::DeleteCode(code) => {
                self.codes.remove(code);
            }
        }
    }

    /// The changes that turn `self` into `target`: puts for what is new or different, deletes
    /// for what `target` no longer has. Puts come first (users before the clients and mappings
    /// that name them) and deletes last (mappings and codes before the clients and users they
    /// name), so no intermediate state has a dangling owner.
    pub fn changes_to(&self, target: &ControlState) -> Vec<StateChange> {
        let mut changes = Vec::new();
        for (id, user) in &target.users {
            if self.users.get(id) != Some(user) {
                changes.push(StateChange::PutUser(user.clone()));
            }
        }
        for (id, client) in &target.clients {
            if self.clients.get(id) != Some(client) {
                changes.push(StateChange::PutClient(client.clone()));
            }
        }
        for (id, mapping) in &target.mappings {
            if self.mappings.get(id) != Some(mapping) {
                changes.push(StateChange::PutMapping(mapping.clone()));
            }
        }
        for id in self.mappings.keys() {
            if !target.mappings.contains_key(id) {
                changes.push(StateChange::DeleteMapping(id.clone()));
            }
        }
        for (code, entry) in &target.codes {
            if self.codes.get(code) != Some(entry) {
                changes.push(StateChange::PutCode(entry.clone()));
            }
        }
        for code in self.codes.keys() {
            if !target.codes.contains_key(code) {
                changes.push(StateChange::DeleteCode(code.clone()));
            }
        }
        for id in self.clients.keys() {
            if !target.clients.contains_key(id) {
                changes.push(StateChange::DeleteClient(*id));
            }
        }
        for id in self.users.keys() {
            if !target.users.contains_key(id) {
                changes.push(StateChange::DeleteUser(*id));
            }
        }
        changes
    }

    /// Mappings in which `client` takes part (as listen or target side).
    pub fn mappings_of(&self, client: ClientId) -> impl Iterator<Item = &Mapping> {
        self.mappings.values().filter(move |m| m.involves(client))
    }

    /// Clients owned by `owner`.
    pub fn clients_owned_by(&self, owner: UserId) -> usize {
        self.clients
            .values()
            .filter(|c| c.owner == Some(owner))
            .count()
    }

    /// Mappings owned by `owner`.
    pub fn mappings_owned_by(&self, owner: UserId) -> usize {
        self.mappings
            .values()
            .filter(|m| m.owner == Some(owner))
            .count()
    }

    /// The mapping served on node port `port`.
    pub fn mapping_on_node_port(&self, port: u16) -> Option<&Mapping> {
        self.mappings
            .values()
            .find(|m| matches!(m.entry, Entry::NodePort { port: p, .. } if p == port))
    }
}
