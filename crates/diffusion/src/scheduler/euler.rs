//! Euler discrete (Karras et al. 2022), as diffusers' `EulerDiscreteScheduler`.

use ndarray::{Array4, ArrayViewMut4, Zip};

use super::config::{FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};
use super::numpy::interp;
use super::timesteps::{check_steps, euler_timesteps, karras_sigmas};
use super::{check_step, Sampler, SchedulerKind};
use crate::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::cfg;

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
}
