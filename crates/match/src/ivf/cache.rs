//! The cache file of IVF lists: keyed by a fingerprint of every row and the parameters, written atomically, checked in full before it is used.

use std::path::Path;

use ovdiff_core::atomic::write_atomic;
use sha2::{Digest, Sha256};

use super::{IvfMatcher, IvfParams};
use crate::hnsw::{Fingerprint, HnswParams};
use crate::vocabulary::Vocabulary;
use crate::{Error, Result};

impl IvfMatcher {
    /// The fingerprint a cache of lists over `vocab` built with `params`
    /// carries: every row, the columns and names (as for HNSW graphs) and
    /// the parameters.
    pub fn fingerprint(vocab: &Vocabulary, params: &IvfParams) -> [u8; 32] {
        let rows = Fingerprint::new(vocab, &HnswParams::default());
        let mut h = Sha256::new();
        h.update(b"ovdiff-bank ivf lists v1\0");
        h.update(rows.as_bytes());
        params.hash_into(&mut h);
        h.finalize().into()
    }

    /// Write the lists (not the rows, which the vocabulary has) to `path`
    /// atomically (`ovdiff_core::atomic`), keyed by `fingerprint`. The
    /// layout, little-endian: magic `OVDBIVF1`, the 32-byte fingerprint,
    /// `u64` lists, dim, rows (twice: index space and count); the centroids
    /// as f32; `lists + 1` list offsets and the row ids as u32; the xxh3-64
    /// of all of it.
    pub fn save(&self, fingerprint: &[u8; 32], path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes(fingerprint, &|r| r, self.ids.len()))
    }

    /// Lists saved by [`save`](Self::save) for this `vocab` and `params`.
    /// `Ok(Err(why))` means "rebuild": no file, another fingerprint or
    /// layout, a checksum mismatch, or lists that do not cover every row
    /// exactly once. Other I/O errors are errors.
    pub fn load(
        vocab: &Vocabulary,
        params: IvfParams,
        fingerprint: &[u8; 32],
        path: &Path,
    ) -> Result<std::result::Result<IvfMatcher, &'static str>> {
        let t = std::time::Instant::now();
        let b = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err("no cache file")),
            Err(source) => {
                return Err(Error::Io {
                    context: "reading the IVF cache",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let n = vocab.num_rows();
        let parsed = Self::from_bytes(&b, fingerprint, vocab.dim(), n).and_then(|p| {
            if p.2.len() == n {
                Ok(p)
            } else {
                Err("lists that miss rows")
            }
        });
        Ok(parsed.map(|(c, o, i)| {
            let mut m = Self::assemble(vocab, &vocab.prototypes().view(), params, c, o, i, t);
            m.stats.loaded = true;
            m
        }))
    }
}
