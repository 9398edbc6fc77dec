//! `bench segment-memory N`: one `Segmenter` segments the 448 px image
//! with 10 classes N times in a loop; prints the process RSS and the heap
//! the program holds (not ONNX Runtime's) along the way, so that growth
//! can be told apart: a Rust leak grows the heap, ONNX Runtime or the C
//! allocator grow only the RSS.

use std::time::Instant;

use ovdiff_core::Home;
use ovdiff_segment::{Query, Segmenter, SegmenterOptions};

use crate::heap::heap_reset;
use crate::segment::sample_kit;

/// VmRSS of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn bench_segment_memory(home: &Home, n: usize) {
    let data = tempfile::tempdir().unwrap();
    let (bank_dir, img) = sample_kit(home, data.path());
    let seg = Segmenter::open(&bank_dir, SegmenterOptions::new(home.clone())).unwrap();
    let q = Query::all_classes();
    println!();
    println!("| segment-memory: iteration | RSS | program heap | s/image |");
    println!("|---|---|---|---|");
    let t = Instant::now();
    let mut at10 = 0;
    let mut most = 0;
    for i in 1..=n {
        let s = seg.segment(img.as_path(), &q).unwrap();
        std::hint::black_box(&s.labels);
        drop(s);
        let rss = rss_kib();
        if i >= 10 {
            most = most.max(rss);
        }
        if i == 10 {
            at10 = rss;
        }
        if i == 1 || i == 10 || i % 25 == 0 || i == n {
            println!(
                "| {i} | {} MiB | {:.1} MiB | {:.2} |",
                rss / 1024,
                heap_reset() as f64 / (1 << 20) as f64,
                t.elapsed().as_secs_f64() / i as f64
            );
        }
    }
    let growth = 100.0 * (most as f64 - at10 as f64) / at10.max(1) as f64;
    println!(
        "| segment-memory: {n} segmentations, RSS growth after the first 10 | {growth:+.1}% | ≤ +5% | {} |",
        if growth <= 5.0 { "yes" } else { "no" }
    );
}
