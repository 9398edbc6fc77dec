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
//!
//! * [`types`]: the record types, and the rules for class names;
//! * this module: the bincode records, encoders and classes (record
//!   versions 1 and 2), and the errors of decoding. The private wire structs
//!   stay here because bincode names them, with their module path, in its
//!   error messages (`bank verify` shows them);
//! * [`keys`]: the keys of the sled trees and the small fixed `meta` values;
//! * [`format1`]: bank format 1's one value per prototype and per region;
//! * [`format2`]: bank format 2's prototype blocks and thumbnail packs, the
//!   bodies of build files.
//!
//! Fixed-width fields go through [`ovdiff_core::codec`].

pub(crate) mod format1;
pub(crate) mod format2;
pub(crate) mod keys;
pub(crate) mod types;

pub(crate) use format1::{decode_prototype, decode_region};
#[cfg(test)]
pub(crate) use format1::{encode_prototype, encode_region};
pub(crate) use format2::{decode_block, encode_block, encode_thumbnail_pack, pack_thumbnail};
#[cfg(test)]
pub(crate) use keys::prototype_key;
pub(crate) use keys::{
    build_prefix, decode_u32, decode_u64, encode_u32, encode_u64, encoder_key, key_build_id,
    meta_key, prototype_key_index, prototype_prefix, region_key, thumbnail_key,
};
pub use types::{
    is_valid_fingerprint, validate_class_name, BuildStats, ClassEncoderEntry, ClassNameProblem,
    ClassRecord, ClassRecordDraft, ClassRecordV1, ClassSource, EncoderInfo, PrototypeCounts,
    SupportImageInfo, DTYPE_F16, MAX_CLASS_NAME_BYTES,
};

use std::fmt;

use ovdiff_core::prototype::{Level, Side};

/// Version byte that prefixes every record value this build writes, except
/// class records ([`CLASS_RECORD_VERSION`]).
pub const RECORD_VERSION: u8 = 1;

/// Version byte of the class records this build writes. Version 1 (bank
/// format 1) had no build statistics; it is still decoded, through the
/// frozen [`ClassRecordV1`].
pub const CLASS_RECORD_VERSION: u8 = 2;

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
// Shared by the byte layouts.

/// Code of a prototype level in every stored layout (bank records and
/// `.ovbank` files): class 0, instance 1, part 2.
pub(crate) fn level_code(level: Level) -> u8 {
    match level {
        Level::Class => 0,
        Level::Instance => 1,
        Level::Part => 2,
    }
}

/// The level of a code, if valid (see [`level_code`]).
pub(crate) fn level_from_code(code: u8) -> Option<Level> {
    match code {
        0 => Some(Level::Class),
        1 => Some(Level::Instance),
        2 => Some(Level::Part),
        _ => None,
    }
}

/// Code of a prototype side in every stored layout: foreground 0, background 1.
pub(crate) fn side_code(side: Side) -> u8 {
    match side {
        Side::Foreground => 0,
        Side::Background => 1,
    }
}

/// The side of a code, if valid (see [`side_code`]).
pub(crate) fn side_from_code(code: u8) -> Option<Side> {
    match code {
        0 => Some(Side::Foreground),
        1 => Some(Side::Background),
        _ => None,
    }
}

/// The body of a value after its [`RECORD_VERSION`] byte.
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

/// The level of a stored code, or [`RecordError::BadField`].
fn level_from(code: u8) -> Result<Level, RecordError> {
    level_from_code(code).ok_or(RecordError::BadField {
        field: "level",
        value: code.into(),
    })
}

/// The side of a stored code, or [`RecordError::BadField`].
fn side_from(code: u8) -> Result<Side, RecordError> {
    side_from_code(code).ok_or(RecordError::BadField {
        field: "side",
        value: code.into(),
    })
}

/// [`RecordError::Length`] for a field that runs past the end of a value of
/// `len` bytes: the value should have reached the field's end.
fn short(len: usize) -> impl Fn(ovdiff_core::codec::Truncated) -> RecordError {
    move |t| RecordError::Length {
        expected: t.at.saturating_add(t.need),
        found: len,
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
}
