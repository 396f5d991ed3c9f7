//! The embedded redb store.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use tunnox_core::node::{ControlState, StateChange};

use super::StorageError;

/// Users by id.
const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// Clients by id.
const CLIENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("clients");
/// Mappings by id.
const MAPPINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("mappings");
/// Connection codes by code.
const CODES: TableDefinition<&str, &[u8]> = TableDefinition::new("codes");

/// The schema version written with every value.
const VALUE_VERSION: u32 = 1;

/// A value as stored: a schema version and the serde form of the value.
#[derive(serde::Serialize, serde::Deserialize)]
struct Versioned<T> {
    v: u32,
    value: T,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(&Versioned {
        v: VALUE_VERSION,
        value,
    })
    .map_err(|e| StorageError::Corrupt {
        table: "-",
        key: "-".into(),
        reason: format!("cannot encode: {e}"),
    })
}

/// Only the version of a stored value, read before the value itself.
#[derive(serde::Deserialize)]
struct VersionOnly {
    v: u32,
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: String,
    bytes: &[u8],
) -> Result<T, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        table,
        key: key.clone(),
        reason,
    };
    // The version decides how to read the rest: check it first.
    let version: VersionOnly = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if version.v != VALUE_VERSION {
        return Err(corrupt(format!(
            "schema version {} (this build reads {VALUE_VERSION})",
            version.v
        )));
    }
    let stored: Versioned<T> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok(stored.value)
}

/// Writes changes to an [`EmbeddedStore`] on a thread of its own, so the node's task never
/// waits for a commit: whatever changes queue up while one commit runs go into the next
/// (group commit). Changes are written in the order they were sent; [`StoreWriter::synced`]
/// answers once everything queued before it is committed, and [`StoreWriter::finish`] waits
/// until every change has been written.
#[derive(Debug)]
pub struct StoreWriter {
    queue: std::sync::mpsc::Sender<Work>,
    thread: tokio::task::JoinHandle<()>,
}

/// What the writer thread is sent.
#[derive(Debug)]
enum Work {
    /// Changes to commit.
    Changes(Vec<StateChange>),
    /// Answer once everything sent before is committed (or refused).
    Synced(tokio::sync::oneshot::Sender<bool>),
}

impl StoreWriter {
    /// Most changes in one commit.
    const BATCH_MAX: usize = 4096;

    /// Starts writing to `store`, counting each commit in `metrics` if given.
    pub fn spawn(
        store: EmbeddedStore,
        metrics: Option<std::sync::Arc<crate::metrics::NodeMetrics>>,
    ) -> StoreWriter {
        let (queue, work) = std::sync::mpsc::channel::<Work>();
        let thread = tokio::task::spawn_blocking(move || {
            while let Ok(first) = work.recv() {
                let mut batch = Vec::new();
                let mut waiting = Vec::new();
                let mut next = Some(first);
                while let Some(item) = next.take() {
                    match item {
                        Work::Changes(changes) => batch.extend(changes),
                        Work::Synced(reply) => waiting.push(reply),
                    }
                    if batch.len() < StoreWriter::BATCH_MAX {
                        next = work.try_recv().ok();
                    }
                }
                let mut written = true;
                if !batch.is_empty() {
                    // A failed write is not acknowledged durable; the node keeps serving from
                    // memory (counted, and the backend shown degraded, in the metrics).
                    let result = store.apply(&batch);
                    if let Some(metrics) = &metrics {
                        metrics.storage().operation("embedded", "apply", &result);
                    }
                    if let Err(e) = result {
                        eprintln!("the store refused {} changes: {e}", batch.len());
                        written = false;
                    }
                }
                for reply in waiting {
                    let _ = reply.send(written);
                }
            }
        });
        StoreWriter { queue, thread }
    }

    /// Queues `changes` for the next commit.
    pub fn write(&self, changes: Vec<StateChange>) {
        // The thread ends only after the sender is dropped, so this cannot fail while `self`
        // lives.
        let _ = self.queue.send(Work::Changes(changes));
    }

    /// Answers `reply` once every change queued so far is committed: `true`, or `false` if the
    /// store refused the commit.
    pub fn synced(&self, reply: tokio::sync::oneshot::Sender<bool>) {
        let _ = self.queue.send(Work::Synced(reply));
    }

    /// Waits until every queued change is written.
    pub async fn finish(self) {
        drop(self.queue);
        let _ = self.thread.await;
    }
}

/// The node's control state in one redb file.
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Database,
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, creating its parent directory.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StorageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Open {
                path: path.to_path_buf(),
                source: redb::DatabaseError::Storage(redb::StorageError::Io(e)),
            })?;
        }
        let db = Database::create(path).map_err(|source| StorageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // Create every table once, so reads never meet a missing one.
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(USERS).map_err(redb::Error::from)?;
        txn.open_table(CLIENTS).map_err(redb::Error::from)?;
        txn.open_table(MAPPINGS).map_err(redb::Error::from)?;
        txn.open_table(CODES).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(EmbeddedStore { db })
    }

    /// Applies `changes` in order, all or nothing.
    pub fn apply(&self, changes: &[StateChange]) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut users = txn.open_table(USERS).map_err(redb::Error::from)?;
            let mut clients = txn.open_table(CLIENTS).map_err(redb::Error::from)?;
            let mut mappings = txn.open_table(MAPPINGS).map_err(redb::Error::from)?;
            let mut codes = txn.open_table(CODES).map_err(redb::Error::from)?;
            for change in changes {
                match change {
                    StateChange::PutUser(user) => {
                        users
                            .insert(user.id.0, encode(user)?.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    StateChange::DeleteUser(id) => {
                        users.remove(id.0).map_err(redb::Error::from)?;
                    }
                    StateChange::PutClient(client) => {
                        clients
                            .insert(client.id.0, encode(client)?.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    StateChange::DeleteClient(id) => {
                        clients.remove(id.0).map_err(redb::Error::from)?;
                    }
                    StateChange::PutMapping(mapping) => {
                        mappings
                            .insert(mapping.id.as_str(), encode(mapping)?.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    StateChange::DeleteMapping(id) => {
                        mappings.remove(id.as_str()).map_err(redb::Error::from)?;
                    }
                    StateChange::PutCode(code) => {
                        codes
                            .insert(code.code().as_str(), encode(code)?.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    StateChange::DeleteCode(code) => {
                        codes.remove(code.as_str()).map_err(redb::Error::from)?;
                    }
                }
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Reads the whole control state back.
    pub fn load(&self) -> Result<ControlState, StorageError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let mut state = ControlState::default();
        for row in txn
            .open_table(USERS)
            .map_err(redb::Error::from)?
            .iter()
            .map_err(redb::Error::from)?
        {
            let (key, value) = row.map_err(redb::Error::from)?;
            let user: tunnox_core::control::User =
                decode("users", key.value().to_string(), value.value())?;
            state.users.insert(user.id, user);
        }
        for row in txn
            .open_table(CLIENTS)
            .map_err(redb::Error::from)?
            .iter()
            .map_err(redb::Error::from)?
        {
            let (key, value) = row.map_err(redb::Error::from)?;
            let client: tunnox_core::control::ClientRecord =
                decode("clients", key.value().to_string(), value.value())?;
            state.clients.insert(client.id, client);
        }
        for row in txn
            .open_table(MAPPINGS)
            .map_err(redb::Error::from)?
            .iter()
            .map_err(redb::Error::from)?
        {
            let (key, value) = row.map_err(redb::Error::from)?;
            let mapping: tunnox_core::control::Mapping =
                decode("mappings", key.value().to_string(), value.value())?;
            state.mappings.insert(mapping.id.clone(), mapping);
        }
        for row in txn
            .open_table(CODES)
            .map_err(redb::Error::from)?
            .iter()
            .map_err(redb::Error::from)?
        {
            let (key, value) = row.map_err(redb::Error::from)?;
            let code: tunnox_core::control::ConnectionCode =
                decode("codes", key.value().to_string(), value.value())?;
            state.codes.insert(code.code().clone(), code);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tunnox_core::control::{
        AuthKey, ClientId, ClientRecord, Code, CodeRequest, ConnectionCode, Entry, Mapping,
        MappingId, MappingOptions, MappingStatus, Protocol, Quota, Target, UnixMillis, User,
        UserId,
    };
    use tunnox_core::rng::Rng;

    use super::*;

    /// A fresh store file under the system temp dir, removed on drop.
    struct TempStore(PathBuf);

    impl TempStore {
        fn new(name: &str) -> TempStore {
            let dir =
                std::env::temp_dir().join(format!("tunnox-store-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempStore(dir.join("data").join("tunnox.redb"))
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent().and_then(Path::parent) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn sample_changes() -> Vec<StateChange> {
        let mut rng = Rng::seed_from_u64(3);
        let now = UnixMillis(1_700_000_000_000);
        let user = User {
            id: UserId(1),
            name: "ada".into(),
            quota: Quota::default(),
            created_at: now,
            disabled: false,
        };
        let a = ClientRecord::new_registered(
            ClientId(11),
            UserId(1),
            "laptop".into(),
            AuthKey::derive("s1"),
            now,
        );
        let b = ClientRecord::new_anonymous(ClientId(22), AuthKey::derive("s2"), now);
        let mapping = |id: MappingId, port: u16| Mapping {
            id,
            owner: Some(UserId(1)),
            entry: Entry::ClientPort {
                listen_client: ClientId(11),
                listen_addr: format!("127.0.0.1:{port}"),
            },
            target_client: ClientId(22),
            target: Target::Fixed {
                host: "127.0.0.1".into(),
                port: 6379,
            },
            protocol: Protocol::Tcp,
            options: MappingOptions::default(),
            created_at: now,
            expires_at: None,
            status: MappingStatus::Active,
        };
        let kept = MappingId::generate(&mut rng);
        let deleted = MappingId::generate(&mut rng);
        let code = ConnectionCode::issue(
            Code::generate(&mut rng),
            CodeRequest::new(
                ClientId(22),
                Target::Fixed {
                    host: "127.0.0.1".into(),
                    port: 5432,
                },
                Protocol::Tcp,
            ),
            now,
        )
        .unwrap();
        vec![
            StateChange::PutUser(user),
            StateChange::PutClient(a),
            StateChange::PutClient(b),
            StateChange::PutMapping(mapping(kept, 13306)),
            StateChange::PutMapping(mapping(deleted.clone(), 13307)),
            StateChange::DeleteMapping(deleted),
            StateChange::PutCode(code),
        ]
    }

    #[test]
    fn state_survives_a_restart() {
        let tmp = TempStore::new("restart");
        let changes = sample_changes();
        let mut expected = ControlState::default();
        for c in &changes {
            expected.apply(c);
        }
        {
            let store = EmbeddedStore::open(&tmp.0).unwrap();
            store.apply(&changes[..3]).unwrap();
            store.apply(&changes[3..]).unwrap();
        }
        // A new process: open the same file and read everything back.
        let reopened = EmbeddedStore::open(&tmp.0).unwrap();
        let loaded = reopened.load().unwrap();
        assert_eq!(loaded, expected);
        assert_eq!(
            loaded.mappings.len(),
            1,
            "the deleted mapping stays deleted"
        );
        assert_eq!(loaded.codes.len(), 1);
        assert_eq!(loaded.clients.len(), 2);
    }

    #[test]
    fn a_fresh_store_is_empty() {
        let tmp = TempStore::new("fresh");
        let store = EmbeddedStore::open(&tmp.0).unwrap();
        assert_eq!(store.load().unwrap(), ControlState::default());
    }

    #[test]
    fn corrupt_and_foreign_values_are_typed_errors() {
        let tmp = TempStore::new("corrupt");
        let store = EmbeddedStore::open(&tmp.0).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(CLIENTS)
            .unwrap()
            .insert(7, b"not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
        match store.load() {
            Err(StorageError::Corrupt { table, key, .. }) => {
                assert_eq!((table, key.as_str()), ("clients", "7"));
            }
            other => panic!("expected a corrupt-value error, got {other:?}"),
        }
        // A value from a future schema version is refused, not misread.
        let txn = store.db.begin_write().unwrap();
        txn.open_table(CLIENTS).unwrap().remove(7).unwrap();
        txn.open_table(USERS)
            .unwrap()
            .insert(1, br#"{"v":2,"value":{}}"#.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("schema version 2"), "{err}");
    }

    #[test]
    fn an_unopenable_path_is_a_typed_error() {
        let tmp = TempStore::new("blocked");
        // A file where the store's directory should be.
        let dir = tmp.0.parent().unwrap();
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        std::fs::write(dir, b"in the way").unwrap();
        assert!(matches!(
            EmbeddedStore::open(&tmp.0),
            Err(StorageError::Open { .. })
        ));
    }

    #[tokio::test]
    async fn the_writer_commits_in_order_and_answers_synced_after_what_came_before() {
        let file = TempStore::new("writer");
        let changes = sample_changes();
        let mut expected = ControlState::default();
        for change in &changes {
            expected.apply(change);
        }
        let writer = StoreWriter::spawn(EmbeddedStore::open(&file.0).unwrap(), None);
        for change in &changes {
            writer.write(vec![change.clone()]);
        }
        let (reply, synced) = tokio::sync::oneshot::channel();
        writer.synced(reply);
        assert!(
            synced.await.unwrap(),
            "every change before it was committed"
        );
        // A later deletion lands after the earlier puts, as sent.
        let deleted = expected.users.keys().next().copied().unwrap();
        writer.write(vec![StateChange::DeleteUser(deleted)]);
        expected.users.remove(&deleted);
        writer.finish().await;
        let stored = EmbeddedStore::open(&file.0).unwrap().load().unwrap();
        assert_eq!(stored, expected);
    }
}
