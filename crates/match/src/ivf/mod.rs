//! An inverted-file matcher: the vocabulary's rows clustered into lists by spherical k-means, each patch scored exactly against the rows of the lists whose centroids are nearest to it.
//!
//! Where HNSW walks a graph one patch at a time, this engine keeps the
//! work in matrix products, which is what two CPU cores do fastest:
//!
//! 1. **Coarse**: patches × centroids, one product; each patch picks its
//!    [`IvfParams::probes`] best lists.
//! 2. **Fine**: per list, the patches that picked it × the list's rows, one
//!    product each, folded into per-column maxima exactly as the exact
//!    engine folds them (higher wins, the lower row on ties). The threads
//!    split this pass by lists, not by patches, so that each list's rows
//!    are read from memory once: split by patches, every thread streamed
//!    all `N` rows (the pass was memory-bound, 130 ms per thread at
//!    234,000 rows).
//!
//! With `L` lists and `P` probes a patch is compared with `L + P·N/L` of
//! the `N` rows' worth of vectors; `L = √(P·N)` minimises that.
//!
//! # Where it is approximate
//!
//! A row in a list the patch did not probe is not seen. Every column
//! (class, or the background, column 0) also gets the patch's dot product
//! with **the mean of the column's rows**, which is the average of the
//! patch's scores against those rows and so never above their maximum. A
//! column's score is the larger of that mean score and its best row seen
//! in the probed lists: a lower bound of the exact score, equal to it
//! whenever the column's best row lies in a probed list (the HNSW engine
//! bounds unseen columns from above instead). [`Scores::best_proto`] holds
//! the best row seen, or [`NO_PROTO`] when no row of the column was seen.
//! A column without any rows is [`EMPTY_SCORE`](crate::vocabulary::EMPTY_SCORE), as in the exact engine.
//!
//! # Contents
//!
//! * [`IvfParams`], [`IvfStats`] and [`IvfMatcher`] (here);
//! * the clustering: spherical k-means seeded by [`IvfParams::seed`];
//! * the scoring: the coarse probe, the fine pass by lists, the lower
//!   bounds ([`IvfMatcher::score`]);
//! * the lists' byte layout, kept in a cache file ([`IvfMatcher::save`],
//!   [`IvfMatcher::load`]) and in a bank file's `ann` blob
//!   ([`IvfMatcher::to_file_blob`], [`IvfMatcher::from_file_blob`],
//!   [`IVF_ALGORITHM`]).

mod blob;
mod cache;
mod kmeans;
mod layout;
mod scoring;
#[cfg(test)]
mod tests;

use std::ops::Range;

use ndarray::{s, Array2, ArrayView2, Axis};
use ovdiff_core::codec::WriteLe;
use sha2::{Digest, Sha256};

pub use blob::IVF_ALGORITHM;

use crate::vocabulary::{Matcher, Scores, Vocabulary, NO_PROTO};
use crate::{Error, Result};
use kmeans::{nearest_rows, spherical_kmeans};

/// Parameters of an [`IvfMatcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfParams {
    /// Lists probed per patch.
    pub probes: usize,
    /// Number of lists; 0 picks `√(probes · rows)`.
    pub lists: usize,
    /// Lloyd iterations of the spherical k-means.
    pub iterations: usize,
    /// Rows the k-means trains on, per list (the rest are only assigned).
    pub train_per_list: usize,
    /// Seed of the k-means initialisation.
    pub seed: u64,
}

impl Default for IvfParams {
    fn default() -> Self {
        IvfParams {
            probes: 48,
            lists: 0,
            iterations: 6,
            train_per_list: 24,
            seed: 42,
        }
    }
}

impl IvfParams {
    /// The number of lists for `rows` rows.
    pub fn lists_for(&self, rows: usize) -> usize {
        let l = if self.lists > 0 {
            self.lists
        } else {
            ((self.probes.max(1) * rows) as f64).sqrt().round() as usize
        };
        l.clamp(1, rows.max(1))
    }

    /// Feed every parameter into a fingerprint.
    fn hash_into(&self, h: &mut Sha256) {
        let mut b = Vec::with_capacity(5 * 8);
        for v in [
            self.probes,
            self.lists,
            self.iterations,
            self.train_per_list,
        ] {
            b.put_u64(v as u64);
        }
        b.put_u64(self.seed);
        h.update(&b);
    }

    fn validate(&self) -> Result<()> {
        if self.probes == 0 || self.train_per_list == 0 {
            return Err(Error::Invalid(format!(
                "IVF parameters {self:?}: probes and train_per_list must be at least 1"
            )));
        }
        Ok(())
    }
}

/// Build statistics of an [`IvfMatcher`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IvfStats {
    /// Rows indexed.
    pub rows: usize,
    /// Lists.
    pub lists: usize,
    /// Rows in the largest list.
    pub largest_list: usize,
    /// Seconds to build, or to load from the cache.
    pub build_s: f64,
    /// Loaded (from the cache or a bank file) rather than built.
    pub loaded: bool,
    /// Loaded from the bank file's `ann` section.
    pub from_file: bool,
}

/// The inverted-file matcher over one vocabulary's rows (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct IvfMatcher {
    names: Vec<String>,
    dim: usize,
    params: IvfParams,
    /// Unit centroids, `(lists, dim)`.
    centroids: Array2<f32>,
    /// Rows in list order, `(rows, dim)`.
    rows: Array2<f32>,
    /// List `l` is `rows[offsets[l]..offsets[l + 1]]`.
    offsets: Vec<usize>,
    /// Vocabulary row of each list-ordered row.
    ids: Vec<u32>,
    /// Score column of each list-ordered row.
    cols: Vec<u16>,
    /// Which columns have rows at all.
    empty_col: Vec<bool>,
    /// Per column, the mean of its unit rows (zero for an empty column),
    /// `(cols, dim)`.
    means: Array2<f32>,
    threads: usize,
    stats: IvfStats,
}

impl IvfMatcher {
    /// Cluster `vocab`'s rows into lists and keep them in list order.
    pub fn from_vocabulary(vocab: &Vocabulary, params: IvfParams) -> Result<IvfMatcher> {
        params.validate()?;
        let t = std::time::Instant::now();
        let protos = vocab.prototypes();
        let (n, dim) = protos.dim();
        if n >= NO_PROTO as usize {
            return Err(Error::Invalid(format!(
                "{n} prototypes; at most {} can be indexed",
                NO_PROTO - 1
            )));
        }
        let lists = params.lists_for(n);
        let centroids = if n == 0 {
            Array2::zeros((0, dim))
        } else {
            spherical_kmeans(protos.view(), lists, &params, 0)
        };
        let assign = nearest_rows(protos.view(), centroids.view(), 0);
        let mut offsets = vec![0u32; centroids.nrows() + 1];
        for &a in &assign {
            offsets[a as usize + 1] += 1;
        }
        for l in 0..centroids.nrows() {
            offsets[l + 1] += offsets[l];
        }
        // stable within a list: rows in vocabulary order
        let mut next = offsets.clone();
        let mut ids = vec![0u32; n];
        for (r, &a) in assign.iter().enumerate() {
            ids[next[a as usize] as usize] = r as u32;
            next[a as usize] += 1;
        }
        Ok(Self::assemble(
            vocab,
            &protos.view(),
            params,
            centroids,
            offsets,
            ids,
            t,
        ))
    }

    /// The matcher over `vocab`, whose normalised rows are `protos`, with
    /// lists already made (`ids` in list order, list `l` is
    /// `ids[offsets[l]..offsets[l + 1]]`; checked by the callers).
    fn assemble(
        vocab: &Vocabulary,
        protos: &ArrayView2<'_, f32>,
        params: IvfParams,
        centroids: Array2<f32>,
        offsets: Vec<u32>,
        ids: Vec<u32>,
        started: std::time::Instant,
    ) -> IvfMatcher {
        let dim = protos.ncols();
        let segments: Vec<Range<usize>> = (0..=vocab.num_classes())
            .map(|c| vocab.segment(c))
            .collect();
        let mut col_of = vec![0u16; protos.nrows()];
        let mut means = Array2::<f32>::zeros((segments.len(), dim));
        for (c, seg) in segments.iter().enumerate() {
            col_of[seg.clone()].iter_mut().for_each(|v| *v = c as u16);
            if !seg.is_empty() {
                let m = protos.slice(s![seg.clone(), ..]).sum_axis(Axis(0)) / seg.len() as f32;
                means.row_mut(c).assign(&m);
            }
        }
        let rows = protos.select(
            Axis(0),
            &ids.iter().map(|&r| r as usize).collect::<Vec<_>>(),
        );
        let cols = ids.iter().map(|&r| col_of[r as usize]).collect();
        let offsets: Vec<usize> = offsets.into_iter().map(|o| o as usize).collect();
        let largest_list = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        IvfMatcher {
            names: vocab.names().to_vec(),
            dim,
            params,
            stats: IvfStats {
                rows: ids.len(),
                lists: centroids.nrows(),
                largest_list,
                build_s: started.elapsed().as_secs_f64(),
                loaded: false,
                from_file: false,
            },
            centroids,
            rows,
            offsets,
            ids,
            cols,
            empty_col: segments.iter().map(|s| s.is_empty()).collect(),
            means,
            threads: 0,
        }
    }

    /// Use `threads` threads to score (0: one per core, the default).
    pub fn with_threads(mut self, threads: usize) -> IvfMatcher {
        self.threads = threads;
        self
    }

    /// Build statistics.
    pub fn stats(&self) -> IvfStats {
        self.stats
    }

    /// The parameters it was built with.
    pub fn params(&self) -> IvfParams {
        self.params
    }
}

impl Matcher for IvfMatcher {
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        IvfMatcher::score(self, patches)
    }
}
