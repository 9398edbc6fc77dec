//! Segmentation results as images: VOC-palette label PNGs, overlays with a legend, and the `--explain` contact sheet.
//!
//! A *label map* is a row-major `&[u16]` of `width × height` entries: `0` is
//! background ([`BACKGROUND`]), `1..=K` are the classes in the order of the
//! `class_names` slice that goes with it. Label `i` is drawn in colour
//! [`label_color`]`(i)` everywhere (PNG palette, overlay, legend, sheet):
//! VOC's colour map, so the pictures agree with VOC's own
//! `SegmentationClass` PNGs, extended past 255 by the same bit rule.
//!
//! Label PNGs are 8-bit palette images when a query has at most
//! [`MAX_PALETTE_CLASSES`] classes (VOC's format), and 16-bit greyscale
//! images above that ([`LabelDepth`]). Ground-truth maps read by
//! [`read_label_png`] are 8-bit, where [`VOID`] (255) marks pixels to
//! ignore.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::error::{DecodingError, EncodingError, ImageFormatHint};
use image::{imageops::FilterType, ImageError, ImageFormat, Rgb, RgbImage};

use ovdiff_core::atomic::write_atomic;
use ovdiff_models::features::preprocess::MAX_PIXELS;

use crate::font;
use crate::{Error, Result};

/// The label of background pixels.
pub const BACKGROUND: u16 = 0;

/// Most classes a query may have for its label PNG to be an 8-bit palette
/// image: labels `0..=254`, with 255 left to VOC's "void".
pub const MAX_PALETTE_CLASSES: usize = 254;

/// How a query's label PNG stores its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelDepth {
    /// An 8-bit indexed PNG with the VOC palette (at most
    /// [`MAX_PALETTE_CLASSES`] classes).
    Palette8,
    /// A 16-bit greyscale PNG whose values are the labels (more classes).
    Grey16,
}

impl LabelDepth {
    /// The depth for a query of `classes` classes (background not counted).
    /// It depends only on the query, never on which labels an image shows,
    /// so every image of one run has the same format.
    pub fn for_classes(classes: usize) -> LabelDepth {
        if classes <= MAX_PALETTE_CLASSES {
            LabelDepth::Palette8
        } else {
            LabelDepth::Grey16
        }
    }

    /// Its name in JSON reports: `palette8` or `grey16`.
    pub fn name(self) -> &'static str {
        match self {
            LabelDepth::Palette8 => "palette8",
            LabelDepth::Grey16 => "grey16",
        }
    }
}

/// The label of pixels to ignore in 8-bit ground truth (VOC's object
/// boundaries and "difficult" regions).
pub const VOID: u8 = 255;

/// How much background pixels are darkened in [`overlay`] (1 = unchanged).
const BACKGROUND_KEEP: f32 = 0.8;

/// The standard PASCAL VOC colour map: label `i` gets the colour whose
/// channel bits are the interleaved bits of `i` (bit 0 → red, bit 1 →
/// green, bit 2 → blue, most significant first).
///
/// `0` is black, `1` (aeroplane) `(128, 0, 0)`, `15` (person)
/// `(192, 128, 128)`, `255` (void) `(224, 224, 192)`.
pub const fn voc_palette() -> [[u8; 3]; 256] {
    let mut p = [[0u8; 3]; 256];
    let mut i = 0;
    while i < 256 {
        p[i] = voc_color(i as u16);
        i += 1;
    }
    p
}

/// VOC's colour rule for any 16-bit label: the bits of `label`, three at a
/// time, fill the channels from their most significant bit down (bit 0 →
/// red, bit 1 → green, bit 2 → blue). It is the palette's entry for labels
/// below 256; above, every label still gets its own colour, because the 16
/// label bits land on 16 distinct colour bits.
pub const fn voc_color(label: u16) -> [u8; 3] {
    let mut c = label as u32;
    let mut rgb = [0u8; 3];
    let mut j = 0;
    while j < 8 {
        rgb[0] |= ((c & 1) as u8) << (7 - j);
        rgb[1] |= (((c >> 1) & 1) as u8) << (7 - j);
        rgb[2] |= (((c >> 2) & 1) as u8) << (7 - j);
        c >>= 3;
        j += 1;
    }
    rgb
}

/// The palette, computed once at compile time.
const PALETTE: [[u8; 3]; 256] = voc_palette();

/// The colour of a label ([`voc_color`]; its [`voc_palette`] entry below 256).
pub fn label_color(label: u16) -> Rgb<u8> {
    Rgb(voc_color(label))
}

/// The colours of labels `0..=max`, for drawing a whole map.
fn colour_table(labels: &[u16]) -> Vec<[u8; 3]> {
    let max = labels.iter().copied().max().unwrap_or(0);
    (0..=max).map(voc_color).collect()
}

/// The name shown for a label: `background`, the class name, `void` for
/// [`VOID`] when `class_names` has fewer classes, or `label N` for another
/// label that `class_names` does not cover.
pub fn label_name(label: u16, class_names: &[String]) -> String {
    match label {
        BACKGROUND => "background".to_string(),
        l if (l as usize) <= class_names.len() => class_names[l as usize - 1].clone(),
        l if l == u16::from(VOID) => "void".to_string(),
        l => format!("label {l}"),
    }
}

/// The text scale used for legends and outline widths on a `w`×`h` image:
/// 1 below 600 pixels on the long side, 2 from 600, 3 from 1200, and so on.
pub fn legend_scale(w: u32, h: u32) -> u32 {
    1 + w.max(h) / 600
}

fn check_size(what: &str, w: u32, h: u32, len: usize) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::Invalid(format!("{what}: empty label map ({w}×{h})")));
    }
    let want = w as u64 * h as u64;
    if len as u64 != want {
        return Err(Error::DimensionMismatch {
            what: what.to_string(),
            expected: format!("{want} labels ({w}×{h})"),
            found: format!("{len}"),
        });
    }
    Ok(())
}

fn png_encode_error(path: &Path, e: png::EncodingError) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        problem: "cannot encode the PNG".into(),
        source: Some(
            ImageError::Encoding(EncodingError::new(
                ImageFormatHint::Exact(ImageFormat::Png),
                e,
            ))
            .into(),
        ),
    }
}

/// Write a label map as a PNG, atomically.
///
/// - [`LabelDepth::Palette8`]: an 8-bit indexed PNG with the VOC palette,
///   like VOC's `SegmentationClass` files: viewers show the class colours,
///   and readers that keep the palette indices (PIL's `P` mode,
///   [`read_label_png`]) get the labels back. A label over 255 is an
///   error (255 is VOC's "void", which `segment` never writes).
/// - [`LabelDepth::Grey16`]: a 16-bit greyscale PNG whose values are the
///   labels (PIL's `I;16`, numpy `uint16`); viewers show it nearly black,
///   so look at the overlay.
///
/// `labels` holds `w × h` labels, row-major.
pub fn write_label_png(
    path: &Path,
    w: u32,
    h: u32,
    labels: &[u16],
    depth: LabelDepth,
) -> Result<()> {
    check_size(
        &format!("label map for {}", path.display()),
        w,
        h,
        labels.len(),
    )?;
    let data: Vec<u8> = match depth {
        LabelDepth::Palette8 => labels
            .iter()
            .map(|&l| {
                u8::try_from(l).map_err(|_| {
                    Error::Invalid(format!(
                        "{}: label {l} does not fit an 8-bit palette label map \
                         (at most {MAX_PALETTE_CLASSES} classes; use 16 bits)",
                        path.display()
                    ))
                })
            })
            .collect::<Result<_>>()?,
        LabelDepth::Grey16 => labels.iter().flat_map(|l| l.to_be_bytes()).collect(),
    };
    let mut bytes = Vec::with_capacity(data.len() / 8 + 1024);
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        match depth {
            LabelDepth::Palette8 => {
                enc.set_color(png::ColorType::Indexed);
                enc.set_depth(png::BitDepth::Eight);
                enc.set_palette(PALETTE.concat());
            }
            LabelDepth::Grey16 => {
                enc.set_color(png::ColorType::Grayscale);
                enc.set_depth(png::BitDepth::Sixteen);
            }
        }
        enc.set_compression(png::Compression::Balanced);
        let mut writer = enc.write_header().map_err(|e| png_encode_error(path, e))?;
        writer
            .write_image_data(&data)
            .map_err(|e| png_encode_error(path, e))?;
        writer.finish().map_err(|e| png_encode_error(path, e))?;
    }
    write_atomic(path, &bytes)
}

/// Save an RGB image (an overlay or an explain sheet) as a PNG, atomically.
pub fn write_rgb_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            problem: "cannot encode the PNG".into(),
            source: Some(e.into()),
        })?;
    write_atomic(path, &bytes)
}

/// Read a label map PNG: returns `(width, height, labels)`.
///
/// Palette PNGs (VOC `SegmentationClass`, [`write_label_png`]) give their
/// palette *indices*, at any bit depth, whatever the palette's colours;
/// 8-bit greyscale PNGs give their grey values. RGB(A) PNGs are accepted
/// only when every pixel is an opaque VOC palette colour (a colour label
/// map saved by a tool that dropped the palette), and mapped back to the
/// labels. Anything else is refused, as are images over
/// [`MAX_PIXELS`] pixels.
pub fn read_label_png(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let bad = |problem: String, source: Option<png::DecodingError>| Error::Image {
        path: path.to_path_buf(),
        problem,
        source: source.map(|e| {
            ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Exact(ImageFormat::Png),
                e,
            ))
            .into()
        }),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut dec = png::Decoder::new(BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec
        .read_info()
        .map_err(|e| bad("not a readable PNG".into(), Some(e)))?;
    let (w, h) = reader.info().size();
    if w == 0 || h == 0 {
        return Err(bad(format!("image has no pixels ({w}×{h})"), None));
    }
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(bad(
            format!("{w}×{h} is over the limit of {MAX_PIXELS} pixels"),
            None,
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("image too large".into(), None))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| {
        bad(
            "cannot decode the PNG (corrupt or truncated?)".into(),
            Some(e),
        )
    })?;
    let (w, h) = (frame.width, frame.height);
    let n = w as usize * h as usize;
    use png::{BitDepth, ColorType};
    let labels = match (frame.color_type, frame.bit_depth) {
        (ColorType::Indexed | ColorType::Grayscale, BitDepth::Eight) => {
            let mut out = Vec::with_capacity(n);
            for row in buf.chunks(frame.line_size).take(h as usize) {
                out.extend_from_slice(&row[..w as usize]);
            }
            out
        }
        (ColorType::Indexed, depth @ (BitDepth::One | BitDepth::Two | BitDepth::Four)) => {
            let bits = depth as usize;
            let per_byte = 8 / bits;
            let mask = (1u8 << bits) - 1;
            let mut out = Vec::with_capacity(n);
            for row in buf.chunks(frame.line_size).take(h as usize) {
                for x in 0..w as usize {
                    let byte = row[x / per_byte];
                    let shift = 8 - bits * (x % per_byte + 1);
                    out.push((byte >> shift) & mask);
                }
            }
            out
        }
        (ct @ (ColorType::Rgb | ColorType::Rgba), BitDepth::Eight) => {
            let ch = if ct == ColorType::Rgb { 3 } else { 4 };
            let lookup: std::collections::HashMap<[u8; 3], u8> = PALETTE
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, i as u8))
                .collect();
            let mut out = Vec::with_capacity(n);
            for (y, row) in buf.chunks(frame.line_size).take(h as usize).enumerate() {
                for (x, px) in row[..w as usize * ch].chunks(ch).enumerate() {
                    let label = lookup.get(&[px[0], px[1], px[2]]).copied();
                    match label {
                        Some(l) if ch == 3 || px[3] == 255 => out.push(l),
                        _ => {
                            return Err(bad(
                                format!(
                                    "not a label map: pixel ({x}, {y}) has colour {:?}, which is \
                                     not an opaque VOC palette colour (save label maps as \
                                     palette or 8-bit greyscale PNGs)",
                                    px
                                ),
                                None,
                            ))
                        }
                    }
                }
            }
            out
        }
        (ct, depth) => {
            return Err(bad(
                format!(
                    "not a label map: {ct:?} at {} bits per sample (expected a palette or \
                     8-bit greyscale PNG)",
                    depth as u8
                ),
                None,
            ))
        }
    };
    debug_assert_eq!(labels.len(), n);
    Ok((w, h, labels))
}

/// Mix `base` towards `over` by `t` (0 = `base`, 1 = `over`).
fn blend(base: Rgb<u8>, over: [u8; 3], t: f32) -> Rgb<u8> {
    let mut o = [0u8; 3];
    for c in 0..3 {
        o[c] = (base.0[c] as f32 * (1.0 - t) + over[c] as f32 * t).round() as u8;
    }
    Rgb(o)
}

/// Scale `px` by `k` (darken for `k < 1`).
fn shade(px: Rgb<u8>, k: f32) -> Rgb<u8> {
    blend(px, [0, 0, 0], 1.0 - k)
}

/// A colour that stands out as a thin line: the label colour, lightened
/// when it is too dark to see over a dimmed photo (VOC's navy, maroon…).
fn line_color(label: u16) -> Rgb<u8> {
    let c = voc_color(label);
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
fn edges<K: Copy + PartialEq>(keys: &[K], w: u32, h: u32, t: u32, border: bool) -> Vec<bool> {
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
fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: u32, h: u32, color: [u8; 3], t: f32) {
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
fn stroke_rect(img: &mut RgbImage, x: i64, y: i64, w: u32, h: u32, t: u32, color: [u8; 3]) {
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
            fill_rect(img, x, y, swatch, swatch, voc_color(*label), 1.0);
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

/// An overlay of a label map on its image: each labelled pixel's VOC colour
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

/// Which support patches a match came from: a `grid_h × grid_w` row-major
/// mask over the support image's patch grid, `true` where the matched
/// prototype's region is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchMask {
    /// Patch-grid rows.
    pub grid_h: u32,
    /// Patch-grid columns.
    pub grid_w: u32,
    /// `grid_h * grid_w` cells, row-major.
    pub cells: Vec<bool>,
}

/// One support example shown for a class in the explain sheet.
#[derive(Debug, Clone)]
pub struct ExplainMatch {
    /// The support image, encoded (JPEG, or PNG).
    pub image: Vec<u8>,
    /// The matched region on the support image's patch grid, outlined on
    /// the thumbnail; `None` to show the image only.
    pub region: Option<PatchMask>,
    /// The caption under the thumbnail, e.g. `part fg #3: 12.5%`.
    pub caption: String,
}

/// One row of the explain sheet: a class found in the query image.
#[derive(Debug, Clone)]
pub struct ExplainRow {
    /// The class name, shown at the row's start.
    pub class: String,
    /// The class's label in the label map (also its colour index).
    pub label: u16,
    /// Support examples that voted for this class, best first.
    pub matches: Vec<ExplainMatch>,
}

/// Layout options for [`explain_sheet`].
#[derive(Debug, Clone)]
pub struct ExplainOptions {
    /// Height in pixels of the images in each row (captions come on top).
    pub row_height: u32,
    /// At most this many support thumbnails per row.
    pub max_matches: usize,
    /// A heading over the rows, e.g. the query file's name.
    pub title: Option<String>,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            row_height: 160,
            max_matches: 6,
            title: None,
        }
    }
}

/// Decode a support image, refusing absurd sizes; `None` if it cannot be.
fn decode_thumb(bytes: &[u8]) -> Option<RgbImage> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    reader.decode().ok().map(|i| i.to_rgb8())
}

/// Size of an image of `w`×`h` scaled to height `rh`, its width capped at
/// `max_w` (the height then shrinks to keep the aspect ratio).
fn fit_size(w: u32, h: u32, rh: u32, max_w: u32) -> (u32, u32) {
    let (w, h) = (w.max(1) as f64, h.max(1) as f64);
    let k = (rh as f64 / h).min(max_w as f64 / w);
    (
        ((w * k).round() as u32).max(1),
        ((h * k).round() as u32).max(1),
    )
}

/// The query image scaled to fit a row, with only `label`'s region in
/// colour and outlined; everything else dimmed.
fn region_cell(img: &RgbImage, labels: &[u16], label: u16, rh: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = fit_size(w, h, rh, rh * 5 / 2);
    let mut cell = image::imageops::resize(img, cw, ch, FilterType::Triangle);
    let keys: Vec<u8> = (0..ch)
        .flat_map(|y| {
            let sy = ((y as u64 * h as u64) / ch as u64) as u32;
            (0..cw).map(move |x| {
                let sx = ((x as u64 * w as u64) / cw as u64) as u32;
                u8::from(labels[(sy * w + sx) as usize] == label)
            })
        })
        .collect();
    let edge = edges(&keys, cw, ch, 2, false);
    let line = line_color(label);
    for ((p, &k), &e) in cell.pixels_mut().zip(&keys).zip(&edge) {
        *p = match (k, e) {
            (1, true) => line,
            (1, false) => blend(*p, voc_color(label), 0.35),
            _ => blend(shade(*p, 0.45), [128, 128, 128], 0.25),
        };
    }
    cell
}

/// A support thumbnail scaled to the row, with the matched patches
/// outlined and the rest dimmed; a grey placeholder if it cannot be decoded.
fn match_cell(m: &ExplainMatch, label: u16, rh: u32) -> RgbImage {
    let Some(img) = decode_thumb(&m.image) else {
        let mut cell = RgbImage::from_pixel(rh, rh, Rgb([200, 200, 200]));
        let msg = "cannot decode";
        let x = (rh.saturating_sub(font::text_width(msg, 1)) / 2) as i32;
        font::draw_text(&mut cell, x, (rh / 2) as i32 - 4, msg, Rgb([60, 60, 60]), 1);
        return cell;
    };
    let (tw, th) = fit_size(img.width(), img.height(), rh, rh * 2);
    let mut cell = image::imageops::resize(&img, tw, th, FilterType::Triangle);
    let mask = m
        .region
        .as_ref()
        .filter(|r| r.grid_h > 0 && r.grid_w > 0)
        .filter(|r| r.cells.len() == r.grid_h as usize * r.grid_w as usize);
    if let Some(r) = mask {
        let keys: Vec<u8> = (0..th)
            .flat_map(|y| {
                let gy = (y as u64 * r.grid_h as u64 / th as u64) as u32;
                (0..tw).map(move |x| {
                    let gx = (x as u64 * r.grid_w as u64 / tw as u64) as u32;
                    u8::from(r.cells[(gy * r.grid_w + gx) as usize])
                })
            })
            .collect();
        let outer = edges(&keys, tw, th, 3, true);
        let inner = edges(&keys, tw, th, 2, true);
        let line = line_color(label);
        for (((p, &k), &o), &i) in cell.pixels_mut().zip(&keys).zip(&outer).zip(&inner) {
            *p = match (k, i, o) {
                (1, true, _) => line,
                (1, false, true) => Rgb([0, 0, 0]),
                (1, _, _) => *p,
                _ => shade(*p, 0.45),
            };
        }
    }
    cell
}

/// The `--explain` contact sheet: one row per class found, showing the
/// class name and colour, the query image with only that class's region
/// highlighted (captioned with its share of the image), then up to
/// `opts.max_matches` support thumbnails with the matched patches outlined
/// and each match's caption underneath. Thumbnails that cannot be decoded
/// show as grey placeholders. The caller saves the result (e.g. with
/// [`write_rgb_png`]).
///
/// # Panics
/// If `labels.len()` is not `img.width() * img.height()`.
pub fn explain_sheet(
    img: &RgbImage,
    labels: &[u16],
    rows: &[ExplainRow],
    opts: &ExplainOptions,
) -> RgbImage {
    let (w, h) = img.dimensions();
    assert_eq!(
        labels.len(),
        w as usize * h as usize,
        "label map does not match the {w}×{h} image"
    );
    const MARGIN: u32 = 12;
    const GAP: u32 = 10;
    const ROW_GAP: u32 = 16;
    const NAME_SCALE: u32 = 2;
    const SWATCH: u32 = 14;
    let rh = opts.row_height.max(32);
    let cap_h = font::text_height(1) + 8;
    let text = Rgb([25, 25, 25]);
    let dim_text = Rgb([90, 90, 90]);

    let name_w = rows
        .iter()
        .map(|r| font::text_width(&r.class, NAME_SCALE))
        .max()
        .unwrap_or(0)
        .clamp(SWATCH + 60, 200);
    let title_h = opts
        .title
        .as_ref()
        .map_or(0, |_| font::LINE_HEIGHT * NAME_SCALE + 8);

    // Build every cell first, to know the sheet's size.
    struct Cell {
        img: RgbImage,
        caption: String,
        width: u32,
    }
    let total = labels.len().max(1) as f64;
    let built: Vec<Vec<Cell>> = rows
        .iter()
        .map(|row| {
            let count = labels.iter().filter(|&&l| l == row.label).count();
            let region = region_cell(img, labels, row.label, rh);
            let mut cells = vec![Cell {
                width: region.width(),
                caption: format!("query: {:.1}% of the image", 100.0 * count as f64 / total),
                img: region,
            }];
            for m in row.matches.iter().take(opts.max_matches) {
                let thumb = match_cell(m, row.label, rh);
                let width = thumb
                    .width()
                    .max(font::text_width(&m.caption, 1).min(rh * 2));
                cells.push(Cell {
                    img: thumb,
                    caption: m.caption.clone(),
                    width,
                });
            }
            cells
        })
        .collect();

    let row_w = |cells: &Vec<Cell>| cells.iter().map(|c| c.width + GAP).sum::<u32>();
    let content_w = built.iter().map(row_w).max().unwrap_or(0);
    let empty_msg = "no classes found";
    let sheet_w = (MARGIN * 2 + name_w + GAP + content_w)
        .max(
            MARGIN * 2
                + opts
                    .title
                    .as_ref()
                    .map_or(0, |t| font::text_width(t, NAME_SCALE)),
        )
        .max(MARGIN * 2 + font::text_width(empty_msg, NAME_SCALE))
        .min(16_000);
    let body_h = if rows.is_empty() {
        font::LINE_HEIGHT * NAME_SCALE
    } else {
        rows.len() as u32 * (rh + cap_h + ROW_GAP) - ROW_GAP
    };
    let sheet_h = MARGIN * 2 + title_h + body_h;
    let mut sheet = RgbImage::from_pixel(sheet_w, sheet_h, Rgb([255, 255, 255]));

    if let Some(t) = &opts.title {
        font::draw_text(
            &mut sheet,
            MARGIN as i32,
            MARGIN as i32,
            t,
            text,
            NAME_SCALE,
        );
    }
    let top = MARGIN + title_h;
    if rows.is_empty() {
        font::draw_text(
            &mut sheet,
            MARGIN as i32,
            top as i32,
            empty_msg,
            dim_text,
            NAME_SCALE,
        );
    }
    for (i, (row, cells)) in rows.iter().zip(&built).enumerate() {
        let y = top + i as u32 * (rh + cap_h + ROW_GAP);
        if i > 0 {
            let line_y = y - ROW_GAP / 2;
            fill_rect(
                &mut sheet,
                MARGIN as i64,
                line_y as i64,
                sheet_w - 2 * MARGIN,
                1,
                [215, 215, 215],
                1.0,
            );
        }
        // Class swatch and name.
        fill_rect(
            &mut sheet,
            MARGIN as i64,
            y as i64,
            SWATCH,
            SWATCH,
            voc_color(row.label),
            1.0,
        );
        stroke_rect(
            &mut sheet,
            MARGIN as i64,
            y as i64,
            SWATCH,
            SWATCH,
            1,
            [60, 60, 60],
        );
        let name = font::fit_text(&row.class, NAME_SCALE, name_w);
        font::draw_text(
            &mut sheet,
            MARGIN as i32,
            (y + SWATCH + 6) as i32,
            &name,
            text,
            NAME_SCALE,
        );
        let n = row.matches.len().min(opts.max_matches);
        let info = format!("{n} of {} matches", row.matches.len());
        font::draw_text(
            &mut sheet,
            MARGIN as i32,
            (y + SWATCH + 10 + font::text_height(NAME_SCALE)) as i32,
            &font::fit_text(&info, 1, name_w),
            dim_text,
            1,
        );
        // Cells, each centred in its column, caption underneath.
        let mut x = MARGIN + name_w + GAP;
        for (j, cell) in cells.iter().enumerate() {
            let ix = x + (cell.width - cell.img.width()) / 2;
            let iy = y + (rh - cell.img.height()) / 2;
            image::imageops::replace(&mut sheet, &cell.img, ix as i64, iy as i64);
            stroke_rect(
                &mut sheet,
                ix as i64 - 1,
                iy as i64 - 1,
                cell.img.width() + 2,
                cell.img.height() + 2,
                1,
                if j == 0 {
                    [40, 40, 40]
                } else {
                    [170, 170, 170]
                },
            );
            let cap = font::fit_text(&cell.caption, 1, cell.width);
            let cx = x + (cell.width - font::text_width(&cap, 1)) / 2;
            font::draw_text(
                &mut sheet,
                cx as i32,
                (y + rh + 5) as i32,
                &cap,
                if j == 0 { text } else { dim_text },
                1,
            );
            x += cell.width + GAP;
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn palette_matches_voc() {
        let p = voc_palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[3], [128, 128, 0]);
        assert_eq!(p[4], [0, 0, 128]);
        assert_eq!(p[8], [64, 0, 0]);
        assert_eq!(p[15], [192, 128, 128]);
        assert_eq!(p[20], [0, 64, 128]);
        assert_eq!(p[255], [224, 224, 192]);
        // All 256 colours are distinct, so RGB label maps can be mapped back.
        let set: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(set.len(), 256);
    }

    #[test]
    fn label_names() {
        let n = names(&["cat", "dog"]);
        assert_eq!(label_name(0, &n), "background");
        assert_eq!(label_name(2, &n), "dog");
        assert_eq!(label_name(3, &n), "label 3");
        assert_eq!(label_name(255, &n), "void");
        assert_eq!(legend_scale(500, 375), 1);
        assert_eq!(legend_scale(600, 10), 2);
        assert_eq!(legend_scale(1300, 900), 3);
    }

    #[test]
    fn label_png_round_trips_and_is_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let (w, h) = (37u32, 23u32);
        let labels: Vec<u16> = (0..w * h)
            .map(|i| [0u16, 1, 15, 255, 7][(i % 5) as usize])
            .collect();
        write_label_png(&path, w, h, &labels, LabelDepth::Palette8).unwrap();
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let (rw, rh, back) = read_label_png(&path).unwrap();
        assert_eq!((rw, rh), (w, h));
        assert!(back
            .iter()
            .map(|&b| u16::from(b))
            .eq(labels.iter().copied()));
        // It is a palette PNG with the VOC colours (what viewers show).
        let dec = png::Decoder::new(BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = dec.read_info().unwrap();
        assert_eq!(reader.info().color_type, png::ColorType::Indexed);
        assert_eq!(reader.info().bit_depth, png::BitDepth::Eight);
        let pal = reader.info().palette.as_ref().unwrap();
        assert_eq!(&pal[15 * 3..15 * 3 + 3], &[192, 128, 128]);
        // Through `image`, which expands palettes, the colours appear.
        let rgb = image::open(&path).unwrap().to_rgb8();
        assert_eq!(rgb.get_pixel(2, 0).0, [192, 128, 128]);
        // Overwriting works and stays atomic.
        write_label_png(&path, 1, 1, &[3], LabelDepth::Palette8).unwrap();
        assert_eq!(read_label_png(&path).unwrap(), (1, 1, vec![3]));
        // A label that needs 16 bits is refused in an 8-bit map, and the
        // file is left as it was.
        let err = write_label_png(&path, 1, 1, &[256], LabelDepth::Palette8).unwrap_err();
        assert!(err.to_string().contains("label 256"), "{err}");
        assert_eq!(read_label_png(&path).unwrap(), (1, 1, vec![3]));
    }

    #[test]
    fn sixteen_bit_label_png_holds_every_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m16.png");
        let (w, h) = (29u32, 17u32);
        let labels: Vec<u16> = (0..w * h)
            .map(|i| [0u16, 1, 254, 255, 256, 999, 65_535][(i % 7) as usize])
            .collect();
        write_label_png(&path, w, h, &labels, LabelDepth::Grey16).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let dec = png::Decoder::new(BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        assert_eq!(reader.info().color_type, png::ColorType::Grayscale);
        assert_eq!(reader.info().bit_depth, png::BitDepth::Sixteen);
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        let mut back = Vec::new();
        for row in buf.chunks(frame.line_size).take(h as usize) {
            back.extend(
                row[..2 * w as usize]
                    .chunks(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]])),
            );
        }
        assert_eq!(back, labels);
        // `image` reads it as 16-bit luma with the same values.
        let luma = image::open(&path).unwrap().to_luma16();
        assert_eq!(luma.get_pixel(5, 0).0[0], 999);
    }

    #[test]
    fn depth_follows_the_query_size_and_colours_stay_distinct() {
        assert_eq!(LabelDepth::for_classes(1), LabelDepth::Palette8);
        assert_eq!(LabelDepth::for_classes(254), LabelDepth::Palette8);
        assert_eq!(LabelDepth::for_classes(255), LabelDepth::Grey16);
        assert_eq!(LabelDepth::for_classes(1000).name(), "grey16");
        // VOC's colours below 256, and one colour per label above.
        for l in 0..256u16 {
            assert_eq!(voc_color(l), PALETTE[l as usize]);
        }
        let colours: std::collections::HashSet<[u8; 3]> = (0..=u16::MAX).map(voc_color).collect();
        assert_eq!(colours.len(), 65_536);
    }

    #[test]
    fn write_refuses_wrong_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        assert!(write_label_png(&path, 4, 4, &[0; 15], LabelDepth::Palette8).is_err());
        assert!(write_label_png(&path, 0, 4, &[], LabelDepth::Grey16).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn reads_low_bit_depth_grey_and_rgb_label_maps() {
        let dir = tempfile::tempdir().unwrap();
        // 2-bit palette, 5 pixels wide (padding bits at the row end).
        let path = dir.path().join("p2.png");
        let labels = [0u8, 1, 2, 3, 1, 3, 2, 1, 0, 0];
        {
            let f = std::fs::File::create(&path).unwrap();
            let mut enc = png::Encoder::new(f, 5, 2);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Two);
            enc.set_palette(PALETTE[..4].concat());
            let mut wr = enc.write_header().unwrap();
            // Row bytes: 4 pixels per byte, MSB first.
            wr.write_image_data(&[0b0001_1011, 0b0100_0000, 0b1110_0100, 0b0000_0000])
                .unwrap();
        }
        assert_eq!(read_label_png(&path).unwrap(), (5, 2, labels.to_vec()));

        // 8-bit greyscale: values are labels.
        let path = dir.path().join("g.png");
        image::GrayImage::from_raw(3, 1, vec![0, 5, 255])
            .unwrap()
            .save(&path)
            .unwrap();
        assert_eq!(read_label_png(&path).unwrap(), (3, 1, vec![0, 5, 255]));

        // RGB with palette colours maps back; other colours are refused.
        let path = dir.path().join("rgb.png");
        let mut rgb = RgbImage::new(2, 1);
        rgb.put_pixel(0, 0, label_color(15));
        rgb.put_pixel(1, 0, label_color(255));
        rgb.save(&path).unwrap();
        assert_eq!(read_label_png(&path).unwrap(), (2, 1, vec![15, 255]));
        rgb.put_pixel(0, 0, Rgb([1, 2, 3]));
        rgb.save(&path).unwrap();
        let err = read_label_png(&path).unwrap_err().report();
        assert!(err.contains("not a label map"), "{err}");

        // Not a PNG at all.
        let path = dir.path().join("x.png");
        std::fs::write(&path, b"hello").unwrap();
        assert!(read_label_png(&path).is_err());
    }

    #[test]
    fn reads_voc_segmentation_class_pngs_as_indices() {
        let Some(home) = std::env::var_os("HOME") else {
            return;
        };
        let dir = Path::new(&home).join(".local/share/ovdiff-bank/samples/voc/SegmentationClass");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "png") {
                continue;
            }
            let (w, h, labels) = read_label_png(&path).unwrap();
            assert_eq!(labels.len(), (w * h) as usize);
            // VOC labels are 0..=20 plus 255 for boundaries.
            assert!(
                labels.iter().all(|&l| l <= 20 || l == 255),
                "{}",
                path.display()
            );
            assert!(labels.iter().any(|&l| (1..=20).contains(&l)));
            // Indices agree with the colours `image` decodes.
            let rgb = image::open(&path).unwrap().to_rgb8();
            for (p, &l) in rgb.pixels().zip(&labels).step_by(97) {
                assert_eq!(p.0, PALETTE[l as usize]);
            }
        }
    }

    fn test_scene() -> (RgbImage, Vec<u16>) {
        let (w, h) = (120u32, 80u32);
        let img = RgbImage::from_pixel(w, h, Rgb([100, 150, 200]));
        let mut labels = vec![0u16; (w * h) as usize];
        for y in 30..70 {
            for x in 60..110 {
                labels[(y * w + x) as usize] = 2;
            }
        }
        (img, labels)
    }

    #[test]
    fn overlay_colours_outlines_and_legend() {
        let (img, labels) = test_scene();
        let out = overlay(&img, &labels, &names(&["cat", "dog"]), 0.5);
        assert_eq!(out.dimensions(), img.dimensions());
        // Inside the region: the blend of photo and the dog colour.
        assert_eq!(
            out.get_pixel(85, 50).0,
            blend(Rgb([100, 150, 200]), PALETTE[2], 0.5).0
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
            .filter(|&(x, y)| out.get_pixel(x, y).0 == [240, 240, 240])
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
        let cat = blend(Rgb([100, 150, 200]), PALETTE[1], 0.5);
        assert_eq!(*out.get_pixel(20, 20), cat);
        // The legend is 78 pixels wide, so top-right would overlap the cat;
        // bottom-left is free.
        let backing = out.get_pixel(8, 70).0;
        assert!(backing.iter().all(|&c| c < 90), "{backing:?}");
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

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), ImageFormat::Jpeg)
            .unwrap();
        v
    }

    #[test]
    fn explain_sheet_lays_out_rows() {
        let (img, labels) = test_scene();
        let thumb = jpeg(&RgbImage::from_pixel(64, 48, Rgb([250, 250, 250])));
        let mut cells = vec![false; 16];
        cells[5] = true;
        cells[6] = true;
        let rows = vec![ExplainRow {
            class: "dog".into(),
            label: 2,
            matches: vec![
                ExplainMatch {
                    image: thumb.clone(),
                    region: Some(PatchMask {
                        grid_h: 4,
                        grid_w: 4,
                        cells,
                    }),
                    caption: "part fg #3: 12.5%".into(),
                },
                ExplainMatch {
                    image: b"not an image".to_vec(),
                    region: None,
                    caption: "broken".into(),
                },
                ExplainMatch {
                    image: thumb,
                    region: Some(PatchMask {
                        grid_h: 2,
                        grid_w: 2,
                        cells: vec![true], // wrong length: ignored
                    }),
                    caption: "instance #1".into(),
                },
            ],
        }];
        let opts = ExplainOptions {
            row_height: 100,
            max_matches: 2,
            title: Some("query.jpg".into()),
        };
        let sheet = explain_sheet(&img, &labels, &rows, &opts);
        assert!(sheet.height() >= 100 + font::text_height(1));
        // Region cell (150 wide) + two thumbnails, at least.
        assert!(sheet.width() > 150 + 2 * 100, "{}", sheet.width());
        // The first thumbnail has the class-coloured outline somewhere.
        let line = line_color(2);
        assert!(sheet.pixels().any(|p| *p == line));

        let empty = explain_sheet(&img, &labels, &[], &ExplainOptions::default());
        assert!(empty.width() > 0 && empty.height() > 0);
    }

    #[test]
    fn write_rgb_png_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.png");
        let (img, labels) = test_scene();
        let out = overlay(&img, &labels, &names(&["cat", "dog"]), 0.5);
        write_rgb_png(&path, &out).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8(), out);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
