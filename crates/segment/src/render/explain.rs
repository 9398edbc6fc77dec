//! The `--explain` contact sheet: per class, its region and the support matches behind it.

use std::io::Cursor;

use image::{imageops::FilterType, Rgb, RgbImage};

use super::labels::display_color;
use super::overlay::{blend, edges, fill_rect, line_color, shade, stroke_rect};
use crate::font;

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
            (1, false) => blend(*p, display_color(label), 0.35),
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

    // Under each name: how many of its support images are shown.
    let info = |r: &ExplainRow| {
        let (n, all) = (r.matches.len().min(opts.max_matches), r.matches.len());
        match (n == all, all) {
            (true, 1) => "1 support image".to_string(),
            (true, _) => format!("{all} support images"),
            (false, _) => format!("{n} of {all} support images"),
        }
    };
    let name_w = rows
        .iter()
        .map(|r| font::text_width(&r.class, NAME_SCALE).max(font::text_width(&info(r), 1)))
        .max()
        .unwrap_or(0)
        .clamp(SWATCH + 60, 220);
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
            display_color(row.label),
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
        font::draw_text(
            &mut sheet,
            MARGIN as i32,
            (y + SWATCH + 10 + font::text_height(NAME_SCALE)) as i32,
            &font::fit_text(&info(row), 1, name_w),
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
    use super::super::test_support::*;
    use super::*;

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
}
