//! Banks this process may not write (a read-only file system, or another user's files): how that is detected, and the private copy of sled's files a read-only open reads through.
//!
//! sled 0.34 has no read-only mode: it opens its files for writing and
//! takes a lock that needs them writable. So [`Bank::open_read`] of a bank
//! that cannot be written copies sled's own files (`conf`, `db`, `blobs/`,
//! finished `snap.*`: the class records and the meta keys; for a format-2
//! bank a few kilobytes per class) into a private folder under the system's
//! temporary folder, opens sled there, and reads the build files (the bulk
//! data) in place. The copy is taken while holding a shared lock on the
//! bank's `db`, kept until the bank is closed: a writer (which takes sled's
//! exclusive lock) is refused meanwhile, as with a bank opened for writing,
//! and other readers are not. The copy goes when the bank is dropped or the
//! process is stopped by SIGINT/SIGTERM; one left by a process killed
//! outright is swept by the next read-only open.
//!
//! [`Bank::open_read`]: super::Bank::open_read

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::Path;

use super::build_file::BUILDS_DIR;
use super::store::is_sled_entry;
use super::{BankError, Result};

/// Why this process may not write a bank, and what to do instead.
#[derive(Debug, Clone)]
pub(super) struct Unwritable {
    why: String,
    what_to_do: String,
}

impl Unwritable {
    /// A reason given by a test.
    #[cfg(test)]
    pub(super) fn for_test() -> Unwritable {
        Unwritable {
            why: "a test says so".into(),
            what_to_do: "do nothing".into(),
        }
    }

    /// The error a write to the bank at `path` gets.
    pub(super) fn error(&self, path: &Path) -> BankError {
        BankError::NotWritable {
            path: path.to_path_buf(),
            why: self.why.clone(),
            what_to_do: self.what_to_do.clone(),
        }
    }
}

/// Why this process may not write the bank at `path`; `None` when it may
/// (or the bank does not exist yet).
pub(super) fn not_writable(path: &Path) -> Option<Unwritable> {
    if !path.is_dir() {
        return None;
    }
    let dirs = [
        path.to_path_buf(),
        path.join("blobs"),
        path.join(BUILDS_DIR),
    ];
    let files = [path.join("db"), path.join("conf")];
    for (p, dir) in dirs
        .iter()
        .map(|p| (p, true))
        .chain(files.iter().map(|p| (p, false)))
    {
        let Ok(meta) = fs::metadata(p) else {
            continue;
        };
        let Err(e) = access_write(p, dir) else {
            continue;
        };
        let (why, what_to_do) = if e.raw_os_error() == Some(libc::EROFS) {
            (
                "it is on a read-only file system".to_string(),
                format!(
                    "remount it read-write, or copy it to a writable folder (`cp -r {} NEW`) \
                     and pass --bank NEW",
                    path.display()
                ),
            )
        } else {
            (
                format!(
                    "this user may not write {} ({}, owned by uid {})",
                    p.display(),
                    e,
                    owner(&meta)
                ),
                format!(
                    "run the command as its owner, or copy it to a folder of yours (`cp -r {} \
                     NEW`) and pass --bank NEW",
                    path.display()
                ),
            )
        };
        return Some(Unwritable { why, what_to_do });
    }
    None
}

#[cfg(unix)]
fn owner(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::MetadataExt;
    meta.uid()
}

#[cfg(not(unix))]
fn owner(_: &fs::Metadata) -> u32 {
    0
}

/// `access(2)` for writing (and, for a folder, entering): what the kernel
/// would allow this process, read-only mounts included.
#[cfg(unix)]
fn access_write(p: &Path, dir: bool) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mode = if dir {
        libc::W_OK | libc::X_OK
    } else {
        libc::W_OK
    };
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn access_write(p: &Path, _dir: bool) -> io::Result<()> {
    match fs::metadata(p) {
        Ok(m) if m.permissions().readonly() => Err(io::ErrorKind::PermissionDenied.into()),
        _ => Ok(()),
    }
}

/// The private copy of a read-only bank's sled files, and the shared lock
/// on its `db` held while the copy is in use.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The copy.
    pub(crate) dir: ovdiff_core::atomic::PrivateDir,
    /// The shared lock on the bank's `db` (released when dropped).
    _lock: File,
}

/// Name prefix of the copies under the temporary folder.
const SNAPSHOT_PREFIX: &str = "ovdiff-bank-read-";

impl Snapshot {
    /// Takes the shared lock on `bank`'s `db` and copies its sled files.
    pub(crate) fn take(bank: &Path) -> Result<Snapshot> {
        let db = bank.join("db");
        let lock = match File::open(&db) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BankError::NotABank {
                    path: bank.to_path_buf(),
                    reason: "it has no database file (`db`), and a read-only bank cannot be \
                             created",
                })
            }
            Err(source) => {
                return Err(BankError::Io {
                    path: db,
                    op: "open",
                    source,
                })
            }
        };
        match lock.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(BankError::Locked {
                    path: bank.to_path_buf(),
                })
            }
            // No locks on this file system: read without one.
            Err(TryLockError::Error(_)) => {}
        }
        let io_err = |path: &Path, op| {
            let path = path.to_path_buf();
            move |source| BankError::Io { path, op, source }
        };
        let dir = ovdiff_core::atomic::PrivateDir::create(&std::env::temp_dir(), SNAPSHOT_PREFIX)
            .map_err(|(dir, e)| io_err(&dir, "create a private copy in")(e))?;
        let snapshot = Snapshot { dir, _lock: lock };
        let entries = fs::read_dir(bank).map_err(io_err(bank, "list"))?;
        for e in entries {
            let e = e.map_err(io_err(bank, "list"))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_sled_entry(name) || name == BUILDS_DIR || name.ends_with(".generating") {
                continue;
            }
            copy_tree(&e.path(), &snapshot.dir.path().join(name))
                .map_err(io_err(&e.path(), "copy (to read it read-only)"))?;
        }
        Ok(snapshot)
    }
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    if fs::metadata(from)?.is_dir() {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(from, to).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Bank;
    use super::*;
    use crate::synthetic::{build, encoder, new_bank};

    #[test]
    fn a_read_only_open_reads_through_a_copy_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let enc = encoder('a', 8);
        let classes: Vec<_> = ["cat", "dog"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut b = build(n, &[], i as u64, false, 2, &|_| Vec::new());
                b.encoders = vec![(
                    enc.fingerprint.clone(),
                    crate::synthetic::protos(5, 8, 2, i as u64, false),
                )];
                b
            })
            .collect();
        {
            let bank = new_bank(&path, std::slice::from_ref(&enc));
            for c in &classes {
                bank.put_class(c, false).unwrap();
            }
        }
        assert!(not_writable(&path).is_none(), "a fresh bank is writable");
        let before = std::fs::read_dir(&path).unwrap().count();
        let bank = Bank::open_read_only(&path, Unwritable::for_test()).unwrap();
        assert!(bank.is_read_only());
        assert_eq!(bank.path(), path);
        let names: Vec<String> = bank
            .classes()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["cat", "dog"]);
        let cat = bank.class("cat").unwrap().unwrap();
        let protos = bank.prototypes(&cat, &enc.fingerprint).unwrap();
        let provenance = |v: &[ovdiff_core::Prototype]| -> Vec<_> {
            v.iter().map(|p| p.provenance.clone()).collect()
        };
        assert_eq!(
            provenance(&protos),
            provenance(&classes[0].encoders[0].1),
            "build files are read in place"
        );
        let err = bank.put_class(&classes[0], true).unwrap_err();
        assert!(
            matches!(err, BankError::NotWritable { .. })
                && err.to_string().contains("a test says so"),
            "{err}"
        );
        assert!(bank.remove_class("cat").is_err());
        // a writer is refused while it is read; a second reader is not
        assert!(matches!(Bank::open(&path), Err(BankError::Locked { .. })));
        let second = Bank::open_read_only(&path, Unwritable::for_test()).unwrap();
        let copy = bank.store_snapshot_dir().unwrap();
        assert!(copy.join("db").is_file());
        assert!(
            !copy.join(BUILDS_DIR).exists(),
            "build files are read in place"
        );
        drop((bank, second));
        assert!(!copy.exists(), "the copy goes with the bank");
        let after = std::fs::read_dir(&path).unwrap().count();
        assert_eq!(before, after);
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.classes().unwrap().len(), 2);
    }
}
