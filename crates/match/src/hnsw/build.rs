//! Building the graph: `hnsw_rs` inserts the vocabulary's rows in parallel, the graph is copied into flat arrays, then every row searches for itself and those that cannot find themselves become orphans, scored by brute force.

use std::ops::Range;
use std::time::{Duration, Instant};

use hnsw_rs::anndists::dist::distances::DistDot;
use hnsw_rs::hnsw::Hnsw;
use ndarray::Array2;
use ovdiff_core::threads::threads_or_cores;

use super::graph::{Graph, Scratch, MAX_LAYERS};
use super::{Fingerprint, HnswMatcher, HnswParams, HnswStats};
use crate::vocabulary::{Candidate, Vocabulary, NO_PROTO};
use crate::{Error, Result};

/// Hits asked for when checking that a row finds itself.
const CHECK_K: usize = 4;
/// Largest layer-0 beam of the orphan check.
const CHECK_EF: usize = 64;
/// Largest layer-1 beam of the orphan check.
const CHECK_EF_UPPER: usize = 32;

/// The score column of each row, when the segments tile `0..rows` in
/// order.
pub(super) fn col_of(segments: &[Range<usize>], rows: usize) -> Option<Vec<u16>> {
    if segments.is_empty() || segments.len() > u16::MAX as usize + 1 {
        return None;
    }
    let mut out = Vec::with_capacity(rows);
    for (c, s) in segments.iter().enumerate() {
        if s.start != out.len() || s.end < s.start || s.end > rows {
            return None;
        }
        out.resize(s.end, c as u16);
    }
    (out.len() == rows).then_some(out)
}

impl HnswMatcher {
    /// Stack `candidates` as [`Vocabulary::new`] does (same rows, same stuff
    /// rule) and build the graph over them.
    pub fn new(candidates: Vec<Candidate>, params: HnswParams) -> Result<HnswMatcher> {
        Self::from_vocabulary(&Vocabulary::new(candidates)?, params)
    }

    /// Build the graph over `vocab`'s prototype rows with `hnsw_rs`
    /// (parallel insertion on its thread pool, one thread per core), copy it
    /// into flat arrays, then run the orphan check (one thread per core).
    pub fn from_vocabulary(vocab: &Vocabulary, params: HnswParams) -> Result<HnswMatcher> {
        params.validate()?;
        let protos = vocab.prototypes();
        let dim = protos.ncols();
        let rows: Vec<f32> = protos.as_standard_layout().iter().copied().collect();
        let n = protos.nrows();
        if n >= NO_PROTO as usize {
            return Err(Error::Invalid(format!(
                "{n} prototypes; at most {} can be indexed",
                NO_PROTO - 1
            )));
        }
        let segments: Vec<Range<usize>> = (0..=vocab.num_classes())
            .map(|c| vocab.segment(c))
            .collect();
        let col_of = col_of(&segments, n)
            .ok_or_else(|| Error::Invalid("vocabulary segments do not tile its rows".into()))?;
        let names = vocab.names().to_vec();
        let fingerprint = Fingerprint::of_parts(&names, &segments, &rows, dim, &params);

        let t = Instant::now();
        let graph = {
            let mut h =
                Hnsw::<f32, DistDot>::new(params.m, n, MAX_LAYERS, params.ef_construction, DistDot);
            let items: Vec<(&[f32], usize)> = rows.chunks_exact(dim).zip(0..).collect();
            h.parallel_insert_slice(&items);
            h.set_searching_mode(true);
            // (the rows move in below, once `items` no longer borrows them)
            Graph::from_hnsw(&h, n, dim).map(|g| (g, h.get_nb_point()))
        };
        let (mut graph, inserted) = graph?;
        if inserted != n {
            return Err(Error::Invalid(format!(
                "hnsw_rs indexed {inserted} of {n} prototypes"
            )));
        }
        graph.rows = rows;
        let build = t.elapsed();

        let mut m = HnswMatcher {
            names,
            params,
            segments,
            col_of,
            stats: HnswStats {
                points: n,
                orphans: 0,
                upper_layers: graph.upper.len(),
                build,
                orphan_check: Duration::ZERO,
                loaded: None,
            },
            orphan_rows: Array2::zeros((0, dim)),
            graph,
            orphans: Vec::new(),
            fingerprint,
            threads: 0,
        };
        let t = Instant::now();
        // A cheap pass over every row, then the suspects again at the
        // query's own beams.
        let suspects = m.find_orphans(
            None,
            params.ef_search.min(CHECK_EF),
            params.ef_upper.min(CHECK_EF_UPPER),
        );
        let orphans = m.find_orphans(
            Some(&suspects),
            params.ef_search.max(params.k),
            params.ef_upper,
        );
        m.set_orphans(orphans);
        m.stats.orphan_check = t.elapsed();
        Ok(m)
    }

    /// Those of `rows` (all rows when `None`) that a search for themselves
    /// (top [`CHECK_K`], beams `ef` and `ef_upper`) does not return.
    pub(super) fn find_orphans(
        &self,
        rows: Option<&[u32]>,
        ef: usize,
        ef_upper: usize,
    ) -> Vec<u32> {
        let n = self.graph.num_rows();
        let all: Vec<u32>;
        let rows = match rows {
            Some(r) => r,
            None => {
                all = (0..n as u32).collect();
                &all
            }
        };
        let threads = threads_or_cores(self.threads)
            .min(rows.len().div_ceil(256))
            .max(1);
        let chunk = rows.len().div_ceil(threads).max(1);
        let mut found = vec![false; rows.len()];
        std::thread::scope(|sc| {
            for (ids, out) in rows.chunks(chunk).zip(found.chunks_mut(chunk)) {
                sc.spawn(move || {
                    let mut s = Scratch::new(n);
                    for (&r, f) in ids.iter().zip(out.iter_mut()) {
                        let q = self.graph.row(r);
                        self.graph.search(q, CHECK_K, ef, ef_upper, &mut s);
                        *f = s.out.iter().any(|h| h.row == r);
                    }
                });
            }
        });
        rows.iter()
            .zip(found)
            .filter(|(_, f)| !f)
            .map(|(&r, _)| r)
            .collect()
    }

    /// Make `orphans` the brute-force side list (sorted, without repeats).
    pub(super) fn set_orphans(&mut self, mut orphans: Vec<u32>) {
        orphans.sort_unstable();
        orphans.dedup();
        let dim = self.graph.dim;
        let mut m = Array2::<f32>::zeros((orphans.len(), dim));
        for (mut row, &r) in m.rows_mut().into_iter().zip(&orphans) {
            row.assign(&ndarray::ArrayView1::from(self.graph.row(r)));
        }
        self.orphan_rows = m;
        self.stats.orphans = orphans.len();
        self.orphans = orphans;
    }

    /// Mark `rows` as orphans too (tests of the brute-force side list).
    #[cfg(test)]
    pub(super) fn force_orphans(&mut self, rows: &[u32]) {
        let mut all = self.orphans.clone();
        all.extend_from_slice(rows);
        self.set_orphans(all);
    }
}
