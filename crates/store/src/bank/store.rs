//! Thin wrapper over the sled 0.34 database that holds a bank; the only module that touches sled.
//!
//! [`Store`] opens the database with the fixed configuration of
//! [`format`](super::format), detects a bank held by another process, and
//! offers the handful of operations the bank needs (point reads and writes,
//! prefix scans, batched writes, and the class-tree transactions that serve
//! as commit points). Every sled error is wrapped in the opaque
//! [`StoreError`] together with the bank path and the operation, so no sled
//! type leaks into the public API.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::format::{SLED_CACHE_CAPACITY, SLED_SEGMENT_SIZE};
use super::read_only::Snapshot;
use super::record::{decode_u64, encode_u64};
use super::{BankError, Result};

/// An error from the storage engine; opaque on purpose.
#[derive(Debug)]
pub struct StoreError(sled::Error);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            // The I/O error itself is the source: printed once, by the caller.
            sled::Error::Io(_) => f.write_str("storage engine: I/O error"),
            other => write!(f, "storage engine: {other}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            sled::Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The four trees of a bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeId {
    Meta,
    Classes,
    Prototypes,
    Support,
}

impl TreeId {
    pub(crate) const ALL: [TreeId; 4] = [
        TreeId::Meta,
        TreeId::Classes,
        TreeId::Prototypes,
        TreeId::Support,
    ];

    /// The sled tree name (also used in error messages).
    pub(crate) fn name(self) -> &'static str {
        match self {
            TreeId::Meta => "meta",
            TreeId::Classes => "classes",
            TreeId::Prototypes => "prototypes",
            TreeId::Support => "support",
        }
    }
}

/// Files and directories a bank directory holds: sled's own, and the build
/// files of format 2 (`builds/`).
pub(super) fn is_sled_entry(name: &str) -> bool {
    matches!(
        name,
        "conf" | "db" | "blobs" | super::build_file::BUILDS_DIR
    ) || name.starts_with("snap.")
}

/// Outcome of [`Store::commit_class`].
pub(crate) enum CommitOutcome {
    /// The record was written; `previous` is the record it replaced.
    Committed { previous: Option<Vec<u8>> },
    /// A record already exists and replacing was not allowed.
    Exists,
}

/// Outcome of [`Store::commit_classes`].
pub(crate) enum BatchOutcome {
    /// Every record was written; `previous[i]` is the record item `i` replaced.
    Committed { previous: Vec<Option<Vec<u8>>> },
    /// Item `index` exists and replacing it was not allowed; nothing was written.
    Exists { index: usize },
}

/// Outcome of [`Store::rename_class`].
pub(crate) enum RenameOutcome {
    /// The record now lives under the new name.
    Renamed,
    /// No record under the old name.
    MissingOld,
    /// A record already exists under the new name.
    ExistingNew,
}

/// An open sled database with the bank's trees.
pub(crate) struct Store {
    path: PathBuf,
    // ManuallyDrop so that `drop` can close sled first and then wait for
    // its file lock to go (see `Drop for Store`).
    db: ManuallyDrop<sled::Db>,
    meta: ManuallyDrop<sled::Tree>,
    classes: ManuallyDrop<sled::Tree>,
    prototypes: ManuallyDrop<sled::Tree>,
    support: ManuallyDrop<sled::Tree>,
    /// Trees that existed before open, other than sled's default and ours.
    foreign_trees: Vec<String>,
    /// Canonical path, recorded on drop in [`RECENTLY_CLOSED`].
    canonical: Option<PathBuf>,
    /// Set when sled reported an I/O error (a full disk, say): sled 0.34
    /// then waits forever in its flush-on-drop, so `drop` leaks the handles
    /// instead (see `Drop for Store`).
    io_failed: AtomicBool,
    /// For a bank opened read-only: the private copy sled runs on (`path`
    /// is still the bank's, where the build files are read).
    snapshot: Option<Snapshot>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.io_failed.load(Ordering::Relaxed) {
            // After an I/O error sled's own drop blocks for ever waiting for
            // buffers it can no longer write. Leak the handles: the process
            // exit releases the file lock, and whatever was not flushed was
            // never committed (the bank's commit protocol flushes first; the
            // next open removes unreferenced build data).
            return;
        }
        // SAFETY: the handles are dropped exactly once, here, and never used
        // again: `self` is being dropped.
        unsafe {
            ManuallyDrop::drop(&mut self.meta);
            ManuallyDrop::drop(&mut self.classes);
            ManuallyDrop::drop(&mut self.prototypes);
            ManuallyDrop::drop(&mut self.support);
            ManuallyDrop::drop(&mut self.db);
        }
        // sled's background threads release the file lock a moment later
        // (sled issue #1234). Wait for that, so that another process can
        // open the bank as soon as this one has closed it (for a read-only
        // bank: so that the copy is no longer written when it is removed).
        let sled_dir = self.sled_dir().to_path_buf();
        let deadline = Instant::now() + LINGER_WAIT;
        while matches!(check_not_locked(&sled_dir), Err(BankError::Locked { .. }))
            && Instant::now() < deadline
        {
            std::thread::sleep(LINGER_POLL);
        }
        drop(self.snapshot.take());
        if let Some(c) = self.canonical.take() {
            let mut closed = RECENTLY_CLOSED.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            closed.retain(|(p, t)| *p != c && now.duration_since(*t) < LINGER_WAIT);
            closed.push((c, now));
        }
    }
}

/// How long a bank closed by this process may still be locked by sled (2 s
/// was too short on a loaded 2-core CI machine).
const LINGER_WAIT: Duration = Duration::from_secs(5);
/// Delay between open attempts while waiting for such a lock.
const LINGER_POLL: Duration = Duration::from_millis(10);

/// Banks this process closed recently, with when.
static RECENTLY_CLOSED: Mutex<Vec<(PathBuf, Instant)>> = Mutex::new(Vec::new());

fn recently_closed(canonical: &Path) -> Option<Instant> {
    let closed = RECENTLY_CLOSED.lock().unwrap_or_else(|p| p.into_inner());
    closed.iter().find(|(p, _)| p == canonical).map(|(_, t)| *t)
}

fn forget_closed(canonical: &Path) {
    let mut closed = RECENTLY_CLOSED.lock().unwrap_or_else(|p| p.into_inner());
    closed.retain(|(p, _)| p != canonical);
}

impl Store {
    /// Opens (creating if missing) the sled database at `path`.
    ///
    /// sled 0.34 keeps its file lock for a moment after a `Db` is dropped
    /// (background I/O threads still hold the file; sled issue #1234). A bank
    /// closed by this process within [`LINGER_WAIT`] is therefore retried
    /// until that deadline; any other held lock fails at once with
    /// [`BankError::Locked`].
    pub(crate) fn open(path: &Path) -> Result<Store> {
        check_directory(path)?;
        let canonical = fs::canonicalize(path).ok();
        let deadline = canonical
            .as_deref()
            .and_then(recently_closed)
            .map(|closed| closed + LINGER_WAIT);
        loop {
            match Store::open_once(path) {
                Err(BankError::Locked { .. }) if deadline.is_some_and(|d| Instant::now() < d) => {
                    std::thread::sleep(LINGER_POLL);
                }
                Ok(mut store) => {
                    store.canonical = fs::canonicalize(path).ok();
                    if let Some(c) = &store.canonical {
                        forget_closed(c);
                    }
                    return Ok(store);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens the bank at `path`, which this process may not write, through
    /// a private copy of its sled files ([`Snapshot`]); writes to the
    /// returned store change only the copy, and the bank refuses them
    /// before they are tried.
    pub(crate) fn open_snapshot(path: &Path) -> Result<Store> {
        check_directory(path)?;
        let snapshot = Snapshot::take(path)?;
        let mut store = Store::open_at(path, snapshot.dir.path())?;
        store.snapshot = Some(snapshot);
        Ok(store)
    }

    /// Whether this is a read-only bank's private copy.
    pub(crate) fn is_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// A read-only bank's private copy.
    #[cfg(test)]
    pub(crate) fn snapshot_dir(&self) -> Option<&Path> {
        self.snapshot.as_ref().map(|s| s.dir.path())
    }

    /// The folder sled runs on: the bank, or its private copy.
    fn sled_dir(&self) -> &Path {
        self.snapshot
            .as_ref()
            .map_or(self.path.as_path(), |s| s.dir.path())
    }

    fn open_once(path: &Path) -> Result<Store> {
        Store::open_at(path, path)
    }

    /// Opens sled on `sled_dir` for the bank at `path` (the same folder,
    /// or a read-only bank's copy).
    fn open_at(path: &Path, sled_dir: &Path) -> Result<Store> {
        check_not_locked(sled_dir)?;
        let db = sled::Config::new()
            .path(sled_dir)
            .segment_size(SLED_SEGMENT_SIZE)
            .cache_capacity(SLED_CACHE_CAPACITY)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| open_error(path, e))?;
        let default_name: &[u8] = b"__sled__default";
        let mut foreign_trees = Vec::new();
        for name in db.tree_names() {
            if &*name == default_name {
                continue;
            }
            if !TreeId::ALL.iter().any(|t| t.name().as_bytes() == &*name) {
                foreign_trees.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        // Handles are wrapped at once: after an I/O error they are leaked
        // rather than dropped (sled's drop would block; see `Drop for Store`).
        let db = ManuallyDrop::new(db);
        let open_tree = |t: TreeId| match db.open_tree(t.name()) {
            Ok(tree) => Ok(ManuallyDrop::new(tree)),
            Err(e) => Err(open_error(path, e)),
        };
        let trees = (|| {
            Ok::<_, BankError>((
                open_tree(TreeId::Meta)?,
                open_tree(TreeId::Classes)?,
                open_tree(TreeId::Prototypes)?,
                open_tree(TreeId::Support)?,
            ))
        })();
        let (meta, classes, prototypes, support) = match trees {
            Ok(t) => t,
            Err(e) => {
                if !matches!(&e, BankError::Open { source, .. } if matches!(source.0, sled::Error::Io(_)))
                {
                    drop(ManuallyDrop::into_inner(db));
                }
                return Err(e);
            }
        };
        Ok(Store {
            path: path.to_path_buf(),
            meta,
            classes,
            prototypes,
            support,
            db,
            foreign_trees,
            canonical: None,
            io_failed: AtomicBool::new(false),
            snapshot: None,
        })
    }

    /// The database directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Trees found on open that belong neither to sled nor to the bank.
    pub(crate) fn foreign_trees(&self) -> &[String] {
        &self.foreign_trees
    }

    /// Whether sled's default tree (unused by banks) holds data.
    pub(crate) fn default_tree_has_data(&self) -> Result<bool> {
        let first = self
            .db
            .first()
            .map_err(|e| self.err("read default tree", e))?;
        Ok(first.is_some())
    }

    fn tree(&self, t: TreeId) -> &sled::Tree {
        match t {
            TreeId::Meta => &self.meta,
            TreeId::Classes => &self.classes,
            TreeId::Prototypes => &self.prototypes,
            TreeId::Support => &self.support,
        }
    }

    fn err(&self, op: &'static str, e: sled::Error) -> BankError {
        if matches!(e, sled::Error::Io(_)) {
            self.io_failed.store(true, Ordering::Relaxed);
        }
        BankError::Store {
            path: self.path.clone(),
            op,
            source: StoreError(e),
        }
    }

    /// Reads one value.
    pub(crate) fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.tree(t)
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err("read", e))
    }

    /// Writes one value.
    pub(crate) fn insert(&self, t: TreeId, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(t)
            .insert(key, value)
            .map(drop)
            .map_err(|e| self.err("write", e))
    }

    /// Writes `value` under `key` unless the key exists; returns the existing value if it does.
    pub(crate) fn insert_new(
        &self,
        t: TreeId,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let swapped = self
            .tree(t)
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map_err(|e| self.err("write", e))?;
        Ok(swapped.err().and_then(|c| c.current.map(|v| v.to_vec())))
    }

    /// Atomically adds `delta` to the u64 LE counter at `key` (missing = `initial`)
    /// and returns the value before the addition.
    pub(crate) fn fetch_add_u64(&self, t: TreeId, key: &[u8], initial: u64) -> Result<u64> {
        let mut before = initial;
        self.tree(t)
            .fetch_and_update(key, |old| {
                let cur = old.and_then(decode_u64).unwrap_or(initial);
                before = cur;
                Some(encode_u64(cur.wrapping_add(1)))
            })
            .map_err(|e| self.err("update counter", e))?;
        Ok(before)
    }

    /// Writes many entries to one tree in one atomic batch.
    #[cfg(test)]
    pub(crate) fn insert_batch<K, V>(
        &self,
        t: TreeId,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            batch.insert(k.as_ref(), v.as_ref());
        }
        self.tree(t)
            .apply_batch(batch)
            .map_err(|e| self.err("write batch", e))
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, t: TreeId, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree(t)
            .scan_prefix(prefix)
            .map(|kv| {
                kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.err("scan", e))
            })
            .collect()
    }

    /// All keys of a tree, in key order.
    pub(crate) fn keys(&self, t: TreeId) -> Result<Vec<Vec<u8>>> {
        self.tree(t)
            .iter()
            .keys()
            .map(|k| k.map(|k| k.to_vec()).map_err(|e| self.err("scan", e)))
            .collect()
    }

    /// The first key at or after `start`, if any.
    pub(crate) fn first_key_from(&self, t: TreeId, start: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.tree(t).range(start..).next() {
            None => Ok(None),
            Some(Ok((k, _))) => Ok(Some(k.to_vec())),
            Some(Err(e)) => Err(self.err("scan", e)),
        }
    }

    /// Whether a tree is empty.
    pub(crate) fn is_empty(&self, t: TreeId) -> bool {
        self.tree(t).is_empty()
    }

    /// Removes the given keys in one batch.
    pub(crate) fn remove_keys(&self, t: TreeId, keys: &[Vec<u8>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k.as_slice());
        }
        self.tree(t)
            .apply_batch(batch)
            .map_err(|e| self.err("delete batch", e))
    }

    /// Removes every key starting with `prefix`; returns how many were removed.
    pub(crate) fn remove_prefix(&self, t: TreeId, prefix: &[u8]) -> Result<u64> {
        let keys: Vec<Vec<u8>> = self
            .tree(t)
            .scan_prefix(prefix)
            .keys()
            .map(|k| k.map(|k| k.to_vec()).map_err(|e| self.err("scan", e)))
            .collect::<Result<_>>()?;
        self.remove_keys(t, &keys)?;
        Ok(keys.len() as u64)
    }

    /// Removes one key; returns the value it held.
    pub(crate) fn remove(&self, t: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.tree(t)
            .remove(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err("delete", e))
    }

    /// Empties a tree.
    pub(crate) fn clear(&self, t: TreeId) -> Result<()> {
        self.tree(t).clear().map_err(|e| self.err("clear", e))
    }

    /// Writes the class record `value` under `name` in one transaction: the
    /// commit point of a class build. Fails with [`CommitOutcome::Exists`]
    /// when a record exists and `replace` is false.
    pub(crate) fn commit_class(
        &self,
        name: &str,
        value: &[u8],
        replace: bool,
    ) -> Result<CommitOutcome> {
        let res = self.classes.transaction(|tx| {
            let previous = tx.get(name.as_bytes())?;
            if previous.is_some() && !replace {
                return Ok(CommitOutcome::Exists);
            }
            tx.insert(name.as_bytes(), value)?;
            Ok(CommitOutcome::Committed {
                previous: previous.map(|v| v.to_vec()),
            })
        });
        res.map_err(|e: TransactionError<()>| self.tx_err("commit class", e))
    }

    /// Writes many class records in one transaction: all or none. Each item
    /// is (name, record, replace).
    pub(crate) fn commit_classes(&self, items: &[(String, Vec<u8>, bool)]) -> Result<BatchOutcome> {
        let res = self.classes.transaction(|tx| {
            let mut previous = Vec::with_capacity(items.len());
            for (index, (name, value, replace)) in items.iter().enumerate() {
                let old = tx.get(name.as_bytes())?;
                if old.is_some() && !replace {
                    return Err(ConflictableTransactionError::Abort(index));
                }
                tx.insert(name.as_bytes(), value.as_slice())?;
                previous.push(old.map(|v| v.to_vec()));
            }
            Ok(previous)
        });
        match res {
            Ok(previous) => Ok(BatchOutcome::Committed { previous }),
            Err(TransactionError::Abort(index)) => Ok(BatchOutcome::Exists { index }),
            Err(TransactionError::Storage(e)) => Err(self.err("commit classes", e)),
        }
    }

    /// One transaction over the `classes` and `meta` trees: replaces class
    /// records (name, expected current bytes, new bytes) and sets meta keys.
    /// Returns false, writing nothing, when a record is no longer the expected one.
    pub(crate) fn rewrite_classes_and_meta(
        &self,
        classes: &[(Vec<u8>, Vec<u8>, Vec<u8>)],
        meta: &[(&[u8], Vec<u8>)],
    ) -> Result<bool> {
        let res = (&*self.classes, &*self.meta).transaction(|(tc, tm)| {
            for (key, expected, new) in classes {
                if tc.get(key)?.as_deref() != Some(expected.as_slice()) {
                    return Err(ConflictableTransactionError::Abort(()));
                }
                tc.insert(key.as_slice(), new.as_slice())?;
            }
            for (key, value) in meta {
                tm.insert(*key, value.as_slice())?;
            }
            Ok(())
        });
        match res {
            Ok(()) => Ok(true),
            Err(TransactionError::Abort(())) => Ok(false),
            Err(TransactionError::Storage(e)) => Err(self.err("migrate records", e)),
        }
    }

    /// Moves the class record at `old` to `new` in one transaction; `rewrite`
    /// turns the old record bytes into the new ones (it updates the name).
    pub(crate) fn rename_class(
        &self,
        old: &str,
        new: &str,
        rewrite: impl Fn(&[u8]) -> Result<Vec<u8>>,
    ) -> Result<RenameOutcome> {
        let res = self.classes.transaction(|tx| {
            let Some(value) = tx.get(old.as_bytes())? else {
                return Ok(RenameOutcome::MissingOld);
            };
            if tx.get(new.as_bytes())?.is_some() {
                return Ok(RenameOutcome::ExistingNew);
            }
            let rewritten = rewrite(&value).map_err(ConflictableTransactionError::Abort)?;
            tx.remove(old.as_bytes())?;
            tx.insert(new.as_bytes(), rewritten)?;
            Ok(RenameOutcome::Renamed)
        });
        match res {
            Ok(o) => Ok(o),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.err("rename class", e)),
        }
    }

    fn tx_err(&self, op: &'static str, e: TransactionError<()>) -> BankError {
        match e {
            TransactionError::Storage(e) => self.err(op, e),
            // Never produced: these transactions do not abort.
            TransactionError::Abort(()) => {
                self.err(op, sled::Error::ReportableBug("unexpected abort".into()))
            }
        }
    }

    /// Makes every write so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush().map(drop).map_err(|e| self.err("flush", e))
    }

    /// Total length of the files in the database directory, in bytes.
    pub(crate) fn disk_size(&self) -> Result<u64> {
        dir_size(&self.path).map_err(|source| BankError::Io {
            path: self.path.clone(),
            op: "measure size",
            source,
        })
    }
}

/// Sums file lengths under `dir`. sled deletes blob files concurrently, so
/// entries that vanish during the walk count as zero.
fn dir_size(dir: &Path) -> io::Result<u64> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            total += dir_size(&entry.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Refuses paths that are files, or non-empty directories sled did not create.
fn check_directory(path: &Path) -> Result<()> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BankError::Io {
                path: path.to_path_buf(),
                op: "inspect",
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(BankError::NotABank {
            path: path.to_path_buf(),
            reason: "it is not a directory",
        });
    }
    let entries = fs::read_dir(path).map_err(|source| BankError::Io {
        path: path.to_path_buf(),
        op: "list",
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| BankError::Io {
            path: path.to_path_buf(),
            op: "list",
            source,
        })?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_sled_entry) {
            return Err(BankError::NotABank {
                path: path.to_path_buf(),
                reason: "the directory holds files that are not part of a bank database",
            });
        }
    }
    Ok(())
}

/// Fails fast with [`BankError::Locked`] when another process holds the bank.
///
/// sled takes an exclusive `flock` on `<bank>/db` (non-blocking); probing the
/// same lock here gives a clean error before sled starts up. Any race left is
/// caught again by [`open_error`].
fn check_not_locked(path: &Path) -> Result<()> {
    let db_file = path.join("db");
    let file = match fs::OpenOptions::new().read(true).write(true).open(&db_file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BankError::Io {
                path: db_file,
                op: "open",
                source,
            })
        }
    };
    match File::try_lock(&file) {
        Ok(()) => {
            // Nobody holds the bank: safe to tidy up before sled opens it.
            remove_partial_snapshots(path);
            Ok(()) // the lock is released when `file` drops
        }
        Err(TryLockError::WouldBlock) => Err(BankError::Locked {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(BankError::Io {
            path: db_file,
            op: "lock",
            source,
        }),
    }
}

/// Deletes `snap.*.generating` files: snapshots sled began and never
/// finished (it renames them when complete). One is left when the disk
/// fills up while sled writes a snapshot on open, and sled 0.34 then fails
/// every later open with "Read corrupted data". Its log still holds every
/// write, so the data is whole without the partial snapshot.
fn remove_partial_snapshots(path: &Path) {
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            // If this fails, sled's open reports the file.
            let _ = fs::remove_file(e.path());
        }
    }
}

pub(crate) fn open_error(path: &Path, e: sled::Error) -> BankError {
    // sled 0.34 reports a held lock as an `Other` I/O error whose message
    // starts with "could not acquire lock".
    if let sled::Error::Io(io) = &e {
        if io.kind() == io::ErrorKind::Other && io.to_string().starts_with("could not acquire lock")
        {
            return BankError::Locked {
                path: path.to_path_buf(),
            };
        }
    }
    BankError::Open {
        path: path.to_path_buf(),
        source: StoreError(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_entries_are_recognised() {
        for n in ["conf", "db", "blobs", "snap.0000000000001234"] {
            assert!(is_sled_entry(n), "{n}");
        }
        assert!(!is_sled_entry("notes.txt"));
    }

    #[test]
    fn foreign_directory_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, BankError::NotABank { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_is_not_a_bank() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bank");
        fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).err().unwrap();
        assert!(matches!(err, BankError::NotABank { .. }), "{err}");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn commit_and_rename_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("b")).unwrap();
        assert!(matches!(
            s.commit_class("a", b"1", false).unwrap(),
            CommitOutcome::Committed { previous: None }
        ));
        assert!(matches!(
            s.commit_class("a", b"2", false).unwrap(),
            CommitOutcome::Exists
        ));
        match s.commit_class("a", b"3", true).unwrap() {
            CommitOutcome::Committed { previous } => {
                assert_eq!(previous.as_deref(), Some(&b"1"[..]))
            }
            CommitOutcome::Exists => panic!("replace refused"),
        }
        assert!(matches!(
            s.rename_class("a", "b", |v| Ok(v.to_vec())).unwrap(),
            RenameOutcome::Renamed
        ));
        assert_eq!(
            s.get(TreeId::Classes, b"b").unwrap().as_deref(),
            Some(&b"3"[..])
        );
        assert!(s.get(TreeId::Classes, b"a").unwrap().is_none());
        assert!(matches!(
            s.rename_class("a", "c", |v| Ok(v.to_vec())).unwrap(),
            RenameOutcome::MissingOld
        ));
    }

    #[test]
    fn counter_and_prefix_removal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("b")).unwrap();
        assert_eq!(s.fetch_add_u64(TreeId::Meta, b"n", 1).unwrap(), 1);
        assert_eq!(s.fetch_add_u64(TreeId::Meta, b"n", 1).unwrap(), 2);
        s.insert_batch(
            TreeId::Support,
            [(b"ab1", b"x"), (b"ab2", b"y"), (b"ac1", b"z")],
        )
        .unwrap();
        assert_eq!(s.remove_prefix(TreeId::Support, b"ab").unwrap(), 2);
        assert_eq!(s.keys(TreeId::Support).unwrap(), vec![b"ac1".to_vec()]);
        assert_eq!(s.insert_new(TreeId::Meta, b"k", b"v").unwrap(), None);
        assert_eq!(
            s.insert_new(TreeId::Meta, b"k", b"w").unwrap(),
            Some(b"v".to_vec())
        );
    }
}
