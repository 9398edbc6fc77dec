//! Reading `.ovbank` files: [`OvBankFile`] maps a file, validates its header and metadata, and serves queries in place.
//!
//! Opening parses the header, the section table and the three metadata
//! sections (`encoders`, `classes`, `index`), checking their checksums and
//! every bound, and never touches the bulk sections (`prototypes`,
//! `provenance`, `thumbnails`, `ann`). After a successful open, every offset
//! an accessor follows has been checked, so accessors only fail on data they
//! parse themselves (region records). [`OvBankFile::verify`] checks the rest.
//!
//! The checks of untrusted bytes are split as the file is: `header` (header,
//! section table, footer), `metadata` (encoders, classes, stats, ann),
//! `index` (blocks, meta records, regions); `views` holds what an open file
//! hands out.

mod bus;
mod content;
mod header;
mod index;
mod metadata;
mod views;

use std::fmt;
use std::fs::File;
use std::path::Path;

use half::f16;
use ovdiff_core::codec::{decode_f16s, u16_at, u32_at};
use ovdiff_core::prototype::{Level, Prototype, Side};

use super::error::{OvBankError, Result};
use super::format::{
    self, checksum, level_from_code, side_from_code, Cursor, SectionKind, BLOCK_ENTRY_LEN,
    FOOTER_LEN, INDEX_HEADER_LEN, META_LEN,
};
use crate::bank::{ClassEncoderEntry, EncoderInfo};
pub use content::{
    MAX_GRID_PATCHES, MAX_GRID_SIDE, NORM_TOLERANCE, SUPPORT_IMAGE_MAX_PX, THUMBNAIL_MAX_PX,
};
use header::{checked_section, missing, parse_header};
pub use header::{Header, SectionInfo};
pub(crate) use index::Block;
use index::{parse_index, read_region, skip_region, IndexContext};
use metadata::{parse_ann, parse_classes, parse_encoders, parse_labels, parse_stats, ThumbLoc};
pub use views::{AnnEntry, OvClass, PrototypeMeta, VectorsView, VerifyReport};

enum Storage {
    /// A mapped file; `_guard` (dropped first) turns a bus error on the map
    /// into a message naming the file (see `bus`).
    Mapped {
        _guard: bus::BusGuard,
        map: memmap2::Mmap,
    },
    /// 8-byte aligned copy of caller-provided bytes.
    Owned { words: Vec<u64>, len: usize },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, .. } => map,
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
    /// Per class: its stable label id, when the file records one.
    labels: Vec<Option<u32>>,
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
    ///
    /// A path that is not a regular file (a FIFO, a device, a directory) is
    /// refused before it is opened, so that opening never blocks.
    pub fn open(path: &Path) -> Result<OvBankFile> {
        // Same message as a failed open (a missing file reads as before).
        let kind = std::fs::metadata(path).map_err(|e| OvBankError::io(path, "open", e))?;
        if !kind.is_file() {
            return Err(OvBankError::NotOvBank {
                reason: format!("{} is not a regular file", path.display()),
            });
        }
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
        // unless another program truncates or rewrites the file in place;
        // a read of a page lost that way faults (SIGBUS), and the guard makes
        // that an error message naming the file and exit code 2.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| OvBankError::io(path, "memory-map", e))?;
        let guard = bus::BusGuard::register(map.as_ptr(), map.len(), path);
        OvBankFile::parse(Storage::Mapped { _guard: guard, map })
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
        let labels_sec = find(SectionKind::Labels);

        let (encoders, encoder_fps) = parse_encoders(checked_section(bytes, &enc_sec)?, &enc_sec)?;
        // An encoder name is what users and `--encoder` see: one name, one fingerprint.
        for (i, e) in encoders.iter().enumerate() {
            if let Some(other) = encoders[..i].iter().find(|o| o.name == e.name) {
                return Err(OvBankError::Malformed {
                    section: "encoders",
                    offset: enc_sec.offset,
                    reason: format!(
                        "encoder name {:?} is given to two fingerprints, {} and {}",
                        e.name, other.fingerprint, e.fingerprint
                    ),
                });
            }
        }
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
        let labels = match labels_sec {
            Some(sec) => parse_labels(checked_section(bytes, &sec)?, &sec, classes.len())?,
            None => vec![None; classes.len()],
        };
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
        check_thumbnail_ranges(&classes, &thumbs, thumbnails_sec.offset)?;
        let file = OvBankFile {
            header,
            sections,
            prototypes_sec,
            provenance_sec,
            thumbnails_sec,
            ann_sec,
            encoders,
            encoder_fps,
            classes,
            labels,
            thumbs,
            blocks: index.blocks,
            class_blocks: index.class_blocks,
            meta_base: idx_sec.offset + INDEX_HEADER_LEN + BLOCK_ENTRY_LEN * index.block_count,
            data,
        };
        file.check_region_ranges()?;
        Ok(file)
    }

    /// Every block's region records start exactly where the previous
    /// block's end, so that no record is read for two prototypes (checked at
    /// open: a query reads regions too).
    fn check_region_ranges(&self) -> Result<()> {
        let mut next_regions = 0u64;
        for b in &self.blocks {
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
            // A record that does not parse is refused by whatever reads it
            // (and by verify, which names the section checksum first).
            let Ok(regions) = self.block_region_bytes(b) else {
                return Ok(());
            };
            next_regions += regions.len() as u64;
        }
        Ok(())
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
    /// The stable label id the file records for class number `index`.
    pub fn recorded_label_id(&self, index: usize) -> Option<u32> {
        self.labels.get(index).copied().flatten()
    }

    /// The classes with the stable label id the file records for each.
    pub fn classes_and_labels(&self) -> impl Iterator<Item = (&OvClass, Option<u32>)> {
        self.classes.iter().zip(self.labels.iter().copied())
    }

    /// Every class's stable label id (`segment --label-ids bank`): the
    /// file's `labels` section where it gives one, the others numbered in
    /// creation order after the highest recorded id
    /// ([`assign_label_ids`](crate::bank::assign_label_ids)).
    pub fn label_ids(&self) -> crate::bank::LabelIds {
        let recorded: crate::bank::LabelIds = self
            .classes_and_labels()
            .filter_map(|(c, id)| id.map(|id| (c.name.clone(), id)))
            .collect();
        let records: Vec<crate::bank::ClassRecord> =
            self.classes.iter().map(OvClass::to_record).collect();
        crate::bank::assign_label_ids(&records, &recorded, 1).0
    }

    /// The classes, in name order.
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
            // Meta records are META_LEN bytes, their codes validated at open.
            let image = u32_at(m, 8).unwrap_or_default();
            let provenance = read_region(&mut regions, image)?;
            let v = &vectors[i * 2 * dim..(i + 1) * 2 * dim];
            out.push(Prototype {
                level: level_from_code(m[0]).unwrap_or(Level::Class),
                side: side_from_code(m[1]).unwrap_or(Side::Foreground),
                vector: decode_f16s(v),
                support: u32_at(m, 4).unwrap_or_default(),
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
        let mut prototypes = 0u64;
        for b in &self.blocks {
            let v = self.block_vector_bytes(b);
            if let Some(i) = v
                .chunks_exact(2)
                .position(|c| u16_at(c, 0).is_some_and(|x| x & 0x7c00 == 0x7c00))
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
            prototypes += u64::from(b.count);
        }
        self.check_content()?;
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

/// Thumbnail ranges must be disjoint, whatever their order and class: the
/// writer stores one thumbnail per support image, so a range shared by two
/// images would let a small file declare (and an import write) many times
/// its size.
fn check_thumbnail_ranges(
    classes: &[OvClass],
    thumbs: &[Vec<ThumbLoc>],
    section_offset: u64,
) -> Result<()> {
    let mut ranges: Vec<(u64, u64, usize, usize)> = thumbs
        .iter()
        .enumerate()
        .flat_map(|(ci, locs)| {
            locs.iter()
                .enumerate()
                .filter(|(_, t)| t.length > 0)
                .map(move |(i, t)| (t.offset, t.length, ci, i))
        })
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((a_off, a_len, a_class, a_img), (b_off, _, b_class, b_img)) = (w[0], w[1]);
        // Both ranges lie within the section (checked when parsed).
        if a_off + a_len > b_off {
            return Err(OvBankError::Malformed {
                section: "thumbnails",
                offset: section_offset + b_off,
                reason: format!(
                    "the thumbnail of support image {b_img} of class {:?} overlaps that of \
                     support image {a_img} of class {:?} (thumbnail ranges must be disjoint)",
                    classes[b_class].name, classes[a_class].name
                ),
            });
        }
    }
    Ok(())
}
