//! The text drawn on result images (overlay legends, explain sheets): DejaVu Sans, bundled, rasterised with anti-aliasing.
//!
//! The font is a subset of DejaVu Sans (Latin, Greek, Cyrillic, punctuation
//! and common symbols: `crates/segment/fonts/`, made by `scripts/make-font`,
//! licence beside it), compiled into the binary so that nothing is read at
//! run time. A character the subset lacks is drawn as U+FFFD; control
//! characters as `?`.
//!
//! Sizes are given as a `scale`: text is [`SIZE`] pixels high (em) at scale
//! 1, lines advance by [`LINE_HEIGHT`] pixels, both times the scale.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

/// The bundled font file.
const FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");

/// Pixel size (em) of text at scale 1.
pub const SIZE: f32 = 13.0;

/// Vertical advance from one line to the next at scale 1, in pixels.
pub const LINE_HEIGHT: u32 = 17;

/// What a cut text ends with.
const ELLIPSIS: &str = "…";

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(FONT_BYTES).expect("invariant: the bundled font parses")
    })
}

fn px(scale: u32) -> PxScale {
    PxScale::from(SIZE * scale.max(1) as f32)
}

/// The glyph drawn for `c`.
fn glyph_id(c: char) -> GlyphId {
    let f = font();
    let c = if c.is_control() { '?' } else { c };
    let id = f.glyph_id(c);
    if id.0 == 0 {
        f.glyph_id('\u{FFFD}')
    } else {
        id
    }
}

/// The glyphs of `text` at `scale`, each with its pen position (left edge,
/// baseline at the font's ascent below the top), and the text's advance.
fn layout(text: &str, scale: u32) -> (Vec<(GlyphId, f32)>, f32) {
    let f = font().as_scaled(px(scale));
    let mut x = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = glyph_id(c);
        if let Some(p) = prev {
            x += f.kern(p, id);
        }
        out.push((id, x));
        x += f.h_advance(id);
        prev = Some(id);
    }
    (out, x)
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    layout(text, scale).1.ceil() as u32
}

/// Height in pixels of one line of text at `scale`, ascenders to
/// descenders.
pub fn text_height(scale: u32) -> u32 {
    let f = font().as_scaled(px(scale));
    (f.ascent() - f.descent()).ceil() as u32
}

/// `text` when it fits in `max_w` pixels at `scale`; else its longest
/// prefix that fits with `…` appended (empty when not even that fits).
pub fn fit_text(text: &str, scale: u32, max_w: u32) -> String {
    if text_width(text, scale) <= max_w {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    // The widest prefix that fits: widths grow with the prefix, so search.
    let fits = |n: usize| {
        let s: String = chars[..n].iter().collect::<String>() + ELLIPSIS;
        text_width(&s, scale) <= max_w
    };
    if !fits(0) {
        return String::new();
    }
    let (mut lo, mut hi) = (0usize, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut s: String = chars[..lo]
        .iter()
        .collect::<String>()
        .trim_end()
        .to_string();
    s.push_str(ELLIPSIS);
    s
}

/// Draw `text` with the top-left corner of its line box at (`x`, `y`),
/// anti-aliased over what is there in `color`. Pixels outside the image
/// are clipped. Returns the width drawn, as [`text_width`].
pub fn draw_text(
    img: &mut RgbImage,
    x: i32,
    y: i32,
    text: &str,
    color: Rgb<u8>,
    scale: u32,
) -> u32 {
    let f = font();
    let scaled = f.as_scaled(px(scale));
    let ascent = scaled.ascent();
    let (glyphs, advance) = layout(text, scale);
    let (w, h) = (img.width() as i64, img.height() as i64);
    for (id, gx) in glyphs {
        let g = id.with_scale_and_position(px(scale), point(x as f32 + gx, y as f32 + ascent));
        let Some(outline) = f.outline_glyph(g) else {
            continue; // a space
        };
        let b = outline.px_bounds();
        outline.draw(|dx, dy, coverage| {
            let qx = b.min.x as i64 + i64::from(dx);
            let qy = b.min.y as i64 + i64::from(dy);
            if qx < 0 || qy < 0 || qx >= w || qy >= h {
                return;
            }
            let t = coverage.clamp(0.0, 1.0);
            let p = img.get_pixel_mut(qx as u32, qy as u32);
            for c in 0..3 {
                p.0[c] = (p.0[c] as f32 * (1.0 - t) + color.0[c] as f32 * t).round() as u8;
            }
        });
    }
    advance.ceil() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(img: &RgbImage) -> usize {
        img.pixels().filter(|p| p.0 != [0, 0, 0]).count()
    }

    fn drawn(text: &str, scale: u32) -> RgbImage {
        let mut img = RgbImage::new(text_width(text, scale) + 4, text_height(scale) + 4);
        draw_text(&mut img, 2, 2, text, Rgb([255, 255, 255]), 1.max(scale));
        img
    }

    #[test]
    fn the_bundled_font_draws_latin_greek_and_cyrillic() {
        for c in "AZaz09éßŁœΩλЖя…".chars() {
            assert_ne!(font().glyph_id(c).0, 0, "{c:?} is missing from the subset");
            assert!(lit(&drawn(&c.to_string(), 1)) > 0, "{c:?} has no ink");
        }
        assert_eq!(lit(&drawn(" ", 1)), 0);
    }

    #[test]
    fn missing_and_control_characters_have_a_stand_in() {
        // a CJK character is not in the subset: U+FFFD stands in
        assert_eq!(drawn("猫", 1), drawn("\u{FFFD}", 1));
        assert_eq!(drawn("\n", 1), drawn("?", 1));
    }

    #[test]
    fn text_is_anti_aliased_and_inside_its_line_box() {
        let img = drawn("Hg", 1);
        let grey = img.pixels().filter(|p| p.0[0] > 0 && p.0[0] < 255).count();
        assert!(grey > 0, "no partial coverage");
        // every lit pixel lies within the line box (2-pixel margin)
        for (x, y, p) in img.enumerate_pixels() {
            if p.0[0] > 0 {
                assert!(y >= 2 && y < 2 + text_height(1), "({x}, {y})");
            }
        }
    }

    #[test]
    fn widths_and_scaling() {
        assert_eq!(text_width("", 1), 0);
        let one = text_width("person", 1);
        assert!((25..60).contains(&one), "{one}");
        let two = text_width("person", 2);
        assert!(two.abs_diff(2 * one) <= 2, "{one} {two}");
        assert!(text_height(1) >= SIZE as u32 && text_height(1) <= LINE_HEIGHT);
        assert!(text_height(2) <= 2 * LINE_HEIGHT);
        assert!(lit(&drawn("Hi", 2)) > 2 * lit(&drawn("Hi", 1)));
    }

    #[test]
    fn drawing_clips_at_every_edge() {
        let mut img = RgbImage::new(8, 8);
        draw_text(&mut img, -3, -4, "Wg", Rgb([255, 0, 0]), 2);
        draw_text(&mut img, 6, 6, "M", Rgb([255, 0, 0]), 3);
        draw_text(&mut img, 100, 100, "M", Rgb([255, 0, 0]), 1);
        draw_text(&mut img, -1000, -1000, "M", Rgb([255, 0, 0]), 1);
        assert!(lit(&img) > 0);
    }

    #[test]
    fn fit_text_cuts_with_an_ellipsis() {
        assert_eq!(fit_text("person", 1, 100), "person");
        let cut = fit_text("pottedplant", 1, 40);
        assert!(cut.ends_with('…') && cut.len() > "…".len(), "{cut}");
        assert!(text_width(&cut, 1) <= 40);
        assert_eq!(fit_text("abc", 1, 0), "");
        assert_eq!(fit_text("Łódź and more", 1, 30).chars().last(), Some('…'));
    }
}
