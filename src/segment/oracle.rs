//! A slow, plain f64 reference of the matching and fusion rules (test-only), and the parity tests that hold the engine to it.
//!
//! Everything here is written as directly as possible: per patch, the cosine
//! to every prototype; per class, the maximum; the background, the maximum
//! over the thing classes' background prototypes that are not within 0.85
//! of a stuff class's foreground; per pixel, the textbook four-tap bilinear
//! formula summed over the covering windows. No blocking, no threads, no
//! separable passes.

use ndarray::Array2;

use super::engine::Candidate;
use super::rows::RowSet;
use super::window::Window;

/// A small deterministic generator (SplitMix64) for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A random unit vector.
    pub(crate) fn unit(&mut self, d: usize) -> Vec<f32> {
        let v: Vec<f64> = (0..d).map(|_| self.normal()).collect();
        to_f32(&unit64(&v))
    }

    /// A unit vector whose cosine to the unit vector `s` is exactly `a`.
    pub(crate) fn at_cosine(&mut self, s: &[f32], a: f64) -> Vec<f32> {
        let s = unit64(&s.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let mut u: Vec<f64> = (0..s.len()).map(|_| self.normal()).collect();
        let along = dot(&u, &s);
        u.iter_mut().zip(&s).for_each(|(x, si)| *x -= along * si);
        let u = unit64(&u);
        let b = (1.0 - a * a).sqrt();
        to_f32(
            &s.iter()
                .zip(&u)
                .map(|(si, ui)| a * si + b * ui)
                .collect::<Vec<_>>(),
        )
    }

    /// `v` plus Gaussian noise of size `sigma` per dimension, normalised.
    pub(crate) fn noisy(&mut self, v: &[f32], sigma: f64) -> Vec<f32> {
        let w: Vec<f64> = v
            .iter()
            .map(|&x| x as f64 + sigma * self.normal())
            .collect();
        to_f32(&unit64(&w))
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit64(v: &[f64]) -> Vec<f64> {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

fn rows64(m: &Array2<f32>) -> Vec<Vec<f64>> {
    m.rows()
        .into_iter()
        .map(|r| unit64(&r.iter().map(|&x| x as f64).collect::<Vec<_>>()))
        .collect()
}

fn stack(rows: &[Vec<f32>], d: usize) -> Array2<f32> {
    Array2::from_shape_vec((rows.len(), d), rows.concat()).unwrap()
}

/// The prototypes the oracle matches against, after the stuff rule.
pub(crate) struct OracleBank {
    /// Kept background prototypes: (owning label, id, unit vector).
    bg: Vec<(usize, u32, Vec<f64>)>,
    /// Per class: (id, unit vector) of its foreground prototypes.
    fg: Vec<Vec<(u32, Vec<f64>)>>,
    /// How many background prototypes the stuff rule dropped.
    pub(crate) dropped: usize,
}

/// Apply the rules to `cands` in f64.
pub(crate) fn oracle_bank(cands: &[Candidate], threshold: f64) -> OracleBank {
    let fg: Vec<Vec<(u32, Vec<f64>)>> = cands
        .iter()
        .map(|c| {
            c.fg_ids
                .iter()
                .copied()
                .zip(rows64(&c.fg.to_array()))
                .collect()
        })
        .collect();
    let stuff_fg: Vec<&Vec<f64>> = cands
        .iter()
        .zip(&fg)
        .filter(|(c, _)| c.stuff)
        .flat_map(|(_, f)| f.iter().map(|(_, v)| v))
        .collect();
    let mut bg = Vec::new();
    let mut dropped = 0;
    for (i, c) in cands.iter().enumerate() {
        if c.stuff {
            continue;
        }
        for (id, v) in c.bg_ids.iter().zip(rows64(&c.bg.to_array())) {
            if stuff_fg.iter().any(|s| dot(s, &v) > threshold) {
                dropped += 1;
            } else {
                bg.push((i + 1, *id, v));
            }
        }
    }
    OracleBank { bg, fg, dropped }
}

/// One patch's scores: per column the best cosine (-1 for an empty column)
/// and the (owning label, id) of the prototype that gave it.
pub(crate) fn oracle_score(
    bank: &OracleBank,
    patch: &[f32],
) -> (Vec<f64>, Vec<Option<(usize, u32)>>) {
    let p: Vec<f64> = patch.iter().map(|&x| x as f64).collect();
    let mut scores = vec![-1.0];
    let mut winners = vec![None];
    for (label, id, v) in &bank.bg {
        let s = dot(&p, v);
        if winners[0].is_none() || s > scores[0] {
            scores[0] = s;
            winners[0] = Some((*label, *id));
        }
    }
    for (k, protos) in bank.fg.iter().enumerate() {
        let mut best = f64::NEG_INFINITY;
        let mut who = None;
        for (id, v) in protos {
            let s = dot(&p, v);
            if s > best {
                best = s;
                who = Some((k + 1, *id));
            }
        }
        scores.push(best);
        winners.push(who);
    }
    (scores, winners)
}

/// Argmax, ties to the lowest index; with a floor, values not above it
/// count as 0.
pub(crate) fn oracle_argmax(v: &[f64], floor: Option<f64>) -> usize {
    let eff = |x: f64| match floor {
        Some(t) if x <= t => 0.0,
        _ => x,
    };
    let mut best = 0;
    for k in 1..v.len() {
        if eff(v[k]) > eff(v[best]) {
            best = k;
        }
    }
    best
}

/// One window for [`oracle_fuse`]: its rectangle, grid size and per-patch
/// scores (row-major patches).
pub(crate) struct OracleWindow {
    pub(crate) win: Window,
    pub(crate) gh: usize,
    pub(crate) gw: usize,
    pub(crate) scores: Vec<Vec<f64>>,
}

/// The averaged scores `[y][x][k]` of a `w`×`h` image: each window
/// upsampled with the four-tap bilinear formula (`align_corners=False`),
/// clamped to [-1, 1], summed, divided by the covering count (at least 1).
pub(crate) fn oracle_fuse(
    w: usize,
    h: usize,
    cols: usize,
    windows: &[OracleWindow],
) -> Vec<Vec<Vec<f64>>> {
    let mut sum = vec![vec![vec![0.0; cols]; w]; h];
    let mut count = vec![vec![0usize; w]; h];
    let src = |d: usize, inp: usize, out: usize| -> (usize, usize, f64) {
        let s = ((d as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0);
        let i0 = s.floor() as usize;
        let i0 = i0.min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        (i0, i1, s - i0 as f64)
    };
    for ow in windows {
        let (wx, wy, ww, wh) = (
            ow.win.x as usize,
            ow.win.y as usize,
            ow.win.w as usize,
            ow.win.h as usize,
        );
        for dy in 0..wh {
            let (y0, y1, ly) = src(dy, ow.gh, wh);
            for dx in 0..ww {
                let (x0, x1, lx) = src(dx, ow.gw, ww);
                let at = |y: usize, x: usize, k: usize| ow.scores[y * ow.gw + x][k];
                for (k, slot) in sum[wy + dy][wx + dx].iter_mut().enumerate() {
                    let v = (1.0 - ly) * ((1.0 - lx) * at(y0, x0, k) + lx * at(y0, x1, k))
                        + ly * ((1.0 - lx) * at(y1, x0, k) + lx * at(y1, x1, k));
                    *slot += v.clamp(-1.0, 1.0);
                }
                count[wy + dy][wx + dx] += 1;
            }
        }
    }
    for y in 0..h {
        for x in 0..w {
            let n = count[y][x].max(1) as f64;
            sum[y][x].iter_mut().for_each(|v| *v /= n);
        }
    }
    sum
}

/// A random bank of `k` classes of dimension `d`: every third class is
/// stuff; thing classes get random background prototypes plus some at
/// cosines 0.95, 0.9 (dropped by the 0.85 rule), 0.8 and 0.7 (kept) to a
/// stuff class's foreground prototype; stuff classes get background
/// prototypes too (which must be ignored).
pub(crate) fn random_bank(
    rng: &mut Rng,
    k: usize,
    d: usize,
    fg: (usize, usize),
    bg: (usize, usize),
) -> Vec<Candidate> {
    let mut cands: Vec<Candidate> = (0..k)
        .map(|i| {
            let nf = rng.range(fg.0, fg.1);
            let nb = rng.range(bg.0, bg.1);
            let f: Vec<Vec<f32>> = (0..nf).map(|_| rng.unit(d)).collect();
            let b: Vec<Vec<f32>> = (0..nb).map(|_| rng.unit(d)).collect();
            let mut c = Candidate::new(format!("class{i}"), i % 3 == 2, stack(&f, d), stack(&b, d));
            // ids that are not row numbers, to catch mix-ups
            c.fg_ids = (0..nf as u32).map(|j| 1000 + 2 * j).collect();
            c.bg_ids = (0..nb as u32).map(|j| 5000 + 3 * j).collect();
            c
        })
        .collect();
    let stuff_fg: Vec<Vec<f32>> = cands
        .iter()
        .filter(|c| c.stuff)
        .flat_map(|c| {
            c.fg.to_array()
                .rows()
                .into_iter()
                .map(|r| r.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    if stuff_fg.is_empty() {
        return cands;
    }
    for c in cands.iter_mut().filter(|c| !c.stuff) {
        let mut rows: Vec<Vec<f32>> =
            c.bg.to_array()
                .rows()
                .into_iter()
                .map(|r| r.to_vec())
                .collect();
        for a in [0.95, 0.9, 0.8, 0.7] {
            let s = &stuff_fg[rng.range(0, stuff_fg.len())];
            rows.push(rng.at_cosine(s, a));
        }
        let next = c.bg_ids.last().map_or(0, |l| l + 1);
        c.bg_ids.extend(next..next + 4);
        c.bg = RowSet::F32(stack(&rows, d));
    }
    cands
}

/// `n` random patch features: a third random directions, the rest noisy
/// copies of random prototypes of `cands` (any side, dropped ones too).
pub(crate) fn random_patches(rng: &mut Rng, cands: &[Candidate], n: usize) -> Array2<f32> {
    let d = cands[0].fg.dim();
    let all: Vec<Vec<f32>> = cands
        .iter()
        .flat_map(|c| {
            let (fg, bg) = (c.fg.to_array(), c.bg.to_array());
            fg.rows()
                .into_iter()
                .chain(bg.rows())
                .map(|r| r.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|_| {
            if rng.uniform() < 0.33 {
                rng.unit(d)
            } else {
                let p = &all[rng.range(0, all.len())];
                let sigma = (0.3 + rng.uniform()) / (d as f64).sqrt();
                rng.noisy(p, sigma)
            }
        })
        .collect();
    stack(&rows, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::engine::{Accumulator, Vocabulary, NO_PROTO, STUFF_BG_THRESHOLD};
    use crate::segment::window::layout;

    #[test]
    fn engine_scores_agree_with_the_oracle() {
        // (classes, dim, fg per class, bg per class, patches); the last bank
        // has over 4096 rows, so prototype blocks split classes.
        let cases = [
            (3, 16, (1, 6), (0, 4), 300),
            (10, 384, (20, 140), (10, 60), 700),
            (12, 64, (1, 30), (0, 30), 500),
            (40, 32, (100, 150), (5, 20), 600),
            (2, 8, (1, 3), (0, 1), 300),
        ];
        let (mut total, mut agree, mut agree_floor, mut proto_agree, mut proto_total) =
            (0, 0, 0, 0, 0);
        let mut max_diff = 0.0f64;
        for (seed, &(k, d, fg, bg, n)) in cases.iter().enumerate() {
            let mut rng = Rng::new(seed as u64);
            let cands = random_bank(&mut rng, k, d, fg, bg);
            let oracle = oracle_bank(&cands, STUFF_BG_THRESHOLD as f64);
            let vocab = Vocabulary::new(cands.clone()).unwrap();
            assert_eq!(
                vocab.dropped_background().len(),
                oracle.dropped,
                "case {seed}"
            );
            if k > 3 {
                assert!(
                    oracle.dropped > 0,
                    "case {seed}: the stuff rule never fired"
                );
            }
            let patches = random_patches(&mut rng, &cands, n);
            let got = vocab.score(patches.view()).unwrap();
            // one thread gives exactly the same answer as several
            let single = vocab.clone().with_threads(1).score(patches.view()).unwrap();
            assert_eq!(got, single, "case {seed}");
            let labels = got.labels(None);
            let labels_floor = got.labels(Some(0.0));
            for (i, row) in patches.rows().into_iter().enumerate() {
                let (want, who) = oracle_score(&oracle, row.as_slice().unwrap());
                total += 1;
                agree += (labels[i] as usize == oracle_argmax(&want, None)) as usize;
                agree_floor +=
                    (labels_floor[i] as usize == oracle_argmax(&want, Some(0.0))) as usize;
                for c in 0..=k {
                    max_diff = max_diff.max((got.scores[[i, c]] as f64 - want[c]).abs());
                    let row = got.best_proto[[i, c]];
                    let mine = vocab.proto_ref(row).map(|r| (r.class as usize, r.id));
                    assert_eq!(row == NO_PROTO, who[c].is_none());
                    proto_total += 1;
                    proto_agree += (mine == who[c]) as usize;
                }
            }
        }
        eprintln!("labels {agree}/{total}, floored {agree_floor}/{total}, protos {proto_agree}/{proto_total}, max |Δscore| {max_diff:e}");
        assert!(max_diff < 1e-5, "max score difference {max_diff}");
        assert!(agree as f64 >= 0.999 * total as f64);
        assert!(agree_floor as f64 >= 0.999 * total as f64);
        assert!(proto_agree as f64 >= 0.999 * proto_total as f64);
    }

    #[test]
    fn fused_label_map_agrees_with_the_oracle() {
        let mut rng = Rng::new(77);
        let (w, h) = (61usize, 47usize);
        // two "encoders" with different dimensions and the same classes
        let bank_a = random_bank(&mut rng, 6, 24, (2, 12), (1, 8));
        let mut bank_b = random_bank(&mut rng, 6, 40, (2, 12), (1, 8));
        for (a, b) in bank_a.iter().zip(bank_b.iter_mut()) {
            b.stuff = a.stuff;
        }
        let wins = layout(w as u32, h as u32, &[32, 24], 16, true);
        assert!(wins.len() > 4);
        let mut acc = Accumulator::new(w as u32, h as u32, 7);
        let mut oracle_windows = Vec::new();
        for (source, bank) in [&bank_a, &bank_b].into_iter().enumerate() {
            let vocab = Vocabulary::new(bank.clone()).unwrap();
            let oracle = oracle_bank(bank, 0.85);
            for win in &wins {
                let (gh, gw) = ((win.h as usize).div_ceil(8), (win.w as usize).div_ceil(6));
                let patches = random_patches(&mut rng, bank, gh * gw);
                let s = vocab.score(patches.view()).unwrap();
                acc.add_window_from(source as u16, win, gh, gw, &s).unwrap();
                oracle_windows.push(OracleWindow {
                    win: *win,
                    gh,
                    gw,
                    scores: patches
                        .rows()
                        .into_iter()
                        .map(|r| oracle_score(&oracle, r.as_slice().unwrap()).0)
                        .collect(),
                });
            }
        }
        let want = oracle_fuse(w, h, 7, &oracle_windows);
        let fused = acc.fused();
        let mut max_diff = 0.0f64;
        for y in 0..h {
            for x in 0..w {
                for k in 0..7 {
                    max_diff = max_diff.max((fused[[y, x, k]] as f64 - want[y][x][k]).abs());
                }
            }
        }
        assert!(max_diff < 1e-5, "fused scores differ by {max_diff}");
        for floor in [None, Some(0.0)] {
            for threads in [1, 3] {
                let map = acc.finish_with_threads(floor.map(|f: f64| f as f32), threads);
                let mut agree = 0;
                for (y, row) in want.iter().enumerate() {
                    for (x, px) in row.iter().enumerate() {
                        let o = oracle_argmax(px, floor);
                        agree += (map.label(x as u32, y as u32) as usize == o) as usize;
                    }
                }
                assert!(
                    agree as f64 >= 0.999 * (w * h) as f64,
                    "{agree}/{} agree",
                    w * h
                );
                assert!(map.proto.iter().all(|&p| p != NO_PROTO));
                assert!(map.source.contains(&1) && map.source.contains(&0));
            }
        }
        let labels: std::collections::BTreeSet<u16> = acc.finish(None).labels.into_iter().collect();
        assert!(
            labels.len() >= 3,
            "too few distinct labels to be a test: {labels:?}"
        );
    }
}
