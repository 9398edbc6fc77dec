//! One `Segmenter` shared by threads: with the tiny fixture encoder and a bank made here, four threads on different images and class sets (exact, IVF, HNSW, the CLIP pre-filter) get the labels and explanations of sequential calls.

use std::path::{Path, PathBuf};
use std::sync::Barrier;

use image::{Rgb, RgbImage};
use ovdiff_core::Home;
use ovdiff_learn::builder::BuildOptions;
use ovdiff_learn::split::SplitMethod;
use ovdiff_learn::support_set::{self, LearnOptions, SupportImage};
use ovdiff_models::features::Encoder;
use ovdiff_models::runtime::{Runtime, RuntimeOptions};
use ovdiff_segment::query::{EnginePolicy, Matching};
use ovdiff_segment::segmentation::ClassFound;
use ovdiff_segment::{Query, Segmenter, SegmenterOptions};
use ovdiff_store::bank::{Bank, ClassSource, EncoderInfo};

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(rel)
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        threads: 1,
        ..RuntimeOptions::default()
    }
}

/// The runtime, or `None` (with a message) when ONNX Runtime is not
/// installed; under CI=true that fails the test.
fn runtime() -> Option<Runtime> {
    match Runtime::init(&Home::from_env(), options()) {
        Ok(rt) => Some(rt),
        Err(e) => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "CI=true but ONNX Runtime is missing: {}",
                e.report()
            );
            eprintln!("SKIPPED: {}", e.report());
            None
        }
    }
}

/// A disc of `color` on a dark, noisy background.
fn disc(w: u32, h: u32, color: [u8; 3], seed: u32) -> RgbImage {
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

/// Discs side by side, one per colour.
fn discs(colors: &[[u8; 3]], seed: u32) -> RgbImage {
    let cell = 112;
    let mut img = RgbImage::new(cell * colors.len() as u32, cell);
    for (i, c) in colors.iter().enumerate() {
        let d = disc(cell, cell, *c, seed + i as u32);
        image::imageops::replace(&mut img, &d, i as i64 * i64::from(cell), 0);
    }
    img
}

const RED: [u8; 3] = [230, 40, 40];
const GREEN: [u8; 3] = [40, 230, 40];
const BLUE: [u8; 3] = [40, 40, 230];
const YELLOW: [u8; 3] = [230, 230, 40];

/// A bank of four colour classes learnt with the tiny encoder.
fn make_bank(runtime: &Runtime, root: &Path) -> PathBuf {
    let bundle = runtime
        .open_bundle(&fixture("models/tiny-encoder"))
        .unwrap();
    let mut encoders = vec![Encoder::load(runtime, bundle).unwrap()];
    let enc = &encoders[0];
    let bank_dir = root.join("bank");
    let bank = Bank::open(&bank_dir).unwrap();
    bank.register_encoder(&EncoderInfo {
        fingerprint: enc.bundle().fingerprint().to_string(),
        name: enc.bundle().name().to_string(),
        dim: enc.dim() as u32,
        dtype: "f16".into(),
    })
    .unwrap();
    for (name, color) in [
        ("red", RED),
        ("green", GREEN),
        ("blue", BLUE),
        ("yellow", YELLOW),
    ] {
        let dir = root.join("support").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for i in 0..2 {
            let p = dir.join(format!("{name}-{i}.png"));
            disc(120 + 14 * i, 112, color, i).save(&p).unwrap();
            files.push(SupportImage::from(p));
        }
        let opts = LearnOptions {
            split: SplitMethod::Saliency,
            build: BuildOptions {
                parts: 4,
                ..BuildOptions::default()
            },
        };
        let learned = support_set::learn(&files, &mut encoders, &opts, &mut |_| {}).unwrap();
        let build = learned.class_build(
            name,
            false,
            ClassSource::Images {
                dir: dir.display().to_string(),
            },
            SplitMethod::Saliency,
        );
        bank.put_class(&build, false).unwrap();
    }
    bank_dir
}

#[test]
fn one_segmenter_serves_four_threads_like_sequential_calls() {
    let Some(runtime) = runtime() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bank = make_bank(&runtime, tmp.path());
    let encoder_dir = fixture("models/tiny-encoder");
    let segmenter = Segmenter::open(
        &bank,
        SegmenterOptions {
            runtime: options(),
            encoders: vec![encoder_dir.clone()],
            cache_dir: tmp.path().join("cache"),
            ..SegmenterOptions::new(Home::from_env())
        },
    )
    .unwrap();
    let fixed = |m| EnginePolicy::Fixed(m);
    let queries = [
        Query::classes(["red", "blue"]),
        Query::classes(["green", "yellow", "red"]).with_engine(fixed(Matching::Ivf)),
        Query::all_classes().with_engine(fixed(Matching::Hnsw)),
        Query::classes(["red", "green", "blue"])
            .with_prefilter(fixture("clip-tiny"), 6)
            .with_explain(true),
    ];
    let images = [
        discs(&[RED, BLUE], 1),
        discs(&[GREEN, YELLOW, RED], 2),
        discs(&[YELLOW], 3),
        discs(&[RED, GREEN], 4),
        discs(&[BLUE, GREEN, YELLOW, RED], 5),
    ];
    // Every (image, query) pair, some images given as files.
    let files: Vec<PathBuf> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let p = tmp.path().join(format!("q{i}.png"));
            img.save(&p).unwrap();
            p
        })
        .collect();
    let jobs: Vec<(usize, usize)> = (0..images.len())
        .flat_map(|i| (0..queries.len()).map(move |q| (i, q)))
        .collect();
    let run = |&(i, q): &(usize, usize)| -> (Vec<u16>, Vec<ClassFound>) {
        let seg = if (i + q) % 2 == 0 {
            segmenter.segment(&images[i], &queries[q]).unwrap()
        } else {
            segmenter.segment(&files[i], &queries[q]).unwrap()
        };
        assert_eq!(seg.labels.len(), images[i].len() / 3);
        (seg.labels, seg.classes)
    };
    let sequential: Vec<_> = jobs.iter().map(run).collect();
    assert!(
        sequential.iter().any(|(l, _)| l.contains(&4)),
        "some image has yellow"
    );

    let threads = 4;
    let start = Barrier::new(threads);
    let mut parallel: Vec<Option<(Vec<u16>, Vec<ClassFound>)>> = vec![None; jobs.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (jobs, start, run) = (&jobs, &start, &run);
                s.spawn(move || {
                    start.wait();
                    // each thread takes every 4th job, from a different end
                    let mine: Vec<usize> = (0..jobs.len()).filter(|j| j % threads == t).collect();
                    let order: Vec<usize> = if t % 2 == 0 {
                        mine
                    } else {
                        mine.into_iter().rev().collect()
                    };
                    order
                        .into_iter()
                        .map(|j| (j, run(&jobs[j])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (j, out) in h.join().unwrap() {
                parallel[j] = Some(out);
            }
        }
    });
    for (j, (want, got)) in sequential.iter().zip(parallel).enumerate() {
        let got = got.expect("every job ran");
        assert!(got.0 == want.0, "job {:?}: labels differ", jobs[j]);
        assert_eq!(got.1, want.1, "job {:?}: explanations differ", jobs[j]);
    }
    let loaded = segmenter.encoders_loaded(&encoder_dir);
    eprintln!("{loaded} tiny encoders loaded for {threads} threads");
    assert!((1..=threads).contains(&loaded), "{loaded} encoders loaded");
}

#[test]
fn plan_errors_are_those_of_the_cli_and_a_good_query_still_plans() {
    let Some(runtime) = runtime() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bank = make_bank(&runtime, tmp.path());
    let segmenter = Segmenter::open(
        &bank,
        SegmenterOptions {
            runtime: options(),
            encoders: vec![fixture("models/tiny-encoder")],
            cache_dir: tmp.path().join("cache"),
            ..SegmenterOptions::new(Home::from_env())
        },
    )
    .unwrap();
    let img = discs(&[RED], 1);
    let e = segmenter
        .segment(&img, &Query::classes(["rde"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no class `rde`") && e.contains("`red`"), "{e}");
    let e = segmenter
        .prepare(&Query::classes(["red"]).with_prefilter(fixture("clip-tiny"), 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--prefilter-topk 0 is out of range"), "{e}");
    let plan = segmenter.prepare(&Query::classes(["red", "blue"])).unwrap();
    assert_eq!(plan.encoders.len(), 1);
    assert_eq!(plan.encoders[0].name, "tiny-encoder");
    assert_eq!(plan.encoders[0].matching, Some(Matching::Exact));
    assert!(plan.prefilter.is_none());
    let seg = segmenter
        .segment(&img, &Query::classes(["red", "blue"]))
        .unwrap();
    assert_eq!(seg.labels[56 * 112 + 56], 1, "the red disc is red");
    assert_eq!(seg.class_names, ["red", "blue"]);
    assert_eq!(seg.classes[0].name, "red");
    assert!(seg.explain.is_none() && seg.prefilter.is_none());
    // the segmenter lends its encoders
    let dir = fixture("models/tiny-encoder");
    let enc = segmenter.encoder(&dir).unwrap();
    assert_eq!(enc.bundle().name(), "tiny-encoder");
    drop(enc);
    assert_eq!(segmenter.encoders_loaded(&dir), 1, "the lent one came back");
    let e = segmenter.encoder(&fixture("clip-tiny")).unwrap_err();
    assert!(e.to_string().contains("no planned query uses"), "{e}");
}
