//! The CLIP graphs of a bundle, checked against what they are fed, and run for embeddings.

use std::path::Path;

use ort::value::{DynValue, Tensor};

use super::{ClipBundle, Layout, EXPORT_HINT, PREPROCESSOR_CONFIG};
use crate::runtime::manifest::Dtype;
use crate::runtime::session::Signature;
use crate::runtime::tensor::read_float;
use crate::runtime::{ModelSession, Runtime};
use crate::tokenizer::CONTEXT_LENGTH;
use crate::{Error, Result};

const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
const PIXEL_VALUES: &str = "pixel_values";
const TEXT_EMBEDS: &str = "text_embeds";
const IMAGE_EMBEDS: &str = "image_embeds";

/// The integer type an id or mask input takes.
fn int_dtype(path: &Path, dir: &Path, sig: &Signature) -> Result<Dtype> {
    match sig.dtype {
        Some(d @ (Dtype::I64 | Dtype::I32)) if sig.shape.len() == 2 => Ok(d),
        _ => Err(Error::bundle(
            dir,
            format!(
                "`{}` input `{}` is {} of rank {}; expected int64 or int32 [batch, sequence]",
                file_name(path),
                sig.name,
                sig.dtype
                    .map(|d| d.as_str())
                    .unwrap_or("an unsupported type"),
                sig.shape.len()
            ),
        )),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn names(v: &[Signature]) -> String {
    v.iter()
        .map(|s| format!("`{}`", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text inputs of a graph, checked.
#[derive(Debug, Clone)]
struct TextSide {
    ids: Dtype,
    mask: Option<Dtype>,
    /// The sequence length the graph fixes, if any.
    fixed_len: Option<usize>,
}

/// What a graph run returns: the image embedding (when the graph has the
/// image tower) and the text embeddings.
type RunOutput = (Option<Vec<f32>>, Vec<Vec<f32>>);

/// One checked graph and what it takes.
struct Graph {
    session: ModelSession,
    text: Option<TextSide>,
    pixels: bool,
    text_out: bool,
    image_out: bool,
    /// Text and image share one batch dimension (older optimum exports name
    /// both `batch_size`): the image is repeated once per prompt.
    tied: bool,
}

impl Graph {
    /// Load `path` and check its signature: only inputs we feed, outputs
    /// `text_embeds` / `image_embeds` as `need_text` / `need_image` say.
    fn load(
        runtime: &Runtime,
        bundle: &ClipBundle,
        path: &Path,
        need_text: bool,
        need_image: bool,
    ) -> Result<Graph> {
        let dir = bundle.root();
        let session = ModelSession::from_graph(runtime, path, dir)?;
        let fail = |problem: String| {
            Error::bundle(
                dir,
                format!("`{}` {problem}; {EXPORT_HINT}", file_name(path)),
            )
        };
        let inputs = session.inputs();
        let outputs = session.outputs();
        let want_in: Vec<&str> = match (need_text, need_image) {
            (true, true) => vec![INPUT_IDS, PIXEL_VALUES],
            (true, false) => vec![INPUT_IDS],
            _ => vec![PIXEL_VALUES],
        };
        for w in &want_in {
            if !inputs.iter().any(|s| s.name == *w) {
                return Err(fail(format!(
                    "has inputs {}, but a CLIP {} takes `{w}`",
                    names(&inputs),
                    if need_text && need_image {
                        "export"
                    } else if need_text {
                        "text tower"
                    } else {
                        "image tower"
                    }
                )));
            }
        }
        let allowed: &[&str] = if need_text {
            &[INPUT_IDS, ATTENTION_MASK, PIXEL_VALUES]
        } else {
            &[PIXEL_VALUES]
        };
        if let Some(extra) = inputs.iter().find(|s| !allowed.contains(&s.name.as_str())) {
            return Err(fail(format!(
                "has an input `{}` that the pre-filter cannot feed (it feeds {})",
                extra.name,
                allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut outs = Vec::new();
        if need_text {
            outs.push(TEXT_EMBEDS);
        }
        if need_image {
            outs.push(IMAGE_EMBEDS);
        }
        for o in &outs {
            let Some(sig) = outputs.iter().find(|s| s.name == *o) else {
                return Err(fail(format!(
                    "has outputs {}, but the pre-filter needs {} (the projected, \
                     comparable embeddings of a CLIP export)",
                    names(&outputs),
                    outs.iter()
                        .map(|a| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )));
            };
            if !matches!(sig.dtype, Some(Dtype::F32 | Dtype::F16)) || sig.shape.len() != 2 {
                return Err(fail(format!(
                    "output `{o}` is {} of rank {}; expected float32 or float16 [batch, dim]",
                    sig.dtype
                        .map(|d| d.as_str())
                        .unwrap_or("an unsupported type"),
                    sig.shape.len()
                )));
            }
        }
        let text = if need_text {
            let ids = inputs
                .iter()
                .find(|s| s.name == INPUT_IDS)
                .expect("invariant: checked above");
            let ids_dtype = int_dtype(path, dir, ids)?;
            let mask = match inputs.iter().find(|s| s.name == ATTENTION_MASK) {
                Some(m) => Some(int_dtype(path, dir, m)?),
                None => None,
            };
            let fixed_len = usize::try_from(ids.shape[1]).ok().filter(|&n| n > 0);
            if let Some(n) = fixed_len {
                if !(2..=CONTEXT_LENGTH).contains(&n) {
                    return Err(fail(format!(
                        "fixes `{INPUT_IDS}` at {n} tokens; CLIP takes at most {CONTEXT_LENGTH}"
                    )));
                }
            }
            Some(TextSide {
                ids: ids_dtype,
                mask,
                fixed_len,
            })
        } else {
            None
        };
        let pixels = inputs.iter().any(|s| s.name == PIXEL_VALUES);
        if pixels {
            let sig = inputs
                .iter()
                .find(|s| s.name == PIXEL_VALUES)
                .expect("invariant: just found");
            if sig.dtype != Some(Dtype::F32) {
                return Err(fail(format!(
                    "input `{PIXEL_VALUES}` is {}; only float32 exports are supported (export \
                     without --fp16)",
                    sig.dtype
                        .map(|d| d.as_str())
                        .unwrap_or("an unsupported type")
                )));
            }
            let s = i64::from(bundle.image_size());
            let ok = sig.shape.len() == 4
                && matches!(sig.shape[1], -1 | 3)
                && (sig.shape[2] == -1 || sig.shape[2] == s)
                && (sig.shape[3] == -1 || sig.shape[3] == s);
            if !ok {
                return Err(fail(format!(
                    "input `{PIXEL_VALUES}` has shape {:?}, but `{PREPROCESSOR_CONFIG}` says \
                     [batch, 3, {s}, {s}]",
                    sig.shape
                )));
            }
        }
        let symbol = |name: &str| session.input_symbols(name).into_iter().next();
        let tied = need_text
            && need_image
            && symbol(INPUT_IDS)
                .zip(symbol(PIXEL_VALUES))
                .is_some_and(|(t, i)| !t.is_empty() && t == i);
        Ok(Graph {
            session,
            text,
            pixels,
            text_out: need_text,
            image_out: need_image,
            tied,
        })
    }

    /// Run with `pixels` (`[1, 3, S, S]`, when the graph takes them) and a
    /// batch of token rows; returns (image embedding, text embeddings),
    /// each present when the graph outputs it.
    fn run(
        &mut self,
        dir: &Path,
        side: u32,
        pixels: Option<&[f32]>,
        ids: &[Vec<i64>],
        end_id: i64,
    ) -> Result<RunOutput> {
        let path = self.session.path().to_path_buf();
        let ctx = |what: &str| format!("{what} for the CLIP graph {}", path.display());
        let mut inputs: Vec<(
            std::borrow::Cow<'static, str>,
            ort::session::SessionInputValue<'_>,
        )> = Vec::new();
        if self.pixels {
            let px = pixels
                .ok_or_else(|| Error::Invalid("the CLIP image tower needs an image".into()))?;
            let s = side as usize;
            let copies = if self.tied { ids.len().max(1) } else { 1 };
            let v: DynValue = Tensor::from_array(([copies, 3, s, s], px.repeat(copies)))
                .map_err(|e| Error::ort(ctx("building pixel_values"), e))?
                .into_dyn();
            inputs.push((PIXEL_VALUES.into(), v.into()));
        }
        if let Some(text) = &self.text {
            let (flat_ids, flat_mask, len) = pack(ids, end_id, text.fixed_len)?;
            let shape = [ids.len(), len];
            inputs.push((
                INPUT_IDS.into(),
                int_value(text.ids, shape, flat_ids, &ctx)?.into(),
            ));
            if let Some(m) = text.mask {
                inputs.push((
                    ATTENTION_MASK.into(),
                    int_value(m, shape, flat_mask, &ctx)?.into(),
                ));
            }
        }
        let mut outputs = self.session.session_mut().run(inputs).map_err(|e| {
            Error::ort(ctx(&format!("running a batch of {} prompts", ids.len())), e)
        })?;
        let mut read = |name: &str, rows: usize| -> Result<Vec<Vec<f32>>> {
            let value = outputs.remove(name).ok_or_else(|| {
                Error::bundle(dir, format!("CLIP output `{name}` missing at run time"))
            })?;
            let (shape, data) = read_float(value).map_err(|e| Error::ort(ctx(name), e))?;
            if shape.len() != 2 || shape[0] != rows || shape[1] == 0 {
                return Err(Error::DimensionMismatch {
                    what: format!("CLIP output `{name}`"),
                    expected: format!("[{rows}, D]"),
                    found: format!("{shape:?}"),
                });
            }
            if data.iter().any(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!(
                    "the CLIP graph {} produced non-finite `{name}`",
                    path.display()
                )));
            }
            Ok(data.chunks(shape[1]).map(|c| c.to_vec()).collect())
        };
        // a tied graph returns one (identical) image row per copy
        let image_rows = if self.tied { ids.len().max(1) } else { 1 };
        let image = if self.image_out {
            read(IMAGE_EMBEDS, image_rows)?.into_iter().next()
        } else {
            None
        };
        let texts = if self.text_out {
            read(TEXT_EMBEDS, ids.len())?
        } else {
            Vec::new()
        };
        Ok((image, texts))
    }
}

/// Token rows → (ids, mask, length): each row cut after its end token and
/// padded with its own pad id to the longest row (or `fixed`).
fn pack(
    rows: &[Vec<i64>],
    end_id: i64,
    fixed: Option<usize>,
) -> Result<(Vec<i64>, Vec<i64>, usize)> {
    let real: Vec<usize> = rows
        .iter()
        .map(|r| {
            r.iter()
                .skip(1)
                .position(|&t| t == end_id)
                .map_or(r.len(), |p| p + 2)
        })
        .collect();
    let len = fixed.unwrap_or_else(|| real.iter().copied().max().unwrap_or(2));
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut mask = Vec::with_capacity(rows.len() * len);
    for (r, &n) in rows.iter().zip(&real) {
        if n > len || r.len() < len {
            return Err(Error::Invalid(format!(
                "a prompt of {n} tokens does not fit the CLIP graph's {len}"
            )));
        }
        ids.extend_from_slice(&r[..len]);
        mask.extend((0..len).map(|i| i64::from(i < n)));
    }
    Ok((ids, mask, len))
}

fn int_value(
    dtype: Dtype,
    shape: [usize; 2],
    v: Vec<i64>,
    ctx: &dyn Fn(&str) -> String,
) -> Result<DynValue> {
    Ok(match dtype {
        Dtype::I32 => {
            let narrow = v
                .iter()
                .map(|&x| i32::try_from(x))
                .collect::<std::result::Result<Vec<i32>, _>>()
                .map_err(|_| Error::Invalid("a token id does not fit in int32".into()))?;
            Tensor::from_array((shape, narrow))
                .map_err(|e| Error::ort(ctx("building a text input"), e))?
                .into_dyn()
        }
        _ => Tensor::from_array((shape, v))
            .map_err(|e| Error::ort(ctx("building a text input"), e))?
            .into_dyn(),
    })
}

/// The graphs of a bundle's layout.
enum Graphs {
    Joint(Graph),
    Split { text: Graph, vision: Graph },
}

/// A loaded CLIP bundle: its graphs, checked, ready to embed images and
/// prompts.
///
/// Embeddings are returned as the graph gives them (not normalised); every
/// one, image or text, must have the width of the first.
pub struct ClipModel {
    bundle: ClipBundle,
    graphs: Graphs,
    /// The embedding width, once one embedding has been seen.
    dim: Option<usize>,
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("bundle", &self.bundle)
            .field("dim", &self.dim)
            .finish()
    }
}

impl ClipModel {
    /// Load the graphs of a checked bundle and check their inputs and
    /// outputs (names, types, the image size) before anything runs.
    pub fn load(runtime: &Runtime, bundle: ClipBundle) -> Result<ClipModel> {
        let graphs = match bundle.layout().clone() {
            Layout::Joint(p) => Graphs::Joint(Graph::load(runtime, &bundle, &p, true, true)?),
            Layout::Split { text, vision } => Graphs::Split {
                text: Graph::load(runtime, &bundle, &text, true, false)?,
                vision: Graph::load(runtime, &bundle, &vision, false, true)?,
            },
        };
        Ok(ClipModel {
            bundle,
            graphs,
            dim: None,
        })
    }

    /// [`ClipBundle::open`] then [`load`](Self::load).
    pub fn open(runtime: &Runtime, dir: &Path) -> Result<ClipModel> {
        Self::load(runtime, ClipBundle::open(dir)?)
    }

    /// The bundle.
    pub fn bundle(&self) -> &ClipBundle {
        &self.bundle
    }

    /// Whether the graph ties the text and image batch sizes (an older
    /// optimum export): then every prompt costs an image pass too, and a
    /// re-export with a current optimum is much faster.
    pub fn ties_batches(&self) -> bool {
        matches!(&self.graphs, Graphs::Joint(g) if g.tied)
    }

    /// The embedding of the image `pixels` ([`ClipBundle::pixels`]), in one
    /// run. With the joint graph the token rows `ride_along`
    /// ([`ClipTokenizer::encode`](crate::tokenizer::ClipTokenizer::encode))
    /// go into the same run and their embeddings are returned too, in order
    /// (with none, the empty prompt fills the text side and is dropped).
    /// With the split layout the image tower runs alone and `ride_along` is
    /// not embedded: no text embeddings are returned.
    pub fn embed_image(
        &mut self,
        pixels: &[f32],
        ride_along: &[Vec<i64>],
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let dir = self.bundle.root().to_path_buf();
        let side = self.bundle.image_size();
        let end = self.bundle.tokenizer().end_id();
        let (image, texts) = match &mut self.graphs {
            Graphs::Joint(g) => {
                if ride_along.is_empty() {
                    let empty = [self.bundle.tokenizer().encode("")];
                    (g.run(&dir, side, Some(pixels), &empty, end)?.0, Vec::new())
                } else {
                    g.run(&dir, side, Some(pixels), ride_along, end)?
                }
            }
            Graphs::Split { vision, .. } => (
                vision.run(&dir, side, Some(pixels), &[], end)?.0,
                Vec::new(),
            ),
        };
        let texts = texts
            .into_iter()
            .map(|e| check_dim(&mut self.dim, e, &dir))
            .collect::<Result<Vec<_>>>()?;
        let image = image.ok_or_else(|| {
            Error::bundle(&dir, "the CLIP image tower returned no `image_embeds`")
        })?;
        Ok((check_dim(&mut self.dim, image, &dir)?, texts))
    }

    /// The embeddings of the token rows `ids`
    /// ([`ClipTokenizer::encode`](crate::tokenizer::ClipTokenizer::encode)),
    /// in order, in one run of the text tower; the joint graph also gets
    /// the image `pixels`.
    pub fn embed_texts(&mut self, ids: &[Vec<i64>], pixels: &[f32]) -> Result<Vec<Vec<f32>>> {
        let dir = self.bundle.root().to_path_buf();
        let side = self.bundle.image_size();
        let end = self.bundle.tokenizer().end_id();
        let (_, texts) = match &mut self.graphs {
            Graphs::Joint(g) => g.run(&dir, side, Some(pixels), ids, end)?,
            Graphs::Split { text, .. } => text.run(&dir, side, None, ids, end)?,
        };
        texts
            .into_iter()
            .map(|e| check_dim(&mut self.dim, e, &dir))
            .collect()
    }
}

/// Every embedding must have the width of the first.
fn check_dim(dim: &mut Option<usize>, v: Vec<f32>, dir: &Path) -> Result<Vec<f32>> {
    match *dim {
        Some(d) if d != v.len() => Err(Error::bundle(
            dir,
            format!(
                "the CLIP towers disagree on the embedding width ({d} and {}): image and text \
                 embeddings cannot be compared",
                v.len()
            ),
        )),
        _ => {
            *dim = Some(v.len());
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::tests::{copy_fixture, fixture, runtime};
    use crate::clip::{JOINT_MODEL, TEXT_MODEL, VISION_MODEL};

    #[test]
    fn rows_are_packed_to_the_longest_prompt() {
        // start 10, end 11 (also the pad), 77 long as the tokenizer returns
        let row = |body: &[i64]| {
            let mut r = vec![10];
            r.extend_from_slice(body);
            r.push(11);
            r.resize(CONTEXT_LENGTH, 11);
            r
        };
        let (ids, mask, len) = pack(&[row(&[1, 2]), row(&[3])], 11, None).unwrap();
        assert_eq!(len, 4);
        assert_eq!(ids, vec![10, 1, 2, 11, 10, 3, 11, 11]);
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 1, 1, 0]);
        let (_, mask, len) = pack(&[row(&[3])], 11, Some(CONTEXT_LENGTH)).unwrap();
        assert_eq!(len, CONTEXT_LENGTH);
        assert_eq!(mask.iter().sum::<i64>(), 3);
    }

    #[test]
    fn a_graph_without_clip_outputs_is_refused() {
        let Some(rt) = runtime() else { return };
        let tmp = copy_fixture();
        std::fs::copy(
            fixture().join("variants/wrong_outputs.onnx"),
            tmp.path().join("model.onnx"),
        )
        .unwrap();
        let err = ClipModel::open(&rt, tmp.path()).unwrap_err().report();
        assert!(
            err.contains("`text_features`")
                && err.contains("needs `text_embeds` and `image_embeds`")
                && err.contains("optimum-cli"),
            "{err}"
        );
        // an encoder graph is not a CLIP export
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
                .join("tests/fixtures/models/tiny-encoder/model.onnx"),
            tmp.path().join("model.onnx"),
        )
        .unwrap();
        let err = ClipModel::open(&rt, tmp.path()).unwrap_err().report();
        assert!(err.contains("takes `input_ids`"), "{err}");
    }

    /// What `ClipTokenizer::encode` gives the prompts.
    fn rows(model: &ClipModel, prompts: &[&str]) -> Vec<Vec<i64>> {
        prompts
            .iter()
            .map(|p| model.bundle().tokenizer().encode(p))
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn every_layout_gives_the_fixture_embeddings() {
        let Some(rt) = runtime() else { return };
        let tied = copy_fixture();
        std::fs::copy(
            fixture().join("variants/tied_batch.onnx"),
            tied.path().join(JOINT_MODEL),
        )
        .unwrap();
        let split = copy_fixture();
        std::fs::remove_file(split.path().join(JOINT_MODEL)).unwrap();
        for f in [TEXT_MODEL, VISION_MODEL] {
            std::fs::copy(fixture().join("variants").join(f), split.path().join(f)).unwrap();
        }
        // the fixture's text tower sums a colour per colour word
        let prompts = ["a red", "a green and a blue", "a blue"];
        let want: [&[f32]; 3] = [&[2.0, -1.0, -1.0], &[-2.0, 1.0, 1.0], &[-1.0, -1.0, 2.0]];
        let red = image::RgbImage::from_pixel(40, 30, image::Rgb([230, 40, 40]));
        let mut first_image: Option<Vec<f32>> = None;
        for (what, dir) in [
            ("joint", fixture()),
            ("tied", tied.path().to_path_buf()),
            ("split", split.path().to_path_buf()),
        ] {
            let mut model = ClipModel::open(&rt, &dir).unwrap();
            assert_eq!(model.ties_batches(), what == "tied", "{what}");
            let pixels = model.bundle().pixels(&red);
            let ids = rows(&model, &prompts);
            let texts = model.embed_texts(&ids, &pixels).unwrap();
            assert_eq!(texts.len(), 3, "{what}");
            for (got, want) in texts.iter().zip(want) {
                assert!(close(got, want), "{what}: {got:?}, not {want:?}");
            }
            // the image tower: the mean colour less its grey, (2, -1, -1)·k
            let (image, ride_along) = model.embed_image(&pixels, &ids).unwrap();
            let k = image[0] / 2.0;
            assert!(
                k > 0.0 && close(&image, &[2.0 * k, -k, -k]),
                "{what}: {image:?}"
            );
            if what == "split" {
                assert!(ride_along.is_empty(), "the image tower runs alone");
            } else {
                assert_eq!(ride_along.len(), 3, "{what}");
                for (r, t) in ride_along.iter().zip(&texts) {
                    assert!(close(r, t), "{what}: {r:?} {t:?}");
                }
            }
            let (alone, none) = model.embed_image(&pixels, &[]).unwrap();
            assert!(none.is_empty() && close(&alone, &image), "{what}");
            match &first_image {
                None => first_image = Some(image),
                Some(w) => assert!(close(&image, w), "{what}: {image:?} {w:?}"),
            }
        }
    }
}
