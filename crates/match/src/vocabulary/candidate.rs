//! One candidate class of a query: its foreground and background prototypes for one encoder, as f32 rows or as a bank's f16 rows.

use ndarray::Array2;
use ovdiff_core::prototype::{Prototype, Side};
use ovdiff_core::rows::HalfRows;

use crate::rows::RowSet;
use crate::{Error, Result};

/// One candidate class: its prototypes for one encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Class name.
    pub name: String,
    /// A stuff class: its background prototypes are ignored, and its
    /// foreground prototypes filter the other classes' backgrounds.
    pub stuff: bool,
    /// Foreground prototypes; need not be normalised.
    pub(crate) fg: RowSet,
    /// For each foreground row, its id in the class's prototype list (for
    /// explanations).
    pub(crate) fg_ids: Vec<u32>,
    /// Background prototypes; may have no rows.
    pub(crate) bg: RowSet,
    /// For each background row, its id in the class's prototype list.
    pub(crate) bg_ids: Vec<u32>,
}

impl Candidate {
    /// A candidate from f32 prototypes, `(n_fg, dim)` and `(n_bg, dim)`,
    /// whose ids are the row numbers (`fg` rows are `0..n_fg`, `bg` rows
    /// `0..n_bg`).
    pub fn new(name: impl Into<String>, stuff: bool, fg: Array2<f32>, bg: Array2<f32>) -> Self {
        let fg_ids = (0..fg.nrows() as u32).collect();
        let bg_ids = (0..bg.nrows() as u32).collect();
        Candidate {
            name: name.into(),
            stuff,
            fg: RowSet::F32(fg),
            fg_ids,
            bg: RowSet::F32(bg),
            bg_ids,
        }
    }

    /// A candidate from a class's prototypes in stored order (as
    /// `Bank::prototypes` returns them); a prototype's id is its index in
    /// `protos`.
    pub fn from_prototypes(
        name: impl Into<String>,
        stuff: bool,
        protos: &[Prototype],
    ) -> Result<Self> {
        let name = name.into();
        let dim = protos.first().map_or(0, |p| p.vector.len());
        let mut fg = Vec::new();
        let mut bg = Vec::new();
        let (mut fg_ids, mut bg_ids) = (Vec::new(), Vec::new());
        for (i, p) in protos.iter().enumerate() {
            if p.vector.len() != dim {
                return Err(Error::DimensionMismatch {
                    what: format!("prototype {i} of class `{name}`"),
                    expected: dim.to_string(),
                    found: p.vector.len().to_string(),
                });
            }
            let (v, ids) = match p.side {
                Side::Foreground => (&mut fg, &mut fg_ids),
                Side::Background => (&mut bg, &mut bg_ids),
            };
            v.extend_from_slice(&p.vector);
            ids.push(i as u32);
        }
        let to = |v: Vec<f32>, n: usize| {
            Array2::from_shape_vec((n, dim), v).expect("invariant: n rows of dim values")
        };
        Ok(Candidate {
            fg: RowSet::F32(to(fg, fg_ids.len())),
            bg: RowSet::F32(to(bg, bg_ids.len())),
            name,
            stuff,
            fg_ids,
            bg_ids,
        })
    }

    /// A candidate over a class's f16 vectors in stored order, without
    /// copying them: `sides[i]` is the side of row `i`, and a prototype's id
    /// is its row. The vocabulary converts rows a block at a time when it
    /// scores, so a query holds no f32 copy of the bank.
    pub fn from_half(
        name: impl Into<String>,
        stuff: bool,
        rows: HalfRows,
        sides: &[Side],
    ) -> Result<Self> {
        let name = name.into();
        if sides.len() != rows.len() {
            return Err(Error::DimensionMismatch {
                what: format!("prototype sides of class `{name}`"),
                expected: rows.len().to_string(),
                found: sides.len().to_string(),
            });
        }
        let pick = |side: Side| -> Vec<u32> {
            (0..sides.len() as u32)
                .filter(|&i| sides[i as usize] == side)
                .collect()
        };
        let (fg_ids, bg_ids) = (pick(Side::Foreground), pick(Side::Background));
        Ok(Candidate {
            fg: RowSet::Half {
                rows: rows.clone(),
                pick: fg_ids.clone(),
            },
            bg: RowSet::Half {
                rows,
                pick: bg_ids.clone(),
            },
            name,
            stuff,
            fg_ids,
            bg_ids,
        })
    }

    /// Number of foreground prototypes.
    pub fn num_foreground(&self) -> usize {
        self.fg.len()
    }

    /// Number of background prototypes.
    pub fn num_background(&self) -> usize {
        self.bg.len()
    }
}
