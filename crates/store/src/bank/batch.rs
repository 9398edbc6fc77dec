//! Storing many classes at once, all or none: the write path of `import`.
//!
//! [`Bank::put_class`] commits one class per transaction and flushes three
//! times; importing a thousand classes that way spends its time waiting for
//! the disk. A [`ClassBatch`] writes the build files of the staged classes
//! under fresh build ids, several at a time with one directory sync, and
//! commits every class record in a single transaction: after a crash the bank holds all of the batch or none
//! of it (unreferenced build data is removed by the next [`Bank::open`]).

use std::collections::HashSet;

use super::build_file;
use super::record;
use super::store::{BatchOutcome, TreeId};

/// Encoded build files held before they are written, at most.
const PENDING_LIMIT: usize = 64 << 20;
use super::{Bank, ClassBuild, ClassRecord, Result};

/// Classes staged for one atomic commit; see the module docs.
///
/// Dropping a batch without [`ClassBatch::commit`] deletes the staged build
/// data (best effort; otherwise the next open does).
pub struct ClassBatch<'b> {
    bank: &'b Bank,
    staged: Vec<(ClassRecord, bool)>,
    /// Build files encoded but not yet written, and their size.
    pending: Vec<(u64, build_file::Entries)>,
    pending_bytes: usize,
    names: HashSet<String>,
    /// Stable label ids asked for ([`ClassBatch::want_label_id`]).
    wanted_labels: Vec<(String, u32)>,
    done: bool,
}

impl Bank {
    /// Starts a batch of classes to store in one transaction.
    pub fn batch(&self) -> Result<ClassBatch<'_>> {
        self.require_writable()?;
        Ok(ClassBatch {
            bank: self,
            staged: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            names: HashSet::new(),
            wanted_labels: Vec::new(),
            done: false,
        })
    }
}

impl ClassBatch<'_> {
    /// Validates `build` and writes its data (not yet visible). Fails with
    /// [`BankError::ClassExists`](super::BankError::ClassExists) when the class exists and `replace` is
    /// false, or when the batch already holds a class of that name.
    pub fn stage(&mut self, build: &ClassBuild, replace: bool) -> Result<()> {
        let name = &build.record.name;
        let exists = self
            .bank
            .store
            .get(TreeId::Classes, name.as_bytes())?
            .is_some();
        if self.names.contains(name) || (exists && !replace) {
            return Err(self.bank.class_exists(name));
        }
        let (rec, entries) = self.bank.prepare_build(build)?;
        self.pending_bytes += entries.iter().map(|(_, _, b)| b.len()).sum::<usize>();
        self.pending.push((rec.build_id, entries));
        self.names.insert(name.clone());
        self.staged.push((rec, replace));
        if self.pending_bytes > PENDING_LIMIT {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the pending build files (several at once, one directory sync).
    fn write_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        build_file::write_many(self.bank.path(), &pending)
    }

    /// Asks that `name` get the stable label id `id` at commit, when the
    /// bank has recorded no id for `name` and none of its names holds `id`
    /// (an import keeps its file's ids where it can); otherwise it gets
    /// the bank's next id, as every new class does.
    pub fn want_label_id(&mut self, name: &str, id: u32) {
        self.wanted_labels.push((name.to_owned(), id));
    }

    /// Number of classes staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Makes every staged class visible at once, then deletes the builds they
    /// replaced. Returns the stored records, in staging order.
    pub fn commit(mut self) -> Result<Vec<ClassRecord>> {
        let bank = self.bank;
        self.write_pending()?;
        bank.store.flush()?;
        bank.record_label_ids()?;
        let mut items = Vec::with_capacity(self.staged.len());
        for (rec, replace) in &self.staged {
            let value = record::encode_class(rec).map_err(|e| bank.encode_err("class", e))?;
            items.push((rec.name.clone(), value, *replace));
        }
        let previous = match bank.store.commit_classes(&items)? {
            BatchOutcome::Committed { previous } => previous,
            BatchOutcome::Exists { index } => {
                // Another writer got there first; `drop` removes our data.
                return Err(bank.class_exists(&items[index].0));
            }
        };
        self.done = true;
        bank.adopt_label_ids(&self.wanted_labels)?;
        bank.store.flush()?;
        let new_builds: HashSet<u64> = self.staged.iter().map(|(r, _)| r.build_id).collect();
        let mut deleted = false;
        for old in previous.into_iter().flatten() {
            if let Ok(old) = record::decode_class(&old) {
                if !new_builds.contains(&old.build_id) {
                    bank.delete_build(old.build_id)?;
                    deleted = true;
                }
            }
        }
        if deleted {
            bank.store.flush()?;
            // A replaced build may have been the last user of an encoder.
            bank.drop_unused_encoders()?;
        }
        bank.record_label_ids()?;
        Ok(std::mem::take(&mut self.staged)
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }
}

impl Drop for ClassBatch<'_> {
    fn drop(&mut self) {
        if self.done || self.staged.is_empty() {
            return;
        }
        for (rec, _) in &self.staged {
            // Best effort: leftovers are also removed on the next open.
            let _ = self.bank.delete_build(rec.build_id);
        }
        let _ = self.bank.store.flush();
    }
}

impl std::fmt::Debug for ClassBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassBatch")
            .field("bank", &self.bank.path())
            .field("staged", &self.staged.len())
            .finish()
    }
}
