//! `--shard I/N` on `add --classes-file` and `segment`, and `segment --skip-existing` (issue #19), through the real binary.

use std::collections::BTreeSet;
use std::path::Path;

use crate::bank::{disc_image, support_dir};
use crate::harness::{fixture, text, Sandbox};
use crate::segment::Kit;

fn sandbox() -> Option<Sandbox> {
    let sb = Sandbox::with_runtime()?;
    sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
    Some(sb)
}

fn ok(out: std::process::Output) -> (String, String) {
    let t = text(&out);
    assert!(out.status.success(), "{t:?}");
    t
}

/// The classes of a bank (`list --json`).
fn classes_of(sb: &Sandbox, bank: &Path) -> BTreeSet<String> {
    let (stdout, _) = ok(sb.run(&["list", "--bank", bank.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// `add --classes-file FILE --shard I/N` into `bank`.
fn add_shard(sb: &Sandbox, file: &Path, shard: &str, bank: &Path) -> (String, String) {
    ok(sb.run(&[
        "add",
        "--classes-file",
        file.to_str().unwrap(),
        "--shard",
        shard,
        "--bank",
        bank.to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
        "--parts",
        "2",
    ]))
}

#[test]
fn add_shards_are_disjoint_make_the_whole_and_stay_put_when_lines_are_added() {
    let Some(sb) = sandbox() else { return };
    let data = tempfile::tempdir().unwrap();
    let line = |c: &str, k: u8| {
        let dir = support_dir(data.path(), c, [40 + 20 * k, 200 - 15 * k, 90], 2);
        format!("{c} {}\n", dir.display())
    };
    let first: Vec<String> = (0..6).map(|k| format!("k{k}")).collect();
    let file = data.path().join("classes.txt");
    let text_of = |names: &[String]| {
        names
            .iter()
            .enumerate()
            .map(|(k, c)| line(c, k as u8))
            .collect::<String>()
    };
    std::fs::write(&file, text_of(&first)).unwrap();
    let mut owner = std::collections::BTreeMap::new();
    for i in 0..3 {
        let bank = data.path().join(format!("a{i}"));
        let (_, stderr) = add_shard(&sb, &file, &format!("{i}/3"), &bank);
        assert!(stderr.contains(&format!("info: shard {i}/3: ")), "{stderr}");
        // an empty shard still makes its bank, so that it exports like the others
        for c in classes_of(&sb, &bank) {
            assert!(owner.insert(c, i).is_none(), "two shards built one class");
        }
    }
    assert_eq!(
        owner.keys().cloned().collect::<Vec<_>>(),
        first,
        "the shards hold every class"
    );

    // more lines, some before the old ones: no old class moves
    let mut more: Vec<String> = vec!["new-a".into(), "new-b".into()];
    more.extend(first.iter().cloned());
    more.extend(["new-c".to_string(), "new-d".to_string()]);
    std::fs::write(&file, text_of(&more)).unwrap();
    let mut all = BTreeSet::new();
    for i in 0..3 {
        let bank = data.path().join(format!("b{i}"));
        add_shard(&sb, &file, &format!("{i}/3"), &bank);
        for c in classes_of(&sb, &bank) {
            if let Some(&was) = owner.get(&c) {
                assert_eq!(was, i, "{c} moved from shard {was} to {i}");
            }
            assert!(all.insert(c));
        }
    }
    assert_eq!(all, more.iter().cloned().collect());
}

#[test]
fn bad_shard_values_are_refused_saying_what_to_write() {
    let sb = Sandbox::bare();
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("classes.txt");
    std::fs::write(&file, "cat\n").unwrap();
    let f = file.to_str().unwrap();
    for (shard, says) in [
        ("4/4", "index must be below 4"),
        ("0/0", "at least 1"),
        ("x", "write INDEX/COUNT"),
        ("1/two", "write INDEX/COUNT"),
    ] {
        for args in [
            vec!["add", "--classes-file", f, "--shard", shard],
            vec!["segment", f, "--all-classes", "--shard", shard],
        ] {
            let out = sb.run(&args);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
        }
    }
    let out = sb.run(&["add", "cat", "--images", f, "--shard", "0/2"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pass --classes-file FILE"), "{stderr}");
}

/// The files of a folder, relative, sorted.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel);
            }
        }
    }
    out
}

/// The `{"summary": …}` line of a `segment --json` run.
fn summary(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("{\"summary\""))
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    serde_json::from_str::<serde_json::Value>(line).unwrap()["summary"].clone()
}

#[test]
fn segment_shards_write_one_run_s_files_and_skip_existing_resumes() {
    let Some(kit) = Kit::new() else { return };
    let d = kit.data.path();
    let photos = d.join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    for k in 0..6u32 {
        let color = if k % 2 == 0 {
            [230, 40, 40]
        } else {
            [40, 40, 230]
        };
        disc_image(150 + 6 * k, 140, color, k)
            .save(photos.join(format!("p{k}.png")))
            .unwrap();
    }
    // the same name in a second folder: names are chosen over every input
    disc_image(160, 150, [230, 40, 40], 7)
        .save(photos.join("sub/p0.jpg"))
        .unwrap();
    let p = photos.to_str().unwrap();
    let sub = photos.join("sub");
    let sub = sub.to_str().unwrap();
    let (whole, out) = (d.join("whole"), d.join("out"));
    let seg = |out: &Path, extra: &[&str]| {
        let mut args = vec!["segment", p, sub, "--classes", "red,blue", "--out"];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        kit.run(&args)
    };
    ok(seg(&whole, &[]));
    let mut in_shards = 0;
    for i in 0..2 {
        let (stdout, _) = ok(seg(&out, &["--shard", &format!("{i}/2"), "--json"]));
        let s = summary(&stdout);
        assert_eq!(s["images"], 7);
        assert_eq!(s["shard"], format!("{i}/2"));
        assert_eq!(s["segmented"], s["in_shard"]);
        assert_eq!(s["skipped"], 0);
        in_shards += s["in_shard"].as_u64().unwrap();
    }
    assert_eq!(in_shards, 7, "every image in exactly one shard");
    assert_eq!(
        files(&out),
        files(&whole),
        "the shards wrote one run's files"
    );
    for f in files(&whole).iter().filter(|f| f.ends_with(".png")) {
        if !f.contains("overlay") {
            assert_eq!(
                std::fs::read(out.join(f)).unwrap(),
                std::fs::read(whole.join(f)).unwrap(),
                "{f}"
            );
        }
    }

    // a re-run does nothing; a removed file is written again
    let (stdout, _) = ok(seg(&out, &["--skip-existing", "--json"]));
    let s = summary(&stdout);
    assert_eq!(
        (s["segmented"].as_u64(), s["skipped"].as_u64()),
        (Some(0), Some(7))
    );
    std::fs::remove_file(out.join("p3.overlay.png")).unwrap();
    let (stdout, _) = ok(seg(&out, &["--skip-existing"]));
    assert!(
        stdout.contains("7 images: 1 segmented, 6 skipped (outputs complete), 0 failed"),
        "{stdout}"
    );
    assert!(out.join("p3.overlay.png").is_file());
    // other options or classes are not the same outputs
    let (stdout, _) = ok(seg(&out, &["--skip-existing", "--masks", "png", "--json"]));
    assert_eq!(summary(&stdout)["segmented"], 7);
    let out2 = kit.run(&[
        "segment",
        p,
        sub,
        "--classes",
        "red",
        "--out",
        out.to_str().unwrap(),
        "--skip-existing",
        "--json",
    ]);
    assert_eq!(summary(&ok(out2).0)["skipped"], 0);
}
