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

use std::path::Path;
use std::str::FromStr;

use ndarray::{Array4, ArrayViewMut4, Zip};
use serde::{Deserialize, Deserializer};

use crate::{Error, Result};

/// OVDiff's number of denoising steps (`sample_support_set.py`,
/// `--num_inference_steps 30`, with `DPMSolverMultistepScheduler`).
pub const DEFAULT_STEPS: usize = 30;

// ------------------------------------------------------------------ config

/// How the β_t of the training schedule are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// β linear from `beta_start` to `beta_end`.
    Linear,
    /// √β linear from √`beta_start` to √`beta_end` (Stable Diffusion).
    ScaledLinear,
}

impl TryFrom<String> for BetaSchedule {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "linear" => Ok(BetaSchedule::Linear),
            "scaled_linear" => Ok(BetaSchedule::ScaledLinear),
            other => Err(format!(
                "beta_schedule `{other}` is not supported (supported: linear, scaled_linear)"
            )),
        }
    }
}

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise ε.
    Epsilon,
    /// The velocity v = α_t·ε − σ_t·x₀ (Salimans & Ho 2022; SD 2.x 768).
    VPrediction,
}

impl TryFrom<String> for PredictionType {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "epsilon" => Ok(PredictionType::Epsilon),
            "v_prediction" => Ok(PredictionType::VPrediction),
            other => Err(format!(
                "prediction_type `{other}` is not supported (supported: epsilon, v_prediction)"
            )),
        }
    }
}

/// How inference timesteps are spread over the training range (Lin et al.
/// 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
/// table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `k·⌊N/n⌋ + steps_offset`: never reaches the last training step.
    Leading,
    /// Counted down from `N` in steps of `N/n`, minus one: starts at `N − 1`.
    Trailing,
    /// Evenly spaced over `[0, N − 1]`.
    Linspace,
}

impl TryFrom<String> for TimestepSpacing {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => Err(format!(
                "timestep_spacing `{other}` is not supported (supported: leading, trailing, linspace)"
            )),
        }
    }
}

/// The noise level after the last step of DPM-Solver and Euler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    /// σ = 0: the last step lands on the x₀ prediction.
    Zero,
    /// σ = σ of training step 0.
    SigmaMin,
}

impl TryFrom<String> for FinalSigmas {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "zero" => Ok(FinalSigmas::Zero),
            "sigma_min" => Ok(FinalSigmas::SigmaMin),
            other => Err(format!(
                "final_sigmas_type `{other}` is not supported (supported: zero, sigma_min)"
            )),
        }
    }
}

macro_rules! string_enum_serde {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_enum_serde!(BetaSchedule, PredictionType, TimestepSpacing, FinalSigmas);

/// `null` reads as `false` (diffusers writes `None` for some optional flags).
fn null_false<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// The fields of a diffusers `scheduler_config.json` that the samplers use.
///
/// Missing keys take diffusers' defaults (those of `DDIMScheduler` for
/// `set_alpha_to_one` and `clip_sample`, which only DDIM reads). A missing
/// `timestep_spacing` means "the default of the sampler being built":
/// `leading` for DDIM, `linspace` for DPM-Solver and Euler, exactly as
/// `Scheduler.from_config` resolves it for an old Stable Diffusion 1.x config
/// (a `PNDMScheduler` config without that key).
///
/// Unknown keys are ignored: diffusers configs carry many keys for other
/// schedulers and for bookkeeping. The solver itself (`algorithm_type`,
/// `solver_order`, `solver_type`) is fixed by the [`SchedulerKind`], so those
/// keys are ignored too. Keys whose non-default values this crate does not
/// implement are read and rejected by the samplers that would honour them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The diffusers class the config was saved from (informational).
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Number of training steps N (default 1000).
    pub num_train_timesteps: usize,
    /// First β (default 0.0001).
    pub beta_start: f64,
    /// Last β (default 0.02).
    pub beta_end: f64,
    /// β layout (default `linear`).
    pub beta_schedule: BetaSchedule,
    /// Explicit β table, overriding the three fields above (default none).
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts (default `epsilon`).
    pub prediction_type: PredictionType,
    /// Timestep spacing; `None` = the sampler's own default.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to `leading` timesteps (default 0; Stable Diffusion uses 1).
    pub steps_offset: i64,
    /// DDIM: ᾱ after the last step is 1 (`true`, the default) or ᾱ₀.
    pub set_alpha_to_one: bool,
    /// DDIM: clip x̂₀ to `±clip_sample_range` (default `true`, as in
    /// `DDIMScheduler`; Stable Diffusion configs set it to `false`).
    pub clip_sample: bool,
    /// DDIM: the clipping range (default 1).
    pub clip_sample_range: f64,
    /// DPM-Solver and Euler: σ after the last step (default `zero`).
    pub final_sigmas_type: FinalSigmas,
    /// DPM-Solver: first-order final step when there are fewer than 15
    /// steps (default `true`).
    pub lower_order_final: bool,
    /// DPM-Solver: always take a first-order final step (default `false`).
    pub euler_at_final: bool,
    /// DPM-Solver: clip λ(t) from below (default −∞, i.e. `None`).
    pub lambda_min_clipped: Option<f64>,
    /// Not implemented: dynamic thresholding (must be `false`).
    #[serde(deserialize_with = "null_false")]
    pub thresholding: bool,
    /// Not implemented: Karras σ schedule (must be `false`).
    #[serde(deserialize_with = "null_false")]
    pub use_karras_sigmas: bool,
    /// Not implemented: exponential σ schedule (must be `false`).
    #[serde(deserialize_with = "null_false")]
    pub use_exponential_sigmas: bool,
    /// Not implemented: beta σ schedule (must be `false`).
    #[serde(deserialize_with = "null_false")]
    pub use_beta_sigmas: bool,
    /// Not implemented: λ-uniform steps (must be `false`).
    #[serde(deserialize_with = "null_false")]
    pub use_lu_lambdas: bool,
    /// Not implemented: flow-matching σ (must be `false`).
    #[serde(deserialize_with = "null_false")]
    pub use_flow_sigmas: bool,
    /// Not implemented: zero-terminal-SNR rescaling (must be `false`).
    #[serde(deserialize_with = "null_false")]
    pub rescale_betas_zero_snr: bool,
    /// Euler: only `linear` σ interpolation is implemented.
    pub interpolation_type: Option<String>,
    /// Euler: only `discrete` timesteps are implemented.
    pub timestep_type: Option<String>,
    /// DPM-Solver: learned variance (`learned`, `learned_range`) is not
    /// implemented; must be absent or `null`.
    pub variance_type: Option<String>,
}

impl Default for SchedulerConfig {
    /// diffusers' defaults (`DDIMScheduler` for the DDIM-only fields).
    fn default() -> Self {
        SchedulerConfig {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_sample: true,
            clip_sample_range: 1.0,
            final_sigmas_type: FinalSigmas::Zero,
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: None,
            thresholding: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            rescale_betas_zero_snr: false,
            interpolation_type: None,
            timestep_type: None,
            variance_type: None,
        }
    }
}

impl SchedulerConfig {
    /// The Stable Diffusion 1.x schedule (`scaled_linear` 0.00085 … 0.012 over
    /// 1000 steps, `steps_offset` 1, `set_alpha_to_one` and `clip_sample`
    /// false), as in `runwayml/stable-diffusion-v1-5`'s config.
    pub fn stable_diffusion_v1() -> Self {
        SchedulerConfig {
            class_name: Some("PNDMScheduler".into()),
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: false,
            ..SchedulerConfig::default()
        }
    }

    /// Parse the text of a `scheduler_config.json` and check it.
    ///
    /// Python's `json` module writes `-Infinity`, `Infinity` and `NaN`
    /// (e.g. `"lambda_min_clipped": -Infinity`), which are not JSON; outside
    /// strings they are read as `null`, i.e. the default.
    pub fn from_json(text: &str) -> Result<Self> {
        let cleaned = python_json_to_json(text);
        let config: SchedulerConfig = serde_json::from_str(&cleaned)
            .map_err(|e| Error::Invalid(format!("scheduler config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Read and check `path` (a `scheduler_config.json`).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        SchedulerConfig::from_json(&text)
            .map_err(|e| Error::Invalid(format!("{}: {}", path.display(), e.report())))
    }

    /// Check the values every sampler relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("scheduler config: {m}")));
        if self.num_train_timesteps == 0 {
            return bad("num_train_timesteps must be positive".into());
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return bad(format!(
                    "trained_betas has {} values but num_train_timesteps is {}",
                    b.len(),
                    self.num_train_timesteps
                ));
            }
        }
        if self.rescale_betas_zero_snr {
            return bad("rescale_betas_zero_snr = true is not supported".into());
        }
        let betas = self.betas();
        if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
            return bad(format!("every beta must lie in (0, 1), found {b}"));
        }
        Ok(())
    }

    /// β_t for t = 0 … N − 1.
    pub fn betas(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        if let Some(b) = &self.trained_betas {
            return b.clone();
        }
        match self.beta_schedule {
            BetaSchedule::Linear => np_linspace(self.beta_start, self.beta_end, n),
            BetaSchedule::ScaledLinear => {
                np_linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                    .into_iter()
                    .map(|r| r * r)
                    .collect()
            }
        }
    }

    /// ᾱ_t = ∏_{s ≤ t} (1 − β_s), for t = 0 … N − 1.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 1.0;
        self.betas()
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }

    fn spacing_or(&self, default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(default)
    }

    /// Reject the σ-schedule variants that DPM-Solver and Euler would honour.
    fn check_sigma_options(&self, who: &str) -> Result<()> {
        let flags = [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("use_lu_lambdas", self.use_lu_lambdas),
            ("use_flow_sigmas", self.use_flow_sigmas),
            ("thresholding", self.thresholding),
        ];
        if let Some((name, _)) = flags.iter().find(|(_, on)| *on) {
            return Err(Error::Invalid(format!(
                "scheduler config: {name} = true is not supported by the {who} sampler"
            )));
        }
        Ok(())
    }
}

/// Replace the bare tokens `NaN`, `Infinity` and `-Infinity` that Python's
/// `json` writes (outside strings) with `null`.
fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .iter()
            .find(|t| rest.starts_with(**t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

// ------------------------------------------------------------ numpy mirrors

/// `numpy.linspace(start, stop, num)`: `start + i·step`, the last value set
/// to `stop` exactly; `num = 1` gives `[start]`.
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// The first `count` values of `numpy.arange(start, stop, step)` for floats:
/// `start`, `start + step`, then `start + i·δ` with `δ = (start + step) −
/// start` (numpy's fill rule).
///
/// numpy's length, `⌈(stop − start)/step⌉`, can overshoot by one through
/// rounding (e.g. 61 `trailing` steps of 1000 yield a 62nd timestep of −1 in
/// diffusers, which then indexes ᾱ[−1] = ᾱ_999); we keep exactly the `count`
/// timesteps that were asked for.
fn np_arange_first(start: f64, stop: f64, step: f64, count: usize) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len.min(count))
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `numpy.interp(x, [0, 1, …, len − 1], table)`, clamped at both ends.
fn interp(table: &[f64], x: f64) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0];
    }
    if x >= last as f64 {
        return table[last];
    }
    let j = x.floor() as usize;
    let frac = x - j as f64;
    if frac == 0.0 {
        return table[j];
    }
    (table[j + 1] - table[j]) * frac + table[j]
}

/// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training step.
fn karras_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

fn check_steps(config: &SchedulerConfig, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::Invalid(
            "the number of steps must be positive".into(),
        ));
    }
    if steps > config.num_train_timesteps {
        return Err(Error::Invalid(format!(
            "{steps} steps is more than the {} training timesteps",
            config.num_train_timesteps
        )));
    }
    Ok(())
}

fn check_range(ts: &[i64], n_train: usize) -> Result<()> {
    if let Some(t) = ts.iter().find(|t| **t < 0 || **t >= n_train as i64) {
        return Err(Error::Invalid(format!(
            "timestep {t} lies outside the {n_train} training timesteps \
             (check steps_offset and timestep_spacing)"
        )));
    }
    Ok(())
}

/// `DDIMScheduler.set_timesteps`: integer timesteps, highest first.
///
/// * `linspace`: `round(linspace(0, N − 1, n))`;
/// * `leading`: `k·⌊N/n⌋ + steps_offset` for k = n − 1 … 0;
/// * `trailing`: `round(arange(N, 0, −N/n)) − 1`.
pub fn ddim_timesteps(
    n_train: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: i64,
) -> Vec<i64> {
    let n = n_train as f64;
    let mut ts: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, n - 1.0, steps)
            .into_iter()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (n_train / steps) as i64;
            (0..steps as i64)
                .map(|k| k * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange_first(n, 0.0, -(n / steps as f64), steps)
            .into_iter()
            .map(|t| t.round_ties_even() as i64 - 1)
            .collect(),
    };
    if spacing != TimestepSpacing::Trailing {
        ts.reverse();
    }
    ts
}

/// `DPMSolverMultistepScheduler.set_timesteps`: integer timesteps, highest
/// first, from `n + 1` points of which the last (0) is dropped.
///
/// `last` is the number of usable training steps (N unless
/// `lambda_min_clipped` cuts the noisy end):
///
/// * `linspace`: `round(linspace(0, last − 1, n + 1))`, reversed, minus the
///   final 0;
/// * `leading`: `k·⌊last/(n + 1)⌋ + steps_offset` for k = n … 1;
/// * `trailing`: `round(arange(last, 0, −N/n)) − 1`.
pub fn dpm_timesteps(
    n_train: usize,
    last: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, last as f64 - 1.0, steps + 1)
                .into_iter()
                .map(|t| t.round_ties_even() as i64)
                .collect();
            v.reverse();
            v.truncate(steps);
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (last / (steps + 1)) as i64;
            (1..=steps as i64)
                .rev()
                .map(|k| k * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            np_arange_first(last as f64, 0.0, -ratio, steps)
                .into_iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// `EulerDiscreteScheduler.set_timesteps`: `f32` timesteps (returned as
/// `f64`), highest first. `linspace` keeps fractional values
/// (`linspace(0, N − 1, n)` in `f32`); `leading` and `trailing` are the
/// integers of [`ddim_timesteps`].
pub fn euler_timesteps(
    n_train: usize,
    steps: usize,
    spacing: TimestepSpacing,
    steps_offset: i64,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = np_linspace(0.0, n_train as f64 - 1.0, steps)
                .into_iter()
                .map(|t| t as f32 as f64)
                .collect();
            v.reverse();
            v
        }
        _ => ddim_timesteps(n_train, steps, spacing, steps_offset)
            .into_iter()
            .map(|t| t as f32 as f64)
            .collect(),
    }
}

// ------------------------------------------------------------ the samplers

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

/// `step` from `step_in_place`: a copy of `x` updated in place.
/// DDIM (Song et al. 2021, eq. 12) with η = 0, as `DDIMScheduler`.
///
/// At timestep t with previous timestep `t' = t − ⌊N/n⌋` (diffusers' rule,
/// whatever the spacing):
///
/// ```text
/// x_{t'} = √ᾱ_{t'} · x̂₀ + √(1 − ᾱ_{t'}) · ε̂
/// ```
///
/// with ᾱ_{t'} = 1 when t' < 0 and `set_alpha_to_one`, else ᾱ₀. x̂₀ is
/// clipped to `±clip_sample_range` when `clip_sample` is set (ε̂ is not
/// recomputed, as diffusers' default `use_clipped_model_output = false`).
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    timesteps: Vec<f64>,
    int_timesteps: Vec<i64>,
    step_ratio: i64,
    prediction: PredictionType,
    clip: Option<f64>,
}

impl Ddim {
    /// A DDIM sampler for `steps` steps (default spacing `leading`).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Ddim> {
        config.validate()?;
        check_steps(config, steps)?;
        if config.thresholding {
            return Err(Error::Invalid(
                "scheduler config: thresholding = true is not supported by the ddim sampler".into(),
            ));
        }
        let n = config.num_train_timesteps;
        let ac = config.alphas_cumprod();
        let ts = ddim_timesteps(
            n,
            steps,
            config.spacing_or(TimestepSpacing::Leading),
            config.steps_offset,
        );
        check_range(&ts, n)?;
        Ok(Ddim {
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { ac[0] },
            alphas_cumprod: ac,
            timesteps: ts.iter().map(|t| *t as f64).collect(),
            int_timesteps: ts,
            step_ratio: (n / steps) as i64,
            prediction: config.prediction_type,
            clip: config.clip_sample.then_some(config.clip_sample_range),
        })
    }
}

impl Sampler for Ddim {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    fn step_in_place(
        &mut self,
        model_output: &Array4<f32>,
        step: usize,
        x: &mut Array4<f32>,
    ) -> Result<()> {
        check_step("ddim", model_output, step, x, self.timesteps.len())?;
        let t = self.int_timesteps[step];
        let prev = t - self.step_ratio;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (alpha, sigma) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (a, b) = x0_coefficients(self.prediction, alpha, sigma);
        let (keep, noise) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
        let clip = self.clip.map(|r| r as f32);
        let v_prediction = self.prediction == PredictionType::VPrediction;
        Zip::from(x).and(model_output).for_each(|x, &m| {
            let mut x0 = (a * *x as f64 + b * m as f64) as f32;
            if let Some(r) = clip {
                x0 = x0.clamp(-r, r);
            }
            let eps = if v_prediction {
                (sigma * *x as f64 + alpha * m as f64) as f32
            } else {
                m
            };
            *x = (keep * x0 as f64 + noise * eps as f64) as f32;
        });
        Ok(())
    }
    fn reset(&mut self) {}
}

/// DPM-Solver++ 2M (Lu et al. 2022, "DPM-Solver++", algorithm 2, midpoint
/// form), as `DPMSolverMultistepScheduler` with `algorithm_type =
/// "dpmsolver++"`, `solver_order = 2`, `solver_type = "midpoint"`.
///
/// With `α_s = 1/√(σ_s² + 1)`, `σ̃_s = σ_s·α_s` (VP scale), `λ_s = ln(α_s/σ̃_s)`
/// and `h = λ_t − λ_s` for a step from s to t, D₀ the current x₀ prediction:
///
/// ```text
/// first order:   x_t = (σ̃_t/σ̃_s)·x_s − α_t·(e^{−h} − 1)·D₀
/// second order:  x_t = (σ̃_t/σ̃_s)·x_s − α_t·(e^{−h} − 1)·(D₀ + ½·D₁),
///                D₁ = (D₀ − D₋₁)/r,  r = (λ_s − λ_{s−1})/h
/// ```
///
/// The first step is first order (no history). The last step is first
/// order when `final_sigmas_type = "zero"`, when `euler_at_final`, or when
/// `lower_order_final` and there are fewer than 15 steps (diffusers' rule);
/// landing on σ = 0 makes it return D₀.
#[derive(Debug, Clone)]
pub struct DpmSolverPlusPlus2M {
    timesteps: Vec<f64>,
    /// σ (Karras scale) at each step, plus the final σ.
    sigmas: Vec<f64>,
    prediction: PredictionType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    previous_x0: Option<Array4<f32>>,
    /// The buffer of the x₀ prediction before last, reused for the next.
    spare_x0: Option<Array4<f32>>,
    next_step: usize,
}

impl DpmSolverPlusPlus2M {
    /// A DPM-Solver++ 2M sampler for `steps` steps (default spacing
    /// `linspace`).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<DpmSolverPlusPlus2M> {
        config.validate()?;
        check_steps(config, steps)?;
        config.check_sigma_options("dpm++2m")?;
        if config.variance_type.is_some() {
            return Err(Error::Invalid(
                "scheduler config: variance_type (learned variance) is not supported by the \
                 dpm++2m sampler"
                    .into(),
            ));
        }
        let n = config.num_train_timesteps;
        let ac = config.alphas_cumprod();
        let table = karras_sigmas(&ac);
        // λ(t) = ln(α_t/σ_t); diffusers drops the noisiest timesteps whose λ
        // is below `lambda_min_clipped` (searchsorted on the flipped table).
        let last = match config.lambda_min_clipped {
            Some(min) if min.is_finite() => {
                let clipped = ac
                    .iter()
                    .rev()
                    .filter(|a| 0.5 * (**a / (1.0 - **a)).ln() < min)
                    .count();
                n - clipped
            }
            _ => n,
        };
        let ts = dpm_timesteps(
            n,
            last,
            steps,
            config.spacing_or(TimestepSpacing::Linspace),
            config.steps_offset,
        );
        check_range(&ts, n)?;
        let mut sigmas: Vec<f64> = ts.iter().map(|t| table[*t as usize]).collect();
        sigmas.push(match config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => table[0],
        });
        Ok(DpmSolverPlusPlus2M {
            timesteps: ts.iter().map(|t| *t as f64).collect(),
            sigmas,
            prediction: config.prediction_type,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_zero: config.final_sigmas_type == FinalSigmas::Zero,
            previous_x0: None,
            spare_x0: None,
            next_step: 0,
        })
    }

    /// The σ (Karras scale) at each step, then the final σ.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

/// (α, σ̃, λ) of the VP scale for a Karras σ.
fn vp_of(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_vp = sigma * alpha;
    (alpha, sigma_vp, alpha.ln() - sigma_vp.ln())
}

impl Sampler for DpmSolverPlusPlus2M {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::DpmPlusPlus2M
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    fn step_in_place(
        &mut self,
        model_output: &Array4<f32>,
        step: usize,
        x: &mut Array4<f32>,
    ) -> Result<()> {
        let n = self.timesteps.len();
        check_step("dpm++2m", model_output, step, x, n)?;
        if step == 0 {
            self.reset();
        }
        if step != self.next_step {
            return Err(Error::Invalid(format!(
                "dpm++2m: steps must be taken in order (expected step {}, got {step})",
                self.next_step
            )));
        }
        let (alpha_s, sigma_s, lambda_s) = vp_of(self.sigmas[step]);
        let (alpha_t, sigma_t, lambda_t) = vp_of(self.sigmas[step + 1]);
        // D₀, the x₀ prediction, into the spare buffer
        let mut d0 = match self.spare_x0.take() {
            Some(buf) if buf.raw_dim() == x.raw_dim() => buf,
            _ => Array4::<f32>::zeros(x.raw_dim()),
        };
        let (a, b) = x0_coefficients(self.prediction, alpha_s, sigma_s);
        Zip::from(&mut d0)
            .and(&*x)
            .and(model_output)
            .for_each(|d, &x, &m| *d = (a * x as f64 + b * m as f64) as f32);
        let h = lambda_t - lambda_s; // +∞ when landing on σ = 0
        let lower_order_final = step == n - 1
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_zero);
        let carry = sigma_t / sigma_s; // 0 when landing on σ = 0
        let coeff = -alpha_t * (-h).exp_m1(); // −α_t·(e^{−h} − 1)
        match (&self.previous_x0, lower_order_final) {
            (Some(d_prev), false) => {
                // D₀ + ½·D₁ = D₀ + (D₀ − D₋₁)/(2r)
                let (_, _, lambda_prev) = vp_of(self.sigmas[step - 1]);
                let r = (lambda_s - lambda_prev) / h;
                let half_over_r = 0.5 / r;
                Zip::from(&mut *x)
                    .and(&d0)
                    .and(d_prev)
                    .for_each(|x, &d0, &dp| {
                        let (d0, dp) = (d0 as f64, dp as f64);
                        let d = d0 + half_over_r * (d0 - dp);
                        *x = (carry * *x as f64 + coeff * d) as f32;
                    });
            }
            _ => Zip::from(&mut *x)
                .and(&d0)
                .for_each(|x, &d0| *x = (carry * *x as f64 + coeff * d0 as f64) as f32),
        }
        self.spare_x0 = self.previous_x0.replace(d0);
        self.next_step = step + 1;
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(buf) = self.previous_x0.take() {
            self.spare_x0 = Some(buf);
        }
        self.next_step = 0;
    }
}

/// Euler discrete (Karras et al. 2022, algorithm 2 without churn), as
/// `EulerDiscreteScheduler`. Latents are in the Karras scale `x = x₀ + σ·ε`:
///
/// ```text
/// model input  x/√(σ_i² + 1)
/// x̂₀          x − σ_i·ε̂                                  (epsilon)
///              −σ_i/√(σ_i² + 1)·v̂ + x/(σ_i² + 1)          (v_prediction)
/// x_{i+1}      x + (x − x̂₀)/σ_i · (σ_{i+1} − σ_i)
/// ```
///
/// σ_i is the training σ table interpolated linearly at the (possibly
/// fractional) timestep. The starting latents have standard deviation
/// `σ_max` (`linspace`, `trailing`) or `√(σ_max² + 1)` (`leading`), as in
/// diffusers.
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_sigma: f64,
    prediction: PredictionType,
}

impl EulerDiscrete {
    /// An Euler sampler for `steps` steps (default spacing `linspace`).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<EulerDiscrete> {
        config.validate()?;
        check_steps(config, steps)?;
        config.check_sigma_options("euler")?;
        if let Some(kind) = config
            .interpolation_type
            .as_deref()
            .filter(|k| *k != "linear")
        {
            return Err(Error::Invalid(format!(
                "scheduler config: interpolation_type `{kind}` is not supported by the euler \
                 sampler (supported: linear)"
            )));
        }
        if let Some(kind) = config.timestep_type.as_deref().filter(|k| *k != "discrete") {
            return Err(Error::Invalid(format!(
                "scheduler config: timestep_type `{kind}` is not supported by the euler sampler \
                 (supported: discrete)"
            )));
        }
        let n = config.num_train_timesteps;
        let table = karras_sigmas(&config.alphas_cumprod());
        let spacing = config.spacing_or(TimestepSpacing::Linspace);
        let timesteps = euler_timesteps(n, steps, spacing, config.steps_offset);
        if let Some(t) = timesteps.iter().find(|t| **t < 0.0 || **t > (n - 1) as f64) {
            return Err(Error::Invalid(format!(
                "timestep {t} lies outside the {n} training timesteps \
                 (check steps_offset and timestep_spacing)"
            )));
        }
        let mut sigmas: Vec<f64> = timesteps.iter().map(|t| interp(&table, *t)).collect();
        sigmas.push(match config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => table[0],
        });
        let max_sigma = sigmas.iter().cloned().fold(0.0, f64::max);
        let init_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(EulerDiscrete {
            timesteps,
            sigmas,
            init_sigma,
            prediction: config.prediction_type,
        })
    }

    /// The σ at each step, then the final σ.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl Sampler for EulerDiscrete {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        self.init_sigma as f32
    }
    fn scale_model_input_into(
        &self,
        x: &Array4<f32>,
        step: usize,
        mut out: ArrayViewMut4<'_, f32>,
    ) {
        let s = self.sigmas[step.min(self.timesteps.len() - 1)];
        let k = 1.0 / (s * s + 1.0).sqrt();
        Zip::from(&mut out)
            .and(x)
            .for_each(|o, &v| *o = (v as f64 * k) as f32);
    }
    fn step_in_place(
        &mut self,
        model_output: &Array4<f32>,
        step: usize,
        x: &mut Array4<f32>,
    ) -> Result<()> {
        check_step("euler", model_output, step, x, self.timesteps.len())?;
        let s = self.sigmas[step];
        let s_next = self.sigmas[step + 1];
        let (a, b) = match self.prediction {
            PredictionType::Epsilon => (1.0, -s),
            PredictionType::VPrediction => (1.0 / (s * s + 1.0), -s / (s * s + 1.0).sqrt()),
        };
        // x + (x − x̂₀)/σ·(σ' − σ) = (σ'/σ)·x + (1 − σ'/σ)·x̂₀
        let ratio = s_next / s;
        let rest = 1.0 - ratio;
        Zip::from(x).and(model_output).for_each(|x, &m| {
            let x0 = (a * *x as f64 + b * m as f64) as f32;
            *x = (ratio * *x as f64 + rest * x0 as f64) as f32;
        });
        Ok(())
    }
    fn reset(&mut self) {}
}

/// One step from the last training timestep T = N − 1 to the x₀ prediction
/// (SD-Turbo, Sauer et al. 2023):
///
/// ```text
/// x̂₀ = (x_T − √(1 − ᾱ_T)·ε̂)/√ᾱ_T          (epsilon)
/// x̂₀ = √ᾱ_T·x_T − √(1 − ᾱ_T)·v̂            (v_prediction)
/// ```
///
/// The latents start with standard deviation √(1 − ᾱ_T): the model then
/// sees exactly what diffusers' `EulerDiscreteScheduler` with `trailing`
/// spacing and one step (SD-Turbo's configuration) feeds it,
/// `σ_max·z/√(σ_max² + 1)`, and the result is the same x̂₀.
#[derive(Debug, Clone)]
pub struct Turbo {
    timesteps: Vec<f64>,
    alpha_cumprod: f64,
    prediction: PredictionType,
}

impl Turbo {
    /// The one-step sampler.
    pub fn new(config: &SchedulerConfig) -> Result<Turbo> {
        config.validate()?;
        let ac = config.alphas_cumprod();
        let last = config.num_train_timesteps - 1;
        Ok(Turbo {
            timesteps: vec![last as f64],
            alpha_cumprod: ac[last],
            prediction: config.prediction_type,
        })
    }
}

impl Sampler for Turbo {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Turbo
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f32 {
        (1.0 - self.alpha_cumprod).sqrt() as f32
    }
    fn step_in_place(
        &mut self,
        model_output: &Array4<f32>,
        step: usize,
        x: &mut Array4<f32>,
    ) -> Result<()> {
        check_step("turbo", model_output, step, x, 1)?;
        let ac = self.alpha_cumprod;
        let (a, b) = x0_coefficients(self.prediction, ac.sqrt(), (1.0 - ac).sqrt());
        Zip::from(x)
            .and(model_output)
            .for_each(|x, &m| *x = (a * *x as f64 + b * m as f64) as f32);
        Ok(())
    }
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn cfg(spacing: TimestepSpacing, offset: i64) -> SchedulerConfig {
        SchedulerConfig {
            timestep_spacing: Some(spacing),
            steps_offset: offset,
            ..SchedulerConfig::stable_diffusion_v1()
        }
    }

    #[test]
    fn parses_a_stable_diffusion_config_and_ignores_other_keys() {
        let text = r#"{
          "_class_name": "PNDMScheduler",
          "_diffusers_version": "0.6.0",
          "beta_end": 0.012,
          "beta_schedule": "scaled_linear",
          "beta_start": 0.00085,
          "num_train_timesteps": 1000,
          "set_alpha_to_one": false,
          "skip_prk_steps": true,
          "steps_offset": 1,
          "trained_betas": null,
          "clip_sample": false,
          "lambda_min_clipped": -Infinity,
          "variance_type": null
        }"#;
        let c = SchedulerConfig::from_json(text).unwrap();
        assert_eq!(c, SchedulerConfig::stable_diffusion_v1());
        assert_eq!(c.class_name.as_deref(), Some("PNDMScheduler"));
        assert_eq!(c.timestep_spacing, None);
        assert_eq!(c.prediction_type, PredictionType::Epsilon);
        // defaults are diffusers' when keys are missing
        let d = SchedulerConfig::from_json("{}").unwrap();
        assert_eq!(d, SchedulerConfig::default());
        assert_eq!(d.beta_schedule, BetaSchedule::Linear);
        assert!(d.set_alpha_to_one && d.clip_sample);
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
    fn python_json_tokens_become_null_outside_strings() {
        assert_eq!(
            python_json_to_json(r#"{"a": -Infinity, "b": "NaN \"Infinity\"", "c": NaN}"#),
            r#"{"a": null, "b": "NaN \"Infinity\"", "c": null}"#
        );
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
    fn alphas_cumprod_matches_the_stable_diffusion_table() {
        let ac = SchedulerConfig::stable_diffusion_v1().alphas_cumprod();
        assert_eq!(ac.len(), 1000);
        // β₀ = 0.00085, β_999 = 0.012; reference values from numpy (f64)
        assert!((ac[0] - 0.99915).abs() < 1e-12);
        assert!(
            (ac[999] - 0.004660098513077238).abs() < 1e-12,
            "{}",
            ac[999]
        );
        assert!((ac[500] - 0.2763326838229746).abs() < 1e-12, "{}", ac[500]);
        let lin = SchedulerConfig::default().alphas_cumprod();
        assert!((lin[0] - 0.9999).abs() < 1e-12);
        assert!(
            (lin[999] - 4.035829765375676e-5).abs() < 1e-15,
            "{}",
            lin[999]
        );
    }

    // Expected schedules are numpy evaluations of the diffusers formulas
    // (N = 1000): see the docs of ddim_timesteps / dpm_timesteps /
    // euler_timesteps.

    #[test]
    fn ddim_schedules() {
        use TimestepSpacing::*;
        let lead = ddim_timesteps(1000, 30, Leading, 1);
        assert_eq!(lead.len(), 30);
        assert_eq!(&lead[..4], &[958, 925, 892, 859]);
        assert_eq!(&lead[26..], &[100, 67, 34, 1]);
        assert!(lead.windows(2).all(|w| w[0] - w[1] == 33));
        let trail = ddim_timesteps(1000, 30, Trailing, 1);
        assert_eq!(
            trail,
            vec![
                999, 966, 932, 899, 866, 832, 799, 766, 732, 699, 666, 632, 599, 566, 532, 499,
                466, 432, 399, 366, 332, 299, 266, 232, 199, 166, 132, 99, 66, 32
            ]
        );
        let lin = ddim_timesteps(1000, 30, Linspace, 1);
        assert_eq!(
            lin,
            vec![
                999, 965, 930, 896, 861, 827, 792, 758, 723, 689, 655, 620, 586, 551, 517, 482,
                448, 413, 379, 344, 310, 276, 241, 207, 172, 138, 103, 69, 34, 0
            ]
        );
        assert_eq!(
            ddim_timesteps(1000, 10, Leading, 1),
            vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
        // half-way values round to even, as numpy: 1000 - 62.5k
        assert_eq!(
            ddim_timesteps(1000, 16, Trailing, 0),
            vec![999, 937, 874, 811, 749, 687, 624, 561, 499, 437, 374, 311, 249, 187, 124, 61]
        );
        // numpy's arange would give a 62nd value (-1) here; we keep 61
        let t61 = ddim_timesteps(1000, 61, Trailing, 0);
        assert_eq!(t61.len(), 61);
        assert_eq!(&t61[58..], &[48, 32, 15]);
        assert_eq!(ddim_timesteps(1000, 1, Linspace, 0), vec![0]);
        assert_eq!(ddim_timesteps(1000, 1, Trailing, 0), vec![999]);
    }

    #[test]
    fn dpm_schedules() {
        use TimestepSpacing::*;
        let lin = dpm_timesteps(1000, 1000, 30, Linspace, 1);
        assert_eq!(
            lin,
            vec![
                999, 966, 932, 899, 866, 832, 799, 766, 733, 699, 666, 633, 599, 566, 533, 499,
                466, 433, 400, 366, 333, 300, 266, 233, 200, 166, 133, 100, 67, 33
            ]
        );
        let lead = dpm_timesteps(1000, 1000, 30, Leading, 1);
        assert_eq!(&lead[..3], &[961, 929, 897]);
        assert_eq!(*lead.last().unwrap(), 33);
        assert_eq!(lead.len(), 30);
        let trail = dpm_timesteps(1000, 1000, 30, Trailing, 1);
        assert_eq!(trail, ddim_timesteps(1000, 30, Trailing, 0));
        assert_eq!(
            dpm_timesteps(1000, 1000, 4, Linspace, 0),
            vec![999, 749, 500, 250] // 499.5 rounds to even
        );
    }

    #[test]
    fn euler_schedules() {
        use TimestepSpacing::*;
        let lin = euler_timesteps(1000, 30, Linspace, 1);
        assert_eq!(lin.len(), 30);
        assert_eq!(lin[0], 999.0);
        assert_eq!(lin[1], 964.551_696_777_343_8);
        assert_eq!(lin[2], 930.103_454_589_843_8);
        assert_eq!(lin[29], 0.0);
        let lead = euler_timesteps(1000, 30, Leading, 1);
        assert_eq!(lead[0], 958.0);
        assert_eq!(lead[29], 1.0);
        assert_eq!(euler_timesteps(1000, 1, Trailing, 1), vec![999.0]);
        // σ at a fractional timestep is interpolated, at an integer exact
        let e = EulerDiscrete::new(&cfg(Linspace, 1), 30).unwrap();
        let table = karras_sigmas(&SchedulerConfig::stable_diffusion_v1().alphas_cumprod());
        assert_eq!(e.sigmas()[0], table[999]);
        assert_eq!(*e.sigmas().last().unwrap(), 0.0);
        let t = lin[1];
        let j = t.floor() as usize;
        let want = table[j] + (table[j + 1] - table[j]) * (t - j as f64);
        assert!((e.sigmas()[1] - want).abs() < 1e-12);
        // init σ: σ_max for linspace/trailing, √(σ_max²+1) for leading
        assert!((e.init_noise_sigma() as f64 - table[999]).abs() < 1e-5);
        let el = EulerDiscrete::new(&cfg(Leading, 1), 30).unwrap();
        let smax = table[958];
        assert!((el.init_noise_sigma() as f64 - (smax * smax + 1.0).sqrt()).abs() < 1e-5);
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

    #[test]
    fn lambda_min_clipped_drops_the_noisiest_timesteps() {
        let base = cfg(TimestepSpacing::Linspace, 0);
        let ac = base.alphas_cumprod();
        let lambda = |t: usize| 0.5 * (ac[t] / (1.0 - ac[t])).ln();
        let c = SchedulerConfig {
            lambda_min_clipped: Some(lambda(899)),
            ..base
        };
        // λ(900..999) < λ(899): 100 timesteps are clipped, last = 900
        let d = DpmSolverPlusPlus2M::new(&c, 10).unwrap();
        assert_eq!(d.timesteps()[0], 899.0);
    }

    /// A perfect ε-model for the point distribution at `x0` (VP scale).
    fn point_eps(ac: &[f64], x0: &Array4<f32>, x: &Array4<f32>, t: usize) -> Array4<f32> {
        let a = ac[t];
        lincomb(1.0 / (1.0 - a).sqrt(), x, -a.sqrt() / (1.0 - a).sqrt(), x0)
    }

    fn x0() -> Array4<f32> {
        Array4::from_shape_fn((1, 2, 3, 3), |(_, c, h, w)| {
            ((c * 9 + h * 3 + w) as f32 * 0.37).sin()
        })
    }

    #[test]
    fn one_ddim_step_lands_on_the_noise_level_of_the_previous_timestep() {
        let c = cfg(TimestepSpacing::Leading, 1);
        let ac = c.alphas_cumprod();
        let mut s = Ddim::new(&c, 10).unwrap();
        let x0 = x0();
        let noise = Array4::from_elem(x0.raw_dim(), 0.5f32);
        let t = 901;
        let xt = lincomb(ac[t].sqrt(), &x0, (1.0 - ac[t]).sqrt(), &noise);
        let eps = point_eps(&ac, &x0, &xt, t);
        let next = s.step(&eps, 0, &xt).unwrap();
        let want = lincomb(ac[801].sqrt(), &x0, (1.0 - ac[801]).sqrt(), &noise);
        let err = (&next - &want)
            .mapv(f32::abs)
            .fold(0.0f32, |m, v| m.max(*v));
        assert!(err < 1e-5, "{err}");
    }

    #[test]
    fn ddim_clips_x0_when_asked() {
        let c = SchedulerConfig {
            clip_sample: true,
            clip_sample_range: 0.1,
            set_alpha_to_one: true,
            ..cfg(TimestepSpacing::Leading, 1)
        };
        let mut s = Ddim::new(&c, 1).unwrap();
        // one step from t = 1 straight to ᾱ = 1: the result is x̂₀, clipped
        let x = Array4::from_elem((1, 1, 1, 2), 3.0f32);
        let m = Array4::zeros((1, 1, 1, 2));
        let out = s.step(&m, 0, &x).unwrap();
        assert!(out.iter().all(|v| (*v - 0.1).abs() < 1e-7), "{out:?}");
    }

    #[test]
    fn steps_are_checked() {
        let c = SchedulerConfig::stable_diffusion_v1();
        let mut s = DpmSolverPlusPlus2M::new(&c, 5).unwrap();
        let x = Array4::zeros((1, 1, 2, 2));
        assert!(s.step(&x, 1, &x).is_err(), "out of order");
        assert!(s.step(&Array4::zeros((1, 1, 2, 3)), 0, &x).is_err());
        assert!(s.step(&x, 0, &x).is_ok());
        assert!(s.step(&x, 5, &x).is_err(), "past the end");
    }
}
