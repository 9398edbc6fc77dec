//! Model bundles on disk: a folder with `manifest.toml`, its files checked against their sha256.
//!
//! Hashing a 90 MB encoder on every start would be slow, so verified hashes
//! are cached in `<home>/cache/verified-hashes.json`, keyed by canonical
//! path, size and modification time. A file that changes in any of those is
//! hashed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use ovdiff_core::atomic::write_atomic;

use super::manifest::{Manifest, MANIFEST_FILE};
use crate::fingerprint::{bundle_fingerprint, sha256_file};
use crate::{Error, Result};

/// How much to trust the files of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Hash every file now.
    Full,
    /// Hash files whose size or mtime changed since they were last verified.
    Cached,
    /// Only check that the files exist (`--no-verify`).
    Off,
}

/// An opened, checked model bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    fingerprint: String,
}

impl Bundle {
    /// Read the manifest in `dir` and check every listed file.
    pub fn open(dir: &Path, verify: VerifyMode, cache_dir: &Path) -> Result<Bundle> {
        let manifest = Manifest::load(dir)?;
        let manifest_bytes = std::fs::read(dir.join(MANIFEST_FILE))
            .map_err(|e| Error::io("reading", dir.join(MANIFEST_FILE), e))?;
        let mut cache = HashCache::load(cache_dir);
        for entry in &manifest.files {
            let path = dir.join(&entry.path);
            let meta = std::fs::metadata(&path).map_err(|_| {
                Error::bundle(
                    dir,
                    format!(
                        "file `{}` listed in the manifest is missing; re-run `scripts/setup` \
                         or restore the bundle",
                        entry.path
                    ),
                )
            })?;
            if !meta.is_file() {
                return Err(Error::bundle(
                    dir,
                    format!("`{}` is not a file", entry.path),
                ));
            }
            let found = match verify {
                VerifyMode::Off => continue,
                VerifyMode::Cached => match cache.lookup(&path, &meta) {
                    Some(h) => h,
                    None => cache.insert(&path, &meta, sha256_file(&path)?),
                },
                VerifyMode::Full => cache.insert(&path, &meta, sha256_file(&path)?),
            };
            if !found.eq_ignore_ascii_case(&entry.sha256) {
                return Err(Error::HashMismatch {
                    path,
                    expected: entry.sha256.clone(),
                    found,
                });
            }
        }
        cache.save(cache_dir);
        let fingerprint = bundle_fingerprint(
            &manifest_bytes,
            manifest
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.sha256.as_str())),
        );
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            fingerprint,
        })
    }

    /// The bundle folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bundle's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// sha256 over the manifest bytes and every file's recorded hash: the
    /// identity that banks record for the encoder that made them.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Total size of the bundle's files in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.manifest
            .files
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.join(&f.path)).ok())
            .map(|m| m.len())
            .sum()
    }
}

const CACHE_FILE: &str = "verified-hashes.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct HashCache {
    entries: BTreeMap<String, CachedHash>,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

impl HashCache {
    /// A missing or unreadable cache is an empty one: it only saves time.
    fn load(dir: &Path) -> HashCache {
        std::fs::read(dir.join(CACHE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn key(path: &Path) -> String {
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .to_string_lossy()
            .into_owned()
    }

    fn stamp(meta: &std::fs::Metadata) -> (u64, u128) {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        (meta.len(), mtime)
    }

    fn lookup(&self, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let (size, mtime_ns) = Self::stamp(meta);
        self.entries
            .get(&Self::key(path))
            .filter(|c| c.size == size && c.mtime_ns == mtime_ns)
            .map(|c| c.sha256.clone())
    }

    fn insert(&mut self, path: &Path, meta: &std::fs::Metadata, sha256: String) -> String {
        let (size, mtime_ns) = Self::stamp(meta);
        self.entries.insert(
            Self::key(path),
            CachedHash {
                size,
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        self.dirty = true;
        sha256
    }

    /// Best effort, atomic: a cache that cannot be written costs time, not
    /// correctness.
    fn save(&self, dir: &Path) {
        if !self.dirty || std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec_pretty(self) else {
            return;
        };
        let _ = write_atomic(&dir.join(CACHE_FILE), &bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn cache_hits_only_for_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let mut cache = HashCache::default();
        cache.insert(&p, &meta, "h".into());
        cache.save(dir.path());
        let cache = HashCache::load(dir.path());
        assert_eq!(cache.lookup(&p, &meta).as_deref(), Some("h"));
        std::fs::write(&p, b"abcd").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(cache.lookup(&p, &meta), None);
    }
}
