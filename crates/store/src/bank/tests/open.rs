//! Opening: format versions, failed creations, foreign sled databases, and the lock.

use std::time::Instant;

use super::*;

#[test]
fn newer_and_older_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    drop(Bank::open(&path).unwrap());
    let set_version = |v: u32| {
        let s = Store::open(&path).unwrap();
        s.insert(TreeId::Meta, meta_key::FORMAT_VERSION, &v.to_le_bytes())
            .unwrap();
        s.insert(TreeId::Meta, meta_key::OLDEST_READABLE, &v.to_le_bytes())
            .unwrap();
        s.flush().unwrap();
    };
    set_version(99);
    let err = Bank::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            BankError::TooNew {
                found: 99,
                supported: BANK_FORMAT_VERSION,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("99") && msg.contains(" 2;") && msg.contains("upgrade ovdiff-bank"),
        "{msg}"
    );
    set_version(0);
    let err = Bank::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            BankError::TooOld {
                found: 0,
                oldest: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("too old"), "{err}");
    set_version(1);
    Bank::open(&path).unwrap();
}

#[test]
fn failed_creation_is_reinitialised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    {
        // A creation that died before writing the format version.
        let s = Store::open(&path).unwrap();
        s.insert(TreeId::Meta, meta_key::MAGIC, format::MAGIC)
            .unwrap();
        s.insert(TreeId::Prototypes, &record::prototype_key(1, 0, 0), b"junk")
            .unwrap();
        s.flush().unwrap();
    }
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.format_version(), BANK_FORMAT_VERSION);
    assert_eq!(entries(&bank, TreeId::Prototypes), 0);
    assert!(bank.classes().unwrap().is_empty());
}

#[test]
fn foreign_sled_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other");
    {
        let db = raw_sled(&path, format::SLED_SEGMENT_SIZE);
        db.open_tree("users").unwrap().insert("alice", "1").unwrap();
        db.flush().unwrap();
    }
    let err = open_after_raw_sled(&path).unwrap_err();
    assert!(matches!(err, BankError::NotABank { .. }), "{err}");
    let db = raw_sled(&path, format::SLED_SEGMENT_SIZE);
    let users = db.open_tree("users").unwrap();
    assert!(users.get("alice").unwrap().is_some());
}

#[test]
fn sled_database_with_other_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other");
    drop(raw_sled(&path, 512 * 1024)); // sled's default segment size
    let err = open_after_raw_sled(&path).unwrap_err();
    assert!(matches!(err, BankError::Open { .. }), "{err}");
    assert!(err.to_string().contains("cannot open"), "{err}");
}

/// Opens a plain sled database, waiting out a lock a dropped handle still holds.
fn raw_sled(path: &Path, segment_size: usize) -> sled::Db {
    let start = Instant::now();
    loop {
        let config = sled::Config::new().path(path).segment_size(segment_size);
        match config.open() {
            Ok(db) => return db,
            Err(_) if start.elapsed().as_secs() < 3 => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// [`Bank::open`] right after a plain sled handle on `path` was dropped:
/// `Bank` only waits for locks of banks it closed itself.
fn open_after_raw_sled(path: &Path) -> Result<Bank> {
    let start = Instant::now();
    loop {
        match Bank::open(path) {
            Err(BankError::Locked { .. }) if start.elapsed().as_secs() < 3 => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other,
        }
    }
}

#[test]
fn second_open_fails_fast_with_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let first = Bank::open(&path).unwrap();
    let t = Instant::now();
    let err = Bank::open(&path).unwrap_err();
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
    assert!(matches!(err, BankError::Locked { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("bank {} is in use by another process", path.display())
    );
    drop(first);
    Bank::open(&path).unwrap();
}

#[test]
fn immediate_reopen_after_drop_succeeds() {
    // sled releases its file lock lazily after a drop; open must wait it out.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    for i in 0..15u64 {
        let bank = open_with(&path, &[encoder('a', 384)]);
        bank.put_class(&build("c", &[('a', 130, 384)], i), true)
            .unwrap();
    }
    assert_eq!(Bank::open(&path).unwrap().leftovers_cleaned(), 0);
}

#[test]
fn sled_lock_error_is_mapped_to_locked() {
    // Bypass the pre-check: sled's own lock error must map too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let _first = Bank::open(&path).unwrap();
    let err = sled::Config::new()
        .path(&path)
        .segment_size(format::SLED_SEGMENT_SIZE)
        .open()
        .map(drop)
        .map_err(|e| store::open_error(&path, e))
        .unwrap_err();
    assert!(matches!(err, BankError::Locked { .. }), "{err}");
}
