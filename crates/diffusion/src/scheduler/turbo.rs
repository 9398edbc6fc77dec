//! The one-step "turbo" sampler (SD-Turbo): from the last training timestep straight to the x₀ prediction.

use ndarray::{Array4, Zip};

use super::config::{PredictionType, SchedulerConfig};
use super::{check_step, x0_coefficients, Sampler, SchedulerKind};
use crate::Result;

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
