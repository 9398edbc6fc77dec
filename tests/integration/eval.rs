//! `eval` through the real binary: with `--engine` and `--prefilter` it labels every image as `segment` does with the same options (its confusion matrix equals one computed from `segment`'s label PNGs).

use std::path::PathBuf;

use image::{Rgb, RgbImage};
use ovdiff_segment::eval::Confusion;
use ovdiff_segment::render::{read_label_png, write_label_png, LabelDepth};

use crate::bank::{add_tiny, support_dir};
use crate::harness::{fixture, text, Sandbox};

const RED: [u8; 3] = [230, 40, 40];
const GREEN: [u8; 3] = [40, 230, 40];
const BLUE: [u8; 3] = [40, 40, 230];
/// The classes file's order, which is also the query's: red 1, green 2, blue 3.
const NAMES: [&str; 4] = ["background", "red", "green", "blue"];

struct Kit {
    sb: Sandbox,
    data: tempfile::TempDir,
}

impl Kit {
    /// A tiny-encoder bank of red, green and blue, and a VOC-layout dataset
    /// of four images of discs with their ground truth.
    fn new() -> Option<Kit> {
        let sb = Sandbox::with_runtime()?;
        sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
        let kit = Kit {
            sb,
            data: tempfile::tempdir().unwrap(),
        };
        for (class, color) in [("red", RED), ("green", GREEN), ("blue", BLUE)] {
            let dir = support_dir(kit.data.path(), class, color, 2);
            let out = add_tiny(&kit.sb, &kit.bank(), class, &dir, &[]);
            assert!(out.status.success(), "{:?}", text(&out));
        }
        let root = kit.dataset();
        for sub in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let images: [(&str, &[Disc]); 4] = [
            ("a", &[(RED, 1, 0.35), (BLUE, 3, 0.35)]),
            ("b", &[(GREEN, 2, 0.35), (RED, 1, 0.35), (BLUE, 3, 0.35)]),
            ("c", &[(GREEN, 2, 0.35)]),
            // CLIP (the fixture: the mean colour) keeps only red here
            ("d", &[(RED, 1, 0.4), (BLUE, 3, 0.2)]),
        ];
        for (id, discs) in images {
            let (img, gt) = discs_with_truth(discs);
            img.save(root.join("JPEGImages").join(format!("{id}.jpg")))
                .unwrap();
            let gt_path = root.join("SegmentationClass").join(format!("{id}.png"));
            write_label_png(
                &gt_path,
                img.width(),
                img.height(),
                &gt,
                LabelDepth::Palette8,
            )
            .unwrap();
        }
        std::fs::write(root.join("ImageSets/Segmentation/val.txt"), "a\nb\nc\nd\n").unwrap();
        std::fs::write(kit.classes_file(), NAMES.join("\n")).unwrap();
        Some(kit)
    }

    fn bank(&self) -> PathBuf {
        self.data.path().join("bank")
    }

    fn dataset(&self) -> PathBuf {
        self.data.path().join("voc")
    }

    fn classes_file(&self) -> PathBuf {
        self.data.path().join("classes.txt")
    }

    /// `eval` with `extra` options; returns its `--json` report, its
    /// confusion CSV and its stderr.
    fn eval(&self, name: &str, extra: &[&str]) -> (serde_json::Value, String, String) {
        let csv = self.data.path().join(format!("{name}.csv"));
        let mut args = vec![
            "eval".to_string(),
            self.dataset().display().to_string(),
            "--classes-file".into(),
            self.classes_file().display().to_string(),
            "--bank".into(),
            self.bank().display().to_string(),
            "--confusion".into(),
            csv.display().to_string(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.sb.run(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "eval {extra:?}: {stdout}{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        (v, std::fs::read_to_string(csv).unwrap(), stderr)
    }

    /// `segment` of the dataset's images with the evaluated classes and
    /// `extra` options, and the confusion matrix of its label PNGs against
    /// the ground truth, as CSV.
    fn segment_confusion(&self, name: &str, extra: &[&str]) -> String {
        let out_dir = self.data.path().join(format!("seg-{name}"));
        let images = self.dataset().join("JPEGImages");
        let mut args = vec![
            "segment".to_string(),
            images.display().to_string(),
            "--classes".into(),
            NAMES[1..].join(","),
            "--bank".into(),
            self.bank().display().to_string(),
            "--out".into(),
            out_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.sb.run(&args);
        assert!(out.status.success(), "segment {extra:?}: {:?}", text(&out));
        let mut confusion = Confusion::new(NAMES.len());
        for id in ["a", "b", "c", "d"] {
            let (_, _, gt) =
                read_label_png(&self.dataset().join(format!("SegmentationClass/{id}.png")))
                    .unwrap();
            let (_, _, pred) = read_label_png(&out_dir.join(format!("{id}.png"))).unwrap();
            confusion.add(&gt, &pred).unwrap();
        }
        let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        confusion.to_csv(&names)
    }
}

/// A disc: its colour, its label and its radius as a fraction of its 112 px
/// cell.
type Disc = ([u8; 3], u16, f32);

/// Discs side by side on a dark, noisy background, and the labels of their
/// pixels (each disc's label, 0 around them).
fn discs_with_truth(discs: &[Disc]) -> (RgbImage, Vec<u16>) {
    let cell = 112u32;
    let w = cell * discs.len() as u32;
    let mut labels = vec![0u16; (w * cell) as usize];
    let img = RgbImage::from_fn(w, cell, |x, y| {
        let (i, cx) = (x / cell, (x % cell) as f32 - cell as f32 / 2.0);
        let cy = y as f32 - cell as f32 / 2.0;
        let (color, label, radius) = discs[i as usize];
        if (cx * cx + cy * cy).sqrt() < cell as f32 * radius {
            labels[(y * w + x) as usize] = label;
            Rgb(color)
        } else {
            let v = ((x * 7 + y * 13) % 40) as u8;
            Rgb([10 + v, 20 + v / 2, 15])
        }
    });
    (img, labels)
}

/// `eval` and `segment` with `options` label alike; returns eval's stderr.
fn assert_same_labels(kit: &Kit, name: &str, options: &[&str]) -> String {
    let (report, eval_csv, stderr) = kit.eval(name, options);
    assert_eq!(report["images"], 4, "{report:#}");
    assert!(
        report["failed"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let segment_csv = kit.segment_confusion(name, options);
    assert_eq!(
        eval_csv, segment_csv,
        "eval {options:?} and segment {options:?} label the images differently"
    );
    stderr
}

#[test]
fn eval_labels_as_segment_does_with_every_engine() {
    let Some(kit) = Kit::new() else { return };
    let cache = kit.sb.home.path().join("cache");
    for engine in ["exact", "ivf", "hnsw", "auto"] {
        // eval runs first, so a cache file of this engine is eval's
        let (report, eval_csv, stderr) = kit.eval(engine, &["--engine", engine]);
        assert_eq!(report["images"], 4, "{report:#}");
        match engine {
            "ivf" => {
                assert!(cache.join("ivf").is_dir(), "eval built IVF lists");
                assert!(
                    stderr.contains("IVF lists for tiny-encoder") && stderr.contains("built in"),
                    "{stderr}"
                );
            }
            "hnsw" => assert!(cache.join("hnsw").is_dir(), "eval built an HNSW graph"),
            _ => assert!(!stderr.contains("IVF lists"), "{stderr}"),
        }
        let segment_csv = kit.segment_confusion(engine, &["--engine", engine]);
        assert_eq!(eval_csv, segment_csv, "--engine {engine}");
    }
    // and the discs are found: the matrix is not all background
    let (report, _, _) = kit.eval("exact-again", &["--engine", "exact"]);
    let red = report["per_class"][1]["iou"].as_f64().unwrap();
    assert!(red > 0.5, "red IoU {red}: {report:#}");
}

#[test]
fn eval_with_the_prefilter_labels_as_segment_does() {
    let Some(kit) = Kit::new() else { return };
    let clip = fixture("clip-tiny").display().to_string();
    assert_same_labels(&kit, "prefilter", &["--prefilter", &clip]);
    // and the pre-filter changed the labels: in d, blue was not kept
    let (_, with, _) = kit.eval("prefilter-again", &["--prefilter", &clip]);
    let (_, without, _) = kit.eval("no-prefilter", &[]);
    assert_ne!(with, without, "the pre-filter ran");
    assert_same_labels(
        &kit,
        "prefilter-top1-ivf",
        &[
            "--prefilter",
            &clip,
            "--prefilter-topk",
            "1",
            "--engine",
            "ivf",
        ],
    );
}

#[test]
fn eval_refuses_what_segment_refuses() {
    let Some(kit) = Kit::new() else { return };
    let run = |extra: &[&str]| {
        let mut args = vec![
            "eval".to_string(),
            kit.dataset().display().to_string(),
            "--classes-file".into(),
            kit.classes_file().display().to_string(),
            "--bank".into(),
            kit.bank().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = kit.sb.run(&args);
        (out.status.code(), text(&out).1)
    };
    let (code, stderr) = run(&["--prefilter-topk", "3"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--prefilter"), "{stderr}");
    let clip = fixture("clip-tiny").display().to_string();
    let (code, stderr) = run(&["--prefilter", &clip, "--prefilter-topk", "0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--prefilter-topk 0 is out of range"),
        "{stderr}"
    );
    let not_clip = fixture("models/tiny-encoder").display().to_string();
    let (code, stderr) = run(&["--prefilter", &not_clip]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("checking the --prefilter bundle")
            && stderr.contains("looks like an encoder bundle"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--engine", "fast"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid value 'fast'"), "{stderr}");
}

/// `eval --report` on the fixture dataset: in Chromium, the page's mIoU,
/// pixel accuracy, per-class IoUs and image count are those of `eval
/// --json`, the worst images are all four, worst first, and the worst
/// one's overlay is in the screenshot; `--report-inline` needs no other file.
#[test]
fn eval_report_numbers_are_the_json_s() {
    use crate::browser::{
        assert_not_blank, attrs, check_eval_dom, chromium, contains_block, dump_dom, file_url,
        screenshot,
    };
    let Some(bin) = chromium() else { return };
    let Some(kit) = Kit::new() else { return };
    let out = kit.data.path().join("report");
    let out_s = out.display().to_string();
    let (v, _, _) = kit.eval("report", &["--out", &out_s, "--report"]);
    let page = out.join("report.html");
    let dom = dump_dom(&bin, &file_url(&page, ""));
    check_eval_dom(&dom, &v, 4);
    let per_image: Vec<f64> = attrs(&dom, "class=\"worst\"", "data-value")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(per_image.windows(2).all(|w| w[0] <= w[1]), "{per_image:?}");
    for name in NAMES {
        assert!(dom.contains(name), "{name}");
    }
    let shot = screenshot(&bin, &file_url(&page, "full"), 1200, 2400);
    assert_not_blank(&shot);
    let overlay = image::open(out.join("report-files/00.overlay.png"))
        .unwrap()
        .to_rgb8();
    assert!(contains_block(&shot, &overlay, 20));

    let inline = kit.data.path().join("inline");
    let inline_s = inline.display().to_string();
    let (w, _, _) = kit.eval("inline", &["--out", &inline_s, "--report-inline"]);
    assert_eq!(w["miou"], v["miou"]);
    let html = std::fs::read_to_string(inline.join("report.html")).unwrap();
    assert!(html.contains("data:image/png;base64,") && html.contains("data:image/jpeg;base64,"));
    assert!(!html.contains("report-files/"));
}
