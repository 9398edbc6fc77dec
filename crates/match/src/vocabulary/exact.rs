//! The exact matcher: every patch against every prototype row of a [`Vocabulary`] by blocked matrix products, then the maximum per score column.

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use ovdiff_core::threads::threads_or_cores;

use super::{Scores, Vocabulary, EMPTY_SCORE, NO_PROTO};
use crate::rows::Matrix;
use crate::{Error, Result};

/// Patches per block of the exact matcher's matrix product.
const ROW_BLOCK: usize = 256;
/// Below this many multiply-adds a score runs on one thread.
const PARALLEL_WORK: usize = 1 << 24;

impl Vocabulary {
    /// Score `patches` (`(n, dim)`, rows L2-normalised) against every
    /// column: exact cosine similarity by blocked matrix products (blocks
    /// of 256 patches × 4096 prototypes, so memory stays bounded for any
    /// bank; f16 rows are converted a block at a time), then the
    /// per-column maximum. Ties go to the lowest row.
    pub fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        check_patch_dim(&patches, self.dim)?;
        let (mut scores, best) =
            segment_maxima(&self.protos, &self.segments, patches, self.threads);
        for (c, seg) in self.segments.iter().enumerate() {
            if seg.is_empty() {
                scores.column_mut(c).fill(EMPTY_SCORE);
            }
        }
        Ok(Scores {
            scores,
            best_proto: best,
        })
    }
}

/// Per row of `patches` and per segment of `protos` rows: the highest
/// dot product and the row that gave it (first on ties); -∞ and
/// [`NO_PROTO`] for an empty segment. Rows of `patches` are split among
/// `threads` threads (0: one per core) when the work is large enough.
pub(super) fn segment_maxima(
    protos: &Matrix,
    segments: &[Range<usize>],
    patches: ArrayView2<'_, f32>,
    threads: usize,
) -> (Array2<f32>, Array2<u32>) {
    let n = patches.nrows();
    let work = n * protos.nrows() * protos.ncols();
    let threads = if work < PARALLEL_WORK {
        1
    } else {
        threads_or_cores(threads)
    };
    score_by_patch_chunks(patches, segments.len(), threads, |p, s, b| {
        maxima_rows(protos, segments, p, s, b)
    })
}

/// Errors unless `patches` has `dim` columns (the prototypes' dimension).
pub(crate) fn check_patch_dim(patches: &ArrayView2<'_, f32>, dim: usize) -> Result<()> {
    if patches.ncols() != dim {
        return Err(Error::DimensionMismatch {
            what: "patch features".into(),
            expected: format!("{dim} columns (the prototypes' dimension)"),
            found: patches.ncols().to_string(),
        });
    }
    Ok(())
}

/// Scores `(n, cols)` and best rows for `patches`, starting at -∞ and
/// [`NO_PROTO`], filled by `kernel` on chunks of patch rows: one chunk per
/// thread, up to `threads` threads and at least 64 patches a chunk.
pub(crate) fn score_by_patch_chunks<K>(
    patches: ArrayView2<'_, f32>,
    cols: usize,
    threads: usize,
    kernel: K,
) -> (Array2<f32>, Array2<u32>)
where
    K: Fn(ArrayView2<'_, f32>, ArrayViewMut2<'_, f32>, ArrayViewMut2<'_, u32>) + Sync,
{
    let n = patches.nrows();
    let mut scores = Array2::from_elem((n, cols), f32::NEG_INFINITY);
    let mut best = Array2::from_elem((n, cols), NO_PROTO);
    let threads = threads.min(n.div_ceil(64)).max(1);
    if threads == 1 {
        kernel(patches, scores.view_mut(), best.view_mut());
    } else {
        let chunk = n.div_ceil(threads);
        let kernel = &kernel;
        std::thread::scope(|sc| {
            let parts = patches
                .axis_chunks_iter(Axis(0), chunk)
                .zip(scores.axis_chunks_iter_mut(Axis(0), chunk))
                .zip(best.axis_chunks_iter_mut(Axis(0), chunk));
            for ((p, s), b) in parts {
                sc.spawn(move || kernel(p, s, b));
            }
        });
    }
    (scores, best)
}

/// The single-threaded kernel of [`segment_maxima`]: for each block of
/// prototype rows (viewed, or converted from f16 once), blocks of
/// [`ROW_BLOCK`] patches by one matrix product each, folded into `scores` /
/// `best` (which start at -∞ / [`NO_PROTO`]).
fn maxima_rows(
    protos: &Matrix,
    segments: &[Range<usize>],
    patches: ArrayView2<'_, f32>,
    mut scores: ArrayViewMut2<'_, f32>,
    mut best: ArrayViewMut2<'_, u32>,
) {
    let n = patches.nrows();
    let np = protos.nrows();
    if n == 0 || np == 0 {
        return;
    }
    let block_rows = protos.block_rows();
    let mut proto_buf = protos.block_buffer();
    let mut buf = Array2::<f32>::zeros((ROW_BLOCK.min(n), block_rows.min(np)));
    let mut seg = 0;
    for c0 in (0..np).step_by(block_rows) {
        let c1 = (c0 + block_rows).min(np);
        let b = protos.block(c0, c1, &mut proto_buf);
        while seg < segments.len() && segments[seg].end <= c0 {
            seg += 1;
        }
        for r0 in (0..n).step_by(ROW_BLOCK) {
            let r1 = (r0 + ROW_BLOCK).min(n);
            let a = patches.slice(s![r0..r1, ..]);
            let mut sims = buf.slice_mut(s![..r1 - r0, ..c1 - c0]);
            general_mat_mul(1.0, &a, &b.t(), 0.0, &mut sims);
            let mut k = seg;
            while k < segments.len() && segments[k].start < c1 {
                let (s0, s1) = (segments[k].start.max(c0), segments[k].end.min(c1));
                if s0 < s1 {
                    for (i, row) in sims.rows().into_iter().enumerate() {
                        let row = row
                            .as_slice()
                            .expect("invariant: buffer rows are contiguous");
                        let (j, v) = first_max(&row[s0 - c0..s1 - c0]);
                        let cur = &mut scores[[r0 + i, k]];
                        if v > *cur {
                            *cur = v;
                            best[[r0 + i, k]] = (s0 + j) as u32;
                        }
                    }
                }
                k += 1;
            }
        }
    }
}
/// Index and value of the first maximum of a non-empty slice.
fn first_max(v: &[f32]) -> (usize, f32) {
    let mut bi = 0;
    let mut bv = f32::NEG_INFINITY;
    for (j, &x) in v.iter().enumerate() {
        if x > bv {
            bv = x;
            bi = j;
        }
    }
    (bi, bv)
}
