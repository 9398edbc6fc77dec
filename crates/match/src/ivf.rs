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
//! A column without any rows is [`EMPTY_SCORE`], as in the exact engine.

use std::ops::Range;
use std::path::Path;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};

use crate::hnsw::{Fingerprint, HnswParams};
use crate::vocabulary::{
    check_patch_dim, score_by_patch_chunks, Matcher, Scores, Vocabulary, EMPTY_SCORE, NO_PROTO,
};
use crate::{Error, Result};

/// First bytes of IVF lists, cached or in a bank file (format 1).
const IVF_MAGIC: &[u8; 8] = b"OVDBIVF1";

/// The `algorithm` of IVF lists in a bank file's `ann` section.
pub const IVF_ALGORITHM: &str = "ivf-lists-1";

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
    fn hash_into(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        for v in [
            self.probes,
            self.lists,
            self.iterations,
            self.train_per_list,
        ] {
            h.update((v as u64).to_le_bytes());
        }
        h.update(self.seed.to_le_bytes());
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

/// Per row of `a`, the index of its best row of `b` (the first on ties),
/// by blocked products, the rows of `a` split among up to `threads` threads
/// (0: one per core).
fn nearest_rows(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, threads: usize) -> Vec<u32> {
    const BLOCK: usize = 1024;
    if b.nrows() == 0 {
        return vec![0; a.nrows()];
    }
    let threads = ovdiff_core::threads::threads_or_cores(threads);
    let (_, best) = score_by_patch_chunks(a, 1, threads, |a, _, mut out| {
        let mut buf = Array2::<f32>::zeros((BLOCK.min(a.nrows()), b.nrows()));
        for i0 in (0..a.nrows()).step_by(BLOCK) {
            let i1 = (i0 + BLOCK).min(a.nrows());
            let mut sims = buf.slice_mut(s![..i1 - i0, ..]);
            general_mat_mul(1.0, &a.slice(s![i0..i1, ..]), &b.t(), 0.0, &mut sims);
            for (i, row) in sims.rows().into_iter().enumerate() {
                let mut best = (0usize, f32::NEG_INFINITY);
                for (j, &v) in row.iter().enumerate() {
                    if v > best.1 {
                        best = (j, v);
                    }
                }
                out[[i0 + i, 0]] = best.0 as u32;
            }
        }
    });
    best.into_raw_vec_and_offset().0
}

/// A small deterministic generator (splitmix64) for the initialisation.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `k` distinct indices of `0..n`, in increasing order (a partial
/// Fisher–Yates shuffle).
fn sample(rng: &mut SplitMix, n: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// Spherical k-means: `lists` unit centroids of the unit rows `x`.
fn spherical_kmeans(
    x: ArrayView2<'_, f32>,
    lists: usize,
    params: &IvfParams,
    threads: usize,
) -> Array2<f32> {
    let (n, d) = x.dim();
    let mut rng = SplitMix(params.seed);
    let train_idx = sample(&mut rng, n, lists * params.train_per_list);
    let train = x.select(Axis(0), &train_idx);
    let mut centroids = train.select(Axis(0), &sample(&mut rng, train.nrows(), lists));
    for _ in 0..params.iterations {
        let assign = nearest_rows(train.view(), centroids.view(), threads);
        let mut sums = Array2::<f32>::zeros((lists, d));
        let mut counts = vec![0usize; lists];
        for (row, &a) in train.rows().into_iter().zip(&assign) {
            let mut s = sums.row_mut(a as usize);
            s += &row;
            counts[a as usize] += 1;
        }
        for (l, mut c) in centroids.rows_mut().into_iter().enumerate() {
            if counts[l] == 0 {
                // an empty list restarts at a random training row
                c.assign(&train.row(rng.below(train.nrows())));
                continue;
            }
            let s = sums.row(l);
            let norm = s.dot(&s).sqrt();
            if norm > 0.0 {
                c.assign(&s.mapv(|v| v / norm));
            }
        }
    }
    centroids
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

    /// The fingerprint a cache of lists over `vocab` built with `params`
    /// carries: every row, the columns and names (as for HNSW graphs) and
    /// the parameters.
    pub fn fingerprint(vocab: &Vocabulary, params: &IvfParams) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let rows = Fingerprint::new(vocab, &HnswParams::default());
        let mut h = Sha256::new();
        h.update(b"ovdiff-bank ivf lists v1\0");
        h.update(rows.as_bytes());
        params.hash_into(&mut h);
        h.finalize().into()
    }

    /// The lists as bytes, little-endian: magic `OVDBIVF1`, a 32-byte
    /// `key`, `u64` lists, dim, index space and row count; the centroids as
    /// f32; `lists + 1` list offsets and the row ids (each below the index
    /// space) as u32; then the xxh3-64 of all of it. `id_of_row` maps a
    /// vocabulary row to the id written (the identity for the cache).
    fn to_bytes(&self, key: &[u8; 32], id_of_row: &dyn Fn(u32) -> u32, space: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            80 + 4 * (self.centroids.len() + self.offsets.len() + self.ids.len()),
        );
        b.extend_from_slice(IVF_MAGIC);
        b.extend_from_slice(key);
        for v in [self.centroids.nrows(), self.dim, space, self.ids.len()] {
            b.extend_from_slice(&(v as u64).to_le_bytes());
        }
        b.extend(self.centroids.iter().flat_map(|v| v.to_le_bytes()));
        b.extend(self.offsets.iter().flat_map(|&v| (v as u32).to_le_bytes()));
        b.extend(self.ids.iter().flat_map(|&r| id_of_row(r).to_le_bytes()));
        let sum = xxhash_rust::xxh3::xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses [`to_bytes`](Self::to_bytes) output: `(centroids, offsets,
    /// ids)`, checked against `key`, `dim` and `space`, with every id below
    /// `space` and none twice.
    #[allow(clippy::type_complexity)]
    fn from_bytes(
        b: &[u8],
        key: &[u8; 32],
        dim: usize,
        space: usize,
    ) -> std::result::Result<(Array2<f32>, Vec<u32>, Vec<u32>), &'static str> {
        const HEAD: usize = 8 + 32 + 32;
        if b.len() < HEAD + 8 || &b[..8] != IVF_MAGIC {
            return Err("not IVF lists of this version");
        }
        let (body, sum) = b.split_at(b.len() - 8);
        if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
            return Err("checksum mismatch");
        }
        if &b[8..40] != key {
            return Err("lists of other prototypes or parameters");
        }
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let (lists, d, sp, count) = (u64at(40), u64at(48), u64at(56), u64at(64));
        if d != dim as u64 || sp != space as u64 || count > sp || lists > count.max(1) {
            return Err("lists of another shape");
        }
        let (lists, count) = (lists as usize, count as usize);
        if body.len() != HEAD + 4 * (lists * dim + lists + 1 + count) {
            return Err("truncated or padded");
        }
        let u32s = |from: usize, k: usize| -> Vec<u32> {
            b[from..from + 4 * k]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let centroids: Vec<f32> = b[HEAD..HEAD + 4 * lists * dim]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if centroids.iter().any(|v| !v.is_finite()) {
            return Err("non-finite centroids");
        }
        let at = HEAD + 4 * lists * dim;
        let offsets = u32s(at, lists + 1);
        let ids = u32s(at + 4 * (lists + 1), count);
        if offsets[0] != 0
            || offsets[lists] as usize != count
            || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return Err("list offsets out of order");
        }
        let mut seen = vec![false; space];
        for &i in &ids {
            match seen.get_mut(i as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err("row ids out of range or repeated"),
            }
        }
        let centroids = Array2::from_shape_vec((lists, dim), centroids).expect("lists × dim");
        Ok((centroids, offsets, ids))
    }

    /// Write the lists (not the rows, which the vocabulary has) to `path`,
    /// through a temporary file renamed into place, keyed by `fingerprint`
    /// (see [`to_bytes`](Self::to_bytes) for the layout).
    pub fn save(&self, fingerprint: &[u8; 32], path: &Path) -> Result<()> {
        let b = self.to_bytes(fingerprint, &|r| r, self.ids.len());
        let tmp = path.with_extension("tmp");
        let io = |context: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io {
                context,
                path: p,
                source,
            }
        };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&b)?;
            f.sync_all()
        };
        let result = write()
            .map_err(io("writing the IVF cache", &tmp))
            .and_then(|()| {
                std::fs::rename(&tmp, path).map_err(io("renaming the IVF cache to", path))
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Lists saved by [`save`](Self::save) for this `vocab` and `params`.
    /// `Ok(Err(why))` means "rebuild": no file, another fingerprint or
    /// layout, a checksum mismatch, or lists that do not cover every row
    /// exactly once. Other I/O errors are errors.
    pub fn load(
        vocab: &Vocabulary,
        params: IvfParams,
        fingerprint: &[u8; 32],
        path: &Path,
    ) -> Result<std::result::Result<IvfMatcher, &'static str>> {
        let t = std::time::Instant::now();
        let b = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err("no cache file")),
            Err(source) => {
                return Err(Error::Io {
                    context: "reading the IVF cache",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let n = vocab.num_rows();
        let parsed = Self::from_bytes(&b, fingerprint, vocab.dim(), n).and_then(|p| {
            if p.2.len() == n {
                Ok(p)
            } else {
                Err("lists that miss rows")
            }
        });
        Ok(parsed.map(|(c, o, i)| {
            let mut m = Self::assemble(vocab, &vocab.prototypes().view(), params, c, o, i, t);
            m.stats.loaded = true;
            m
        }))
    }

    /// The key of lists kept in a bank file: the parameters only (the file's
    /// checksums stand for the rows, and ids are positions in the file).
    fn file_key(params: &IvfParams) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"ovdiff-bank ivf lists in a bank file v1\0");
        // the rows listed follow the stuff rule at this threshold
        h.update(crate::vocabulary::STUFF_BG_THRESHOLD.to_le_bytes());
        params.hash_into(&mut h);
        h.finalize().into()
    }

    /// Which of a bank file's `space` prototype positions the blob lists
    /// (the rows an `--all-classes` query stacks: background prototypes the
    /// stuff rule drops are not listed); `Err(why)` as for
    /// [`from_file_blob`](Self::from_file_blob).
    pub fn listed_in_file_blob(
        params: &IvfParams,
        blob: &[u8],
        dim: usize,
        space: usize,
    ) -> std::result::Result<Vec<bool>, &'static str> {
        let (_, _, ids) = Self::from_bytes(blob, &Self::file_key(params), dim, space)?;
        let mut listed = vec![false; space];
        for p in ids {
            listed[p as usize] = true;
        }
        Ok(listed)
    }

    /// The lists as a bank file's `ann` blob ([`IVF_ALGORITHM`]): row ids
    /// are positions among the file's `space` prototypes of the encoder
    /// (block order), `position_of_row` giving each vocabulary row's.
    pub fn to_file_blob(&self, position_of_row: &[u32], space: usize) -> Vec<u8> {
        let key = Self::file_key(&self.params);
        self.to_bytes(&key, &|r| position_of_row[r as usize], space)
    }

    /// Lists from a bank file's `ann` blob for `vocab`: `row_at[p]` is the
    /// vocabulary row of the file's prototype at position `p`, if the
    /// vocabulary has it. `Err(why)` when the blob is not usable: damaged,
    /// of other parameters or shape, or missing some of the vocabulary's
    /// rows (then build or load the lists as usual).
    pub fn from_file_blob(
        vocab: &Vocabulary,
        params: IvfParams,
        blob: &[u8],
        row_at: &[Option<u32>],
    ) -> std::result::Result<IvfMatcher, &'static str> {
        let t = std::time::Instant::now();
        let key = Self::file_key(&params);
        let (centroids, offsets, ids) = Self::from_bytes(blob, &key, vocab.dim(), row_at.len())?;
        let mut new_offsets = Vec::with_capacity(offsets.len());
        let mut rows = Vec::with_capacity(vocab.num_rows());
        new_offsets.push(0u32);
        for w in offsets.windows(2) {
            rows.extend(
                ids[w[0] as usize..w[1] as usize]
                    .iter()
                    .filter_map(|&p| row_at[p as usize]),
            );
            new_offsets.push(rows.len() as u32);
        }
        if rows.len() != vocab.num_rows() {
            return Err("lists that miss some of the query's rows");
        }
        let protos = vocab.prototypes();
        let mut m = Self::assemble(
            vocab,
            &protos.view(),
            params,
            centroids,
            new_offsets,
            rows,
            t,
        );
        m.stats.loaded = true;
        m.stats.from_file = true;
        Ok(m)
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

    /// Score `patches` (unit rows) against every column: per column the
    /// best row among the lists each patch probes, at least the column's
    /// mean (a true lower bound). Three stages, each split among threads:
    /// the coarse pass by patches; the fine pass by *lists*, so each list's
    /// rows are read by one thread only (splitting it by patches made every
    /// thread stream all rows), each thread folding into its own score
    /// arrays that are then merged; the lower bounds by patches.
    pub fn score(&self, patches: ArrayView2<'_, f32>) -> Result<Scores> {
        check_patch_dim(&patches, self.dim)?;
        let n = patches.nrows();
        let cols = self.names.len() + 1;
        let threads = ovdiff_core::threads::threads_or_cores(self.threads)
            .min(n.div_ceil(64))
            .max(1);
        let by_list = self.probe(patches, threads);
        let (mut scores, best) = self.fine(patches, &by_list, cols, threads);
        self.raise_to_lower_bounds(patches, &mut scores, threads);
        Ok(Scores {
            scores,
            best_proto: best,
        })
    }

    /// The coarse pass: for each list, the patches (ascending) that probe it.
    fn probe(&self, patches: ArrayView2<'_, f32>, threads: usize) -> Vec<Vec<u32>> {
        let lists = self.centroids.nrows();
        if lists == 0 {
            return Vec::new();
        }
        let probes = self.params.probes.min(lists);
        let chunk = patches.nrows().div_ceil(threads).max(1);
        let coarse_chunk = |first: usize, p: ArrayView2<'_, f32>| -> Vec<Vec<u32>> {
            let mut coarse = Array2::<f32>::zeros((p.nrows(), lists));
            general_mat_mul(1.0, &p, &self.centroids.t(), 0.0, &mut coarse);
            let mut by_list: Vec<Vec<u32>> = vec![Vec::new(); lists];
            let mut order: Vec<u32> = Vec::with_capacity(lists);
            for (i, row) in coarse.rows().into_iter().enumerate() {
                let row = row
                    .as_slice()
                    .expect("invariant: a new array's rows are contiguous");
                order.clear();
                order.extend(0..lists as u32);
                if probes < lists {
                    order.select_nth_unstable_by(probes - 1, |&a, &b| {
                        row[b as usize].total_cmp(&row[a as usize])
                    });
                }
                for &l in &order[..probes] {
                    by_list[l as usize].push((first + i) as u32);
                }
            }
            by_list
        };
        let parts: Vec<Vec<Vec<u32>>> = if threads == 1 {
            vec![coarse_chunk(0, patches)]
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = patches
                    .axis_chunks_iter(Axis(0), chunk)
                    .enumerate()
                    .map(|(k, p)| sc.spawn(move || coarse_chunk(k * chunk, p)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("coarse IVF pass panicked"))
                    .collect()
            })
        };
        let mut parts = parts.into_iter();
        let mut by_list = parts.next().unwrap_or_default();
        for part in parts {
            for (dst, src) in by_list.iter_mut().zip(part) {
                dst.extend(src);
            }
        }
        by_list
    }

    /// The fine pass: lists split into `threads` runs of about equal work
    /// (patches × rows), each run folded into its own `(scores, best)`, the
    /// runs merged (higher score, then lower row id, as within a run).
    fn fine(
        &self,
        patches: ArrayView2<'_, f32>,
        by_list: &[Vec<u32>],
        cols: usize,
        threads: usize,
    ) -> (Array2<f32>, Array2<u32>) {
        let n = patches.nrows();
        let work: Vec<usize> = by_list
            .iter()
            .enumerate()
            .map(|(l, who)| who.len() * (self.offsets[l + 1] - self.offsets[l]))
            .collect();
        let total: usize = work.iter().sum();
        let mut runs: Vec<Range<usize>> = Vec::with_capacity(threads);
        let (mut start, mut acc) = (0, 0usize);
        for (l, w) in work.iter().enumerate() {
            acc += w;
            if runs.len() + 1 < threads && acc * threads >= total * (runs.len() + 1) {
                runs.push(start..l + 1);
                start = l + 1;
            }
        }
        runs.push(start..by_list.len());
        let fold = |run: Range<usize>| {
            let mut scores = Array2::from_elem((n, cols), f32::NEG_INFINITY);
            let mut best = Array2::from_elem((n, cols), NO_PROTO);
            self.fold_lists(patches, by_list, run, &mut scores, &mut best);
            (scores, best)
        };
        let mut results: Vec<(Array2<f32>, Array2<u32>)> = if runs.len() == 1 {
            vec![fold(runs[0].clone())]
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = runs
                    .iter()
                    .cloned()
                    .map(|run| sc.spawn(move || fold(run)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("fine IVF pass panicked"))
                    .collect()
            })
        };
        let (mut scores, mut best) = results.remove(0);
        for (s2, b2) in results {
            for (((v, id), &v2), &id2) in scores.iter_mut().zip(best.iter_mut()).zip(&s2).zip(&b2) {
                if v2 > *v || (v2 == *v && id2 < *id) {
                    *v = v2;
                    *id = id2;
                }
            }
        }
        (scores, best)
    }

    /// Fold the lists of `run` into `scores` / `best`: per list, the
    /// patches that probe it times its rows, one matrix product.
    fn fold_lists(
        &self,
        patches: ArrayView2<'_, f32>,
        by_list: &[Vec<u32>],
        run: Range<usize>,
        scores: &mut Array2<f32>,
        best: &mut Array2<u32>,
    ) {
        let mut gathered = Array2::<f32>::zeros((0, self.dim));
        let mut sims = Vec::new();
        for l in run {
            let who = &by_list[l];
            let (r0, r1) = (self.offsets[l], self.offsets[l + 1]);
            if who.is_empty() || r0 == r1 {
                continue;
            }
            let m = who.len();
            if gathered.nrows() < m {
                gathered = Array2::zeros((m, self.dim));
            }
            for (mut dst, &i) in gathered.rows_mut().into_iter().zip(who) {
                dst.assign(&patches.row(i as usize));
            }
            sims.resize(m * (r1 - r0), 0.0);
            let mut sv = ArrayViewMut2::from_shape((m, r1 - r0), &mut sims[..])
                .expect("invariant: m × len values");
            general_mat_mul(
                1.0,
                &gathered.slice(s![..m, ..]),
                &self.rows.slice(s![r0..r1, ..]).t(),
                0.0,
                &mut sv,
            );
            let (cols, ids) = (&self.cols[r0..r1], &self.ids[r0..r1]);
            for (row, &i) in sims.chunks_exact(r1 - r0).zip(who) {
                let i = i as usize;
                let mut s_row = scores.row_mut(i);
                let mut b_row = best.row_mut(i);
                let sc = s_row
                    .as_slice_mut()
                    .expect("invariant: a new array's rows are contiguous");
                let bs = b_row
                    .as_slice_mut()
                    .expect("invariant: a new array's rows are contiguous");
                for ((&v, &c), &id) in row.iter().zip(cols).zip(ids) {
                    let c = c as usize;
                    if v > sc[c] || (v == sc[c] && id < bs[c]) {
                        sc[c] = v;
                        bs[c] = id;
                    }
                }
            }
        }
    }

    /// Every column at least its mean's score (and [`EMPTY_SCORE`] for a
    /// column without rows), split among threads by patches.
    fn raise_to_lower_bounds(
        &self,
        patches: ArrayView2<'_, f32>,
        scores: &mut Array2<f32>,
        threads: usize,
    ) {
        let chunk = patches.nrows().div_ceil(threads).max(1);
        let raise = |p: ArrayView2<'_, f32>, mut s: ArrayViewMut2<'_, f32>| {
            let mut lower = Array2::<f32>::zeros((p.nrows(), self.means.nrows()));
            general_mat_mul(1.0, &p, &self.means.t(), 0.0, &mut lower);
            for (mut s_row, l_row) in s.rows_mut().into_iter().zip(lower.rows()) {
                for ((v, &low), &empty) in s_row.iter_mut().zip(l_row).zip(&self.empty_col) {
                    *v = if empty { EMPTY_SCORE } else { v.max(low) };
                }
            }
        };
        if threads == 1 {
            raise(patches, scores.view_mut());
        } else {
            std::thread::scope(|sc| {
                for (p, s) in patches
                    .axis_chunks_iter(Axis(0), chunk)
                    .zip(scores.axis_chunks_iter_mut(Axis(0), chunk))
                {
                    sc.spawn(move || raise(p, s));
                }
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{random_patches, Rng};
    use crate::vocabulary::Candidate;

    /// `classes` classes of `per` foreground rows clustered around a centre
    /// (and `per / 2` random backgrounds for the non-stuff ones).
    fn clustered(rng: &mut Rng, classes: usize, per: usize, d: usize) -> Vec<Candidate> {
        (0..classes)
            .map(|c| {
                let centre = rng.unit(d);
                let fg: Vec<f32> = (0..per)
                    .flat_map(|_| rng.noisy(&centre, 0.8 / (d as f64).sqrt()))
                    .collect();
                let stuff = c % 5 == 0;
                let nb = if stuff { 0 } else { per / 2 };
                let bg: Vec<f32> = (0..nb).flat_map(|_| rng.unit(d)).collect();
                Candidate::new(
                    format!("class {c}"),
                    stuff,
                    Array2::from_shape_vec((per, d), fg).unwrap(),
                    Array2::from_shape_vec((nb, d), bg).unwrap(),
                )
            })
            .collect()
    }

    fn agreement(exact: &Scores, approx: &Scores) -> f64 {
        let (a, b) = (exact.labels(None), approx.labels(None));
        a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
    }

    /// Patches of several kinds over `vocab`'s rows: noisy copies of rows
    /// (noise norm σ), midpoints of two rows, random directions.
    fn patch_kinds(rng: &mut Rng, vocab: &Vocabulary, n: usize) -> Vec<(String, Array2<f32>)> {
        let p = vocab.prototypes().to_owned();
        let d = p.ncols();
        let mut kinds = Vec::new();
        for sigma in [0.3, 0.6, 1.0] {
            let rows: Vec<f32> = (0..n)
                .flat_map(|_| {
                    let r = p.row(rng.range(0, p.nrows())).to_vec();
                    rng.noisy(&r, sigma / (d as f64).sqrt())
                })
                .collect();
            let q = Array2::from_shape_vec((n, d), rows).unwrap();
            kinds.push((format!("near a row, noise σ {sigma}"), q));
        }
        let rows: Vec<f32> = (0..n)
            .flat_map(|_| {
                let a = p.row(rng.range(0, p.nrows())).to_owned();
                let b = p.row(rng.range(0, p.nrows())).to_owned();
                rng.noisy(&(&a + &b).to_vec(), 0.3 / (d as f64).sqrt())
            })
            .collect();
        let q = Array2::from_shape_vec((n, d), rows).unwrap();
        kinds.push(("midpoint of two rows".into(), q));
        let rows: Vec<f32> = (0..n).flat_map(|_| rng.unit(d)).collect();
        let q = Array2::from_shape_vec((n, d), rows).unwrap();
        kinds.push(("random direction".into(), q));
        kinds
    }

    #[test]
    fn labels_agree_with_the_exact_engine() {
        let mut rng = Rng::new(5);
        let vocab = Vocabulary::new(clustered(&mut rng, 300, 60, 64)).unwrap();
        let ivf = IvfMatcher::from_vocabulary(&vocab, IvfParams::default()).unwrap();
        let st = ivf.stats();
        assert_eq!(st.rows, vocab.num_rows());
        assert!(st.lists > 1 && st.lists < st.rows);
        // the least agreement asserted, per kind of patch
        let floors = [0.995, 0.995, 0.95, 0.97, 0.8];
        for ((name, q), floor) in patch_kinds(&mut rng, &vocab, 1000).into_iter().zip(floors) {
            let exact = vocab.score(q.view()).unwrap();
            let approx = ivf.score(q.view()).unwrap();
            let agree = agreement(&exact, &approx);
            eprintln!("IVF, {name}: {:.2}% of labels agree", 100.0 * agree);
            assert!(agree >= floor, "{name}: {agree}");
            // Scores are lower bounds, at least the best row seen.
            for ((i, c), &r) in approx.best_proto.indexed_iter() {
                assert!(approx.scores[[i, c]] <= exact.scores[[i, c]] + 1e-5);
                if r != NO_PROTO {
                    let row = vocab.prototypes().row(r as usize).to_owned();
                    assert!(approx.scores[[i, c]] >= q.row(i).dot(&row) - 1e-5);
                    assert!(vocab.segment(c).contains(&(r as usize)));
                }
            }
        }
        // Any number of threads gives the same answer (the fine pass splits
        // lists among threads and merges their folds).
        let q = patch_kinds(&mut rng, &vocab, 400).remove(1).1;
        let one = ivf.clone().with_threads(1).score(q.view()).unwrap();
        for t in [2, 3, 5] {
            assert_eq!(
                one,
                ivf.clone().with_threads(t).score(q.view()).unwrap(),
                "{t} threads"
            );
        }
    }

    /// IVF against HNSW by kind of patch (`cargo test --release --lib
    /// ivf::tests::engines_by_kind_of_patch -- --ignored --nocapture`).
    #[test]
    #[ignore = "diagnostic; run in release"]
    fn engines_by_kind_of_patch() {
        let mut rng = Rng::new(5);
        let vocab = Vocabulary::new(clustered(&mut rng, 300, 60, 64)).unwrap();
        let kinds = patch_kinds(&mut rng, &vocab, 1000);
        let mut runs: Vec<(String, Box<dyn Matcher>)> = Vec::new();
        for probes in [48, 96] {
            let p = IvfParams {
                probes,
                ..IvfParams::default()
            };
            let m = IvfMatcher::from_vocabulary(&vocab, p).unwrap();
            runs.push((format!("IVF, {probes} probes"), Box::new(m)));
        }
        let hnsw = crate::HnswMatcher::from_vocabulary(&vocab, Default::default()).unwrap();
        runs.push(("HNSW".into(), Box::new(hnsw)));
        for (engine, m) in &runs {
            for (name, q) in &kinds {
                let a = agreement(&vocab.score(q.view()).unwrap(), &m.score(q.view()).unwrap());
                eprintln!("{engine}, {name}: {:.2}%", 100.0 * a);
            }
        }
    }

    #[test]
    fn probing_every_list_is_exact() {
        let mut rng = Rng::new(6);
        let cands = clustered(&mut rng, 12, 20, 32);
        let patches = random_patches(&mut rng, &cands, 300);
        let vocab = Vocabulary::new(cands).unwrap();
        let params = IvfParams {
            probes: 1000,
            lists: 16,
            ..IvfParams::default()
        };
        let ivf = IvfMatcher::from_vocabulary(&vocab, params).unwrap();
        let exact = vocab.score(patches.view()).unwrap();
        let approx = ivf.score(patches.view()).unwrap();
        assert_eq!(approx.best_proto, exact.best_proto);
        for (a, b) in approx.scores.iter().zip(exact.scores.iter()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn lists_are_cached_and_never_trusted_blindly() {
        let mut rng = Rng::new(8);
        let cands = clustered(&mut rng, 40, 30, 32);
        let patches = random_patches(&mut rng, &cands, 200);
        let vocab = Vocabulary::new(cands).unwrap();
        let params = IvfParams::default();
        let built = IvfMatcher::from_vocabulary(&vocab, params).unwrap();
        let fp = IvfMatcher::fingerprint(&vocab, &params);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lists");
        assert_eq!(
            IvfMatcher::load(&vocab, params, &fp, &path).unwrap().err(),
            Some("no cache file")
        );
        built.save(&fp, &path).unwrap();
        let back = IvfMatcher::load(&vocab, params, &fp, &path)
            .unwrap()
            .unwrap();
        assert!(back.stats().loaded && !built.stats().loaded);
        assert_eq!(back.ids, built.ids);
        assert_eq!(back.centroids, built.centroids);
        assert_eq!(
            back.score(patches.view()).unwrap(),
            built.score(patches.view()).unwrap()
        );
        // other parameters: another fingerprint
        let other = IvfParams {
            probes: 7,
            ..params
        };
        let fp2 = IvfMatcher::fingerprint(&vocab, &other);
        assert_ne!(fp, fp2);
        assert!(IvfMatcher::load(&vocab, other, &fp2, &path)
            .unwrap()
            .is_err());
        // every damaged byte, and truncation, is refused
        let good = std::fs::read(&path).unwrap();
        for i in (0..good.len()).step_by(97) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                IvfMatcher::load(&vocab, params, &fp, &path)
                    .unwrap()
                    .is_err(),
                "byte {i}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 9]).unwrap();
        assert!(IvfMatcher::load(&vocab, params, &fp, &path)
            .unwrap()
            .is_err());
        // ids that are not a permutation, with a valid checksum
        let mut bad = good[..good.len() - 8].to_vec();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&0u32.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&bad);
        bad.extend_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(
            IvfMatcher::load(&vocab, params, &fp, &path).unwrap().err(),
            Some("row ids out of range or repeated")
        );
    }

    #[test]
    fn lists_in_a_bank_file_map_positions_to_rows() {
        let mut rng = Rng::new(9);
        let cands = clustered(&mut rng, 30, 20, 16);
        let patches = random_patches(&mut rng, &cands, 200);
        let vocab = Vocabulary::new(cands).unwrap();
        let params = IvfParams::default();
        let built = IvfMatcher::from_vocabulary(&vocab, params).unwrap();
        // positions: the rows reversed, in a space with 5 extra positions
        let n = vocab.num_rows();
        let space = n + 5;
        let position: Vec<u32> = (0..n as u32).map(|r| (n as u32 - 1 - r) + 5).collect();
        let blob = built.to_file_blob(&position, space);
        let mut row_at = vec![None; space];
        for (r, &p) in position.iter().enumerate() {
            row_at[p as usize] = Some(r as u32);
        }
        let back = IvfMatcher::from_file_blob(&vocab, params, &blob, &row_at).unwrap();
        assert!(back.stats().from_file && back.stats().loaded);
        assert_eq!(
            back.score(patches.view()).unwrap(),
            built.score(patches.view()).unwrap()
        );
        // a vocabulary row missing from the mapping: not usable
        let mut short = row_at.clone();
        short[7] = None;
        assert!(IvfMatcher::from_file_blob(&vocab, params, &blob, &short).is_err());
        // other parameters, another space, damaged bytes: not usable
        let other = IvfParams { seed: 1, ..params };
        assert!(IvfMatcher::from_file_blob(&vocab, other, &blob, &row_at).is_err());
        assert!(IvfMatcher::from_file_blob(&vocab, params, &blob, &row_at[1..]).is_err());
        for i in (0..blob.len()).step_by(41) {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(IvfMatcher::from_file_blob(&vocab, params, &bad, &row_at).is_err());
        }
    }

    /// Lists over four exact unit rows (one background, two `cat`, one
    /// `dog`) made by hand, so that their bytes are the same on every run.
    fn pinned_lists() -> (Vocabulary, IvfMatcher) {
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
        let m = IvfMatcher::assemble(
            &vocab,
            &vocab.prototypes().view(),
            IvfParams::default(),
            ndarray::array![[0.0, 1.0], [0.6, -0.8]],
            vec![0, 1, 4],
            vec![2, 0, 1, 3],
            std::time::Instant::now(),
        );
        (vocab, m)
    }

    /// The lists' bytes in a cache file and in a bank file's `ann` blob,
    /// field by field: formats, so a change here breaks every saved cache
    /// and every `.ovbank` file written with `--ann`.
    #[test]
    fn cache_and_blob_bytes_are_pinned() {
        let (vocab, m) = pinned_lists();
        let hex = |parts: &[&str]| hex::decode(parts.concat()).unwrap();
        let fp = IvfMatcher::fingerprint(&vocab, &m.params());
        let cache = hex(&[
            "4f56444249564631", // magic "OVDBIVF1"
            "d7342c491663e4a8f560025a1bd7d2def9737ff77ef7df75c1df64489121b38c", // key
            "0200000000000000", // 2 lists
            "0200000000000000", // dim 2
            "0400000000000000", // index space 4
            "0400000000000000", // 4 rows
            "000000000000803f9a99193fcdcc4cbf", // centroids
            "000000000100000004000000", // list offsets
            "02000000000000000100000003000000", // row ids
            "3ab99e67caa7d4a8", // xxh3-64
        ]);
        assert_eq!(fp[..], cache[8..40]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pinned.lists");
        m.save(&fp, &path).unwrap();
        assert_eq!(
            hex::encode(std::fs::read(&path).unwrap()),
            hex::encode(&cache)
        );
        let back = IvfMatcher::load(&vocab, m.params(), &fp, &path)
            .unwrap()
            .unwrap();
        assert_eq!(
            (back.offsets.clone(), back.ids.clone()),
            (m.offsets.clone(), m.ids.clone())
        );

        let blob = hex(&[
            "4f56444249564631", // magic "OVDBIVF1"
            "64a8af503fec2d126d33461b087dd9e6b7a9f0c96ed54e1e10e7f0f9e538a1fb", // key
            "0200000000000000", // 2 lists
            "0200000000000000", // dim 2
            "0900000000000000", // index space 9
            "0400000000000000", // 4 rows
            "000000000000803f9a99193fcdcc4cbf", // centroids
            "000000000100000004000000", // list offsets
            "06000000080000000500000007000000", // positions in the file
            "0282f0a8246e1c0a", // xxh3-64
        ]);
        assert_eq!(
            hex::encode(m.to_file_blob(&[8, 5, 6, 7], 9)),
            hex::encode(&blob)
        );
        let mut row_at = vec![None; 9];
        for (r, p) in [8, 5, 6, 7].into_iter().enumerate() {
            row_at[p] = Some(r as u32);
        }
        let back = IvfMatcher::from_file_blob(&vocab, m.params(), &blob, &row_at).unwrap();
        assert_eq!(
            (back.offsets.clone(), back.ids.clone()),
            (m.offsets.clone(), m.ids.clone())
        );
        let listed = IvfMatcher::listed_in_file_blob(&m.params(), &blob, 2, 9).unwrap();
        assert_eq!(
            listed,
            [false, false, false, false, false, true, true, true, true]
        );
    }

    /// The k-means initialisation draws the same rows for a seed: the lists
    /// of existing caches and bank files were clustered with them.
    #[test]
    fn initial_samples_are_pinned() {
        let mut rng = SplitMix(42);
        assert_eq!(sample(&mut rng, 100, 6), [2, 9, 13, 27, 83, 86]);
        assert_eq!(sample(&mut rng, 50, 5), [7, 25, 27, 28, 39]);
    }

    #[test]
    fn bad_input_is_refused() {
        let mut rng = Rng::new(7);
        let vocab = Vocabulary::new(clustered(&mut rng, 3, 4, 8)).unwrap();
        let zero = IvfParams {
            probes: 0,
            ..IvfParams::default()
        };
        assert!(IvfMatcher::from_vocabulary(&vocab, zero).is_err());
        let ivf = IvfMatcher::from_vocabulary(&vocab, IvfParams::default()).unwrap();
        assert!(ivf.score(Array2::<f32>::zeros((2, 7)).view()).is_err());
        let empty = ivf.score(Array2::<f32>::zeros((0, 8)).view()).unwrap();
        assert_eq!(empty.scores.nrows(), 0);
    }
}
