//! Opening a bank: the lock, the format checks, the creation of a new bank, and the clean-up of what interrupted writes left.

use std::collections::HashSet;
use std::path::Path;

use super::format::{
    self, check_readable, BANK_FORMAT_OLDEST_SUPPORTED, BANK_FORMAT_VERSION, TOOL_VERSION,
};
use super::record::{self, meta_key};
use super::store::{Store, TreeId};
use super::{build_file, corrupt, read_only, Bank, BankError, Result};

impl Bank {
    /// Opens the bank at `path` for reading and writing, creating it if
    /// missing.
    ///
    /// Refuses banks of other format versions, directories that are not
    /// banks, banks another process holds, and banks this process may not
    /// write ([`BankError::NotWritable`]: a read-only file system, another
    /// user's files; [`Bank::open_read`] reads them). Deletes build data
    /// that no class record references (left by an interrupted write); see
    /// [`Bank::leftovers_cleaned`].
    pub fn open(path: &Path) -> Result<Bank> {
        if let Some(why) = read_only::not_writable(path) {
            return Err(why.error(path));
        }
        Bank::open_store(path, Store::open(path)?)
    }

    /// Opens the bank at `path` for commands that only read it (list,
    /// show, segment, eval, export, verify). A bank this process may write
    /// opens as with [`Bank::open`]. One it may not (a read-only file
    /// system, another user's files) opens read-only, through a private
    /// copy of its sled files (see `read_only`): it is read as it is, its
    /// leftovers are not cleaned, and every write is refused with
    /// [`BankError::NotWritable`].
    pub fn open_read(path: &Path) -> Result<Bank> {
        match read_only::not_writable(path) {
            None => Bank::open(path),
            Some(why) => Bank::open_read_only(path, why),
        }
    }

    /// Opens the bank at `path` read-only, through a private copy of its
    /// sled files; writes get `why`.
    pub(super) fn open_read_only(path: &Path, why: read_only::Unwritable) -> Result<Bank> {
        let store = Store::open_snapshot(path)?;
        if store.get(TreeId::Meta, meta_key::FORMAT_VERSION)?.is_none() {
            return Err(BankError::NotABank {
                path: path.to_path_buf(),
                reason: "it has no format version (its creation never finished), and a \
                         read-only bank cannot be created",
            });
        }
        let mut bank = Bank::open_store(path, store)?;
        bank.read_only = Some(why);
        Ok(bank)
    }

    /// Whether the bank was opened read-only ([`Bank::open_read`] of a bank
    /// this process may not write).
    pub fn is_read_only(&self) -> bool {
        self.read_only.is_some()
    }

    /// A read-only bank's private copy of its sled files.
    #[cfg(test)]
    pub(super) fn store_snapshot_dir(&self) -> Option<std::path::PathBuf> {
        self.store.snapshot_dir().map(Path::to_path_buf)
    }

    fn open_store(path: &Path, store: Store) -> Result<Bank> {
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
        let read_only = store.is_snapshot();
        let mut bank = Bank {
            store,
            format_version,
            leftovers_cleaned: 0,
            read_only: None,
        };
        if bank.format_version == BANK_FORMAT_VERSION && !read_only {
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
    pub(super) fn require_writable(&self) -> Result<()> {
        use std::cmp::Ordering as O;
        if let Some(why) = &self.read_only {
            return Err(why.error(self.path()));
        }
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

    /// Deletes build data no class record references; returns how many entries went.
    pub(super) fn clean_leftovers(&self) -> Result<u64> {
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
    store.insert(
        TreeId::Meta,
        meta_key::NEXT_BUILD_ID,
        &record::encode_u64(1),
    )?;
    store.flush()?;
    store.insert(
        TreeId::Meta,
        meta_key::FORMAT_VERSION,
        &record::encode_u32(BANK_FORMAT_VERSION),
    )?;
    store.flush()
}
