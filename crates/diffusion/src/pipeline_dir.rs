//! An exported Stable Diffusion pipeline folder (the `optimum-cli export onnx` layout), checked before sampling.
//!
//! Such an export has no `manifest.toml`: [`PipelineDir`] plays the
//! manifest's part for it. [`PipelineDir::open`] checks that every file the
//! generator reads is there, parses the configs it needs, loads the
//! tokenizer and checks that the parts fit together (the UNet's
//! cross-attention width is the text encoder's hidden size, the VAE's latent
//! channels are the UNet's input channels), so that a wrong folder fails in
//! milliseconds with a message naming the file, not half-way through
//! sampling. The generator's identity is [`PipelineDir::fingerprint`].
//!
//! ```text
//! model_index.json                   pipeline class and components
//! scheduler/scheduler_config.json    noise schedule
//! tokenizer/vocab.json, merges.txt   CLIP BPE (or tokenizer/tokenizer.json)
//! tokenizer/special_tokens_map.json, tokenizer_config.json   pad token
//! text_encoder/model.onnx, config.json   input_ids -> last_hidden_state
//! unet/model.onnx, config.json       sample, timestep, encoder_hidden_states -> out_sample
//! vae_decoder/model.onnx, config.json    latent_sample -> sample
//! ```
//!
//! Large exports keep ONNX weights next to the graph (`unet/model.onnx_data`
//! and the like); they are part of the fingerprint like every other file.
//! `vae_encoder/`, `feature_extractor/` and `safety_checker/` may be present
//! and are not used.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::{Error, Result};
use ovdiff_models::fingerprint::fingerprint_dir;
use ovdiff_models::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};

/// How to make an export, for error messages.
pub const EXPORT_HINT: &str = "export one with `optimum-cli export onnx --model \
                               stabilityai/sd-turbo sd-turbo-onnx/` (any Stable Diffusion 1.x/2.x \
                               model id works)";

/// The pipeline config.
pub const MODEL_INDEX: &str = "model_index.json";
/// The scheduler config.
pub const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";
/// The tokenizer folder.
pub const TOKENIZER_DIR: &str = "tokenizer";
/// The text encoder graph.
pub const TEXT_ENCODER_MODEL: &str = "text_encoder/model.onnx";
/// The text encoder's transformers config.
pub const TEXT_ENCODER_CONFIG: &str = "text_encoder/config.json";
/// The UNet graph.
pub const UNET_MODEL: &str = "unet/model.onnx";
/// The UNet's diffusers config.
pub const UNET_CONFIG: &str = "unet/config.json";
/// The VAE decoder graph.
pub const VAE_DECODER_MODEL: &str = "vae_decoder/model.onnx";
/// The VAE's diffusers config.
pub const VAE_DECODER_CONFIG: &str = "vae_decoder/config.json";

/// Every file [`PipelineDir::open`] requires (the tokenizer's
/// `vocab.json` + `merges.txt` may be replaced by `tokenizer.json`).
pub const REQUIRED_FILES: [&str; 12] = [
    MODEL_INDEX,
    SCHEDULER_CONFIG,
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    TEXT_ENCODER_MODEL,
    TEXT_ENCODER_CONFIG,
    UNET_MODEL,
    UNET_CONFIG,
    VAE_DECODER_MODEL,
    VAE_DECODER_CONFIG,
];

/// The VAE latent scale Stable Diffusion 1.x/2.x use when
/// `vae_decoder/config.json` has no `scaling_factor` (diffusers' default).
pub const DEFAULT_SCALING_FACTOR: f64 = 0.18215;

/// A `[library, class]` pair of `model_index.json` (`[null, null]` for an
/// absent component).
pub type Component = (Option<String>, Option<String>);

/// `model_index.json`: the fields the generator needs (others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelIndex {
    /// The pipeline class, e.g. `StableDiffusionPipeline`.
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// The diffusers version that wrote it.
    #[serde(rename = "_diffusers_version", default)]
    pub diffusers_version: Option<String>,
    /// The scheduler, e.g. `["diffusers", "EulerDiscreteScheduler"]`.
    #[serde(default)]
    pub scheduler: Option<Component>,
    /// The text encoder, e.g. `["transformers", "CLIPTextModel"]`.
    #[serde(default)]
    pub text_encoder: Option<Component>,
    /// The tokenizer, e.g. `["transformers", "CLIPTokenizer"]`.
    #[serde(default)]
    pub tokenizer: Option<Component>,
    /// The UNet, e.g. `["diffusers", "UNet2DConditionModel"]`.
    #[serde(default)]
    pub unet: Option<Component>,
    /// A second text encoder (SDXL): not supported.
    #[serde(default)]
    pub text_encoder_2: Option<Component>,
    /// A transformer denoiser (SD3, Flux): not supported.
    #[serde(default)]
    pub transformer: Option<Component>,
}

/// `unet/config.json`: the fields the generator needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UnetConfig {
    /// Latent side the model was trained at (64 for SD 1.5 = 512 px).
    pub sample_size: u32,
    /// Latent channels in (4).
    pub in_channels: u32,
    /// Latent channels out (defaults to `in_channels`).
    #[serde(default)]
    pub out_channels: Option<u32>,
    /// Width of the text embeddings the UNet attends to.
    pub cross_attention_dim: u32,
    /// Set for LCM-distilled UNets, which take a `timestep_cond` input.
    #[serde(default)]
    pub time_cond_proj_dim: Option<u32>,
    /// `text_time` for SDXL UNets, which take extra inputs.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
}

/// `vae_decoder/config.json` (an `AutoencoderKL` config): the fields the
/// generator needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// Latents are divided by this before decoding (0.18215 by default).
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Latent channels (4).
    #[serde(default = "default_latent_channels")]
    pub latent_channels: u32,
    /// One entry per resolution level: the decoder upsamples by
    /// `2^(len - 1)` (8 for Stable Diffusion).
    #[serde(default)]
    pub block_out_channels: Option<Vec<u32>>,
}

fn default_scaling_factor() -> f64 {
    DEFAULT_SCALING_FACTOR
}

fn default_latent_channels() -> u32 {
    4
}

/// `text_encoder/config.json` (a transformers `CLIPTextConfig`): the fields
/// the generator needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TextEncoderConfig {
    /// Width of `last_hidden_state` (768 for SD 1.x, 1024 for SD 2.x).
    pub hidden_size: u32,
    /// Positions (77 for CLIP).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: u32,
    /// Rows of the token embedding.
    #[serde(default)]
    pub vocab_size: Option<u32>,
}

fn default_positions() -> u32 {
    CONTEXT_LENGTH as u32
}

/// A checked export folder.
#[derive(Debug)]
pub struct PipelineDir {
    root: PathBuf,
    model_index: ModelIndex,
    unet: UnetConfig,
    vae: VaeConfig,
    text_encoder: TextEncoderConfig,
    scheduler: serde_json::Value,
    tokenizer: ClipTokenizer,
    fingerprint: OnceLock<String>,
}

impl PipelineDir {
    /// Check the folder (see the module docs): every required file is
    /// there, the configs parse and agree, the tokenizer loads. Reads only
    /// small files; the fingerprint is computed on first use.
    pub fn open(dir: &Path) -> Result<PipelineDir> {
        let fail = |problem: String| Error::bundle(dir, problem);
        if !dir.is_dir() {
            return Err(fail(format!(
                "not a folder; a Stable Diffusion ONNX export is needed: {EXPORT_HINT}"
            )));
        }
        let has_tokenizer_json = dir.join(TOKENIZER_DIR).join("tokenizer.json").is_file();
        for rel in REQUIRED_FILES {
            if has_tokenizer_json && matches!(rel, "tokenizer/vocab.json" | "tokenizer/merges.txt")
            {
                continue;
            }
            if !dir.join(rel).is_file() {
                let extra = if dir.join("manifest.toml").is_file() {
                    " (this folder has a manifest.toml: it looks like a model bundle, not a \
                     pipeline export)"
                } else if dir
                    .join("unet/diffusion_pytorch_model.safetensors")
                    .is_file()
                {
                    " (this looks like a PyTorch diffusers folder; it has to be exported to ONNX)"
                } else {
                    ""
                };
                return Err(fail(format!(
                    "`{rel}` is missing: this is not a complete ONNX Stable Diffusion export{extra}; \
                     {EXPORT_HINT}"
                )));
            }
        }
        let model_index: ModelIndex = read_json(dir, MODEL_INDEX)?;
        if model_index.text_encoder_2.as_ref().is_some_and(present)
            || model_index.class_name.contains("XL")
        {
            return Err(fail(format!(
                "`{MODEL_INDEX}` describes a {} with two text encoders (SDXL), which is not \
                 supported; use a Stable Diffusion 1.x/2.x export",
                model_index.class_name
            )));
        }
        if model_index.transformer.as_ref().is_some_and(present) {
            return Err(fail(format!(
                "`{MODEL_INDEX}` describes a {} with a transformer denoiser, which is not \
                 supported; use a Stable Diffusion 1.x/2.x (UNet) export",
                model_index.class_name
            )));
        }
        let unet: UnetConfig = read_json(dir, UNET_CONFIG)?;
        let vae: VaeConfig = read_json(dir, VAE_DECODER_CONFIG)?;
        let text_encoder: TextEncoderConfig = read_json(dir, TEXT_ENCODER_CONFIG)?;
        let scheduler: serde_json::Value = read_json(dir, SCHEDULER_CONFIG)?;
        if !scheduler.is_object() {
            return Err(fail(format!("`{SCHEDULER_CONFIG}` is not a JSON object")));
        }
        if unet.cross_attention_dim != text_encoder.hidden_size {
            return Err(fail(format!(
                "`{UNET_CONFIG}` has cross_attention_dim {} but `{TEXT_ENCODER_CONFIG}` has \
                 hidden_size {}: the UNet cannot read this text encoder's embeddings (parts of \
                 two different models?)",
                unet.cross_attention_dim, text_encoder.hidden_size
            )));
        }
        if text_encoder.max_position_embeddings as usize != CONTEXT_LENGTH {
            return Err(fail(format!(
                "`{TEXT_ENCODER_CONFIG}` has max_position_embeddings {}, but CLIP text encoders \
                 take {CONTEXT_LENGTH} tokens",
                text_encoder.max_position_embeddings
            )));
        }
        if let Some(d) = unet.time_cond_proj_dim {
            return Err(fail(format!(
                "`{UNET_CONFIG}` has time_cond_proj_dim {d} (an LCM-distilled UNet with a \
                 `timestep_cond` input), which is not supported"
            )));
        }
        if let Some(kind) = &unet.addition_embed_type {
            return Err(fail(format!(
                "`{UNET_CONFIG}` has addition_embed_type `{kind}` (extra conditioning inputs), \
                 which is not supported"
            )));
        }
        if vae.latent_channels != unet.in_channels {
            return Err(fail(format!(
                "`{VAE_DECODER_CONFIG}` has latent_channels {} but `{UNET_CONFIG}` has \
                 in_channels {}",
                vae.latent_channels, unet.in_channels
            )));
        }
        if unet.out_channels.unwrap_or(unet.in_channels) != unet.in_channels {
            return Err(fail(format!(
                "`{UNET_CONFIG}` has out_channels {:?} but in_channels {} (an inpainting or \
                 other special UNet?), which is not supported",
                unet.out_channels, unet.in_channels
            )));
        }
        if !(vae.scaling_factor.is_finite() && vae.scaling_factor > 0.0) {
            return Err(fail(format!(
                "`{VAE_DECODER_CONFIG}` has scaling_factor {}, which is not a positive number",
                vae.scaling_factor
            )));
        }
        if unet.sample_size == 0 {
            return Err(fail(format!("`{UNET_CONFIG}` has sample_size 0")));
        }
        let tokenizer = ClipTokenizer::from_dir(&dir.join(TOKENIZER_DIR))?;
        if let Some(rows) = text_encoder.vocab_size {
            let needed = tokenizer.vocab_size();
            if needed > rows as usize {
                return Err(fail(format!(
                    "the tokenizer has {needed} tokens but `{TEXT_ENCODER_CONFIG}` has \
                     vocab_size {rows}"
                )));
            }
        }
        Ok(PipelineDir {
            root: dir.to_path_buf(),
            model_index,
            unet,
            vae,
            text_encoder,
            scheduler,
            tokenizer,
            fingerprint: OnceLock::new(),
        })
    }

    /// The export folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `model_index.json`.
    pub fn model_index(&self) -> &ModelIndex {
        &self.model_index
    }

    /// `unet/config.json`.
    pub fn unet_config(&self) -> &UnetConfig {
        &self.unet
    }

    /// `vae_decoder/config.json`.
    pub fn vae_config(&self) -> &VaeConfig {
        &self.vae
    }

    /// `text_encoder/config.json`.
    pub fn text_encoder_config(&self) -> &TextEncoderConfig {
        &self.text_encoder
    }

    /// `scheduler/scheduler_config.json`, as JSON (an object).
    pub fn scheduler_config(&self) -> &serde_json::Value {
        &self.scheduler
    }

    /// The loaded tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Path of a file of the export, e.g. [`UNET_MODEL`].
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `scheduler/scheduler_config.json`.
    pub fn scheduler_config_path(&self) -> PathBuf {
        self.path(SCHEDULER_CONFIG)
    }

    /// `text_encoder/model.onnx`.
    pub fn text_encoder_path(&self) -> PathBuf {
        self.path(TEXT_ENCODER_MODEL)
    }

    /// `unet/model.onnx`.
    pub fn unet_path(&self) -> PathBuf {
        self.path(UNET_MODEL)
    }

    /// `vae_decoder/model.onnx`.
    pub fn vae_decoder_path(&self) -> PathBuf {
        self.path(VAE_DECODER_MODEL)
    }

    /// Width of the text embeddings (the text encoder's hidden size, which
    /// `open` checked equals the UNet's cross-attention width).
    pub fn hidden_size(&self) -> usize {
        self.text_encoder.hidden_size as usize
    }

    /// Latent channels (4).
    pub fn latent_channels(&self) -> usize {
        self.unet.in_channels as usize
    }

    /// The VAE scaling factor latents are divided by before decoding.
    pub fn scaling_factor(&self) -> f64 {
        self.vae.scaling_factor
    }

    /// Pixels per latent along each side: `2^(levels - 1)` of the VAE, 8
    /// when the config does not say.
    pub fn vae_scale_factor(&self) -> usize {
        match &self.vae.block_out_channels {
            Some(levels) if !levels.is_empty() && levels.len() <= 8 => 1 << (levels.len() - 1),
            _ => 8,
        }
    }

    /// The image side the model was trained at, in pixels
    /// (`sample_size × vae_scale_factor`: 512 for SD 1.5 and sd-turbo).
    pub fn default_image_size(&self) -> usize {
        self.unet.sample_size as usize * self.vae_scale_factor()
    }

    /// The generator's identity: sha256 over every file's path relative to
    /// the folder (`/`-separated, sorted) and its sha256. Files and folders
    /// whose names start with `.` are left out; symbolic links are followed
    /// (a Hugging Face cache snapshot links to its blobs). Hashes every
    /// byte once (seconds for a multi-GB export), then is cached.
    pub fn fingerprint(&self) -> Result<&str> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f);
        }
        let f = fingerprint_dir(&self.root)?;
        Ok(self.fingerprint.get_or_init(|| f))
    }
}

fn present(c: &Component) -> bool {
    c.0.is_some() || c.1.is_some()
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, rel: &str) -> Result<T> {
    let path = dir.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::bundle(dir, format!("`{rel}` is not a valid config: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("tests/fixtures/sd-tiny")
    }

    /// A copy of the fixture export (without the generator script and the
    /// variants) that a test may damage.
    fn copy_fixture() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for rel in REQUIRED_FILES {
            let to = tmp.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(fixture().join(rel), to).unwrap();
        }
        tmp
    }

    fn edit_json(dir: &Path, rel: &str, f: impl FnOnce(&mut serde_json::Value)) {
        let p = dir.join(rel);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    #[test]
    fn fixture_export_opens() {
        let p = PipelineDir::open(&fixture()).unwrap();
        assert_eq!(p.model_index().class_name, "StableDiffusionPipeline");
        assert_eq!(
            p.model_index().scheduler,
            Some((Some("diffusers".into()), Some("PNDMScheduler".into())))
        );
        assert_eq!(p.hidden_size(), 32);
        assert_eq!(p.latent_channels(), 4);
        assert_eq!(p.scaling_factor(), 0.18215);
        assert_eq!(p.vae_scale_factor(), 8);
        assert_eq!(p.default_image_size(), 64);
        assert_eq!(p.unet_config().sample_size, 8);
        assert_eq!(p.scheduler_config()["beta_schedule"], "scaled_linear");
        assert!(p.unet_path().ends_with("unet/model.onnx"));
        assert_eq!(p.tokenizer().pad_id(), p.tokenizer().end_id());
        let f = p.fingerprint().unwrap().to_string();
        assert_eq!(f.len(), 64);
        assert_eq!(p.fingerprint().unwrap(), f, "cached");
    }

    #[test]
    fn every_missing_file_is_named_with_the_export_command() {
        for rel in REQUIRED_FILES {
            let tmp = copy_fixture();
            std::fs::remove_file(tmp.path().join(rel)).unwrap();
            let err = PipelineDir::open(tmp.path()).unwrap_err().report();
            assert!(err.contains(&format!("`{rel}` is missing")), "{rel}: {err}");
            assert!(err.contains("optimum-cli export onnx"), "{err}");
        }
        let err = PipelineDir::open(&fixture().join("nope"))
            .unwrap_err()
            .report();
        assert!(err.contains("optimum-cli export onnx"), "{err}");
    }

    #[test]
    fn tokenizer_files_are_required_without_a_tokenizer_json() {
        let tmp = copy_fixture();
        std::fs::remove_file(tmp.path().join("tokenizer/merges.txt")).unwrap();
        let err = PipelineDir::open(tmp.path()).unwrap_err().report();
        assert!(err.contains("`tokenizer/merges.txt` is missing"), "{err}");
    }

    #[test]
    fn mismatched_parts_are_clear_errors() {
        let tmp = copy_fixture();
        edit_json(tmp.path(), TEXT_ENCODER_CONFIG, |v| {
            v["hidden_size"] = 768.into()
        });
        let err = PipelineDir::open(tmp.path()).unwrap_err().report();
        assert!(
            err.contains("cross_attention_dim 32") && err.contains("hidden_size 768"),
            "{err}"
        );

        let tmp = copy_fixture();
        edit_json(tmp.path(), VAE_DECODER_CONFIG, |v| {
            v["latent_channels"] = 16.into()
        });
        let err = PipelineDir::open(tmp.path()).unwrap_err().report();
        assert!(err.contains("latent_channels 16"), "{err}");

        let tmp = copy_fixture();
        edit_json(tmp.path(), UNET_CONFIG, |v| {
            v["time_cond_proj_dim"] = 256.into()
        });
        let err = PipelineDir::open(tmp.path()).unwrap_err().report();
        assert!(err.contains("time_cond_proj_dim 256"), "{err}");

        let tmp = copy_fixture();
        edit_json(tmp.path(), MODEL_INDEX, |v| {
            v["_class_name"] = "StableDiffusionXLPipeline".into();
            v["text_encoder_2"] =
                serde_json::json!(["transformers", "CLIPTextModelWithProjection"]);
        });
        let err = PipelineDir::open(tmp.path()).unwrap_err().report();
        assert!(err.contains("SDXL"), "{err}");

        let tmp = copy_fixture();
        edit_json(tmp.path(), TEXT_ENCODER_CONFIG, |v| {
            v["vocab_size"] = 10.into()
        });
        let err = PipelineDir::open(tmp.path()).unwrap_err().report();
        assert!(err.contains("vocab_size 10"), "{err}");

        let tmp = copy_fixture();
        std::fs::write(tmp.path().join(UNET_CONFIG), "{\"in_channels\": 4}").unwrap();
        let err = PipelineDir::open(tmp.path()).unwrap_err().report();
        assert!(
            err.contains("`unet/config.json` is not a valid config"),
            "{err}"
        );
    }

    #[test]
    fn scaling_factor_defaults_to_sd_value() {
        let tmp = copy_fixture();
        edit_json(tmp.path(), VAE_DECODER_CONFIG, |v| {
            let o = v.as_object_mut().unwrap();
            o.remove("scaling_factor");
            o.remove("block_out_channels");
        });
        let p = PipelineDir::open(tmp.path()).unwrap();
        assert_eq!(p.scaling_factor(), DEFAULT_SCALING_FACTOR);
        assert_eq!(p.vae_scale_factor(), 8);
    }

    #[test]
    fn fingerprint_covers_every_file_and_its_path() {
        let tmp = copy_fixture();
        let base = fingerprint_dir(tmp.path()).unwrap();
        assert_eq!(base, fingerprint_dir(tmp.path()).unwrap());
        // Hidden files do not count.
        std::fs::write(tmp.path().join(".DS_Store"), b"x").unwrap();
        assert_eq!(base, fingerprint_dir(tmp.path()).unwrap());
        // Extra weights do.
        std::fs::write(tmp.path().join("unet/model.onnx_data"), b"weights").unwrap();
        let with_data = fingerprint_dir(tmp.path()).unwrap();
        assert_ne!(base, with_data);
        // Same bytes under another name differ.
        std::fs::rename(
            tmp.path().join("unet/model.onnx_data"),
            tmp.path().join("unet/weights.pb"),
        )
        .unwrap();
        assert_ne!(with_data, fingerprint_dir(tmp.path()).unwrap());
        // Content changes differ.
        std::fs::remove_file(tmp.path().join("unet/weights.pb")).unwrap();
        assert_eq!(base, fingerprint_dir(tmp.path()).unwrap());
        std::fs::write(tmp.path().join(UNET_CONFIG), b"{}").unwrap();
        assert_ne!(base, fingerprint_dir(tmp.path()).unwrap());
    }
}
