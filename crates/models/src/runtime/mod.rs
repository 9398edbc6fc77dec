//! The ONNX runtime layer: finding and loading `libonnxruntime`, model bundles and checked sessions.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`), never
//! downloaded. The library is looked up in this order:
//!
//! 1. `$ORT_DYLIB_PATH`;
//! 2. `<home>/lib/libonnxruntime.so*` (installed by `scripts/setup`).
//!
//! A missing library is an error that names the set-up command; nothing
//! panics.

pub mod bundle;
pub mod manifest;
pub mod session;
pub mod tensor;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use bundle::{Bundle, VerifyMode};
pub use manifest::Manifest;
pub use session::ModelSession;

use crate::{Error, Home, Result};

/// Which execution provider runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    /// The default CPU provider.
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs a GPU build of ONNX Runtime).
    Cuda,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            other => Err(format!(
                "unknown execution provider `{other}` (use cpu or cuda)"
            )),
        }
    }
}

/// How sessions are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Intra-op threads per session.
    pub threads: usize,
    /// Execution provider.
    pub provider: Provider,
    /// Whether to check bundle file hashes.
    pub verify: VerifyMode,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            threads: ovdiff_core::threads::default_threads(),
            provider: Provider::Cpu,
            verify: VerifyMode::Cached,
        }
    }
}

/// A loaded ONNX Runtime plus the options every session is built with.
#[derive(Clone)]
pub struct Runtime {
    library: PathBuf,
    env: ort::environment::Environment,
    options: RuntimeOptions,
    home: Home,
}

/// The process-wide ONNX Runtime environment and the library it came from.
static LOADED: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();

impl Runtime {
    /// Find and load ONNX Runtime (once per process), and check that the
    /// requested execution provider exists.
    pub fn init(home: &Home, options: RuntimeOptions) -> Result<Runtime> {
        let (library, env) = match LOADED.get() {
            Some(loaded) => loaded.clone(),
            None => {
                let path = find_library(home)?;
                let builder = ort::init_from(&path).map_err(|source| Error::RuntimeLoad {
                    path: path.clone(),
                    source: source.into(),
                })?;
                let env = builder
                    .with_name("ovdiff-bank")
                    .build()
                    .map_err(|e| Error::ort("creating the ONNX Runtime environment", e))?;
                LOADED.get_or_init(|| (path, env)).clone()
            }
        };
        let runtime = Runtime {
            library,
            env,
            options,
            home: home.clone(),
        };
        if options.provider == Provider::Cuda {
            use ort::ep::ExecutionProvider;
            let ok = ort::ep::CUDA::is_available()
                .map_err(|e| Error::ort("asking ONNX Runtime for its execution providers", e))?;
            if !ok {
                return Err(Error::ProviderUnavailable {
                    provider: "cuda".into(),
                    available: "CPUExecutionProvider".into(),
                });
            }
        }
        Ok(runtime)
    }

    /// The library file in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The options sessions are built with.
    pub fn options(&self) -> RuntimeOptions {
        self.options
    }

    /// The ONNX Runtime environment sessions are built in.
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }

    /// The home folder (for caches).
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Open a bundle folder: read its manifest, check its files.
    pub fn open_bundle(&self, dir: &Path) -> Result<Bundle> {
        Bundle::open(dir, self.options.verify, &self.home.cache_dir())
    }

    /// Build a session for a bundle's graph and check its signature against
    /// the manifest before anything runs.
    pub fn session(&self, bundle: &Bundle) -> Result<ModelSession> {
        ModelSession::new(self, bundle)
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("options", &self.options)
            .finish()
    }
}

/// Where the library is looked for, in order.
pub fn library_candidates(home: &Home) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    let lib = home.lib_dir();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // Prefer the most specific versioned name (libonnxruntime.so.1.31.1).
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    if found.is_empty() {
        found.push(lib.join("libonnxruntime.so"));
    }
    out.extend(found);
    out
}

fn find_library(home: &Home) -> Result<PathBuf> {
    let candidates = library_candidates(home);
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(Error::RuntimeMissing {
            searched: candidates,
        })
}
