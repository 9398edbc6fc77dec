//! Foreground/background split of one support image's patch grid.
//!
//! OVDiff (`sample_support_set.py`) turns the diffusion model's cross-attention
//! map for the class token into two masks: it min-max normalises the map,
//! keeps `> 0.5` as foreground and `< 0.2` as background, and erodes the
//! background once (`skimage.morphology.binary_erosion`) so that patches on
//! the object's boundary do not leak into the background prototypes.
//! [`split_by_saliency`] applies these rules on the patch grid.
//!
//! When no saliency map is available (user-supplied support images),
//! [`split_by_features`] splits the patch tokens themselves with 2-means and
//! calls foreground the cluster that touches the image border less.
//!
//! Both fall back to quantiles when a side comes out empty; [`Split::fallback`]
//! records it.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView2};

use ovdiff_core::map::{min_max_normalize, resize};
use ovdiff_core::PatchGrid;

use crate::parts::{kmeans, DEFAULT_MAX_ITER};

/// Normalised saliency above which a patch is foreground (OVDiff: `daam > 0.5`).
pub const FG_THRESHOLD: f32 = 0.5;

/// Normalised saliency below which a patch is background, before erosion
/// (OVDiff: `daam < 0.2`).
pub const BG_THRESHOLD: f32 = 0.2;

/// Share of patches taken for each side by the quantile fallback: the top
/// 20 % become foreground, the bottom 20 % background.
pub const FALLBACK_FRACTION: f64 = 0.2;

/// How a support image is split into foreground and background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SplitMethod {
    /// Threshold a saliency (cross-attention) map: [`split_by_saliency`].
    #[default]
    Saliency,
    /// 2-means over the patch tokens with a border prior: [`split_by_features`].
    FeatureSplit,
    /// Threshold the diffusion model's own attribution map for the class
    /// tokens (OVDiff's split; generators whose UNet declares
    /// cross-attention outputs): [`split_by_saliency`] on that map.
    Attribution,
}

impl SplitMethod {
    /// Stable name: `"saliency"` or `"feature-split"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitMethod::Saliency => "saliency",
            SplitMethod::FeatureSplit => "feature-split",
            SplitMethod::Attribution => "attribution",
        }
    }
}

impl fmt::Display for SplitMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown split-method name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown split method {0:?} (expected \"saliency\", \"feature-split\" or \"attribution\")")]
pub struct ParseSplitMethodError(pub String);

impl FromStr for SplitMethod {
    type Err = ParseSplitMethodError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "saliency" => Ok(SplitMethod::Saliency),
            "feature-split" => Ok(SplitMethod::FeatureSplit),
            "attribution" => Ok(SplitMethod::Attribution),
            other => Err(ParseSplitMethodError(other.to_string())),
        }
    }
}

/// Foreground and background masks over an `h × w` patch grid, row-major
/// (index `y * w + x`). The two masks never overlap; patches in neither
/// (the uncertain band between the thresholds, eroded boundary) are unused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Foreground patches.
    pub fg: Vec<bool>,
    /// Background patches.
    pub bg: Vec<bool>,
    /// True when the thresholded split left a side empty and the quantile
    /// fallback was used instead.
    pub fallback: bool,
}

impl Split {
    /// Number of foreground patches.
    pub fn fg_count(&self) -> usize {
        self.fg.iter().filter(|&&b| b).count()
    }

    /// Number of background patches.
    pub fn bg_count(&self) -> usize {
        self.bg.iter().filter(|&&b| b).count()
    }
}

/// Split by a saliency map of any size `H' × W'` (e.g. the class token's
/// cross-attention, or a mask).
///
/// 1. The map is resized to the `h × w` patch grid, separably per axis:
///    area averaging along an axis that shrinks, bilinear interpolation
///    (half-pixel centres, like `align_corners=False`) along one that grows.
///    Non-finite values count as the map's minimum (not salient).
/// 2. It is min-max normalised to `[0, 1]`; a flat map (range ≤ `1e-6`, or
///    ≤ `1e-5` of its magnitude) becomes all zeros instead of dividing by
///    (almost) zero.
/// 3. Foreground: `> 0.5`. Background: `< 0.2`, then [`erode`]d once.
/// 4. If either side is empty, the quantile fallback replaces both: the
///    top 20 % of patches (`⌈n/5⌉`, at least one) by normalised saliency are
///    foreground, the bottom 20 % (as many, but disjoint from the
///    foreground) are background, and `fallback` is set. Ties, e.g. on a
///    constant map, rank central patches as more salient, so a flat map
///    yields a centred foreground and a background along the border.
///
/// An empty grid (`h * w == 0`) gives empty masks with `fallback` set.
pub fn split_by_saliency(saliency: ArrayView2<f32>, h: usize, w: usize) -> Split {
    let n = h * w;
    if n == 0 {
        return Split {
            fg: Vec::new(),
            bg: Vec::new(),
            fallback: true,
        };
    }
    let mut map = if saliency.is_empty() {
        Array2::zeros((h, w))
    } else {
        let finite_min = saliency
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f32::INFINITY, f32::min);
        let floor = if finite_min.is_finite() {
            finite_min
        } else {
            0.0
        };
        let clean = saliency.mapv(|v| if v.is_finite() { v } else { floor });
        resize(clean.view(), h, w)
    };
    min_max_normalize(&mut map);
    let values: Vec<f32> = map.iter().copied().collect();

    let fg: Vec<bool> = values.iter().map(|&v| v > FG_THRESHOLD).collect();
    let bg_raw: Vec<bool> = values.iter().map(|&v| v < BG_THRESHOLD).collect();
    let bg = erode(&bg_raw, h, w);
    finish(fg, bg, &values, h, w)
}

/// Split by the patch tokens alone (no saliency map).
///
/// 2-means ([`kmeans`], seeded with `seed`, at most
/// [`DEFAULT_MAX_ITER`] iterations) over the rows of `grid.features`. For
/// each cluster the fraction of its patches that lie on the grid's outer
/// ring is computed; the cluster with the smaller fraction is foreground
/// (objects sit inside the frame, background runs off its edges). Ties go
/// to the smaller cluster, then to the lower cluster index. The other
/// cluster, [`erode`]d once, is background.
///
/// The quantile fallback of [`split_by_saliency`] applies when a side comes
/// out empty, with the score `‖x − c_bg‖² − ‖x − c_fg‖²` (how much nearer a
/// patch is to the foreground centroid); if the tokens do not even form two
/// clusters the score is flat and the centre prior decides.
///
/// # Panics
///
/// If `grid.features` does not have `grid.h * grid.w` rows.
pub fn split_by_features(grid: &PatchGrid, seed: u64) -> Split {
    let (h, w) = (grid.h, grid.w);
    let n = h * w;
    assert_eq!(
        grid.features.nrows(),
        n,
        "patch grid has {} feature rows for a {h}×{w} grid",
        grid.features.nrows()
    );
    if n == 0 {
        return Split {
            fg: Vec::new(),
            bg: Vec::new(),
            fallback: true,
        };
    }
    let km = kmeans(grid.features.view(), 2, seed, DEFAULT_MAX_ITER);
    if km.k() < 2 {
        let flat = vec![0.0f32; n];
        return finish(vec![false; n], vec![false; n], &flat, h, w);
    }

    let mut size = [0usize; 2];
    let mut on_border = [0usize; 2];
    for (i, &a) in km.assignment.iter().enumerate() {
        let a = a as usize;
        size[a] += 1;
        let (y, x) = (i / w, i % w);
        if y == 0 || x == 0 || y + 1 == h || x + 1 == w {
            on_border[a] += 1;
        }
    }
    // Compare on_border[0]/size[0] with on_border[1]/size[1] exactly.
    let lhs = on_border[0] * size[1];
    let rhs = on_border[1] * size[0];
    let fg_cluster = match lhs.cmp(&rhs) {
        std::cmp::Ordering::Less => 0,
        std::cmp::Ordering::Greater => 1,
        std::cmp::Ordering::Equal => usize::from(size[1] < size[0]),
    } as u32;

    let fg: Vec<bool> = km.assignment.iter().map(|&a| a == fg_cluster).collect();
    let bg_raw: Vec<bool> = km.assignment.iter().map(|&a| a != fg_cluster).collect();
    let bg = erode(&bg_raw, h, w);

    // Score for the fallback: 2 x·(c_fg − c_bg) + ‖c_bg‖² − ‖c_fg‖².
    let c_fg = km.centroids.row(fg_cluster as usize);
    let c_bg = km.centroids.row(1 - fg_cluster as usize);
    let diff = &c_fg - &c_bg;
    let offset = c_bg.dot(&c_bg) - c_fg.dot(&c_fg);
    let scores: Vec<f32> = grid
        .features
        .dot(&diff)
        .iter()
        .map(|&s| 2.0 * s + offset)
        .collect();
    finish(fg, bg, &scores, h, w)
}

/// Binary erosion with a 3×3 square structuring element: a patch stays set
/// only if it and its eight neighbours are set.
///
/// Border handling: neighbours outside the grid are ignored (treated as
/// set), as `skimage.morphology.binary_erosion` does, so a background region
/// running off the image edge is not eaten away from the edge; only its
/// boundary with unset patches recedes by one patch.
///
/// # Panics
///
/// If `mask.len() != h * w`.
pub fn erode(mask: &[bool], h: usize, w: usize) -> Vec<bool> {
    assert_eq!(mask.len(), h * w, "mask length does not match {h}×{w}");
    let mut out = vec![false; mask.len()];
    for y in 0..h {
        for x in 0..w {
            if !mask[y * w + x] {
                continue;
            }
            let ys = y.saturating_sub(1)..=(y + 1).min(h - 1);
            out[y * w + x] = ys
                .into_iter()
                .all(|yy| (x.saturating_sub(1)..=(x + 1).min(w - 1)).all(|xx| mask[yy * w + xx]));
        }
    }
    out
}

/// Keep `fg`/`bg` if both are non-empty, else the quantile fallback over
/// `scores` (higher = more foreground).
fn finish(fg: Vec<bool>, bg: Vec<bool>, scores: &[f32], h: usize, w: usize) -> Split {
    if fg.iter().any(|&b| b) && bg.iter().any(|&b| b) {
        return Split {
            fg,
            bg,
            fallback: false,
        };
    }
    quantile_split(scores, h, w)
}

/// The quantile fallback: top `⌈n/5⌉` patches by score are foreground, as
/// many of the bottom ones (never overlapping) background. Ties rank central
/// patches higher, then lower indices.
fn quantile_split(scores: &[f32], h: usize, w: usize) -> Split {
    let n = h * w;
    debug_assert_eq!(scores.len(), n);
    // Squared distance from the grid centre, in half-patch units (exact).
    let centre_d2 = |i: usize| {
        let dy = 2 * (i / w) as i64 + 1 - h as i64;
        let dx = 2 * (i % w) as i64 + 1 - w as i64;
        dy * dy + dx * dx
    };
    let mut order: Vec<usize> = (0..n).collect();
    // Ascending salience: low score first; among equals, far from centre first.
    order.sort_by(|&a, &b| {
        scores[a]
            .total_cmp(&scores[b])
            .then_with(|| centre_d2(b).cmp(&centre_d2(a)))
            .then_with(|| b.cmp(&a))
    });
    let q = ((n as f64 * FALLBACK_FRACTION - 1e-9).ceil() as usize).clamp(1, n);
    let q_bg = q.min(n - q);
    let mut fg = vec![false; n];
    let mut bg = vec![false; n];
    for &i in &order[n - q..] {
        fg[i] = true;
    }
    for &i in &order[..q_bg] {
        bg[i] = true;
    }
    Split {
        fg,
        bg,
        fallback: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    fn grid_str(mask: &[bool], w: usize) -> String {
        mask.chunks(w)
            .map(|r| {
                r.iter()
                    .map(|&b| if b { '#' } else { '.' })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn from_str(s: &str) -> Vec<bool> {
        s.split_whitespace()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect()
    }

    #[test]
    fn method_names_round_trip() {
        for m in [
            SplitMethod::Saliency,
            SplitMethod::FeatureSplit,
            SplitMethod::Attribution,
        ] {
            assert_eq!(m.as_str().parse::<SplitMethod>().unwrap(), m);
            assert_eq!(m.to_string(), m.as_str());
        }
        assert!("bogus".parse::<SplitMethod>().is_err());
        assert_eq!(SplitMethod::default(), SplitMethod::Saliency);
    }

    #[test]
    fn erosion_ignores_outside_of_grid() {
        let mask = from_str(
            "#####.
             #####.
             #####.
             ......",
        );
        let out = erode(&mask, 4, 6);
        let want = from_str(
            "####..
             ####..
             ......
             ......",
        );
        assert_eq!(grid_str(&out, 6), grid_str(&want, 6));
        // A full grid survives erosion; a lone patch does not.
        assert!(erode(&[true; 9], 3, 3).iter().all(|&b| b));
        let mut lone = vec![false; 9];
        lone[4] = true;
        assert!(erode(&lone, 3, 3).iter().all(|&b| !b));
    }

    #[test]
    fn thresholds_and_erosion_on_hand_made_map() {
        // 5×6 map already at grid size. Values are raw; min 0, max 10.
        let s = array![
            [0.0f32, 0.0, 0.0, 1.0, 3.0, 3.0],
            [0.0, 0.0, 0.0, 1.0, 3.0, 3.0],
            [0.0, 0.0, 1.0, 6.0, 10.0, 8.0],
            [0.0, 0.0, 1.0, 5.0, 9.0, 9.0],
            [0.0, 0.0, 0.0, 1.0, 3.0, 3.0],
        ];
        let sp = split_by_saliency(s.view(), 5, 6);
        assert!(!sp.fallback);
        // fg: > 0.5 after normalisation, i.e. raw > 5 (raw 5 is exactly 0.5: excluded).
        let want_fg = from_str(
            "......
             ......
             ...###
             ....##
             ......",
        );
        assert_eq!(grid_str(&sp.fg, 6), grid_str(&want_fg, 6));
        // bg before erosion: raw < 2 → columns 0..=3 minus the 6 and 5 cells.
        // After a 3×3 erosion (outside ignored) only patches whose whole
        // neighbourhood is < 2 remain.
        let want_bg = from_str(
            "###...
             ##....
             ##....
             ##....
             ##....",
        );
        assert_eq!(grid_str(&sp.bg, 6), grid_str(&want_bg, 6));
        assert!(sp.fg.iter().zip(&sp.bg).all(|(a, b)| !(a & b)));
    }

    #[test]
    fn resizes_large_map_by_area() {
        // 40×40 map, bright 20×20 centre block → 8×8 grid: centre 4×4 bright.
        let s = Array2::from_shape_fn((40, 40), |(y, x)| {
            if (10..30).contains(&y) && (10..30).contains(&x) {
                1.0f32
            } else {
                0.0
            }
        });
        let sp = split_by_saliency(s.view(), 8, 8);
        assert!(!sp.fallback);
        let want_fg =
            from_str("........ ........ ..####.. ..####.. ..####.. ..####.. ........ ........");
        assert_eq!(grid_str(&sp.fg, 8), grid_str(&want_fg, 8));
        // Raw bg = all but the block; erosion drops the ring touching it but
        // (outside of the grid ignored) keeps the outer ring.
        let want_bg =
            from_str("######## #......# #......# #......# #......# #......# #......# ########");
        assert_eq!(grid_str(&sp.bg, 8), grid_str(&want_bg, 8));
    }

    #[test]
    fn upsamples_small_map() {
        let s = array![[0.0f32, 0.0], [0.0, 1.0]];
        let sp = split_by_saliency(s.view(), 8, 8);
        assert_eq!(sp.fg.len(), 64);
        assert!(sp.fg[63] && !sp.fg[0]);
        assert!(sp.bg[0] && !sp.bg[63]);
    }

    #[test]
    fn constant_map_falls_back_to_centre_prior() {
        let s = Array2::from_elem((16, 16), 0.7f32);
        let sp = split_by_saliency(s.view(), 5, 5);
        assert!(sp.fallback);
        assert_eq!(sp.fg_count(), 5); // ⌈25/5⌉
        assert_eq!(sp.bg_count(), 5);
        assert!(sp.fg[12], "centre patch is foreground");
        for (i, (&f, &b)) in sp.fg.iter().zip(&sp.bg).enumerate() {
            assert!(!(f && b));
            let (y, x) = (i / 5, i % 5);
            if b {
                assert!(y == 0 || x == 0 || y == 4 || x == 4, "bg on border");
            }
        }
        // NaNs and an empty map do not panic either.
        let nan = Array2::from_elem((3, 3), f32::NAN);
        assert!(split_by_saliency(nan.view(), 3, 3).fallback);
        let empty = Array2::<f32>::zeros((0, 0));
        assert!(split_by_saliency(empty.view(), 3, 3).fallback);
        assert!(split_by_saliency(s.view(), 0, 0).fg.is_empty());
        // 1×1 grid: one fg patch, no bg.
        let one = split_by_saliency(s.view(), 1, 1);
        assert_eq!((one.fg_count(), one.bg_count()), (1, 0));
    }

    #[test]
    fn empty_background_triggers_fallback() {
        // Everything above 0.2 except one isolated low patch, eroded away.
        let mut s = Array2::from_elem((6, 6), 1.0f32);
        s[[2, 3]] = 0.0;
        let sp = split_by_saliency(s.view(), 6, 6);
        assert!(sp.fallback);
        assert_eq!(sp.fg_count(), 8); // ⌈36/5⌉
        assert!(sp.bg[2 * 6 + 3], "the low patch ranks lowest");
    }

    fn blob_grid(h: usize, w: usize) -> PatchGrid {
        let dim = 8;
        let mut rng = ovdiff_core::rng::SplitMix64::new(5);
        let features = Array2::from_shape_fn((h * w, dim), |(i, j)| {
            let (y, x) = (i / w, i % w);
            let inside = (3..7).contains(&y) && (4..9).contains(&x);
            let base = if inside { j == 0 } else { j == 1 } as u8 as f32;
            base + 0.1 * (rng.next_f64() as f32 - 0.5)
        });
        let mut features = features;
        ovdiff_core::grid::l2_normalize_rows(&mut features);
        PatchGrid { h, w, features }
    }

    #[test]
    fn feature_split_picks_centre_blob() {
        let grid = blob_grid(10, 12);
        for seed in [0, 1, 2, 3] {
            let sp = split_by_features(&grid, seed);
            assert!(!sp.fallback);
            for i in 0..grid.len() {
                let (y, x) = (i / 12, i % 12);
                let inside = (3..7).contains(&y) && (4..9).contains(&x);
                assert_eq!(sp.fg[i], inside, "patch ({y},{x}) seed {seed}");
            }
            // Background eroded: the ring around the blob is dropped.
            assert!(!sp.bg[2 * 12 + 5]);
            assert!(sp.bg[0]);
            assert_eq!(sp, split_by_features(&grid, seed));
        }
    }

    #[test]
    fn feature_split_on_uniform_tokens_falls_back() {
        let features = Array2::from_shape_fn((25, 4), |(_, j)| if j == 0 { 1.0f32 } else { 0.0 });
        let grid = PatchGrid {
            h: 5,
            w: 5,
            features,
        };
        let sp = split_by_features(&grid, 0);
        assert!(sp.fallback);
        assert!(sp.fg[12]);
        assert_eq!(sp.fg_count(), 5);
    }
}
