//! The result of segmenting one image ([`Segmentation`]) and its files: the label PNG, the overlay, the explain sheet and the JSON report (`NAME.json`).
//!
//! The report's fields, their order and their names are a file format
//! (`segment --json` prints the same objects): [`ImageReport`] and the
//! structs it holds serialise exactly as `segment` always wrote them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::engine::Timings;
use crate::fusion::labels_u8;
use crate::label_map::{ClassLabels, LabelIds};
use crate::prefilter::{PrefilterStats, Ranked};
use crate::render::{self, ExplainOptions, ExplainRow, LabelDepth};
use crate::rle::CocoRle;
use crate::window::Window;
use crate::{Error, Result};

/// A class found in an image: its label, its share of the pixels, and the
/// support images whose prototypes won them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassFound {
    /// Its label in the label map (see [`Segmentation::label_map`]).
    pub label: u16,
    /// The class name.
    pub name: String,
    /// Pixels labelled with it.
    pub pixels: u64,
    /// `pixels` over the image's pixels.
    pub fraction: f64,
    /// Its mean winning score (window-averaged cosine) over those pixels.
    pub mean_score: f32,
    /// The support images whose prototypes won the most of its pixels,
    /// most first (at most 3).
    pub support: Vec<SupportMatch>,
    /// Its binary mask PNG (`NAME.masks/CLASS.png`), when written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<PathBuf>,
    /// Its mask in COCO's compressed RLE, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rle: Option<CocoRle>,
}

/// A support image that won pixels for a class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SupportMatch {
    /// Its index among the class's support images.
    pub image: u32,
    /// Its file name when the class was built.
    pub name: String,
    /// Pixels its prototypes won.
    pub pixels: u64,
    /// The prototypes that won them, most first (at most 5).
    pub prototypes: Vec<ProtoMatch>,
}

/// A prototype that won pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProtoMatch {
    /// Its level and side, e.g. `part fg` or `instance bg`.
    pub kind: String,
    /// Its id among the class's prototypes.
    pub id: u32,
    /// Pixels it won.
    pub pixels: u64,
}

/// What the CLIP pre-filter kept for one image.
#[derive(Debug, Clone, Serialize)]
pub struct PrefilterReport {
    /// The CLIP export.
    pub bundle: PathBuf,
    /// Its fingerprint (sha256 over its files).
    pub fingerprint: String,
    /// The stage-1 top-k asked for.
    pub topk: usize,
    /// The classes segmented, in stage-1 rank order.
    pub kept: Vec<String>,
    /// Stage 1: the top-k classes with their cosines, best first.
    pub stage1: Vec<Ranked>,
    /// Stage 2's winning prompt.
    pub prompt: String,
    /// Its cosine with the image.
    pub score: f32,
    /// Prompts compared in stage 2.
    pub prompts: usize,
    /// Per encoder, the matcher the kept classes' rows picked (`--engine`,
    /// with auto's rule applied to the narrowed rows).
    pub engine: Vec<&'static str>,
    /// Its cost.
    pub stats: PrefilterStats,
}

/// Where the time of one segmentation went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SegmentTimings {
    /// Decoding the image file (zero for an image decoded before the call,
    /// unless the caller says how long that took).
    pub decode: Duration,
    /// The engine: resizing, encoder passes, matching, fusing.
    pub engine: Timings,
    /// The whole call after decoding: pre-filter, engine, explanations.
    pub segment: Duration,
}

/// One image, segmented: every pixel's label, the classes found, and why.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// `height × width` labels, row-major: 0 is background, every other
    /// value is the class [`label_map`](Self::label_map) names.
    pub labels: Vec<u16>,
    /// The query's classes, in query order.
    pub class_names: Vec<String>,
    /// What every label value means (the query's classes, found or not).
    pub label_map: ClassLabels,
    /// How the query numbered its classes.
    pub label_ids: LabelIds,
    /// The classes found (at least one pixel), in query order.
    pub classes: Vec<ClassFound>,
    /// The share of background pixels.
    pub background_fraction: f64,
    /// Timings.
    pub timings: SegmentTimings,
    /// The working size (width, height) the windows refer to.
    pub working_size: (u32, u32),
    /// The windows encoded, at the working size.
    pub windows: Vec<Window>,
    /// What the pre-filter kept, when the query has one.
    pub prefilter: Option<PrefilterReport>,
    /// The explain sheet's rows (support thumbnails and matched regions),
    /// when the query asked for explanations.
    pub explain: Option<Vec<ExplainRow>>,
    /// The image.
    pub image: Arc<RgbImage>,
    /// The file it came from, when known (the report's `image`, the explain
    /// sheet's title).
    pub source: Option<PathBuf>,
}

/// What [`Segmentation::write`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOptions {
    /// Opacity of the class colours in the overlay (0.5).
    pub overlay_alpha: f32,
    /// Write `NAME.explain.png` when the segmentation has explanations
    /// (true).
    pub explain_sheet: bool,
    /// Write each class found's binary mask (0/255) as
    /// `NAME.masks/CLASS.png` (false).
    pub mask_pngs: bool,
    /// Add each class found's COCO RLE to `NAME.json` (false).
    pub rle: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            overlay_alpha: 0.5,
            explain_sheet: true,
            mask_pngs: false,
            rle: false,
        }
    }
}

/// `NAME.json`: one segmented image and its files.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// The image file.
    pub image: PathBuf,
    /// Its width.
    pub width: u32,
    /// Its height.
    pub height: u32,
    /// The label PNG.
    pub labels: PathBuf,
    /// How `labels` stores them: `palette8` (VOC palette, values up to
    /// 254) or `grey16` (16-bit greyscale, larger values).
    pub labels_format: &'static str,
    /// How the classes are numbered: `query` or `bank`.
    pub label_ids: &'static str,
    /// Every label value and its class, 0 (background) included.
    pub label_map: ClassLabels,
    /// The overlay PNG.
    pub overlay: PathBuf,
    /// This report.
    pub report: PathBuf,
    /// The explain sheet, when written.
    pub explain: Option<PathBuf>,
    /// The classes found.
    pub classes: Vec<ClassFound>,
    /// The share of background pixels.
    pub background_fraction: f64,
    /// Milliseconds per stage (`decode`, `resize`, `encoder`, `matching`,
    /// `upsampling`, `writing`, `total`, and `prefilter` with one).
    pub timings_ms: BTreeMap<&'static str, f64>,
    /// Encoder passes (windows × encoders).
    pub windows: usize,
    /// What the pre-filter kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefilter: Option<PrefilterReport>,
}

impl Segmentation {
    /// How the label PNG stores this query's labels (by its highest value).
    pub fn label_depth(&self) -> LabelDepth {
        LabelDepth::for_classes(usize::from(self.label_map.max_value()))
    }

    /// What every label value means, value → class name (0 is
    /// background), for every class of the query, found or not.
    pub fn label_map(&self) -> &ClassLabels {
        &self.label_map
    }

    /// The COCO RLE of one label's pixels.
    pub fn rle(&self, label: u16) -> Result<CocoRle> {
        CocoRle::encode_label(&self.labels, self.width, self.height, label)
    }

    /// The labels as bytes (at most 254 classes; see
    /// [`labels_u8`]).
    pub fn labels_u8(&self) -> Result<Vec<u8>> {
        labels_u8(&self.labels)
    }

    /// The image with the label colours blended in at `alpha`, and a legend.
    pub fn overlay(&self, alpha: f32) -> RgbImage {
        render::overlay(
            &self.image,
            &self.labels,
            &self.label_map.names_by_value(),
            alpha,
        )
    }

    /// The explain sheet, when the query asked for explanations.
    pub fn explain_sheet(&self) -> Option<RgbImage> {
        let rows = self.explain.as_ref()?;
        Some(render::explain_sheet(
            &self.image,
            &self.labels,
            rows,
            &ExplainOptions {
                title: self.source.as_ref().map(|p| {
                    p.file_name().map_or_else(
                        || p.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    )
                }),
                ..ExplainOptions::default()
            },
        ))
    }

    /// Write the label PNG ([`render::write_label_png`]) to `path`.
    pub fn write_labels(&self, path: &Path) -> Result<()> {
        render::write_label_png(
            path,
            self.width,
            self.height,
            &self.labels,
            self.label_depth(),
        )
    }

    /// Write `STEM.png` (labels), `STEM.overlay.png`, `STEM.explain.png`
    /// (with explanations, unless `opts` says not to), with
    /// [`WriteOptions::mask_pngs`] `STEM.masks/CLASS.png` per class found,
    /// and `STEM.json` (the returned report) into `out_dir`, in that
    /// order, each atomically
    /// ([`output_files`](crate::outputs::output_files)). Several images
    /// written into one folder take their stems from
    /// [`output_stems`](crate::outputs::output_stems), so that none
    /// overwrites another's files.
    pub fn write(&self, out_dir: &Path, stem: &str, opts: &WriteOptions) -> Result<ImageReport> {
        use crate::outputs::{EXPLAIN_SUFFIX, LABELS_SUFFIX, OVERLAY_SUFFIX, REPORT_SUFFIX};
        let started = Instant::now();
        let labels_path = out_dir.join(format!("{stem}{LABELS_SUFFIX}"));
        let overlay_path = out_dir.join(format!("{stem}{OVERLAY_SUFFIX}"));
        let report_path = out_dir.join(format!("{stem}{REPORT_SUFFIX}"));
        self.write_labels(&labels_path)?;
        render::write_rgb_png(&overlay_path, &self.overlay(opts.overlay_alpha))?;
        let explain = match self.explain_sheet().filter(|_| opts.explain_sheet) {
            Some(sheet) => {
                let p = out_dir.join(format!("{stem}{EXPLAIN_SUFFIX}"));
                render::write_rgb_png(&p, &sheet)?;
                Some(p)
            }
            None => None,
        };
        let mut classes = self.classes.clone();
        if opts.mask_pngs {
            let dir = out_dir.join(format!("{stem}{}", crate::outputs::MASKS_SUFFIX));
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io("creating the mask folder", &dir, e))?;
            for c in &mut classes {
                let p = dir.join(crate::outputs::mask_file_name(&c.name));
                render::write_mask_png(&p, self.width, self.height, &self.labels, c.label)?;
                c.mask = Some(p);
            }
        }
        if opts.rle {
            for c in &mut classes {
                c.rle = Some(self.rle(c.label)?);
            }
        }
        let report = ImageReport {
            image: self.source.clone().unwrap_or_default(),
            width: self.width,
            height: self.height,
            labels: labels_path,
            labels_format: self.label_depth().name(),
            label_ids: self.label_ids.name(),
            label_map: self.label_map.clone(),
            overlay: overlay_path,
            report: report_path.clone(),
            explain,
            classes,
            background_fraction: self.background_fraction,
            timings_ms: self.timings_ms(started.elapsed()),
            windows: self.timings.engine.windows,
            prefilter: self.prefilter.clone(),
        };
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| Error::Invalid(format!("cannot encode the report: {e}")))?;
        ovdiff_core::atomic::write_atomic(&report_path, &json)?;
        Ok(report)
    }

    /// The report's timings, with `writing` spent writing the files.
    fn timings_ms(&self, writing: Duration) -> BTreeMap<&'static str, f64> {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let t = &self.timings;
        let mut out = BTreeMap::from([
            ("decode", ms(t.decode)),
            ("resize", ms(t.engine.resize)),
            ("encoder", ms(t.engine.encode)),
            ("matching", ms(t.engine.matching)),
            ("upsampling", ms(t.engine.upsample)),
            ("writing", ms(writing)),
            ("total", ms(t.decode + t.segment + writing)),
        ]);
        if let Some(p) = &self.prefilter {
            out.insert("prefilter", p.stats.ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_two() -> Segmentation {
        Segmentation {
            width: 2,
            height: 2,
            labels: vec![0, 1, 1, 2],
            class_names: vec!["cat".into(), "cup".into()],
            label_map: ClassLabels::in_order(&["cat".into(), "cup".into()]).unwrap(),
            label_ids: LabelIds::Query,
            classes: vec![ClassFound {
                label: 1,
                name: "cat".into(),
                pixels: 2,
                fraction: 0.5,
                mean_score: 0.25,
                support: vec![SupportMatch {
                    image: 0,
                    name: "chelsea.png".into(),
                    pixels: 2,
                    prototypes: vec![ProtoMatch {
                        kind: "part fg".into(),
                        id: 3,
                        pixels: 2,
                    }],
                }],
                mask: None,
                rle: None,
            }],
            background_fraction: 0.25,
            timings: SegmentTimings::default(),
            working_size: (448, 448),
            windows: vec![Window::whole(448, 448)],
            prefilter: None,
            explain: None,
            image: Arc::new(RgbImage::from_pixel(2, 2, image::Rgb([200, 10, 10]))),
            source: Some(PathBuf::from("in/q.jpg")),
        }
    }

    #[test]
    fn the_report_keeps_its_field_names_and_order() {
        let seg = two_by_two();
        let dir = tempfile::tempdir().unwrap();
        let report = seg
            .write(dir.path(), "q", &WriteOptions::default())
            .unwrap();
        let json = std::fs::read_to_string(dir.path().join("q.json")).unwrap();
        let keys: Vec<&str> = json
            .lines()
            .filter(|l| l.starts_with("  \"") && !l.starts_with("   "))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "image",
                "width",
                "height",
                "labels",
                "labels_format",
                "label_ids",
                "label_map",
                "overlay",
                "report",
                "explain",
                "classes",
                "background_fraction",
                "timings_ms",
                "windows"
            ]
        );
        assert!(json.contains("\"mean_score\": 0.25"));
        assert!(json.contains("\"kind\": \"part fg\""));
        assert_eq!(report.image, PathBuf::from("in/q.jpg"));
        assert_eq!(report.labels_format, "palette8");
        assert!(report.explain.is_none(), "no explanations were asked for");
        let (w, h, labels) = render::read_label_png(&dir.path().join("q.png")).unwrap();
        assert_eq!((w, h, labels), (2, 2, vec![0, 1, 1, 2]));
        assert!(dir.path().join("q.overlay.png").is_file());
        let t = &report.timings_ms;
        assert!(t["total"] >= t["writing"]);
    }

    #[test]
    fn explanations_add_the_sheet() {
        let mut seg = two_by_two();
        seg.explain = Some(Vec::new());
        let dir = tempfile::tempdir().unwrap();
        let report = seg
            .write(dir.path(), "q", &WriteOptions::default())
            .unwrap();
        assert_eq!(report.explain, Some(dir.path().join("q.explain.png")));
        assert!(dir.path().join("q.explain.png").is_file());
        let off = WriteOptions {
            explain_sheet: false,
            ..WriteOptions::default()
        };
        let other = tempfile::tempdir().unwrap();
        assert!(seg
            .write(other.path(), "q", &off)
            .unwrap()
            .explain
            .is_none());
        assert_eq!(seg.labels_u8().unwrap(), vec![0, 1, 1, 2]);
    }
}
