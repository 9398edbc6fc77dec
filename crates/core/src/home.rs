//! The ovdiff-bank home folder: where the runtime library, model bundles, banks and samples live.
//!
//! `<home>` is `$OVDIFF_HOME` when set, else `$XDG_DATA_HOME/ovdiff-bank`,
//! else `$HOME/.local/share/ovdiff-bank`. `scripts/setup` fills it:
//!
//! ```text
//! <home>/lib/libonnxruntime.so*       ONNX Runtime
//! <home>/models/<bundle>/manifest.toml model bundles (dinov2-s14, …)
//! <home>/banks/<name>/                 prototype banks (default: `default`)
//! <home>/samples/                      support images and a VOC sample
//! <home>/cache/                        verified-hash cache and other caches
//! ```

use std::path::{Path, PathBuf};

/// Name of the bank used when `--bank` is not given.
pub const DEFAULT_BANK: &str = "default";

/// Name of the encoder bundle used when `--encoder` is not given.
pub const DEFAULT_ENCODER: &str = "dinov2-s14";

/// The resolved home folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Resolve `<home>` from the environment (see the module docs).
    pub fn from_env() -> Home {
        if let Some(p) = std::env::var_os("OVDIFF_HOME").filter(|p| !p.is_empty()) {
            return Home::at(p);
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
            return Home::at(PathBuf::from(p).join("ovdiff-bank"));
        }
        let base = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        Home::at(base.join(".local/share/ovdiff-bank"))
    }

    /// A home at an explicit folder.
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<home>/lib`: the ONNX Runtime library.
    pub fn lib_dir(&self) -> PathBuf {
        self.root.join("lib")
    }

    /// `<home>/models`: installed model bundles.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// `<home>/banks`: named banks.
    pub fn banks_dir(&self) -> PathBuf {
        self.root.join("banks")
    }

    /// `<home>/samples`: the sample kit.
    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }

    /// `<home>/cache`: caches that can be deleted at any time.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Resolve a bank argument: a name under `<home>/banks`, or a path when
    /// it contains a path separator or names something that exists.
    pub fn bank_path(&self, arg: Option<&str>) -> PathBuf {
        let arg = arg.unwrap_or(DEFAULT_BANK);
        let as_path = Path::new(arg);
        if arg.contains(std::path::MAIN_SEPARATOR) || as_path.exists() {
            as_path.to_path_buf()
        } else {
            self.banks_dir().join(arg)
        }
    }

    /// Resolve a model bundle argument: a folder holding `manifest.toml`, or
    /// a bundle name under `<home>/models`.
    pub fn bundle_path(&self, arg: &str) -> PathBuf {
        let as_path = Path::new(arg);
        if as_path.join("manifest.toml").is_file() || arg.contains(std::path::MAIN_SEPARATOR) {
            as_path.to_path_buf()
        } else {
            self.models_dir().join(arg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_names_resolve_under_home_and_paths_stay_paths() {
        let home = Home::at("/h");
        assert_eq!(home.bank_path(None), PathBuf::from("/h/banks/default"));
        assert_eq!(home.bank_path(Some("zoo")), PathBuf::from("/h/banks/zoo"));
        assert_eq!(home.bank_path(Some("./x/zoo")), PathBuf::from("./x/zoo"));
    }

    #[test]
    fn bundle_names_resolve_under_models() {
        let home = Home::at("/h");
        assert_eq!(
            home.bundle_path("dinov2-s14"),
            PathBuf::from("/h/models/dinov2-s14")
        );
        assert_eq!(home.bundle_path("a/b"), PathBuf::from("a/b"));
    }
}
