//! Fuzzing without cargo-fuzz: the seed corpus of `fuzz/`, and random
//! mutations of it for a while (`scripts/fuzz` runs [`fuzz_loop`] when
//! cargo-fuzz is unavailable).

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

/// Mutates the seed corpus for `OVBANK_FUZZ_SECS` seconds (default 60),
/// half the time behind repaired checksums, and opens, walks and verifies
/// every mutant. Prints the number of runs. Used by `scripts/fuzz` when
/// cargo-fuzz is unavailable.
#[test]
#[ignore]
fn fuzz_loop() {
    let secs: u64 = std::env::var("OVBANK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if seeds.is_empty() {
        let dir = tempfile::tempdir().unwrap();
        seeds.push(sample_bytes(dir.path()));
    }
    let seed0 = 0x9e37_79b9_7f4a_7c15u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = SplitMix64::new(seed0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut runs, mut opened, mut verified) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..64 {
            let mut b = seeds[rng.below(seeds.len())].clone();
            let rounds = 1 + rng.below(4);
            for _ in 0..rounds {
                mutate(&mut b, &mut rng);
            }
            if rng.next_u64().is_multiple_of(2) {
                fuzz_repair_checksums(&mut b);
            }
            if let Ok(f) = OvBankFile::from_bytes(b.clone()) {
                opened += 1;
                verified += u64::from(f.verify().is_ok());
            }
            exercise_untrusted(b);
            runs += 1;
        }
    }
    println!(
        "fuzz_loop: {runs} runs in {secs} s survived ({opened} opened, {verified} verified; \
         rng seed {seed0:#x})"
    );
}
