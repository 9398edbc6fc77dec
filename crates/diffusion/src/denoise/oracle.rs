//! Exact denoisers of point and Gaussian data, and the sampler accuracy tests run through the loop with them (tests only).

use ndarray::{concatenate, s, Array3, Array4, Axis, Zip};

use super::{gaussian_noise, sample, Denoiser};
use crate::scheduler::{
    build_sampler, EulerDiscrete, FinalSigmas, PredictionType, SchedulerConfig, SchedulerKind,
    TimestepSpacing, Turbo,
};
use crate::Result;

pub(super) const SHAPE: [usize; 4] = [2, 4, 8, 8];

pub(super) fn max_abs(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    Zip::from(a)
        .and(b)
        .fold(0.0f32, |m, x, y| m.max((x - y).abs()))
}

pub(super) fn config(pred: PredictionType, spacing: TimestepSpacing) -> SchedulerConfig {
    SchedulerConfig {
        prediction_type: pred,
        timestep_spacing: Some(spacing),
        // DDIM lands on ᾱ = 1, not ᾱ₀ (SD's `false` leaves 3% noise)
        set_alpha_to_one: true,
        ..SchedulerConfig::stable_diffusion_v1()
    }
}

/// ᾱ at a possibly fractional timestep, through σ interpolated as
/// diffusers' Euler does (exact at integers).
fn alpha_bar_at(ac: &[f64], t: f64) -> f64 {
    let sig = |i: usize| ((1.0 - ac[i]) / ac[i]).sqrt();
    let j = (t.floor() as usize).min(ac.len() - 1);
    let s = if t == j as f64 || j + 1 == ac.len() {
        sig(j)
    } else {
        sig(j) + (sig(j + 1) - sig(j)) * (t - j as f64)
    };
    1.0 / (1.0 + s * s)
}

/// The perfect model for data ~ N(μ, s²) per element (s = 0 is the point
/// oracle of the ONNX fixtures), in the VP scale the sampler feeds.
pub(super) fn gaussian_oracle(
    config: &SchedulerConfig,
    mu: Array4<f32>,
    s: f64,
) -> impl FnMut(&Array4<f32>, f64, &Array3<f32>) -> Result<Array4<f32>> {
    let ac = config.alphas_cumprod();
    let pred = config.prediction_type;
    move |x, t, _cond| {
        let a = alpha_bar_at(&ac, t);
        let sigma2 = (1.0 - a) / a;
        let mut out = Array4::<f32>::zeros(x.raw_dim());
        for b in 0..x.shape()[0] {
            let mut o = out.slice_mut(s![b, .., .., ..]);
            Zip::from(&mut o)
                .and(x.slice(s![b, .., .., ..]))
                .and(mu.slice(s![0, .., .., ..]))
                .for_each(|o, &xt, &m| {
                    let xs = xt as f64 / a.sqrt(); // Karras scale
                    let d = m as f64 + s * s / (s * s + sigma2) * (xs - m as f64);
                    let eps = (xs - d) / sigma2.sqrt();
                    *o = match pred {
                        PredictionType::Epsilon => eps,
                        PredictionType::VPrediction => a.sqrt() * eps - (1.0 - a).sqrt() * d,
                    } as f32;
                });
        }
        Ok(out)
    }
}

fn x0() -> Array4<f32> {
    gaussian_noise(7, [1, 4, 8, 8])
}

pub(super) fn cond(b: usize, v: f32) -> Array3<f32> {
    Array3::from_elem((b, 77, 16), v)
}

pub(super) fn run(
    config: &SchedulerConfig,
    kind: SchedulerKind,
    steps: usize,
    s: f64,
    seed: u64,
) -> (Array4<f32>, Array4<f32>) {
    let mut sampler = build_sampler(config, kind, steps).unwrap();
    let mut model = gaussian_oracle(config, x0(), s);
    let noise = gaussian_noise(seed, SHAPE);
    let out = sample(
        &mut model,
        sampler.as_mut(),
        &noise,
        &cond(1, 0.0),
        None,
        1.0,
        &mut |_, _| {},
    )
    .unwrap();
    (out, noise)
}

fn x0_batch() -> Array4<f32> {
    let x = x0();
    concatenate(Axis(0), &[x.view(), x.view()]).unwrap()
}

#[test]
fn every_sampler_recovers_x0_from_the_point_oracle() {
    use TimestepSpacing::*;
    let want = x0_batch();
    for pred in [PredictionType::Epsilon, PredictionType::VPrediction] {
        for spacing in [Leading, Trailing, Linspace] {
            let c = config(pred, spacing);
            for (kind, steps) in [
                (SchedulerKind::Ddim, 30),
                (SchedulerKind::Ddim, 10),
                (SchedulerKind::DpmPlusPlus2M, 30),
                (SchedulerKind::DpmPlusPlus2M, 10),
                (SchedulerKind::DpmPlusPlus2M, 20),
                (SchedulerKind::Euler, 30),
                (SchedulerKind::Turbo, 1),
            ] {
                let (out, _) = run(&c, kind, steps, 0.0, 3);
                let err = max_abs(&out, &want);
                assert!(
                    err < 1e-3,
                    "{kind} {steps} steps {pred:?} {spacing:?}: max error {err}"
                );
            }
        }
    }
}

/// Move Karras-scale latents `x` at noise level `sigma_from` along the
/// exact probability-flow ODE of N(μ, s²) data to `sigma_to`:
/// (x − μ)/√(s² + σ²) is constant along the flow.
fn ode_flow(x: &Array4<f32>, mu: &Array4<f32>, s: f64, from: f64, to: f64) -> Array4<f32> {
    let k = (s * s + to * to).sqrt() / (s * s + from * from).sqrt();
    let mut out = x.clone();
    for b in 0..x.shape()[0] {
        Zip::from(out.slice_mut(s![b, .., .., ..]))
            .and(mu.slice(s![0, .., .., ..]))
            .for_each(|o, &m| *o = (m as f64 + k * (*o as f64 - m as f64)) as f32);
    }
    out
}

/// Max error against the exact ODE solution for Gaussian data (s = 0.5),
/// whose flow is curved, so the solvers' orders show. With `to_zero`
/// the samplers end at σ = 0 (`final_sigmas_type = "zero"`,
/// `set_alpha_to_one`), else at σ_min of training step 0.
fn ode_error(kind: SchedulerKind, spacing: TimestepSpacing, steps: usize, to_zero: bool) -> f32 {
    let c = SchedulerConfig {
        set_alpha_to_one: to_zero,
        final_sigmas_type: if to_zero {
            FinalSigmas::Zero
        } else {
            FinalSigmas::SigmaMin
        },
        ..config(PredictionType::Epsilon, spacing)
    };
    let s = 0.5;
    let (out, noise) = run(&c, kind, steps, s, 11);
    let sampler = build_sampler(&c, kind, steps).unwrap();
    let ac = c.alphas_cumprod();
    let a_from = alpha_bar_at(&ac, sampler.timesteps()[0]);
    let a_to = if to_zero { 1.0 } else { ac[0] };
    let karras = |a: f64| ((1.0 - a) / a).sqrt();
    let start = noise.mapv(|v| v * sampler.init_noise_sigma());
    // Euler's latents are in the Karras scale already (the model sees
    // x/√(σ²+1) = √ᾱ·x); the others' are VP: Karras = VP/√ᾱ
    let (start_k, out_k) = match kind {
        SchedulerKind::Euler => (start, out),
        _ => (
            start.mapv(|v| (v as f64 / a_from.sqrt()) as f32),
            out.mapv(|v| (v as f64 / a_to.sqrt()) as f32),
        ),
    };
    let want = ode_flow(&start_k, &x0(), s, karras(a_from), karras(a_to));
    max_abs(&out_k, &want)
}

/// Max error against the exact flow after all but the last step, i.e.
/// at the last scheduled timestep: this leaves out the final jump to
/// σ = 0 (or σ_min), which is first order by design and, with
/// timesteps uniform in t (σ² ∝ t near 0), dominates the end error.
fn ode_error_before_last(kind: SchedulerKind, spacing: TimestepSpacing, steps: usize) -> f32 {
    let c = config(PredictionType::Epsilon, spacing);
    let s = 0.5;
    let mut sampler = build_sampler(&c, kind, steps).unwrap();
    let mut model = gaussian_oracle(&c, x0(), s);
    let noise = gaussian_noise(11, SHAPE);
    let ts = sampler.timesteps().to_vec();
    let mut x = noise.mapv(|v| v * sampler.init_noise_sigma());
    let start = x.clone();
    for (i, t) in ts.iter().enumerate().take(ts.len() - 1) {
        let input = sampler.scale_model_input(&x, i);
        let out = model.predict(&input, *t, &cond(2, 0.0)).unwrap();
        x = sampler.step(&out, i, &x).unwrap();
    }
    let ac = c.alphas_cumprod();
    let a_from = alpha_bar_at(&ac, ts[0]);
    let a_to = alpha_bar_at(&ac, ts[ts.len() - 1]);
    let karras = |a: f64| ((1.0 - a) / a).sqrt();
    let (start_k, x_k) = match kind {
        SchedulerKind::Euler => (start, x),
        _ => (
            start.mapv(|v| (v as f64 / a_from.sqrt()) as f32),
            x.mapv(|v| (v as f64 / a_to.sqrt()) as f32),
        ),
    };
    let want = ode_flow(&start_k, &x0(), s, karras(a_from), karras(a_to));
    max_abs(&x_k, &want)
}

#[test]
fn samplers_converge_to_the_ode_solution() {
    use SchedulerKind::*;
    use TimestepSpacing::*;
    // DDIM's previous timestep is t − ⌊N/n⌋ (diffusers' rule), which is
    // the next scheduled timestep only for leading spacing
    let cases = [
        (Euler, Leading),
        (Euler, Trailing),
        (Euler, Linspace),
        (Ddim, Leading),
        (DpmPlusPlus2M, Leading),
        (DpmPlusPlus2M, Trailing),
        (DpmPlusPlus2M, Linspace),
    ];
    for (kind, spacing) in cases {
        for to_zero in [true, false] {
            let e: Vec<f32> = [10, 30, 100]
                .iter()
                .map(|n| ode_error(kind, spacing, *n, to_zero))
                .collect();
            let what = format!("{kind} {spacing:?} final σ = 0: {to_zero}: {e:?}");
            assert!(e[0] > e[1] && e[1] > e[2], "{what}");
            assert!(e[2] < 0.07, "{what}");
        }
    }
}

#[test]
fn second_order_beats_first_order() {
    use SchedulerKind::*;
    use TimestepSpacing::*;
    for spacing in [Leading, Trailing, Linspace] {
        let dpm = ode_error_before_last(DpmPlusPlus2M, spacing, 30);
        let euler = ode_error_before_last(Euler, spacing, 30);
        assert!(
            dpm * 5.0 < euler,
            "{spacing:?}: dpm++2m {dpm}, euler {euler}"
        );
    }
    let ddim = ode_error_before_last(Ddim, Leading, 30);
    let dpm = ode_error_before_last(DpmPlusPlus2M, Leading, 30);
    assert!(dpm * 5.0 < ddim, "dpm++2m {dpm}, ddim {ddim}");
}

#[test]
fn turbo_equals_one_trailing_euler_step() {
    let c = config(PredictionType::Epsilon, TimestepSpacing::Trailing);
    let noise = gaussian_noise(5, SHAPE);
    let mut turbo = Turbo::new(&c).unwrap();
    let mut euler = EulerDiscrete::new(&c, 1).unwrap();
    let mut m1 = gaussian_oracle(&c, x0(), 0.5);
    let mut m2 = gaussian_oracle(&c, x0(), 0.5);
    let a = sample(
        &mut m1,
        &mut turbo,
        &noise,
        &cond(1, 0.0),
        None,
        1.0,
        &mut |_, _| {},
    )
    .unwrap();
    let b = sample(
        &mut m2,
        &mut euler,
        &noise,
        &cond(1, 0.0),
        None,
        1.0,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(max_abs(&a, &b) < 1e-5, "{}", max_abs(&a, &b));
}
