//! The flat HNSW graph: `hnsw_rs`'s graph copied into arrays of row numbers, the rows in one matrix, and the beam search over it (a wide beam on layer 1 seeding layer 0).

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;

use hnsw_rs::anndists::dist::distances::DistDot;
use hnsw_rs::hnsw::Hnsw;

use crate::{Error, Result};

/// Most layers `hnsw_rs` supports.
pub(super) const MAX_LAYERS: usize = 16;
/// Cache lines of a row prefetched before it is scored.
const PREFETCH_LINES: usize = 8;

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
pub(super) fn dot_kernel() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return dot_avx2;
    }
    dot_portable
}

/// A search result: a row and its dot product with the query. Orders by
/// score, then by *lower* row (so the lower row wins ties).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Hit {
    pub(super) sim: f32,
    pub(super) row: u32,
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
pub(super) struct UpperLayer {
    pub(super) ids: Vec<u32>,
    pub(super) off: Vec<u32>,
    pub(super) nb: Vec<u32>,
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
pub(super) struct Graph {
    pub(super) dim: usize,
    /// `rows × dim`, row-major.
    pub(super) rows: Vec<f32>,
    pub(super) l0_off: Vec<u32>,
    pub(super) l0: Vec<u32>,
    /// `upper[i]` is layer `i + 1`.
    pub(super) upper: Vec<UpperLayer>,
    pub(super) entry: u32,
    pub(super) dot: DotFn,
}

/// Per-thread search buffers.
pub(super) struct Scratch {
    visited: Vec<u32>,
    epoch: u32,
    cand: BinaryHeap<Hit>,
    res: BinaryHeap<Reverse<Hit>>,
    seeds: Vec<Hit>,
    pub(super) out: Vec<Hit>,
    fresh: Vec<u32>,
}

impl Scratch {
    pub(super) fn new(rows: usize) -> Scratch {
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
    pub(super) fn num_rows(&self) -> usize {
        self.l0_off.len() - 1
    }

    #[inline]
    pub(super) fn row(&self, r: u32) -> &[f32] {
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
    pub(super) fn sim(&self, q: &[f32], r: u32) -> f32 {
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
    pub(super) fn from_hnsw(h: &Hnsw<'_, f32, DistDot>, n: usize, dim: usize) -> Result<Graph> {
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
    pub(super) fn search(&self, q: &[f32], k: usize, ef: usize, ef_upper: usize, s: &mut Scratch) {
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
