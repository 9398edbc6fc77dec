//! # ovdiff-bank
//!
//! A prototype-bank database and query engine for zero-shot open-vocabulary
//! segmentation, after OVDiff (Karazija et al., "Diffusion Models for
//! Zero-Shot Open-Vocabulary Segmentation", arXiv 2306.09316).
//!
//! A class is learned from a *support set* of images (sampled by a diffusion
//! model, or given by the user). A ViT feature encoder turns each support
//! image into a grid of patch tokens; the grid is split into foreground and
//! background; the masked tokens are pooled into *prototypes* at class,
//! instance and part level. Prototypes are stored in a *bank*. To segment an
//! image, every patch takes the label of the class whose prototypes are
//! nearest; the background prototypes of the candidate classes stand for
//! "background", so no threshold is needed.
//!
//! ## Architecture
//!
//! * [`runtime`]: loads ONNX Runtime, reads model bundles (`manifest.toml`),
//!   builds sessions and checks them against their manifests.
//! * [`features`]: image decoding with limits, preprocessing, the encoder.
//! * [`prototypes`]: foreground/background split, K-means parts, the
//!   prototype builder.
//! * [`bank`]: the durable store of classes and prototypes.
//! * [`cli`]: the `ovdiff-bank` command line.
//!
//! ```
//! use ovdiff_bank::runtime::Manifest;
//! // Manifests are typed and strict; an unknown key is an error.
//! assert!(Manifest::parse("manifest_version = 1\nbogus = 2").is_err());
//! ```

#![warn(missing_docs)]

pub mod bank;
pub mod cli;
pub mod diffusion;
pub mod error;
pub mod eval;
pub mod features;
pub mod home;
pub mod index;
pub mod ovbank;
pub mod prototypes;
pub mod runtime;
pub mod segment;
pub mod support_set;

pub use error::Error;
pub use home::Home;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
