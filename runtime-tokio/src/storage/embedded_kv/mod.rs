//! [`EmbeddedKv`]: the [`Storage`] interface over one redb file, kept across restarts.
//!
//! Tables: `kv` (key → [`Record`]: kind, version, expiry, value or list), `kv-expiry`
//! (`(expires_at unix ms, key)` → nothing, to find what expired) and `kv-meta` (the version
//! counter). Every operation is one redb transaction, so it is atomic and, once it returns, on
//! disk. Expired keys are invisible at once and removed by a bounded sweep at the end of every
//! write transaction. Expiry is wall-clock time, so a TTL keeps running while the process is down.
//!
//! redb calls block (a write waits for its fsync). Reads run on tokio's blocking pool; writes
//! queue for one writer thread that applies whatever is queued in one transaction (group commit:
//! one fsync for many writes, each still atomic and durable when answered).
//! A list is one record, so a list write rewrites the whole list: lists are meant to be short
//! (indexes such as client → mappings).

mod group;
mod record;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tunnox_core::storage::Versioned;

use self::group::{GroupWriter, Pending};
use self::record::{Contents, Record};
use super::kv::{list_window, parse_integer, wrong_kind};
use super::{Storage, StorageError};

/// Key → record.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// `(expires_at unix ms, key)` of every record with an expiry.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("kv-expiry");
/// Store-wide numbers: the version counter.
const META: TableDefinition<&str, u64> = TableDefinition::new("kv-meta");
/// The version counter's key in `META`.
const VERSION: &str = "version";
/// Expired records one write transaction removes at most.
const SWEEP_PER_WRITE_MAX: usize = 64;
/// Names this backend in errors.
const BACKEND: &str = "embedded";

fn io(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Io(e.into())
}

/// Wall-clock time now, in unix milliseconds.
fn now_ms() -> u64 {
    crate::clock::wall_now().0
}

/// When something set now with `ttl` expires.
fn expiry(now_ms: u64, ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|ttl| {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        now_ms.saturating_add(ttl_ms)
    })
}

/// A [`Storage`] in a redb file (see the module docs).
#[derive(Debug, Clone)]
pub struct EmbeddedKv {
    db: Arc<Database>,
    writer: Arc<GroupWriter>,
}

/// A list and when it expires (unix ms).
type HeldList = (Vec<Bytes>, Option<u64>);

/// One write transaction's tables and state.
struct Writer<'txn> {
    kv: Table<'txn, &'static str, &'static [u8]>,
    expiry: Table<'txn, (u64, &'static str), ()>,
    version: u64,
    now_ms: u64,
    /// Whether the transaction must be committed.
    dirty: bool,
    /// Whether the current job changed a table (see `group`).
    changed: bool,
}

/// The live record at `key` in `kv` at `now_ms`, if any (for writers and readers alike).
fn live_record(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    now_ms: u64,
) -> Result<Option<Record>, StorageError> {
    let Some(stored) = kv.get(key).map_err(io)? else {
        return Ok(None);
    };
    let record = Record::decode(key, stored.value())?;
    Ok(Some(record).filter(|record| record.live(now_ms)))
}

/// The value of a live record; `WrongKind` for a list.
fn value_of(key: &str, record: Option<Record>) -> Result<Option<Bytes>, StorageError> {
    match record.map(|record| record.contents) {
        None => Ok(None),
        Some(Contents::Value(value)) => Ok(Some(value)),
        Some(Contents::List(_)) => Err(wrong_kind(key)),
    }
}

impl Writer<'_> {
    /// The live record at `key`, if any.
    fn live(&self, key: &str) -> Result<Option<Record>, StorageError> {
        live_record(&self.kv, key, self.now_ms)
    }

    /// The live value at `key`, if any; `WrongKind` for a list.
    fn value(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        value_of(key, self.live(key)?)
    }

    /// The live list at `key` with its expiry, if any; `WrongKind` for a value.
    fn list(&self, key: &str) -> Result<Option<HeldList>, StorageError> {
        match self.live(key)? {
            None => Ok(None),
            Some(Record {
                contents: Contents::List(list),
                expires_at_ms,
                ..
            }) => Ok(Some((list, expires_at_ms))),
            Some(_) => Err(wrong_kind(key)),
        }
    }

    /// Raises the version counter: every write does.
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.dirty = true;
        self.version
    }

    /// Removes `key`'s record and its expiry entry; whether a live one was there.
    fn remove(&mut self, key: &str) -> Result<bool, StorageError> {
        // Decoded before anything changes: a corrupt record refuses the job cleanly.
        let record = match self.kv.get(key).map_err(io)? {
            None => return Ok(false),
            Some(stored) => Record::decode(key, stored.value())?,
        };
        self.changed = true;
        self.kv.remove(key).map_err(io)?;
        if let Some(at) = record.expires_at_ms {
            self.expiry.remove((at, key)).map_err(io)?;
        }
        self.dirty = true;
        Ok(record.live(self.now_ms))
    }

    /// Writes `contents` at `key` with a fresh version; the version.
    fn put(
        &mut self,
        key: &str,
        contents: Contents,
        expires_at_ms: Option<u64>,
    ) -> Result<u64, StorageError> {
        self.remove(key)?;
        let version = self.next_version();
        let record = Record {
            version,
            expires_at_ms,
            contents,
        };
        self.changed = true;
        self.kv
            .insert(key, record.encode().as_slice())
            .map_err(io)?;
        if let Some(at) = expires_at_ms {
            self.expiry.insert((at, key), ()).map_err(io)?;
        }
        Ok(version)
    }

    /// Removes up to [`SWEEP_PER_WRITE_MAX`] expired records.
    fn sweep(&mut self) -> Result<(), StorageError> {
        let mut expired: Vec<(u64, String)> = Vec::new();
        for entry in self.expiry.iter().map_err(io)? {
            let (at_key, _) = entry.map_err(io)?;
            let (at, key) = at_key.value();
            if at > self.now_ms || expired.len() >= SWEEP_PER_WRITE_MAX {
                break;
            }
            expired.push((at, key.to_owned()));
        }
        for (at, key) in expired {
            self.changed = true;
            self.expiry.remove((at, key.as_str())).map_err(io)?;
            self.kv.remove(key.as_str()).map_err(io)?;
            self.dirty = true;
        }
        Ok(())
    }
}

/// One read transaction's table.
struct Reader {
    kv: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    version: u64,
    now_ms: u64,
}

impl Reader {
    fn live(&self, key: &str) -> Result<Option<Record>, StorageError> {
        live_record(&self.kv, key, self.now_ms)
    }

    fn value(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        value_of(key, self.live(key)?)
    }

    fn list(&self, key: &str) -> Result<Vec<Bytes>, StorageError> {
        match self.live(key)?.map(|record| record.contents) {
            None => Ok(Vec::new()),
            Some(Contents::List(list)) => Ok(list),
            Some(Contents::Value(_)) => Err(wrong_kind(key)),
        }
    }
}

impl EmbeddedKv {
    /// Opens (or creates) the store at `path`, creating its parent directory.
    pub fn open(path: &Path) -> Result<EmbeddedKv, StorageError> {
        let open_error = |source| StorageError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(redb::DatabaseError::Storage(redb::StorageError::Io(e))))?;
        }
        let db = Arc::new(Database::create(path).map_err(open_error)?);
        // Create the tables once (reads never meet a missing one) and sweep what expired while
        // the store was closed.
        write(&db, |w| {
            w.dirty = true;
            w.sweep()
        })?;
        let writer = Arc::new(GroupWriter::start(db.clone())?);
        Ok(EmbeddedKv { db, writer })
    }

    /// Runs `op` on the blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StorageError::Unavailable {
                backend: BACKEND,
                reason: format!("{op} did not finish: {e}"),
            })?
    }

    /// Runs `f` on the writer thread, in the next group's transaction; answered after the
    /// commit (see `group`). `f` must return its refusals before changing anything.
    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.submit(Box::new(Pending::new(f, reply)))?;
        answer.await.map_err(|_| StorageError::Unavailable {
            backend: BACKEND,
            reason: format!("{op} was dropped by the writer thread"),
        })?
    }

    /// Runs `f` in one read transaction on the blocking pool.
    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader) -> Result<T, StorageError> + Send + 'static,
    {
        self.blocking(op, move |db| {
            let txn = db.begin_read().map_err(io)?;
            let version = txn
                .open_table(META)
                .map_err(io)?
                .get(VERSION)
                .map_err(io)?
                .map_or(0, |v| v.value());
            let reader = Reader {
                kv: txn.open_table(KV).map_err(io)?,
                version,
                now_ms: now_ms(),
            };
            f(&reader)
        })
        .await
    }
}

/// Runs `f` in one write transaction: committed if it changed anything, else aborted; on an
/// error nothing is written.
fn write<T>(
    db: &Database,
    f: impl FnOnce(&mut Writer<'_>) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let txn = db.begin_write().map_err(io)?;
    let (answer, dirty) = {
        let mut meta = txn.open_table(META).map_err(io)?;
        let version = meta.get(VERSION).map_err(io)?.map_or(0, |v| v.value());
        let mut writer = Writer {
            kv: txn.open_table(KV).map_err(io)?,
            expiry: txn.open_table(EXPIRY).map_err(io)?,
            version,
            now_ms: now_ms(),
            dirty: false,
            changed: false,
        };
        let answer = f(&mut writer)?;
        if writer.dirty {
            writer.sweep()?;
            meta.insert(VERSION, writer.version).map_err(io)?;
        }
        (answer, writer.dirty)
    };
    if dirty {
        txn.commit().map_err(io)?;
    } else {
        txn.abort().map_err(io)?;
    }
    Ok(answer)
}

fn owned(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|key| (*key).to_owned()).collect()
}

impl Storage for EmbeddedKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let key = key.to_owned();
        self.read("get", move |r| r.value(&key)).await
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let key = key.to_owned();
        self.write("set", move |w| {
            w.value(&key)?;
            let at = expiry(w.now_ms, ttl);
            w.put(&key, Contents::Value(value), at).map(|_| ())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let key = key.to_owned();
        self.write("delete", move |w| {
            w.next_version();
            w.remove(&key)
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let key = key.to_owned();
        self.read("exists", move |r| Ok(r.live(&key)?.is_some()))
            .await
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let key = key.to_owned();
        self.write("set_if_absent", move |w| {
            if w.value(&key)?.is_some() {
                return Ok(false);
            }
            let at = expiry(w.now_ms, ttl);
            w.put(&key, Contents::Value(value), at)?;
            Ok(true)
        })
        .await
    }

    async fn incr(&self, key: &str, by: i64) -> Result<i64, StorageError> {
        let key = key.to_owned();
        self.write("incr", move |w| {
            let held = w.live(&key)?;
            let expires_at_ms = held.as_ref().and_then(|record| record.expires_at_ms);
            let current = match held.map(|record| record.contents) {
                None => 0,
                Some(Contents::Value(value)) => parse_integer(&key, Some(&value))?,
                Some(Contents::List(_)) => return Err(wrong_kind(&key)),
            };
            let next = current
                .checked_add(by)
                .ok_or_else(|| StorageError::NotAnInteger { key: key.clone() })?;
            w.put(
                &key,
                Contents::Value(Bytes::from(next.to_string())),
                expires_at_ms,
            )?;
            Ok(next)
        })
        .await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StorageError> {
        let keys = owned(keys);
        self.read("get_many", move |r| {
            keys.iter().map(|key| r.value(key)).collect()
        })
        .await
    }

    async fn set_many(
        &self,
        pairs: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        let pairs: Vec<(String, Bytes)> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect();
        self.write("set_many", move |w| {
            let at = expiry(w.now_ms, ttl);
            // All or nothing: every key is checked before any is written.
            for (key, _) in &pairs {
                w.value(key)?;
            }
            for (key, value) in pairs {
                w.put(&key, Contents::Value(value), at)?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64, StorageError> {
        let keys = owned(keys);
        self.write("delete_many", move |w| {
            w.next_version();
            let mut existed = 0;
            for key in &keys {
                existed += u64::from(w.remove(key)?);
            }
            Ok(existed)
        })
        .await
    }

    async fn get_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let key = key.to_owned();
        self.read("get_versioned", move |r| {
            Ok(match r.live(&key)? {
                None => Versioned {
                    version: r.version,
                    value: None,
                },
                Some(Record {
                    version,
                    contents: Contents::Value(value),
                    ..
                }) => Versioned {
                    version,
                    value: Some(value),
                },
                Some(_) => return Err(wrong_kind(&key)),
            })
        })
        .await
    }

    async fn set_versioned(&self, key: &str, value: Bytes) -> Result<Versioned, StorageError> {
        let key = key.to_owned();
        self.write("set_versioned", move |w| {
            w.value(&key)?;
            let version = w.put(&key, Contents::Value(value.clone()), None)?;
            Ok(Versioned {
                version,
                value: Some(value),
            })
        })
        .await
    }

    async fn delete_versioned(&self, key: &str) -> Result<Versioned, StorageError> {
        let key = key.to_owned();
        self.write("delete_versioned", move |w| {
            let version = w.next_version();
            w.remove(&key)?;
            Ok(Versioned {
                version,
                value: None,
            })
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let key = key.to_owned();
        self.write("compare_and_swap", move |w| {
            if w.value(&key)? != expected {
                return Ok(false);
            }
            match new {
                Some(value) => {
                    let at = expiry(w.now_ms, ttl);
                    w.put(&key, Contents::Value(value), at)?;
                }
                None => {
                    w.next_version();
                    w.remove(&key)?;
                }
            }
            Ok(true)
        })
        .await
    }

    async fn scan_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        let prefix = prefix.to_owned();
        self.read("scan_prefix", move |r| {
            let mut found = Vec::new();
            if limit == 0 {
                return Ok(found);
            }
            for entry in r.kv.range::<&str>(prefix.as_str()..).map_err(io)? {
                let (key, stored) = entry.map_err(io)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                let record = Record::decode(key, stored.value())?;
                if let (true, Contents::Value(value)) = (record.live(r.now_ms), record.contents) {
                    found.push((key.to_owned(), value));
                    if found.len() >= limit {
                        break;
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, StorageError> {
        let key = key.to_owned();
        self.write("expire", move |w| {
            let Some(record) = w.live(&key)? else {
                return Ok(false);
            };
            let at = expiry(w.now_ms, Some(ttl));
            w.put(&key, record.contents, at)?;
            Ok(true)
        })
        .await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StorageError> {
        let key = key.to_owned();
        self.read("ttl", move |r| {
            Ok(r.live(&key)?
                .and_then(|record| record.expires_at_ms)
                .map(|at| Duration::from_millis(at.saturating_sub(r.now_ms))))
        })
        .await
    }

    async fn list_push(&self, key: &str, value: Bytes) -> Result<u64, StorageError> {
        let key = key.to_owned();
        self.write("list_push", move |w| {
            let (mut list, expires_at_ms) = w.list(&key)?.unwrap_or_default();
            list.push(value);
            let len = list.len() as u64;
            w.put(&key, Contents::List(list), expires_at_ms)?;
            Ok(len)
        })
        .await
    }

    async fn list_range(
        &self,
        key: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<Bytes>, StorageError> {
        let key = key.to_owned();
        self.read("list_range", move |r| {
            let list = r.list(&key)?;
            Ok(list[list_window(list.len(), start, stop)].to_vec())
        })
        .await
    }

    async fn list_remove(&self, key: &str, value: &[u8]) -> Result<u64, StorageError> {
        let key = key.to_owned();
        let value = value.to_vec();
        self.write("list_remove", move |w| {
            let Some((mut list, expires_at_ms)) = w.list(&key)? else {
                return Ok(0);
            };
            let before = list.len();
            list.retain(|element| element.as_ref() != value.as_slice());
            let removed = (before - list.len()) as u64;
            if removed == 0 {
                return Ok(0);
            }
            if list.is_empty() {
                // Like Redis: an emptied list is no key at all.
                w.next_version();
                w.remove(&key)?;
            } else {
                w.put(&key, Contents::List(list), expires_at_ms)?;
            }
            Ok(removed)
        })
        .await
    }

    async fn list_len(&self, key: &str) -> Result<u64, StorageError> {
        let key = key.to_owned();
        self.read("list_len", move |r| Ok(r.list(&key)?.len() as u64))
            .await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.read("ping", |_| Ok(())).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use redb::ReadableTableMetadata;

    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!(
            "tunnox-kv-{name}-{}-{nanos}/kv.redb",
            std::process::id()
        ))
    }

    fn rows(store: &EmbeddedKv) -> (usize, usize) {
        let txn = store.db.begin_read().unwrap();
        let kv = txn.open_table(KV).unwrap().len().unwrap();
        let expiry = txn.open_table(EXPIRY).unwrap().len().unwrap();
        (kv as usize, expiry as usize)
    }

    #[tokio::test]
    async fn expired_records_are_swept_by_later_writes_and_at_open() {
        let path = temp_path("sweep");
        let store = EmbeddedKv::open(&path).unwrap();
        store
            .set(
                "short",
                Bytes::from_static(b"x"),
                Some(Duration::from_millis(50)),
            )
            .await
            .unwrap();
        store
            .set(
                "kept",
                Bytes::from_static(b"y"),
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(rows(&store), (2, 2));
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Invisible at once, removed by the next write.
        assert_eq!(store.get("short").await.unwrap(), None);
        assert_eq!(rows(&store), (2, 2));
        store.set("other", Bytes::new(), None).await.unwrap();
        assert_eq!(rows(&store), (2, 1));
        // Overwriting drops the old expiry entry.
        store.set("kept", Bytes::new(), None).await.unwrap();
        assert_eq!(rows(&store), (2, 0));

        store
            .set("closed", Bytes::new(), Some(Duration::from_millis(50)))
            .await
            .unwrap();
        drop(store);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let store = EmbeddedKv::open(&path).unwrap();
        assert_eq!(rows(&store), (2, 0), "swept at open");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_write_in_a_group_leaves_the_others_committed() {
        let path = temp_path("group");
        let store = EmbeddedKv::open(&path).unwrap();
        store
            .list_push("list", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // Every eighth write targets the list: refused, without undoing the others.
                let key = if i % 8 == 0 {
                    "list".to_owned()
                } else {
                    format!("k{i}")
                };
                store.set(&key, Bytes::from(format!("{i}")), None).await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let answer = task.await.unwrap();
            if i % 8 == 0 {
                assert!(
                    matches!(answer, Err(StorageError::WrongKind { .. })),
                    "{answer:?}"
                );
            } else {
                answer.unwrap();
                assert_eq!(
                    store.get(&format!("k{i}")).await.unwrap(),
                    Some(Bytes::from(format!("{i}")))
                );
            }
        }
        assert_eq!(store.list_len("list").await.unwrap(), 1);
        drop(store);
        // The writer thread has released the file: it opens again at once.
        let store = EmbeddedKv::open(&path).unwrap();
        assert_eq!(
            store.get("k1").await.unwrap(),
            Some(Bytes::from_static(b"1"))
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_corrupt_record_is_a_typed_error() {
        let path = temp_path("corrupt");
        let store = EmbeddedKv::open(&path).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(KV)
            .unwrap()
            .insert("bad", [7u8, 1, 2].as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert!(matches!(
            store.get("bad").await,
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            store.scan_prefix("b", 10).await,
            Err(StorageError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
