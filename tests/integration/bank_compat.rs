//! Format compatibility: every committed golden bank (`tests/fixtures/banks/vN`) still opens and reads back exactly.
//!
//! `golden_banks_of_every_version_open_migrate_and_read_back` creates the
//! fixture of the *current* format when it is missing (tantivy's
//! `create_format` pattern) from the tiny fixture encoder and synthetic
//! support images; commit what it writes. Fixtures of older formats are
//! frozen: they are never regenerated. Every fixture must open, read back
//! exactly, and (if older) migrate step by step to the current format.

use std::path::{Path, PathBuf};

use ovdiff_store::bank::{Bank, BANK_FORMAT_OLDEST_SUPPORTED, BANK_FORMAT_VERSION};

use crate::bank::support_dir;
use crate::harness::{copy_dir, fixture, text, Sandbox};

/// What the test expects to read back: per class, its record summary and
/// the first three components of every prototype (f16-exact).
fn summary(bank: &Bank) -> serde_json::Value {
    let mut classes = Vec::new();
    for rec in bank.classes().unwrap() {
        let fp = rec.encoders[0].fingerprint.clone();
        let protos = bank.prototypes(&rec, &fp).unwrap();
        classes.push(serde_json::json!({
            "name": rec.name,
            "stuff": rec.stuff,
            "images": rec.images_used,
            "encoder": fp,
            "split": rec.split_method,
            "support": rec.support.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            "prototypes": protos.iter().map(|p| {
                serde_json::json!({
                    "level": format!("{:?}", p.level),
                    "side": format!("{:?}", p.side),
                    "image": p.provenance.image,
                    "head": p.vector[..3].to_vec(),
                })
            }).collect::<Vec<_>>(),
        }));
    }
    serde_json::json!({ "classes": classes })
}

/// Writes the fixture of the current format version into `dir`.
fn create_current(dir: &Path) -> bool {
    let Some(sb) = Sandbox::with_runtime() else {
        return false;
    };
    sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
    let data = tempfile::tempdir().unwrap();
    let bank = dir.join("bank");
    for (class, color, stuff) in [
        ("apple", [230, 40, 40], false),
        ("grass", [40, 230, 40], true),
    ] {
        let images = support_dir(data.path(), class, color, 2);
        let mut args = vec![
            "add",
            class,
            "--images",
            images.to_str().unwrap(),
            "--bank",
            bank.to_str().unwrap(),
            "--encoder",
            "tiny-encoder",
            "--parts",
            "3",
        ];
        if stuff {
            args.push("--stuff");
        }
        let out = sb.run(&args);
        assert!(out.status.success(), "{:?}", text(&out));
    }
    let opened = Bank::open(&bank).unwrap();
    let expected = summary(&opened);
    drop(opened);
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap(),
    )
    .unwrap();
    eprintln!("created {}: commit it", dir.display());
    true
}

#[test]
fn golden_banks_of_every_version_open_migrate_and_read_back() {
    for version in BANK_FORMAT_OLDEST_SUPPORTED..=BANK_FORMAT_VERSION {
        let dir: PathBuf = fixture(&format!("banks/v{version}"));
        if !dir.join("expected.json").exists() {
            assert_eq!(
                version, BANK_FORMAT_VERSION,
                "the v{version} fixture is missing; fixtures of old formats are frozen and cannot be regenerated"
            );
            if !create_current(&dir) {
                return;
            }
        }
        check_fixture(&dir, version);
    }
}

fn check_fixture(dir: &Path, version: u32) {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    // Opening may write (sled recovery, leftover cleanup): work on a copy.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir.join("bank"), tmp.path());
    let bank = Bank::open(tmp.path()).unwrap();
    assert_eq!(bank.format_version(), version);
    assert_eq!(summary(&bank), expected, "v{version}");
    let apple = bank.class("apple").unwrap().unwrap();
    assert!(bank
        .thumbnail(&apple, 0)
        .unwrap()
        .is_some_and(|t| t.len() > 100));
    assert_eq!(apple.stats.is_some(), version >= 2, "v{version}");
    drop(bank);
    if version == BANK_FORMAT_VERSION {
        return;
    }

    // An old bank is read-only until migrated; the error names the command.
    let sb = Sandbox::bare();
    let bank_arg = tmp.path().to_str().unwrap();
    let out = sb.run(&["remove", "apple", "--bank", bank_arg]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("format version {version}"))
            && stderr.contains("ovdiff-bank migrate --bank"),
        "{stderr}"
    );
    // Reading works without it.
    let out = sb.run(&["list", "--bank", bank_arg]);
    assert!(out.status.success(), "{:?}", text(&out));

    let out = sb.run(&["migrate", "--bank", bank_arg, "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["from"], version);
    assert_eq!(report["to"], BANK_FORMAT_VERSION);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len() as u32, BANK_FORMAT_VERSION - version);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step["from"], version + i as u32);
        assert_eq!(step["to"], version + i as u32 + 1);
    }
    // A second run has nothing to do.
    let out = sb.run(&["migrate", "--bank", bank_arg]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("nothing to do"), "{stdout}");

    let bank = Bank::open(tmp.path()).unwrap();
    assert_eq!(bank.format_version(), BANK_FORMAT_VERSION);
    assert_eq!(summary(&bank), expected, "v{version} after migration");
    drop(bank);
    let out = sb.run(&["show", "apple", "--bank", bank_arg, "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let show: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(show["build"].is_null(), "{show}");
    // And it is writable again.
    let out = sb.run(&["remove", "grass", "--bank", bank_arg]);
    assert!(out.status.success(), "{:?}", text(&out));
}

#[test]
fn golden_ovbank_files_migrate_with_the_cli() {
    use ovdiff_store::ovbank::{OvBankFile, OVBANK_FORMAT_VERSION, OVBANK_OLDEST_SUPPORTED};
    let sb = Sandbox::bare();
    let tmp = tempfile::tempdir().unwrap();
    for version in OVBANK_OLDEST_SUPPORTED..=OVBANK_FORMAT_VERSION {
        let golden = fixture(&format!("ovbank/v{version}/small.ovbank"));
        let out = tmp.path().join(format!("from-v{version}.ovbank"));
        let run = sb.run(&[
            "migrate",
            golden.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]);
        let (stdout, stderr) = text(&run);
        assert!(run.status.success(), "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["from"], version);
        assert_eq!(report["to"], OVBANK_FORMAT_VERSION);
        let original = OvBankFile::open(&golden).unwrap();
        let migrated = OvBankFile::open(&out).unwrap();
        migrated.verify().unwrap();
        assert_eq!(migrated.header().format_version, OVBANK_FORMAT_VERSION);
        assert_eq!(migrated.classes(), original.classes());
        for c in original.classes() {
            for e in &c.encoders {
                assert_eq!(
                    migrated.prototypes(&c.name, &e.fingerprint).unwrap(),
                    original.prototypes(&c.name, &e.fingerprint).unwrap()
                );
            }
        }
        // In place: a current file has nothing to do and is left untouched.
        let before = std::fs::read(&out).unwrap();
        let run = sb.run(&["migrate", out.to_str().unwrap()]);
        let (stdout, _) = text(&run);
        assert!(stdout.contains("nothing to do"), "{stdout}");
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }
}
