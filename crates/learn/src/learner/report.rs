//! What adding a class did: the report a front-end prints or serialises.

use std::path::PathBuf;

use serde::Serialize;

use crate::catalog::EncoderReport;

/// What [`Learner::add`](super::Learner::add) did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddReport {
    /// The class name.
    pub class: String,
    /// The bank it was written to.
    pub bank: PathBuf,
    /// Support images that produced prototypes.
    pub images_used: usize,
    /// Support images that could not be used, with the reason.
    pub images_skipped: Vec<SkippedImage>,
    /// The foreground/background split used.
    pub split: &'static str,
    /// Splits (image × encoder) that needed the quantile fallback.
    pub fallback_splits: u32,
    /// The prototypes stored, per encoder.
    pub encoders: Vec<EncoderReport>,
    /// Wall-clock time of the whole add, sampling included, in seconds.
    pub seconds: f64,
    /// Time spent in encoder forward passes, in seconds.
    pub encode_seconds: f64,
    /// Time spent pooling prototypes (K-means included), in seconds.
    pub pool_seconds: f64,
}

/// A support image that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedImage {
    /// The file.
    pub path: PathBuf,
    /// Why, as one line.
    pub reason: String,
}
