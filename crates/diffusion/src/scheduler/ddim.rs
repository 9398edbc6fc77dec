//! DDIM with η = 0 (Song et al. 2021), as diffusers' `DDIMScheduler`.

use ndarray::{Array4, Zip};

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::timesteps::{check_range, check_steps, ddim_timesteps};
use super::{check_step, x0_coefficients, Sampler, SchedulerKind};
use crate::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::lincomb;
    use crate::scheduler::tests::cfg;

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
}
