//! Keys of the bank's sled trees, big-endian so that sled's byte order groups
//! and sorts them by build, encoder slot and index, and the small fixed
//! values of the `meta` tree (little-endian).

use ovdiff_core::codec::{u32_at, u64_at, WriteLe};

use super::RecordError;

/// Keys of the `meta` tree.
pub(crate) mod meta_key {
    /// `b"ovdiff-bank"`; written first on creation.
    pub const MAGIC: &[u8] = b"magic";
    /// u32 LE; written last on creation (the commit marker).
    pub const FORMAT_VERSION: &[u8] = b"format_version";
    /// u32 LE.
    pub const OLDEST_READABLE: &[u8] = b"oldest_readable";
    /// UTF-8 version of the tool that created the bank.
    pub const TOOL_VERSION: &[u8] = b"tool_version";
    /// u64 LE: next build id to hand out.
    pub const NEXT_BUILD_ID: &[u8] = b"next_build_id";
    /// Prefix of encoder records; followed by the 64-hex fingerprint.
    pub const ENCODER_PREFIX: &[u8] = b"encoder/";
    /// Prefix of stable label ids (u32 LE); followed by the class name.
    pub const LABEL_PREFIX: &[u8] = b"label/";
    /// u32 LE: next stable label id to hand out.
    pub const NEXT_LABEL_ID: &[u8] = b"next_label_id";
}

/// Tag byte of thumbnail keys in the `support` tree.
pub(crate) const SUPPORT_TAG_THUMBNAIL: u8 = b'T';
/// Tag byte of region keys in the `support` tree.
pub(crate) const SUPPORT_TAG_REGION: u8 = b'R';

/// `meta` key of the encoder with `fingerprint`.
pub(crate) fn encoder_key(fingerprint: &str) -> Vec<u8> {
    let mut k = meta_key::ENCODER_PREFIX.to_vec();
    k.extend_from_slice(fingerprint.as_bytes());
    k
}

/// Prefix shared by every `prototypes`/`support` key of a build.
pub(crate) fn build_prefix(build_id: u64) -> [u8; 8] {
    build_id.to_be_bytes()
}

/// Build id of a `prototypes` or `support` key, if it is long enough.
pub(crate) fn key_build_id(key: &[u8]) -> Option<u64> {
    let head: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// Prefix of the `prototypes` keys of one encoder slot of a build.
pub(crate) fn prototype_prefix(build_id: u64, slot: u16) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..8].copy_from_slice(&build_id.to_be_bytes());
    k[8..].copy_from_slice(&slot.to_be_bytes());
    k
}

/// `prototypes` key: build_id u64 BE | slot u16 BE | index u32 BE.
#[cfg(test)]
pub(crate) fn prototype_key(build_id: u64, slot: u16, index: u32) -> [u8; 14] {
    let mut k = [0u8; 14];
    k[..10].copy_from_slice(&prototype_prefix(build_id, slot));
    k[10..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Prototype index of a `prototypes` key.
pub(crate) fn prototype_key_index(key: &[u8]) -> Option<u32> {
    let tail: [u8; 4] = key.get(10..14)?.try_into().ok()?;
    (key.len() == 14).then(|| u32::from_be_bytes(tail))
}

/// `support` thumbnail key: build_id u64 BE | b'T' | image u32 BE.
pub(crate) fn thumbnail_key(build_id: u64, image: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..8].copy_from_slice(&build_id.to_be_bytes());
    k[8] = SUPPORT_TAG_THUMBNAIL;
    k[9..].copy_from_slice(&image.to_be_bytes());
    k
}

/// `support` region key: build_id u64 BE | b'R' | slot u16 BE | index u32 BE.
pub(crate) fn region_key(build_id: u64, slot: u16, index: u32) -> [u8; 15] {
    let mut k = [0u8; 15];
    k[..8].copy_from_slice(&build_id.to_be_bytes());
    k[8] = SUPPORT_TAG_REGION;
    k[9..11].copy_from_slice(&slot.to_be_bytes());
    k[11..].copy_from_slice(&index.to_be_bytes());
    k
}

// ---------------------------------------------------------------------------
// Small fixed values of the `meta` tree.

/// Encodes a u32 meta value (4 bytes LE).
pub(crate) fn encode_u32(v: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    out.put_u32(v);
    out
}

/// Decodes a u32 meta value (exactly 4 bytes LE).
pub(crate) fn decode_u32(bytes: &[u8]) -> Result<u32, RecordError> {
    match bytes.len() {
        4 => u32_at(bytes, 0),
        _ => None,
    }
    .ok_or(RecordError::Length {
        expected: 4,
        found: bytes.len(),
    })
}

/// Encodes a u64 meta value (8 bytes LE): the next build id.
pub(crate) fn encode_u64(v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    out.put_u64(v);
    out
}

/// Decodes a u64 meta value: `None` unless exactly 8 bytes.
pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    (bytes.len() == 8).then(|| u64_at(bytes, 0)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_build_slot_index() {
        assert!(prototype_key(1, 0, 300) < prototype_key(1, 1, 0));
        assert!(prototype_key(1, 9, 9) < prototype_key(2, 0, 0));
        assert_eq!(key_build_id(&thumbnail_key(42, 1)), Some(42));
        assert_eq!(key_build_id(&region_key(43, 1, 2)), Some(43));
        assert_eq!(prototype_key_index(&prototype_key(4, 1, 77)), Some(77));
        assert_eq!(
            thumbnail_key(1, 2),
            [0, 0, 0, 0, 0, 0, 0, 1, b'T', 0, 0, 0, 2]
        );
    }

    #[test]
    fn meta_values_are_fixed_width_little_endian() {
        assert_eq!(encode_u32(0x0102_0304), [4, 3, 2, 1]);
        assert_eq!(decode_u32(&[4, 3, 2, 1]).unwrap(), 0x0102_0304);
        for bad in [&[][..], &[1, 2, 3], &[1, 2, 3, 4, 5]] {
            assert!(matches!(
                decode_u32(bad),
                Err(RecordError::Length { expected: 4, found }) if found == bad.len()
            ));
        }
        assert_eq!(encode_u64(1), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_u64(&encode_u64(u64::MAX - 3)), Some(u64::MAX - 3));
        assert_eq!(decode_u64(&[1, 0, 0]), None);
    }
}
