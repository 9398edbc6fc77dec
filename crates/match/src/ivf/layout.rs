//! The byte layout of IVF lists, shared by the cache file and a bank file's `ann` blob; every field goes through `ovdiff_core::codec`.

use ndarray::Array2;
use ovdiff_core::codec::{u64_at, Reader, WriteLe};

use super::IvfMatcher;

/// First bytes of IVF lists, cached or in a bank file (format 1).
const IVF_MAGIC: &[u8; 8] = b"OVDBIVF1";

impl IvfMatcher {
    /// The lists as bytes, little-endian: magic `OVDBIVF1`, a 32-byte
    /// `key`, `u64` lists, dim, index space and row count; the centroids as
    /// f32; `lists + 1` list offsets and the row ids (each below the index
    /// space) as u32; then the xxh3-64 of all of it. `id_of_row` maps a
    /// vocabulary row to the id written (the identity for the cache).
    pub(super) fn to_bytes(
        &self,
        key: &[u8; 32],
        id_of_row: &dyn Fn(u32) -> u32,
        space: usize,
    ) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            80 + 4 * (self.centroids.len() + self.offsets.len() + self.ids.len()),
        );
        b.extend_from_slice(IVF_MAGIC);
        b.extend_from_slice(key);
        for v in [self.centroids.nrows(), self.dim, space, self.ids.len()] {
            b.put_u64(v as u64);
        }
        self.centroids.iter().for_each(|&v| b.put_f32(v));
        self.offsets.iter().for_each(|&v| b.put_u32(v as u32));
        self.ids.iter().for_each(|&r| b.put_u32(id_of_row(r)));
        let sum = xxhash_rust::xxh3::xxh3_64(&b);
        b.put_u64(sum);
        b
    }

    /// Parses [`to_bytes`](Self::to_bytes) output: `(centroids, offsets,
    /// ids)`, checked against `key`, `dim` and `space`, with every id below
    /// `space` and none twice.
    #[allow(clippy::type_complexity)]
    pub(super) fn from_bytes(
        b: &[u8],
        key: &[u8; 32],
        dim: usize,
        space: usize,
    ) -> std::result::Result<(Array2<f32>, Vec<u32>, Vec<u32>), &'static str> {
        const HEAD: usize = 8 + 32 + 32;
        if b.len() < HEAD + 8 || &b[..8] != IVF_MAGIC {
            return Err("not IVF lists of this version");
        }
        let (body, sum) = b.split_at(b.len() - 8);
        if u64_at(sum, 0) != Some(xxhash_rust::xxh3::xxh3_64(body)) {
            return Err("checksum mismatch");
        }
        if &b[8..40] != key {
            return Err("lists of other prototypes or parameters");
        }
        let mut r = Reader::new(&body[40..]);
        let [lists, d, sp, count] =
            [(); 4].map(|()| r.u64().expect("invariant: the header is there"));
        if d != dim as u64 || sp != space as u64 || count > sp || lists > count.max(1) {
            return Err("lists of another shape");
        }
        let (lists, count) = (lists as usize, count as usize);
        if body.len() != HEAD + 4 * (lists * dim + lists + 1 + count) {
            return Err("truncated or padded");
        }
        let sized = "invariant: the length was checked";
        let centroids = r.f32s(lists * dim).expect(sized);
        if centroids.iter().any(|v| !v.is_finite()) {
            return Err("non-finite centroids");
        }
        let offsets = r.u32s(lists + 1).expect(sized);
        let ids = r.u32s(count).expect(sized);
        if offsets[0] != 0
            || offsets[lists] as usize != count
            || offsets.windows(2).any(|w| w[0] > w[1])
        {
            return Err("list offsets out of order");
        }
        let mut seen = vec![false; space];
        for &i in &ids {
            match seen.get_mut(i as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err("row ids out of range or repeated"),
            }
        }
        let centroids = Array2::from_shape_vec((lists, dim), centroids).expect("lists × dim");
        Ok((centroids, offsets, ids))
    }
}
