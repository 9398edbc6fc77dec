//! Sampling a support set: prompt → text embeddings → guided denoising → VAE decode → cached PNGs.
//!
//! Sampling is the expensive part of `add`, so every finished image is
//! written at once to a cache folder under `<home>/cache/support/`, named by
//! a key over everything that determines it (generator fingerprint, prompt,
//! negative prompt, sampler, steps, guidance, size, seed). Image `i` is
//! `NNN.png` in that folder, written atomically (temporary name, then
//! rename), so an interrupted `add` resumes where it stopped and never
//! reads a half-written image. Image `i` starts from noise seeded by
//! `seed` and `i` alone, so batching does not change the images.
//!
//! When the UNet's manifest declares cross-attention outputs, image `i`
//! also gets its attribution map, `NNN.attribution.png`, written just
//! before the image; an image whose map is missing counts as not cached
//! (see [`attribution`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use ndarray::{s, Array4};
use sha2::{Digest, Sha256};

use super::attribution::{self, map_path, AttributionMaps};
use super::denoise::{gaussian_noise_into, sample_timed, OnnxUnet};
use super::pipeline_dir::PipelineDir;
use super::scheduler::{build_sampler, SchedulerConfig, SchedulerKind};
use super::text::TextEncoder;
pub use super::timing::SamplingTimes;
use crate::{Error, Result};
use ovdiff_core::atomic::write_atomic;
use ovdiff_models::runtime::manifest::{Dtype, Role, MANIFEST_FILE};
use ovdiff_models::runtime::tensor::{f16_tensor, float_view, FloatSlice};
use ovdiff_models::runtime::{ModelSession, Runtime};

/// OVDiff's prompt template (`{}` is the class name).
pub const DEFAULT_PROMPT: &str = "A good picture of a {}";

/// OVDiff's negative prompt.
pub const DEFAULT_NEGATIVE: &str =
    "text, low quality, blurry, cartoon, meme, low resolution, bad, poor, faded";

/// How a support set is sampled (the defaults are OVDiff's).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Number of support images.
    pub n: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: no guidance, one pass per step).
    pub guidance: f32,
    /// Sampler.
    pub scheduler: SchedulerKind,
    /// Seed of the first image (image `i` uses a seed derived from it and `i`).
    pub seed: u64,
    /// Images denoised together.
    pub batch: usize,
    /// Image side in pixels (a multiple of the VAE's scale factor).
    pub size: u32,
    /// Prompt template; `{}` becomes the class name.
    pub prompt: String,
    /// Negative prompt (the unconditional text).
    pub negative: String,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            n: 32,
            steps: 30,
            guidance: 8.0,
            scheduler: SchedulerKind::DpmPlusPlus2M,
            seed: 42,
            batch: 8,
            size: 512,
            prompt: DEFAULT_PROMPT.into(),
            negative: DEFAULT_NEGATIVE.into(),
        }
    }
}

impl SampleOptions {
    /// The prompt for `class`.
    pub fn prompt_for(&self, class: &str) -> String {
        if self.prompt.contains("{}") {
            self.prompt.replace("{}", class)
        } else {
            format!("{} {class}", self.prompt)
        }
    }

    /// Effective guidance: turbo models take a single unguided pass.
    pub fn effective_guidance(&self) -> f32 {
        if self.scheduler == SchedulerKind::Turbo {
            0.0
        } else {
            self.guidance
        }
    }

    /// Every parameter as key/value pairs, for the bank's record.
    pub fn params(&self, class: &str) -> Vec<(String, String)> {
        vec![
            ("prompt".into(), self.prompt_for(class)),
            ("negative".into(), self.negative.clone()),
            ("n".into(), self.n.to_string()),
            ("steps".into(), self.steps.to_string()),
            ("guidance".into(), self.effective_guidance().to_string()),
            ("scheduler".into(), self.scheduler.as_str().into()),
            ("seed".into(), self.seed.to_string()),
            ("size".into(), self.size.to_string()),
        ]
    }
}

/// The seed of image `index`.
pub fn image_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A loaded diffusion pipeline.
#[derive(Debug)]
pub struct Generator {
    dir: PipelineDir,
    text: TextEncoder,
    unet: OnnxUnet,
    vae: ModelSession,
    vae_input: (String, Dtype),
    vae_output: String,
    scheduler: SchedulerConfig,
    fingerprint: String,
    times: SamplingTimes,
}

/// What `generate` reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Image `index` was already in the cache.
    Cached {
        /// Its index.
        index: usize,
    },
    /// A denoising step of the batch starting at `first` finished.
    Step {
        /// First image of the batch.
        first: usize,
        /// Images in the batch.
        count: usize,
        /// Steps done.
        step: usize,
        /// Steps in all.
        steps: usize,
    },
    /// Images `first..first + count` were written.
    Written {
        /// First image.
        first: usize,
        /// How many.
        count: usize,
    },
}

impl Generator {
    /// Open an optimum export folder and check every graph before sampling.
    pub fn open(runtime: &Runtime, dir: &Path) -> Result<Generator> {
        let pipeline = PipelineDir::open(dir)?;
        let scheduler = SchedulerConfig::load(&pipeline.scheduler_config_path())?;
        let text = TextEncoder::open(runtime, &pipeline)?;
        let (unet_session, attention) = open_unet(runtime, &pipeline)?;
        let mut unet = OnnxUnet::from_session(unet_session, "unet", dir)?;
        unet.declare_attention(&attention)?;
        let vae = ModelSession::from_graph_in_turns(runtime, &pipeline.vae_decoder_path(), dir)?;
        let inputs = vae.inputs();
        let vae_input = match inputs.as_slice() {
            [one] if one.shape.len() == 4 => match one.dtype {
                Some(d @ (Dtype::F32 | Dtype::F16)) => (one.name.clone(), d),
                _ => {
                    return Err(Error::bundle(
                        dir,
                        "vae_decoder/model.onnx: its input must be float32 or float16",
                    ))
                }
            },
            _ => {
                return Err(Error::bundle(
                    dir,
                    format!(
                        "vae_decoder/model.onnx must take one [B, C, h, w] input \
                         (`latent_sample`), it takes: {}",
                        inputs
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        };
        let outputs = vae.outputs();
        let vae_output = outputs
            .iter()
            .find(|o| o.name == "sample")
            .or(outputs.first())
            .map(|o| o.name.clone())
            .ok_or_else(|| Error::bundle(dir, "vae_decoder/model.onnx has no output"))?;
        let fingerprint = pipeline.fingerprint()?.to_string();
        Ok(Generator {
            dir: pipeline,
            text,
            unet,
            vae,
            vae_input,
            vae_output,
            scheduler,
            fingerprint,
            times: SamplingTimes::default(),
        })
    }

    /// The generator's fingerprint (over every file of the export).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where the time of every `generate` call so far went (see
    /// [`SamplingTimes`]).
    pub fn times(&self) -> SamplingTimes {
        self.times
    }

    /// Start counting [`times`](Generator::times) from zero.
    pub fn reset_times(&mut self) {
        self.times = SamplingTimes::default();
    }

    /// True when the UNet's manifest declares cross-attention outputs: every
    /// sampled image then gets an attribution map
    /// ([`attribution::map_path`]).
    pub fn has_attribution(&self) -> bool {
        !self.unet.attention_outputs().is_empty()
    }

    /// The export folder.
    pub fn dir(&self) -> &PipelineDir {
        &self.dir
    }

    /// The cache folder for `class` sampled with `opts`.
    pub fn cache_dir(&self, cache_root: &Path, class: &str, opts: &SampleOptions) -> PathBuf {
        let mut h = Sha256::new();
        h.update(b"ovdiff-bank support cache v1\0");
        h.update(self.fingerprint.as_bytes());
        for (k, v) in opts.params(class) {
            if k == "n" {
                continue; // more images extend the same set
            }
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\0");
        }
        let key = hex::encode(h.finalize());
        cache_root.join("support").join(&key[..32])
    }

    /// Sample (or find in the cache) the `opts.n` support images of `class`;
    /// returns their paths in index order.
    pub fn generate(
        &mut self,
        class: &str,
        opts: &SampleOptions,
        cache_root: &Path,
        on_progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<PathBuf>> {
        let clock = Instant::now();
        let out = self.generate_inner(class, opts, cache_root, on_progress);
        self.times.total += clock.elapsed();
        out
    }

    fn generate_inner(
        &mut self,
        class: &str,
        opts: &SampleOptions,
        cache_root: &Path,
        on_progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<PathBuf>> {
        let scale = self.dir.vae_scale_factor() as u32;
        if opts.size == 0 || !opts.size.is_multiple_of(scale) {
            return Err(Error::Invalid(format!(
                "--size {} must be a positive multiple of {scale} (the VAE's scale factor)",
                opts.size
            )));
        }
        if opts.n == 0 || opts.batch == 0 || opts.steps == 0 {
            return Err(Error::Invalid(
                "--n, --batch and --steps must be positive".into(),
            ));
        }
        let dir = self.cache_dir(cache_root, class, opts);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let side = (opts.size / scale) as usize;
        let paths: Vec<PathBuf> = (0..opts.n)
            .map(|i| dir.join(format!("{i:03}.png")))
            .collect();
        let attribution = self.has_attribution();
        let todo: Vec<usize> = (0..opts.n)
            .filter(|&i| {
                // a map that cannot be read back (damaged, or another size)
                // counts as missing: the image is sampled again
                let cached = paths[i].is_file()
                    && (!attribution
                        || attribution::read_png(&map_path(&paths[i]))
                            .is_ok_and(|m| m.dim() == (side, side)));
                if cached {
                    on_progress(Progress::Cached { index: i });
                }
                !cached
            })
            .collect();
        if todo.is_empty() {
            return Ok(paths);
        }
        let tok = self.dir.tokenizer();
        let prompt = opts.prompt_for(class);
        let class_tokens = if attribution {
            let t = tok.class_token_positions(&prompt, class);
            if t.is_empty() {
                return Err(Error::Invalid(format!(
                    "the prompt {prompt:?} does not contain the class name {class:?} as whole \
                     words within its first {} tokens, so the attribution map has no class \
                     tokens to follow; use a shorter --prompt in which {{}} stands alone as a \
                     word (e.g. \"A good picture of a {{}}\")",
                    ovdiff_models::tokenizer::CONTEXT_LENGTH - 2
                )));
            }
            t
        } else {
            Vec::new()
        };
        let cond_ids = tok.encode(&prompt);
        let uncond_ids = tok.encode(&opts.negative);
        let guidance = opts.effective_guidance();
        let t = Instant::now();
        let embeddings = self.text.encode(&[uncond_ids, cond_ids])?;
        self.times.text_encoder += t.elapsed();
        let uncond = embeddings.slice(s![0..1, .., ..]).to_owned();
        let cond = embeddings.slice(s![1..2, .., ..]).to_owned();
        let mut sampler = build_sampler(&self.scheduler, opts.scheduler, opts.steps)?;
        let channels = self.dir.latent_channels();
        for chunk in todo.chunks(opts.batch) {
            let t = Instant::now();
            let mut noise = Array4::<f32>::zeros((chunk.len(), channels, side, side));
            for (&i, mut one) in chunk.iter().zip(noise.outer_iter_mut()) {
                let one = one
                    .as_slice_mut()
                    .expect("invariant: an image of a new array is contiguous");
                gaussian_noise_into(image_seed(opts.seed, i), one);
            }
            self.times.noise += t.elapsed();
            let first = chunk[0];
            if attribution {
                let cond_start = if guidance > 1.0 { chunk.len() } else { 0 };
                self.unet.begin_attribution(AttributionMaps::new(
                    chunk.len(),
                    cond_start,
                    side,
                    side,
                    class_tokens.clone(),
                    cond.shape()[1],
                )?);
            }
            let latents = sample_timed(
                &mut self.unet,
                sampler.as_mut(),
                &noise,
                &cond,
                (guidance > 1.0).then_some(&uncond),
                guidance,
                &mut |step, steps| {
                    on_progress(Progress::Step {
                        first,
                        count: chunk.len(),
                        step,
                        steps,
                    })
                },
                &mut self.times,
            );
            let (run, copies) = self.unet.take_times();
            self.times.unet += run;
            self.times.copies += copies;
            self.times.attribution += self.unet.take_attribution_time();
            let maps = self.unet.take_attribution();
            let latents = latents?;
            let maps = match maps {
                Some(m) => m.finish()?,
                None => Vec::new(),
            };
            let images = self.decode(&latents)?;
            for (k, (&i, img)) in chunk.iter().zip(images).enumerate() {
                if let Some(map) = maps.get(k) {
                    // before the image: a cached image without its map is redone
                    let t = Instant::now();
                    let bytes = attribution::encode_png(map.view())?;
                    self.times.png_encode += t.elapsed();
                    let t = Instant::now();
                    write_atomic(&map_path(&paths[i]), &bytes)?;
                    self.times.cache_write += t.elapsed();
                }
                let t = Instant::now();
                let bytes = encode_png(&paths[i], &img)?;
                self.times.png_encode += t.elapsed();
                let t = Instant::now();
                write_atomic(&paths[i], &bytes)?;
                self.times.cache_write += t.elapsed();
            }
            on_progress(Progress::Written {
                first,
                count: chunk.len(),
            });
            // crash tests: die as a kill would, after a batch is cached
            ovdiff_core::failpoint::abort_at("generate-after-batch");
        }
        Ok(paths)
    }

    /// Latents → 8-bit RGB: divide by the VAE scaling factor, decode, map
    /// [-1, 1] to [0, 255] with clamping.
    pub fn decode(&mut self, latents: &Array4<f32>) -> Result<Vec<RgbImage>> {
        let clock = Instant::now();
        let k = 1.0 / self.dir.scaling_factor() as f32;
        let shape: Vec<i64> = latents.shape().iter().map(|d| *d as i64).collect();
        let data: Vec<f32> = latents.iter().map(|v| v * k).collect();
        let ctx = |e| Error::ort("building the VAE decoder input", e);
        let input = match self.vae_input.1 {
            Dtype::F16 => {
                let h: Vec<half::f16> = data.iter().map(|v| half::f16::from_f32(*v)).collect();
                f16_tensor(&shape, &h).map_err(ctx)?.into_dyn()
            }
            _ => ort::value::Tensor::from_array((shape, data))
                .map_err(ctx)?
                .into_dyn(),
        };
        let name = self.vae_input.0.clone();
        self.times.copies += clock.elapsed();
        let clock = Instant::now();
        let mut outputs = self
            .vae
            .session_mut()
            .run(ort::inputs![name.as_str() => input])
            .map_err(|e| Error::ort("running the VAE decoder", e))?;
        self.times.vae += clock.elapsed();
        let clock = Instant::now();
        let value = outputs
            .remove(self.vae_output.as_str())
            .ok_or_else(|| Error::bundle(self.dir.root(), "VAE output missing at run time"))?;
        let (shape, pixels) =
            float_view(&value).map_err(|e| Error::ort("reading the VAE decoder output", e))?;
        self.times.copies += clock.elapsed();
        if shape.len() != 4 || shape[0] != latents.shape()[0] || shape[1] != 3 {
            return Err(Error::DimensionMismatch {
                what: "VAE decoder output".into(),
                expected: format!("[{}, 3, H, W]", latents.shape()[0]),
                found: format!("{shape:?}"),
            });
        }
        let clock = Instant::now();
        let (h, w) = (shape[2], shape[3]);
        let images = match pixels {
            FloatSlice::F32(p) => planes_to_rgb(p, shape[0], h, w),
            FloatSlice::F16(bits) => {
                let p: Vec<f32> = bits
                    .iter()
                    .map(|b| half::f16::from_bits(*b).to_f32())
                    .collect();
                planes_to_rgb(&p, shape[0], h, w)
            }
        };
        self.times.to_rgb += clock.elapsed();
        Ok(images)
    }
}

/// The UNet's session and the cross-attention outputs its manifest
/// declares. A plain export has no `unet/manifest.toml`: the graph is
/// loaded as it is and declares none. With one (see
/// `scripts/expose_attention.py`), the manifest is read and its files
/// checked like any bundle's, its graph must be `unet/model.onnx`, and the
/// session's inputs and outputs are checked against it.
fn open_unet(runtime: &Runtime, pipeline: &PipelineDir) -> Result<(ModelSession, Vec<String>)> {
    let unet_dir = pipeline
        .unet_path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if !unet_dir.join(MANIFEST_FILE).is_file() {
        let session =
            ModelSession::from_graph_in_turns(runtime, &pipeline.unet_path(), pipeline.root())?;
        return Ok((session, Vec::new()));
    }
    // The manifest comes from scripts/expose_attention.py, not from the
    // set-up: say so instead of the bundles' generic advice.
    let stale = |e: Error| -> Error {
        let why = match &e {
            Error::HashMismatch { path, .. } => {
                format!("{} changed since the manifest was written", path.display())
            }
            other => other.report(),
        };
        Error::Invalid(format!(
            "{} does not match its manifest.toml ({why}); the manifest is written by \
             scripts/expose_attention.py: if the UNet was exported again or edited, run \
             `python3 scripts/expose_attention.py {}` again",
            unet_dir.display(),
            pipeline.root().display()
        ))
    };
    let bundle = runtime.open_bundle(&unet_dir).map_err(stale)?;
    let m = bundle.manifest();
    if m.role != Role::Unet {
        return Err(Error::bundle(
            &unet_dir,
            format!(
                "manifest.toml: role is {}, but the UNet's must be unet",
                m.role
            ),
        ));
    }
    if m.graph_path(&unet_dir) != Some(pipeline.unet_path()) {
        return Err(Error::bundle(
            &unet_dir,
            "manifest.toml: [graph] file must be model.onnx, the graph of the export",
        ));
    }
    let attention = m
        .attribution
        .as_ref()
        .map(|a| a.cross_attention_outputs.clone())
        .unwrap_or_default();
    let session = ModelSession::new_in_turns(runtime, &bundle).map_err(stale)?;
    Ok((session, attention))
}

/// Decoded pixel `v` in [-1, 1] to 8 bits: `round((v/2 + 0.5)·255)`,
/// clamped, rounding half away from zero, NaN to 0, exactly as
/// `((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8`. The rounding
/// is done as `⌊y + 0.5⌋` in f64, which is exact for every f32 `y` in
/// [0, 255] (no libm call per value).
#[inline]
fn pixel_to_u8(v: f32) -> u8 {
    let y = (v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    (y as f64 + 0.5) as u8
}

/// `[B, 3, H, W]` planes (row-major, `pixels.len() = B·3·H·W`) to `B`
/// interleaved 8-bit RGB images.
fn planes_to_rgb(pixels: &[f32], batch: usize, h: usize, w: usize) -> Vec<RgbImage> {
    let plane = h * w;
    (0..batch)
        .map(|b| {
            let image = &pixels[b * 3 * plane..(b + 1) * 3 * plane];
            let (r, rest) = image.split_at(plane);
            let (g, bl) = rest.split_at(plane);
            let mut buf = vec![0u8; 3 * plane];
            for (((dst, &r), &g), &bl) in buf.chunks_exact_mut(3).zip(r).zip(g).zip(bl) {
                dst[0] = pixel_to_u8(r);
                dst[1] = pixel_to_u8(g);
                dst[2] = pixel_to_u8(bl);
            }
            RgbImage::from_raw(w as u32, h as u32, buf)
                .expect("invariant: the buffer holds 3 bytes per pixel")
        })
        .collect()
}

/// A finished image as PNG bytes, encoded as
/// [`write_rgb_png`](ovdiff_segment::render::write_rgb_png) does.
fn encode_png(path: &Path, img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Image {
        path: path.to_path_buf(),
        problem: "cannot encode the PNG".into(),
        source: Some(e.into()),
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_params() {
        let o = SampleOptions::default();
        assert_eq!(o.prompt_for("giraffe"), "A good picture of a giraffe");
        assert_eq!(o.effective_guidance(), 8.0);
        let turbo = SampleOptions {
            scheduler: SchedulerKind::Turbo,
            ..SampleOptions::default()
        };
        assert_eq!(turbo.effective_guidance(), 0.0);
        assert!(o.params("x").iter().any(|(k, v)| k == "seed" && v == "42"));
        assert_ne!(image_seed(42, 0), image_seed(42, 1));
    }

    fn pixel_reference(v: f32) -> u8 {
        ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8
    }

    #[test]
    fn pixel_conversion_matches_the_reference() {
        // every 65,521st f32 bit pattern, and the neighbours of every value
        // that lands on a half-integer, where rounding could differ
        let mut bits = 0u32;
        loop {
            let v = f32::from_bits(bits);
            assert_eq!(pixel_to_u8(v), pixel_reference(v), "{v:e} ({bits:#x})");
            match bits.checked_add(65_521) {
                Some(b) => bits = b,
                None => break,
            }
        }
        for k in 0..=510 {
            let v = (k as f32 / 2.0) / 255.0 * 2.0 - 1.0;
            let mut b = v.to_bits().wrapping_sub(64);
            for _ in 0..128 {
                let v = f32::from_bits(b);
                assert_eq!(pixel_to_u8(v), pixel_reference(v), "{v:e}");
                b = b.wrapping_add(1);
            }
        }
        for v in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1.0,
            -1.0,
        ] {
            assert_eq!(pixel_to_u8(v), pixel_reference(v), "{v}");
        }
    }

    /// Every f32 bit pattern (about 10 s in release): `cargo test --release
    /// --lib pixel_conversion_exhaustive -- --ignored`.
    #[test]
    #[ignore]
    fn pixel_conversion_exhaustive() {
        for bits in 0..=u32::MAX {
            let v = f32::from_bits(bits);
            assert_eq!(pixel_to_u8(v), pixel_reference(v), "{v:e} ({bits:#x})");
        }
    }

    #[test]
    fn planes_become_interleaved_rgb() {
        // 2 images of 2×3: pixel value = image, channel and position coded
        let (b, h, w) = (2, 2, 3);
        let pixels: Vec<f32> = (0..b * 3 * h * w)
            .map(|i| (i as f32 / 36.0) * 2.0 - 1.0)
            .collect();
        let images = planes_to_rgb(&pixels, b, h, w);
        for (n, img) in images.iter().enumerate() {
            assert_eq!(img.dimensions(), (w as u32, h as u32));
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let v = pixels[n * 3 * h * w + c * h * w + y * w + x];
                        assert_eq!(img.get_pixel(x as u32, y as u32)[c], pixel_reference(v));
                    }
                }
            }
        }
    }
}
