//! Dense f32 maps (saliency, attention, score maps): resizing and min-max normalisation.

use ndarray::{Array2, ArrayView2};

/// Smallest value range divided by in min-max normalisation (OVDiff clamps
/// the divisor at `1e-6`); a flatter map normalises to all zeros.
const MIN_RANGE: f32 = 1e-6;
/// Relative range under which a resampled map counts as flat: f32 rounding
/// in the resampling weights makes a constant map wobble by ~1e-7 of its value.
const REL_FLAT: f32 = 1e-5;

/// Min-max normalise in place. A flat map (range at most `1e-6`, or at most
/// `1e-5` of its magnitude: resampling noise) becomes all zeros.
pub fn min_max_normalize(map: &mut Array2<f32>) {
    let lo = map.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = hi - lo;
    if range.is_nan() || range <= MIN_RANGE.max(REL_FLAT * lo.abs().max(hi.abs())) {
        map.fill(0.0);
        return;
    }
    map.mapv_inplace(|v| ((v - lo) / range).clamp(0.0, 1.0));
}

/// Resize `src` to `h × w`: `R_y · src · R_xᵀ` with per-axis weight matrices.
pub fn resize(src: ArrayView2<f32>, h: usize, w: usize) -> Array2<f32> {
    let ry = axis_weights(src.nrows(), h);
    let rx = axis_weights(src.ncols(), w);
    ry.dot(&src).dot(&rx.t())
}

/// `(dst, src)` interpolation weights along one axis; each row sums to 1.
/// Area averaging when shrinking (or keeping the size), bilinear with
/// half-pixel centres when growing.
fn axis_weights(src: usize, dst: usize) -> Array2<f32> {
    let mut m = Array2::<f32>::zeros((dst, src));
    if dst <= src {
        let scale = src as f64 / dst as f64;
        for i in 0..dst {
            let lo = i as f64 * scale;
            let hi = (i + 1) as f64 * scale;
            let first = lo.floor() as usize;
            let last = (hi.ceil() as usize).min(src);
            for j in first..last {
                let overlap = (hi.min((j + 1) as f64) - lo.max(j as f64)).max(0.0);
                m[[i, j]] = (overlap / scale) as f32;
            }
        }
    } else {
        let scale = src as f64 / dst as f64;
        for i in 0..dst {
            let pos = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
            let j0 = pos.floor() as usize;
            let j1 = (j0 + 1).min(src - 1);
            let frac = pos - j0 as f64;
            m[[i, j0]] += (1.0 - frac) as f32;
            m[[i, j1]] += frac as f32;
        }
    }
    m
}
