//! The page of a `segment` run: run facts, then a grid of every image (overlay, classes with swatches and pixel fractions, explanation on request), paged in the browser, and the inputs that failed.
//!
//! The rows travel as one compact JSON array inside the page
//! (`<script type="application/json" id="report-data">`) and the page's
//! script shows one page of them at a time, so a run of 10,000 images
//! stays a few megabytes and opens at once; every `<img>` loads lazily.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    css_color, escape, facts_html, image_src, page, script_json, write_page, Images, RunInfo,
};
use crate::segmentation::ImageReport;
use crate::Result;

/// The page's script (paging, filter, full-size view).
const SCRIPT: &str = include_str!("assets/segment.js");

/// One segmented image on the page.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRow {
    /// The input, as the run names it.
    pub image: String,
    /// Its overlay PNG.
    pub overlay: PathBuf,
    /// Its explain sheet, when written.
    pub explain: Option<PathBuf>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `(label, class, fraction)` per class found.
    pub classes: Vec<(u16, String, f64)>,
    /// The share of background pixels.
    pub background_fraction: f64,
    /// Milliseconds the image took (`timings_ms.total`).
    pub total_ms: f64,
}

impl From<&ImageReport> for SegmentRow {
    fn from(r: &ImageReport) -> SegmentRow {
        SegmentRow {
            image: r.image.display().to_string(),
            overlay: r.overlay.clone(),
            explain: r.explain.clone(),
            width: r.width,
            height: r.height,
            classes: r
                .classes
                .iter()
                .map(|c| (c.label, c.name.clone(), c.fraction))
                .collect(),
            background_fraction: r.background_fraction,
            total_ms: r.timings_ms.get("total").copied().unwrap_or(0.0),
        }
    }
}

/// An input that failed, with its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failed {
    /// The input file.
    pub image: String,
    /// Why it failed.
    pub error: String,
}

/// Everything a `segment` run's page shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentPage {
    /// The run's facts.
    pub info: RunInfo,
    /// The segmented images, in input order.
    pub rows: Vec<SegmentRow>,
    /// The inputs that failed.
    pub failed: Vec<Failed>,
}

/// The embedded data: a class table and compact rows.
#[derive(Serialize)]
struct Data<'a> {
    /// `[name, colour]` per class, indexed by the rows.
    classes: Vec<(&'a str, String)>,
    /// `[image, overlay src, explain src or "", width, height,
    /// [[class index, fraction], …], background fraction, ms]`.
    rows: Vec<RowData<'a>>,
}

type RowData<'a> = (
    &'a str,
    String,
    String,
    u32,
    u32,
    Vec<(usize, f64)>,
    f64,
    f64,
);

impl SegmentPage {
    /// The page, its images referenced relative to `page_dir` or inlined.
    pub fn html(&self, page_dir: &Path, images: Images) -> Result<String> {
        let mut index: BTreeMap<(u16, &str), usize> = BTreeMap::new();
        for r in &self.rows {
            for (label, name, _) in &r.classes {
                let next = index.len();
                index.entry((*label, name.as_str())).or_insert(next);
            }
        }
        let mut table: Vec<(usize, &str, String)> = index
            .iter()
            .map(|(&(label, name), &i)| (i, name, css_color(label)))
            .collect();
        table.sort_by_key(|c| c.0);
        let classes = table.into_iter().map(|(_, n, c)| (n, c)).collect();
        let mut rows = Vec::with_capacity(self.rows.len());
        for r in &self.rows {
            let explain = match &r.explain {
                Some(p) => image_src(p, page_dir, images)?,
                None => String::new(),
            };
            rows.push((
                r.image.as_str(),
                image_src(&r.overlay, page_dir, images)?,
                explain,
                r.width,
                r.height,
                r.classes
                    .iter()
                    .map(|(label, name, f)| (index[&(*label, name.as_str())], *f))
                    .collect(),
                r.background_fraction,
                (r.total_ms * 10.0).round() / 10.0,
            ));
        }
        let data = script_json(&Data { classes, rows })?;
        let mut body = format!(
            "<header><h1>{}</h1></header>\n<main>\n<section>\n<h2>Run</h2>\n{}</section>\n",
            escape(&self.info.title),
            facts_html(&self.info)
        );
        body.push_str(&format!(
            "<section>\n<h2>Images <span class=\"count\" id=\"image-count\">{} segmented, {} failed</span></h2>\n",
            self.rows.len(),
            self.failed.len()
        ));
        body.push_str(
            "<nav class=\"pager\" id=\"pager\">\
             <button type=\"button\" id=\"prev\">&larr; previous</button>\
             <span id=\"page-label\"></span>\
             <button type=\"button\" id=\"next\">next &rarr;</button>\
             <label>filter <input type=\"search\" id=\"filter\" placeholder=\"image or class\"></label>\
             <label><input type=\"checkbox\" id=\"full\"> full size</label>\
             </nav>\n<div class=\"grid\" id=\"grid\"></div>\n\
             <noscript><p>The image grid needs JavaScript; the run's files are beside this page.</p></noscript>\n</section>\n",
        );
        body.push_str(&failed_html(&self.failed));
        body.push_str("</main>\n");
        body.push_str(&format!(
            "<script type=\"application/json\" id=\"report-data\">{data}</script>\n"
        ));
        Ok(page(&self.info.title, &body, SCRIPT))
    }

    /// Write `dir/report.html`; returns its path.
    pub fn write(&self, dir: &Path, images: Images) -> Result<PathBuf> {
        write_page(dir, &self.html(dir, images)?)
    }
}

/// The failed inputs as a table (none: nothing).
pub(super) fn failed_html(failed: &[Failed]) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "<section>\n<h2>Errors <span class=\"count\">{}</span></h2>\n<table class=\"errors\" id=\"errors\">\n<thead><tr><th>file</th><th>error</th></tr></thead>\n<tbody>\n",
        failed.len()
    );
    for f in failed {
        out.push_str(&format!(
            "<tr><td class=\"file\">{}</td><td class=\"message\">{}</td></tr>\n",
            escape(&f.image),
            escape(&f.error)
        ));
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize) -> SegmentRow {
        SegmentRow {
            image: format!("photos/2024/img_{i:05}.jpg"),
            overlay: PathBuf::from(format!("/out/img_{i:05}.overlay.png")),
            explain: None,
            width: 500,
            height: 375,
            classes: vec![
                (1, "person".into(), 0.23456789012345),
                (2, "cat".into(), 0.1234567890123),
                (3, "cup".into(), 0.0123456789012),
            ],
            background_fraction: 0.6296296296,
            total_ms: 1234.5678,
        }
    }

    #[test]
    fn ten_thousand_images_stay_under_five_megabytes() {
        let page = SegmentPage {
            info: RunInfo::new("segment").fact("bank", "team"),
            rows: (0..10_000).map(row).collect(),
            failed: vec![],
        };
        let html = page.html(Path::new("/out"), Images::Linked).unwrap();
        assert!(html.len() < 5_000_000, "{} bytes", html.len());
        assert_eq!(html.matches("img_09999.overlay.png").count(), 1);
        // the classes are listed once, the rows refer to them
        assert_eq!(html.matches("\"person\"").count(), 1);
    }

    #[test]
    fn names_and_errors_are_escaped() {
        let mut r = row(0);
        r.image = "<b>evil</b>.jpg".into();
        r.classes = vec![(1, "</script><script>alert(1)</script>".into(), 0.5)];
        let page = SegmentPage {
            info: RunInfo::new("a <run>"),
            rows: vec![r],
            failed: vec![Failed {
                image: "bad <1>.jpg".into(),
                error: "not an image & \"corrupt\"".into(),
            }],
        };
        let html = page.html(Path::new("/out"), Images::Linked).unwrap();
        assert!(!html.contains("<b>evil"));
        assert!(!html.contains("</script><script>alert"));
        assert!(html.contains("<title>a &lt;run&gt;</title>"));
        assert!(html.contains("bad &lt;1&gt;.jpg"));
        assert!(html.contains("not an image &amp; &quot;corrupt&quot;"));
        assert!(html.contains("img_00000.overlay.png"));
    }

    #[test]
    fn inline_images_are_data_uris() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("q.overlay.png");
        std::fs::write(&png, b"\x89PNG fake").unwrap();
        let mut r = row(0);
        r.overlay = png;
        let page = SegmentPage {
            info: RunInfo::new("segment"),
            rows: vec![r],
            failed: vec![],
        };
        let html = page.html(dir.path(), Images::Inline).unwrap();
        assert!(html.contains("data:image/png;base64,iVBORyBmYWtl"));
        assert!(!html.contains("q.overlay.png"));
    }
}
