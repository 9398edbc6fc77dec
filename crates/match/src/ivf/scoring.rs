//! Scoring by probing: patches × centroids pick each patch's lists, each list's rows are scored against the patches that picked it by one matrix product, and every column is raised to its mean's score, a lower bound.

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};

use super::IvfMatcher;
use crate::vocabulary::{check_patch_dim, Scores, EMPTY_SCORE, NO_PROTO};
use crate::Result;

impl IvfMatcher {
    /// Score `patches` (unit rows) against every column: per column the
    /// best row among the lists each patch probes, at least the column's
    /// mean (a true lower bound). Three stages, each split among threads:
    /// the coarse pass by patches; the fine pass by *lists*, so each list's
    /// rows are read by one thread only (splitting it by patches made every
    /// thread stream all rows), each thread folding into its own score
    /// arrays that are then merged; the lower bounds by patches.
    pub fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        check_patch_dim(&patches, self.dim)?;
        let n = patches.nrows();
        let cols = self.names.len() + 1;
        let threads = ovdiff_core::threads::threads_or_cores(self.threads)
            .min(n.div_ceil(64))
            .max(1);
        let by_list = self.probe(patches, threads);
        let (mut scores, best) = self.fine(patches, &by_list, cols, threads);
        self.raise_to_lower_bounds(patches, &mut scores, threads);
        Ok(Scores {
            scores,
            best_proto: best,
        })
    }

    /// The coarse pass: for each list, the patches (ascending) that probe it.
    fn probe(&self, patches: ArrayView2<'_, f32>, threads: usize) -> Vec<Vec<u32>> {
        let lists = self.centroids.nrows();
        if lists == 0 {
            return Vec::new();
        }
        let probes = self.params.probes.min(lists);
        let chunk = patches.nrows().div_ceil(threads).max(1);
        let coarse_chunk = |first: usize, p: ArrayView2<'_, f32>| -> Vec<Vec<u32>> {
            let mut coarse = Array2::<f32>::zeros((p.nrows(), lists));
            general_mat_mul(1.0, &p, &self.centroids.t(), 0.0, &mut coarse);
            let mut by_list: Vec<Vec<u32>> = vec![Vec::new(); lists];
            let mut order: Vec<u32> = Vec::with_capacity(lists);
            for (i, row) in coarse.rows().into_iter().enumerate() {
                let row = row
                    .as_slice()
                    .expect("invariant: a new array's rows are contiguous");
                order.clear();
                order.extend(0..lists as u32);
                if probes < lists {
                    order.select_nth_unstable_by(probes - 1, |&a, &b| {
                        row[b as usize].total_cmp(&row[a as usize])
                    });
                }
                for &l in &order[..probes] {
                    by_list[l as usize].push((first + i) as u32);
                }
            }
            by_list
        };
        let parts: Vec<Vec<Vec<u32>>> = if threads == 1 {
            vec![coarse_chunk(0, patches)]
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = patches
                    .axis_chunks_iter(Axis(0), chunk)
                    .enumerate()
                    .map(|(k, p)| sc.spawn(move || coarse_chunk(k * chunk, p)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("coarse IVF pass panicked"))
                    .collect()
            })
        };
        let mut parts = parts.into_iter();
        let mut by_list = parts.next().unwrap_or_default();
        for part in parts {
            for (dst, src) in by_list.iter_mut().zip(part) {
                dst.extend(src);
            }
        }
        by_list
    }

    /// The fine pass: lists split into `threads` runs of about equal work
    /// (patches × rows), each run folded into its own `(scores, best)`, the
    /// runs merged (higher score, then lower row id, as within a run).
    fn fine(
        &self,
        patches: ArrayView2<'_, f32>,
        by_list: &[Vec<u32>],
        cols: usize,
        threads: usize,
    ) -> (Array2<f32>, Array2<u32>) {
        let n = patches.nrows();
        let work: Vec<usize> = by_list
            .iter()
            .enumerate()
            .map(|(l, who)| who.len() * (self.offsets[l + 1] - self.offsets[l]))
            .collect();
        let total: usize = work.iter().sum();
        let mut runs: Vec<Range<usize>> = Vec::with_capacity(threads);
        let (mut start, mut acc) = (0, 0usize);
        for (l, w) in work.iter().enumerate() {
            acc += w;
            if runs.len() + 1 < threads && acc * threads >= total * (runs.len() + 1) {
                runs.push(start..l + 1);
                start = l + 1;
            }
        }
        runs.push(start..by_list.len());
        let fold = |run: Range<usize>| {
            let mut scores = Array2::from_elem((n, cols), f32::NEG_INFINITY);
            let mut best = Array2::from_elem((n, cols), NO_PROTO);
            self.fold_lists(patches, by_list, run, &mut scores, &mut best);
            (scores, best)
        };
        let mut results: Vec<(Array2<f32>, Array2<u32>)> = if runs.len() == 1 {
            vec![fold(runs[0].clone())]
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = runs
                    .iter()
                    .cloned()
                    .map(|run| sc.spawn(move || fold(run)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("fine IVF pass panicked"))
                    .collect()
            })
        };
        let (mut scores, mut best) = results.remove(0);
        for (s2, b2) in results {
            for (((v, id), &v2), &id2) in scores.iter_mut().zip(best.iter_mut()).zip(&s2).zip(&b2) {
                if v2 > *v || (v2 == *v && id2 < *id) {
                    *v = v2;
                    *id = id2;
                }
            }
        }
        (scores, best)
    }

    /// Fold the lists of `run` into `scores` / `best`: per list, the
    /// patches that probe it times its rows, one matrix product.
    fn fold_lists(
        &self,
        patches: ArrayView2<'_, f32>,
        by_list: &[Vec<u32>],
        run: Range<usize>,
        scores: &mut Array2<f32>,
        best: &mut Array2<u32>,
    ) {
        let mut gathered = Array2::<f32>::zeros((0, self.dim));
        let mut sims = Vec::new();
        for l in run {
            let who = &by_list[l];
            let (r0, r1) = (self.offsets[l], self.offsets[l + 1]);
            if who.is_empty() || r0 == r1 {
                continue;
            }
            let m = who.len();
            if gathered.nrows() < m {
                gathered = Array2::zeros((m, self.dim));
            }
            for (mut dst, &i) in gathered.rows_mut().into_iter().zip(who) {
                dst.assign(&patches.row(i as usize));
            }
            sims.resize(m * (r1 - r0), 0.0);
            let mut sv = ArrayViewMut2::from_shape((m, r1 - r0), &mut sims[..])
                .expect("invariant: m × len values");
            general_mat_mul(
                1.0,
                &gathered.slice(s![..m, ..]),
                &self.rows.slice(s![r0..r1, ..]).t(),
                0.0,
                &mut sv,
            );
            let (cols, ids) = (&self.cols[r0..r1], &self.ids[r0..r1]);
            for (row, &i) in sims.chunks_exact(r1 - r0).zip(who) {
                let i = i as usize;
                let mut s_row = scores.row_mut(i);
                let mut b_row = best.row_mut(i);
                let sc = s_row
                    .as_slice_mut()
                    .expect("invariant: a new array's rows are contiguous");
                let bs = b_row
                    .as_slice_mut()
                    .expect("invariant: a new array's rows are contiguous");
                for ((&v, &c), &id) in row.iter().zip(cols).zip(ids) {
                    let c = c as usize;
                    if v > sc[c] || (v == sc[c] && id < bs[c]) {
                        sc[c] = v;
                        bs[c] = id;
                    }
                }
            }
        }
    }

    /// Every column at least its mean's score (and [`EMPTY_SCORE`] for a
    /// column without rows), split among threads by patches.
    fn raise_to_lower_bounds(
        &self,
        patches: ArrayView2<'_, f32>,
        scores: &mut Array2<f32>,
        threads: usize,
    ) {
        let chunk = patches.nrows().div_ceil(threads).max(1);
        let raise = |p: ArrayView2<'_, f32>, mut s: ArrayViewMut2<'_, f32>| {
            let mut lower = Array2::<f32>::zeros((p.nrows(), self.means.nrows()));
            general_mat_mul(1.0, &p, &self.means.t(), 0.0, &mut lower);
            for (mut s_row, l_row) in s.rows_mut().into_iter().zip(lower.rows()) {
                for ((v, &low), &empty) in s_row.iter_mut().zip(l_row).zip(&self.empty_col) {
                    *v = if empty { EMPTY_SCORE } else { v.max(low) };
                }
            }
        };
        if threads == 1 {
            raise(patches, scores.view_mut());
        } else {
            std::thread::scope(|sc| {
                for (p, s) in patches
                    .axis_chunks_iter(Axis(0), chunk)
                    .zip(scores.axis_chunks_iter_mut(Axis(0), chunk))
                {
                    sc.spawn(move || raise(p, s));
                }
            });
        }
    }
}
