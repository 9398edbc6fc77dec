//! Careless paths and streams (issue #20, cases 1, 5, 6, 7, 10, 12, 13, 14, 15, 16, 17, 18): the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bank::{disc_image, support_dir, Kit};
use crate::harness::{copy_dir, skip, text};
use crate::reliability::Tmpfs;

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
    let b = bank_arg(&kit);
    let out = kit.sb.run(&[
        "rename",
        "red",
        "crimson",
        "--threads",
        "100000",
        "--bank",
        &b,
    ]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--threads 100000 is more than"), "{err}");
    // a command that runs no model and builds no index takes no --threads
    let out = kit.sb.run(&["list", "--threads", "2", "--bank", &b]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--threads"), "{err}");
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

/// Case 10: inputs whose files would share a name (`x.png` and
/// `x.overlay.png`, `z.png` and `z.jpg`, `y.png` in two folders) each get
/// their own, and an input without a clash keeps its plain name.
#[test]
fn segment_never_writes_one_inputs_files_over_anothers() {
    let Some((kit, _)) = kit_with_red() else {
        return;
    };
    let d = kit.data.path();
    // (input, its size, the NAME its files get)
    let inputs = [
        ("in/w.png", 60, 40, "w"),
        ("in/x.overlay.png", 72, 56, "x.overlay.png"),
        ("in/x.png", 64, 48, "x.png"),
        ("in/z.jpg", 104, 80, "z.jpg"),
        ("in/z.png", 96, 72, "z.png"),
        ("a/y.png", 80, 60, "y-1"),
        ("b/y.png", 88, 64, "y-2"),
    ];
    for (rel, w, h, _) in inputs {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        disc_image(w, h, [230, 40, 40], 1).save(&p).unwrap();
    }
    let out_dir = d.join("out");
    let out = kit.sb.run(&[
        "segment",
        d.join("in").to_str().unwrap(),
        d.join("a/y.png").to_str().unwrap(),
        d.join("b/y.png").to_str().unwrap(),
        "--classes",
        "red",
        "--bank",
        &bank_arg(&kit),
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), inputs.len());
    for (rel, w, h, name) in inputs {
        let report = out_dir.join(format!("{name}.json"));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect(name)).unwrap();
        assert_eq!(json["image"], d.join(rel).to_str().unwrap(), "{name}");
        assert_eq!(
            (json["width"].as_u64(), json["height"].as_u64()),
            (Some(u64::from(w)), Some(u64::from(h)))
        );
        for (key, file) in [
            ("labels", format!("{name}.png")),
            ("overlay", format!("{name}.overlay.png")),
        ] {
            let path = out_dir.join(&file);
            assert_eq!(json[key], path.to_str().unwrap(), "{name}");
            let dims = image::image_dimensions(&path).unwrap();
            assert_eq!(dims.0, w, "{file} is {rel}'s");
        }
    }
    let written = std::fs::read_dir(&out_dir).unwrap().count();
    // three per image, and the run's labels.json and labels.txt
    assert_eq!(written, 3 * inputs.len() + 2, "no file was written twice");
    assert!(out_dir.join("labels.json").is_file() && out_dir.join("labels.txt").is_file());
}

/// A tiny VOC-layout set of one image, for `eval` on a bank.
fn tiny_voc(root: &Path) -> (PathBuf, PathBuf) {
    let voc = root.join("voc");
    for sub in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(voc.join(sub)).unwrap();
    }
    disc_image(96, 80, [230, 40, 40], 1)
        .save(voc.join("JPEGImages/q.jpg"))
        .unwrap();
    ovdiff_segment::render::write_label_png(
        &voc.join("SegmentationClass/q.png"),
        96,
        80,
        &vec![0u16; 96 * 80],
        ovdiff_segment::render::LabelDepth::Palette8,
    )
    .unwrap();
    std::fs::write(voc.join("ImageSets/Segmentation/val.txt"), "q\n").unwrap();
    let classes = root.join("voc-classes.txt");
    std::fs::write(&classes, "background\nred\n").unwrap();
    (voc, classes)
}

/// The read commands of case 12 on `bank`, each of which must work: their
/// inputs are made in `d`, their outputs go to `out`.
fn read_commands(d: &Path, out: &Path, bank: &str) -> Vec<Vec<String>> {
    let (voc, classes) = tiny_voc(d);
    let img = d.join("q.png");
    disc_image(96, 80, [230, 40, 40], 1).save(&img).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["list", "--bank", bank]),
        v(&["list", "--json", "--bank", bank]),
        v(&["show", "red", "--bank", bank]),
        v(&["verify", "--bank", bank]),
        v(&["export", "-o", &s(&out.join("read.ovbank")), "--bank", bank]),
        v(&[
            "segment",
            &s(&img),
            "--classes",
            "red",
            "--bank",
            bank,
            "--out",
            &s(&out.join("seg")),
        ]),
        v(&[
            "eval",
            &s(&voc),
            "--classes-file",
            &s(&classes),
            "--bank",
            bank,
            "--json",
        ]),
    ]
}

/// The write commands of case 12 on `bank`, each of which must be refused.
fn write_commands(bank: &str, red: &Path, file: &Path) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&[
            "add",
            "green",
            "--images",
            red.to_str().unwrap(),
            "--bank",
            bank,
            "--encoder",
            "tiny-encoder",
            "--parts",
            "4",
        ]),
        v(&["remove", "red", "--bank", bank]),
        v(&["rename", "red", "crimson", "--bank", bank]),
        v(&["import", file.to_str().unwrap(), "--into", bank]),
        v(&["migrate", "--bank", bank]),
    ]
}

fn refused_as_read_only(args: &[String], out: &Output, why: &str, bank: &str) {
    let (_, err) = text(out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains("is read-only here"), "{args:?}: {err}");
    assert!(err.contains(why), "{args:?}: {err}");
    assert!(err.contains(bank), "{args:?}: {err}");
    assert!(err.contains("cp -r"), "{args:?}: says what to do: {err}");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Case 12: a bank on a read-only mount is listed, shown, queried,
/// evaluated, exported and verified; every write says it is read-only and
/// what to do. The private copies it is read through are gone afterwards.
#[test]
fn banks_on_a_read_only_mount_are_read_and_writes_say_why() {
    let Some((kit, red)) = kit_with_red() else {
        return;
    };
    let d = kit.data.path();
    let mnt = d.join("ro");
    let tmpfs = match Tmpfs::mount(&mnt, "16m") {
        Ok(t) => t,
        Err(why) => return skip(&format!("mounting a tmpfs is not permitted here ({why})")),
    };
    let bank = mnt.join("bank");
    copy_dir(&kit.bank(), &bank);
    let file = d.join("red.ovbank");
    let out = kit.sb.run(&[
        "export",
        "-o",
        file.to_str().unwrap(),
        "--bank",
        &bank_arg(&kit),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let b = bank.to_str().unwrap().to_string();
    let verify = |kit: &Kit| text(&kit.sb.run(&["verify", "--bank", &b])).0;
    let before = verify(&kit);
    if let Err(why) = tmpfs.remount_read_only() {
        return skip(&format!("remounting a tmpfs read-only failed ({why})"));
    }
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let run = |args: &[String]| {
        kit.sb
            .cmd()
            .args(args)
            .env("TMPDIR", &tmp)
            .output()
            .unwrap()
    };
    for args in read_commands(d, d, &b) {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {:?}", text(&out));
    }
    let out = run(&["verify".into(), "--bank".into(), b.clone()]);
    assert!(text(&out).0.contains("read-only here"), "{:?}", text(&out));
    for args in write_commands(&b, &red, &file) {
        refused_as_read_only(&args, &run(&args), "read-only file system", &b);
    }
    assert_eq!(copies_left(&tmp), Vec::<String>::new());
    let after = verify(&kit);
    assert_eq!(
        after.lines().skip(1).collect::<Vec<_>>(),
        before.lines().skip(1).collect::<Vec<_>>()
    );
    assert!(bank.join("db").is_file());
}

/// The private copies of read-only banks in the temporary folder `tmp`.
fn copies_left(tmp: &Path) -> Vec<String> {
    entries(tmp)
        .into_iter()
        .filter(|e| e.starts_with("ovdiff-bank-read-"))
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Case 12: a bank of another user (here: root's, read by `nobody`; when
/// the tests do not run as root, the user's own bank made read-only with
/// chmod) is read; writes say this user may not write it.
#[test]
fn banks_of_another_user_are_read_and_writes_say_why() {
    let Some((kit, red)) = kit_with_red() else {
        return;
    };
    let d = kit.data.path();
    let file = d.join("red.ovbank");
    let b = bank_arg(&kit);
    let out = kit
        .sb
        .run(&["export", "-o", file.to_str().unwrap(), "--bank", &b]);
    assert!(out.status.success(), "{:?}", text(&out));
    // outputs and private copies go here (writable by the other user)
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let reads = read_commands(d, &tmp, &b);
    let root = is_root();
    let home = if root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            return skip("setpriv (util-linux) is not installed");
        }
        // nobody may enter root's folders and read its files, not write them
        chmod(d, 0o755);
        chmod(&tmp, 0o1777);
        nobodys_home(&tmp.join("home"))
    } else {
        set_tree_mode(&kit.bank(), 0o555, 0o444);
        kit.sb.home.path().to_path_buf()
    };
    let cmd = |args: &[String]| -> Output {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_ovdiff-bank"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_ovdiff-bank"))
        };
        c.args(args)
            .env("OVDIFF_HOME", &home)
            .env("TMPDIR", &tmp)
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("OVDIFF_FAILPOINT")
            .output()
            .unwrap()
    };
    for args in &reads {
        let out = cmd(args);
        assert!(out.status.success(), "{args:?}: {:?}", text(&out));
    }
    for args in write_commands(&b, &red, &file) {
        refused_as_read_only(&args, &cmd(&args), "may not write", &b);
    }
    assert_eq!(copies_left(&tmp), Vec::<String>::new());
    if !root {
        set_tree_mode(&kit.bank(), 0o755, 0o644);
    }
    assert!(kit.sb.run(&["verify", "--bank", &b]).status.success());
}

/// A home for `nobody`: its own copy of ONNX Runtime (root's home is
/// closed to it) and the tiny encoder.
fn nobodys_home(home: &Path) -> PathBuf {
    let lib = home.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(home.join("models")).unwrap();
    let installed = crate::harness::installed_home().lib_dir();
    for e in std::fs::read_dir(&installed).unwrap().flatten() {
        let to = lib.join(e.file_name());
        match std::fs::read_link(e.path()) {
            Ok(target) => std::os::unix::fs::symlink(target, to).unwrap(),
            Err(_) => drop(std::fs::copy(e.path(), to).unwrap()),
        }
    }
    std::os::unix::fs::symlink(
        crate::harness::fixture("models/tiny-encoder"),
        home.join("models/tiny-encoder"),
    )
    .unwrap();
    set_tree_mode(home, 0o777, 0o755);
    home.to_path_buf()
}

/// Sets the modes of a tree (symbolic links and what they point at are left alone).
fn set_tree_mode(dir: &Path, dirs: u32, files: u32) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            set_tree_mode(&e.path(), dirs, files);
        } else if t.is_file() {
            chmod(&e.path(), files);
        }
    }
    chmod(dir, dirs);
}

/// Names of temporary files of atomic writes in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

/// A PID no process has (one that just ended).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Case 17: SIGINT or SIGTERM while `export`, `merge` or `migrate` writes
/// a `.ovbank` removes its temporary file, ends the process by that signal
/// (a shell reports 130 or 143) and leaves the
/// target as it was; temporary files that dead writers left are removed by
/// the next write into the folder, and a live writer's are kept.
#[test]
fn signals_mid_write_leave_no_temporary_file_and_stale_ones_are_swept() {
    let Some((kit, _)) = kit_with_red() else {
        return;
    };
    let d = kit.data.path();
    let b = bank_arg(&kit);
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("t.ovbank");
    let t = target.to_str().unwrap().to_string();
    let out = kit.sb.run(&["export", "-o", &t, "--bank", &b]);
    assert!(out.status.success(), "{:?}", text(&out));
    let before = std::fs::read(&target).unwrap();
    let merged = out_dir.join("m.ovbank");
    let m = merged.to_str().unwrap().to_string();
    let cases: [(&str, i32, Vec<&str>); 4] = [
        ("INT", 130, vec!["export", "-o", &t, "--bank", &b]),
        ("TERM", 143, vec!["export", "-o", &t, "--bank", &b]),
        ("INT", 130, vec!["merge", &t, &t, "-o", &m]),
        ("TERM", 143, vec!["migrate", &t, "-o", &m]),
    ];
    for (sig, code, args) in cases {
        let mut child = kit.sb.cmd();
        child
            .args(&args)
            .env("OVDIFF_FAILPOINT_PAUSE_MS", "8000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A test run in the background (`cmd &`, nohup) inherits SIGINT
        // ignored, and the tool keeps an ignored signal ignored: give the
        // child the default dispositions, as a terminal would.
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            child.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = child.spawn().unwrap();
        let started = Instant::now();
        while temporaries(&out_dir).is_empty() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(temporaries(&out_dir).len(), 1, "{args:?}: mid-write");
        let killed = Command::new("kill")
            .args(["-s", sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        let (_, err) = text(&out);
        // ended by the signal, as without the clean-up: a shell says 130 or 143
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal().map(|s| 128 + s),
            Some(code),
            "{sig} {args:?}: {:?} {err}",
            out.status
        );
        assert!(err.contains("removed the unfinished"), "{err}");
        assert!(
            temporaries(&out_dir).is_empty(),
            "{sig} {args:?}: {:?}",
            temporaries(&out_dir)
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "it did not run on"
        );
    }
    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "the target is intact"
    );
    assert!(!merged.exists());

    // A writer killed outright (here: aborted mid-write) leaves its file;
    // so did two other dead writers; a live writer's file is kept, and so
    // is a name that only looks like one.
    let out = kit
        .sb
        .cmd()
        .args([
            "export",
            "-o",
            &out_dir.join("k.ovbank").to_string_lossy(),
            "--bank",
            &b,
        ])
        .env("OVDIFF_FAILPOINT", "ovbank-after-class")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let crashed = temporaries(&out_dir);
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    let dead = dead_pid();
    let stale = [
        format!(".t.ovbank.tmp-{dead}-0"),
        format!(".notes.txt.tmp-{dead}-7"),
    ];
    let kept = [
        format!(".t.ovbank.tmp-{}-0", std::process::id()),
        format!(".t.ovbank.tmp-{dead}-0.bak"),
    ];
    for n in stale.iter().chain(&kept) {
        std::fs::write(out_dir.join(n), b"half").unwrap();
    }
    let out = kit.sb.run(&["export", "-o", &t, "--bank", &b]);
    assert!(out.status.success(), "{:?}", text(&out));
    for n in stale.iter().chain(&crashed) {
        assert!(!out_dir.join(n).exists(), "{n} was swept");
    }
    for n in &kept {
        assert!(out_dir.join(n).exists(), "{n} was kept");
    }
}

/// Case 1 for `add --error-report`: the report is checked like `export -o`
/// before any class is built.
#[test]
fn the_error_report_goes_only_where_outputs_may() {
    let Some((kit, red)) = kit_with_red() else {
        return;
    };
    let d = kit.data.path();
    let b = bank_arg(&kit);
    let classes = d.join("classes.tsv");
    std::fs::write(
        &classes,
        format!(
            "green\t{}\nmissing\t{}\n",
            red.display(),
            d.join("none").display()
        ),
    )
    .unwrap();
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let inside = kit.bank().join("errors.json");
    let add = |report: &Path| {
        kit.sb.run(&[
            "add",
            "--classes-file",
            classes.to_str().unwrap(),
            "--bank",
            &b,
            "--encoder",
            "tiny-encoder",
            "--parts",
            "4",
            "--error-report",
            report.to_str().unwrap(),
        ])
    };
    for target in [Path::new("/dev/null"), fifo.as_path(), inside.as_path(), d] {
        let out = add(target);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{target:?}: {err}");
        assert!(err.contains(target.to_str().unwrap()), "{err}");
    }
    assert!(!inside.exists());
    assert!(
        !kit.sb
            .run(&["show", "green", "--bank", &b])
            .status
            .success(),
        "refused before any class was built"
    );
    assert!(Path::new("/dev/null")
        .metadata()
        .unwrap()
        .file_type()
        .is_char_device_like());
    let report = d.join("errors.json");
    let out = add(&report);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["failed"][0]["class"], "missing");
    assert!(kit
        .sb
        .run(&["show", "green", "--bank", &b])
        .status
        .success());
}
