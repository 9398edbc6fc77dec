//! Constants and byte-level building blocks of the `.ovbank` format (`schema/ovbank-v1.md`).
//!
//! Everything here is little-endian and fixed-width, read and written with
//! [`ovdiff_core::codec`]. `Cursor` is the only way the reader takes bytes
//! out of a section: a [`Reader`] whose every read is bounds-checked and
//! fails with the section's name and the absolute offset of the problem.

use ovdiff_core::codec::{pack_bits, Reader, Truncated, WriteLe};
use ovdiff_core::prototype::{Level, Side};

use super::error::{OvBankError, Result};
pub(crate) use crate::bank::record::{level_code, level_from_code, side_code, side_from_code};

/// The format version this build writes.
///
/// * 1: the initial format (`schema/ovbank-v1.md`).
/// * 2: adds the optional `stats` section (per-class build statistics); see
///   `schema/ovbank-v2.md` and `migrations/0002-build-stats.md`.
/// * 3: adds the optional `labels` section (stable label ids per class);
///   see `schema/ovbank-v3.md` and `migrations/0003-label-ids.md`.
pub const OVBANK_FORMAT_VERSION: u32 = 3;

/// The oldest reader version this build writes into files: 1, because the
/// v2 and v3 additions are optional sections that older readers skip.
pub const OVBANK_OLDEST_READER: u32 = 1;

/// The oldest format version this build still reads.
pub const OVBANK_OLDEST_SUPPORTED: u32 = 1;

/// The first eight bytes of every `.ovbank` file: `\x89OVB\r\n\x1a\n`.
pub const MAGIC: [u8; 8] = *b"\x89OVB\r\n\x1a\n";

/// The last eight bytes of every `.ovbank` file.
pub const END_MAGIC: [u8; 8] = *b"OVB-END\n";

/// Length of the fixed part of the header, before the section table.
pub const HEADER_FIXED_LEN: u64 = 32;

/// Length of one section table entry.
pub const SECTION_ENTRY_LEN: u64 = 32;

/// Length of the footer.
pub const FOOTER_LEN: u64 = 24;

/// Most sections a header may list.
pub const MAX_SECTIONS: u32 = 32;

/// Longest string (in bytes) any field may hold.
pub const MAX_STRING_BYTES: u32 = 65_536;

/// Alignment of sections, prototype blocks and `ann` blobs.
pub const ALIGN: u64 = 64;

/// Section flag: a reader that does not know the section's kind must refuse the file.
pub const SECTION_FLAG_REQUIRED: u32 = 1;

/// Header flag bits a reader must understand to read a file (bits 0–31).
pub const REQUIRED_FLAG_MASK: u64 = 0xffff_ffff;

/// Element type code of IEEE-754 binary16, little-endian.
pub const ELEMENT_F16: u8 = 1;

/// Length of a block entry in the `index` section.
pub const BLOCK_ENTRY_LEN: u64 = 64;

/// Length of a prototype meta record in the `index` section.
pub const META_LEN: u64 = 12;

/// Length of the `index` section header.
pub const INDEX_HEADER_LEN: u64 = 16;

/// Smallest possible encoder entry (a one-byte name).
pub const MIN_ENCODER_LEN: u64 = 32 + 4 + 1 + 3 + 4 + 1;

/// Smallest possible class record.
pub const MIN_CLASS_LEN: u64 = 5 + 1 + 1 + 4 + 4 + 8 + 12 + 4;

/// Smallest possible support image record.
pub const MIN_SUPPORT_LEN: u64 = 4 + 4 + 4 + 8 + 8;

/// Smallest possible key/value parameter pair.
pub const MIN_PARAM_LEN: u64 = 8;

/// Smallest possible present `stats` record: flag, empty version string, seven u64.
pub const MIN_STATS_LEN: u64 = 1 + 4 + 7 * 8;

/// Smallest possible `ann` entry.
pub const MIN_ANN_ENTRY_LEN: u64 = 32;

/// The kind of a section, from its table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectionKind {
    /// `encoders` (1).
    Encoders,
    /// `classes` (2).
    Classes,
    /// `index` (3): blocks and per-prototype meta.
    Index,
    /// `prototypes` (4): the f16 vectors.
    Prototypes,
    /// `provenance` (5): regions.
    Provenance,
    /// `thumbnails` (6): JPEG bytes.
    Thumbnails,
    /// `ann` (7): optional prebuilt nearest-neighbour graphs.
    Ann,
    /// `stats` (8, format 2): optional per-class build statistics.
    Stats,
    /// `labels` (9, format 3): optional stable label ids per class.
    Labels,
    /// A kind this build does not know.
    Unknown(u32),
}

impl SectionKind {
    /// The kinds a v1 file must contain, in table order.
    pub const REQUIRED: [SectionKind; 6] = [
        SectionKind::Encoders,
        SectionKind::Classes,
        SectionKind::Index,
        SectionKind::Prototypes,
        SectionKind::Provenance,
        SectionKind::Thumbnails,
    ];

    /// The kind with numeric code `code`.
    pub fn from_code(code: u32) -> SectionKind {
        match code {
            1 => SectionKind::Encoders,
            2 => SectionKind::Classes,
            3 => SectionKind::Index,
            4 => SectionKind::Prototypes,
            5 => SectionKind::Provenance,
            6 => SectionKind::Thumbnails,
            7 => SectionKind::Ann,
            8 => SectionKind::Stats,
            9 => SectionKind::Labels,
            other => SectionKind::Unknown(other),
        }
    }

    /// The numeric code stored in the section table.
    pub fn code(self) -> u32 {
        match self {
            SectionKind::Encoders => 1,
            SectionKind::Classes => 2,
            SectionKind::Index => 3,
            SectionKind::Prototypes => 4,
            SectionKind::Provenance => 5,
            SectionKind::Thumbnails => 6,
            SectionKind::Ann => 7,
            SectionKind::Stats => 8,
            SectionKind::Labels => 9,
            SectionKind::Unknown(c) => c,
        }
    }

    /// The section's name as the spec writes it (`unknown` for unknown kinds).
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Encoders => "encoders",
            SectionKind::Classes => "classes",
            SectionKind::Index => "index",
            SectionKind::Prototypes => "prototypes",
            SectionKind::Provenance => "provenance",
            SectionKind::Thumbnails => "thumbnails",
            SectionKind::Ann => "ann",
            SectionKind::Stats => "stats",
            SectionKind::Labels => "labels",
            SectionKind::Unknown(_) => "unknown",
        }
    }
}

/// xxh3-64 with seed 0, the checksum used everywhere in the format.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Rounds `n` up to a multiple of [`ALIGN`] (saturating).
pub(crate) fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Length of the header (fixed part, table and checksum) for `n` sections.
pub(crate) fn header_len(n: u32) -> u64 {
    HEADER_FIXED_LEN + SECTION_ENTRY_LEN * u64::from(n) + 8
}

/// Position of (level, side) in the six per-kind counters.
pub(crate) fn count_slot(level: Level, side: Side) -> usize {
    usize::from(level_code(level)) * 2 + usize::from(side_code(side))
}

/// Decodes a 64-hex-digit fingerprint into its 32 raw bytes.
pub(crate) fn fingerprint_bytes(hex_fp: &str) -> Option<[u8; 32]> {
    if !crate::bank::is_valid_fingerprint(hex_fp) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_fp, &mut out).ok()?;
    Some(out)
}

/// Appends `s` as a `u32` LE byte length, then its UTF-8 bytes. Callers
/// check the length against [`MAX_STRING_BYTES`] first.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(s.as_bytes());
}

/// A bounds-checked reader over one section's bytes.
///
/// Errors carry the section name and the *absolute* file offset at which the
/// problem was found.
pub(crate) struct Cursor<'a> {
    reader: Reader<'a>,
    section: &'static str,
    base: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor over `bytes`, which start at absolute offset `base` of section `section`.
    pub fn new(bytes: &'a [u8], section: &'static str, base: u64) -> Cursor<'a> {
        Cursor {
            reader: Reader::new(bytes),
            section,
            base,
        }
    }

    /// Absolute file offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.reader.position() as u64
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.reader.remaining() as u64
    }

    /// An error at the current position.
    pub fn err(&self, reason: impl Into<String>) -> OvBankError {
        OvBankError::Malformed {
            section: self.section,
            offset: self.offset(),
            reason: reason.into(),
        }
    }

    /// The error of a field `what` of `need` bytes that does not fit in
    /// what remains.
    fn short(&self, what: &str, need: u64) -> OvBankError {
        self.err(format!(
            "{what} needs {need} bytes but only {} remain",
            self.remaining()
        ))
    }

    /// A field read by the reader, or the error naming it.
    fn field<T>(&self, read: std::result::Result<T, Truncated>, what: &str) -> Result<T> {
        read.map_err(|t| self.short(what, t.need as u64))
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.short(what, n));
        }
        // n <= remaining, which fits usize
        let read = self.reader.take(n as usize);
        self.field(read, what)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        let read = self.reader.u8();
        self.field(read, what)
    }

    /// Reads a `u16` LE.
    pub fn u16(&mut self, what: &str) -> Result<u16> {
        let read = self.reader.u16();
        self.field(read, what)
    }

    /// Reads a `u32` LE.
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        let read = self.reader.u32();
        self.field(read, what)
    }

    /// Reads a `u64` LE.
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        let read = self.reader.u64();
        self.field(read, what)
    }

    /// Reads 32 raw bytes.
    pub fn bytes32(&mut self, what: &str) -> Result<[u8; 32]> {
        let read = self.reader.array();
        self.field(read, what)
    }

    /// Reads a reserved field of `n` bytes, which must be zero.
    pub fn reserved(&mut self, n: u64) -> Result<()> {
        let at = self.offset();
        if self.take(n, "a reserved field")?.iter().any(|&b| b != 0) {
            return Err(OvBankError::Malformed {
                section: self.section,
                offset: at,
                reason: "reserved bytes are not zero".into(),
            });
        }
        Ok(())
    }

    /// Reads a `u32`-length-prefixed UTF-8 string of at most [`MAX_STRING_BYTES`].
    pub fn string(&mut self, what: &str) -> Result<String> {
        let at = self.offset();
        let len = self.u32(what)?;
        if len > MAX_STRING_BYTES {
            return Err(OvBankError::Malformed {
                section: self.section,
                offset: at,
                reason: format!("{what} is {len} bytes long; at most {MAX_STRING_BYTES} allowed"),
            });
        }
        let bytes = self.take(u64::from(len), what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| OvBankError::Malformed {
                section: self.section,
                offset: at,
                reason: format!("{what} is not valid UTF-8"),
            })
    }

    /// Checks that `count` items of at least `min_len` bytes each can fit in
    /// what remains, and returns `count` as a capacity safe to allocate.
    pub fn count_fits(&self, count: u64, min_len: u64, what: &str) -> Result<usize> {
        if count.saturating_mul(min_len) > self.remaining() {
            return Err(self.err(format!(
                "{count} {what} cannot fit in the {} bytes that remain",
                self.remaining()
            )));
        }
        usize::try_from(count).map_err(|_| self.err(format!("{count} {what} is too many")))
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} unexpected trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// Encodes a region record: grid_h u16, grid_w u16, LSB-first bitset.
/// The caller has checked the grid fits u16 and matches the mask length.
pub(crate) fn put_region(out: &mut Vec<u8>, grid_h: u16, grid_w: u16, mask: &[bool]) {
    out.put_u16(grid_h);
    out.put_u16(grid_w);
    out.extend_from_slice(&pack_bits(mask));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_catches_text_mode_mangling() {
        assert_eq!(MAGIC.len(), 8);
        assert!(MAGIC[0] & 0x80 != 0);
        assert!(MAGIC.windows(2).any(|w| w == b"\r\n"));
        assert!(MAGIC.contains(&0x1a));
        const { assert!(OVBANK_OLDEST_SUPPORTED <= OVBANK_FORMAT_VERSION) };
    }

    #[test]
    fn section_kinds_round_trip() {
        for code in 0..10 {
            assert_eq!(SectionKind::from_code(code).code(), code);
        }
        assert_eq!(SectionKind::from_code(4).name(), "prototypes");
        assert_eq!(SectionKind::from_code(99), SectionKind::Unknown(99));
    }

    #[test]
    fn cursor_checks_bounds_and_strings() {
        let mut b = Vec::new();
        put_str(&mut b, "héllo");
        b.put_u32(u32::MAX);
        let mut c = Cursor::new(&b, "classes", 100);
        assert_eq!(c.string("name").unwrap(), "héllo");
        let err = c.string("dir").unwrap_err();
        assert!(err.to_string().contains("classes"), "{err}");
        assert!(err.to_string().contains("110"), "{err}");
        let c = Cursor::new(&b, "classes", 0);
        assert!(c.count_fits(u64::MAX, 1, "things").is_err());
        assert_eq!(c.count_fits(2, 5, "things").unwrap(), 2);
        let mut c = Cursor::new(&[1, 0], "index", 0);
        assert!(c.reserved(2).is_err());
    }

    #[test]
    fn regions_are_lsb_first_like_the_bank() {
        let mask = [
            true, false, false, false, false, false, false, false, false, true,
        ];
        let mut out = Vec::new();
        put_region(&mut out, 2, 5, &mask);
        assert_eq!(out, vec![2, 0, 5, 0, 0b0000_0001, 0b0000_0010]);
    }

    #[test]
    fn fingerprints_decode_to_raw_bytes() {
        let fp = format!("{}{}", "ab".repeat(31), "0f");
        let raw = fingerprint_bytes(&fp).unwrap();
        assert_eq!(raw[0], 0xab);
        assert_eq!(raw[31], 0x0f);
        assert_eq!(hex::encode(raw), fp);
        assert!(fingerprint_bytes("AB").is_none());
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 64);
        assert_eq!(align_up(128), 128);
        assert_eq!(count_slot(Level::Part, Side::Background), 5);
    }
}
