//! Format compatibility: every committed golden bank (`tests/fixtures/banks/vN`) still opens and reads back exactly.
//!
//! `golden_v1_bank_opens_and_reads_back` creates the v1 fixture when it is
//! missing (tantivy's `create_format` pattern) from the tiny fixture encoder
//! and synthetic support images; commit what it writes. Once the format moves
//! past v1 the fixture is frozen: it must never be regenerated.

use std::path::{Path, PathBuf};

use ovdiff_bank::bank::{Bank, BANK_FORMAT_VERSION};

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

fn create_v1(dir: &Path) -> bool {
    assert_eq!(
        BANK_FORMAT_VERSION, 1,
        "the v1 fixture is frozen; never regenerate it"
    );
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
fn golden_v1_bank_opens_and_reads_back() {
    let dir: PathBuf = fixture("banks/v1");
    if !dir.join("expected.json").exists() && !create_v1(&dir) {
        return;
    }
    // Opening may write (sled recovery, leftover cleanup): work on a copy.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir.join("bank"), tmp.path());
    let bank = Bank::open(tmp.path()).unwrap();
    assert_eq!(bank.format_version(), 1);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    assert_eq!(summary(&bank), expected);
    let apple = bank.class("apple").unwrap().unwrap();
    assert!(bank
        .thumbnail(&apple, 0)
        .unwrap()
        .is_some_and(|t| t.len() > 100));
}
