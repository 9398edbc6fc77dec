//! Bank format 2's prototype blocks and thumbnail packs: every prototype of
//! one encoder slot of a build in one value, every thumbnail of a build in
//! another; the bodies of a build file (`build_file`).

use ovdiff_core::codec::{decode_f16s, pack_bits, unpack_bits_lenient, Reader, WriteLe};
use ovdiff_core::prototype::{Prototype, Provenance};

use super::{level_code, level_from, short, side_code, side_from, RecordError};

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
    out.put_u8(BLOCK_VERSION);
    out.put_u32(u32::try_from(protos.len()).unwrap_or(u32::MAX));
    out.put_u16(u16::try_from(dim).unwrap_or(u16::MAX));
    for p in protos {
        out.put_u8(level_code(p.level));
        out.put_u8(side_code(p.side));
        out.put_u32(p.support);
        out.put_u32(p.provenance.image);
    }
    for p in protos {
        out.put_f16s(&p.vector);
    }
    for p in protos {
        let pv = &p.provenance;
        out.put_u16(pv.grid_h as u16);
        out.put_u16(pv.grid_w as u16);
        out.extend_from_slice(&pack_bits(&pv.region));
    }
    out
}

/// Decodes a block value (see [`encode_block`]). Padding bits of regions
/// are not checked (format 2 never did).
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
    let short = short(bytes.len());
    let mut head = Reader::new(bytes);
    head.u8().map_err(&short)?; // the version, checked above
    let count = head.u32().map_err(&short)? as usize;
    let dim = usize::from(head.u16().map_err(&short)?);
    let fixed = count
        .checked_mul(BLOCK_META_LEN + 2 * dim)
        .and_then(|n| n.checked_add(BLOCK_HEADER_LEN))
        .filter(|&n| n <= bytes.len())
        .ok_or(RecordError::Length {
            expected: BLOCK_HEADER_LEN + count.saturating_mul(BLOCK_META_LEN + 2 * dim),
            found: bytes.len(),
        })?;
    let vectors_at = BLOCK_HEADER_LEN + count * BLOCK_META_LEN;
    let mut metas = Reader::new(&bytes[BLOCK_HEADER_LEN..vectors_at]);
    let vectors = &bytes[vectors_at..fixed];
    let mut regions = Reader::new(bytes);
    regions.take(fixed).map_err(&short)?;
    let mut out = Vec::with_capacity(count);
    // With dim 0 there are no vector rows to walk: refused below.
    for v in vectors.chunks_exact(2 * dim.max(1)) {
        let level = level_from(metas.u8().map_err(&short)?)?;
        let side = side_from(metas.u8().map_err(&short)?)?;
        let support = metas.u32().map_err(&short)?;
        let image = metas.u32().map_err(&short)?;
        if regions.remaining() < 4 {
            return Err(RecordError::Length {
                expected: regions.position() + 4,
                found: bytes.len(),
            });
        }
        let grid_h = regions.u16().map_err(&short)?;
        let grid_w = regions.u16().map_err(&short)?;
        let n = usize::from(grid_h) * usize::from(grid_w);
        let bits = regions.take(n.div_ceil(8)).map_err(&short)?;
        let region = unpack_bits_lenient(bits, n).ok_or(RecordError::Length {
            expected: regions.position(),
            found: bytes.len(),
        })?;
        out.push(Prototype {
            level,
            side,
            vector: decode_f16s(v),
            support,
            provenance: Provenance {
                image,
                grid_h: grid_h.into(),
                grid_w: grid_w.into(),
                region,
            },
        });
    }
    if dim == 0 && count > 0 {
        return Err(RecordError::BadField {
            field: "dim",
            value: 0,
        });
    }
    if regions.remaining() != 0 {
        return Err(RecordError::TrailingBytes {
            count: regions.remaining(),
        });
    }
    Ok(out)
}

/// Encodes the JPEG thumbnails of a build as one value: version 2, count
/// u32 LE, `count` lengths u32 LE (0: no thumbnail), then the bytes.
pub(crate) fn encode_thumbnail_pack(thumbs: &[Vec<u8>]) -> Vec<u8> {
    let total: usize = thumbs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(5 + 4 * thumbs.len() + total);
    out.put_u8(BLOCK_VERSION);
    out.put_u32(u32::try_from(thumbs.len()).unwrap_or(u32::MAX));
    for t in thumbs {
        out.put_u32(u32::try_from(t.len()).unwrap_or(u32::MAX));
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
    let short = short(pack.len());
    let mut r = Reader::new(pack);
    r.u8().map_err(&short)?; // the version, checked above
    let count = r.u32().map_err(&short)? as usize;
    let mut table = Reader::new(r.take(count.saturating_mul(4)).map_err(&short)?);
    let lengths = (0..count)
        .map(|_| table.u32().map(|l| l as usize).map_err(&short))
        .collect::<Result<Vec<usize>, RecordError>>()?;
    let table_end = r.position();
    let total = lengths.iter().try_fold(table_end, |a, &l| a.checked_add(l));
    if total != Some(pack.len()) {
        return Err(RecordError::Length {
            expected: total.unwrap_or(usize::MAX),
            found: pack.len(),
        });
    }
    let i = image as usize;
    if i >= count || lengths[i] == 0 {
        return Ok(None);
    }
    let start = table_end + lengths[..i].iter().sum::<usize>();
    Ok(Some(&pack[start..start + lengths[i]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_core::prototype::{Level, Side};

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
}
