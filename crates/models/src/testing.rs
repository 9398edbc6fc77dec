//! Test support shared by the crates' unit tests (not part of the API):
//! the repository's committed fixtures, and ONNX Runtime from the installed
//! home or a skip.

use std::path::{Path, PathBuf};

use ovdiff_core::Home;

use crate::runtime::{Runtime, RuntimeOptions};

/// `tests/fixtures/REL` in this repository.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/fixtures")
        .join(rel)
}

/// A one-thread runtime from the installed home, or `None` (with a
/// message: the test skips) when ONNX Runtime is not installed; under
/// `CI=true` that fails the test instead.
pub fn runtime_or_skip() -> Option<Runtime> {
    match Runtime::init(
        &Home::from_env(),
        RuntimeOptions {
            threads: 1,
            ..RuntimeOptions::default()
        },
    ) {
        Ok(rt) => Some(rt),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but ONNX Runtime is missing: {}",
                e.report()
            );
            eprintln!("skipping: {}", e.report());
            None
        }
    }
}
