//! Segmentation: sliding windows over an image, matching patch features to prototypes, and fusing the windows into a label map.
//!
//! * [`window`]: which crops are encoded (448 and 336 windows, stride 224,
//!   plus the whole image, at a working size with a 448 short side).
//! * [`engine`]: the [`Vocabulary`] of candidate classes (with OVDiff's
//!   stuff rule for backgrounds), exact blocked matching ([`Matcher`]),
//!   late fusion of windows and encoders ([`Accumulator`]) and
//!   [`segment_image`].
//! * [`prefilter`]: the optional CLIP category pre-filter, which picks the
//!   candidate classes CLIP sees in an image before it is segmented.

pub mod engine;
mod font;
#[cfg(test)]
pub(crate) mod oracle;
pub mod prefilter;
pub mod query;
pub mod render;
pub mod rows;
pub mod store;
pub mod window;

pub use engine::{
    segment_image, segment_image_ensemble, Accumulator, Candidate, EnsembleMember, LabelMap,
    Matcher, ProtoRef, Scores, SegmentOptions, Segmentation, Timings, Vocabulary, WindowEncoder,
};
pub use window::{layout, resize_short_side, Window};
