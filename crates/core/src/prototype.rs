//! Prototypes: the foreground, background and part vectors that stand for a class.
//!
//! A class is learned from a *support set* of images. Each support image is
//! encoded into a [`PatchGrid`](crate::PatchGrid), split into
//! foreground and background (`ovdiff_learn::split`), and the masked patches are pooled
//! into prototypes at three levels (OVDiff, Karazija et al. 2023):
//!
//! * class level: one mean over all masked patches of all images;
//! * instance level: one mean per support image;
//! * part level: K-means centroids (`ovdiff_learn::parts`) over all masked patches.
//!
//! Each level exists for the foreground and for the background, except for
//! *stuff* classes (sky, grass, …), which keep only foreground prototypes.

/// Which pooling produced a prototype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Mean over every masked patch of every support image.
    Class,
    /// Mean over the masked patches of one support image.
    Instance,
    /// A K-means centroid over the masked patches of all support images.
    Part,
}

/// Which side of the foreground/background split a prototype describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The object itself.
    Foreground,
    /// Its surroundings in the support images.
    Background,
}

/// Where a prototype came from: a support image and the patches of it that
/// the prototype pooled (for class and part prototypes: the image that
/// contributed most).
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// Index of the support image within its support set.
    pub image: u32,
    /// Grid height of that image's patch grid.
    pub grid_h: u32,
    /// Grid width of that image's patch grid.
    pub grid_w: u32,
    /// Row-major patch mask, `grid_h * grid_w` long: the patches pooled.
    pub region: Vec<bool>,
}

/// One prototype vector with its kind and provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Prototype {
    /// Pooling level.
    pub level: Level,
    /// Foreground or background.
    pub side: Side,
    /// L2-normalised vector.
    pub vector: Vec<f32>,
    /// Number of patches pooled into it, over all images.
    pub support: u32,
    /// The image (and its patches) that contributed most.
    pub provenance: Provenance,
}
