//! `segment --prefilter`: the CLIP category pre-filter with the tiny CLIP fixture (tests/fixtures/clip-tiny) through the real binary.

use std::path::Path;

use image::{Rgb, RgbImage};
use ovdiff_segment::prefilter::DEFAULT_TOPK;
use ovdiff_segment::render::read_label_png;

use crate::bank::{add_tiny, support_dir};
use crate::harness::{fixture, text, Sandbox};

const RED: [u8; 3] = [230, 40, 40];
const GREEN: [u8; 3] = [40, 230, 40];
const BLUE: [u8; 3] = [40, 40, 230];
/// Query order, so labels are red 1, green 2, blue 3.
const CLASSES: &str = "red,green,blue";

struct Kit {
    sb: Sandbox,
    data: tempfile::TempDir,
}

impl Kit {
    /// A sandbox with a tiny-encoder bank holding red, green and blue discs.
    fn new() -> Option<Kit> {
        let sb = Sandbox::with_runtime()?;
        sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
        let kit = Kit {
            sb,
            data: tempfile::tempdir().unwrap(),
        };
        let bank = kit.data.path().join("bank");
        for (class, color) in [("red", RED), ("green", GREEN), ("blue", BLUE)] {
            let dir = support_dir(kit.data.path(), class, color, 2);
            let out = add_tiny(&kit.sb, &bank, class, &dir, &[]);
            assert!(out.status.success(), "{:?}", text(&out));
        }
        Some(kit)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut v: Vec<&str> = args.to_vec();
        let bank = self.data.path().join("bank").display().to_string();
        v.extend(["--bank", &bank]);
        self.sb.run(&v)
    }

    /// Discs side by side on a dark, noisy background, each `(colour,
    /// radius as a fraction of its 112 px cell)`.
    fn discs(&self, name: &str, discs: &[([u8; 3], f32)]) -> String {
        let cell = 112u32;
        let n = discs.len() as u32;
        let img = RgbImage::from_fn(cell * n, cell, |x, y| {
            let (i, cx) = (x / cell, (x % cell) as f32 - cell as f32 / 2.0);
            let cy = y as f32 - cell as f32 / 2.0;
            let (color, radius) = discs[i as usize];
            if (cx * cx + cy * cy).sqrt() < cell as f32 * radius {
                Rgb(color)
            } else {
                let v = ((x * 7 + y * 13) % 40) as u8;
                Rgb([10 + v, 20 + v / 2, 15])
            }
        });
        let p = self.data.path().join(name);
        img.save(&p).unwrap();
        p.display().to_string()
    }

    fn segment(&self, img: &str, out: &str, extra: &[&str]) -> (serde_json::Value, Vec<u8>) {
        let mut args = vec!["segment", img, "--classes", CLASSES, "--out", out, "--json"];
        args.extend(extra);
        let res = self.run(&args);
        let (stdout, stderr) = text(&res);
        assert!(res.status.success(), "{stdout}{stderr}");
        let image: serde_json::Value =
            serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        let labels = Path::new(image["labels"].as_str().unwrap());
        let (_, _, labels) = read_label_png(labels).unwrap();
        (image, labels)
    }
}

fn kept(report: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = report["prefilter"]["kept"]
        .as_array()
        .expect("the report lists the kept classes")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn has_label(labels: &[u8], l: u8) -> bool {
    labels.contains(&l)
}

#[test]
fn prefilter_keeps_the_classes_clip_sees_and_only_those_are_labelled() {
    let Some(kit) = Kit::new() else { return };
    let clip = fixture("clip-tiny").display().to_string();
    let out = kit.data.path().join("out").display().to_string();

    // A big red disc and a small blue one. Segmented with all three
    // classes, both discs are found.
    let red = kit.discs("red.png", &[(RED, 0.4), (BLUE, 0.2)]);
    let (report, labels) = kit.segment(&red, &out, &[]);
    assert!(report.get("prefilter").is_none(), "{report:#}");
    assert!(
        has_label(&labels, 1) && has_label(&labels, 3),
        "red and blue found"
    );
    // CLIP (here: the image's mean colour) sees red: stage 1 ranks red
    // first, stage 2 keeps {red} alone, so blue is no longer a candidate.
    let (report, labels) = kit.segment(&red, &out, &["--prefilter", &clip]);
    assert_eq!(kept(&report), vec!["red"], "{report:#}");
    let pf = &report["prefilter"];
    assert_eq!(pf["topk"], DEFAULT_TOPK);
    assert_eq!(pf["prompt"], "a red");
    assert_eq!(pf["prompts"], 7, "k is clamped to the 3 candidates");
    assert_eq!(pf["stage1"][0]["class"], "red");
    assert_eq!(pf["stage1"].as_array().unwrap().len(), 3);
    assert_eq!(pf["fingerprint"].as_str().unwrap().len(), 64);
    assert!(report["timings_ms"]["prefilter"].as_f64().is_some());
    assert!(has_label(&labels, 1), "the red disc is labelled red");
    assert!(
        !has_label(&labels, 2) && !has_label(&labels, 3),
        "only red may appear"
    );
    assert_eq!(report["classes"].as_array().unwrap().len(), 1, "{report:#}");

    // The kept classes can be matched with HNSW too (a graph for just them).
    let (report, labels) = kit.segment(&red, &out, &["--prefilter", &clip, "--engine", "hnsw"]);
    assert_eq!(kept(&report), vec!["red"], "{report:#}");
    assert!(has_label(&labels, 1) && labels.iter().all(|&l| l <= 1));
    assert!(
        kit.sb.home.path().join("cache/hnsw").is_dir(),
        "the kept classes' HNSW graph is cached"
    );
    assert_eq!(report["prefilter"]["engine"], serde_json::json!(["hnsw"]));
    // ... and with IVF lists; auto applies its row rule to the kept rows
    // (a few here, so exact).
    let (report, labels) = kit.segment(&red, &out, &["--prefilter", &clip, "--engine", "ivf"]);
    assert!(has_label(&labels, 1) && labels.iter().all(|&l| l <= 1));
    assert_eq!(report["prefilter"]["engine"], serde_json::json!(["ivf"]));
    assert!(kit.sb.home.path().join("cache/ivf").is_dir());
    let (report, _) = kit.segment(&red, &out, &["--prefilter", &clip]);
    assert_eq!(report["prefilter"]["engine"], serde_json::json!(["exact"]));

    // A red and a green disc: only the " and " prompt of stage 2 explains
    // both; blue is never a candidate.
    let two = kit.discs("two.png", &[(RED, 0.4), (GREEN, 0.4)]);
    let (report, labels) = kit.segment(&two, &out, &["--prefilter", &clip]);
    assert_eq!(kept(&report), vec!["green", "red"], "{report:#}");
    let prompt = report["prefilter"]["prompt"].as_str().unwrap();
    assert!(
        prompt == "a red and a green" || prompt == "a green and a red",
        "{prompt}"
    );
    assert!(has_label(&labels, 1) && has_label(&labels, 2));
    assert!(
        !has_label(&labels, 3),
        "blue was not kept, so it is never labelled"
    );
    let found: Vec<&str> = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(!found.contains(&"blue"), "{found:?}");

    // --prefilter-topk 1: stage 2 sees one class, so only one is kept.
    let (report, labels) =
        kit.segment(&two, &out, &["--prefilter", &clip, "--prefilter-topk", "1"]);
    assert_eq!(report["prefilter"]["kept"].as_array().unwrap().len(), 1);
    assert_eq!(report["prefilter"]["prompts"], 1);
    let only = if kept(&report) == ["red"] { 1 } else { 2 };
    assert!(labels.iter().all(|&l| l == 0 || l == only));
}

#[test]
fn prefilter_summary_and_explain_name_the_kept_classes() {
    let Some(kit) = Kit::new() else { return };
    let clip = fixture("clip-tiny").display().to_string();
    let out = kit.data.path().join("out").display().to_string();
    let two = kit.discs("two.png", &[(RED, 0.4), (GREEN, 0.4)]);
    let res = kit.run(&[
        "segment",
        &two,
        "--classes",
        CLASSES,
        "--out",
        &out,
        "--prefilter",
        &clip,
        "--explain",
    ]);
    let (stdout, stderr) = text(&res);
    assert!(res.status.success(), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("pre-filter kept"))
        .unwrap_or_else(|| panic!("no pre-filter line in {stdout}"));
    assert!(
        line.contains("red") && line.contains("green") && !line.contains("kept blue"),
        "{line}"
    );
    // the explanation is a table (issue #21), of the kept classes only
    assert!(stdout.contains("explained in"), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with('{')), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&out).join("two.json")).unwrap()).unwrap();
    assert_eq!(json["prefilter"]["kept"].as_array().unwrap().len(), 2);
}

#[test]
fn prefilter_errors_say_what_to_do() {
    let Some(kit) = Kit::new() else { return };
    let img = kit.discs("red.png", &[(RED, 0.4)]);
    let out = kit.data.path().join("out").display().to_string();

    // a folder that is not a CLIP export is refused before anything runs
    let not_clip = fixture("models/tiny-encoder").display().to_string();
    let res = kit.run(&[
        "segment",
        &img,
        "--classes",
        CLASSES,
        "--out",
        &out,
        "--prefilter",
        &not_clip,
    ]);
    let (_, stderr) = text(&res);
    assert_eq!(res.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`preprocessor_config.json` is missing")
            && stderr.contains("looks like an encoder bundle"),
        "{stderr}"
    );
    assert!(stderr.contains("optimum-cli export onnx"), "{stderr}");
    assert!(
        !Path::new(&out).join("red.png").exists(),
        "nothing was segmented"
    );

    // a CLIP graph with other output names
    let bad = kit.data.path().join("bad-clip");
    crate::harness::copy_dir(&fixture("clip-tiny"), &bad);
    std::fs::copy(
        bad.join("variants/wrong_outputs.onnx"),
        bad.join("model.onnx"),
    )
    .unwrap();
    let bad = bad.display().to_string();
    let res = kit.run(&[
        "segment",
        &img,
        "--classes",
        CLASSES,
        "--out",
        &out,
        "--prefilter",
        &bad,
    ]);
    let (_, stderr) = text(&res);
    assert_eq!(res.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`text_embeds` and `image_embeds`"),
        "{stderr}"
    );

    let clip = fixture("clip-tiny").display().to_string();
    let res = kit.run(&[
        "segment",
        &img,
        "--classes",
        CLASSES,
        "--out",
        &out,
        "--prefilter",
        &clip,
        "--prefilter-topk",
        "0",
    ]);
    let (_, stderr) = text(&res);
    assert_eq!(res.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--prefilter-topk 0 is out of range"),
        "{stderr}"
    );

    // --prefilter-topk alone is a usage error
    let res = kit.run(&[
        "segment",
        &img,
        "--classes",
        CLASSES,
        "--prefilter-topk",
        "3",
    ]);
    let (_, stderr) = text(&res);
    assert_eq!(res.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--prefilter"), "{stderr}");
}
