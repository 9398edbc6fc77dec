//! A slow, plain f64 reference of window fusion (test-only), and the parity test that holds the accumulator to it.
//!
//! Per pixel, the textbook four-tap bilinear formula summed over the
//! covering windows: no blocking, no threads, no separable passes. The
//! matching half of the reference is [`ovdiff_match::oracle`].

use crate::window::Window;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fusion::Accumulator;
    use crate::window::layout;
    use ovdiff_match::oracle::{
        oracle_argmax, oracle_bank, oracle_score, random_bank, random_patches, Rng,
    };
    use ovdiff_match::vocabulary::NO_PROTO;
    use ovdiff_match::Vocabulary;

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
