//! Scoring patches with the graph: each patch's top-k hits, plus the orphans by one matrix product per block, folded into score columns; columns without a hit carry the k-th score as their bound.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use ovdiff_core::threads::threads_or_cores;

use super::graph::{Hit, Scratch};
use super::HnswMatcher;
use crate::vocabulary::{check_patch_dim, Scores, EMPTY_SCORE, NO_PROTO};
use crate::{Error, Result};

/// Patches per thread below which scoring stays on fewer threads.
const MIN_PATCHES_PER_THREAD: usize = 16;
/// Patches per block of the orphans' matrix product.
const ORPHAN_BLOCK: usize = 256;

impl HnswMatcher {
    /// The `k` rows nearest to `patch` (graph hits merged with the
    /// orphans), best first, as (row, dot product with `patch`); ties to the
    /// lower row. Approximate like [`score`](crate::Matcher::score).
    pub fn nearest(&self, patch: &[f32], k: usize) -> Result<Vec<(u32, f32)>> {
        self.check_patch(patch, 0)?;
        let mut s = Scratch::new(self.graph.num_rows());
        let p = self.params;
        self.graph
            .search(patch, k, p.ef_search.max(k), p.ef_upper, &mut s);
        let mut out = std::mem::take(&mut s.out);
        for &r in &self.orphans {
            if !out.iter().any(|h| h.row == r) {
                out.push(Hit {
                    sim: self.graph.sim(patch, r),
                    row: r,
                });
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.truncate(k);
        Ok(out.into_iter().map(|h| (h.row, h.sim)).collect())
    }

    fn check_patch(&self, patch: &[f32], i: usize) -> Result<()> {
        if patch.len() != self.graph.dim {
            return Err(Error::DimensionMismatch {
                what: "patch features".into(),
                expected: format!("{} columns (the prototypes' dimension)", self.graph.dim),
                found: patch.len().to_string(),
            });
        }
        if patch.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "patch {i} has non-finite feature values"
            )));
        }
        Ok(())
    }

    /// Score `patches` (`(n, dim)`, rows L2-normalised) against every
    /// column; see the [module docs](super) for the rule. Patches are split
    /// among the threads (see [`with_threads`](Self::with_threads)).
    pub fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        check_patch_dim(&patches, self.graph.dim)?;
        if let Some(i) = patches
            .rows()
            .into_iter()
            .position(|r| r.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::Invalid(format!(
                "patch {i} has non-finite feature values"
            )));
        }
        let n = patches.nrows();
        let cols = self.segments.len();
        let mut scores = Array2::from_elem((n, cols), f32::NEG_INFINITY);
        let mut best = Array2::from_elem((n, cols), NO_PROTO);
        let threads = threads_or_cores(self.threads)
            .min(n.div_ceil(MIN_PATCHES_PER_THREAD))
            .max(1);
        if threads == 1 {
            self.score_rows(patches, scores.view_mut(), best.view_mut());
        } else {
            let chunk = n.div_ceil(threads);
            std::thread::scope(|sc| {
                let parts = patches
                    .axis_chunks_iter(Axis(0), chunk)
                    .zip(scores.axis_chunks_iter_mut(Axis(0), chunk))
                    .zip(best.axis_chunks_iter_mut(Axis(0), chunk));
                for ((p, s), b) in parts {
                    sc.spawn(move || self.score_rows(p, s, b));
                }
            });
        }
        Ok(Scores {
            scores,
            best_proto: best,
        })
    }

    /// The per-thread kernel of [`score`](Self::score); `scores` / `best`
    /// start at -∞ / [`NO_PROTO`]. The orphans are scored by one matrix
    /// product per block of patches.
    fn score_rows(
        &self,
        patches: ArrayView2<'_, f32>,
        mut scores: ArrayViewMut2<'_, f32>,
        mut best: ArrayViewMut2<'_, u32>,
    ) {
        let mut s = Scratch::new(self.graph.num_rows());
        let mut p = vec![0.0f32; self.graph.dim];
        let prm = self.params;
        let n_orph = self.orphans.len();
        let mut orph_sims = Array2::<f32>::zeros((ORPHAN_BLOCK.min(patches.nrows()), n_orph));
        for ((block, mut sc_block), mut b_block) in patches
            .axis_chunks_iter(Axis(0), ORPHAN_BLOCK)
            .zip(scores.axis_chunks_iter_mut(Axis(0), ORPHAN_BLOCK))
            .zip(best.axis_chunks_iter_mut(Axis(0), ORPHAN_BLOCK))
        {
            let mut sims = orph_sims.slice_mut(s![..block.nrows(), ..]);
            if n_orph > 0 {
                general_mat_mul(1.0, &block, &self.orphan_rows.t(), 0.0, &mut sims);
            }
            for (((patch, mut sc), mut b), osims) in block
                .rows()
                .into_iter()
                .zip(sc_block.rows_mut())
                .zip(b_block.rows_mut())
                .zip(sims.rows())
            {
                p.iter_mut().zip(patch.iter()).for_each(|(d, &v)| *d = v);
                self.graph
                    .search(&p, prm.k, prm.ef_search, prm.ef_upper, &mut s);
                let mut kth = f32::INFINITY;
                for h in &s.out {
                    kth = kth.min(h.sim);
                    self.offer(&mut sc, &mut b, h.row, h.sim);
                }
                for (&r, &sim) in self.orphans.iter().zip(osims.iter()) {
                    self.offer(&mut sc, &mut b, r, sim);
                }
                let bound = if s.out.is_empty() { EMPTY_SCORE } else { kth };
                for ((c, v), &r) in sc.iter_mut().enumerate().zip(b.iter()) {
                    if r == NO_PROTO {
                        *v = if self.segments[c].is_empty() {
                            EMPTY_SCORE
                        } else {
                            bound
                        };
                    }
                }
            }
        }
    }

    /// Fold a hit (row `row`, score `sim`) into a patch's columns: higher
    /// wins, the lower row on ties.
    #[inline]
    fn offer(
        &self,
        s: &mut ArrayViewMut1<'_, f32>,
        b: &mut ArrayViewMut1<'_, u32>,
        row: u32,
        sim: f32,
    ) {
        let c = self.col_of[row as usize] as usize;
        if sim > s[c] || (sim == s[c] && row < b[c]) {
            s[c] = sim;
            b[c] = row;
        }
    }
}
