//! Careless paths and streams (issue #20, cases 5, 6, 7, 13, 14, 15, 16, 18): the real binary.

use std::path::Path;
use std::process::Stdio;

use crate::bank::{support_dir, Kit};
use crate::harness::text;

fn kit_with_red() -> Option<(Kit, std::path::PathBuf)> {
    let kit = Kit::new()?;
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 3);
    let out = kit.add("red", &red, &[]);
    assert!(out.status.success(), "{:?}", text(&out));
    Some((kit, red))
}

fn bank_arg(kit: &Kit) -> String {
    kit.bank().to_str().unwrap().to_string()
}

#[test]
fn blank_bank_names_are_refused() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 2);
    for blank in ["", "  "] {
        let out = kit.sb.run(&[
            "add",
            "red",
            "--images",
            red.to_str().unwrap(),
            "--bank",
            blank,
            "--encoder",
            "tiny-encoder",
        ]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("is blank"), "{err}");
        let out = kit.sb.run(&["list", "--bank", blank]);
        assert_eq!(out.status.code(), Some(2));
    }
    assert!(!kit.sb.home.path().join("banks/conf").exists());
}

#[test]
fn banks_inside_a_bank_are_refused() {
    let Some((kit, red)) = kit_with_red() else {
        return;
    };
    let inner = kit.bank().join("blobs");
    let out = crate::bank::add_tiny(&kit.sb, &inner, "red", &red, &[]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("inside the bank folder"), "{err}");
    assert!(!inner.join("conf").exists());
    let out = kit.sb.run(&["list", "--bank", &bank_arg(&kit)]);
    assert!(out.status.success(), "{:?}", text(&out));
}

#[test]
fn stray_files_are_named_with_what_to_do() {
    let Some((kit, _)) = kit_with_red() else {
        return;
    };
    std::fs::create_dir(kit.bank().join("ovdiff-out")).unwrap();
    let out = kit.sb.run(&["list", "--bank", &bank_arg(&kit)]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ovdiff-out"), "{err}");
    assert!(err.contains("move it out of the bank folder"), "{err}");
    std::fs::remove_dir(kit.bank().join("ovdiff-out")).unwrap();
    assert!(kit
        .sb
        .run(&["list", "--bank", &bank_arg(&kit)])
        .status
        .success());
}

fn run_with_stdout(kit: &Kit, args: &[&str], stdout: Stdio) -> std::process::Output {
    kit.sb
        .cmd()
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_full_stdout_is_exit_2_after_the_work_is_committed() {
    let Some((kit, red)) = kit_with_red() else {
        return;
    };
    let b = bank_arg(&kit);
    for args in [
        vec!["list", "--bank", &b],
        vec!["show", "red", "--bank", &b],
        vec!["show", "red", "--json", "--bank", &b],
        vec!["verify", "--bank", &b],
        vec!["models", "list"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = run_with_stdout(&kit, &args, Stdio::from(full));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("work was done and committed"),
            "{args:?}: {err}"
        );
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let args = [
        "add",
        "green",
        "--images",
        red.to_str().unwrap(),
        "--bank",
        &b,
        "--encoder",
        "tiny-encoder",
        "--parts",
        "4",
    ];
    let out = run_with_stdout(&kit, &args, Stdio::from(full));
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("committed"), "{err}");
    let out = kit.sb.run(&["show", "green", "--bank", &b]);
    assert!(
        out.status.success(),
        "the class was stored: {:?}",
        text(&out)
    );
}

#[test]
fn a_closed_stdout_is_success() {
    let Some((kit, _)) = kit_with_red() else {
        return;
    };
    let b = bank_arg(&kit);
    for args in [
        vec!["list", "--bank", &b],
        vec!["show", "red", "--bank", &b],
        vec!["verify", "--bank", &b],
        vec!["models", "list"],
    ] {
        let mut child = kit
            .sb
            .cmd()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn control_characters_are_escaped() {
    let Some(kit) = Kit::new() else { return };
    let evil = support_dir(kit.data.path(), "ev\x1b]0;x\x07il", [230, 40, 40], 2);
    let out = kit.add("red", &evil, &[]);
    assert!(out.status.success(), "{:?}", text(&out));
    let b = bank_arg(&kit);
    for args in [
        vec!["list", "--bank", &b],
        vec!["show", "red", "--bank", &b],
    ] {
        let out = kit.sb.run(&args);
        let (o, _) = text(&out);
        assert!(out.status.success());
        assert!(!o.contains('\x1b'), "{args:?}: {o:?}");
        assert!(o.contains("\\u{1b}"), "{args:?}: {o:?}");
    }
    let out = kit.sb.run(&["show", "no\x1b[2Jsuch", "--bank", &b]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(!err.contains('\x1b'), "{err:?}");
}

#[test]
fn commas_are_refused_and_tabs_name_spaced_classes() {
    let Some((kit, red)) = kit_with_red() else {
        return;
    };
    let out = kit.add("a,b", &red, &[]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("comma"), "{err}");
    let b = bank_arg(&kit);
    let out = kit.sb.run(&["rename", "red", "r,d", "--bank", &b]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("comma"), "{err}");

    let file = kit.data.path().join("classes.tsv");
    std::fs::write(&file, format!("dining table\t{}\n", red.display())).unwrap();
    let out = kit.sb.run(&[
        "add",
        "--classes-file",
        file.to_str().unwrap(),
        "--bank",
        &b,
        "--encoder",
        "tiny-encoder",
        "--parts",
        "4",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(kit
        .sb
        .run(&["show", "dining table", "--bank", &b])
        .status
        .success());
}

#[test]
fn huge_thread_counts_are_clamped_with_a_warning() {
    let Some((kit, _)) = kit_with_red() else {
        return;
    };
    let out = kit
        .sb
        .run(&["list", "--threads", "100000", "--bank", &bank_arg(&kit)]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--threads 100000 is more than"), "{err}");
}

#[test]
fn unusable_support_entries_are_counted_and_named() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 2);
    std::fs::write(red.join("README"), b"not an image").unwrap();
    std::os::unix::fs::symlink(Path::new("/no/such/image.png"), red.join("gone.png")).unwrap();
    let fifo = red.join("pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let out = kit.add("red", &red, &["--json"]);
    let (o, err) = text(&out);
    assert!(out.status.success(), "{err}");
    for name in ["README", "gone.png"] {
        assert!(err.contains(name), "{name}: {err}");
    }
    let report: serde_json::Value = serde_json::from_str(&o).unwrap();
    let skipped = report["images_skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), if made { 3 } else { 2 }, "{skipped:?}");
    if made {
        assert!(err.contains("pipe.png"), "{err}");
    }
}

#[test]
fn outputs_go_only_to_absent_paths_or_regular_files_outside_banks() {
    let Some((kit, red)) = kit_with_red() else {
        return;
    };
    let b = bank_arg(&kit);
    let good = kit.data.path().join("red.ovbank");
    let out = kit
        .sb
        .run(&["export", "-o", good.to_str().unwrap(), "--bank", &b]);
    assert!(out.status.success(), "{:?}", text(&out));
    let fifo = kit.data.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let db = kit.bank().join("db");
    let db_before = std::fs::read(&db).unwrap();
    let inside = kit.bank().join("x.ovbank");
    for target in [
        Path::new("/dev/null"),
        fifo.as_path(),
        db.as_path(),
        inside.as_path(),
        kit.data.path(),
    ] {
        let t = target.to_str().unwrap();
        for args in [
            vec!["export", "-o", t, "--bank", &b],
            vec![
                "merge",
                good.to_str().unwrap(),
                good.to_str().unwrap(),
                "-o",
                t,
            ],
            vec!["migrate", good.to_str().unwrap(), "-o", t],
        ] {
            let out = kit.sb.run(&args);
            let (_, err) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(t),
                "{args:?}: the message names the path: {err}"
            );
        }
    }
    assert!(Path::new("/dev/null")
        .metadata()
        .unwrap()
        .file_type()
        .is_char_device_like());
    assert_eq!(std::fs::read(&db).unwrap(), db_before, "the bank is intact");
    assert!(!inside.exists());
    // segment never writes into a bank folder, whatever --out says
    let img = kit.data.path().join("q.png");
    crate::bank::disc_image(96, 80, [230, 40, 40], 1)
        .save(&img)
        .unwrap();
    let _ = red;
    for out_dir in [kit.bank(), kit.bank().join("ovdiff-out")] {
        let out = kit.sb.run(&[
            "segment",
            img.to_str().unwrap(),
            "--classes",
            "red",
            "--bank",
            &b,
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
    }
    assert!(!kit.bank().join("ovdiff-out").exists());
    assert!(kit.sb.run(&["verify", "--bank", &b]).status.success());
}

/// `/dev/null` stays a character device.
trait CharDeviceLike {
    fn is_char_device_like(&self) -> bool;
}

impl CharDeviceLike for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}
