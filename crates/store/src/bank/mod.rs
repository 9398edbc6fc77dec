//! The durable prototype bank: classes, their prototypes and support data in one sled database directory.
//!
//! A [`Bank`] holds, for each class, a [`ClassRecord`] and one *build* of
//! data: the prototypes per encoder, the region each prototype pooled, and
//! thumbnails of the support images. Build data is keyed by a `build_id`
//! that only the class record points to, which gives cheap atomicity:
//!
//! 1. all prototypes, regions and thumbnails of a new build are written
//!    under a fresh `build_id` and flushed;
//! 2. the class record is written (or swapped) in one transaction: the
//!    commit point; before it, the build is invisible;
//! 3. the replaced build's entries are deleted and the bank is flushed.
//!
//! A crash anywhere leaves either the old class or the new one, plus
//! unreferenced build data that the next [`Bank::open`] deletes
//! ([`Bank::leftovers_cleaned`]). The byte layout is in `schema/bank-v1.md`.
//!
//! Only one process may hold a bank open; a second gets [`BankError::Locked`].
//! A bank this process may not write (a read-only mount, another user's
//! files) is read through [`Bank::open_read`] (`read_only`: a private copy
//! of sled's files); [`Bank::open`] and every write refuse it with
//! [`BankError::NotWritable`].
//!
//! The code follows those concepts: `open` (the lock, format checks,
//! creation, clean-up of leftovers), `read` and `write` (the operations on
//! classes and encoders), `batch` (many classes in one commit), `migrate`,
//! `verify`; beneath them `record` (the record types and their encodings),
//! `build_file` (format 2's files of bulk data) and `store` (the only code
//! that touches sled).

mod batch;
mod build_file;
mod error;
mod format;
mod guard;
mod label_ids;
mod migrate;
mod open;
mod read;
mod read_only;
pub(crate) mod record;
mod store;
mod verify;
mod write;

#[cfg(test)]
mod tests;

use std::fmt;

pub use batch::ClassBatch;
pub use error::BankError;
pub use format::{
    check_readable, BANK_FORMAT_OLDEST_SUPPORTED, BANK_FORMAT_VERSION, BANK_OLDEST_READER,
    TOOL_VERSION,
};
pub use guard::{
    check_bank_location, check_output_dir, check_output_file, enclosing_bank, is_bank_root,
    stray_entries, PathRefused,
};
pub use label_ids::{assign_label_ids, LabelIds};
pub use migrate::MigrationStep;
pub use record::{
    is_valid_fingerprint, validate_class_name, BincodeError, BuildStats, ClassEncoderEntry,
    ClassNameProblem, ClassRecord, ClassRecordDraft, ClassRecordV1, ClassSource, EncoderInfo,
    PrototypeCounts, RecordError, SupportImageInfo, CLASS_RECORD_VERSION, DTYPE_F16,
    MAX_CLASS_NAME_BYTES, RECORD_VERSION,
};
pub use store::StoreError;
pub use verify::{verify_bank, BankVerifyReport, ClassVerifyReport};
pub use write::FailPoint;

use ovdiff_core::prototype::Prototype;
use store::{Store, TreeId};

/// Result type of bank operations.
pub type Result<T> = std::result::Result<T, BankError>;

/// A class ready to be stored: its record draft and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassBuild {
    /// Everything in the record but what the bank assigns (build id, time,
    /// per-encoder counts).
    pub record: ClassRecordDraft,
    /// Per encoder: its fingerprint (registered beforehand) and its prototypes.
    /// The order fixes the encoder slots.
    pub encoders: Vec<(String, Vec<Prototype>)>,
    /// JPEG thumbnails, indexed like `record.support`; may be shorter, and an
    /// empty entry means "no thumbnail".
    pub thumbnails: Vec<Vec<u8>>,
}

/// An open prototype bank. Cheap to share between threads (`&Bank`).
pub struct Bank {
    store: Store,
    format_version: u32,
    leftovers_cleaned: u64,
    /// `Some` (what a write gets) when opened read-only.
    read_only: Option<read_only::Unwritable>,
}

impl fmt::Debug for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bank")
            .field("path", &self.store.path())
            .field("format_version", &self.format_version)
            .finish_non_exhaustive()
    }
}

impl Bank {
    fn class_exists(&self, name: &str) -> BankError {
        BankError::ClassExists {
            path: self.path().to_path_buf(),
            name: name.to_owned(),
        }
    }

    fn encode_err(&self, what: &'static str, source: RecordError) -> BankError {
        BankError::Encode {
            path: self.path().to_path_buf(),
            what,
            source,
        }
    }
}

fn corrupt(store: &Store, tree: TreeId, key: &[u8], source: RecordError) -> BankError {
    BankError::Corrupt {
        path: store.path().to_path_buf(),
        tree: tree.name(),
        key: hex::encode(key),
        source,
    }
}
