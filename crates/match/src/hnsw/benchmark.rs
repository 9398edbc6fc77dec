//! The HNSW benchmark: build time, speed against the exact (and IVF) engine and label agreement on synthetic clustered banks; `scripts/bench` collects its table rows. Ignored: run it in release.

use std::fs;
use std::time::Instant;

use ovdiff_core::threads::threads_or_cores;

use super::tests::{clustered_bank, near_patches};
use super::*;
use crate::oracle::Rng;
use crate::vocabulary::Vocabulary;

/// Synthetic bank of `classes` classes (100 foreground + 30 background
/// prototypes each, every 5th class stuff), 384 d.
fn bench_bank(classes: usize, seed: u64) -> Vocabulary {
    let mut rng = Rng::new(seed);
    Vocabulary::new(clustered_bank(&mut rng, classes, 384, 100, 30, 5)).unwrap()
}

fn rss_mib() -> f64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The fastest of `reps` runs of `a` and of `b`, interleaved (ms), so
/// that both see the same machine load.
fn time_pair<A, B>(reps: usize, mut a: impl FnMut() -> A, mut b: impl FnMut() -> B) -> (f64, f64) {
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(a());
        ta = ta.min(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        std::hint::black_box(b());
        tb = tb.min(t.elapsed().as_secs_f64() * 1e3);
    }
    (ta, tb)
}

/// `cargo test --release -p ovdiff-match --lib -- --ignored --nocapture hnsw_benchmark`
/// (`OVDIFF_HNSW_BENCH_CLASSES=10,100` to choose the sizes,
/// `OVDIFF_HNSW_BENCH_PARAMS=m,efc,efs,efu,k` the parameters,
/// `OVDIFF_HNSW_BENCH_EF=64:1,128:64` search widths `ef_search:ef_upper`
/// to try on each graph).
#[test]
#[ignore = "timing; run in release"]
fn hnsw_benchmark() {
    let sizes: Vec<usize> = std::env::var("OVDIFF_HNSW_BENCH_CLASSES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 300, 1000]);
    let params = std::env::var("OVDIFF_HNSW_BENCH_PARAMS")
        .ok()
        .and_then(|s| {
            let v: Vec<usize> = s.split(',').filter_map(|v| v.trim().parse().ok()).collect();
            (v.len() == 5).then(|| HnswParams {
                m: v[0],
                ef_construction: v[1],
                ef_search: v[2],
                ef_upper: v[3],
                k: v[4],
            })
        })
        .unwrap_or_default();
    let efs: Vec<(usize, usize)> = std::env::var("OVDIFF_HNSW_BENCH_EF")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|v| {
                    let (a, b) = v.split_once(':')?;
                    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_else(|| vec![(params.ef_search, params.ef_upper)]);
    let threads = threads_or_cores(0);
    eprintln!("{params:?}, search ef {efs:?}, {threads} threads");
    for classes in sizes {
        let vocab = bench_bank(classes, 100 + classes as u64);
        let rows = vocab.prototypes().nrows();
        let patches = near_patches(&mut Rng::new(7), &vocab, 1024);
        let rss0 = rss_mib();
        let t = Instant::now();
        let mut hnsw = HnswMatcher::from_vocabulary(&vocab, params).unwrap();
        let total = t.elapsed();
        let rss = rss_mib() - rss0;
        let st = hnsw.stats();
        if std::env::var_os("OVDIFF_HNSW_BENCH_ORPHANS").is_some() {
            for (ef, up) in [(16, 4), (32, 8), (64, 32), (128, 64)] {
                let t = Instant::now();
                let o = hnsw.find_orphans(None, ef, up).len();
                eprintln!(
                    "  orphan check at ef {ef}, ef_upper {up}: {o} orphans, {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        let reps = if rows < 50_000 { 7 } else { 3 };
        let exact = vocab.score(patches.view()).unwrap();
        let le = exact.labels(None);
        eprintln!(
            "{classes} classes, {rows} rows: build {:.1} s (insert {:.1} s, orphan check {:.1} s, \
             {} orphans), RSS +{rss:.0} MiB",
            total.as_secs_f64(),
            st.build.as_secs_f64(),
            st.orphan_check.as_secs_f64(),
            st.orphans,
        );
        for &(ef, up) in &efs {
            hnsw.set_search_params(ef, up, params.k).unwrap();
            let (exact_ms, hnsw_ms) = time_pair(
                reps,
                || vocab.score(patches.view()).unwrap(),
                || hnsw.score(patches.view()).unwrap(),
            );
            let approx = hnsw.score(patches.view()).unwrap();
            let la = approx.labels(None);
            // every 4th patch is the midpoint of two prototypes
            let (mut near_ok, mut mid_ok, mut mids) = (0, 0, 0);
            let mut err = 0.0f32;
            for (i, (&a, &b)) in le.iter().zip(&la).enumerate() {
                let ok = (a == b) as usize;
                if i % 4 == 3 {
                    mids += 1;
                    mid_ok += ok;
                } else {
                    near_ok += ok;
                }
                let l = b as usize;
                err = err.max((exact.scores[[i, l]] - approx.scores[[i, l]]).abs());
            }
            let n = le.len();
            eprintln!(
                "  ef {ef}, ef_upper {up}, k {}: hnsw {hnsw_ms:.0} ms, exact {exact_ms:.0} ms ({:.2}×); label agreement {:.2}% \
                 (near-prototype {:.2}%, midpoints {:.2}%); max winning-score error {err:.1e}",
                params.k,
                exact_ms / hnsw_ms,
                100.0 * (near_ok + mid_ok) as f64 / n as f64,
                100.0 * near_ok as f64 / (n - mids) as f64,
                100.0 * mid_ok as f64 / mids as f64,
            );
            // The row scripts/bench collects into docs/benchmarks.md.
            let agree = 100.0 * (near_ok + mid_ok) as f64 / n as f64;
            println!(
                "| HNSW vs exact: 1,024 patches × {classes} classes ({rows} rows), ef {ef}: build {:.0} s, HNSW {hnsw_ms:.0} ms vs exact {exact_ms:.0} ms ({:.2}×), RSS +{rss:.0} MiB; pixel agreement | {agree:.2}% | ≥ 99.5% | {} |",
                total.as_secs_f64(),
                exact_ms / hnsw_ms,
                if agree >= 99.5 { "yes" } else { "**no**" }
            );
        }
        // The IVF engine on the same bank and patches.
        let t = Instant::now();
        let ivf = crate::IvfMatcher::from_vocabulary(&vocab, Default::default()).unwrap();
        let ivf_build = t.elapsed().as_secs_f64();
        let (exact_ms, ivf_ms) = time_pair(
            reps,
            || vocab.score(patches.view()).unwrap(),
            || ivf.score(patches.view()).unwrap(),
        );
        let li = ivf.score(patches.view()).unwrap().labels(None);
        let (mut near_ok, mut mid_ok, mut mids) = (0, 0, 0);
        for (i, (&a, &b)) in le.iter().zip(&li).enumerate() {
            if i % 4 == 3 {
                mids += 1;
                mid_ok += (a == b) as usize;
            } else {
                near_ok += (a == b) as usize;
            }
        }
        let n = le.len();
        let agree = 100.0 * (near_ok + mid_ok) as f64 / n as f64;
        eprintln!(
            "  IVF ({} lists, {} probes): build {ivf_build:.1} s, ivf {ivf_ms:.0} ms, exact {exact_ms:.0} ms ({:.2}×); \
             label agreement {agree:.2}% (near-prototype {:.2}%, midpoints {:.2}%)",
            ivf.stats().lists,
            ivf.params().probes,
            exact_ms / ivf_ms,
            100.0 * near_ok as f64 / (n - mids) as f64,
            100.0 * mid_ok as f64 / mids as f64,
        );
        println!(
            "| IVF vs exact: 1,024 patches × {classes} classes ({rows} rows), {} probes: build {ivf_build:.0} s, IVF {ivf_ms:.0} ms vs exact {exact_ms:.0} ms ({:.2}×); pixel agreement | {agree:.2}% | ≥ 99.5% | {} |",
            ivf.params().probes,
            exact_ms / ivf_ms,
            if agree >= 99.5 { "yes" } else { "**no**" }
        );
        drop(ivf);
        hnsw.set_search_params(params.ef_search, params.ef_upper, params.k)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.hnsw");
        let t = Instant::now();
        hnsw.save(&path).unwrap();
        let save = t.elapsed();
        let size = fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
        let t = Instant::now();
        let fp = Fingerprint::new(&vocab, &params);
        let fp_time = t.elapsed();
        let back = HnswMatcher::load(&path, &fp).unwrap().unwrap();
        let load = back.stats().loaded.unwrap();
        eprintln!(
            "  cache {size:.0} MiB: save {:.1} s, fingerprint {:.2} s, load {:.1} s",
            save.as_secs_f64(),
            fp_time.as_secs_f64(),
            load.as_secs_f64(),
        );
    }
}
