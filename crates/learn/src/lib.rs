//! # ovdiff-learn
//!
//! Learning a class: a support set of images (given, or sampled by a
//! diffusion model) becomes prototypes in a bank (OVDiff, Karazija et al.
//! 2023).
//!
//! * [`support_set`]: the support images of a class, from a folder or a
//!   generator;
//! * [`split`]: each image's foreground and background;
//! * [`parts`]: the deterministic K-means behind part prototypes;
//! * [`builder`]: pooling the masked patch tokens into class, instance and
//!   part prototypes, for both sides.

#![warn(missing_docs)]

pub mod builder;
pub mod parts;
pub mod split;
pub mod support_set;

use ovdiff_core::{Error, Result};
