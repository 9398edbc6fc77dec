//! Where sampling time goes: model calls, and everything around them, in named parts.
//!
//! [`Generator`](super::generate::Generator) accumulates a [`SamplingTimes`]
//! over its `generate` calls; `bench generate` prints it. Issue #4's
//! target is on the time outside the model calls ("scheduling, guidance,
//! tensor copies, decode to RGB"); the PNG cache writes, which make an
//! interrupted `add` resumable, are counted apart so that the share can be
//! given with and without them.

use std::time::Duration;

/// Wall time of sampling, split into parts. Every field is a sum over the
/// calls measured; [`total`](SamplingTimes::total) is the wall time of the
/// whole calls, so `total − parts()` is what no part covers (cache
/// look-ups, progress callbacks, loop bookkeeping).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplingTimes {
    /// Wall time of the whole sampling calls.
    pub total: Duration,
    /// The text encoder (one call per class, with its small input and
    /// output conversion).
    pub text_encoder: Duration,
    /// UNet runs inside ONNX Runtime (the `run` call only).
    pub unet: Duration,
    /// VAE decoder runs inside ONNX Runtime (the `run` call only).
    pub vae: Duration,
    /// The sampler's arithmetic: `scale_model_input` and the step update.
    pub scheduler: Duration,
    /// Classifier-free guidance: combining the two halves of the model
    /// output, and the check that the output is finite.
    pub guidance: Duration,
    /// Tensor copies and conversions around the model calls: building the
    /// UNet's and the VAE's input tensors (f16 conversion included), the
    /// doubled batch for guidance, the text embeddings per latent, reading
    /// the outputs back.
    pub copies: Duration,
    /// Drawing the starting noise.
    pub noise: Duration,
    /// Reading the cross-attention outputs into attribution maps (only
    /// for UNets that declare them).
    pub attribution: Duration,
    /// Decoded pixels (`[B, 3, H, W]` floats) to 8-bit RGB images.
    pub to_rgb: Duration,
    /// PNG encoding of the finished images for the cache.
    pub png_encode: Duration,
    /// Writing the cache files: temporary file, fsync, rename.
    pub cache_write: Duration,
}

impl SamplingTimes {
    /// The model calls: text encoder, UNet and VAE runs.
    pub fn models(&self) -> Duration {
        self.text_encoder + self.unet + self.vae
    }

    /// Persistence for resumability: PNG encoding and cache writes.
    pub fn cache(&self) -> Duration {
        self.png_encode + self.cache_write
    }

    /// The sum of every named part.
    pub fn parts(&self) -> Duration {
        self.models()
            + self.scheduler
            + self.guidance
            + self.copies
            + self.noise
            + self.attribution
            + self.to_rgb
            + self.cache()
    }

    /// Time no part covers (saturating at zero).
    pub fn unaccounted(&self) -> Duration {
        self.total.saturating_sub(self.parts())
    }

    /// Share of the total spent outside the model calls, cache writes
    /// excluded from both: `(total − models − cache) / (total − cache)`.
    /// This is issue #4's figure ("scheduling, guidance, tensor copies,
    /// decode to RGB").
    pub fn outside_models_share(&self) -> f64 {
        let total = self.total.saturating_sub(self.cache()).as_secs_f64();
        if total <= 0.0 {
            return 0.0;
        }
        (total - self.models().as_secs_f64()).max(0.0) / total
    }

    /// Share of the total spent outside the model calls, cache writes
    /// included: `(total − models) / total`.
    pub fn outside_models_share_with_cache(&self) -> f64 {
        let total = self.total.as_secs_f64();
        if total <= 0.0 {
            return 0.0;
        }
        (total - self.models().as_secs_f64()).max(0.0) / total
    }

    /// Field-wise sum.
    pub fn add(&mut self, other: &SamplingTimes) {
        self.total += other.total;
        self.text_encoder += other.text_encoder;
        self.unet += other.unet;
        self.vae += other.vae;
        self.scheduler += other.scheduler;
        self.guidance += other.guidance;
        self.copies += other.copies;
        self.noise += other.noise;
        self.attribution += other.attribution;
        self.to_rgb += other.to_rgb;
        self.png_encode += other.png_encode;
        self.cache_write += other.cache_write;
    }

    /// Every part with a short name, in display order (not `total`).
    pub fn named_parts(&self) -> [(&'static str, Duration); 12] {
        [
            ("text encoder (model)", self.text_encoder),
            ("UNet (model)", self.unet),
            ("VAE decoder (model)", self.vae),
            ("scheduler step arithmetic", self.scheduler),
            ("guidance combine + finite check", self.guidance),
            ("tensor copies / conversion in and out of ort", self.copies),
            ("noise generation", self.noise),
            ("attribution maps (cross-attention reads)", self.attribution),
            ("latents → RGB conversion", self.to_rgb),
            ("cache: PNG encoding", self.png_encode),
            ("cache: write + fsync + rename", self.cache_write),
            (
                "unaccounted (cache look-ups, loop, callbacks)",
                self.unaccounted(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_with_and_without_cache_writes() {
        let ms = Duration::from_millis;
        let t = SamplingTimes {
            total: ms(100),
            unet: ms(60),
            vae: ms(10),
            png_encode: ms(10),
            cache_write: ms(10),
            scheduler: ms(5),
            ..SamplingTimes::default()
        };
        assert_eq!(t.models(), ms(70));
        assert_eq!(t.unaccounted(), ms(5));
        // (100 − 70 − 20) / (100 − 20)
        assert!((t.outside_models_share() - 10.0 / 80.0).abs() < 1e-12);
        assert!((t.outside_models_share_with_cache() - 0.3).abs() < 1e-12);
        let mut sum = t;
        sum.add(&t);
        assert_eq!(sum.total, ms(200));
        assert_eq!(SamplingTimes::default().outside_models_share(), 0.0);
    }
}
