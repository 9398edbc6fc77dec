//! The error type of `.ovbank` files: every variant names the section, offset or version involved.

use std::path::PathBuf;

use crate::bank::BankError;

/// Result type of `.ovbank` operations.
pub type Result<T, E = OvBankError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing, importing or merging `.ovbank` files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OvBankError {
    /// A file-system operation failed.
    #[error("{}: cannot {op}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("not an ovbank file: it is empty (0 bytes)")]
    Empty,
    /// The file does not start with the ovbank magic.
    #[error("not an ovbank file: {reason}")]
    NotOvBank {
        /// What was found instead.
        reason: String,
    },
    /// The magic starts right but was altered, as a text-mode transfer does.
    #[error(
        "the ovbank file was mangled by a text-mode transfer (line endings or high bytes changed); \
         transfer it again in binary mode"
    )]
    Mangled,
    /// The file was written by a newer ovdiff-bank whose format this build cannot read.
    #[error(
        "ovbank file has format version {found} and needs a reader of version {oldest_reader} or \
         newer, but this ovdiff-bank reads format versions up to {supported}; upgrade ovdiff-bank"
    )]
    TooNew {
        /// Format version of the file.
        found: u32,
        /// Oldest reader version the file says can read it.
        oldest_reader: u32,
        /// Newest format version this build reads.
        supported: u32,
    },
    /// The file's format predates what this build reads.
    #[error(
        "ovbank file has format version {found}, which is too old: this ovdiff-bank reads format \
         versions {oldest_supported} and newer; export it again with an ovdiff-bank that reads both"
    )]
    TooOld {
        /// Format version of the file.
        found: u32,
        /// Oldest format version this build reads.
        oldest_supported: u32,
    },
    /// The file needs features (header flag bits) this build does not know.
    #[error(
        "ovbank file needs features this ovdiff-bank lacks (flags {flags:#x}); upgrade ovdiff-bank"
    )]
    UnsupportedFeatures {
        /// The unknown required flag bits.
        flags: u64,
    },
    /// The file ends before a structure it must contain.
    #[error("ovbank file is truncated: {what} needs {needed} bytes but the file has {actual}")]
    Truncated {
        /// What did not fit.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The header's checksum does not match its bytes.
    #[error("ovbank header (0 .. {length}): checksum mismatch (stored {stored:#018x}, computed {computed:#018x})")]
    HeaderChecksum {
        /// Length of the checksummed header bytes.
        length: u64,
        /// Checksum stored in the file.
        stored: u64,
        /// Checksum of the bytes present.
        computed: u64,
    },
    /// The header (fixed part or section table) holds an invalid value.
    #[error("ovbank header at offset {offset}: {reason}")]
    BadHeader {
        /// Absolute offset of the field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The footer is missing, or disagrees with the file's real length.
    #[error("ovbank footer (offset {offset}): {reason}")]
    BadFooter {
        /// Absolute offset of the footer.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The footer's whole-file checksum does not match.
    #[error("ovbank file (0 .. {length}): whole-file checksum mismatch (stored {stored:#018x}, computed {computed:#018x})")]
    FileChecksum {
        /// Length of the checksummed bytes.
        length: u64,
        /// Checksum stored in the footer.
        stored: u64,
        /// Checksum of the bytes present.
        computed: u64,
    },
    /// A section's checksum does not match its bytes.
    #[error("section `{section}` (offset {offset}, {length} bytes): checksum mismatch (stored {stored:#018x}, computed {computed:#018x})")]
    SectionChecksum {
        /// The section's name.
        section: &'static str,
        /// Absolute offset of the section.
        offset: u64,
        /// Length of the section.
        length: u64,
        /// Checksum stored in the section table.
        stored: u64,
        /// Checksum of the bytes present.
        computed: u64,
    },
    /// A section holds an invalid value.
    #[error("section `{section}` at offset {offset}: {reason}")]
    Malformed {
        /// The section's name.
        section: &'static str,
        /// Absolute offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A class holds what no build writes (issue #20's content check).
    #[error("class {class:?}: {problem}; the file should be re-exported by its sender")]
    Content {
        /// The class name.
        class: String,
        /// What is wrong.
        problem: String,
    },
    /// An encoder record of the file disagrees with the installed bundle,
    /// or with the bank's record, of the same fingerprint (issue #20: a
    /// fingerprint names one bundle, so one of the two is spoofed or damaged).
    #[error(
        "encoder record {name:?} ({fingerprint}, dim {dim}) {problem}; a fingerprint names one \
         bundle, so the file's record is spoofed or damaged and the file is refused (ask its \
         sender to export it again)"
    )]
    EncoderRecord {
        /// The record's name in the file.
        name: String,
        /// Its fingerprint.
        fingerprint: String,
        /// Its dimension in the file.
        dim: u32,
        /// What it disagrees with, and how.
        problem: String,
    },
    /// The file has no class of that name.
    #[error("class {name:?} is not in the ovbank file")]
    ClassNotFound {
        /// The class name.
        name: String,
    },
    /// The class has no prototypes for that encoder.
    #[error("class {class:?} has no prototypes for encoder {fingerprint} in the ovbank file")]
    EncoderNotInClass {
        /// The class name.
        class: String,
        /// The encoder fingerprint.
        fingerprint: String,
    },
    /// An encoder's dimension differs between the file (or an input) and the bank (or another input).
    #[error("encoder {fingerprint} has dimension {expected} in {existing_in}, but {found} in the ovbank file")]
    DimensionMismatch {
        /// The encoder fingerprint.
        fingerprint: String,
        /// Where the existing dimension comes from (the bank, an earlier input).
        existing_in: String,
        /// The existing dimension.
        expected: u32,
        /// The file's dimension.
        found: u32,
    },
    /// Two merge inputs give the same encoder name different fingerprints.
    #[error(
        "merge inputs disagree on encoder {name:?}: input {first_input} has fingerprint(s) {first}, \
         input {second_input} has {second}"
    )]
    EncoderNameConflict {
        /// The encoder name.
        name: String,
        /// Index of the first input.
        first_input: usize,
        /// Its fingerprints for the name, comma-separated.
        first: String,
        /// Index of the second input.
        second_input: usize,
        /// Its fingerprints for the name, comma-separated.
        second: String,
    },
    /// A class or encoder cannot be written to a file as it is.
    #[error("cannot write {what}: {reason}")]
    Unwritable {
        /// The class or encoder.
        what: String,
        /// Why.
        reason: String,
    },
    /// Zero-copy vector views need a little-endian host.
    #[error("zero-copy f16 views need a little-endian host; use `prototypes` instead")]
    BigEndianHost,
    /// The bank refused an operation.
    #[error("bank operation failed during {op}")]
    Bank {
        /// What was being done.
        op: String,
        /// The bank's error.
        #[source]
        source: Box<BankError>,
    },
}

impl OvBankError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Self {
        OvBankError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn bank(op: impl Into<String>) -> impl FnOnce(BankError) -> OvBankError {
        let op = op.into();
        move |source| OvBankError::Bank {
            op,
            source: Box::new(source),
        }
    }
}
