//! Tests of the vocabulary: the stuff rule, candidates from prototypes and f16 rows, the exact scores; `score_timing` times the exact matcher.

use std::time::Instant;

use ndarray::{array, Array2};
use ovdiff_core::prototype::{Prototype, Side};
use ovdiff_core::rows::HalfRows;
use ovdiff_core::threads::threads_or_cores;

use super::*;
use crate::oracle::{random_bank, random_patches, Rng};

fn cand(name: &str, stuff: bool, fg: Array2<f32>, bg: Array2<f32>) -> Candidate {
    Candidate::new(name, stuff, fg, bg)
}

fn none(d: usize) -> Array2<f32> {
    Array2::zeros((0, d))
}

#[test]
fn the_stuff_rule_drops_backgrounds_close_to_stuff() {
    let c09 = (1.0f32 - 0.81).sqrt();
    let cands = vec![
        cand(
            "sky",
            true,
            array![[1.0, 0.0, 0.0]],
            array![[0.0, 1.0, 0.0]],
        ),
        cand(
            "cat",
            false,
            array![[0.0, 0.0, 1.0]],
            array![[0.9, c09, 0.0], [0.8, 0.0, 0.6], [0.0, 2.0, 0.0]],
        ),
    ];
    let v = Vocabulary::new(cands.clone()).unwrap();
    assert_eq!(v.num_classes(), 2);
    assert_eq!(v.num_background(), 2);
    assert_eq!(v.num_foreground(), 2);
    assert_eq!(
        v.dropped_background(),
        &[ProtoRef {
            class: 2,
            side: Side::Background,
            id: 0
        }]
    );
    let kept: Vec<u32> = v
        .segment(0)
        .map(|r| v.proto_ref(r as u32).unwrap().id)
        .collect();
    assert_eq!(kept, vec![1, 2]);
    assert!(v
        .prototypes()
        .rows()
        .into_iter()
        .all(|r| (r.dot(&r) - 1.0).abs() < 1e-6));
    assert!(v.is_stuff(1) && !v.is_stuff(2) && !v.is_stuff(0));
    // the stuff class's own background is never used: sky's [0, 1, 0]
    // is not there, cat's [0, 2, 0] is (normalised)
    let all = Vocabulary::with_stuff_threshold(cands, f32::INFINITY).unwrap();
    assert_eq!(all.num_background(), 3);
    assert!(all.dropped_background().is_empty());
    // a sky-like patch closest to the dropped background prototype is
    // sky, not background; without the rule it would be background
    let s = v.score(array![[0.9, c09, 0.0]].view()).unwrap();
    assert_eq!(s.labels(None), vec![1]);
    let s = all.score(array![[0.9, c09, 0.0]].view()).unwrap();
    assert_eq!(s.labels(None), vec![0]);
}

#[test]
fn bad_vocabularies_are_refused() {
    let e = Vocabulary::new(vec![]).unwrap_err().to_string();
    assert!(e.contains("empty vocabulary"), "{e}");
    let e = Vocabulary::new(vec![cand(
        "a",
        false,
        array![[1.0, 0.0, 0.0]],
        array![[1.0, 0.0]],
    )])
    .unwrap_err();
    assert!(matches!(e, Error::DimensionMismatch { .. }), "{e}");
    let e = Vocabulary::new(vec![
        cand("a", false, array![[1.0, 0.0]], none(2)),
        cand("b", false, array![[1.0, 0.0, 0.0]], none(3)),
    ])
    .unwrap_err();
    assert!(matches!(e, Error::DimensionMismatch { .. }), "{e}");
    let e = Vocabulary::new(vec![cand("a", false, none(2), array![[1.0, 0.0]])]).unwrap_err();
    assert!(e.to_string().contains("no foreground"), "{e}");
    let e = Vocabulary::new(vec![
        cand("a", false, array![[1.0, 0.0]], none(2)),
        cand("a", true, array![[0.0, 1.0]], none(2)),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let e = Vocabulary::new(vec![cand("a", false, array![[f32::NAN, 0.0]], none(2))]).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    let mut c = cand("a", false, array![[1.0, 0.0]], none(2));
    c.fg_ids.push(7);
    assert!(Vocabulary::new(vec![c]).is_err());
    let v = Vocabulary::new(vec![cand("a", false, array![[1.0, 0.0]], none(2))]).unwrap();
    assert!(matches!(
        v.score(array![[1.0, 0.0, 0.0]].view()).unwrap_err(),
        Error::DimensionMismatch { .. }
    ));
}

#[test]
fn candidates_from_prototypes_keep_their_ids() {
    use ovdiff_core::prototype::{Level, Provenance};
    let p = |side, v: Vec<f32>| Prototype {
        level: Level::Part,
        side,
        vector: v,
        support: 1,
        provenance: Provenance {
            image: 0,
            grid_h: 1,
            grid_w: 1,
            region: vec![true],
        },
    };
    let protos = vec![
        p(Side::Foreground, vec![1.0, 0.0]),
        p(Side::Background, vec![0.0, 1.0]),
        p(Side::Foreground, vec![0.6, 0.8]),
    ];
    let c = Candidate::from_prototypes("cat", false, &protos).unwrap();
    assert_eq!((c.fg_ids.clone(), c.bg_ids.clone()), (vec![0, 2], vec![1]));
    assert_eq!(c.fg.to_array().row(1).to_vec(), vec![0.6, 0.8]);
    let mut bad = protos.clone();
    bad[2].vector.push(0.0);
    assert!(Candidate::from_prototypes("cat", false, &bad).is_err());
}

/// The same classes as f32 candidates (through `from_prototypes`) and
/// as f16 rows (through `from_half`), in one stored order that mixes the
/// sides; values are rounded to f16 first so both hold the same numbers.
fn both_ways(rng: &mut Rng, cands: &[Candidate]) -> (Vec<Candidate>, Vec<Candidate>) {
    use half::f16;
    use ovdiff_core::prototype::{Level, Provenance};
    let mut f32s = Vec::new();
    let mut halves = Vec::new();
    for c in cands {
        let (fg, bg) = (c.fg.to_array(), c.bg.to_array());
        let mut stored: Vec<(Side, Vec<f32>)> = fg
            .rows()
            .into_iter()
            .map(|r| (Side::Foreground, r.to_vec()))
            .chain(
                bg.rows()
                    .into_iter()
                    .map(|r| (Side::Background, r.to_vec())),
            )
            .collect();
        for i in (1..stored.len()).rev() {
            stored.swap(i, rng.range(0, i + 1));
        }
        for (_, v) in &mut stored {
            v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
        }
        let protos: Vec<Prototype> = stored
            .iter()
            .map(|(side, v)| Prototype {
                level: Level::Part,
                side: *side,
                vector: v.clone(),
                support: 1,
                provenance: Provenance {
                    image: 0,
                    grid_h: 1,
                    grid_w: 1,
                    region: vec![true],
                },
            })
            .collect();
        f32s.push(Candidate::from_prototypes(&c.name, c.stuff, &protos).unwrap());
        let values: Vec<f32> = stored.iter().flat_map(|(_, v)| v.clone()).collect();
        let rows = HalfRows::from_f32(&values, fg.ncols()).unwrap();
        let sides: Vec<Side> = stored.iter().map(|(s, _)| *s).collect();
        halves.push(Candidate::from_half(&c.name, c.stuff, rows, &sides).unwrap());
    }
    (f32s, halves)
}

#[test]
fn half_rows_score_exactly_like_f32_rows() {
    // The last case has over 4,096 rows: several blocks of both kinds.
    for (seed, (k, d, fg, bg)) in [
        (3, 16, (1, 6), (0, 4)),
        (12, 64, (1, 30), (0, 30)),
        (40, 32, (100, 150), (5, 20)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(100 + seed as u64);
        let cands = random_bank(&mut rng, k, d, fg, bg);
        let (f32s, halves) = both_ways(&mut rng, &cands);
        let a = Vocabulary::new(f32s.clone()).unwrap();
        let b = Vocabulary::new(halves).unwrap();
        assert!(!a.is_half() && b.is_half());
        assert!(!a.dropped_background().is_empty() || k < 4);
        assert_eq!(a.dropped_background(), b.dropped_background());
        assert_eq!(a.num_rows(), b.num_rows());
        for c in 0..=k {
            assert_eq!(a.segment(c), b.segment(c));
        }
        for r in 0..a.num_rows() as u32 {
            assert_eq!(a.proto_ref(r), b.proto_ref(r));
        }
        assert_eq!(a.prototypes(), b.prototypes());
        let patches = random_patches(&mut rng, &f32s, 700);
        let want = a.score(patches.view()).unwrap();
        assert_eq!(want, b.score(patches.view()).unwrap(), "case {seed}");
        let one = b.with_threads(1).score(patches.view()).unwrap();
        assert_eq!(want, one, "case {seed}, one thread");
    }
}

#[test]
fn known_drops_give_the_vocabulary_the_rule_gives() {
    let mut rng = Rng::new(31);
    let cands = random_bank(&mut rng, 12, 24, (3, 9), (2, 9));
    let v = Vocabulary::new(cands.clone()).unwrap();
    assert!(!v.dropped_background().is_empty());
    let gone: std::collections::HashSet<(usize, u32)> = v
        .dropped_background()
        .iter()
        .map(|r| (usize::from(r.class) - 1, r.id))
        .collect();
    let w = Vocabulary::with_known_drops(cands, &|i, id| gone.contains(&(i, id))).unwrap();
    assert_eq!(w.dropped_background(), v.dropped_background());
    assert_eq!(w.prototypes(), v.prototypes());
    for r in 0..v.num_rows() as u32 {
        assert_eq!(w.proto_ref(r), v.proto_ref(r));
    }
}

#[test]
fn half_rows_of_the_wrong_shape_are_refused() {
    let rows = HalfRows::from_f32(&[1.0, 0.0, 0.0, 1.0], 2).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(HalfRows::from_f32(&[1.0, 0.0, 0.0], 2).is_err());
    let one_side = [Side::Foreground];
    assert!(Candidate::from_half("a", false, rows.clone(), &one_side).is_err());
    let c = Candidate::from_half("a", false, rows, &[Side::Background, Side::Foreground]).unwrap();
    assert_eq!((c.fg_ids.clone(), c.bg_ids.clone()), (vec![1], vec![0]));
    assert_eq!((c.num_foreground(), c.num_background()), (1, 1));
    let empty = HalfRows::from_f32(&[], 384).unwrap();
    let c = Candidate::from_half("b", false, empty, &[]).unwrap();
    assert!(
        Vocabulary::new(vec![c]).is_err(),
        "no foreground prototypes"
    );
}

#[test]
fn scores_are_class_maxima_and_an_empty_background_scores_minus_one() {
    let v = Vocabulary::new(vec![
        cand(
            "sky",
            true,
            array![[1.0, 0.0], [0.0, 1.0]],
            array![[0.7, 0.7]],
        ),
        cand("sea", true, array![[-1.0, 0.0]], none(2)),
    ])
    .unwrap();
    assert_eq!(v.num_background(), 0);
    let s = v.score(array![[0.6, 0.8], [-0.6, -0.8]].view()).unwrap();
    assert_eq!(s.scores.column(0).to_vec(), vec![EMPTY_SCORE; 2]);
    assert_eq!(s.best_proto.column(0).to_vec(), vec![NO_PROTO; 2]);
    assert!((s.scores[[0, 1]] - 0.8).abs() < 1e-6);
    assert_eq!(v.proto_ref(s.best_proto[[0, 1]]).unwrap().id, 1);
    assert_eq!(s.labels(None), vec![1, 2]);
    // sky and sea tie at 0: the lower label wins; with the floor, a
    // patch that matches nothing positively is background
    let s = v.score(array![[0.0, -1.0]].view()).unwrap();
    assert_eq!(s.labels(None), vec![1]);
    assert_eq!(s.labels(Some(0.0)), vec![0]);
}

fn time_score(label: &str, classes: usize, protos: usize, n: usize, d: usize) {
    let mut rng = Rng::new(1);
    let t = Instant::now();
    let cands = random_bank(&mut rng, classes, d, (protos, protos + 1), (0, 1));
    let patches = random_patches(&mut rng, &cands, n);
    let (_, halves) = both_ways(&mut rng, &cands);
    let generate = t.elapsed();
    let t = Instant::now();
    let vocab = Vocabulary::new(cands).unwrap();
    let build = t.elapsed();
    eprintln!("{label}: random data {generate:?}, Vocabulary::new {build:?}");
    // f16 rows converted block by block, as a bank or a file is queried
    let half = Vocabulary::new(halves).unwrap();
    for (kind, vocab, bytes) in [("f32", &vocab, 4), ("f16", &half, 2)] {
        for threads in [1, 0] {
            let v = vocab.clone().with_threads(threads);
            v.score(patches.view()).unwrap();
            let reps = 3;
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(v.score(patches.view()).unwrap());
            }
            let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
            let gflop = 2.0 * (n * v.num_rows() * d) as f64 / 1e9;
            eprintln!(
                "{label}: {n} patches × {} prototypes × {d} d, {kind}, threads {}: {ms:.1} ms ({:.1} GFLOP/s)",
                v.num_rows(),
                threads_or_cores(threads),
                gflop / (ms / 1e3),
            );
            // The row scripts/bench collects into docs/benchmarks.md.
            println!(
                "| exact lookup: {n} patches × {classes} classes ({} rows) × {d} d, {kind} rows, {} thread(s) | {ms:.0} ms ({:.0} GFLOP/s; vocabulary {:.0} MiB {kind}) | | |",
                v.num_rows(),
                threads_or_cores(threads),
                gflop / (ms / 1e3),
                (v.num_rows() * d * bytes) as f64 / 1048576.0,
            );
        }
    }
}

/// `cargo test --release -p ovdiff-match --lib -- --ignored --nocapture score_timing`
/// (`OVDIFF_BENCH_10K=1` adds a 10,000-class bank: 1.3M rows, 2 GiB f32)
#[test]
#[ignore = "timing; run in release"]
fn score_timing() {
    time_score("(a) 10 classes", 10, 130, 1024, 384);
    time_score("(b) 1,000 classes", 1000, 130, 1024, 384);
    if std::env::var_os("OVDIFF_BENCH_10K").is_some() {
        time_score("(c) 10,000 classes", 10_000, 130, 1024, 384);
    }
    // the stuff rule at scale: 667 thing classes × 130 backgrounds
    // against 333 stuff classes × 130 foregrounds
    let mut rng = Rng::new(3);
    let cands = random_bank(&mut rng, 1000, 384, (130, 131), (130, 131));
    let t = Instant::now();
    let v = Vocabulary::new(cands).unwrap();
    eprintln!(
        "Vocabulary::new, 1,000 classes with 130 fg + 130 bg each: {:.1} s ({} bg kept, {} dropped)",
        t.elapsed().as_secs_f64(),
        v.num_background(),
        v.dropped_background().len()
    );
}
