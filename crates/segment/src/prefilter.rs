//! The CLIP category pre-filter: before segmenting, CLIP guesses which candidate classes are in the image, and only those are matched.
//!
//! OVDiff's reference (`utils/clip_class.py`, `CLIPClassifier`) runs in two
//! stages, reproduced here:
//!
//! 1. **Top-k.** The image is resized to the model's square input (224×224
//!    for ViT-B/16; the whole image, squashed, as the reference's
//!    `T.Resize((224, 224))` does, not a centre crop), normalised with the
//!    CLIP mean and std, and embedded; each candidate class `c` is embedded
//!    as the text `"a {c}"`. Both are L2-normalised, and the `k` classes
//!    with the highest cosine are kept ([`top_k`]; `k` is clamped to the
//!    number of candidates; [`DEFAULT_TOPK`] unless given).
//! 2. **Powerset.** Every non-empty subset of those `k` classes becomes one
//!    prompt, its classes' `"a {c}"` joined with `" and "` in stage-1 rank
//!    order (`"a cat and a dog"`), in the reference's order ([`powerset`]:
//!    by size, then lexicographically). The subset whose prompt has the
//!    highest cosine with the image (the first one on a tie) is the
//!    selection.
//!
//! The image is then segmented with only the selected classes as
//! candidates (the background prototypes of the selected classes stand for
//! background, as always). Without a CLIP bundle there is no pre-filter.
//!
//! Stage 2 embeds `2^k − 1` prompts (1023 for the reference's `k = 10`,
//! which is why the default is smaller: [`DEFAULT_TOPK`]).
//! Text embeddings depend only on the prompt, so they are cached per run
//! ([`TEXT_CACHE_MAX`] prompts), and the prompts that miss the cache are
//! embedded in batches of [`TEXT_BATCH`].
//!
//! ## The bundle
//!
//! [`ClipBundle::open`] checks a folder before anything runs. It accepts
//! the layout `optimum-cli export onnx --model openai/clip-vit-base-patch16
//! clip/` writes:
//!
//! ```text
//! model.onnx                 inputs  input_ids [text_batch_size, sequence_length] int64,
//!                                    pixel_values [image_batch_size, 3, H, W] float32,
//!                                    attention_mask [text_batch_size, sequence_length] int64
//!                            outputs logits_per_image, logits_per_text,
//!                                    text_embeds [text_batch_size, D], image_embeds [image_batch_size, D]
//! preprocessor_config.json   crop_size / size (the square side), image_mean, image_std
//! vocab.json + merges.txt    CLIP's BPE (or tokenizer.json)
//! special_tokens_map.json, tokenizer_config.json   the pad token (optional)
//! config.json                not read
//! ```
//!
//! Also accepted, since it is cheap: two separate towers (the split layout
//! of CLIP ONNX ports made for browsers), `text_model.onnx` (`input_ids`
//! [+ `attention_mask`] → `text_embeds`) and `vision_model.onnx`
//! (`pixel_values` → `image_embeds`), in the folder or in its `onnx/`
//! subfolder.
//!
//! With the single `model.onnx`, every run needs both an image and some
//! text. The image and the class prompts therefore share the first run;
//! later batches of prompts are run with the same image again (a ViT-B/16
//! image pass costs about as much as 30–40 short prompts, so with batches
//! of [`TEXT_BATCH`] this adds about 15% to stage 2; an image batch of 0,
//! which would avoid it, is refused by the vision tower's reshapes). With
//! the split layout each tower runs alone. Older optimum versions name the
//! text and image batch dimensions alike (`batch_size`), and ONNX Runtime
//! then insists that they are equal: for such a graph the image is repeated
//! once per prompt ([`Prefilter::ties_batches`]), which is correct but
//! slow.
//!
//! The text side feeds `input_ids` (start token, at most 75 BPE tokens, end
//! token) padded with the tokenizer's pad token to the longest prompt of
//! the batch (to the graph's length when it fixes one), and `attention_mask`
//! (1 up to the end token) when the graph takes it. CLIP's causal text
//! transformer pools at the end token, so the padding length does not
//! change an embedding. A prompt longer than 75 tokens is truncated, as
//! Hugging Face's tokenizer does (the reference's `clip.tokenize` would
//! refuse it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use image::RgbImage;
use ort::value::{DynValue, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use ovdiff_models::features::preprocess;
use ovdiff_models::fingerprint::fingerprint_dir;
use ovdiff_models::runtime::manifest::Dtype;
use ovdiff_models::runtime::session::Signature;
use ovdiff_models::runtime::tensor::read_float;
use ovdiff_models::runtime::{ModelSession, Runtime};
use ovdiff_models::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};

/// The default `k`: classes kept by stage 1, whose subsets stage 2
/// compares. The reference uses [`REFERENCE_TOPK`]; its 1023 prompts per
/// image cost 8–35 s on two CPU cores against about 2 s for `k = 6`
/// (63 prompts), measured with a ViT-B/16-sized export (docs/prefilter.md).
pub const DEFAULT_TOPK: usize = 6;

/// OVDiff's `k` (`CLIPClassifier(topk=10)`): `--prefilter-topk 10`.
pub const REFERENCE_TOPK: usize = 10;

/// The largest `k` accepted (`2^16 − 1` prompts per image is already far
/// beyond reasonable).
pub const MAX_TOPK: usize = 16;

/// Prompts per text-tower run (see docs/prefilter.md for the measurement).
pub const TEXT_BATCH: usize = 256;

/// Text embeddings cached per run before the cache is emptied (32 MiB at
/// ViT-B/16's 512 dimensions).
pub const TEXT_CACHE_MAX: usize = 16_384;

/// What joins the class prompts of a subset.
pub const CONNECTOR: &str = " and ";

/// The CLIP normalisation (mean) the reference uses.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];

/// The CLIP normalisation (standard deviation) the reference uses.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The square side when `preprocessor_config.json` does not say (ViT-B/16).
pub const DEFAULT_IMAGE_SIZE: u32 = 224;

/// How to make a bundle, for error messages.
pub const EXPORT_HINT: &str = "a CLIP bundle is the folder `optimum-cli export onnx --model \
                               openai/clip-vit-base-patch16 clip/` writes (model.onnx, \
                               preprocessor_config.json, vocab.json, merges.txt); see \
                               docs/prefilter.md";

/// The joint graph of the optimum layout.
pub const JOINT_MODEL: &str = "model.onnx";
/// The text tower of the split layout.
pub const TEXT_MODEL: &str = "text_model.onnx";
/// The image tower of the split layout.
pub const VISION_MODEL: &str = "vision_model.onnx";
/// The image preprocessing config.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

const INPUT_IDS: &str = "input_ids";
const ATTENTION_MASK: &str = "attention_mask";
const PIXEL_VALUES: &str = "pixel_values";
const TEXT_EMBEDS: &str = "text_embeds";
const IMAGE_EMBEDS: &str = "image_embeds";

/// A class's stage-1 prompt.
pub fn class_prompt(name: &str) -> String {
    format!("a {name}")
}

/// A subset's stage-2 prompt: its class prompts joined with [`CONNECTOR`].
pub fn subset_prompt<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| class_prompt(n.as_ref()))
        .collect::<Vec<_>>()
        .join(CONNECTOR)
}

/// Indices of the `k` highest scores, best first; equal scores keep index
/// order. `k` is clamped to `scores.len()`.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Every non-empty subset of `0..n`, as sorted position lists, in the
/// reference's order: by size, then lexicographically (Python's
/// `combinations(range(n), r)` for r = 1..n). `2^n − 1` subsets.
pub fn powerset(n: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity((1usize << n).saturating_sub(1));
    for r in 1..=n {
        let mut c: Vec<usize> = (0..r).collect();
        loop {
            out.push(c.clone());
            // the rightmost position that can still move right
            let Some(i) = (0..r).rev().find(|&i| c[i] < n - r + i) else {
                break;
            };
            c[i] += 1;
            for j in i + 1..r {
                c[j] = c[j - 1] + 1;
            }
        }
    }
    out
}

/// `v` scaled to unit length (a zero vector stays zero: every cosine with
/// it is 0).
pub fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) / n) as f32);
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One class kept by stage 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    /// Its index among the candidates.
    pub index: usize,
    /// The class name.
    pub class: String,
    /// Cosine of `"a {class}"` with the image.
    pub score: f32,
}

/// What the pre-filter chose for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The selected candidates (indices), in stage-1 rank order.
    pub kept: Vec<usize>,
    /// Their names, in the same order.
    pub classes: Vec<String>,
    /// Stage 1: the top-k classes, best first, with their cosines.
    pub stage1: Vec<Ranked>,
    /// Stage 2's winning prompt.
    pub prompt: String,
    /// Its cosine with the image.
    pub score: f32,
    /// Prompts compared in stage 2 (`2^k − 1`).
    pub prompts: usize,
}

/// Embeds stage-2 prompts: L2-normalised embeddings, in order.
pub type EmbedPrompts<'a> = dyn FnMut(&[String]) -> Result<Vec<Vec<f32>>> + 'a;

/// Both stages on embeddings, without a model: `image` and `classes` are
/// L2-normalised embeddings (`classes[i]` of `"a {names[i]}"`); `embed`
/// returns the L2-normalised embeddings of stage-2 prompts, in order.
pub fn select_with(
    image: &[f32],
    classes: &[Vec<f32>],
    names: &[String],
    k: usize,
    embed: &mut EmbedPrompts<'_>,
) -> Result<Selection> {
    if names.is_empty() || classes.len() != names.len() {
        return Err(Error::Invalid(format!(
            "the pre-filter needs one embedding per candidate class ({} names, {} embeddings)",
            names.len(),
            classes.len()
        )));
    }
    if k == 0 {
        return Err(Error::Invalid("--prefilter-topk must be at least 1".into()));
    }
    let k = k.min(names.len()).min(MAX_TOPK);
    let scores: Vec<f32> = classes.iter().map(|c| dot(image, c)).collect();
    let top = top_k(&scores, k);
    let subsets = powerset(top.len());
    let prompts: Vec<String> = subsets
        .iter()
        .map(|s| subset_prompt(&s.iter().map(|&p| &names[top[p]]).collect::<Vec<_>>()))
        .collect();
    let embs = embed(&prompts)?;
    if embs.len() != prompts.len() {
        return Err(Error::Invalid(format!(
            "{} prompt embeddings for {} prompts",
            embs.len(),
            prompts.len()
        )));
    }
    let mut best = 0;
    let mut best_score = f32::NEG_INFINITY;
    for (i, e) in embs.iter().enumerate() {
        let s = dot(image, e);
        if s > best_score {
            best = i;
            best_score = s;
        }
    }
    let kept: Vec<usize> = subsets[best].iter().map(|&p| top[p]).collect();
    Ok(Selection {
        classes: kept.iter().map(|&i| names[i].clone()).collect(),
        kept,
        stage1: top
            .iter()
            .map(|&i| Ranked {
                index: i,
                class: names[i].clone(),
                score: scores[i],
            })
            .collect(),
        prompt: prompts[best].clone(),
        score: best_score,
        prompts: prompts.len(),
    })
}

/// How the bundle's graphs are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One `model.onnx` with both towers (what optimum writes).
    Joint(PathBuf),
    /// Two graphs: the text tower and the image tower.
    Split {
        /// `text_model.onnx`.
        text: PathBuf,
        /// `vision_model.onnx`.
        vision: PathBuf,
    },
}

/// `preprocessor_config.json` (a transformers `CLIPImageProcessor`): the
/// fields the pre-filter reads.
#[derive(Debug, Clone, Deserialize)]
struct PreprocessorConfig {
    #[serde(default)]
    crop_size: Option<SizeField>,
    #[serde(default)]
    size: Option<SizeField>,
    #[serde(default)]
    image_mean: Option<Vec<f32>>,
    #[serde(default)]
    image_std: Option<Vec<f32>>,
}

/// `224`, `{"height": 224, "width": 224}` or `{"shortest_edge": 224}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Int(u32),
    Map {
        #[serde(default)]
        height: Option<u32>,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        shortest_edge: Option<u32>,
    },
}

impl SizeField {
    fn side(&self) -> Option<u32> {
        match self {
            SizeField::Int(n) => Some(*n),
            SizeField::Map {
                height,
                width,
                shortest_edge,
            } => match (height, width) {
                (Some(h), Some(w)) if h == w => Some(*h),
                (Some(_), Some(_)) => None,
                _ => *shortest_edge,
            },
        }
    }
}

/// A checked CLIP folder: files, preprocessing and tokenizer, before any
/// graph is loaded.
#[derive(Debug)]
pub struct ClipBundle {
    root: PathBuf,
    layout: Layout,
    tokenizer: ClipTokenizer,
    image_size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    fingerprint: OnceLock<String>,
}

impl ClipBundle {
    /// Check the folder (see the module docs): the graphs of one of the
    /// layouts are there, `preprocessor_config.json` parses into a square
    /// size and three-channel mean and std, the tokenizer loads. Reads
    /// only small files.
    pub fn open(dir: &Path) -> Result<ClipBundle> {
        let fail = |problem: String| Error::bundle(dir, problem);
        if !dir.is_dir() {
            return Err(fail(format!(
                "the CLIP bundle folder does not exist; {EXPORT_HINT}"
            )));
        }
        let layout = find_layout(dir)?;
        let pre_path = dir.join(PREPROCESSOR_CONFIG);
        if !pre_path.is_file() {
            let extra = if dir.join("manifest.toml").is_file() {
                "; this folder has a manifest.toml: it looks like an encoder bundle, not CLIP"
            } else {
                ""
            };
            return Err(fail(format!(
                "`{PREPROCESSOR_CONFIG}` is missing (it gives the image size, mean and \
                 std){extra}; {EXPORT_HINT}"
            )));
        }
        let bytes = std::fs::read(&pre_path).map_err(|e| Error::io("reading", &pre_path, e))?;
        let pre: PreprocessorConfig = serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "`{PREPROCESSOR_CONFIG}` is not a valid config: {e}"
            ))
        })?;
        let image_size = match pre.crop_size.as_ref().or(pre.size.as_ref()) {
            None => DEFAULT_IMAGE_SIZE,
            Some(s) => s.side().filter(|&n| n > 0).ok_or_else(|| {
                fail(format!(
                    "`{PREPROCESSOR_CONFIG}` has a crop_size/size that is not one square side \
                     (e.g. 224 or {{\"height\": 224, \"width\": 224}})"
                ))
            })?,
        };
        let three = |v: Option<Vec<f32>>, what: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v {
                None => Ok(default),
                Some(v) => <[f32; 3]>::try_from(v.as_slice())
                    .ok()
                    .filter(|a| a.iter().all(|x| x.is_finite()))
                    .ok_or_else(|| {
                        fail(format!(
                            "`{PREPROCESSOR_CONFIG}` has {what} {v:?}; three finite numbers \
                             (R, G, B) are needed"
                        ))
                    }),
            }
        };
        let mean = three(pre.image_mean, "image_mean", CLIP_MEAN)?;
        let std = three(pre.image_std, "image_std", CLIP_STD)?;
        if std.iter().any(|s| *s <= 0.0) {
            return Err(fail(format!(
                "`{PREPROCESSOR_CONFIG}` has image_std {std:?}; every value must be positive"
            )));
        }
        let tokenizer = ClipTokenizer::from_dir(dir).map_err(|e| {
            fail(format!(
                "its tokenizer does not load ({}); {EXPORT_HINT}",
                e.report()
            ))
        })?;
        Ok(ClipBundle {
            root: dir.to_path_buf(),
            layout,
            tokenizer,
            image_size,
            mean,
            std,
            fingerprint: OnceLock::new(),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which graphs it has.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The square side images are resized to.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// The normalisation mean and std.
    pub fn normalisation(&self) -> ([f32; 3], [f32; 3]) {
        (self.mean, self.std)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// sha256 over every file's relative path and sha256 (as for a
    /// diffusion export); hashes every byte once, then is cached.
    pub fn fingerprint(&self) -> Result<&str> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f);
        }
        let f = fingerprint_dir(&self.root)?;
        Ok(self.fingerprint.get_or_init(|| f))
    }

    /// The image as the image tower takes it: `[1, 3, S, S]`, resized
    /// (squashed) to the square side and normalised.
    pub fn pixels(&self, img: &RgbImage) -> Vec<f32> {
        let s = self.image_size;
        let small = preprocess::resize(img, s, s);
        let n = (s * s) as usize;
        let mut out = vec![0f32; 3 * n];
        for (i, p) in small.pixels().enumerate() {
            for c in 0..3 {
                out[c * n + i] = (f32::from(p.0[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

fn find_layout(dir: &Path) -> Result<Layout> {
    let joint = dir.join(JOINT_MODEL);
    if joint.is_file() {
        return Ok(Layout::Joint(joint));
    }
    for sub in [dir.to_path_buf(), dir.join("onnx")] {
        let (text, vision) = (sub.join(TEXT_MODEL), sub.join(VISION_MODEL));
        match (text.is_file(), vision.is_file()) {
            (true, true) => return Ok(Layout::Split { text, vision }),
            (true, false) | (false, true) => {
                let missing = if text.is_file() { &vision } else { &text };
                return Err(Error::bundle(
                    dir,
                    format!(
                        "`{}` is missing: the split layout needs both `{TEXT_MODEL}` and \
                         `{VISION_MODEL}`; {EXPORT_HINT}",
                        missing.strip_prefix(dir).unwrap_or(missing).display()
                    ),
                ));
            }
            (false, false) => {}
        }
    }
    let extra = if dir.join("manifest.toml").is_file() {
        " (this folder has a manifest.toml: it looks like an encoder bundle, not CLIP)"
    } else if dir.join("model.safetensors").is_file() || dir.join("pytorch_model.bin").is_file() {
        " (this looks like a PyTorch checkpoint; it has to be exported to ONNX)"
    } else {
        ""
    };
    Err(Error::bundle(
        dir,
        format!(
            "`{JOINT_MODEL}` is missing (nor are there `{TEXT_MODEL}` and `{VISION_MODEL}`){extra}; \
             {EXPORT_HINT}"
        ),
    ))
}

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

enum Graphs {
    Joint(Graph),
    Split { text: Graph, vision: Graph },
}

/// Time and work of one [`Prefilter::select`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrefilterStats {
    /// Graph runs.
    pub runs: usize,
    /// Prompts embedded by the text tower (the others came from the cache).
    pub prompts_embedded: usize,
    /// Prompts answered from the cache.
    pub prompts_cached: usize,
    /// Wall time, in milliseconds.
    pub ms: f64,
}

/// A loaded CLIP bundle, ready to select classes.
pub struct Prefilter {
    bundle: ClipBundle,
    graphs: Graphs,
    cache: HashMap<String, Vec<f32>>,
    dim: Option<usize>,
    stats: PrefilterStats,
    text_batch: usize,
}

impl std::fmt::Debug for Prefilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefilter")
            .field("bundle", &self.bundle)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Prefilter {
    /// Load the graphs of a checked bundle and check their inputs and
    /// outputs (names, types, the image size) before anything runs.
    pub fn load(runtime: &Runtime, bundle: ClipBundle) -> Result<Prefilter> {
        let graphs = match bundle.layout().clone() {
            Layout::Joint(p) => Graphs::Joint(Graph::load(runtime, &bundle, &p, true, true)?),
            Layout::Split { text, vision } => Graphs::Split {
                text: Graph::load(runtime, &bundle, &text, true, false)?,
                vision: Graph::load(runtime, &bundle, &vision, false, true)?,
            },
        };
        Ok(Prefilter {
            bundle,
            graphs,
            cache: HashMap::new(),
            dim: None,
            stats: PrefilterStats::default(),
            text_batch: TEXT_BATCH,
        })
    }

    /// [`ClipBundle::open`] then [`load`](Self::load).
    pub fn open(runtime: &Runtime, dir: &Path) -> Result<Prefilter> {
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

    /// Prompts per text-tower run ([`TEXT_BATCH`] unless changed; for
    /// benchmarks).
    pub fn set_text_batch(&mut self, n: usize) {
        self.text_batch = n.max(1);
    }

    /// Forget every cached text embedding.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Select the classes of `names` that CLIP sees in `img` (see the module
    /// docs); `k` is the stage-1 top-k. Also returns what it cost.
    pub fn select(
        &mut self,
        img: &RgbImage,
        names: &[String],
        k: usize,
    ) -> Result<(Selection, PrefilterStats)> {
        let start = Instant::now();
        self.stats = PrefilterStats::default();
        if self.cache.len() > TEXT_CACHE_MAX {
            self.cache.clear();
        }
        let pixels = self.bundle.pixels(img);
        let class_prompts: Vec<String> = names.iter().map(|n| class_prompt(n)).collect();
        let image = self.image_embedding(&pixels, &class_prompts)?;
        let classes = self.embed_texts(&class_prompts, &pixels)?;
        let sel = select_with(&image, &classes, names, k, &mut |p| {
            self.embed_texts(p, &pixels)
        })?;
        self.stats.ms = elapsed_ms(start.elapsed());
        Ok((sel, self.stats.clone()))
    }

    /// The image's embedding. With the joint graph, the first batch of
    /// `warm` prompts that are not cached rides along (cached for
    /// [`embed_texts`](Self::embed_texts)); with none, the empty prompt.
    fn image_embedding(&mut self, pixels: &[f32], warm: &[String]) -> Result<Vec<f32>> {
        let dir = self.bundle.root().to_path_buf();
        let side = self.bundle.image_size();
        let end = self.bundle.tokenizer().end_id();
        let mut misses: Vec<String> = Vec::new();
        for p in warm {
            if !self.cache.contains_key(p) && !misses.contains(p) && misses.len() < self.text_batch
            {
                misses.push(p.clone());
            }
        }
        self.stats.runs += 1;
        let image = match &mut self.graphs {
            Graphs::Joint(g) => {
                let rows: Vec<String> = if misses.is_empty() {
                    vec![String::new()]
                } else {
                    misses.clone()
                };
                let ids: Vec<Vec<i64>> = rows
                    .iter()
                    .map(|p| self.bundle.tokenizer.encode(p))
                    .collect();
                let (image, texts) = g.run(&dir, side, Some(pixels), &ids, end)?;
                if !misses.is_empty() {
                    self.stats.prompts_embedded += misses.len();
                    for (p, e) in misses.into_iter().zip(texts) {
                        let e = check_dim(&mut self.dim, e, &dir)?;
                        self.cache.insert(p, normalised(e));
                    }
                }
                image
            }
            Graphs::Split { vision, .. } => vision.run(&dir, side, Some(pixels), &[], end)?.0,
        };
        let image = image.ok_or_else(|| {
            Error::bundle(&dir, "the CLIP image tower returned no `image_embeds`")
        })?;
        Ok(normalised(check_dim(&mut self.dim, image, &dir)?))
    }

    /// L2-normalised embeddings of `prompts`, in order: cached ones from the
    /// cache, the others through the text tower, sorted by length, in
    /// batches of [`TEXT_BATCH`] (the joint graph also gets `pixels`).
    fn embed_texts(&mut self, prompts: &[String], pixels: &[f32]) -> Result<Vec<Vec<f32>>> {
        let dir = self.bundle.root().to_path_buf();
        let side = self.bundle.image_size();
        let end = self.bundle.tokenizer().end_id();
        let mut misses: Vec<(&String, Vec<i64>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in prompts {
            if !self.cache.contains_key(p) && seen.insert(p) {
                misses.push((p, self.bundle.tokenizer.encode(p)));
            }
        }
        self.stats.prompts_cached += prompts.len() - misses.len();
        // Batches of prompts of similar length pad little.
        misses.sort_by_key(|(_, ids)| ids.iter().skip(1).position(|&t| t == end));
        for chunk in misses.chunks(self.text_batch) {
            let ids: Vec<Vec<i64>> = chunk.iter().map(|(_, ids)| ids.clone()).collect();
            let (_, texts) = match &mut self.graphs {
                Graphs::Joint(g) => g.run(&dir, side, Some(pixels), &ids, end)?,
                Graphs::Split { text, .. } => text.run(&dir, side, None, &ids, end)?,
            };
            self.stats.runs += 1;
            self.stats.prompts_embedded += chunk.len();
            for ((p, _), e) in chunk.iter().zip(texts) {
                let e = check_dim(&mut self.dim, e, &dir)?;
                self.cache.insert((*p).clone(), normalised(e));
            }
        }
        Ok(prompts.iter().map(|p| self.cache[p].clone()).collect())
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

fn elapsed_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powerset_follows_the_reference_order() {
        assert_eq!(
            powerset(3),
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2],
                vec![0, 1, 2]
            ]
        );
        for n in 0..=10 {
            let p = powerset(n);
            assert_eq!(p.len(), (1 << n) - 1, "n = {n}");
            let mut masks: Vec<u32> = p
                .iter()
                .map(|s| s.iter().map(|&i| 1u32 << i).sum())
                .collect();
            masks.sort_unstable();
            masks.dedup();
            assert_eq!(masks.len(), (1 << n) - 1, "all distinct, n = {n}");
            assert!(p.windows(2).all(|w| w[0].len() <= w[1].len()), "by size");
        }
    }

    #[test]
    fn top_k_is_best_first_and_stable_on_ties() {
        assert_eq!(top_k(&[0.1, 0.5, 0.3, 0.5], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[0.1, 0.2], 10), vec![1, 0], "k clamped");
        assert!(top_k(&[], 3).is_empty());
    }

    #[test]
    fn prompts_join_class_prompts_with_and() {
        assert_eq!(class_prompt("cat"), "a cat");
        assert_eq!(
            subset_prompt(&["cat", "potted plant"]),
            "a cat and a potted plant"
        );
    }

    /// Embeddings in a "colour" space: a prompt's embedding is the sum of
    /// its colour words' axes.
    fn colour_embed(p: &str) -> Vec<f32> {
        let mut v = vec![0f32; 3];
        for (i, w) in ["red", "green", "blue"].iter().enumerate() {
            if p.split_whitespace().any(|t| t == *w) {
                v[i] += 1.0;
            }
        }
        normalised(v)
    }

    fn run(image: [f32; 3], names: &[&str], k: usize) -> (Selection, Vec<String>) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let classes: Vec<Vec<f32>> = names
            .iter()
            .map(|n| colour_embed(&class_prompt(n)))
            .collect();
        let mut asked = Vec::new();
        let sel = select_with(&normalised(image.to_vec()), &classes, &names, k, &mut |p| {
            asked.extend(p.iter().cloned());
            Ok(p.iter().map(|s| colour_embed(s)).collect())
        })
        .unwrap();
        (sel, asked)
    }

    #[test]
    fn stage_two_finds_the_best_subset() {
        // half red, half green: no single class explains it, the pair does
        let (sel, asked) = run([1.0, 1.0, 0.0], &["red", "green", "blue"], 10);
        assert_eq!(sel.classes, vec!["red", "green"]);
        assert_eq!(sel.kept, vec![0, 1]);
        assert_eq!(sel.prompt, "a red and a green");
        assert!((sel.score - 1.0).abs() < 1e-6);
        assert_eq!(sel.prompts, 7, "k clamped to 3 classes: 2^3 - 1 prompts");
        assert_eq!(asked.len(), 7);
        assert_eq!(sel.stage1.len(), 3);
        assert_eq!(sel.stage1[2].class, "blue");
        assert!(sel.stage1[2].score.abs() < 1e-6);

        // mostly red: the single class wins over every pair
        let (sel, _) = run([0.9, 0.1, 0.0], &["red", "green", "blue"], 10);
        assert_eq!(sel.classes, vec!["red"]);
        assert_eq!(sel.prompt, "a red");
    }

    #[test]
    fn stage_one_limits_stage_two() {
        // k = 1: only the best class is ever considered
        let (sel, asked) = run([1.0, 0.9, 0.0], &["blue", "green", "red"], 1);
        assert_eq!(sel.classes, vec!["red"]);
        assert_eq!(sel.kept, vec![2]);
        assert_eq!(asked, vec!["a red"]);
        // k = 2: the subsets of {red, green}, in rank order
        let (sel, asked) = run([1.0, 0.9, 0.0], &["blue", "green", "red"], 2);
        assert_eq!(asked, vec!["a red", "a green", "a red and a green"]);
        assert_eq!(sel.classes, vec!["red", "green"]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let names = vec!["red".to_string()];
        let mut embed = |p: &[String]| Ok(p.iter().map(|s| colour_embed(s)).collect());
        let err = select_with(
            &[1.0, 0.0, 0.0],
            &[vec![1.0, 0.0, 0.0]],
            &names,
            0,
            &mut embed,
        )
        .unwrap_err()
        .report();
        assert!(err.contains("at least 1"), "{err}");
        let err = select_with(&[1.0, 0.0, 0.0], &[], &names, 3, &mut embed)
            .unwrap_err()
            .report();
        assert!(err.contains("one embedding per candidate"), "{err}");
    }

    #[test]
    fn a_zero_embedding_stays_zero() {
        assert_eq!(normalised(vec![0.0, 0.0]), vec![0.0, 0.0]);
        let v = normalised(vec![3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

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

    // ---- the bundle, with the tiny fixture (tests/fixtures/clip-tiny) ----

    use ovdiff_core::Home;
    use ovdiff_models::runtime::RuntimeOptions;

    fn fixture() -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("tests/fixtures/clip-tiny")
    }

    /// The runtime, or `None` (with a message) when ONNX Runtime is not
    /// installed; under CI=true that fails the test.
    fn runtime() -> Option<Runtime> {
        match Runtime::init(
            &Home::from_env(),
            RuntimeOptions {
                threads: 1,
                ..RuntimeOptions::default()
            },
        ) {
            Ok(rt) => Some(rt),
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but ONNX Runtime is missing: {}",
                    e.report()
                );
                eprintln!("skipping: {}", e.report());
                None
            }
        }
    }

    /// A copy of the fixture's export files (not `variants/`) in a temp dir.
    fn copy_fixture() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(fixture()).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
            }
        }
        tmp
    }

    fn open_err(dir: &Path) -> String {
        ClipBundle::open(dir).unwrap_err().report()
    }

    #[test]
    fn the_fixture_opens_in_the_optimum_layout() {
        let b = ClipBundle::open(&fixture()).unwrap();
        assert_eq!(b.layout(), &Layout::Joint(fixture().join("model.onnx")));
        assert_eq!(b.image_size(), 32);
        assert_eq!(b.normalisation(), (CLIP_MEAN, CLIP_STD));
        assert_eq!(b.tokenizer().tokenize("a red and a green").len(), 5);
        assert_eq!(b.fingerprint().unwrap().len(), 64);
    }

    #[test]
    fn missing_files_are_named_before_anything_runs() {
        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("model.onnx")).unwrap();
        let err = open_err(tmp.path());
        assert!(
            err.contains("`model.onnx` is missing") && err.contains("optimum-cli export onnx"),
            "{err}"
        );
        // half a split layout names the other half
        std::fs::copy(
            fixture().join("variants/text_model.onnx"),
            tmp.path().join("text_model.onnx"),
        )
        .unwrap();
        let err = open_err(tmp.path());
        assert!(err.contains("`vision_model.onnx` is missing"), "{err}");

        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("preprocessor_config.json")).unwrap();
        let err = open_err(tmp.path());
        assert!(
            err.contains("`preprocessor_config.json` is missing"),
            "{err}"
        );

        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("merges.txt")).unwrap();
        let err = open_err(tmp.path());
        assert!(
            err.contains("merges.txt") && err.contains("tokenizer"),
            "{err}"
        );

        let tmp = copy_fixture();
        std::fs::write(
            tmp.path().join("preprocessor_config.json"),
            r#"{"crop_size": 32, "image_mean": [0.5, 0.5]}"#,
        )
        .unwrap();
        let err = open_err(tmp.path());
        assert!(err.contains("image_mean") && err.contains("three"), "{err}");

        let err = open_err(&tmp.path().join("nope"));
        assert!(err.contains("does not exist"), "{err}");
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
        let err = Prefilter::open(&rt, tmp.path()).unwrap_err().report();
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
        let err = Prefilter::open(&rt, tmp.path()).unwrap_err().report();
        assert!(err.contains("takes `input_ids`"), "{err}");
    }

    fn solid(w: u32, h: u32, left: [u8; 3], right: [u8; 3]) -> RgbImage {
        RgbImage::from_fn(w, h, |x, _| {
            image::Rgb(if x < w / 2 { left } else { right })
        })
    }

    const RED: [u8; 3] = [230, 40, 40];
    const GREEN: [u8; 3] = [40, 230, 40];

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn check_fixture_answers(pf: &mut Prefilter) {
        let vocab = names(&["blue", "green", "red"]);
        let (sel, stats) = pf.select(&solid(64, 48, RED, RED), &vocab, 10).unwrap();
        assert_eq!(sel.classes, vec!["red"]);
        assert_eq!(sel.kept, vec![2]);
        assert_eq!(sel.stage1[0].class, "red");
        assert!((sel.stage1[0].score - 1.0).abs() < 1e-4, "{sel:?}");
        assert!((sel.score - 1.0).abs() < 1e-4, "{sel:?}");
        assert_eq!(sel.prompts, 7);
        assert_eq!(
            stats.prompts_embedded,
            3 + 7 - 3,
            "class prompts once, then pairs/triple"
        );

        // Half red, half green: stage 1 ranks red and green on top (cosine
        // 1/2 each), stage 2 finds "a red and a green" (cosine 1).
        let (sel, stats) = pf.select(&solid(64, 48, RED, GREEN), &vocab, 10).unwrap();
        let mut kept = sel.classes.clone();
        kept.sort();
        assert_eq!(kept, vec!["green", "red"], "{sel:?}");
        assert!((sel.score - 1.0).abs() < 1e-3, "{sel:?}");
        assert!((sel.stage1[0].score - 0.5).abs() < 1e-2, "{sel:?}");
        assert_eq!(sel.stage1[2].class, "blue");
        // every text embedding came from the cache; one run for the image
        assert_eq!(stats.prompts_embedded, 0, "{stats:?}");
        assert_eq!(stats.runs, 1, "{stats:?}");

        // k = 1 cannot find the pair
        let (sel, _) = pf.select(&solid(64, 48, RED, GREEN), &vocab, 1).unwrap();
        assert_eq!(sel.classes.len(), 1);
        assert_eq!(sel.prompts, 1);
    }

    #[test]
    fn the_fixture_selects_the_known_classes() {
        let Some(rt) = runtime() else { return };
        let mut pf = Prefilter::open(&rt, &fixture()).unwrap();
        check_fixture_answers(&mut pf);
    }

    #[test]
    fn a_graph_with_one_batch_dimension_gets_one_image_per_prompt() {
        let Some(rt) = runtime() else { return };
        let tmp = copy_fixture();
        std::fs::copy(
            fixture().join("variants/tied_batch.onnx"),
            tmp.path().join("model.onnx"),
        )
        .unwrap();
        let mut pf = Prefilter::open(&rt, tmp.path()).unwrap();
        assert!(pf.ties_batches());
        check_fixture_answers(&mut pf);
        let pf = Prefilter::open(&rt, &fixture()).unwrap();
        assert!(!pf.ties_batches());
    }

    #[test]
    fn the_split_layout_gives_the_same_answers() {
        let Some(rt) = runtime() else { return };
        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("model.onnx")).unwrap();
        std::fs::create_dir(tmp.path().join("onnx")).unwrap();
        for f in ["text_model.onnx", "vision_model.onnx"] {
            std::fs::copy(
                fixture().join("variants").join(f),
                tmp.path().join("onnx").join(f),
            )
            .unwrap();
        }
        let mut pf = Prefilter::open(&rt, tmp.path()).unwrap();
        assert!(matches!(pf.bundle().layout(), Layout::Split { .. }));
        check_fixture_answers(&mut pf);
    }
}
