//! Changing a bank: registering encoders, and storing, removing and renaming classes, each in one commit that a crash cannot split (see the module docs of [`bank`](super)).

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use super::record::{self, meta_key};
use super::store::{CommitOutcome, RenameOutcome, TreeId};
use super::{
    build_file, corrupt, is_valid_fingerprint, validate_class_name, Bank, BankError, ClassBuild,
    ClassEncoderEntry, ClassRecord, EncoderInfo, PrototypeCounts, Result, DTYPE_F16,
};

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

impl Bank {
    /// Registers an encoder. Registering the same fingerprint again is a
    /// no-op (the first name is kept) unless its dimension differs:
    /// [`BankError::DimensionMismatch`] while a class uses the registered
    /// record; a record that no class uses (a leftover, see
    /// [`Bank::unused_encoders`]) and differs in name or dimension is
    /// replaced instead.
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
            let differs = existing.dim != info.dim || existing.name != info.name;
            if differs && !self.encoder_in_use(&info.fingerprint)? {
                self.store.insert(TreeId::Meta, &key, &value)?;
                return self.store.flush();
            }
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

    /// Stores a class atomically. If the class exists, fails with
    /// [`BankError::ClassExists`] unless `replace`, in which case the old
    /// build stays visible until the new one is committed.
    pub fn put_class(&self, build: &ClassBuild, replace: bool) -> Result<ClassRecord> {
        self.put_class_with(build, replace, FailPoint::None)
    }

    /// [`Bank::put_class`] with a failure point, for crash-safety tests.
    ///
    /// Also honours [`ovdiff_core::failpoint::ENV`]: when it names the point reached, the
    /// process aborts there.
    pub fn put_class_with(
        &self,
        build: &ClassBuild,
        replace: bool,
        fail: FailPoint,
    ) -> Result<ClassRecord> {
        self.require_writable()?;
        // Old banks' ids are fixed before the class set changes.
        self.record_label_ids()?;
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
                // The replaced build may have been the last user of an encoder.
                self.drop_unused_encoders()?;
            }
        }
        self.record_label_ids()?;
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
    pub(super) fn prepare_build(
        &self,
        build: &ClassBuild,
    ) -> Result<(ClassRecord, build_file::Entries)> {
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

    /// Removes a class and its data, and the records of encoders no class
    /// uses any more ([`Bank::drop_unused_encoders`]); returns whether it
    /// existed.
    pub fn remove_class(&self, name: &str) -> Result<bool> {
        self.require_writable()?;
        // The removed name keeps its id, and the others theirs.
        self.record_label_ids()?;
        let Some(old) = self.store.remove(TreeId::Classes, name.as_bytes())? else {
            return Ok(false);
        };
        self.store.flush()?;
        if let Ok(old) = record::decode_class(&old) {
            self.delete_build(old.build_id)?;
            self.store.flush()?;
        }
        self.drop_unused_encoders()?;
        Ok(true)
    }

    /// Deletes the records of encoders that no class uses (after the last
    /// class built with one is removed or replaced, after an import or `add`
    /// that failed once its encoders were registered, or left by a version
    /// before issue #20 that kept them); returns them. Every write that
    /// removes or replaces a class ([`Bank::remove_class`], and
    /// [`Bank::put_class`] or a committed [`ClassBatch`](super::ClassBatch)
    /// that replaced one) ends with it, and [`Bank::register_encoder`]
    /// replaces a stale record of another dimension, so that no leftover can
    /// block a later `add` with the real encoder.
    pub fn drop_unused_encoders(&self) -> Result<Vec<EncoderInfo>> {
        self.require_writable()?;
        let unused = self.unused_encoders()?;
        if unused.is_empty() {
            return Ok(unused);
        }
        let keys: Vec<Vec<u8>> = unused
            .iter()
            .map(|e| record::encoder_key(&e.fingerprint))
            .collect();
        self.store.remove_keys(TreeId::Meta, &keys)?;
        self.store.flush()?;
        Ok(unused)
    }

    fn encoder_in_use(&self, fingerprint: &str) -> Result<bool> {
        Ok(self
            .classes()?
            .iter()
            .any(|c| c.encoders.iter().any(|e| e.fingerprint == fingerprint)))
    }

    /// Renames a class in one transaction. Fails if `old` is missing
    /// ([`BankError::ClassNotFound`]) or `new` exists ([`BankError::ClassExists`]).
    pub fn rename_class(&self, old: &str, new: &str) -> Result<()> {
        self.require_writable()?;
        validate_class_name(new).map_err(|problem| BankError::InvalidClassName {
            name: new.to_owned(),
            problem,
        })?;
        self.record_label_ids()?;
        let id = self.label_ids()?.get(old).copied();
        let outcome = self.store.rename_class(old, new, |bytes| {
            let mut rec = record::decode_class(bytes)
                .map_err(|e| corrupt(&self.store, TreeId::Classes, old.as_bytes(), e))?;
            rec.name = new.to_owned();
            record::encode_class(&rec).map_err(|e| self.encode_err("class", e))
        })?;
        match outcome {
            RenameOutcome::Renamed => {
                self.store.flush()?;
                match id {
                    Some(id) => self.move_label_id(old, new, id),
                    None => Ok(()),
                }
            }
            RenameOutcome::MissingOld => Err(BankError::ClassNotFound {
                path: self.path().to_path_buf(),
                name: old.to_owned(),
            }),
            RenameOutcome::ExistingNew => Err(self.class_exists(new)),
        }
    }

    /// Deletes a build: its build file and any format-1 entries.
    pub(super) fn delete_build(&self, build_id: u64) -> Result<u64> {
        let prefix = record::build_prefix(build_id);
        Ok(u64::from(build_file::remove(self.path(), build_id)?)
            + self.store.remove_prefix(TreeId::Prototypes, &prefix)?
            + self.store.remove_prefix(TreeId::Support, &prefix)?)
    }

    fn fail_point(&self, here: FailPoint, requested: FailPoint) -> Result<()> {
        ovdiff_core::failpoint::pause();
        if let Some(name) = here.env_name() {
            ovdiff_core::failpoint::abort_at(name);
        }
        if here == requested {
            return Err(BankError::InjectedFailure { point: here });
        }
        Ok(())
    }
}
