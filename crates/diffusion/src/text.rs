//! The CLIP text encoder of an exported pipeline: token ids in, `last_hidden_state` embeddings out.
//!
//! Exports differ in the input's element type: current `optimum-cli export
//! onnx` writes `input_ids` as int64, diffusers' older conversion script as
//! int32; [`TextEncoder`] reads the graph's declared type and feeds that.
//! fp16 exports return float16 embeddings, which are converted to `f32`.
//! Other outputs (`pooler_output`, `text_embeds`) are ignored.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::value::{DynValue, Tensor};

use super::pipeline_dir::PipelineDir;
use crate::{Error, Result};
use ovdiff_models::runtime::manifest::Dtype;
use ovdiff_models::runtime::session::Signature;
use ovdiff_models::runtime::tensor::read_float;
use ovdiff_models::runtime::{ModelSession, Runtime};
use ovdiff_models::tokenizer::CONTEXT_LENGTH;

/// The text encoder's input.
pub const INPUT_IDS: &str = "input_ids";

/// The text encoder's output the UNet attends to.
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";

/// A loaded, checked text encoder graph.
pub struct TextEncoder {
    session: ModelSession,
    dir: PathBuf,
    ids_dtype: Dtype,
    output_dtype: Dtype,
    hidden_size: Option<usize>,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("path", &self.session.path())
            .field("input_ids", &self.ids_dtype)
            .field("last_hidden_state", &self.output_dtype)
            .field("hidden_size", &self.hidden_size)
            .finish()
    }
}

impl TextEncoder {
    /// Build the session for the export's `text_encoder/model.onnx`, check
    /// it, and check that its embedding width is the one `pipeline`'s
    /// configs promise the UNet.
    pub fn open(runtime: &Runtime, pipeline: &PipelineDir) -> Result<TextEncoder> {
        let session = ModelSession::from_graph_in_turns(
            runtime,
            &pipeline.text_encoder_path(),
            pipeline.root(),
        )?;
        let mut enc = TextEncoder::new(session, pipeline.root())?;
        let want = pipeline.hidden_size();
        match enc.hidden_size {
            Some(h) if h != want => {
                return Err(Error::bundle(
                    pipeline.root(),
                    format!(
                        "`text_encoder/model.onnx` outputs {LAST_HIDDEN_STATE} of width {h}, \
                         but the configs say {want} (cross_attention_dim of the UNet)"
                    ),
                ))
            }
            _ => enc.hidden_size = Some(want),
        }
        Ok(enc)
    }

    /// Wrap a session built elsewhere: it must take exactly `input_ids`
    /// (int32 or int64, `[batch, sequence]`) and output `last_hidden_state`
    /// (float32 or float16, `[batch, sequence, hidden]`). `dir` is named in
    /// errors.
    pub fn new(session: ModelSession, dir: &Path) -> Result<TextEncoder> {
        let fail = |problem: String| Error::bundle(dir, problem);
        let inputs = session.inputs();
        let outputs = session.outputs();
        let names = |v: &[Signature]| {
            v.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let [ids] = inputs.as_slice() else {
            return Err(fail(format!(
                "the text encoder must take one input, `{INPUT_IDS}`; it takes: {}",
                names(&inputs)
            )));
        };
        if ids.name != INPUT_IDS {
            return Err(fail(format!(
                "the text encoder's input is `{}`, expected `{INPUT_IDS}`",
                ids.name
            )));
        }
        let ids_dtype = match ids.dtype {
            Some(d @ (Dtype::I32 | Dtype::I64)) => d,
            other => {
                return Err(fail(format!(
                    "text encoder input `{INPUT_IDS}` is {}, expected int32 or int64",
                    other.map(|d| d.as_str()).unwrap_or("an unsupported type")
                )))
            }
        };
        if ids.shape.len() != 2 || !matches!(ids.shape[1], -1 | 77) {
            return Err(fail(format!(
                "text encoder input `{INPUT_IDS}` has shape {:?}, expected [batch, {CONTEXT_LENGTH}]",
                ids.shape
            )));
        }
        let Some(out) = outputs.iter().find(|s| s.name == LAST_HIDDEN_STATE) else {
            return Err(fail(format!(
                "the text encoder has no `{LAST_HIDDEN_STATE}` output; its outputs are: {}",
                names(&outputs)
            )));
        };
        let output_dtype = match out.dtype {
            Some(d @ (Dtype::F32 | Dtype::F16)) => d,
            other => {
                return Err(fail(format!(
                    "text encoder output `{LAST_HIDDEN_STATE}` is {}, expected float32 or float16",
                    other.map(|d| d.as_str()).unwrap_or("an unsupported type")
                )))
            }
        };
        if out.shape.len() != 3 {
            return Err(fail(format!(
                "text encoder output `{LAST_HIDDEN_STATE}` has shape {:?}, expected \
                 [batch, sequence, hidden]",
                out.shape
            )));
        }
        let hidden_size = usize::try_from(out.shape[2]).ok().filter(|&h| h > 0);
        Ok(TextEncoder {
            session,
            dir: dir.to_path_buf(),
            ids_dtype,
            output_dtype,
            hidden_size,
        })
    }

    /// The element type `input_ids` is fed as (i32 or i64).
    pub fn input_dtype(&self) -> Dtype {
        self.ids_dtype
    }

    /// The element type of `last_hidden_state` (f32, or f16 for fp16
    /// exports).
    pub fn output_dtype(&self) -> Dtype {
        self.output_dtype
    }

    /// The embedding width, when the graph or the pipeline configs fix it.
    pub fn hidden_size(&self) -> Option<usize> {
        self.hidden_size
    }

    /// Encode a batch of token-id rows, each [`CONTEXT_LENGTH`] long (what
    /// [`ClipTokenizer::encode`](ovdiff_models::tokenizer::ClipTokenizer::encode)
    /// returns): `last_hidden_state` as `[B, 77, D]` f32.
    pub fn encode(&mut self, ids: &[Vec<i64>]) -> Result<Array3<f32>> {
        if ids.is_empty() {
            return Err(Error::Invalid(
                "the text encoder needs at least one prompt".into(),
            ));
        }
        if let Some(row) = ids.iter().find(|r| r.len() != CONTEXT_LENGTH) {
            return Err(Error::DimensionMismatch {
                what: "token ids for the text encoder".into(),
                expected: format!("{CONTEXT_LENGTH} per prompt"),
                found: format!("{}", row.len()),
            });
        }
        let batch = ids.len();
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let shape = [batch, CONTEXT_LENGTH];
        let path = self.session.path().display().to_string();
        let ctx = |what: &str| format!("{what} for the text encoder {path}");
        let input: DynValue = match self.ids_dtype {
            Dtype::I32 => {
                let narrow = flat
                    .iter()
                    .map(|&v| i32::try_from(v))
                    .collect::<std::result::Result<Vec<i32>, _>>()
                    .map_err(|_| Error::Invalid("a token id does not fit in int32".into()))?;
                Tensor::from_array((shape, narrow))
                    .map_err(|e| Error::ort(ctx("building input_ids"), e))?
                    .into_dyn()
            }
            _ => Tensor::from_array((shape, flat))
                .map_err(|e| Error::ort(ctx("building input_ids"), e))?
                .into_dyn(),
        };
        let mut outputs = self
            .session
            .session_mut()
            .run(ort::inputs![INPUT_IDS => input])
            .map_err(|e| Error::ort(ctx(&format!("running a batch of {batch}")), e))?;
        let value = outputs.remove(LAST_HIDDEN_STATE).ok_or_else(|| {
            Error::bundle(
                &self.dir,
                format!("text encoder output `{LAST_HIDDEN_STATE}` missing at run time"),
            )
        })?;
        let (shape, data) =
            read_float(value).map_err(|e| Error::ort(ctx("reading last_hidden_state"), e))?;
        let ok_shape = shape.len() == 3
            && shape[0] == batch
            && shape[1] == CONTEXT_LENGTH
            && self.hidden_size.is_none_or(|h| shape[2] == h);
        if !ok_shape {
            return Err(Error::DimensionMismatch {
                what: format!("text encoder output `{LAST_HIDDEN_STATE}`"),
                expected: format!(
                    "[{batch}, {CONTEXT_LENGTH}, {}]",
                    self.hidden_size
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "D".into())
                ),
                found: format!("{shape:?}"),
            });
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "the text encoder {path} produced non-finite embeddings"
            )));
        }
        Ok(Array3::from_shape_vec((shape[0], shape[1], shape[2]), data)
            .expect("invariant: the data fills the checked shape"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        ovdiff_models::testing::fixture("sd-tiny")
    }

    /// The runtime, or `None` (with a message) when ONNX Runtime is not
    /// installed; under CI=true that fails the test.
    fn runtime() -> Option<Runtime> {
        ovdiff_models::testing::runtime_or_skip()
    }

    /// numpy's tanh((E[ids] + P) W + b) is what the fixture computes; here
    /// the graph is only checked for shape, determinism, position and
    /// prompt dependence, and int32/f16 agreement with int64/f32.
    #[test]
    fn fixture_text_encoder_encodes_prompts() {
        let Some(rt) = runtime() else { return };
        let pipe = PipelineDir::open(&fixture()).unwrap();
        let mut enc = TextEncoder::open(&rt, &pipe).unwrap();
        assert_eq!(enc.input_dtype(), Dtype::I64);
        assert_eq!(enc.output_dtype(), Dtype::F32);
        assert_eq!(enc.hidden_size(), Some(32));
        let tok = pipe.tokenizer();
        let ids = vec![
            tok.encode("a good picture of a fixture-class"),
            tok.encode("a good picture of a cat"),
            tok.encode("a good picture of a fixture-class"),
        ];
        let h = enc.encode(&ids).unwrap();
        assert_eq!(h.shape(), &[3, 77, 32]);
        assert!(h.iter().all(|v| v.abs() <= 1.0), "tanh output");
        assert_eq!(
            h.slice(ndarray::s![0, .., ..]),
            h.slice(ndarray::s![2, .., ..])
        );
        assert_ne!(
            h.slice(ndarray::s![0, 6, ..]),
            h.slice(ndarray::s![1, 6, ..])
        );
        // The two `a` tokens (positions 1 and 5) differ only by position.
        assert_ne!(
            h.slice(ndarray::s![0, 1, ..]),
            h.slice(ndarray::s![0, 5, ..])
        );

        // The same weights with int32 ids and float16 outputs.
        let session = ModelSession::from_graph(
            &rt,
            &fixture().join("variants/text_encoder_i32_f16.onnx"),
            &fixture(),
        )
        .unwrap();
        let mut enc16 = TextEncoder::new(session, &fixture()).unwrap();
        assert_eq!(enc16.input_dtype(), Dtype::I32);
        assert_eq!(enc16.output_dtype(), Dtype::F16);
        let h16 = enc16.encode(&ids).unwrap();
        let worst = h
            .iter()
            .zip(h16.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 2e-3, "f16 vs f32 differ by {worst}");
    }

    #[test]
    fn bad_batches_are_rejected() {
        let Some(rt) = runtime() else { return };
        let pipe = PipelineDir::open(&fixture()).unwrap();
        let mut enc = TextEncoder::open(&rt, &pipe).unwrap();
        let err = enc.encode(&[]).unwrap_err().report();
        assert!(err.contains("at least one prompt"), "{err}");
        let err = enc.encode(&[vec![1, 2, 3]]).unwrap_err().report();
        assert!(err.contains("77 per prompt"), "{err}");
    }

    #[test]
    fn graphs_that_are_not_text_encoders_are_rejected() {
        let Some(rt) = runtime() else { return };
        let dir = fixture();
        let session = ModelSession::from_graph(&rt, &dir.join("unet/model.onnx"), &dir).unwrap();
        let err = TextEncoder::new(session, &dir).unwrap_err().report();
        assert!(err.contains("one input, `input_ids`"), "{err}");
        let session =
            ModelSession::from_graph(&rt, &dir.join("vae_decoder/model.onnx"), &dir).unwrap();
        let err = TextEncoder::new(session, &dir).unwrap_err().report();
        assert!(err.contains("expected `input_ids`"), "{err}");

        // A text encoder whose width is not the configs'.
        let tmp = tempfile::tempdir().unwrap();
        for rel in crate::pipeline_dir::REQUIRED_FILES {
            let to = tmp.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(dir.join(rel), to).unwrap();
        }
        for rel in ["text_encoder/config.json", "unet/config.json"] {
            let p = tmp.path().join(rel);
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text
                .replace("\"hidden_size\": 32", "\"hidden_size\": 64")
                .replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 64");
            std::fs::write(&p, text).unwrap();
        }
        let pipe = PipelineDir::open(tmp.path()).unwrap();
        let err = TextEncoder::open(&rt, &pipe).unwrap_err().report();
        assert!(err.contains("width 32") && err.contains("say 64"), "{err}");
    }
}
