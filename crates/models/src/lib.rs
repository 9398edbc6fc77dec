//! # ovdiff-models
//!
//! The models ovdiff-bank runs, through ONNX Runtime (loaded at run time,
//! never downloaded):
//!
//! * [`runtime`]: finding and loading `libonnxruntime`, model bundles
//!   (`manifest.toml`) and sessions checked against their manifests;
//! * [`features`]: image decoding with limits, preprocessing, and the ViT
//!   [`Encoder`](features::Encoder) that yields patch grids;
//! * [`clip`]: a CLIP export (folder check, preprocessing, the text and
//!   image towers), for the category pre-filter;
//! * [`fingerprint`]: the identities banks record for model folders;
//! * [`tokenizer`]: CLIP's BPE tokenizer, shared by the diffusion text
//!   encoder and [`clip`].
//!
//! ```
//! use ovdiff_models::runtime::Manifest;
//! // Manifests are typed and strict; an unknown key is an error.
//! assert!(Manifest::parse("manifest_version = 1\nbogus = 2").is_err());
//! ```

#![warn(missing_docs)]

pub mod clip;
pub mod features;
pub mod fingerprint;
pub mod runtime;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;

use ovdiff_core::{Error, Home, Result};
