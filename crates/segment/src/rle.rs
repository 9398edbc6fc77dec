//! COCO run-length encoding of binary masks, byte for byte as pycocotools'
//! `mask.encode` writes it, so that a mask from the CLI, the service or the
//! Python package loads in any COCO tool.
//!
//! The COCO format: the mask is read in column-major order (down each
//! column, left to right), as alternating run lengths that start with a run
//! of zeros (possibly empty). `counts` is those runs in pycocotools'
//! compressed string form (`rleToString` in `maskApi.c`): each run, from the
//! fourth on, is stored as its difference to the run two before it, then
//! written 5 bits at a time, least significant first, with bit 5 of each
//! character saying that more follow and bit 4 of the last one carrying the
//! sign, and 48 added to make it printable.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One binary mask in COCO's compressed RLE: `{"size": [h, w], "counts": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[height, width]`, in COCO's order.
    pub size: [u32; 2],
    /// The run lengths in pycocotools' compressed string form.
    pub counts: String,
}

impl CocoRle {
    /// Encode a row-major `width × height` mask.
    pub fn encode(mask: &[bool], width: u32, height: u32) -> Result<CocoRle> {
        check_size(mask.len(), width, height)?;
        let (w, h) = (width as usize, height as usize);
        Ok(CocoRle::from_runs(
            runs((0..w).flat_map(|x| (0..h).map(move |y| mask[y * w + x]))),
            width,
            height,
        ))
    }

    /// Encode the pixels of a row-major label map that carry `label`.
    pub fn encode_label(labels: &[u16], width: u32, height: u32, label: u16) -> Result<CocoRle> {
        check_size(labels.len(), width, height)?;
        let (w, h) = (width as usize, height as usize);
        Ok(CocoRle::from_runs(
            runs((0..w).flat_map(|x| (0..h).map(move |y| labels[y * w + x] == label))),
            width,
            height,
        ))
    }

    fn from_runs(runs: Vec<u64>, width: u32, height: u32) -> CocoRle {
        CocoRle {
            size: [height, width],
            counts: counts_string(&runs),
        }
    }

    /// The run lengths (zeros first), decoded from `counts`.
    pub fn runs(&self) -> Result<Vec<u64>> {
        let bad = |why: &str| Error::Invalid(format!("COCO RLE counts `{}`: {why}", self.counts));
        let mut out: Vec<u64> = Vec::new();
        let bytes = self.counts.as_bytes();
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k, mut more) = (0i64, 0u32, true);
            while more {
                let c = i64::from(*bytes.get(p).ok_or_else(|| bad("ends inside a run"))?) - 48;
                if !(0..64).contains(&c) || k > 12 {
                    return Err(bad("holds a character outside the encoding"));
                }
                x |= (c & 0x1f) << (5 * k);
                more = c & 0x20 != 0;
                p += 1;
                k += 1;
                if !more && c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
            }
            if out.len() > 2 {
                x += out[out.len() - 2] as i64;
            }
            out.push(u64::try_from(x).map_err(|_| bad("decodes to a negative run"))?);
        }
        let total: u64 = out.iter().sum();
        if total != u64::from(self.size[0]) * u64::from(self.size[1]) {
            return Err(bad(&format!(
                "runs cover {total} pixels, the size [{}, {}] has {}",
                self.size[0],
                self.size[1],
                u64::from(self.size[0]) * u64::from(self.size[1])
            )));
        }
        Ok(out)
    }

    /// The mask, row-major.
    pub fn decode(&self) -> Result<Vec<bool>> {
        let (h, w) = (self.size[0] as usize, self.size[1] as usize);
        let mut mask = vec![false; w * h];
        let mut i = 0usize;
        for (k, &r) in self.runs()?.iter().enumerate() {
            for j in i..i + r as usize {
                if k % 2 == 1 {
                    mask[(j % h) * w + j / h] = true;
                }
            }
            i += r as usize;
        }
        Ok(mask)
    }

    /// Pixels in the mask (pycocotools' `mask.area`).
    pub fn area(&self) -> Result<u64> {
        Ok(self.runs()?.iter().skip(1).step_by(2).sum())
    }
}

fn check_size(len: usize, width: u32, height: u32) -> Result<()> {
    if len as u64 != u64::from(width) * u64::from(height) {
        return Err(Error::DimensionMismatch {
            what: "mask".into(),
            expected: format!(
                "{width}×{height} = {} pixels",
                u64::from(width) * u64::from(height)
            ),
            found: len.to_string(),
        });
    }
    Ok(())
}

/// Alternating run lengths of `bits`, starting with the zeros.
fn runs(bits: impl Iterator<Item = bool>) -> Vec<u64> {
    let mut out = Vec::new();
    let (mut current, mut n) = (false, 0u64);
    for b in bits {
        if b != current {
            out.push(n);
            current = b;
            n = 0;
        }
        n += 1;
    }
    out.push(n);
    out
}

/// pycocotools' `rleToString`.
fn counts_string(runs: &[u64]) -> String {
    let mut s = String::new();
    for (i, &r) in runs.iter().enumerate() {
        let mut x = r as i64;
        if i > 2 {
            x -= runs[i - 2] as i64;
        }
        let mut more = true;
        while more {
            let mut c = x & 0x1f;
            x >>= 5;
            more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push(char::from((c + 48) as u8));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_core::rng::SplitMix64;

    /// Masks of several shapes: empty, full, one pixel, stripes, blobs, noise.
    fn masks() -> Vec<(u32, u32, Vec<bool>)> {
        let mut rng = SplitMix64::new(11);
        let mut out = vec![
            (1, 1, vec![false]),
            (1, 1, vec![true]),
            (4, 3, vec![false; 12]),
            (4, 3, vec![true; 12]),
            (5, 4, (0..20).map(|i| i == 7).collect()),
            (7, 5, (0..35).map(|i| (i / 7) % 2 == 0).collect()),
        ];
        for (w, h, p) in [(31u32, 17u32, 0.5), (64, 48, 0.05), (200, 120, 0.97)] {
            out.push((w, h, (0..w * h).map(|_| rng.next_f64() < p).collect()));
        }
        let (w, h) = (300u32, 200u32);
        out.push((
            w,
            h,
            (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as f64 - 140.0, (i / w) as f64 - 90.0);
                    x * x + y * y < 70.0 * 70.0
                })
                .collect(),
        ));
        out
    }

    #[test]
    fn masks_round_trip_and_areas_count_pixels() {
        for (w, h, m) in masks() {
            let rle = CocoRle::encode(&m, w, h).unwrap();
            assert_eq!(rle.size, [h, w]);
            assert_eq!(rle.decode().unwrap(), m, "{w}×{h}");
            assert_eq!(rle.area().unwrap(), m.iter().filter(|&&b| b).count() as u64);
        }
    }

    #[test]
    fn known_encodings_match_pycocotools() {
        // From pycocotools 2.0 `mask.encode` on Fortran-ordered uint8 arrays.
        let one = CocoRle::encode(&[false, true, false, false], 2, 2).unwrap();
        assert_eq!(one.counts, "211");
        let full = CocoRle::encode(&[true; 6], 3, 2).unwrap();
        assert_eq!(full.counts, "06");
        let empty = CocoRle::encode(&[false; 6], 3, 2).unwrap();
        assert_eq!(empty.counts, "6");
    }

    #[test]
    fn labels_encode_like_their_masks() {
        let labels: Vec<u16> = (0..60).map(|i| (i % 7) as u16 % 3).collect();
        for l in 0..3 {
            let mask: Vec<bool> = labels.iter().map(|&v| v == l).collect();
            assert_eq!(
                CocoRle::encode_label(&labels, 10, 6, l).unwrap(),
                CocoRle::encode(&mask, 10, 6).unwrap()
            );
        }
        assert!(CocoRle::encode_label(&labels, 10, 5, 0).is_err());
    }

    #[test]
    fn damaged_counts_are_refused() {
        for counts in ["", "1", "12~", "\u{7f}", "0000000000000000"] {
            let r = CocoRle {
                size: [2, 2],
                counts: counts.into(),
            };
            assert!(r.decode().is_err(), "{counts:?}");
        }
    }

    /// The encodings equal pycocotools' own, run in the set-up's Python
    /// (scripts/setup installs pycocotools there; under `CI=true` a missing
    /// one fails the test).
    #[test]
    fn encodings_equal_pycocotools() {
        let python = ovdiff_core::Home::from_env()
            .root()
            .join("setup-venv/bin/python");
        let has = python.exists()
            && std::process::Command::new(&python)
                .args(["-c", "import pycocotools.mask"])
                .status()
                .is_ok_and(|s| s.success());
        if !has {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "CI=true and pycocotools is missing from {}; run scripts/setup",
                python.display()
            );
            eprintln!(
                "SKIPPED: pycocotools is missing from {}; run scripts/setup",
                python.display()
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut ours = Vec::new();
        for (k, (w, h, m)) in masks().into_iter().enumerate() {
            let bytes: Vec<u8> = m.iter().map(|&b| u8::from(b)).collect();
            std::fs::write(dir.path().join(format!("{k}-{w}x{h}.bin")), bytes).unwrap();
            ours.push(CocoRle::encode(&m, w, h).unwrap());
        }
        let script = r#"
import sys, os, json, numpy as np
from pycocotools import mask as M
out = []
files = sorted(os.listdir(sys.argv[1]), key=lambda f: int(f.split('-')[0]))
for f in files:
    w, h = map(int, f.split('-')[1][:-4].split('x'))
    a = np.fromfile(os.path.join(sys.argv[1], f), dtype=np.uint8).reshape(h, w)
    r = M.encode(np.asfortranarray(a))
    out.append({"size": [int(v) for v in r["size"]], "counts": r["counts"].decode(), "area": int(M.area(r))})
print(json.dumps(out))
"#;
        let o = std::process::Command::new(&python)
            .args(["-c", script, dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let theirs: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(theirs.len(), ours.len());
        for (t, r) in theirs.iter().zip(&ours) {
            assert_eq!(t["counts"], r.counts.as_str());
            assert_eq!(t["size"], serde_json::json!(r.size));
            assert_eq!(t["area"], r.area().unwrap());
        }
    }
}
