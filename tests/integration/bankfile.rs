//! `.ovbank` files through the CLI: export, inspect, verify, import, merge, segment in place, shard-and-merge.

use std::path::Path;

use ovdiff_store::ovbank::OvBankFile;

use crate::bank::support_dir;
use crate::harness::{fixture, text, Sandbox};

const COLORS: [(&str, [u8; 3]); 3] = [
    ("red", [230, 40, 40]),
    ("green", [40, 230, 40]),
    ("blue", [40, 40, 230]),
];

fn sandbox() -> Option<Sandbox> {
    let sb = Sandbox::with_runtime()?;
    sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
    Some(sb)
}

fn add_args<'a>(class: &'a str, images: &'a str, bank: &'a str) -> Vec<&'a str> {
    vec![
        "add",
        class,
        "--images",
        images,
        "--bank",
        bank,
        "--encoder",
        "tiny-encoder",
        "--parts",
        "4",
    ]
}

fn ok(out: std::process::Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    stdout
}

/// Class name → every prototype vector (as f32 bits), for exact comparison.
fn contents(path: &Path) -> Vec<(String, Vec<Vec<u32>>)> {
    let f = OvBankFile::open(path).unwrap();
    f.classes()
        .iter()
        .map(|c| {
            let fp = &c.encoders[0].fingerprint;
            let protos = f.prototypes(&c.name, fp).unwrap();
            (
                c.name.clone(),
                protos
                    .iter()
                    .map(|p| p.vector.iter().map(|v| v.to_bits()).collect())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn export_inspect_verify_import_and_segment_in_place() {
    let Some(sb) = sandbox() else { return };
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("bank");
    let bank = bank.to_str().unwrap();
    for (class, color) in COLORS {
        let dir = support_dir(data.path(), class, color, 2);
        ok(sb.run(&add_args(class, dir.to_str().unwrap(), bank)));
    }
    let file = data.path().join("colors.ovbank");
    let file_s = file.to_str().unwrap();
    ok(sb.run(&["export", "-o", file_s, "--bank", bank]));
    let out = ok(sb.run(&["inspect", file_s, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["format_version"],
        ovdiff_store::ovbank::OVBANK_FORMAT_VERSION
    );
    assert_eq!(v["classes"].as_array().unwrap().len(), 3);
    assert!(ok(sb.run(&["verify", file_s])).contains("every checksum matches"));

    // import into a fresh bank, then conflicts
    let other = data.path().join("other");
    let other = other.to_str().unwrap();
    ok(sb.run(&["import", file_s, "--into", other]));
    let out = sb.run(&["import", file_s, "--into", other]);
    assert_eq!(out.status.code(), Some(1), "all skipped: nothing done");
    let out = ok(sb.run(&[
        "import",
        file_s,
        "--into",
        other,
        "--on-conflict",
        "rename",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["renamed"].as_array().unwrap().len(), 3);

    // segmenting from the file in place gives the same labels as from the bank
    let img = data.path().join("q.png");
    crate::bank::disc_image(168, 140, [230, 40, 40], 5)
        .save(&img)
        .unwrap();
    let (a, b) = (data.path().join("a"), data.path().join("b"));
    ok(sb.run(&[
        "segment",
        img.to_str().unwrap(),
        "--classes",
        "red,green,blue",
        "--bank",
        bank,
        "--out",
        a.to_str().unwrap(),
    ]));
    ok(sb.run(&[
        "segment",
        img.to_str().unwrap(),
        "--classes",
        "red,green,blue",
        "--bank",
        file_s,
        "--out",
        b.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(a.join("q.png")).unwrap(),
        std::fs::read(b.join("q.png")).unwrap()
    );
}

#[test]
fn a_damaged_file_fails_verify_naming_the_section() {
    let Some(sb) = sandbox() else { return };
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("bank");
    let dir = support_dir(data.path(), "red", [230, 40, 40], 2);
    ok(sb.run(&add_args(
        "red",
        dir.to_str().unwrap(),
        bank.to_str().unwrap(),
    )));
    let file = data.path().join("f.ovbank");
    ok(sb.run(&[
        "export",
        "-o",
        file.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
    ]));
    let out = ok(sb.run(&["inspect", file.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let protos = v["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "prototypes")
        .unwrap();
    let middle = protos["offset"].as_u64().unwrap() + protos["length"].as_u64().unwrap() / 2;
    let mut bytes = std::fs::read(&file).unwrap();
    // a byte in the middle of the prototypes section
    bytes[middle as usize] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let out = sb.run(&["verify", file.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("prototypes"), "{stderr}");
    std::fs::write(&file, b"").unwrap();
    let out = sb.run(&["inspect", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out).1.contains("panicked"));
}

/// The distributed recipe of docs/distributed.md, locally: three worker
/// processes each build one class and export it, a final step merges; the
/// result equals a single-process build class for class, vector for vector.
#[test]
fn shard_and_merge_equals_a_single_process_build() {
    let Some(sb) = sandbox() else { return };
    let data = tempfile::tempdir().unwrap();
    let dirs: Vec<(String, String)> = COLORS
        .iter()
        .map(|(c, color)| {
            (
                c.to_string(),
                support_dir(data.path(), c, *color, 2).display().to_string(),
            )
        })
        .collect();
    // three workers at once, each with its own bank
    let children: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, (class, dir))| {
            let bank = data.path().join(format!("worker{i}"));
            let shard = data.path().join(format!("shard{i}.ovbank"));
            let mut c = sb.cmd();
            c.args(add_args(class, dir, bank.to_str().unwrap()))
                .stdout(std::process::Stdio::null());
            let child = c.spawn().unwrap();
            (child, bank, shard)
        })
        .collect();
    let mut shards = Vec::new();
    for (mut child, bank, shard) in children {
        assert!(child.wait().unwrap().success());
        ok(sb.run(&[
            "export",
            "-o",
            shard.to_str().unwrap(),
            "--bank",
            bank.to_str().unwrap(),
        ]));
        shards.push(shard.display().to_string());
    }
    let merged = data.path().join("merged.ovbank");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(String::as_str));
    args.extend(["-o", merged.to_str().unwrap()]);
    ok(sb.run(&args));

    let single = data.path().join("single");
    for (class, dir) in &dirs {
        ok(sb.run(&add_args(class, dir, single.to_str().unwrap())));
    }
    let single_file = data.path().join("single.ovbank");
    ok(sb.run(&[
        "export",
        "-o",
        single_file.to_str().unwrap(),
        "--bank",
        single.to_str().unwrap(),
    ]));
    let (m, s) = (contents(&merged), contents(&single_file));
    assert_eq!(m.len(), 3);
    assert_eq!(m, s);
}

#[test]
fn export_with_ann_lists_and_segment_uses_them() {
    let Some(sb) = sandbox() else { return };
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("bank");
    let bank = bank.to_str().unwrap();
    for (class, color) in COLORS {
        let dir = support_dir(data.path(), class, color, 2);
        ok(sb.run(&add_args(class, dir.to_str().unwrap(), bank)));
    }
    let file = data.path().join("ann.ovbank");
    let plain = data.path().join("plain.ovbank");
    let (file_s, plain_s) = (file.to_str().unwrap(), plain.to_str().unwrap());
    ok(sb.run(&["export", "-o", file_s, "--bank", bank, "--ann"]));
    ok(sb.run(&["export", "-o", plain_s, "--bank", bank]));
    assert!(ok(sb.run(&["verify", file_s])).contains("every checksum matches"));
    let v: serde_json::Value =
        serde_json::from_str(&ok(sb.run(&["inspect", file_s, "--json"]))).unwrap();
    assert_eq!(v["ann"][0]["algorithm"], "ivf-lists-1");
    assert_eq!(v["ann"][0]["usable_here"], true);
    let v: serde_json::Value =
        serde_json::from_str(&ok(sb.run(&["inspect", plain_s, "--json"]))).unwrap();
    assert!(v["ann"].as_array().unwrap().is_empty());

    let img = data.path().join("q.png");
    crate::bank::disc_image(168, 140, [230, 40, 40], 5)
        .save(&img)
        .unwrap();
    let mut maps = Vec::new();
    for (f, why) in [(file_s, "from the bank file"), (plain_s, "built in")] {
        let out_dir = data.path().join(format!("out{}", maps.len()));
        let out = sb.run(&[
            "segment",
            img.to_str().unwrap(),
            "--all-classes",
            "--bank",
            f,
            "--engine",
            "ivf",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{:?}", text(&out));
        assert!(text(&out).1.contains(why), "{:?}", text(&out));
        maps.push(std::fs::read(out_dir.join("q.png")).unwrap());
    }
    assert_eq!(maps[0], maps[1], "the file's lists label as fresh ones");
    // a query of some of the file's classes clusters its own rows
    let out_dir = data.path().join("subset");
    let out = sb.run(&[
        "segment",
        img.to_str().unwrap(),
        "--classes",
        "red,blue",
        "--bank",
        file_s,
        "--engine",
        "ivf",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).1.contains("built in"), "{:?}", text(&out));
}
