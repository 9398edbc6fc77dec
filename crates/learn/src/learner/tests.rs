//! The learner with the tiny fixture encoder (tests/fixtures/models/tiny-encoder,
//! 16-dim features whose saliency is the image's brightness).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::{Rgb, RgbImage};
use ovdiff_core::prototype::{Level, Side};
use ovdiff_core::Home;
use ovdiff_models::runtime::RuntimeOptions;
use ovdiff_store::bank::{Bank, ClassSource};

use super::*;

/// The tiny fixture encoder's folder.
fn tiny_encoder() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/fixtures/models/tiny-encoder")
}

/// A throw-away home whose `lib/` is the installed ONNX Runtime, or `None`
/// (skip, with a message) when it is not installed; under CI=true a
/// missing runtime fails the test.
fn home() -> Option<(tempfile::TempDir, Home)> {
    let lib = Home::from_env().lib_dir();
    if !lib.join("libonnxruntime.so").exists() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true but ONNX Runtime is missing at {}",
            lib.display()
        );
        eprintln!(
            "SKIPPED: ONNX Runtime is missing at {}; run scripts/setup",
            lib.display()
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&lib, dir.path().join("lib")).unwrap();
    let home = Home::at(dir.path());
    Some((dir, home))
}

fn learner(home: &Home) -> Learner {
    Learner::new(
        home.clone(),
        RuntimeOptions {
            threads: 1,
            ..RuntimeOptions::default()
        },
    )
    .encoders([tiny_encoder().to_str().unwrap()])
    .parts(4)
}

/// A bright disc of `color` on a dark textured background: the tiny
/// encoder's saliency marks the disc as foreground.
fn disc_image(w: u32, h: u32, color: [u8; 3], seed: u32) -> RgbImage {
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
fn support_dir(root: &Path, name: &str, color: [u8; 3], n: u32) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        disc_image(120 + 14 * i, 112, color, i)
            .save(dir.join(format!("{name}-{i}.png")))
            .unwrap();
    }
    dir
}

#[test]
fn a_class_from_images_lands_in_the_bank() {
    let Some((dir, home)) = home() else { return };
    let red = support_dir(dir.path(), "red", [230, 40, 40], 3);
    let bank = Bank::open(&dir.path().join("bank")).unwrap();
    let mut learner = learner(&home);

    let report = learner
        .add(&bank, NewClass::new("apple", Some(red.clone())).unwrap())
        .unwrap();
    assert_eq!(report.class, "apple");
    assert_eq!(report.bank, bank.path());
    assert_eq!(report.images_used, 3);
    assert!(report.images_skipped.is_empty());
    assert_eq!(report.split, "saliency");
    assert_eq!(report.encoders.len(), 1);
    let c = report.encoders[0].counts;
    assert_eq!(
        (
            c.class_fg,
            c.class_bg,
            c.instance_fg,
            c.instance_bg,
            c.part_fg,
            c.part_bg
        ),
        (1, 1, 3, 3, 4, 4)
    );
    assert_eq!(report.encoders[0].prototypes, 16);

    let rec = bank.class("apple").unwrap().expect("the class is stored");
    assert!(!rec.stuff);
    assert_eq!(rec.images_used, 3);
    assert_eq!(rec.split_method, "saliency");
    assert_eq!(
        rec.source,
        ClassSource::Images {
            dir: red.display().to_string()
        }
    );
    assert_eq!(rec.support.len(), 3);
    assert_eq!(rec.encoders[0].fingerprint, report.encoders[0].fingerprint);
    let protos = bank.prototypes(&rec, &rec.encoders[0].fingerprint).unwrap();
    assert_eq!(protos.len(), 16);
    assert_eq!(
        (protos[0].level, protos[0].side),
        (Level::Class, Side::Foreground)
    );
    for p in &protos {
        let n = p.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-2, "norm {n}");
    }
    let stats = rec.stats.clone().expect("build statistics are recorded");
    assert!(stats.fg_patches > 0 && stats.bg_patches > 0);
    assert!(bank.thumbnail(&rec, 0).unwrap().is_some());
    assert_eq!(
        bank.encoders().unwrap()[0].fingerprint,
        report.encoders[0].fingerprint,
        "the encoder is registered"
    );
}

#[test]
fn encoders_are_loaded_once_for_many_classes_and_banks() {
    let Some((dir, home)) = home() else { return };
    let red = support_dir(dir.path(), "red", [230, 40, 40], 2);
    let green = support_dir(dir.path(), "green", [40, 230, 40], 2);
    let first = Bank::open(&dir.path().join("first")).unwrap();
    let second = Bank::open(&dir.path().join("second")).unwrap();
    let mut learner = learner(&home);
    let a = learner
        .add(&first, NewClass::new("red", Some(red.clone())).unwrap())
        .unwrap();
    let b = learner
        .add(
            &first,
            NewClass::new("grass", Some(green)).unwrap().stuff(true),
        )
        .unwrap();
    let c = learner
        .add(&second, NewClass::new("red", Some(red)).unwrap())
        .unwrap();
    assert_eq!(learner.encoders.len(), 1, "one encoder, loaded once");
    assert_eq!(a.encoders[0].fingerprint, b.encoders[0].fingerprint);
    // same inputs, same vectors, whichever bank
    let vectors = |bank: &Bank, class: &str| {
        let rec = bank.class(class).unwrap().unwrap();
        bank.prototypes(&rec, &rec.encoders[0].fingerprint)
            .unwrap()
            .into_iter()
            .map(|p| p.vector)
            .collect::<Vec<_>>()
    };
    assert_eq!(vectors(&first, "red"), vectors(&second, "red"));
    assert_eq!(c.encoders[0].counts, a.encoders[0].counts);
    // the stuff class keeps foreground prototypes only
    let grass = first.class("grass").unwrap().unwrap();
    assert!(grass.stuff);
    assert_eq!(b.encoders[0].counts.class_bg, 0);
    assert_eq!(b.encoders[0].counts.part_bg, 0);
    assert_eq!(second.encoders().unwrap().len(), 1, "registered per bank");
}

#[test]
fn an_existing_class_needs_replace() {
    let Some((dir, home)) = home() else { return };
    let red = support_dir(dir.path(), "red", [230, 40, 40], 2);
    let blue = support_dir(dir.path(), "blue", [40, 40, 230], 2);
    let bank = Bank::open(&dir.path().join("bank")).unwrap();
    let mut learner = learner(&home);
    learner
        .add(&bank, NewClass::new("thing", Some(red)).unwrap())
        .unwrap();
    let err = learner
        .add(&bank, NewClass::new("thing", Some(blue.clone())).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--replace"),
        "{err}"
    );
    let mut learner = learner.replace(true);
    learner
        .add(&bank, NewClass::new("thing", Some(blue.clone())).unwrap())
        .unwrap();
    assert_eq!(
        bank.class("thing").unwrap().unwrap().source,
        ClassSource::Images {
            dir: blue.display().to_string()
        }
    );
}

/// Every call a [`Progress`] gets, as text.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn stage(&self, stage: Stage, class: &str, total: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("stage {stage:?} {class} {total}"));
    }
    fn advance(&self, done: u64) {
        self.0.lock().unwrap().push(format!("advance {done}"));
    }
    fn message(&self, text: &str) {
        self.0.lock().unwrap().push(format!("message {text}"));
    }
    fn skipped(&self, image: &Path, _reason: &str) {
        let name = image.file_name().unwrap().to_string_lossy();
        self.0.lock().unwrap().push(format!("skipped {name}"));
    }
    fn finish(&self) {
        self.0.lock().unwrap().push("finish".into());
    }
}

#[test]
fn progress_is_reported_image_by_image() {
    let Some((dir, home)) = home() else { return };
    let red = support_dir(dir.path(), "red", [230, 40, 40], 2);
    std::fs::write(red.join("red-9-broken.png"), b"not a png").unwrap();
    let bank = Bank::open(&dir.path().join("bank")).unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut learner = learner(&home).progress(recorder.clone());
    let report = learner
        .add(&bank, NewClass::new("apple", Some(red)).unwrap())
        .unwrap();
    assert_eq!(report.images_used, 2);
    assert_eq!(report.images_skipped.len(), 1);
    assert!(report.images_skipped[0].path.ends_with("red-9-broken.png"));
    let calls = recorder.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "stage Learn apple 3",
            "advance 1",
            "advance 1",
            "skipped red-9-broken.png",
            "advance 1",
            "finish",
        ]
    );
}

#[test]
fn a_failed_learn_still_finishes_its_stage_and_writes_nothing() {
    let Some((dir, home)) = home() else { return };
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("a.png"), b"").unwrap();
    let bank = Bank::open(&dir.path().join("bank")).unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut learner = learner(&home).progress(recorder.clone());
    let err = learner
        .add(&bank, NewClass::new("ghost", Some(bad)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no usable support images"), "{err}");
    assert_eq!(recorder.0.lock().unwrap().last().unwrap(), "finish");
    assert!(bank.class("ghost").unwrap().is_none());
}

#[test]
fn attribution_needs_maps_beside_every_image() {
    let Some((dir, home)) = home() else { return };
    let red = support_dir(dir.path(), "red", [230, 40, 40], 2);
    let bank = Bank::open(&dir.path().join("bank")).unwrap();
    let mut learner = learner(&home).split(Some(SplitMethod::Attribution));
    let err = learner
        .add(&bank, NewClass::new("apple", Some(red)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--split attribution") && err.contains("NNN.attribution.png"),
        "{err}"
    );
    assert!(bank.classes().unwrap().is_empty());
}

#[test]
fn new_classes_are_checked_before_any_bank_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let err = |name: &str, images: Option<PathBuf>| NewClass::new(name, images).unwrap_err();
    assert!(err(" padded", None).to_string().contains("not valid"));
    let missing = dir.path().join("nope");
    assert_eq!(
        err("x", Some(missing.clone())).to_string(),
        format!(
            "support folder {} does not exist (give a folder of images or one image file)",
            missing.display()
        )
    );
    assert!(err("x", Some(dir.path().to_path_buf()))
        .to_string()
        .contains("no PNG or JPEG images"));
    let class = NewClass::new("sky", None).unwrap().stuff(true);
    assert_eq!(class.name(), "sky");
    assert!(class.stuff && class.images.is_none());
}

#[test]
fn the_split_is_chosen_from_what_the_support_set_has() {
    let plain = [SupportImage::from(PathBuf::from("a.png"))];
    let mapped = [SupportImage {
        path: "a.png".into(),
        attribution: Some("a.attribution.png".into()),
    }];
    assert_eq!(
        choose_split(None, None, Some(&plain)).unwrap(),
        SplitMethod::Saliency
    );
    // a folder with maps uses them only when asked
    assert_eq!(
        choose_split(None, None, Some(&mapped)).unwrap(),
        SplitMethod::Saliency
    );
    assert_eq!(
        choose_split(Some(SplitMethod::Attribution), None, Some(&mapped)).unwrap(),
        SplitMethod::Attribution
    );
    assert_eq!(
        choose_split(Some(SplitMethod::FeatureSplit), None, Some(&plain)).unwrap(),
        SplitMethod::FeatureSplit
    );
    assert!(choose_split(Some(SplitMethod::Attribution), None, Some(&plain)).is_err());
}

#[test]
fn a_learner_can_move_to_another_thread() {
    fn sendable<T: Send>() {}
    sendable::<Learner>();
    sendable::<NewClass>();
}
