//! Record types of the prototype bank and their explicit, versioned byte encodings.
//!
//! Every value written by this module starts with a one-byte record version
//! ([`RECORD_VERSION`]). Structured records (encoders, classes) are encoded
//! with bincode 2.0.1 in little-endian, fixed-width-integer mode through
//! private `*WireV1` structs, so the public types can evolve without silently
//! changing the bytes on disk. Prototype vectors and regions use a hand-written
//! little-endian layout. Keys are big-endian so that sled's byte order groups
//! and sorts them by build, encoder slot and index. Nothing stored is
//! native-endian or `usize`-sized; `schema/bank-v1.md` documents every byte.

use std::fmt;

use half::f16;

use ovdiff_core::prototype::{Level, Prototype, Provenance, Side};

/// Version byte that prefixes every record value this build writes, except
/// class records ([`CLASS_RECORD_VERSION`]).
pub const RECORD_VERSION: u8 = 1;

/// Version byte of the class records this build writes. Version 1 (bank
/// format 1) had no build statistics; it is still decoded, through the
/// frozen [`ClassRecordV1`].
pub const CLASS_RECORD_VERSION: u8 = 2;

/// The only element type prototype vectors are stored in.
pub const DTYPE_F16: &str = "f16";

/// Length of an encoder fingerprint: a lowercase hex SHA-256 digest.
pub const FINGERPRINT_LEN: usize = 64;

/// Longest class name accepted, in bytes.
pub const MAX_CLASS_NAME_BYTES: usize = 128;

/// An encoder (feature extractor) whose prototypes the bank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderInfo {
    /// 64 lowercase hex digits: the SHA-256 of the encoder's weights.
    pub fingerprint: String,
    /// Human-readable name (e.g. the model name).
    pub name: String,
    /// Feature dimension of the vectors it yields.
    pub dim: u32,
    /// Element type the vectors are stored in; always [`DTYPE_F16`].
    pub dtype: String,
}

/// Where a class's support images came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassSource {
    /// Images supplied by the user from a directory.
    Images {
        /// The directory, as given.
        dir: String,
    },
    /// Images synthesised by a generator model.
    Generator {
        /// SHA-256 fingerprint of the generator's weights.
        fingerprint: String,
        /// Generation parameters (prompt, seed, steps, …) as key/value pairs.
        params: Vec<(String, String)>,
    },
}

/// One support image of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportImageInfo {
    /// The original file name.
    pub name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// How a class build went: recorded by the builder, shown by `show`, kept by
/// export and import. Banks of format 1 have none (see [`ClassRecordV1`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildStats {
    /// Version of the ovdiff-bank that built the class.
    pub tool_version: String,
    /// Wall-clock time of the whole build, sampling included, in milliseconds.
    pub total_ms: u64,
    /// Time spent sampling support images with a generator (0 for `--images`).
    pub sample_ms: u64,
    /// Time spent decoding and thumbnailing support images.
    pub decode_ms: u64,
    /// Time spent in encoder forward passes.
    pub encode_ms: u64,
    /// Time spent pooling prototypes (K-means included).
    pub pool_ms: u64,
    /// Foreground patches over all support images, first encoder.
    pub fg_patches: u64,
    /// Background patches over all support images, first encoder.
    pub bg_patches: u64,
}

/// Number of prototypes per (level, side) for one encoder of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrototypeCounts {
    /// Class-level foreground prototypes.
    pub class_fg: u32,
    /// Class-level background prototypes.
    pub class_bg: u32,
    /// Instance-level foreground prototypes.
    pub instance_fg: u32,
    /// Instance-level background prototypes.
    pub instance_bg: u32,
    /// Part-level foreground prototypes.
    pub part_fg: u32,
    /// Part-level background prototypes.
    pub part_bg: u32,
}

impl PrototypeCounts {
    /// The counter for `level` and `side`.
    pub fn get(&self, level: Level, side: Side) -> u32 {
        *self.slot(level, side)
    }

    /// Sum of all six counters.
    pub fn total(&self) -> u64 {
        self.to_array().iter().map(|&c| u64::from(c)).sum()
    }

    /// Counts the prototypes of `protos`.
    pub fn of(protos: &[Prototype]) -> PrototypeCounts {
        let mut counts = PrototypeCounts::default();
        for p in protos {
            let c = counts.slot_mut(p.level, p.side);
            *c = c.saturating_add(1);
        }
        counts
    }

    fn slot(&self, level: Level, side: Side) -> &u32 {
        match (level, side) {
            (Level::Class, Side::Foreground) => &self.class_fg,
            (Level::Class, Side::Background) => &self.class_bg,
            (Level::Instance, Side::Foreground) => &self.instance_fg,
            (Level::Instance, Side::Background) => &self.instance_bg,
            (Level::Part, Side::Foreground) => &self.part_fg,
            (Level::Part, Side::Background) => &self.part_bg,
        }
    }

    fn slot_mut(&mut self, level: Level, side: Side) -> &mut u32 {
        match (level, side) {
            (Level::Class, Side::Foreground) => &mut self.class_fg,
            (Level::Class, Side::Background) => &mut self.class_bg,
            (Level::Instance, Side::Foreground) => &mut self.instance_fg,
            (Level::Instance, Side::Background) => &mut self.instance_bg,
            (Level::Part, Side::Foreground) => &mut self.part_fg,
            (Level::Part, Side::Background) => &mut self.part_bg,
        }
    }

    fn to_array(self) -> [u32; 6] {
        [
            self.class_fg,
            self.class_bg,
            self.instance_fg,
            self.instance_bg,
            self.part_fg,
            self.part_bg,
        ]
    }

    fn from_array(a: [u32; 6]) -> PrototypeCounts {
        PrototypeCounts {
            class_fg: a[0],
            class_bg: a[1],
            instance_fg: a[2],
            instance_bg: a[3],
            part_fg: a[4],
            part_bg: a[5],
        }
    }
}

/// What a class holds for one encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassEncoderEntry {
    /// The encoder's fingerprint (see [`EncoderInfo::fingerprint`]).
    pub fingerprint: String,
    /// Prototypes per (level, side).
    pub counts: PrototypeCounts,
    /// Total number of prototypes stored for this encoder.
    pub prototype_count: u32,
}

/// Everything the caller knows about a class before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecordDraft {
    /// Class name (validated, see [`validate_class_name`]).
    pub name: String,
    /// True for *stuff* classes (sky, grass, …), which keep only foreground prototypes.
    pub stuff: bool,
    /// Where the support images came from.
    pub source: ClassSource,
    /// Name of the foreground/background split method used.
    pub split_method: String,
    /// Support images that produced prototypes.
    pub images_used: u32,
    /// Support images skipped (unreadable, empty mask, …).
    pub images_skipped: u32,
    /// Images whose split fell back to a simpler method.
    pub fallback_splits: u32,
    /// The support images, in the order prototypes refer to them.
    pub support: Vec<SupportImageInfo>,
    /// When the class was first built, seconds since the Unix epoch; `None`
    /// stamps the time it is stored (an import keeps the file's time).
    pub created_unix: Option<u64>,
    /// How the build went, when known.
    pub stats: Option<BuildStats>,
}

/// A stored class: the draft plus what the bank assigned when storing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecord {
    /// Class name.
    pub name: String,
    /// True for *stuff* classes.
    pub stuff: bool,
    /// Where the support images came from.
    pub source: ClassSource,
    /// Name of the foreground/background split method used.
    pub split_method: String,
    /// When this build was stored, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Identifier of the build whose prototypes and support data this record points to.
    pub build_id: u64,
    /// Support images that produced prototypes.
    pub images_used: u32,
    /// Support images skipped.
    pub images_skipped: u32,
    /// Images whose split fell back to a simpler method.
    pub fallback_splits: u32,
    /// Per encoder; the index in this list is the encoder *slot* used in keys.
    pub encoders: Vec<ClassEncoderEntry>,
    /// The support images.
    pub support: Vec<SupportImageInfo>,
    /// How the build went; `None` for classes built before bank format 2.
    pub stats: Option<BuildStats>,
}

/// A class record as bank format 1 stored it, frozen: never change it. It
/// converts to the current [`ClassRecord`] with [`From`] (no statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecordV1 {
    /// Class name.
    pub name: String,
    /// True for *stuff* classes.
    pub stuff: bool,
    /// Where the support images came from.
    pub source: ClassSource,
    /// Name of the foreground/background split method used.
    pub split_method: String,
    /// When this build was stored, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Identifier of the build the record points to.
    pub build_id: u64,
    /// Support images that produced prototypes.
    pub images_used: u32,
    /// Support images skipped.
    pub images_skipped: u32,
    /// Images whose split fell back to a simpler method.
    pub fallback_splits: u32,
    /// Per encoder.
    pub encoders: Vec<ClassEncoderEntry>,
    /// The support images.
    pub support: Vec<SupportImageInfo>,
}

impl From<ClassRecordV1> for ClassRecord {
    fn from(v1: ClassRecordV1) -> ClassRecord {
        ClassRecord {
            name: v1.name,
            stuff: v1.stuff,
            source: v1.source,
            split_method: v1.split_method,
            created_unix: v1.created_unix,
            build_id: v1.build_id,
            images_used: v1.images_used,
            images_skipped: v1.images_skipped,
            fallback_splits: v1.fallback_splits,
            encoders: v1.encoders,
            support: v1.support,
            stats: None,
        }
    }
}

impl ClassRecord {
    /// Slot (index into [`ClassRecord::encoders`]) of the encoder with `fingerprint`.
    pub fn encoder_slot(&self, fingerprint: &str) -> Option<u16> {
        self.encoders
            .iter()
            .position(|e| e.fingerprint == fingerprint)
            .and_then(|i| u16::try_from(i).ok())
    }
}

/// Why a stored value could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The value is empty: not even a record-version byte.
    #[error("empty value")]
    Empty,
    /// The record version byte is one this build does not know.
    #[error("record version {found} is not supported (this build reads version {supported})")]
    UnknownRecordVersion {
        /// Version byte found.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// The value is shorter or longer than its header says.
    #[error("value is {found} bytes long, expected {expected}")]
    Length {
        /// Expected length in bytes.
        expected: usize,
        /// Actual length in bytes.
        found: usize,
    },
    /// A field holds a value outside its domain.
    #[error("field {field} holds invalid value {value}")]
    BadField {
        /// Field name.
        field: &'static str,
        /// Offending value.
        value: u64,
    },
    /// bytes follow the end of the record.
    #[error("{count} trailing bytes after the record")]
    TrailingBytes {
        /// Number of unexpected bytes.
        count: usize,
    },
    /// bincode could not decode or encode the record body.
    #[error("record body is malformed")]
    Bincode(#[source] BincodeError),
}

/// An opaque bincode encoding or decoding error.
#[derive(Debug)]
pub struct BincodeError(BincodeInner);

#[derive(Debug)]
enum BincodeInner {
    Decode(bincode::error::DecodeError),
    Encode(bincode::error::EncodeError),
}

impl fmt::Display for BincodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            BincodeInner::Decode(e) => write!(f, "bincode decode: {e}"),
            BincodeInner::Encode(e) => write!(f, "bincode encode: {e}"),
        }
    }
}

impl std::error::Error for BincodeError {}

/// Why a class name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassNameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_CLASS_NAME_BYTES`] bytes.
    TooLong,
    /// The name contains a control character.
    ControlCharacter,
    /// The name starts or ends with whitespace.
    SurroundingWhitespace,
}

impl fmt::Display for ClassNameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClassNameProblem::Empty => "it is empty",
            ClassNameProblem::TooLong => "it is longer than 128 bytes",
            ClassNameProblem::ControlCharacter => "it contains a control character",
            ClassNameProblem::SurroundingWhitespace => "it starts or ends with whitespace",
        })
    }
}

/// Checks a class name: non-empty, at most 128 bytes of UTF-8, no control
/// characters, no leading or trailing whitespace.
pub fn validate_class_name(name: &str) -> std::result::Result<(), ClassNameProblem> {
    if name.is_empty() {
        return Err(ClassNameProblem::Empty);
    }
    if name.len() > MAX_CLASS_NAME_BYTES {
        return Err(ClassNameProblem::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(ClassNameProblem::ControlCharacter);
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(ClassNameProblem::SurroundingWhitespace);
    }
    Ok(())
}

/// True when `fp` is 64 lowercase hex digits.
pub fn is_valid_fingerprint(fp: &str) -> bool {
    fp.len() == FINGERPRINT_LEN && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---------------------------------------------------------------------------
// Keys.

/// Keys of the `meta` tree.
pub(crate) mod meta_key {
    /// `b"ovdiff-bank"`; written first on creation.
    pub const MAGIC: &[u8] = b"magic";
    /// u32 LE; written last on creation (the commit marker).
    pub const FORMAT_VERSION: &[u8] = b"format_version";
    /// u32 LE.
    pub const OLDEST_READABLE: &[u8] = b"oldest_readable";
    /// UTF-8 version of the tool that created the bank.
    pub const TOOL_VERSION: &[u8] = b"tool_version";
    /// u64 LE: next build id to hand out.
    pub const NEXT_BUILD_ID: &[u8] = b"next_build_id";
    /// Prefix of encoder records; followed by the 64-hex fingerprint.
    pub const ENCODER_PREFIX: &[u8] = b"encoder/";
}

/// Tag byte of thumbnail keys in the `support` tree.
pub(crate) const SUPPORT_TAG_THUMBNAIL: u8 = b'T';
/// Tag byte of region keys in the `support` tree.
pub(crate) const SUPPORT_TAG_REGION: u8 = b'R';

/// `meta` key of the encoder with `fingerprint`.
pub(crate) fn encoder_key(fingerprint: &str) -> Vec<u8> {
    let mut k = meta_key::ENCODER_PREFIX.to_vec();
    k.extend_from_slice(fingerprint.as_bytes());
    k
}

/// Prefix shared by every `prototypes`/`support` key of a build.
pub(crate) fn build_prefix(build_id: u64) -> [u8; 8] {
    build_id.to_be_bytes()
}

/// Build id of a `prototypes` or `support` key, if it is long enough.
pub(crate) fn key_build_id(key: &[u8]) -> Option<u64> {
    let head: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// Prefix of the `prototypes` keys of one encoder slot of a build.
pub(crate) fn prototype_prefix(build_id: u64, slot: u16) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..8].copy_from_slice(&build_id.to_be_bytes());
    k[8..].copy_from_slice(&slot.to_be_bytes());
    k
}

/// `prototypes` key: build_id u64 BE | slot u16 BE | index u32 BE.
#[cfg(test)]
pub(crate) fn prototype_key(build_id: u64, slot: u16, index: u32) -> [u8; 14] {
    let mut k = [0u8; 14];
    k[..10].copy_from_slice(&prototype_prefix(build_id, slot));
    k[10..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Prototype index of a `prototypes` key.
pub(crate) fn prototype_key_index(key: &[u8]) -> Option<u32> {
    let tail: [u8; 4] = key.get(10..14)?.try_into().ok()?;
    (key.len() == 14).then(|| u32::from_be_bytes(tail))
}

/// `support` thumbnail key: build_id u64 BE | b'T' | image u32 BE.
pub(crate) fn thumbnail_key(build_id: u64, image: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..8].copy_from_slice(&build_id.to_be_bytes());
    k[8] = SUPPORT_TAG_THUMBNAIL;
    k[9..].copy_from_slice(&image.to_be_bytes());
    k
}

/// `support` region key: build_id u64 BE | b'R' | slot u16 BE | index u32 BE.
pub(crate) fn region_key(build_id: u64, slot: u16, index: u32) -> [u8; 15] {
    let mut k = [0u8; 15];
    k[..8].copy_from_slice(&build_id.to_be_bytes());
    k[8] = SUPPORT_TAG_REGION;
    k[9..11].copy_from_slice(&slot.to_be_bytes());
    k[11..].copy_from_slice(&index.to_be_bytes());
    k
}

// ---------------------------------------------------------------------------
// Small fixed values.

/// Encodes a u32 meta value (4 bytes LE).
pub(crate) fn encode_u32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// Decodes a u32 meta value (exactly 4 bytes LE).
pub(crate) fn decode_u32(bytes: &[u8]) -> Result<u32, RecordError> {
    let a: [u8; 4] = bytes.try_into().map_err(|_| RecordError::Length {
        expected: 4,
        found: bytes.len(),
    })?;
    Ok(u32::from_le_bytes(a))
}

// ---------------------------------------------------------------------------
// bincode records.

/// Decoding refuses bodies above this size (corruption guard).
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

fn encode_body<T: bincode::Encode>(version: u8, body: T) -> Result<Vec<u8>, RecordError> {
    let cfg = bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding();
    let mut out = vec![version];
    bincode::encode_into_std_write(body, &mut out, cfg)
        .map_err(|e| RecordError::Bincode(BincodeError(BincodeInner::Encode(e))))?;
    Ok(out)
}

fn decode_body<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, RecordError> {
    decode_versioned_body(strip_version(bytes)?)
}

/// Decodes a bincode body whose version byte the caller has already read.
fn decode_versioned_body<T: bincode::Decode<()>>(body: &[u8]) -> Result<T, RecordError> {
    let cfg = bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<DECODE_LIMIT>();
    let (value, used) = bincode::decode_from_slice(body, cfg)
        .map_err(|e| RecordError::Bincode(BincodeError(BincodeInner::Decode(e))))?;
    if used != body.len() {
        return Err(RecordError::TrailingBytes {
            count: body.len() - used,
        });
    }
    Ok(value)
}

fn strip_version(bytes: &[u8]) -> Result<&[u8], RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&RECORD_VERSION, rest)) => Ok(rest),
        Some((&found, _)) => Err(RecordError::UnknownRecordVersion {
            found,
            supported: RECORD_VERSION,
        }),
    }
}

#[derive(bincode::Encode, bincode::Decode)]
struct EncoderWireV1 {
    fingerprint: String,
    name: String,
    dim: u32,
    dtype: String,
}

#[derive(bincode::Encode, bincode::Decode)]
enum SourceWireV1 {
    Images {
        dir: String,
    },
    Generator {
        fingerprint: String,
        params: Vec<(String, String)>,
    },
}

#[derive(bincode::Encode, bincode::Decode)]
struct SupportWireV1 {
    name: String,
    width: u32,
    height: u32,
}

#[derive(bincode::Encode, bincode::Decode)]
struct EncoderEntryWireV1 {
    fingerprint: String,
    counts: [u32; 6],
    prototype_count: u32,
}

#[derive(bincode::Encode, bincode::Decode)]
struct BuildStatsWireV2 {
    tool_version: String,
    total_ms: u64,
    sample_ms: u64,
    decode_ms: u64,
    encode_ms: u64,
    pool_ms: u64,
    fg_patches: u64,
    bg_patches: u64,
}

/// Class record body of record version 2 (bank format 2): v1's fields, then
/// the optional build statistics.
#[derive(bincode::Encode, bincode::Decode)]
struct ClassWireV2 {
    name: String,
    stuff: bool,
    source: SourceWireV1,
    split_method: String,
    created_unix: u64,
    build_id: u64,
    images_used: u32,
    images_skipped: u32,
    fallback_splits: u32,
    encoders: Vec<EncoderEntryWireV1>,
    support: Vec<SupportWireV1>,
    stats: Option<BuildStatsWireV2>,
}

/// Class record body of record version 1 (bank format 1). Frozen.
#[derive(bincode::Encode, bincode::Decode)]
struct ClassWireV1 {
    name: String,
    stuff: bool,
    source: SourceWireV1,
    split_method: String,
    created_unix: u64,
    build_id: u64,
    images_used: u32,
    images_skipped: u32,
    fallback_splits: u32,
    encoders: Vec<EncoderEntryWireV1>,
    support: Vec<SupportWireV1>,
}

/// Encodes an encoder record (`meta` tree).
pub(crate) fn encode_encoder(info: &EncoderInfo) -> Result<Vec<u8>, RecordError> {
    encode_body(
        RECORD_VERSION,
        EncoderWireV1 {
            fingerprint: info.fingerprint.clone(),
            name: info.name.clone(),
            dim: info.dim,
            dtype: info.dtype.clone(),
        },
    )
}

/// Decodes an encoder record.
pub(crate) fn decode_encoder(bytes: &[u8]) -> Result<EncoderInfo, RecordError> {
    let w: EncoderWireV1 = decode_body(bytes)?;
    Ok(EncoderInfo {
        fingerprint: w.fingerprint,
        name: w.name,
        dim: w.dim,
        dtype: w.dtype,
    })
}

fn source_to_wire(source: &ClassSource) -> SourceWireV1 {
    match source {
        ClassSource::Images { dir } => SourceWireV1::Images { dir: dir.clone() },
        ClassSource::Generator {
            fingerprint,
            params,
        } => SourceWireV1::Generator {
            fingerprint: fingerprint.clone(),
            params: params.clone(),
        },
    }
}

fn source_from_wire(w: SourceWireV1) -> ClassSource {
    match w {
        SourceWireV1::Images { dir } => ClassSource::Images { dir },
        SourceWireV1::Generator {
            fingerprint,
            params,
        } => ClassSource::Generator {
            fingerprint,
            params,
        },
    }
}

fn entries_to_wire(entries: &[ClassEncoderEntry]) -> Vec<EncoderEntryWireV1> {
    entries
        .iter()
        .map(|e| EncoderEntryWireV1 {
            fingerprint: e.fingerprint.clone(),
            counts: e.counts.to_array(),
            prototype_count: e.prototype_count,
        })
        .collect()
}

fn entries_from_wire(w: Vec<EncoderEntryWireV1>) -> Vec<ClassEncoderEntry> {
    w.into_iter()
        .map(|e| ClassEncoderEntry {
            fingerprint: e.fingerprint,
            counts: PrototypeCounts::from_array(e.counts),
            prototype_count: e.prototype_count,
        })
        .collect()
}

fn support_to_wire(support: &[SupportImageInfo]) -> Vec<SupportWireV1> {
    support
        .iter()
        .map(|s| SupportWireV1 {
            name: s.name.clone(),
            width: s.width,
            height: s.height,
        })
        .collect()
}

fn support_from_wire(w: Vec<SupportWireV1>) -> Vec<SupportImageInfo> {
    w.into_iter()
        .map(|s| SupportImageInfo {
            name: s.name,
            width: s.width,
            height: s.height,
        })
        .collect()
}

/// Encodes a class record (`classes` tree) as record version
/// [`CLASS_RECORD_VERSION`].
pub(crate) fn encode_class(rec: &ClassRecord) -> Result<Vec<u8>, RecordError> {
    encode_body(
        CLASS_RECORD_VERSION,
        ClassWireV2 {
            name: rec.name.clone(),
            stuff: rec.stuff,
            source: source_to_wire(&rec.source),
            split_method: rec.split_method.clone(),
            created_unix: rec.created_unix,
            build_id: rec.build_id,
            images_used: rec.images_used,
            images_skipped: rec.images_skipped,
            fallback_splits: rec.fallback_splits,
            encoders: entries_to_wire(&rec.encoders),
            support: support_to_wire(&rec.support),
            stats: rec.stats.as_ref().map(|s| BuildStatsWireV2 {
                tool_version: s.tool_version.clone(),
                total_ms: s.total_ms,
                sample_ms: s.sample_ms,
                decode_ms: s.decode_ms,
                encode_ms: s.encode_ms,
                pool_ms: s.pool_ms,
                fg_patches: s.fg_patches,
                bg_patches: s.bg_patches,
            }),
        },
    )
}

/// Encodes a class record the way bank format 1 did (record version 1).
/// Only tests use it, to write format-1 data.
#[cfg(test)]
pub(crate) fn encode_class_v1(rec: &ClassRecordV1) -> Result<Vec<u8>, RecordError> {
    encode_body(
        1,
        ClassWireV1 {
            name: rec.name.clone(),
            stuff: rec.stuff,
            source: source_to_wire(&rec.source),
            split_method: rec.split_method.clone(),
            created_unix: rec.created_unix,
            build_id: rec.build_id,
            images_used: rec.images_used,
            images_skipped: rec.images_skipped,
            fallback_splits: rec.fallback_splits,
            encoders: entries_to_wire(&rec.encoders),
            support: support_to_wire(&rec.support),
        },
    )
}

/// Record version byte of a stored class record.
pub(crate) fn class_record_version(bytes: &[u8]) -> Result<u8, RecordError> {
    bytes.first().copied().ok_or(RecordError::Empty)
}

/// Decodes a class record of record version 1 or 2; version 1 records go
/// through the frozen [`ClassRecordV1`].
pub(crate) fn decode_class(bytes: &[u8]) -> Result<ClassRecord, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((1, body)) => Ok(decode_class_v1(body)?.into()),
        Some((&CLASS_RECORD_VERSION, body)) => {
            let w: ClassWireV2 = decode_versioned_body(body)?;
            Ok(ClassRecord {
                name: w.name,
                stuff: w.stuff,
                source: source_from_wire(w.source),
                split_method: w.split_method,
                created_unix: w.created_unix,
                build_id: w.build_id,
                images_used: w.images_used,
                images_skipped: w.images_skipped,
                fallback_splits: w.fallback_splits,
                encoders: entries_from_wire(w.encoders),
                support: support_from_wire(w.support),
                stats: w.stats.map(|s| BuildStats {
                    tool_version: s.tool_version,
                    total_ms: s.total_ms,
                    sample_ms: s.sample_ms,
                    decode_ms: s.decode_ms,
                    encode_ms: s.encode_ms,
                    pool_ms: s.pool_ms,
                    fg_patches: s.fg_patches,
                    bg_patches: s.bg_patches,
                }),
            })
        }
        Some((&found, _)) => Err(RecordError::UnknownRecordVersion {
            found,
            supported: CLASS_RECORD_VERSION,
        }),
    }
}

fn decode_class_v1(body: &[u8]) -> Result<ClassRecordV1, RecordError> {
    let w: ClassWireV1 = decode_versioned_body(body)?;
    Ok(ClassRecordV1 {
        name: w.name,
        stuff: w.stuff,
        source: source_from_wire(w.source),
        split_method: w.split_method,
        created_unix: w.created_unix,
        build_id: w.build_id,
        images_used: w.images_used,
        images_skipped: w.images_skipped,
        fallback_splits: w.fallback_splits,
        encoders: entries_from_wire(w.encoders),
        support: support_from_wire(w.support),
    })
}

// ---------------------------------------------------------------------------
// Prototype vectors and regions (explicit layouts).

/// Length of the prototype value header, version byte included.
pub(crate) const PROTOTYPE_HEADER_LEN: usize = 13;
/// Length of the region value header, version byte included.
pub(crate) const REGION_HEADER_LEN: usize = 5;

fn level_code(level: Level) -> u8 {
    match level {
        Level::Class => 0,
        Level::Instance => 1,
        Level::Part => 2,
    }
}

fn side_code(side: Side) -> u8 {
    match side {
        Side::Foreground => 0,
        Side::Background => 1,
    }
}

/// A prototype value as stored, without its region.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredPrototype {
    pub level: Level,
    pub side: Side,
    pub support: u32,
    pub image: u32,
    pub vector: Vec<f32>,
}

/// Encodes a prototype value. The caller has checked that the vector length fits a u16.
#[cfg(test)]
pub(crate) fn encode_prototype(p: &Prototype) -> Vec<u8> {
    let dim = p.vector.len();
    let mut out = Vec::with_capacity(PROTOTYPE_HEADER_LEN + 2 * dim);
    out.push(RECORD_VERSION);
    out.push(level_code(p.level));
    out.push(side_code(p.side));
    out.extend_from_slice(&p.support.to_le_bytes());
    out.extend_from_slice(&p.provenance.image.to_le_bytes());
    out.extend_from_slice(&u16::try_from(dim).unwrap_or(u16::MAX).to_le_bytes());
    for &v in &p.vector {
        out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    }
    out
}

/// Decodes a prototype value.
pub(crate) fn decode_prototype(bytes: &[u8]) -> Result<StoredPrototype, RecordError> {
    let body = strip_version(bytes)?;
    if bytes.len() < PROTOTYPE_HEADER_LEN {
        return Err(RecordError::Length {
            expected: PROTOTYPE_HEADER_LEN,
            found: bytes.len(),
        });
    }
    let level = level_from(body[0])?;
    let side = side_from(body[1])?;
    let support = u32::from_le_bytes([body[2], body[3], body[4], body[5]]);
    let image = u32::from_le_bytes([body[6], body[7], body[8], body[9]]);
    let dim = usize::from(u16::from_le_bytes([body[10], body[11]]));
    let expected = PROTOTYPE_HEADER_LEN + 2 * dim;
    if bytes.len() != expected {
        return Err(RecordError::Length {
            expected,
            found: bytes.len(),
        });
    }
    let vector = body[12..]
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    Ok(StoredPrototype {
        level,
        side,
        support,
        image,
        vector,
    })
}

/// Encodes a region value: version, grid_h u16 LE, grid_w u16 LE, then
/// `ceil(grid_h * grid_w / 8)` bytes of bitset; patch `i` (row-major) is bit
/// `i % 8` (least significant first) of byte `i / 8`; padding bits are zero.
/// The caller has checked that the grid fits u16 and matches the mask length.
#[cfg(test)]
pub(crate) fn encode_region(grid_h: u16, grid_w: u16, mask: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REGION_HEADER_LEN + mask.len().div_ceil(8));
    out.push(RECORD_VERSION);
    out.extend_from_slice(&grid_h.to_le_bytes());
    out.extend_from_slice(&grid_w.to_le_bytes());
    push_bitset(&mut out, mask);
    out
}

/// Decodes a region value into a provenance for `image`.
pub(crate) fn decode_region(bytes: &[u8], image: u32) -> Result<Provenance, RecordError> {
    let body = strip_version(bytes)?;
    if bytes.len() < REGION_HEADER_LEN {
        return Err(RecordError::Length {
            expected: REGION_HEADER_LEN,
            found: bytes.len(),
        });
    }
    let grid_h = u16::from_le_bytes([body[0], body[1]]);
    let grid_w = u16::from_le_bytes([body[2], body[3]]);
    let n = usize::from(grid_h) * usize::from(grid_w);
    let expected = REGION_HEADER_LEN + n.div_ceil(8);
    if bytes.len() != expected {
        return Err(RecordError::Length {
            expected,
            found: bytes.len(),
        });
    }
    let bits = &body[4..];
    let region = (0..n).map(|i| bits[i / 8] >> (i % 8) & 1 == 1).collect();
    Ok(Provenance {
        image,
        grid_h: grid_h.into(),
        grid_w: grid_w.into(),
        region,
    })
}

// ---------------------------------------------------------------------------
// Prototype blocks (format 2): every prototype of one encoder slot of a build
// in one value.

/// Version byte of a prototype block value.
pub(crate) const BLOCK_VERSION: u8 = 2;

/// Length of the block header: version, count u32, dim u16.
pub(crate) const BLOCK_HEADER_LEN: usize = 7;

/// Length of one prototype's metadata in a block: level, side, support u32, image u32.
const BLOCK_META_LEN: usize = 10;

/// Encodes the prototypes of one encoder slot as one block value:
/// header (version 2, count u32 LE, dim u16 LE), then `count` metadata
/// records (level u8, side u8, support u32 LE, image u32 LE), then the
/// vectors (`count × dim` f16 LE, row-major), then the regions (per
/// prototype: grid_h u16 LE, grid_w u16 LE, LSB-first bitset). The caller
/// has checked counts, dimensions and grids (`Bank::validate_build`).
pub(crate) fn encode_block(protos: &[Prototype]) -> Vec<u8> {
    let dim = protos.first().map_or(0, |p| p.vector.len());
    let regions: usize = protos
        .iter()
        .map(|p| 4 + p.provenance.region.len().div_ceil(8))
        .sum();
    let mut out =
        Vec::with_capacity(BLOCK_HEADER_LEN + protos.len() * (BLOCK_META_LEN + 2 * dim) + regions);
    out.push(BLOCK_VERSION);
    out.extend_from_slice(
        &u32::try_from(protos.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&u16::try_from(dim).unwrap_or(u16::MAX).to_le_bytes());
    for p in protos {
        out.push(level_code(p.level));
        out.push(side_code(p.side));
        out.extend_from_slice(&p.support.to_le_bytes());
        out.extend_from_slice(&p.provenance.image.to_le_bytes());
    }
    for p in protos {
        for &v in &p.vector {
            out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    for p in protos {
        let pv = &p.provenance;
        out.extend_from_slice(&(pv.grid_h as u16).to_le_bytes());
        out.extend_from_slice(&(pv.grid_w as u16).to_le_bytes());
        push_bitset(&mut out, &pv.region);
    }
    out
}

/// Decodes a block value (see [`encode_block`]).
pub(crate) fn decode_block(bytes: &[u8]) -> Result<Vec<Prototype>, RecordError> {
    match bytes.first() {
        None => return Err(RecordError::Empty),
        Some(&BLOCK_VERSION) => {}
        Some(&found) => {
            return Err(RecordError::UnknownRecordVersion {
                found,
                supported: BLOCK_VERSION,
            })
        }
    }
    if bytes.len() < BLOCK_HEADER_LEN {
        return Err(RecordError::Length {
            expected: BLOCK_HEADER_LEN,
            found: bytes.len(),
        });
    }
    let count = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let dim = usize::from(u16::from_le_bytes([bytes[5], bytes[6]]));
    let fixed = count
        .checked_mul(BLOCK_META_LEN + 2 * dim)
        .and_then(|n| n.checked_add(BLOCK_HEADER_LEN))
        .filter(|&n| n <= bytes.len())
        .ok_or(RecordError::Length {
            expected: BLOCK_HEADER_LEN + count.saturating_mul(BLOCK_META_LEN + 2 * dim),
            found: bytes.len(),
        })?;
    let metas = &bytes[BLOCK_HEADER_LEN..BLOCK_HEADER_LEN + count * BLOCK_META_LEN];
    let vectors = &bytes[BLOCK_HEADER_LEN + count * BLOCK_META_LEN..fixed];
    let mut rest = &bytes[fixed..];
    let mut out = Vec::with_capacity(count);
    for (m, v) in metas
        .chunks_exact(BLOCK_META_LEN)
        .zip(vectors.chunks_exact(2 * dim.max(1)))
    {
        let level = level_from(m[0])?;
        let side = side_from(m[1])?;
        let support = u32::from_le_bytes([m[2], m[3], m[4], m[5]]);
        let image = u32::from_le_bytes([m[6], m[7], m[8], m[9]]);
        if rest.len() < 4 {
            return Err(RecordError::Length {
                expected: bytes.len() - rest.len() + 4,
                found: bytes.len(),
            });
        }
        let grid_h = u16::from_le_bytes([rest[0], rest[1]]);
        let grid_w = u16::from_le_bytes([rest[2], rest[3]]);
        let n = usize::from(grid_h) * usize::from(grid_w);
        let need = 4 + n.div_ceil(8);
        if rest.len() < need {
            return Err(RecordError::Length {
                expected: bytes.len() - rest.len() + need,
                found: bytes.len(),
            });
        }
        let bits = &rest[4..need];
        rest = &rest[need..];
        out.push(Prototype {
            level,
            side,
            vector: v[..2 * dim]
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            support,
            provenance: Provenance {
                image,
                grid_h: grid_h.into(),
                grid_w: grid_w.into(),
                region: (0..n).map(|i| bits[i / 8] >> (i % 8) & 1 == 1).collect(),
            },
        });
    }
    if dim == 0 && count > 0 {
        return Err(RecordError::BadField {
            field: "dim",
            value: 0,
        });
    }
    if !rest.is_empty() {
        return Err(RecordError::TrailingBytes { count: rest.len() });
    }
    Ok(out)
}

/// Encodes the JPEG thumbnails of a build as one value: version 2, count
/// u32 LE, `count` lengths u32 LE (0: no thumbnail), then the bytes.
pub(crate) fn encode_thumbnail_pack(thumbs: &[Vec<u8>]) -> Vec<u8> {
    let total: usize = thumbs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(5 + 4 * thumbs.len() + total);
    out.push(BLOCK_VERSION);
    out.extend_from_slice(
        &u32::try_from(thumbs.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for t in thumbs {
        out.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for t in thumbs {
        out.extend_from_slice(t);
    }
    out
}

/// Thumbnail `image` of a pack (see [`encode_thumbnail_pack`]); `None` when
/// the pack has no (or an empty) entry for it.
pub(crate) fn pack_thumbnail(pack: &[u8], image: u32) -> Result<Option<&[u8]>, RecordError> {
    match pack.first() {
        None => return Err(RecordError::Empty),
        Some(&BLOCK_VERSION) => {}
        Some(&found) => {
            return Err(RecordError::UnknownRecordVersion {
                found,
                supported: BLOCK_VERSION,
            })
        }
    }
    let short = |expected: usize| RecordError::Length {
        expected,
        found: pack.len(),
    };
    let count = pack
        .get(1..5)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| short(5))?;
    let table_end = count
        .checked_mul(4)
        .and_then(|n| n.checked_add(5))
        .filter(|&n| n <= pack.len())
        .ok_or_else(|| short(5 + count.saturating_mul(4)))?;
    let lengths: Vec<usize> = pack[5..table_end]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let total = lengths.iter().try_fold(table_end, |a, &l| a.checked_add(l));
    if total != Some(pack.len()) {
        return Err(short(total.unwrap_or(usize::MAX)));
    }
    let i = image as usize;
    if i >= count || lengths[i] == 0 {
        return Ok(None);
    }
    let start = table_end + lengths[..i].iter().sum::<usize>();
    Ok(Some(&pack[start..start + lengths[i]]))
}

fn level_from(code: u8) -> Result<Level, RecordError> {
    match code {
        0 => Ok(Level::Class),
        1 => Ok(Level::Instance),
        2 => Ok(Level::Part),
        v => Err(RecordError::BadField {
            field: "level",
            value: v.into(),
        }),
    }
}

fn side_from(code: u8) -> Result<Side, RecordError> {
    match code {
        0 => Ok(Side::Foreground),
        1 => Ok(Side::Background),
        v => Err(RecordError::BadField {
            field: "side",
            value: v.into(),
        }),
    }
}

fn push_bitset(out: &mut Vec<u8>, mask: &[bool]) {
    for chunk in mask.chunks(8) {
        let byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |b, (i, &on)| b | (u8::from(on) << i));
        out.push(byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn sample_class() -> ClassRecord {
        ClassRecord {
            name: "cat".into(),
            stuff: false,
            source: ClassSource::Generator {
                fingerprint: fp('a'),
                params: vec![("prompt".into(), "a photo of a cat".into())],
            },
            split_method: "kmeans-saliency".into(),
            created_unix: 1_700_000_000,
            build_id: 7,
            images_used: 2,
            images_skipped: 1,
            fallback_splits: 0,
            encoders: vec![ClassEncoderEntry {
                fingerprint: fp('b'),
                counts: PrototypeCounts {
                    class_fg: 1,
                    class_bg: 1,
                    instance_fg: 2,
                    instance_bg: 2,
                    part_fg: 4,
                    part_bg: 3,
                },
                prototype_count: 13,
            }],
            support: vec![SupportImageInfo {
                name: "cat 1.jpg".into(),
                width: 640,
                height: 480,
            }],
            stats: Some(BuildStats {
                tool_version: "0.1.0".into(),
                total_ms: 1500,
                ..BuildStats::default()
            }),
        }
    }

    #[test]
    fn class_record_round_trips() {
        let rec = sample_class();
        let bytes = encode_class(&rec).unwrap();
        assert_eq!(bytes[0], CLASS_RECORD_VERSION);
        assert_eq!(decode_class(&bytes).unwrap(), rec);
        let images = ClassRecord {
            source: ClassSource::Images {
                dir: "/data/cats".into(),
            },
            ..rec
        };
        assert_eq!(
            decode_class(&encode_class(&images).unwrap()).unwrap(),
            images
        );
    }

    #[test]
    fn encoder_record_golden_bytes() {
        let info = EncoderInfo {
            fingerprint: "ab".into(),
            name: "x".into(),
            dim: 384,
            dtype: DTYPE_F16.into(),
        };
        let bytes = encode_encoder(&info).unwrap();
        // version, then strings as u64 LE length + bytes, u32 LE.
        let mut expected = vec![1u8];
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"x");
        expected.extend_from_slice(&384u32.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"f16");
        assert_eq!(bytes, expected);
        assert_eq!(decode_encoder(&bytes).unwrap(), info);
    }

    #[test]
    fn class_record_golden_prefix() {
        // Pins the documented layout: enum tags are u32 LE, bool one byte,
        // arrays have no length prefix, an Option is a one-byte tag.
        let v1 = ClassRecordV1 {
            name: "a".into(),
            stuff: true,
            source: ClassSource::Images { dir: "d".into() },
            split_method: "s".into(),
            created_unix: 2,
            build_id: 3,
            images_used: 4,
            images_skipped: 5,
            fallback_splits: 6,
            encoders: vec![ClassEncoderEntry {
                fingerprint: "f".into(),
                counts: PrototypeCounts::from_array([1, 2, 3, 4, 5, 6]),
                prototype_count: 21,
            }],
            support: vec![],
        };
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(b'a');
        body.push(1); // stuff
        body.extend_from_slice(&0u32.to_le_bytes()); // Images
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(b'd');
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(b's');
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend_from_slice(&3u64.to_le_bytes());
        for v in [4u32, 5, 6] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&1u64.to_le_bytes()); // one encoder entry
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(b'f');
        for v in [1u32, 2, 3, 4, 5, 6, 21] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&0u64.to_le_bytes()); // no support images

        // Record version 1 (bank format 1), frozen.
        let old = encode_class_v1(&v1).unwrap();
        assert_eq!(old, [&[1u8][..], &body].concat());
        let migrated = ClassRecord::from(v1);
        assert_eq!(decode_class(&old).unwrap(), migrated);
        assert_eq!(migrated.stats, None);

        // Record version 2: the same body, then the statistics option.
        let mut e = vec![2u8];
        e.extend_from_slice(&body);
        e.push(0); // no statistics
        assert_eq!(encode_class(&migrated).unwrap(), e);

        let mut with = migrated.clone();
        with.stats = Some(BuildStats {
            tool_version: "v".into(),
            total_ms: 7,
            sample_ms: 8,
            decode_ms: 9,
            encode_ms: 10,
            pool_ms: 11,
            fg_patches: 12,
            bg_patches: 13,
        });
        let mut e = vec![2u8];
        e.extend_from_slice(&body);
        e.push(1);
        e.extend_from_slice(&1u64.to_le_bytes());
        e.push(b'v');
        for v in 7u64..=13 {
            e.extend_from_slice(&v.to_le_bytes());
        }
        let b = encode_class(&with).unwrap();
        assert_eq!(b, e);
        assert_eq!(decode_class(&b).unwrap(), with);
        let err = decode_class(&[3u8, 0]).unwrap_err();
        assert!(matches!(
            err,
            RecordError::UnknownRecordVersion { found: 3, .. }
        ));
    }

    #[test]
    fn prototype_round_trips_within_f16_precision() {
        let vector: Vec<f32> = (0..384).map(|i| ((i as f32) * 0.37).sin() * 0.3).collect();
        let p = Prototype {
            level: Level::Part,
            side: Side::Background,
            vector: vector.clone(),
            support: 123,
            provenance: Provenance {
                image: 5,
                grid_h: 2,
                grid_w: 2,
                region: vec![true; 4],
            },
        };
        let bytes = encode_prototype(&p);
        assert_eq!(bytes.len(), PROTOTYPE_HEADER_LEN + 2 * 384);
        assert_eq!(&bytes[..3], &[1, 2, 1]);
        assert_eq!(&bytes[3..7], &123u32.to_le_bytes());
        assert_eq!(&bytes[7..11], &5u32.to_le_bytes());
        assert_eq!(&bytes[11..13], &384u16.to_le_bytes());
        let s = decode_prototype(&bytes).unwrap();
        assert_eq!(
            (s.level, s.side, s.support, s.image),
            (p.level, p.side, 123, 5)
        );
        for (a, b) in s.vector.iter().zip(&vector) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn prototype_decode_rejects_bad_bytes() {
        assert!(matches!(decode_prototype(&[]), Err(RecordError::Empty)));
        assert!(matches!(
            decode_prototype(&[9, 0, 0]),
            Err(RecordError::UnknownRecordVersion { found: 9, .. })
        ));
        let mut bytes = vec![1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            decode_prototype(&bytes),
            Err(RecordError::BadField { field: "level", .. })
        ));
        bytes[1] = 0;
        bytes[11] = 1; // dim 1 but no payload
        assert!(matches!(
            decode_prototype(&bytes),
            Err(RecordError::Length { expected: 15, .. })
        ));
    }

    #[test]
    fn blocks_round_trip_and_reject_bad_bytes() {
        let protos: Vec<Prototype> = (0..3u32)
            .map(|i| Prototype {
                level: [Level::Class, Level::Instance, Level::Part][i as usize],
                side: if i == 1 {
                    Side::Background
                } else {
                    Side::Foreground
                },
                vector: vec![0.25 * i as f32, -0.5, 1.0],
                support: i + 1,
                provenance: Provenance {
                    image: i,
                    grid_h: 3,
                    grid_w: 3,
                    region: (0..9).map(|k| (k + i) % 2 == 0).collect(),
                },
            })
            .collect();
        let b = encode_block(&protos);
        assert_eq!(b[0], BLOCK_VERSION);
        assert_eq!(b.len(), BLOCK_HEADER_LEN + 3 * (10 + 6) + 3 * (4 + 2));
        assert_eq!(decode_block(&b).unwrap(), protos);
        for cut in [0, 3, BLOCK_HEADER_LEN, b.len() - 1] {
            assert!(decode_block(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            decode_block(&long),
            Err(RecordError::TrailingBytes { count: 1 })
        ));
        let mut bad = b.clone();
        bad[BLOCK_HEADER_LEN] = 9; // level of prototype 0
        assert!(matches!(
            decode_block(&bad),
            Err(RecordError::BadField { field: "level", .. })
        ));
        let mut huge = b.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_block(&huge),
            Err(RecordError::Length { .. })
        ));
        assert!(matches!(
            decode_block(&[1]),
            Err(RecordError::UnknownRecordVersion { found: 1, .. })
        ));
    }

    #[test]
    fn thumbnail_packs_index_and_reject_bad_bytes() {
        let thumbs = vec![vec![1u8, 2, 3], vec![], vec![9u8; 5]];
        let p = encode_thumbnail_pack(&thumbs);
        assert_eq!(pack_thumbnail(&p, 0).unwrap(), Some(&[1u8, 2, 3][..]));
        assert_eq!(pack_thumbnail(&p, 1).unwrap(), None);
        assert_eq!(pack_thumbnail(&p, 2).unwrap(), Some(&[9u8; 5][..]));
        assert_eq!(pack_thumbnail(&p, 3).unwrap(), None);
        assert!(pack_thumbnail(&p[..p.len() - 1], 0).is_err());
        assert!(pack_thumbnail(&p[..6], 0).is_err());
        let mut huge = p.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pack_thumbnail(&huge, 0).is_err());
        assert!(pack_thumbnail(&[], 0).is_err());
    }

    #[test]
    fn region_bitset_is_lsb_first() {
        let mask = vec![
            true, false, false, false, false, false, false, false, false, true,
        ];
        let bytes = encode_region(2, 5, &mask);
        assert_eq!(bytes, vec![1, 2, 0, 5, 0, 0b0000_0001, 0b0000_0010]);
        let p = decode_region(&bytes, 3).unwrap();
        assert_eq!((p.image, p.grid_h, p.grid_w), (3, 2, 5));
        assert_eq!(p.region, mask);
        assert!(decode_region(&bytes[..6], 3).is_err());
    }

    #[test]
    fn keys_sort_by_build_slot_index() {
        assert!(prototype_key(1, 0, 300) < prototype_key(1, 1, 0));
        assert!(prototype_key(1, 9, 9) < prototype_key(2, 0, 0));
        assert_eq!(key_build_id(&thumbnail_key(42, 1)), Some(42));
        assert_eq!(key_build_id(&region_key(43, 1, 2)), Some(43));
        assert_eq!(prototype_key_index(&prototype_key(4, 1, 77)), Some(77));
        assert_eq!(
            thumbnail_key(1, 2),
            [0, 0, 0, 0, 0, 0, 0, 1, b'T', 0, 0, 0, 2]
        );
    }

    #[test]
    fn class_names_are_validated() {
        assert!(validate_class_name("traffic light").is_ok());
        assert!(validate_class_name("chat noir é").is_ok());
        assert_eq!(validate_class_name(""), Err(ClassNameProblem::Empty));
        assert_eq!(
            validate_class_name(&"x".repeat(129)),
            Err(ClassNameProblem::TooLong)
        );
        assert!(validate_class_name(&"x".repeat(128)).is_ok());
        assert_eq!(
            validate_class_name("a\nb"),
            Err(ClassNameProblem::ControlCharacter)
        );
        assert_eq!(
            validate_class_name(" cat"),
            Err(ClassNameProblem::SurroundingWhitespace)
        );
        assert_eq!(
            validate_class_name("cat\u{a0}"),
            Err(ClassNameProblem::SurroundingWhitespace)
        );
    }

    #[test]
    fn counts_index_by_level_and_side() {
        let c = PrototypeCounts::from_array([1, 2, 3, 4, 5, 6]);
        assert_eq!(c.get(Level::Instance, Side::Background), 4);
        assert_eq!(c.get(Level::Part, Side::Foreground), 5);
        assert_eq!(c.total(), 21);
    }

    #[test]
    fn fingerprints_are_lowercase_hex() {
        assert!(is_valid_fingerprint(&fp('0')));
        assert!(!is_valid_fingerprint(&fp('A')));
        assert!(!is_valid_fingerprint("abc"));
    }
}
