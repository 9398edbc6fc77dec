//! The library's errors as the package's exceptions (`ovdiff_bank.errors`): one base class, `Error`, and a subclass per case a caller handles.
//!
//! The exception classes are defined in Python (they carry attributes such
//! as `UnknownClass.suggestions`); this module builds instances of them.
//! Every message is the one the command line prints after `ovdiff-bank: `
//! ([`Error::report`]: the error and its causes on one line).

use std::path::Path;

use ovdiff_core::Error;
use ovdiff_segment::query;
use ovdiff_store::bank::BankError;
use ovdiff_store::class_store::ClassStore;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::IntoPyObjectExt;

/// An instance of `ovdiff_bank.errors.CLASS(*args)`, as an error to raise.
pub(crate) fn exception(py: Python<'_>, class: &str, args: Vec<Bound<'_, PyAny>>) -> PyErr {
    let made = || -> PyResult<PyErr> {
        let cls = py.import("ovdiff_bank.errors")?.getattr(class)?;
        let value = cls.call1(PyTuple::new(py, args)?)?;
        Ok(PyErr::from_value(value))
    };
    made().unwrap_or_else(|e| e)
}

/// A value as a Python object, for [`exception`]'s arguments.
pub(crate) fn arg<'py, T>(py: Python<'py>, value: T) -> Bound<'py, PyAny>
where
    T: IntoPyObject<'py>,
{
    value
        .into_bound_py_any(py)
        .unwrap_or_else(|_| py.None().into_bound(py))
}

/// `ValueError(message)`: a wrong dtype, shape or size of an array.
pub(crate) fn value_error(message: String) -> PyErr {
    PyValueError::new_err(message)
}

/// `BankNotFound` for a bank path that does not exist, with the command
/// line's message.
pub(crate) fn bank_not_found(py: Python<'_>, path: &Path) -> PyErr {
    let message = format!(
        "bank {} does not exist; build classes with `ovdiff-bank add CLASS --images DIR`",
        path.display()
    );
    exception(
        py,
        "BankNotFound",
        vec![arg(py, message), arg(py, path.display().to_string())],
    )
}

/// `UnknownClass` for `name`, with the closest names of `store` as its
/// suggestions and the library's message
/// ([`query::unknown_class_error`]).
pub(crate) fn unknown_class(py: Python<'_>, store: &dyn ClassStore, name: &str) -> PyErr {
    let message = query::unknown_class_error(store, name).report();
    let known = store.classes().unwrap_or_default();
    let near: Vec<String> = query::closest_names(name, known.iter().map(|c| c.name.as_str()))
        .into_iter()
        .map(str::to_string)
        .collect();
    exception(
        py,
        "UnknownClass",
        vec![arg(py, message), arg(py, name), arg(py, near)],
    )
}

/// The library error `e` as the matching exception: `BadImage` (an image
/// that cannot be read), `BankLocked` (another process has the bank open),
/// else `Error`.
pub(crate) fn to_py(py: Python<'_>, e: &Error) -> PyErr {
    let message = e.report();
    if let Error::Image { path, .. } = e {
        return exception(
            py,
            "BadImage",
            vec![arg(py, message), arg(py, path.display().to_string())],
        );
    }
    if let Some(path) = locked_bank(e) {
        return exception(
            py,
            "BankLocked",
            vec![arg(py, message), arg(py, path.display().to_string())],
        );
    }
    exception(py, "Error", vec![arg(py, message)])
}

/// The bank another process holds, when that is what `e` (or one of its
/// causes) says.
fn locked_bank(e: &Error) -> Option<&Path> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match e {
        Error::Store(inner) => Some(inner.as_ref()),
        _ => std::error::Error::source(e),
    };
    while let Some(c) = cause {
        if let Some(BankError::Locked { path }) = c.downcast_ref::<BankError>() {
            return Some(path);
        }
        cause = c.source();
    }
    None
}

/// A store's error as an exception (through [`to_py`]).
pub(crate) fn store_to_py(py: Python<'_>, e: impl Into<Error>) -> PyErr {
    to_py(py, &e.into())
}
