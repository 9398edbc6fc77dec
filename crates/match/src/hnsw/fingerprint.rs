//! [`Fingerprint`]: what an HNSW graph indexes (its rows, names, columns and build parameters), so a cache file is used only for exactly the prototypes at hand.

use std::fmt;
use std::ops::Range;

use ovdiff_core::codec::WriteLe;
use sha2::{Digest, Sha256};

use super::HnswParams;
use crate::vocabulary::Vocabulary;

/// What a graph indexes: SHA-256 over the vocabulary's names, column
/// segments and prototype rows (as little-endian `f32`), and the build
/// parameters ([`HnswParams::m`], [`HnswParams::ef_construction`]; the
/// search parameters can change without a rebuild). A cache file is used
/// only when its fingerprint equals the one computed from the vocabulary at
/// hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a graph over `vocab`'s rows built with `params`
    /// (only `m` and `ef_construction` count). Hashes every row (a few
    /// tenths of a second for 130,000 × 384).
    pub fn new(vocab: &Vocabulary, params: &HnswParams) -> Fingerprint {
        let segments: Vec<Range<usize>> = (0..=vocab.num_classes())
            .map(|c| vocab.segment(c))
            .collect();
        let protos = vocab.prototypes();
        let protos = protos.as_standard_layout();
        Self::of_parts(
            vocab.names(),
            &segments,
            protos
                .as_slice()
                .expect("invariant: standard layout is contiguous"),
            protos.ncols(),
            params,
        )
    }

    /// The fingerprint of `rows` (`dim` values each) with these names and
    /// column segments, built with `params`.
    pub(super) fn of_parts(
        names: &[String],
        segments: &[Range<usize>],
        rows: &[f32],
        dim: usize,
        params: &HnswParams,
    ) -> Fingerprint {
        let n = rows.len().checked_div(dim).unwrap_or(0);
        let mut head = Vec::new();
        head.extend_from_slice(b"ovdiff-bank hnsw fingerprint v1\0");
        head.put_u64(params.m as u64);
        head.put_u64(params.ef_construction as u64);
        for v in [dim, n, segments.len(), names.len()] {
            head.put_u64(v as u64);
        }
        for s in segments {
            head.put_u64(s.start as u64);
            head.put_u64(s.end as u64);
        }
        for name in names {
            head.put_u64(name.len() as u64);
            head.extend_from_slice(name.as_bytes());
        }
        let mut h = Sha256::new();
        h.update(&head);
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in rows.chunks(1 << 14) {
            buf.clear();
            buf.put_f32s(chunk);
            h.update(&buf);
        }
        Fingerprint(h.finalize().into())
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
