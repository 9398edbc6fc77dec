//! `_native.Segmenter`: one [`ovdiff_segment::Segmenter`], shared by every Python thread that holds it.
//!
//! Each call releases the GIL while the library decodes, encodes, matches
//! and fuses, so threads run their images at once; the library's plans and
//! encoder pools are what make their results equal to sequential calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ovdiff_core::{Error, Home};
use ovdiff_segment::query::{self, EnginePolicy, Matching};
use ovdiff_segment::segmenter::ClassChoice;
use ovdiff_segment::{ImageInput, Query, SegmenterOptions, WindowLayout};
use ovdiff_store::class_store::ClassStore;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{self, arg};
use crate::result::Segmentation;

/// An image as the Python side passes it: a file, or `(pixels, width,
/// height)` with `height × width × 3` RGB bytes, row-major.
#[derive(FromPyObject)]
pub(crate) enum ImageArg<'py> {
    /// `(bytes, width, height)`.
    Pixels(Bound<'py, PyBytes>, u32, u32),
    /// A PNG or JPEG file.
    Path(PathBuf),
}

impl ImageArg<'_> {
    /// The library's input: the path as it is (decoded by the call), or
    /// the pixels copied into an image. A size that disagrees with the
    /// bytes is a `ValueError`.
    pub(crate) fn into_input(self) -> PyResult<ImageInput> {
        match self {
            ImageArg::Path(p) => Ok(ImageInput::Path(p)),
            ImageArg::Pixels(bytes, w, h) => Ok(ImageInput::from(pixels(&bytes, w, h)?)),
        }
    }
}

/// `height × width × 3` bytes as an image.
pub(crate) fn pixels(bytes: &Bound<'_, PyBytes>, w: u32, h: u32) -> PyResult<RgbImage> {
    let data = bytes.as_bytes();
    if w == 0 || h == 0 {
        return Err(errors::value_error(format!(
            "the image is empty ({h}×{w} pixels)"
        )));
    }
    let expected = u64::from(w) * u64::from(h) * 3;
    if data.len() as u64 != expected {
        return Err(errors::value_error(format!(
            "{} bytes given for a {h}×{w}×3 image, which needs {expected}",
            data.len()
        )));
    }
    RgbImage::from_raw(w, h, data.to_vec())
        .ok_or_else(|| errors::value_error(format!("cannot make a {h}×{w} RGB image")))
}

/// `engine=` as the library's policy.
pub(crate) fn engine_policy(engine: &str) -> PyResult<EnginePolicy> {
    Ok(match engine {
        "auto" => EnginePolicy::Auto,
        "exact" => EnginePolicy::Fixed(Matching::Exact),
        "ivf" => EnginePolicy::Fixed(Matching::Ivf),
        "hnsw" => EnginePolicy::Fixed(Matching::Hnsw),
        other => {
            return Err(errors::value_error(format!(
                "engine {other:?} is not one of auto, exact, ivf, hnsw"
            )))
        }
    })
}

/// `home=` as a [`Home`]: that folder, or the command line's default
/// (`$OVDIFF_HOME`, else `${XDG_DATA_HOME:-~/.local/share}/ovdiff-bank`).
pub(crate) fn home_of(home: Option<PathBuf>) -> Home {
    home.map(Home::at).unwrap_or_else(Home::from_env)
}

/// A bank argument (a name under `<home>/banks`, a folder or a `.ovbank`
/// file) as the path the command line would open; `BankNotFound` when
/// nothing is there.
pub(crate) fn existing_bank(py: Python<'_>, home: &Home, bank: &str) -> PyResult<PathBuf> {
    if bank.trim().is_empty() {
        return Err(errors::value_error(format!(
            "bank {bank:?} is blank: give a bank name (under {}) or a path",
            home.banks_dir().display()
        )));
    }
    let path = home.bank_path(Some(bank));
    if !path.exists() {
        return Err(errors::bank_not_found(py, &path));
    }
    ovdiff_store::bank::check_bank_location(&path)
        .map_err(|e| errors::exception(py, "Error", vec![arg(py, e.to_string())]))?;
    Ok(path)
}

/// A bank (or `.ovbank` file) opened for queries, with its models loaded
/// once and kept; safe to share between threads.
#[pyclass(module = "ovdiff_bank._native", frozen)]
pub struct Segmenter {
    inner: Arc<ovdiff_segment::Segmenter>,
    home: Home,
}

#[pymethods]
impl Segmenter {
    /// Open `bank` (a name under `<home>/banks`, a bank folder or a
    /// `.ovbank` file) and ONNX Runtime (`<home>/lib`, or
    /// `ORT_DYLIB_PATH`). Encoders are found by the fingerprints the bank
    /// recorded, among `<home>/models` or the bundle folders in `encoders`.
    #[new]
    #[pyo3(signature = (bank, home = None, threads = None, encoders = None))]
    fn new(
        py: Python<'_>,
        bank: &str,
        home: Option<PathBuf>,
        threads: Option<usize>,
        encoders: Option<Vec<String>>,
    ) -> PyResult<Segmenter> {
        let home = home_of(home);
        let path = existing_bank(py, &home, bank)?;
        let mut options = SegmenterOptions::new(home.clone());
        if let Some(t) = threads {
            options.runtime.threads = t.max(1);
        }
        options.encoders = encoders
            .unwrap_or_default()
            .iter()
            .map(|e| home.bundle_path(e))
            .collect();
        let inner = py
            .allow_threads(|| ovdiff_segment::Segmenter::open(&path, options))
            .map_err(|e| errors::to_py(py, &e))?;
        Ok(Segmenter {
            inner: Arc::new(inner),
            home,
        })
    }

    /// The bank's path.
    #[getter]
    fn bank(&self) -> String {
        self.inner.store().location().display().to_string()
    }

    /// The bank's class names, sorted.
    fn class_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let records = self
            .inner
            .store()
            .classes()
            .map_err(|e| errors::to_py(py, &e))?;
        Ok(records.into_iter().map(|r| r.name).collect())
    }

    /// Segment one image (see `ovdiff_bank.Segmenter.segment`). The GIL is
    /// released for the whole call.
    /// `windows`: `(short_side, sizes, stride, include_whole)`, the window
    /// layout (default OVDiff's, as the command line); or `preset`:
    /// `"accurate"`, `"balanced"` or `"fast"`, as `--preset`.
    #[pyo3(signature = (image, classes = None, engine = "auto", explain = false, windows = None, preset = None))]
    // Python's keyword arguments, one parameter each.
    #[allow(clippy::too_many_arguments)]
    fn segment(
        &self,
        py: Python<'_>,
        image: ImageArg<'_>,
        classes: Option<Vec<String>>,
        engine: &str,
        explain: bool,
        windows: Option<(u32, Vec<u32>, u32, bool)>,
        preset: Option<&str>,
    ) -> PyResult<Segmentation> {
        let file = match &image {
            ImageArg::Path(p) => Some(p.clone()),
            ImageArg::Pixels(..) => None,
        };
        let input = image.into_input()?;
        let query = Query {
            classes: match classes {
                Some(v) => ClassChoice::Named(v),
                None => ClassChoice::All,
            },
            ..Query::all_classes()
        }
        .with_engine(engine_policy(engine)?)
        .with_explain(explain);
        let windows_given = windows.is_some();
        let query = match windows {
            Some((short_side, sizes, stride, include_whole)) => {
                if short_side == 0 || stride == 0 || (sizes.is_empty() && !include_whole) {
                    return Err(errors::value_error(format!(
                        "windows: short_side {short_side}, sizes {sizes:?}, stride {stride}, \
                         include_whole {include_whole} encode nothing"
                    )));
                }
                query.with_windows(WindowLayout {
                    short_side,
                    sizes,
                    stride,
                    include_whole,
                })
            }
            None => query,
        };
        let query = match preset {
            Some(_) if windows_given => {
                return Err(errors::value_error(
                    "give windows or preset, not both".into(),
                ))
            }
            Some(name) => query.with_windows(
                name.parse::<ovdiff_segment::WindowPreset>()
                    .map_err(errors::value_error)?
                    .layout(),
            ),
            None => query,
        };
        let inner = &self.inner;
        let (result, seconds) = py.allow_threads(|| {
            let t = Instant::now();
            let r = inner.segment(input, &query);
            (r, t.elapsed().as_secs_f64())
        });
        match result {
            Ok(seg) => Ok(Segmentation::new(seg, seconds)),
            Err(e) => Err(self.query_error(py, e, &query, file.as_deref())),
        }
    }
}

impl Segmenter {
    /// A failed query's error as its exception: `BadImage` when the image
    /// `file` cannot be read (or decoded), `UnknownClass` when a named
    /// class is not in the bank, `EncoderMismatch` when the bank's encoders
    /// are not the installed (or given) ones, else through
    /// [`errors::to_py`].
    fn query_error(&self, py: Python<'_>, e: Error, query: &Query, file: Option<&Path>) -> PyErr {
        if let (Error::Io { path, .. }, Some(file)) = (&e, file) {
            if path == file {
                let message = e.report();
                return errors::exception(
                    py,
                    "BadImage",
                    vec![arg(py, message), arg(py, path.display().to_string())],
                );
            }
        }
        let store = self.inner.store();
        if !matches!(e, Error::Invalid(_)) {
            return errors::to_py(py, &e);
        }
        if let ClassChoice::Named(names) = &query.classes {
            for n in names {
                if let Ok(None) = store.class(n) {
                    return errors::unknown_class(py, store, n);
                }
            }
        }
        if let Some((bank, installed)) = self.encoder_mismatch(store, &query.classes) {
            return errors::exception(
                py,
                "EncoderMismatch",
                vec![arg(py, e.report()), arg(py, bank), arg(py, installed)],
            );
        }
        errors::to_py(py, &e)
    }

    /// The fingerprints the query's classes share and those of the
    /// encoders it may use (installed, or given), when none of the first
    /// is among the second.
    fn encoder_mismatch(
        &self,
        store: &dyn ClassStore,
        classes: &ClassChoice,
    ) -> Option<(Vec<String>, Vec<String>)> {
        let names = match classes {
            ClassChoice::Named(v) => Some(v.as_slice()),
            ClassChoice::All => None,
        };
        let resolved = query::resolve_classes(store, names).ok()?;
        let shared = query::shared_encoders(&resolved);
        let explicit = &self.inner.options().encoders;
        let available: Vec<String> = if explicit.is_empty() {
            query::installed_bundles(&self.home)
                .into_iter()
                .map(|(_, fp)| fp)
                .collect()
        } else {
            explicit
                .iter()
                .filter_map(|d| {
                    ovdiff_models::runtime::Bundle::open(
                        d,
                        ovdiff_models::runtime::VerifyMode::Off,
                        &self.home.cache_dir(),
                    )
                    .ok()
                })
                .map(|b| b.fingerprint().to_string())
                .collect()
        };
        let missing = shared.iter().any(|fp| !available.contains(fp));
        (missing && !shared.is_empty()).then_some((shared, available))
    }
}
