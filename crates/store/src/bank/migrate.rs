//! Step-by-step migration of a bank to the current format (`migrations/`).
//!
//! Each step takes a bank of format `N` to `N + 1` in one sled transaction
//! over the `classes` and `meta` trees, so a crash leaves the bank at `N` or
//! at `N + 1`, never between. Steps run in order until the bank reaches
//! [`BANK_FORMAT_VERSION`]; an interrupted migration resumes from the format
//! the bank is at.
//!
//! * 1 → 2 (`migrations/0002-build-stats.md`): class records of record
//!   version 1 become record version 2 through the frozen
//!   [`ClassRecordV1`](super::ClassRecordV1) and its `From`; classes built
//!   before format 2 have no build statistics (`stats: None`).
//!   `oldest_readable` becomes 2.

use super::build_file;
use super::format::BANK_FORMAT_VERSION;
use super::record::{self, meta_key};
use super::store::TreeId;
use super::{corrupt, Bank, BankError, Result};

/// One migration step that was applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStep {
    /// Format version before the step.
    pub from: u32,
    /// Format version after the step.
    pub to: u32,
    /// Records rewritten.
    pub records: u64,
    /// What the step did, in a sentence.
    pub summary: &'static str,
}

impl Bank {
    /// Brings the bank up to [`BANK_FORMAT_VERSION`], one step at a time;
    /// returns the steps applied (none when the bank is current). A bank
    /// newer than this build is refused with [`BankError::ReadOnlyNewer`].
    pub fn migrate(&mut self) -> Result<Vec<MigrationStep>> {
        if self.format_version > BANK_FORMAT_VERSION {
            return Err(BankError::ReadOnlyNewer {
                path: self.path().to_path_buf(),
                found: self.format_version,
                current: BANK_FORMAT_VERSION,
            });
        }
        let mut steps = Vec::new();
        while self.format_version < BANK_FORMAT_VERSION {
            let step = match self.format_version {
                1 => self.v1_to_v2()?,
                other => unreachable!("no migration step from format {other}"),
            };
            self.format_version = step.to;
            steps.push(step);
        }
        if !steps.is_empty() {
            self.leftovers_cleaned = self.clean_leftovers()?;
        }
        Ok(steps)
    }

    /// Format 1 → 2: moves every class's build data to the block layout
    /// under a fresh build id, then rewrites every record-version-1 class
    /// record as version 2 (no statistics, the new build id) and sets the
    /// format numbers in one transaction; then deletes the old builds.
    fn v1_to_v2(&self) -> Result<MigrationStep> {
        let mut rewrites = Vec::new();
        let mut old_builds = Vec::new();
        for (key, value) in self.store.scan_prefix(TreeId::Classes, b"")? {
            let version = record::class_record_version(&value)
                .map_err(|e| corrupt(&self.store, TreeId::Classes, &key, e))?;
            if version == record::CLASS_RECORD_VERSION {
                continue; // cannot happen: records change in one transaction
            }
            let mut rec = record::decode_class(&value)
                .map_err(|e| corrupt(&self.store, TreeId::Classes, &key, e))?;
            let new_id = self
                .store
                .fetch_add_u64(TreeId::Meta, meta_key::NEXT_BUILD_ID, 1)?;
            let mut entries = Vec::with_capacity(rec.encoders.len() + 1);
            for (slot, e) in rec.encoders.iter().enumerate() {
                let slot = u16::try_from(slot).unwrap_or(u16::MAX);
                let protos = self.legacy_prototypes(rec.build_id, slot)?;
                if protos.len() as u64 != u64::from(e.prototype_count) {
                    return Err(BankError::Incomplete {
                        path: self.path().to_path_buf(),
                        class: rec.name.clone(),
                        build_id: rec.build_id,
                        fingerprint: e.fingerprint.clone(),
                        expected: e.prototype_count,
                        found: protos.len() as u64,
                    });
                }
                entries.push((
                    build_file::EntryKind::Block,
                    u32::from(slot),
                    record::encode_block(&protos),
                ));
            }
            let mut thumbs = Vec::with_capacity(rec.support.len());
            for i in 0..rec.support.len() as u32 {
                thumbs.push(self.thumbnail(&rec, i)?.unwrap_or_default());
            }
            if thumbs.iter().any(|t| !t.is_empty()) {
                entries.push((
                    build_file::EntryKind::Thumbnails,
                    0,
                    record::encode_thumbnail_pack(&thumbs),
                ));
            }
            build_file::write(self.path(), new_id, &entries)?;
            old_builds.push(rec.build_id);
            rec.build_id = new_id;
            let new = record::encode_class(&rec).map_err(|e| self.encode_err("class", e))?;
            rewrites.push((key, value, new));
        }
        // The new builds are invisible (and removed as leftovers after a
        // crash) until the transaction below commits.
        self.store.flush()?;
        let meta = [
            (meta_key::FORMAT_VERSION, record::encode_u32(2).to_vec()),
            (meta_key::OLDEST_READABLE, record::encode_u32(2).to_vec()),
        ];
        if !self.store.rewrite_classes_and_meta(&rewrites, &meta)? {
            // Only this process can write the bank (it holds the lock).
            return Err(BankError::ChangedDuringMigration {
                path: self.path().to_path_buf(),
            });
        }
        self.store.flush()?;
        for b in old_builds {
            self.delete_build(b)?;
        }
        self.store.flush()?;
        Ok(MigrationStep {
            from: 1,
            to: 2,
            records: rewrites.len() as u64,
            summary: "prototypes and thumbnails move out of sled into one build file per class; \
                      class records gain build statistics (none before format 2)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode_class_v1, meta_key, ClassRecordV1};
    use super::super::*;
    use ovdiff_core::prototype::{Level, Provenance, Side};

    /// Writes a format-1 bank with one class the way ovdiff-bank 0.1 did:
    /// record-version-1 class record, format numbers 1.
    fn v1_bank(dir: &std::path::Path) -> ClassRecord {
        let bank = Bank::open(dir).unwrap();
        let fp: String = std::iter::repeat_n('c', 64).collect();
        bank.register_encoder(&EncoderInfo {
            fingerprint: fp.clone(),
            name: "enc".into(),
            dim: 4,
            dtype: DTYPE_F16.into(),
        })
        .unwrap();
        let proto = |level, side| ovdiff_core::prototype::Prototype {
            level,
            side,
            vector: vec![0.5, 0.5, 0.5, 0.5],
            support: 1,
            provenance: Provenance {
                image: 0,
                grid_h: 2,
                grid_w: 2,
                region: vec![true, false, false, true],
            },
        };
        let build = ClassBuild {
            record: ClassRecordDraft {
                name: "cat".into(),
                stuff: false,
                source: ClassSource::Images { dir: "d".into() },
                split_method: "saliency".into(),
                images_used: 1,
                images_skipped: 0,
                fallback_splits: 0,
                support: vec![SupportImageInfo {
                    name: "a.png".into(),
                    width: 8,
                    height: 8,
                }],
                created_unix: Some(1_700_000_000),
                stats: None,
            },
            encoders: vec![(
                fp,
                vec![
                    proto(Level::Class, Side::Foreground),
                    proto(Level::Class, Side::Background),
                ],
            )],
            thumbnails: vec![vec![1, 2, 3]],
        };
        // Store it the way format 1 did: one entry per prototype and region.
        let st = &bank.store;
        let build_id = st
            .fetch_add_u64(TreeId::Meta, meta_key::NEXT_BUILD_ID, 1)
            .unwrap();
        for (i, p) in build.encoders[0].1.iter().enumerate() {
            let i = i as u32;
            st.insert(
                TreeId::Prototypes,
                &record::prototype_key(build_id, 0, i),
                &record::encode_prototype(p),
            )
            .unwrap();
            let pv = &p.provenance;
            st.insert(
                TreeId::Support,
                &record::region_key(build_id, 0, i),
                &record::encode_region(pv.grid_h as u16, pv.grid_w as u16, &pv.region),
            )
            .unwrap();
        }
        st.insert(
            TreeId::Support,
            &record::thumbnail_key(build_id, 0),
            &[1, 2, 3],
        )
        .unwrap();
        let v1 = ClassRecordV1 {
            name: "cat".into(),
            stuff: false,
            source: build.record.source.clone(),
            split_method: build.record.split_method.clone(),
            created_unix: 1_700_000_000,
            build_id,
            images_used: 1,
            images_skipped: 0,
            fallback_splits: 0,
            encoders: vec![ClassEncoderEntry {
                fingerprint: build.encoders[0].0.clone(),
                counts: PrototypeCounts::of(&build.encoders[0].1),
                prototype_count: 2,
            }],
            support: build.record.support.clone(),
        };
        st.insert(TreeId::Classes, b"cat", &encode_class_v1(&v1).unwrap())
            .unwrap();
        st.insert(
            TreeId::Meta,
            meta_key::FORMAT_VERSION,
            &record::encode_u32(1),
        )
        .unwrap();
        st.insert(
            TreeId::Meta,
            meta_key::OLDEST_READABLE,
            &record::encode_u32(1),
        )
        .unwrap();
        st.flush().unwrap();
        ClassRecord::from(v1)
    }

    #[test]
    fn v1_bank_reads_refuses_writes_and_migrates() {
        let tmp = tempfile::tempdir().unwrap();
        let want = v1_bank(tmp.path());
        let mut bank = Bank::open(tmp.path()).unwrap();
        assert_eq!(bank.format_version(), 1);
        assert!(bank.needs_migration());
        // Reading works through the frozen v1 record.
        assert_eq!(bank.class("cat").unwrap().unwrap(), want);
        assert_eq!(
            bank.prototypes(&want, &want.encoders[0].fingerprint)
                .unwrap()
                .len(),
            2
        );
        // Writing is refused with a message naming the command.
        let err = bank.remove_class("cat").unwrap_err();
        assert!(matches!(err, BankError::NeedsMigration { found: 1, .. }));
        assert!(err.to_string().contains("ovdiff-bank migrate"), "{err}");
        assert!(bank.batch().is_err());

        let steps = bank.migrate().unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!((steps[0].from, steps[0].to, steps[0].records), (1, 2, 1));
        assert!(!bank.needs_migration());
        assert!(
            bank.migrate().unwrap().is_empty(),
            "a second run is a no-op"
        );
        drop(bank);

        let bank = Bank::open(tmp.path()).unwrap();
        assert_eq!(bank.format_version(), 2);
        let raw = bank.store.get(TreeId::Classes, b"cat").unwrap().unwrap();
        assert_eq!(raw[0], record::CLASS_RECORD_VERSION);
        let got = bank.class("cat").unwrap().unwrap();
        assert_ne!(got.build_id, want.build_id, "data moved to a new build");
        assert_eq!(
            ClassRecord {
                build_id: want.build_id,
                ..got.clone()
            },
            want
        );
        assert_eq!(got.stats, None);
        let protos = bank.prototypes(&got, &got.encoders[0].fingerprint).unwrap();
        assert_eq!(protos.len(), 2);
        assert_eq!(protos[0].provenance.region, vec![true, false, false, true]);
        // The format-1 entries are gone; one build file holds the data.
        assert!(bank.store.keys(TreeId::Prototypes).unwrap().is_empty());
        assert!(bank.store.keys(TreeId::Support).unwrap().is_empty());
        assert_eq!(build_file::list(bank.path()).unwrap().0, vec![got.build_id]);
        let oldest = bank
            .store
            .get(TreeId::Meta, meta_key::OLDEST_READABLE)
            .unwrap()
            .unwrap();
        assert_eq!(record::decode_u32(&oldest).unwrap(), 2);
        assert_eq!(bank.thumbnail(&got, 0).unwrap(), Some(vec![1, 2, 3]));
        bank.remove_class("cat").unwrap();
    }

    #[test]
    fn newer_bank_readable_by_this_format_is_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let bank = Bank::open(tmp.path()).unwrap();
            let st = &bank.store;
            st.insert(
                TreeId::Meta,
                meta_key::FORMAT_VERSION,
                &record::encode_u32(9),
            )
            .unwrap();
            st.flush().unwrap();
        }
        let mut bank = Bank::open(tmp.path()).unwrap();
        assert_eq!(bank.format_version(), 9);
        assert!(bank.classes().unwrap().is_empty());
        let err = bank.remove_class("x").unwrap_err();
        assert!(matches!(err, BankError::ReadOnlyNewer { found: 9, .. }));
        assert!(matches!(
            bank.migrate().unwrap_err(),
            BankError::ReadOnlyNewer { .. }
        ));
    }
}
