//! The `index` section: the table of class × encoder blocks and every
//! prototype's meta record, checked against the encoders, the classes and
//! the bulk sections they point into; and the region records of the
//! `provenance` section.

use ovdiff_core::codec::{padding_is_clear, u32_at, unpack_bits};
use ovdiff_core::prototype::{Provenance, Side};

use super::super::error::{OvBankError, Result};
use super::super::format::{
    self, level_from_code, side_from_code, Cursor, ALIGN, BLOCK_ENTRY_LEN, INDEX_HEADER_LEN,
    META_LEN,
};
use super::{OvClass, SectionInfo};
use crate::bank::{EncoderInfo, PrototypeCounts};

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

pub(super) struct IndexContext<'a> {
    pub(super) encoders: &'a [EncoderInfo],
    pub(super) classes: &'a [OvClass],
    pub(super) prototypes_len: u64,
    pub(super) provenance_len: u64,
}

pub(super) struct ParsedIndex {
    pub(super) block_count: u64,
    pub(super) blocks: Vec<Block>,
    pub(super) counts: Vec<PrototypeCounts>,
    pub(super) class_blocks: Vec<(usize, usize)>,
}

pub(super) fn parse_index(
    bytes: &[u8],
    sec: &SectionInfo,
    cx: IndexContext<'_>,
) -> Result<ParsedIndex> {
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
            let image = u32_at(m, 8).unwrap_or_default();
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
pub(super) fn read_region(c: &mut Cursor<'_>, image: u32) -> Result<Provenance> {
    let (h, w, bits) = region_bits(c)?;
    let n = usize::from(h) * usize::from(w);
    // `region_bits` took exactly the bitset's bytes and checked its padding.
    let region = unpack_bits(bits, n).ok_or_else(|| c.err("a region bitset is malformed"))?;
    Ok(Provenance {
        image,
        grid_h: h.into(),
        grid_w: w.into(),
        region,
    })
}

pub(super) fn skip_region(c: &mut Cursor<'_>) -> Result<()> {
    region_bits(c).map(drop)
}

/// One region record: its grid height and width and its bitset (exactly
/// `ceil(h·w / 8)` bytes, padding bits checked).
pub(super) fn region_bits<'a>(c: &mut Cursor<'a>) -> Result<(u16, u16, &'a [u8])> {
    let h = c.u16("a grid height")?;
    let w = c.u16("a grid width")?;
    let n = u64::from(h) * u64::from(w);
    let bits = c.take(n.div_ceil(8), "a region bitset")?;
    if !padding_is_clear(bits, n as usize) {
        return Err(c.err("padding bits of a region are not zero"));
    }
    Ok((h, w, bits))
}
