//! Writing `.ovbank` files: a streaming [`Writer`] that takes classes in name order and commits the file atomically.
//!
//! Prototype vectors go straight to a temporary file in the destination
//! directory ([`AtomicFile`]) as classes arrive; regions, thumbnails and the
//! metadata are kept in memory (they are small next to the vectors) and
//! written after them. The header, whose section table is only known at the
//! end, is written last over a zeroed placeholder; then the file is read back
//! once to compute the whole-file checksum for the footer, synced, and
//! renamed into place.

use std::borrow::Cow;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ovdiff_core::atomic::{parent_folder, sync_folder, AtomicError, AtomicFile, AtomicStep};
use ovdiff_core::codec::{u32_at, WriteLe};
use xxhash_rust::xxh3::Xxh3Default;

use super::error::{OvBankError, Result};
use super::format::{
    self, align_up, header_len, level_code, level_from_code, put_str, side_code, side_from_code,
    Cursor, SectionKind, ELEMENT_F16, END_MAGIC, FOOTER_LEN, MAGIC, MAX_STRING_BYTES, META_LEN,
    OVBANK_FORMAT_VERSION, OVBANK_OLDEST_READER, SECTION_FLAG_REQUIRED,
};
use super::read::OvClass;
use crate::bank::{validate_class_name, ClassSource, EncoderInfo, DTYPE_F16};
use ovdiff_core::prototype::{Prototype, Side};

/// Sections this writer emits, in table order, with their flags: the six
/// required ones, then the optional `stats` (format 2) and `labels`
/// (format 3) sections.
const WRITTEN: [(SectionKind, u32); 8] = [
    (SectionKind::Encoders, SECTION_FLAG_REQUIRED),
    (SectionKind::Classes, SECTION_FLAG_REQUIRED),
    (SectionKind::Index, SECTION_FLAG_REQUIRED),
    (SectionKind::Prototypes, SECTION_FLAG_REQUIRED),
    (SectionKind::Provenance, SECTION_FLAG_REQUIRED),
    (SectionKind::Thumbnails, SECTION_FLAG_REQUIRED),
    (SectionKind::Stats, 0),
    (SectionKind::Labels, 0),
];

/// What a written file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Classes written.
    pub classes: usize,
    /// Encoders written.
    pub encoders: usize,
    /// Prototypes written (over all classes and encoders).
    pub prototypes: u64,
    /// Thumbnails written.
    pub thumbnails: u64,
    /// Length of the file.
    pub bytes: u64,
}

/// One class × encoder block, in its on-disk encodings.
#[derive(Debug, Clone)]
pub(crate) struct BlockIn<'a> {
    /// Encoder number in the writer's table.
    pub encoder: u32,
    /// `count × dim` little-endian f16 values.
    pub vectors: Cow<'a, [u8]>,
    /// `count` 12-byte meta records.
    pub metas: Cow<'a, [u8]>,
    /// `count` region records.
    pub regions: Cow<'a, [u8]>,
}

impl BlockIn<'static> {
    /// Encodes bank prototypes. Vectors are rounded to f16 as the bank
    /// does, so prototypes read from a bank are copied exactly.
    pub fn from_prototypes(encoder: u32, protos: &[Prototype]) -> Result<BlockIn<'static>> {
        let mut vectors = Vec::new();
        let mut metas = Vec::with_capacity(protos.len() * META_LEN as usize);
        let mut regions = Vec::new();
        for (i, p) in protos.iter().enumerate() {
            vectors.put_f16s(&p.vector);
            metas.put_u8(level_code(p.level));
            metas.put_u8(side_code(p.side));
            metas.put_u16(0);
            metas.put_u32(p.support);
            metas.put_u32(p.provenance.image);
            let pv = &p.provenance;
            let (Ok(h), Ok(w)) = (u16::try_from(pv.grid_h), u16::try_from(pv.grid_w)) else {
                return Err(unwritable(
                    format!("prototype {i}"),
                    "its grid is larger than 65535",
                ));
            };
            if pv.region.len() as u64 != u64::from(h) * u64::from(w) {
                return Err(unwritable(
                    format!("prototype {i}"),
                    "its region does not match its grid",
                ));
            }
            format::put_region(&mut regions, h, w, &pv.region);
        }
        Ok(BlockIn {
            encoder,
            vectors: Cow::Owned(vectors),
            metas: Cow::Owned(metas),
            regions: Cow::Owned(regions),
        })
    }
}

fn unwritable(what: impl Into<String>, reason: impl Into<String>) -> OvBankError {
    OvBankError::Unwritable {
        what: what.into(),
        reason: reason.into(),
    }
}

fn check_str(what: &str, s: &str) -> Result<()> {
    if s.len() as u64 > u64::from(MAX_STRING_BYTES) {
        return Err(unwritable(
            what,
            format!("a string is {} bytes; at most {MAX_STRING_BYTES}", s.len()),
        ));
    }
    Ok(())
}

/// Streams classes into a new `.ovbank` file. Classes must be added in
/// strictly increasing name order; nothing is visible at the destination
/// until [`Writer::finish`] succeeds.
pub(crate) struct Writer {
    dest: PathBuf,
    /// The temporary file's path, for errors.
    tmp_path: PathBuf,
    /// The file being written, buffered; deleted unless [`Writer::finish`]
    /// commits it.
    out: BufWriter<AtomicFile>,
    encoders: Vec<EncoderInfo>,
    fps: Vec<[u8; 32]>,
    pos: u64,
    prototypes_start: u64,
    prototypes_hash: Xxh3Default,
    provenance: Vec<u8>,
    thumbnails: Vec<u8>,
    blocks: Vec<u8>,
    metas: Vec<u8>,
    classes: Vec<u8>,
    build_stats: Vec<u8>,
    /// One u32 per class: its stable label id, 0 for none.
    labels: Vec<u8>,
    /// The label ids given so far (each once).
    label_set: std::collections::HashSet<u32>,
    class_count: u32,
    block_count: u32,
    meta_count: u64,
    last_name: Option<String>,
    stats: ExportStats,
    /// `Some` when the file gets an `ann` section: (encoder number,
    /// algorithm, blob) entries.
    ann: Option<Vec<(u32, String, Vec<u8>)>>,
}

impl Writer {
    /// Starts a file at `dest` holding `encoders` (any order; sorted here).
    pub fn create(dest: &Path, encoders: Vec<EncoderInfo>) -> Result<Writer> {
        Self::create_with(dest, encoders, false)
    }

    /// [`create`](Writer::create); with `ann`, the file also gets an `ann`
    /// section (kind 7, optional) holding what [`add_ann`](Writer::add_ann)
    /// is given, possibly nothing.
    pub fn create_with(dest: &Path, mut encoders: Vec<EncoderInfo>, ann: bool) -> Result<Writer> {
        encoders.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        encoders.dedup_by(|a, b| a.fingerprint == b.fingerprint);
        let mut fps = Vec::with_capacity(encoders.len());
        for e in &encoders {
            let what = || format!("encoder {:?}", e.fingerprint);
            let fp = format::fingerprint_bytes(&e.fingerprint)
                .ok_or_else(|| unwritable(what(), "its fingerprint is not 64 lowercase hex"))?;
            if e.dim == 0 || e.dim > u32::from(u16::MAX) {
                return Err(unwritable(
                    what(),
                    "its dimension is not between 1 and 65535",
                ));
            }
            if e.dtype != DTYPE_F16 {
                return Err(unwritable(what(), "its element type is not f16"));
            }
            if e.name.is_empty() {
                return Err(unwritable(what(), "its name is empty"));
            }
            check_str(&what(), &e.name)?;
            fps.push(fp);
        }
        if u32::try_from(encoders.len()).is_err() {
            return Err(unwritable("the encoders", "there are too many"));
        }

        let file = AtomicFile::create(dest).map_err(|e| atomic_err(dest, e))?;
        let tmp_path = file.temp_path().to_path_buf();
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Placeholder for the header, overwritten by `finish`.
        let sections = WRITTEN.len() as u32 + u32::from(ann);
        let prototypes_start = align_up(header_len(sections));
        out.write_all(&vec![0u8; prototypes_start as usize])
            .map_err(|e| OvBankError::io(&tmp_path, "write", e))?;
        Ok(Writer {
            dest: dest.to_path_buf(),
            tmp_path,
            out,
            encoders,
            fps,
            pos: prototypes_start,
            prototypes_start,
            prototypes_hash: Xxh3Default::new(),
            provenance: Vec::new(),
            thumbnails: Vec::new(),
            blocks: Vec::new(),
            metas: Vec::new(),
            classes: Vec::new(),
            build_stats: Vec::new(),
            labels: Vec::new(),
            label_set: Default::default(),
            class_count: 0,
            block_count: 0,
            meta_count: 0,
            last_name: None,
            stats: ExportStats::default(),
            ann: ann.then(Vec::new),
        })
    }

    /// Encoder number of `fingerprint`.
    pub fn encoder_number(&self, fingerprint: &str) -> Option<u32> {
        let raw = format::fingerprint_bytes(fingerprint)?;
        self.fps.binary_search(&raw).ok().map(|i| i as u32)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| OvBankError::io(&self.tmp_path, "write", e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Zero padding up to the next multiple of 64; returns the padding.
    fn pad(&mut self) -> Result<Vec<u8>> {
        let pad = vec![0u8; (align_up(self.pos) - self.pos) as usize];
        self.write_raw(&pad)?;
        Ok(pad)
    }

    /// Adds a class with no stable label id; see
    /// [`add_labelled_class`](Writer::add_labelled_class).
    #[cfg(test)]
    pub fn add_class(
        &mut self,
        class: &OvClass,
        blocks: Vec<BlockIn<'_>>,
        thumbnails: &[&[u8]],
    ) -> Result<()> {
        self.add_labelled_class(class, None, blocks, thumbnails)
    }

    /// Adds a class, with its stable label id when it has one (the
    /// `labels` section; ids are unique within a file and never 0).
    /// `class.encoders` is ignored: the per-encoder entries are derived from
    /// `blocks`. `thumbnails[i]` is the JPEG of support image `i` (empty or
    /// missing: none).
    pub fn add_labelled_class(
        &mut self,
        class: &OvClass,
        label: Option<u32>,
        mut blocks: Vec<BlockIn<'_>>,
        thumbnails: &[&[u8]],
    ) -> Result<()> {
        let what = || format!("class {:?}", class.name);
        if let Some(id) = label {
            if id == 0 {
                return Err(unwritable(what(), "label id 0 is the background's"));
            }
            if self.label_set.contains(&id) {
                return Err(unwritable(
                    what(),
                    format!("label id {id} is another class's"),
                ));
            }
        }
        validate_class_name(&class.name)
            .map_err(|p| unwritable(what(), format!("invalid name: {p}")))?;
        if self.last_name.as_ref().is_some_and(|l| *l >= class.name) {
            return Err(unwritable(
                what(),
                "classes must be added in name order, once",
            ));
        }
        for s in [&class.split_method]
            .into_iter()
            .chain(class.support.iter().map(|s| &s.name))
            .chain(class.stats.iter().map(|s| &s.tool_version))
        {
            check_str(&what(), s)?;
        }
        match &class.source {
            ClassSource::Images { dir } => check_str(&what(), dir)?,
            ClassSource::Generator {
                fingerprint,
                params,
            } => {
                check_str(&what(), fingerprint)?;
                for (k, v) in params {
                    check_str(&what(), k)?;
                    check_str(&what(), v)?;
                }
                u32::try_from(params.len())
                    .map_err(|_| unwritable(what(), "too many parameters"))?;
            }
        }
        let n_support = u32::try_from(class.support.len())
            .map_err(|_| unwritable(what(), "too many support images"))?;
        if thumbnails.len() > class.support.len() {
            return Err(unwritable(what(), "more thumbnails than support images"));
        }
        if blocks.is_empty() {
            return Err(unwritable(what(), "it has prototypes for no encoder"));
        }
        blocks.sort_by_key(|b| b.encoder);
        // Validate every block before writing anything.
        let mut counts = Vec::with_capacity(blocks.len());
        for (k, b) in blocks.iter().enumerate() {
            let Some(enc) = self.encoders.get(b.encoder as usize) else {
                return Err(unwritable(what(), "a block names an unknown encoder"));
            };
            if k > 0 && blocks[k - 1].encoder == b.encoder {
                return Err(unwritable(what(), "two blocks for the same encoder"));
            }
            let n = b.metas.len() as u64 / META_LEN;
            if n == 0 || !(b.metas.len() as u64).is_multiple_of(META_LEN) || n > u64::from(u32::MAX)
            {
                return Err(unwritable(
                    what(),
                    "a block has no or malformed meta records",
                ));
            }
            if b.vectors.len() as u64 != 2 * n * u64::from(enc.dim) {
                return Err(unwritable(
                    what(),
                    format!(
                        "encoder {} has dimension {}, the vectors do not match",
                        enc.fingerprint, enc.dim
                    ),
                ));
            }
            let mut kinds = [0u32; 6];
            for m in b.metas.chunks_exact(META_LEN as usize) {
                let (Some(level), Some(side)) = (level_from_code(m[0]), side_from_code(m[1]))
                else {
                    return Err(unwritable(
                        what(),
                        "a prototype has an invalid level or side",
                    ));
                };
                let image = u32_at(m, 8).unwrap_or_default();
                if image >= n_support || m[2] != 0 || m[3] != 0 {
                    return Err(unwritable(
                        what(),
                        format!("a prototype refers to image {image} of {n_support}"),
                    ));
                }
                if class.stuff && side == Side::Background {
                    return Err(unwritable(
                        what(),
                        "a stuff class has a background prototype",
                    ));
                }
                kinds[format::count_slot(level, side)] += 1;
            }
            let mut c = Cursor::new(&b.regions, "provenance", 0);
            for _ in 0..n {
                let h = c.u16("a grid height")?;
                let w = c.u16("a grid width")?;
                c.take((u64::from(h) * u64::from(w)).div_ceil(8), "a bitset")?;
            }
            if c.remaining() != 0 {
                return Err(unwritable(
                    what(),
                    "its regions do not match its prototypes",
                ));
            }
            counts.push((n as u32, enc.dim, kinds));
        }

        let class_no = self.class_count;
        for (b, (n, dim, kinds)) in blocks.iter().zip(counts) {
            // Vectors, 64-byte aligned within the section.
            let rel = self.pos - self.prototypes_start;
            let pad = vec![0u8; (align_up(rel) - rel) as usize];
            self.write_raw(&pad)?;
            self.prototypes_hash.update(&pad);
            let vectors_offset = self.pos - self.prototypes_start;
            self.write_raw(&b.vectors)?;
            self.prototypes_hash.update(&b.vectors);

            self.blocks.put_u32(class_no);
            self.blocks.put_u32(b.encoder);
            self.blocks.put_u32(n);
            self.blocks.put_u32(dim);
            for k in kinds {
                self.blocks.put_u32(k);
            }
            self.blocks.put_u64(vectors_offset);
            self.blocks.put_u64(self.meta_count);
            self.blocks.put_u64(self.provenance.len() as u64);
            self.metas.extend_from_slice(&b.metas);
            self.provenance.extend_from_slice(&b.regions);
            self.meta_count += u64::from(n);
            self.block_count = self
                .block_count
                .checked_add(1)
                .ok_or_else(|| unwritable(what(), "too many blocks"))?;
            self.stats.prototypes += u64::from(n);
        }

        let r = &mut self.classes;
        put_str(r, &class.name);
        r.put_u8(u8::from(class.stuff));
        match &class.source {
            ClassSource::Images { dir } => {
                r.put_u8(0);
                put_str(r, dir);
            }
            ClassSource::Generator {
                fingerprint,
                params,
            } => {
                r.put_u8(1);
                put_str(r, fingerprint);
                r.put_u32(params.len() as u32);
                for (k, v) in params {
                    put_str(r, k);
                    put_str(r, v);
                }
            }
        }
        put_str(r, &class.split_method);
        r.put_u64(class.created_unix);
        r.put_u32(class.images_used);
        r.put_u32(class.images_skipped);
        r.put_u32(class.fallback_splits);
        r.put_u32(n_support);
        for (i, s) in class.support.iter().enumerate() {
            put_str(r, &s.name);
            r.put_u32(s.width);
            r.put_u32(s.height);
            match thumbnails.get(i).filter(|t| !t.is_empty()) {
                Some(t) => {
                    r.put_u64(self.thumbnails.len() as u64);
                    r.put_u64(t.len() as u64);
                    self.thumbnails.extend_from_slice(t);
                    self.stats.thumbnails += 1;
                }
                None => {
                    r.put_u64(0);
                    r.put_u64(0);
                }
            }
        }
        let st = &mut self.build_stats;
        match &class.stats {
            None => st.put_u8(0),
            Some(b) => {
                st.put_u8(1);
                put_str(st, &b.tool_version);
                for v in [
                    b.total_ms,
                    b.sample_ms,
                    b.decode_ms,
                    b.encode_ms,
                    b.pool_ms,
                    b.fg_patches,
                    b.bg_patches,
                ] {
                    st.put_u64(v);
                }
            }
        }
        self.class_count = self
            .class_count
            .checked_add(1)
            .ok_or_else(|| unwritable(what(), "too many classes"))?;
        self.last_name = Some(class.name.clone());
        self.labels.put_u32(label.unwrap_or(0));
        if let Some(id) = label {
            self.label_set.insert(id);
        }
        after_class_fail_point();
        Ok(())
    }

    /// Adds a prebuilt nearest-neighbour blob for the encoder with
    /// `fingerprint` (at most one per encoder), written little-endian and
    /// tagged with this build's crate version and pointer width. Errors: the
    /// writer was created without `ann`, an unknown encoder, a second blob.
    pub fn add_ann(&mut self, fingerprint: &str, algorithm: &str, blob: Vec<u8>) -> Result<()> {
        check_str("an ann algorithm", algorithm)?;
        let number = self
            .encoder_number(fingerprint)
            .ok_or_else(|| unwritable("an ann blob", format!("no encoder {fingerprint}")))?;
        let Some(ann) = self.ann.as_mut() else {
            return Err(unwritable("an ann blob", "the file has no ann section"));
        };
        if ann.iter().any(|(n, _, _)| *n == number) {
            return Err(unwritable(
                "an ann blob",
                format!("encoder {fingerprint} has one already"),
            ));
        }
        ann.push((number, algorithm.to_string(), blob));
        Ok(())
    }

    /// The `ann` section's bytes: the entry table, then each blob at a
    /// multiple of 64 from the section start.
    fn ann_bytes(entries: &mut [(u32, String, Vec<u8>)]) -> Vec<u8> {
        entries.sort_by_key(|e| e.0);
        let version = env!("CARGO_PKG_VERSION");
        let mut table = Vec::new();
        table.put_u32(entries.len() as u32);
        table.put_u32(0);
        // entry sizes first, to place the blobs after the table
        let entry_len = |alg: &str| 4 + 1 + 1 + 2 + 8 + 8 + 4 + version.len() + 4 + alg.len();
        let table_len: usize = 8 + entries.iter().map(|e| entry_len(&e.1)).sum::<usize>();
        let mut at = align_up(table_len as u64);
        let mut places = Vec::with_capacity(entries.len());
        for (_, _, blob) in entries.iter() {
            places.push(at);
            at = align_up(at + blob.len() as u64);
        }
        for ((number, alg, blob), place) in entries.iter().zip(&places) {
            table.put_u32(*number);
            table.put_u8(if cfg!(target_endian = "little") { 0 } else { 1 });
            table.put_u8(usize::BITS as u8);
            table.extend_from_slice(&[0, 0]);
            table.put_u64(*place);
            table.put_u64(blob.len() as u64);
            put_str(&mut table, version);
            put_str(&mut table, alg);
        }
        debug_assert_eq!(table.len(), table_len);
        let mut out = table;
        for ((_, _, blob), place) in entries.iter().zip(&places) {
            out.resize(*place as usize, 0);
            out.extend_from_slice(blob);
        }
        out
    }

    /// Writes one section from `parts`; returns its table entry.
    fn section(&mut self, parts: &[&[u8]]) -> Result<[u64; 3]> {
        self.pad()?;
        let offset = self.pos;
        let mut h = Xxh3Default::new();
        for p in parts {
            self.write_raw(p)?;
            h.update(p);
        }
        Ok([offset, self.pos - offset, h.digest()])
    }

    /// Writes the remaining sections, header and footer, syncs, and renames
    /// the file into place (then syncs the directory).
    pub fn finish(mut self) -> Result<ExportStats> {
        let prototypes = [
            self.prototypes_start,
            self.pos - self.prototypes_start,
            self.prototypes_hash.digest(),
        ];
        let provenance = std::mem::take(&mut self.provenance);
        let provenance = self.section(&[&provenance])?;
        let thumbs = std::mem::take(&mut self.thumbnails);
        let thumbnails = self.section(&[&thumbs])?;
        drop(thumbs);
        let mut head = Vec::with_capacity(16);
        head.put_u32(self.block_count);
        head.put_u32(0);
        head.put_u64(self.meta_count);
        let (blocks, metas) = (
            std::mem::take(&mut self.blocks),
            std::mem::take(&mut self.metas),
        );
        let index = self.section(&[&head, &blocks, &metas])?;
        let mut head = Vec::with_capacity(8);
        head.put_u32(self.class_count);
        head.put_u32(0);
        let records = std::mem::take(&mut self.classes);
        let classes = self.section(&[&head, &records])?;
        let mut enc = Vec::new();
        enc.put_u32(self.encoders.len() as u32);
        enc.put_u32(0);
        for (e, fp) in self.encoders.iter().zip(&self.fps) {
            enc.extend_from_slice(fp);
            enc.put_u32(e.dim);
            enc.put_u8(ELEMENT_F16);
            enc.extend_from_slice(&[0, 0, 0]);
            put_str(&mut enc, &e.name);
        }
        let encoders = self.section(&[&enc])?;
        let mut head = Vec::with_capacity(8);
        head.put_u32(self.class_count);
        head.put_u32(0);
        let records = std::mem::take(&mut self.build_stats);
        let build_stats = self.section(&[&head, &records])?;
        let records = std::mem::take(&mut self.labels);
        let labels = self.section(&[&head, &records])?;
        let mut written: Vec<(SectionKind, u32)> = WRITTEN.to_vec();
        let mut table = vec![
            encoders,
            classes,
            index,
            prototypes,
            provenance,
            thumbnails,
            build_stats,
            labels,
        ];
        if let Some(mut entries) = self.ann.take() {
            let bytes = Self::ann_bytes(&mut entries);
            drop(entries);
            // the table lists kinds in increasing order: `ann` (7) before
            // `stats` (8) and `labels` (9), wherever the bytes lie
            let at = written.len() - 2;
            table.insert(at, self.section(&[&bytes])?);
            written.insert(at, (SectionKind::Ann, 0));
        }

        // Header, over the placeholder.
        let mut header = MAGIC.to_vec();
        header.put_u32(OVBANK_FORMAT_VERSION);
        header.put_u32(OVBANK_OLDEST_READER);
        header.put_u64(0);
        header.put_u32(written.len() as u32);
        header.put_u32(0);
        for ((kind, flags), [offset, length, sum]) in written.iter().zip(table) {
            header.put_u32(kind.code());
            header.put_u32(*flags);
            header.put_u64(offset);
            header.put_u64(length);
            header.put_u64(sum);
        }
        let sum = format::checksum(&header);
        header.put_u64(sum);

        let end = self.pos;
        let path = self.tmp_path.as_path();
        let io = |op| move |e| OvBankError::io(path, op, e);
        // Flushing the buffer can fail (a full disk); the temporary file goes
        // with the dropped writer.
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| io("write")(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io("seek in"))?;
        file.write_all(&header).map_err(io("write"))?;
        file.seek(SeekFrom::Start(0)).map_err(io("seek in"))?;
        let mut h = Xxh3Default::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = end;
        while left > 0 {
            let n = buf.len().min(left as usize);
            file.read_exact(&mut buf[..n]).map_err(io("read back"))?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.put_u64(end + FOOTER_LEN);
        footer.put_u64(h.digest());
        footer.extend_from_slice(&END_MAGIC);
        file.seek(SeekFrom::Start(end)).map_err(io("seek in"))?;
        file.write_all(&footer).map_err(io("write"))?;
        file.commit().map_err(|e| atomic_err(&self.dest, e))?;
        sync_folder(parent_folder(&self.dest)).map_err(|e| atomic_err(&self.dest, e))?;
        self.stats.classes = self.class_count as usize;
        self.stats.encoders = self.encoders.len();
        self.stats.bytes = end + FOOTER_LEN;
        Ok(self.stats)
    }
}

/// The test hook after each class a [`Writer`] takes (signal and crash
/// tests): pauses ([`ovdiff_core::failpoint::pause`]), and aborts the
/// process at `ovbank-after-class`. Does nothing in normal use.
fn after_class_fail_point() {
    ovdiff_core::failpoint::pause();
    ovdiff_core::failpoint::abort_at("ovbank-after-class");
}

/// A failed step of writing the file to `dest`, as `.ovbank` errors say it.
fn atomic_err(dest: &Path, e: AtomicError) -> OvBankError {
    match e.step {
        AtomicStep::Name => unwritable(dest.display().to_string(), "it has no file name"),
        AtomicStep::Create => OvBankError::io(&e.path, "create", e.source),
        AtomicStep::Sync => OvBankError::io(&e.path, "sync", e.source),
        AtomicStep::Rename => OvBankError::io(&e.path, "rename the finished file onto", e.source),
        AtomicStep::SyncFolder => OvBankError::io(&e.path, "sync the directory", e.source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_core::prototype::{Level, Provenance};

    fn class(name: &str) -> OvClass {
        OvClass {
            name: name.into(),
            stuff: false,
            source: ClassSource::Images { dir: "d".into() },
            split_method: "s".into(),
            created_unix: 5,
            images_used: 1,
            images_skipped: 0,
            fallback_splits: 0,
            encoders: Vec::new(),
            support: vec![crate::bank::SupportImageInfo {
                name: "a.png".into(),
                width: 4,
                height: 3,
            }],
            stats: None,
        }
    }

    fn encoder(dim: u32) -> EncoderInfo {
        EncoderInfo {
            fingerprint: "a".repeat(64),
            name: "enc".into(),
            dim,
            dtype: DTYPE_F16.into(),
        }
    }

    fn proto(dim: usize, side: Side) -> Prototype {
        Prototype {
            level: Level::Instance,
            side,
            vector: vec![0.5; dim],
            support: 3,
            provenance: Provenance {
                image: 0,
                grid_h: 1,
                grid_w: 3,
                region: vec![true, false, true],
            },
        }
    }

    #[test]
    fn writer_refuses_bad_input_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.ovbank");
        {
            let mut w = Writer::create(&out, vec![encoder(2)]).unwrap();
            let b = || BlockIn::from_prototypes(0, &[proto(2, Side::Foreground)]).unwrap();
            w.add_class(&class("b"), vec![b()], &[]).unwrap();
            // Out of order.
            assert!(w.add_class(&class("a"), vec![b()], &[]).is_err());
            // Wrong dimension.
            let bad = BlockIn::from_prototypes(0, &[proto(3, Side::Foreground)]).unwrap();
            assert!(w.add_class(&class("c"), vec![bad], &[]).is_err());
            // Stuff class with a background prototype.
            let mut stuff = class("d");
            stuff.stuff = true;
            let bg = BlockIn::from_prototypes(0, &[proto(2, Side::Background)]).unwrap();
            assert!(w.add_class(&stuff, vec![bg], &[]).is_err());
            // Too many thumbnails.
            assert!(w.add_class(&class("e"), vec![b()], &[b"x", b"y"]).is_err());
            // Dropped without finish.
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut bad = encoder(2);
        bad.fingerprint = "A".repeat(64);
        assert!(Writer::create(&out, vec![bad]).is_err());
    }

    #[test]
    fn empty_file_is_valid_and_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("empty.ovbank");
        let stats = Writer::create(&out, Vec::new()).unwrap().finish().unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(stats.bytes, bytes.len() as u64);
        assert_eq!(&bytes[..8], &MAGIC);
        assert_eq!(&bytes[bytes.len() - 8..], &END_MAGIC);
        let f = super::super::OvBankFile::open(&out).unwrap();
        assert!(f.classes().is_empty());
        assert!(f.sections().iter().all(|s| s.offset % 64 == 0));
        f.verify().unwrap();
    }
}
