//! The prototype builder: pools a support set's masked patch tokens into class, instance and part prototypes.
//!
//! The pooling follows OVDiff's `gen_proto_vit.py`: the masked tokens of all
//! support images are concatenated; the class prototype is their mean (so an
//! image with a larger mask weighs more), the instance prototypes are per-image
//! means, and the part prototypes are K-means centroids (K = 32) over the
//! concatenation, separately for foreground and background. *Stuff* classes
//! keep no background prototypes (`protos.py`, `ctx_mode`). Unlike the
//! reference, every vector is L2-normalised here so the bank can compare by
//! dot product.

use ndarray::{Array2, ArrayView1};

use ovdiff_core::prototype::{Level, Prototype, Provenance, Side};
use ovdiff_core::PatchGrid;

use crate::parts::{kmeans, DEFAULT_MAX_ITER};
use crate::split::Split;

/// Default number of part prototypes per side (OVDiff's `--kmeans 32`).
pub const DEFAULT_PARTS: usize = 32;

/// How prototypes are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Number of K-means parts per side; fewer when there are fewer patches
    /// (`K = min(parts, n)`), none when 0. Default 32.
    pub parts: usize,
    /// Seed of the K-means seeding. Foreground parts use `seed`, background
    /// parts `seed + 1` (wrapping). Default 0.
    pub seed: u64,
    /// A *stuff* class (sky, grass, road, …): build foreground prototypes only,
    /// since the surroundings of stuff are other classes, not its background.
    pub stuff: bool,
    /// Cap on Lloyd iterations per K-means run. Default
    /// [`DEFAULT_MAX_ITER`] (30).
    pub max_iter: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            parts: DEFAULT_PARTS,
            seed: 0,
            stuff: false,
            max_iter: DEFAULT_MAX_ITER,
        }
    }
}

/// One support image: its patch tokens and its foreground/background split.
#[derive(Debug, Clone, Copy)]
pub struct SupportFeatures<'a> {
    /// Patch tokens of the image.
    pub grid: &'a PatchGrid,
    /// Foreground/background masks over `grid`.
    pub split: &'a Split,
}

/// Why a support set could not be turned into prototypes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// No support images were given.
    #[error("the support set is empty")]
    EmptySupport,
    /// Support images were encoded with different feature dimensions.
    #[error("support image {image} has feature dimension {found}, but image 0 has {expected}")]
    DimensionMismatch {
        /// Index of the offending image.
        image: usize,
        /// Dimension of image 0.
        expected: usize,
        /// Dimension of this image.
        found: usize,
    },
    /// A grid's feature rows or a split's masks do not match `h * w`.
    #[error(
        "support image {image}: its {h}×{w} grid needs {} patches, but it has {rows} feature rows, \
         a foreground mask of {fg} and a background mask of {bg}",
        h * w
    )]
    ShapeMismatch {
        /// Index of the offending image.
        image: usize,
        /// Grid height.
        h: usize,
        /// Grid width.
        w: usize,
        /// Feature rows in the grid.
        rows: usize,
        /// Length of the foreground mask.
        fg: usize,
        /// Length of the background mask.
        bg: usize,
    },
    /// Not one support image has a foreground patch.
    #[error("no support image has any foreground patch")]
    NoForeground,
}

/// Build the prototypes of one class from its support set.
///
/// Output order (deterministic):
///
/// 1. class foreground, class background;
/// 2. instance prototypes, image by image: foreground then background (a
///    side whose mask is empty in that image is skipped);
/// 3. part foreground prototypes, then part background prototypes, each in
///    K-means cluster order.
///
/// Rules:
///
/// * Class: mean over every masked patch of every image (an image with a
///   larger mask weighs more). Provenance: the image contributing the most
///   patches (ties: lowest index) with its whole mask.
/// * Instance: mean over one image's masked patches. Provenance: that image
///   and mask.
/// * Part: [`kmeans`] over all masked patches of the side, `K = min(parts, n)`
///   (fewer if the patches have fewer distinct values). `support` is the
///   cluster size. Provenance: the image contributing the most members
///   (ties: lowest index), its member patches as the region.
/// * Stuff classes ([`BuildOptions::stuff`]): foreground only.
/// * Every vector is L2-normalised; a pooled vector of zero norm (all-zero
///   tokens) carries no direction and is dropped.
///
/// At most `2 + 2·images + 2·parts` prototypes result.
///
/// # Errors
///
/// [`BuildError::EmptySupport`], [`BuildError::DimensionMismatch`],
/// [`BuildError::ShapeMismatch`], and [`BuildError::NoForeground`] when no
/// image has a foreground patch.
pub fn build_prototypes(
    support: &[SupportFeatures],
    opts: &BuildOptions,
) -> Result<Vec<Prototype>, BuildError> {
    let first = support.first().ok_or(BuildError::EmptySupport)?;
    let dim = first.grid.dim();
    for (image, s) in support.iter().enumerate() {
        let (h, w) = (s.grid.h, s.grid.w);
        let rows = s.grid.features.nrows();
        let (fg, bg) = (s.split.fg.len(), s.split.bg.len());
        if rows != h * w || fg != h * w || bg != h * w {
            return Err(BuildError::ShapeMismatch {
                image,
                h,
                w,
                rows,
                fg,
                bg,
            });
        }
        if s.grid.dim() != dim {
            return Err(BuildError::DimensionMismatch {
                image,
                expected: dim,
                found: s.grid.dim(),
            });
        }
    }
    if !support.iter().any(|s| s.split.fg.iter().any(|&b| b)) {
        return Err(BuildError::NoForeground);
    }

    let sides: &[Side] = if opts.stuff {
        &[Side::Foreground]
    } else {
        &[Side::Foreground, Side::Background]
    };
    let mut out = Vec::new();

    // Class level.
    for &side in sides {
        let counts: Vec<usize> = support.iter().map(|s| count(mask(s.split, side))).collect();
        let total: usize = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut sum = vec![0f64; dim];
        for s in support {
            add_masked(&mut sum, s.grid, mask(s.split, side));
        }
        let image = argmax_first(&counts);
        push(
            &mut out,
            Level::Class,
            side,
            &sum,
            total,
            provenance(support, image, mask(support[image].split, side).to_vec()),
        );
    }

    // Instance level.
    for (image, s) in support.iter().enumerate() {
        for &side in sides {
            let m = mask(s.split, side);
            let n = count(m);
            if n == 0 {
                continue;
            }
            let mut sum = vec![0f64; dim];
            add_masked(&mut sum, s.grid, m);
            push(
                &mut out,
                Level::Instance,
                side,
                &sum,
                n,
                provenance(support, image, m.to_vec()),
            );
        }
    }

    // Part level.
    if opts.parts > 0 {
        for &side in sides {
            let seed = match side {
                Side::Foreground => opts.seed,
                Side::Background => opts.seed.wrapping_add(1),
            };
            build_parts(&mut out, support, side, dim, opts, seed);
        }
    }
    Ok(out)
}

/// K-means parts of one side, appended to `out`.
fn build_parts(
    out: &mut Vec<Prototype>,
    support: &[SupportFeatures],
    side: Side,
    dim: usize,
    opts: &BuildOptions,
    seed: u64,
) {
    let n: usize = support.iter().map(|s| count(mask(s.split, side))).sum();
    if n == 0 {
        return;
    }
    // Gather the masked tokens; remember where each came from.
    let mut points = Array2::<f32>::zeros((n, dim));
    let mut origin: Vec<(usize, usize)> = Vec::with_capacity(n);
    for (image, s) in support.iter().enumerate() {
        for (patch, _) in mask(s.split, side).iter().enumerate().filter(|(_, &b)| b) {
            points
                .row_mut(origin.len())
                .assign(&s.grid.features.row(patch));
            origin.push((image, patch));
        }
    }
    let km = kmeans(points.view(), opts.parts.min(n), seed, opts.max_iter);

    let k = km.k();
    let mut per_image = vec![vec![0usize; support.len()]; k];
    let mut size = vec![0usize; k];
    for (&a, &(image, _)) in km.assignment.iter().zip(&origin) {
        per_image[a as usize][image] += 1;
        size[a as usize] += 1;
    }
    for j in 0..k {
        if size[j] == 0 {
            continue; // only possible with max_iter == 0
        }
        let image = argmax_first(&per_image[j]);
        let grid = support[image].grid;
        let mut region = vec![false; grid.len()];
        for (&a, &(img, patch)) in km.assignment.iter().zip(&origin) {
            if a as usize == j && img == image {
                region[patch] = true;
            }
        }
        let centroid: Vec<f64> = km.centroids.row(j).iter().map(|&v| f64::from(v)).collect();
        push(
            out,
            Level::Part,
            side,
            &centroid,
            size[j],
            provenance(support, image, region),
        );
    }
}

/// The mask of `side`.
fn mask(split: &Split, side: Side) -> &[bool] {
    match side {
        Side::Foreground => &split.fg,
        Side::Background => &split.bg,
    }
}

/// Number of set entries.
fn count(mask: &[bool]) -> usize {
    mask.iter().filter(|&&b| b).count()
}

/// Index of the largest value; the first one on ties.
fn argmax_first(values: &[usize]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Add the masked rows of `grid` to `sum`, in patch order.
fn add_masked(sum: &mut [f64], grid: &PatchGrid, mask: &[bool]) {
    for (row, _) in grid
        .features
        .rows()
        .into_iter()
        .zip(mask)
        .filter(|(_, &b)| b)
    {
        add_row(sum, row);
    }
}

fn add_row(sum: &mut [f64], row: ArrayView1<f32>) {
    match row.as_slice() {
        Some(r) => sum.iter_mut().zip(r).for_each(|(s, &x)| *s += f64::from(x)),
        None => sum
            .iter_mut()
            .zip(row.iter())
            .for_each(|(s, &x)| *s += f64::from(x)),
    }
}

fn provenance(support: &[SupportFeatures], image: usize, region: Vec<bool>) -> Provenance {
    let grid = support[image].grid;
    Provenance {
        image: image as u32,
        grid_h: grid.h as u32,
        grid_w: grid.w as u32,
        region,
    }
}

/// Normalise `sum` (a sum or mean: only its direction matters) and append
/// the prototype, unless it has no direction.
fn push(
    out: &mut Vec<Prototype>,
    level: Level,
    side: Side,
    sum: &[f64],
    support: usize,
    provenance: Provenance,
) {
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return;
    }
    out.push(Prototype {
        level,
        side,
        vector: sum.iter().map(|&v| (v / norm) as f32).collect(),
        support: support as u32,
        provenance,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_core::rng::SplitMix64;

    /// `images` grids of `h × w`, dim 16: foreground = centre block with
    /// tokens near one of three "part" directions, background near three
    /// others. Split: the block is fg, the outer ring bg.
    fn support_set(images: usize, h: usize, w: usize) -> Vec<(PatchGrid, Split)> {
        let dim = 16;
        let mut rng = SplitMix64::new(99);
        (0..images)
            .map(|img| {
                let mut features = Array2::<f32>::zeros((h * w, dim));
                let mut fg = vec![false; h * w];
                let mut bg = vec![false; h * w];
                for i in 0..h * w {
                    let (y, x) = (i / w, i % w);
                    let inside = y > 1 && x > 1 && y + 2 < h && x + 2 < w && (y + img) % 7 != 0;
                    let ring = y == 0 || x == 0 || y + 1 == h || x + 1 == w;
                    let dir = if inside { (x + y) % 3 } else { 3 + (x * y) % 3 };
                    for j in 0..dim {
                        let base = if j == dir { 1.0 } else { 0.0 };
                        features[[i, j]] = base + 0.05 * (rng.next_f64() as f32 - 0.5);
                    }
                    fg[i] = inside;
                    bg[i] = ring;
                }
                ovdiff_core::grid::l2_normalize_rows(&mut features);
                (
                    PatchGrid { h, w, features },
                    Split {
                        fg,
                        bg,
                        fallback: false,
                    },
                )
            })
            .collect()
    }

    fn views(set: &[(PatchGrid, Split)]) -> Vec<SupportFeatures<'_>> {
        set.iter()
            .map(|(grid, split)| SupportFeatures { grid, split })
            .collect()
    }

    fn count_kind(p: &[Prototype], level: Level, side: Side) -> usize {
        p.iter()
            .filter(|q| q.level == level && q.side == side)
            .count()
    }

    #[test]
    fn counts_order_and_norms() {
        let set = support_set(4, 10, 12);
        let opts = BuildOptions {
            parts: 3,
            ..BuildOptions::default()
        };
        let p = build_prototypes(&views(&set), &opts).unwrap();
        assert_eq!(count_kind(&p, Level::Class, Side::Foreground), 1);
        assert_eq!(count_kind(&p, Level::Class, Side::Background), 1);
        assert_eq!(count_kind(&p, Level::Instance, Side::Foreground), 4);
        assert_eq!(count_kind(&p, Level::Instance, Side::Background), 4);
        assert_eq!(count_kind(&p, Level::Part, Side::Foreground), 3);
        assert_eq!(count_kind(&p, Level::Part, Side::Background), 3);
        assert!(p.len() <= 2 + 2 * 4 + 2 * 3);

        // Order: class fg, class bg, instance fg/bg per image, parts fg, parts bg.
        let kinds: Vec<(Level, Side, u32)> = p
            .iter()
            .map(|q| (q.level, q.side, q.provenance.image))
            .collect();
        assert_eq!(kinds[0].0, Level::Class);
        assert_eq!(kinds[0].1, Side::Foreground);
        assert_eq!(kinds[1].1, Side::Background);
        for img in 0..4u32 {
            let i = 2 + 2 * img as usize;
            assert_eq!(kinds[i], (Level::Instance, Side::Foreground, img));
            assert_eq!(kinds[i + 1], (Level::Instance, Side::Background, img));
        }
        assert!(kinds[10..13]
            .iter()
            .all(|k| k.0 == Level::Part && k.1 == Side::Foreground));
        assert!(kinds[13..16]
            .iter()
            .all(|k| k.0 == Level::Part && k.1 == Side::Background));

        for q in &p {
            let norm: f32 = q.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-5,
                "{:?} {:?} norm {norm}",
                q.level,
                q.side
            );
            assert_eq!(q.vector.len(), 16);
            let r = &q.provenance;
            assert_eq!(r.region.len(), (r.grid_h * r.grid_w) as usize);
            assert!(r.region.iter().any(|&b| b));
        }

        // Support counts: parts of a side add up to the class support.
        let fg_total: usize = set.iter().map(|(_, s)| s.fg_count()).sum();
        assert_eq!(p[0].support as usize, fg_total);
        let parts_fg: u32 = p[10..13].iter().map(|q| q.support).sum();
        assert_eq!(parts_fg as usize, fg_total);
        // Instance support = that image's mask size.
        assert_eq!(p[2].support as usize, set[0].1.fg_count());
        // Part provenance region = member patches of one image (a subset of its fg).
        for q in &p[10..13] {
            let img = q.provenance.image as usize;
            let fg = &set[img].1.fg;
            assert!(q.provenance.region.iter().zip(fg).all(|(&r, &f)| !r || f));
            assert!(q.provenance.region.iter().filter(|&&b| b).count() <= q.support as usize);
        }
    }

    #[test]
    fn parts_recover_part_directions() {
        let set = support_set(3, 10, 12);
        let opts = BuildOptions {
            parts: 3,
            ..BuildOptions::default()
        };
        let p = build_prototypes(&views(&set), &opts).unwrap();
        let mut dirs: Vec<usize> = p
            .iter()
            .filter(|q| q.level == Level::Part && q.side == Side::Foreground)
            .map(|q| {
                let (arg, v) = q
                    .vector
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap();
                assert!(*v > 0.99);
                arg
            })
            .collect();
        dirs.sort_unstable();
        assert_eq!(dirs, vec![0, 1, 2]);
    }

    #[test]
    fn deterministic() {
        let set = support_set(5, 9, 9);
        let opts = BuildOptions::default();
        let a = build_prototypes(&views(&set), &opts).unwrap();
        let b = build_prototypes(&views(&set), &opts).unwrap();
        assert_eq!(a, b);
        let bits = |p: &[Prototype]| {
            p.iter()
                .flat_map(|q| q.vector.iter().map(|v| v.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn stuff_is_foreground_only() {
        let set = support_set(3, 8, 8);
        let opts = BuildOptions {
            stuff: true,
            parts: 4,
            ..BuildOptions::default()
        };
        let p = build_prototypes(&views(&set), &opts).unwrap();
        assert!(p.iter().all(|q| q.side == Side::Foreground));
        assert_eq!(p.len(), 1 + 3 + 4);
    }

    #[test]
    fn parts_capped_by_patch_count() {
        // 4×4 grids: fg is a single patch per image → 2 fg patches in all.
        let mut set = support_set(2, 6, 6);
        for (_, split) in &mut set {
            let first = split.fg.iter().position(|&b| b).unwrap();
            split.fg = (0..36).map(|i| i == first).collect();
        }
        let p = build_prototypes(&views(&set), &BuildOptions::default()).unwrap();
        let fg_parts = count_kind(&p, Level::Part, Side::Foreground);
        assert!((1..=2).contains(&fg_parts));
        assert!(count_kind(&p, Level::Part, Side::Background) <= 32);
        assert!(p.len() <= 2 + 2 * 2 + 2 * 32);
    }

    #[test]
    fn class_mean_weighs_larger_masks_more() {
        let dim = 2;
        let e0 = PatchGrid {
            h: 1,
            w: 2,
            features: ndarray::array![[1.0f32, 0.0], [0.0, 1.0]],
        };
        let e1 = PatchGrid {
            h: 2,
            w: 2,
            features: ndarray::array![[0.0f32, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]],
        };
        let s0 = Split {
            fg: vec![true, false],
            bg: vec![false, true],
            fallback: false,
        };
        let s1 = Split {
            fg: vec![true, true, true, false],
            bg: vec![false, false, false, true],
            fallback: false,
        };
        let support = [
            SupportFeatures {
                grid: &e0,
                split: &s0,
            },
            SupportFeatures {
                grid: &e1,
                split: &s1,
            },
        ];
        let p = build_prototypes(&support, &BuildOptions::default()).unwrap();
        let class_fg = &p[0];
        assert_eq!(class_fg.vector.len(), dim);
        let norm = 10f32.sqrt();
        assert!((class_fg.vector[0] - 1.0 / norm).abs() < 1e-6);
        assert!((class_fg.vector[1] - 3.0 / norm).abs() < 1e-6);
        assert_eq!(class_fg.support, 4);
        assert_eq!(class_fg.provenance.image, 1);
        assert_eq!(class_fg.provenance.region, s1.fg);
        // Class bg: one patch each, tie → image 0.
        assert_eq!(p[1].provenance.image, 0);
    }

    #[test]
    fn empty_side_in_one_image_is_skipped() {
        let mut set = support_set(3, 8, 8);
        set[1].1.bg = vec![false; 64];
        set[2].1.fg = vec![false; 64];
        let p = build_prototypes(&views(&set), &BuildOptions::default()).unwrap();
        let inst: Vec<(Side, u32)> = p
            .iter()
            .filter(|q| q.level == Level::Instance)
            .map(|q| (q.side, q.provenance.image))
            .collect();
        assert_eq!(
            inst,
            vec![
                (Side::Foreground, 0),
                (Side::Background, 0),
                (Side::Foreground, 1),
                (Side::Background, 2),
            ]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            build_prototypes(&[], &BuildOptions::default()),
            Err(BuildError::EmptySupport)
        );

        let mut set = support_set(2, 6, 6);
        for (_, split) in &mut set {
            split.fg = vec![false; 36];
        }
        assert_eq!(
            build_prototypes(&views(&set), &BuildOptions::default()),
            Err(BuildError::NoForeground)
        );

        let mut set = support_set(2, 6, 6);
        set[1].0.features = Array2::zeros((36, 8));
        assert_eq!(
            build_prototypes(&views(&set), &BuildOptions::default()),
            Err(BuildError::DimensionMismatch {
                image: 1,
                expected: 16,
                found: 8
            })
        );

        let mut set = support_set(2, 6, 6);
        set[0].1.bg.pop();
        assert!(matches!(
            build_prototypes(&views(&set), &BuildOptions::default()),
            Err(BuildError::ShapeMismatch {
                image: 0,
                bg: 35,
                ..
            })
        ));
    }
}
