//! Support sets: the images a class is learned from, encoded, split and pooled into prototypes.
//!
//! This is the offline half of OVDiff. For every support image and every
//! encoder: encode → foreground/background split → (after the last image)
//! pool into class, instance and part prototypes. A small JPEG thumbnail of
//! each image is kept so that explanations work after the originals are
//! gone. An image that cannot be read is skipped with a warning and counted;
//! when no usable image remains, nothing is built.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::builder::{build_prototypes, BuildOptions, SupportFeatures};
use crate::split::{split_by_features, split_by_saliency, Split, SplitMethod};
use crate::{Error, Result};
use ovdiff_core::prototype::Prototype;
use ovdiff_diffusion::attribution;
use ovdiff_models::features::{preprocess, Encoder, PatchGrid};
use ovdiff_store::bank::{BuildStats, ClassBuild, ClassRecordDraft, ClassSource, SupportImageInfo};
use ovdiff_store::ovbank::THUMBNAIL_MAX_PX;

/// JPEG quality of the thumbnails.
pub const THUMBNAIL_QUALITY: u8 = 85;

/// File extensions read from a support folder.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// One support image, and the diffusion model's attribution map for it
/// when it was sampled by a generator that gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportImage {
    /// The image file.
    pub path: PathBuf,
    /// Its attribution map, a 16-bit greyscale PNG
    /// ([`attribution::write_png`]).
    pub attribution: Option<PathBuf>,
}

impl From<PathBuf> for SupportImage {
    fn from(path: PathBuf) -> SupportImage {
        SupportImage {
            path,
            attribution: None,
        }
    }
}

/// How a support set is turned into prototypes.
#[derive(Debug, Clone)]
pub struct LearnOptions {
    /// Foreground/background split.
    pub split: SplitMethod,
    /// Prototype pooling.
    pub build: BuildOptions,
}

/// What happened to one support image, reported as it happens.
#[derive(Debug)]
pub enum Event<'a> {
    /// The image was encoded by every encoder.
    Used {
        /// The file.
        path: &'a Path,
    },
    /// The image could not be used.
    Skipped {
        /// The file.
        path: &'a Path,
        /// Why.
        error: &'a Error,
    },
}

/// One support image that was used.
#[derive(Debug, Clone)]
pub struct UsedImage {
    /// The file name (no folder).
    pub name: String,
    /// Original width.
    pub width: u32,
    /// Original height.
    pub height: u32,
    /// JPEG thumbnail bytes.
    pub thumbnail: Vec<u8>,
}

/// The prototypes of one encoder.
#[derive(Debug, Clone)]
pub struct EncoderPrototypes {
    /// The encoder bundle's fingerprint.
    pub fingerprint: String,
    /// The encoder bundle's name.
    pub name: String,
    /// Its feature dimension.
    pub dim: usize,
    /// The prototypes, in builder order.
    pub prototypes: Vec<Prototype>,
}

/// A learned class, ready for the bank.
#[derive(Debug, Clone)]
pub struct Learned {
    /// Images used, in support-set order (prototype provenance indexes them).
    pub images: Vec<UsedImage>,
    /// Images skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Per encoder, the prototypes.
    pub encoders: Vec<EncoderPrototypes>,
    /// Splits (image × encoder) that needed the quantile fallback.
    pub fallback_splits: u32,
    /// Time spent in encoder forward passes.
    pub encode_time: Duration,
    /// Time spent decoding and thumbnailing images.
    pub decode_time: Duration,
    /// Time spent pooling (K-means included).
    pub pool_time: Duration,
    /// Foreground and background patches over all used images, first encoder.
    pub patches: (u64, u64),
}

impl Learned {
    /// The bank's view of this class: record draft, prototypes per encoder,
    /// thumbnails.
    pub fn class_build(
        &self,
        name: &str,
        stuff: bool,
        source: ClassSource,
        split: SplitMethod,
    ) -> ClassBuild {
        ClassBuild {
            record: ClassRecordDraft {
                name: name.to_string(),
                stuff,
                source,
                split_method: split.as_str().to_string(),
                images_used: self.images.len() as u32,
                images_skipped: self.skipped.len() as u32,
                fallback_splits: self.fallback_splits,
                created_unix: None,
                stats: Some(BuildStats {
                    tool_version: ovdiff_store::bank::TOOL_VERSION.to_string(),
                    total_ms: millis(self.decode_time + self.encode_time + self.pool_time),
                    sample_ms: 0,
                    decode_ms: millis(self.decode_time),
                    encode_ms: millis(self.encode_time),
                    pool_ms: millis(self.pool_time),
                    fg_patches: self.patches.0,
                    bg_patches: self.patches.1,
                }),
                support: self
                    .images
                    .iter()
                    .map(|i| SupportImageInfo {
                        name: i.name.clone(),
                        width: i.width,
                        height: i.height,
                    })
                    .collect(),
            },
            encoders: self
                .encoders
                .iter()
                .map(|e| (e.fingerprint.clone(), e.prototypes.clone()))
                .collect(),
            thumbnails: self.images.iter().map(|i| i.thumbnail.clone()).collect(),
        }
    }
}

/// The image files in `dir`, sorted by name (hidden files and folders are
/// ignored; other extensions are ignored too, and so are attribution maps,
/// `*.attribution.png`, which [`with_attribution_maps`] pairs with their
/// images).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("reading support folder", dir, e))?;
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .unwrap_or_default();
            !name.starts_with('.')
                && IMAGE_EXTENSIONS.contains(&ext.as_str())
                && !name.ends_with(attribution::MAP_SUFFIX)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The entries of `dir` that [`list_images`] leaves out for a reason worth
/// telling: files with no extension, dangling symlinks, and FIFOs, sockets
/// or devices; each with why, sorted by name. Hidden entries, folders and
/// files of other extensions are not listed.
pub fn unusable_entries(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, String)> = rd
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str().unwrap_or("");
            if name.starts_with('.') {
                return None;
            }
            let reason = match std::fs::metadata(&p) {
                Err(_) if std::fs::symlink_metadata(&p).is_ok() => "a dangling symlink",
                Err(_) => return None,
                Ok(m) if m.is_dir() => return None,
                Ok(m) if !m.is_file() => "not a regular file (a FIFO, socket or device)",
                Ok(_) if p.extension().is_none() => "no file extension (PNG or JPEG expected)",
                Ok(_) => return None,
            };
            Some((p, reason.to_string()))
        })
        .collect();
    out.sort();
    out
}

/// Support images from a folder, each with its attribution map when one
/// lies beside it (a folder written by `add --keep-support` from a
/// generator that gives maps).
pub fn with_attribution_maps(images: Vec<PathBuf>) -> Vec<SupportImage> {
    images
        .into_iter()
        .map(|path| {
            let map = attribution::map_path(&path);
            SupportImage {
                attribution: map.is_file().then_some(map),
                path,
            }
        })
        .collect()
}

/// A JPEG thumbnail whose long side is at most [`THUMBNAIL_MAX_PX`].
pub fn thumbnail(img: &RgbImage) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    let s = (THUMBNAIL_MAX_PX as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    );
    let small = preprocess::resize(img, tw, th);
    let mut bytes = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, THUMBNAIL_QUALITY);
    enc.encode_image(&small).map_err(|e| Error::Image {
        path: PathBuf::from("<thumbnail>"),
        problem: "cannot encode the thumbnail".into(),
        source: Some(e.into()),
    })?;
    Ok(bytes)
}

/// Check, before any work, that every encoder can do the split asked for.
pub fn check_encoders(encoders: &[Encoder], split: SplitMethod) -> Result<()> {
    if encoders.is_empty() {
        return Err(Error::Invalid("at least one encoder is needed".into()));
    }
    if split == SplitMethod::Saliency {
        if let Some(e) = encoders.iter().find(|e| !e.has_saliency()) {
            return Err(Error::Invalid(format!(
                "encoder {} has no saliency output, so `--split saliency` cannot be used with it; \
                 pass `--split feature-split`",
                e.bundle().name()
            )));
        }
    }
    Ok(())
}

fn split_one(
    method: SplitMethod,
    grid: &PatchGrid,
    saliency: Option<&ndarray::Array2<f32>>,
    attribution: Option<&ndarray::Array2<f32>>,
    seed: u64,
) -> Split {
    match (method, saliency, attribution) {
        (SplitMethod::Saliency, Some(s), _) | (SplitMethod::Attribution, _, Some(s)) => {
            split_by_saliency(s.view(), grid.h, grid.w)
        }
        _ => split_by_features(grid, seed),
    }
}

/// The attribution map of `image` when `method` needs one: a missing or
/// unreadable map makes the image unusable (it is skipped, like an
/// unreadable image).
fn attribution_for(
    method: SplitMethod,
    image: &SupportImage,
) -> Result<Option<ndarray::Array2<f32>>> {
    if method != SplitMethod::Attribution {
        return Ok(None);
    }
    let path = image.attribution.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "{} has no attribution map, which `--split attribution` needs",
            image.path.display()
        ))
    })?;
    attribution::read_png(path).map(Some)
}

/// Learn a class from support images with every encoder.
///
/// `on_event` is called once per image (used or skipped), in order.
pub fn learn(
    images: &[SupportImage],
    encoders: &mut [Encoder],
    opts: &LearnOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Learned> {
    check_encoders(encoders, opts.split)?;
    let mut used = Vec::new();
    let mut skipped = Vec::new();
    // per encoder: (grid, split) per used image
    let mut per_encoder: Vec<Vec<(PatchGrid, Split)>> = vec![Vec::new(); encoders.len()];
    let mut fallback_splits = 0u32;
    let (mut encode_time, mut decode_time) = (Duration::ZERO, Duration::ZERO);
    for image in images {
        let path = &image.path;
        let t = Instant::now();
        let decoded = preprocess::load_rgb(path).and_then(|img| {
            let thumb = thumbnail(&img)?;
            let map = attribution_for(opts.split, image)?;
            Ok((img, thumb, map))
        });
        decode_time += t.elapsed();
        let (img, thumb, map) = match decoded {
            Ok(v) => v,
            Err(error) => {
                on_event(Event::Skipped {
                    path,
                    error: &error,
                });
                skipped.push((path.clone(), error.report()));
                continue;
            }
        };
        let seed = opts.build.seed ^ (used.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut outs = Vec::with_capacity(encoders.len());
        let t = Instant::now();
        for enc in encoders.iter_mut() {
            outs.push(enc.encode_image(&img)?);
        }
        encode_time += t.elapsed();
        for (slot, out) in per_encoder.iter_mut().zip(outs) {
            let split = split_one(
                opts.split,
                &out.grid,
                out.saliency.as_ref(),
                map.as_ref(),
                seed,
            );
            fallback_splits += u32::from(split.fallback);
            slot.push((out.grid, split));
        }
        used.push(UsedImage {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            width: img.width(),
            height: img.height(),
            thumbnail: thumb,
        });
        on_event(Event::Used { path });
    }
    if used.is_empty() {
        return Err(Error::Invalid(format!(
            "no usable support images ({} given, {} skipped); nothing was written",
            images.len(),
            skipped.len()
        )));
    }
    let t = Instant::now();
    let mut out = Vec::with_capacity(encoders.len());
    for (enc, items) in encoders.iter().zip(&per_encoder) {
        let support: Vec<SupportFeatures<'_>> = items
            .iter()
            .map(|(grid, split)| SupportFeatures { grid, split })
            .collect();
        let prototypes = build_prototypes(&support, &opts.build).map_err(|e| {
            Error::Invalid(format!(
                "building prototypes with {}: {e}",
                enc.bundle().name()
            ))
        })?;
        out.push(EncoderPrototypes {
            fingerprint: enc.bundle().fingerprint().to_string(),
            name: enc.bundle().name().to_string(),
            dim: enc.dim(),
            prototypes,
        });
    }
    let patches = per_encoder.first().map_or((0, 0), |items| {
        items.iter().fold((0, 0), |(fg, bg), (_, split)| {
            (fg + split.fg_count() as u64, bg + split.bg_count() as u64)
        })
    });
    Ok(Learned {
        images: used,
        skipped,
        encoders: out,
        fallback_splits,
        encode_time,
        decode_time,
        pool_time: t.elapsed(),
        patches,
    })
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_pair_images_with_their_attribution_maps() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "000.png",
            "000.attribution.png",
            "001.jpg",
            ".hidden.png",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let images = list_images(dir.path()).unwrap();
        let names: Vec<_> = images
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["000.png", "001.jpg"]);
        let support = with_attribution_maps(images);
        assert_eq!(
            support[0].attribution.as_deref(),
            Some(dir.path().join("000.attribution.png").as_path())
        );
        assert_eq!(support[1].attribution, None);
    }
}
