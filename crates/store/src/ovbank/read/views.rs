//! What an open `.ovbank` file hands out: its classes, per-prototype meta,
//! zero-copy views of vectors, `ann` entries, and the report of `verify`.

use std::fmt;

use half::f16;
use ovdiff_core::codec::Reader;
use ovdiff_core::prototype::{Level, Side};

use super::super::format::{level_from_code, side_from_code, META_LEN};
use super::SectionInfo;
use crate::bank::{
    BuildStats, ClassEncoderEntry, ClassRecord, ClassRecordDraft, ClassSource, SupportImageInfo,
};

/// A class as stored in an `.ovbank` file: the bank's [`ClassRecord`] without
/// its bank-internal `build_id`. Leaf types are the bank's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvClass {
    /// Class name.
    pub name: String,
    /// True for *stuff* classes (only foreground prototypes).
    pub stuff: bool,
    /// Where the support images came from.
    pub source: ClassSource,
    /// Name of the foreground/background split method used.
    pub split_method: String,
    /// When the class was stored in the bank it was exported from, seconds since the epoch.
    pub created_unix: u64,
    /// Support images that produced prototypes.
    pub images_used: u32,
    /// Support images skipped.
    pub images_skipped: u32,
    /// Images whose split fell back to a simpler method.
    pub fallback_splits: u32,
    /// Per encoder, sorted by fingerprint: counts of prototypes.
    pub encoders: Vec<ClassEncoderEntry>,
    /// The support images.
    pub support: Vec<SupportImageInfo>,
    /// How the class was built, when recorded (format 2 `stats` section).
    pub stats: Option<BuildStats>,
}

impl OvClass {
    /// The file view of a bank record: drops `build_id`, sorts encoders by fingerprint.
    pub fn from_record(rec: &ClassRecord) -> OvClass {
        let mut encoders = rec.encoders.clone();
        encoders.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        OvClass {
            name: rec.name.clone(),
            stuff: rec.stuff,
            source: rec.source.clone(),
            split_method: rec.split_method.clone(),
            created_unix: rec.created_unix,
            images_used: rec.images_used,
            images_skipped: rec.images_skipped,
            fallback_splits: rec.fallback_splits,
            encoders,
            support: rec.support.clone(),
            stats: rec.stats.clone(),
        }
    }

    /// The bank record of this class (build id 0: files have none).
    pub fn to_record(&self) -> ClassRecord {
        ClassRecord {
            name: self.name.clone(),
            stuff: self.stuff,
            source: self.source.clone(),
            split_method: self.split_method.clone(),
            created_unix: self.created_unix,
            build_id: 0,
            images_used: self.images_used,
            images_skipped: self.images_skipped,
            fallback_splits: self.fallback_splits,
            encoders: self.encoders.clone(),
            support: self.support.clone(),
            stats: self.stats.clone(),
        }
    }

    /// The draft to store this class in a bank under `name`.
    pub fn to_draft(&self, name: &str) -> ClassRecordDraft {
        ClassRecordDraft {
            name: name.to_owned(),
            stuff: self.stuff,
            source: self.source.clone(),
            split_method: self.split_method.clone(),
            images_used: self.images_used,
            images_skipped: self.images_skipped,
            fallback_splits: self.fallback_splits,
            support: self.support.clone(),
            created_unix: Some(self.created_unix),
            stats: self.stats.clone(),
        }
    }
}

/// Kind and support of one prototype, without its vector and region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrototypeMeta {
    /// Pooling level.
    pub level: Level,
    /// Foreground or background.
    pub side: Side,
    /// Patches pooled into it.
    pub support: u32,
    /// Index of the support image that contributed most.
    pub image: u32,
}

/// A zero-copy view of one class × encoder block: the f16 vectors, in the
/// mapped file, and the per-prototype meta.
#[derive(Clone, Copy)]
pub struct VectorsView<'a> {
    pub(super) dim: usize,
    pub(super) vectors: &'a [f16],
    pub(super) meta: &'a [u8],
}

impl fmt::Debug for VectorsView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorsView")
            .field("len", &self.len())
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl<'a> VectorsView<'a> {
    /// Number of prototypes.
    pub fn len(&self) -> usize {
        self.meta.len() / META_LEN as usize
    }

    /// True when the block holds no prototype (never, in a valid file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All vectors, row-major: `len() × dim()` values.
    pub fn as_slice(&self) -> &'a [f16] {
        self.vectors
    }

    /// The vector of prototype `i`, if `i < len()`.
    pub fn row(&self, i: usize) -> Option<&'a [f16]> {
        self.vectors.get(i * self.dim..(i + 1) * self.dim)
    }

    /// The meta of prototype `i`, if `i < len()`.
    pub fn meta(&self, i: usize) -> Option<PrototypeMeta> {
        let m = self
            .meta
            .get(i * META_LEN as usize..(i + 1) * META_LEN as usize)?;
        // Validated when the file was opened.
        let mut r = Reader::new(m);
        let level = level_from_code(r.u8().ok()?)?;
        let side = side_from_code(r.u8().ok()?)?;
        r.take(2).ok()?; // reserved
        Some(PrototypeMeta {
            level,
            side,
            support: r.u32().ok()?,
            image: r.u32().ok()?,
        })
    }

    /// Every prototype's meta, in order.
    pub fn metas(&self) -> impl Iterator<Item = PrototypeMeta> + 'a {
        let this = *self;
        (0..this.len()).filter_map(move |i| this.meta(i))
    }
}

/// A prebuilt nearest-neighbour graph entry of the optional `ann` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnEntry {
    /// Fingerprint of the encoder whose prototypes the graph indexes.
    pub encoder_fingerprint: String,
    /// True when the blob is little-endian.
    pub little_endian: bool,
    /// Pointer width of the writer, in bits.
    pub pointer_width: u8,
    /// The ovdiff-bank version that wrote the blob.
    pub crate_version: String,
    /// The graph algorithm.
    pub algorithm: String,
    /// Absolute offset of the blob in the file.
    pub blob_offset: u64,
    /// Length of the blob.
    pub blob_length: u64,
}

impl AnnEntry {
    /// True when this build may use the blob as is: same endianness, pointer
    /// width and crate version. Otherwise the graph must be rebuilt.
    pub fn matches_this_build(&self) -> bool {
        self.little_endian == cfg!(target_endian = "little")
            && u32::from(self.pointer_width) == usize::BITS
            && self.crate_version == crate::bank::TOOL_VERSION
    }
}

/// What [`OvBankFile::verify`](super::OvBankFile::verify) checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Length of the file.
    pub file_len: u64,
    /// The sections, all with matching checksums.
    pub sections: Vec<SectionInfo>,
    /// Number of encoders.
    pub encoders: usize,
    /// Number of classes.
    pub classes: usize,
    /// Number of class × encoder blocks.
    pub blocks: usize,
    /// Number of prototypes (vectors and regions checked).
    pub prototypes: u64,
    /// Number of thumbnails.
    pub thumbnails: u64,
    /// Total thumbnail bytes.
    pub thumbnail_bytes: u64,
    /// Number of `ann` entries (0 when the section is absent).
    pub ann_entries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_meta_decodes_records() {
        let meta = [2u8, 1, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0];
        let vectors = [f16::from_f32(0.5), f16::from_f32(-1.0)];
        let v = VectorsView {
            dim: 2,
            vectors: &vectors,
            meta: &meta,
        };
        assert_eq!(v.len(), 1);
        assert_eq!(v.row(0).unwrap()[1].to_f32(), -1.0);
        assert!(v.row(1).is_none());
        assert_eq!(
            v.meta(0).unwrap(),
            PrototypeMeta {
                level: Level::Part,
                side: Side::Background,
                support: 7,
                image: 3
            }
        );
        assert_eq!(v.metas().count(), 1);
    }
}
