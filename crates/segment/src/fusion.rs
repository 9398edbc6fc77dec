//! Window fusion: per-window class scores → one label map over the image.
//!
//! Window scores are upsampled bilinearly (`align_corners=False`), clamped
//! to `[-1, 1]`, averaged over the windows covering each pixel, floored at
//! the threshold (`--thresholds 0.0`: scores not above it count as 0) and
//! the label is the argmax, ties to the lowest label (background first),
//! as in OVDiff's reference `predict.py`.

use std::collections::BTreeMap;

use ndarray::{Array2, Array3};
use ovdiff_core::threads::threads_or_cores;
use ovdiff_match::vocabulary::{argmax_floor, NO_PROTO};
use ovdiff_match::Scores;

use crate::window::Window;
use crate::{Error, Result};

/// A bilinear tap: output sample = `(1 - l) · in[i0] + l · in[i1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tap {
    /// First input index.
    pub i0: usize,
    /// Second input index (`i0 + 1`, or `i0` at the last input).
    pub i1: usize,
    /// Weight of `i1`.
    pub l: f32,
}

/// Taps to resize a line of `input` samples to `output` samples bilinearly
/// with `align_corners=False` semantics (PyTorch `F.interpolate`):
/// source = `(dst + 0.5) · input / output - 0.5`, clamped at 0.
pub fn bilinear_taps(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|d| {
            let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
            let l = if i1 == i0 {
                0.0
            } else {
                (src - i0 as f64) as f32
            };
            Tap { i0, i1, l }
        })
        .collect()
}

/// Nearest-neighbour source index (PyTorch `mode="nearest"`):
/// `floor(dst · input / output)`.
fn nearest(dst: usize, input: usize, output: usize) -> usize {
    ((dst as u64 * input as u64 / output as u64) as usize).min(input - 1)
}

#[derive(Debug, Clone)]
struct StoredWindow {
    source: u16,
    win: Window,
    gh: usize,
    gw: usize,
    /// `(patches, cols)`, standard layout.
    scores: Array2<f32>,
    best: BestRows,
    xtaps: Vec<Tap>,
    ytaps: Vec<Tap>,
}

/// A window's winning prototype rows (`Scores::best_proto`), kept in half
/// the memory when they allow it: every column's rows lie in its segment
/// of the vocabulary, so each fits in 16 bits above the column's lowest.
#[derive(Debug, Clone)]
enum BestRows {
    /// `row - base[column]`, or `u16::MAX` for [`NO_PROTO`].
    Offsets { base: Vec<u32>, off: Array2<u16> },
    /// As given.
    Rows(Array2<u32>),
}

impl BestRows {
    fn new(best: Array2<u32>) -> BestRows {
        let cols = best.ncols();
        let mut lo = vec![u32::MAX; cols];
        let mut hi = vec![0u32; cols];
        for row in best.rows() {
            for ((l, h), &v) in lo.iter_mut().zip(&mut hi).zip(row) {
                if v != NO_PROTO {
                    *l = (*l).min(v);
                    *h = (*h).max(v);
                }
            }
        }
        let fits = lo
            .iter()
            .zip(&hi)
            .all(|(&l, &h)| l == u32::MAX || h - l < u32::from(u16::MAX));
        if !fits {
            return BestRows::Rows(best);
        }
        let mut off = Array2::<u16>::zeros(best.dim());
        for (src, mut dst) in best.rows().into_iter().zip(off.rows_mut()) {
            for ((d, &v), &l) in dst.iter_mut().zip(src).zip(&lo) {
                *d = if v == NO_PROTO {
                    u16::MAX
                } else {
                    (v - l) as u16
                };
            }
        }
        BestRows::Offsets { base: lo, off }
    }

    fn get(&self, patch: usize, col: usize) -> u32 {
        match self {
            BestRows::Rows(b) => b[[patch, col]],
            BestRows::Offsets { base, off } => match off[[patch, col]] {
                u16::MAX => NO_PROTO,
                o => base[col] + u32::from(o),
            },
        }
    }
}

/// Fuses window scores into one label map over a `w`×`h` image.
///
/// Each window's patch-grid scores are upsampled bilinearly to the window's
/// pixel size, clamped to `[-1, 1]`, and added at its position; every pixel
/// is then divided by the number of windows that covered it, and labelled
/// by the argmax (see [`finish_with_threads`](Accumulator::finish_with_threads)).
///
/// Windows from several encoders (each matched against its own
/// [`Vocabulary`] with the same classes in the same order) can be added to
/// one accumulator: they simply count as more windows, so every window of
/// every encoder has equal weight (late fusion, as the reference does with
/// several `--prots`). The `source` number of a window says which encoder
/// it came from, for explanations.
///
/// Memory: rather than an `h × w × (K + 1)` sum (a gigabyte at 1,000
/// classes), the accumulator keeps each window's patch-grid scores and does
/// the upsampling and summing row by row when finishing, so memory is the
/// windows' scores plus one row of `w × (K + 1)` sums per thread; the result
/// is the same sum.
#[derive(Debug, Clone)]
pub struct Accumulator {
    w: u32,
    h: u32,
    cols: usize,
    windows: Vec<StoredWindow>,
}

impl Accumulator {
    /// An empty accumulator for a `w`×`h` image and `cols = K + 1` score
    /// columns.
    pub fn new(w: u32, h: u32, cols: usize) -> Accumulator {
        Accumulator {
            w,
            h,
            cols,
            windows: Vec::new(),
        }
    }

    /// Image width.
    pub fn width(&self) -> u32 {
        self.w
    }

    /// Image height.
    pub fn height(&self) -> u32 {
        self.h
    }

    /// Number of windows added.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// True when no window was added.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Add a window of source 0 (see [`add_window_from`]).
    ///
    /// [`add_window_from`]: Accumulator::add_window_from
    pub fn add_window(
        &mut self,
        window: &Window,
        grid_h: usize,
        grid_w: usize,
        scores: &Scores,
    ) -> Result<()> {
        self.add_window_from(0, window, grid_h, grid_w, scores)
    }

    /// Add the scores of a window whose patch grid is `grid_h × grid_w`
    /// (`scores` rows in row-major patch order), computed by encoder number
    /// `source`.
    pub fn add_window_from(
        &mut self,
        source: u16,
        window: &Window,
        grid_h: usize,
        grid_w: usize,
        scores: &Scores,
    ) -> Result<()> {
        self.add_window_owned(source, window, grid_h, grid_w, scores.clone())
    }

    /// [`add_window_from`](Accumulator::add_window_from), keeping `scores`
    /// without a copy.
    pub fn add_window_owned(
        &mut self,
        source: u16,
        window: &Window,
        grid_h: usize,
        grid_w: usize,
        scores: Scores,
    ) -> Result<()> {
        if window.w == 0 || window.h == 0 || window.right() > self.w || window.bottom() > self.h {
            return Err(Error::Invalid(format!(
                "window {window:?} is not inside the {}×{} image",
                self.w, self.h
            )));
        }
        let shape = [grid_h * grid_w, self.cols];
        if grid_h == 0
            || grid_w == 0
            || scores.scores.shape() != shape
            || scores.best_proto.shape() != shape
        {
            return Err(Error::DimensionMismatch {
                what: "window scores".into(),
                expected: format!("{shape:?} for a {grid_h}×{grid_w} grid, at least 1×1"),
                found: format!("{:?}", scores.scores.shape()),
            });
        }
        let Scores {
            mut scores,
            best_proto,
        } = scores;
        if !scores.is_standard_layout() {
            scores = scores.as_standard_layout().into_owned();
        }
        self.windows.push(StoredWindow {
            source,
            win: *window,
            gh: grid_h,
            gw: grid_w,
            xtaps: bilinear_taps(grid_w, window.w as usize),
            ytaps: bilinear_taps(grid_h, window.h as usize),
            scores,
            best: BestRows::new(best_proto),
        });
        Ok(())
    }

    /// Add the upsampled scores of row `y` into `acc` (`w × cols`) and the
    /// covering counts into `cnt`; returns the indices of the windows that
    /// cover the row.
    fn accumulate_row(
        &self,
        y: u32,
        acc: &mut [f32],
        cnt: &mut [u32],
        tmp: &mut Vec<f32>,
    ) -> Vec<usize> {
        let c = self.cols;
        acc.fill(0.0);
        cnt.fill(0);
        let mut covering = Vec::new();
        for (wi, sw) in self.windows.iter().enumerate() {
            if y < sw.win.y || y >= sw.win.bottom() {
                continue;
            }
            covering.push(wi);
            let ty = sw.ytaps[(y - sw.win.y) as usize];
            let data = sw.scores.as_slice().expect("invariant: standard layout");
            let line = sw.gw * c;
            let (r0, r1) = (&data[ty.i0 * line..][..line], &data[ty.i1 * line..][..line]);
            tmp.clear();
            tmp.extend(r0.iter().zip(r1).map(|(&a, &b)| a + ty.l * (b - a)));
            for (xi, tx) in sw.xtaps.iter().enumerate() {
                let x = sw.win.x as usize + xi;
                let a = &tmp[tx.i0 * c..][..c];
                let b = &tmp[tx.i1 * c..][..c];
                let dst = &mut acc[x * c..][..c];
                for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                    *d += (a + tx.l * (b - a)).clamp(-1.0, 1.0);
                }
                cnt[x] += 1;
            }
        }
        covering
    }

    /// The averaged scores, `(h, w, K + 1)`: memory-hungry at many classes,
    /// meant for inspection and tests. Uncovered pixels are 0.
    pub fn fused(&self) -> Array3<f32> {
        let (w, c) = (self.w as usize, self.cols);
        let mut out = Array3::<f32>::zeros((self.h as usize, w, c));
        let (mut acc, mut cnt, mut tmp) = (vec![0.0; w * c], vec![0; w], Vec::new());
        for y in 0..self.h {
            self.accumulate_row(y, &mut acc, &mut cnt, &mut tmp);
            for x in 0..w {
                let n = cnt[x].max(1) as f32;
                for k in 0..c {
                    out[[y as usize, x, k]] = acc[x * c + k] / n;
                }
            }
        }
        out
    }

    /// The label map, using one thread per core.
    pub fn finish(&self, floor: Option<f32>) -> LabelMap {
        self.finish_with_threads(floor, 0)
    }

    /// The label map: per pixel, the argmax over the window-averaged
    /// scores (with `floor = Some(t)`, averages not above `t` count as 0
    /// first; the reference uses `Some(0.0)`), ties to the lowest label. A
    /// pixel no window covers is background with score 0.
    ///
    /// `LabelMap::score` is the winning label's average score (before the
    /// floor). `LabelMap::proto` / `source` say which prototype won the
    /// winning label there: among the windows covering the pixel, the one
    /// whose nearest patch (nearest-neighbour, not interpolated) scores the
    /// winning label highest (the earliest on ties), and that patch's
    /// winning prototype row.
    ///
    /// `threads = 0` uses one thread per core; rows are split into bands.
    pub fn finish_with_threads(&self, floor: Option<f32>, threads: usize) -> LabelMap {
        let (w, h) = (self.w as usize, self.h as usize);
        let mut map = LabelMap {
            w: self.w,
            h: self.h,
            labels: vec![0; w * h],
            score: vec![0.0; w * h],
            proto: vec![NO_PROTO; w * h],
            source: vec![0; w * h],
        };
        if w == 0 || h == 0 {
            return map;
        }
        let threads = threads_or_cores(threads).min(h).max(1);
        let band = h.div_ceil(threads) * w;
        std::thread::scope(|sc| {
            let parts = map
                .labels
                .chunks_mut(band)
                .zip(map.score.chunks_mut(band))
                .zip(map.proto.chunks_mut(band))
                .zip(map.source.chunks_mut(band))
                .enumerate();
            for (bi, (((l, s), p), src)) in parts {
                let y0 = bi * (band / w);
                let out = Band {
                    labels: l,
                    score: s,
                    proto: p,
                    source: src,
                };
                if threads == 1 {
                    self.fuse_band(y0, out, floor);
                } else {
                    sc.spawn(move || self.fuse_band(y0, out, floor));
                }
            }
        });
        map
    }

    fn fuse_band(&self, y0: usize, out: Band<'_>, floor: Option<f32>) {
        let (w, c) = (self.w as usize, self.cols);
        let (mut acc, mut cnt, mut tmp) = (vec![0.0f32; w * c], vec![0u32; w], Vec::new());
        let rows = out.labels.len() / w;
        for r in 0..rows {
            let y = (y0 + r) as u32;
            let covering = self.accumulate_row(y, &mut acc, &mut cnt, &mut tmp);
            for x in 0..w {
                let o = r * w + x;
                let n = cnt[x];
                if n == 0 {
                    continue;
                }
                let avg = &mut acc[x * c..][..c];
                avg.iter_mut().for_each(|v| *v /= n as f32);
                let k = argmax_floor(avg.iter().copied(), floor);
                out.labels[o] = k as u16;
                out.score[o] = avg[k];
                let mut best: Option<(f32, u32, u16)> = None;
                for &wi in &covering {
                    let sw = &self.windows[wi];
                    if !sw.win.contains(x as u32, y) {
                        continue;
                    }
                    let py = nearest((y - sw.win.y) as usize, sw.gh, sw.win.h as usize);
                    let px = nearest(x - sw.win.x as usize, sw.gw, sw.win.w as usize);
                    let patch = py * sw.gw + px;
                    let v = sw.scores[[patch, k]];
                    if best.is_none_or(|(bv, _, _)| v > bv) {
                        best = Some((v, sw.best.get(patch, k), sw.source));
                    }
                }
                if let Some((_, p, s)) = best {
                    out.proto[o] = p;
                    out.source[o] = s;
                }
            }
        }
    }
}

struct Band<'a> {
    labels: &'a mut [u16],
    score: &'a mut [f32],
    proto: &'a mut [u32],
    source: &'a mut [u16],
}

/// A per-pixel labelling of an image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
    /// 0 = background, `k` = candidate `k` (`Vocabulary::names()[k - 1]`).
    pub labels: Vec<u16>,
    /// The winning label's window-averaged score.
    pub score: Vec<f32>,
    /// The prototype row that won the winning label here (see
    /// [`Accumulator::finish_with_threads`]), [`NO_PROTO`] when none.
    pub proto: Vec<u32>,
    /// Which encoder (ensemble member) `proto` belongs to.
    pub source: Vec<u16>,
}

impl LabelMap {
    /// The label at pixel (`x`, `y`).
    pub fn label(&self, x: u32, y: u32) -> u16 {
        self.labels[(y * self.w + x) as usize]
    }

    /// Resized to `w`×`h` by nearest neighbour (PyTorch `mode="nearest"`:
    /// source = `floor(dst · old / new)`), every field alike.
    pub fn resize_nearest(&self, w: u32, h: u32) -> LabelMap {
        if (w, h) == (self.w, self.h) {
            return self.clone();
        }
        let n = w as usize * h as usize;
        let mut out = LabelMap {
            w,
            h,
            labels: Vec::with_capacity(n),
            score: Vec::with_capacity(n),
            proto: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
        };
        if self.w == 0 || self.h == 0 {
            out.labels.resize(n, 0);
            out.score.resize(n, 0.0);
            out.proto.resize(n, NO_PROTO);
            out.source.resize(n, 0);
            return out;
        }
        let xs: Vec<usize> = (0..w as usize)
            .map(|x| nearest(x, self.w as usize, w as usize))
            .collect();
        for y in 0..h as usize {
            let row = nearest(y, self.h as usize, h as usize) * self.w as usize;
            for &x in &xs {
                let i = row + x;
                out.labels.push(self.labels[i]);
                out.score.push(self.score[i]);
                out.proto.push(self.proto[i]);
                out.source.push(self.source[i]);
            }
        }
        out
    }

    /// The labels as bytes, for palette PNGs (see [`labels_u8`]).
    pub fn labels_u8(&self) -> Result<Vec<u8>> {
        labels_u8(&self.labels)
    }

    /// Pixels per label, `num_labels` long (labels beyond it are not counted).
    pub fn pixel_counts(&self, num_labels: usize) -> Vec<u64> {
        let mut c = vec![0u64; num_labels];
        for &l in &self.labels {
            if let Some(slot) = c.get_mut(l as usize) {
                *slot += 1;
            }
        }
        c
    }

    /// Pixels won per prototype: `(label, source, prototype row) → pixels`,
    /// pixels without a prototype left out.
    pub fn proto_wins(&self) -> BTreeMap<(u16, u16, u32), u64> {
        let mut m = BTreeMap::new();
        for i in 0..self.labels.len() {
            if self.proto[i] != NO_PROTO {
                *m.entry((self.labels[i], self.source[i], self.proto[i]))
                    .or_insert(0) += 1;
            }
        }
        m
    }
}

/// Labels as bytes, for palette PNGs (where 255 means "void"): an error
/// when some label is 255 or more (over 254 candidates).
pub fn labels_u8(labels: &[u16]) -> Result<Vec<u8>> {
    labels
        .iter()
        .map(|&l| {
            u8::try_from(l)
                .ok()
                .filter(|&b| b != u8::MAX)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "label {l} does not fit an 8-bit label map (at most 254 classes)"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::layout;
    use ndarray::array;
    use ovdiff_match::oracle::Rng;
    use std::time::Instant;

    #[test]
    fn winning_rows_are_kept_compactly_and_read_back_exactly() {
        let best = array![
            [NO_PROTO, 70_000, 5],
            [NO_PROTO, 70_000 + 65_534, 9],
            [NO_PROTO, 70_100, 5]
        ];
        let b = BestRows::new(best.clone());
        assert!(matches!(b, BestRows::Offsets { .. }));
        for ((i, j), &v) in best.indexed_iter() {
            assert_eq!(b.get(i, j), v);
        }
        // A column whose rows span more than 16 bits is kept as is.
        let wide = array![[0, 1], [65_535, 2]];
        let b = BestRows::new(wide.clone());
        assert!(matches!(b, BestRows::Rows(_)));
        for ((i, j), &v) in wide.indexed_iter() {
            assert_eq!(b.get(i, j), v);
        }
    }

    #[test]
    fn bilinear_upsampling_follows_align_corners_false() {
        let taps = bilinear_taps(4, 2);
        assert_eq!(
            taps,
            vec![
                Tap {
                    i0: 0,
                    i1: 1,
                    l: 0.5
                },
                Tap {
                    i0: 2,
                    i1: 3,
                    l: 0.5
                }
            ]
        );
        // a ramp over 4 patches, upsampled to 8 pixels
        let mut acc = Accumulator::new(8, 2, 2);
        let scores = Scores {
            scores: array![[0.0, 0.4], [0.25, 0.4], [0.5, 0.4], [0.75, 0.4]],
            best_proto: array![[0, 1], [0, 1], [0, 1], [0, 1]],
        };
        acc.add_window(&Window::whole(8, 2), 1, 4, &scores).unwrap();
        let f = acc.fused();
        let want = [0.0, 0.0625, 0.1875, 0.3125, 0.4375, 0.5625, 0.6875, 0.75];
        for y in 0..2 {
            for (x, w) in want.iter().enumerate() {
                assert!((f[[y, x, 0]] - w).abs() < 1e-6, "x={x}: {}", f[[y, x, 0]]);
                assert!((f[[y, x, 1]] - 0.4).abs() < 1e-6);
            }
        }
        let map = acc.finish(None);
        assert_eq!(&map.labels[..8], &[1, 1, 1, 1, 0, 0, 0, 0]);
        assert!((map.score[7] - 0.75).abs() < 1e-6);
        // a second window over the right half: the left is unchanged, the
        // right is the average of the two
        let right = Scores {
            scores: array![[0.1, 0.9]],
            best_proto: array![[0, 1]],
        };
        acc.add_window(
            &Window {
                x: 4,
                y: 0,
                w: 4,
                h: 2,
            },
            1,
            1,
            &right,
        )
        .unwrap();
        let f = acc.fused();
        assert!((f[[0, 5, 0]] - (0.5625 + 0.1) / 2.0).abs() < 1e-6);
        assert!((f[[0, 2, 0]] - 0.1875).abs() < 1e-6);
        assert!(acc
            .add_window(
                &Window {
                    x: 5,
                    y: 0,
                    w: 4,
                    h: 2
                },
                1,
                1,
                &right
            )
            .is_err());
        assert!(acc.add_window(&Window::whole(8, 2), 2, 1, &right).is_err());
    }

    #[test]
    fn label_maps_resize_by_nearest_neighbour() {
        let map = LabelMap {
            w: 2,
            h: 1,
            labels: vec![1, 2],
            score: vec![0.5, 0.6],
            proto: vec![3, NO_PROTO],
            source: vec![0, 0],
        };
        let big = map.resize_nearest(5, 2);
        assert_eq!(big.labels, vec![1, 1, 1, 2, 2, 1, 1, 1, 2, 2]);
        assert_eq!(big.pixel_counts(3), vec![0, 6, 4]);
        assert_eq!(
            big.proto_wins().into_iter().collect::<Vec<_>>(),
            vec![((1, 0, 3), 6)]
        );
        // downsampling picks floor(x · 5 / 2) = 0, 2
        assert_eq!(big.resize_nearest(2, 1).labels, vec![1, 1]);
        assert_eq!(big.resize_nearest(5, 2), big);
        assert_eq!(big.labels_u8().unwrap(), vec![1, 1, 1, 2, 2, 1, 1, 1, 2, 2]);
        let mut many = big.clone();
        many.labels[0] = 255;
        assert!(many.labels_u8().is_err());
    }

    fn time_fusion(classes: usize) {
        let (w, h) = (597, 448);
        let wins = layout(w, h, &[448, 336], 224, true);
        let mut rng = Rng::new(2);
        let mut acc = Accumulator::new(w, h, classes + 1);
        for win in &wins {
            let (gh, gw) = ((win.h / 14) as usize, (win.w as usize).div_ceil(14));
            let scores = Array2::from_shape_fn((gh * gw, classes + 1), |_| rng.uniform() as f32);
            let s = Scores {
                scores,
                best_proto: Array2::zeros((gh * gw, classes + 1)),
            };
            acc.add_window(win, gh, gw, &s).unwrap();
        }
        for threads in [1, 0] {
            let t = Instant::now();
            std::hint::black_box(acc.finish_with_threads(Some(0.0), threads));
            eprintln!(
                "fusion: {} windows, {w}×{h}, {classes} classes, threads {}: {:.1} ms",
                wins.len(),
                threads_or_cores(threads),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    #[test]
    #[ignore = "timing; run in release"]
    fn fusion_timing() {
        time_fusion(10);
        time_fusion(1000);
    }
}
