//! Overlays of a label map on its image, with a legend of the classes present.

use image::{Rgb, RgbImage};

use super::labels::{display_color, label_name, BACKGROUND};
use crate::font;

/// How much background pixels are darkened in [`overlay`] (1 = unchanged).
const BACKGROUND_KEEP: f32 = 0.8;

/// The colours of labels `0..=max`, for drawing a whole map.
fn colour_table(labels: &[u16]) -> Vec<[u8; 3]> {
    let max = labels.iter().copied().max().unwrap_or(0);
    (0..=max).map(display_color).collect()
}

/// The text scale used for legends and outline widths on a `w`×`h` image:
/// 1 below 600 pixels on the long side, 2 from 600, 3 from 1200, and so on.
pub fn legend_scale(w: u32, h: u32) -> u32 {
    1 + w.max(h) / 600
}

/// Mix `base` towards `over` by `t` (0 = `base`, 1 = `over`).
pub(super) fn blend(base: Rgb<u8>, over: [u8; 3], t: f32) -> Rgb<u8> {
    let mut o = [0u8; 3];
    for c in 0..3 {
        o[c] = (base.0[c] as f32 * (1.0 - t) + over[c] as f32 * t).round() as u8;
    }
    Rgb(o)
}

/// Scale `px` by `k` (darken for `k < 1`).
pub(super) fn shade(px: Rgb<u8>, k: f32) -> Rgb<u8> {
    blend(px, [0, 0, 0], 1.0 - k)
}

/// A colour that stands out as a thin line: the label's display colour,
/// lightened when it is too dark to see over a dimmed photo.
pub(super) fn line_color(label: u16) -> Rgb<u8> {
    let c = display_color(label);
    let luma = 0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32;
    if luma < 110.0 {
        blend(Rgb(c), [255, 255, 255], 0.45)
    } else {
        Rgb(c)
    }
}

/// For each pixel of a `w`×`h` grid of keys: does a pixel within `t` steps
/// left, right, up or down have another key? With `border`, stepping off
/// the grid counts as another key.
pub(super) fn edges<K: Copy + PartialEq>(
    keys: &[K],
    w: u32,
    h: u32,
    t: u32,
    border: bool,
) -> Vec<bool> {
    let (w, h, t) = (w as i64, h as i64, t.max(1) as i64);
    let mut out = vec![false; keys.len()];
    for y in 0..h {
        for x in 0..w {
            let k = keys[(y * w + x) as usize];
            let differs = |nx: i64, ny: i64| {
                if nx < 0 || ny < 0 || nx >= w || ny >= h {
                    border
                } else {
                    keys[(ny * w + nx) as usize] != k
                }
            };
            out[(y * w + x) as usize] = (1..=t).any(|d| {
                differs(x - d, y) || differs(x + d, y) || differs(x, y - d) || differs(x, y + d)
            });
        }
    }
    out
}

/// Fill a rectangle (clipped to the image) with `color` mixed in at `t`.
pub(super) fn fill_rect(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    w: u32,
    h: u32,
    color: [u8; 3],
    t: f32,
) {
    let x0 = x.max(0) as u32;
    let y0 = y.max(0) as u32;
    let x1 = ((x + w as i64).max(0) as u32).min(img.width());
    let y1 = ((y + h as i64).max(0) as u32).min(img.height());
    for yy in y0..y1 {
        for xx in x0..x1 {
            let p = *img.get_pixel(xx, yy);
            img.put_pixel(xx, yy, blend(p, color, t));
        }
    }
}

/// Draw a rectangle's outline, `t` pixels thick, inside its bounds.
pub(super) fn stroke_rect(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    w: u32,
    h: u32,
    t: u32,
    color: [u8; 3],
) {
    let t = t.min(w).min(h);
    fill_rect(img, x, y, w, t, color, 1.0);
    fill_rect(img, x, y + (h - t) as i64, w, t, color, 1.0);
    fill_rect(img, x, y, t, h, color, 1.0);
    fill_rect(img, x + (w - t) as i64, y, t, h, color, 1.0);
}

/// The legend's sizes at text scale `s`: padding, swatch, gap between
/// swatch and text, row height and margin to the image's edge.
struct LegendMetrics {
    pad: u32,
    swatch: u32,
    gap: u32,
    row_h: u32,
    margin: u32,
    text_h: u32,
}

impl LegendMetrics {
    fn at(scale: u32) -> LegendMetrics {
        let s = scale.max(1);
        LegendMetrics {
            pad: 4 * s,
            swatch: 7 * s,
            gap: 4 * s,
            row_h: font::LINE_HEIGHT * s,
            margin: 4 * s,
            text_h: font::text_height(s),
        }
    }

    /// How many rows fit in an image `h` pixels high (at least 2).
    fn rows_fitting(&self, h: u32) -> usize {
        let room = h.saturating_sub(2 * self.margin + 2 * self.pad) + self.row_h - self.text_h;
        ((room / self.row_h) as usize).max(2)
    }
}

/// The legend's entries: background, then the labels present in `labels`,
/// ascending. When more than `max_rows` would be listed, the labels with
/// the most pixels are kept (still in label order) and a last row says how
/// many are not shown. `None` marks that text-only row.
fn legend_entries(
    labels: &[u16],
    class_names: &[String],
    max_rows: usize,
) -> Vec<(Option<u16>, String)> {
    let max = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut counts = vec![0u64; max + 1];
    for &l in labels {
        counts[l as usize] += 1;
    }
    let mut present: Vec<u16> = (1..=max)
        .filter(|&l| counts[l] > 0)
        .map(|l| l as u16)
        .collect();
    let max_rows = max_rows.max(2);
    let hidden = present.len().saturating_sub(max_rows - 1);
    if hidden > 0 {
        // background + the largest classes + one "more" row
        let keep = max_rows - 2;
        present.sort_by_key(|&l| (std::cmp::Reverse(counts[l as usize]), l));
        present.truncate(keep);
        present.sort_unstable();
    }
    let hidden = hidden + usize::from(hidden > 0);
    let mut out: Vec<(Option<u16>, String)> = std::iter::once(BACKGROUND)
        .chain(present)
        .map(|l| (Some(l), label_name(l, class_names)))
        .collect();
    if hidden > 0 {
        out.push((
            None,
            format!("+{hidden} more classes (see the JSON report)"),
        ));
    }
    out
}

/// Draw a legend (swatch + name per entry; text only for `None`) in the
/// image corner that hides the fewest labelled pixels, on a semi-opaque
/// dark backing.
fn draw_legend(img: &mut RgbImage, labels: &[u16], entries: &[(Option<u16>, String)], scale: u32) {
    let (w, h) = img.dimensions();
    let s = scale.max(1);
    let LegendMetrics {
        pad,
        swatch,
        gap,
        row_h,
        margin,
        text_h,
    } = LegendMetrics::at(s);
    let max_text = w.saturating_sub(2 * margin + 2 * pad + swatch + gap);
    let names: Vec<String> = entries
        .iter()
        .map(|(_, n)| font::fit_text(n, s, max_text))
        .collect();
    let text_w = names
        .iter()
        .map(|n| font::text_width(n, s))
        .max()
        .unwrap_or(0);
    let box_w = 2 * pad + swatch + gap + text_w;
    let box_h = 2 * pad + entries.len() as u32 * row_h - (row_h - text_h);

    // Pick the corner whose box covers the fewest labelled pixels.
    let right = w.saturating_sub(box_w + margin) as i64;
    let bottom = h.saturating_sub(box_h + margin) as i64;
    let m = margin as i64;
    let corners = [(m, m), (right, m), (m, bottom), (right, bottom)];
    let covered = |(cx, cy): (i64, i64)| {
        let mut n = 0usize;
        for y in cy.max(0) as u32..(cy as u32 + box_h).min(h) {
            let row = &labels[(y * w) as usize..((y + 1) * w) as usize];
            let x0 = (cx.max(0) as u32).min(w) as usize;
            let x1 = (cx as u32 + box_w).min(w) as usize;
            n += row[x0..x1].iter().filter(|&&l| l != BACKGROUND).count();
        }
        n
    };
    let (bx, by) = corners
        .iter()
        .copied()
        .min_by_key(|&c| covered(c))
        .unwrap_or((m, m));

    fill_rect(img, bx, by, box_w, box_h, [0, 0, 0], 0.65);
    stroke_rect(img, bx, by, box_w, box_h, 1, [110, 110, 110]);
    for (i, ((label, _), name)) in entries.iter().zip(&names).enumerate() {
        let y = by + (pad + i as u32 * row_h) as i64;
        let x = bx + pad as i64;
        if let Some(label) = label {
            fill_rect(img, x, y, swatch, swatch, display_color(*label), 1.0);
            stroke_rect(img, x, y, swatch, swatch, 1, [200, 200, 200]);
        }
        font::draw_text(
            img,
            (x + (swatch + gap) as i64) as i32,
            y as i32,
            name,
            Rgb([240, 240, 240]),
            s,
        );
    }
}

/// An overlay of a label map on its image: each labelled pixel's display colour
/// blended over the photo at `alpha` (0..=1), background slightly darkened,
/// region boundaries outlined in the class colour, and a legend (background
/// plus every label present) in the least crowded corner. Text and outline
/// widths grow with the image ([`legend_scale`]).
///
/// # Panics
/// If `labels.len()` is not `img.width() * img.height()`.
pub fn overlay(img: &RgbImage, labels: &[u16], class_names: &[String], alpha: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    assert_eq!(
        labels.len(),
        w as usize * h as usize,
        "label map does not match the {w}×{h} image"
    );
    let alpha = if alpha.is_nan() {
        0.5
    } else {
        alpha.clamp(0.0, 1.0)
    };
    let scale = legend_scale(w, h);
    let mut out = img.clone();
    let colours = colour_table(labels);
    for (p, &l) in out.pixels_mut().zip(labels) {
        *p = if l == BACKGROUND {
            shade(*p, BACKGROUND_KEEP)
        } else {
            blend(*p, colours[l as usize], alpha)
        };
    }
    let edge = edges(labels, w, h, scale, false);
    for ((p, &l), &e) in out.pixels_mut().zip(labels).zip(&edge) {
        if e && l != BACKGROUND {
            *p = line_color(l);
        }
    }
    let entries = legend_entries(
        labels,
        class_names,
        LegendMetrics::at(scale).rows_fitting(h),
    );
    draw_legend(&mut out, labels, &entries, scale);
    out
}

#[cfg(test)]
mod tests {
    use super::super::labels::display_color;
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn overlay_colours_outlines_and_legend() {
        let (img, labels) = test_scene();
        let out = overlay(&img, &labels, &names(&["cat", "dog"]), 0.5);
        assert_eq!(out.dimensions(), img.dimensions());
        // Inside the region: the blend of photo and the dog colour.
        assert_eq!(
            out.get_pixel(85, 50).0,
            blend(Rgb([100, 150, 200]), display_color(2), 0.5).0
        );
        // On the region's edge: the line colour.
        assert_eq!(*out.get_pixel(60, 50), line_color(2));
        assert_eq!(*out.get_pixel(85, 69), line_color(2));
        // Away from region and legend: darkened background.
        assert_eq!(
            *out.get_pixel(30, 75),
            shade(Rgb([100, 150, 200]), BACKGROUND_KEEP)
        );
        // The legend is in the top-left (empty) corner: dark backing with
        // light text somewhere inside.
        let backing = out.get_pixel(5, 5).0;
        assert!(backing.iter().all(|&c| c < 90), "{backing:?}");
        let light = (4..40)
            .flat_map(|y| (4..60).map(move |x| (x, y)))
            .filter(|&(x, y)| out.get_pixel(x, y).0.iter().all(|&c| c > 200))
            .count();
        assert!(light > 20);
        // Alpha 0 leaves labelled pixels (off the outline) unchanged.
        let out0 = overlay(&img, &labels, &names(&["cat", "dog"]), 0.0);
        assert_eq!(out0.get_pixel(85, 50).0, [100, 150, 200]);
    }

    #[test]
    fn overlay_legend_avoids_the_labelled_corner() {
        let (img, mut labels) = test_scene();
        // Fill the top-left corner instead; the legend must move.
        labels.iter_mut().for_each(|l| *l = 0);
        for y in 0..40 {
            for x in 0..60 {
                labels[(y * 120 + x) as usize] = 1;
            }
        }
        let out = overlay(&img, &labels, &names(&["cat"]), 0.5);
        let cat = blend(Rgb([100, 150, 200]), display_color(1), 0.5);
        assert_eq!(*out.get_pixel(20, 20), cat);
        // The legend went to another corner: one of them has its dark
        // backing.
        let (w, h) = out.dimensions();
        let dark = [(w - 6, 5), (5, h - 6), (w - 6, h - 6)]
            .iter()
            .filter(|&&(x, y)| out.get_pixel(x, y).0.iter().all(|&c| c < 90))
            .count();
        assert_eq!(dark, 1, "the legend is in one free corner");
    }

    #[test]
    fn legend_lists_the_largest_classes_when_all_do_not_fit() {
        // 300 classes on a 400×120 image, label l on l pixels: only a few
        // rows fit in 120 pixels.
        let (w, h) = (400u32, 120u32);
        let n = 300usize;
        let names: Vec<String> = (1..=n).map(|i| format!("class {i}")).collect();
        let mut labels = vec![0u16; (w * h) as usize];
        let mut at = 0;
        for l in (1..=n as u16).rev() {
            // higher labels get more pixels
            for _ in 0..l {
                labels[at] = l;
                at += 1;
            }
        }
        let rows = LegendMetrics::at(1).rows_fitting(h);
        assert!(rows < n, "{rows}");
        let entries = legend_entries(&labels, &names, rows);
        assert_eq!(entries.len(), rows);
        assert_eq!(entries[0], (Some(0), "background".to_string()));
        let shown: Vec<u16> = entries.iter().filter_map(|e| e.0).skip(1).collect();
        // The largest classes, in label order.
        let want: Vec<u16> = ((n - (rows - 2) + 1) as u16..=n as u16).collect();
        assert_eq!(shown, want);
        let more = &entries.last().unwrap();
        assert_eq!(more.0, None);
        assert_eq!(
            more.1,
            format!("+{} more classes (see the JSON report)", n - (rows - 2))
        );
        // Everything fits when the image is tall enough: no "more" row.
        let all = legend_entries(&labels, &names, n + 1);
        assert_eq!(all.len(), n + 1);
        assert!(all.iter().all(|e| e.0.is_some()));
        // The overlay draws it without panicking and keeps the image size;
        // a label above 255 is drawn in its own colour.
        let img = RgbImage::from_pixel(w, h, Rgb([100, 150, 200]));
        let out = overlay(&img, &labels, &names, 1.0);
        assert_eq!(out.dimensions(), (w, h));
        let x = (w - 1) as usize;
        let mut wide = vec![0u16; (w * h) as usize];
        wide[x + 60 * w as usize] = 299; // one pixel, far from the legend
        let out = overlay(&img, &wide, &names, 1.0);
        assert_eq!(out.get_pixel(w - 1, 60).0, line_color(299).0);
    }

    #[test]
    #[should_panic(expected = "label map does not match")]
    fn overlay_checks_sizes() {
        let img = RgbImage::new(4, 4);
        overlay(&img, &[0; 3], &[], 0.5);
    }
}
