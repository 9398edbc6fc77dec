//! # ovdiff-match
//!
//! The matching layer: how L2-normalised patch features find their
//! prototypes. It knows prototypes and scores, nothing of images, windows
//! or segmentation.
//!
//! * [`vocabulary`]: a query's candidate classes stacked into one
//!   [`Vocabulary`] (with OVDiff's stuff rule for backgrounds), the
//!   [`Matcher`] trait, [`Scores`], and the exact blocked matcher;
//! * [`ivf`]: approximate matching by inverted lists ([`IvfMatcher`]);
//! * [`hnsw`]: approximate matching by an HNSW graph ([`HnswMatcher`]);
//! * [`rows`]: the row sets and blocked matrices the matchers read;
//! * [`oracle`]: a slow, plain f64 reference of the rules and random
//!   banks, for tests and benchmarks.

#![warn(missing_docs)]

pub mod hnsw;
pub mod ivf;
pub mod oracle;
pub mod rows;
pub mod vocabulary;

pub use hnsw::{Fingerprint, HnswMatcher, HnswParams, HnswStats};
pub use ivf::{IvfMatcher, IvfParams, IvfStats};
pub use vocabulary::{Candidate, Matcher, ProtoRef, Scores, Vocabulary};

use ovdiff_core::{Error, Result};
