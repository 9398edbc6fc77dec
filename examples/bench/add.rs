//! `bench add`: a class from 32 real images.

use image::RgbImage;
use ovdiff_core::Home;
use ovdiff_learn::builder::BuildOptions;
use ovdiff_learn::split::SplitMethod;
use ovdiff_learn::support_set::{self, LearnOptions};
use ovdiff_models::features::{preprocess, Encoder};
use ovdiff_models::runtime::{Runtime, RuntimeOptions};
use ovdiff_store::bank::{Bank, ClassSource, EncoderInfo};
use std::time::Instant;

use crate::sample::{sample_images, support_images};

pub(crate) fn bench_add(home: &Home) {
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
    let learned =
        support_set::learn(&support_images(&files), &mut encs, &opts, &mut |_| {}).unwrap();
    let build = learned.class_build(
        "bench",
        false,
        ClassSource::Images {
            dir: dir.display().to_string(),
        },
        SplitMethod::Saliency,
    );
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
