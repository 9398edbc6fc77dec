//! Little-endian field codecs: the one reader and writer of the fixed-width
//! integers and floats that ovdiff-bank's binary formats are made of.

use std::fmt;

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
}

/// Appends little-endian fields to a byte vector.
pub trait WriteLe {
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
}

impl WriteLe for Vec<u8> {
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
    if bytes.len() != n.div_ceil(8) {
        return None;
    }
    let bits: Vec<bool> = (0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect();
    let padding_clear = (n..bytes.len() * 8).all(|i| bytes[i / 8] >> (i % 8) & 1 == 0);
    padding_clear.then_some(bits)
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
}
