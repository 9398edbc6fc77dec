//! Where a query's prototypes come from: a bank (the sled store) or a `.ovbank` file queried in place.

use std::path::Path;

use crate::bank::{Bank, ClassRecord, EncoderInfo};
use crate::ovbank::OvBankFile;
use crate::prototypes::Prototype;
use crate::Result;

/// Read access to classes and prototypes, whatever holds them.
pub trait ClassStore {
    /// The bank folder or file.
    fn location(&self) -> &Path;
    /// Every class, sorted by name.
    fn classes(&self) -> Result<Vec<ClassRecord>>;
    /// One class by name.
    fn class(&self, name: &str) -> Result<Option<ClassRecord>>;
    /// The registered encoders.
    fn encoders(&self) -> Result<Vec<EncoderInfo>>;
    /// A class's prototypes for an encoder, in stored order.
    fn prototypes(&self, class: &ClassRecord, encoder_fingerprint: &str) -> Result<Vec<Prototype>>;
    /// A support image's thumbnail (JPEG bytes).
    fn thumbnail(&self, class: &ClassRecord, image: u32) -> Result<Option<Vec<u8>>>;
}

impl ClassStore for Bank {
    fn location(&self) -> &Path {
        self.path()
    }
    fn classes(&self) -> Result<Vec<ClassRecord>> {
        Ok(Bank::classes(self)?)
    }
    fn class(&self, name: &str) -> Result<Option<ClassRecord>> {
        Ok(Bank::class(self, name)?)
    }
    fn encoders(&self) -> Result<Vec<EncoderInfo>> {
        Ok(Bank::encoders(self)?)
    }
    fn prototypes(&self, class: &ClassRecord, fp: &str) -> Result<Vec<Prototype>> {
        Ok(Bank::prototypes(self, class, fp)?)
    }
    fn thumbnail(&self, class: &ClassRecord, image: u32) -> Result<Option<Vec<u8>>> {
        Ok(Bank::thumbnail(self, class, image)?)
    }
}

/// A `.ovbank` file's class as a record (build id 0: files have none).
fn record(c: &crate::ovbank::OvClass) -> ClassRecord {
    ClassRecord {
        name: c.name.clone(),
        stuff: c.stuff,
        source: c.source.clone(),
        split_method: c.split_method.clone(),
        created_unix: c.created_unix,
        build_id: 0,
        images_used: c.images_used,
        images_skipped: c.images_skipped,
        fallback_splits: c.fallback_splits,
        encoders: c.encoders.clone(),
        support: c.support.clone(),
        stats: c.stats.clone(),
    }
}

/// An opened `.ovbank` file and its path.
pub struct FileStore {
    path: std::path::PathBuf,
    file: OvBankFile,
}

impl FileStore {
    /// Open (memory-map and check the header of) a `.ovbank` file.
    pub fn open(path: &Path) -> Result<FileStore> {
        Ok(FileStore {
            path: path.to_path_buf(),
            file: OvBankFile::open(path)?,
        })
    }
}

impl ClassStore for FileStore {
    fn location(&self) -> &Path {
        &self.path
    }
    fn classes(&self) -> Result<Vec<ClassRecord>> {
        Ok(self.file.classes().iter().map(record).collect())
    }
    fn class(&self, name: &str) -> Result<Option<ClassRecord>> {
        Ok(self.file.class(name).map(record))
    }
    fn encoders(&self) -> Result<Vec<EncoderInfo>> {
        Ok(self.file.encoders().to_vec())
    }
    fn prototypes(&self, class: &ClassRecord, fp: &str) -> Result<Vec<Prototype>> {
        Ok(self.file.prototypes(&class.name, fp)?)
    }
    fn thumbnail(&self, class: &ClassRecord, image: u32) -> Result<Option<Vec<u8>>> {
        Ok(self.file.thumbnail(&class.name, image).map(<[u8]>::to_vec))
    }
}

/// Open what `path` names: a `.ovbank` file, or a bank folder.
pub fn open_store(path: &Path) -> Result<Box<dyn ClassStore>> {
    if path.is_file() {
        Ok(Box::new(FileStore::open(path)?))
    } else {
        Ok(Box::new(Bank::open(path)?))
    }
}
