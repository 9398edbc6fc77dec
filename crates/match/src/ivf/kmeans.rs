//! The clustering: spherical k-means of the vocabulary's unit rows into lists, seeded by [`IvfParams::seed`](super::IvfParams::seed) through the one generator, SplitMix64.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, Axis};
use ovdiff_core::rng::SplitMix64;

use super::IvfParams;
use crate::vocabulary::score_by_patch_chunks;

/// Per row of `a`, the index of its best row of `b` (the first on ties),
/// by blocked products, the rows of `a` split among up to `threads` threads
/// (0: one per core).
pub(super) fn nearest_rows(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    threads: usize,
) -> Vec<u32> {
    const BLOCK: usize = 1024;
    if b.nrows() == 0 {
        return vec![0; a.nrows()];
    }
    let threads = ovdiff_core::threads::threads_or_cores(threads);
    let (_, best) = score_by_patch_chunks(a, 1, threads, |a, _, mut out| {
        let mut buf = Array2::<f32>::zeros((BLOCK.min(a.nrows()), b.nrows()));
        for i0 in (0..a.nrows()).step_by(BLOCK) {
            let i1 = (i0 + BLOCK).min(a.nrows());
            let mut sims = buf.slice_mut(s![..i1 - i0, ..]);
            general_mat_mul(1.0, &a.slice(s![i0..i1, ..]), &b.t(), 0.0, &mut sims);
            for (i, row) in sims.rows().into_iter().enumerate() {
                let mut best = (0usize, f32::NEG_INFINITY);
                for (j, &v) in row.iter().enumerate() {
                    if v > best.1 {
                        best = (j, v);
                    }
                }
                out[[i0 + i, 0]] = best.0 as u32;
            }
        }
    });
    best.into_raw_vec_and_offset().0
}

/// A uniform index in `0..n`, by modulo reduction (not
/// [`SplitMix64::below`]'s multiply-high): the draws that clustered the
/// lists of existing caches and bank files, so the same seed gives the same
/// lists.
fn index_below(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// `k` distinct indices of `0..n`, in increasing order (a partial
/// Fisher–Yates shuffle).
pub(super) fn sample(rng: &mut SplitMix64, n: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + index_below(rng, n - i);
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// Spherical k-means: `lists` unit centroids of the unit rows `x`.
pub(super) fn spherical_kmeans(
    x: ArrayView2<'_, f32>,
    lists: usize,
    params: &IvfParams,
    threads: usize,
) -> Array2<f32> {
    let (n, d) = x.dim();
    let mut rng = SplitMix64::new(params.seed);
    let train_idx = sample(&mut rng, n, lists * params.train_per_list);
    let train = x.select(Axis(0), &train_idx);
    let mut centroids = train.select(Axis(0), &sample(&mut rng, train.nrows(), lists));
    for _ in 0..params.iterations {
        let assign = nearest_rows(train.view(), centroids.view(), threads);
        let mut sums = Array2::<f32>::zeros((lists, d));
        let mut counts = vec![0usize; lists];
        for (row, &a) in train.rows().into_iter().zip(&assign) {
            let mut s = sums.row_mut(a as usize);
            s += &row;
            counts[a as usize] += 1;
        }
        for (l, mut c) in centroids.rows_mut().into_iter().enumerate() {
            if counts[l] == 0 {
                // an empty list restarts at a random training row
                c.assign(&train.row(index_below(&mut rng, train.nrows())));
                continue;
            }
            let s = sums.row(l);
            let norm = s.dot(&s).sqrt();
            if norm > 0.0 {
                c.assign(&s.mapv(|v| v / norm));
            }
        }
    }
    centroids
}
