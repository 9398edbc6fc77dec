//! The metadata sections of an `.ovbank` file, parsed from untrusted bytes:
//! `encoders`, `classes`, the optional `stats` (format 2) and `ann`. Every
//! count is checked against the bytes that remain before anything is
//! allocated, every string's length and encoding, every cross-reference.

use super::super::error::{OvBankError, Result};
use super::super::format::{
    Cursor, ALIGN, ELEMENT_F16, MIN_ANN_ENTRY_LEN, MIN_CLASS_LEN, MIN_ENCODER_LEN, MIN_PARAM_LEN,
    MIN_SUPPORT_LEN,
};
use super::{AnnEntry, OvClass, SectionInfo};
use crate::bank::{
    validate_class_name, BuildStats, ClassSource, EncoderInfo, SupportImageInfo, DTYPE_F16,
};

/// Where a support image's thumbnail lies in the `thumbnails` section
/// (length 0: none).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ThumbLoc {
    pub(super) offset: u64,
    pub(super) length: u64,
}

/// The header of a section with one record per class (`stats`, `labels`):
/// the record count, which must be `classes`, and a reserved zero word.
/// Returns the count, checked against the bytes left at `min_record` bytes
/// per record.
fn per_class_header(c: &mut Cursor<'_>, classes: usize, min_record: u64) -> Result<usize> {
    let count = c.u32("the record count")?;
    if count as usize != classes {
        return Err(c.err(format!("it has {count} records for {classes} classes")));
    }
    if c.u32("reserved bytes")? != 0 {
        return Err(c.err("reserved bytes are not zero"));
    }
    c.count_fits(u64::from(count), min_record, "the records")
}

/// Parses the optional `labels` section (format 3): one u32 per class, in
/// class order, its stable label id (0: none). Ids are unique.
pub(super) fn parse_labels(
    bytes: &[u8],
    sec: &SectionInfo,
    classes: usize,
) -> Result<Vec<Option<u32>>> {
    let mut c = Cursor::new(bytes, "labels", sec.offset);
    let n = per_class_header(&mut c, classes, 4)?;
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = c.u32("a label id")?;
        if id != 0 && !seen.insert(id) {
            return Err(c.err(format!("label id {id} is given to two classes")));
        }
        out.push((id != 0).then_some(id));
    }
    Ok(out)
}

/// Parses the optional `stats` section (format 2): one record per class, in
/// class order.
pub(super) fn parse_stats(
    bytes: &[u8],
    sec: &SectionInfo,
    classes: usize,
) -> Result<Vec<Option<BuildStats>>> {
    let mut c = Cursor::new(bytes, "stats", sec.offset);
    let n = per_class_header(&mut c, classes, 1)?;
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

pub(super) fn parse_encoders(
    bytes: &[u8],
    sec: &SectionInfo,
) -> Result<(Vec<EncoderInfo>, Vec<[u8; 32]>)> {
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

pub(super) fn parse_classes(
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

pub(super) fn parse_ann(
    bytes: &[u8],
    sec: &SectionInfo,
    encoders: &[EncoderInfo],
) -> Result<Vec<AnnEntry>> {
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
