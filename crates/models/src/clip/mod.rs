//! CLIP (Radford et al. 2021) as an ONNX export: the folder check ([`ClipBundle`]), its image preprocessing, and the text and image towers ([`ClipModel`]).
//!
//! OVDiff uses CLIP for its optional category pre-filter
//! (`ovdiff_segment::prefilter`), which compares the embedding of an image
//! with those of class prompts. This module is the model: which files a
//! CLIP folder holds, how an image and a prompt become the graph's inputs,
//! and the projected embeddings (`text_embeds`, `image_embeds`) it returns.
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
//! ## The towers
//!
//! With the single `model.onnx`, every run needs both an image and some
//! text: [`ClipModel::embed_image`] therefore takes a batch of prompts
//! along with the image, and [`ClipModel::embed_texts`] runs prompts with
//! the same image again (a ViT-B/16 image pass costs about as much as
//! 30–40 short prompts; an image batch of 0, which would avoid it, is
//! refused by the vision tower's reshapes). With the split layout each
//! tower runs alone. Older optimum versions name the text and image batch
//! dimensions alike (`batch_size`), and ONNX Runtime then insists that they
//! are equal: for such a graph the image is repeated once per prompt
//! ([`ClipModel::ties_batches`]), which is correct but slow.
//!
//! The text side feeds `input_ids` (start token, at most 75 BPE tokens, end
//! token) padded with the tokenizer's pad token to the longest prompt of
//! the batch (to the graph's length when it fixes one), and `attention_mask`
//! (1 up to the end token) when the graph takes it. CLIP's causal text
//! transformer pools at the end token, so the padding length does not
//! change an embedding. A prompt longer than 75 tokens is truncated, as
//! Hugging Face's tokenizer does (the reference's `clip.tokenize` would
//! refuse it).

mod bundle;
mod model;

pub use bundle::{ClipBundle, Layout};
pub use model::ClipModel;

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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::runtime::Runtime;

    /// `tests/fixtures/clip-tiny`.
    pub(super) fn fixture() -> PathBuf {
        crate::testing::fixture("clip-tiny")
    }

    /// A copy of the fixture's export files (not `variants/`) in a temp dir.
    pub(super) fn copy_fixture() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(fixture()).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
            }
        }
        tmp
    }

    /// The runtime, or `None` (with a message) when ONNX Runtime is not
    /// installed; under CI=true that fails the test.
    pub(super) fn runtime() -> Option<Runtime> {
        crate::testing::runtime_or_skip()
    }
}
