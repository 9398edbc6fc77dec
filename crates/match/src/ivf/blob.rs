//! IVF lists in a bank file's `ann` blob: row ids are the file's prototype positions, and the key is the parameters alone (the file's checksums stand for the rows).

use ovdiff_core::codec::WriteLe;
use sha2::{Digest, Sha256};

use super::{IvfMatcher, IvfParams};
use crate::vocabulary::{Vocabulary, STUFF_BG_THRESHOLD};

/// The `algorithm` of IVF lists in a bank file's `ann` section.
pub const IVF_ALGORITHM: &str = "ivf-lists-1";

impl IvfMatcher {
    /// The key of lists kept in a bank file: the parameters only (the file's
    /// checksums stand for the rows, and ids are positions in the file).
    fn file_key(params: &IvfParams) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"ovdiff-bank ivf lists in a bank file v1\0");
        // the rows listed follow the stuff rule at this threshold
        let mut threshold = Vec::with_capacity(4);
        threshold.put_f32(STUFF_BG_THRESHOLD);
        h.update(&threshold);
        params.hash_into(&mut h);
        h.finalize().into()
    }

    /// Which of a bank file's `space` prototype positions the blob lists
    /// (the rows an `--all-classes` query stacks: background prototypes the
    /// stuff rule drops are not listed); `Err(why)` as for
    /// [`from_file_blob`](Self::from_file_blob).
    pub fn listed_in_file_blob(
        params: &IvfParams,
        blob: &[u8],
        dim: usize,
        space: usize,
    ) -> std::result::Result<Vec<bool>, &'static str> {
        let (_, _, ids) = Self::from_bytes(blob, &Self::file_key(params), dim, space)?;
        let mut listed = vec![false; space];
        for p in ids {
            listed[p as usize] = true;
        }
        Ok(listed)
    }

    /// The lists as a bank file's `ann` blob ([`IVF_ALGORITHM`]): row ids
    /// are positions among the file's `space` prototypes of the encoder
    /// (block order), `position_of_row` giving each vocabulary row's.
    pub fn to_file_blob(&self, position_of_row: &[u32], space: usize) -> Vec<u8> {
        let key = Self::file_key(&self.params);
        self.to_bytes(&key, &|r| position_of_row[r as usize], space)
    }

    /// Lists from a bank file's `ann` blob for `vocab`: `row_at[p]` is the
    /// vocabulary row of the file's prototype at position `p`, if the
    /// vocabulary has it. `Err(why)` when the blob is not usable: damaged,
    /// of other parameters or shape, or missing some of the vocabulary's
    /// rows (then build or load the lists as usual).
    pub fn from_file_blob(
        vocab: &Vocabulary,
        params: IvfParams,
        blob: &[u8],
        row_at: &[Option<u32>],
    ) -> std::result::Result<IvfMatcher, &'static str> {
        let t = std::time::Instant::now();
        let key = Self::file_key(&params);
        let (centroids, offsets, ids) = Self::from_bytes(blob, &key, vocab.dim(), row_at.len())?;
        let mut new_offsets = Vec::with_capacity(offsets.len());
        let mut rows = Vec::with_capacity(vocab.num_rows());
        new_offsets.push(0u32);
        for w in offsets.windows(2) {
            rows.extend(
                ids[w[0] as usize..w[1] as usize]
                    .iter()
                    .filter_map(|&p| row_at[p as usize]),
            );
            new_offsets.push(rows.len() as u32);
        }
        if rows.len() != vocab.num_rows() {
            return Err("lists that miss some of the query's rows");
        }
        let protos = vocab.prototypes();
        let mut m = Self::assemble(
            vocab,
            &protos.view(),
            params,
            centroids,
            new_offsets,
            rows,
            t,
        );
        m.stats.loaded = true;
        m.stats.from_file = true;
        Ok(m)
    }
}
