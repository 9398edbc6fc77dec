//! Model-folder fingerprints: the identities that banks record for the
//! models that made their prototypes, owned here once.
//!
//! Two schemes, for two kinds of folder:
//!
//! * a **bundle** (a folder with a `manifest.toml`) is identified by its
//!   manifest bytes and the sha256 each file has in it
//!   ([`bundle_fingerprint`]): cheap, since the hashes are recorded;
//! * an **export** without a manifest (a Stable Diffusion or CLIP folder
//!   as `optimum-cli export onnx` writes it) is identified by every file's
//!   relative path and sha256 ([`fingerprint_dir`]): every byte is hashed
//!   once.
//!
//! Both are recorded in existing banks, so neither may change.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// sha256 over the manifest bytes and every file's recorded hash (`files`:
/// each file's path in the bundle and the sha256 its manifest records, in
/// manifest order): the identity of a bundle.
pub fn bundle_fingerprint<'a>(
    manifest_bytes: &[u8],
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut h = Sha256::new();
    h.update(b"ovdiff-bank bundle fingerprint v1\0");
    h.update((manifest_bytes.len() as u64).to_le_bytes());
    h.update(manifest_bytes);
    for (path, sha256) in files {
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(sha256.to_ascii_lowercase().as_bytes());
    }
    hex::encode(h.finalize())
}

/// Lower-case hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 over the sorted (relative path, file sha256) pairs of `root`.
pub fn fingerprint_dir(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_files(root, "", &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    h.update(b"ovdiff-bank pipeline-export fingerprint v1\0");
    for rel in &files {
        let sha = sha256_file(&root.join(rel))?;
        h.update(rel.as_bytes());
        h.update(b"\0");
        h.update(sha.as_bytes());
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

fn collect_files(root: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let dir = root.join(prefix);
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::bundle(
                root,
                format!("{} has a file name that is not UTF-8", dir.display()),
            ));
        };
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| Error::io("reading", &path, e))?;
        if meta.is_dir() {
            collect_files(root, &rel, out)?;
        } else if meta.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}
