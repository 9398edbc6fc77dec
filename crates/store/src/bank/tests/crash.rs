//! Crash safety: failure points before and after the commit, an aborted process, and the leftovers the next open removes.

use super::*;

#[test]
fn injected_failure_during_replace_keeps_old_class_and_reopen_cleans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let v1 = build("dog", &[('a', 6, 16)], 10);
    let v2 = build("dog", &[('a', 9, 16)], 11);
    let old = {
        let bank = open_with(&path, &[encoder('a', 16)]);
        let old = bank.put_class(&v1, false).unwrap();
        let clean = builds(&bank);
        let err = bank
            .put_class_with(&v2, true, FailPoint::AfterPrototypes)
            .unwrap_err();
        assert!(matches!(
            err,
            BankError::InjectedFailure {
                point: FailPoint::AfterPrototypes
            }
        ));
        // The old class is intact and still the visible one.
        assert_eq!(bank.class("dog").unwrap().unwrap(), old);
        assert_protos_close(&bank.prototypes(&old, &fp('a')).unwrap(), &v1.encoders[0].1);
        // The new build's data is on disk, unreferenced.
        assert_eq!(builds(&bank), clean + 1);
        old
    };
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.leftovers_cleaned(), 1);
    assert_eq!(bank.class("dog").unwrap().unwrap(), old);
    assert_eq!(builds(&bank), 1);
    assert_protos_close(&bank.prototypes(&old, &fp('a')).unwrap(), &v1.encoders[0].1);
    drop(bank);
    assert_eq!(Bank::open(&path).unwrap().leftovers_cleaned(), 0);
}

#[test]
fn failure_after_commit_shows_new_class_and_reopen_cleans_old_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let v2 = build("dog", &[('a', 9, 16)], 11);
    {
        let bank = open_with(&path, &[encoder('a', 16)]);
        bank.put_class(&build("dog", &[('a', 6, 16)], 10), false)
            .unwrap();
        let err = bank
            .put_class_with(&v2, true, FailPoint::AfterCommit)
            .unwrap_err();
        assert!(matches!(err, BankError::InjectedFailure { .. }));
    }
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.leftovers_cleaned(), 1);
    let rec = bank.class("dog").unwrap().unwrap();
    assert_protos_close(&bank.prototypes(&rec, &fp('a')).unwrap(), &v2.encoders[0].1);
}

#[test]
fn env_failpoint_aborts_the_process_and_reopen_cleans() {
    // Child mode: run by the parent below with the env var set.
    if let Some(path) = std::env::var_os("OVDIFF_BANK_TEST_CHILD") {
        let bank = open_with(Path::new(&path), &[encoder('a', 8)]);
        let _ = bank.put_class(&build("crash", &[('a', 4, 8)], 5), false);
        std::process::exit(0); // not reached when the failpoint fires
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bank::tests::crash::env_failpoint_aborts_the_process_and_reopen_cleans",
        ])
        .args(["--test-threads", "1", "--nocapture"])
        .env("OVDIFF_BANK_TEST_CHILD", &path)
        .env(ovdiff_core::failpoint::ENV, "bank-after-prototypes")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    let bank = Bank::open(&path).unwrap();
    assert!(bank.class("crash").unwrap().is_none());
    assert_eq!(bank.leftovers_cleaned(), 1);
}

#[test]
fn stray_and_damaged_build_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    {
        let bank = open_with(&path, &[encoder('a', 8)]);
        bank.put_class(&build("a", &[('a', 3, 8)], 1), false)
            .unwrap();
    }
    // An interrupted write leaves a temporary file: removed on open.
    let builds_dir = path.join(build_file::BUILDS_DIR);
    std::fs::write(builds_dir.join(".00000000000000ff.tmp-1"), b"half").unwrap();
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.leftovers_cleaned(), 1);
    let rec = bank.class("a").unwrap().unwrap();
    // A damaged build file is an error naming the file, not a panic.
    let file = build_file::path(&path, rec.build_id);
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let err = bank.thumbnail(&rec, 0).unwrap_err();
    assert!(matches!(err, BankError::CorruptBuildFile { .. }), "{err}");
    assert!(err.to_string().contains(".build"), "{err}");
    std::fs::remove_file(&file).unwrap();
    let err = bank.prototypes(&rec, &fp('a')).unwrap_err();
    assert!(matches!(err, BankError::Incomplete { .. }), "{err}");
}

#[test]
fn stray_short_keys_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    {
        let bank = Bank::open(&path).unwrap();
        bank.store.insert(TreeId::Support, b"abc", b"x").unwrap();
        bank.store
            .insert(TreeId::Support, &record::thumbnail_key(u64::MAX, 0), b"x")
            .unwrap();
        bank.store.flush().unwrap();
    }
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.leftovers_cleaned(), 2);
    assert_eq!(entries(&bank, TreeId::Support), 0);
}

#[test]
fn an_interrupted_build_file_write_is_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    {
        let bank = open_with(&path, &[encoder('a', 8)]);
        bank.put_class(&build("a", &[('a', 3, 8)], 1), false)
            .unwrap();
    }
    // A writer killed before its commit leaves its temporary file behind.
    let mut half = ovdiff_core::atomic::AtomicFile::create(&build_file::path(&path, 0xff)).unwrap();
    std::io::Write::write_all(&mut half, b"half a build").unwrap();
    let temp = half.temp_path().to_path_buf();
    std::mem::forget(half);
    let name = temp.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(".00000000000000ff.build.tmp-"), "{name}");
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.leftovers_cleaned(), 1);
    assert!(!temp.exists());
    assert_eq!(builds(&bank), 1);
    let rec = bank.class("a").unwrap().unwrap();
    assert_eq!(bank.prototypes(&rec, &fp('a')).unwrap().len(), 3);
}
