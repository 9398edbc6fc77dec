//! The page of an `eval` run: mIoU and pixel accuracy, a per-class IoU bar chart and a row-normalised confusion heatmap (inline SVG), and the worst images as overlay | ground truth | image.
//!
//! Every number is written twice: as text for people (percentages with
//! one decimal) and in a `data-value` attribute exactly as `eval --json`
//! prints it (serde_json's shortest round-trip form), so that a test can
//! compare the page with the JSON.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::segment::{failed_html, Failed};
use super::{css_color, escape, facts_html, image_src, page, write_page, Images, RunInfo};
use crate::eval::{Confusion, IGNORE};
use crate::Result;

/// How many of the worst images a page shows by default.
pub const WORST_IMAGES: usize = 20;

/// The page's script (the full-size toggle).
const SCRIPT: &str = "(function () {\n\
  var box = document.getElementById('full');\n\
  function apply() { document.body.classList.toggle('full', box.checked); }\n\
  if (location.hash.indexOf('full') >= 0) {\n\
    box.checked = true;\n\
    document.querySelectorAll('img.shot').forEach(function (i) { i.loading = 'eager'; });\n\
  }\n\
  box.addEventListener('change', apply);\n\
  apply();\n\
})();\n";

/// One evaluated class: its dataset label, name and IoU (index k of
/// [`EvalPage::classes`] is metric label k, 0 = background).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalClass {
    /// Its label in the ground-truth PNGs.
    pub label: u8,
    /// Its name.
    pub name: String,
    /// Its IoU over the dataset (`None`: in neither ground truth nor predictions).
    pub iou: Option<f64>,
}

/// One of the worst images: its per-image mIoU and its three pictures.
#[derive(Debug, Clone, PartialEq)]
pub struct WorstImage {
    /// The dataset's image id.
    pub id: String,
    /// Its mIoU (over the classes in its ground truth or prediction).
    pub miou: Option<f64>,
    /// The prediction's overlay.
    pub overlay: PathBuf,
    /// The ground truth drawn the same way.
    pub truth: PathBuf,
    /// The image.
    pub image: PathBuf,
}

/// Everything an `eval` run's page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPage {
    /// Dataset, split, bank, options, timings, tool version.
    pub info: RunInfo,
    /// Images evaluated.
    pub images: usize,
    /// mIoU.
    pub miou: Option<f64>,
    /// Pixel accuracy.
    pub pixel_accuracy: Option<f64>,
    /// Per metric label (background first).
    pub classes: Vec<EvalClass>,
    /// The dataset's confusion matrix (ground truth × prediction).
    pub confusion: Confusion,
    /// The worst images, worst first.
    pub worst: Vec<WorstImage>,
    /// Images that failed.
    pub failed: Vec<Failed>,
}

/// `v` as `eval --json` writes it (`null` for none).
fn exact(v: Option<f64>) -> String {
    serde_json::to_string(&v).unwrap_or_else(|_| "null".into())
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.1}", v * 100.0))
}

impl EvalPage {
    /// The page, its images referenced relative to `page_dir` or inlined.
    pub fn html(&self, page_dir: &Path, images: Images) -> Result<String> {
        let title = &self.info.title;
        let mut body = format!(
            "<header><h1>{}</h1></header>\n<main>\n<section class=\"metrics\" id=\"metrics\">\n",
            escape(title)
        );
        for (id, label, v) in [
            ("miou", "mIoU", self.miou),
            ("pixel-accuracy", "pixel accuracy", self.pixel_accuracy),
        ] {
            body.push_str(&format!(
                "<div class=\"metric\" id=\"{id}\" data-value=\"{}\"><div class=\"value\">{}</div><div class=\"label\">{label}</div></div>\n",
                exact(v),
                pct(v)
            ));
        }
        body.push_str(&format!(
            "<div class=\"metric\" id=\"images\" data-value=\"{0}\"><div class=\"value\">{0}</div><div class=\"label\">images</div></div>\n</section>\n",
            self.images
        ));
        body.push_str(&format!(
            "<section>\n<h2>Run</h2>\n{}</section>\n",
            facts_html(&self.info)
        ));
        body.push_str(&self.iou_chart());
        body.push_str(&self.heatmap());
        body.push_str(&self.worst_html(page_dir, images)?);
        body.push_str(&failed_html(&self.failed));
        body.push_str("</main>\n");
        Ok(page(title, &body, SCRIPT))
    }

    /// Write `dir/report.html`; returns its path.
    pub fn write(&self, dir: &Path, images: Images) -> Result<PathBuf> {
        write_page(dir, &self.html(dir, images)?)
    }

    /// Per-class IoU as horizontal bars, best first (undefined last).
    fn iou_chart(&self) -> String {
        let mut order: Vec<usize> = (0..self.classes.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (self.classes[a].iou, self.classes[b].iou);
            y.unwrap_or(-1.0)
                .total_cmp(&x.unwrap_or(-1.0))
                .then(a.cmp(&b))
        });
        let (row, name_w, bar_w) = (18u32, 160u32, 420u32);
        let h = row * order.len() as u32 + 24;
        let mut out = format!(
            "<section>\n<h2>IoU per class</h2>\n<svg id=\"iou-chart\" role=\"img\" aria-label=\"IoU per class\" width=\"{}\" height=\"{h}\" viewBox=\"0 0 {0} {h}\">\n",
            name_w + bar_w + 60
        );
        for (i, &k) in order.iter().enumerate() {
            let c = &self.classes[k];
            let y = 4 + row * i as u32;
            let w = c.iou.map_or(0.0, |v| v * f64::from(bar_w));
            out.push_str(&format!(
                "<g class=\"bar\" data-class=\"{}\" data-value=\"{}\"><title>{}: IoU {}</title>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{name_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\" stroke=\"#00000055\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{}</text></g>\n",
                escape(&c.name),
                exact(c.iou),
                escape(&c.name),
                pct(c.iou),
                name_w - 6,
                y + 12,
                escape(&c.name),
                row - 4,
                css_color(k as u16),
                f64::from(name_w) + w + 4.0,
                y + 12,
                pct(c.iou),
            ));
        }
        let x = |f: f64| f64::from(name_w) + f * f64::from(bar_w);
        out.push_str(&format!(
            "<line x1=\"{0}\" x2=\"{0}\" y1=\"0\" y2=\"{h}\" stroke=\"#888\"/><text x=\"{1:.1}\" y=\"{2}\" text-anchor=\"end\">100%</text>\n</svg>\n</section>\n",
            name_w,
            x(1.0),
            h - 4
        ));
        out
    }

    /// The confusion matrix, each row divided by its sum; counts in each
    /// cell's `<title>` and in a table below.
    fn heatmap(&self) -> String {
        let n = self.confusion.len();
        let longest = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(4);
        // room for the column names, written at 60°
        let (cell, left, top) = (24u32, 160u32, (16 + 6 * longest as u32).min(150));
        let size = (left + cell * n as u32 + 10, top + cell * n as u32 + 10);
        let mut out = format!(
            "<section>\n<h2>Confusion matrix <span class=\"count\">rows: ground truth, columns: prediction, each row divided by its sum</span></h2>\n\
             <svg id=\"confusion\" role=\"img\" aria-label=\"confusion matrix\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {0} {1}\">\n",
            size.0, size.1
        );
        let name = |k: usize| self.classes.get(k).map_or("?", |c| c.name.as_str());
        for k in 0..n {
            let c = top + cell * k as u32 + cell / 2;
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<text transform=\"translate({},{}) rotate(-60)\">{}</text>\n",
                left - 6,
                c + 4,
                escape(name(k)),
                left + cell * k as u32 + cell / 2,
                top - 6,
                escape(name(k))
            ));
        }
        for g in 0..n {
            let total: u64 = (0..n).map(|p| self.confusion.get(g, p)).sum();
            for p in 0..n {
                let count = self.confusion.get(g, p);
                let share = if total > 0 {
                    count as f64 / total as f64
                } else {
                    0.0
                };
                // white → deep blue
                let t = share.sqrt();
                let ch = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
                out.push_str(&format!(
                    "<rect class=\"cell\" data-gt=\"{g}\" data-pred=\"{p}\" data-count=\"{count}\" x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"#{:02x}{:02x}{:02x}\" stroke=\"#e4e6ea\">\
                     <title>{} → {}: {count} pixels ({:.1}% of the row)</title></rect>\n",
                    left + cell * p as u32,
                    top + cell * g as u32,
                    ch(255.0, 23.0),
                    ch(255.0, 63.0),
                    ch(255.0, 160.0),
                    escape(name(g)),
                    escape(name(p)),
                    share * 100.0
                ));
            }
        }
        out.push_str("</svg>\n<details><summary>counts</summary>\n<table class=\"counts\" id=\"confusion-counts\">\n<thead><tr><th>gt \\ pred</th>");
        for p in 0..n {
            out.push_str(&format!("<th class=\"num\">{}</th>", escape(name(p))));
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for g in 0..n {
            out.push_str(&format!("<tr><th>{}</th>", escape(name(g))));
            for p in 0..n {
                out.push_str(&format!(
                    "<td class=\"num\">{}</td>",
                    self.confusion.get(g, p)
                ));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n</details>\n</section>\n");
        out
    }

    fn worst_html(&self, page_dir: &Path, images: Images) -> Result<String> {
        let mut out = String::from(
            "<section id=\"worst\">\n<h2>Worst images <span class=\"count\">by per-image mIoU; overlay | ground truth | image</span>\
             <label class=\"count\"><input type=\"checkbox\" id=\"full\"> full size</label></h2>\n",
        );
        for w in &self.worst {
            out.push_str(&format!(
                "<div class=\"worst\" data-image=\"{}\" data-value=\"{}\"><h3>{} <span class=\"count\">mIoU {}</span></h3><div class=\"triplet\">\n",
                escape(&w.id),
                exact(w.miou),
                escape(&w.id),
                pct(w.miou)
            ));
            for (what, file) in [
                ("overlay", &w.overlay),
                ("ground truth", &w.truth),
                ("image", &w.image),
            ] {
                out.push_str(&format!(
                    "<figure><img class=\"shot\" loading=\"lazy\" src=\"{}\" alt=\"{what} of {}\"><figcaption>{what}</figcaption></figure>\n",
                    escape(&image_src(file, page_dir, images)?),
                    escape(&w.id)
                ));
            }
            out.push_str("</div></div>\n");
        }
        if self.worst.is_empty() {
            out.push_str("<p>No image was evaluated.</p>\n");
        }
        out.push_str("</section>\n");
        Ok(out)
    }
}

/// The `keep` worst images seen so far, by per-image mIoU (an undefined
/// one counts as worst), ties by order of arrival.
#[derive(Debug, Clone)]
pub struct WorstSet<T> {
    keep: usize,
    entries: Vec<(f64, usize, T)>,
    seen: usize,
}

impl<T> WorstSet<T> {
    /// An empty set that keeps `keep` entries.
    pub fn new(keep: usize) -> WorstSet<T> {
        WorstSet {
            keep,
            entries: Vec::new(),
            seen: 0,
        }
    }

    fn key(miou: Option<f64>) -> f64 {
        miou.unwrap_or(-1.0)
    }

    /// Whether an image of this mIoU would be kept (so that its pictures
    /// are only drawn then).
    pub fn wants(&self, miou: Option<f64>) -> bool {
        self.entries.len() < self.keep
            || self
                .entries
                .last()
                .is_some_and(|last| Self::key(miou) < last.0)
    }

    /// Offer one image; returns the entry it pushed out, if any.
    pub fn offer(&mut self, miou: Option<f64>, value: T) -> Option<T> {
        let order = self.seen;
        self.seen += 1;
        if !self.wants(miou) {
            return Some(value);
        }
        let key = Self::key(miou);
        let at = self.entries.partition_point(|e| (e.0, e.1) <= (key, order));
        self.entries.insert(at, (key, order, value));
        if self.entries.len() > self.keep {
            return self.entries.pop().map(|e| e.2);
        }
        None
    }

    /// The entries, worst first.
    pub fn into_sorted(self) -> Vec<T> {
        self.entries.into_iter().map(|e| e.2).collect()
    }
}

/// Per-image mIoU: the mean IoU over the classes present in this image's
/// ground truth or prediction (as the dataset's, on one image).
pub fn image_miou(n: usize, gt: &[u8], pred: &[u8]) -> std::result::Result<Option<f64>, String> {
    let mut c = Confusion::new(n);
    c.add(gt, pred)?;
    Ok(c.miou())
}

/// Ground-truth labels (metric labels, [`IGNORE`] for unscored pixels) as
/// the `u16` map [`crate::render::overlay`] draws: ignored pixels become
/// `void`.
pub fn truth_labels(gt: &[u8]) -> Vec<u16> {
    gt.iter()
        .map(|&g| {
            if g == IGNORE {
                u16::from(IGNORE)
            } else {
                u16::from(g)
            }
        })
        .collect()
}

/// The ground truth drawn over `img` exactly as a prediction's overlay is.
pub fn truth_overlay(img: &RgbImage, gt: &[u8], class_names: &[String]) -> RgbImage {
    crate::render::overlay(img, &truth_labels(gt), class_names, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> EvalPage {
        let mut confusion = Confusion::new(3);
        confusion
            .add(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 0, 2])
            .unwrap();
        let iou = confusion.iou();
        let names = ["background", "cat", "dining <table>"];
        EvalPage {
            info: RunInfo::new("eval").fact("dataset", "/data/VOC2012"),
            images: 1,
            miou: confusion.miou(),
            pixel_accuracy: confusion.pixel_accuracy(),
            classes: names
                .iter()
                .enumerate()
                .map(|(k, n)| EvalClass {
                    label: k as u8,
                    name: n.to_string(),
                    iou: iou[k],
                })
                .collect(),
            confusion,
            worst: vec![],
            failed: vec![],
        }
    }

    #[test]
    fn numbers_are_written_as_the_json_writes_them() {
        let p = page();
        let html = p.html(Path::new("/o"), Images::Linked).unwrap();
        let miou = serde_json::to_string(&p.miou).unwrap();
        assert!(
            html.contains(&format!("id=\"miou\" data-value=\"{miou}\"")),
            "{html}"
        );
        assert!(html.contains("dining &lt;table&gt;"));
        assert!(!html.contains("dining <table>"));
        assert_eq!(html.matches("class=\"cell\"").count(), 9);
        assert!(html.contains("data-count=\"2\"") || html.contains("data-count=\"1\""));
    }

    #[test]
    fn the_worst_set_keeps_the_lowest() {
        let mut w = WorstSet::new(2);
        for (i, m) in [Some(0.5), Some(0.1), None, Some(0.9), Some(0.1)]
            .into_iter()
            .enumerate()
        {
            w.offer(m, i);
        }
        assert_eq!(w.into_sorted(), [2, 1]);
        assert!(!WorstSet::<u8>::new(0).wants(None));
    }
}
