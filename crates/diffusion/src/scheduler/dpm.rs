//! DPM-Solver++ 2M (Lu et al. 2022), as diffusers' `DPMSolverMultistepScheduler`: OVDiff's sampler.

use ndarray::{Array4, Zip};

use super::config::{FinalSigmas, PredictionType, SchedulerConfig, TimestepSpacing};
use super::timesteps::{check_range, check_steps, dpm_timesteps, karras_sigmas};
use super::{check_step, x0_coefficients, Sampler, SchedulerKind};
use crate::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::cfg;

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
