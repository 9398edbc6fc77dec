//! Prototype banks through the CLI: add/list/show/remove/rename, determinism, atomicity and bad input.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use ovdiff_core::prototype::{Level, Side};
use ovdiff_store::bank::Bank;

use crate::harness::{fixture, text, Sandbox};

/// A bright disc of `color` on a dark textured background: the tiny
/// encoder's saliency (brightness) marks the disc as foreground.
pub fn disc_image(w: u32, h: u32, color: [u8; 3], seed: u32) -> RgbImage {
    let (cx, cy, r) = (w as f32 / 2.0, h as f32 / 2.0, w.min(h) as f32 / 3.0);
    RgbImage::from_fn(w, h, |x, y| {
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        if d < r {
            Rgb(color)
        } else {
            let n = ((x * 7 + y * 13 + seed * 31) % 40) as u8;
            Rgb([10 + n, 20 + n / 2, 15])
        }
    })
}

/// A folder of `n` support images of one colour.
pub fn support_dir(root: &Path, name: &str, color: [u8; 3], n: u32) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        disc_image(120 + 14 * i, 112, color, i)
            .save(dir.join(format!("{name}-{i}.png")))
            .unwrap();
    }
    dir
}

/// `add CLASS --images DIR --bank BANK --encoder tiny-encoder --parts 4
/// EXTRA…` in `sb` (which has the tiny encoder linked).
pub fn add_tiny(
    sb: &Sandbox,
    bank: &Path,
    class: &str,
    images: &Path,
    extra: &[&str],
) -> std::process::Output {
    add_tiny_cmd(sb, bank, class, images, extra)
        .output()
        .unwrap()
}

/// The command [`add_tiny`] runs, for callers that set more on it (a
/// failpoint).
pub fn add_tiny_cmd(
    sb: &Sandbox,
    bank: &Path,
    class: &str,
    images: &Path,
    extra: &[&str],
) -> std::process::Command {
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
        "4",
    ];
    args.extend_from_slice(extra);
    let mut cmd = sb.cmd();
    cmd.args(&args);
    cmd
}

/// A sandbox with the tiny fixture encoder and a data folder whose bank is
/// `<data>/bank` (also used by the reliability tests).
pub struct Kit {
    pub sb: Sandbox,
    pub data: tempfile::TempDir,
}

impl Kit {
    pub fn new() -> Option<Kit> {
        let sb = Sandbox::with_runtime()?;
        sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
        Some(Kit {
            sb,
            data: tempfile::tempdir().unwrap(),
        })
    }

    pub fn bank(&self) -> PathBuf {
        self.data.path().join("bank")
    }

    /// `add CLASS --images DIR --bank <data>/bank --encoder tiny-encoder --parts 4 EXTRA…`
    pub fn add(&self, class: &str, images: &Path, extra: &[&str]) -> std::process::Output {
        add_tiny(&self.sb, &self.bank(), class, images, extra)
    }

    fn show_json(&self, class: &str) -> serde_json::Value {
        let out = self.sb.run(&[
            "show",
            class,
            "--json",
            "--bank",
            self.bank().to_str().unwrap(),
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        serde_json::from_str(&stdout).unwrap()
    }

    /// Every prototype vector of a class, for exact comparisons.
    fn vectors(&self, class: &str) -> Vec<Vec<f32>> {
        let bank = Bank::open(&self.bank()).unwrap();
        let rec = bank.class(class).unwrap().expect("class exists");
        let fp = rec.encoders[0].fingerprint.clone();
        bank.prototypes(&rec, &fp)
            .unwrap()
            .into_iter()
            .map(|p| p.vector)
            .collect()
    }
}

#[test]
fn add_list_show_rename_remove() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 3);
    let out = kit.add("apple", &red, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("3 images used, 0 skipped"), "{stdout}");

    let v = kit.show_json("apple");
    assert_eq!(v["images"], 3);
    let c = &v["per_encoder"][0]["counts"];
    assert_eq!(
        (c["class_fg"].as_u64(), c["class_bg"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (c["instance_fg"].as_u64(), c["instance_bg"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        (c["part_fg"].as_u64(), c["part_bg"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(v["support"].as_array().unwrap().len(), 3);
    assert!(v["support"][0]["thumbnail_bytes"].as_u64().unwrap() > 100);

    // every stored prototype is unit-norm (f16 storage: within 1e-2)
    for p in kit.vectors("apple") {
        let n = p.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-2, "norm {n}");
    }

    let bank = kit.bank();
    let bank = bank.to_str().unwrap();
    let out = kit.sb.run(&["list", "--bank", bank, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "apple");
    assert_eq!(v[0]["prototypes"], 2 + 6 + 8);
    assert_eq!(v[0]["encoders"][0], "tiny-encoder");

    let out = kit.sb.run(&["rename", "apple", "pomme", "--bank", bank]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = kit.sb.run(&["show", "apple", "--bank", bank]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("no class `apple`"), "{stderr}");
    let out = kit.sb.run(&["remove", "pomme", "--bank", bank]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = kit.sb.run(&["list", "--bank", bank]);
    assert!(text(&out).0.contains("no classes"), "{:?}", text(&out));
}

#[test]
fn stuff_classes_keep_foreground_only() {
    let Some(kit) = Kit::new() else { return };
    let green = support_dir(kit.data.path(), "green", [40, 230, 40], 2);
    let out = kit.add("grass", &green, &["--stuff"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let v = kit.show_json("grass");
    assert_eq!(v["stuff"], true);
    let c = &v["per_encoder"][0]["counts"];
    assert_eq!(c["class_bg"], 0);
    assert_eq!(c["instance_bg"], 0);
    assert_eq!(c["part_bg"], 0);
    assert_eq!(c["class_fg"], 1);
}

#[test]
fn same_inputs_give_identical_vectors() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 3);
    assert!(kit.add("a", &red, &[]).status.success());
    assert!(kit.add("b", &red, &[]).status.success());
    let (a, b) = (kit.vectors("a"), kit.vectors("b"));
    assert_eq!(a.len(), 16);
    assert_eq!(a, b);
    // and a different seed changes the parts but not the class means
    assert!(kit.add("c", &red, &["--seed", "7"]).status.success());
    let c = kit.vectors("c");
    assert_eq!(a[0], c[0]);
}

#[test]
fn existing_class_needs_replace_and_replace_is_atomic() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 2);
    let blue = support_dir(kit.data.path(), "blue", [40, 40, 230], 2);
    assert!(kit.add("thing", &red, &[]).status.success());
    let before = kit.vectors("thing");

    let out = kit.add("thing", &blue, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("already exists") && stderr.contains("--replace"),
        "{stderr}"
    );

    // A crash after the new prototypes are written but before the commit:
    // the old class survives, and the next open cleans the leftovers.
    let bank = kit.bank();
    let out = add_tiny_cmd(&kit.sb, &bank, "thing", &blue, &["--replace"])
        .env("OVDIFF_FAILPOINT", "bank-after-prototypes")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the failpoint should abort the process"
    );
    let opened = Bank::open(&bank).unwrap();
    assert!(
        opened.leftovers_cleaned() > 0,
        "leftovers of the aborted build are cleaned"
    );
    drop(opened);
    assert_eq!(kit.vectors("thing"), before, "the old class is intact");

    // A crash mid-add of a new class leaves no class at all.
    let out = add_tiny_cmd(&kit.sb, &bank, "other", &blue, &[])
        .env("OVDIFF_FAILPOINT", "bank-after-prototypes")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(Bank::open(&bank).unwrap().class("other").unwrap().is_none());

    // A real replace swaps in the new vectors.
    assert!(kit.add("thing", &blue, &["--replace"]).status.success());
    assert_ne!(kit.vectors("thing"), before);
}

#[test]
fn bad_images_are_skipped_and_counted() {
    let Some(kit) = Kit::new() else { return };
    let dir = support_dir(kit.data.path(), "mixed", [230, 40, 40], 2);
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    let good = std::fs::read(dir.join("mixed-0.png")).unwrap();
    std::fs::write(dir.join("truncated.png"), &good[..good.len() / 3]).unwrap();
    std::fs::write(dir.join("text.jpg"), b"not an image").unwrap();
    let out = kit.add("mixed", &dir, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2 images used, 3 skipped"), "{stdout}");
    for name in ["empty.png", "truncated.png", "text.jpg"] {
        assert!(
            stderr.contains("warning: skipping") && stderr.contains(name),
            "{name}: {stderr}"
        );
    }
    assert_eq!(kit.show_json("mixed")["images_skipped"], 3);
}

#[test]
fn no_usable_image_is_an_error_and_writes_nothing() {
    let Some(kit) = Kit::new() else { return };
    let dir = kit.data.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.png"), b"").unwrap();
    std::fs::write(dir.join("b.jpg"), b"junk").unwrap();
    let out = kit.add("ghost", &dir, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no usable support images"), "{stderr}");
    assert!(Bank::open(&kit.bank())
        .unwrap()
        .class("ghost")
        .unwrap()
        .is_none());

    let empty = kit.data.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (_, stderr) = text(&kit.add("ghost", &empty, &[]));
    assert!(stderr.contains("no PNG or JPEG images"), "{stderr}");
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    let Some(kit) = Kit::new() else { return };
    let dir = support_dir(kit.data.path(), "big", [230, 40, 40], 1);
    // a PNG header claiming 100000×100000 pixels, with no pixel data
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    for chunk in [ihdr, b"IDAT".to_vec(), b"IEND".to_vec()] {
        png.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    std::fs::write(dir.join("bomb.png"), png).unwrap();
    let out = kit.add("big", &dir, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("bomb.png") && stderr.contains("over the limit"),
        "{stderr}"
    );
}

#[test]
fn bad_class_names_and_missing_folders_are_clear_errors() {
    let Some(kit) = Kit::new() else { return };
    let (_, stderr) = text(&kit.add(" padded", kit.data.path(), &[]));
    assert!(stderr.contains("not valid"), "{stderr}");
    let (_, stderr) = text(&kit.add("x", &kit.data.path().join("nope"), &[]));
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// CRC-32 (PNG chunks).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn levels_and_sides_are_in_builder_order() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 2);
    assert!(kit.add("r", &red, &[]).status.success());
    let bank = Bank::open(&kit.bank()).unwrap();
    let rec = bank.class("r").unwrap().unwrap();
    let protos = bank.prototypes(&rec, &rec.encoders[0].fingerprint).unwrap();
    assert_eq!(
        (protos[0].level, protos[0].side),
        (Level::Class, Side::Foreground)
    );
    assert_eq!(
        (protos[1].level, protos[1].side),
        (Level::Class, Side::Background)
    );
    assert!(protos
        .iter()
        .filter(|p| p.level == Level::Instance)
        .all(|p| p.provenance.image < 2));
}

#[test]
fn a_second_writer_fails_fast_with_a_clear_message() {
    let sb = Sandbox::bare();
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("bank");
    let held = Bank::open(&path).unwrap();
    let started = std::time::Instant::now();
    let out = sb.run(&["list", "--bank", path.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert!(started.elapsed().as_secs() < 10, "it must not hang");
    drop(held);
}

#[test]
fn classes_file_builds_many_and_reports_failures() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 2);
    let green = support_dir(kit.data.path(), "green", [40, 230, 40], 2);
    let list = kit.data.path().join("classes.txt");
    let missing = kit.data.path().join("nope");
    std::fs::write(
        &list,
        format!(
            "# name folder [stuff]\nred {}\ngreen {} stuff\nghost {}\n",
            red.display(),
            green.display(),
            missing.display()
        ),
    )
    .unwrap();
    let report = kit.data.path().join("errors.json");
    let bank = kit.bank();
    let out = kit.sb.run(&[
        "add",
        "--classes-file",
        list.to_str().unwrap(),
        "--error-report",
        report.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
        "--parts",
        "4",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("2 of 3 classes added"), "{stdout}");
    assert!(stderr.contains("class `ghost`"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(v["failed"][0]["class"], "ghost");
    assert_eq!(kit.show_json("green")["stuff"], true);
    assert_eq!(kit.show_json("red")["stuff"], false);
}
