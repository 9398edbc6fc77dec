//! # ovdiff-core
//!
//! The nouns and the few mechanisms every ovdiff-bank crate shares, each
//! owned once:
//!
//! * [`prototype`]: [`Prototype`], [`Side`], [`Level`], [`Provenance`];
//! * [`grid`]: [`PatchGrid`], the L2-normalised patch tokens of one image;
//! * [`rows`]: [`HalfRows`], prototype vectors as f16 rows (owned or mapped);
//! * [`shard`]: deterministic shards of classes and images over N workers;
//! * [`map`]: resizing and normalising dense f32 maps;
//! * [`names`]: the known names closest to a misspelt one;
//! * [`error`]: the one [`Error`] type;
//! * [`home`]: the `<home>` folder;
//! * [`atomic`]: atomic file writes;
//! * [`codec`]: little-endian field codecs;
//! * [`rng`]: the seeded [`SplitMix64`](rng::SplitMix64) generator;
//! * [`threads`]: thread counts;
//! * [`heap`]: the C allocator of long-lived processes (arenas, trim).
//!
//! ```
//! use ovdiff_core::threads::threads_or_cores;
//! assert_eq!(threads_or_cores(3), 3);
//! assert!(threads_or_cores(0) >= 1);
//! ```

#![warn(missing_docs)]

pub mod atomic;
pub mod codec;
pub mod error;
pub mod failpoint;
pub mod grid;
pub mod heap;
pub mod home;
pub mod map;
pub mod names;
pub mod prototype;
pub mod rng;
pub mod rows;
pub mod shard;
pub mod threads;

pub use error::Error;
pub use grid::PatchGrid;
pub use home::Home;
pub use prototype::{Level, Prototype, Provenance, Side};
pub use rows::{HalfRows, HalfSource};

/// The libraries' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
