//! # ovdiff-python
//!
//! The native module of the Python package `ovdiff_bank`
//! (`ovdiff_bank._native`): PyO3 classes over the same library every
//! front-end uses. It is not a re-implementation: segmentation is
//! [`ovdiff_segment::Segmenter`], classes are learned by
//! [`ovdiff_learn::learner::Learner`], banks and `.ovbank` files are
//! `ovdiff_store`'s, and results are written, encoded as RLE and
//! overlaid by `ovdiff_segment`.
//!
//! * [`segmenter`]: `Segmenter` (a bank opened once; the GIL is released
//!   for each call);
//! * [`result`]: `Segmentation` (labels as bytes, RLE, overlay, files);
//! * [`bank`]: `Bank` (open, create, add, show, remove, export) and
//!   `BankFile`;
//! * [`errors`]: the library's errors as `ovdiff_bank.errors`' classes.
//!
//! The Python layer (`python/ovdiff_bank/`) turns bytes into numpy arrays,
//! checks arrays, accepts PIL images and reports progress.

#![warn(missing_docs)]

pub mod bank;
pub mod errors;
pub mod result;
pub mod segmenter;

use pyo3::prelude::*;

/// The module `ovdiff_bank._native`.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<segmenter::Segmenter>()?;
    m.add_class::<result::Segmentation>()?;
    m.add_class::<bank::Bank>()?;
    m.add_class::<bank::BankFile>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
