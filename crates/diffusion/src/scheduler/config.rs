//! `scheduler_config.json`: the schedule's fields, their diffusers defaults and checks, and the training noise table ᾱ_t.

use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::numpy::np_linspace;
use crate::{Error, Result};

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
/// `solver_order`, `solver_type`) is fixed by the [`SchedulerKind`](super::SchedulerKind), so those
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

    pub(super) fn spacing_or(&self, default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(default)
    }

    /// Reject the σ-schedule variants that DPM-Solver and Euler would honour.
    pub(super) fn check_sigma_options(&self, who: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn python_json_tokens_become_null_outside_strings() {
        assert_eq!(
            python_json_to_json(r#"{"a": -Infinity, "b": "NaN \"Infinity\"", "c": NaN}"#),
            r#"{"a": null, "b": "NaN \"Infinity\"", "c": null}"#
        );
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
}
