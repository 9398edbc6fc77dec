//! A query's candidate classes stacked into one [`Vocabulary`] (rows grouped by the score column they vote for, after OVDiff's stuff rule), with the [`Matcher`] interface and the exact matcher.
//!
//! The rules follow OVDiff's reference code (karazijal/sdov, `predict.py`
//! and `protos.py`):
//!
//! * a patch's score for class *k* is its highest cosine similarity to any
//!   of *k*'s foreground prototypes (`predict.py`: `einsum("hwf,lckf->lckhw")`
//!   then `max(dim=2)`);
//! * its *background* score is its highest cosine to any background
//!   prototype of any candidate class (`agg_similarity[0].max(dim=0)`), so no
//!   threshold is needed to say "none of these";
//! * *stuff* classes (sky, grass, …) contribute no background prototypes
//!   (`protos.py`, `build_prototypes`: "Skipping context class"), and a
//!   background prototype of a thing class is dropped when its cosine to any
//!   stuff class's foreground prototype exceeds 0.85
//!   (`filter_proto_bg2allfg` with `--filter_bg_thres 0.85`, ctx mode), so
//!   the sky behind a photographed cat does not vote "background" against
//!   the candidate class `sky`;
//! * window scores are upsampled bilinearly (`align_corners=False`), clamped
//!   to `[-1, 1]`, averaged over the windows covering each pixel, floored at
//!   the threshold (`--thresholds 0.0`: scores not above it count as 0) and
//!   the label is the argmax, ties to the lowest label (background first).
//!
//! Where this engine differs from the reference it says so on the item.
//!
//! # Contents
//!
//! * [`Candidate`]: one candidate class's prototypes, as f32 rows or as a
//!   bank's f16 rows;
//! * [`Vocabulary`]: the candidates stacked into one matrix, after the stuff
//!   rule ([`STUFF_BG_THRESHOLD`]), which drops the thing classes'
//!   backgrounds that look like a candidate stuff class;
//! * [`Matcher`] and [`Scores`]: what every matcher answers;
//! * the exact matcher, [`Vocabulary::score`]: blocked matrix products over
//!   every row.

mod candidate;
mod exact;
mod matcher;
mod stuff;
#[cfg(test)]
mod tests;

use std::ops::Range;

use ndarray::{Array2, CowArray, Ix2};
use ovdiff_core::prototype::Side;
use ovdiff_core::rows::HalfRows;

pub use candidate::Candidate;
pub(crate) use exact::{check_patch_dim, score_by_patch_chunks};
pub use matcher::{argmax_floor, Matcher, Scores};
pub use stuff::STUFF_BG_THRESHOLD;

use crate::rows::{Matrix, RowAt, RowSet};
use crate::{Error, Result};

/// `best_proto` / `LabelMap::proto` value when no prototype won (the
/// background column of a vocabulary without background prototypes, or a
/// pixel no window covered).
pub const NO_PROTO: u32 = u32::MAX;

/// The score of a column without prototypes (the background column when
/// every background prototype was dropped or no candidate has one): the
/// lowest cosine, as in the reference, where masked prototypes score -1.
pub const EMPTY_SCORE: f32 = -1.0;

/// Most candidate classes a vocabulary may hold (labels are `u16`, 0 is
/// background).
pub const MAX_CLASSES: usize = u16::MAX as usize;

/// Which prototype of which candidate a row of the vocabulary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoRef {
    /// The owning candidate's label (1-based: candidate `i` is label `i + 1`).
    /// For a background prototype this is the class whose support images it
    /// came from, not the label it votes for (it votes for 0).
    pub class: u16,
    /// Foreground or background.
    pub side: Side,
    /// Its id in the candidate (its index in the class's prototype list).
    pub id: u32,
}

/// The candidate classes of one query, stacked for matching with one
/// encoder's features.
///
/// All prototypes form one L2-normalised matrix, rows grouped by the
/// score column they vote for: first the background rows `B` (the kept
/// background prototypes of the non-stuff candidates, in candidate order),
/// then the foreground rows of candidate 1, candidate 2, … ([`segment`]
/// gives the rows of a column). A row number is what
/// [`Scores::best_proto`] and ovdiff-segment's `LabelMap::proto` hold; [`proto_ref`] turns
/// it into (class, side, id).
///
/// Candidates given as f16 rows ([`Candidate::from_half`]) are not copied:
/// the matrix refers to them and the exact matcher converts a block of rows
/// at a time. Candidates given as f32 are normalised into an f32 matrix.
///
/// [`segment`]: Vocabulary::segment
/// [`proto_ref`]: Vocabulary::proto_ref
#[derive(Debug, Clone)]
pub struct Vocabulary {
    names: Vec<String>,
    stuff: Vec<bool>,
    dim: usize,
    protos: Matrix,
    segments: Vec<Range<usize>>,
    refs: Vec<ProtoRef>,
    dropped: Vec<ProtoRef>,
    threads: usize,
}

/// A row of a candidate, before stacking.
#[derive(Clone, Copy)]
struct CandRow {
    cand: usize,
    side: Side,
    /// Row in the candidate's side.
    k: usize,
}

impl Vocabulary {
    /// Stack `candidates` with the OVDiff stuff rule at
    /// [`STUFF_BG_THRESHOLD`].
    pub fn new(candidates: Vec<Candidate>) -> Result<Vocabulary> {
        Self::with_stuff_threshold(candidates, STUFF_BG_THRESHOLD)
    }

    /// Stack `candidates`; a thing class's background prototype is dropped
    /// when its cosine to some stuff candidate's foreground prototype is
    /// strictly greater than `threshold` (`f32::INFINITY` keeps them all).
    ///
    /// Unlike the reference (`filter_proto_bg2allfg` returns a class's
    /// backgrounds unfiltered when it has only one), the rule applies to
    /// every background prototype.
    ///
    /// Errors: no candidates, more than [`MAX_CLASSES`], a repeated or empty
    /// name, a class without foreground prototypes, prototypes of different
    /// dimensions, id lists of the wrong length, non-finite values.
    pub fn with_stuff_threshold(candidates: Vec<Candidate>, threshold: f32) -> Result<Vocabulary> {
        Self::build(candidates, threshold, None)
    }

    /// [`new`](Vocabulary::new) with the stuff rule's outcome already
    /// known: `dropped(i, id)` says whether background prototype `id` of
    /// candidate `i` (a thing class) is dropped, e.g. as recorded with the
    /// IVF lists of a bank file written for exactly these candidates. It
    /// skips the rule's product of every stuff foreground against every
    /// background (seconds at 1,000 classes).
    pub fn with_known_drops(
        candidates: Vec<Candidate>,
        dropped: &dyn Fn(usize, u32) -> bool,
    ) -> Result<Vocabulary> {
        Self::build(candidates, STUFF_BG_THRESHOLD, Some(dropped))
    }

    fn build(
        candidates: Vec<Candidate>,
        threshold: f32,
        known: Option<&dyn Fn(usize, u32) -> bool>,
    ) -> Result<Vocabulary> {
        if candidates.is_empty() {
            return Err(Error::Invalid(
                "empty vocabulary: at least one candidate class is needed".into(),
            ));
        }
        if candidates.len() > MAX_CLASSES {
            return Err(Error::Invalid(format!(
                "{} candidate classes; at most {MAX_CLASSES} are supported",
                candidates.len()
            )));
        }
        let mut dim = 0;
        let mut seen = std::collections::HashSet::new();
        for c in &candidates {
            if c.name.is_empty() {
                return Err(Error::Invalid("a candidate class has an empty name".into()));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(Error::Invalid(format!(
                    "class `{}` is a candidate twice",
                    c.name
                )));
            }
            if c.fg.len() == 0 {
                return Err(Error::Invalid(format!(
                    "class `{}` has no foreground prototypes",
                    c.name
                )));
            }
            for (what, m, ids) in [
                ("foreground", &c.fg, &c.fg_ids),
                ("background", &c.bg, &c.bg_ids),
            ] {
                if ids.len() != m.len() {
                    return Err(Error::DimensionMismatch {
                        what: format!("{what} prototype ids of class `{}`", c.name),
                        expected: m.len().to_string(),
                        found: ids.len().to_string(),
                    });
                }
                if m.len() == 0 {
                    continue;
                }
                if dim == 0 {
                    dim = m.dim();
                }
                if m.dim() != dim {
                    return Err(Error::DimensionMismatch {
                        what: format!("{what} prototypes of class `{}`", c.name),
                        expected: dim.to_string(),
                        found: m.dim().to_string(),
                    });
                }
                if !m.is_finite() {
                    return Err(Error::Invalid(format!(
                        "class `{}` has non-finite {what} prototype values",
                        c.name
                    )));
                }
            }
        }
        if dim == 0 {
            return Err(Error::Invalid("prototypes have dimension 0".into()));
        }
        fn side_of(c: &Candidate, side: Side) -> &RowSet {
            match side {
                Side::Foreground => &c.fg,
                Side::Background => &c.bg,
            }
        }
        // Fill `out` with the normalised rows `rows`.
        let fill = |rows: &[CandRow], out: &mut Array2<f32>| {
            for (r, mut dst) in rows.iter().zip(out.rows_mut()) {
                side_of(&candidates[r.cand], r.side).normalized_row(
                    r.k,
                    dst.as_slice_mut()
                        .expect("invariant: owned matrices are standard layout"),
                );
            }
        };
        let side_rows = |side: Side, keep: &dyn Fn(&Candidate) -> bool| -> Vec<CandRow> {
            let mut rows = Vec::new();
            for (i, c) in candidates.iter().enumerate().filter(|(_, c)| keep(c)) {
                rows.extend((0..side_of(c, side).len()).map(|k| CandRow { cand: i, side, k }));
            }
            rows
        };
        let bg_rows = side_rows(Side::Background, &|c| !c.stuff);
        let dropped_row = match known {
            Some(known) => bg_rows
                .iter()
                .map(|r| known(r.cand, candidates[r.cand].bg_ids[r.k]))
                .collect(),
            None => {
                // The foreground prototypes of the stuff candidates filter
                // the backgrounds of the thing candidates.
                let stuff_rows = side_rows(Side::Foreground, &|c| c.stuff);
                let mut stuff_fg = Array2::<f32>::zeros((stuff_rows.len(), dim));
                fill(&stuff_rows, &mut stuff_fg);
                stuff::dropped_backgrounds(stuff_fg, bg_rows.len(), threshold, |rows, out| {
                    fill(&bg_rows[rows], out)
                })
            }
        };
        let proto_ref = |r: &CandRow| {
            let c = &candidates[r.cand];
            ProtoRef {
                class: (r.cand + 1) as u16,
                side: r.side,
                id: match r.side {
                    Side::Foreground => c.fg_ids[r.k],
                    Side::Background => c.bg_ids[r.k],
                },
            }
        };
        let mut stacked: Vec<CandRow> = Vec::new();
        let mut dropped = Vec::new();
        for (r, gone) in bg_rows.iter().zip(&dropped_row) {
            if *gone {
                dropped.push(proto_ref(r));
            } else {
                stacked.push(*r);
            }
        }
        let mut segments = Vec::with_capacity(candidates.len() + 1);
        segments.push(0..stacked.len());
        for (i, c) in candidates.iter().enumerate() {
            let start = stacked.len();
            stacked.extend((0..c.fg.len()).map(|k| CandRow {
                cand: i,
                side: Side::Foreground,
                k,
            }));
            segments.push(start..stacked.len());
        }
        let refs: Vec<ProtoRef> = stacked.iter().map(proto_ref).collect();
        let all_half = candidates
            .iter()
            .all(|c| matches!((&c.fg, &c.bg), (RowSet::Half { .. }, RowSet::Half { .. })));
        let protos = if all_half {
            // One source per candidate (its f16 block); rows point into them.
            let sources: Vec<HalfRows> = candidates
                .iter()
                .map(|c| match &c.fg {
                    RowSet::Half { rows, .. } => rows.clone(),
                    RowSet::F32(_) => unreachable!("checked: every candidate is f16"),
                })
                .collect();
            let rows = stacked
                .iter()
                .map(|r| {
                    let pick = match side_of(&candidates[r.cand], r.side) {
                        RowSet::Half { pick, .. } => pick,
                        RowSet::F32(_) => unreachable!("checked: every candidate is f16"),
                    };
                    RowAt {
                        source: r.cand as u32,
                        row: pick[r.k],
                    }
                })
                .collect();
            Matrix::Half { sources, rows, dim }
        } else {
            let mut m = Array2::<f32>::zeros((stacked.len(), dim));
            fill(&stacked, &mut m);
            Matrix::F32(m)
        };
        let stuff = candidates.iter().map(|c| c.stuff).collect();
        Ok(Vocabulary {
            names: candidates.into_iter().map(|c| c.name).collect(),
            stuff,
            dim,
            protos,
            segments,
            refs,
            dropped,
            threads: 0,
        })
    }

    /// Use `threads` threads to score (0: one per core, the default).
    pub fn with_threads(mut self, threads: usize) -> Vocabulary {
        self.threads = threads;
        self
    }

    /// Number of candidate classes `K` (score columns are `K + 1`).
    pub fn num_classes(&self) -> usize {
        self.names.len()
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Candidate names; label `k ≥ 1` is `names()[k - 1]`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether label `k ≥ 1` is a stuff class.
    pub fn is_stuff(&self, label: usize) -> bool {
        label >= 1 && self.stuff.get(label - 1).copied().unwrap_or(false)
    }

    /// The prototype rows that vote for score column `column` (0 =
    /// background).
    pub fn segment(&self, column: usize) -> Range<usize> {
        self.segments[column].clone()
    }

    /// All prototypes, L2-normalised, `(rows, dim)`: a view of an f32
    /// vocabulary, or a converted copy of an f16 one (the exact matcher
    /// never needs it; the HNSW builder does).
    pub fn prototypes(&self) -> CowArray<'_, f32, Ix2> {
        self.protos.to_f32()
    }

    /// Number of prototype rows.
    pub fn num_rows(&self) -> usize {
        self.protos.nrows()
    }

    /// True when the rows are f16 converted as they are scored (no f32
    /// copy of the bank is held).
    pub fn is_half(&self) -> bool {
        matches!(self.protos, Matrix::Half { .. })
    }

    /// What prototype row `row` is; `None` for [`NO_PROTO`] or out of range.
    pub fn proto_ref(&self, row: u32) -> Option<ProtoRef> {
        self.refs.get(row as usize).copied()
    }

    /// Number of background prototypes kept.
    pub fn num_background(&self) -> usize {
        self.segments[0].len()
    }

    /// Number of foreground prototypes.
    pub fn num_foreground(&self) -> usize {
        self.refs.len() - self.num_background()
    }

    /// The background prototypes the stuff rule dropped.
    pub fn dropped_background(&self) -> &[ProtoRef] {
        &self.dropped
    }
}
