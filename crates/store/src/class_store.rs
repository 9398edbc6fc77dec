//! Where a query's prototypes come from: a bank (the sled store) or a `.ovbank` file queried in place.

use std::path::Path;
use std::sync::Arc;

use half::f16;

use crate::bank::{Bank, ClassRecord, EncoderInfo};
use crate::ovbank::{OvBankError, OvBankFile, OvClass, PrototypeMeta};
use crate::{Error, Result};
use ovdiff_core::prototype::Prototype;
use ovdiff_core::rows::{HalfRows, HalfSource};

/// A class's prototypes for one encoder as a query holds them: the vectors
/// as f16 rows (shared with a mapped file, or one owned copy), and each
/// prototype's kind and support image, without the regions.
#[derive(Debug, Clone)]
pub struct ClassRows {
    /// The vectors, in stored order.
    pub rows: HalfRows,
    /// Per row: level, side, pooled patches and support image.
    pub metas: Vec<PrototypeMeta>,
}

impl ClassRows {
    /// From decoded prototypes (their values are f16 in every bank, so the
    /// conversion back is exact).
    pub fn from_prototypes(protos: &[Prototype]) -> Result<ClassRows> {
        let dim = protos.first().map_or(0, |p| p.vector.len());
        let mut values = Vec::with_capacity(protos.len() * dim);
        for (i, p) in protos.iter().enumerate() {
            if p.vector.len() != dim {
                return Err(Error::DimensionMismatch {
                    what: format!("prototype {i}"),
                    expected: dim.to_string(),
                    found: p.vector.len().to_string(),
                });
            }
            values.extend_from_slice(&p.vector);
        }
        Ok(ClassRows {
            rows: HalfRows::from_f32(&values, dim)?,
            metas: protos
                .iter()
                .map(|p| PrototypeMeta {
                    level: p.level,
                    side: p.side,
                    support: p.support,
                    image: p.provenance.image,
                })
                .collect(),
        })
    }
}

/// Read access to classes and prototypes, whatever holds them (shared by
/// threads: a segmenter serves several at once).
pub trait ClassStore: Send + Sync {
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
    /// A class's prototypes for an encoder as f16 rows and metas, in
    /// stored order; by default decoded with [`ClassStore::prototypes`].
    fn prototype_rows(&self, class: &ClassRecord, encoder_fingerprint: &str) -> Result<ClassRows> {
        ClassRows::from_prototypes(&self.prototypes(class, encoder_fingerprint)?)
    }
    /// A prebuilt nearest-neighbour blob for an encoder (a bank file's `ann`
    /// section), when there is one of `algorithm` written by this build.
    fn ann_blob(&self, _encoder_fingerprint: &str, _algorithm: &str) -> Option<&[u8]> {
        None
    }
    /// Every class's stable label id (`--label-ids bank`); by default
    /// numbered from 1 in creation order ([`crate::bank::assign_label_ids`]).
    fn label_ids(&self) -> Result<crate::bank::LabelIds> {
        Ok(crate::bank::assign_label_ids(&self.classes()?, &Default::default(), 1).0)
    }
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
    fn label_ids(&self) -> Result<crate::bank::LabelIds> {
        Ok(Bank::label_ids(self)?)
    }
}

/// An opened `.ovbank` file and its path.
pub struct FileStore {
    path: std::path::PathBuf,
    file: Arc<OvBankFile>,
}

/// One class × encoder block of f16 vectors inside a shared file.
struct FileBlock {
    file: Arc<OvBankFile>,
    /// Byte offset of the block in the file.
    start: usize,
    /// Number of f16 values.
    len: usize,
}

impl HalfSource for FileBlock {
    fn halves(&self) -> &[f16] {
        // Checked when the block was made: in range and 2-byte aligned.
        bytemuck::cast_slice(&self.file.as_bytes()[self.start..self.start + 2 * self.len])
    }
}

impl FileStore {
    /// Open (memory-map and check the header of) a `.ovbank` file, and run
    /// its content check ([`OvBankFile::check_content`]: unit vectors,
    /// counts, thumbnails), so that a query never reads what no build wrote.
    pub fn open(path: &Path) -> Result<FileStore> {
        let file = OvBankFile::open(path)?;
        file.check_content()?;
        file.check_thumbnails()?;
        Ok(FileStore {
            path: path.to_path_buf(),
            file: Arc::new(file),
        })
    }
}

impl ClassStore for FileStore {
    fn location(&self) -> &Path {
        &self.path
    }
    fn classes(&self) -> Result<Vec<ClassRecord>> {
        Ok(self.file.classes().iter().map(OvClass::to_record).collect())
    }
    fn class(&self, name: &str) -> Result<Option<ClassRecord>> {
        Ok(self.file.class(name).map(OvClass::to_record))
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
    fn label_ids(&self) -> Result<crate::bank::LabelIds> {
        Ok(self.file.label_ids())
    }
    fn ann_blob(&self, fp: &str, algorithm: &str) -> Option<&[u8]> {
        let entries = self.file.ann_entries().ok()?;
        let e = entries.iter().find(|e| {
            e.encoder_fingerprint == fp && e.algorithm == algorithm && e.matches_this_build()
        })?;
        self.file.ann_blob(e)
    }
    /// The vectors stay in the mapped file: rows refer to them.
    fn prototype_rows(&self, class: &ClassRecord, fp: &str) -> Result<ClassRows> {
        let view = match self.file.vectors(&class.name, fp) {
            Ok(v) => v,
            Err(OvBankError::BigEndianHost) => {
                return ClassRows::from_prototypes(&self.prototypes(class, fp)?)
            }
            Err(e) => return Err(e.into()),
        };
        let values = view.as_slice();
        let start = values.as_ptr() as usize - self.file.as_bytes().as_ptr() as usize;
        let block = FileBlock {
            file: Arc::clone(&self.file),
            start,
            len: values.len(),
        };
        Ok(ClassRows {
            rows: HalfRows::new(Arc::new(block), view.dim())?,
            metas: view.metas().collect(),
        })
    }
}

/// Open what `path` names, for reading: a `.ovbank` file, or a bank folder
/// ([`Bank::open_read`]: read-only where this process may not write it).
pub fn open_store(path: &Path) -> Result<Box<dyn ClassStore>> {
    if path.is_file() {
        Ok(Box::new(FileStore::open(path)?))
    } else {
        Ok(Box::new(Bank::open_read(path)?))
    }
}
