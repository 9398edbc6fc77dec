//! OVDiff's stuff rule: a thing class's background prototype that looks like a candidate stuff class's foreground is dropped, so the sky behind a cat does not vote "background" against `sky`.

use std::ops::Range;

use ndarray::Array2;

use super::exact::segment_maxima;
use crate::rows::{Matrix, F32_BLOCK};

/// Background prototypes of thing classes whose cosine to a candidate stuff
/// class's foreground prototype is above this are dropped (OVDiff's value).
pub const STUFF_BG_THRESHOLD: f32 = 0.85;

/// Which of `backgrounds` background rows the rule drops: those whose
/// cosine to some row of `stuff_fg` (the stuff candidates' normalised
/// foreground rows) is strictly greater than `threshold`. `fill(rows, out)`
/// writes the normalised background rows `rows` into `out`; they are
/// compared a block of [`F32_BLOCK`] rows at a time, so they are never all
/// held as f32.
pub(super) fn dropped_backgrounds(
    stuff_fg: Array2<f32>,
    backgrounds: usize,
    threshold: f32,
    fill: impl Fn(Range<usize>, &mut Array2<f32>),
) -> Vec<bool> {
    let mut dropped = vec![false; backgrounds];
    if stuff_fg.nrows() == 0 {
        return dropped;
    }
    let dim = stuff_fg.ncols();
    // one segment: every stuff row
    let all: Vec<Range<usize>> = std::iter::once(0..stuff_fg.nrows()).collect();
    let stuff_fg = Matrix::F32(stuff_fg);
    for b0 in (0..backgrounds).step_by(F32_BLOCK) {
        let b1 = (b0 + F32_BLOCK).min(backgrounds);
        let mut block = Array2::<f32>::zeros((b1 - b0, dim));
        fill(b0..b1, &mut block);
        let (max_sim, _) = segment_maxima(&stuff_fg, &all, block.view(), 0);
        for (d, sim) in dropped[b0..b1].iter_mut().zip(max_sim.column(0)) {
            *d = *sim > threshold;
        }
    }
    dropped
}
