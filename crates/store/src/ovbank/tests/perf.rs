//! Performance (release): `cargo test -p ovdiff-store --release --lib
//! ovbank::tests::perf::perf_thousand_classes -- --ignored --nocapture`; the
//! rows `scripts/bench` collects into `docs/benchmarks.md`.

use std::time::{Duration, Instant};

use super::*;

fn proc_status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

#[test]
#[ignore]
fn perf_thousand_classes() {
    let n: usize = std::env::var("OVBANK_PERF_CLASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let bank_path = dir.path().join("bank");
    let t = Instant::now();
    let (bank, enc) = crate::synthetic::perf_bank(&bank_path, n);
    let build_s = t.elapsed();
    println!(
        "perf: built a {n}-class bank through Bank::put_class in {build_s:.2?} (RSS {}, peak {})",
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );

    let out = dir.path().join("big.ovbank");
    let t = Instant::now();
    let stats = export(&bank, None, &out).unwrap();
    let export_time = t.elapsed();
    println!(
        "perf: export {:.2?}: {} bytes ({:.1} MiB), {} prototypes (RSS {}, peak {})",
        t.elapsed(),
        stats.bytes,
        stats.bytes as f64 / 1048576.0,
        stats.prototypes,
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );
    drop(bank);

    let mut best_open = Duration::MAX;
    let mut best_inspect = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let f = OvBankFile::open(&out).unwrap();
        best_open = best_open.min(t.elapsed());
        let t = Instant::now();
        let f2 = OvBankFile::open(&out).unwrap();
        let h = f2.header().section_count;
        let s: u64 = f2.sections().iter().map(|s| s.length).sum();
        let c: u64 = f2
            .classes()
            .iter()
            .map(|c| {
                c.encoders
                    .iter()
                    .map(|e| u64::from(e.prototype_count))
                    .sum::<u64>()
            })
            .sum();
        best_inspect = best_inspect.min(t.elapsed());
        assert!(h > 0 && s > 0 && c == stats.prototypes);
        drop(f);
    }
    println!("perf: open {best_open:.2?}, inspect (open + header + sections + classes) {best_inspect:.2?}");
    let f = OvBankFile::open(&out).unwrap();
    let t = Instant::now();
    let mut acc = 0f32;
    for c in f.classes() {
        let v = f.vectors(&c.name, &enc.fingerprint).unwrap();
        acc += v.row(v.len() - 1).unwrap()[0].to_f32();
    }
    println!(
        "perf: zero-copy view of every block {:.2?} ({acc})",
        t.elapsed()
    );
    let t = Instant::now();
    let report = f.verify().unwrap();
    let verify_time = t.elapsed();
    println!(
        "perf: verify {:.2?} ({} prototypes) (RSS {}, peak {})",
        t.elapsed(),
        report.prototypes,
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );

    let bank2 = Bank::open(&dir.path().join("bank2")).unwrap();
    let t = Instant::now();
    let st = import(&f, &bank2, OnConflict::Skip).unwrap();
    println!(
        "perf: import {:.2?} ({} classes) (RSS {}, peak {})",
        t.elapsed(),
        st.added.len(),
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );
    let import_time = t.elapsed();
    let t = Instant::now();
    merge(&[&f], &dir.path().join("m.ovbank"), OnConflict::Skip).unwrap();
    let merge_time = t.elapsed();
    println!("perf: merge of the file into a copy {merge_time:.2?}");

    // The rows scripts/bench collects into docs/benchmarks.md.
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let met = |d: Duration, limit: f64| {
        if d.as_secs_f64() <= limit {
            "yes"
        } else {
            "**no**"
        }
    };
    println!("| measure ({n} classes × 130 × 384 f16 + a 15 KB thumbnail each, {:.0} MiB file) | value | target | met |", stats.bytes as f64 / 1048576.0);
    println!("|---|---|---|---|");
    println!(
        "| build the bank (Bank::put_class per class) | {} | | |",
        s(build_s)
    );
    println!(
        "| export | {} | ≤ 2 s | {} |",
        s(export_time),
        met(export_time, 2.0)
    );
    println!(
        "| import | {} | ≤ 2 s | {} |",
        s(import_time),
        met(import_time, 2.0)
    );
    println!(
        "| open (header, sections, metadata) | {} | ≤ 0.5 s | {} |",
        ms(best_open),
        met(best_open, 0.5)
    );
    println!(
        "| inspect | {} | ≤ 50 ms | {} |",
        ms(best_inspect),
        met(best_inspect, 0.05)
    );
    println!("| verify (every checksum) | {} | | |", ms(verify_time));
    println!("| merge (the file into a copy) | {} | | |", ms(merge_time));
}
