//! Tests of the IVF matcher: agreement with the exact engine, exactness when every list is probed, the cache file and the bank-file blob, their pinned bytes.

use super::kmeans::sample;
use super::*;
use crate::oracle::{random_patches, Rng};
use crate::vocabulary::Candidate;

/// `classes` classes of `per` foreground rows clustered around a centre
/// (and `per / 2` random backgrounds for the non-stuff ones).
fn clustered(rng: &mut Rng, classes: usize, per: usize, d: usize) -> Vec<Candidate> {
    (0..classes)
        .map(|c| {
            let centre = rng.unit(d);
            let fg: Vec<f32> = (0..per)
                .flat_map(|_| rng.noisy(&centre, 0.8 / (d as f64).sqrt()))
                .collect();
            let stuff = c % 5 == 0;
            let nb = if stuff { 0 } else { per / 2 };
            let bg: Vec<f32> = (0..nb).flat_map(|_| rng.unit(d)).collect();
            Candidate::new(
                format!("class {c}"),
                stuff,
                Array2::from_shape_vec((per, d), fg).unwrap(),
                Array2::from_shape_vec((nb, d), bg).unwrap(),
            )
        })
        .collect()
}

fn agreement(exact: &Scores, approx: &Scores) -> f64 {
    let (a, b) = (exact.labels(None), approx.labels(None));
    a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Patches of several kinds over `vocab`'s rows: noisy copies of rows
/// (noise norm σ), midpoints of two rows, random directions.
fn patch_kinds(rng: &mut Rng, vocab: &Vocabulary, n: usize) -> Vec<(String, Array2<f32>)> {
    let p = vocab.prototypes().to_owned();
    let d = p.ncols();
    let mut kinds = Vec::new();
    for sigma in [0.3, 0.6, 1.0] {
        let rows: Vec<f32> = (0..n)
            .flat_map(|_| {
                let r = p.row(rng.range(0, p.nrows())).to_vec();
                rng.noisy(&r, sigma / (d as f64).sqrt())
            })
            .collect();
        let q = Array2::from_shape_vec((n, d), rows).unwrap();
        kinds.push((format!("near a row, noise σ {sigma}"), q));
    }
    let rows: Vec<f32> = (0..n)
        .flat_map(|_| {
            let a = p.row(rng.range(0, p.nrows())).to_owned();
            let b = p.row(rng.range(0, p.nrows())).to_owned();
            rng.noisy(&(&a + &b).to_vec(), 0.3 / (d as f64).sqrt())
        })
        .collect();
    let q = Array2::from_shape_vec((n, d), rows).unwrap();
    kinds.push(("midpoint of two rows".into(), q));
    let rows: Vec<f32> = (0..n).flat_map(|_| rng.unit(d)).collect();
    let q = Array2::from_shape_vec((n, d), rows).unwrap();
    kinds.push(("random direction".into(), q));
    kinds
}

#[test]
fn labels_agree_with_the_exact_engine() {
    let mut rng = Rng::new(5);
    let vocab = Vocabulary::new(clustered(&mut rng, 300, 60, 64)).unwrap();
    let ivf = IvfMatcher::from_vocabulary(&vocab, IvfParams::default()).unwrap();
    let st = ivf.stats();
    assert_eq!(st.rows, vocab.num_rows());
    assert!(st.lists > 1 && st.lists < st.rows);
    // the least agreement asserted, per kind of patch
    let floors = [0.995, 0.995, 0.95, 0.97, 0.8];
    for ((name, q), floor) in patch_kinds(&mut rng, &vocab, 1000).into_iter().zip(floors) {
        let exact = vocab.score(q.view()).unwrap();
        let approx = ivf.score(q.view()).unwrap();
        let agree = agreement(&exact, &approx);
        eprintln!("IVF, {name}: {:.2}% of labels agree", 100.0 * agree);
        assert!(agree >= floor, "{name}: {agree}");
        // Scores are lower bounds, at least the best row seen.
        for ((i, c), &r) in approx.best_proto.indexed_iter() {
            assert!(approx.scores[[i, c]] <= exact.scores[[i, c]] + 1e-5);
            if r != NO_PROTO {
                let row = vocab.prototypes().row(r as usize).to_owned();
                assert!(approx.scores[[i, c]] >= q.row(i).dot(&row) - 1e-5);
                assert!(vocab.segment(c).contains(&(r as usize)));
            }
        }
    }
    // Any number of threads gives the same answer (the fine pass splits
    // lists among threads and merges their folds).
    let q = patch_kinds(&mut rng, &vocab, 400).remove(1).1;
    let one = ivf.clone().with_threads(1).score(q.view()).unwrap();
    for t in [2, 3, 5] {
        assert_eq!(
            one,
            ivf.clone().with_threads(t).score(q.view()).unwrap(),
            "{t} threads"
        );
    }
}

/// IVF against HNSW by kind of patch (`cargo test --release -p ovdiff-match --lib
/// ivf::tests::engines_by_kind_of_patch -- --ignored --nocapture`).
#[test]
#[ignore = "diagnostic; run in release"]
fn engines_by_kind_of_patch() {
    let mut rng = Rng::new(5);
    let vocab = Vocabulary::new(clustered(&mut rng, 300, 60, 64)).unwrap();
    let kinds = patch_kinds(&mut rng, &vocab, 1000);
    let mut runs: Vec<(String, Box<dyn Matcher>)> = Vec::new();
    for probes in [48, 96] {
        let p = IvfParams {
            probes,
            ..IvfParams::default()
        };
        let m = IvfMatcher::from_vocabulary(&vocab, p).unwrap();
        runs.push((format!("IVF, {probes} probes"), Box::new(m)));
    }
    let hnsw = crate::HnswMatcher::from_vocabulary(&vocab, Default::default()).unwrap();
    runs.push(("HNSW".into(), Box::new(hnsw)));
    for (engine, m) in &runs {
        for (name, q) in &kinds {
            let a = agreement(&vocab.score(q.view()).unwrap(), &m.score(q.view()).unwrap());
            eprintln!("{engine}, {name}: {:.2}%", 100.0 * a);
        }
    }
}

#[test]
fn probing_every_list_is_exact() {
    let mut rng = Rng::new(6);
    let cands = clustered(&mut rng, 12, 20, 32);
    let patches = random_patches(&mut rng, &cands, 300);
    let vocab = Vocabulary::new(cands).unwrap();
    let params = IvfParams {
        probes: 1000,
        lists: 16,
        ..IvfParams::default()
    };
    let ivf = IvfMatcher::from_vocabulary(&vocab, params).unwrap();
    let exact = vocab.score(patches.view()).unwrap();
    let approx = ivf.score(patches.view()).unwrap();
    assert_eq!(approx.best_proto, exact.best_proto);
    for (a, b) in approx.scores.iter().zip(exact.scores.iter()) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn lists_are_cached_and_never_trusted_blindly() {
    let mut rng = Rng::new(8);
    let cands = clustered(&mut rng, 40, 30, 32);
    let patches = random_patches(&mut rng, &cands, 200);
    let vocab = Vocabulary::new(cands).unwrap();
    let params = IvfParams::default();
    let built = IvfMatcher::from_vocabulary(&vocab, params).unwrap();
    let fp = IvfMatcher::fingerprint(&vocab, &params);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.lists");
    assert_eq!(
        IvfMatcher::load(&vocab, params, &fp, &path).unwrap().err(),
        Some("no cache file")
    );
    built.save(&fp, &path).unwrap();
    let back = IvfMatcher::load(&vocab, params, &fp, &path)
        .unwrap()
        .unwrap();
    assert!(back.stats().loaded && !built.stats().loaded);
    assert_eq!(back.ids, built.ids);
    assert_eq!(back.centroids, built.centroids);
    assert_eq!(
        back.score(patches.view()).unwrap(),
        built.score(patches.view()).unwrap()
    );
    // other parameters: another fingerprint
    let other = IvfParams {
        probes: 7,
        ..params
    };
    let fp2 = IvfMatcher::fingerprint(&vocab, &other);
    assert_ne!(fp, fp2);
    assert!(IvfMatcher::load(&vocab, other, &fp2, &path)
        .unwrap()
        .is_err());
    // every damaged byte, and truncation, is refused
    let good = std::fs::read(&path).unwrap();
    for i in (0..good.len()).step_by(97) {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        assert!(
            IvfMatcher::load(&vocab, params, &fp, &path)
                .unwrap()
                .is_err(),
            "byte {i}"
        );
    }
    std::fs::write(&path, &good[..good.len() - 9]).unwrap();
    assert!(IvfMatcher::load(&vocab, params, &fp, &path)
        .unwrap()
        .is_err());
    // ids that are not a permutation, with a valid checksum
    let mut bad = good[..good.len() - 8].to_vec();
    let n = bad.len();
    bad[n - 4..].copy_from_slice(&0u32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&bad);
    bad.extend_from_slice(&sum.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(
        IvfMatcher::load(&vocab, params, &fp, &path).unwrap().err(),
        Some("row ids out of range or repeated")
    );
}

#[test]
fn lists_in_a_bank_file_map_positions_to_rows() {
    let mut rng = Rng::new(9);
    let cands = clustered(&mut rng, 30, 20, 16);
    let patches = random_patches(&mut rng, &cands, 200);
    let vocab = Vocabulary::new(cands).unwrap();
    let params = IvfParams::default();
    let built = IvfMatcher::from_vocabulary(&vocab, params).unwrap();
    // positions: the rows reversed, in a space with 5 extra positions
    let n = vocab.num_rows();
    let space = n + 5;
    let position: Vec<u32> = (0..n as u32).map(|r| (n as u32 - 1 - r) + 5).collect();
    let blob = built.to_file_blob(&position, space);
    let mut row_at = vec![None; space];
    for (r, &p) in position.iter().enumerate() {
        row_at[p as usize] = Some(r as u32);
    }
    let back = IvfMatcher::from_file_blob(&vocab, params, &blob, &row_at).unwrap();
    assert!(back.stats().from_file && back.stats().loaded);
    assert_eq!(
        back.score(patches.view()).unwrap(),
        built.score(patches.view()).unwrap()
    );
    // a vocabulary row missing from the mapping: not usable
    let mut short = row_at.clone();
    short[7] = None;
    assert!(IvfMatcher::from_file_blob(&vocab, params, &blob, &short).is_err());
    // other parameters, another space, damaged bytes: not usable
    let other = IvfParams { seed: 1, ..params };
    assert!(IvfMatcher::from_file_blob(&vocab, other, &blob, &row_at).is_err());
    assert!(IvfMatcher::from_file_blob(&vocab, params, &blob, &row_at[1..]).is_err());
    for i in (0..blob.len()).step_by(41) {
        let mut bad = blob.clone();
        bad[i] ^= 1;
        assert!(IvfMatcher::from_file_blob(&vocab, params, &bad, &row_at).is_err());
    }
}

/// Lists over four exact unit rows (one background, two `cat`, one
/// `dog`) made by hand, so that their bytes are the same on every run.
fn pinned_lists() -> (Vocabulary, IvfMatcher) {
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
    let m = IvfMatcher::assemble(
        &vocab,
        &vocab.prototypes().view(),
        IvfParams::default(),
        ndarray::array![[0.0, 1.0], [0.6, -0.8]],
        vec![0, 1, 4],
        vec![2, 0, 1, 3],
        std::time::Instant::now(),
    );
    (vocab, m)
}

/// The lists' bytes in a cache file and in a bank file's `ann` blob,
/// field by field: formats, so a change here breaks every saved cache
/// and every `.ovbank` file written with `--ann`.
#[test]
fn cache_and_blob_bytes_are_pinned() {
    let (vocab, m) = pinned_lists();
    let hex = |parts: &[&str]| hex::decode(parts.concat()).unwrap();
    let fp = IvfMatcher::fingerprint(&vocab, &m.params());
    let cache = hex(&[
        "4f56444249564631", // magic "OVDBIVF1"
        "d7342c491663e4a8f560025a1bd7d2def9737ff77ef7df75c1df64489121b38c", // key
        "0200000000000000", // 2 lists
        "0200000000000000", // dim 2
        "0400000000000000", // index space 4
        "0400000000000000", // 4 rows
        "000000000000803f9a99193fcdcc4cbf", // centroids
        "000000000100000004000000", // list offsets
        "02000000000000000100000003000000", // row ids
        "3ab99e67caa7d4a8", // xxh3-64
    ]);
    assert_eq!(fp[..], cache[8..40]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinned.lists");
    m.save(&fp, &path).unwrap();
    assert_eq!(
        hex::encode(std::fs::read(&path).unwrap()),
        hex::encode(&cache)
    );
    let back = IvfMatcher::load(&vocab, m.params(), &fp, &path)
        .unwrap()
        .unwrap();
    assert_eq!(
        (back.offsets.clone(), back.ids.clone()),
        (m.offsets.clone(), m.ids.clone())
    );

    let blob = hex(&[
        "4f56444249564631", // magic "OVDBIVF1"
        "64a8af503fec2d126d33461b087dd9e6b7a9f0c96ed54e1e10e7f0f9e538a1fb", // key
        "0200000000000000", // 2 lists
        "0200000000000000", // dim 2
        "0900000000000000", // index space 9
        "0400000000000000", // 4 rows
        "000000000000803f9a99193fcdcc4cbf", // centroids
        "000000000100000004000000", // list offsets
        "06000000080000000500000007000000", // positions in the file
        "0282f0a8246e1c0a", // xxh3-64
    ]);
    assert_eq!(
        hex::encode(m.to_file_blob(&[8, 5, 6, 7], 9)),
        hex::encode(&blob)
    );
    let mut row_at = vec![None; 9];
    for (r, p) in [8, 5, 6, 7].into_iter().enumerate() {
        row_at[p] = Some(r as u32);
    }
    let back = IvfMatcher::from_file_blob(&vocab, m.params(), &blob, &row_at).unwrap();
    assert_eq!(
        (back.offsets.clone(), back.ids.clone()),
        (m.offsets.clone(), m.ids.clone())
    );
    let listed = IvfMatcher::listed_in_file_blob(&m.params(), &blob, 2, 9).unwrap();
    assert_eq!(
        listed,
        [false, false, false, false, false, true, true, true, true]
    );
}

/// The k-means initialisation draws the same rows for a seed: the lists
/// of existing caches and bank files were clustered with them.
#[test]
fn initial_samples_are_pinned() {
    let mut rng = ovdiff_core::rng::SplitMix64::new(42);
    assert_eq!(sample(&mut rng, 100, 6), [2, 9, 13, 27, 83, 86]);
    assert_eq!(sample(&mut rng, 50, 5), [7, 25, 27, 28, 39]);
}

#[test]
fn bad_input_is_refused() {
    let mut rng = Rng::new(7);
    let vocab = Vocabulary::new(clustered(&mut rng, 3, 4, 8)).unwrap();
    let zero = IvfParams {
        probes: 0,
        ..IvfParams::default()
    };
    assert!(IvfMatcher::from_vocabulary(&vocab, zero).is_err());
    let ivf = IvfMatcher::from_vocabulary(&vocab, IvfParams::default()).unwrap();
    assert!(ivf.score(Array2::<f32>::zeros((2, 7)).view()).is_err());
    let empty = ivf.score(Array2::<f32>::zeros((0, 8)).view()).unwrap();
    assert_eq!(empty.scores.nrows(), 0);
}
