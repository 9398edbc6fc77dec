//! The size of a bank on disk against its content.

use super::*;

#[test]
fn disk_size_grows_with_content() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_with(dir.path(), &[encoder('a', 64)]);
    let empty = bank.disk_size().unwrap();
    assert!(empty > 0);
    bank.put_class(&build("a", &[('a', 200, 64)], 1), false)
        .unwrap();
    let full = bank.disk_size().unwrap();
    assert!(full >= empty + 200 * 64 * 2, "{empty} -> {full}");
}

/// Bank size for 3 classes (or `OVDIFF_SIZE_CLASSES`) × 130 prototypes ×
/// 384 dims plus 4 thumbnails of ~15 KB each per class, against the raw
/// f16 + thumbnail bytes.
#[test]
fn size_overhead_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let bank = open_with(&path, &[encoder('a', 384)]);
    let mut raw = 0u64;
    // OVDIFF_SIZE_CLASSES=100 measures a larger bank (docs/benchmarks.md).
    let n: usize = std::env::var("OVDIFF_SIZE_CLASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for k in 0..n {
        let name = &format!("class {k}");
        let mut b = build(name, &[('a', 130, 384)], k as u64);
        for (i, t) in b.thumbnails.iter_mut().enumerate() {
            *t = noise(100 + i as u64 + 10 * k as u64, 15_000)
                .iter()
                .map(|&x| (x * 127.0) as i8 as u8)
                .collect();
        }
        raw += 130 * 384 * 2 + b.thumbnails.iter().map(|t| t.len() as u64).sum::<u64>();
        bank.put_class(&b, false).unwrap();
    }
    let live = bank.disk_size().unwrap();
    drop(bank);
    let bank = Bank::open(&path).unwrap();
    let reopened = bank.disk_size().unwrap();
    eprintln!(
        "size report: raw {raw} B, bank {live} B ({:.2}x), after reopen {reopened} B ({:.2}x)",
        live as f64 / raw as f64,
        reopened as f64 / raw as f64
    );
    for entry in std::fs::read_dir(&path).unwrap() {
        let e = entry.unwrap();
        eprintln!("  {:?} {}", e.file_name(), e.metadata().unwrap().len());
    }
    let ratio = reopened.max(live) as f64 / raw as f64;
    // The row scripts/bench collects into docs/benchmarks.md.
    println!(
        "| bank on disk ÷ (f16 vectors + thumbnails), {n} classes (synthetic) | {ratio:.2}× | ≤ 1.3× | {} |",
        if ratio <= 1.3 { "yes" } else { "**no**" }
    );
    assert!(live >= raw);
}
