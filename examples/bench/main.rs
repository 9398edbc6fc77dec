//! Benchmarks that print figures (not timed tests):
//! `cargo run --release --example bench -- [add|segment|serve [quick]|generate|generate-memory N SIZE|in-place|all|lookup ENCODER_MS|prefilter CLIP_DIR]`.
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

mod add;
mod generate;
mod heap;
mod in_place;
mod memory;
mod prefilter;
mod sample;
mod segment;
mod serve;

use ovdiff_core::Home;

use crate::add::bench_add;
use crate::generate::{bench_generate, bench_generate_memory};
use crate::in_place::bench_in_place;
use crate::memory::bench_segment_memory;
use crate::prefilter::bench_prefilter;
use crate::segment::{bench_segment, lookup_at_scale};
use crate::serve::{bench_serve, bench_serve_soak};

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
    if what == "segment-memory" {
        let n = std::env::args()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        bench_segment_memory(&home, n);
    }
    if what == "serve-soak" {
        // only the serve soak, for SECONDS (default 300)
        let secs = std::env::args()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        bench_serve_soak(&home, std::time::Duration::from_secs(secs));
    }
    if what == "serve" {
        // `bench serve quick`: no 5-minute soak
        let quick = std::env::args().nth(2).as_deref() == Some("quick");
        bench_serve(&home, quick);
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
