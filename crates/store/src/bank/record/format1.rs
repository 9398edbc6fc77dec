//! Bank format 1's prototype and region values: one sled entry per
//! prototype (`prototypes` tree) and one per region (`support` tree). This
//! build only reads them (format-1 banks, and format-2 banks' classes built
//! before migrating); only tests write them.

use ovdiff_core::codec::{decode_f16s, unpack_bits_lenient, Reader};
#[cfg(test)]
use ovdiff_core::codec::{pack_bits, WriteLe};
#[cfg(test)]
use ovdiff_core::prototype::Prototype;
use ovdiff_core::prototype::{Level, Provenance, Side};

#[cfg(test)]
use super::{level_code, side_code, RECORD_VERSION};
use super::{level_from, short, side_from, strip_version, RecordError};

/// Length of the prototype value header, version byte included.
pub(crate) const PROTOTYPE_HEADER_LEN: usize = 13;
/// Length of the region value header, version byte included.
pub(crate) const REGION_HEADER_LEN: usize = 5;

/// A prototype value as stored, without its region.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredPrototype {
    pub level: Level,
    pub side: Side,
    pub support: u32,
    pub image: u32,
    pub vector: Vec<f32>,
}

/// Encodes a prototype value: version, level u8, side u8, support u32 LE,
/// image u32 LE, dim u16 LE, then `dim` f16 LE. The caller has checked that
/// the vector length fits a u16.
#[cfg(test)]
pub(crate) fn encode_prototype(p: &Prototype) -> Vec<u8> {
    let dim = p.vector.len();
    let mut out = Vec::with_capacity(PROTOTYPE_HEADER_LEN + 2 * dim);
    out.put_u8(RECORD_VERSION);
    out.put_u8(level_code(p.level));
    out.put_u8(side_code(p.side));
    out.put_u32(p.support);
    out.put_u32(p.provenance.image);
    out.put_u16(u16::try_from(dim).unwrap_or(u16::MAX));
    out.put_f16s(&p.vector);
    out
}

/// Decodes a prototype value.
pub(crate) fn decode_prototype(bytes: &[u8]) -> Result<StoredPrototype, RecordError> {
    strip_version(bytes)?;
    if bytes.len() < PROTOTYPE_HEADER_LEN {
        return Err(RecordError::Length {
            expected: PROTOTYPE_HEADER_LEN,
            found: bytes.len(),
        });
    }
    let short = short(bytes.len());
    let mut r = Reader::new(bytes);
    r.u8().map_err(&short)?; // the version, checked above
    let level = level_from(r.u8().map_err(&short)?)?;
    let side = side_from(r.u8().map_err(&short)?)?;
    let support = r.u32().map_err(&short)?;
    let image = r.u32().map_err(&short)?;
    let dim = usize::from(r.u16().map_err(&short)?);
    let expected = PROTOTYPE_HEADER_LEN + 2 * dim;
    if bytes.len() != expected {
        return Err(RecordError::Length {
            expected,
            found: bytes.len(),
        });
    }
    Ok(StoredPrototype {
        level,
        side,
        support,
        image,
        vector: decode_f16s(r.rest()),
    })
}

/// Encodes a region value: version, grid_h u16 LE, grid_w u16 LE, then
/// `ceil(grid_h * grid_w / 8)` bytes of bitset; patch `i` (row-major) is bit
/// `i % 8` (least significant first) of byte `i / 8`; padding bits are zero.
/// The caller has checked that the grid fits u16 and matches the mask length.
#[cfg(test)]
pub(crate) fn encode_region(grid_h: u16, grid_w: u16, mask: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REGION_HEADER_LEN + mask.len().div_ceil(8));
    out.put_u8(RECORD_VERSION);
    out.put_u16(grid_h);
    out.put_u16(grid_w);
    out.extend_from_slice(&pack_bits(mask));
    out
}

/// Decodes a region value into a provenance for `image`. Padding bits are
/// not checked (format 1 never did).
pub(crate) fn decode_region(bytes: &[u8], image: u32) -> Result<Provenance, RecordError> {
    strip_version(bytes)?;
    if bytes.len() < REGION_HEADER_LEN {
        return Err(RecordError::Length {
            expected: REGION_HEADER_LEN,
            found: bytes.len(),
        });
    }
    let short = short(bytes.len());
    let mut r = Reader::new(bytes);
    r.u8().map_err(&short)?; // the version, checked above
    let grid_h = r.u16().map_err(&short)?;
    let grid_w = r.u16().map_err(&short)?;
    let n = usize::from(grid_h) * usize::from(grid_w);
    let expected = REGION_HEADER_LEN + n.div_ceil(8);
    let region = unpack_bits_lenient(r.rest(), n).ok_or(RecordError::Length {
        expected,
        found: bytes.len(),
    })?;
    Ok(Provenance {
        image,
        grid_h: grid_h.into(),
        grid_w: grid_w.into(),
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
