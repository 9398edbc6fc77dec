//! Attribution maps: where the class tokens' cross-attention falls, summed over layers, heads and steps.
//!
//! OVDiff splits each sampled support image into foreground and background
//! with the diffusion model's own attention (`sd.py` and
//! `sample_support_set.py` in `karazijal/sdov`, after DAAM): at every
//! denoising step and in every cross-attention layer of the UNet, the
//! softmax attention of each latent position over the text tokens is read
//! for the class name's tokens; the conditional half of the guided batch is
//! kept, the maps are brought to the latent grid, summed over heads, layers
//! and steps, and min-max normalised per image. The split then keeps
//! `> 0.5` as foreground and `< 0.2`, eroded, as background
//! (`ovdiff_learn::split::split_by_saliency`).
//!
//! ONNX exports do not expose attention, so a UNet folder that should give
//! attribution maps carries a `manifest.toml` whose `[attribution]` table
//! names the graph outputs holding the probabilities
//! (`scripts/expose_attention.py` adds them to an `optimum-cli` export).
//! Each such output is `[B, heads, L, T]` (torch's fused attention as
//! exported) or `[B·heads, L, T]` (diffusers' older processors, batch-major),
//! where `L = ⌈h/f⌉·⌈w/f⌉` for the `h × w` latent grid and a power-of-two
//! downsampling `f`, and `T` is the number of text tokens.
//!
//! Differences from the reference: the class tokens are summed rather than
//! averaged and the heads are not divided out (both constant factors, which
//! min-max normalisation removes), and low-resolution maps are brought to
//! the latent grid bilinearly rather than bicubically (so they stay
//! non-negative without a clamp; the small differences can only move
//! patches lying right at a threshold).
//!
//! A finished map is kept next to its image in the support cache as a
//! 16-bit greyscale PNG ([`write_png`], [`map_path`]), so a resumed `add`
//! splits cached images the same way.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, Luma};
use ndarray::{Array2, ArrayView2};

use crate::{Error, Result};
use ovdiff_core::atomic::write_atomic;
use ovdiff_core::map::{min_max_normalize, resize};
use ovdiff_models::runtime::tensor::FloatSlice;

/// Largest latent downsampling searched for when matching an attention
/// map's query count to the latent grid (SD's deepest cross-attention is 8).
pub const MAX_DOWNSAMPLING: usize = 64;

/// How an attribution map's file name ends, beside its image's stem.
pub const MAP_SUFFIX: &str = ".attribution.png";

/// The file of image `image`'s attribution map, beside it: `NNN.png` →
/// `NNN.attribution.png`.
pub fn map_path(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!("{stem}{MAP_SUFFIX}"))
}

/// The `(rows, cols)` grid of a cross-attention map with `queries`
/// positions over an `h × w` latent grid: `(⌈h/f⌉, ⌈w/f⌉)` for the smallest
/// power of two `f` (up to [`MAX_DOWNSAMPLING`]) whose grid has that many
/// positions.
pub fn attention_grid(queries: usize, h: usize, w: usize) -> Option<(usize, usize)> {
    let mut f = 1;
    while f <= MAX_DOWNSAMPLING {
        let (gh, gw) = (h.div_ceil(f), w.div_ceil(f));
        if gh * gw == queries {
            return Some((gh, gw));
        }
        if gh == 1 && gw == 1 {
            break;
        }
        f *= 2;
    }
    None
}

/// Attribution maps of one batch of images, accumulated over UNet calls.
///
/// Rows of the model batch are numbered as the denoising loop feeds them:
/// under guidance the unconditional half comes first, so the images'
/// conditional rows start at `cond_start` (= the number of images); without
/// guidance at 0. Only those rows are read.
#[derive(Debug, Clone)]
pub struct AttributionMaps {
    tokens: Vec<usize>,
    text_len: usize,
    images: usize,
    cond_start: usize,
    h: usize,
    w: usize,
    /// `images × h × w` sums.
    sums: Vec<f32>,
    /// Attention outputs added so far (layers × calls).
    added: usize,
}

impl AttributionMaps {
    /// Empty maps for `images` images on an `h × w` latent grid, following
    /// the text-token positions `tokens` (the class name's tokens in the
    /// prompt, start token = 0) of prompts `text_len` tokens long (77).
    /// Outputs over any other number of keys are refused, so a
    /// self-attention map exposed by mistake is not read as cross-attention.
    pub fn new(
        images: usize,
        cond_start: usize,
        h: usize,
        w: usize,
        tokens: Vec<usize>,
        text_len: usize,
    ) -> Result<AttributionMaps> {
        if tokens.is_empty() || tokens.iter().any(|&t| t >= text_len) {
            return Err(Error::Invalid(format!(
                "an attribution map needs class tokens within the prompt's {text_len} tokens \
                 (got positions {tokens:?})"
            )));
        }
        Ok(AttributionMaps {
            tokens,
            text_len,
            images,
            cond_start,
            h,
            w,
            sums: vec![0.0; images * h * w],
            added: 0,
        })
    }

    /// Attention outputs added so far.
    pub fn added(&self) -> usize {
        self.added
    }

    /// Add one cross-attention output (`name`, for messages) of a UNet
    /// call that ran model-batch rows `first_row..first_row + rows`.
    pub(crate) fn add(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &FloatSlice<'_>,
        first_row: usize,
        rows: usize,
    ) -> Result<()> {
        let bad = |why: String| Error::DimensionMismatch {
            what: format!("cross-attention output `{name}`"),
            expected: format!(
                "[{rows}, heads, L, T] or [{rows}·heads, L, T] with L a downsampling of the {}×{} \
                 latent grid and T = {} text tokens",
                self.h, self.w, self.text_len
            ),
            found: format!("{shape:?} ({why})"),
        };
        let (heads, queries, tokens) = match *shape {
            [b, heads, l, t] if b == rows => (heads, l, t),
            [bh, l, t] if rows > 0 && bh % rows == 0 => (bh / rows, l, t),
            _ => return Err(bad("not the batch's layout".into())),
        };
        if data.len() != rows * heads * queries * tokens {
            return Err(bad(format!("{} elements", data.len())));
        }
        let (gh, gw) = attention_grid(queries, self.h, self.w)
            .ok_or_else(|| bad(format!("{queries} query positions")))?;
        if tokens != self.text_len {
            return Err(bad(format!(
                "{tokens} keys, not the prompt's {} text tokens: is it a self-attention map?",
                self.text_len
            )));
        }
        let plane = self.h * self.w;
        let mut small = Array2::<f32>::zeros((gh, gw));
        for r in 0..rows {
            let global = first_row + r;
            if global < self.cond_start || global >= self.cond_start + self.images {
                continue;
            }
            let image = global - self.cond_start;
            small.fill(0.0);
            let acc = small
                .as_slice_mut()
                .expect("invariant: a new array is contiguous");
            for head in 0..heads {
                let base = (r * heads + head) * queries * tokens;
                for (q, a) in acc.iter_mut().enumerate() {
                    let row = base + q * tokens;
                    for &t in &self.tokens {
                        let v = data.get(row + t);
                        if v.is_finite() {
                            *a += v;
                        }
                    }
                }
            }
            let out = &mut self.sums[image * plane..(image + 1) * plane];
            if (gh, gw) == (self.h, self.w) {
                out.iter_mut().zip(acc.iter()).for_each(|(o, a)| *o += a);
            } else {
                let up = resize(small.view(), self.h, self.w);
                out.iter_mut().zip(up.iter()).for_each(|(o, a)| *o += a);
            }
        }
        self.added += 1;
        Ok(())
    }

    /// The maps, one `h × w` array per image, min-max normalised to [0, 1]
    /// (a flat map becomes all zeros). Errors when nothing was added.
    pub fn finish(self) -> Result<Vec<Array2<f32>>> {
        if self.added == 0 {
            return Err(Error::Invalid(
                "no cross-attention was read while sampling, so there is no attribution map".into(),
            ));
        }
        let plane = self.h * self.w;
        Ok((0..self.images)
            .map(|i| {
                let mut m = Array2::from_shape_vec(
                    (self.h, self.w),
                    self.sums[i * plane..(i + 1) * plane].to_vec(),
                )
                .expect("invariant: a plane has h × w values");
                min_max_normalize(&mut m);
                m
            })
            .collect())
    }
}

/// Encode a map with values in [0, 1] as a 16-bit greyscale PNG
/// (`round(v · 65535)`).
pub fn encode_png(map: ArrayView2<'_, f32>) -> Result<Vec<u8>> {
    let (h, w) = map.dim();
    let values: Vec<u16> = map
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let img: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_raw(w as u32, h as u32, values).expect("invariant: one value per pixel");
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Image {
        path: PathBuf::from("<attribution map>"),
        problem: "cannot encode the attribution map".into(),
        source: Some(e.into()),
    })?;
    Ok(bytes)
}

/// Write a map as [`encode_png`] does, atomically.
pub fn write_png(path: &Path, map: ArrayView2<'_, f32>) -> Result<()> {
    write_atomic(path, &encode_png(map)?)
}

/// Read a map written by [`write_png`]; anything but a 16-bit greyscale
/// PNG is refused.
pub fn read_png(path: &Path) -> Result<Array2<f32>> {
    let img = image::open(path).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        problem: "cannot read the attribution map".into(),
        source: Some(e.into()),
    })?;
    let DynamicImage::ImageLuma16(grey) = img else {
        return Err(Error::Image {
            path: path.to_path_buf(),
            problem: "an attribution map must be a 16-bit greyscale PNG".into(),
            source: None,
        });
    };
    let (w, h) = grey.dimensions();
    let values: Vec<f32> = grey
        .into_raw()
        .into_iter()
        .map(|v| f32::from(v) / 65535.0)
        .collect();
    Ok(Array2::from_shape_vec((h as usize, w as usize), values)
        .expect("invariant: one value per pixel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_of_downsampled_latents() {
        assert_eq!(attention_grid(64 * 64, 64, 64), Some((64, 64)));
        assert_eq!(attention_grid(32 * 32, 64, 64), Some((32, 32)));
        assert_eq!(attention_grid(8 * 8, 64, 64), Some((8, 8)));
        // odd sides round up, as a stride-2 convolution with padding does
        assert_eq!(attention_grid(3 * 2, 5, 3), Some((3, 2)));
        assert_eq!(attention_grid(12 * 16, 96, 128), Some((12, 16)));
        assert_eq!(attention_grid(1, 8, 8), Some((1, 1)));
        assert_eq!(attention_grid(7, 8, 8), None);
        assert_eq!(attention_grid(77, 64, 64), None);
    }

    #[test]
    fn map_files_sit_beside_their_images() {
        assert_eq!(
            map_path(Path::new("/c/support/ab/007.png")),
            PathBuf::from("/c/support/ab/007.attribution.png")
        );
    }

    /// Probabilities `[rows, heads, L, T]` from `f(row, head, q, t)`.
    fn probs(rows: usize, heads: usize, l: usize, t: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for r in 0..rows {
            for h in 0..heads {
                for q in 0..l {
                    for k in 0..t {
                        out.push((r * 1000 + h * 100 + q * 10 + k) as f32);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn sums_class_tokens_and_heads_of_the_conditional_rows() {
        // 2 images under guidance: model rows 0, 1 unconditional, 2, 3
        // conditional; 2 heads, a 2×2 grid (L = 4), 5 tokens; tokens 1 and 3.
        let mut maps = AttributionMaps::new(2, 2, 2, 2, vec![1, 3], 5).unwrap();
        let data = probs(4, 2, 4, 5);
        maps.add("a", &[4, 2, 4, 5], &FloatSlice::F32(&data), 0, 4)
            .unwrap();
        // image i is model row r = 2 + i; its value at q is
        // Σ_{h∈{0,1}} Σ_{k∈{1,3}} (r·1000 + h·100 + q·10 + k).
        let expect = |r: usize, q: usize| -> f32 {
            (0..2)
                .flat_map(|h| [1, 3].map(move |k| (r * 1000 + h * 100 + q * 10 + k) as f32))
                .sum()
        };
        assert_eq!(maps.sums[..4], [0, 1, 2, 3].map(|q| expect(2, q)));
        assert_eq!(maps.sums[4..], [0, 1, 2, 3].map(|q| expect(3, q)));
        // The same output in the [B·heads, L, T] layout, in two chunks of
        // two rows (the second chunk holds the conditional rows).
        let mut chunked = AttributionMaps::new(2, 2, 2, 2, vec![1, 3], 5).unwrap();
        let half = data.len() / 2;
        chunked
            .add("a", &[4, 4, 5], &FloatSlice::F32(&data[..half]), 0, 2)
            .unwrap();
        assert!(chunked.sums.iter().all(|v| *v == 0.0));
        let second: Vec<f32> = probs(2, 2, 4, 5)
            .iter()
            .map(|v| v + 2000.0) // rows 2, 3 of the whole batch
            .collect();
        chunked
            .add("a", &[4, 4, 5], &FloatSlice::F32(&second), 2, 2)
            .unwrap();
        assert_eq!(chunked.sums, maps.sums);
    }

    #[test]
    fn low_resolution_layers_are_upsampled_and_added() {
        // No guidance: rows are the images. A 1×1 map (L = 1) on a 2×2
        // grid adds its value to every cell; a full-resolution one adds
        // per cell.
        let mut maps = AttributionMaps::new(1, 0, 2, 2, vec![0], 2).unwrap();
        maps.add(
            "coarse",
            &[1, 1, 1, 2],
            &FloatSlice::F32(&[0.25, 0.75]),
            0,
            1,
        )
        .unwrap();
        let fine = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6];
        maps.add("fine", &[1, 1, 4, 2], &FloatSlice::F32(&fine), 0, 1)
            .unwrap();
        assert_eq!(maps.added(), 2);
        let got: Vec<f32> = maps.sums.clone();
        for (g, w) in got.iter().zip([0.35f32, 0.45, 0.55, 0.65]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        let out = maps.finish().unwrap();
        let want = [0.0f32, 1.0 / 3.0, 2.0 / 3.0, 1.0];
        for (g, w) in out[0].iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{:?}", out[0]);
        }
    }

    #[test]
    fn f16_outputs_are_read() {
        let bits: Vec<u16> = [0.5f32, 0.25, 0.125, 1.0]
            .iter()
            .map(|v| half::f16::from_f32(*v).to_bits())
            .collect();
        let mut maps = AttributionMaps::new(1, 0, 1, 2, vec![1], 2).unwrap();
        maps.add("h", &[1, 1, 2, 2], &FloatSlice::F16(&bits), 0, 1)
            .unwrap();
        assert_eq!(maps.sums, [0.25, 1.0]);
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let data = vec![0.0f32; 2 * 4 * 5];
        let mut maps = AttributionMaps::new(2, 0, 2, 2, vec![4], 5).unwrap();
        let s = FloatSlice::F32(&data);
        for (shape, rows, why) in [
            (vec![2usize, 1, 4, 5], 3usize, "layout"),
            (vec![3, 4, 5], 2, "layout"),
            (vec![2, 4, 4], 2, "elements"),
            (vec![2, 1, 5, 4], 2, "query positions"),
            (vec![2, 4, 6], 2, "elements"),
        ] {
            let err = maps.add("x", &shape, &s, 0, rows).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("`x`"), "{shape:?}: {err}");
        }
        let few = vec![0.0f32; 2 * 4 * 4];
        let err = maps
            .add("x", &[2, 1, 4, 4], &FloatSlice::F32(&few), 0, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 keys, not the prompt's 5"), "{err}");
        assert!(AttributionMaps::new(1, 0, 2, 2, vec![], 77).is_err());
        assert!(AttributionMaps::new(1, 0, 2, 2, vec![77], 77).is_err());
        let empty = AttributionMaps::new(1, 0, 2, 2, vec![1], 77).unwrap();
        assert!(empty
            .finish()
            .unwrap_err()
            .to_string()
            .contains("no cross-attention"));
    }

    #[test]
    fn png_round_trip_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let map = Array2::from_shape_fn((3, 5), |(y, x)| (y * 5 + x) as f32 / 14.0);
        let path = dir.path().join("000.attribution.png");
        write_png(&path, map.view()).unwrap();
        let back = read_png(&path).unwrap();
        assert_eq!(back.dim(), (3, 5));
        for (a, b) in back.iter().zip(map.iter()) {
            assert!((a - b).abs() <= 0.5 / 65535.0 + 1e-7);
        }
        let rgb = dir.path().join("rgb.png");
        image::RgbImage::new(2, 2).save(&rgb).unwrap();
        assert!(read_png(&rgb).unwrap_err().to_string().contains("16-bit"));
        std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
        assert!(read_png(&dir.path().join("bad.png")).is_err());
    }
}
