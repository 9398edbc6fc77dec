//! Fuzzing support: walking every accessor of untrusted bytes, and repairing
//! the checksums of mutated files so that mutations reach the parsers behind
//! them, and importing what passes the checks into a fresh bank (the `fuzz/`
//! target and `ovbank::tests::fuzz` use all three).

use std::path::Path;

use ovdiff_core::codec::{u32_at, u64_at, write_u64_at};

use super::format::{
    checksum, header_len, END_MAGIC, FOOTER_LEN, HEADER_FIXED_LEN, MAX_SECTIONS, SECTION_ENTRY_LEN,
};
use super::{Bank, OnConflict, OvBankFile};

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

/// What [`exercise_import`] did with one input that passed the checks.
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuzzImport {
    /// The import succeeded (it may still fail cleanly, e.g. on a class name
    /// the bank refuses).
    pub imported: bool,
    /// Bytes the bank folder holds after the import, the bank closed.
    pub bank_bytes: u64,
    /// What `verify_bank` found wrong with the bank after the import: content
    /// that the file's checks let through (issue #20, case 3).
    pub bank_problems: Vec<String>,
}

/// Fuzzing entry point: opens `data` as `import` does (open, then
/// [`OvBankFile::verify`], whose content check runs, then
/// [`OvBankFile::check_thumbnails`]), and when that passes imports every
/// class into a new bank at `bank_dir` (a path that does not exist yet; the
/// caller removes it), closes the bank, measures its folder and checks it
/// with [`verify_bank`](crate::bank::verify_bank). Returns `None` when the
/// file is refused before the import. Never panics, whatever `data` holds.
/// **Not** an import for real use: errors are dropped.
#[doc(hidden)]
pub fn exercise_import(data: Vec<u8>, bank_dir: &Path) -> Option<FuzzImport> {
    let file = OvBankFile::from_bytes(data).ok()?;
    file.verify().ok()?;
    file.check_thumbnails().ok()?;
    let mut out = FuzzImport::default();
    {
        let bank = Bank::open(bank_dir).ok()?;
        out.imported = super::import(&file, &bank, OnConflict::Rename).is_ok();
    }
    if out.imported {
        // Reopen, as `verify --bank` does, and check what a reader sees.
        if let Ok(bank) = Bank::open(bank_dir) {
            match crate::bank::verify_bank(&bank) {
                Ok(report) => out.bank_problems = report.all_problems(),
                Err(e) => out.bank_problems.push(format!("verify_bank failed: {e}")),
            }
        }
    }
    out.bank_bytes = dir_bytes(bank_dir);
    Some(out)
}

/// Fuzzing support: the bytes a bank folder holds after [`exercise_import`]
/// of an exported file with no classes — sled's `conf`, a snapshot and its
/// first log segment (`SLED_SEGMENT_SIZE`, 64 KiB), about 65 KB in all: the
/// fixed overhead beyond which an import's writes are measured. Uses and
/// removes `tmp/empty-bank`, `tmp/empty.ovbank` and `tmp/overhead-bank`.
#[doc(hidden)]
pub fn fuzz_import_overhead(tmp: &Path) -> Option<u64> {
    let (empty, file, bank) = (
        tmp.join("empty-bank"),
        tmp.join("empty.ovbank"),
        tmp.join("overhead-bank"),
    );
    let bytes = {
        let b = Bank::open(&empty).ok()?;
        super::export(&b, None, &file).ok()?;
        std::fs::read(&file).ok()?
    };
    let out = exercise_import(bytes, &bank).filter(|o| o.imported);
    let size = dir_bytes(&bank);
    for d in [&empty, &bank] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_file(&file);
    out.map(|_| size)
}

/// Bytes under `dir` (the apparent size of every file), 0 when unreadable.
#[doc(hidden)]
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
