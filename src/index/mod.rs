//! Approximate matching: an HNSW graph over a vocabulary's prototype rows, behind the same [`Matcher`](crate::segment::Matcher) interface as the exact engine.
//!
//! * [`hnsw`]: [`HnswMatcher`] (top-k graph search per patch, class scores
//!   from the hits, orphan handling, a checked on-disk cache).

pub mod hnsw;
pub mod ivf;

pub use hnsw::{Fingerprint, HnswMatcher, HnswParams, HnswStats};
pub use ivf::{IvfMatcher, IvfParams, IvfStats};
