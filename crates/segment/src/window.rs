//! Sliding-window layout: which crops of the working image are encoded, and the sizes they are encoded at.
//!
//! OVDiff segments an image by encoding overlapping crops and averaging their
//! per-pixel scores (`predict.py` in karazijal/sdov: `--crops 448,336`,
//! `--strides 224,224`, plus the whole image). The rules here are those of
//! the reference, with two documented differences:
//!
//! * identical windows are kept once (the reference encodes, say, the whole
//!   448×448 image twice: once as a 448 crop and once as "the whole image",
//!   which counts it double in the average);
//! * [`resize_short_side`] rounds the long side and caps extreme aspect
//!   ratios.

use ovdiff_models::features::preprocess::MAX_ASPECT_STRETCH;

/// A rectangle of the working image, in pixels: columns `x..x + w`, rows
/// `y..y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels (at least 1).
    pub w: u32,
    /// Height in pixels (at least 1).
    pub h: u32,
}

impl Window {
    /// The window covering a whole `w`×`h` image.
    pub fn whole(w: u32, h: u32) -> Window {
        Window { x: 0, y: 0, w, h }
    }

    /// Whether pixel (`px`, `py`) lies inside the window.
    pub fn contains(&self, px: u32, py: u32) -> bool {
        px >= self.x && py >= self.y && px - self.x < self.w && py - self.y < self.h
    }

    /// One past the right-most column.
    pub fn right(&self) -> u32 {
        self.x + self.w
    }

    /// One past the bottom row.
    pub fn bottom(&self) -> u32 {
        self.y + self.h
    }
}

/// Start offsets of windows of length `size` along a side of length `len`
/// with the given stride: `0, stride, 2·stride, …`, the last one moved back
/// so that it ends flush with the side. `size` must be `1..=len`.
fn starts(len: u32, size: u32, stride: u32) -> impl Iterator<Item = u32> {
    let span = len - size;
    let n = span.div_ceil(stride) + 1;
    (0..n).map(move |i| (i * stride).min(span))
}

/// The windows to encode for a `img_w`×`img_h` working image.
///
/// Rules (after `predict.py` of karazijal/sdov, the crop loop of `main`):
///
/// * for each size `s` in `sizes` (in order), square windows `s`×`s` slide
///   over the image with step `stride`, row by row; along each axis the
///   starts are `0, stride, 2·stride, …` and the last window is moved back
///   to end flush with the right (bottom) edge, so every pixel is covered;
/// * a size larger than an image side is clamped to that side on that axis
///   only (a 448 window on a 600×300 image is 448×300), exactly like the
///   reference's `min`/`max` clamping; a size of 0 is skipped;
/// * with `include_whole`, the whole image is added last;
/// * identical windows are kept once, at their first position in that order.
///
/// A `stride` of 0 is treated as 1. An image with a zero side has no windows.
pub fn layout(
    img_w: u32,
    img_h: u32,
    sizes: &[u32],
    stride: u32,
    include_whole: bool,
) -> Vec<Window> {
    if img_w == 0 || img_h == 0 {
        return Vec::new();
    }
    let stride = stride.max(1);
    let mut out: Vec<Window> = Vec::new();
    let mut push = |win: Window| {
        if !out.contains(&win) {
            out.push(win);
        }
    };
    for &size in sizes.iter().filter(|&&s| s > 0) {
        let (sw, sh) = (size.min(img_w), size.min(img_h));
        for y in starts(img_h, sh, stride) {
            for x in starts(img_w, sw, stride) {
                push(Window { x, y, w: sw, h: sh });
            }
        }
    }
    if include_whole {
        push(Window::whole(img_w, img_h));
    }
    out
}

/// The working size of a `w`×`h` image: scaled so the short side is
/// `target`, the long side rounded to the nearest pixel (the reference
/// resizes with `TF.resize(size=448)`, which truncates instead).
///
/// Small images are scaled up, as in the reference. The long side is capped
/// at [`MAX_ASPECT_STRETCH`]` × target` (the short side then shrinks in
/// proportion, to at least 1), so a 10000×10 strip does not become
/// 448000×448. A zero side or target is treated as 1.
pub fn resize_short_side(w: u32, h: u32, target: u32) -> (u32, u32) {
    let (w, h, t) = (w.max(1) as f64, h.max(1) as f64, target.max(1) as f64);
    let s = t / w.min(h);
    let (mut tw, mut th) = (w * s, h * s);
    let cap = t * MAX_ASPECT_STRETCH as f64;
    let long = tw.max(th);
    if long > cap {
        tw *= cap / long;
        th *= cap / long;
    }
    let r = |v: f64| (v.round() as u32).max(1);
    (r(tw), r(th))
}

/// The size a `w`×`h` crop is resized to before encoding: each side rounded
/// to the nearest multiple of `patch` (halves round up), at least one patch.
pub fn round_to_patches(w: u32, h: u32, patch: u32) -> (u32, u32) {
    let p = patch.max(1);
    let r = |v: u32| ((v + p / 2) / p).max(1) * p;
    (r(w), r(h))
}

/// Which windows a query encodes: the working size and the sliding
/// windows over it. [`WindowLayout::ovdiff`] (the default) is the
/// reference's; other layouts trade accuracy for time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowLayout {
    /// The working size's short side ([`resize_short_side`]).
    pub short_side: u32,
    /// Sliding-window sizes at the working size, in order.
    pub sizes: Vec<u32>,
    /// Sliding-window stride.
    pub stride: u32,
    /// Also encode the whole working image.
    pub include_whole: bool,
}

impl WindowLayout {
    /// OVDiff's layout (`predict.py`: `--crops 448,336`, `--strides
    /// 224,224`, plus the whole image) at a 448 short side.
    pub fn ovdiff() -> WindowLayout {
        WindowLayout {
            short_side: 448,
            sizes: vec![448, 336],
            stride: 224,
            include_whole: true,
        }
    }

    /// The working size of a `w`×`h` image ([`resize_short_side`]).
    pub fn working_size(&self, w: u32, h: u32) -> (u32, u32) {
        resize_short_side(w, h, self.short_side)
    }

    /// The windows of a working image of `w`×`h` ([`layout`]).
    pub fn windows(&self, w: u32, h: u32) -> Vec<Window> {
        layout(w, h, &self.sizes, self.stride, self.include_whole)
    }
}

/// Named window layouts: speed against accuracy (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WindowPreset {
    /// OVDiff's windows ([`WindowLayout::ovdiff`]): the whole image, the
    /// 448 and the 336 windows (9 forward passes on a 4:3 image).
    #[default]
    Accurate,
    /// The whole image and the 448 windows (3 on a 4:3 image).
    Balanced,
    /// The whole image only: one forward pass.
    Fast,
}

impl WindowPreset {
    /// Every preset, slowest first.
    pub const ALL: [WindowPreset; 3] = [
        WindowPreset::Accurate,
        WindowPreset::Balanced,
        WindowPreset::Fast,
    ];

    /// The preset's layout.
    pub fn layout(self) -> WindowLayout {
        let ovdiff = WindowLayout::ovdiff();
        match self {
            WindowPreset::Accurate => ovdiff,
            WindowPreset::Balanced => WindowLayout {
                sizes: vec![448],
                ..ovdiff
            },
            WindowPreset::Fast => WindowLayout {
                sizes: Vec::new(),
                ..ovdiff
            },
        }
    }

    /// Its name: `accurate`, `balanced` or `fast`.
    pub fn name(self) -> &'static str {
        match self {
            WindowPreset::Accurate => "accurate",
            WindowPreset::Balanced => "balanced",
            WindowPreset::Fast => "fast",
        }
    }

    /// The preset whose layout `layout` is, if any.
    pub fn of(layout: &WindowLayout) -> Option<WindowPreset> {
        WindowPreset::ALL
            .into_iter()
            .find(|p| p.layout() == *layout)
    }
}

impl std::str::FromStr for WindowPreset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WindowPreset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?} is not a window preset: use accurate, balanced or fast"))
    }
}

impl Default for WindowLayout {
    fn default() -> Self {
        WindowLayout::ovdiff()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_name_their_layouts() {
        // a 4:3 image at the working size 597×448
        let count = |p: WindowPreset| p.layout().windows(597, 448).len();
        assert_eq!(
            count(WindowPreset::Accurate),
            WindowLayout::ovdiff().windows(597, 448).len()
        );
        assert_eq!(count(WindowPreset::Fast), 1);
        assert!(count(WindowPreset::Balanced) > 1);
        assert!(count(WindowPreset::Balanced) < count(WindowPreset::Accurate));
        for p in WindowPreset::ALL {
            assert_eq!(p.name().parse::<WindowPreset>(), Ok(p));
            assert_eq!(WindowPreset::of(&p.layout()), Some(p));
        }
        assert!("quick"
            .parse::<WindowPreset>()
            .unwrap_err()
            .contains("accurate, balanced or fast"));
        assert_eq!(WindowPreset::default().layout(), WindowLayout::default());
    }

    fn coverage(w: u32, h: u32, wins: &[Window]) -> Vec<u32> {
        let mut c = vec![0u32; (w * h) as usize];
        for win in wins {
            assert!(
                win.right() <= w && win.bottom() <= h,
                "{win:?} outside {w}×{h}"
            );
            assert!(win.w > 0 && win.h > 0);
            for y in win.y..win.bottom() {
                for x in win.x..win.right() {
                    c[(y * w + x) as usize] += 1;
                }
            }
        }
        c
    }

    #[test]
    fn windows_cover_the_image_and_end_flush() {
        for &(w, h) in &[
            (597, 448),
            (448, 448),
            (448, 1000),
            (1792, 448),
            (300, 200),
            (449, 450),
        ] {
            for &whole in &[false, true] {
                let wins = layout(w, h, &[448, 336], 224, whole);
                let c = coverage(w, h, &wins);
                assert!(c.iter().all(|&n| n >= 1), "{w}×{h} not covered");
                // every size reaches the right and bottom edges
                for size in [448u32, 336] {
                    let (sw, sh) = (size.min(w), size.min(h));
                    let of_size: Vec<_> = wins.iter().filter(|v| v.w == sw && v.h == sh).collect();
                    assert!(of_size.iter().any(|v| v.right() == w));
                    assert!(of_size.iter().any(|v| v.bottom() == h));
                }
                let mut dedup = wins.clone();
                dedup.sort();
                dedup.dedup();
                assert_eq!(dedup.len(), wins.len(), "duplicates in {wins:?}");
                if whole {
                    assert!(wins.contains(&Window::whole(w, h)));
                }
            }
        }
    }

    #[test]
    fn layout_matches_the_reference_loop() {
        // 597×448: 448 windows at x = 0, 149; 336 windows at x = 0, 224, 261 and y = 0, 112.
        let wins = layout(597, 448, &[448, 336], 224, true);
        let expect = vec![
            Window {
                x: 0,
                y: 0,
                w: 448,
                h: 448,
            },
            Window {
                x: 149,
                y: 0,
                w: 448,
                h: 448,
            },
            Window {
                x: 0,
                y: 0,
                w: 336,
                h: 336,
            },
            Window {
                x: 224,
                y: 0,
                w: 336,
                h: 336,
            },
            Window {
                x: 261,
                y: 0,
                w: 336,
                h: 336,
            },
            Window {
                x: 0,
                y: 112,
                w: 336,
                h: 336,
            },
            Window {
                x: 224,
                y: 112,
                w: 336,
                h: 336,
            },
            Window {
                x: 261,
                y: 112,
                w: 336,
                h: 336,
            },
            Window::whole(597, 448),
        ];
        assert_eq!(wins, expect);
        // a 448×448 image: the 448 window is the whole image, kept once
        let wins = layout(448, 448, &[448, 336], 224, true);
        assert_eq!(wins.len(), 1 + 4);
        assert_eq!(wins[0], Window::whole(448, 448));
        // sizes larger than a side are clamped on that axis only
        let wins = layout(600, 300, &[448], 224, false);
        assert_eq!(
            wins,
            vec![
                Window {
                    x: 0,
                    y: 0,
                    w: 448,
                    h: 300
                },
                Window {
                    x: 152,
                    y: 0,
                    w: 448,
                    h: 300
                }
            ]
        );
        assert!(layout(0, 10, &[448], 224, true).is_empty());
        assert_eq!(layout(10, 10, &[0], 0, true), vec![Window::whole(10, 10)]);
    }

    #[test]
    fn short_side_and_patch_rounding() {
        assert_eq!(resize_short_side(640, 480, 448), (597, 448));
        assert_eq!(resize_short_side(480, 640, 448), (448, 597));
        assert_eq!(resize_short_side(100, 100, 448), (448, 448));
        let (w, h) = resize_short_side(10000, 10, 448);
        assert_eq!(w, 448 * MAX_ASPECT_STRETCH);
        assert!((1..448).contains(&h));
        assert_eq!(round_to_patches(448, 336, 14), (448, 336));
        assert_eq!(round_to_patches(597, 448, 14), (602, 448));
        assert_eq!(round_to_patches(3, 20, 14), (14, 14));
        assert_eq!(round_to_patches(21, 20, 14), (28, 14));
        assert!(Window {
            x: 2,
            y: 3,
            w: 4,
            h: 5
        }
        .contains(5, 7));
        assert!(!Window {
            x: 2,
            y: 3,
            w: 4,
            h: 5
        }
        .contains(6, 7));
    }

    #[test]
    fn the_default_layout_is_ovdiffs() {
        let l = WindowLayout::default();
        assert_eq!(l, WindowLayout::ovdiff());
        assert_eq!(l.working_size(640, 480), (597, 448));
        assert_eq!(
            l.windows(597, 448),
            layout(597, 448, &[448, 336], 224, true)
        );
    }
}
