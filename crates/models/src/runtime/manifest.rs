//! Model bundle manifests (`manifest.toml`, version 1): a typed description of an ONNX bundle.
//!
//! The annotated reference is `schema/model-manifest-v1.toml`. Parsing is
//! strict (`deny_unknown_fields`), and [`Manifest::validate`] checks the
//! cross-field rules that serde cannot (the graph file is listed, the
//! encoder's outputs exist, paths stay inside the bundle, …).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The manifest version this reader understands.
pub const MANIFEST_VERSION: u32 = 1;

/// File name of the manifest inside a bundle folder.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// A parsed, validated `manifest.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`].
    pub manifest_version: u32,
    /// Bundle name.
    pub name: String,
    /// Bundle version (free-form).
    pub version: String,
    /// What the bundle is for.
    pub role: Role,
    /// Optional one-line description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the weights came from.
    pub provenance: Provenance,
    /// Every file of the bundle, with its hash.
    pub files: Vec<FileEntry>,
    /// The ONNX graph to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<Graph>,
    /// Expected graph inputs.
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// Expected graph outputs.
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// Image preprocessing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Preprocess>,
    /// Feature-encoder settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<EncoderSpec>,
    /// Saliency-model settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saliency: Option<SaliencySpec>,
    /// UNets only: the cross-attention outputs OVDiff's attribution maps
    /// are built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionSpec>,
}

/// What a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Image → patch tokens (optionally also a saliency map).
    FeatureEncoder,
    /// Image → saliency map.
    Saliency,
    /// Token ids → text embeddings.
    TextEncoder,
    /// Diffusion denoiser.
    Unet,
    /// Latents → image.
    VaeDecoder,
    /// Vocabulary files only.
    Tokenizer,
    /// A whole diffusion export folder.
    DiffusionPipeline,
}

impl Role {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::FeatureEncoder => "feature-encoder",
            Role::Saliency => "saliency",
            Role::TextEncoder => "text-encoder",
            Role::Unet => "unet",
            Role::VaeDecoder => "vae-decoder",
            Role::Tokenizer => "tokenizer",
            Role::DiffusionPipeline => "diffusion-pipeline",
        }
    }

    fn needs_graph(self) -> bool {
        !matches!(self, Role::Tokenizer | Role::DiffusionPipeline)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Origin of the weights.
    pub source: String,
    /// Their licence.
    pub licence: String,
    /// Anything else worth knowing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the bundle folder.
    pub path: String,
    /// Lower-case hex sha256 of its bytes.
    pub sha256: String,
}

/// Which file holds the ONNX graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    /// One of the bundle's `files`.
    pub file: String,
}

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
}

impl Dtype {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::I64 => "i64",
            Dtype::I32 => "i32",
        }
    }
}

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named, dynamic size.
    Symbolic(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// Name, element type and shape of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, fixed or symbolic per dimension.
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// `name: dtype[d0, d1, …]`.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!(
            "{}: {}[{}]",
            self.name,
            self.dtype.as_str(),
            dims.join(", ")
        )
    }
}

/// How images are resized before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeRule {
    /// The short side becomes `size`.
    ShortSide,
    /// The long side becomes `size`.
    LongSide,
    /// Both sides become `size`.
    Exact,
}

/// Channel layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, C, H, W]`.
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
}

/// Channel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
}

/// Typed image preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Resize rule.
    pub resize: ResizeRule,
    /// Target size in pixels.
    pub size: u32,
    /// Height and width are rounded to a multiple of this.
    pub size_multiple: u32,
    /// Pixel values are divided by this before normalising.
    pub scale: f32,
    /// Per-channel mean (RGB order).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB order).
    pub std: [f32; 3],
    /// Tensor layout.
    pub layout: Layout,
    /// Channel order.
    pub channels: Channels,
}

/// How to read patch tokens from a feature encoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    /// Patch size in pixels.
    pub patch_size: u32,
    /// Feature dimension.
    pub feature_dim: u32,
    /// The output holding `[N, skip_tokens + h*w, feature_dim]`.
    pub tokens_output: String,
    /// Leading non-patch tokens to drop.
    pub skip_tokens: u32,
    /// Optional output holding a `[N, 1, H', W']` saliency map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saliency_output: Option<String>,
}

/// How to read a saliency-only model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaliencySpec {
    /// The output holding `[N, 1, H', W']`.
    pub output: String,
}

/// The cross-attention probabilities a UNet graph exposes (role `unet`),
/// written by `scripts/expose_attention.py`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionSpec {
    /// Outputs holding softmax-normalised cross-attention, `[B, heads, L, T]`
    /// or `[B·heads, L, T]` (`L` query positions of a downsampled latent
    /// grid, `T` text tokens).
    pub cross_attention_outputs: Vec<String>,
}

impl Manifest {
    /// Read and validate `<dir>/manifest.toml`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() {
            return Err(Error::bundle(dir, "no such folder"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let manifest = Manifest::parse(&text).map_err(|source| Error::ManifestParse {
            path: path.clone(),
            source: source.into(),
        })?;
        manifest
            .validate()
            .map_err(|problem| Error::bundle(dir, problem))?;
        Ok(manifest)
    }

    /// Parse manifest text (no validation).
    pub fn parse(text: &str) -> std::result::Result<Manifest, toml::de::Error> {
        toml::from_str(text)
    }

    /// Check the rules serde cannot; the message says what to fix.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.manifest_version != MANIFEST_VERSION {
            return Err(format!(
                "manifest_version {} is not supported (this ovdiff-bank reads version {}); \
                 upgrade ovdiff-bank or rebuild the bundle with `scripts/setup`",
                self.manifest_version, MANIFEST_VERSION
            ));
        }
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && self.name.as_bytes()[0].is_ascii_alphanumeric();
        if !name_ok {
            return Err(format!(
                "bundle name `{}` must match [a-z0-9][a-z0-9._-]*",
                self.name
            ));
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            relative_path(&f.path)?;
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("file `{}`: sha256 must be 64 hex digits", f.path));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(format!("file `{}` is listed twice", f.path));
            }
        }
        match (&self.graph, self.role.needs_graph()) {
            (None, true) => return Err(format!("role {} needs a [graph] table", self.role)),
            (Some(g), _) if !seen.contains(g.file.as_str()) => {
                return Err(format!(
                    "graph file `{}` is not listed in [[files]]",
                    g.file
                ))
            }
            _ => {}
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if spec
                .shape
                .iter()
                .any(|d| matches!(d, Dim::Fixed(n) if *n < 0))
            {
                return Err(format!("tensor `{}` has a negative dimension", spec.name));
            }
        }
        let has_output = |name: &str| self.outputs.iter().any(|o| o.name == name);
        match self.role {
            Role::FeatureEncoder => {
                let enc = self
                    .encoder
                    .as_ref()
                    .ok_or("role feature-encoder needs an [encoder] table")?;
                if self.preprocess.is_none() {
                    return Err("role feature-encoder needs a [preprocess] table".into());
                }
                if enc.patch_size == 0 || enc.feature_dim == 0 {
                    return Err("[encoder] patch_size and feature_dim must be positive".into());
                }
                if !has_output(&enc.tokens_output) {
                    return Err(format!(
                        "[encoder] tokens_output `{}` is not among [[outputs]]",
                        enc.tokens_output
                    ));
                }
                if let Some(s) = &enc.saliency_output {
                    if !has_output(s) {
                        return Err(format!(
                            "[encoder] saliency_output `{s}` is not among [[outputs]]"
                        ));
                    }
                }
            }
            Role::Saliency => {
                let sal = self
                    .saliency
                    .as_ref()
                    .ok_or("role saliency needs a [saliency] table")?;
                if self.preprocess.is_none() {
                    return Err("role saliency needs a [preprocess] table".into());
                }
                if !has_output(&sal.output) {
                    return Err(format!(
                        "[saliency] output `{}` is not among [[outputs]]",
                        sal.output
                    ));
                }
            }
            _ => {}
        }
        if let Some(a) = &self.attribution {
            if self.role != Role::Unet {
                return Err(format!("[attribution] is for role unet, not {}", self.role));
            }
            if a.cross_attention_outputs.is_empty() {
                return Err("[attribution] cross_attention_outputs is empty".into());
            }
            let mut names = BTreeSet::new();
            for name in &a.cross_attention_outputs {
                let spec = self.output(name).ok_or_else(|| {
                    format!("[attribution] output `{name}` is not among [[outputs]]")
                })?;
                if !names.insert(name.as_str()) {
                    return Err(format!("[attribution] lists `{name}` twice"));
                }
                if !matches!(spec.dtype, Dtype::F32 | Dtype::F16)
                    || !(3..=4).contains(&spec.shape.len())
                {
                    return Err(format!(
                        "[attribution] output `{name}` must be f32 or f16 cross-attention \
                         probabilities [B, heads, L, T] or [B*heads, L, T]; the manifest says {}",
                        spec.describe()
                    ));
                }
            }
        }
        if let Some(p) = &self.preprocess {
            if p.size == 0 || p.size_multiple == 0 || p.scale <= 0.0 {
                return Err("[preprocess] size, size_multiple and scale must be positive".into());
            }
            if p.std.iter().any(|s| *s <= 0.0) {
                return Err("[preprocess] std must be positive".into());
            }
        }
        Ok(())
    }

    /// The graph file's path inside `dir`.
    pub fn graph_path(&self, dir: &Path) -> Option<PathBuf> {
        self.graph.as_ref().map(|g| dir.join(&g.file))
    }

    /// Find an output spec by name.
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

/// A manifest path must be relative and stay inside the bundle.
fn relative_path(p: &str) -> std::result::Result<(), String> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file path `{p}` must be relative and stay inside the bundle"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const ENCODER: &str = r#"
manifest_version = 1
name = "tiny"
version = "1"
role = "feature-encoder"
[provenance]
source = "test"
licence = "MIT"
[[files]]
path = "model.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[graph]
file = "model.onnx"
[[inputs]]
name = "pixel_values"
dtype = "f32"
shape = ["N", 3, "H", "W"]
[[outputs]]
name = "tokens"
dtype = "f32"
shape = ["N", "T", 16]
[preprocess]
resize = "short-side"
size = 112
size_multiple = 14
scale = 255.0
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
layout = "nchw"
channels = "rgb"
[encoder]
patch_size = 14
feature_dim = 16
tokens_output = "tokens"
skip_tokens = 1
"#;

    #[test]
    fn parses_and_validates_an_encoder_manifest() {
        let m = Manifest::parse(ENCODER).unwrap();
        m.validate().unwrap();
        assert_eq!(m.role, Role::FeatureEncoder);
        assert_eq!(m.inputs[0].shape[1], Dim::Fixed(3));
        assert_eq!(m.inputs[0].shape[0], Dim::Symbolic("N".into()));
        assert_eq!(m.outputs[0].describe(), "tokens: f32[N, T, 16]");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = ENCODER.replace("skip_tokens = 1", "skip_tokens = 1\nskip_tokenz = 2");
        let err = Manifest::parse(&text).unwrap_err().to_string();
        assert!(err.contains("skip_tokenz"), "{err}");
    }

    #[test]
    fn cross_field_rules_are_checked() {
        let cases = [
            (
                "manifest_version = 1",
                "manifest_version = 2",
                "not supported",
            ),
            (
                "tokens_output = \"tokens\"",
                "tokens_output = \"x\"",
                "not among",
            ),
            (
                "file = \"model.onnx\"",
                "file = \"other.onnx\"",
                "not listed",
            ),
            (
                "path = \"model.onnx\"",
                "path = \"../model.onnx\"",
                "inside the bundle",
            ),
            ("name = \"tiny\"", "name = \"Tiny Model\"", "must match"),
            ("sha256 = \"0000", "sha256 = \"zz00", "64 hex"),
        ];
        for (from, to, expect) in cases {
            let text = ENCODER.replacen(from, to, 1);
            let m = Manifest::parse(&text).unwrap();
            let err = m.validate().unwrap_err();
            assert!(err.contains(expect), "{from} -> {to}: {err}");
        }
    }

    const UNET: &str = r#"
manifest_version = 1
name = "unet"
version = "1"
role = "unet"
[provenance]
source = "test"
licence = "MIT"
[[files]]
path = "model.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[graph]
file = "model.onnx"
[[inputs]]
name = "sample"
dtype = "f32"
shape = ["B", 4, "H", "W"]
[[outputs]]
name = "out_sample"
dtype = "f32"
shape = ["B", 4, "H", "W"]
[[outputs]]
name = "attn_a"
dtype = "f16"
shape = ["B", "heads", "L", "T"]
[[outputs]]
name = "attn_b"
dtype = "f32"
shape = ["BH", "L", "T"]
[attribution]
cross_attention_outputs = ["attn_a", "attn_b"]
"#;

    #[test]
    fn attribution_outputs_are_checked() {
        let m = Manifest::parse(UNET).unwrap();
        m.validate().unwrap();
        let a = m.attribution.as_ref().unwrap();
        assert_eq!(a.cross_attention_outputs, ["attn_a", "attn_b"]);
        let cases = [
            (
                "[\"attn_a\", \"attn_b\"]",
                "[\"attn_a\", \"attn_c\"]",
                "not among",
            ),
            (
                "[\"attn_a\", \"attn_b\"]",
                "[\"attn_a\", \"attn_a\"]",
                "twice",
            ),
            ("[\"attn_a\", \"attn_b\"]", "[]", "empty"),
            (
                "shape = [\"BH\", \"L\", \"T\"]",
                "shape = [\"BH\", \"L\"]",
                "[B, heads, L, T]",
            ),
            ("role = \"unet\"", "role = \"vae-decoder\"", "role unet"),
        ];
        for (from, to, expect) in cases {
            let text = UNET.replacen(from, to, 1);
            let err = Manifest::parse(&text).unwrap().validate().unwrap_err();
            assert!(err.contains(expect), "{from} -> {to}: {err}");
        }
        let typo = UNET.replace("cross_attention_outputs", "cross_attention_output");
        assert!(Manifest::parse(&typo).is_err());
    }
}
