//! A slow, plain f64 reference of the matching rules, random banks for tests and benchmarks, and the parity tests that hold the matchers to it.
//!
//! Everything here is written as directly as possible: per patch, the cosine
//! to every prototype; per class, the maximum; the background, the maximum
//! over the thing classes' background prototypes that are not within 0.85
//! of a stuff class's foreground; per pixel, the textbook four-tap bilinear
//! formula summed over the covering windows. No blocking, no threads, no
//! separable passes.

use ndarray::Array2;
use ovdiff_core::rng::SplitMix64;

use crate::rows::RowSet;
use crate::vocabulary::Candidate;

/// Random test data over the one generator, [`SplitMix64`].
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A random unit vector.
    pub fn unit(&mut self, d: usize) -> Vec<f32> {
        let v: Vec<f64> = (0..d).map(|_| self.normal()).collect();
        to_f32(&unit64(&v))
    }

    /// A unit vector whose cosine to the unit vector `s` is exactly `a`.
    pub fn at_cosine(&mut self, s: &[f32], a: f64) -> Vec<f32> {
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
    pub fn noisy(&mut self, v: &[f32], sigma: f64) -> Vec<f32> {
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
pub struct OracleBank {
    /// Kept background prototypes: (owning label, id, unit vector).
    bg: Vec<(usize, u32, Vec<f64>)>,
    /// Per class: (id, unit vector) of its foreground prototypes.
    fg: Vec<Vec<(u32, Vec<f64>)>>,
    /// How many background prototypes the stuff rule dropped.
    pub dropped: usize,
}

/// Apply the rules to `cands` in f64.
pub fn oracle_bank(cands: &[Candidate], threshold: f64) -> OracleBank {
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
pub fn oracle_score(bank: &OracleBank, patch: &[f32]) -> (Vec<f64>, Vec<Option<(usize, u32)>>) {
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
pub fn oracle_argmax(v: &[f64], floor: Option<f64>) -> usize {
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

/// A random bank of `k` classes of dimension `d`: every third class is
/// stuff; thing classes get random background prototypes plus some at
/// cosines 0.95, 0.9 (dropped by the 0.85 rule), 0.8 and 0.7 (kept) to a
/// stuff class's foreground prototype; stuff classes get background
/// prototypes too (which must be ignored).
pub fn random_bank(
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
pub fn random_patches(rng: &mut Rng, cands: &[Candidate], n: usize) -> Array2<f32> {
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
    use crate::vocabulary::{Vocabulary, NO_PROTO, STUFF_BG_THRESHOLD};

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
}
