//! The denoising loop: a [`Denoiser`] (the UNet), classifier-free guidance, seeded noise, and the ONNX UNet.
//!
//! [`sample`] runs a [`Sampler`] over a [`Denoiser`] the way diffusers'
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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use half::f16;
use ndarray::{concatenate, s, Array3, Array4, ArrayView3, ArrayView4, ArrayViewMut4, Axis, Zip};
use ort::session::SessionInputValue;
use ort::value::{DynTensor, DynValue, Tensor, TensorRef};

use super::attribution::AttributionMaps;
use super::scheduler::Sampler;
use super::timing::SamplingTimes;
use crate::{Error, Result};
use ovdiff_core::rng::SplitMix64;
use ovdiff_models::runtime::manifest::{Dtype, Role};
use ovdiff_models::runtime::session::Signature;
use ovdiff_models::runtime::tensor::{f16_tensor, fill_f16, float_view, new_f16_tensor};
use ovdiff_models::runtime::{Bundle, ModelSession, Runtime};

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

/// Unit Gaussian noise of `shape` from `seed`: SplitMix64 uniforms through
/// Box–Muller (both outputs of each pair are used, in order), computed in
/// f64 and rounded to f32. Deterministic everywhere; not torch's sequence.
pub fn gaussian_noise(seed: u64, shape: [usize; 4]) -> Array4<f32> {
    let mut out = Array4::<f32>::zeros(shape);
    gaussian_noise_into(
        seed,
        out.as_slice_mut()
            .expect("invariant: a new array is contiguous"),
    );
    out
}

/// [`gaussian_noise`] written into `out`: the same values as
/// `gaussian_noise(seed, shape)` for any shape of `out.len()` elements.
pub fn gaussian_noise_into(seed: u64, out: &mut [f32]) {
    let mut rng = SplitMix64::new(seed);
    let mut pairs = out.chunks_mut(2);
    for pair in &mut pairs {
        // u1 in (0, 1] so that ln(u1) is finite
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        pair[0] = (r * theta.cos()) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * theta.sin()) as f32;
        }
    }
}

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
/// [`gaussian_noise`].
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
/// [`OnnxUnet::take_times`]).
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

// ------------------------------------------------------------ ONNX UNet

/// How an export takes its `timestep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepShape {
    /// A scalar, shape `[]`.
    Scalar,
    /// Shape `[1]`, broadcast over the batch by the graph.
    One,
    /// Shape `[B]`, one per latent.
    Batch,
}

/// The three inputs an exported UNet takes.
pub const UNET_INPUTS: [&str; 3] = ["sample", "timestep", "encoder_hidden_states"];

/// The output name `optimum` gives the noise prediction.
pub const UNET_OUTPUT: &str = "out_sample";

/// A UNet in an ONNX graph, with inputs `sample` `[B, 4, h, w]`,
/// `timestep` and `encoder_hidden_states` `[B, 77, D]`.
///
/// What varies between exports is read from the session's input metadata:
///
/// * `timestep` may be int64, int32, float32 or float16, a scalar `[]`, `[1]`
///   or `[B]`; integer timesteps are the sampler's timestep rounded to the
///   nearest integer (half to even), which only matters for Euler's
///   fractional `linspace` timesteps;
/// * `sample` and `encoder_hidden_states` may be float32 or float16 (fp16
///   exports): latents and embeddings are converted to `f16` on the way in
///   and the output back to `f32`;
/// * a fixed batch size on `sample` (some exports fix it to 1 or 2) is
///   honoured by running the batch in chunks of that size.
///
/// The output is `out_sample` (optimum's name) when the graph has it, else
/// the graph's first output.
pub struct OnnxUnet {
    session: ModelSession,
    name: String,
    dir: PathBuf,
    sample_dtype: Dtype,
    hidden_dtype: Dtype,
    timestep_dtype: Dtype,
    timestep_shape: TimestepShape,
    fixed_batch: Option<usize>,
    output: String,
    /// Time inside ONNX Runtime's `run` since the last `take_times`.
    run_time: Duration,
    /// Time building inputs and reading outputs since the last `take_times`.
    copy_time: Duration,
    /// `encoder_hidden_states` as input tensors, one per chunk of the
    /// batch, made by `prepare` from embeddings of `hidden_shape`.
    hidden: Vec<DynValue>,
    hidden_shape: Vec<usize>,
    /// The `sample` input of fp16 exports, reused while its shape holds.
    sample_f16: Option<(Vec<usize>, DynTensor)>,
    /// Cross-attention outputs declared by the UNet's manifest.
    attention_outputs: Vec<String>,
    /// Attribution maps being accumulated, between `begin_attribution`
    /// and `take_attribution`.
    attribution: Option<AttributionMaps>,
    /// Time reading cross-attention outputs since the last
    /// `take_attribution_time`.
    attribution_time: Duration,
}

impl std::fmt::Debug for OnnxUnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxUnet")
            .field("name", &self.name)
            .field("sample", &self.sample_dtype)
            .field("timestep", &(self.timestep_dtype, self.timestep_shape))
            .field("output", &self.output)
            .finish()
    }
}

impl OnnxUnet {
    /// Load a `unet` bundle (its manifest checked against the graph).
    pub fn load(runtime: &Runtime, bundle: &Bundle) -> Result<OnnxUnet> {
        let m = bundle.manifest();
        if m.role != Role::Unet {
            return Err(Error::bundle(
                bundle.dir(),
                format!("role is {}, but a unet bundle is needed", m.role),
            ));
        }
        let session = runtime.session(bundle)?;
        OnnxUnet::from_session(session, bundle.name(), bundle.dir())
    }

    /// Wrap a session built elsewhere (e.g. the `unet/model.onnx` of an
    /// exported pipeline folder); `name` and `dir` are used in messages.
    pub fn from_session(session: ModelSession, name: &str, dir: &Path) -> Result<OnnxUnet> {
        let inputs = session.inputs();
        let outputs = session.outputs();
        let find = |n: &str| -> Result<Signature> {
            inputs.iter().find(|s| s.name == n).cloned().ok_or_else(|| {
                Error::bundle(
                    dir,
                    format!(
                        "the UNet graph needs inputs {}; it has: {}",
                        UNET_INPUTS.join(", "),
                        inputs
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        };
        let sample = find("sample")?;
        let timestep = find("timestep")?;
        let hidden = find("encoder_hidden_states")?;
        let float = |sig: &Signature| -> Result<Dtype> {
            match sig.dtype {
                Some(d @ (Dtype::F32 | Dtype::F16)) => Ok(d),
                other => Err(Error::bundle(
                    dir,
                    format!(
                        "UNet input `{}` is {}, expected f32 or f16",
                        sig.name,
                        other.map_or("an unsupported type", |d| d.as_str())
                    ),
                )),
            }
        };
        let sample_dtype = float(&sample)?;
        let hidden_dtype = float(&hidden)?;
        if sample.shape.len() != 4 || hidden.shape.len() != 3 {
            return Err(Error::bundle(
                dir,
                format!(
                    "UNet inputs must be sample [B, C, H, W] and encoder_hidden_states [B, T, D]; \
                     the graph has ranks {} and {}",
                    sample.shape.len(),
                    hidden.shape.len()
                ),
            ));
        }
        let timestep_dtype = timestep.dtype.ok_or_else(|| {
            Error::bundle(dir, "UNet input `timestep` has an unsupported element type")
        })?;
        let timestep_shape = match timestep.shape.as_slice() {
            [] => TimestepShape::Scalar,
            [1] => TimestepShape::One,
            [_] => TimestepShape::Batch,
            other => {
                return Err(Error::bundle(
                    dir,
                    format!("UNet input `timestep` has shape {other:?}; expected [], [1] or [B]"),
                ))
            }
        };
        let fixed_batch = match (sample.shape[0], hidden.shape[0]) {
            (b, _) if b > 0 => Some(b as usize),
            (_, b) if b > 0 => Some(b as usize),
            _ => None,
        };
        let output = outputs
            .iter()
            .find(|o| o.name == UNET_OUTPUT)
            .or_else(|| outputs.first())
            .map(|o| o.name.clone())
            .ok_or_else(|| Error::bundle(dir, "the UNet graph has no outputs"))?;
        Ok(OnnxUnet {
            session,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            sample_dtype,
            hidden_dtype,
            timestep_dtype,
            timestep_shape,
            fixed_batch,
            output,
            run_time: Duration::ZERO,
            copy_time: Duration::ZERO,
            hidden: Vec::new(),
            hidden_shape: Vec::new(),
            sample_f16: None,
            attention_outputs: Vec::new(),
            attribution: None,
            attribution_time: Duration::ZERO,
        })
    }

    /// Read `names` (cross-attention probabilities, see
    /// [`attribution`](super::attribution)) after every run while
    /// attribution maps are being accumulated. Each must be a float output
    /// of rank 3 or 4 of the graph.
    pub fn declare_attention(&mut self, names: &[String]) -> Result<()> {
        let outputs = self.session.outputs();
        for name in names {
            let sig = outputs.iter().find(|o| &o.name == name).ok_or_else(|| {
                Error::bundle(
                    &self.dir,
                    format!(
                        "the UNet's manifest declares cross-attention output `{name}`, which \
                         the graph does not have; re-run scripts/expose_attention.py on the export"
                    ),
                )
            })?;
            if !matches!(sig.dtype, Some(Dtype::F32 | Dtype::F16))
                || !(3..=4).contains(&sig.shape.len())
            {
                return Err(Error::bundle(
                    &self.dir,
                    format!(
                        "cross-attention output `{name}` must be float32 or float16 of rank 3 \
                         or 4 ([B·heads, L, T] or [B, heads, L, T]); the graph's has rank {}",
                        sig.shape.len()
                    ),
                ));
            }
        }
        self.attention_outputs = names.to_vec();
        Ok(())
    }

    /// The declared cross-attention outputs (empty: no attribution maps).
    pub fn attention_outputs(&self) -> &[String] {
        &self.attention_outputs
    }

    /// Accumulate the declared cross-attention outputs of every run into
    /// `maps` until [`take_attribution`](Self::take_attribution).
    pub fn begin_attribution(&mut self, maps: AttributionMaps) {
        self.attribution = Some(maps);
    }

    /// The maps accumulated since [`begin_attribution`](Self::begin_attribution).
    pub fn take_attribution(&mut self) -> Option<AttributionMaps> {
        self.attribution.take()
    }

    /// Time spent reading cross-attention outputs since the last call; resets it.
    pub fn take_attribution_time(&mut self) -> Duration {
        std::mem::take(&mut self.attribution_time)
    }

    /// The element type of `sample` (f16 for fp16 exports).
    pub fn sample_dtype(&self) -> Dtype {
        self.sample_dtype
    }

    /// The element type and shape of the `timestep` input.
    pub fn timestep_input(&self) -> (Dtype, TimestepShape) {
        (self.timestep_dtype, self.timestep_shape)
    }

    /// The output read as the prediction.
    pub fn output_name(&self) -> &str {
        &self.output
    }

    /// Time spent in [`predict`](Denoiser::predict) since the last call,
    /// as `(inside ONNX Runtime's run, building inputs and reading
    /// outputs)`; resets both.
    pub fn take_times(&mut self) -> (Duration, Duration) {
        let t = (self.run_time, self.copy_time);
        self.run_time = Duration::ZERO;
        self.copy_time = Duration::ZERO;
        t
    }

    fn timestep_value(&self, t: f64, batch: usize) -> Result<DynValue> {
        let shape: Vec<i64> = match self.timestep_shape {
            TimestepShape::Scalar => vec![],
            TimestepShape::One => vec![1],
            TimestepShape::Batch => vec![batch as i64],
        };
        let n = shape.iter().product::<i64>().max(1) as usize;
        let ctx = |e| Error::ort(format!("building the timestep tensor for {}", self.name), e);
        Ok(match self.timestep_dtype {
            Dtype::I64 => Tensor::from_array((shape, vec![t.round_ties_even() as i64; n]))
                .map_err(ctx)?
                .into_dyn(),
            Dtype::I32 => Tensor::from_array((shape, vec![t.round_ties_even() as i32; n]))
                .map_err(ctx)?
                .into_dyn(),
            Dtype::F32 => Tensor::from_array((shape, vec![t as f32; n]))
                .map_err(ctx)?
                .into_dyn(),
            Dtype::F16 => f16_tensor(&shape, &vec![f16::from_f64(t); n])
                .map_err(ctx)?
                .into_dyn(),
        })
    }

    fn float_value(&self, dtype: Dtype, shape: &[usize], data: Vec<f32>) -> Result<DynValue> {
        let shape: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
        let ctx = |e| Error::ort(format!("building an input tensor for {}", self.name), e);
        Ok(match dtype {
            Dtype::F16 => {
                let h: Vec<f16> = data.iter().map(|v| f16::from_f32(*v)).collect();
                f16_tensor(&shape, &h).map_err(ctx)?.into_dyn()
            }
            _ => Tensor::from_array((shape, data)).map_err(ctx)?.into_dyn(),
        })
    }

    /// The chunk the graph runs a batch of `batch` latents in.
    fn chunk_size(&self, batch: usize) -> Result<usize> {
        match self.fixed_batch {
            None => Ok(batch.max(1)),
            Some(n) if batch.is_multiple_of(n) => Ok(n),
            Some(n) => Err(Error::DimensionMismatch {
                what: format!("latent batch for UNet {}", self.name),
                expected: format!("a multiple of the graph's fixed batch {n}"),
                found: format!("{batch}"),
            }),
        }
    }

    /// Refuse embeddings whose batch is not the latents' (before running).
    fn check_batch(&self, latents: &[usize], cond: &Array3<f32>) -> Result<()> {
        let batch = latents[0];
        if cond.shape()[0] != batch {
            return Err(Error::DimensionMismatch {
                what: format!("text embeddings for UNet {}", self.name),
                expected: format!("a batch of {batch} (the latents')"),
                found: format!("{}", cond.shape()[0]),
            });
        }
        self.chunk_size(batch).map(|_| ())
    }

    /// Convert `cond` into `encoder_hidden_states` tensors, one per chunk.
    fn prepare_hidden(&mut self, cond: &Array3<f32>) -> Result<()> {
        let clock = Instant::now();
        self.hidden.clear();
        self.hidden_shape.clear();
        let batch = cond.shape()[0];
        let chunk = self.chunk_size(batch)?;
        for start in (0..batch).step_by(chunk) {
            let part = cond.slice(s![start..start + chunk, .., ..]);
            let value = self.float_value(
                self.hidden_dtype,
                part.shape(),
                part.iter().copied().collect(),
            )?;
            self.hidden.push(value);
        }
        self.hidden_shape = cond.shape().to_vec();
        self.copy_time += clock.elapsed();
        Ok(())
    }

    /// Run the prepared embeddings' batch, chunk by chunk, into `out`.
    fn run_into(
        &mut self,
        latents: ArrayView4<'_, f32>,
        timestep: f64,
        mut out: ArrayViewMut4<'_, f32>,
    ) -> Result<()> {
        let batch = latents.shape()[0];
        let chunk = self.chunk_size(batch)?;
        for (k, start) in (0..batch).step_by(chunk).enumerate() {
            let end = start + chunk;
            self.run_chunk(
                latents.slice(s![start..end, .., .., ..]),
                timestep,
                k,
                start,
                out.slice_mut(s![start..end, .., .., ..]),
            )?;
        }
        Ok(())
    }

    /// One run of the graph on a chunk (model-batch rows from `first_row`),
    /// with the `k`th prepared embeddings: f32 latents are passed to ONNX
    /// Runtime without a copy (f16 ones are converted into a reused
    /// tensor), the output is copied into `out`, and declared
    /// cross-attention outputs go into the attribution maps, if any.
    fn run_chunk(
        &mut self,
        latents: ArrayView4<'_, f32>,
        timestep: f64,
        k: usize,
        first_row: usize,
        mut out: ArrayViewMut4<'_, f32>,
    ) -> Result<()> {
        let clock = Instant::now();
        let batch = latents.shape()[0];
        let x_shape = latents.shape().to_vec();
        let t = self.timestep_value(timestep, batch)?;
        let ctx = |e| Error::ort(format!("building an input tensor for {}", self.name), e);
        let standard;
        let x: SessionInputValue<'_> = match self.sample_dtype {
            Dtype::F16 => {
                if self.sample_f16.as_ref().is_none_or(|(s, _)| *s != x_shape) {
                    let shape: Vec<i64> = x_shape.iter().map(|d| *d as i64).collect();
                    self.sample_f16 = Some((x_shape.clone(), new_f16_tensor(&shape).map_err(ctx)?));
                }
                let (_, tensor) = self
                    .sample_f16
                    .as_mut()
                    .expect("invariant: made just above");
                fill_f16(tensor, latents.iter().copied());
                SessionInputValue::from(&*tensor)
            }
            _ => {
                let data = match latents.as_slice() {
                    Some(d) => d,
                    None => {
                        standard = latents.as_standard_layout();
                        standard
                            .as_slice()
                            .expect("invariant: a standard-layout array is contiguous")
                    }
                };
                TensorRef::from_array_view((x_shape.as_slice(), data))
                    .map_err(ctx)?
                    .into()
            }
        };
        let hidden = self.hidden.get(k).ok_or_else(|| {
            Error::Invalid(format!(
                "UNet {}: no prepared embeddings for chunk {k}",
                self.name
            ))
        })?;
        self.copy_time += clock.elapsed();
        let clock = Instant::now();
        let name = &self.name;
        let mut outputs = self
            .session
            .session_mut()
            .run(ort::inputs![
                "sample" => x,
                "timestep" => t,
                "encoder_hidden_states" => hidden,
            ])
            .map_err(|e| Error::ort(format!("running UNet {name} at timestep {timestep}"), e))?;
        self.run_time += clock.elapsed();
        let clock = Instant::now();
        let value = outputs.remove(self.output.as_str()).ok_or_else(|| {
            Error::bundle(
                &self.dir,
                format!("output `{}` missing at run time", self.output),
            )
        })?;
        let (shape, data) = float_view(&value)
            .map_err(|e| Error::ort(format!("reading the output of UNet {name}"), e))?;
        if shape != x_shape {
            return Err(Error::DimensionMismatch {
                what: format!("UNet {name} output `{}`", self.output),
                expected: format!("{x_shape:?}"),
                found: format!("{shape:?}"),
            });
        }
        match out.as_slice_mut() {
            Some(o) => data.copy_to(o),
            None => out
                .iter_mut()
                .enumerate()
                .for_each(|(i, o)| *o = data.get(i)),
        }
        self.copy_time += clock.elapsed();
        if let Some(maps) = self.attribution.as_mut() {
            let clock = Instant::now();
            for attn in &self.attention_outputs {
                let value = outputs.remove(attn.as_str()).ok_or_else(|| {
                    Error::bundle(&self.dir, format!("output `{attn}` missing at run time"))
                })?;
                let (shape, data) = float_view(&value).map_err(|e| {
                    Error::ort(format!("reading output `{attn}` of UNet {name}"), e)
                })?;
                maps.add(attn, &shape, &data, first_row, batch)?;
            }
            self.attribution_time += clock.elapsed();
        }
        Ok(())
    }
}

impl Denoiser for OnnxUnet {
    fn predict(
        &mut self,
        latents: &Array4<f32>,
        timestep: f64,
        cond: &Array3<f32>,
    ) -> Result<Array4<f32>> {
        self.check_batch(latents.shape(), cond)?;
        self.prepare_hidden(cond)?;
        let mut out = Array4::<f32>::zeros(latents.raw_dim());
        let done = self.run_into(latents.view(), timestep, out.view_mut());
        self.hidden.clear();
        self.hidden_shape.clear();
        done.map(|()| out)
    }

    fn prepare(&mut self, cond: &Array3<f32>) -> Result<()> {
        self.prepare_hidden(cond)
    }

    fn predict_into(
        &mut self,
        latents: ArrayView4<'_, f32>,
        timestep: f64,
        cond: &Array3<f32>,
        out: ArrayViewMut4<'_, f32>,
    ) -> Result<()> {
        self.check_batch(latents.shape(), cond)?;
        if out.shape() != latents.shape() {
            return Err(Error::DimensionMismatch {
                what: format!("output buffer for UNet {}", self.name),
                expected: format!("{:?}", latents.shape()),
                found: format!("{:?}", out.shape()),
            });
        }
        if self.hidden_shape != cond.shape() {
            self.prepare_hidden(cond)?;
        }
        self.run_into(latents, timestep, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{
        build_sampler, EulerDiscrete, FinalSigmas, PredictionType, SchedulerConfig, SchedulerKind,
        TimestepSpacing, Turbo,
    };
    use ndarray::Array3;

    const SHAPE: [usize; 4] = [2, 4, 8, 8];

    fn max_abs(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
        Zip::from(a)
            .and(b)
            .fold(0.0f32, |m, x, y| m.max((x - y).abs()))
    }

    fn config(pred: PredictionType, spacing: TimestepSpacing) -> SchedulerConfig {
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
    fn gaussian_oracle(
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

    fn cond(b: usize, v: f32) -> Array3<f32> {
        Array3::from_elem((b, 77, 16), v)
    }

    fn run(
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
    fn ode_error(
        kind: SchedulerKind,
        spacing: TimestepSpacing,
        steps: usize,
        to_zero: bool,
    ) -> f32 {
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

    #[test]
    fn noise_is_deterministic_and_standard() {
        let a = gaussian_noise(42, [2, 4, 16, 16]);
        let b = gaussian_noise(42, [2, 4, 16, 16]);
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_ne!(a, gaussian_noise(43, [2, 4, 16, 16]));
        let n = a.len() as f64;
        let mean = a.iter().map(|v| *v as f64).sum::<f64>() / n;
        let var = a.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.08 && (var - 1.0).abs() < 0.1, "{mean} {var}");
        // odd sizes use the first value of the last pair
        assert_eq!(gaussian_noise(42, [1, 1, 1, 3]).len(), 3);
        // and the whole loop is bit-reproducible
        let c = config(PredictionType::Epsilon, TimestepSpacing::Linspace);
        let (o1, _) = run(&c, SchedulerKind::DpmPlusPlus2M, 12, 0.5, 9);
        let (o2, _) = run(&c, SchedulerKind::DpmPlusPlus2M, 12, 0.5, 9);
        assert!(o1.iter().zip(&o2).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    // ----------------------------------------------- the ONNX oracle bundles

    /// ONNX Runtime from the installed home in a throw-away home, or `None`
    /// (skip) when it is not installed, except under `CI=true`.
    fn runtime() -> Option<(tempfile::TempDir, Runtime)> {
        use ovdiff_models::runtime::{RuntimeOptions, VerifyMode};
        let lib = ovdiff_core::Home::from_env().lib_dir();
        if !lib.join("libonnxruntime.so").exists() {
            let msg = format!(
                "ONNX Runtime is missing at {}; run `scripts/setup` first",
                lib.display()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true and {msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let home = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&lib, home.path().join("lib")).unwrap();
        let opts = RuntimeOptions {
            threads: 1,
            verify: VerifyMode::Full,
            ..RuntimeOptions::default()
        };
        let rt = Runtime::init(&ovdiff_core::Home::at(home.path()), opts).unwrap();
        Some((home, rt))
    }

    fn oracle_dir(variant: &str) -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .join("tests/fixtures/models/oracle-unet")
            .join(variant)
    }

    fn oracle(rt: &Runtime, variant: &str) -> (OnnxUnet, Array4<f32>) {
        let dir = oracle_dir(variant);
        let bundle = rt.open_bundle(&dir).unwrap();
        let unet = OnnxUnet::load(rt, &bundle).unwrap();
        #[derive(serde::Deserialize)]
        struct X0 {
            shape: Vec<usize>,
            data: Vec<f32>,
        }
        let x0: X0 =
            serde_json::from_str(&std::fs::read_to_string(dir.join("x0.json")).unwrap()).unwrap();
        assert_eq!(x0.shape, vec![1, 4, 8, 8]);
        let x0 = Array4::from_shape_vec((1, 4, 8, 8), x0.data).unwrap();
        let both = concatenate(Axis(0), &[x0.view(), x0.view()]).unwrap();
        (unet, both)
    }

    fn onnx_run(
        unet: &mut OnnxUnet,
        c: &SchedulerConfig,
        kind: SchedulerKind,
        steps: usize,
        cond_emb: &Array3<f32>,
        uncond: Option<&Array3<f32>>,
        g: f32,
    ) -> Array4<f32> {
        let mut sampler = build_sampler(c, kind, steps).unwrap();
        let noise = gaussian_noise(42, SHAPE);
        sample(
            unet,
            sampler.as_mut(),
            &noise,
            cond_emb,
            uncond,
            g,
            &mut |_, _| {},
        )
        .unwrap()
    }

    #[test]
    fn onnx_oracle_bundles_are_recovered_by_every_sampler() {
        use TimestepSpacing::*;
        let Some((_home, rt)) = runtime() else { return };
        for (variant, pred) in [
            ("eps-i64", PredictionType::Epsilon),
            ("v-i64", PredictionType::VPrediction),
            ("eps-f32-scalar", PredictionType::Epsilon),
        ] {
            let (mut unet, want) = oracle(&rt, variant);
            for spacing in [Leading, Trailing, Linspace] {
                let c = config(pred, spacing);
                for (kind, steps) in [
                    (SchedulerKind::Ddim, 30),
                    (SchedulerKind::Ddim, 10),
                    (SchedulerKind::DpmPlusPlus2M, 30),
                    (SchedulerKind::Euler, 30),
                    (SchedulerKind::Turbo, 1),
                ] {
                    let out = onnx_run(&mut unet, &c, kind, steps, &cond(1, 0.1), None, 1.0);
                    let err = max_abs(&out, &want);
                    assert!(err < 1e-3, "{variant} {kind} {steps} {spacing:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn onnx_oracle_reads_its_timestep_input() {
        let Some((_home, rt)) = runtime() else { return };
        let (a, _) = oracle(&rt, "eps-i64");
        assert_eq!(a.timestep_input(), (Dtype::I64, TimestepShape::Batch));
        assert_eq!(a.output_name(), "out_sample");
        let (b, _) = oracle(&rt, "eps-f32-scalar");
        assert_eq!(b.timestep_input(), (Dtype::F32, TimestepShape::Scalar));
        let (f, _) = oracle(&rt, "eps-f16");
        assert_eq!(f.timestep_input(), (Dtype::F16, TimestepShape::One));
        assert_eq!(f.sample_dtype(), Dtype::F16);
        // one direct pass: ε of x_t = √ᾱ·x0 + √(1−ᾱ)·z is z
        let (mut unet, x0) = oracle(&rt, "eps-i64");
        let ac = SchedulerConfig::stable_diffusion_v1().alphas_cumprod();
        let z = gaussian_noise(3, SHAPE);
        let t = 640;
        let xt = Zip::from(&x0).and(&z).map_collect(|x, z| {
            (ac[t].sqrt() * *x as f64 + (1.0 - ac[t]).sqrt() * *z as f64) as f32
        });
        let eps = unet.predict(&xt, t as f64, &cond(2, 0.0)).unwrap();
        assert!(max_abs(&eps, &z) < 1e-4, "{}", max_abs(&eps, &z));
        // a wrong batch of embeddings is refused before running
        assert!(unet.predict(&xt, 1.0, &cond(1, 0.0)).is_err());
    }

    #[test]
    fn onnx_fp16_export_is_fed_and_read_as_f16() {
        let Some((_home, rt)) = runtime() else { return };
        let (mut unet, want) = oracle(&rt, "eps-f16");
        for kind in [SchedulerKind::DpmPlusPlus2M, SchedulerKind::Ddim] {
            let c = config(PredictionType::Epsilon, TimestepSpacing::Leading);
            let out = onnx_run(&mut unet, &c, kind, 20, &cond(1, 0.1), None, 1.0);
            // f16 carries ~3 decimal digits: x̂₀ at the last step is exact to
            // the f16 rounding of the latents and the output
            let err = max_abs(&out, &want);
            assert!(err < 2e-2, "{kind}: {err}");
        }
    }

    #[test]
    fn onnx_guidance_oracle_checks_cfg_end_to_end() {
        let Some((_home, rt)) = runtime() else { return };
        let (mut unet, want) = oracle(&rt, "guidance");
        // the graph adds m = mean of the first 4 embedding channels; with
        // m_c = 1 and m_u = g/(g − 1), m_u + g·(m_c − m_u) = 0, so guided
        // sampling recovers x0 only if uncond and cond are paired and
        // combined as u + g·(c − u)
        let g = DEFAULT_GUIDANCE;
        let (c_emb, u_emb) = (cond(1, 1.0), cond(1, g / (g - 1.0)));
        let c = config(PredictionType::Epsilon, TimestepSpacing::Linspace);
        let out = onnx_run(
            &mut unet,
            &c,
            SchedulerKind::DpmPlusPlus2M,
            30,
            &c_emb,
            Some(&u_emb),
            g,
        );
        assert!(max_abs(&out, &want) < 1e-3, "{}", max_abs(&out, &want));
        // swapped, the guided ε is off by g·(m_u − m_c) ≠ 0
        let out = onnx_run(
            &mut unet,
            &c,
            SchedulerKind::DpmPlusPlus2M,
            30,
            &u_emb,
            Some(&c_emb),
            g,
        );
        assert!(max_abs(&out, &want) > 0.1);
    }
}
