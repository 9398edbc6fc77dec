//! Segmentation results as images: VOC-palette label PNGs, overlays with a legend, and the `--explain` contact sheet.
//!
//! A *label map* is a row-major `&[u16]` of `width × height` entries: `0` is
//! background ([`BACKGROUND`]), `1..=K` are the classes in the order of the
//! `class_names` slice that goes with it. Label PNGs colour label `i` with
//! [`label_color`]`(i)`: VOC's colour map, so they agree with VOC's own
//! `SegmentationClass` PNGs, extended past 255 by the same bit rule. The
//! pictures for people (overlay, legend, explain sheet) show it in
//! [`display_color`]`(i)` instead: VOC's first colours are dark reds and
//! olives that vanish on a red object; these stay visible (and are the
//! same in every picture of a run).
//!
//! Label PNGs are 8-bit palette images when a query has at most
//! [`MAX_PALETTE_CLASSES`] classes (VOC's format), and 16-bit greyscale
//! images above that ([`LabelDepth`]). Ground-truth maps read by
//! [`read_label_png`] are 8-bit, where [`VOID`] (255) marks pixels to
//! ignore.

mod explain;
mod labels;
mod overlay;

pub use explain::{explain_sheet, ExplainMatch, ExplainOptions, ExplainRow, PatchMask};
pub use labels::{
    display_color, encode_label_png, encode_mask_png, encode_rgb_png, label_color, label_name,
    read_label_png, voc_color, voc_palette, write_label_png, write_mask_png, write_rgb_png,
    LabelDepth, BACKGROUND, MAX_PALETTE_CLASSES, VOID,
};
pub use overlay::{legend_scale, overlay};

/// Helpers shared by the tests of the submodules.
#[cfg(test)]
mod test_support {
    use std::io::Cursor;

    use image::{ImageFormat, Rgb, RgbImage};

    pub(super) fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    pub(super) fn test_scene() -> (RgbImage, Vec<u16>) {
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

    pub(super) fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), ImageFormat::Jpeg)
            .unwrap();
        v
    }
}
