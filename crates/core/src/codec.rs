//! Little-endian field codecs: the one reader and writer of the fixed-width
//! integers and floats that ovdiff-bank's binary formats are made of.
//!
//! * [`Reader`]: a bounds-checked cursor that never reads past its bytes;
//! * [`WriteLe`]: appending fields to a `Vec<u8>`;
//! * [`u16_at`], [`u32_at`], [`u64_at`], [`write_u64_at`]: one field at a
//!   known offset;
//! * [`decode_f16s`] and [`WriteLe::put_f16s`]: rows of IEEE binary16 values;
//! * [`pack_bits`], [`unpack_bits`], [`unpack_bits_lenient`]: bitsets,
//!   least significant bit first.
//!
//! ```
//! use ovdiff_core::codec::{Reader, WriteLe};
//! let mut v = Vec::new();
//! v.put_u8(1);
//! v.put_u32(0x0102_0304);
//! assert_eq!(v, [1, 4, 3, 2, 1]);
//! let mut r = Reader::new(&v);
//! assert_eq!((r.u8(), r.u32()), (Ok(1), Ok(0x0102_0304)));
//! assert!(r.u8().is_err());
//! ```

use std::fmt;

use half::f16;

/// Reading ran past the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Where the field began.
    pub at: usize,
    /// Bytes the field needed.
    pub need: usize,
}

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "truncated: {} bytes needed at offset {}",
            self.need, self.at
        )
    }
}

impl std::error::Error for Truncated {}

/// A cursor over little-endian fields.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(Truncated {
                at: self.pos,
                need: n,
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let s = self.take(N)?;
        Ok(s.try_into().expect("invariant: take returned N bytes"))
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian `f32`.
    pub fn f32(&mut self) -> Result<f32, Truncated> {
        self.array().map(f32::from_le_bytes)
    }

    /// `n` little-endian `u32`s.
    pub fn u32s(&mut self, n: usize) -> Result<Vec<u32>, Truncated> {
        self.words(n, u32::from_le_bytes)
    }

    /// `n` little-endian `f32`s.
    pub fn f32s(&mut self, n: usize) -> Result<Vec<f32>, Truncated> {
        self.words(n, f32::from_le_bytes)
    }

    /// `n` four-byte words, each decoded by `f`.
    fn words<T>(&mut self, n: usize, f: fn([u8; 4]) -> T) -> Result<Vec<T>, Truncated> {
        let len = n.checked_mul(4).ok_or(Truncated {
            at: self.pos,
            need: usize::MAX,
        })?;
        let s = self.take(len)?;
        Ok(s.chunks_exact(4)
            .map(|c| f(c.try_into().expect("invariant: chunks of 4 bytes")))
            .collect())
    }

    /// Every byte not read yet; the reader is then at the end.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        s
    }
}

/// Appends little-endian fields to a byte vector.
pub trait WriteLe {
    /// Append a `u8`.
    fn put_u8(&mut self, v: u8);
    /// Append a `u16`.
    fn put_u16(&mut self, v: u16);
    /// Append a `u32`.
    fn put_u32(&mut self, v: u32);
    /// Append a `u64`.
    fn put_u64(&mut self, v: u64);
    /// Append an `f32`.
    fn put_f32(&mut self, v: f32);
    /// Append `u32`s, in order.
    fn put_u32s(&mut self, v: &[u32]);
    /// Append `f32`s, in order.
    fn put_f32s(&mut self, v: &[f32]);
    /// Append each value as an IEEE binary16 (rounded to nearest), two bytes
    /// each; [`decode_f16s`] reads them back.
    fn put_f16s(&mut self, values: &[f32]);
}

impl WriteLe for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_f32(&mut self, v: f32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32s(&mut self, v: &[u32]) {
        self.reserve(v.len() * 4);
        v.iter().for_each(|&x| self.put_u32(x));
    }
    fn put_f32s(&mut self, v: &[f32]) {
        self.reserve(v.len() * 4);
        v.iter().for_each(|&x| self.put_f32(x));
    }
    fn put_f16s(&mut self, values: &[f32]) {
        self.reserve(2 * values.len());
        for &x in values {
            self.extend_from_slice(&f16::from_f32(x).to_le_bytes());
        }
    }
}

/// A little-endian `u16` at `bytes[at..at + 2]`, if there.
pub fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let s = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(s.try_into().ok()?))
}

/// A little-endian `u32` at `bytes[at..at + 4]`, if there.
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let s = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

/// A little-endian `u64` at `bytes[at..at + 8]`, if there.
pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let s = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// Overwrite `bytes[at..at + 8]` with `v`, little-endian; false (and nothing
/// written) when those bytes are not all there.
pub fn write_u64_at(bytes: &mut [u8], at: usize, v: u64) -> bool {
    match at.checked_add(8).and_then(|end| bytes.get_mut(at..end)) {
        Some(s) => {
            s.copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

/// Little-endian IEEE binary16 values widened to `f32` (exactly: every f16
/// is an f32), as [`WriteLe::put_f16s`] writes them; an odd last byte is
/// ignored.
pub fn decode_f16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Pack booleans into bytes, least significant bit first.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Unpack `n` booleans packed by [`pack_bits`]; `None` when `bytes` is not
/// exactly their size or a padding bit is set.
pub fn unpack_bits(bytes: &[u8], n: usize) -> Option<Vec<bool>> {
    let bits = unpack_bits_lenient(bytes, n)?;
    padding_is_clear(bytes, n).then_some(bits)
}

/// Unpack `n` booleans packed by [`pack_bits`], whatever the padding bits
/// hold (formats that never checked them); `None` when `bytes` is not exactly
/// their size.
pub fn unpack_bits_lenient(bytes: &[u8], n: usize) -> Option<Vec<bool>> {
    if bytes.len() != n.div_ceil(8) {
        return None;
    }
    Some((0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect())
}

/// True when every bit of `bytes` from bit `n` on (the padding after `n`
/// packed booleans) is zero.
pub fn padding_is_clear(bytes: &[u8], n: usize) -> bool {
    (n..bytes.len() * 8).all(|i| bytes[i / 8] >> (i % 8) & 1 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_truncation_is_reported() {
        let mut v = Vec::new();
        v.put_u16(7);
        v.put_u32(0xdead_beef);
        v.put_u64(u64::MAX - 1);
        v.put_f32(-1.5);
        let mut r = Reader::new(&v);
        assert_eq!(r.u16().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 0xdead_beef);
        assert_eq!(r.u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.f32().unwrap(), -1.5);
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.u8(), Err(Truncated { at: 18, need: 1 }));
        assert_eq!(u32_at(&v, 2), Some(0xdead_beef));
        assert_eq!(u64_at(&v, 15), None);
    }

    #[test]
    fn word_slices_round_trip_and_truncation_is_reported() {
        let mut v = Vec::new();
        v.put_u32s(&[1, 0x0102_0304, u32::MAX]);
        v.put_f32s(&[0.5, -2.0]);
        v.put_u32s(&[]);
        assert_eq!(
            v[..12],
            [1, 0, 0, 0, 4, 3, 2, 1, 0xff, 0xff, 0xff, 0xff],
            "little-endian, in order"
        );
        assert_eq!(v[12..], [0, 0, 0, 0x3f, 0, 0, 0, 0xc0]);
        let mut r = Reader::new(&v);
        assert_eq!(r.u32s(0).unwrap(), Vec::<u32>::new());
        assert_eq!(r.u32s(3).unwrap(), [1, 0x0102_0304, u32::MAX]);
        assert_eq!(r.position(), 12);
        assert_eq!(r.clone().f32s(3), Err(Truncated { at: 12, need: 12 }));
        assert_eq!(
            r.clone().u32s(usize::MAX),
            Err(Truncated {
                at: 12,
                need: usize::MAX
            })
        );
        assert_eq!(r.f32s(2).unwrap(), [0.5, -2.0]);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn bits_round_trip_and_padding_must_be_clear() {
        let bits = [true, false, true, true, false, false, false, false, true];
        let packed = pack_bits(&bits);
        assert_eq!(packed, vec![0b0000_1101, 0b1]);
        assert_eq!(unpack_bits(&packed, 9).unwrap(), bits);
        assert_eq!(unpack_bits(&[0b10_0000_0000u16 as u8, 0b10], 9), None);
        assert_eq!(unpack_bits(&packed, 17), None);
    }

    #[test]
    fn lenient_bits_ignore_padding_and_padding_is_checked_alone() {
        let bytes = [0b0000_1101, 0b1111_1101];
        assert_eq!(unpack_bits(&bytes, 9), None);
        let bits = unpack_bits_lenient(&bytes, 9).unwrap();
        assert_eq!(bits.len(), 9);
        assert_eq!(&bits[..4], &[true, false, true, true]);
        assert!(bits[8]);
        assert_eq!(unpack_bits_lenient(&bytes, 17), None);
        assert!(!padding_is_clear(&bytes, 9));
        assert!(padding_is_clear(&bytes, 16));
        assert!(padding_is_clear(&[0b0111], 3));
        assert!(!padding_is_clear(&[0b1111], 3));
        assert!(padding_is_clear(&[], 0));
    }

    #[test]
    fn u8_f16s_rest_and_fields_in_place() {
        let mut v = Vec::new();
        v.put_u8(9);
        v.put_f16s(&[0.5, -2.0, 1.0 / 3.0]);
        assert_eq!(v.len(), 7);
        assert_eq!(&v[1..3], &half::f16::from_f32(0.5).to_le_bytes());
        let got = decode_f16s(&v[1..]);
        assert_eq!(got[..2], [0.5, -2.0]);
        assert_eq!(got[2], half::f16::from_f32(1.0 / 3.0).to_f32());
        assert_eq!(decode_f16s(&v[1..6]).len(), 2, "an odd byte is ignored");
        let mut r = Reader::new(&v);
        assert_eq!(r.u8(), Ok(9));
        assert_eq!(r.rest(), &v[1..]);
        assert_eq!((r.remaining(), r.position()), (0, 7));
        assert_eq!(r.rest(), &[] as &[u8]);
        assert_eq!(u16_at(&[1, 2, 3], 1), Some(0x0302));
        assert_eq!(u16_at(&[1, 2, 3], 2), None);
        assert_eq!(u16_at(&[1, 2, 3], usize::MAX), None);
        let mut b = vec![0u8; 10];
        assert!(write_u64_at(&mut b, 2, 0x0807_0605_0403_0201));
        assert_eq!(b, [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(u64_at(&b, 2), Some(0x0807_0605_0403_0201));
        assert!(!write_u64_at(&mut b, 3, 0));
        assert!(!write_u64_at(&mut b, usize::MAX, 0));
        assert_eq!(b[9], 8, "nothing written out of bounds");
    }
}
