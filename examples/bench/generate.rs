//! `bench generate` and `bench generate-memory`: sampling with the tiny SD export.

use ovdiff_core::Home;
use ovdiff_models::runtime::{Runtime, RuntimeOptions};

use crate::heap::{heap_reset, HEAP_PEAK};
use crate::sample::proc_status_kib;

/// Sampling with the tiny SD export: where the time goes, part by part,
/// and the share outside the model calls, at 64 px and at OVDiff's 512 px;
/// then the peak memory of n = 8 against n = 32.
///
/// Each size is generated `runs` times after a warm-up, each time into a
/// fresh cache folder, and the run with the median total is shown.
/// `OVDIFF_BENCH_GENERATE_RUNS` overrides the number of runs at 64 px
/// (default 15; 512 px runs a third as many, at least 3).
pub(crate) fn bench_generate(home: &Home) {
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
pub(crate) fn loop_floor(
    batch: usize,
    side: usize,
    steps: usize,
    batches: usize,
) -> std::time::Duration {
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
pub(crate) fn bench_generate_memory(home: &Home, n: usize, size: u32) {
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
