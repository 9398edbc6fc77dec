//! On-disk format versioning of the prototype bank: the version constants and the checks run on open.
//!
//! The bank stores two numbers in its `meta` tree (see `schema/bank-v1.md`):
//!
//! * `format_version`: the layout the bank was written with. It is the last
//!   key written when a bank is created, so its presence is the commit marker
//!   of a successful creation.
//! * `oldest_readable`: the oldest *format version a reader must understand*
//!   to read this bank. v1 banks store 1; v2 banks store 2, because their
//!   class records (record version 2) are unknown to a format-1 reader.
//!
//! A bank is readable by this build of ovdiff-bank when
//! `BANK_FORMAT_OLDEST_SUPPORTED <= format_version` and
//! `oldest_readable <= BANK_FORMAT_VERSION`. It is writable only at
//! `format_version == BANK_FORMAT_VERSION`: an older bank is migrated first
//! (`ovdiff-bank migrate`, see `migrations/`), a newer one stays read-only.

use std::path::Path;

use super::{BankError, Result};

/// The bank format version this build writes (and migrates older banks to).
///
/// * 1: the initial format (`migrations/0001-initial.md`).
/// * 2: class records carry build statistics (`migrations/0002-build-stats.md`).
pub const BANK_FORMAT_VERSION: u32 = 2;

/// The `oldest_readable` value this build stores: the oldest reader format
/// that can read what it writes.
pub const BANK_OLDEST_READER: u32 = 2;

/// The oldest bank format version this build can still read.
pub const BANK_FORMAT_OLDEST_SUPPORTED: u32 = 1;

/// Version of the ovdiff-bank tool, recorded in the `meta` tree on creation.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Bytes stored under the `magic` meta key; identifies an ovdiff bank.
pub(crate) const MAGIC: &[u8] = b"ovdiff-bank";

/// sled segment size used for every bank.
///
/// sled persists this value in its `conf` file and refuses to reopen a
/// database with a different one, so it is part of the on-disk format and
/// must never change for v1 banks.
pub(crate) const SLED_SEGMENT_SIZE: usize = 64 * 1024;

/// Upper bound on sled's page cache; banks are small and read mostly once.
pub(crate) const SLED_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// Checks that a bank written with format `found`, readable by readers of
/// format `oldest_readable` and newer, can be read by this build.
///
/// Returns [`BankError::TooNew`] when the bank needs a newer ovdiff-bank,
/// and [`BankError::TooOld`] when it predates [`BANK_FORMAT_OLDEST_SUPPORTED`].
pub fn check_readable(path: &Path, found: u32, oldest_readable: u32) -> Result<()> {
    if oldest_readable > BANK_FORMAT_VERSION {
        return Err(BankError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: BANK_FORMAT_VERSION,
        });
    }
    if found < BANK_FORMAT_OLDEST_SUPPORTED {
        return Err(BankError::TooOld {
            path: path.to_path_buf(),
            found,
            oldest: BANK_FORMAT_OLDEST_SUPPORTED,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_version_is_readable() {
        check_readable(Path::new("b"), BANK_FORMAT_VERSION, BANK_OLDEST_READER).unwrap();
        check_readable(Path::new("b"), BANK_FORMAT_OLDEST_SUPPORTED, 1).unwrap();
        // A newer bank that declares itself readable by this format opens.
        check_readable(Path::new("b"), BANK_FORMAT_VERSION + 1, BANK_FORMAT_VERSION).unwrap();
    }

    #[test]
    fn newer_version_is_refused_with_both_numbers() {
        let err = check_readable(Path::new("/x/bank"), 99, 99).unwrap_err();
        assert!(matches!(err, BankError::TooNew { found: 99, .. }));
        let msg = err.to_string();
        assert!(msg.contains("99"), "{msg}");
        assert!(msg.contains(&BANK_FORMAT_VERSION.to_string()), "{msg}");
        assert!(msg.contains("upgrade ovdiff-bank"), "{msg}");
    }

    #[test]
    fn older_version_is_refused() {
        let err = check_readable(Path::new("/x/bank"), 0, 0).unwrap_err();
        assert!(matches!(err, BankError::TooOld { found: 0, .. }));
        assert!(err.to_string().contains("too old"), "{err}");
    }

    #[test]
    fn oldest_supported_is_not_newer_than_current() {
        const { assert!(BANK_FORMAT_OLDEST_SUPPORTED <= BANK_FORMAT_VERSION) };
        const { assert!(BANK_OLDEST_READER <= BANK_FORMAT_VERSION) };
        assert!(SLED_SEGMENT_SIZE.is_power_of_two());
    }
}
