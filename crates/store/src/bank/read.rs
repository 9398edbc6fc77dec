//! Reading a bank: its encoders, its class records, and a class's prototypes and thumbnails (from its build file, or a format-1 build's entries).

use ovdiff_core::prototype::Prototype;

use super::record::{self, meta_key};
use super::store::TreeId;
use super::{build_file, corrupt, Bank, BankError, ClassRecord, EncoderInfo, Result};

impl Bank {
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

    /// The registered encoders that no class uses, sorted by fingerprint:
    /// leftovers that [`Bank::drop_unused_encoders`] deletes (every write of
    /// classes does), and that `verify --bank` reports.
    pub fn unused_encoders(&self) -> Result<Vec<EncoderInfo>> {
        let used: std::collections::HashSet<String> = self
            .classes()?
            .into_iter()
            .flat_map(|c| c.encoders.into_iter().map(|e| e.fingerprint))
            .collect();
        Ok(self
            .encoders()?
            .into_iter()
            .filter(|e| !used.contains(&e.fingerprint))
            .collect())
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
    pub(super) fn legacy_prototypes(&self, build_id: u64, slot: u16) -> Result<Vec<Prototype>> {
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

    /// Total size of the bank's files, in bytes (after flushing).
    pub fn disk_size(&self) -> Result<u64> {
        self.store.flush()?;
        self.store.disk_size()
    }
}
