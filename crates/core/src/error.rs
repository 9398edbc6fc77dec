//! The libraries' one error type, with the context a user needs to act on it.

use std::path::PathBuf;

/// An underlying error from another library (ONNX Runtime, an image or TOML
/// decoder, the store), kept as the `source()` of an [`Error`].
pub type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the library.
///
/// Variants carry the path, name or version involved, and keep the
/// underlying error as their `source()`, so the binary can print the whole
/// chain (`ovdiff-bank: opening bundle …: caused by …`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ONNX Runtime shared library was not found anywhere we look.
    #[error(
        "ONNX Runtime library not found (looked in: {}); run `scripts/setup` to install it, \
         or set ORT_DYLIB_PATH to a libonnxruntime.so",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    RuntimeMissing {
        /// Every place that was tried, in order.
        searched: Vec<PathBuf>,
    },
    /// The ONNX Runtime shared library exists but could not be loaded.
    #[error("loading ONNX Runtime from {path}")]
    RuntimeLoad {
        /// The library file.
        path: PathBuf,
        /// Why loading failed.
        #[source]
        source: BoxedError,
    },
    /// An execution provider was asked for that the loaded library lacks.
    #[error(
        "execution provider `{provider}` is not available in the loaded ONNX Runtime library \
         (it has: {available}); install a build with that provider and point ORT_DYLIB_PATH at it, \
         or use `--provider cpu`"
    )]
    ProviderUnavailable {
        /// The provider asked for.
        provider: String,
        /// The providers the library reports.
        available: String,
    },
    /// An error from ONNX Runtime itself.
    #[error("{context}")]
    Ort {
        /// What we were doing.
        context: String,
        /// The runtime's error.
        #[source]
        source: BoxedError,
    },
    /// A model bundle folder or its manifest is unusable.
    #[error("model bundle {path}: {problem}")]
    Bundle {
        /// The bundle folder.
        path: PathBuf,
        /// What is wrong, and what to do about it.
        problem: String,
    },
    /// A bundle name that is not installed.
    #[error("no model bundle named `{name}` in {dir}{hint}")]
    BundleNotFound {
        /// The name asked for.
        name: String,
        /// Where bundles are looked up.
        dir: PathBuf,
        /// Extra advice (e.g. run set-up).
        hint: String,
    },
    /// The manifest could not be parsed.
    #[error("reading manifest {path}")]
    ManifestParse {
        /// The manifest file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: BoxedError,
    },
    /// A file listed in a manifest does not have the sha256 it records.
    #[error(
        "{path}: sha256 is {found} but the manifest records {expected}; the file is damaged or \
         was replaced — re-run `scripts/setup` (or pass --no-verify to skip hash checks)"
    )]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the file on disk.
        found: String,
    },
    /// The session's real inputs/outputs differ from what the manifest says.
    #[error("model {path} does not match its manifest: {problem}")]
    SignatureMismatch {
        /// The ONNX file.
        path: PathBuf,
        /// The first difference found.
        problem: String,
    },
    /// An image could not be read or decoded.
    #[error("image {path}: {problem}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// The decoder's error, when there is one.
        #[source]
        source: Option<BoxedError>,
    },
    /// Tensor dimensions do not agree.
    #[error("{what}: expected {expected}, found {found}")]
    DimensionMismatch {
        /// Which tensor or vector.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// An I/O error, with the path involved.
    #[error("{context} {path}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A bank or a `.ovbank` file is unusable (locked, damaged, foreign, too
    /// new, …): the store's own error, whose message is already complete.
    #[error(transparent)]
    Store(BoxedError),
    /// The user's input is invalid (bad flag combination, empty vocabulary, …).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The error with its causes, as one line (`a: b: c`).
    pub fn report(&self) -> String {
        chain(self)
    }

    /// Wrap an I/O error with its path.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// Wrap an ONNX Runtime error with what we were doing.
    pub fn ort(context: impl Into<String>, source: impl Into<BoxedError>) -> Self {
        Error::Ort {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A bundle problem.
    pub fn bundle(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::Bundle {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// Any error with its causes, as one line (`a: b: c`): what
/// [`Error::report`] prints, for the other error types too.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
