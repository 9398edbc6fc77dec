//! [`HnswMatcher`]: an approximate [`Matcher`] over the same prototype rows as the exact [`Vocabulary`](crate::Vocabulary), by top-k search in an HNSW graph (built by the `hnsw_rs` crate), with orphan handling and a checked on-disk cache.
//!
//! # Graph and search
//!
//! The matcher indexes exactly the rows of [`Vocabulary::prototypes`](crate::Vocabulary::prototypes) (the
//! kept background prototypes, then each candidate's foreground
//! prototypes, L2-normalised, after the stuff rule), under the same row
//! numbers, so [`Vocabulary::proto_ref`](crate::Vocabulary::proto_ref) explains its
//! [`Scores::best_proto`] too.
//!
//! The graph is built by `hnsw_rs` (parallel insertion, distance `DistDot`
//! = `1 - a·b`, the cosine distance on unit vectors and about three times
//! cheaper than `DistCosine`). It is then copied into flat arrays (row
//! numbers as `u32`, the rows in one contiguous matrix) and searched by
//! this module, because `hnsw_rs`'s own search costs about 1.5 ms per query
//! at 124,000 rows (reference-counted nodes, a hash set per query), which
//! is no faster than the exact engine's matrix product on two cores; the
//! flat search is three to four times faster at the same beam width. The
//! search is the usual one, with one change:
//!
//! * greedy descent from the entry point through the upper layers down to
//!   layer 2;
//! * **a beam of width [`HnswParams::ef_upper`] on layer 1**, whose nodes
//!   all seed layer 0 (plain HNSW descends greedily to a single layer-0
//!   entry);
//! * a beam of width `max(ef_search, k)` on layer 0; the best `k` nodes are
//!   the hits.
//!
//! The wider layer-1 beam is what makes patches that sit between two
//! classes (object boundaries, mixtures) find the better class: with one
//! entry point, a layer-0 beam narrower than a class's cluster of
//! prototypes fills up with that class and never sees the other one.
//!
//! # Scoring, and where it is approximate
//!
//! Per patch `p` (a row of the `(n, dim)` input), scored by dot product
//! with the unit rows, as in the exact engine:
//!
//! 1. the `k` best rows from the graph search ([`HnswParams::k`]);
//! 2. the [orphans](#orphans), scored by brute force;
//! 3. a column (class `k`, or the background, column 0) that has a row among
//!    these hits scores the best of them, and [`Scores::best_proto`] holds
//!    that row (the lowest on ties, as in the exact engine);
//! 4. **a column with no row among the hits gets the smallest score among
//!    the graph hits (the k-th best) and [`NO_PROTO`](crate::vocabulary::NO_PROTO)**: if the search were
//!    exact, that is an upper bound on the column's true score. A column
//!    without any prototype rows (the background when every background was
//!    dropped) is [`EMPTY_SCORE`](crate::vocabulary::EMPTY_SCORE), as in the exact engine.
//!
//! So the approximation has two sources: the graph search may miss a row
//! that the exact engine would see (recall below 100%), and the columns
//! outside the top-k carry a bound rather than their score. The per-patch
//! *label* (the argmax) is the column of the best hit, which only needs the
//! nearest row to be found; the scores of far classes, which late fusion
//! averages over windows, are only bounded.
//!
//! # Measured
//!
//! Build times, speed against the exact engine and label agreement on
//! synthetic banks of 10 to 3,000 classes (the `hnsw_benchmark` test) are
//! in `docs/benchmarks-notes.md`, "HNSW against exact, by bank size".
//!
//! # Orphans
//!
//! HNSW graphs built by `hnsw_rs` can leave some inserted points
//! unreachable, or reachable only by wide searches (their in-links were
//! pruned). After building, every row is searched for with itself as the
//! query; a row that is not among its own top 4 hits is an *orphan*.
//! Orphans stay in the graph but are also scored exactly, by brute force,
//! for every patch, so every row is findable (self-search recall 100%). [`HnswMatcher::stats`] counts
//! them. The check runs in two passes to stay cheap: every row at narrow
//! beams (at most 64 on layer 0, 32 on layer 1), then only the rows that
//! pass missed, again at the query's own beams; the second pass's misses
//! are the orphans. Orphans are scored by one matrix product per block of
//! 256 patches.
//!
//! # Cache file
//!
//! Building the graph is slow (about a minute or more for 124,000 prototypes on two cores),
//! so [`HnswMatcher::save`] writes the flat graph next to a bank and
//! [`HnswMatcher::load`] reads it back; `hnsw_rs` is not involved in
//! loading. The layout, all integers little-endian:
//!
//! ```text
//! magic            8 bytes  "OVDHNSW\0"
//! format version   u32      (CACHE_FORMAT_VERSION)
//! endianness       u8       1 = little, 2 = big (of the writing target)
//! pointer width    u8       bytes
//! hnsw_rs version  u8 length + ASCII (the builder of the graph)
//! crate version    u8 length + ASCII (ovdiff-bank)
//! fingerprint      32 bytes (Fingerprint: rows, names, columns, m, ef_construction)
//! parameters       5 × u64  (m, ef_construction, ef_search, ef_upper, k)
//! payload length   u64
//! checksum         32 bytes: SHA-256 of the bytes before the payload
//!                  length, then the payload, then the payload length
//! payload:
//!   dim u64, rows u64
//!   names          u64 count, then u64 length + UTF-8 each
//!   segments       u64 count, then (start u64, end u64) per score column
//!   orphans        u64 count, then u32 rows
//!   build times    u64 ns (insertion), u64 ns (orphan check)
//!   entry          u32 row
//!   layer 0        (rows + 1) u32 offsets, then u32 neighbours
//!   upper layers   u64 count, then per layer: u64 nodes, u32 rows
//!                  (increasing), (nodes + 1) u32 offsets, u32 neighbours
//!   rows           rows × dim f32
//! ```
//!
//! [`load`](HnswMatcher::load) returns `Ok(None)`, meaning "rebuild", when
//! the file is missing, is not such a file, has another format version,
//! platform tag (endianness, pointer width, `hnsw_rs` version, crate
//! version) or fingerprint, has the wrong length, fails its checksum, or
//! its contents are inconsistent (a neighbour out of range, offsets that
//! decrease, non-finite rows, …); and the fingerprint is recomputed from
//! the rows, names and columns read, so a file is used only when it
//! indexes exactly the expected prototypes. Counts are checked against the
//! bytes left before anything is allocated.
//!
//! # Contents
//!
//! * [`HnswParams`], [`HnswStats`] and [`HnswMatcher`] (here);
//! * [`Fingerprint`]: what a graph indexes;
//! * the flat graph and its beam search;
//! * the build: `hnsw_rs` insertion, then the orphan check;
//! * the scoring: top-k hits folded into score columns, orphans by brute
//!   force ([`HnswMatcher::score`], [`HnswMatcher::nearest`]);
//! * the checked cache file ([`HnswMatcher::save`], [`HnswMatcher::load`]).

#[cfg(test)]
mod benchmark;
mod build;
mod cache;
mod fingerprint;
mod graph;
mod scoring;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use ndarray::{Array2, ArrayView2};

pub use fingerprint::Fingerprint;

use crate::vocabulary::{Matcher, Scores};
use crate::{Error, Result};
use graph::Graph;

/// The `hnsw_rs` version this module is built against (pinned with `=` in
/// `Cargo.toml`); part of the cache file's platform tag.
pub const HNSW_RS_VERSION: &str = "0.3.5";

/// Version of the cache file layout written by [`HnswMatcher::save`].
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// Largest parameter value accepted.
const MAX_PARAM: usize = 1 << 16;

/// Graph and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HnswParams {
    /// Links kept per node and layer (`M`; layer 0 keeps `2·M`), 2 to 128.
    pub m: usize,
    /// Beam width while building (at least 1): higher builds slower and
    /// finds better links.
    pub ef_construction: usize,
    /// Beam width on layer 0 while searching (the search uses
    /// `max(ef_search, k)`).
    pub ef_search: usize,
    /// Beam width on layer 1 while searching: that many entry points seed
    /// layer 0 (1 is plain HNSW).
    pub ef_upper: usize,
    /// Rows kept per patch (top-k); a column with no row among them gets the
    /// k-th score as its bound.
    pub k: usize,
}

impl Default for HnswParams {
    /// `m = 16`, `ef_construction = 100`, `ef_search = 192`,
    /// `ef_upper = 64`, `k = 64`: label agreement with the exact engine
    /// ≥ 99.5% on the synthetic 1,000-class benchmark, boundary patches
    /// included (see `docs/benchmarks-notes.md`).
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 192,
            ef_upper: 64,
            k: 64,
        }
    }
}

impl HnswParams {
    /// An error when a parameter is out of range.
    pub fn validate(&self) -> Result<()> {
        if !(2..=128).contains(&self.m) {
            return Err(Error::Invalid(format!(
                "HNSW m = {} is out of range (2 to 128)",
                self.m
            )));
        }
        for (name, v) in [
            ("ef_construction", self.ef_construction),
            ("ef_search", self.ef_search),
            ("ef_upper", self.ef_upper),
            ("k", self.k),
        ] {
            if v == 0 || v > MAX_PARAM {
                return Err(Error::Invalid(format!(
                    "HNSW {name} = {v} is out of range (1 to {MAX_PARAM})"
                )));
            }
        }
        Ok(())
    }

    fn fields(&self) -> [usize; 5] {
        [
            self.m,
            self.ef_construction,
            self.ef_search,
            self.ef_upper,
            self.k,
        ]
    }
}

/// Facts about a built (or loaded) graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswStats {
    /// Rows in the graph (all of the vocabulary's prototypes).
    pub points: usize,
    /// Rows the self-search check could not find, scored by brute force.
    pub orphans: usize,
    /// Layers above layer 0.
    pub upper_layers: usize,
    /// Time `hnsw_rs` took to insert the rows, when the graph was built.
    pub build: Duration,
    /// Time of the orphan check, when the graph was built.
    pub orphan_check: Duration,
    /// `Some(time to read it)` when the graph came from a cache file.
    pub loaded: Option<Duration>,
}

/// An approximate matcher: top-k search in an HNSW graph over a
/// vocabulary's prototype rows (see the [module docs](self) for the search,
/// the scoring rule and where it differs from the exact
/// [`Vocabulary::score`](crate::Vocabulary::score)).
pub struct HnswMatcher {
    names: Vec<String>,
    params: HnswParams,
    segments: Vec<Range<usize>>,
    /// Score column of each row.
    col_of: Vec<u16>,
    graph: Graph,
    /// Rows scored by brute force, increasing.
    orphans: Vec<u32>,
    /// Their rows, `(orphans, dim)`.
    orphan_rows: Array2<f32>,
    fingerprint: Fingerprint,
    stats: HnswStats,
    threads: usize,
}

impl fmt::Debug for HnswMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HnswMatcher")
            .field("classes", &self.names.len())
            .field("dim", &self.graph.dim)
            .field("params", &self.params)
            .field("stats", &self.stats)
            .field("fingerprint", &self.fingerprint.to_hex())
            .finish_non_exhaustive()
    }
}

impl HnswMatcher {
    /// Use `threads` threads to score (0: one per core, the default).
    pub fn with_threads(mut self, threads: usize) -> HnswMatcher {
        self.threads = threads;
        self
    }

    /// Number of candidate classes `K` (score columns are `K + 1`).
    pub fn num_classes(&self) -> usize {
        self.names.len()
    }

    /// The parameters the graph was built with and is searched with.
    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Change the search parameters (`ef_search`, `ef_upper`, `k`); the
    /// graph, the orphan list (found at the build-time widths: narrower
    /// beams may miss a few more rows) and the
    /// [`fingerprint`](Self::fingerprint) (which covers only the build
    /// parameters) stay as they are.
    pub fn set_search_params(&mut self, ef_search: usize, ef_upper: usize, k: usize) -> Result<()> {
        let p = HnswParams {
            ef_search,
            ef_upper,
            k,
            ..self.params
        };
        p.validate()?;
        self.params = p;
        Ok(())
    }

    /// Graph facts: points, orphans, build and check times.
    pub fn stats(&self) -> HnswStats {
        self.stats
    }

    /// The rows scored by brute force because the graph could not find
    /// them.
    pub fn orphans(&self) -> &[u32] {
        &self.orphans
    }

    /// What this graph indexes (see [`Fingerprint`]).
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The score column of prototype row `row` (0 = background), `None`
    /// when out of range.
    pub fn column_of(&self, row: u32) -> Option<usize> {
        self.col_of.get(row as usize).map(|&c| c as usize)
    }
}

impl Matcher for HnswMatcher {
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn dim(&self) -> usize {
        self.graph.dim
    }
    fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        HnswMatcher::score(self, patches)
    }
}
