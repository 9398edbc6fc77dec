//! # ovdiff-segment
//!
//! Open-vocabulary segmentation with a prototype bank (OVDiff, Karazija et
//! al. 2023): every patch takes the label of the nearest class, and the
//! candidates' background prototypes stand for "background".
//!
//! * [`segmenter`]: the API: a [`Segmenter`] opens a bank once and
//!   segments images with [`Query`]s, from any number of threads, into
//!   [`Segmentation`]s;
//! * [`segmentation`]: the result and its files (label PNG, overlay,
//!   explain sheet, JSON report);
//! * [`outputs`]: the names of those files, chosen for a whole run so that
//!   no input's files overwrite another's;
//! * [`resume`]: whether an image's files are already all written, so that
//!   a re-run skips it (`segment --skip-existing`);
//! * [`window`]: which crops are encoded (448 and 336 windows, stride 224,
//!   plus the whole image, at a working size with a 448 short side);
//! * [`engine`]: windows through encoders and matchers, [`segment_image`];
//! * [`fusion`]: late fusion of windows and encoders ([`Accumulator`]) into
//!   a [`LabelMap`];
//! * [`label_map`]: what each label value means ([`ClassLabels`]) and how a
//!   query numbers its classes ([`LabelIds`]);
//! * [`query`]: from a bank and class names to encoders and matchers;
//! * [`prefilter`]: the optional CLIP category pre-filter;
//! * [`render`]: label PNGs, overlays and explain sheets;
//! * [`rle`]: COCO run-length encoding of masks, as pycocotools writes it;
//! * [`eval`]: confusion matrices and mIoU;
//! * [`report`]: the HTML pages of a `segment` or `eval` run.

#![warn(missing_docs)]

pub mod engine;
pub mod eval;
mod font;
pub mod fusion;
pub mod label_map;
#[cfg(test)]
mod oracle;
pub mod outputs;
pub mod prefilter;
pub mod query;
pub mod render;
pub mod report;
pub mod resume;
pub mod rle;
pub mod segmentation;
pub mod segmenter;
pub mod window;

pub use engine::{
    segment_image, segment_image_ensemble, EnsembleMember, Fused, SegmentOptions, Timings,
    WindowEncoder,
};
pub use fusion::{Accumulator, LabelMap};
pub use label_map::{ClassLabels, LabelIds};
pub use segmentation::{ImageReport, SegmentTimings, Segmentation, WriteOptions};
pub use segmenter::{ImageInput, Query, Segmenter, SegmenterOptions};
pub use window::{layout, resize_short_side, Window, WindowLayout, WindowPreset};

use ovdiff_core::{Error, Home, Result};
