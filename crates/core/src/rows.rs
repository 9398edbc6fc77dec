//! Prototype rows: f16 vectors as a store holds them (owned, or mapped from a file).

use std::fmt;
use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::{Error, Result};

/// Something that holds f16 values, row-major: an owned vector, or a block
/// of a memory-mapped bank file.
pub trait HalfSource: Send + Sync {
    /// The values.
    fn halves(&self) -> &[f16];
}

impl HalfSource for Vec<f16> {
    fn halves(&self) -> &[f16] {
        self
    }
}

/// A class's prototype vectors as f16, row-major, shared without copying.
#[derive(Clone)]
pub struct HalfRows {
    source: Arc<dyn HalfSource>,
    dim: usize,
}

impl fmt::Debug for HalfRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HalfRows")
            .field("rows", &self.len())
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl HalfRows {
    /// Rows of `dim` values over `source`. Errors: `dim` does not divide
    /// the number of values, or is 0 while there are values.
    pub fn new(source: Arc<dyn HalfSource>, dim: usize) -> Result<HalfRows> {
        let n = source.halves().len();
        if (dim == 0 && n > 0) || (dim > 0 && !n.is_multiple_of(dim)) {
            return Err(Error::DimensionMismatch {
                what: "f16 prototype rows".into(),
                expected: format!("a multiple of the dimension {dim}"),
                found: format!("{n} values"),
            });
        }
        Ok(HalfRows { source, dim })
    }

    /// An owned copy of `values` (`len / dim` rows), rounded to f16.
    pub fn from_f32(values: &[f32], dim: usize) -> Result<HalfRows> {
        let mut v = vec![f16::ZERO; values.len()];
        v.convert_from_f32_slice(values);
        HalfRows::new(Arc::new(v), dim)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.source
            .halves()
            .len()
            .checked_div(self.dim)
            .unwrap_or(0)
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i` (panics when out of range).
    pub fn row(&self, i: usize) -> &[f16] {
        &self.source.halves()[i * self.dim..(i + 1) * self.dim]
    }
}
