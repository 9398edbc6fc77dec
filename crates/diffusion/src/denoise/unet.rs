//! The ONNX UNet: an exported UNet as a [`Denoiser`], adapting to the exports' `timestep` inputs, fp16 graphs and fixed batches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use half::f16;
use ndarray::{s, Array3, Array4, ArrayView4, ArrayViewMut4};
use ort::session::SessionInputValue;
use ort::value::{DynTensor, DynValue, Tensor, TensorRef};

use super::Denoiser;
use crate::attribution::AttributionMaps;
use crate::{Error, Result};
use ovdiff_models::runtime::manifest::{Dtype, Role};
use ovdiff_models::runtime::session::Signature;
use ovdiff_models::runtime::tensor::{f16_tensor, fill_f16, float_view, new_f16_tensor};
use ovdiff_models::runtime::{Bundle, ModelSession, Runtime};

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
    /// [`attribution`](crate::attribution)) after every run while
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
    use crate::denoise::oracle::{cond, config, max_abs, SHAPE};
    use crate::denoise::{gaussian_noise, sample, DEFAULT_GUIDANCE};
    use crate::scheduler::{
        build_sampler, PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing,
    };
    use ndarray::{concatenate, Axis, Zip};

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
