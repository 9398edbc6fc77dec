//! Features: decoding and preprocessing images, and running the ViT encoder to get patch grids.

pub mod encoder;
pub mod preprocess;

pub use encoder::{Encoded, Encoder};
pub use ovdiff_core::PatchGrid;
