//! The matching engine: candidate classes → a prototype matrix, patch features → per-class scores, windows → a fused label map.
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

use std::ops::Range;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis, CowArray, Ix2};
use ovdiff_core::prototype::{Prototype, Side};
use ovdiff_core::rows::HalfRows;
use ovdiff_core::threads::threads_or_cores;

use crate::rows::{Matrix, RowAt, RowSet, F32_BLOCK};
use crate::{Error, Result};

/// Background prototypes of thing classes whose cosine to a candidate stuff
/// class's foreground prototype is above this are dropped (OVDiff's value).
pub const STUFF_BG_THRESHOLD: f32 = 0.85;

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

/// Patches per block of the exact matcher's matrix product.
const ROW_BLOCK: usize = 256;
/// Below this many multiply-adds a score runs on one thread.
const PARALLEL_WORK: usize = 1 << 24;

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
/// [`Scores::best_proto`] and [`LabelMap::proto`] hold; [`proto_ref`] turns
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
        // The foreground prototypes of the stuff candidates filter the
        // backgrounds of the thing candidates, in blocks of background rows.
        let stuff_rows = side_rows(Side::Foreground, &|c| c.stuff);
        let bg_rows = side_rows(Side::Background, &|c| !c.stuff);
        let mut stuff_fg = Array2::<f32>::zeros((stuff_rows.len(), dim));
        fill(&stuff_rows, &mut stuff_fg);
        let mut dropped_row = vec![false; bg_rows.len()];
        if let Some(known) = known {
            for (d, r) in dropped_row.iter_mut().zip(&bg_rows) {
                *d = known(r.cand, candidates[r.cand].bg_ids[r.k]);
            }
        } else if !stuff_rows.is_empty() {
            let stuff_fg = Matrix::F32(stuff_fg);
            let all = std::iter::once(0..stuff_rows.len()).collect::<Vec<_>>();
            for b0 in (0..bg_rows.len()).step_by(F32_BLOCK) {
                let b1 = (b0 + F32_BLOCK).min(bg_rows.len());
                let mut block = Array2::<f32>::zeros((b1 - b0, dim));
                fill(&bg_rows[b0..b1], &mut block);
                let (max_sim, _) = segment_maxima(&stuff_fg, &all, block.view(), 0);
                for (d, sim) in dropped_row[b0..b1].iter_mut().zip(max_sim.column(0)) {
                    *d = *sim > threshold;
                }
            }
        }
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
fn segment_maxima(
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

/// Per-patch scores of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// `(n, K + 1)`: column 0 is the background score (the best cosine to a
    /// kept background prototype, [`EMPTY_SCORE`] when there are none),
    /// column `k` the best cosine to class `k`'s foreground prototypes.
    pub scores: Array2<f32>,
    /// `(n, K + 1)`: the prototype row (see [`Vocabulary::proto_ref`]) that
    /// gave each score, [`NO_PROTO`] for an empty column.
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::oracle::{random_bank, random_patches, Rng};
    use ndarray::array;

    fn cand(name: &str, stuff: bool, fg: Array2<f32>, bg: Array2<f32>) -> Candidate {
        Candidate::new(name, stuff, fg, bg)
    }

    fn none(d: usize) -> Array2<f32> {
        Array2::zeros((0, d))
    }

    #[test]
    fn the_stuff_rule_drops_backgrounds_close_to_stuff() {
        let c09 = (1.0f32 - 0.81).sqrt();
        let cands = vec![
            cand(
                "sky",
                true,
                array![[1.0, 0.0, 0.0]],
                array![[0.0, 1.0, 0.0]],
            ),
            cand(
                "cat",
                false,
                array![[0.0, 0.0, 1.0]],
                array![[0.9, c09, 0.0], [0.8, 0.0, 0.6], [0.0, 2.0, 0.0]],
            ),
        ];
        let v = Vocabulary::new(cands.clone()).unwrap();
        assert_eq!(v.num_classes(), 2);
        assert_eq!(v.num_background(), 2);
        assert_eq!(v.num_foreground(), 2);
        assert_eq!(
            v.dropped_background(),
            &[ProtoRef {
                class: 2,
                side: Side::Background,
                id: 0
            }]
        );
        let kept: Vec<u32> = v
            .segment(0)
            .map(|r| v.proto_ref(r as u32).unwrap().id)
            .collect();
        assert_eq!(kept, vec![1, 2]);
        assert!(v
            .prototypes()
            .rows()
            .into_iter()
            .all(|r| (r.dot(&r) - 1.0).abs() < 1e-6));
        assert!(v.is_stuff(1) && !v.is_stuff(2) && !v.is_stuff(0));
        // the stuff class's own background is never used: sky's [0, 1, 0]
        // is not there, cat's [0, 2, 0] is (normalised)
        let all = Vocabulary::with_stuff_threshold(cands, f32::INFINITY).unwrap();
        assert_eq!(all.num_background(), 3);
        assert!(all.dropped_background().is_empty());
        // a sky-like patch closest to the dropped background prototype is
        // sky, not background; without the rule it would be background
        let s = v.score(array![[0.9, c09, 0.0]].view()).unwrap();
        assert_eq!(s.labels(None), vec![1]);
        let s = all.score(array![[0.9, c09, 0.0]].view()).unwrap();
        assert_eq!(s.labels(None), vec![0]);
    }

    #[test]
    fn bad_vocabularies_are_refused() {
        let e = Vocabulary::new(vec![]).unwrap_err().to_string();
        assert!(e.contains("empty vocabulary"), "{e}");
        let e = Vocabulary::new(vec![cand(
            "a",
            false,
            array![[1.0, 0.0, 0.0]],
            array![[1.0, 0.0]],
        )])
        .unwrap_err();
        assert!(matches!(e, Error::DimensionMismatch { .. }), "{e}");
        let e = Vocabulary::new(vec![
            cand("a", false, array![[1.0, 0.0]], none(2)),
            cand("b", false, array![[1.0, 0.0, 0.0]], none(3)),
        ])
        .unwrap_err();
        assert!(matches!(e, Error::DimensionMismatch { .. }), "{e}");
        let e = Vocabulary::new(vec![cand("a", false, none(2), array![[1.0, 0.0]])]).unwrap_err();
        assert!(e.to_string().contains("no foreground"), "{e}");
        let e = Vocabulary::new(vec![
            cand("a", false, array![[1.0, 0.0]], none(2)),
            cand("a", true, array![[0.0, 1.0]], none(2)),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e =
            Vocabulary::new(vec![cand("a", false, array![[f32::NAN, 0.0]], none(2))]).unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let mut c = cand("a", false, array![[1.0, 0.0]], none(2));
        c.fg_ids.push(7);
        assert!(Vocabulary::new(vec![c]).is_err());
        let v = Vocabulary::new(vec![cand("a", false, array![[1.0, 0.0]], none(2))]).unwrap();
        assert!(matches!(
            v.score(array![[1.0, 0.0, 0.0]].view()).unwrap_err(),
            Error::DimensionMismatch { .. }
        ));
    }

    #[test]
    fn candidates_from_prototypes_keep_their_ids() {
        use ovdiff_core::prototype::{Level, Provenance};
        let p = |side, v: Vec<f32>| Prototype {
            level: Level::Part,
            side,
            vector: v,
            support: 1,
            provenance: Provenance {
                image: 0,
                grid_h: 1,
                grid_w: 1,
                region: vec![true],
            },
        };
        let protos = vec![
            p(Side::Foreground, vec![1.0, 0.0]),
            p(Side::Background, vec![0.0, 1.0]),
            p(Side::Foreground, vec![0.6, 0.8]),
        ];
        let c = Candidate::from_prototypes("cat", false, &protos).unwrap();
        assert_eq!((c.fg_ids.clone(), c.bg_ids.clone()), (vec![0, 2], vec![1]));
        assert_eq!(c.fg.to_array().row(1).to_vec(), vec![0.6, 0.8]);
        let mut bad = protos.clone();
        bad[2].vector.push(0.0);
        assert!(Candidate::from_prototypes("cat", false, &bad).is_err());
    }

    /// The same classes as f32 candidates (through `from_prototypes`) and
    /// as f16 rows (through `from_half`), in one stored order that mixes the
    /// sides; values are rounded to f16 first so both hold the same numbers.
    fn both_ways(rng: &mut Rng, cands: &[Candidate]) -> (Vec<Candidate>, Vec<Candidate>) {
        use half::f16;
        use ovdiff_core::prototype::{Level, Provenance};
        let mut f32s = Vec::new();
        let mut halves = Vec::new();
        for c in cands {
            let (fg, bg) = (c.fg.to_array(), c.bg.to_array());
            let mut stored: Vec<(Side, Vec<f32>)> = fg
                .rows()
                .into_iter()
                .map(|r| (Side::Foreground, r.to_vec()))
                .chain(
                    bg.rows()
                        .into_iter()
                        .map(|r| (Side::Background, r.to_vec())),
                )
                .collect();
            for i in (1..stored.len()).rev() {
                stored.swap(i, rng.range(0, i + 1));
            }
            for (_, v) in &mut stored {
                v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
            }
            let protos: Vec<Prototype> = stored
                .iter()
                .map(|(side, v)| Prototype {
                    level: Level::Part,
                    side: *side,
                    vector: v.clone(),
                    support: 1,
                    provenance: Provenance {
                        image: 0,
                        grid_h: 1,
                        grid_w: 1,
                        region: vec![true],
                    },
                })
                .collect();
            f32s.push(Candidate::from_prototypes(&c.name, c.stuff, &protos).unwrap());
            let values: Vec<f32> = stored.iter().flat_map(|(_, v)| v.clone()).collect();
            let rows = HalfRows::from_f32(&values, fg.ncols()).unwrap();
            let sides: Vec<Side> = stored.iter().map(|(s, _)| *s).collect();
            halves.push(Candidate::from_half(&c.name, c.stuff, rows, &sides).unwrap());
        }
        (f32s, halves)
    }

    #[test]
    fn half_rows_score_exactly_like_f32_rows() {
        // The last case has over 4,096 rows: several blocks of both kinds.
        for (seed, (k, d, fg, bg)) in [
            (3, 16, (1, 6), (0, 4)),
            (12, 64, (1, 30), (0, 30)),
            (40, 32, (100, 150), (5, 20)),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rng = Rng::new(100 + seed as u64);
            let cands = random_bank(&mut rng, k, d, fg, bg);
            let (f32s, halves) = both_ways(&mut rng, &cands);
            let a = Vocabulary::new(f32s.clone()).unwrap();
            let b = Vocabulary::new(halves).unwrap();
            assert!(!a.is_half() && b.is_half());
            assert!(!a.dropped_background().is_empty() || k < 4);
            assert_eq!(a.dropped_background(), b.dropped_background());
            assert_eq!(a.num_rows(), b.num_rows());
            for c in 0..=k {
                assert_eq!(a.segment(c), b.segment(c));
            }
            for r in 0..a.num_rows() as u32 {
                assert_eq!(a.proto_ref(r), b.proto_ref(r));
            }
            assert_eq!(a.prototypes(), b.prototypes());
            let patches = random_patches(&mut rng, &f32s, 700);
            let want = a.score(patches.view()).unwrap();
            assert_eq!(want, b.score(patches.view()).unwrap(), "case {seed}");
            let one = b.with_threads(1).score(patches.view()).unwrap();
            assert_eq!(want, one, "case {seed}, one thread");
        }
    }

    #[test]
    fn known_drops_give_the_vocabulary_the_rule_gives() {
        let mut rng = Rng::new(31);
        let cands = random_bank(&mut rng, 12, 24, (3, 9), (2, 9));
        let v = Vocabulary::new(cands.clone()).unwrap();
        assert!(!v.dropped_background().is_empty());
        let gone: std::collections::HashSet<(usize, u32)> = v
            .dropped_background()
            .iter()
            .map(|r| (usize::from(r.class) - 1, r.id))
            .collect();
        let w = Vocabulary::with_known_drops(cands, &|i, id| gone.contains(&(i, id))).unwrap();
        assert_eq!(w.dropped_background(), v.dropped_background());
        assert_eq!(w.prototypes(), v.prototypes());
        for r in 0..v.num_rows() as u32 {
            assert_eq!(w.proto_ref(r), v.proto_ref(r));
        }
    }

    #[test]
    fn half_rows_of_the_wrong_shape_are_refused() {
        let rows = HalfRows::from_f32(&[1.0, 0.0, 0.0, 1.0], 2).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(HalfRows::from_f32(&[1.0, 0.0, 0.0], 2).is_err());
        let one_side = [Side::Foreground];
        assert!(Candidate::from_half("a", false, rows.clone(), &one_side).is_err());
        let c =
            Candidate::from_half("a", false, rows, &[Side::Background, Side::Foreground]).unwrap();
        assert_eq!((c.fg_ids.clone(), c.bg_ids.clone()), (vec![1], vec![0]));
        assert_eq!((c.num_foreground(), c.num_background()), (1, 1));
        let empty = HalfRows::from_f32(&[], 384).unwrap();
        let c = Candidate::from_half("b", false, empty, &[]).unwrap();
        assert!(
            Vocabulary::new(vec![c]).is_err(),
            "no foreground prototypes"
        );
    }

    #[test]
    fn scores_are_class_maxima_and_an_empty_background_scores_minus_one() {
        let v = Vocabulary::new(vec![
            cand(
                "sky",
                true,
                array![[1.0, 0.0], [0.0, 1.0]],
                array![[0.7, 0.7]],
            ),
            cand("sea", true, array![[-1.0, 0.0]], none(2)),
        ])
        .unwrap();
        assert_eq!(v.num_background(), 0);
        let s = v.score(array![[0.6, 0.8], [-0.6, -0.8]].view()).unwrap();
        assert_eq!(s.scores.column(0).to_vec(), vec![EMPTY_SCORE; 2]);
        assert_eq!(s.best_proto.column(0).to_vec(), vec![NO_PROTO; 2]);
        assert!((s.scores[[0, 1]] - 0.8).abs() < 1e-6);
        assert_eq!(v.proto_ref(s.best_proto[[0, 1]]).unwrap().id, 1);
        assert_eq!(s.labels(None), vec![1, 2]);
        // sky and sea tie at 0: the lower label wins; with the floor, a
        // patch that matches nothing positively is background
        let s = v.score(array![[0.0, -1.0]].view()).unwrap();
        assert_eq!(s.labels(None), vec![1]);
        assert_eq!(s.labels(Some(0.0)), vec![0]);
    }

    fn time_score(label: &str, classes: usize, protos: usize, n: usize, d: usize) {
        let mut rng = Rng::new(1);
        let t = Instant::now();
        let cands = random_bank(&mut rng, classes, d, (protos, protos + 1), (0, 1));
        let patches = random_patches(&mut rng, &cands, n);
        let (_, halves) = both_ways(&mut rng, &cands);
        let generate = t.elapsed();
        let t = Instant::now();
        let vocab = Vocabulary::new(cands).unwrap();
        let build = t.elapsed();
        eprintln!("{label}: random data {generate:?}, Vocabulary::new {build:?}");
        // f16 rows converted block by block, as a bank or a file is queried
        let half = Vocabulary::new(halves).unwrap();
        for (kind, vocab, bytes) in [("f32", &vocab, 4), ("f16", &half, 2)] {
            for threads in [1, 0] {
                let v = vocab.clone().with_threads(threads);
                v.score(patches.view()).unwrap();
                let reps = 3;
                let t = Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(v.score(patches.view()).unwrap());
                }
                let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
                let gflop = 2.0 * (n * v.num_rows() * d) as f64 / 1e9;
                eprintln!(
                    "{label}: {n} patches × {} prototypes × {d} d, {kind}, threads {}: {ms:.1} ms ({:.1} GFLOP/s)",
                    v.num_rows(),
                    threads_or_cores(threads),
                    gflop / (ms / 1e3),
                );
                // The row scripts/bench collects into docs/benchmarks.md.
                println!(
                    "| exact lookup: {n} patches × {classes} classes ({} rows) × {d} d, {kind} rows, {} thread(s) | {ms:.0} ms ({:.0} GFLOP/s; vocabulary {:.0} MiB {kind}) | | |",
                    v.num_rows(),
                    threads_or_cores(threads),
                    gflop / (ms / 1e3),
                    (v.num_rows() * d * bytes) as f64 / 1048576.0,
                );
            }
        }
    }

    /// `cargo test --release --lib -- --ignored --nocapture score_timing`
    /// (`OVDIFF_BENCH_10K=1` adds a 10,000-class bank: 1.3M rows, 2 GiB f32)
    #[test]
    #[ignore = "timing; run in release"]
    fn score_timing() {
        time_score("(a) 10 classes", 10, 130, 1024, 384);
        time_score("(b) 1,000 classes", 1000, 130, 1024, 384);
        if std::env::var_os("OVDIFF_BENCH_10K").is_some() {
            time_score("(c) 10,000 classes", 10_000, 130, 1024, 384);
        }
        // the stuff rule at scale: 667 thing classes × 130 backgrounds
        // against 333 stuff classes × 130 foregrounds
        let mut rng = Rng::new(3);
        let cands = random_bank(&mut rng, 1000, 384, (130, 131), (130, 131));
        let t = Instant::now();
        let v = Vocabulary::new(cands).unwrap();
        eprintln!(
            "Vocabulary::new, 1,000 classes with 130 fg + 130 bg each: {:.1} s ({} bg kept, {} dropped)",
            t.elapsed().as_secs_f64(),
            v.num_background(),
            v.dropped_background().len()
        );
    }
}
