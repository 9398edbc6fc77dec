//! `_native.Segmentation`: one image's result, with the library's writers, RLE and overlay behind it.
//!
//! Arrays cross into Python as bytes (`numpy.frombuffer` on the Python
//! side): the abi3 build has no buffer protocol for 3.9, and one copy of
//! the labels costs well under a millisecond (docs/benchmarks.md).

use std::path::PathBuf;

use ovdiff_segment::rle::CocoRle;
use ovdiff_segment::WriteOptions;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};

use crate::errors;

/// One segmented image; the Python class `ovdiff_bank.Segmentation` wraps it.
#[pyclass(module = "ovdiff_bank._native", frozen)]
pub struct Segmentation {
    inner: ovdiff_segment::Segmentation,
    seconds: f64,
}

impl Segmentation {
    /// The library's result, and how long the library call took.
    pub(crate) fn new(inner: ovdiff_segment::Segmentation, seconds: f64) -> Segmentation {
        Segmentation { inner, seconds }
    }
}

#[pymethods]
impl Segmentation {
    /// Width in pixels.
    #[getter]
    fn width(&self) -> u32 {
        self.inner.width
    }

    /// Height in pixels.
    #[getter]
    fn height(&self) -> u32 {
        self.inner.height
    }

    /// The query's classes, in query order (label `k` is the `k`-th, from 1).
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names.clone()
    }

    /// The share of background pixels.
    #[getter]
    fn background_fraction(&self) -> f64 {
        self.inner.background_fraction
    }

    /// Seconds the library's `Segmenter::segment` took (decoding a file
    /// included), for the benchmark of the binding's overhead.
    #[getter]
    fn library_seconds(&self) -> f64 {
        self.seconds
    }

    /// The image file, when the image came from one.
    #[getter]
    fn source(&self) -> Option<String> {
        self.inner.source.as_ref().map(|p| p.display().to_string())
    }

    /// Whether explanations were gathered (the query's `explain`).
    #[getter]
    fn explained(&self) -> bool {
        self.inner.explain.is_some()
    }

    /// The labels, `height × width` little-endian u16, row-major, in a
    /// bytearray (so the array over it is writable).
    fn labels_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyByteArray>> {
        let labels = &self.inner.labels;
        PyByteArray::new_with(py, labels.len() * 2, |buf| {
            for (out, l) in buf.chunks_exact_mut(2).zip(labels) {
                out.copy_from_slice(&l.to_le_bytes());
            }
            Ok(())
        })
    }

    /// The classes found (at least one pixel), in query order, as the JSON
    /// report lists them (`NAME.json`'s `classes`).
    fn found_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.classes)
            .map_err(|e| errors::value_error(format!("cannot encode the classes found: {e}")))
    }

    /// Per class found: `{"label", "size": [h, w], "counts", "area"}`, the
    /// mask in COCO's compressed RLE as pycocotools writes it
    /// (`ovdiff_segment::rle`).
    fn to_coco_rle<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let s = &self.inner;
        let encoded = py.allow_threads(|| {
            s.classes
                .iter()
                .map(|c| {
                    let rle = CocoRle::encode_label(&s.labels, s.width, s.height, c.label)?;
                    Ok((c.name.clone(), rle, c.pixels))
                })
                .collect::<ovdiff_core::Result<Vec<_>>>()
        });
        let encoded = encoded.map_err(|e| errors::to_py(py, &e))?;
        let out = PyList::empty(py);
        for (name, rle, area) in encoded {
            let d = PyDict::new(py);
            d.set_item("label", name)?;
            d.set_item("size", rle.size.to_vec())?;
            d.set_item("counts", rle.counts)?;
            d.set_item("area", area)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// The overlay (colours at `alpha` and a legend over the image), as
    /// `height × width × 3` RGB bytes.
    #[pyo3(signature = (alpha = 0.5))]
    fn overlay_bytes<'py>(&self, py: Python<'py>, alpha: f32) -> Bound<'py, PyBytes> {
        let s = &self.inner;
        let img = py.allow_threads(|| s.overlay(alpha));
        PyBytes::new(py, img.as_raw())
    }

    /// The explain sheet, `(bytes, width, height)`, when explanations were
    /// asked for.
    fn explain_sheet_bytes<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyBytes>, u32, u32)> {
        let s = &self.inner;
        let sheet = py.allow_threads(|| s.explain_sheet())?;
        let (w, h) = sheet.dimensions();
        Some((PyBytes::new(py, sheet.as_raw()), w, h))
    }

    /// The explain sheet's rows, when explanations were asked for: per
    /// class, `(class, label, [(caption, thumbnail JPEG bytes)])`, the
    /// support thumbnails that voted for it, best first.
    #[allow(clippy::type_complexity)]
    fn explain_rows<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<Vec<(String, u16, Vec<(String, Bound<'py, PyBytes>)>)>> {
        let rows = self.inner.explain.as_ref()?;
        Some(
            rows.iter()
                .map(|r| {
                    let matches = r
                        .matches
                        .iter()
                        .map(|m| (m.caption.clone(), PyBytes::new(py, &m.image)))
                        .collect();
                    (r.class.clone(), r.label, matches)
                })
                .collect(),
        )
    }

    /// Write what `ovdiff-bank segment` writes for this image into
    /// `out_dir` (`STEM.png`, `STEM.overlay.png`, `STEM.explain.png` with
    /// explanations, `STEM.json`, and the run's `labels.json` and
    /// `labels.txt`) with the library's writers; returns the
    /// report (`STEM.json`) as JSON. With `overlay=False`, only the label
    /// PNG is written (and `None` returned).
    #[pyo3(signature = (out_dir, stem, overlay = true))]
    fn save(
        &self,
        py: Python<'_>,
        out_dir: PathBuf,
        stem: &str,
        overlay: bool,
    ) -> PyResult<Option<String>> {
        let s = &self.inner;
        let stem = stem.to_string();
        let written = py.allow_threads(|| -> ovdiff_core::Result<Option<String>> {
            ovdiff_store::bank::check_output_dir(&out_dir)
                .map_err(|e| ovdiff_core::Error::Invalid(e.to_string()))?;
            std::fs::create_dir_all(&out_dir)
                .map_err(|e| ovdiff_core::Error::io("creating output folder", &out_dir, e))?;
            if !overlay {
                let p = out_dir.join(format!("{stem}{}", ovdiff_segment::outputs::LABELS_SUFFIX));
                s.write_labels(&p)?;
                return Ok(None);
            }
            let report = s.write(&out_dir, &stem, &WriteOptions::default())?;
            // The run's label map (labels.json, labels.txt), as the CLI writes it.
            s.label_map().write_files(&out_dir, s.label_ids)?;
            serde_json::to_string(&report)
                .map(Some)
                .map_err(|e| ovdiff_core::Error::Invalid(format!("cannot encode the report: {e}")))
        });
        written.map_err(|e| errors::to_py(py, &e))
    }

    /// The stem `ovdiff-bank segment` gives this image's files (its file
    /// name without the extension), or `fallback` for an image that came
    /// from no file.
    fn stem(&self, fallback: &str) -> String {
        match &self.inner.source {
            Some(p) => ovdiff_segment::outputs::output_stems(
                std::slice::from_ref(p),
                self.inner.explain.is_some(),
            )
            .pop()
            .unwrap_or_else(|| fallback.to_string()),
            None => fallback.to_string(),
        }
    }
}
