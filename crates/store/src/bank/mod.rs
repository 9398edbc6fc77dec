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

mod batch;
mod build_file;
mod format;
mod migrate;
mod record;
mod store;
mod verify;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use batch::ClassBatch;
pub use format::{
    check_readable, BANK_FORMAT_OLDEST_SUPPORTED, BANK_FORMAT_VERSION, BANK_OLDEST_READER,
    TOOL_VERSION,
};
pub use migrate::MigrationStep;
pub use record::{
    is_valid_fingerprint, validate_class_name, BincodeError, BuildStats, ClassEncoderEntry,
    ClassNameProblem, ClassRecord, ClassRecordDraft, ClassRecordV1, ClassSource, EncoderInfo,
    PrototypeCounts, RecordError, SupportImageInfo, CLASS_RECORD_VERSION, DTYPE_F16,
    MAX_CLASS_NAME_BYTES, RECORD_VERSION,
};
pub use store::StoreError;
pub use verify::{verify_bank, BankVerifyReport, ClassVerifyReport};

use ovdiff_core::prototype::Prototype;
use record::meta_key;
use store::{CommitOutcome, RenameOutcome, Store, TreeId};

/// Environment variable naming a failure point at which [`Bank::put_class`]
/// aborts the process (for crash tests): `bank-after-prototypes` or
/// `bank-after-commit`.
pub const FAILPOINT_ENV: &str = "OVDIFF_FAILPOINT";

/// Environment variable: milliseconds to pause at each failure point of
/// [`Bank::put_class`] (after the build data is flushed, after the commit),
/// so that a crash test's random SIGKILL lands in those windows often
/// (`scripts/torture`). Unset in normal use.
pub const FAILPOINT_PAUSE_ENV: &str = "OVDIFF_FAILPOINT_PAUSE_MS";

/// Result type of bank operations.
pub type Result<T> = std::result::Result<T, BankError>;

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
    /// The encoder was never registered with [`Bank::register_encoder`].
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

/// Where [`Bank::put_class_with`] stops early, to test crash safety.
///
/// An injected failure returns [`BankError::InjectedFailure`] and, like a
/// crash, leaves behind whatever was written so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailPoint {
    /// No failure.
    None,
    /// After the build's prototypes, regions and thumbnails are written and
    /// flushed, before the class record is committed.
    AfterPrototypes,
    /// After the class record is committed, before the replaced build is deleted.
    AfterCommit,
}

impl FailPoint {
    fn env_name(self) -> Option<&'static str> {
        match self {
            FailPoint::None => None,
            FailPoint::AfterPrototypes => Some("bank-after-prototypes"),
            FailPoint::AfterCommit => Some("bank-after-commit"),
        }
    }
}

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
    /// Opens the bank at `path`, creating it if missing.
    ///
    /// Refuses banks of other format versions, directories that are not
    /// banks, and banks another process holds. Deletes build data that no
    /// class record references (left by an interrupted write); see
    /// [`Bank::leftovers_cleaned`].
    pub fn open(path: &Path) -> Result<Bank> {
        let store = Store::open(path)?;
        let format_version = match store.get(TreeId::Meta, meta_key::FORMAT_VERSION)? {
            Some(bytes) => {
                if store.get(TreeId::Meta, meta_key::MAGIC)?.as_deref() != Some(format::MAGIC) {
                    return Err(BankError::NotABank {
                        path: path.to_path_buf(),
                        reason: "its meta tree lacks the ovdiff-bank marker",
                    });
                }
                let v = record::decode_u32(&bytes)
                    .map_err(|e| corrupt(&store, TreeId::Meta, meta_key::FORMAT_VERSION, e))?;
                let oldest = match store.get(TreeId::Meta, meta_key::OLDEST_READABLE)? {
                    Some(b) => record::decode_u32(&b)
                        .map_err(|e| corrupt(&store, TreeId::Meta, meta_key::OLDEST_READABLE, e))?,
                    None => v,
                };
                check_readable(path, v, oldest)?;
                v
            }
            None => {
                initialise(&store)?;
                BANK_FORMAT_VERSION
            }
        };
        let mut bank = Bank {
            store,
            format_version,
            leftovers_cleaned: 0,
        };
        if bank.format_version == BANK_FORMAT_VERSION {
            // Cleaning writes; an older or newer bank is left as it is.
            bank.leftovers_cleaned = bank.clean_leftovers()?;
        }
        Ok(bank)
    }

    /// The bank directory.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// Format version of the bank on disk.
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// True when the bank has an older format that [`Bank::migrate`] brings
    /// up to [`BANK_FORMAT_VERSION`]; such a bank can be read but not written.
    pub fn needs_migration(&self) -> bool {
        self.format_version < BANK_FORMAT_VERSION
    }

    /// Fails unless this build may write the bank (its format is current).
    fn require_writable(&self) -> Result<()> {
        use std::cmp::Ordering as O;
        match self.format_version.cmp(&BANK_FORMAT_VERSION) {
            O::Equal => Ok(()),
            O::Less => Err(BankError::NeedsMigration {
                path: self.path().to_path_buf(),
                found: self.format_version,
                current: BANK_FORMAT_VERSION,
            }),
            O::Greater => Err(BankError::ReadOnlyNewer {
                path: self.path().to_path_buf(),
                found: self.format_version,
                current: BANK_FORMAT_VERSION,
            }),
        }
    }

    /// Number of unreferenced build entries deleted when the bank was opened.
    pub fn leftovers_cleaned(&self) -> u64 {
        self.leftovers_cleaned
    }

    /// The version of ovdiff-bank that created this bank, if recorded.
    pub fn created_by(&self) -> Result<Option<String>> {
        Ok(self
            .store
            .get(TreeId::Meta, meta_key::TOOL_VERSION)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The registered encoders, sorted by fingerprint.
    pub fn encoders(&self) -> Result<Vec<EncoderInfo>> {
        self.store
            .scan_prefix(TreeId::Meta, meta_key::ENCODER_PREFIX)?
            .into_iter()
            .map(|(k, v)| {
                record::decode_encoder(&v).map_err(|e| corrupt(&self.store, TreeId::Meta, &k, e))
            })
            .collect()
    }

    /// The registered encoder with `fingerprint`, if any.
    pub fn encoder(&self, fingerprint: &str) -> Result<Option<EncoderInfo>> {
        let key = record::encoder_key(fingerprint);
        self.store
            .get(TreeId::Meta, &key)?
            .map(|v| {
                record::decode_encoder(&v).map_err(|e| corrupt(&self.store, TreeId::Meta, &key, e))
            })
            .transpose()
    }

    /// Registers an encoder. Registering the same fingerprint again is a
    /// no-op (the first name is kept) unless its dimension differs:
    /// [`BankError::DimensionMismatch`].
    pub fn register_encoder(&self, info: &EncoderInfo) -> Result<()> {
        self.require_writable()?;
        let invalid = |reason| BankError::InvalidEncoder {
            fingerprint: info.fingerprint.clone(),
            reason,
        };
        if !is_valid_fingerprint(&info.fingerprint) {
            return Err(invalid("the fingerprint must be 64 lowercase hex digits"));
        }
        if info.dim == 0 || info.dim > u32::from(u16::MAX) {
            return Err(invalid("the dimension must be between 1 and 65535"));
        }
        if info.dtype != DTYPE_F16 {
            return Err(invalid("the only supported dtype is f16"));
        }
        if info.name.is_empty() {
            return Err(invalid("the name is empty"));
        }
        let key = record::encoder_key(&info.fingerprint);
        let value = record::encode_encoder(info).map_err(|e| self.encode_err("encoder", e))?;
        if let Some(existing) = self.store.insert_new(TreeId::Meta, &key, &value)? {
            let existing = record::decode_encoder(&existing)
                .map_err(|e| corrupt(&self.store, TreeId::Meta, &key, e))?;
            if existing.dim != info.dim {
                return Err(BankError::DimensionMismatch {
                    fingerprint: info.fingerprint.clone(),
                    expected: existing.dim,
                    found: info.dim,
                });
            }
            return Ok(());
        }
        self.store.flush()
    }

    /// All classes, sorted by name (byte order).
    pub fn classes(&self) -> Result<Vec<ClassRecord>> {
        self.store
            .scan_prefix(TreeId::Classes, b"")?
            .into_iter()
            .map(|(k, v)| {
                record::decode_class(&v).map_err(|e| corrupt(&self.store, TreeId::Classes, &k, e))
            })
            .collect()
    }

    /// The class called `name`, if any.
    pub fn class(&self, name: &str) -> Result<Option<ClassRecord>> {
        self.store
            .get(TreeId::Classes, name.as_bytes())?
            .map(|v| {
                record::decode_class(&v)
                    .map_err(|e| corrupt(&self.store, TreeId::Classes, name.as_bytes(), e))
            })
            .transpose()
    }

    /// Stores a class atomically. If the class exists, fails with
    /// [`BankError::ClassExists`] unless `replace`, in which case the old
    /// build stays visible until the new one is committed.
    pub fn put_class(&self, build: &ClassBuild, replace: bool) -> Result<ClassRecord> {
        self.put_class_with(build, replace, FailPoint::None)
    }

    /// [`Bank::put_class`] with a failure point, for crash-safety tests.
    ///
    /// Also honours [`FAILPOINT_ENV`]: when it names the point reached, the
    /// process aborts there.
    pub fn put_class_with(
        &self,
        build: &ClassBuild,
        replace: bool,
        fail: FailPoint,
    ) -> Result<ClassRecord> {
        self.require_writable()?;
        let name = &build.record.name;
        if !replace && self.store.get(TreeId::Classes, name.as_bytes())?.is_some() {
            validate_class_name(name).map_err(|problem| BankError::InvalidClassName {
                name: name.clone(),
                problem,
            })?;
            return Err(self.class_exists(name));
        }
        // 1. Build data under a fresh build id, invisible until committed.
        let record = self.write_build(build)?;
        let build_id = record.build_id;
        self.store.flush()?;
        self.fail_point(FailPoint::AfterPrototypes, fail)?;

        // 2. Commit point: the class record, in one transaction.
        let value = record::encode_class(&record).map_err(|e| self.encode_err("class", e))?;
        let previous = match self.store.commit_class(name, &value, replace)? {
            CommitOutcome::Committed { previous } => previous,
            CommitOutcome::Exists => {
                // Lost a race with another writer: drop our build.
                self.delete_build(build_id)?;
                self.store.flush()?;
                return Err(self.class_exists(name));
            }
        };
        self.store.flush()?;
        self.fail_point(FailPoint::AfterCommit, fail)?;

        // 3. Delete the replaced build. If its record cannot be decoded, the
        // next open removes its data as leftovers.
        if let Some(old) = previous.and_then(|v| record::decode_class(&v).ok()) {
            if old.build_id != build_id {
                self.delete_build(old.build_id)?;
                self.store.flush()?;
            }
        }
        Ok(record)
    }

    /// Validates `build` and writes its build file (prototypes, regions and
    /// thumbnails) durably under a fresh build id. Returns the class record
    /// that would commit it.
    fn write_build(&self, build: &ClassBuild) -> Result<ClassRecord> {
        let (record, entries) = self.prepare_build(build)?;
        build_file::write(self.path(), record.build_id, &entries)?;
        Ok(record)
    }

    /// Validates `build`, takes a fresh build id and encodes its build file,
    /// without writing it. Returns the class record that would commit it.
    fn prepare_build(&self, build: &ClassBuild) -> Result<(ClassRecord, build_file::Entries)> {
        let name = &build.record.name;
        validate_class_name(name).map_err(|problem| BankError::InvalidClassName {
            name: name.clone(),
            problem,
        })?;
        let entries = self.validate_build(build)?;
        let build_id = self
            .store
            .fetch_add_u64(TreeId::Meta, meta_key::NEXT_BUILD_ID, 1)?;
        let mut bodies: Vec<(build_file::EntryKind, u32, Vec<u8>)> = build
            .encoders
            .iter()
            .enumerate()
            .map(|(slot, (_, protos))| {
                (
                    build_file::EntryKind::Block,
                    slot as u32,
                    record::encode_block(protos),
                )
            })
            .collect();
        if build.thumbnails.iter().any(|t| !t.is_empty()) {
            bodies.push((
                build_file::EntryKind::Thumbnails,
                0,
                record::encode_thumbnail_pack(&build.thumbnails),
            ));
        }
        let draft = &build.record;
        let record = ClassRecord {
            name: name.clone(),
            stuff: draft.stuff,
            source: draft.source.clone(),
            split_method: draft.split_method.clone(),
            created_unix: draft.created_unix.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
            build_id,
            images_used: draft.images_used,
            images_skipped: draft.images_skipped,
            fallback_splits: draft.fallback_splits,
            encoders: entries,
            support: draft.support.clone(),
            stats: draft.stats.clone(),
        };
        Ok((record, bodies))
    }

    /// The prototypes a class holds for an encoder, with their provenance
    /// regions, in stored order.
    pub fn prototypes(
        &self,
        class: &ClassRecord,
        encoder_fingerprint: &str,
    ) -> Result<Vec<Prototype>> {
        let Some(slot) = class.encoder_slot(encoder_fingerprint) else {
            return Err(BankError::EncoderNotInClass {
                class: class.name.clone(),
                fingerprint: encoder_fingerprint.to_owned(),
            });
        };
        let expected = class.encoders[usize::from(slot)].prototype_count;
        let build_id = class.build_id;
        let block = build_file::read(
            self.path(),
            build_id,
            build_file::EntryKind::Block,
            u32::from(slot),
        )?;
        let out = match block {
            Some(block) => {
                record::decode_block(&block).map_err(|e| BankError::CorruptBuildFile {
                    path: build_file::path(self.path(), build_id),
                    reason: format!("the block of encoder slot {slot}: {e}"),
                })?
            }
            None => self.legacy_prototypes(build_id, slot)?,
        };
        if out.len() as u64 != u64::from(expected) {
            let current = self.store.get(TreeId::Classes, class.name.as_bytes())?;
            let still_current = current
                .and_then(|v| record::decode_class(&v).ok())
                .is_some_and(|c| c.build_id == build_id);
            if !still_current {
                return Err(BankError::StaleClass {
                    path: self.path().to_path_buf(),
                    class: class.name.clone(),
                    build_id,
                });
            }
            return Err(BankError::Incomplete {
                path: self.path().to_path_buf(),
                class: class.name.clone(),
                build_id,
                fingerprint: encoder_fingerprint.to_owned(),
                expected,
                found: out.len() as u64,
            });
        }
        Ok(out)
    }

    /// The prototypes of a format-1 build: one entry per prototype and one
    /// region entry each, up to the first gap.
    fn legacy_prototypes(&self, build_id: u64, slot: u16) -> Result<Vec<Prototype>> {
        let entries = self.store.scan_prefix(
            TreeId::Prototypes,
            &record::prototype_prefix(build_id, slot),
        )?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let index = record::prototype_key_index(&key);
            if index != u32::try_from(out.len()).ok() {
                break; // a gap: reported by the caller
            }
            let stored = record::decode_prototype(&value)
                .map_err(|e| corrupt(&self.store, TreeId::Prototypes, &key, e))?;
            let rkey = record::region_key(build_id, slot, index.unwrap_or_default());
            let Some(region) = self.store.get(TreeId::Support, &rkey)? else {
                break;
            };
            let provenance = record::decode_region(&region, stored.image)
                .map_err(|e| corrupt(&self.store, TreeId::Support, &rkey, e))?;
            out.push(Prototype {
                level: stored.level,
                side: stored.side,
                vector: stored.vector,
                support: stored.support,
                provenance,
            });
        }
        Ok(out)
    }

    /// The JPEG thumbnail of support image `image` of a class, if stored.
    pub fn thumbnail(&self, class: &ClassRecord, image: u32) -> Result<Option<Vec<u8>>> {
        let pack = build_file::read(
            self.path(),
            class.build_id,
            build_file::EntryKind::Thumbnails,
            0,
        )?;
        if let Some(pack) = pack {
            return record::pack_thumbnail(&pack, image)
                .map(|t| t.map(<[u8]>::to_vec))
                .map_err(|e| BankError::CorruptBuildFile {
                    path: build_file::path(self.path(), class.build_id),
                    reason: format!("the thumbnail pack: {e}"),
                });
        }
        // Format 1: one entry per thumbnail.
        self.store.get(
            TreeId::Support,
            &record::thumbnail_key(class.build_id, image),
        )
    }

    /// Removes a class and its data; returns whether it existed.
    pub fn remove_class(&self, name: &str) -> Result<bool> {
        self.require_writable()?;
        let Some(old) = self.store.remove(TreeId::Classes, name.as_bytes())? else {
            return Ok(false);
        };
        self.store.flush()?;
        if let Ok(old) = record::decode_class(&old) {
            self.delete_build(old.build_id)?;
            self.store.flush()?;
        }
        Ok(true)
    }

    /// Renames a class in one transaction. Fails if `old` is missing
    /// ([`BankError::ClassNotFound`]) or `new` exists ([`BankError::ClassExists`]).
    pub fn rename_class(&self, old: &str, new: &str) -> Result<()> {
        self.require_writable()?;
        validate_class_name(new).map_err(|problem| BankError::InvalidClassName {
            name: new.to_owned(),
            problem,
        })?;
        let outcome = self.store.rename_class(old, new, |bytes| {
            let mut rec = record::decode_class(bytes)
                .map_err(|e| corrupt(&self.store, TreeId::Classes, old.as_bytes(), e))?;
            rec.name = new.to_owned();
            record::encode_class(&rec).map_err(|e| self.encode_err("class", e))
        })?;
        match outcome {
            RenameOutcome::Renamed => self.store.flush(),
            RenameOutcome::MissingOld => Err(BankError::ClassNotFound {
                path: self.path().to_path_buf(),
                name: old.to_owned(),
            }),
            RenameOutcome::ExistingNew => Err(self.class_exists(new)),
        }
    }

    /// Total size of the bank's files, in bytes (after flushing).
    pub fn disk_size(&self) -> Result<u64> {
        self.store.flush()?;
        self.store.disk_size()
    }

    /// Checks a build against the registered encoders and computes its
    /// per-encoder entries.
    fn validate_build(&self, build: &ClassBuild) -> Result<Vec<ClassEncoderEntry>> {
        let class = &build.record.name;
        let invalid = |reason: String| BankError::InvalidBuild {
            class: class.clone(),
            reason,
        };
        let n_support = build.record.support.len();
        if build.encoders.is_empty() {
            return Err(invalid("it has prototypes for no encoder".into()));
        }
        if build.encoders.len() > usize::from(u16::MAX) {
            return Err(invalid(format!(
                "it has {} encoders; at most 65535",
                build.encoders.len()
            )));
        }
        if build.thumbnails.len() > n_support {
            return Err(invalid(format!(
                "it has {} thumbnails for {n_support} support images",
                build.thumbnails.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut entries = Vec::with_capacity(build.encoders.len());
        for (fp, protos) in &build.encoders {
            if !seen.insert(fp.as_str()) {
                return Err(invalid(format!("encoder {fp} appears twice")));
            }
            let Some(info) = self.encoder(fp)? else {
                return Err(BankError::UnknownEncoder {
                    path: self.path().to_path_buf(),
                    fingerprint: fp.clone(),
                });
            };
            if protos.is_empty() {
                return Err(invalid(format!("it has no prototypes for encoder {fp}")));
            }
            let count = u32::try_from(protos.len())
                .map_err(|_| invalid(format!("too many prototypes for encoder {fp}")))?;
            for (i, p) in protos.iter().enumerate() {
                if p.vector.len() != info.dim as usize {
                    return Err(BankError::DimensionMismatch {
                        fingerprint: fp.clone(),
                        expected: info.dim,
                        found: u32::try_from(p.vector.len()).unwrap_or(u32::MAX),
                    });
                }
                if !p.vector.iter().all(|v| v.is_finite()) {
                    return Err(invalid(format!(
                        "prototype {i} of encoder {fp} is not finite"
                    )));
                }
                if build.record.stuff && p.side == ovdiff_core::prototype::Side::Background {
                    return Err(invalid(format!(
                        "prototype {i} of encoder {fp} is a background prototype of a stuff class"
                    )));
                }
                let pv = &p.provenance;
                if pv.image as usize >= n_support {
                    return Err(invalid(format!(
                        "prototype {i} of encoder {fp} refers to image {} of {n_support}",
                        pv.image
                    )));
                }
                if pv.grid_h > u32::from(u16::MAX) || pv.grid_w > u32::from(u16::MAX) {
                    return Err(invalid(format!(
                        "prototype {i} of encoder {fp} has a grid over 65535"
                    )));
                }
                if pv.region.len() as u64 != u64::from(pv.grid_h) * u64::from(pv.grid_w) {
                    return Err(invalid(format!(
                        "prototype {i} of encoder {fp} has a region of {} patches for a {}x{} grid",
                        pv.region.len(),
                        pv.grid_h,
                        pv.grid_w
                    )));
                }
            }
            entries.push(ClassEncoderEntry {
                fingerprint: fp.clone(),
                counts: PrototypeCounts::of(protos),
                prototype_count: count,
            });
        }
        Ok(entries)
    }

    /// Deletes a build: its build file and any format-1 entries.
    fn delete_build(&self, build_id: u64) -> Result<u64> {
        let prefix = record::build_prefix(build_id);
        Ok(u64::from(build_file::remove(self.path(), build_id)?)
            + self.store.remove_prefix(TreeId::Prototypes, &prefix)?
            + self.store.remove_prefix(TreeId::Support, &prefix)?)
    }

    /// Deletes build data no class record references; returns how many entries went.
    fn clean_leftovers(&self) -> Result<u64> {
        let referenced: HashSet<u64> = self.classes()?.iter().map(|c| c.build_id).collect();
        let mut removed = 0;
        for tree in [TreeId::Prototypes, TreeId::Support] {
            let mut cursor = Vec::new();
            while let Some(key) = self.store.first_key_from(tree, &cursor)? {
                match record::key_build_id(&key) {
                    Some(b) => {
                        if !referenced.contains(&b) {
                            removed += self.store.remove_prefix(tree, &record::build_prefix(b))?;
                        }
                        match b.checked_add(1) {
                            Some(next) => cursor = next.to_be_bytes().to_vec(),
                            None => break,
                        }
                    }
                    None => {
                        // Too short to be a bank key.
                        self.store.remove_keys(tree, std::slice::from_ref(&key))?;
                        removed += 1;
                        cursor = key;
                        cursor.push(0);
                    }
                }
            }
        }
        let (files, stray) = build_file::list(self.path())?;
        for id in files {
            if !referenced.contains(&id) {
                removed += u64::from(build_file::remove(self.path(), id)?);
            }
        }
        for p in stray {
            // Temporary files of interrupted writes.
            if std::fs::remove_file(&p).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            self.store.flush()?;
        }
        Ok(removed)
    }

    fn fail_point(&self, here: FailPoint, requested: FailPoint) -> Result<()> {
        if let Some(ms) = std::env::var(FAILPOINT_PAUSE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
        }
        if let Some(name) = here.env_name() {
            if std::env::var_os(FAILPOINT_ENV).is_some_and(|v| v == name) {
                std::process::abort();
            }
        }
        if here == requested {
            return Err(BankError::InjectedFailure { point: here });
        }
        Ok(())
    }

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

/// Writes the meta keys of a new bank; the format version goes last.
fn initialise(store: &Store) -> Result<()> {
    let foreign = |reason| BankError::NotABank {
        path: store.path().to_path_buf(),
        reason,
    };
    if !store.foreign_trees().is_empty() || store.default_tree_has_data()? {
        return Err(foreign("it is a sled database of another application"));
    }
    if !store.is_empty(TreeId::Classes) {
        return Err(foreign("it has classes but no format version"));
    }
    let creation_keys = [
        meta_key::MAGIC,
        meta_key::OLDEST_READABLE,
        meta_key::TOOL_VERSION,
        meta_key::NEXT_BUILD_ID,
    ];
    if store
        .keys(TreeId::Meta)?
        .iter()
        .any(|k| !creation_keys.contains(&k.as_slice()) && !k.starts_with(meta_key::ENCODER_PREFIX))
    {
        return Err(foreign(
            "its meta tree holds unknown keys and no format version",
        ));
    }
    // A failed creation (or nothing): start from scratch.
    for t in TreeId::ALL {
        store.clear(t)?;
    }
    store.insert(TreeId::Meta, meta_key::MAGIC, format::MAGIC)?;
    store.insert(
        TreeId::Meta,
        meta_key::OLDEST_READABLE,
        &record::encode_u32(BANK_FORMAT_OLDEST_SUPPORTED),
    )?;
    store.insert(
        TreeId::Meta,
        meta_key::TOOL_VERSION,
        TOOL_VERSION.as_bytes(),
    )?;
    store.insert(TreeId::Meta, meta_key::NEXT_BUILD_ID, &1u64.to_le_bytes())?;
    store.flush()?;
    store.insert(
        TreeId::Meta,
        meta_key::FORMAT_VERSION,
        &record::encode_u32(BANK_FORMAT_VERSION),
    )?;
    store.flush()
}

fn corrupt(store: &Store, tree: TreeId, key: &[u8], source: RecordError) -> BankError {
    BankError::Corrupt {
        path: store.path().to_path_buf(),
        tree: tree.name(),
        key: hex::encode(key),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_core::prototype::{Level, Provenance, Side};
    use std::time::Instant;

    fn fp(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn encoder(c: char, dim: u32) -> EncoderInfo {
        EncoderInfo {
            fingerprint: fp(c),
            name: format!("enc-{c}"),
            dim,
            dtype: DTYPE_F16.into(),
        }
    }

    /// Deterministic pseudo-random numbers in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn prototypes(n: usize, dim: usize, images: u32, seed: u64, stuff: bool) -> Vec<Prototype> {
        let levels = [Level::Class, Level::Instance, Level::Part];
        (0..n)
            .map(|i| {
                let mut v = noise(seed * 1000 + i as u64, dim);
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                let (gh, gw) = (16u32, 12u32);
                let region = noise(seed + 7 * i as u64, (gh * gw) as usize)
                    .iter()
                    .map(|&r| r > 0.0)
                    .collect();
                Prototype {
                    level: levels[i % 3],
                    side: if stuff || i % 2 == 0 {
                        Side::Foreground
                    } else {
                        Side::Background
                    },
                    vector: v,
                    support: 10 + i as u32,
                    provenance: Provenance {
                        image: i as u32 % images,
                        grid_h: gh,
                        grid_w: gw,
                        region,
                    },
                }
            })
            .collect()
    }

    fn build(name: &str, encoders: &[(char, usize, usize)], seed: u64) -> ClassBuild {
        let images = 4u32;
        ClassBuild {
            record: ClassRecordDraft {
                name: name.into(),
                stuff: false,
                source: ClassSource::Generator {
                    fingerprint: fp('9'),
                    params: vec![
                        ("prompt".into(), format!("a photo of a {name}")),
                        ("seed".into(), seed.to_string()),
                    ],
                },
                split_method: "kmeans2".into(),
                images_used: images,
                images_skipped: 1,
                fallback_splits: 2,
                created_unix: None,
                stats: Some(BuildStats {
                    tool_version: TOOL_VERSION.into(),
                    total_ms: seed,
                    ..BuildStats::default()
                }),
                support: (0..images)
                    .map(|i| SupportImageInfo {
                        name: format!("{name}-{i}.png"),
                        width: 512,
                        height: 384 + i,
                    })
                    .collect(),
            },
            encoders: encoders
                .iter()
                .map(|&(c, n, dim)| (fp(c), prototypes(n, dim, images, seed, false)))
                .collect(),
            thumbnails: (0..images as u64)
                .map(|i| {
                    let mut t = b"\xff\xd8\xff\xe0".to_vec();
                    t.extend(
                        noise(seed + i, 100)
                            .iter()
                            .map(|&x| (x * 127.0) as i8 as u8),
                    );
                    t
                })
                .collect(),
        }
    }

    fn open_with(dir: &Path, encoders: &[EncoderInfo]) -> Bank {
        let bank = Bank::open(dir).unwrap();
        for e in encoders {
            bank.register_encoder(e).unwrap();
        }
        bank
    }

    fn assert_protos_close(got: &[Prototype], want: &[Prototype]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.level, g.side, g.support), (w.level, w.side, w.support));
            assert_eq!(g.provenance, w.provenance);
            assert_eq!(g.vector.len(), w.vector.len());
            for (a, b) in g.vector.iter().zip(&w.vector) {
                assert!((a - b).abs() <= 1e-3, "{a} vs {b}");
            }
        }
    }

    fn builds(bank: &Bank) -> usize {
        build_file::list(bank.path()).unwrap().0.len()
    }

    fn entries(bank: &Bank, t: TreeId) -> usize {
        bank.store.keys(t).unwrap().len()
    }

    #[test]
    fn round_trip_of_all_record_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let (ea, eb) = (encoder('a', 24), encoder('b', 40));
        let b = build("cat", &[('a', 7, 24), ('b', 5, 40)], 1);
        let stored = {
            let bank = open_with(&path, &[ea.clone(), eb.clone()]);
            assert_eq!(bank.format_version(), BANK_FORMAT_VERSION);
            assert_eq!(bank.leftovers_cleaned(), 0);
            bank.put_class(&b, false).unwrap()
        };
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.leftovers_cleaned(), 0);
        assert_eq!(bank.created_by().unwrap().as_deref(), Some(TOOL_VERSION));
        assert_eq!(bank.encoders().unwrap(), vec![ea.clone(), eb.clone()]);
        assert_eq!(bank.encoder(&ea.fingerprint).unwrap(), Some(ea.clone()));
        let rec = bank.class("cat").unwrap().unwrap();
        assert_eq!(rec, stored);
        assert_eq!(rec.support, b.record.support);
        assert_eq!(rec.source, b.record.source);
        assert_eq!(
            (rec.images_used, rec.images_skipped, rec.fallback_splits),
            (4, 1, 2)
        );
        assert_eq!(rec.encoders.len(), 2);
        assert_eq!(rec.encoders[0].prototype_count, 7);
        assert_eq!(rec.encoders[0].counts.total(), 7);
        assert_eq!(
            rec.encoders[0].counts,
            PrototypeCounts::of(&b.encoders[0].1)
        );
        assert_protos_close(&bank.prototypes(&rec, &fp('a')).unwrap(), &b.encoders[0].1);
        assert_protos_close(&bank.prototypes(&rec, &fp('b')).unwrap(), &b.encoders[1].1);
        for (i, t) in b.thumbnails.iter().enumerate() {
            assert_eq!(bank.thumbnail(&rec, i as u32).unwrap().as_ref(), Some(t));
        }
        assert_eq!(bank.thumbnail(&rec, 99).unwrap(), None);
        assert!(matches!(
            bank.prototypes(&rec, &fp('c')),
            Err(BankError::EncoderNotInClass { .. })
        ));
    }

    #[test]
    fn classes_are_sorted_and_replace_needs_permission() {
        let dir = tempfile::tempdir().unwrap();
        let bank = open_with(dir.path(), &[encoder('a', 8)]);
        for name in ["zebra", "apple", "Mango"] {
            bank.put_class(&build(name, &[('a', 3, 8)], 2), false)
                .unwrap();
        }
        let names: Vec<_> = bank
            .classes()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Mango", "apple", "zebra"]);
        let before = (
            entries(&bank, TreeId::Prototypes),
            entries(&bank, TreeId::Support),
            builds(&bank),
        );
        let err = bank
            .put_class(&build("apple", &[('a', 3, 8)], 3), false)
            .unwrap_err();
        assert!(
            matches!(err, BankError::ClassExists { ref name, .. } if name == "apple"),
            "{err}"
        );
        assert_eq!(
            (
                entries(&bank, TreeId::Prototypes),
                entries(&bank, TreeId::Support),
                builds(&bank)
            ),
            before
        );
        let old = bank.class("apple").unwrap().unwrap();
        let new = bank
            .put_class(&build("apple", &[('a', 5, 8)], 4), true)
            .unwrap();
        assert_ne!(old.build_id, new.build_id);
        assert_eq!(bank.class("apple").unwrap().unwrap(), new);
        // The old build is gone, the new one complete: one build file per class.
        assert_eq!(builds(&bank), 3);
        assert!(matches!(
            bank.prototypes(&old, &fp('a')),
            Err(BankError::StaleClass { build_id, .. }) if build_id == old.build_id
        ));
        assert_eq!(bank.prototypes(&new, &fp('a')).unwrap().len(), 5);
    }

    #[test]
    fn newer_and_older_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        drop(Bank::open(&path).unwrap());
        let set_version = |v: u32| {
            let s = Store::open(&path).unwrap();
            s.insert(TreeId::Meta, meta_key::FORMAT_VERSION, &v.to_le_bytes())
                .unwrap();
            s.insert(TreeId::Meta, meta_key::OLDEST_READABLE, &v.to_le_bytes())
                .unwrap();
            s.flush().unwrap();
        };
        set_version(99);
        let err = Bank::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                BankError::TooNew {
                    found: 99,
                    supported: BANK_FORMAT_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("99") && msg.contains(" 2;") && msg.contains("upgrade ovdiff-bank"),
            "{msg}"
        );
        set_version(0);
        let err = Bank::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                BankError::TooOld {
                    found: 0,
                    oldest: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("too old"), "{err}");
        set_version(1);
        Bank::open(&path).unwrap();
    }

    #[test]
    fn failed_creation_is_reinitialised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        {
            // A creation that died before writing the format version.
            let s = Store::open(&path).unwrap();
            s.insert(TreeId::Meta, meta_key::MAGIC, format::MAGIC)
                .unwrap();
            s.insert(TreeId::Prototypes, &record::prototype_key(1, 0, 0), b"junk")
                .unwrap();
            s.flush().unwrap();
        }
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.format_version(), BANK_FORMAT_VERSION);
        assert_eq!(entries(&bank, TreeId::Prototypes), 0);
        assert!(bank.classes().unwrap().is_empty());
    }

    #[test]
    fn foreign_sled_database_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other");
        {
            let db = raw_sled(&path, format::SLED_SEGMENT_SIZE);
            db.open_tree("users").unwrap().insert("alice", "1").unwrap();
            db.flush().unwrap();
        }
        let err = open_after_raw_sled(&path).unwrap_err();
        assert!(matches!(err, BankError::NotABank { .. }), "{err}");
        let db = raw_sled(&path, format::SLED_SEGMENT_SIZE);
        let users = db.open_tree("users").unwrap();
        assert!(users.get("alice").unwrap().is_some());
    }

    #[test]
    fn sled_database_with_other_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other");
        drop(raw_sled(&path, 512 * 1024)); // sled's default segment size
        let err = open_after_raw_sled(&path).unwrap_err();
        assert!(matches!(err, BankError::Open { .. }), "{err}");
        assert!(err.to_string().contains("cannot open"), "{err}");
    }

    /// Opens a plain sled database, waiting out a lock a dropped handle still holds.
    fn raw_sled(path: &Path, segment_size: usize) -> sled::Db {
        let start = Instant::now();
        loop {
            let config = sled::Config::new().path(path).segment_size(segment_size);
            match config.open() {
                Ok(db) => return db,
                Err(_) if start.elapsed().as_secs() < 3 => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// [`Bank::open`] right after a plain sled handle on `path` was dropped:
    /// `Bank` only waits for locks of banks it closed itself.
    fn open_after_raw_sled(path: &Path) -> Result<Bank> {
        let start = Instant::now();
        loop {
            match Bank::open(path) {
                Err(BankError::Locked { .. }) if start.elapsed().as_secs() < 3 => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn injected_failure_during_replace_keeps_old_class_and_reopen_cleans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let v1 = build("dog", &[('a', 6, 16)], 10);
        let v2 = build("dog", &[('a', 9, 16)], 11);
        let old = {
            let bank = open_with(&path, &[encoder('a', 16)]);
            let old = bank.put_class(&v1, false).unwrap();
            let clean = builds(&bank);
            let err = bank
                .put_class_with(&v2, true, FailPoint::AfterPrototypes)
                .unwrap_err();
            assert!(matches!(
                err,
                BankError::InjectedFailure {
                    point: FailPoint::AfterPrototypes
                }
            ));
            // The old class is intact and still the visible one.
            assert_eq!(bank.class("dog").unwrap().unwrap(), old);
            assert_protos_close(&bank.prototypes(&old, &fp('a')).unwrap(), &v1.encoders[0].1);
            // The new build's data is on disk, unreferenced.
            assert_eq!(builds(&bank), clean + 1);
            old
        };
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.leftovers_cleaned(), 1);
        assert_eq!(bank.class("dog").unwrap().unwrap(), old);
        assert_eq!(builds(&bank), 1);
        assert_protos_close(&bank.prototypes(&old, &fp('a')).unwrap(), &v1.encoders[0].1);
        drop(bank);
        assert_eq!(Bank::open(&path).unwrap().leftovers_cleaned(), 0);
    }

    #[test]
    fn failure_after_commit_shows_new_class_and_reopen_cleans_old_build() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let v2 = build("dog", &[('a', 9, 16)], 11);
        {
            let bank = open_with(&path, &[encoder('a', 16)]);
            bank.put_class(&build("dog", &[('a', 6, 16)], 10), false)
                .unwrap();
            let err = bank
                .put_class_with(&v2, true, FailPoint::AfterCommit)
                .unwrap_err();
            assert!(matches!(err, BankError::InjectedFailure { .. }));
        }
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.leftovers_cleaned(), 1);
        let rec = bank.class("dog").unwrap().unwrap();
        assert_protos_close(&bank.prototypes(&rec, &fp('a')).unwrap(), &v2.encoders[0].1);
    }

    #[test]
    fn env_failpoint_aborts_the_process_and_reopen_cleans() {
        // Child mode: run by the parent below with the env var set.
        if let Some(path) = std::env::var_os("OVDIFF_BANK_TEST_CHILD") {
            let bank = open_with(Path::new(&path), &[encoder('a', 8)]);
            let _ = bank.put_class(&build("crash", &[('a', 4, 8)], 5), false);
            std::process::exit(0); // not reached when the failpoint fires
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "bank::tests::env_failpoint_aborts_the_process_and_reopen_cleans",
            ])
            .args(["--test-threads", "1", "--nocapture"])
            .env("OVDIFF_BANK_TEST_CHILD", &path)
            .env(FAILPOINT_ENV, "bank-after-prototypes")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted");
        let bank = Bank::open(&path).unwrap();
        assert!(bank.class("crash").unwrap().is_none());
        assert_eq!(bank.leftovers_cleaned(), 1);
    }

    #[test]
    fn stray_and_damaged_build_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        {
            let bank = open_with(&path, &[encoder('a', 8)]);
            bank.put_class(&build("a", &[('a', 3, 8)], 1), false)
                .unwrap();
        }
        // An interrupted write leaves a temporary file: removed on open.
        let builds_dir = path.join(build_file::BUILDS_DIR);
        std::fs::write(builds_dir.join(".00000000000000ff.tmp-1"), b"half").unwrap();
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.leftovers_cleaned(), 1);
        let rec = bank.class("a").unwrap().unwrap();
        // A damaged build file is an error naming the file, not a panic.
        let file = build_file::path(&path, rec.build_id);
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let err = bank.thumbnail(&rec, 0).unwrap_err();
        assert!(matches!(err, BankError::CorruptBuildFile { .. }), "{err}");
        assert!(err.to_string().contains(".build"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let err = bank.prototypes(&rec, &fp('a')).unwrap_err();
        assert!(matches!(err, BankError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn remove_deletes_class_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let bank = open_with(dir.path(), &[encoder('a', 8)]);
        bank.put_class(&build("a", &[('a', 3, 8)], 1), false)
            .unwrap();
        bank.put_class(&build("b", &[('a', 2, 8)], 2), false)
            .unwrap();
        assert!(bank.remove_class("a").unwrap());
        assert!(bank.class("a").unwrap().is_none());
        assert_eq!(builds(&bank), 1);
        assert!(!bank.remove_class("a").unwrap());
        assert!(bank.class("b").unwrap().is_some());
    }

    #[test]
    fn rename_moves_the_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let b = build("kitty", &[('a', 3, 8)], 1);
        {
            let bank = open_with(&path, &[encoder('a', 8)]);
            bank.put_class(&b, false).unwrap();
            bank.put_class(&build("dog", &[('a', 2, 8)], 2), false)
                .unwrap();
            bank.rename_class("kitty", "cat").unwrap();
            let err = bank.rename_class("kitty", "lion").unwrap_err();
            assert!(
                matches!(err, BankError::ClassNotFound { ref name, .. } if name == "kitty"),
                "{err}"
            );
            let err = bank.rename_class("cat", "dog").unwrap_err();
            assert!(
                matches!(err, BankError::ClassExists { ref name, .. } if name == "dog"),
                "{err}"
            );
            let err = bank.rename_class("cat", "cat\t").unwrap_err();
            assert!(matches!(err, BankError::InvalidClassName { .. }), "{err}");
        }
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.leftovers_cleaned(), 0);
        assert!(bank.class("kitty").unwrap().is_none());
        let rec = bank.class("cat").unwrap().unwrap();
        assert_eq!(rec.name, "cat");
        assert_protos_close(&bank.prototypes(&rec, &fp('a')).unwrap(), &b.encoders[0].1);
    }

    #[test]
    fn second_open_fails_fast_with_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let first = Bank::open(&path).unwrap();
        let t = Instant::now();
        let err = Bank::open(&path).unwrap_err();
        assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
        assert!(matches!(err, BankError::Locked { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("bank {} is in use by another process", path.display())
        );
        drop(first);
        Bank::open(&path).unwrap();
    }

    #[test]
    fn immediate_reopen_after_drop_succeeds() {
        // sled releases its file lock lazily after a drop; open must wait it out.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        for i in 0..15u64 {
            let bank = open_with(&path, &[encoder('a', 384)]);
            bank.put_class(&build("c", &[('a', 130, 384)], i), true)
                .unwrap();
        }
        assert_eq!(Bank::open(&path).unwrap().leftovers_cleaned(), 0);
    }

    #[test]
    fn sled_lock_error_is_mapped_to_locked() {
        // Bypass the pre-check: sled's own lock error must map too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let _first = Bank::open(&path).unwrap();
        let err = sled::Config::new()
            .path(&path)
            .segment_size(format::SLED_SEGMENT_SIZE)
            .open()
            .map(drop)
            .map_err(|e| store::open_error(&path, e))
            .unwrap_err();
        assert!(matches!(err, BankError::Locked { .. }), "{err}");
    }

    #[test]
    fn encoder_registration_and_dimension_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let bank = open_with(dir.path(), &[encoder('a', 8)]);
        bank.register_encoder(&encoder('a', 8)).unwrap(); // idempotent
        let err = bank.register_encoder(&encoder('a', 16)).unwrap_err();
        assert!(
            matches!(
                err,
                BankError::DimensionMismatch {
                    expected: 8,
                    found: 16,
                    ..
                }
            ),
            "{err}"
        );
        let err = bank
            .put_class(&build("x", &[('a', 2, 7)], 1), false)
            .unwrap_err();
        assert!(
            matches!(
                err,
                BankError::DimensionMismatch {
                    expected: 8,
                    found: 7,
                    ..
                }
            ),
            "{err}"
        );
        let err = bank
            .put_class(&build("x", &[('b', 2, 8)], 1), false)
            .unwrap_err();
        assert!(matches!(err, BankError::UnknownEncoder { .. }), "{err}");
        let mut bad = encoder('c', 8);
        bad.fingerprint = "C".repeat(64);
        assert!(matches!(
            bank.register_encoder(&bad),
            Err(BankError::InvalidEncoder { .. })
        ));
        let mut bad = encoder('c', 8);
        bad.dtype = "f32".into();
        assert!(matches!(
            bank.register_encoder(&bad),
            Err(BankError::InvalidEncoder { .. })
        ));
        assert!(matches!(
            bank.register_encoder(&encoder('c', 70_000)),
            Err(BankError::InvalidEncoder { .. })
        ));
        assert_eq!(bank.encoders().unwrap(), vec![encoder('a', 8)]);
    }

    #[test]
    fn invalid_names_and_builds_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let bank = open_with(dir.path(), &[encoder('a', 8)]);
        for name in ["", " cat", "cat ", "ca\u{7}t", &"x".repeat(129)] {
            let err = bank
                .put_class(&build(name, &[('a', 2, 8)], 1), false)
                .unwrap_err();
            assert!(
                matches!(err, BankError::InvalidClassName { .. }),
                "{name:?}: {err}"
            );
        }
        let invalid = |b: ClassBuild| {
            let err = bank.put_class(&b, false).unwrap_err();
            assert!(matches!(err, BankError::InvalidBuild { .. }), "{err}");
        };
        let mut b = build("x", &[('a', 2, 8)], 1);
        b.encoders[0].1[1].provenance.image = 4;
        invalid(b);
        let mut b = build("x", &[('a', 2, 8)], 1);
        b.encoders[0].1[0].provenance.region.pop();
        invalid(b);
        let mut b = build("x", &[('a', 2, 8)], 1);
        b.record.stuff = true;
        invalid(b); // prototype 1 is background
        let mut b = build("x", &[('a', 2, 8)], 1);
        b.encoders.push(b.encoders[0].clone());
        invalid(b);
        let mut b = build("x", &[('a', 2, 8)], 1);
        b.thumbnails.push(vec![1]);
        invalid(b);
        let mut b = build("x", &[('a', 2, 8)], 1);
        b.encoders[0].1[0].vector[0] = f32::NAN;
        invalid(b);
        invalid(build("x", &[('a', 0, 8)], 1));
        assert!(bank.classes().unwrap().is_empty());
        assert_eq!(entries(&bank, TreeId::Prototypes), 0);
    }

    #[test]
    fn stray_short_keys_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        {
            let bank = Bank::open(&path).unwrap();
            bank.store.insert(TreeId::Support, b"abc", b"x").unwrap();
            bank.store
                .insert(TreeId::Support, &record::thumbnail_key(u64::MAX, 0), b"x")
                .unwrap();
            bank.store.flush().unwrap();
        }
        let bank = Bank::open(&path).unwrap();
        assert_eq!(bank.leftovers_cleaned(), 2);
        assert_eq!(entries(&bank, TreeId::Support), 0);
    }

    #[test]
    fn disk_size_grows_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let bank = open_with(dir.path(), &[encoder('a', 64)]);
        let empty = bank.disk_size().unwrap();
        assert!(empty > 0);
        bank.put_class(&build("a", &[('a', 200, 64)], 1), false)
            .unwrap();
        let full = bank.disk_size().unwrap();
        assert!(full >= empty + 200 * 64 * 2, "{empty} -> {full}");
    }

    /// Bank size for 3 classes (or `OVDIFF_SIZE_CLASSES`) × 130 prototypes ×
    /// 384 dims plus 4 thumbnails of ~15 KB each per class, against the raw
    /// f16 + thumbnail bytes.
    #[test]
    fn size_overhead_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let bank = open_with(&path, &[encoder('a', 384)]);
        let mut raw = 0u64;
        // OVDIFF_SIZE_CLASSES=100 measures a larger bank (docs/benchmarks.md).
        let n: usize = std::env::var("OVDIFF_SIZE_CLASSES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        for k in 0..n {
            let name = &format!("class {k}");
            let mut b = build(name, &[('a', 130, 384)], k as u64);
            for (i, t) in b.thumbnails.iter_mut().enumerate() {
                *t = noise(100 + i as u64 + 10 * k as u64, 15_000)
                    .iter()
                    .map(|&x| (x * 127.0) as i8 as u8)
                    .collect();
            }
            raw += 130 * 384 * 2 + b.thumbnails.iter().map(|t| t.len() as u64).sum::<u64>();
            bank.put_class(&b, false).unwrap();
        }
        let live = bank.disk_size().unwrap();
        drop(bank);
        let bank = Bank::open(&path).unwrap();
        let reopened = bank.disk_size().unwrap();
        eprintln!(
            "size report: raw {raw} B, bank {live} B ({:.2}x), after reopen {reopened} B ({:.2}x)",
            live as f64 / raw as f64,
            reopened as f64 / raw as f64
        );
        for entry in std::fs::read_dir(&path).unwrap() {
            let e = entry.unwrap();
            eprintln!("  {:?} {}", e.file_name(), e.metadata().unwrap().len());
        }
        let ratio = reopened.max(live) as f64 / raw as f64;
        // The row scripts/bench collects into docs/benchmarks.md.
        println!(
            "| bank on disk ÷ (f16 vectors + thumbnails), {n} classes (synthetic) | {ratio:.2}× | ≤ 1.3× | {} |",
            if ratio <= 1.3 { "yes" } else { "**no**" }
        );
        assert!(live >= raw);
    }
}
