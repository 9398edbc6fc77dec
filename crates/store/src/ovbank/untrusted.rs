//! Fuzzing support: walking every accessor of untrusted bytes, and repairing
//! the checksums of mutated files so that mutations reach the parsers behind
//! them (the `fuzz/` target and `ovbank::tests::fuzz` use both).

use ovdiff_core::codec::{u32_at, u64_at, write_u64_at};

use super::format::{
    checksum, header_len, END_MAGIC, FOOTER_LEN, HEADER_FIXED_LEN, MAX_SECTIONS, SECTION_ENTRY_LEN,
};
use super::OvBankFile;

/// Opens `data` as an `.ovbank` file and walks every accessor and
/// [`OvBankFile::verify`], ignoring their errors: for fuzzing. Returns the
/// number of items visited. Must never panic, whatever `data` holds.
pub fn exercise_untrusted(data: Vec<u8>) -> usize {
    let Ok(f) = OvBankFile::from_bytes(data) else {
        return 0;
    };
    let mut n = f.sections().len() + usize::from(f.header().file_len > 0);
    for e in f.encoders() {
        n += usize::from(f.encoder(&e.fingerprint).is_some());
    }
    for c in f.classes() {
        n += usize::from(f.class(&c.name).is_some());
        for e in &c.encoders {
            if let Ok(p) = f.prototypes(&c.name, &e.fingerprint) {
                n += p.len();
            }
            if let Ok(v) = f.vectors(&c.name, &e.fingerprint) {
                n += v.metas().count() + v.row(0).map_or(0, <[_]>::len) + v.as_slice().len();
            }
        }
        for i in 0..=c.support.len() as u32 {
            n += f.thumbnail(&c.name, i).map_or(0, <[u8]>::len);
        }
    }
    n += usize::from(f.prototypes("no such class", &"0".repeat(64)).is_err());
    if let Ok(entries) = f.ann_entries() {
        for e in &entries {
            n += f.ann_blob(e).map_or(0, <[u8]>::len) + usize::from(e.matches_this_build());
        }
    }
    if let Ok(report) = f.verify() {
        n += report.classes;
    }
    n
}

/// Recomputes every checksum of a (possibly damaged) file in place — the
/// section checksums whose table entries lie within the file, the header
/// checksum, and the footer (length, whole-file checksum, end magic) — so
/// that a fuzzer's mutations reach the parsers behind the checksums. Never
/// panics. **Not** for repairing real files: it hides corruption.
#[doc(hidden)]
pub fn fuzz_repair_checksums(bytes: &mut [u8]) {
    let len = bytes.len() as u64;
    let Some(count) = u32_at(bytes, 24) else {
        return;
    };
    let count = count.min(MAX_SECTIONS);
    let hlen = header_len(count);
    if hlen + FOOTER_LEN > len {
        return;
    }
    for i in 0..u64::from(count) {
        let at = (HEADER_FIXED_LEN + i * SECTION_ENTRY_LEN) as usize;
        let (Some(off), Some(n)) = (u64_at(bytes, at + 8), u64_at(bytes, at + 16)) else {
            continue;
        };
        if let Some(end) = off.checked_add(n).filter(|&e| e <= len) {
            let sum = checksum(&bytes[off as usize..end as usize]);
            write_u64_at(bytes, at + 24, sum);
        }
    }
    let table_end = (hlen - 8) as usize;
    let sum = checksum(&bytes[..table_end]);
    write_u64_at(bytes, table_end, sum);
    let footer = (len - FOOTER_LEN) as usize;
    write_u64_at(bytes, footer, len);
    bytes[footer + 16..].copy_from_slice(&END_MAGIC);
    let sum = checksum(&bytes[..footer]);
    write_u64_at(bytes, footer + 8, sum);
}
