//! [`HnswMatcher`]: an approximate [`Matcher`] over the same prototype rows as the exact [`Vocabulary`], by top-k search in an HNSW graph (the `hnsw_rs` crate), with orphan handling and a checked on-disk cache.
//!
//! # Scoring, and where it is approximate
//!
//! The matcher indexes exactly the rows of [`Vocabulary::prototypes`] (the
//! kept background prototypes, then each candidate's foreground
//! prototypes, L2-normalised, after the stuff rule), under the same row
//! numbers, so [`Vocabulary::proto_ref`] explains its
//! [`Scores::best_proto`] too. The graph uses `hnsw_rs`'s `DistDot`
//! (`1 - a·b`, which is the cosine distance on unit vectors and about three
//! times cheaper than `DistCosine`).
//!
//! Per patch `p` (a row of the `(n, dim)` input):
//!
//! 1. the graph is searched for the `k` rows nearest to `p / |p|`
//!    ([`HnswParams::k`], beam width [`HnswParams::ef_search`]); a hit's
//!    score is its cosine times `|p|` (the dot product with `p`, as the exact
//!    engine computes it);
//! 2. the [orphans](#orphans) are scored by brute force;
//! 3. a column (class `k`, or the background, column 0) that has a row among
//!    these hits scores the best of them, and [`Scores::best_proto`] holds
//!    that row (the lowest on ties, as the exact engine);
//! 4. **a column with no row among the hits gets the smallest returned
//!    score (the k-th best) and [`NO_PROTO`]**: if the search were exact,
//!    that is an upper bound on the column's true score. A column without
//!    any prototype rows (the background when every background was dropped)
//!    is [`EMPTY_SCORE`], as in the exact engine.
//!
//! So the approximation has two sources: the graph search may miss a row
//! that the exact engine would see (recall below 100%), and the columns
//! outside the top-k carry a bound rather than their score. The per-patch
//! *label* (the argmax) is the column of the best hit, which only needs the
//! nearest row to be found; the scores of far classes, which late fusion
//! averages over windows, are only bounded. With the defaults the labels
//! agree with the exact engine on ≥ 99.5% of patches (see the tests and the
//! `hnsw_benchmark` test).
//!
//! # Orphans
//!
//! HNSW graphs built by `hnsw_rs` can leave a few inserted points
//! unreachable from the entry point (their in-links were pruned). After
//! building, every row is searched for with itself as the query (at
//! [`HnswParams::ef_search`]); a row that is not among its own hits is an
//! *orphan*. Orphans stay in the graph but are also kept in a small side
//! list that is scored exactly, by brute force, for every patch, so every
//! row is findable (self-search recall 100%). [`HnswMatcher::stats`] counts
//! them.
//!
//! # Cache file
//!
//! Building the graph is slow (minutes for 130,000 prototypes on two cores;
//! see the measured figures below), so [`HnswMatcher::save`] writes it
//! next to a bank and [`HnswMatcher::load`] reads it back. The file is our
//! own wrapper around `hnsw_rs`'s dump (whose own format is two
//! native-endian files, read back with panics on bad input):
//!
//! ```text
//! magic            8 bytes  "OVDHNSW\0"
//! format version   u32 LE   (CACHE_FORMAT_VERSION)
//! endianness       u8       1 = little, 2 = big (of the writing target)
//! pointer width    u8       bytes
//! hnsw_rs version  u8 length + ASCII
//! crate version    u8 length + ASCII (ovdiff-bank)
//! fingerprint      32 bytes (Fingerprint: the indexed rows + parameters)
//! parameters       4 × u64 LE (m, ef_construction, ef_search, k)
//! payload length   u64 LE
//! checksum         32 bytes: SHA-256 of every header byte before it and
//!                  of the payload
//! payload          meta (u64 LE length + bytes: dimension, rows, names,
//!                  column segments, orphans and their rows, build times),
//!                  then hnsw_rs's graph dump and data dump (u64 LE length
//!                  + bytes each)
//! ```
//!
//! [`load`](HnswMatcher::load) returns `Ok(None)`, meaning "rebuild", when
//! the file is missing, is not such a file, has another format version,
//! platform tag (endianness, pointer width, `hnsw_rs` version, crate
//! version) or fingerprint, has the wrong length, fails its checksum, or
//! its contents are inconsistent; only then is the dump handed to
//! `hnsw_rs` (in a scratch directory next to the file), and a panic there
//! is caught and also read as "rebuild". The checksum guards against
//! corruption, not against a crafted file: the cache is trusted as much as
//! the bank directory it sits in.
//!
//! Loading leaks one small `hnsw_rs` reader object (a few hundred bytes):
//! the graph it returns borrows from it for its whole life.
//!
//! # Measured cost
//!
//! See the `hnsw_benchmark` test (`cargo test --release --lib --
//! --ignored --nocapture hnsw_benchmark`) and the figures it printed, in
//! the report of the change that added this module.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hnsw_rs::anndists::dist::distances::DistDot;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use sha2::{Digest, Sha256};

use crate::segment::engine::{Candidate, Matcher, Scores, Vocabulary, EMPTY_SCORE, NO_PROTO};
use crate::{Error, Result};

/// The `hnsw_rs` version this module is built against (pinned with `=` in
/// `Cargo.toml`); part of the cache file's platform tag.
pub const HNSW_RS_VERSION: &str = "0.3.5";

/// Version of the cache file layout written by [`HnswMatcher::save`].
pub const CACHE_FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"OVDHNSW\0";
/// Hits asked for when checking that a row finds itself.
const CHECK_K: usize = 4;
/// Most layers `hnsw_rs` supports.
const MAX_LAYERS: usize = 16;
/// Basename of `hnsw_rs`'s dump files in a scratch directory.
const DUMP_BASENAME: &str = "graph";
/// Patches per thread below which scoring stays on fewer threads.
const MIN_PATCHES_PER_THREAD: usize = 16;

fn auto_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Graph and search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HnswParams {
    /// Links kept per node and layer (`M`; layer 0 keeps `2·M`), 2 to 128.
    pub m: usize,
    /// Beam width while building (at least 1): higher builds slower and
    /// finds better links.
    pub ef_construction: usize,
    /// Beam width while searching (at least 1; the search uses
    /// `max(ef_search, k)`).
    pub ef_search: usize,
    /// Rows kept per patch (top-k, at least 1); a column with no row among
    /// them gets the k-th score as its bound.
    pub k: usize,
}

impl Default for HnswParams {
    /// `m = 16`, `ef_construction = 100`, `ef_search = 64`, `k = 64`.
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
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
            ("k", self.k),
        ] {
            if v == 0 || v > 1 << 20 {
                return Err(Error::Invalid(format!(
                    "HNSW {name} = {v} is out of range (1 to {})",
                    1 << 20
                )));
            }
        }
        Ok(())
    }

    fn to_le_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, v) in [self.m, self.ef_construction, self.ef_search, self.k]
            .into_iter()
            .enumerate()
        {
            b[i * 8..][..8].copy_from_slice(&(v as u64).to_le_bytes());
        }
        b
    }

    fn from_le_bytes(b: &[u8; 32]) -> Option<HnswParams> {
        let get = |i: usize| {
            let v = u64::from_le_bytes(b[i * 8..][..8].try_into().expect("8 bytes"));
            usize::try_from(v).ok()
        };
        Some(HnswParams {
            m: get(0)?,
            ef_construction: get(1)?,
            ef_search: get(2)?,
            k: get(3)?,
        })
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
    /// (only `m` and `ef_construction` count).
    /// Hashes every row (about half a second for 130,000 × 384).
    pub fn new(vocab: &Vocabulary, params: &HnswParams) -> Fingerprint {
        let segments: Vec<Range<usize>> = (0..=vocab.num_classes())
            .map(|c| vocab.segment(c))
            .collect();
        Self::of_parts(vocab.names(), &segments, vocab.prototypes(), params)
    }

    fn of_parts(
        names: &[String],
        segments: &[Range<usize>],
        protos: ArrayView2<'_, f32>,
        params: &HnswParams,
    ) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"ovdiff-bank hnsw fingerprint v1\0");
        h.update((params.m as u64).to_le_bytes());
        h.update((params.ef_construction as u64).to_le_bytes());
        for v in [protos.ncols(), protos.nrows(), segments.len(), names.len()] {
            h.update((v as u64).to_le_bytes());
        }
        for s in segments {
            h.update((s.start as u64).to_le_bytes());
            h.update((s.end as u64).to_le_bytes());
        }
        for n in names {
            h.update((n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
        }
        let mut buf = Vec::with_capacity(protos.ncols() * 4);
        for row in protos.rows() {
            buf.clear();
            buf.extend(row.iter().flat_map(|v| v.to_le_bytes()));
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
    /// Time to insert the rows when the graph was built.
    pub build: Duration,
    /// Time of the orphan check when the graph was built.
    pub orphan_check: Duration,
    /// `Some(time to read it)` when the graph came from a cache file.
    pub loaded: Option<Duration>,
}

/// An approximate matcher: top-k search in an HNSW graph over a
/// vocabulary's prototype rows (see the [module docs](self) for the scoring
/// rule and where it differs from the exact [`Vocabulary::score`]).
pub struct HnswMatcher {
    names: Vec<String>,
    dim: usize,
    params: HnswParams,
    segments: Vec<Range<usize>>,
    /// Score column of each row.
    col_of: Vec<u16>,
    graph: Hnsw<'static, f32, DistDot>,
    orphan_ids: Vec<u32>,
    /// The orphans' rows, `(orphans, dim)`, L2-normalised.
    orphan_rows: Array2<f32>,
    fingerprint: Fingerprint,
    stats: HnswStats,
    threads: usize,
}

impl fmt::Debug for HnswMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HnswMatcher")
            .field("classes", &self.names.len())
            .field("dim", &self.dim)
            .field("params", &self.params)
            .field("stats", &self.stats)
            .field("fingerprint", &self.fingerprint.to_hex())
            .finish_non_exhaustive()
    }
}

/// Row segments of the score columns, checked to tile `0..rows` in order.
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

    /// Build the graph over `vocab`'s prototype rows, then run the orphan
    /// check. Insertion runs on `hnsw_rs`'s thread pool (one thread per
    /// core); the check on one thread per core.
    pub fn from_vocabulary(vocab: &Vocabulary, params: HnswParams) -> Result<HnswMatcher> {
        params.validate()?;
        let protos = vocab.prototypes().as_standard_layout().into_owned();
        let (rows, dim) = protos.dim();
        if rows >= NO_PROTO as usize {
            return Err(Error::Invalid(format!(
                "{rows} prototypes; at most {} can be indexed",
                NO_PROTO - 1
            )));
        }
        let segments: Vec<Range<usize>> = (0..=vocab.num_classes())
            .map(|c| vocab.segment(c))
            .collect();
        let col_of = col_of(&segments, rows)
            .ok_or_else(|| Error::Invalid("vocabulary segments do not tile its rows".into()))?;
        let names = vocab.names().to_vec();
        let fingerprint = Fingerprint::of_parts(&names, &segments, protos.view(), &params);
        let data = protos
            .as_slice()
            .expect("invariant: standard layout is contiguous");

        let t = Instant::now();
        let mut graph =
            Hnsw::<f32, DistDot>::new(params.m, rows, MAX_LAYERS, params.ef_construction, DistDot);
        let items: Vec<(&[f32], usize)> = data.chunks_exact(dim).zip(0..).collect();
        graph.parallel_insert_slice(&items);
        graph.set_searching_mode(true);
        let build = t.elapsed();

        let t = Instant::now();
        let found = self_search(&graph, data, dim, params.ef_search, 0);
        let orphan_ids: Vec<u32> = (0..rows as u32).filter(|&i| !found[i as usize]).collect();
        let orphan_rows = protos.select(
            Axis(0),
            &orphan_ids.iter().map(|&i| i as usize).collect::<Vec<_>>(),
        );
        let orphan_check = t.elapsed();

        Ok(HnswMatcher {
            names,
            dim,
            params,
            segments,
            col_of,
            graph,
            stats: HnswStats {
                points: rows,
                orphans: orphan_ids.len(),
                build,
                orphan_check,
                loaded: None,
            },
            orphan_ids,
            orphan_rows,
            fingerprint,
            threads: 0,
        })
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

    /// Change the search-time parameters (`ef_search`, `k`); the graph
    /// and its [`fingerprint`](Self::fingerprint) (which covers only the
    /// build parameters) stay as they are.
    pub fn set_search_params(&mut self, ef_search: usize, k: usize) -> Result<()> {
        let p = HnswParams {
            ef_search,
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
        &self.orphan_ids
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
        let mut q = vec![0.0; self.dim];
        let norm = unit_query(patch, &mut q);
        let ef = self.params.ef_search.max(k);
        let mut out: Vec<(u32, f32)> = self
            .graph
            .search(&q, k, ef)
            .into_iter()
            .map(|h| (h.d_id as u32, hit_score(h.distance, norm)))
            .collect();
        for (&id, row) in self.orphan_ids.iter().zip(self.orphan_rows.rows()) {
            if !out.iter().any(|&(r, _)| r == id) {
                out.push((id, dot(patch, row)));
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        Ok(out)
    }

    fn check_patch(&self, patch: &[f32], i: usize) -> Result<()> {
        if patch.len() != self.dim {
            return Err(Error::DimensionMismatch {
                what: "patch features".into(),
                expected: format!("{} columns (the prototypes' dimension)", self.dim),
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
        if patches.ncols() != self.dim {
            return Err(Error::DimensionMismatch {
                what: "patch features".into(),
                expected: format!("{} columns (the prototypes' dimension)", self.dim),
                found: patches.ncols().to_string(),
            });
        }
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
        let threads = auto_threads(self.threads)
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
    /// start at -∞ / [`NO_PROTO`].
    fn score_rows(
        &self,
        patches: ArrayView2<'_, f32>,
        mut scores: ArrayViewMut2<'_, f32>,
        mut best: ArrayViewMut2<'_, u32>,
    ) {
        let mut q = vec![0.0f32; self.dim];
        let mut p = vec![0.0f32; self.dim];
        for ((patch, mut s), mut b) in patches
            .rows()
            .into_iter()
            .zip(scores.rows_mut())
            .zip(best.rows_mut())
        {
            p.iter_mut().zip(patch.iter()).for_each(|(d, &v)| *d = v);
            let norm = unit_query(&p, &mut q);
            let hits = self.graph.search(&q, self.params.k, self.params.ef_search);
            let mut kth = f32::INFINITY;
            for h in &hits {
                let sim = hit_score(h.distance, norm);
                kth = kth.min(sim);
                self.offer(&mut s, &mut b, h.d_id as u32, sim);
            }
            for (&id, row) in self.orphan_ids.iter().zip(self.orphan_rows.rows()) {
                self.offer(&mut s, &mut b, id, dot(&p, row));
            }
            let bound = if hits.is_empty() { EMPTY_SCORE } else { kth };
            for ((c, v), &r) in s.iter_mut().enumerate().zip(b.iter()) {
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
    /// layout), through a temporary file renamed into place. `hnsw_rs`'s
    /// dump goes through a scratch directory next to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io_err = |context: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io {
                context,
                path: p,
                source,
            }
        };
        let scratch =
            ScratchDir::new(path).map_err(io_err("creating a scratch directory for", path))?;
        let basename = self
            .graph
            .file_dump(&scratch.path, DUMP_BASENAME)
            .map_err(|e| Error::Invalid(format!("dumping the HNSW graph: {e}")))?;
        let graph_path = scratch.path.join(format!("{basename}.hnsw.graph"));
        let data_path = scratch.path.join(format!("{basename}.hnsw.data"));
        let tmp = tmp_path(path);
        let result = self
            .write_cache(&tmp, &graph_path, &data_path)
            .map_err(io_err("writing the HNSW cache", &tmp))
            .and_then(|()| {
                fs::rename(&tmp, path).map_err(io_err("renaming the HNSW cache to", path))
            });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_cache(&self, tmp: &Path, graph_path: &Path, data_path: &Path) -> io::Result<()> {
        let meta = self.meta_bytes();
        let graph_len = fs::metadata(graph_path)?.len();
        let data_len = fs::metadata(data_path)?.len();
        let payload_len = 8 + meta.len() as u64 + 8 + graph_len + 8 + data_len;
        let mut header = header_prefix(&self.fingerprint, &self.params);
        header.extend_from_slice(&payload_len.to_le_bytes());
        let mut hasher = Sha256::new();
        hasher.update(&header);

        let mut out = BufWriter::with_capacity(1 << 20, File::create(tmp)?);
        out.write_all(&header)?;
        let checksum_at = header.len() as u64;
        out.write_all(&[0u8; 32])?;
        let mut put = |out: &mut BufWriter<File>, bytes: &[u8]| -> io::Result<()> {
            hasher.update(bytes);
            out.write_all(bytes)
        };
        put(&mut out, &(meta.len() as u64).to_le_bytes())?;
        put(&mut out, &meta)?;
        for (p, len) in [(graph_path, graph_len), (data_path, data_len)] {
            put(&mut out, &len.to_le_bytes())?;
            let mut f = BufReader::new(File::open(p)?);
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = f.read(&mut buf[..(left.min(1 << 20)) as usize])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "hnsw_rs dump shrank while copying",
                    ));
                }
                put(&mut out, &buf[..n])?;
                left -= n as u64;
            }
        }
        let checksum: [u8; 32] = hasher.finalize().into();
        let mut f = out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(checksum_at))?;
        f.write_all(&checksum)?;
        f.sync_all()
    }

    fn meta_bytes(&self) -> Vec<u8> {
        let mut m = Vec::new();
        let u64le = |m: &mut Vec<u8>, v: u64| m.extend_from_slice(&v.to_le_bytes());
        u64le(&mut m, self.dim as u64);
        u64le(&mut m, self.col_of.len() as u64);
        u64le(&mut m, self.names.len() as u64);
        for n in &self.names {
            u64le(&mut m, n.len() as u64);
            m.extend_from_slice(n.as_bytes());
        }
        u64le(&mut m, self.segments.len() as u64);
        for s in &self.segments {
            u64le(&mut m, s.start as u64);
            u64le(&mut m, s.end as u64);
        }
        u64le(&mut m, self.orphan_ids.len() as u64);
        for &id in &self.orphan_ids {
            m.extend_from_slice(&id.to_le_bytes());
        }
        for v in &self.orphan_rows {
            m.extend_from_slice(&v.to_le_bytes());
        }
        u64le(&mut m, self.stats.build.as_nanos() as u64);
        u64le(&mut m, self.stats.orphan_check.as_nanos() as u64);
        m
    }

    /// Read a graph saved by [`save`](Self::save). `Ok(None)` means
    /// "rebuild": the file is missing, foreign, of another format version or
    /// platform tag, indexes something else than `expected` says, or fails
    /// its checksum or consistency checks. I/O errors other than a missing
    /// file are errors.
    pub fn load(path: &Path, expected: &Fingerprint) -> Result<Option<HnswMatcher>> {
        match Self::try_load(path, expected) {
            Ok(Ok(m)) => Ok(Some(m)),
            Ok(Err(_reason)) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(source) => Err(Error::Io {
                context: "reading the HNSW cache",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// [`load`](Self::load) with the reason for a rejection.
    fn try_load(path: &Path, expected: &Fingerprint) -> io::Result<Result<HnswMatcher, String>> {
        let t = Instant::now();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Err("no cache file".into()))
            }
            Err(e) => return Err(e),
        };
        let file_len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);

        // Header, compared field by field with what this build would write.
        let want = header_prefix(expected, &HnswParams::default());
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Ok(Err("not an HNSW cache file".into()));
        }
        let mut got = magic.to_vec();
        let version = read_u32(&mut r, &mut got)?;
        if version != CACHE_FORMAT_VERSION {
            return Ok(Err(format!("cache format version {version}")));
        }
        let mut tag = [0u8; 2];
        r.read_exact(&mut tag)?;
        got.extend_from_slice(&tag);
        for _ in 0..2 {
            let mut len = [0u8; 1];
            r.read_exact(&mut len)?;
            let mut s = vec![0u8; len[0] as usize];
            r.read_exact(&mut s)?;
            got.push(len[0]);
            got.extend_from_slice(&s);
        }
        let tag_end = got.len();
        if got[..] != want[..tag_end.min(want.len())] || tag_end + 64 != want.len() {
            return Ok(Err("built for another platform or version".into()));
        }
        let mut fp = [0u8; 32];
        r.read_exact(&mut fp)?;
        got.extend_from_slice(&fp);
        if fp != expected.0 {
            return Ok(Err("indexes other prototypes or parameters".into()));
        }
        let mut pb = [0u8; 32];
        r.read_exact(&mut pb)?;
        got.extend_from_slice(&pb);
        let params = match HnswParams::from_le_bytes(&pb) {
            Some(p) if p.validate().is_ok() => p,
            _ => return Ok(Err("bad parameters".into())),
        };
        let payload_len = read_u64(&mut r, &mut got)?;
        let mut checksum = [0u8; 32];
        r.read_exact(&mut checksum)?;
        let payload_start = got.len() as u64 + 32;
        if file_len.checked_sub(payload_start) != Some(payload_len) {
            return Ok(Err("wrong file length".into()));
        }

        // Checksum over the header and the whole payload before anything
        // in the payload is believed.
        let mut hasher = Sha256::new();
        hasher.update(&got);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        if <[u8; 32]>::from(hasher.finalize()) != checksum {
            return Ok(Err("checksum mismatch".into()));
        }

        r.seek(SeekFrom::Start(payload_start))?;
        let mut none = Vec::new();
        let meta_len = read_u64(&mut r, &mut none)?;
        if meta_len > payload_len {
            return Ok(Err("bad meta length".into()));
        }
        let mut meta = vec![0u8; meta_len as usize];
        r.read_exact(&mut meta)?;
        let Some(meta) = Meta::parse(&meta) else {
            return Ok(Err("inconsistent meta".into()));
        };

        let scratch = ScratchDir::new(path)?;
        let mut dumped = 8 + meta_len;
        for ext in ["graph", "data"] {
            let len = read_u64(&mut r, &mut none)?;
            dumped += 8 + len;
            if dumped > payload_len {
                return Ok(Err("bad section length".into()));
            }
            let mut out = BufWriter::new(File::create(
                scratch.path.join(format!("{DUMP_BASENAME}.hnsw.{ext}")),
            )?);
            io::copy(&mut (&mut r).take(len), &mut out)?;
            out.flush()?;
        }
        if dumped != payload_len {
            return Ok(Err("bad section lengths".into()));
        }
        let dir = scratch.path.clone();
        let loaded = std::panic::catch_unwind(move || {
            // The graph borrows from its reader for its whole life: leak the
            // reader (a few hundred bytes) so the graph can be 'static.
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&dir, DUMP_BASENAME)));
            io.load_hnsw::<f32, DistDot>()
        });
        drop(scratch);
        let mut graph = match loaded {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return Ok(Err(format!("hnsw_rs could not read the dump: {e}"))),
            Err(_) => return Ok(Err("hnsw_rs panicked reading the dump".into())),
        };
        if graph.get_nb_point() != meta.rows
            || (meta.rows > 0 && graph.get_point_indexation().get_data_dimension() != meta.dim)
        {
            return Ok(Err("graph does not match its meta".into()));
        }
        graph.set_searching_mode(true);
        Ok(Ok(HnswMatcher {
            names: meta.names,
            dim: meta.dim,
            params,
            segments: meta.segments,
            col_of: meta.col_of,
            graph,
            stats: HnswStats {
                points: meta.rows,
                orphans: meta.orphan_ids.len(),
                build: meta.build,
                orphan_check: meta.orphan_check,
                loaded: Some(t.elapsed()),
            },
            orphan_ids: meta.orphan_ids,
            orphan_rows: meta.orphan_rows,
            fingerprint: *expected,
            threads: 0,
        }))
    }

    /// Mark `rows` as orphans too (tests of the brute-force side list).
    #[cfg(test)]
    fn force_orphans(&mut self, rows: &[u32], vocab: &Vocabulary) {
        for &r in rows {
            if !self.orphan_ids.contains(&r) {
                self.orphan_ids.push(r);
            }
        }
        let idx: Vec<usize> = self.orphan_ids.iter().map(|&i| i as usize).collect();
        self.orphan_rows = vocab.prototypes().select(Axis(0), &idx);
        self.stats.orphans = self.orphan_ids.len();
    }
}

impl Matcher for HnswMatcher {
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        HnswMatcher::score(self, patches)
    }
}

/// For each row of `data` (`dim` wide): whether a search for it (top
/// [`CHECK_K`], beam `ef`) returns it.
fn self_search(
    graph: &Hnsw<'static, f32, DistDot>,
    data: &[f32],
    dim: usize,
    ef: usize,
    threads: usize,
) -> Vec<bool> {
    let rows = data.len() / dim;
    let mut found = vec![false; rows];
    let threads = auto_threads(threads).min(rows.div_ceil(256)).max(1);
    let chunk = rows.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (ci, out) in found.chunks_mut(chunk).enumerate() {
            sc.spawn(move || {
                for (j, f) in out.iter_mut().enumerate() {
                    let i = ci * chunk + j;
                    let hits = graph.search(&data[i * dim..][..dim], CHECK_K, ef);
                    *f = hits.iter().any(|h| h.d_id == i);
                }
            });
        }
    });
    found
}

/// `q = p / |p|` (zero stays zero); returns `|p|`.
fn unit_query(p: &[f32], q: &mut [f32]) -> f32 {
    let norm = p.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    for (d, &v) in q.iter_mut().zip(p) {
        *d = if norm > 0.0 {
            (v as f64 / norm) as f32
        } else {
            0.0
        };
    }
    norm as f32
}

/// A hit's score: its cosine (`1 - DistDot`) times the patch's norm.
#[inline]
fn hit_score(distance: f32, norm: f32) -> f32 {
    (1.0 - distance) * norm
}

#[inline]
fn dot(a: &[f32], b: ArrayView1<'_, f32>) -> f32 {
    match b.as_slice() {
        Some(b) => a.iter().zip(b).map(|(x, y)| x * y).sum(),
        None => a.iter().zip(b.iter()).map(|(x, y)| x * y).sum(),
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
    h.extend_from_slice(&params.to_le_bytes());
    h
}

fn read_u32(r: &mut impl Read, seen: &mut Vec<u8>) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    seen.extend_from_slice(&b);
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read, seen: &mut Vec<u8>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    seen.extend_from_slice(&b);
    Ok(u64::from_le_bytes(b))
}

/// The cache's meta section, parsed and checked.
struct Meta {
    dim: usize,
    rows: usize,
    names: Vec<String>,
    segments: Vec<Range<usize>>,
    col_of: Vec<u16>,
    orphan_ids: Vec<u32>,
    orphan_rows: Array2<f32>,
    build: Duration,
    orphan_check: Duration,
}

impl Meta {
    fn parse(mut b: &[u8]) -> Option<Meta> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Some(h)
        }
        fn u64le(b: &mut &[u8]) -> Option<u64> {
            Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
        }
        fn count(b: &mut &[u8], each: usize) -> Option<usize> {
            let n = usize::try_from(u64le(b)?).ok()?;
            (n.checked_mul(each)? <= b.len()).then_some(n)
        }
        let b = &mut b;
        let dim = usize::try_from(u64le(b)?).ok()?;
        let rows = usize::try_from(u64le(b)?).ok()?;
        let k = count(b, 8)?;
        let mut names = Vec::with_capacity(k);
        for _ in 0..k {
            let n = count(b, 1)?;
            names.push(String::from_utf8(take(b, n)?.to_vec()).ok()?);
        }
        let cols = count(b, 16)?;
        let mut segments = Vec::with_capacity(cols);
        for _ in 0..cols {
            let s = usize::try_from(u64le(b)?).ok()?;
            let e = usize::try_from(u64le(b)?).ok()?;
            segments.push(s..e);
        }
        let n_orph = count(b, 4)?;
        let orphan_ids: Vec<u32> = (0..n_orph)
            .map(|_| Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?)))
            .collect::<Option<_>>()?;
        let vals = n_orph.checked_mul(dim)?;
        let raw = take(b, vals.checked_mul(4)?)?;
        let orphan_rows = Array2::from_shape_vec(
            (n_orph, dim),
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
        .ok()?;
        let build = Duration::from_nanos(u64le(b)?);
        let orphan_check = Duration::from_nanos(u64le(b)?);
        if !b.is_empty()
            || dim == 0
            || cols != names.len() + 1
            || orphan_ids.iter().any(|&i| i as usize >= rows)
            || orphan_rows.iter().any(|v| !v.is_finite())
        {
            return None;
        }
        let col_of = col_of(&segments, rows)?;
        Some(Meta {
            dim,
            rows,
            names,
            segments,
            col_of,
            orphan_ids,
            orphan_rows,
            build,
            orphan_check,
        })
    }
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

/// A fresh directory next to a cache file, removed with its contents on
/// drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(near: &Path) -> io::Result<ScratchDir> {
        loop {
            let path = tmp_path(near);
            match fs::create_dir(&path) {
                Ok(()) => return Ok(ScratchDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
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
            crate::features::grid::l2_normalize(&mut v);
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
        let p = small_params();
        assert_eq!(HnswParams::from_le_bytes(&p.to_le_bytes()), Some(p));
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
        let s = hnsw.score(p).unwrap();
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
        hnsw.force_orphans(&all, &vocab);
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
        hnsw.force_orphans(&[3, 17], &vocab);
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
        changed.set_search_params(96, 40).unwrap();
        assert_eq!(changed.fingerprint(), &fp);
        assert!(changed.set_search_params(0, 40).is_err());
        let path3 = dir.path().join("search.hnsw");
        changed.save(&path3).unwrap();
        let p3 = HnswMatcher::load(&path3, &fp).unwrap().unwrap().params();
        assert_eq!((p3.ef_search, p3.k), (96, 40));

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
            assert!(
                HnswMatcher::try_load(&bad, &fp)
                    .map(|r| r.is_err())
                    .unwrap_or(true),
                "byte {at}"
            );
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
        // Another format version, even with a recomputed checksum.
        let mut b = good.clone();
        b[8] = 99;
        fs::write(&bad, &b).unwrap();
        let why = HnswMatcher::try_load(&bad, &fp).unwrap().unwrap_err();
        assert!(why.contains("version"), "{why}");
        // A checksum failure says so.
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&bad, &b).unwrap();
        let why = HnswMatcher::try_load(&bad, &fp).unwrap().unwrap_err();
        assert_eq!(why, "checksum mismatch");
        // The good file is still accepted.
        assert!(HnswMatcher::load(&path, &fp).unwrap().is_some());
    }

    #[test]
    fn pinned_hnsw_rs_version_matches_the_lock_file() {
        let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
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

    fn time_ms<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
        std::hint::black_box(f());
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(f());
        }
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    }

    /// `cargo test --release --lib -- --ignored --nocapture hnsw_benchmark`
    /// (`OVDIFF_HNSW_BENCH_CLASSES=10,100` to choose the sizes,
    /// `OVDIFF_HNSW_BENCH_PARAMS=m,efc,efs,k` the parameters).
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
                (v.len() == 4).then(|| HnswParams {
                    m: v[0],
                    ef_construction: v[1],
                    ef_search: v[2],
                    k: v[3],
                })
            })
            .unwrap_or_default();
        let efs: Vec<usize> = std::env::var("OVDIFF_HNSW_BENCH_EF")
            .ok()
            .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![params.ef_search]);
        let threads = auto_threads(0);
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
            let reps = if rows < 50_000 { 5 } else { 2 };
            let exact_ms = time_ms(reps, || vocab.score(patches.view()).unwrap());
            let exact = vocab.score(patches.view()).unwrap();
            let le = exact.labels(None);
            eprintln!(
                "{classes} classes, {rows} rows: build {:.1} s (insert {:.1} s, orphan check {:.1} s, \
                 {} orphans), RSS +{rss:.0} MiB; 1024 patches exact: {exact_ms:.0} ms",
                total.as_secs_f64(),
                st.build.as_secs_f64(),
                st.orphan_check.as_secs_f64(),
                st.orphans,
            );
            for &ef in &efs {
                hnsw.set_search_params(ef, params.k).unwrap();
                let hnsw_ms = time_ms(reps, || hnsw.score(patches.view()).unwrap());
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
                    "  ef {ef}, k {}: hnsw {hnsw_ms:.0} ms ({:.2}× exact); label agreement {:.2}% \
                     (near-prototype {:.2}%, midpoints {:.2}%); max winning-score error {err:.1e}",
                    params.k,
                    exact_ms / hnsw_ms,
                    100.0 * (near_ok + mid_ok) as f64 / n as f64,
                    100.0 * near_ok as f64 / (n - mids) as f64,
                    100.0 * mid_ok as f64 / mids as f64,
                );
            }
            hnsw.set_search_params(params.ef_search, params.k).unwrap();
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
