//! Benchmarks that print figures (not timed tests): `cargo run --release --example bench -- [add|all]`.
//!
//! `add`: a class from 32 real images with `dinov2-s14` on this machine,
//! against 32 bare encoder forwards of the same images at the same size
//! (target ≤ 1.2×), and the bank's size on disk against the raw f16 vectors
//! plus thumbnails. The 32 images are the sample kit's photos, mirrored and
//! cropped so that each is distinct.

use std::path::PathBuf;
use std::time::Instant;

use image::RgbImage;
use ovdiff_bank::bank::{Bank, ClassBuild, ClassRecordDraft, ClassSource, EncoderInfo};
use ovdiff_bank::features::{preprocess, Encoder};
use ovdiff_bank::prototypes::builder::BuildOptions;
use ovdiff_bank::prototypes::split::SplitMethod;
use ovdiff_bank::runtime::{Runtime, RuntimeOptions};
use ovdiff_bank::support_set::{self, LearnOptions};
use ovdiff_bank::Home;

fn sample_images(home: &Home) -> Vec<RgbImage> {
    let root = home.samples_dir().join("support");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("sample kit missing: run scripts/setup")
        .flatten()
        .flat_map(|d| support_set::list_images(&d.path()).unwrap_or_default())
        .collect();
    files.sort();
    let base: Vec<RgbImage> = files
        .iter()
        .map(|p| preprocess::load_rgb(p).unwrap())
        .collect();
    let mut out = Vec::new();
    let mut k = 0;
    while out.len() < 32 {
        let img = &base[k % base.len()];
        let variant = k / base.len();
        let v = match variant {
            0 => img.clone(),
            1 => image::imageops::flip_horizontal(img),
            _ => {
                let (w, h) = img.dimensions();
                let c = 0.8 - 0.05 * variant as f32;
                let (cw, ch) = ((w as f32 * c) as u32, (h as f32 * c) as u32);
                image::imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image()
            }
        };
        out.push(v);
        k += 1;
    }
    out
}

fn bench_add(home: &Home) {
    let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
    let bundle = runtime
        .open_bundle(&home.models_dir().join("dinov2-s14"))
        .expect("dinov2-s14 bundle: run scripts/setup");
    let mut enc = Encoder::load(&runtime, bundle).unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("support");
    std::fs::create_dir_all(&dir).unwrap();
    let images = sample_images(home);
    for (i, img) in images.iter().enumerate() {
        img.save(dir.join(format!("img{i:02}.png"))).unwrap();
    }
    // warm-up
    enc.encode_image(&images[0]).unwrap();

    // bare encoder: the same 32 images, already decoded and resized
    let pre = enc.preprocess().clone();
    let sized: Vec<RgbImage> = images
        .iter()
        .map(|img| {
            let (w, h) = preprocess::target_size(&pre, img.width(), img.height());
            preprocess::resize(img, w, h)
        })
        .collect();
    let t = Instant::now();
    for img in &sized {
        enc.encode_sized(img).unwrap();
    }
    let bare = t.elapsed().as_secs_f64();

    // the whole add: decode, thumbnails, encode, split, pool, store
    let files = support_set::list_images(&dir).unwrap();
    let bank_dir = data.path().join("bank");
    let t = Instant::now();
    let bank = Bank::open(&bank_dir).unwrap();
    let info = EncoderInfo {
        fingerprint: enc.bundle().fingerprint().to_string(),
        name: enc.bundle().name().to_string(),
        dim: enc.dim() as u32,
        dtype: "f16".into(),
    };
    bank.register_encoder(&info).unwrap();
    let opts = LearnOptions {
        split: SplitMethod::Saliency,
        build: BuildOptions {
            seed: 42,
            ..BuildOptions::default()
        },
    };
    let mut encs = vec![enc];
    let learned = support_set::learn(&files, &mut encs, &opts, &mut |_| {}).unwrap();
    let build = ClassBuild {
        record: ClassRecordDraft {
            name: "bench".into(),
            stuff: false,
            source: ClassSource::Images {
                dir: dir.display().to_string(),
            },
            split_method: "saliency".into(),
            images_used: learned.images.len() as u32,
            images_skipped: 0,
            fallback_splits: learned.fallback_splits,
            support: vec![],
        },
        encoders: learned
            .encoders
            .iter()
            .map(|e| (e.fingerprint.clone(), e.prototypes.clone()))
            .collect(),
        thumbnails: learned.images.iter().map(|i| i.thumbnail.clone()).collect(),
    };
    let mut build = build;
    build.record.support = learned
        .images
        .iter()
        .map(|i| ovdiff_bank::bank::SupportImageInfo {
            name: i.name.clone(),
            width: i.width,
            height: i.height,
        })
        .collect();
    bank.put_class(&build, false).unwrap();
    let total = t.elapsed().as_secs_f64();
    let n_protos: usize = learned.encoders.iter().map(|e| e.prototypes.len()).sum();
    let raw = (n_protos * encs[0].dim() * 2) as u64
        + learned
            .images
            .iter()
            .map(|i| i.thumbnail.len() as u64)
            .sum::<u64>();
    let disk = bank.disk_size().unwrap();

    println!("| measure | value | target | met |");
    println!("|---|---|---|---|");
    println!("| 32 bare encoder forwards (dinov2-s14, short side 448) | {bare:.2} s | | |");
    println!(
        "| add: 32 images end to end | {total:.2} s (encoder {:.2} s, decode+thumbnails {:.2} s, pooling {:.2} s) | | |",
        learned.encode_time.as_secs_f64(),
        learned.decode_time.as_secs_f64(),
        learned.pool_time.as_secs_f64()
    );
    let ratio = total / bare;
    println!(
        "| add ÷ bare encoder | {ratio:.3}× | ≤ 1.2× | {} |",
        if ratio <= 1.2 { "yes" } else { "no" }
    );
    let size_ratio = disk as f64 / raw as f64;
    println!(
        "| bank on disk ÷ (f16 vectors + thumbnails), 1 class | {size_ratio:.2}× ({disk} B / {raw} B) | ≤ 1.3× | {} |",
        if size_ratio <= 1.3 { "yes" } else { "no" }
    );
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let home = Home::from_env();
    println!(
        "# ovdiff-bank benchmarks: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        what
    );
    if what == "add" || what == "all" {
        bench_add(&home);
    }
}
