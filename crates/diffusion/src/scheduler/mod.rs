//! Noise schedules and samplers: DDIM, DPM-Solver++ 2M, Euler and one-step "turbo", after diffusers.
//!
//! Everything here follows the semantics of Hugging Face diffusers
//! (`DDIMScheduler`, `DPMSolverMultistepScheduler`, `EulerDiscreteScheduler`),
//! re-derived from the papers and checked against the diffusers formulas:
//!
//! * the training table ᾱ_t = ∏_{s≤t} (1 − β_s) from `beta_schedule`;
//! * the inference timesteps for each `timestep_spacing`, computed the way
//!   each diffusers scheduler computes them (they differ: DPM-Solver uses
//!   `n + 1` points and drops the last; Euler keeps fractional `linspace`
//!   timesteps as `f32`; see [`ddim_timesteps`], [`dpm_timesteps`],
//!   [`euler_timesteps`]);
//! * one update rule per sampler.
//!
//! # Notation
//!
//! Latents live in one of two scales:
//!
//! * DDPM ("variance preserving") scale, used by DDIM, DPM-Solver++ and
//!   turbo: `x_t = α_t·x₀ + σ_t·ε` with `α_t = √ᾱ_t`, `σ_t = √(1 − ᾱ_t)`;
//! * Karras ("variance exploding") scale, used by Euler:
//!   `x = x₀ + σ·ε` with `σ = √((1 − ᾱ)/ᾱ)`; the model sees `x/√(σ² + 1)`,
//!   which is exactly the DDPM-scale `x_t` of the same noise level.
//!
//! A model output is turned into a prediction of x₀ according to
//! `prediction_type`:
//!
//! * `epsilon`: `x̂₀ = (x_t − σ_t·ε̂)/α_t`;
//! * `v_prediction` (v = α_t·ε − σ_t·x₀): `x̂₀ = α_t·x_t − σ_t·v̂` and
//!   `ε̂ = α_t·v̂ + σ_t·x_t`.
//!
//! # Precision
//!
//! Coefficients are computed in `f64` (diffusers builds its tables in
//! `f32`, so the two agree to about 1e-6 relative); latents are `f32` and
//! every update is evaluated element-wise in `f64` before rounding back.
//!
//! # Configuration
//!
//! [`SchedulerConfig`] reads a diffusers `scheduler_config.json`. Those files
//! carry many keys (`_diffusers_version`, `skip_prk_steps`, …); keys this
//! crate does not use are ignored, and keys whose non-default values would
//! change the result in ways not implemented here (Karras sigmas, dynamic
//! thresholding, zero-terminal-SNR rescaling, …) are rejected when a sampler
//! that would honour them is built.

use std::str::FromStr;

#[cfg(test)]
use ndarray::Zip;
use ndarray::{Array4, ArrayViewMut4};

use crate::{Error, Result};

mod config;
mod ddim;
mod dpm;
mod euler;
mod numpy;
mod timesteps;
mod turbo;

pub use config::{BetaSchedule, FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::Ddim;
pub use dpm::DpmSolverPlusPlus2M;
pub use euler::EulerDiscrete;
pub use timesteps::{ddim_timesteps, dpm_timesteps, euler_timesteps};
pub use turbo::Turbo;

/// OVDiff's number of denoising steps (`sample_support_set.py`,
/// `--num_inference_steps 30`, with `DPMSolverMultistepScheduler`).
pub const DEFAULT_STEPS: usize = 30;

/// The sampler families, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SchedulerKind {
    /// `dpm++2m`: DPM-Solver++ 2M (multistep, second order; OVDiff's choice).
    #[default]
    DpmPlusPlus2M,
    /// `ddim`: DDIM with η = 0 (deterministic).
    Ddim,
    /// `euler`: Euler discrete (Karras et al. 2022, first order).
    Euler,
    /// `turbo`: one step from the last training timestep straight to the x₀
    /// prediction (SD-Turbo / adversarial diffusion distillation).
    Turbo,
}

impl SchedulerKind {
    /// Every kind, in the order the command line lists them.
    pub const ALL: [SchedulerKind; 4] = [
        SchedulerKind::DpmPlusPlus2M,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::Turbo,
    ];

    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::DpmPlusPlus2M => "dpm++2m",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::Turbo => "turbo",
        }
    }

    /// Build the sampler for `steps` inference steps (see [`build_sampler`]).
    pub fn build(self, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Sampler>> {
        build_sampler(config, self, steps)
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedulerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown scheduler `{s}` (use dpm++2m, ddim, euler or turbo)"))
    }
}

/// Build a sampler of `kind` for `steps` steps from a checked config.
///
/// `turbo` takes exactly one step; for few-step sampling with a distilled
/// model use `euler` with `timestep_spacing = "trailing"`, as diffusers does
/// for SD-Turbo.
pub fn build_sampler(
    config: &SchedulerConfig,
    kind: SchedulerKind,
    steps: usize,
) -> Result<Box<dyn Sampler>> {
    config.validate()?;
    Ok(match kind {
        SchedulerKind::DpmPlusPlus2M => Box::new(DpmSolverPlusPlus2M::new(config, steps)?),
        SchedulerKind::Ddim => Box::new(Ddim::new(config, steps)?),
        SchedulerKind::Euler => Box::new(EulerDiscrete::new(config, steps)?),
        SchedulerKind::Turbo => {
            if steps != 1 {
                return Err(Error::Invalid(format!(
                    "the turbo sampler takes exactly 1 step, not {steps}; for several steps \
                     use the euler sampler with timestep_spacing = \"trailing\""
                )));
            }
            Box::new(Turbo::new(config)?)
        }
    })
}

/// A diffusion sampler: the timesteps to visit and the update between them.
///
/// The loop (see [`sample`](super::denoise::sample)) is, for `i` in
/// `0..timesteps().len()`:
///
/// ```text
/// input  = scale_model_input(x, i)
/// output = model(input, timesteps()[i])
/// x      = step(output, i, x)
/// ```
///
/// starting from `x = noise · init_noise_sigma()`. Steps must be taken in
/// order; [`reset`](Sampler::reset) forgets the history of a multistep
/// solver so the sampler can be run again.
pub trait Sampler: Send {
    /// Which family this is.
    fn kind(&self) -> SchedulerKind;
    /// The timesteps fed to the model, highest (noisiest) first.
    fn timesteps(&self) -> &[f64];
    /// The standard deviation of the starting latents.
    fn init_noise_sigma(&self) -> f32;
    /// What the model is fed at step `step`, written into `out` (the shape
    /// of `x`) without allocating. The default is the identity, which every
    /// sampler here but Euler uses.
    fn scale_model_input_into(
        &self,
        x: &Array4<f32>,
        _step: usize,
        mut out: ArrayViewMut4<'_, f32>,
    ) {
        out.assign(x);
    }
    /// [`scale_model_input_into`](Sampler::scale_model_input_into) into a
    /// new array.
    fn scale_model_input(&self, x: &Array4<f32>, step: usize) -> Array4<f32> {
        let mut out = Array4::<f32>::zeros(x.raw_dim());
        self.scale_model_input_into(x, step, out.view_mut());
        out
    }
    /// One update in place: from `x` at step `step` and the model's output
    /// there, `x` becomes the latents at the next step (after the last
    /// step: the result). The samplers here do not allocate (after
    /// DPM-Solver++'s first two steps).
    fn step_in_place(
        &mut self,
        model_output: &Array4<f32>,
        step: usize,
        x: &mut Array4<f32>,
    ) -> Result<()>;
    /// [`step_in_place`](Sampler::step_in_place) on a copy of `x`.
    fn step(
        &mut self,
        model_output: &Array4<f32>,
        step: usize,
        x: &Array4<f32>,
    ) -> Result<Array4<f32>> {
        let mut out = x.clone();
        self.step_in_place(model_output, step, &mut out)?;
        Ok(out)
    }
    /// Forget any multistep history.
    fn reset(&mut self);
    /// The number of steps.
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }
}

fn check_step(
    who: &str,
    model_output: &Array4<f32>,
    step: usize,
    x: &Array4<f32>,
    n: usize,
) -> Result<()> {
    if step >= n {
        return Err(Error::Invalid(format!(
            "{who}: step {step} is past the last of {n} steps"
        )));
    }
    if model_output.shape() != x.shape() {
        return Err(Error::DimensionMismatch {
            what: format!("{who}: model output at step {step}"),
            expected: format!("{:?}", x.shape()),
            found: format!("{:?}", model_output.shape()),
        });
    }
    Ok(())
}

/// The coefficients `(a, b)` of the x₀ prediction `x̂₀ = a·x + b·m` from a
/// VP-scale model output `m` at a noise level with `alpha = √ᾱ`,
/// `sigma = √(1 − ᾱ)`:
///
/// * epsilon: `x̂₀ = (x − σ·m)/α`, `ε̂ = m`;
/// * v: `x̂₀ = α·x − σ·m`, `ε̂ = α·m + σ·x`.
///
/// Every update below evaluates `(a·x + b·m)` element by element in f64
/// and rounds to f32.
fn x0_coefficients(prediction: PredictionType, alpha: f64, sigma: f64) -> (f64, f64) {
    match prediction {
        PredictionType::Epsilon => (1.0 / alpha, -sigma / alpha),
        PredictionType::VPrediction => (alpha, -sigma),
    }
}

/// `a·x + b·y`, element-wise in f64 (as every update here computes it).
#[cfg(test)]
fn lincomb(a: f64, x: &Array4<f32>, b: f64, y: &Array4<f32>) -> Array4<f32> {
    let mut out = Array4::<f32>::zeros(x.raw_dim());
    Zip::from(&mut out)
        .and(x)
        .and(y)
        .for_each(|o, &x, &y| *o = (a * x as f64 + b * y as f64) as f32);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn cfg(spacing: TimestepSpacing, offset: i64) -> SchedulerConfig {
        SchedulerConfig {
            timestep_spacing: Some(spacing),
            steps_offset: offset,
            ..SchedulerConfig::stable_diffusion_v1()
        }
    }

    #[test]
    fn rejects_unsupported_values_with_clear_messages() {
        let err = SchedulerConfig::from_json(r#"{"beta_schedule": "squaredcos_cap_v2"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("squaredcos_cap_v2") && err.contains("scaled_linear"),
            "{err}"
        );
        let err = SchedulerConfig::from_json(r#"{"prediction_type": "sample"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sample`") && err.contains("v_prediction"),
            "{err}"
        );
        let err = SchedulerConfig::from_json(r#"{"timestep_spacing": "karras"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("timestep_spacing"), "{err}");
        let c = SchedulerConfig::from_json(r#"{"use_karras_sigmas": true}"#).unwrap();
        let err = build_sampler(&c, SchedulerKind::DpmPlusPlus2M, 20)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("use_karras_sigmas"), "{err}");
        // DDIM does not read that key, as in diffusers
        assert!(build_sampler(&c, SchedulerKind::Ddim, 20).is_ok());
        let err = build_sampler(&c, SchedulerKind::Turbo, 4)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("exactly 1 step"), "{err}");
        assert!(build_sampler(&c, SchedulerKind::Ddim, 0).is_err());
        assert!(build_sampler(&c, SchedulerKind::Ddim, 1001).is_err());
        let bad = SchedulerConfig {
            trained_betas: Some(vec![0.1; 3]),
            ..SchedulerConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.as_str().parse::<SchedulerKind>().unwrap(), k);
        }
        assert_eq!(SchedulerKind::default(), SchedulerKind::DpmPlusPlus2M);
        let err = "dpm".parse::<SchedulerKind>().unwrap_err();
        assert!(err.contains("dpm++2m"), "{err}");
    }

    #[test]
    fn spacing_defaults_follow_each_diffusers_scheduler() {
        let sd = SchedulerConfig::stable_diffusion_v1();
        let ddim = Ddim::new(&sd, 30).unwrap();
        assert_eq!(ddim.timesteps()[0], 958.0); // leading, offset 1
        let dpm = DpmSolverPlusPlus2M::new(&sd, 30).unwrap();
        assert_eq!(dpm.timesteps()[0], 999.0); // linspace
        assert_eq!(dpm.timesteps()[29], 33.0);
        assert_eq!(dpm.sigmas().len(), 31);
        let euler = EulerDiscrete::new(&sd, 30).unwrap();
        assert_eq!(euler.timesteps()[1], 964.551_696_777_343_8); // linspace
        let turbo = Turbo::new(&sd).unwrap();
        assert_eq!(turbo.timesteps(), &[999.0]);
    }
}
