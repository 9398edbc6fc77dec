//! The sampling loop: a [`Sampler`] over a [`Denoiser`], with classifier-free guidance.

use std::time::Instant;

use ndarray::{concatenate, Array3, Array4, ArrayView3, Axis, Zip};

use super::Denoiser;
use crate::scheduler::Sampler;
use crate::timing::SamplingTimes;
use crate::{Error, Result};

/// Repeat a `[1, T, D]` embedding to `[batch, T, D]`, or check that a
/// `[batch, T, D]` one already fits.
fn fit_batch(what: &str, e: ArrayView3<'_, f32>, batch: usize) -> Result<Array3<f32>> {
    match e.shape()[0] {
        b if b == batch => Ok(e.to_owned()),
        1 => Ok(e
            .broadcast((batch, e.shape()[1], e.shape()[2]))
            .expect("invariant: a batch of 1 broadcasts")
            .to_owned()),
        b => Err(Error::DimensionMismatch {
            what: format!("{what} embeddings"),
            expected: format!("a batch of 1 or {batch} (the latents' batch)"),
            found: format!("{b}"),
        }),
    }
}

/// Run `sampler` over `denoiser` from unit Gaussian `noise` `[B, C, H, W]`.
///
/// `cond` (and `uncond`) are text embeddings `[1 or B, 77, D]`; a batch of
/// 1 is repeated for every latent. Guidance runs when `uncond` is given and
/// `guidance > 1` (see the module docs). `on_step(done, total)` is called
/// after each step. The sampler is reset first, so it can be reused.
///
/// The noise is multiplied by `sampler.init_noise_sigma()` here, as
/// diffusers' `prepare_latents` does; pass unit-variance noise such as
/// [`gaussian_noise`](super::gaussian_noise).
pub fn sample<D, S>(
    denoiser: &mut D,
    sampler: &mut S,
    noise: &Array4<f32>,
    cond: &Array3<f32>,
    uncond: Option<&Array3<f32>>,
    guidance: f32,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Array4<f32>>
where
    D: Denoiser + ?Sized,
    S: Sampler + ?Sized,
{
    let mut times = SamplingTimes::default();
    sample_timed(
        denoiser, sampler, noise, cond, uncond, guidance, on_step, &mut times,
    )
}

/// [`sample`], adding the time of its own work to `times`: the sampler's
/// arithmetic (`scheduler`), the guidance combine and finite check
/// (`guidance`), and the embeddings and latents it arranges for the
/// denoiser (`copies`). The denoiser's calls are not timed here: the
/// caller knows what they contain (the ONNX UNet splits them itself, see
/// [`OnnxUnet::take_times`](super::OnnxUnet::take_times)).
#[allow(clippy::too_many_arguments)]
pub fn sample_timed<D, S>(
    denoiser: &mut D,
    sampler: &mut S,
    noise: &Array4<f32>,
    cond: &Array3<f32>,
    uncond: Option<&Array3<f32>>,
    guidance: f32,
    on_step: &mut dyn FnMut(usize, usize),
    times: &mut SamplingTimes,
) -> Result<Array4<f32>>
where
    D: Denoiser + ?Sized,
    S: Sampler + ?Sized,
{
    let clock = Instant::now();
    let batch = noise.shape()[0];
    if batch == 0 {
        return Err(Error::Invalid("no latents to denoise (batch of 0)".into()));
    }
    let cond_b = fit_batch("conditional", cond.view(), batch)?;
    let uncond = uncond.filter(|_| guidance > 1.0);
    let hidden = match uncond {
        Some(u) => {
            if u.shape()[1..] != cond.shape()[1..] {
                return Err(Error::DimensionMismatch {
                    what: "unconditional embeddings".into(),
                    expected: format!(
                        "[_, {}, {}] like the conditional ones",
                        cond.shape()[1],
                        cond.shape()[2]
                    ),
                    found: format!("{:?}", u.shape()),
                });
            }
            let u = fit_batch("unconditional", u.view(), batch)?;
            concatenate(Axis(0), &[u.view(), cond_b.view()])
                .expect("invariant: equal shapes concatenate")
        }
        None => cond_b,
    };
    let guided = uncond.is_some();
    // Buffers for the whole loop: the model's input and output (the batch
    // doubled, unconditional half first, under guidance) and the guided ε.
    let (_, channels, height, width) = noise.dim();
    let model_batch = if guided { 2 * batch } else { batch };
    let mut model_in = Array4::<f32>::zeros((model_batch, channels, height, width));
    let mut model_out = Array4::<f32>::zeros((model_batch, channels, height, width));
    let mut eps = Array4::<f32>::zeros(if guided {
        (batch, channels, height, width)
    } else {
        (0, 0, 0, 0)
    });
    denoiser.prepare(&hidden)?;
    times.copies += clock.elapsed();
    let clock = Instant::now();
    sampler.reset();
    let sigma = sampler.init_noise_sigma();
    let mut x = noise.mapv(|v| v * sigma);
    let timesteps = sampler.timesteps().to_vec();
    let total = timesteps.len();
    times.scheduler += clock.elapsed();
    for (i, &t) in timesteps.iter().enumerate() {
        let clock = Instant::now();
        let (mut first, mut second) = model_in.view_mut().split_at(Axis(0), batch);
        sampler.scale_model_input_into(&x, i, first.view_mut());
        times.scheduler += clock.elapsed();
        if guided {
            let clock = Instant::now();
            second.assign(&first);
            times.copies += clock.elapsed();
        }
        denoiser.predict_into(model_in.view(), t, &hidden, model_out.view_mut())?;
        let clock = Instant::now();
        let finite = if guided {
            let (u, c) = model_out.view().split_at(Axis(0), batch);
            let mut finite = true;
            Zip::from(&mut eps).and(&u).and(&c).for_each(|e, &u, &c| {
                finite &= u.is_finite() & c.is_finite();
                *e = u + guidance * (c - u);
            });
            finite
        } else {
            model_out.iter().all(|v| v.is_finite())
        };
        if !finite {
            return Err(Error::Invalid(format!(
                "the denoiser produced non-finite values at timestep {t} (step {} of {total})",
                i + 1
            )));
        }
        times.guidance += clock.elapsed();
        let clock = Instant::now();
        sampler.step_in_place(if guided { &eps } else { &model_out }, i, &mut x)?;
        times.scheduler += clock.elapsed();
        on_step(i + 1, total);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoise::gaussian_noise;
    use crate::denoise::oracle::{cond, max_abs, SHAPE};
    use crate::scheduler::{build_sampler, SchedulerConfig, SchedulerKind};
    use ndarray::s;

    /// A sampler that records the model output it is given.
    struct Recorder {
        timesteps: Vec<f64>,
        seen: Vec<Array4<f32>>,
    }

    impl Sampler for Recorder {
        fn kind(&self) -> SchedulerKind {
            SchedulerKind::Ddim
        }
        fn timesteps(&self) -> &[f64] {
            &self.timesteps
        }
        fn init_noise_sigma(&self) -> f32 {
            1.0
        }
        fn step_in_place(&mut self, m: &Array4<f32>, _: usize, _: &mut Array4<f32>) -> Result<()> {
            self.seen.push(m.clone());
            Ok(())
        }
        fn reset(&mut self) {
            self.seen.clear();
        }
    }

    #[test]
    fn guidance_batches_uncond_then_cond_and_combines() {
        let mut calls = Vec::new();
        let mut model = |x: &Array4<f32>, _t: f64, h: &Array3<f32>| -> Result<Array4<f32>> {
            calls.push((
                x.shape()[0],
                h.shape()[0],
                h[[0, 0, 0]],
                h[[h.shape()[0] - 1, 0, 0]],
            ));
            // output = the embedding's first value, per batch row, plus x
            let mut out = x.clone();
            for b in 0..x.shape()[0] {
                let v = h[[b, 0, 0]];
                out.slice_mut(s![b, .., .., ..]).mapv_inplace(|e| e + v);
            }
            Ok(out)
        };
        let mut rec = Recorder {
            timesteps: vec![900.0, 500.0, 100.0],
            seen: vec![],
        };
        let noise = gaussian_noise(1, SHAPE);
        let (c, u, g) = (2.0f32, -1.0f32, 7.5f32);
        let mut steps = vec![];
        let out = sample(
            &mut model,
            &mut rec,
            &noise,
            &cond(1, c),
            Some(&cond(2, u)),
            g,
            &mut |d, n| steps.push((d, n)),
        )
        .unwrap();
        assert_eq!(out, noise);
        assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
        // one call per step, batch doubled, unconditional half first
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|c0| *c0 == (4, 4, u, c)), "{calls:?}");
        // ε = u + g·(c − u) = x + u + g·(c − u)
        let want = noise.mapv(|x| (x + u) + g * ((x + c) - (x + u)));
        for m in &rec.seen {
            assert!(max_abs(m, &want) < 1e-5);
        }
    }

    #[test]
    fn no_guidance_runs_one_pass() {
        for (uncond, g) in [(true, 1.0f32), (true, 0.5), (false, 8.0)] {
            let mut calls = 0;
            let mut model = |x: &Array4<f32>, _t: f64, h: &Array3<f32>| -> Result<Array4<f32>> {
                calls += 1;
                assert_eq!(x.shape()[0], 2);
                assert_eq!(h.shape()[0], 2);
                assert_eq!(h[[0, 0, 0]], 3.0, "the conditional embedding is used");
                Ok(x.mapv(|v| v + 1.0))
            };
            let mut rec = Recorder {
                timesteps: vec![1.0, 0.0],
                seen: vec![],
            };
            let u = cond(1, -4.0);
            let noise = gaussian_noise(2, SHAPE);
            sample(
                &mut model,
                &mut rec,
                &noise,
                &cond(1, 3.0),
                uncond.then_some(&u),
                g,
                &mut |_, _| {},
            )
            .unwrap();
            assert_eq!(calls, 2, "uncond {uncond} g {g}");
            assert!(max_abs(&rec.seen[0], &noise.mapv(|v| v + 1.0)) == 0.0);
        }
    }

    #[test]
    fn bad_shapes_are_reported() {
        let mut model =
            |x: &Array4<f32>, _t: f64, _h: &Array3<f32>| -> Result<Array4<f32>> { Ok(x.clone()) };
        let c = SchedulerConfig::stable_diffusion_v1();
        let mut s = build_sampler(&c, SchedulerKind::Ddim, 2).unwrap();
        let noise = gaussian_noise(2, SHAPE);
        let err = sample(
            &mut model,
            s.as_mut(),
            &noise,
            &cond(3, 0.0),
            None,
            1.0,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("batch of 1 or 2"), "{err}");
        let err = sample(
            &mut model,
            s.as_mut(),
            &noise,
            &cond(1, 0.0),
            Some(&Array3::zeros((1, 77, 8))),
            8.0,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("unconditional"), "{err}");
        let mut nan = |x: &Array4<f32>, _t: f64, _h: &Array3<f32>| -> Result<Array4<f32>> {
            Ok(x.mapv(|_| f32::NAN))
        };
        let err = sample(
            &mut nan,
            s.as_mut(),
            &noise,
            &cond(1, 0.0),
            None,
            1.0,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
    }
}
