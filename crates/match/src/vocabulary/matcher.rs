//! What every matcher answers: the [`Matcher`] interface, per-patch [`Scores`] and the argmax with the floor rule.

use ndarray::{Array2, ArrayView2};

use super::Vocabulary;
use crate::Result;

/// Per-patch scores of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// `(n, K + 1)`: column 0 is the background score (the best cosine to a
    /// kept background prototype, [`EMPTY_SCORE`](super::EMPTY_SCORE) when there are none),
    /// column `k` the best cosine to class `k`'s foreground prototypes.
    pub scores: Array2<f32>,
    /// `(n, K + 1)`: the prototype row (see [`Vocabulary::proto_ref`]) that
    /// gave each score, [`NO_PROTO`](super::NO_PROTO) for an empty column.
    pub best_proto: Array2<u32>,
}

impl Scores {
    /// Per-patch labels: the argmax over columns, ties to the lowest; with
    /// `floor = Some(t)`, scores not above `t` count as 0 first (the
    /// reference's threshold rule).
    pub fn labels(&self, floor: Option<f32>) -> Vec<u16> {
        self.scores
            .rows()
            .into_iter()
            .map(|r| argmax_floor(r.iter().copied(), floor) as u16)
            .collect()
    }
}

/// Argmax with the floor rule; ties to the lowest index.
pub fn argmax_floor(v: impl Iterator<Item = f32>, floor: Option<f32>) -> usize {
    let mut bi = 0;
    let mut bv = f32::NEG_INFINITY;
    for (j, x) in v.enumerate() {
        let x = match floor {
            Some(t) if x <= t => 0.0,
            _ => x,
        };
        if x > bv {
            bv = x;
            bi = j;
        }
    }
    bi
}

/// Something that scores patch features against candidate classes. The
/// exact engine is [`Vocabulary`]; an approximate (HNSW) matcher can be
/// added behind the same interface.
pub trait Matcher {
    /// Candidate names; label `k ≥ 1` is `class_names()[k - 1]`.
    fn class_names(&self) -> &[String];
    /// Feature dimension.
    fn dim(&self) -> usize;
    /// Score L2-normalised `(n, dim)` patch features.
    fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores>;
}

impl Matcher for Vocabulary {
    fn class_names(&self) -> &[String] {
        self.names()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        Vocabulary::score(self, patches)
    }
}
