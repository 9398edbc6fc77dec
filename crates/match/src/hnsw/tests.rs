//! Tests of the HNSW matcher: agreement with the exact engine on clustered banks, exactness on small ones, orphans, the cache file (round trip, every rejection, its pinned bytes).

use std::fs;
use std::time::Duration;

use ndarray::Array2;
use ovdiff_core::grid::l2_normalize;
use sha2::{Digest, Sha256};

use super::cache::{header_prefix, LoadFail};
use super::graph::UpperLayer;
use super::*;
use crate::oracle::Rng;
use crate::vocabulary::{Candidate, Vocabulary, EMPTY_SCORE, NO_PROTO};

/// `base` plus Gaussian noise of `sigma` per dimension, normalised in f32
/// (the draws of [`Rng::noisy`], which normalises in f64, would give other
/// banks than the ones these tests were tuned on).
pub(super) fn noisy_f32(rng: &mut Rng, base: &[f32], sigma: f32) -> Vec<f32> {
    let mut v: Vec<f32> = base
        .iter()
        .map(|&x| x + sigma * rng.normal() as f32)
        .collect();
    l2_normalize(&mut v);
    v
}

/// A random unit vector, drawn as [`noisy_f32`] draws.
pub(super) fn unit_f32(rng: &mut Rng, d: usize) -> Vec<f32> {
    noisy_f32(rng, &vec![0.0; d], 1.0)
}

/// A clustered bank: every class has a centre (a shared component plus
/// its own direction, so classes are correlated as real features are),
/// foreground prototypes in a few parts around it, and background
/// prototypes around a context centre; every `stuff_every`-th class is
/// stuff.
pub(super) fn clustered_bank(
    rng: &mut Rng,
    classes: usize,
    d: usize,
    fg: usize,
    bg: usize,
    stuff_every: usize,
) -> Vec<Candidate> {
    let shared = unit_f32(rng, d);
    let around = |rng: &mut Rng, w: f32| -> Vec<f32> {
        let own = unit_f32(rng, d);
        let v: Vec<f32> = shared.iter().zip(&own).map(|(s, o)| w * s + o).collect();
        noisy_f32(rng, &v, 0.0)
    };
    let sigma = 0.7 / (d as f32).sqrt();
    (0..classes)
        .map(|c| {
            let centre = around(rng, 0.6);
            let ctx = around(rng, 0.6);
            let parts: Vec<Vec<f32>> = (0..4).map(|_| noisy_f32(rng, &centre, sigma)).collect();
            let mut f = Array2::zeros((fg, d));
            for mut row in f.rows_mut() {
                let part = &parts[rng.range(0, parts.len())];
                row.assign(&ndarray::ArrayView1::from(&noisy_f32(
                    rng,
                    part,
                    sigma * 0.7,
                )));
            }
            let mut b = Array2::zeros((bg, d));
            for mut row in b.rows_mut() {
                row.assign(&ndarray::ArrayView1::from(&noisy_f32(rng, &ctx, sigma)));
            }
            let stuff = stuff_every > 0 && c % stuff_every == stuff_every - 1;
            Candidate::new(format!("class{c}"), stuff, f, b)
        })
        .collect()
}

/// Patches near the prototypes: 3/4 a prototype plus noise, 1/4 the
/// midpoint of two prototypes of different columns plus noise (near
/// ties between classes).
pub(super) fn near_patches(rng: &mut Rng, vocab: &Vocabulary, n: usize) -> Array2<f32> {
    let p = vocab.prototypes();
    let (rows, d) = p.dim();
    let sigma = 0.5 / (d as f32).sqrt();
    let mut out = Array2::zeros((n, d));
    for (i, mut row) in out.rows_mut().into_iter().enumerate() {
        let a = p.row(rng.range(0, rows)).to_vec();
        let base: Vec<f32> = if i % 4 == 3 {
            let b = p.row(rng.range(0, rows));
            a.iter().zip(b.iter()).map(|(x, y)| x + y).collect()
        } else {
            a
        };
        row.assign(&ndarray::ArrayView1::from(&noisy_f32(rng, &base, sigma)));
    }
    out
}

fn agreement(a: &Scores, b: &Scores) -> f64 {
    let (la, lb) = (a.labels(None), b.labels(None));
    la.iter().zip(&lb).filter(|(x, y)| x == y).count() as f64 / la.len().max(1) as f64
}

fn small_params() -> HnswParams {
    HnswParams {
        m: 12,
        ef_construction: 64,
        ef_search: 48,
        ef_upper: 16,
        k: 32,
    }
}

#[test]
fn params_are_validated() {
    assert!(HnswParams::default().validate().is_ok());
    for p in [
        HnswParams {
            m: 1,
            ..Default::default()
        },
        HnswParams {
            m: 300,
            ..Default::default()
        },
        HnswParams {
            k: 0,
            ..Default::default()
        },
        HnswParams {
            ef_search: 0,
            ..Default::default()
        },
    ] {
        assert!(p.validate().is_err(), "{p:?}");
    }
}

#[test]
fn agrees_with_the_exact_engine_on_clustered_banks() {
    let mut rng = Rng::new(11);
    for (classes, d, fg, bg) in [(40, 64, 24, 8), (120, 48, 16, 6)] {
        let cands = clustered_bank(&mut rng, classes, d, fg, bg, 5);
        let vocab = Vocabulary::new(cands.clone()).unwrap();
        let hnsw = HnswMatcher::new(cands, small_params()).unwrap();
        assert_eq!(hnsw.class_names(), vocab.names());
        assert_eq!(Matcher::dim(&hnsw), d);
        assert_eq!(hnsw.stats().points, vocab.prototypes().nrows());
        let patches = near_patches(&mut rng, &vocab, 3000);
        let exact = vocab.score(patches.view()).unwrap();
        let approx = hnsw.score(patches.view()).unwrap();
        assert_eq!(approx.scores.dim(), exact.scores.dim());
        let agree = agreement(&exact, &approx);
        assert!(agree >= 0.995, "{classes} classes: agreement {agree}");
        // Where the labels agree, the winning score and prototype are
        // the exact ones.
        let (le, la) = (exact.labels(None), approx.labels(None));
        let mut same_proto = 0;
        for (i, (a, b)) in le.iter().zip(&la).enumerate() {
            if a != b {
                continue;
            }
            let c = *a as usize;
            let (se, sa) = (exact.scores[[i, c]], approx.scores[[i, c]]);
            assert!((se - sa).abs() < 1e-4, "patch {i}: {se} vs {sa}");
            same_proto += (exact.best_proto[[i, c]] == approx.best_proto[[i, c]]) as usize;
        }
        assert!(same_proto as f64 >= 0.99 * le.len() as f64);
        // Every score is at most 1 + rounding and absent columns carry
        // the k-th hit's score.
        for (s, b) in approx
            .scores
            .rows()
            .into_iter()
            .zip(approx.best_proto.rows())
        {
            let present: Vec<f32> = s
                .iter()
                .zip(b.iter())
                .filter(|(_, &r)| r != NO_PROTO)
                .map(|(&v, _)| v)
                .collect();
            assert!(!present.is_empty());
            let kth = present.iter().copied().fold(f32::INFINITY, f32::min);
            for (&v, &r) in s.iter().zip(b.iter()) {
                assert!(v <= 1.0 + 1e-5);
                if r == NO_PROTO {
                    assert!(v <= kth + 1e-6, "{v} > {kth}");
                }
            }
        }
    }
}

#[test]
fn small_banks_are_exact() {
    // Fewer rows than k: every row is a hit, so every column is exact.
    let mut rng = Rng::new(3);
    let cands = clustered_bank(&mut rng, 4, 16, 5, 2, 0);
    let vocab = Vocabulary::new(cands.clone()).unwrap();
    let hnsw = HnswMatcher::new(cands, small_params()).unwrap();
    let patches = near_patches(&mut rng, &vocab, 200);
    let exact = vocab.score(patches.view()).unwrap();
    let approx = hnsw.score(patches.view()).unwrap();
    for (e, a) in exact.scores.iter().zip(approx.scores.iter()) {
        assert!((e - a).abs() < 1e-5, "{e} vs {a}");
    }
    assert_eq!(exact.best_proto, approx.best_proto);
    // Without background prototypes, column 0 is empty.
    let mut c = Candidate::new(
        "only",
        false,
        ndarray::array![[1.0, 0.0], [0.6, 0.8]],
        Array2::zeros((0, 2)),
    );
    c.fg_ids = vec![7, 9];
    let hnsw = HnswMatcher::new(vec![c], small_params()).unwrap();
    let s = hnsw.score(ndarray::array![[0.0, 1.0]].view()).unwrap();
    assert_eq!(s.scores[[0, 0]], EMPTY_SCORE);
    assert_eq!(s.best_proto[[0, 0]], NO_PROTO);
    assert!((s.scores[[0, 1]] - 0.8).abs() < 1e-6);
    assert_eq!(s.best_proto[[0, 1]], 1);
    assert_eq!(s.labels(None), vec![1]);
    // An unnormalised patch scores its dot product, as in the exact
    // engine.
    let s = hnsw.score(ndarray::array![[0.0, 2.0]].view()).unwrap();
    assert!((s.scores[[0, 1]] - 1.6).abs() < 1e-5);
    // A single prototype.
    let one = HnswMatcher::new(
        vec![Candidate::new(
            "one",
            false,
            ndarray::array![[3.0, 4.0]],
            Array2::zeros((0, 2)),
        )],
        small_params(),
    )
    .unwrap();
    assert_eq!(one.stats().points, 1);
    assert_eq!(one.orphans(), &[] as &[u32]);
    let s = one.score(ndarray::array![[1.0, 0.0]].view()).unwrap();
    assert!((s.scores[[0, 1]] - 0.6).abs() < 1e-6);
    assert_eq!(s.best_proto[[0, 1]], 0);
    assert_eq!(one.nearest(&[0.0, 1.0], 5).unwrap(), vec![(0, 0.8)]);
    // Bad input.
    assert!(hnsw.score(ndarray::array![[0.0, 1.0, 0.0]].view()).is_err());
    assert!(hnsw.score(ndarray::array![[f32::NAN, 1.0]].view()).is_err());
    assert!(hnsw.nearest(&[1.0], 1).is_err());
    let empty = hnsw.score(Array2::<f32>::zeros((0, 2)).view()).unwrap();
    assert_eq!(empty.scores.dim(), (0, 2));
    // A single zero patch: every cosine is 0.
    let s = hnsw.score(Array2::<f32>::zeros((1, 2)).view()).unwrap();
    assert_eq!(s.scores[[0, 1]], 0.0);
}

#[test]
fn every_row_finds_itself() {
    let mut rng = Rng::new(5);
    let cands = clustered_bank(&mut rng, 60, 32, 30, 10, 4);
    let vocab = Vocabulary::new(cands).unwrap();
    let hnsw = HnswMatcher::from_vocabulary(&vocab, small_params()).unwrap();
    let stats = hnsw.stats();
    assert_eq!(stats.points, vocab.prototypes().nrows());
    assert_eq!(stats.orphans, hnsw.orphans().len());
    assert!(stats.loaded.is_none());
    let p = vocab.prototypes();
    for (i, row) in p.rows().into_iter().enumerate() {
        let hits = hnsw.nearest(row.as_slice().unwrap(), 1).unwrap();
        assert_eq!(hits[0].0, i as u32, "row {i} not found");
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
    }
    // Batched: each row's own column is won by the row itself.
    let s = hnsw.score(p.view()).unwrap();
    for (i, row) in s.best_proto.rows().into_iter().enumerate() {
        let c = hnsw.column_of(i as u32).unwrap();
        assert_eq!(row[c], i as u32);
    }
    assert_eq!(hnsw.column_of(u32::MAX), None);
}

#[test]
fn orphans_are_scored_by_brute_force() {
    let mut rng = Rng::new(8);
    let cands = clustered_bank(&mut rng, 30, 24, 12, 4, 3);
    let vocab = Vocabulary::new(cands).unwrap();
    let mut hnsw = HnswMatcher::from_vocabulary(
        &vocab,
        HnswParams {
            k: 8,
            ef_search: 8,
            ..small_params()
        },
    )
    .unwrap();
    let patches = near_patches(&mut rng, &vocab, 300);
    // With every row an orphan, every column is present and exact.
    let all: Vec<u32> = (0..vocab.prototypes().nrows() as u32).collect();
    hnsw.force_orphans(&all);
    assert_eq!(hnsw.stats().orphans, all.len());
    let exact = vocab.score(patches.view()).unwrap();
    let approx = hnsw.score(patches.view()).unwrap();
    for (e, a) in exact.scores.iter().zip(approx.scores.iter()) {
        assert!((e - a).abs() < 1e-5, "{e} vs {a}");
    }
    assert_eq!(exact.best_proto, approx.best_proto);
    let near = hnsw.nearest(patches.row(0).as_slice().unwrap(), 3).unwrap();
    assert_eq!(near.len(), 3);
    assert!(near[0].1 >= near[1].1 && near[1].1 >= near[2].1);
}

#[test]
fn cache_round_trips_and_rejects_what_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.hnsw");
    let mut rng = Rng::new(21);
    let cands = clustered_bank(&mut rng, 25, 32, 20, 6, 4);
    let vocab = Vocabulary::new(cands).unwrap();
    let params = small_params();
    let fp = Fingerprint::new(&vocab, &params);
    assert!(HnswMatcher::load(&path, &fp).unwrap().is_none());
    let mut hnsw = HnswMatcher::from_vocabulary(&vocab, params).unwrap();
    assert_eq!(hnsw.fingerprint(), &fp);
    hnsw.force_orphans(&[3, 17]);
    hnsw.save(&path).unwrap();
    // No scratch files are left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

    let back = HnswMatcher::load(&path, &fp)
        .unwrap()
        .expect("cache accepted");
    assert!(back.stats().loaded.is_some());
    assert_eq!(back.stats().points, hnsw.stats().points);
    assert_eq!(back.orphans(), hnsw.orphans());
    assert_eq!(back.stats().build, hnsw.stats().build);
    assert_eq!(back.class_names(), hnsw.class_names());
    assert_eq!(back.params(), params);
    let patches = near_patches(&mut rng, &vocab, 500);
    let (a, b) = (
        hnsw.score(patches.view()).unwrap(),
        back.score(patches.view()).unwrap(),
    );
    assert_eq!(a, b);
    // Saving a loaded graph works too.
    let path2 = dir.path().join("again.hnsw");
    back.save(&path2).unwrap();
    let again = HnswMatcher::load(&path2, &fp).unwrap().unwrap();
    assert_eq!(again.score(patches.view()).unwrap(), a);

    // Another vocabulary or other build parameters: rebuild.
    let search_only = HnswParams {
        k: params.k + 1,
        ef_search: 7,
        ..params
    };
    assert_eq!(Fingerprint::new(&vocab, &search_only), fp);
    let other = Fingerprint::new(
        &vocab,
        &HnswParams {
            m: params.m + 1,
            ..params
        },
    );
    assert_ne!(other, fp);
    assert!(HnswMatcher::load(&path, &other).unwrap().is_none());
    let mut c2 = clustered_bank(&mut Rng::new(22), 25, 32, 20, 6, 4);
    c2[0].name = "renamed".into();
    assert!(HnswMatcher::load(
        &path,
        &Fingerprint::new(&Vocabulary::new(c2).unwrap(), &params)
    )
    .unwrap()
    .is_none());
    // Search parameters change without a rebuild and are saved.
    let mut changed = HnswMatcher::load(&path, &fp).unwrap().unwrap();
    changed.set_search_params(96, 8, 40).unwrap();
    assert_eq!(changed.fingerprint(), &fp);
    assert!(changed.set_search_params(0, 8, 40).is_err());
    let path3 = dir.path().join("search.hnsw");
    changed.save(&path3).unwrap();
    let p3 = HnswMatcher::load(&path3, &fp).unwrap().unwrap().params();
    assert_eq!((p3.ef_search, p3.ef_upper, p3.k), (96, 8, 40));

    // Corruption anywhere: rebuild.
    let good = fs::read(&path).unwrap();
    let header_len = header_prefix(&fp, &params).len() + 8 + 32;
    let bad = dir.path().join("bad.hnsw");
    for at in [
        0,
        8,
        12,
        13,
        15,
        30,
        header_len - 40,
        header_len - 1,
        header_len + 3,
        good.len() / 2,
        good.len() - 1,
    ] {
        let mut b = good.clone();
        b[at] ^= 0x40;
        fs::write(&bad, &b).unwrap();
        assert!(HnswMatcher::load(&bad, &fp).unwrap().is_none(), "byte {at}");
    }
    for len in [0, 5, header_len, good.len() - 1] {
        fs::write(&bad, &good[..len]).unwrap();
        assert!(
            HnswMatcher::load(&bad, &fp).unwrap().is_none(),
            "length {len}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    fs::write(&bad, &longer).unwrap();
    assert!(HnswMatcher::load(&bad, &fp).unwrap().is_none());

    // Tampering with a valid checksum is still caught, and the reasons
    // say why.
    let prefix_len = header_len - 40;
    let resealed = |mut b: Vec<u8>| {
        let payload_len = &b[prefix_len..prefix_len + 8];
        let mut h = Sha256::new();
        h.update(&b[..prefix_len]);
        h.update(&b[header_len..]);
        h.update(payload_len);
        let sum: [u8; 32] = h.finalize().into();
        b[prefix_len + 8..header_len].copy_from_slice(&sum);
        b
    };
    let why = |b: Vec<u8>| {
        fs::write(&bad, b).unwrap();
        match HnswMatcher::try_load(&bad, &fp) {
            Err(LoadFail::Reject(why)) => why,
            Err(LoadFail::Io(e)) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    };
    assert_eq!(resealed(good.clone()), good);
    let mut b = good.clone();
    b[8] = 99;
    assert_eq!(why(resealed(b)), "another cache format version");
    let mut b = good.clone();
    b[13] ^= 1;
    assert_eq!(why(resealed(b)), "built for another platform or version");
    let n = good.len();
    let mut b = good.clone();
    b[n - 4] ^= 1;
    assert_eq!(why(b.clone()), "checksum mismatch");
    assert_eq!(why(resealed(b)), "contents do not match the fingerprint");
    let mut b = good.clone();
    b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(why(resealed(b)), "inconsistent graph");
    assert_eq!(why(good[..0].to_vec()), "truncated");
    fs::remove_file(&bad).unwrap();
    assert_eq!(
        match HnswMatcher::try_load(&bad, &fp) {
            Err(LoadFail::Reject(w)) => w,
            _ => String::new(),
        },
        "no cache file"
    );
    // The good file is still accepted.
    assert!(HnswMatcher::load(&path, &fp).unwrap().is_some());
}

/// A matcher over four exact unit rows (one background, two `cat`, one
/// `dog`) whose graph, orphans and build times are set by hand, so that
/// its cache file is the same bytes on every run.
fn pinned_matcher() -> (HnswMatcher, Fingerprint) {
    let cands = vec![
        Candidate::new(
            "cat",
            false,
            ndarray::array![[1.0, 0.0], [0.0, 1.0]],
            ndarray::array![[-1.0, 0.0]],
        ),
        Candidate::new(
            "dog",
            false,
            ndarray::array![[0.0, -1.0]],
            Array2::zeros((0, 2)),
        ),
    ];
    let vocab = Vocabulary::new(cands).unwrap();
    let params = small_params();
    let mut m = HnswMatcher::from_vocabulary(&vocab, params).unwrap();
    m.graph.l0_off = vec![0, 2, 4, 5, 7];
    m.graph.l0 = vec![1, 3, 0, 2, 1, 0, 2];
    m.graph.upper = vec![UpperLayer {
        ids: vec![1, 3],
        off: vec![0, 1, 2],
        nb: vec![3, 1],
    }];
    m.graph.entry = 1;
    m.set_orphans(vec![2]);
    m.stats.upper_layers = 1;
    m.stats.build = Duration::from_nanos(1234);
    m.stats.orphan_check = Duration::from_nanos(567);
    (m, Fingerprint::new(&vocab, &params))
}

/// The cache file's bytes, field by field (the layout in the module
/// docs): a format, so a change here breaks every saved graph.
#[cfg(all(target_endian = "little", target_pointer_width = "64"))]
#[test]
fn cache_bytes_are_pinned() {
    let (m, fp) = pinned_matcher();
    assert_eq!(
        fp.to_hex(),
        "d7cf9648e5cf829519e3371bf9a377a3a9396d9ca18577a246117882d640247a"
    );
    let hex = |parts: &[&str]| hex::decode(parts.concat()).unwrap();
    let mut prefix = hex(&[
        "4f5644484e535700", // magic "OVDHNSW\0"
        "01000000",         // format version 1
        "01",               // little-endian
        "08",               // 8-byte pointers
    ]);
    for s in [HNSW_RS_VERSION, env!("CARGO_PKG_VERSION")] {
        prefix.push(s.len() as u8);
        prefix.extend_from_slice(s.as_bytes());
    }
    prefix.extend_from_slice(fp.as_bytes());
    prefix.extend(hex(&[
        "0c00000000000000", // m 12
        "4000000000000000", // ef_construction 64
        "3000000000000000", // ef_search 48
        "1000000000000000", // ef_upper 16
        "2000000000000000", // k 32
    ]));
    let payload = hex(&[
        "0200000000000000", // dim 2
        "0400000000000000", // rows 4
        "0200000000000000", // 2 names
        "0300000000000000",
        "636174", // "cat"
        "0300000000000000",
        "646f67",           // "dog"
        "0300000000000000", // 3 segments
        "00000000000000000100000000000000",
        "01000000000000000300000000000000",
        "03000000000000000400000000000000",
        "0100000000000000", // 1 orphan
        "02000000",
        "d204000000000000",                         // insertion 1,234 ns
        "3702000000000000",                         // orphan check 567 ns
        "01000000",                                 // entry
        "0000000002000000040000000500000007000000", // layer 0 offsets
        "01000000030000000000000002000000010000000000000002000000",
        "0100000000000000", // 1 upper layer
        "0200000000000000", // of 2 nodes
        "0100000003000000",
        "000000000100000002000000",
        "0300000001000000",
        "000080bf00000000", // rows
        "0000803f00000000",
        "000000000000803f",
        "00000000000080bf",
    ]);
    let len = (payload.len() as u64).to_le_bytes();
    assert_eq!(len, *b"\x02\x01\0\0\0\0\0\0");
    let mut h = Sha256::new();
    h.update(&prefix);
    h.update(&payload);
    h.update(len);
    let want = [&prefix[..], &len, &h.finalize(), &payload].concat();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinned.hnsw");
    m.save(&path).unwrap();
    assert_eq!(hex::encode(fs::read(&path).unwrap()), hex::encode(&want));
    let back = HnswMatcher::load(&path, &fp).unwrap().expect("accepted");
    assert_eq!(back.orphans(), &[2]);
    assert_eq!(back.stats().build, Duration::from_nanos(1234));
    assert_eq!(back.stats().upper_layers, 1);
    let again = dir.path().join("again.hnsw");
    back.save(&again).unwrap();
    assert_eq!(fs::read(&again).unwrap(), want);
}

#[test]
fn pinned_hnsw_rs_version_matches_the_lock_file() {
    let lock =
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("Cargo.lock");
    let Ok(lock) = fs::read_to_string(lock) else {
        return;
    };
    let want = format!("name = \"hnsw_rs\"\nversion = \"{HNSW_RS_VERSION}\"");
    assert!(lock.contains(&want), "Cargo.lock has another hnsw_rs");
}
