//! The error type of bank operations: every variant names the bank, class, encoder or file involved.

use std::path::PathBuf;

use super::store::StoreError;
use super::{ClassNameProblem, FailPoint, RecordError};

/// Everything that can go wrong with a bank.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    /// Another process has the bank open.
    #[error("bank {} is in use by another process", path.display())]
    Locked {
        /// The bank directory.
        path: PathBuf,
    },
    /// The storage engine could not open the directory.
    #[error("cannot open {} as a bank database", path.display())]
    Open {
        /// The bank directory.
        path: PathBuf,
        /// What the storage engine reported.
        #[source]
        source: StoreError,
    },
    /// The path exists but is not a bank.
    #[error("{} is not an ovdiff bank: {reason}", path.display())]
    NotABank {
        /// The path.
        path: PathBuf,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The bank was written by a newer ovdiff-bank.
    #[error(
        "bank {} has format version {found}, but this ovdiff-bank reads format versions up to {supported}; upgrade ovdiff-bank",
        path.display()
    )]
    TooNew {
        /// The bank directory.
        path: PathBuf,
        /// Format version found in the bank.
        found: u32,
        /// Newest format version this build reads.
        supported: u32,
    },
    /// The bank's format predates what this ovdiff-bank reads.
    #[error(
        "bank {} has format version {found}, which is too old: this ovdiff-bank reads format versions {oldest} and newer; rebuild the bank",
        path.display()
    )]
    TooOld {
        /// The bank directory.
        path: PathBuf,
        /// Format version found in the bank.
        found: u32,
        /// Oldest format version this build reads.
        oldest: u32,
    },
    /// The bank has an older format: it can be read, but must be migrated
    /// before it is written.
    #[error(
        "bank {} has format version {found}; this ovdiff-bank writes format version {current}. Run `ovdiff-bank migrate --bank {}` first (reading works without it)",
        path.display(), path.display()
    )]
    NeedsMigration {
        /// The bank directory.
        path: PathBuf,
        /// Format version found in the bank.
        found: u32,
        /// Format version this build writes.
        current: u32,
    },
    /// The bank was written by a newer ovdiff-bank that allows older readers:
    /// this build reads it but does not write it.
    #[error(
        "bank {} has format version {found}, newer than the {current} this ovdiff-bank writes; it can be read but not changed. Upgrade ovdiff-bank to change it",
        path.display()
    )]
    ReadOnlyNewer {
        /// The bank directory.
        path: PathBuf,
        /// Format version found in the bank.
        found: u32,
        /// Format version this build writes.
        current: u32,
    },
    /// This process may not write the bank (a read-only file system, or
    /// files of another user): commands that only read it work, through
    /// [`Bank::open_read`](super::Bank::open_read).
    #[error(
        "bank {} is read-only here: {why}. Commands that only read it (list, show, segment, \
         eval, export, verify --bank) work; to change it, {what_to_do}",
        path.display()
    )]
    NotWritable {
        /// The bank directory.
        path: PathBuf,
        /// Why: the file system, or the file and its owner.
        why: String,
        /// What to do instead.
        what_to_do: String,
    },
    /// A build file (bulk data of a class build) is damaged.
    #[error("build file {} is damaged: {reason}; remove the class and add it again, or restore the bank", path.display())]
    CorruptBuildFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A class record changed while a migration step was rewriting it.
    #[error("bank {}: a class changed during migration; nothing was migrated, run it again", path.display())]
    ChangedDuringMigration {
        /// The bank directory.
        path: PathBuf,
    },
    /// The storage engine failed during an operation.
    #[error("bank {}: storage failure during {op}", path.display())]
    Store {
        /// The bank directory.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// What the storage engine reported.
        #[source]
        source: StoreError,
    },
    /// A file-system operation failed.
    #[error("bank {}: cannot {op}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stored value could not be decoded.
    #[error("bank {}: corrupt value in tree {tree} at key {key}", path.display())]
    Corrupt {
        /// The bank directory.
        path: PathBuf,
        /// The tree holding the value.
        tree: &'static str,
        /// The key, hex-encoded.
        key: String,
        /// Why decoding failed.
        #[source]
        source: RecordError,
    },
    /// A record could not be encoded.
    #[error("bank {}: cannot encode a {what} record", path.display())]
    Encode {
        /// The bank directory.
        path: PathBuf,
        /// The kind of record.
        what: &'static str,
        /// Why encoding failed.
        #[source]
        source: RecordError,
    },
    /// A class's build is missing entries its record announces.
    #[error(
        "bank {}: class {class:?} (build {build_id}) should have {expected} prototypes for encoder {fingerprint} but {found} were found",
        path.display()
    )]
    Incomplete {
        /// The bank directory.
        path: PathBuf,
        /// The class.
        class: String,
        /// Its build.
        build_id: u64,
        /// The encoder.
        fingerprint: String,
        /// Prototypes announced by the record.
        expected: u32,
        /// Complete prototypes (with region) found.
        found: u64,
    },
    /// The class was replaced or removed after its record was read.
    #[error(
        "bank {}: class {class:?} changed while it was being read (build {build_id} is gone); read it again",
        path.display()
    )]
    StaleClass {
        /// The bank directory.
        path: PathBuf,
        /// The class.
        class: String,
        /// The build that is gone.
        build_id: u64,
    },
    /// A class name was rejected.
    #[error("invalid class name {name:?}: {problem}")]
    InvalidClassName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        problem: ClassNameProblem,
    },
    /// A class with this name exists and replacing was not asked for.
    #[error("class {name:?} already exists in bank {}", path.display())]
    ClassExists {
        /// The bank directory.
        path: PathBuf,
        /// The class name.
        name: String,
    },
    /// No class with this name.
    #[error("class {name:?} is not in bank {}", path.display())]
    ClassNotFound {
        /// The bank directory.
        path: PathBuf,
        /// The class name.
        name: String,
    },
    /// The encoder was never registered with [`Bank::register_encoder`](super::Bank::register_encoder).
    #[error("encoder {fingerprint} is not registered in bank {}", path.display())]
    UnknownEncoder {
        /// The bank directory.
        path: PathBuf,
        /// The encoder fingerprint.
        fingerprint: String,
    },
    /// The class has no prototypes for this encoder.
    #[error("class {class:?} has no prototypes for encoder {fingerprint}")]
    EncoderNotInClass {
        /// The class name.
        class: String,
        /// The encoder fingerprint.
        fingerprint: String,
    },
    /// A dimension differs from the one registered for the encoder.
    #[error("encoder {fingerprint} has dimension {expected} in the bank, got {found}")]
    DimensionMismatch {
        /// The encoder fingerprint.
        fingerprint: String,
        /// Registered dimension.
        expected: u32,
        /// Offending dimension.
        found: u32,
    },
    /// An encoder description was rejected.
    #[error("invalid encoder {fingerprint:?}: {reason}")]
    InvalidEncoder {
        /// The encoder fingerprint as given.
        fingerprint: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A class build is inconsistent.
    #[error("invalid build for class {class:?}: {reason}")]
    InvalidBuild {
        /// The class name.
        class: String,
        /// What is wrong.
        reason: String,
    },
    /// A [`FailPoint`] fired (tests only).
    #[error("injected failure at {point:?}")]
    InjectedFailure {
        /// The failure point.
        point: FailPoint,
    },
}
