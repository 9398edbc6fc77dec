//! Prototype rows as the matcher reads them.
//!
//! A query over a bank file must not hold more than the file's f16 vectors:
//! they stay where they are (memory-mapped, or one owned f16 copy for a bank
//! folder) and the exact matcher converts a block of rows at a time to
//! L2-normalised f32 just before its matrix product. Rows given as f32
//! (tests, callers that compute prototypes in memory) are normalised once
//! and kept as f32.

use half::slice::HalfFloatSliceExt;
use ndarray::{s, Array2, ArrayView2, CowArray, Ix2};

use ovdiff_core::grid::l2_normalize;
use ovdiff_core::rows::HalfRows;

/// The rows of one side (foreground or background) of a candidate class.
#[derive(Debug, Clone)]
pub(crate) enum RowSet {
    /// As given, not yet normalised.
    F32(Array2<f32>),
    /// Rows `pick` of a class's f16 vectors.
    Half { rows: HalfRows, pick: Vec<u32> },
}

impl PartialEq for RowSet {
    fn eq(&self, other: &RowSet) -> bool {
        self.len() == other.len()
            && self.dim() == other.dim()
            && (0..self.len()).all(|i| {
                let (mut a, mut b) = (vec![0.0; self.dim()], vec![0.0; other.dim()]);
                self.raw_row(i, &mut a);
                other.raw_row(i, &mut b);
                a == b
            })
    }
}

impl RowSet {
    pub(crate) fn len(&self) -> usize {
        match self {
            RowSet::F32(m) => m.nrows(),
            RowSet::Half { pick, .. } => pick.len(),
        }
    }

    /// Values per row (the f32 matrix's columns even when it has no rows).
    pub(crate) fn dim(&self) -> usize {
        match self {
            RowSet::F32(m) => m.ncols(),
            RowSet::Half { rows, .. } => rows.dim(),
        }
    }

    /// True when every value is finite.
    pub(crate) fn is_finite(&self) -> bool {
        match self {
            RowSet::F32(m) => m.iter().all(|v| v.is_finite()),
            RowSet::Half { rows, pick } => pick
                .iter()
                .all(|&r| rows.row(r as usize).iter().all(|v| v.is_finite())),
        }
    }

    /// Every row as f32, as stored (not normalised).
    pub(crate) fn to_array(&self) -> Array2<f32> {
        let mut m = Array2::zeros((self.len(), self.dim()));
        for (i, mut row) in m.rows_mut().into_iter().enumerate() {
            self.raw_row(
                i,
                row.as_slice_mut()
                    .expect("invariant: owned matrices are standard layout"),
            );
        }
        m
    }

    /// Row `i` as f32, as stored.
    fn raw_row(&self, i: usize, out: &mut [f32]) {
        match self {
            RowSet::F32(m) => out.copy_from_slice(
                m.row(i)
                    .as_slice()
                    .expect("invariant: owned matrices are standard layout"),
            ),
            RowSet::Half { rows, pick } => rows.row(pick[i] as usize).convert_to_f32_slice(out),
        }
    }

    /// Row `i`, L2-normalised, into `out`.
    pub(crate) fn normalized_row(&self, i: usize, out: &mut [f32]) {
        self.raw_row(i, out);
        l2_normalize(out);
    }
}

/// Where a row of a [`Matrix::Half`] comes from: a source and a row in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowAt {
    pub source: u32,
    pub row: u32,
}

/// The stacked prototype rows of a vocabulary, L2-normalised when read.
#[derive(Debug, Clone)]
pub(crate) enum Matrix {
    /// Normalised f32 rows.
    F32(Array2<f32>),
    /// f16 rows left where they are; normalised a block at a time.
    Half {
        sources: Vec<HalfRows>,
        rows: Vec<RowAt>,
        dim: usize,
    },
}

/// Rows per converted block of a [`Matrix::Half`]: 0.75 MiB of f32 at 384
/// dimensions, per thread.
pub(crate) const HALF_BLOCK: usize = 512;
/// Rows per block of a [`Matrix::F32`] (a view, nothing is copied).
pub(crate) const F32_BLOCK: usize = 4096;

impl Matrix {
    pub(crate) fn nrows(&self) -> usize {
        match self {
            Matrix::F32(m) => m.nrows(),
            Matrix::Half { rows, .. } => rows.len(),
        }
    }

    pub(crate) fn ncols(&self) -> usize {
        match self {
            Matrix::F32(m) => m.ncols(),
            Matrix::Half { dim, .. } => *dim,
        }
    }

    /// Rows per block for [`Matrix::block`].
    pub(crate) fn block_rows(&self) -> usize {
        match self {
            Matrix::F32(_) => F32_BLOCK,
            Matrix::Half { .. } => HALF_BLOCK,
        }
    }

    /// A buffer for [`Matrix::block`] (empty for f32 rows, which are viewed).
    pub(crate) fn block_buffer(&self) -> Array2<f32> {
        match self {
            Matrix::F32(_) => Array2::zeros((0, 0)),
            Matrix::Half { dim, .. } => Array2::zeros((HALF_BLOCK.min(self.nrows()), *dim)),
        }
    }

    /// Rows `r0..r1` (at most [`Matrix::block_rows`]), normalised:
    /// a view of the f32 rows, or converted into `buf`.
    pub(crate) fn block<'a>(
        &'a self,
        r0: usize,
        r1: usize,
        buf: &'a mut Array2<f32>,
    ) -> ArrayView2<'a, f32> {
        match self {
            Matrix::F32(m) => m.slice(s![r0..r1, ..]),
            Matrix::Half { sources, rows, dim } => {
                let mut out = buf.slice_mut(s![..r1 - r0, ..]);
                for (at, mut dst) in rows[r0..r1].iter().zip(out.rows_mut()) {
                    let dst = dst
                        .as_slice_mut()
                        .expect("invariant: buffer rows are contiguous");
                    sources[at.source as usize]
                        .row(at.row as usize)
                        .convert_to_f32_slice(dst);
                    l2_normalize(dst);
                }
                debug_assert_eq!(out.ncols(), *dim);
                buf.slice(s![..r1 - r0, ..])
            }
        }
    }

    /// Every row, normalised: a view of f32 rows, or all f16 rows converted
    /// (as much memory as an f32 matrix; the exact matcher never needs it).
    pub(crate) fn to_f32(&self) -> CowArray<'_, f32, Ix2> {
        match self {
            Matrix::F32(m) => CowArray::from(m.view()),
            Matrix::Half { dim, .. } => {
                let n = self.nrows();
                let mut all = Array2::zeros((n, *dim));
                let mut buf = self.block_buffer();
                for r0 in (0..n).step_by(HALF_BLOCK) {
                    let r1 = (r0 + HALF_BLOCK).min(n);
                    let b = self.block(r0, r1, &mut buf);
                    all.slice_mut(s![r0..r1, ..]).assign(&b);
                }
                CowArray::from(all)
            }
        }
    }
}
