//! Reading `.ovbank` files: [`OvBankFile`] maps a file, validates its header and metadata, and serves queries in place.
//!
//! Opening parses the header, the section table and the three metadata
//! sections (`encoders`, `classes`, `index`), checking their checksums and
//! every bound, and never touches the bulk sections (`prototypes`,
//! `provenance`, `thumbnails`, `ann`). After a successful open, every offset
//! an accessor follows has been checked, so accessors only fail on data they
//! parse themselves (region records). [`OvBankFile::verify`] checks the rest.

use std::fmt;
use std::fs::File;
use std::path::Path;

use half::f16;

use super::error::{OvBankError, Result};
use super::format::{
    self, checksum, header_len, level_from_code, side_from_code, Cursor, SectionKind, ALIGN,
    BLOCK_ENTRY_LEN, ELEMENT_F16, END_MAGIC, FOOTER_LEN, HEADER_FIXED_LEN, INDEX_HEADER_LEN, MAGIC,
    MAX_SECTIONS, META_LEN, MIN_ANN_ENTRY_LEN, MIN_CLASS_LEN, MIN_ENCODER_LEN, MIN_PARAM_LEN,
    MIN_SUPPORT_LEN, OVBANK_FORMAT_VERSION, OVBANK_OLDEST_SUPPORTED, REQUIRED_FLAG_MASK,
    SECTION_ENTRY_LEN, SECTION_FLAG_REQUIRED,
};
use crate::bank::{
    validate_class_name, BuildStats, ClassEncoderEntry, ClassRecord, ClassRecordDraft, ClassSource,
    EncoderInfo, PrototypeCounts, SupportImageInfo, DTYPE_F16,
};
use ovdiff_core::prototype::{Level, Prototype, Provenance, Side};

/// The fixed header and footer fields of an `.ovbank` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version the file was written with.
    pub format_version: u32,
    /// Oldest reader format version that can read the file.
    pub oldest_reader_version: u32,
    /// Feature flags (0 in v1).
    pub flags: u64,
    /// Number of sections in the table.
    pub section_count: u32,
    /// Length of the header, section table and header checksum included.
    pub header_len: u64,
    /// Stored header checksum (xxh3-64).
    pub header_checksum: u64,
    /// Length of the file, from the footer (equal to the real length once opened).
    pub file_len: u64,
    /// Stored whole-file checksum from the footer (checked by `verify` only).
    pub file_checksum: u64,
}

/// One entry of the section table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionInfo {
    /// The section's kind.
    pub kind: SectionKind,
    /// Its flags ([`format::SECTION_FLAG_REQUIRED`]).
    pub flags: u32,
    /// Absolute offset, a multiple of 64.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Stored checksum (xxh3-64 of the section's bytes).
    pub checksum: u64,
}

impl SectionInfo {
    /// The section's name (`unknown` for kinds this build does not know).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

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
    dim: usize,
    vectors: &'a [f16],
    meta: &'a [u8],
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
        Some(PrototypeMeta {
            level: level_from_code(m[0])?,
            side: side_from_code(m[1])?,
            support: u32::from_le_bytes([m[4], m[5], m[6], m[7]]),
            image: u32::from_le_bytes([m[8], m[9], m[10], m[11]]),
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

/// What [`OvBankFile::verify`] checked.
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

/// A parsed `index` block entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub class: u32,
    pub encoder: u32,
    pub count: u32,
    pub dim: u32,
    pub vectors_offset: u64,
    pub first_meta: u64,
    pub provenance_offset: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ThumbLoc {
    offset: u64,
    length: u64,
}

enum Storage {
    Mapped(memmap2::Mmap),
    /// 8-byte aligned copy of caller-provided bytes.
    Owned {
        words: Vec<u64>,
        len: usize,
    },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned { words, len } => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// An opened `.ovbank` file, memory-mapped (or held in memory), with its
/// metadata parsed and validated. Cheap to share between threads.
pub struct OvBankFile {
    data: Storage,
    header: Header,
    sections: Vec<SectionInfo>,
    prototypes_sec: SectionInfo,
    provenance_sec: SectionInfo,
    thumbnails_sec: SectionInfo,
    ann_sec: Option<SectionInfo>,
    encoders: Vec<EncoderInfo>,
    encoder_fps: Vec<[u8; 32]>,
    classes: Vec<OvClass>,
    thumbs: Vec<Vec<ThumbLoc>>,
    blocks: Vec<Block>,
    /// Per class: its range in `blocks`.
    class_blocks: Vec<(usize, usize)>,
    /// Absolute offset of meta record 0.
    meta_base: u64,
}

impl fmt::Debug for OvBankFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvBankFile")
            .field("header", &self.header)
            .field("encoders", &self.encoders.len())
            .field("classes", &self.classes.len())
            .finish_non_exhaustive()
    }
}

impl OvBankFile {
    /// Opens and memory-maps `path`, validating magic, versions, header
    /// checksum, section table, footer, and the metadata sections.
    ///
    /// Cost: proportional to the metadata (names, block table, per-prototype
    /// meta), not to the vectors, regions or thumbnails, which are not read.
    pub fn open(path: &Path) -> Result<OvBankFile> {
        let file = File::open(path).map_err(|e| OvBankError::io(path, "open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| OvBankError::io(path, "read the metadata of", e))?;
        if !meta.is_file() {
            return Err(OvBankError::NotOvBank {
                reason: format!("{} is not a regular file", path.display()),
            });
        }
        let len = meta.len();
        if len == 0 {
            return Err(OvBankError::Empty);
        }
        if usize::try_from(len).is_err() {
            return Err(OvBankError::NotOvBank {
                reason: format!("it is {len} bytes long, too large to map on this platform"),
            });
        }
        // SAFETY: the map is read-only and private to this handle. Writers of
        // `.ovbank` files never modify a file in place (they write a temporary
        // file and rename it), so the mapped bytes do not change under us
        // unless another program truncates or rewrites the file in place.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| OvBankError::io(path, "memory-map", e))?;
        OvBankFile::parse(Storage::Mapped(map))
    }

    /// Opens an `.ovbank` file held in memory (e.g. for fuzzing). The bytes
    /// are copied once into an aligned buffer.
    pub fn from_bytes(data: Vec<u8>) -> Result<OvBankFile> {
        let len = data.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len].copy_from_slice(&data);
        drop(data);
        OvBankFile::parse(Storage::Owned { words, len })
    }

    fn parse(data: Storage) -> Result<OvBankFile> {
        let bytes = data.bytes();
        let (header, sections) = parse_header(bytes)?;
        let find = |kind: SectionKind| sections.iter().copied().find(|s| s.kind == kind);
        // Required kinds are present: checked by parse_header.
        let sec = |kind| find(kind).ok_or_else(|| missing(kind));
        let enc_sec = sec(SectionKind::Encoders)?;
        let cls_sec = sec(SectionKind::Classes)?;
        let idx_sec = sec(SectionKind::Index)?;
        let prototypes_sec = sec(SectionKind::Prototypes)?;
        let provenance_sec = sec(SectionKind::Provenance)?;
        let thumbnails_sec = sec(SectionKind::Thumbnails)?;
        let ann_sec = find(SectionKind::Ann);
        let stats_sec = find(SectionKind::Stats);

        let (encoders, encoder_fps) = parse_encoders(checked_section(bytes, &enc_sec)?, &enc_sec)?;
        let (mut classes, thumbs) = parse_classes(
            checked_section(bytes, &cls_sec)?,
            &cls_sec,
            thumbnails_sec.length,
        )?;
        let index = parse_index(
            checked_section(bytes, &idx_sec)?,
            &idx_sec,
            IndexContext {
                encoders: &encoders,
                classes: &classes,
                prototypes_len: prototypes_sec.length,
                provenance_len: provenance_sec.length,
            },
        )?;
        if let Some(st) = stats_sec {
            let stats = parse_stats(checked_section(bytes, &st)?, &st, classes.len())?;
            for (class, s) in classes.iter_mut().zip(stats) {
                class.stats = s;
            }
        }
        for (class, &(start, end)) in classes.iter_mut().zip(&index.class_blocks) {
            class.encoders = index.blocks[start..end]
                .iter()
                .zip(&index.counts[start..end])
                .map(|(b, c)| ClassEncoderEntry {
                    fingerprint: encoders[b.encoder as usize].fingerprint.clone(),
                    counts: *c,
                    prototype_count: b.count,
                })
                .collect();
        }
        Ok(OvBankFile {
            header,
            sections,
            prototypes_sec,
            provenance_sec,
            thumbnails_sec,
            ann_sec,
            encoders,
            encoder_fps,
            classes,
            thumbs,
            blocks: index.blocks,
            class_blocks: index.class_blocks,
            meta_base: idx_sec.offset + INDEX_HEADER_LEN + BLOCK_ENTRY_LEN * index.block_count,
            data,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The whole file's bytes (mapped, or held in memory). Views such as
    /// [`OvBankFile::vectors`] point into it.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }

    /// The header and footer fields.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The section table, in table (kind) order.
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// The encoders, sorted by fingerprint.
    pub fn encoders(&self) -> &[EncoderInfo] {
        &self.encoders
    }

    /// The encoder with `fingerprint`, if the file has it.
    pub fn encoder(&self, fingerprint: &str) -> Option<&EncoderInfo> {
        self.encoder_index(fingerprint).map(|i| &self.encoders[i])
    }

    /// The classes, sorted by name (byte order).
    pub fn classes(&self) -> &[OvClass] {
        &self.classes
    }

    /// The class called `name`, if any.
    pub fn class(&self, name: &str) -> Option<&OvClass> {
        self.class_index(name).map(|i| &self.classes[i])
    }

    fn class_index(&self, name: &str) -> Option<usize> {
        self.classes
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
    }

    fn encoder_index(&self, fingerprint: &str) -> Option<usize> {
        let raw = format::fingerprint_bytes(fingerprint)?;
        self.encoder_fps.binary_search(&raw).ok()
    }

    /// The block of `class` × `encoder_fingerprint`.
    pub(crate) fn block(&self, class: &str, encoder_fingerprint: &str) -> Result<&Block> {
        let ci = self
            .class_index(class)
            .ok_or_else(|| OvBankError::ClassNotFound {
                name: class.to_owned(),
            })?;
        let not_in = || OvBankError::EncoderNotInClass {
            class: class.to_owned(),
            fingerprint: encoder_fingerprint.to_owned(),
        };
        let ei = self.encoder_index(encoder_fingerprint).ok_or_else(not_in)? as u32;
        let (start, end) = self.class_blocks[ci];
        let blocks = &self.blocks[start..end];
        blocks
            .binary_search_by_key(&ei, |b| b.encoder)
            .map(|i| &blocks[i])
            .map_err(|_| not_in())
    }

    /// Raw little-endian f16 bytes of a block's vectors (bounds checked at open).
    pub(crate) fn block_vector_bytes(&self, b: &Block) -> &[u8] {
        let start = (self.prototypes_sec.offset + b.vectors_offset) as usize;
        let len = 2 * b.count as usize * b.dim as usize;
        &self.bytes()[start..start + len]
    }

    /// Raw meta records of a block (bounds checked at open).
    pub(crate) fn block_meta_bytes(&self, b: &Block) -> &[u8] {
        let start = (self.meta_base + b.first_meta * META_LEN) as usize;
        &self.bytes()[start..start + b.count as usize * META_LEN as usize]
    }

    /// Raw region records of a block, parsed and bounds-checked.
    pub(crate) fn block_region_bytes(&self, b: &Block) -> Result<&[u8]> {
        let sec = &self.provenance_sec;
        let all = &self.bytes()[sec.offset as usize..(sec.offset + sec.length) as usize];
        let from = b.provenance_offset as usize; // <= length, checked at open
        let mut c = Cursor::new(&all[from..], "provenance", sec.offset + b.provenance_offset);
        for _ in 0..b.count {
            skip_region(&mut c)?;
        }
        let used = (c.offset() - sec.offset - b.provenance_offset) as usize;
        Ok(&all[from..from + used])
    }

    /// The prototypes of `class` for the encoder with `encoder_fingerprint`,
    /// decoded to f32 (exactly: every f16 is an f32), with their regions.
    pub fn prototypes(&self, class: &str, encoder_fingerprint: &str) -> Result<Vec<Prototype>> {
        let b = *self.block(class, encoder_fingerprint)?;
        let vectors = self.block_vector_bytes(&b);
        let meta = self.block_meta_bytes(&b);
        let sec = &self.provenance_sec;
        let all = &self.bytes()[sec.offset as usize..(sec.offset + sec.length) as usize];
        let mut regions = Cursor::new(
            &all[b.provenance_offset as usize..],
            "provenance",
            sec.offset + b.provenance_offset,
        );
        let dim = b.dim as usize;
        let mut out = Vec::with_capacity(b.count as usize);
        for (i, m) in meta.chunks_exact(META_LEN as usize).enumerate() {
            let image = u32::from_le_bytes([m[8], m[9], m[10], m[11]]);
            let provenance = read_region(&mut regions, image)?;
            let v = &vectors[i * 2 * dim..(i + 1) * 2 * dim];
            out.push(Prototype {
                // Codes validated at open.
                level: level_from_code(m[0]).unwrap_or(Level::Class),
                side: side_from_code(m[1]).unwrap_or(Side::Foreground),
                vector: v
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                support: u32::from_le_bytes([m[4], m[5], m[6], m[7]]),
                provenance,
            });
        }
        Ok(out)
    }

    /// A zero-copy view of the f16 vectors of `class` for the encoder with
    /// `encoder_fingerprint`, with their per-prototype meta. Needs a
    /// little-endian host ([`OvBankError::BigEndianHost`] otherwise).
    pub fn vectors(&self, class: &str, encoder_fingerprint: &str) -> Result<VectorsView<'_>> {
        let b = *self.block(class, encoder_fingerprint)?;
        if cfg!(target_endian = "big") {
            return Err(OvBankError::BigEndianHost);
        }
        let bytes = self.block_vector_bytes(&b);
        let vectors: &[f16] =
            bytemuck::try_cast_slice(bytes).map_err(|e| OvBankError::Malformed {
                section: "prototypes",
                offset: self.prototypes_sec.offset + b.vectors_offset,
                reason: format!("cannot view the block as f16: {e}"),
            })?;
        Ok(VectorsView {
            dim: b.dim as usize,
            vectors,
            meta: self.block_meta_bytes(&b),
        })
    }

    /// The JPEG thumbnail of support image `image` of `class`, if the file has one.
    pub fn thumbnail(&self, class: &str, image: u32) -> Option<&[u8]> {
        let loc = *self
            .thumbs
            .get(self.class_index(class)?)?
            .get(image as usize)?;
        if loc.length == 0 {
            return None;
        }
        let start = (self.thumbnails_sec.offset + loc.offset) as usize;
        self.bytes().get(start..start + loc.length as usize)
    }

    /// The entries of the optional `ann` section (empty when absent).
    pub fn ann_entries(&self) -> Result<Vec<AnnEntry>> {
        let Some(sec) = self.ann_sec else {
            return Ok(Vec::new());
        };
        let bytes = &self.bytes()[sec.offset as usize..(sec.offset + sec.length) as usize];
        parse_ann(bytes, &sec, &self.encoders)
    }

    /// The blob of an `ann` entry, if it lies within the file.
    pub fn ann_blob(&self, entry: &AnnEntry) -> Option<&[u8]> {
        let start = usize::try_from(entry.blob_offset).ok()?;
        let len = usize::try_from(entry.blob_length).ok()?;
        self.bytes().get(start..start.checked_add(len)?)
    }

    /// Checks every section checksum, the whole-file checksum, every region
    /// record, that every vector is finite, and the `ann` table.
    pub fn verify(&self) -> Result<VerifyReport> {
        let bytes = self.bytes();
        for s in &self.sections {
            checked_section(bytes, s)?;
        }
        let body = self.header.file_len - FOOTER_LEN;
        let computed = checksum(&bytes[..body as usize]);
        if computed != self.header.file_checksum {
            return Err(OvBankError::FileChecksum {
                length: body,
                stored: self.header.file_checksum,
                computed,
            });
        }
        let (mut prototypes, mut next_regions) = (0u64, 0u64);
        for b in &self.blocks {
            let v = self.block_vector_bytes(b);
            if let Some(i) = v
                .chunks_exact(2)
                .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00)
            {
                return Err(OvBankError::Malformed {
                    section: "prototypes",
                    offset: self.prototypes_sec.offset + b.vectors_offset + 2 * i as u64,
                    reason: format!(
                        "prototype {} of class {:?} holds a non-finite value",
                        i / b.dim as usize,
                        self.classes[b.class as usize].name
                    ),
                });
            }
            if b.provenance_offset != next_regions {
                return Err(OvBankError::Malformed {
                    section: "provenance",
                    offset: self.provenance_sec.offset + b.provenance_offset,
                    reason: format!(
                        "the regions of class {:?} start at {} instead of {next_regions}, \
                         the end of the previous block's",
                        self.classes[b.class as usize].name, b.provenance_offset
                    ),
                });
            }
            next_regions += self.block_region_bytes(b)?.len() as u64;
            prototypes += u64::from(b.count);
        }
        let thumbs = self.thumbs.iter().flatten().filter(|t| t.length > 0);
        Ok(VerifyReport {
            file_len: self.header.file_len,
            sections: self.sections.clone(),
            encoders: self.encoders.len(),
            classes: self.classes.len(),
            blocks: self.blocks.len(),
            prototypes,
            thumbnails: thumbs.clone().count() as u64,
            thumbnail_bytes: thumbs.map(|t| t.length).sum(),
            ann_entries: self.ann_entries()?.len(),
        })
    }
}

fn missing(kind: SectionKind) -> OvBankError {
    OvBankError::BadHeader {
        offset: HEADER_FIXED_LEN,
        reason: format!(
            "the section table lacks the required section `{}`",
            kind.name()
        ),
    }
}

/// The bytes of a section after checking its checksum.
fn checked_section<'a>(bytes: &'a [u8], s: &SectionInfo) -> Result<&'a [u8]> {
    // Bounds were checked by parse_header.
    let data = &bytes[s.offset as usize..(s.offset + s.length) as usize];
    let computed = checksum(data);
    if computed != s.checksum {
        return Err(OvBankError::SectionChecksum {
            section: s.name(),
            offset: s.offset,
            length: s.length,
            stored: s.checksum,
            computed,
        });
    }
    Ok(data)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses and checks the header, footer and section table.
fn parse_header(bytes: &[u8]) -> Result<(Header, Vec<SectionInfo>)> {
    let len = bytes.len() as u64;
    if len == 0 {
        return Err(OvBankError::Empty);
    }
    let head = &bytes[..bytes.len().min(8)];
    if head != &MAGIC[..head.len()] || head.len() < 8 {
        if head.len() < 8 && head == &MAGIC[..head.len()] {
            return Err(OvBankError::Truncated {
                what: "the magic",
                needed: 8,
                actual: len,
            });
        }
        // `OVB` near the start: the magic, with its binary bytes altered.
        if head.windows(3).take(4).any(|w| w == b"OVB") {
            return Err(OvBankError::Mangled);
        }
        return Err(OvBankError::NotOvBank {
            reason: format!("it starts with {}", hex::encode(head)),
        });
    }
    if len < 16 {
        return Err(OvBankError::Truncated {
            what: "the version fields",
            needed: 16,
            actual: len,
        });
    }
    let version = u32_at(bytes, 8);
    let oldest = u32_at(bytes, 12);
    if oldest == 0 || oldest > version {
        return Err(OvBankError::BadHeader {
            offset: 12,
            reason: format!(
                "oldest reader version {oldest} is not between 1 and the format version {version}"
            ),
        });
    }
    if version < OVBANK_OLDEST_SUPPORTED {
        return Err(OvBankError::TooOld {
            found: version,
            oldest_supported: OVBANK_OLDEST_SUPPORTED,
        });
    }
    if oldest > OVBANK_FORMAT_VERSION {
        return Err(OvBankError::TooNew {
            found: version,
            oldest_reader: oldest,
            supported: OVBANK_FORMAT_VERSION,
        });
    }
    if len < HEADER_FIXED_LEN {
        return Err(OvBankError::Truncated {
            what: "the header",
            needed: HEADER_FIXED_LEN,
            actual: len,
        });
    }
    let flags = u64_at(bytes, 16);
    let count = u32_at(bytes, 24);
    if count == 0 || count > MAX_SECTIONS {
        return Err(OvBankError::BadHeader {
            offset: 24,
            reason: format!("section count {count} is not between 1 and {MAX_SECTIONS}"),
        });
    }
    if u32_at(bytes, 28) != 0 {
        return Err(OvBankError::BadHeader {
            offset: 28,
            reason: "reserved bytes are not zero".into(),
        });
    }
    let hlen = header_len(count);
    if hlen + FOOTER_LEN > len {
        return Err(OvBankError::Truncated {
            what: "the header and footer",
            needed: hlen + FOOTER_LEN,
            actual: len,
        });
    }
    let table_end = (hlen - 8) as usize;
    let stored = u64_at(bytes, table_end);
    let computed = checksum(&bytes[..table_end]);
    if stored != computed {
        return Err(OvBankError::HeaderChecksum {
            length: table_end as u64,
            stored,
            computed,
        });
    }
    let footer_at = (len - FOOTER_LEN) as usize;
    if bytes[footer_at + 16..] != END_MAGIC {
        return Err(OvBankError::BadFooter {
            offset: footer_at as u64,
            reason: "no end marker: the file is truncated or was not completely written".into(),
        });
    }
    let file_len = u64_at(bytes, footer_at);
    if file_len != len {
        return Err(OvBankError::BadFooter {
            offset: footer_at as u64,
            reason: format!(
                "it records a file of {file_len} bytes but the file has {len}: it was truncated or extended"
            ),
        });
    }
    let unknown = flags & REQUIRED_FLAG_MASK;
    if unknown != 0 {
        return Err(OvBankError::UnsupportedFeatures { flags: unknown });
    }
    let header = Header {
        format_version: version,
        oldest_reader_version: oldest,
        flags,
        section_count: count,
        header_len: hlen,
        header_checksum: stored,
        file_len: len,
        file_checksum: u64_at(bytes, footer_at + 8),
    };

    let mut sections = Vec::with_capacity(count as usize);
    for i in 0..count as u64 {
        let at = (HEADER_FIXED_LEN + i * SECTION_ENTRY_LEN) as usize;
        let bad = |reason: String| OvBankError::BadHeader {
            offset: at as u64,
            reason: format!("section table entry {i}: {reason}"),
        };
        let code = u32_at(bytes, at);
        let s = SectionInfo {
            kind: SectionKind::from_code(code),
            flags: u32_at(bytes, at + 4),
            offset: u64_at(bytes, at + 8),
            length: u64_at(bytes, at + 16),
            checksum: u64_at(bytes, at + 24),
        };
        if let Some(prev) = sections.last().map(|p: &SectionInfo| p.kind.code()) {
            if code <= prev {
                return Err(bad(format!(
                    "kind {code} follows kind {prev}; kinds must be strictly increasing"
                )));
            }
        }
        if s.flags & !SECTION_FLAG_REQUIRED != 0 {
            return Err(bad(format!("unknown flags {:#x}", s.flags)));
        }
        if matches!(s.kind, SectionKind::Unknown(_)) && s.flags & SECTION_FLAG_REQUIRED != 0 {
            return Err(bad(format!(
                "required section kind {code} is unknown to this ovdiff-bank; upgrade ovdiff-bank"
            )));
        }
        if !s.offset.is_multiple_of(ALIGN) {
            return Err(bad(format!(
                "section `{}` offset {} is not a multiple of {ALIGN}",
                s.name(),
                s.offset
            )));
        }
        let end = s.offset.checked_add(s.length);
        if s.offset < hlen || end.is_none_or(|e| e > len - FOOTER_LEN) {
            return Err(bad(format!(
                "section `{}` (offset {}, {} bytes) lies outside {hlen} .. {}",
                s.name(),
                s.offset,
                s.length,
                len - FOOTER_LEN
            )));
        }
        sections.push(s);
    }
    let mut by_offset: Vec<&SectionInfo> = sections.iter().filter(|s| s.length > 0).collect();
    by_offset.sort_by_key(|s| s.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].length > w[1].offset {
            return Err(OvBankError::BadHeader {
                offset: HEADER_FIXED_LEN,
                reason: format!("sections `{}` and `{}` overlap", w[0].name(), w[1].name()),
            });
        }
    }
    for kind in SectionKind::REQUIRED {
        if !sections.iter().any(|s| s.kind == kind) {
            return Err(missing(kind));
        }
    }
    Ok((header, sections))
}

/// Parses the optional `stats` section (format 2): one record per class, in
/// class order.
fn parse_stats(bytes: &[u8], sec: &SectionInfo, classes: usize) -> Result<Vec<Option<BuildStats>>> {
    let mut c = Cursor::new(bytes, "stats", sec.offset);
    let count = c.u32("the record count")?;
    if count as usize != classes {
        return Err(c.err(format!("it has {count} records for {classes} classes")));
    }
    if c.u32("reserved bytes")? != 0 {
        return Err(c.err("reserved bytes are not zero"));
    }
    let n = c.count_fits(u64::from(count), 1, "the records")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match c.u8("a presence flag")? {
            0 => None,
            1 => {
                let tool_version = c.string("a tool version")?;
                let mut v = [0u64; 7];
                for x in &mut v {
                    *x = c.u64("a statistic")?;
                }
                Some(BuildStats {
                    tool_version,
                    total_ms: v[0],
                    sample_ms: v[1],
                    decode_ms: v[2],
                    encode_ms: v[3],
                    pool_ms: v[4],
                    fg_patches: v[5],
                    bg_patches: v[6],
                })
            }
            other => return Err(c.err(format!("presence flag {other} is not 0 or 1"))),
        });
    }
    c.finish()?;
    Ok(out)
}

fn parse_encoders(bytes: &[u8], sec: &SectionInfo) -> Result<(Vec<EncoderInfo>, Vec<[u8; 32]>)> {
    let mut c = Cursor::new(bytes, "encoders", sec.offset);
    let count = c.u32("the encoder count")?;
    c.reserved(4)?;
    let cap = c.count_fits(count.into(), MIN_ENCODER_LEN, "encoders")?;
    let mut infos = Vec::with_capacity(cap);
    let mut fps: Vec<[u8; 32]> = Vec::with_capacity(cap);
    for _ in 0..count {
        let at = c.offset();
        let fp = c.bytes32("a fingerprint")?;
        let dim = c.u32("a dimension")?;
        let elem = c.u8("an element type")?;
        c.reserved(3)?;
        let name = c.string("an encoder name")?;
        let bad = |reason: String| OvBankError::Malformed {
            section: "encoders",
            offset: at,
            reason,
        };
        if fps.last().is_some_and(|p| *p >= fp) {
            return Err(bad("encoders are not sorted by fingerprint".into()));
        }
        if dim == 0 || dim > u32::from(u16::MAX) {
            return Err(bad(format!("dimension {dim} is not between 1 and 65535")));
        }
        if elem != ELEMENT_F16 {
            return Err(bad(format!("unknown element type {elem}")));
        }
        if name.is_empty() {
            return Err(bad("an encoder name is empty".into()));
        }
        infos.push(EncoderInfo {
            fingerprint: hex::encode(fp),
            name,
            dim,
            dtype: DTYPE_F16.into(),
        });
        fps.push(fp);
    }
    c.finish()?;
    Ok((infos, fps))
}

fn parse_classes(
    bytes: &[u8],
    sec: &SectionInfo,
    thumbnails_len: u64,
) -> Result<(Vec<OvClass>, Vec<Vec<ThumbLoc>>)> {
    let mut c = Cursor::new(bytes, "classes", sec.offset);
    let count = c.u32("the class count")?;
    c.reserved(4)?;
    let cap = c.count_fits(count.into(), MIN_CLASS_LEN, "classes")?;
    let mut classes: Vec<OvClass> = Vec::with_capacity(cap);
    let mut thumbs = Vec::with_capacity(cap);
    for _ in 0..count {
        let at = c.offset();
        let name = c.string("a class name")?;
        if let Err(problem) = validate_class_name(&name) {
            return Err(c.err(format!("invalid class name {name:?}: {problem}")));
        }
        if classes.last().is_some_and(|p| p.name >= name) {
            return Err(OvBankError::Malformed {
                section: "classes",
                offset: at,
                reason: format!("class {name:?} is out of order or repeated"),
            });
        }
        let stuff = match c.u8("the stuff flag")? {
            0 => false,
            1 => true,
            v => return Err(c.err(format!("stuff flag {v} is neither 0 nor 1"))),
        };
        let source = match c.u8("the source tag")? {
            0 => ClassSource::Images {
                dir: c.string("a directory")?,
            },
            1 => {
                let fingerprint = c.string("a generator fingerprint")?;
                let n = c.u32("the parameter count")?;
                let cap = c.count_fits(n.into(), MIN_PARAM_LEN, "parameters")?;
                let mut params = Vec::with_capacity(cap);
                for _ in 0..n {
                    params.push((c.string("a parameter key")?, c.string("a parameter value")?));
                }
                ClassSource::Generator {
                    fingerprint,
                    params,
                }
            }
            t => return Err(c.err(format!("unknown source tag {t}"))),
        };
        let split_method = c.string("a split method")?;
        let created_unix = c.u64("a creation time")?;
        let images_used = c.u32("images_used")?;
        let images_skipped = c.u32("images_skipped")?;
        let fallback_splits = c.u32("fallback_splits")?;
        let n = c.u32("the support image count")?;
        let cap = c.count_fits(n.into(), MIN_SUPPORT_LEN, "support images")?;
        let mut support = Vec::with_capacity(cap);
        let mut locs = Vec::with_capacity(cap);
        for _ in 0..n {
            let name = c.string("a support image name")?;
            let width = c.u32("a width")?;
            let height = c.u32("a height")?;
            let at = c.offset();
            let offset = c.u64("a thumbnail offset")?;
            let length = c.u64("a thumbnail length")?;
            let ok = if length == 0 {
                offset == 0
            } else {
                offset
                    .checked_add(length)
                    .is_some_and(|e| e <= thumbnails_len)
            };
            if !ok {
                return Err(OvBankError::Malformed {
                    section: "classes",
                    offset: at,
                    reason: format!(
                        "thumbnail (offset {offset}, {length} bytes) lies outside the \
                         {thumbnails_len}-byte thumbnails section"
                    ),
                });
            }
            support.push(SupportImageInfo {
                name,
                width,
                height,
            });
            locs.push(ThumbLoc { offset, length });
        }
        classes.push(OvClass {
            name,
            stuff,
            source,
            split_method,
            created_unix,
            images_used,
            images_skipped,
            fallback_splits,
            encoders: Vec::new(),
            support,
            stats: None,
        });
        thumbs.push(locs);
    }
    c.finish()?;
    Ok((classes, thumbs))
}

struct IndexContext<'a> {
    encoders: &'a [EncoderInfo],
    classes: &'a [OvClass],
    prototypes_len: u64,
    provenance_len: u64,
}

struct ParsedIndex {
    block_count: u64,
    blocks: Vec<Block>,
    counts: Vec<PrototypeCounts>,
    class_blocks: Vec<(usize, usize)>,
}

fn parse_index(bytes: &[u8], sec: &SectionInfo, cx: IndexContext<'_>) -> Result<ParsedIndex> {
    let mut c = Cursor::new(bytes, "index", sec.offset);
    let block_count = u64::from(c.u32("the block count")?);
    c.reserved(4)?;
    let meta_count = c.u64("the meta count")?;
    let expected = block_count
        .checked_mul(BLOCK_ENTRY_LEN)
        .zip(meta_count.checked_mul(META_LEN))
        .and_then(|(b, m)| b.checked_add(m)?.checked_add(INDEX_HEADER_LEN));
    if expected != Some(sec.length) {
        return Err(OvBankError::Malformed {
            section: "index",
            offset: sec.offset,
            reason: format!(
                "{block_count} blocks and {meta_count} meta records do not make {} bytes",
                sec.length
            ),
        });
    }
    let meta_start = (INDEX_HEADER_LEN + BLOCK_ENTRY_LEN * block_count) as usize;
    let mut blocks: Vec<Block> = Vec::with_capacity(block_count as usize);
    let mut counts = Vec::with_capacity(block_count as usize);
    let mut class_blocks = vec![(0usize, 0usize); cx.classes.len()];
    let (mut next_vectors, mut next_meta, mut next_regions) = (0u64, 0u64, 0u64);
    for i in 0..block_count as usize {
        let at = c.offset();
        let bad = |reason: String| OvBankError::Malformed {
            section: "index",
            offset: at,
            reason: format!("block {i}: {reason}"),
        };
        let b = Block {
            class: c.u32("a class number")?,
            encoder: c.u32("an encoder number")?,
            count: c.u32("a prototype count")?,
            dim: c.u32("a dimension")?,
            vectors_offset: 0,
            first_meta: 0,
            provenance_offset: 0,
        };
        let mut kinds = [0u32; 6];
        for k in &mut kinds {
            *k = c.u32("a per-kind count")?;
        }
        let b = Block {
            vectors_offset: c.u64("a vectors offset")?,
            first_meta: c.u64("a first meta index")?,
            provenance_offset: c.u64("a provenance offset")?,
            ..b
        };
        let Some(class) = cx.classes.get(b.class as usize) else {
            return Err(bad(format!("class number {} is out of range", b.class)));
        };
        let Some(encoder) = cx.encoders.get(b.encoder as usize) else {
            return Err(bad(format!("encoder number {} is out of range", b.encoder)));
        };
        if blocks
            .last()
            .is_some_and(|p| (p.class, p.encoder) >= (b.class, b.encoder))
        {
            return Err(bad("blocks are not sorted by (class, encoder)".into()));
        }
        if b.count == 0 {
            return Err(bad("it holds no prototype".into()));
        }
        if b.dim != encoder.dim {
            return Err(bad(format!(
                "dimension {} differs from its encoder's {}",
                b.dim, encoder.dim
            )));
        }
        if kinds.iter().map(|&k| u64::from(k)).sum::<u64>() != u64::from(b.count) {
            return Err(bad(format!("per-kind counts do not add up to {}", b.count)));
        }
        let vbytes = 2 * u64::from(b.count) * u64::from(b.dim);
        if !b.vectors_offset.is_multiple_of(ALIGN)
            || b.vectors_offset
                .checked_add(vbytes)
                .is_none_or(|e| e > cx.prototypes_len)
        {
            return Err(bad(format!(
                "vectors (offset {}, {vbytes} bytes) are misaligned or outside the \
                 {}-byte prototypes section",
                b.vectors_offset, cx.prototypes_len
            )));
        }
        // Blocks occupy disjoint, ascending ranges, so that the work of
        // opening and verifying stays proportional to the file's size.
        if b.vectors_offset < next_vectors {
            return Err(bad(format!(
                "vectors at offset {} overlap the previous block's (which end at {next_vectors})",
                b.vectors_offset
            )));
        }
        next_vectors = b.vectors_offset + vbytes;
        if b.first_meta != next_meta
            || next_meta
                .checked_add(u64::from(b.count))
                .is_none_or(|e| e > meta_count)
        {
            return Err(bad(format!(
                "meta records {} .. +{} are not the next {} of the {meta_count} present \
                 (expected to start at {next_meta})",
                b.first_meta, b.count, b.count
            )));
        }
        next_meta += u64::from(b.count);
        if b.provenance_offset < next_regions
            || b.provenance_offset
                .checked_add(4 * u64::from(b.count))
                .is_none_or(|e| e > cx.provenance_len)
        {
            return Err(bad(format!(
                "regions at offset {} overlap the previous block's or cannot fit in the \
                 {}-byte provenance section",
                b.provenance_offset, cx.provenance_len
            )));
        }
        next_regions = b.provenance_offset + 4 * u64::from(b.count);
        // The block's meta records.
        let mut tally = [0u32; 6];
        let m0 = meta_start + (b.first_meta * META_LEN) as usize;
        for j in 0..b.count as usize {
            let m_at = m0 + j * META_LEN as usize;
            let m = &bytes[m_at..m_at + META_LEN as usize];
            let bad_meta = |reason: String| OvBankError::Malformed {
                section: "index",
                offset: sec.offset + m_at as u64,
                reason: format!(
                    "meta record {} (block {i}): {reason}",
                    b.first_meta + j as u64
                ),
            };
            let (Some(level), Some(side)) = (level_from_code(m[0]), side_from_code(m[1])) else {
                return Err(bad_meta(format!(
                    "level {} or side {} is invalid",
                    m[0], m[1]
                )));
            };
            if m[2] != 0 || m[3] != 0 {
                return Err(bad_meta("reserved bytes are not zero".into()));
            }
            let image = u32_at(m, 8);
            if image as usize >= class.support.len() {
                return Err(bad_meta(format!(
                    "image {image} is not one of the class's {} support images",
                    class.support.len()
                )));
            }
            if class.stuff && side == Side::Background {
                return Err(bad_meta("a stuff class has a background prototype".into()));
            }
            let slot = format::count_slot(level, side);
            tally[slot] = tally[slot].saturating_add(1);
        }
        if tally != kinds {
            return Err(bad(
                "per-kind counts differ from its meta records".to_string()
            ));
        }
        let cb = &mut class_blocks[b.class as usize];
        if cb.1 == 0 {
            *cb = (i, i + 1);
        } else {
            cb.1 = i + 1;
        }
        counts.push(PrototypeCounts {
            class_fg: kinds[0],
            class_bg: kinds[1],
            instance_fg: kinds[2],
            instance_bg: kinds[3],
            part_fg: kinds[4],
            part_bg: kinds[5],
        });
        blocks.push(b);
    }
    if next_meta != meta_count {
        return Err(OvBankError::Malformed {
            section: "index",
            offset: sec.offset + 8,
            reason: format!("{meta_count} meta records but the blocks use {next_meta}"),
        });
    }
    if let Some(ci) = class_blocks.iter().position(|cb| cb.1 == 0) {
        return Err(OvBankError::Malformed {
            section: "index",
            offset: sec.offset,
            reason: format!("class {:?} has no block", cx.classes[ci].name),
        });
    }
    Ok(ParsedIndex {
        block_count,
        blocks,
        counts,
        class_blocks,
    })
}

/// Reads one region record into a provenance for `image`.
fn read_region(c: &mut Cursor<'_>, image: u32) -> Result<Provenance> {
    let (h, w, bits) = region_bits(c)?;
    let n = usize::from(h) * usize::from(w);
    Ok(Provenance {
        image,
        grid_h: h.into(),
        grid_w: w.into(),
        region: (0..n).map(|i| bits[i / 8] >> (i % 8) & 1 == 1).collect(),
    })
}

fn skip_region(c: &mut Cursor<'_>) -> Result<()> {
    region_bits(c).map(drop)
}

fn region_bits<'a>(c: &mut Cursor<'a>) -> Result<(u16, u16, &'a [u8])> {
    let h = c.u16("a grid height")?;
    let w = c.u16("a grid width")?;
    let n = u64::from(h) * u64::from(w);
    let bits = c.take(n.div_ceil(8), "a region bitset")?;
    if n % 8 != 0 && bits.last().is_some_and(|&last| last >> (n % 8) != 0) {
        return Err(c.err("padding bits of a region are not zero"));
    }
    Ok((h, w, bits))
}

fn parse_ann(bytes: &[u8], sec: &SectionInfo, encoders: &[EncoderInfo]) -> Result<Vec<AnnEntry>> {
    let mut c = Cursor::new(bytes, "ann", sec.offset);
    let count = c.u32("the entry count")?;
    c.reserved(4)?;
    let cap = c.count_fits(count.into(), MIN_ANN_ENTRY_LEN, "ann entries")?;
    let mut out: Vec<AnnEntry> = Vec::with_capacity(cap);
    let mut last: Option<u32> = None;
    for _ in 0..count {
        let at = c.offset();
        let encoder = c.u32("an encoder number")?;
        let endian = c.u8("an endianness")?;
        let width = c.u8("a pointer width")?;
        c.reserved(2)?;
        let offset = c.u64("a blob offset")?;
        let length = c.u64("a blob length")?;
        let crate_version = c.string("a crate version")?;
        let algorithm = c.string("an algorithm")?;
        let bad = |reason: String| OvBankError::Malformed {
            section: "ann",
            offset: at,
            reason,
        };
        if last.is_some_and(|l| l >= encoder) {
            return Err(bad("entries are not sorted by encoder".into()));
        }
        last = Some(encoder);
        let Some(enc) = encoders.get(encoder as usize) else {
            return Err(bad(format!("encoder number {encoder} is out of range")));
        };
        if endian > 1 || !matches!(width, 32 | 64) {
            return Err(bad(format!(
                "endianness {endian} or pointer width {width} is invalid"
            )));
        }
        if !offset.is_multiple_of(ALIGN)
            || offset.checked_add(length).is_none_or(|e| e > sec.length)
        {
            return Err(bad(format!(
                "blob (offset {offset}, {length} bytes) is misaligned or outside the section"
            )));
        }
        out.push(AnnEntry {
            encoder_fingerprint: enc.fingerprint.clone(),
            little_endian: endian == 0,
            pointer_width: width,
            crate_version,
            algorithm,
            blob_offset: sec.offset + offset,
            blob_length: length,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_header(version: u32, oldest: u32) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&oldest.to_le_bytes());
        b.resize(200, 0);
        b
    }

    #[test]
    fn tiny_inputs_are_clear_errors() {
        assert!(matches!(parse_header(&[]), Err(OvBankError::Empty)));
        assert!(matches!(
            parse_header(&MAGIC[..5]),
            Err(OvBankError::Truncated { needed: 8, .. })
        ));
        assert!(matches!(
            parse_header(b"hello world, this is text"),
            Err(OvBankError::NotOvBank { .. })
        ));
        assert!(matches!(
            parse_header(b"\x89OVB\n\x1a\n\x01\x00\x00\x00\x01\x00\x00\x00"),
            Err(OvBankError::Mangled)
        ));
        assert!(matches!(
            parse_header(b"\xef\xbf\xbdOVB\r\n\x1a\n"),
            Err(OvBankError::Mangled)
        ));
        assert!(matches!(
            parse_header(&MAGIC),
            Err(OvBankError::Truncated { needed: 16, .. })
        ));
    }

    #[test]
    fn versions_are_checked_before_the_checksum() {
        let err = parse_header(&minimal_header(99, 99)).unwrap_err();
        assert!(
            matches!(
                err,
                OvBankError::TooNew {
                    found: 99,
                    oldest_reader: 99,
                    supported: OVBANK_FORMAT_VERSION
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("99") && msg.contains("up to 2"), "{msg}");
        assert!(msg.contains("upgrade ovdiff-bank"), "{msg}");
        let err = parse_header(&minimal_header(0, 0)).unwrap_err();
        assert!(
            matches!(err, OvBankError::BadHeader { offset: 12, .. }),
            "{err}"
        );
        let err = parse_header(&minimal_header(1, 2)).unwrap_err();
        assert!(
            matches!(err, OvBankError::BadHeader { offset: 12, .. }),
            "{err}"
        );
        // A newer file that old readers may read goes on to the checksum.
        let err = parse_header(&minimal_header(2, 1)).unwrap_err();
        assert!(
            matches!(err, OvBankError::BadHeader { offset: 24, .. }),
            "{err}"
        );
    }

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
