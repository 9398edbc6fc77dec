//! The served banks: each a name, where it lives, and the version being
//! served, reloaded when the bank changes on disk.
//!
//! A bank **folder** (sled) is exported to a snapshot `.ovbank` file and
//! queried from that mapped file, so the server holds the folder's lock
//! only while exporting and other processes (`add`, `remove`, `import`)
//! keep writing it. The snapshot is also the file `GET
//! /v1/banks/{bank}.ovbank` hands out. A served **`.ovbank` file** is
//! queried in place, and reopened when it is replaced (by rename: shared
//! files are never rewritten in place).
//!
//! A change is seen by a stamp of the files (sizes, modification times,
//! inodes); a version that fails to load (a bank half-way through a write
//! another process is doing, a damaged file) is not served: the version
//! before stays until a later check loads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::UNIX_EPOCH;

use ovdiff_core::{Error, Home, Result};
use ovdiff_segment::{Query, Segmenter, SegmenterOptions};

/// A bank to serve: the name clients use, and its folder or `.ovbank` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankSpec {
    /// The name in URLs (`?bank=NAME`, `/v1/banks/NAME/…`).
    pub name: String,
    /// A bank folder or a `.ovbank` file.
    pub path: PathBuf,
}

impl BankSpec {
    /// `path` served under its file or folder name (without `.ovbank`).
    pub fn from_path(path: PathBuf) -> BankSpec {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".ovbank").to_string())
            .unwrap_or_else(|| "bank".into());
        BankSpec { name, path }
    }

    fn is_file(&self) -> bool {
        self.path.is_file()
    }
}

/// Every bank under `<home>/banks`: bank folders and `.ovbank` files,
/// sorted by name. An error when there is none.
pub fn discover(home: &Home) -> Result<Vec<BankSpec>> {
    let dir = home.banks_dir();
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            let is_file_bank = p.extension().is_some_and(|x| x == "ovbank") && p.is_file();
            if ovdiff_store::bank::is_bank_root(&p) || is_file_bank {
                out.push(BankSpec::from_path(p));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = out.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::Invalid(format!(
            "two banks under {} would both be served as `{}`: {} and {}; name the one to \
             serve with --bank",
            dir.display(),
            w[0].name,
            w[0].path.display(),
            w[1].path.display()
        )));
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "no bank to serve: {} holds no bank folder or .ovbank file; build one with \
             `ovdiff-bank add CLASS`, or name one with --bank NAME|PATH|FILE.ovbank",
            dir.display()
        )));
    }
    Ok(out)
}

/// What identifies one state of the bank's files on disk: per file, its
/// path, size, and modification time or (sled's `db`) content hash, and
/// its inode.
type Stamp = Vec<(PathBuf, u64, u128, u64)>;

/// The last hash of a `db` file, by (size, modification time, inode).
type DbHash = Option<((u64, u128, u64), u128)>;

fn stamp_of(path: &Path, db_hash: &Mutex<DbHash>) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let entry = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            (p.to_path_buf(), m.len(), mtime, m.ino())
        })
    };
    if path.is_file() {
        return entry(path).into_iter().collect();
    }
    // A bank folder: its files and those one level down (blobs/, builds/).
    // Opening a bank, even only to read it, touches sled's `db` and may
    // write a `snap.*` (derived from `db`): `db` counts by its content, and
    // snapshots not at all, so that the server's own reads are no change.
    let mut out = Vec::new();
    let mut dirs = vec![(path.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if depth == 0 {
                    dirs.push((p, 1));
                }
            } else if depth == 0 && name.starts_with("snap.") {
                continue;
            } else if let Some(mut s) = entry(&p) {
                if depth == 0 && name == "db" {
                    s.2 = db_content_hash(&p, (s.1, s.2, s.3), db_hash);
                }
                out.push(s);
            }
        }
    }
    out.sort();
    out
}

/// The content hash of sled's `db`, read again only when its size, time or
/// inode moved.
fn db_content_hash(path: &Path, key: (u64, u128, u64), cache: &Mutex<DbHash>) -> u128 {
    use sha2::{Digest, Sha256};
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, h)) = *c {
        if k == key {
            return h;
        }
    }
    let h = match std::fs::read(path) {
        Ok(bytes) => {
            let d = Sha256::digest(&bytes);
            u128::from_le_bytes(d[..16].try_into().expect("invariant: 32-byte digest"))
        }
        Err(_) => 0,
    };
    *c = Some((key, h));
    h
}

/// One loaded state of a bank.
pub struct Version {
    /// The segmenter over [`file`](Self::file), encoders loaded.
    pub segmenter: Segmenter,
    /// Whether [`file`](Self::file) is this version's own snapshot, removed
    /// with it (a download or query still holding it keeps reading it).
    snapshot: bool,
    /// The shareable file: the snapshot of a folder, or the served file.
    pub file: PathBuf,
    /// Its SHA-256, hex (the download's ETag).
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its classes.
    pub classes: usize,
    stamp: Stamp,
}

impl Drop for Version {
    fn drop(&mut self) {
        if self.snapshot {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// A bank being served.
pub struct ServedBank {
    spec: BankSpec,
    /// `<home>/cache/serve/NAME-KEY`: versions are `STEM.N.ovbank`.
    snapshot: PathBuf,
    next_snapshot: std::sync::atomic::AtomicU64,
    options: SegmenterOptions,
    current: RwLock<Option<Arc<Version>>>,
    /// The stamp of the last state that failed to load, so that it is
    /// reported once, not at every check.
    failed: Mutex<Option<Stamp>>,
    /// One reload at a time.
    reloading: Mutex<()>,
    db_hash: Mutex<DbHash>,
}

impl ServedBank {
    /// A bank to serve from `spec`, snapshots (of folders) under
    /// `snapshots`; nothing is loaded yet.
    pub fn new(spec: BankSpec, snapshots: &Path, options: SegmenterOptions) -> ServedBank {
        let snapshot = crate::snapshot_stem(snapshots, &spec.name, &spec.path);
        remove_old_snapshots(&snapshot);
        ServedBank {
            snapshot,
            next_snapshot: std::sync::atomic::AtomicU64::new(0),
            spec,
            options,
            current: RwLock::new(None),
            failed: Mutex::new(None),
            reloading: Mutex::new(()),
            db_hash: Mutex::new(None),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its folder or file.
    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// The version being served, once one is loaded. A request keeps the
    /// `Arc` to the end, whatever reloads meanwhile.
    pub fn current(&self) -> Option<Arc<Version>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Load the bank if it changed on disk since the version being served
    /// (or none is loaded). `Ok(true)` when a new version is now served.
    /// Blocking: exports, hashes, opens and loads encoders.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = stamp_of(&self.spec.path, &self.db_hash);
        if stamp.is_empty() {
            return Err(Error::Invalid(format!(
                "bank {} is gone ({} cannot be read)",
                self.spec.name,
                self.spec.path.display()
            )));
        }
        if self.current().is_some_and(|v| v.stamp == stamp) {
            return Ok(false);
        }
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.as_ref() == Some(&stamp) {
            return Ok(false);
        }
        match self.load(stamp.clone()) {
            Ok(v) => {
                *failed = None;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(v));
                Ok(true)
            }
            Err(e) => {
                // Retried when the files change again (a writer finishing).
                *failed = Some(stamp);
                Err(e)
            }
        }
    }

    fn load(&self, stamp: Stamp) -> Result<Version> {
        let snapshot = !self.spec.is_file();
        let file = if snapshot {
            // Each version its own file, so that a download's ETag and bytes
            // always belong to one version.
            let n = self
                .next_snapshot
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let file = PathBuf::from(format!("{}.{n}.ovbank", self.snapshot.display()));
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
            }
            let bank = ovdiff_learn::catalog::open_existing_read(&self.spec.path, "")?;
            ovdiff_store::ovbank::export(&bank, None, &file)?;
            drop(bank);
            file
        } else {
            self.spec.path.clone()
        };
        // A version that fails below removes its snapshot.
        let cleanup = RemoveOnError(snapshot.then(|| file.clone()));
        let sha256 = ovdiff_models::fingerprint::sha256_file(&file)?;
        let bytes = std::fs::metadata(&file)
            .map_err(|e| Error::io("reading", &file, e))?
            .len();
        let segmenter = Segmenter::open(&file, self.options.clone())?;
        let classes = segmenter.store().classes()?.len();
        if classes > 0 {
            // Encoders and the all-classes plan, loaded before it is served.
            // A bank whose encoders are not installed here is still served
            // (its classes, thumbnails and file); segmenting with it says
            // what is missing.
            if let Err(e) = segmenter.prepare(&Query::all_classes()) {
                tracing::warn!(bank = %self.spec.name, error = %e,
                    "serving the bank's file and classes, but it cannot segment here");
            }
        }
        cleanup.disarm();
        Ok(Version {
            segmenter,
            snapshot,
            file,
            sha256,
            bytes,
            classes,
            stamp,
        })
    }
}

/// Removes a file on drop unless disarmed.
struct RemoveOnError(Option<PathBuf>);

impl RemoveOnError {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnError {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Snapshots `STEM.N.ovbank` an earlier server left (it stopped without
/// dropping its versions).
fn remove_old_snapshots(stem: &Path) {
    let (Some(dir), Some(prefix)) = (stem.parent(), stem.file_name()) else {
        return;
    };
    let prefix = format!("{}.", prefix.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix(&prefix) {
            let n = rest.strip_suffix(".ovbank").unwrap_or("");
            if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
