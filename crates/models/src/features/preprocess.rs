//! Image decoding with safety limits, and the typed resize/normalise chain a bundle's manifest asks for.

use std::path::Path;

use image::{imageops::FilterType, ImageFormat, ImageReader, RgbImage};
use ndarray::Array4;

use crate::runtime::manifest::{Channels, Layout, Preprocess, ResizeRule};
use crate::{Error, Result};

/// Images with more pixels than this are refused before they are decoded
/// (64 megapixels: an 8000×8000 photo passes, a decompression bomb does not).
pub const MAX_PIXELS: u64 = 64_000_000;

/// After resizing, the long side is capped at this many times the target
/// size, so a 10000×10 strip cannot ask the encoder for a 448000-pixel row.
pub const MAX_ASPECT_STRETCH: u32 = 4;

/// Decode an image file to 8-bit RGB, refusing empty, unknown, oversized or
/// corrupt files with an error that names the file.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    decode_rgb(&bytes).map_err(|r| r.into_error(path))
}

/// Why [`decode_rgb`] refused an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// No bytes at all.
    Empty,
    /// Not a PNG or JPEG.
    Unsupported,
    /// More than [`MAX_PIXELS`] pixels, or none: refused from the header,
    /// before decoding.
    Size,
    /// The header or the data cannot be decoded, or a JPEG is truncated.
    Corrupt,
}

/// An image [`decode_rgb`] refused: what kind of refusal, and the message.
#[derive(Debug)]
pub struct ImageRefusal {
    /// The kind (a server maps it to a status).
    pub kind: RefusalKind,
    /// What is wrong, in words.
    pub problem: String,
    /// The decoder's error, when there is one.
    pub source: Option<image::ImageError>,
}

impl ImageRefusal {
    fn new(kind: RefusalKind, problem: impl Into<String>) -> ImageRefusal {
        ImageRefusal {
            kind,
            problem: problem.into(),
            source: None,
        }
    }

    /// The crate's error for the image named `path`.
    pub fn into_error(self, path: &Path) -> Error {
        Error::Image {
            path: path.to_path_buf(),
            problem: self.problem,
            source: self.source.map(Into::into),
        }
    }
}

impl std::fmt::Display for ImageRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

/// Decode PNG or JPEG bytes to 8-bit RGB with the limits every front-end
/// shares: the format is read from the bytes (a PNG named .jpg still
/// decodes), the size from the header before any pixel is decoded (at most
/// [`MAX_PIXELS`]), and truncated JPEGs are refused rather than filled
/// with grey.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, ImageRefusal> {
    use RefusalKind::*;
    if bytes.is_empty() {
        return Err(ImageRefusal::new(Empty, "the file is empty (0 bytes)"));
    }
    let format = match image::guess_format(&bytes[..bytes.len().min(32)]) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        Ok(other) => {
            return Err(ImageRefusal::new(
                Unsupported,
                format!("{other:?} images are not supported; convert it to PNG or JPEG"),
            ))
        }
        Err(_) => {
            return Err(ImageRefusal::new(
                Unsupported,
                "not a PNG or JPEG image (unrecognised file contents)",
            ))
        }
    };
    if format == ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
        return Err(ImageRefusal::new(
            Corrupt,
            "the JPEG is truncated (its last scan has no end-of-image marker); \
             copy or export the file again",
        ));
    }
    let reader = || {
        let mut r = ImageReader::new(std::io::Cursor::new(bytes));
        r.set_format(format);
        r
    };
    // Reading the header allocates nothing, so no limits apply to it.
    let mut header = reader();
    header.no_limits();
    let (w, h) = header.into_dimensions().map_err(|e| ImageRefusal {
        kind: Corrupt,
        problem: "cannot read the image header".into(),
        source: Some(e),
    })?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        return Err(ImageRefusal::new(
            Size,
            format!(
                "{w}×{h} is {pixels} pixels, over the limit of {MAX_PIXELS}; downscale it first"
            ),
        ));
    }
    if w == 0 || h == 0 {
        return Err(ImageRefusal::new(
            Size,
            format!("image has no pixels ({w}×{h})"),
        ));
    }
    let mut r = reader();
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    r.limits(limits);
    let img = r.decode().map_err(|e| ImageRefusal {
        kind: Corrupt,
        problem: "cannot decode the image (corrupt or truncated?)".into(),
        source: Some(e),
    })?;
    Ok(img.to_rgb8())
}

/// `true` when a JPEG stops before its end: no end-of-image marker (FF D9)
/// follows its last start-of-scan marker (FF DA). The decoder would fill the
/// missing part with grey without a word. Entropy-coded data never holds
/// these byte pairs (0xFF is stuffed), and an embedded EXIF thumbnail comes
/// before the main image's scans, so its markers do not mislead the check.
pub fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xff, marker]);
    match (last(0xda), last(0xd9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (Some(_), None) => true,
        // No scan at all: the decoder reports that itself.
        (None, _) => false,
    }
}

/// The size (width, height) an image of `w`×`h` is resized to, following the
/// manifest's rule, rounded to `size_multiple` (at least one multiple).
pub fn target_size(pre: &Preprocess, w: u32, h: u32) -> (u32, u32) {
    let (w, h) = (w.max(1) as f64, h.max(1) as f64);
    let size = pre.size as f64;
    let (mut tw, mut th) = match pre.resize {
        ResizeRule::Exact => (size, size),
        ResizeRule::ShortSide => {
            let s = size / w.min(h);
            (w * s, h * s)
        }
        ResizeRule::LongSide => {
            let s = size / w.max(h);
            (w * s, h * s)
        }
    };
    let cap = size * MAX_ASPECT_STRETCH as f64;
    let long = tw.max(th);
    if long > cap {
        tw *= cap / long;
        th *= cap / long;
    }
    let m = pre.size_multiple.max(1) as f64;
    let round = |v: f64| (((v / m).round()).max(1.0) * m) as u32;
    (round(tw), round(th))
}

/// Resize to exactly `w`×`h` with a bilinear (triangle) filter.
pub fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.width() == w && img.height() == h {
        return img.clone();
    }
    image::imageops::resize(img, w, h, FilterType::Triangle)
}

/// Turn an RGB image into a normalised `[1, 3, H, W]` (or `[1, H, W, 3]`)
/// tensor as the manifest asks.
pub fn to_tensor(img: &RgbImage, pre: &Preprocess) -> Array4<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let order: [usize; 3] = match pre.channels {
        Channels::Rgb => [0, 1, 2],
        Channels::Bgr => [2, 1, 0],
    };
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        let src = order[c];
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (v as f32 / pre.scale - pre.mean[src]) / pre.std[src];
        }
    }
    match pre.layout {
        Layout::Nchw => {
            let mut t = Array4::<f32>::zeros((1, 3, h, w));
            let plane = h * w;
            let data = t
                .as_slice_mut()
                .expect("invariant: fresh array is contiguous");
            for (i, px) in img.pixels().enumerate() {
                for c in 0..3 {
                    data[c * plane + i] = lut[c][px.0[order[c]] as usize];
                }
            }
            t
        }
        Layout::Nhwc => {
            let mut t = Array4::<f32>::zeros((1, h, w, 3));
            let data = t
                .as_slice_mut()
                .expect("invariant: fresh array is contiguous");
            for (i, px) in img.pixels().enumerate() {
                for c in 0..3 {
                    data[i * 3 + c] = lut[c][px.0[order[c]] as usize];
                }
            }
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(resize: ResizeRule, size: u32) -> Preprocess {
        Preprocess {
            resize,
            size,
            size_multiple: 14,
            scale: 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            layout: Layout::Nchw,
            channels: Channels::Rgb,
        }
    }

    #[test]
    fn short_side_resize_rounds_to_the_patch_size() {
        let p = pre(ResizeRule::ShortSide, 448);
        assert_eq!(target_size(&p, 512, 512), (448, 448));
        assert_eq!(target_size(&p, 640, 480), (602, 448));
        assert_eq!(target_size(&p, 1, 1), (448, 448));
        // a 10000×10 strip is capped at 4×448 on the long side
        let (w, h) = target_size(&p, 10000, 10);
        assert!(w <= 448 * 4 && h >= 14, "{w}x{h}");
        assert_eq!(
            target_size(&pre(ResizeRule::Exact, 224), 30, 70),
            (224, 224)
        );
        assert_eq!(
            target_size(&pre(ResizeRule::LongSide, 224), 448, 224),
            (224, 112)
        );
    }

    #[test]
    fn tensor_is_normalised_per_channel() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 128]));
        let t = to_tensor(&img, &pre(ResizeRule::Exact, 14));
        assert_eq!(t.shape(), &[1, 3, 1, 2]);
        assert!((t[[0, 0, 0, 1]] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((t[[0, 1, 0, 0]] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        assert!(load_rgb(&empty).unwrap_err().to_string().contains("empty"));
        let junk = dir.path().join("junk.jpg");
        std::fs::write(&junk, b"this is not an image at all").unwrap();
        assert!(load_rgb(&junk)
            .unwrap_err()
            .to_string()
            .contains("not a PNG or JPEG"));
        // a PNG header that claims 100000×100000 pixels
        let bomb = dir.path().join("bomb.png");
        let mut bytes = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        bytes.extend_from_slice(&100_000u32.to_be_bytes());
        bytes.extend_from_slice(&100_000u32.to_be_bytes());
        bytes.extend_from_slice(&[8, 2, 0, 0, 0]);
        let crc = crc32(&bytes[12..]);
        bytes.extend_from_slice(&crc.to_be_bytes());
        for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
            bytes.extend_from_slice(&0u32.to_be_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        std::fs::write(&bomb, &bytes).unwrap();
        let e = load_rgb(&bomb).unwrap_err().to_string();
        let full = load_rgb(&bomb).unwrap_err().report();
        assert!(e.contains("over the limit"), "{full}");
        // a truncated PNG
        let good = dir.path().join("good.png");
        RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3]))
            .save(&good)
            .unwrap();
        let all = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &all[..all.len() / 2]).unwrap();
        assert!(load_rgb(&cut).is_err());
        assert_eq!(load_rgb(&good).unwrap().dimensions(), (64, 64));
        // a truncated JPEG: the decoder alone would pad it with grey
        let jpg = dir.path().join("good.jpg");
        RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 90]))
            .save(&jpg)
            .unwrap();
        let all = std::fs::read(&jpg).unwrap();
        assert!(!jpeg_is_truncated(&all));
        assert_eq!(load_rgb(&jpg).unwrap().dimensions(), (64, 48));
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &all[..all.len() * 2 / 3]).unwrap();
        assert!(jpeg_is_truncated(&all[..all.len() * 2 / 3]));
        let e = load_rgb(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
        // trailing bytes after the end-of-image marker are fine
        let mut padded = all.clone();
        padded.extend_from_slice(b"trailing data");
        assert!(!jpeg_is_truncated(&padded));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
