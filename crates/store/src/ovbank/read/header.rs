//! The header, section table and footer of an `.ovbank` file: the first
//! checks of untrusted bytes, run before any section is parsed.

use ovdiff_core::codec::{u32_at, u64_at};

use super::super::error::{OvBankError, Result};
use super::super::format::{
    checksum, header_len, SectionKind, ALIGN, END_MAGIC, FOOTER_LEN, HEADER_FIXED_LEN, MAGIC,
    MAX_SECTIONS, OVBANK_FORMAT_VERSION, OVBANK_OLDEST_SUPPORTED, REQUIRED_FLAG_MASK,
    SECTION_ENTRY_LEN, SECTION_FLAG_REQUIRED,
};

/// The fixed header and footer fields of an `.ovbank` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version the file was written with.
    pub format_version: u32,
    /// Oldest reader format version that can read the file.
    pub oldest_reader_version: u32,
    /// Feature flags (0 in v1).
    pub flags: u64,
    /// Number of sections in the table.
    pub section_count: u32,
    /// Length of the header, section table and header checksum included.
    pub header_len: u64,
    /// Stored header checksum (xxh3-64).
    pub header_checksum: u64,
    /// Length of the file, from the footer (equal to the real length once opened).
    pub file_len: u64,
    /// Stored whole-file checksum from the footer (checked by `verify` only).
    pub file_checksum: u64,
}

/// One entry of the section table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionInfo {
    /// The section's kind.
    pub kind: SectionKind,
    /// Its flags ([`SECTION_FLAG_REQUIRED`]).
    pub flags: u32,
    /// Absolute offset, a multiple of 64.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Stored checksum (xxh3-64 of the section's bytes).
    pub checksum: u64,
}

impl SectionInfo {
    /// The section's name (`unknown` for kinds this build does not know).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

pub(super) fn missing(kind: SectionKind) -> OvBankError {
    OvBankError::BadHeader {
        offset: HEADER_FIXED_LEN,
        reason: format!(
            "the section table lacks the required section `{}`",
            kind.name()
        ),
    }
}

/// The bytes of a section after checking its checksum.
pub(super) fn checked_section<'a>(bytes: &'a [u8], s: &SectionInfo) -> Result<&'a [u8]> {
    // Bounds were checked by parse_header.
    let data = &bytes[s.offset as usize..(s.offset + s.length) as usize];
    let computed = checksum(data);
    if computed != s.checksum {
        return Err(OvBankError::SectionChecksum {
            section: s.name(),
            offset: s.offset,
            length: s.length,
            stored: s.checksum,
            computed,
        });
    }
    Ok(data)
}

/// Parses and checks the header, footer and section table.
pub(super) fn parse_header(bytes: &[u8]) -> Result<(Header, Vec<SectionInfo>)> {
    let len = bytes.len() as u64;
    // Every field read below lies within bounds checked before it.
    let u32_at = |at: usize| u32_at(bytes, at).unwrap_or_default();
    let u64_at = |at: usize| u64_at(bytes, at).unwrap_or_default();
    if len == 0 {
        return Err(OvBankError::Empty);
    }
    let head = &bytes[..bytes.len().min(8)];
    if head != &MAGIC[..head.len()] || head.len() < 8 {
        if head.len() < 8 && head == &MAGIC[..head.len()] {
            return Err(OvBankError::Truncated {
                what: "the magic",
                needed: 8,
                actual: len,
            });
        }
        // `OVB` near the start: the magic, with its binary bytes altered.
        if head.windows(3).take(4).any(|w| w == b"OVB") {
            return Err(OvBankError::Mangled);
        }
        return Err(OvBankError::NotOvBank {
            reason: format!("it starts with {}", hex::encode(head)),
        });
    }
    if len < 16 {
        return Err(OvBankError::Truncated {
            what: "the version fields",
            needed: 16,
            actual: len,
        });
    }
    let version = u32_at(8);
    let oldest = u32_at(12);
    if oldest == 0 || oldest > version {
        return Err(OvBankError::BadHeader {
            offset: 12,
            reason: format!(
                "oldest reader version {oldest} is not between 1 and the format version {version}"
            ),
        });
    }
    if version < OVBANK_OLDEST_SUPPORTED {
        return Err(OvBankError::TooOld {
            found: version,
            oldest_supported: OVBANK_OLDEST_SUPPORTED,
        });
    }
    if oldest > OVBANK_FORMAT_VERSION {
        return Err(OvBankError::TooNew {
            found: version,
            oldest_reader: oldest,
            supported: OVBANK_FORMAT_VERSION,
        });
    }
    if len < HEADER_FIXED_LEN {
        return Err(OvBankError::Truncated {
            what: "the header",
            needed: HEADER_FIXED_LEN,
            actual: len,
        });
    }
    let flags = u64_at(16);
    let count = u32_at(24);
    if count == 0 || count > MAX_SECTIONS {
        return Err(OvBankError::BadHeader {
            offset: 24,
            reason: format!("section count {count} is not between 1 and {MAX_SECTIONS}"),
        });
    }
    if u32_at(28) != 0 {
        return Err(OvBankError::BadHeader {
            offset: 28,
            reason: "reserved bytes are not zero".into(),
        });
    }
    let hlen = header_len(count);
    if hlen + FOOTER_LEN > len {
        return Err(OvBankError::Truncated {
            what: "the header and footer",
            needed: hlen + FOOTER_LEN,
            actual: len,
        });
    }
    let table_end = (hlen - 8) as usize;
    let stored = u64_at(table_end);
    let computed = checksum(&bytes[..table_end]);
    if stored != computed {
        return Err(OvBankError::HeaderChecksum {
            length: table_end as u64,
            stored,
            computed,
        });
    }
    let footer_at = (len - FOOTER_LEN) as usize;
    if bytes[footer_at + 16..] != END_MAGIC {
        return Err(OvBankError::BadFooter {
            offset: footer_at as u64,
            reason: "no end marker: the file is truncated or was not completely written".into(),
        });
    }
    let file_len = u64_at(footer_at);
    if file_len != len {
        return Err(OvBankError::BadFooter {
            offset: footer_at as u64,
            reason: format!(
                "it records a file of {file_len} bytes but the file has {len}: it was truncated or extended"
            ),
        });
    }
    let unknown = flags & REQUIRED_FLAG_MASK;
    if unknown != 0 {
        return Err(OvBankError::UnsupportedFeatures { flags: unknown });
    }
    let header = Header {
        format_version: version,
        oldest_reader_version: oldest,
        flags,
        section_count: count,
        header_len: hlen,
        header_checksum: stored,
        file_len: len,
        file_checksum: u64_at(footer_at + 8),
    };

    let mut sections = Vec::with_capacity(count as usize);
    for i in 0..count as u64 {
        let at = (HEADER_FIXED_LEN + i * SECTION_ENTRY_LEN) as usize;
        let bad = |reason: String| OvBankError::BadHeader {
            offset: at as u64,
            reason: format!("section table entry {i}: {reason}"),
        };
        let code = u32_at(at);
        let s = SectionInfo {
            kind: SectionKind::from_code(code),
            flags: u32_at(at + 4),
            offset: u64_at(at + 8),
            length: u64_at(at + 16),
            checksum: u64_at(at + 24),
        };
        if let Some(prev) = sections.last().map(|p: &SectionInfo| p.kind.code()) {
            if code <= prev {
                return Err(bad(format!(
                    "kind {code} follows kind {prev}; kinds must be strictly increasing"
                )));
            }
        }
        if s.flags & !SECTION_FLAG_REQUIRED != 0 {
            return Err(bad(format!("unknown flags {:#x}", s.flags)));
        }
        if matches!(s.kind, SectionKind::Unknown(_)) && s.flags & SECTION_FLAG_REQUIRED != 0 {
            return Err(bad(format!(
                "required section kind {code} is unknown to this ovdiff-bank; upgrade ovdiff-bank"
            )));
        }
        if !s.offset.is_multiple_of(ALIGN) {
            return Err(bad(format!(
                "section `{}` offset {} is not a multiple of {ALIGN}",
                s.name(),
                s.offset
            )));
        }
        let end = s.offset.checked_add(s.length);
        if s.offset < hlen || end.is_none_or(|e| e > len - FOOTER_LEN) {
            return Err(bad(format!(
                "section `{}` (offset {}, {} bytes) lies outside {hlen} .. {}",
                s.name(),
                s.offset,
                s.length,
                len - FOOTER_LEN
            )));
        }
        sections.push(s);
    }
    let mut by_offset: Vec<&SectionInfo> = sections.iter().filter(|s| s.length > 0).collect();
    by_offset.sort_by_key(|s| s.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].length > w[1].offset {
            return Err(OvBankError::BadHeader {
                offset: HEADER_FIXED_LEN,
                reason: format!("sections `{}` and `{}` overlap", w[0].name(), w[1].name()),
            });
        }
    }
    for kind in SectionKind::REQUIRED {
        if !sections.iter().any(|s| s.kind == kind) {
            return Err(missing(kind));
        }
    }
    Ok((header, sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_header(version: u32, oldest: u32) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&oldest.to_le_bytes());
        b.resize(200, 0);
        b
    }

    #[test]
    fn tiny_inputs_are_clear_errors() {
        assert!(matches!(parse_header(&[]), Err(OvBankError::Empty)));
        assert!(matches!(
            parse_header(&MAGIC[..5]),
            Err(OvBankError::Truncated { needed: 8, .. })
        ));
        assert!(matches!(
            parse_header(b"hello world, this is text"),
            Err(OvBankError::NotOvBank { .. })
        ));
        assert!(matches!(
            parse_header(b"\x89OVB\n\x1a\n\x01\x00\x00\x00\x01\x00\x00\x00"),
            Err(OvBankError::Mangled)
        ));
        assert!(matches!(
            parse_header(b"\xef\xbf\xbdOVB\r\n\x1a\n"),
            Err(OvBankError::Mangled)
        ));
        assert!(matches!(
            parse_header(&MAGIC),
            Err(OvBankError::Truncated { needed: 16, .. })
        ));
    }

    #[test]
    fn versions_are_checked_before_the_checksum() {
        let err = parse_header(&minimal_header(99, 99)).unwrap_err();
        assert!(
            matches!(
                err,
                OvBankError::TooNew {
                    found: 99,
                    oldest_reader: 99,
                    supported: OVBANK_FORMAT_VERSION
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("99") && msg.contains(&format!("up to {OVBANK_FORMAT_VERSION}")),
            "{msg}"
        );
        assert!(msg.contains("upgrade ovdiff-bank"), "{msg}");
        let err = parse_header(&minimal_header(0, 0)).unwrap_err();
        assert!(
            matches!(err, OvBankError::BadHeader { offset: 12, .. }),
            "{err}"
        );
        let err = parse_header(&minimal_header(1, 2)).unwrap_err();
        assert!(
            matches!(err, OvBankError::BadHeader { offset: 12, .. }),
            "{err}"
        );
        // A newer file that old readers may read goes on to the checksum.
        let err = parse_header(&minimal_header(2, 1)).unwrap_err();
        assert!(
            matches!(err, OvBankError::BadHeader { offset: 24, .. }),
            "{err}"
        );
    }
}
