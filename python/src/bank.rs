//! `_native.Bank` and `_native.BankFile`: a bank opened for writing, with the [`Learner`] that `ovdiff-bank add --images` runs, and a `.ovbank` file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ovdiff_core::atomic::PrivateDir;
use ovdiff_core::{Error, Home};
use ovdiff_learn::catalog;
use ovdiff_learn::learner::{Learner, NewClass};
use ovdiff_models::runtime::RuntimeOptions;
use ovdiff_segment::query;
use ovdiff_store::ovbank::{self, OvBankFile};
use pyo3::prelude::*;

use crate::errors::{self, arg};
use crate::segmenter::{existing_bank, home_of, pixels, ImageArg};

/// A bank opened for reading and writing (the lock is held until it is
/// closed or collected).
#[pyclass(module = "ovdiff_bank._native", frozen)]
pub struct Bank {
    bank: Mutex<Option<ovdiff_store::bank::Bank>>,
    home: Home,
    /// Kept from one `add` to the next, so that encoders load once.
    learner: Mutex<Option<Learner>>,
}

/// Open (or create) the bank at `path`.
fn open_bank(py: Python<'_>, path: &Path, home: Home) -> PyResult<Bank> {
    let bank = py
        .allow_threads(|| ovdiff_store::bank::Bank::open(path))
        .map_err(|e| errors::store_to_py(py, e))?;
    Ok(Bank {
        bank: Mutex::new(Some(bank)),
        learner: Mutex::new(Some(Learner::new(home.clone(), RuntimeOptions::default()))),
        home,
    })
}

/// A name to store an array under: a plain `*.png` file name.
fn check_png_name(name: &str) -> PyResult<String> {
    let plain = !name.contains(['/', '\\']) && name != "." && name != "..";
    if plain && name.to_ascii_lowercase().ends_with(".png") && name.len() > 4 {
        Ok(name.to_string())
    } else {
        Err(errors::value_error(format!(
            "support image name {name:?} must be a plain file name ending in .png (arrays are stored as PNG)"
        )))
    }
}

/// A closed bank's error.
fn closed() -> PyErr {
    errors::value_error("the bank is closed".into())
}

impl Bank {
    /// Run `f` with the open bank.
    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&ovdiff_store::bank::Bank) -> Result<T, Error> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        let guard = self.bank.lock().map_err(|_| closed())?;
        let bank = guard.as_ref().ok_or_else(closed)?;
        py.allow_threads(|| f(bank))
            .map_err(|e| errors::to_py(py, &e))
    }

    /// Rebuild the IVF lists of the bank's all-classes query when it is
    /// large enough, as `ovdiff-bank add` and `remove` do (`--index auto`).
    fn index(home: &Home, bank: &ovdiff_store::bank::Bank) -> Result<(), Error> {
        let threads = RuntimeOptions::default().threads;
        query::index_bank(
            bank,
            &home.cache_dir(),
            query::AUTO_APPROX_MIN_ROWS,
            threads,
        )?;
        Ok(())
    }
}

#[pymethods]
impl Bank {
    /// Open the existing bank `bank` (a name under `<home>/banks`, or a
    /// folder); `BankNotFound` when there is none.
    #[staticmethod]
    #[pyo3(signature = (bank, home = None))]
    fn open(py: Python<'_>, bank: &str, home: Option<PathBuf>) -> PyResult<Bank> {
        let home = home_of(home);
        let path = existing_bank(py, &home, bank)?;
        open_bank(py, &path, home)
    }

    /// Create a new bank at `path` (a name under `<home>/banks`, or a
    /// folder that does not exist yet).
    #[staticmethod]
    #[pyo3(signature = (path, home = None))]
    fn create(py: Python<'_>, path: &str, home: Option<PathBuf>) -> PyResult<Bank> {
        let home = home_of(home);
        let path = home.bank_path(Some(path));
        if path.exists() {
            let message = format!(
                "{} already exists; open it with Bank.open, or give a new folder",
                path.display()
            );
            return Err(errors::exception(py, "Error", vec![arg(py, message)]));
        }
        ovdiff_store::bank::check_bank_location(&path)
            .map_err(|e| errors::exception(py, "Error", vec![arg(py, e.to_string())]))?;
        open_bank(py, &path, home)
    }

    /// The bank's folder.
    #[getter]
    fn path(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |b| Ok(b.path().display().to_string()))
    }

    /// Close the bank (its lock is released); later calls raise.
    fn close(&self) {
        if let Ok(mut g) = self.bank.lock() {
            g.take();
        }
        if let Ok(mut g) = self.learner.lock() {
            g.take();
        }
    }

    /// The classes as `ovdiff-bank list --json` lists them.
    fn list_json(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |b| {
            let rows = catalog::class_rows(b)?;
            serde_json::to_string(&rows).map_err(|e| Error::Invalid(e.to_string()))
        })
    }

    /// One class as `ovdiff-bank show CLASS --json` shows it;
    /// `UnknownClass` when it is not there.
    fn show_json(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        let name_owned = name.to_string();
        let found = self.with(py, move |b| {
            catalog::class_details(b, &name_owned)?
                .map(|d| serde_json::to_string(&d).map_err(|e| Error::Invalid(e.to_string())))
                .transpose()
        })?;
        match found {
            Some(json) => Ok(json),
            None => Err(self.unknown(py, name)),
        }
    }

    /// Remove a class; `UnknownClass` when it is not there.
    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let home = self.home.clone();
        let name_owned = name.to_string();
        let removed = self.with(py, move |b| {
            let removed = b.remove_class(&name_owned)?;
            if removed {
                Bank::index(&home, b)?;
            }
            Ok(removed)
        })?;
        if removed {
            Ok(())
        } else {
            Err(self.unknown(py, name))
        }
    }

    /// Learn class `name` from `images` (files, or `(pixels, width,
    /// height)`, in this order) and write it, as `ovdiff-bank add NAME
    /// --images DIR` does; `source` is recorded as the support set's
    /// source (the folder `add` records). With no images, `source` is the
    /// folder to learn from. Returns `add --json`'s report.
    ///
    /// `names`: the file name each array is stored under (`NNN.png` when
    /// empty); the class records it as the support image's name, as `add`
    /// records each file's.
    #[pyo3(signature = (name, images, source, stuff = false, replace = false, parts = 32, seed = 42, encoders = None, names = None))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        name: &str,
        images: Vec<ImageArg<'_>>,
        source: PathBuf,
        stuff: bool,
        replace: bool,
        parts: usize,
        seed: u64,
        encoders: Option<Vec<String>>,
        names: Option<Vec<String>>,
    ) -> PyResult<String> {
        let names = names.unwrap_or_default();
        // Arrays are written losslessly into a private folder as
        // `NNN.png` (their position among `images`); files are used as
        // they are.
        let mut staged: Option<PrivateDir> = None;
        let mut files = Vec::with_capacity(images.len());
        for (i, image) in images.into_iter().enumerate() {
            match image {
                ImageArg::Path(p) => files.push(p),
                ImageArg::Pixels(bytes, w, h) => {
                    let img = pixels(&bytes, w, h)?;
                    if staged.is_none() {
                        let dir = PrivateDir::create(&std::env::temp_dir(), ".ovdiff-py-support-")
                            .map_err(|(p, e)| {
                                errors::to_py(py, &Error::io("creating a folder", p, e))
                            })?;
                        staged = Some(dir);
                    }
                    let dir = staged.as_ref().map(|d| d.path().to_path_buf());
                    let stored = match names.get(i).filter(|n| !n.is_empty()) {
                        Some(n) => check_png_name(n)?,
                        None => format!("{i:03}.png"),
                    };
                    let file = dir.unwrap_or_default().join(stored);
                    if file.exists() {
                        return Err(errors::value_error(format!(
                            "two support images are named {}",
                            file.display()
                        )));
                    }
                    py.allow_threads(|| ovdiff_segment::render::write_rgb_png(&file, &img))
                        .map_err(|e| errors::to_py(py, &e))?;
                    files.push(file);
                }
            }
        }
        // No images: `source` is the support folder, read as `add --images` reads it.
        let class = if files.is_empty() {
            NewClass::new(name, Some(source))
        } else {
            NewClass::from_files(name, files, source)
        };
        let class = class.map_err(|e| errors::to_py(py, &e))?.stuff(stuff);
        let mut guard = self.learner.lock().map_err(|_| closed())?;
        let learner = guard.take().ok_or_else(closed)?;
        let mut learner = learner.replace(replace).parts(parts).seed(seed);
        if let Some(names) = encoders {
            learner = learner.encoders(names);
        }
        let home = self.home.clone();
        let result = {
            let banks = self.bank.lock().map_err(|_| closed())?;
            let bank = banks.as_ref().ok_or_else(closed)?;
            py.allow_threads(|| {
                let report = learner.add(bank, class)?;
                Bank::index(&home, bank)?;
                serde_json::to_string(&report).map_err(|e| Error::Invalid(e.to_string()))
            })
        };
        *guard = Some(learner);
        drop(staged);
        result.map_err(|e| errors::to_py(py, &e))
    }

    /// Write classes (all when `classes` is `None`) into a `.ovbank` file,
    /// as `ovdiff-bank export -o PATH` does; returns `(classes, encoders,
    /// prototypes, thumbnails, bytes)`.
    #[pyo3(signature = (path, classes = None))]
    fn export(
        &self,
        py: Python<'_>,
        path: PathBuf,
        classes: Option<Vec<String>>,
    ) -> PyResult<(usize, usize, u64, u64, u64)> {
        self.with(py, move |b| {
            ovdiff_store::bank::check_output_file(&path)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let s = ovbank::export(b, classes.as_deref(), &path)?;
            Ok((s.classes, s.encoders, s.prototypes, s.thumbnails, s.bytes))
        })
    }

    /// `ovdiff-bank verify --bank --json`'s report: every class read back,
    /// with its content digest.
    fn verify_json(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |b| {
            let r = ovdiff_store::bank::verify_bank(b)?;
            serde_json::to_string(&r).map_err(|e| Error::Invalid(e.to_string()))
        })
    }
}

impl Bank {
    /// `UnknownClass` for `name` in this bank.
    fn unknown(&self, py: Python<'_>, name: &str) -> PyErr {
        match self.bank.lock() {
            Ok(g) => match g.as_ref() {
                Some(b) => errors::unknown_class(py, b, name),
                None => closed(),
            },
            Err(_) => closed(),
        }
    }
}

/// A `.ovbank` file, checked and mapped.
#[pyclass(module = "ovdiff_bank._native", frozen)]
pub struct BankFile {
    file: OvBankFile,
    path: PathBuf,
}

#[pymethods]
impl BankFile {
    /// Open and check `path`'s header (`ovdiff-bank inspect`).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<BankFile> {
        if !path.exists() {
            return Err(errors::bank_not_found(py, &path));
        }
        let file = py
            .allow_threads(|| OvBankFile::open(&path))
            .map_err(|e| errors::store_to_py(py, e))?;
        Ok(BankFile { file, path })
    }

    /// The file's path.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Its class names, in the file's order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.file.classes().iter().map(|c| c.name.clone()).collect()
    }

    /// Check every checksum (`ovdiff-bank verify FILE`); raises `Error`
    /// naming the first damage.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        let file = &self.file;
        py.allow_threads(|| file.verify())
            .map(|_| ())
            .map_err(|e| errors::store_to_py(py, e))
    }
}
