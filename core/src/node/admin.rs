//! Administrative operations on a node's control state, as the management API calls them:
//! users and their quotas, clients and their credentials, connection codes on behalf of a
//! client, and the node's traffic figures. Each change is persisted like any other, and a change
//! that takes away a client's right to log in closes its live session here.

use std::collections::BTreeMap;

use super::{AdminError, Node, StateChange};
use crate::control::{
    ClientId, ClientKind, ClientRecord, ClientSecret, ClientStatus, Code, CodeRequest,
    ConnectionCode, Mapping, MappingId, Quota, User, UserId,
};
use crate::time::Instant;
use crate::wire::GoAwayReason;

/// What changes about a client (`None`: left as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientUpdate {
    /// A new label.
    pub label: Option<String>,
    /// A new owner (`Some(None)`: anonymous).
    pub owner: Option<Option<UserId>>,
    /// A new status.
    pub status: Option<ClientStatus>,
}

/// Bytes a mapping's tunnels carried on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MappingTraffic {
    /// Entry → target.
    pub bytes_to_target: u64,
    /// Target → entry.
    pub bytes_to_entry: u64,
    /// Tunnels opened (ended ones and live ones).
    pub tunnels: u64,
}

impl MappingTraffic {
    fn add(&mut self, to_target: u64, to_entry: u64) {
        self.bytes_to_target = self.bytes_to_target.saturating_add(to_target);
        self.bytes_to_entry = self.bytes_to_entry.saturating_add(to_entry);
        self.tunnels = self.tunnels.saturating_add(1);
    }
}

impl Node {
    /// Creates a user with a fresh id.
    pub fn create_user(
        &mut self,
        now: Instant,
        name: &str,
        quota: Quota,
        disabled: bool,
    ) -> Result<User, AdminError> {
        let id = loop {
            let id = UserId::generate(&mut self.rng);
            if !self.state.users.contains_key(&id) {
                break id;
            }
        };
        let user = User {
            id,
            name: name.to_owned(),
            quota,
            created_at: self.wall_now(now),
            disabled,
        };
        self.put_user(user.clone())?;
        Ok(user)
    }

    /// Replaces an existing user; disabling one closes its clients' sessions here.
    pub fn update_user(&mut self, now: Instant, user: User) -> Result<(), AdminError> {
        if !self.state.users.contains_key(&user.id) {
            return Err(AdminError::NotFound("user"));
        }
        let id = user.id;
        self.put_user(user)?;
        self.enforce_user(now, id);
        Ok(())
    }

    /// Deletes a user that owns no clients and no mappings.
    pub fn delete_user(&mut self, id: UserId) -> Result<(), AdminError> {
        if !self.state.users.contains_key(&id) {
            return Err(AdminError::NotFound("user"));
        }
        let clients = self.state.clients_owned_by(id);
        let mappings = self.state.mappings_owned_by(id);
        if clients + mappings > 0 {
            return Err(AdminError::InUse(format!(
                "user {id} still owns {clients} clients and {mappings} mappings"
            )));
        }
        self.persist(StateChange::DeleteUser(id));
        Ok(())
    }

    /// A copy of client `id`'s record.
    fn client_record(&self, id: ClientId) -> Result<ClientRecord, AdminError> {
        self.state
            .clients
            .get(&id)
            .cloned()
            .ok_or(AdminError::NotFound("client"))
    }

    /// Whether `owner` exists and its quota has room for one more client.
    pub(super) fn check_room_for_client(&self, owner: UserId) -> Result<(), AdminError> {
        let user = self
            .state
            .users
            .get(&owner)
            .ok_or(AdminError::NotFound("user"))?;
        let current = self.state.clients_owned_by(owner);
        user.quota
            .check_new_client(u32::try_from(current).unwrap_or(u32::MAX))?;
        Ok(())
    }

    /// Changes a client's label, owner or status. A new owner must exist and have room in its
    /// quota; a client that may no longer log in loses its session here.
    pub fn update_client(
        &mut self,
        now: Instant,
        id: ClientId,
        update: ClientUpdate,
    ) -> Result<ClientRecord, AdminError> {
        let mut record = self.client_record(id)?;
        if let Some(label) = update.label {
            record.label = label;
        }
        if let Some(owner) = update.owner
            && owner != record.owner
        {
            if let Some(owner) = owner {
                self.check_room_for_client(owner)?;
            }
            record.owner = owner;
            record.kind = match owner {
                Some(_) => ClientKind::Registered,
                None => ClientKind::Anonymous,
            };
        }
        if let Some(status) = update.status {
            record.status = status;
        }
        record.validate()?;
        self.persist(StateChange::PutClient(record.clone()));
        self.enforce_client(now, id);
        Ok(record)
    }

    /// Deletes a client: the mappings it takes part in and the codes it offered go first, then
    /// its session here. Answers how many mappings went with it.
    pub fn delete_client(&mut self, now: Instant, id: ClientId) -> Result<usize, AdminError> {
        if !self.state.clients.contains_key(&id) {
            return Err(AdminError::NotFound("client"));
        }
        let mappings: Vec<MappingId> = self.state.mappings_of(id).map(|m| m.id.clone()).collect();
        for mapping in &mappings {
            self.delete_mapping(now, mapping)?;
        }
        let codes: Vec<Code> = self
            .state
            .codes
            .values()
            .filter(|c| c.target_client() == id)
            .map(|c| c.code().clone())
            .collect();
        for code in codes {
            self.persist(StateChange::DeleteCode(code));
        }
        self.persist(StateChange::DeleteClient(id));
        self.enforce_client(now, id);
        Ok(mappings.len())
    }

    /// Gives a client a new secret: the old one stops working and its session here ends.
    pub fn reset_credentials(
        &mut self,
        now: Instant,
        id: ClientId,
    ) -> Result<(ClientRecord, ClientSecret), AdminError> {
        let mut record = self.client_record(id)?;
        let secret = ClientSecret::generate(&mut self.rng);
        record.auth_key = secret.auth_key();
        self.persist(StateChange::PutClient(record.clone()));
        self.disconnect_client(now, id, GoAwayReason::Kicked);
        self.end_handshakes_of(now, id);
        Ok((record, secret))
    }

    /// Issues a connection code for `request.target_client` (which must exist), owned by the
    /// client's owner.
    pub fn issue_code(
        &mut self,
        now: Instant,
        mut request: CodeRequest,
    ) -> Result<ConnectionCode, AdminError> {
        let client = self
            .state
            .clients
            .get(&request.target_client)
            .ok_or(AdminError::NotFound("client"))?;
        if let Some(owner) = client.owner {
            request = request.with_owner(owner);
        }
        let code = loop {
            let code = Code::generate(&mut self.rng);
            if !self.state.codes.contains_key(&code) {
                break code;
            }
        };
        let issued = ConnectionCode::issue(code, request, self.wall_now(now))?;
        self.persist(StateChange::PutCode(issued.clone()));
        Ok(issued)
    }

    /// Revokes an unused code.
    pub fn revoke_code(&mut self, now: Instant, code: &Code) -> Result<ConnectionCode, AdminError> {
        let mut offer = self
            .state
            .codes
            .get(code)
            .cloned()
            .ok_or(AdminError::NotFound("connection code"))?;
        offer.revoke(self.wall_now(now))?;
        self.persist(StateChange::PutCode(offer.clone()));
        Ok(offer)
    }

    /// Redeems a code for `listen_client`, which will listen on `listen_addr`: the code is spent
    /// and the mapping created, or neither (a refused mapping gives the code back).
    pub fn redeem_code(
        &mut self,
        now: Instant,
        listen_client: ClientId,
        code: &Code,
        listen_addr: &str,
    ) -> Result<Mapping, AdminError> {
        if !self.state.clients.contains_key(&listen_client) {
            return Err(AdminError::NotFound("client"));
        }
        let before = self
            .state
            .codes
            .get(code)
            .cloned()
            .ok_or(AdminError::NotFound("connection code"))?;
        let mut offer = before.clone();
        let wall = self.wall_now(now);
        let mapping = offer.activate(wall, listen_client, listen_addr, &mut self.rng)?;
        // The code is spent before anything else can run.
        self.persist(StateChange::PutCode(offer));
        if let Err(e) = self.put_mapping(now, mapping.clone()) {
            self.persist(StateChange::PutCode(before));
            return Err(e);
        }
        Ok(mapping)
    }

    /// Bytes and tunnels per mapping on this node since it started: ended tunnels plus live ones.
    pub fn traffic(&self) -> BTreeMap<MappingId, MappingTraffic> {
        let mut traffic = self.traffic.clone();
        for (mapping, to_target, to_entry) in self.tunnels.live_bytes() {
            traffic
                .entry(mapping.clone())
                .or_default()
                .add(to_target, to_entry);
        }
        traffic
    }

    /// Counts an ended tunnel's bytes (not for a mapping already deleted: its figures went
    /// with it, so the map stays bounded by the mappings that exist).
    pub(super) fn record_traffic(&mut self, mapping: &MappingId, to_target: u64, to_entry: u64) {
        if !self.state.mappings.contains_key(mapping) {
            return;
        }
        self.traffic
            .entry(mapping.clone())
            .or_default()
            .add(to_target, to_entry);
    }

    /// Whether `client` may log in now: its record exists and is active, and its owner (if any)
    /// exists and is not disabled.
    pub(super) fn may_log_in(&self, client: ClientId) -> bool {
        self.state.clients.get(&client).is_some_and(|record| {
            record.may_log_in()
                && record
                    .owner
                    .is_none_or(|owner| self.state.users.get(&owner).is_some_and(|u| !u.disabled))
        })
    }

    /// Closes `client`'s session here, and any login of it still in its handshake, if it may no
    /// longer log in.
    pub(super) fn enforce_client(&mut self, now: Instant, client: ClientId) {
        if !self.may_log_in(client) {
            self.disconnect_client(now, client, GoAwayReason::Kicked);
            self.end_handshakes_of(now, client);
        }
    }

    /// Closes connections still in the handshake that asked to log in as `client`: the node
    /// looked its key up at their hello, so a changed or removed key must not let them finish.
    fn end_handshakes_of(&mut self, now: Instant, client: ClientId) {
        let pending: Vec<super::ConnId> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.attempted == Some(client) && slot.client.is_none())
            .map(|(conn, _)| *conn)
            .collect();
        for conn in pending {
            if let Some(slot) = self.slots.get_mut(&conn) {
                slot.session.kick(GoAwayReason::Kicked);
            }
            self.after_session_input(now, conn);
        }
    }

    /// Closes the sessions here of `user`'s clients that may no longer log in.
    pub(super) fn enforce_user(&mut self, now: Instant, user: UserId) {
        let clients: Vec<ClientId> = self
            .state
            .clients
            .values()
            .filter(|c| c.owner == Some(user))
            .map(|c| c.id)
            .collect();
        for client in clients {
            self.enforce_client(now, client);
        }
    }

    /// After another node changed a client or user: its sessions here end if they may no
    /// longer log in, or if the client's credentials changed.
    pub(super) fn enforce_remote(
        &mut self,
        now: Instant,
        change: &StateChange,
        before: Option<&ClientRecord>,
    ) {
        match change {
            StateChange::PutClient(after) => {
                if before.is_some_and(|b| b.auth_key != after.auth_key) {
                    self.disconnect_client(now, after.id, GoAwayReason::Kicked);
                } else {
                    self.enforce_client(now, after.id);
                }
            }
            StateChange::DeleteClient(id) => self.enforce_client(now, *id),
            StateChange::PutUser(user) => self.enforce_user(now, user.id),
            _ => {}
        }
    }
}
