//! Tests of the bank, by topic: class writes and reads ([`classes`]),
//! opening, format versions and the lock ([`open`]), crash safety and
//! leftovers ([`crash`]), and the size on disk ([`size`]). The helpers here
//! build deterministic classes with [`synthetic::noise`](crate::synthetic::noise).

mod classes;
mod crash;
mod open;
mod size;

use std::path::Path;

use super::record::meta_key;
use super::*;
use crate::synthetic::{encoder, fp, noise};
use ovdiff_core::prototype::{Level, Provenance, Side};

fn prototypes(n: usize, dim: usize, images: u32, seed: u64, stuff: bool) -> Vec<Prototype> {
    let levels = [Level::Class, Level::Instance, Level::Part];
    (0..n)
        .map(|i| {
            let mut v = noise(seed * 1000 + i as u64, dim);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            let (gh, gw) = (16u32, 12u32);
            let region = noise(seed + 7 * i as u64, (gh * gw) as usize)
                .iter()
                .map(|&r| r > 0.0)
                .collect();
            Prototype {
                level: levels[i % 3],
                side: if stuff || i % 2 == 0 {
                    Side::Foreground
                } else {
                    Side::Background
                },
                vector: v,
                support: 10 + i as u32,
                provenance: Provenance {
                    image: i as u32 % images,
                    grid_h: gh,
                    grid_w: gw,
                    region,
                },
            }
        })
        .collect()
}

fn build(name: &str, encoders: &[(char, usize, usize)], seed: u64) -> ClassBuild {
    let images = 4u32;
    ClassBuild {
        record: ClassRecordDraft {
            name: name.into(),
            stuff: false,
            source: ClassSource::Generator {
                fingerprint: fp('9'),
                params: vec![
                    ("prompt".into(), format!("a photo of a {name}")),
                    ("seed".into(), seed.to_string()),
                ],
            },
            split_method: "kmeans2".into(),
            images_used: images,
            images_skipped: 1,
            fallback_splits: 2,
            created_unix: None,
            stats: Some(BuildStats {
                tool_version: TOOL_VERSION.into(),
                total_ms: seed,
                ..BuildStats::default()
            }),
            support: (0..images)
                .map(|i| SupportImageInfo {
                    name: format!("{name}-{i}.png"),
                    width: 512,
                    height: 384 + i,
                })
                .collect(),
        },
        encoders: encoders
            .iter()
            .map(|&(c, n, dim)| (fp(c), prototypes(n, dim, images, seed, false)))
            .collect(),
        thumbnails: (0..images as u64)
            .map(|i| {
                let mut t = b"\xff\xd8\xff\xe0".to_vec();
                t.extend(
                    noise(seed + i, 100)
                        .iter()
                        .map(|&x| (x * 127.0) as i8 as u8),
                );
                t
            })
            .collect(),
    }
}

fn open_with(dir: &Path, encoders: &[EncoderInfo]) -> Bank {
    let bank = Bank::open(dir).unwrap();
    for e in encoders {
        bank.register_encoder(e).unwrap();
    }
    bank
}

fn assert_protos_close(got: &[Prototype], want: &[Prototype]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.level, g.side, g.support), (w.level, w.side, w.support));
        assert_eq!(g.provenance, w.provenance);
        assert_eq!(g.vector.len(), w.vector.len());
        for (a, b) in g.vector.iter().zip(&w.vector) {
            assert!((a - b).abs() <= 1e-3, "{a} vs {b}");
        }
    }
}

fn builds(bank: &Bank) -> usize {
    build_file::list(bank.path()).unwrap().0.len()
}

fn entries(bank: &Bank, t: TreeId) -> usize {
    bank.store.keys(t).unwrap().len()
}
