//! Fuzzing without cargo-fuzz: the seed corpus of `fuzz/`, and random
//! mutations of it for a while (`scripts/fuzz` runs [`fuzz_loop`] when
//! cargo-fuzz is unavailable), with the checks of the `fuzz/` target:
//! mutants that pass what `import` checks are imported into a fresh bank,
//! which must stay within 16× the input's size beyond an empty bank.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ovdiff_core::rng::SplitMix64;

use super::golden::golden_builds;
use super::*;

fn corpus_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("fuzz/corpus/ovbank_read")
}

/// Writes the fuzz seed corpus (valid files and mutations of them). Run with
/// `cargo test -p ovdiff-store --lib ovbank::tests::fuzz::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let out = corpus_dir();
    std::fs::create_dir_all(&out).unwrap();
    let good = sample_bytes(dir.path());
    let (encoders, builds) = golden_builds();
    let golden = dir.path().join("g.ovbank");
    write_builds(&golden, &encoders, &builds);
    let empty = dir.path().join("e.ovbank");
    write_builds(&empty, &[], &[]);
    let mut secs = sections_of(&good);
    let mut ann = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    ann.extend_from_slice(&64u64.to_le_bytes());
    ann.extend_from_slice(&3u64.to_le_bytes());
    ann.extend_from_slice(&[1, 0, 0, 0, b'0', 1, 0, 0, 0, b'h']);
    ann.resize(67, 7);
    secs.push((7, 0, ann));
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("sample", good.clone()),
        ("golden", std::fs::read(&golden).unwrap()),
        ("empty-bank", std::fs::read(&empty).unwrap()),
        ("with-ann", assemble(&secs)),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("flipped-prototypes", {
            let mut b = good.clone();
            let f = OvBankFile::from_bytes(good.clone()).unwrap();
            let s = f.sections()[3];
            b[s.offset as usize] ^= 0x40;
            fuzz_repair_checksums(&mut b);
            b
        }),
        ("header-only", good[..64].to_vec()),
    ];
    for (name, bytes) in seeds {
        std::fs::write(out.join(format!("{name}.ovbank")), bytes).unwrap();
    }
}

/// One random mutation of `b`.
fn mutate(b: &mut Vec<u8>, rng: &mut SplitMix64) {
    let mut next = || rng.next_u64();
    let len = b.len().max(1) as u64;
    match next() % 8 {
        0 => {
            let i = (next() % len) as usize;
            if let Some(x) = b.get_mut(i) {
                *x ^= 1 << (next() % 8);
            }
        }
        1 => {
            let i = (next() % len) as usize;
            if let Some(x) = b.get_mut(i) {
                *x = [0, 0xff, 0x7f, 0x80, 1][(next() % 5) as usize];
            }
        }
        2 => {
            let i = (next() % len) as usize;
            let v = [u32::MAX, 0, 1, 64, 0x8000_0000][(next() % 5) as usize];
            if i + 4 <= b.len() {
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        3 => b.truncate((next() % len) as usize),
        4 => {
            let i = (next() % len) as usize;
            let n = (next() % 16) as usize;
            let i = i.min(b.len());
            b.splice(i..i, std::iter::repeat_n(next() as u8, n));
        }
        5 => {
            let i = (next() % len) as usize;
            let n = (next() % 32) as usize;
            let end = (i + n).min(b.len());
            b.drain(i.min(end)..end);
        }
        6 => {
            // Copy a chunk from one place to another.
            let (i, j) = ((next() % len) as usize, (next() % len) as usize);
            let n = (next() % 64) as usize;
            if i + n <= b.len() && j + n <= b.len() {
                let chunk = b[i..i + n].to_vec();
                b[j..j + n].copy_from_slice(&chunk);
            }
        }
        _ => {
            let i = (next() % len) as usize;
            let v = [u64::MAX, 1 << 40, 0][(next() % 3) as usize];
            if i + 8 <= b.len() {
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// What a bank may hold after an import, per input byte, beyond an empty
/// bank (issue #20; the `fuzz/` target checks the same).
const WRITE_FACTOR: u64 = 16;

/// The seed corpus of `fuzz/` and the hostile-file kit
/// (`tests/fixtures/hostile`, valid checksums around hostile contents), or
/// the sample file when both are missing.
fn seeds() -> Vec<Vec<u8>> {
    let hostile = corpus_dir().join("../../../tests/fixtures/hostile");
    let mut seeds: Vec<Vec<u8>> = [corpus_dir(), hostile]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "ovbank"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    if seeds.is_empty() {
        let dir = tempfile::tempdir().unwrap();
        seeds.push(sample_bytes(dir.path()));
    }
    seeds
}

/// Counts of one mutation loop.
#[derive(Debug, Default)]
struct LoopStats {
    runs: u64,
    opened: u64,
    verified: u64,
    imported: u64,
    max_ratio: f64,
    problems: u64,
}

/// Mutates `seeds` until `done` says so, half the time behind repaired
/// checksums; opens, walks and verifies every mutant, and imports every one
/// that passes the checks into a fresh bank under `tmp`, whose size must
/// stay within [`WRITE_FACTOR`]× the mutant beyond an empty bank's.
fn mutation_loop(
    seeds: &[Vec<u8>],
    rng: &mut SplitMix64,
    tmp: &Path,
    mut done: impl FnMut(&LoopStats) -> bool,
) -> LoopStats {
    let bank = tmp.join("bank");
    let empty = fuzz_import_overhead(tmp).unwrap();
    let mut s = LoopStats::default();
    while !done(&s) {
        for _ in 0..64 {
            let mut b = seeds[rng.below(seeds.len())].clone();
            let rounds = 1 + rng.below(4);
            for _ in 0..rounds {
                mutate(&mut b, rng);
            }
            if rng.next_u64().is_multiple_of(2) {
                fuzz_repair_checksums(&mut b);
            }
            if let Ok(f) = OvBankFile::from_bytes(b.clone()) {
                s.opened += 1;
                s.verified += u64::from(f.verify().is_ok());
            }
            exercise_untrusted(b.clone());
            let len = b.len() as u64;
            if let Some(o) = exercise_import(b, &bank) {
                s.imported += u64::from(o.imported);
                let written = o.bank_bytes.saturating_sub(empty);
                assert!(
                    written <= WRITE_FACTOR * len,
                    "a mutant of {len} bytes made a bank of {} bytes (an empty one: {empty})",
                    o.bank_bytes
                );
                s.max_ratio = s.max_ratio.max(written as f64 / len.max(1) as f64);
                s.problems += u64::from(!o.bank_problems.is_empty());
            }
            let _ = std::fs::remove_dir_all(&bank);
            s.runs += 1;
        }
    }
    s
}

/// A short run of the mutation loop: no panic, and the imports stay within
/// the write bound.
#[test]
fn a_short_mutation_loop_with_imports_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = SplitMix64::new(20);
    let s = mutation_loop(&seeds(), &mut rng, tmp.path(), |s| s.runs >= 256);
    assert!(s.verified > 0 && s.imported > 0, "{s:?}");
}

/// Mutates the seed corpus for `OVBANK_FUZZ_SECS` seconds (default 60) with
/// [`mutation_loop`]. Prints the number of runs. Used by `scripts/fuzz` when
/// cargo-fuzz is unavailable.
#[test]
#[ignore]
fn fuzz_loop() {
    let secs: u64 = std::env::var("OVBANK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seeds = seeds();
    let seed0 = 0x9e37_79b9_7f4a_7c15u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = SplitMix64::new(seed0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tmp = tempfile::tempdir().unwrap();
    let s = mutation_loop(&seeds, &mut rng, tmp.path(), |_| Instant::now() >= deadline);
    println!(
        "fuzz_loop: {} runs in {secs} s survived ({} opened, {} verified, {} imported, \
         largest write ratio {:.2}, {} banks with verify_bank problems; rng seed {seed0:#x})",
        s.runs, s.opened, s.verified, s.imported, s.max_ratio, s.problems
    );
}

/// A `/proc/self/status` figure in KiB (Linux), 0 elsewhere.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Replays every file in `OVBANK_FUZZ_REPLAY` (a libFuzzer corpus folder)
/// as the `fuzz/` target does, in a plain process, and prints what the
/// repaired inputs met: refused at open, by `verify`'s layout and checksum
/// checks, by the content check, or imported; the largest write ratio; and
/// the largest RSS any one input added (Linux: the peak is reset before each
/// input through `/proc/self/clear_refs`) and the process's peak RSS.
#[test]
#[ignore]
fn replay_corpus() {
    let Some(dir) = std::env::var_os("OVBANK_FUZZ_REPLAY") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let bank = tmp.path().join("bank");
    let empty = fuzz_import_overhead(tmp.path()).unwrap();
    let mut n = [0u64; 5]; // not opened, not verified, content refused, imported, files
    let (mut max_ratio, mut max_input_rss, mut max_len) = (0f64, 0u64, 0usize);
    let mut problems: Vec<(PathBuf, String)> = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let Ok(mut b) = std::fs::read(e.path()) else {
            continue;
        };
        n[4] += 1;
        max_len = max_len.max(b.len());
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = status_kib("VmRSS:");
        exercise_untrusted(b.clone());
        fuzz_repair_checksums(&mut b);
        exercise_untrusted(b.clone());
        let len = b.len() as u64;
        match OvBankFile::from_bytes(b.clone()) {
            Err(_) => n[0] += 1,
            Ok(f) => match f.verify().and_then(|_| f.check_thumbnails()) {
                Err(OvBankError::Content { .. }) => n[2] += 1,
                Err(_) => n[1] += 1,
                Ok(()) => {
                    if let Some(o) = exercise_import(b, &bank) {
                        n[3] += u64::from(o.imported);
                        let written = o.bank_bytes.saturating_sub(empty);
                        assert!(written <= WRITE_FACTOR * len, "{:?}", e.path());
                        max_ratio = max_ratio.max(written as f64 / len.max(1) as f64);
                        if let Some(p) = o.bank_problems.first() {
                            problems.push((e.path(), p.clone()));
                        }
                    }
                }
            },
        }
        let _ = std::fs::remove_dir_all(&bank);
        max_input_rss = max_input_rss.max(status_kib("VmHWM:").saturating_sub(before));
    }
    println!(
        "replay: {} inputs (largest {max_len} bytes): {} not opened, {} refused by verify, \
         {} refused by the content check, {} imported; largest write ratio {max_ratio:.3}; \
         largest RSS added by one input {max_input_rss} KiB; process peak RSS {} KiB; \
         {} imported banks with verify_bank problems{}",
        n[4],
        n[0],
        n[1],
        n[2],
        n[3],
        status_kib("VmHWM:"),
        problems.len(),
        problems.first().map_or(String::new(), |(f, p)| format!(
            " (first: {}: {p})",
            f.display()
        ))
    );
}
