//! Patch-feature grids: the h×w lattice of L2-normalised patch tokens an encoder yields for one image.

use ndarray::Array2;

/// Patch features of one image.
///
/// `features` has shape `(h * w, dim)`, rows in row-major patch order
/// (row `y * w + x` is the patch at grid row `y`, column `x`). Each row is
/// L2-normalised unless it was all zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchGrid {
    /// Grid height in patches.
    pub h: usize,
    /// Grid width in patches.
    pub w: usize,
    /// `(h * w, dim)` features.
    pub features: Array2<f32>,
}

impl PatchGrid {
    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.features.ncols()
    }

    /// Number of patches (`h * w`).
    pub fn len(&self) -> usize {
        self.h * self.w
    }

    /// True when the grid has no patches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// L2-normalise every row of `m` in place; rows of norm zero stay zero.
pub fn l2_normalize_rows(m: &mut Array2<f32>) {
    for mut row in m.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
}

/// L2-normalise a vector in place; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
