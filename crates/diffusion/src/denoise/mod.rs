//! The denoising loop: a [`Denoiser`] (the UNet), classifier-free guidance, seeded noise, and the ONNX UNet.
//!
//! [`sample`] runs a [`Sampler`](crate::scheduler::Sampler) over a [`Denoiser`] the way diffusers'
//! Stable Diffusion pipeline does:
//!
//! 1. the starting latents are the caller's unit Gaussian noise times the
//!    sampler's `init_noise_sigma`;
//! 2. at each timestep, with classifier-free guidance (Ho & Salimans 2022),
//!    the unconditional and conditional passes go through the model as
//!    **one** batch, unconditional half first, and are combined as
//!    `ε = ε_u + g·(ε_c − ε_u)`; with `g ≤ 1` or no unconditional embedding
//!    only the conditional pass runs (`ε = ε_c`), as diffusers'
//!    `do_classifier_free_guidance = guidance_scale > 1`;
//! 3. the sampler turns the model output into the next latents.
//!
//! [`gaussian_noise`] draws the starting noise from a seeded SplitMix64 via
//! Box–Muller. It is reproducible bit for bit across runs and machines, but
//! it is **not** torch's generator: the same seed does not give the latents
//! `torch.Generator().manual_seed(seed)` would, so images differ from a
//! diffusers run with the same seed.
//!
//! [`OnnxUnet`] runs an exported UNet (e.g. `optimum-cli export onnx`),
//! adapting to the exports' differences in the `timestep` input and to fp16
//! graphs.

use ndarray::{Array3, Array4, ArrayView4, ArrayViewMut4};

use crate::{Error, Result};

mod noise;
#[cfg(test)]
mod oracle;
mod sampling;
mod unet;

pub use noise::{gaussian_noise, gaussian_noise_into};
pub use sampling::{sample, sample_timed};
pub use unet::{OnnxUnet, TimestepShape, UNET_INPUTS, UNET_OUTPUT};

/// OVDiff's guidance scale (`sample_support_set.py`: `gs = 8.0`).
pub const DEFAULT_GUIDANCE: f32 = 8.0;

/// A noise-prediction model: the UNet of a latent diffusion model.
///
/// `latents` is `[B, C, H, W]` in the scale the sampler feeds (already
/// through `scale_model_input`), `timestep` the sampler's timestep (possibly
/// fractional for Euler with `linspace` spacing), `cond` the text
/// embeddings `[B, 77, D]`, one row per latent. The output has the shape of
/// `latents` and means whatever the scheduler config's `prediction_type`
/// says (ε or v).
///
/// Closures `FnMut(&Array4<f32>, f64, &Array3<f32>) -> Result<Array4<f32>>`
/// are denoisers too, which is handy for tests and oracles.
pub trait Denoiser {
    /// One forward pass.
    fn predict(
        &mut self,
        latents: &Array4<f32>,
        timestep: f64,
        cond: &Array3<f32>,
    ) -> Result<Array4<f32>>;

    /// Get ready for [`predict_into`](Denoiser::predict_into) calls that
    /// all pass `cond`; [`sample`] calls it once before its steps. The ONNX
    /// UNet converts the embeddings into its input tensor here, once,
    /// instead of at every step. The default does nothing.
    fn prepare(&mut self, cond: &Array3<f32>) -> Result<()> {
        let _ = cond;
        Ok(())
    }

    /// One forward pass written into `out` (the shape of `latents`).
    /// `cond` must be the embeddings last given to
    /// [`prepare`](Denoiser::prepare), unchanged since: an implementation
    /// may use what it prepared from them. The default calls
    /// [`predict`](Denoiser::predict) and copies.
    fn predict_into(
        &mut self,
        latents: ArrayView4<'_, f32>,
        timestep: f64,
        cond: &Array3<f32>,
        mut out: ArrayViewMut4<'_, f32>,
    ) -> Result<()> {
        let got = self.predict(&latents.to_owned(), timestep, cond)?;
        if got.shape() != out.shape() {
            return Err(Error::DimensionMismatch {
                what: format!("denoiser output at timestep {timestep}"),
                expected: format!("{:?}", out.shape()),
                found: format!("{:?}", got.shape()),
            });
        }
        out.assign(&got);
        Ok(())
    }
}

impl<F> Denoiser for F
where
    F: FnMut(&Array4<f32>, f64, &Array3<f32>) -> Result<Array4<f32>>,
{
    fn predict(
        &mut self,
        latents: &Array4<f32>,
        timestep: f64,
        cond: &Array3<f32>,
    ) -> Result<Array4<f32>> {
        self(latents, timestep, cond)
    }
}
