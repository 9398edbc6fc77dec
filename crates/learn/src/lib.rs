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
//!   part prototypes, for both sides;
//! * [`learner`]: the [`Learner`], all of the above as one call that adds
//!   a class to a bank, with progress through a callback trait.
//!
//! And what every front-end (the command line, a Python binding, an HTTP
//! service) computes about banks, files and bundles before it prints:
//!
//! * [`banks`]: the banks of a home, listed, created and removed;
//! * [`catalog`]: the classes of a bank, listed and described;
//! * [`exchange`]: `.ovbank` files verified, merged and inspected;
//! * [`fetch`]: `.ovbank` files downloaded over HTTP (resumed, checked
//!   against the server's `ETag`) before they are verified like local ones;
//! * [`migrate`]: banks and files brought up to the current format;
//! * [`bundles`]: installed model bundles listed and checked, and one image
//!   through an encoder.

#![warn(missing_docs)]

pub mod banks;
pub mod builder;
pub mod bundles;
pub mod catalog;
pub mod exchange;
pub mod fetch;
pub mod learner;
pub mod migrate;
pub mod parts;
pub mod split;
pub mod support_set;

pub use learner::{Learner, NewClass};

use ovdiff_core::{Error, Result};
