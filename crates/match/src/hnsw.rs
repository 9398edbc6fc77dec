//! [`HnswMatcher`]: an approximate [`Matcher`] over the same prototype rows as the exact [`Vocabulary`], by top-k search in an HNSW graph (built by the `hnsw_rs` crate), with orphan handling and a checked on-disk cache.
//!
//! # Graph and search
//!
//! The matcher indexes exactly the rows of [`Vocabulary::prototypes`] (the
//! kept background prototypes, then each candidate's foreground
//! prototypes, L2-normalised, after the stuff rule), under the same row
//! numbers, so [`Vocabulary::proto_ref`] explains its
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
//!    the graph hits (the k-th best) and [`NO_PROTO`]**: if the search were
//!    exact, that is an upper bound on the column's true score. A column
//!    without any prototype rows (the background when every background was
//!    dropped) is [`EMPTY_SCORE`], as in the exact engine.
//!
//! So the approximation has two sources: the graph search may miss a row
//! that the exact engine would see (recall below 100%), and the columns
//! outside the top-k carry a bound rather than their score. The per-patch
//! *label* (the argmax) is the column of the best hit, which only needs the
//! nearest row to be found; the scores of far classes, which late fusion
//! averages over windows, are only bounded.
//!
//! # Measured (two cores, 384 d, 1,024 patches)
//!
//! From the `hnsw_benchmark` test (`cargo test --release --lib --
//! --ignored --nocapture hnsw_benchmark`) on synthetic clustered banks of
//! 124 prototypes per class (100 foreground, about 24 kept background),
//! with patches near the prototypes, one in four being the midpoint of two
//! random prototypes (a boundary patch), default parameters, on a machine
//! shared with other builds (so ratios are from interleaved runs, the
//! fastest of three; absolute times varied up to twofold between runs):
//!
//! | classes | rows    | build (insert + orphan check)   | HNSW vs exact | label agreement |
//! |---------|---------|---------------------------------|---------------|-----------------|
//! | 10      | 1,240   | 0.2 s                           | 0.12×         | 100%            |
//! | 100     | 12,400  | 4 s                             | 0.66×         | 100%            |
//! | 300     | 37,200  | 10–19 s                         | 1.0–1.2×      | 100%            |
//! | 1,000   | 124,000 | 53–103 s, about 25 orphans      | 2.0–2.2×      | 99.9–100%       |
//! | 3,000   | 372,000 | 364 s (307 + 55), 1,216 orphans | 4.1×          | 98.5%           |
//!
//! So the exact engine wins below roughly 40,000 rows. Narrower beams buy
//! speed for agreement on boundary patches (near-prototype patches agree
//! at ≥ 99.6% in every row): `ef_search = 128` is 3.1× faster at 1,000
//! classes at 98.3–98.8%; `ef_search = 256` is 3.3× faster at 3,000
//! classes at 99.6%. Graph quality with `m = 16`, `ef_construction = 100`
//! drops with size on this (high-dimensional, isotropic-noise) data;
//! larger banks want larger `m` or wider beams. The cache of the
//! 1,000-class graph is 193 MiB; it saves in 0.3–0.5 s and loads in
//! 0.4–0.5 s (plus 0.1–0.2 s to fingerprint the vocabulary), against about
//! a minute or more to rebuild.
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

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hnsw_rs::anndists::dist::distances::DistDot;
use hnsw_rs::hnsw::Hnsw;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use ovdiff_core::threads::threads_or_cores;
use sha2::{Digest, Sha256};

use crate::vocabulary::{Candidate, Matcher, Scores, Vocabulary, EMPTY_SCORE, NO_PROTO};
use crate::{Error, Result};

/// The `hnsw_rs` version this module is built against (pinned with `=` in
/// `Cargo.toml`); part of the cache file's platform tag.
pub const HNSW_RS_VERSION: &str = "0.3.5";

/// Version of the cache file layout written by [`HnswMatcher::save`].
pub const CACHE_FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"OVDHNSW\0";
/// Hits asked for when checking that a row finds itself.
const CHECK_K: usize = 4;
/// Largest layer-0 beam of the orphan check.
const CHECK_EF: usize = 64;
/// Largest layer-1 beam of the orphan check.
const CHECK_EF_UPPER: usize = 32;
/// Most layers `hnsw_rs` supports.
const MAX_LAYERS: usize = 16;
/// Patches per thread below which scoring stays on fewer threads.
const MIN_PATCHES_PER_THREAD: usize = 16;
/// Patches per block of the orphans' matrix product.
const ORPHAN_BLOCK: usize = 256;
/// Cache lines of a row prefetched before it is scored.
const PREFETCH_LINES: usize = 8;
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
    /// included (see the module docs).
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

/// What a graph indexes: SHA-256 over the vocabulary's names, column
/// segments and prototype rows (as little-endian `f32`), and the build
/// parameters ([`HnswParams::m`], [`HnswParams::ef_construction`]; the
/// search parameters can change without a rebuild). A cache file is used
/// only when its fingerprint equals the one computed from the vocabulary at
/// hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a graph over `vocab`'s rows built with `params`
    /// (only `m` and `ef_construction` count). Hashes every row (a few
    /// tenths of a second for 130,000 × 384).
    pub fn new(vocab: &Vocabulary, params: &HnswParams) -> Fingerprint {
        let segments: Vec<Range<usize>> = (0..=vocab.num_classes())
            .map(|c| vocab.segment(c))
            .collect();
        let protos = vocab.prototypes();
        let protos = protos.as_standard_layout();
        Self::of_parts(
            vocab.names(),
            &segments,
            protos
                .as_slice()
                .expect("invariant: standard layout is contiguous"),
            protos.ncols(),
            params,
        )
    }

    fn of_parts(
        names: &[String],
        segments: &[Range<usize>],
        rows: &[f32],
        dim: usize,
        params: &HnswParams,
    ) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"ovdiff-bank hnsw fingerprint v1\0");
        h.update((params.m as u64).to_le_bytes());
        h.update((params.ef_construction as u64).to_le_bytes());
        let n = rows.len().checked_div(dim).unwrap_or(0);
        for v in [dim, n, segments.len(), names.len()] {
            h.update((v as u64).to_le_bytes());
        }
        for s in segments {
            h.update((s.start as u64).to_le_bytes());
            h.update((s.end as u64).to_le_bytes());
        }
        for name in names {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
        }
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in rows.chunks(1 << 14) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            h.update(&buf);
        }
        Fingerprint(h.finalize().into())
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
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

/// A dot-product kernel.
type DotFn = fn(&[f32], &[f32]) -> f32;

/// The dot product with eight-lane partial sums (vectorised by the
/// compiler).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `dot_kernel` hands this out only after detecting AVX2 and FMA.
    unsafe { dot_avx2_impl(a, b) }
}

/// The fastest dot-product kernel this CPU runs.
fn dot_kernel() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return dot_avx2;
    }
    dot_portable
}

/// A search result: a row and its dot product with the query. Orders by
/// score, then by *lower* row (so the lower row wins ties).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Hit {
    sim: f32,
    row: u32,
}

impl Eq for Hit {}

impl Ord for Hit {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.sim.total_cmp(&o.sim).then(o.row.cmp(&self.row))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}

/// A layer above 0: its nodes (increasing rows) and their neighbours.
#[derive(Debug, Clone, Default, PartialEq)]
struct UpperLayer {
    ids: Vec<u32>,
    off: Vec<u32>,
    nb: Vec<u32>,
}

impl UpperLayer {
    fn neighbours(&self, row: u32) -> &[u32] {
        match self.ids.binary_search(&row) {
            Ok(i) => &self.nb[self.off[i] as usize..self.off[i + 1] as usize],
            Err(_) => &[],
        }
    }
}

/// An HNSW graph in flat arrays.
struct Graph {
    dim: usize,
    /// `rows × dim`, row-major.
    rows: Vec<f32>,
    l0_off: Vec<u32>,
    l0: Vec<u32>,
    /// `upper[i]` is layer `i + 1`.
    upper: Vec<UpperLayer>,
    entry: u32,
    dot: DotFn,
}

/// Per-thread search buffers.
struct Scratch {
    visited: Vec<u32>,
    epoch: u32,
    cand: BinaryHeap<Hit>,
    res: BinaryHeap<Reverse<Hit>>,
    seeds: Vec<Hit>,
    out: Vec<Hit>,
    fresh: Vec<u32>,
}

impl Scratch {
    fn new(rows: usize) -> Scratch {
        Scratch {
            visited: vec![0; rows],
            epoch: 0,
            cand: BinaryHeap::new(),
            res: BinaryHeap::new(),
            seeds: Vec::new(),
            out: Vec::new(),
            fresh: Vec::new(),
        }
    }
}

impl Graph {
    fn num_rows(&self) -> usize {
        self.l0_off.len() - 1
    }

    #[inline]
    fn row(&self, r: u32) -> &[f32] {
        &self.rows[r as usize * self.dim..][..self.dim]
    }

    /// Ask the CPU to start loading row `r` (a hint; no effect elsewhere
    /// than on x86-64).
    #[inline]
    fn prefetch(&self, r: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let row = self.row(r);
            for line in row.chunks(16).take(PREFETCH_LINES) {
                // SAFETY: SSE is part of the x86-64 baseline; a prefetch
                // only hints the cache and the pointer is in bounds.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = r;
    }

    #[inline]
    fn sim(&self, q: &[f32], r: u32) -> f32 {
        (self.dot)(q, self.row(r))
    }

    fn neighbours(&self, layer: usize, r: u32) -> &[u32] {
        if layer == 0 {
            &self.l0[self.l0_off[r as usize] as usize..self.l0_off[r as usize + 1] as usize]
        } else {
            self.upper[layer - 1].neighbours(r)
        }
    }

    /// Copy `hnsw_rs`'s graph over `n` rows of `dim` values (row `i`
    /// inserted with id `i`).
    /// (The rows are left empty, to be moved in by the caller.)
    fn from_hnsw(h: &Hnsw<'_, f32, DistDot>, n: usize, dim: usize) -> Result<Graph> {
        let lost = || Error::Invalid("hnsw_rs returned an inconsistent graph".into());
        let top = h.get_max_level_observed() as usize;
        let mut l0: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut up: Vec<Vec<(u32, Vec<u32>)>> = vec![Vec::new(); top];
        let mut seen = vec![false; n];
        let mut entry = None;
        for p in h.get_point_indexation() {
            let id = p.get_origin_id();
            let level = p.get_point_id().0 as usize;
            if id >= n || seen[id] || level > top {
                return Err(lost());
            }
            seen[id] = true;
            if level == top && entry.is_none() {
                entry = Some(id as u32);
            }
            for (l, nb) in p
                .get_neighborhood_id()
                .into_iter()
                .enumerate()
                .take(level + 1)
            {
                let ids: Vec<u32> = nb.iter().map(|x| x.d_id as u32).collect();
                if ids.iter().any(|&x| x as usize >= n) {
                    return Err(lost());
                }
                if l == 0 {
                    l0[id] = ids;
                } else {
                    up[l - 1].push((id as u32, ids));
                }
            }
        }
        let entry = entry.ok_or_else(lost)?;
        if seen.iter().any(|s| !s) {
            return Err(lost());
        }
        let links: usize = l0.iter().map(Vec::len).sum();
        if links >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{links} graph links; at most {} are supported",
                u32::MAX - 1
            )));
        }
        let mut l0_off = Vec::with_capacity(n + 1);
        let mut flat = Vec::with_capacity(links);
        l0_off.push(0);
        for v in l0 {
            flat.extend_from_slice(&v);
            l0_off.push(flat.len() as u32);
        }
        let upper = up
            .into_iter()
            .map(|mut nodes| {
                nodes.sort_unstable_by_key(|(id, _)| *id);
                let mut layer = UpperLayer {
                    off: vec![0],
                    ..Default::default()
                };
                for (id, nb) in nodes {
                    layer.ids.push(id);
                    layer.nb.extend_from_slice(&nb);
                    layer.off.push(layer.nb.len() as u32);
                }
                layer
            })
            .collect();
        Ok(Graph {
            dim,
            rows: Vec::new(),
            l0_off,
            l0: flat,
            upper,
            entry,
            dot: dot_kernel(),
        })
    }

    /// Beam search of width `ef` on `layer` from the seeds in `s.seeds`;
    /// the beam, best first, ends in `s.out`.
    fn beam(&self, q: &[f32], layer: usize, ef: usize, s: &mut Scratch) {
        let Scratch {
            visited,
            epoch,
            cand,
            res,
            seeds,
            out,
            fresh,
        } = s;
        *epoch = epoch.wrapping_add(1);
        if *epoch == 0 {
            visited.fill(0);
            *epoch = 1;
        }
        let ep = *epoch;
        cand.clear();
        res.clear();
        for &h in seeds.iter() {
            let v = &mut visited[h.row as usize];
            if *v == ep {
                continue;
            }
            *v = ep;
            cand.push(h);
            res.push(Reverse(h));
            if res.len() > ef {
                res.pop();
            }
        }
        while let Some(c) = cand.pop() {
            let worst = res.peek().map_or(f32::NEG_INFINITY, |r| r.0.sim);
            if res.len() >= ef && c.sim < worst {
                break;
            }
            // Unvisited neighbours first, their rows prefetched, then
            // scored: the rows are scattered, so the loads dominate.
            fresh.clear();
            for &nb in self.neighbours(layer, c.row) {
                let v = &mut visited[nb as usize];
                if *v != ep {
                    *v = ep;
                    fresh.push(nb);
                    self.prefetch(nb);
                }
            }
            for &nb in fresh.iter() {
                let h = Hit {
                    sim: self.sim(q, nb),
                    row: nb,
                };
                if res.len() < ef || h.sim > res.peek().map_or(f32::NEG_INFINITY, |r| r.0.sim) {
                    cand.push(h);
                    res.push(Reverse(h));
                    if res.len() > ef {
                        res.pop();
                    }
                }
            }
        }
        out.clear();
        out.extend(res.drain().map(|r| r.0));
        out.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// The `k` best rows for `q` (best first) in `s.out`.
    fn search(&self, q: &[f32], k: usize, ef: usize, ef_upper: usize, s: &mut Scratch) {
        let mut cur = Hit {
            sim: self.sim(q, self.entry),
            row: self.entry,
        };
        for layer in (2..=self.upper.len()).rev() {
            loop {
                let mut moved = false;
                for &nb in self.neighbours(layer, cur.row) {
                    let sim = self.sim(q, nb);
                    if sim > cur.sim {
                        cur = Hit { sim, row: nb };
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        s.seeds.clear();
        s.seeds.push(cur);
        if !self.upper.is_empty() {
            self.beam(q, 1, ef_upper.max(1), s);
            std::mem::swap(&mut s.seeds, &mut s.out);
        }
        self.beam(q, 0, ef.max(k), s);
        s.out.truncate(k);
    }
}

/// An approximate matcher: top-k search in an HNSW graph over a
/// vocabulary's prototype rows (see the [module docs](self) for the search,
/// the scoring rule and where it differs from the exact
/// [`Vocabulary::score`]).
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

/// The score column of each row, when the segments tile `0..rows` in
/// order.
fn col_of(segments: &[Range<usize>], rows: usize) -> Option<Vec<u16>> {
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
    fn find_orphans(&self, rows: Option<&[u32]>, ef: usize, ef_upper: usize) -> Vec<u32> {
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
    fn set_orphans(&mut self, mut orphans: Vec<u32>) {
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

    /// The `k` rows nearest to `patch` (graph hits merged with the
    /// orphans), best first, as (row, dot product with `patch`); ties to the
    /// lower row. Approximate like [`score`](Matcher::score).
    pub fn nearest(&self, patch: &[f32], k: usize) -> Result<Vec<(u32, f32)>> {
        self.check_patch(patch, 0)?;
        let mut s = Scratch::new(self.graph.num_rows());
        let p = self.params;
        self.graph
            .search(patch, k, p.ef_search.max(k), p.ef_upper, &mut s);
        let mut out = std::mem::take(&mut s.out);
        for &r in &self.orphans {
            if !out.iter().any(|h| h.row == r) {
                out.push(Hit {
                    sim: self.graph.sim(patch, r),
                    row: r,
                });
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.truncate(k);
        Ok(out.into_iter().map(|h| (h.row, h.sim)).collect())
    }

    fn check_patch(&self, patch: &[f32], i: usize) -> Result<()> {
        if patch.len() != self.graph.dim {
            return Err(Error::DimensionMismatch {
                what: "patch features".into(),
                expected: format!("{} columns (the prototypes' dimension)", self.graph.dim),
                found: patch.len().to_string(),
            });
        }
        if patch.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "patch {i} has non-finite feature values"
            )));
        }
        Ok(())
    }

    /// Score `patches` (`(n, dim)`, rows L2-normalised) against every
    /// column; see the [module docs](self) for the rule. Patches are split
    /// among the threads (see [`with_threads`](Self::with_threads)).
    pub fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        crate::vocabulary::check_patch_dim(&patches, self.graph.dim)?;
        if let Some(i) = patches
            .rows()
            .into_iter()
            .position(|r| r.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::Invalid(format!(
                "patch {i} has non-finite feature values"
            )));
        }
        let n = patches.nrows();
        let cols = self.segments.len();
        let mut scores = Array2::from_elem((n, cols), f32::NEG_INFINITY);
        let mut best = Array2::from_elem((n, cols), NO_PROTO);
        let threads = threads_or_cores(self.threads)
            .min(n.div_ceil(MIN_PATCHES_PER_THREAD))
            .max(1);
        if threads == 1 {
            self.score_rows(patches, scores.view_mut(), best.view_mut());
        } else {
            let chunk = n.div_ceil(threads);
            std::thread::scope(|sc| {
                let parts = patches
                    .axis_chunks_iter(Axis(0), chunk)
                    .zip(scores.axis_chunks_iter_mut(Axis(0), chunk))
                    .zip(best.axis_chunks_iter_mut(Axis(0), chunk));
                for ((p, s), b) in parts {
                    sc.spawn(move || self.score_rows(p, s, b));
                }
            });
        }
        Ok(Scores {
            scores,
            best_proto: best,
        })
    }

    /// The per-thread kernel of [`score`](Self::score); `scores` / `best`
    /// start at -∞ / [`NO_PROTO`]. The orphans are scored by one matrix
    /// product per block of patches.
    fn score_rows(
        &self,
        patches: ArrayView2<'_, f32>,
        mut scores: ArrayViewMut2<'_, f32>,
        mut best: ArrayViewMut2<'_, u32>,
    ) {
        let mut s = Scratch::new(self.graph.num_rows());
        let mut p = vec![0.0f32; self.graph.dim];
        let prm = self.params;
        let n_orph = self.orphans.len();
        let mut orph_sims = Array2::<f32>::zeros((ORPHAN_BLOCK.min(patches.nrows()), n_orph));
        for ((block, mut sc_block), mut b_block) in patches
            .axis_chunks_iter(Axis(0), ORPHAN_BLOCK)
            .zip(scores.axis_chunks_iter_mut(Axis(0), ORPHAN_BLOCK))
            .zip(best.axis_chunks_iter_mut(Axis(0), ORPHAN_BLOCK))
        {
            let mut sims = orph_sims.slice_mut(s![..block.nrows(), ..]);
            if n_orph > 0 {
                general_mat_mul(1.0, &block, &self.orphan_rows.t(), 0.0, &mut sims);
            }
            for (((patch, mut sc), mut b), osims) in block
                .rows()
                .into_iter()
                .zip(sc_block.rows_mut())
                .zip(b_block.rows_mut())
                .zip(sims.rows())
            {
                p.iter_mut().zip(patch.iter()).for_each(|(d, &v)| *d = v);
                self.graph
                    .search(&p, prm.k, prm.ef_search, prm.ef_upper, &mut s);
                let mut kth = f32::INFINITY;
                for h in &s.out {
                    kth = kth.min(h.sim);
                    self.offer(&mut sc, &mut b, h.row, h.sim);
                }
                for (&r, &sim) in self.orphans.iter().zip(osims.iter()) {
                    self.offer(&mut sc, &mut b, r, sim);
                }
                let bound = if s.out.is_empty() { EMPTY_SCORE } else { kth };
                for ((c, v), &r) in sc.iter_mut().enumerate().zip(b.iter()) {
                    if r == NO_PROTO {
                        *v = if self.segments[c].is_empty() {
                            EMPTY_SCORE
                        } else {
                            bound
                        };
                    }
                }
            }
        }
    }

    /// Fold a hit (row `row`, score `sim`) into a patch's columns: higher
    /// wins, the lower row on ties.
    #[inline]
    fn offer(
        &self,
        s: &mut ArrayViewMut1<'_, f32>,
        b: &mut ArrayViewMut1<'_, u32>,
        row: u32,
        sim: f32,
    ) {
        let c = self.col_of[row as usize] as usize;
        if sim > s[c] || (sim == s[c] && row < b[c]) {
            s[c] = sim;
            b[c] = row;
        }
    }

    /// Write the graph to `path` (see the [module docs](self) for the
    /// layout), through a temporary file next to it renamed into place.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = tmp_path(path);
        let result = self
            .write_cache(&tmp)
            .map_err(|source| Error::Io {
                context: "writing the HNSW cache",
                path: tmp.clone(),
                source,
            })
            .and_then(|()| {
                fs::rename(&tmp, path).map_err(|source| Error::Io {
                    context: "renaming the HNSW cache to",
                    path: path.to_path_buf(),
                    source,
                })
            });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_cache(&self, tmp: &Path) -> io::Result<()> {
        let prefix = header_prefix(&self.fingerprint, &self.params);
        let mut w = HashWriter {
            inner: BufWriter::with_capacity(1 << 20, File::create(tmp)?),
            hasher: Sha256::new(),
            written: 0,
        };
        w.inner.write_all(&prefix)?;
        w.inner.write_all(&[0u8; 8 + 32])?;
        w.hasher.update(&prefix);
        self.write_payload(&mut w)?;
        let payload_len = w.written;
        w.hasher.update(payload_len.to_le_bytes());
        let checksum: [u8; 32] = w.hasher.finalize().into();
        let mut file = w.inner.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(prefix.len() as u64))?;
        file.write_all(&payload_len.to_le_bytes())?;
        file.write_all(&checksum)?;
        file.sync_all()
    }

    fn write_payload(&self, w: &mut impl Write) -> io::Result<()> {
        let g = &self.graph;
        let u64le = |w: &mut dyn Write, v: usize| w.write_all(&(v as u64).to_le_bytes());
        let u32s = |w: &mut dyn Write, v: &[u32]| -> io::Result<()> {
            let mut buf = Vec::with_capacity(v.len().min(1 << 16) * 4);
            for c in v.chunks(1 << 16) {
                buf.clear();
                buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
                w.write_all(&buf)?;
            }
            Ok(())
        };
        u64le(w, g.dim)?;
        u64le(w, g.num_rows())?;
        u64le(w, self.names.len())?;
        for n in &self.names {
            u64le(w, n.len())?;
            w.write_all(n.as_bytes())?;
        }
        u64le(w, self.segments.len())?;
        for s in &self.segments {
            u64le(w, s.start)?;
            u64le(w, s.end)?;
        }
        u64le(w, self.orphans.len())?;
        u32s(w, &self.orphans)?;
        u64le(w, self.stats.build.as_nanos() as usize)?;
        u64le(w, self.stats.orphan_check.as_nanos() as usize)?;
        u32s(w, &[g.entry])?;
        u32s(w, &g.l0_off)?;
        u32s(w, &g.l0)?;
        u64le(w, g.upper.len())?;
        for l in &g.upper {
            u64le(w, l.ids.len())?;
            u32s(w, &l.ids)?;
            u32s(w, &l.off)?;
            u32s(w, &l.nb)?;
        }
        let mut buf = Vec::with_capacity(1 << 18);
        for c in g.rows.chunks(1 << 16) {
            buf.clear();
            buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
            w.write_all(&buf)?;
        }
        Ok(())
    }

    /// Read a graph saved by [`save`](Self::save). `Ok(None)` means
    /// "rebuild": the file is missing, foreign, of another format version or
    /// platform tag, indexes something else than `expected` says, or fails
    /// its checksum or consistency checks. I/O errors other than a missing
    /// or short file are errors.
    pub fn load(path: &Path, expected: &Fingerprint) -> Result<Option<HnswMatcher>> {
        Ok(Self::load_with_reason(path, expected)?.ok())
    }

    /// [`load`](Self::load), saying why a file was not used: `Ok(Err(why))`
    /// means "rebuild" (`why` is a short phrase such as `"checksum
    /// mismatch"` or `"no cache file"`, for messages).
    pub fn load_with_reason(
        path: &Path,
        expected: &Fingerprint,
    ) -> Result<std::result::Result<HnswMatcher, String>> {
        match Self::try_load(path, expected) {
            Ok(m) => Ok(Ok(m)),
            Err(LoadFail::Reject(why)) => Ok(Err(why)),
            Err(LoadFail::Io(source)) => Err(Error::Io {
                context: "reading the HNSW cache",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// [`load`](Self::load), with the reason for a rejection.
    fn try_load(path: &Path, expected: &Fingerprint) -> Result<HnswMatcher, LoadFail> {
        let t = Instant::now();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(reject("no cache file")),
            Err(e) => return Err(LoadFail::Io(e)),
        };
        let file_len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);

        // The header, field by field against what this build writes.
        let mine = header_prefix(expected, &HnswParams::default());
        let mut got = vec![0u8; 8 + 4 + 2];
        r.read_exact(&mut got)?;
        if got[..8] != MAGIC {
            return Err(reject("not an HNSW cache file"));
        }
        if got[8..12] != mine[8..12] {
            return Err(reject("another cache format version"));
        }
        for _ in 0..2 {
            let mut len = [0u8; 1];
            r.read_exact(&mut len)?;
            got.push(len[0]);
            let at = got.len();
            got.resize(at + len[0] as usize, 0);
            r.read_exact(&mut got[at..])?;
        }
        let tag_len = mine.len() - 32 - 8 * 5;
        if got[..] != mine[..tag_len] {
            return Err(reject("built for another platform or version"));
        }
        let at = got.len();
        got.resize(at + 32 + 8 * 5, 0);
        r.read_exact(&mut got[at..])?;
        if got[at..at + 32] != expected.0 {
            return Err(reject("indexes other prototypes or build parameters"));
        }
        let mut fields = [0usize; 5];
        for (i, f) in fields.iter_mut().enumerate() {
            let b: [u8; 8] = got[at + 32 + 8 * i..][..8].try_into().expect("8 bytes");
            *f = usize::try_from(u64::from_le_bytes(b)).map_err(|_| reject("bad parameters"))?;
        }
        let params = HnswParams {
            m: fields[0],
            ef_construction: fields[1],
            ef_search: fields[2],
            ef_upper: fields[3],
            k: fields[4],
        };
        params.validate().map_err(|_| reject("bad parameters"))?;
        let mut tail = [0u8; 8 + 32];
        r.read_exact(&mut tail)?;
        let payload_len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
        let checksum = &tail[8..];
        let payload_start = (got.len() + tail.len()) as u64;
        if file_len.checked_sub(payload_start) != Some(payload_len) {
            return Err(reject("wrong file length"));
        }

        // The payload, hashed while it is parsed; counts are checked
        // against the bytes left before anything is allocated.
        let mut h = Sha256::new();
        h.update(&got);
        let mut p = Payload {
            r,
            hasher: h,
            left: payload_len,
        };
        let dim = p.len()?;
        let rows = p.len()?;
        let n_names = p.count(8)?;
        let mut names = Vec::with_capacity(n_names);
        for _ in 0..n_names {
            let len = p.count(1)?;
            let bytes = p.bytes(len)?;
            names.push(String::from_utf8(bytes).map_err(|_| reject("bad class name"))?);
        }
        let cols = p.count(16)?;
        let mut segments = Vec::with_capacity(cols);
        for _ in 0..cols {
            let s = p.len()?;
            let e = p.len()?;
            segments.push(s..e);
        }
        let n_orphans = p.count(4)?;
        let orphans = p.u32s(n_orphans)?;
        let build = Duration::from_nanos(p.u64()?);
        let orphan_check = Duration::from_nanos(p.u64()?);
        let entry = p.u32s(1)?[0];
        if rows == 0 || dim == 0 || rows >= NO_PROTO as usize {
            return Err(reject("bad sizes"));
        }
        let l0_off = p.u32s(rows.checked_add(1).ok_or_else(|| reject("bad sizes"))?)?;
        let links = *l0_off.last().expect("rows + 1 offsets") as usize;
        let l0 = p.u32s(links)?;
        let n_upper = p.count(8)?;
        if n_upper >= MAX_LAYERS {
            return Err(reject("too many layers"));
        }
        let mut upper = Vec::with_capacity(n_upper);
        for _ in 0..n_upper {
            let nodes = p.count(8)?;
            let ids = p.u32s(nodes)?;
            let off = p.u32s(nodes + 1)?;
            let nb = p.u32s(*off.last().expect("nodes + 1 offsets") as usize)?;
            upper.push(UpperLayer { ids, off, nb });
        }
        let values = rows.checked_mul(dim).ok_or_else(|| reject("bad sizes"))?;
        let data = p.f32s(values)?;
        if p.left != 0 {
            return Err(reject("bytes after the rows"));
        }
        p.hasher.update(payload_len.to_le_bytes());
        if <[u8; 32]>::from(p.hasher.finalize()) != checksum {
            return Err(reject("checksum mismatch"));
        }

        // Consistency, then the fingerprint of what was read.
        let col_of = col_of(&segments, rows).ok_or_else(|| reject("bad segments"))?;
        let bad_offsets = |off: &[u32], len: usize| {
            off[0] != 0 || off.windows(2).any(|w| w[0] > w[1]) || off.last() != Some(&(len as u32))
        };
        if cols != names.len() + 1
            || orphans.iter().any(|&o| o as usize >= rows)
            || entry as usize >= rows
            || bad_offsets(&l0_off, l0.len())
            || l0.iter().any(|&x| x as usize >= rows)
            || upper.iter().any(|l| {
                bad_offsets(&l.off, l.nb.len())
                    || l.ids.windows(2).any(|w| w[0] >= w[1])
                    || l.ids.iter().chain(&l.nb).any(|&x| x as usize >= rows)
            })
            || upper
                .last()
                .is_some_and(|l| l.ids.binary_search(&entry).is_err())
            || data.iter().any(|v| !v.is_finite())
        {
            return Err(reject("inconsistent graph"));
        }
        if Fingerprint::of_parts(&names, &segments, &data, dim, &params) != *expected {
            return Err(reject("contents do not match the fingerprint"));
        }
        let upper_layers = upper.len();
        let mut m = HnswMatcher {
            names,
            params,
            segments,
            col_of,
            graph: Graph {
                dim,
                rows: data,
                l0_off,
                l0,
                upper,
                entry,
                dot: dot_kernel(),
            },
            stats: HnswStats {
                points: rows,
                orphans: orphans.len(),
                upper_layers,
                build,
                orphan_check,
                loaded: Some(t.elapsed()),
            },
            orphans: Vec::new(),
            orphan_rows: Array2::zeros((0, dim)),
            fingerprint: *expected,
            threads: 0,
        };
        m.set_orphans(orphans);
        Ok(m)
    }

    /// Mark `rows` as orphans too (tests of the brute-force side list).
    #[cfg(test)]
    fn force_orphans(&mut self, rows: &[u32]) {
        let mut all = self.orphans.clone();
        all.extend_from_slice(rows);
        self.set_orphans(all);
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

/// Why a cache file was not used.
#[derive(Debug)]
enum LoadFail {
    /// Rebuild: the file is not a usable cache for these prototypes.
    Reject(String),
    /// Reading failed.
    Io(io::Error),
}

fn reject(why: &str) -> LoadFail {
    LoadFail::Reject(why.to_string())
}

impl From<io::Error> for LoadFail {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            reject("truncated")
        } else {
            LoadFail::Io(e)
        }
    }
}

/// A writer that hashes and counts what goes through it.
struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The payload reader: hashes what it reads and refuses counts larger than
/// the bytes left.
struct Payload<R: Read> {
    r: R,
    hasher: Sha256,
    left: u64,
}

impl<R: Read> Payload<R> {
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, LoadFail> {
        if n as u64 > self.left {
            return Err(reject("a length runs past the end"));
        }
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b)?;
        self.hasher.update(&b);
        self.left -= n as u64;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, LoadFail> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b[..].try_into().expect("8 bytes")))
    }

    /// A `u64` that fits `usize`.
    fn len(&mut self) -> Result<usize, LoadFail> {
        usize::try_from(self.u64()?).map_err(|_| reject("a length does not fit"))
    }

    /// A count of items of at least `each` bytes that fit in what is left.
    fn count(&mut self, each: usize) -> Result<usize, LoadFail> {
        let n = self.len()?;
        match n.checked_mul(each) {
            Some(b) if b as u64 <= self.left => Ok(n),
            _ => Err(reject("a count runs past the end")),
        }
    }

    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, LoadFail> {
        self.words(n, u32::from_le_bytes)
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, LoadFail> {
        self.words(n, f32::from_le_bytes)
    }

    fn words<T>(&mut self, n: usize, f: fn([u8; 4]) -> T) -> Result<Vec<T>, LoadFail> {
        match n.checked_mul(4) {
            Some(b) if b as u64 <= self.left => {}
            _ => return Err(reject("a count runs past the end")),
        }
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; n.min(1 << 16) * 4];
        let mut left = n;
        while left > 0 {
            let m = left.min(1 << 16);
            let b = &mut buf[..m * 4];
            self.r.read_exact(b)?;
            self.hasher.update(&*b);
            out.extend(b.chunks_exact(4).map(|c| f(c.try_into().expect("4 bytes"))));
            left -= m;
        }
        self.left -= n as u64 * 4;
        Ok(out)
    }
}

/// The header bytes up to (not including) the payload length: magic,
/// format version, platform tag, fingerprint, parameters.
fn header_prefix(fp: &Fingerprint, params: &HnswParams) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&CACHE_FORMAT_VERSION.to_le_bytes());
    h.push(if cfg!(target_endian = "little") { 1 } else { 2 });
    h.push(std::mem::size_of::<usize>() as u8);
    for s in [HNSW_RS_VERSION, env!("CARGO_PKG_VERSION")] {
        let s = &s.as_bytes()[..s.len().min(255)];
        h.push(s.len() as u8);
        h.extend_from_slice(s);
    }
    h.extend_from_slice(&fp.0);
    for v in params.fields() {
        h.extend_from_slice(&(v as u64).to_le_bytes());
    }
    h
}

/// `path` + `.<pid>.<n>.tmp`.
fn tmp_path(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// SplitMix64 test data.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn range(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
        fn normal(&mut self) -> f32 {
            let u1 = self.uniform().max(1e-300);
            let u2 = self.uniform();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        }
        /// `base` plus Gaussian noise of `sigma` per dimension, normalised.
        fn noisy(&mut self, base: &[f32], sigma: f32) -> Vec<f32> {
            let mut v: Vec<f32> = base.iter().map(|&x| x + sigma * self.normal()).collect();
            ovdiff_core::grid::l2_normalize(&mut v);
            v
        }
        fn unit(&mut self, d: usize) -> Vec<f32> {
            self.noisy(&vec![0.0; d], 1.0)
        }
    }

    /// A clustered bank: every class has a centre (a shared component plus
    /// its own direction, so classes are correlated as real features are),
    /// foreground prototypes in a few parts around it, and background
    /// prototypes around a context centre; every `stuff_every`-th class is
    /// stuff.
    fn clustered_bank(
        rng: &mut Rng,
        classes: usize,
        d: usize,
        fg: usize,
        bg: usize,
        stuff_every: usize,
    ) -> Vec<Candidate> {
        let shared = rng.unit(d);
        let around = |rng: &mut Rng, w: f32| -> Vec<f32> {
            let own = rng.unit(d);
            let v: Vec<f32> = shared.iter().zip(&own).map(|(s, o)| w * s + o).collect();
            rng.noisy(&v, 0.0)
        };
        let sigma = 0.7 / (d as f32).sqrt();
        (0..classes)
            .map(|c| {
                let centre = around(rng, 0.6);
                let ctx = around(rng, 0.6);
                let parts: Vec<Vec<f32>> = (0..4).map(|_| rng.noisy(&centre, sigma)).collect();
                let mut f = Array2::zeros((fg, d));
                for mut row in f.rows_mut() {
                    let part = &parts[rng.range(parts.len())];
                    row.assign(&ndarray::ArrayView1::from(&rng.noisy(part, sigma * 0.7)));
                }
                let mut b = Array2::zeros((bg, d));
                for mut row in b.rows_mut() {
                    row.assign(&ndarray::ArrayView1::from(&rng.noisy(&ctx, sigma)));
                }
                let stuff = stuff_every > 0 && c % stuff_every == stuff_every - 1;
                Candidate::new(format!("class{c}"), stuff, f, b)
            })
            .collect()
    }

    /// Patches near the prototypes: 3/4 a prototype plus noise, 1/4 the
    /// midpoint of two prototypes of different columns plus noise (near
    /// ties between classes).
    fn near_patches(rng: &mut Rng, vocab: &Vocabulary, n: usize) -> Array2<f32> {
        let p = vocab.prototypes();
        let (rows, d) = p.dim();
        let sigma = 0.5 / (d as f32).sqrt();
        let mut out = Array2::zeros((n, d));
        for (i, mut row) in out.rows_mut().into_iter().enumerate() {
            let a = p.row(rng.range(rows)).to_vec();
            let base: Vec<f32> = if i % 4 == 3 {
                let b = p.row(rng.range(rows));
                a.iter().zip(b.iter()).map(|(x, y)| x + y).collect()
            } else {
                a
            };
            row.assign(&ndarray::ArrayView1::from(&rng.noisy(&base, sigma)));
        }
        out
    }

    fn agreement(a: &Scores, b: &Scores) -> f64 {
        let (la, lb) = (a.labels(None), b.labels(None));
        la.iter().zip(&lb).filter(|(x, y)| x == y).count() as f64 / la.len().max(1) as f64
    }

    fn small_params() -> HnswParams {
        HnswParams {
            m: 12,
            ef_construction: 64,
            ef_search: 48,
            ef_upper: 16,
            k: 32,
        }
    }

    #[test]
    fn params_are_validated() {
        assert!(HnswParams::default().validate().is_ok());
        for p in [
            HnswParams {
                m: 1,
                ..Default::default()
            },
            HnswParams {
                m: 300,
                ..Default::default()
            },
            HnswParams {
                k: 0,
                ..Default::default()
            },
            HnswParams {
                ef_search: 0,
                ..Default::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }

    #[test]
    fn agrees_with_the_exact_engine_on_clustered_banks() {
        let mut rng = Rng::new(11);
        for (classes, d, fg, bg) in [(40, 64, 24, 8), (120, 48, 16, 6)] {
            let cands = clustered_bank(&mut rng, classes, d, fg, bg, 5);
            let vocab = Vocabulary::new(cands.clone()).unwrap();
            let hnsw = HnswMatcher::new(cands, small_params()).unwrap();
            assert_eq!(hnsw.class_names(), vocab.names());
            assert_eq!(Matcher::dim(&hnsw), d);
            assert_eq!(hnsw.stats().points, vocab.prototypes().nrows());
            let patches = near_patches(&mut rng, &vocab, 3000);
            let exact = vocab.score(patches.view()).unwrap();
            let approx = hnsw.score(patches.view()).unwrap();
            assert_eq!(approx.scores.dim(), exact.scores.dim());
            let agree = agreement(&exact, &approx);
            assert!(agree >= 0.995, "{classes} classes: agreement {agree}");
            // Where the labels agree, the winning score and prototype are
            // the exact ones.
            let (le, la) = (exact.labels(None), approx.labels(None));
            let mut same_proto = 0;
            for (i, (a, b)) in le.iter().zip(&la).enumerate() {
                if a != b {
                    continue;
                }
                let c = *a as usize;
                let (se, sa) = (exact.scores[[i, c]], approx.scores[[i, c]]);
                assert!((se - sa).abs() < 1e-4, "patch {i}: {se} vs {sa}");
                same_proto += (exact.best_proto[[i, c]] == approx.best_proto[[i, c]]) as usize;
            }
            assert!(same_proto as f64 >= 0.99 * le.len() as f64);
            // Every score is at most 1 + rounding and absent columns carry
            // the k-th hit's score.
            for (s, b) in approx
                .scores
                .rows()
                .into_iter()
                .zip(approx.best_proto.rows())
            {
                let present: Vec<f32> = s
                    .iter()
                    .zip(b.iter())
                    .filter(|(_, &r)| r != NO_PROTO)
                    .map(|(&v, _)| v)
                    .collect();
                assert!(!present.is_empty());
                let kth = present.iter().copied().fold(f32::INFINITY, f32::min);
                for (&v, &r) in s.iter().zip(b.iter()) {
                    assert!(v <= 1.0 + 1e-5);
                    if r == NO_PROTO {
                        assert!(v <= kth + 1e-6, "{v} > {kth}");
                    }
                }
            }
        }
    }

    #[test]
    fn small_banks_are_exact() {
        // Fewer rows than k: every row is a hit, so every column is exact.
        let mut rng = Rng::new(3);
        let cands = clustered_bank(&mut rng, 4, 16, 5, 2, 0);
        let vocab = Vocabulary::new(cands.clone()).unwrap();
        let hnsw = HnswMatcher::new(cands, small_params()).unwrap();
        let patches = near_patches(&mut rng, &vocab, 200);
        let exact = vocab.score(patches.view()).unwrap();
        let approx = hnsw.score(patches.view()).unwrap();
        for (e, a) in exact.scores.iter().zip(approx.scores.iter()) {
            assert!((e - a).abs() < 1e-5, "{e} vs {a}");
        }
        assert_eq!(exact.best_proto, approx.best_proto);
        // Without background prototypes, column 0 is empty.
        let mut c = Candidate::new(
            "only",
            false,
            ndarray::array![[1.0, 0.0], [0.6, 0.8]],
            Array2::zeros((0, 2)),
        );
        c.fg_ids = vec![7, 9];
        let hnsw = HnswMatcher::new(vec![c], small_params()).unwrap();
        let s = hnsw.score(ndarray::array![[0.0, 1.0]].view()).unwrap();
        assert_eq!(s.scores[[0, 0]], EMPTY_SCORE);
        assert_eq!(s.best_proto[[0, 0]], NO_PROTO);
        assert!((s.scores[[0, 1]] - 0.8).abs() < 1e-6);
        assert_eq!(s.best_proto[[0, 1]], 1);
        assert_eq!(s.labels(None), vec![1]);
        // An unnormalised patch scores its dot product, as in the exact
        // engine.
        let s = hnsw.score(ndarray::array![[0.0, 2.0]].view()).unwrap();
        assert!((s.scores[[0, 1]] - 1.6).abs() < 1e-5);
        // A single prototype.
        let one = HnswMatcher::new(
            vec![Candidate::new(
                "one",
                false,
                ndarray::array![[3.0, 4.0]],
                Array2::zeros((0, 2)),
            )],
            small_params(),
        )
        .unwrap();
        assert_eq!(one.stats().points, 1);
        assert_eq!(one.orphans(), &[] as &[u32]);
        let s = one.score(ndarray::array![[1.0, 0.0]].view()).unwrap();
        assert!((s.scores[[0, 1]] - 0.6).abs() < 1e-6);
        assert_eq!(s.best_proto[[0, 1]], 0);
        assert_eq!(one.nearest(&[0.0, 1.0], 5).unwrap(), vec![(0, 0.8)]);
        // Bad input.
        assert!(hnsw.score(ndarray::array![[0.0, 1.0, 0.0]].view()).is_err());
        assert!(hnsw.score(ndarray::array![[f32::NAN, 1.0]].view()).is_err());
        assert!(hnsw.nearest(&[1.0], 1).is_err());
        let empty = hnsw.score(Array2::<f32>::zeros((0, 2)).view()).unwrap();
        assert_eq!(empty.scores.dim(), (0, 2));
        // A single zero patch: every cosine is 0.
        let s = hnsw.score(Array2::<f32>::zeros((1, 2)).view()).unwrap();
        assert_eq!(s.scores[[0, 1]], 0.0);
    }

    #[test]
    fn every_row_finds_itself() {
        let mut rng = Rng::new(5);
        let cands = clustered_bank(&mut rng, 60, 32, 30, 10, 4);
        let vocab = Vocabulary::new(cands).unwrap();
        let hnsw = HnswMatcher::from_vocabulary(&vocab, small_params()).unwrap();
        let stats = hnsw.stats();
        assert_eq!(stats.points, vocab.prototypes().nrows());
        assert_eq!(stats.orphans, hnsw.orphans().len());
        assert!(stats.loaded.is_none());
        let p = vocab.prototypes();
        for (i, row) in p.rows().into_iter().enumerate() {
            let hits = hnsw.nearest(row.as_slice().unwrap(), 1).unwrap();
            assert_eq!(hits[0].0, i as u32, "row {i} not found");
            assert!((hits[0].1 - 1.0).abs() < 1e-5);
        }
        // Batched: each row's own column is won by the row itself.
        let s = hnsw.score(p.view()).unwrap();
        for (i, row) in s.best_proto.rows().into_iter().enumerate() {
            let c = hnsw.column_of(i as u32).unwrap();
            assert_eq!(row[c], i as u32);
        }
        assert_eq!(hnsw.column_of(u32::MAX), None);
    }

    #[test]
    fn orphans_are_scored_by_brute_force() {
        let mut rng = Rng::new(8);
        let cands = clustered_bank(&mut rng, 30, 24, 12, 4, 3);
        let vocab = Vocabulary::new(cands).unwrap();
        let mut hnsw = HnswMatcher::from_vocabulary(
            &vocab,
            HnswParams {
                k: 8,
                ef_search: 8,
                ..small_params()
            },
        )
        .unwrap();
        let patches = near_patches(&mut rng, &vocab, 300);
        // With every row an orphan, every column is present and exact.
        let all: Vec<u32> = (0..vocab.prototypes().nrows() as u32).collect();
        hnsw.force_orphans(&all);
        assert_eq!(hnsw.stats().orphans, all.len());
        let exact = vocab.score(patches.view()).unwrap();
        let approx = hnsw.score(patches.view()).unwrap();
        for (e, a) in exact.scores.iter().zip(approx.scores.iter()) {
            assert!((e - a).abs() < 1e-5, "{e} vs {a}");
        }
        assert_eq!(exact.best_proto, approx.best_proto);
        let near = hnsw.nearest(patches.row(0).as_slice().unwrap(), 3).unwrap();
        assert_eq!(near.len(), 3);
        assert!(near[0].1 >= near[1].1 && near[1].1 >= near[2].1);
    }

    #[test]
    fn cache_round_trips_and_rejects_what_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.hnsw");
        let mut rng = Rng::new(21);
        let cands = clustered_bank(&mut rng, 25, 32, 20, 6, 4);
        let vocab = Vocabulary::new(cands).unwrap();
        let params = small_params();
        let fp = Fingerprint::new(&vocab, &params);
        assert!(HnswMatcher::load(&path, &fp).unwrap().is_none());
        let mut hnsw = HnswMatcher::from_vocabulary(&vocab, params).unwrap();
        assert_eq!(hnsw.fingerprint(), &fp);
        hnsw.force_orphans(&[3, 17]);
        hnsw.save(&path).unwrap();
        // No scratch files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let back = HnswMatcher::load(&path, &fp)
            .unwrap()
            .expect("cache accepted");
        assert!(back.stats().loaded.is_some());
        assert_eq!(back.stats().points, hnsw.stats().points);
        assert_eq!(back.orphans(), hnsw.orphans());
        assert_eq!(back.stats().build, hnsw.stats().build);
        assert_eq!(back.class_names(), hnsw.class_names());
        assert_eq!(back.params(), params);
        let patches = near_patches(&mut rng, &vocab, 500);
        let (a, b) = (
            hnsw.score(patches.view()).unwrap(),
            back.score(patches.view()).unwrap(),
        );
        assert_eq!(a, b);
        // Saving a loaded graph works too.
        let path2 = dir.path().join("again.hnsw");
        back.save(&path2).unwrap();
        let again = HnswMatcher::load(&path2, &fp).unwrap().unwrap();
        assert_eq!(again.score(patches.view()).unwrap(), a);

        // Another vocabulary or other build parameters: rebuild.
        let search_only = HnswParams {
            k: params.k + 1,
            ef_search: 7,
            ..params
        };
        assert_eq!(Fingerprint::new(&vocab, &search_only), fp);
        let other = Fingerprint::new(
            &vocab,
            &HnswParams {
                m: params.m + 1,
                ..params
            },
        );
        assert_ne!(other, fp);
        assert!(HnswMatcher::load(&path, &other).unwrap().is_none());
        let mut c2 = clustered_bank(&mut Rng::new(22), 25, 32, 20, 6, 4);
        c2[0].name = "renamed".into();
        assert!(HnswMatcher::load(
            &path,
            &Fingerprint::new(&Vocabulary::new(c2).unwrap(), &params)
        )
        .unwrap()
        .is_none());
        // Search parameters change without a rebuild and are saved.
        let mut changed = HnswMatcher::load(&path, &fp).unwrap().unwrap();
        changed.set_search_params(96, 8, 40).unwrap();
        assert_eq!(changed.fingerprint(), &fp);
        assert!(changed.set_search_params(0, 8, 40).is_err());
        let path3 = dir.path().join("search.hnsw");
        changed.save(&path3).unwrap();
        let p3 = HnswMatcher::load(&path3, &fp).unwrap().unwrap().params();
        assert_eq!((p3.ef_search, p3.ef_upper, p3.k), (96, 8, 40));

        // Corruption anywhere: rebuild.
        let good = fs::read(&path).unwrap();
        let header_len = header_prefix(&fp, &params).len() + 8 + 32;
        let bad = dir.path().join("bad.hnsw");
        for at in [
            0,
            8,
            12,
            13,
            15,
            30,
            header_len - 40,
            header_len - 1,
            header_len + 3,
            good.len() / 2,
            good.len() - 1,
        ] {
            let mut b = good.clone();
            b[at] ^= 0x40;
            fs::write(&bad, &b).unwrap();
            assert!(HnswMatcher::load(&bad, &fp).unwrap().is_none(), "byte {at}");
        }
        for len in [0, 5, header_len, good.len() - 1] {
            fs::write(&bad, &good[..len]).unwrap();
            assert!(
                HnswMatcher::load(&bad, &fp).unwrap().is_none(),
                "length {len}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&bad, &longer).unwrap();
        assert!(HnswMatcher::load(&bad, &fp).unwrap().is_none());

        // Tampering with a valid checksum is still caught, and the reasons
        // say why.
        let prefix_len = header_len - 40;
        let resealed = |mut b: Vec<u8>| {
            let payload_len = &b[prefix_len..prefix_len + 8];
            let mut h = Sha256::new();
            h.update(&b[..prefix_len]);
            h.update(&b[header_len..]);
            h.update(payload_len);
            let sum: [u8; 32] = h.finalize().into();
            b[prefix_len + 8..header_len].copy_from_slice(&sum);
            b
        };
        let why = |b: Vec<u8>| {
            fs::write(&bad, b).unwrap();
            match HnswMatcher::try_load(&bad, &fp) {
                Err(LoadFail::Reject(why)) => why,
                Err(LoadFail::Io(e)) => panic!("{e}"),
                Ok(_) => panic!("accepted"),
            }
        };
        assert_eq!(resealed(good.clone()), good);
        let mut b = good.clone();
        b[8] = 99;
        assert_eq!(why(resealed(b)), "another cache format version");
        let mut b = good.clone();
        b[13] ^= 1;
        assert_eq!(why(resealed(b)), "built for another platform or version");
        let n = good.len();
        let mut b = good.clone();
        b[n - 4] ^= 1;
        assert_eq!(why(b.clone()), "checksum mismatch");
        assert_eq!(why(resealed(b)), "contents do not match the fingerprint");
        let mut b = good.clone();
        b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(why(resealed(b)), "inconsistent graph");
        assert_eq!(why(good[..0].to_vec()), "truncated");
        fs::remove_file(&bad).unwrap();
        assert_eq!(
            match HnswMatcher::try_load(&bad, &fp) {
                Err(LoadFail::Reject(w)) => w,
                _ => String::new(),
            },
            "no cache file"
        );
        // The good file is still accepted.
        assert!(HnswMatcher::load(&path, &fp).unwrap().is_some());
    }

    /// A matcher over four exact unit rows (one background, two `cat`, one
    /// `dog`) whose graph, orphans and build times are set by hand, so that
    /// its cache file is the same bytes on every run.
    fn pinned_matcher() -> (HnswMatcher, Fingerprint) {
        let cands = vec![
            Candidate::new(
                "cat",
                false,
                ndarray::array![[1.0, 0.0], [0.0, 1.0]],
                ndarray::array![[-1.0, 0.0]],
            ),
            Candidate::new(
                "dog",
                false,
                ndarray::array![[0.0, -1.0]],
                Array2::zeros((0, 2)),
            ),
        ];
        let vocab = Vocabulary::new(cands).unwrap();
        let params = small_params();
        let mut m = HnswMatcher::from_vocabulary(&vocab, params).unwrap();
        m.graph.l0_off = vec![0, 2, 4, 5, 7];
        m.graph.l0 = vec![1, 3, 0, 2, 1, 0, 2];
        m.graph.upper = vec![UpperLayer {
            ids: vec![1, 3],
            off: vec![0, 1, 2],
            nb: vec![3, 1],
        }];
        m.graph.entry = 1;
        m.set_orphans(vec![2]);
        m.stats.upper_layers = 1;
        m.stats.build = Duration::from_nanos(1234);
        m.stats.orphan_check = Duration::from_nanos(567);
        (m, Fingerprint::new(&vocab, &params))
    }

    /// The cache file's bytes, field by field (the layout in the module
    /// docs): a format, so a change here breaks every saved graph.
    #[cfg(all(target_endian = "little", target_pointer_width = "64"))]
    #[test]
    fn cache_bytes_are_pinned() {
        let (m, fp) = pinned_matcher();
        assert_eq!(
            fp.to_hex(),
            "d7cf9648e5cf829519e3371bf9a377a3a9396d9ca18577a246117882d640247a"
        );
        let hex = |parts: &[&str]| hex::decode(parts.concat()).unwrap();
        let mut prefix = hex(&[
            "4f5644484e535700", // magic "OVDHNSW\0"
            "01000000",         // format version 1
            "01",               // little-endian
            "08",               // 8-byte pointers
        ]);
        for s in [HNSW_RS_VERSION, env!("CARGO_PKG_VERSION")] {
            prefix.push(s.len() as u8);
            prefix.extend_from_slice(s.as_bytes());
        }
        prefix.extend_from_slice(fp.as_bytes());
        prefix.extend(hex(&[
            "0c00000000000000", // m 12
            "4000000000000000", // ef_construction 64
            "3000000000000000", // ef_search 48
            "1000000000000000", // ef_upper 16
            "2000000000000000", // k 32
        ]));
        let payload = hex(&[
            "0200000000000000", // dim 2
            "0400000000000000", // rows 4
            "0200000000000000", // 2 names
            "0300000000000000",
            "636174", // "cat"
            "0300000000000000",
            "646f67",           // "dog"
            "0300000000000000", // 3 segments
            "00000000000000000100000000000000",
            "01000000000000000300000000000000",
            "03000000000000000400000000000000",
            "0100000000000000", // 1 orphan
            "02000000",
            "d204000000000000",                         // insertion 1,234 ns
            "3702000000000000",                         // orphan check 567 ns
            "01000000",                                 // entry
            "0000000002000000040000000500000007000000", // layer 0 offsets
            "01000000030000000000000002000000010000000000000002000000",
            "0100000000000000", // 1 upper layer
            "0200000000000000", // of 2 nodes
            "0100000003000000",
            "000000000100000002000000",
            "0300000001000000",
            "000080bf00000000", // rows
            "0000803f00000000",
            "000000000000803f",
            "00000000000080bf",
        ]);
        let len = (payload.len() as u64).to_le_bytes();
        assert_eq!(len, *b"\x02\x01\0\0\0\0\0\0");
        let mut h = Sha256::new();
        h.update(&prefix);
        h.update(&payload);
        h.update(len);
        let want = [&prefix[..], &len, &h.finalize(), &payload].concat();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pinned.hnsw");
        m.save(&path).unwrap();
        assert_eq!(hex::encode(fs::read(&path).unwrap()), hex::encode(&want));
        let back = HnswMatcher::load(&path, &fp).unwrap().expect("accepted");
        assert_eq!(back.orphans(), &[2]);
        assert_eq!(back.stats().build, Duration::from_nanos(1234));
        assert_eq!(back.stats().upper_layers, 1);
        let again = dir.path().join("again.hnsw");
        back.save(&again).unwrap();
        assert_eq!(fs::read(&again).unwrap(), want);
    }

    #[test]
    fn pinned_hnsw_rs_version_matches_the_lock_file() {
        let lock =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("Cargo.lock");
        let Ok(lock) = fs::read_to_string(lock) else {
            return;
        };
        let want = format!("name = \"hnsw_rs\"\nversion = \"{HNSW_RS_VERSION}\"");
        assert!(lock.contains(&want), "Cargo.lock has another hnsw_rs");
    }

    /// Synthetic bank of `classes` classes (100 foreground + 30 background
    /// prototypes each, every 5th class stuff), 384 d.
    fn bench_bank(classes: usize, seed: u64) -> Vocabulary {
        let mut rng = Rng::new(seed);
        Vocabulary::new(clustered_bank(&mut rng, classes, 384, 100, 30, 5)).unwrap()
    }

    fn rss_mib() -> f64 {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// The fastest of `reps` runs of `a` and of `b`, interleaved (ms), so
    /// that both see the same machine load.
    fn time_pair<A, B>(
        reps: usize,
        mut a: impl FnMut() -> A,
        mut b: impl FnMut() -> B,
    ) -> (f64, f64) {
        let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            let t = Instant::now();
            std::hint::black_box(a());
            ta = ta.min(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(b());
            tb = tb.min(t.elapsed().as_secs_f64() * 1e3);
        }
        (ta, tb)
    }

    /// `cargo test --release --lib -- --ignored --nocapture hnsw_benchmark`
    /// (`OVDIFF_HNSW_BENCH_CLASSES=10,100` to choose the sizes,
    /// `OVDIFF_HNSW_BENCH_PARAMS=m,efc,efs,efu,k` the parameters,
    /// `OVDIFF_HNSW_BENCH_EF=64:1,128:64` search widths `ef_search:ef_upper`
    /// to try on each graph).
    #[test]
    #[ignore = "timing; run in release"]
    fn hnsw_benchmark() {
        let sizes: Vec<usize> = std::env::var("OVDIFF_HNSW_BENCH_CLASSES")
            .ok()
            .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10, 100, 300, 1000]);
        let params = std::env::var("OVDIFF_HNSW_BENCH_PARAMS")
            .ok()
            .and_then(|s| {
                let v: Vec<usize> = s.split(',').filter_map(|v| v.trim().parse().ok()).collect();
                (v.len() == 5).then(|| HnswParams {
                    m: v[0],
                    ef_construction: v[1],
                    ef_search: v[2],
                    ef_upper: v[3],
                    k: v[4],
                })
            })
            .unwrap_or_default();
        let efs: Vec<(usize, usize)> = std::env::var("OVDIFF_HNSW_BENCH_EF")
            .ok()
            .map(|s| {
                s.split(',')
                    .filter_map(|v| {
                        let (a, b) = v.split_once(':')?;
                        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![(params.ef_search, params.ef_upper)]);
        let threads = threads_or_cores(0);
        eprintln!("{params:?}, search ef {efs:?}, {threads} threads");
        for classes in sizes {
            let vocab = bench_bank(classes, 100 + classes as u64);
            let rows = vocab.prototypes().nrows();
            let patches = near_patches(&mut Rng::new(7), &vocab, 1024);
            let rss0 = rss_mib();
            let t = Instant::now();
            let mut hnsw = HnswMatcher::from_vocabulary(&vocab, params).unwrap();
            let total = t.elapsed();
            let rss = rss_mib() - rss0;
            let st = hnsw.stats();
            if std::env::var_os("OVDIFF_HNSW_BENCH_ORPHANS").is_some() {
                for (ef, up) in [(16, 4), (32, 8), (64, 32), (128, 64)] {
                    let t = Instant::now();
                    let o = hnsw.find_orphans(None, ef, up).len();
                    eprintln!(
                        "  orphan check at ef {ef}, ef_upper {up}: {o} orphans, {:.1} s",
                        t.elapsed().as_secs_f64()
                    );
                }
            }
            let reps = if rows < 50_000 { 7 } else { 3 };
            let exact = vocab.score(patches.view()).unwrap();
            let le = exact.labels(None);
            eprintln!(
                "{classes} classes, {rows} rows: build {:.1} s (insert {:.1} s, orphan check {:.1} s, \
                 {} orphans), RSS +{rss:.0} MiB",
                total.as_secs_f64(),
                st.build.as_secs_f64(),
                st.orphan_check.as_secs_f64(),
                st.orphans,
            );
            for &(ef, up) in &efs {
                hnsw.set_search_params(ef, up, params.k).unwrap();
                let (exact_ms, hnsw_ms) = time_pair(
                    reps,
                    || vocab.score(patches.view()).unwrap(),
                    || hnsw.score(patches.view()).unwrap(),
                );
                let approx = hnsw.score(patches.view()).unwrap();
                let la = approx.labels(None);
                // every 4th patch is the midpoint of two prototypes
                let (mut near_ok, mut mid_ok, mut mids) = (0, 0, 0);
                let mut err = 0.0f32;
                for (i, (&a, &b)) in le.iter().zip(&la).enumerate() {
                    let ok = (a == b) as usize;
                    if i % 4 == 3 {
                        mids += 1;
                        mid_ok += ok;
                    } else {
                        near_ok += ok;
                    }
                    let l = b as usize;
                    err = err.max((exact.scores[[i, l]] - approx.scores[[i, l]]).abs());
                }
                let n = le.len();
                eprintln!(
                    "  ef {ef}, ef_upper {up}, k {}: hnsw {hnsw_ms:.0} ms, exact {exact_ms:.0} ms ({:.2}×); label agreement {:.2}% \
                     (near-prototype {:.2}%, midpoints {:.2}%); max winning-score error {err:.1e}",
                    params.k,
                    exact_ms / hnsw_ms,
                    100.0 * (near_ok + mid_ok) as f64 / n as f64,
                    100.0 * near_ok as f64 / (n - mids) as f64,
                    100.0 * mid_ok as f64 / mids as f64,
                );
                // The row scripts/bench collects into docs/benchmarks.md.
                let agree = 100.0 * (near_ok + mid_ok) as f64 / n as f64;
                println!(
                    "| HNSW vs exact: 1,024 patches × {classes} classes ({rows} rows), ef {ef}: build {:.0} s, HNSW {hnsw_ms:.0} ms vs exact {exact_ms:.0} ms ({:.2}×), RSS +{rss:.0} MiB; pixel agreement | {agree:.2}% | ≥ 99.5% | {} |",
                    total.as_secs_f64(),
                    exact_ms / hnsw_ms,
                    if agree >= 99.5 { "yes" } else { "**no**" }
                );
            }
            // The IVF engine on the same bank and patches.
            let t = Instant::now();
            let ivf = crate::IvfMatcher::from_vocabulary(&vocab, Default::default()).unwrap();
            let ivf_build = t.elapsed().as_secs_f64();
            let (exact_ms, ivf_ms) = time_pair(
                reps,
                || vocab.score(patches.view()).unwrap(),
                || ivf.score(patches.view()).unwrap(),
            );
            let li = ivf.score(patches.view()).unwrap().labels(None);
            let (mut near_ok, mut mid_ok, mut mids) = (0, 0, 0);
            for (i, (&a, &b)) in le.iter().zip(&li).enumerate() {
                if i % 4 == 3 {
                    mids += 1;
                    mid_ok += (a == b) as usize;
                } else {
                    near_ok += (a == b) as usize;
                }
            }
            let n = le.len();
            let agree = 100.0 * (near_ok + mid_ok) as f64 / n as f64;
            eprintln!(
                "  IVF ({} lists, {} probes): build {ivf_build:.1} s, ivf {ivf_ms:.0} ms, exact {exact_ms:.0} ms ({:.2}×); \
                 label agreement {agree:.2}% (near-prototype {:.2}%, midpoints {:.2}%)",
                ivf.stats().lists,
                ivf.params().probes,
                exact_ms / ivf_ms,
                100.0 * near_ok as f64 / (n - mids) as f64,
                100.0 * mid_ok as f64 / mids as f64,
            );
            println!(
                "| IVF vs exact: 1,024 patches × {classes} classes ({rows} rows), {} probes: build {ivf_build:.0} s, IVF {ivf_ms:.0} ms vs exact {exact_ms:.0} ms ({:.2}×); pixel agreement | {agree:.2}% | ≥ 99.5% | {} |",
                ivf.params().probes,
                exact_ms / ivf_ms,
                if agree >= 99.5 { "yes" } else { "**no**" }
            );
            drop(ivf);
            hnsw.set_search_params(params.ef_search, params.ef_upper, params.k)
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bench.hnsw");
            let t = Instant::now();
            hnsw.save(&path).unwrap();
            let save = t.elapsed();
            let size = fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
            let t = Instant::now();
            let fp = Fingerprint::new(&vocab, &params);
            let fp_time = t.elapsed();
            let back = HnswMatcher::load(&path, &fp).unwrap().unwrap();
            let load = back.stats().loaded.unwrap();
            eprintln!(
                "  cache {size:.0} MiB: save {:.1} s, fingerprint {:.2} s, load {:.1} s",
                save.as_secs_f64(),
                fp_time.as_secs_f64(),
                load.as_secs_f64(),
            );
        }
    }
}
