//! Synthetic banks for tests and benchmarks: deterministic prototypes,
//! class builds and encoder records, with no model involved.

use std::path::Path;

use ovdiff_core::prototype::{Level, Prototype, Provenance, Side};

use crate::bank::{
    Bank, ClassBuild, ClassRecordDraft, ClassSource, EncoderInfo, SupportImageInfo, DTYPE_F16,
};

/// A fingerprint of 64 copies of `c`.
pub fn fp(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// An f16 encoder record of dimension `dim`, fingerprint [`fp`]`(c)`.
pub fn encoder(c: char, dim: u32) -> EncoderInfo {
    EncoderInfo {
        fingerprint: fp(c),
        name: format!("enc-{c}"),
        dim,
        dtype: DTYPE_F16.into(),
    }
}

/// Deterministic pseudo-random numbers in [-1, 1).
///
/// A xorshift of its own rather than
/// [`SplitMix64`](ovdiff_core::rng::SplitMix64): the committed golden
/// `.ovbank` files (`tests/fixtures/ovbank/vN/small.ovbank`) hold vectors and
/// regions made from these numbers, and the golden test rewrites them byte
/// for byte, so this sequence is frozen.
pub fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A unit vector from [`noise`].
pub fn unit(seed: u64, dim: usize) -> Vec<f32> {
    let mut v = noise(seed, dim);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// `n` prototypes of dimension `dim` over `images` support images (all
/// foreground for a stuff class).
pub fn protos(n: usize, dim: usize, images: u32, seed: u64, stuff: bool) -> Vec<Prototype> {
    let levels = [Level::Class, Level::Instance, Level::Part];
    (0..n)
        .map(|i| {
            let (gh, gw) = (2 + (seed as u32 + i as u32) % 5, 3 + i as u32 % 4);
            Prototype {
                level: levels[i % 3],
                side: if stuff || i % 2 == 0 {
                    Side::Foreground
                } else {
                    Side::Background
                },
                vector: unit(seed * 7919 + i as u64, dim),
                support: 10 + i as u32,
                provenance: Provenance {
                    image: i as u32 % images,
                    grid_h: gh,
                    grid_w: gw,
                    region: noise(seed + 31 * i as u64, (gh * gw) as usize)
                        .iter()
                        .map(|&r| r > 0.0)
                        .collect(),
                },
            }
        })
        .collect()
}

/// A small real JPEG.
pub fn jpeg(seed: u64) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 6, |x, y| {
        image::Rgb([
            (x * 30) as u8 ^ seed as u8,
            (y * 40) as u8,
            (seed * 17) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&img)
        .unwrap();
    out
}

/// The side of [`perf_bank`]'s thumbnails: noise JPEGs of this side are
/// about 15 KB, the size of a real 256 px support thumbnail.
const NOISY_SIDE: u32 = 100;

/// A real JPEG of `side`×`side` noise pixels (noise does not compress).
/// Content checks decode thumbnails, so benchmark banks need real ones of a
/// realistic size.
pub fn noisy_jpeg(seed: u64, side: u32) -> Vec<u8> {
    let px = noise(seed, (side * side * 3) as usize);
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let k = ((y * side + x) * 3) as usize;
        image::Rgb([0, 1, 2].map(|c| ((px[k + c] + 1.0) * 127.5) as u8))
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&img)
        .unwrap();
    out
}

/// A class build: `images` support images, thumbnails for all but the last.
pub fn build(
    name: &str,
    encoders: &[(char, usize, usize)],
    seed: u64,
    stuff: bool,
    images: u32,
    thumb: &dyn Fn(u64) -> Vec<u8>,
) -> ClassBuild {
    ClassBuild {
        record: ClassRecordDraft {
            name: name.into(),
            stuff,
            source: if seed.is_multiple_of(2) {
                ClassSource::Generator {
                    fingerprint: fp('9'),
                    params: vec![
                        ("prompt".into(), format!("a photo of a {name}")),
                        ("seed".into(), seed.to_string()),
                        ("guidance".into(), "7.5".into()),
                    ],
                }
            } else {
                ClassSource::Images {
                    dir: format!("/data/{name}"),
                }
            },
            created_unix: None,
            stats: (!seed.is_multiple_of(3)).then(|| crate::bank::BuildStats {
                tool_version: "0.1.0".into(),
                total_ms: 1000 + seed,
                sample_ms: seed,
                decode_ms: 2 * seed,
                encode_ms: 3 * seed,
                pool_ms: 4 * seed,
                fg_patches: 5 * seed,
                bg_patches: 6 * seed,
            }),
            split_method: "kmeans-saliency".into(),
            images_used: images,
            images_skipped: (seed % 3) as u32,
            fallback_splits: (seed % 2) as u32,
            support: (0..images)
                .map(|i| SupportImageInfo {
                    name: format!("{name}-{i}.png"),
                    width: 512 + i,
                    height: 384,
                })
                .collect(),
        },
        encoders: encoders
            .iter()
            .map(|&(c, n, dim)| (fp(c), protos(n, dim, images, seed + c as u64, stuff)))
            .collect(),
        thumbnails: (0..images.saturating_sub(1) as u64)
            .map(|i| thumb(seed * 10 + i))
            .collect(),
    }
}

/// A bank at `path` with `encoders` registered.
pub fn new_bank(path: &Path, encoders: &[EncoderInfo]) -> Bank {
    let bank = Bank::open(path).unwrap();
    for e in encoders {
        bank.register_encoder(e).unwrap();
    }
    bank
}

/// The benchmarks' bank of `n` classes at `path`: one 384-d encoder
/// ([`encoder`]`('e', 384)`, returned), 130 prototypes and one 15 KB
/// thumbnail per class, every tenth class stuff.
pub fn perf_bank(path: &Path, n: usize) -> (Bank, EncoderInfo) {
    let enc = encoder('e', 384);
    let bank = new_bank(path, std::slice::from_ref(&enc));
    for i in 0..n {
        let name = format!("class {i:04}");
        let mut b = build(&name, &[], i as u64, i % 10 == 0, 4, &|_| Vec::new());
        b.encoders = vec![(
            enc.fingerprint.clone(),
            protos(130, 384, 4, i as u64, i % 10 == 0),
        )];
        b.thumbnails = vec![noisy_jpeg(i as u64, NOISY_SIDE)];
        bank.put_class(&b, false).unwrap();
    }
    (bank, enc)
}

#[cfg(test)]
mod tests {
    #[test]
    fn benchmark_thumbnails_are_real_jpegs_of_about_15_kb() {
        let j = super::noisy_jpeg(7, super::NOISY_SIDE);
        assert!((10_000..25_000).contains(&j.len()), "{} bytes", j.len());
        let img = image::load_from_memory_with_format(&j, image::ImageFormat::Jpeg).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (super::NOISY_SIDE, super::NOISY_SIDE)
        );
    }
}
