//! Label maps as PNGs: the VOC palette, label colours and names, and reading and writing label and RGB PNGs.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::error::{DecodingError, EncodingError, ImageFormatHint};
use image::{ImageError, ImageFormat, Rgb, RgbImage};

use ovdiff_core::atomic::write_atomic;
use ovdiff_models::features::preprocess::MAX_PIXELS;

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
pub(super) const PALETTE: [[u8; 3]; 256] = voc_palette();

/// The colour of a label ([`voc_color`]; its [`voc_palette`] entry below 256).
pub fn label_color(label: u16) -> Rgb<u8> {
    Rgb(voc_color(label))
}

/// The first colours of [`display_color`]: saturated, light enough to see
/// over a dimmed photo, and far in hue from red, so that a class stays
/// visible on a red object (VOC's first colours are maroon, olive, navy).
const DISPLAY: [[u8; 3]; 12] = [
    [0, 190, 255],   // sky blue
    [255, 215, 0],   // gold
    [40, 220, 70],   // green
    [190, 80, 255],  // violet
    [0, 235, 200],   // turquoise
    [60, 110, 255],  // blue
    [190, 255, 40],  // lime
    [255, 90, 220],  // pink-magenta
    [120, 200, 255], // light blue
    [255, 240, 120], // light yellow
    [120, 255, 170], // mint
    [160, 140, 255], // lavender
];

/// Hue in degrees (0..360) of `c`; 0 for greys (the tests of [`display_color`]).
#[cfg(test)]
fn hue(c: [u8; 3]) -> f32 {
    let [r, g, b] = c.map(|v| v as f32 / 255.0);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let d = max - min;
    if d <= f32::EPSILON {
        return 0.0;
    }
    let h = if max == r {
        ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        (b - r) / d + 2.0
    } else {
        (r - g) / d + 4.0
    };
    h * 60.0
}

/// The colour a label is *shown* in, in pictures for people (overlays,
/// legends, explain sheets): [`DISPLAY`] for the first twelve classes, then
/// hues spread by the golden angle over 35°–325°, never red. Label PNGs
/// keep VOC's palette ([`label_color`]), the machine format; background is
/// black in both.
pub fn display_color(label: u16) -> [u8; 3] {
    if label == BACKGROUND {
        return [0, 0, 0];
    }
    let k = usize::from(label - 1);
    if let Some(c) = DISPLAY.get(k) {
        return *c;
    }
    let h = 35.0 + (k as f32 * 137.508) % 290.0;
    let (s, v) = if k % 2 == 0 { (0.85, 1.0) } else { (0.6, 0.95) };
    hsv(h, s, v)
}

/// HSV (hue in degrees, saturation and value 0..=1) to RGB.
fn hsv(h: f32, s: f32, v: f32) -> [u8; 3] {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [r, g, b].map(|t| ((t + m) * 255.0).round() as u8)
}

/// The name shown for a label: `background`, the class name, `void` for
/// [`VOID`] when `class_names` has fewer classes, or `label N` for another
/// label that `class_names` does not cover.
pub fn label_name(label: u16, class_names: &[String]) -> String {
    match label {
        BACKGROUND => crate::label_map::BACKGROUND_NAME.to_string(),
        l if (l as usize) <= class_names.len() => class_names[l as usize - 1].clone(),
        l if l == u16::from(VOID) => "void".to_string(),
        l => format!("label {l}"),
    }
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

/// Write a label map as a PNG ([`encode_label_png`]), atomically.
pub fn write_label_png(
    path: &Path,
    w: u32,
    h: u32,
    labels: &[u16],
    depth: LabelDepth,
) -> Result<()> {
    write_atomic(path, &encode_label_png(path, w, h, labels, depth)?)
}

/// A label map as PNG bytes; `name` names it in errors (the file it goes to).
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
pub fn encode_label_png(
    name: &Path,
    w: u32,
    h: u32,
    labels: &[u16],
    depth: LabelDepth,
) -> Result<Vec<u8>> {
    let path = name;
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
    Ok(bytes)
}

/// One label's binary mask as an 8-bit greyscale PNG: 255 where `labels`
/// holds `label`, 0 elsewhere (`NAME.masks/CLASS.png`).
pub fn encode_mask_png(name: &Path, w: u32, h: u32, labels: &[u16], label: u16) -> Result<Vec<u8>> {
    check_size(&format!("mask for {}", name.display()), w, h, labels.len())?;
    let data: Vec<u8> = labels
        .iter()
        .map(|&l| if l == label { 255 } else { 0 })
        .collect();
    let mut bytes = Vec::with_capacity(data.len() / 16 + 256);
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Balanced);
        let mut writer = enc.write_header().map_err(|e| png_encode_error(name, e))?;
        writer
            .write_image_data(&data)
            .map_err(|e| png_encode_error(name, e))?;
        writer.finish().map_err(|e| png_encode_error(name, e))?;
    }
    Ok(bytes)
}

/// Write [`encode_mask_png`]'s PNG to `path`, atomically.
pub fn write_mask_png(path: &Path, w: u32, h: u32, labels: &[u16], label: u16) -> Result<()> {
    write_atomic(path, &encode_mask_png(path, w, h, labels, label)?)
}

/// Save an RGB image (an overlay or an explain sheet) as a PNG
/// ([`encode_rgb_png`]), atomically.
pub fn write_rgb_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_atomic(path, &encode_rgb_png(path, img)?)
}

/// An RGB image as PNG bytes; `name` names it in errors.
pub fn encode_rgb_png(name: &Path, img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: name.to_path_buf(),
            problem: "cannot encode the PNG".into(),
            source: Some(e.into()),
        })?;
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{legend_scale, overlay};
    use super::*;

    #[test]
    fn display_colours_stay_visible_on_red_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for label in 1..=2000u16 {
            let c = display_color(label);
            let h = hue(c);
            // at least 30° of hue from red, and bright enough over a dim photo
            assert!((30.0..=330.0).contains(&h), "label {label}: {c:?} hue {h}");
            let luma = 0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32;
            assert!(luma >= 60.0, "label {label}: {c:?} is too dark");
            if label <= 200 {
                assert!(seen.insert(c), "label {label}: {c:?} twice");
            }
        }
        // blended half over a red object, a class still reads as not red
        for label in 1..=12u16 {
            let over = super::super::overlay::blend(Rgb([200, 30, 30]), display_color(label), 0.5);
            let h = hue(over.0);
            assert!(
                (20.0..=340.0).contains(&h),
                "label {label}: {over:?} hue {h}"
            );
        }
        assert_eq!(display_color(BACKGROUND), [0, 0, 0]);
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
