//! HTML reports of a run: `segment --report` and `eval --report` write one self-contained page, `report.html`, that needs no network.
//!
//! The page carries its CSS and script inline (plain files compiled in
//! with `include_str!`, no build step). Images are referenced relative to
//! the page ([`Images::Linked`]: the page and the run's PNGs move
//! together), or inlined as base64 `data:` URIs ([`Images::Inline`]: one
//! file that can be mailed, larger). Every front-end that writes a run's
//! files can write its page through the same code:
//!
//! * [`segment`]: a grid of every image (overlay, classes with colour
//!   swatches and pixel fractions, the explanation on request), paged by a
//!   small script over a compact JSON array embedded in the page, so
//!   10,000 images stay a few megabytes; the inputs that failed, with
//!   their messages;
//! * [`eval`]: mIoU and pixel accuracy, a per-class IoU bar chart and a
//!   row-normalised confusion heatmap (inline SVG), and the worst images
//!   as overlay | ground truth | image.
//!
//! Text reaches the page only through [`escape`] (HTML) and [`script_json`]
//! (JSON inside `<script>`).

pub mod eval;
pub mod segment;

use std::path::Path;

use base64::Engine as _;

use crate::query::EnginePolicy;
use crate::segmenter::{ClassChoice, PlanReport};
use crate::{Error, Query, Result};

/// The page's file name in the output folder.
pub const REPORT_HTML: &str = "report.html";

/// The stylesheet every report page inlines.
const CSS: &str = include_str!("assets/report.css");

/// How a page references its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Images {
    /// By a URL relative to the page (the files sit beside it).
    #[default]
    Linked,
    /// As base64 `data:` URIs inside the page.
    Inline,
}

/// The run's facts shown at the top of a page, as label/value pairs, in
/// order (bank, classes, encoders with fingerprints, engine, windows,
/// timings, tool version, …).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    /// The page's title.
    pub title: String,
    /// `(label, value)` rows.
    pub facts: Vec<(String, String)>,
}

impl RunInfo {
    /// An empty list under `title`.
    pub fn new(title: impl Into<String>) -> RunInfo {
        RunInfo {
            title: title.into(),
            facts: Vec::new(),
        }
    }

    /// Add one fact.
    pub fn fact(mut self, label: impl Into<String>, value: impl Into<String>) -> RunInfo {
        self.facts.push((label.into(), value.into()));
        self
    }

    /// The facts of a query over `bank` as [`Segmenter::prepare`] planned
    /// it: bank, classes, encoders with fingerprints, engine (asked for and
    /// picked per encoder), windows, label ids, pre-filter; then the tool
    /// version `tool`.
    ///
    /// [`Segmenter::prepare`]: crate::Segmenter::prepare
    pub fn for_query(
        title: impl Into<String>,
        bank: &Path,
        query: &Query,
        plan: &PlanReport,
        tool: &str,
    ) -> RunInfo {
        let classes = match &query.classes {
            ClassChoice::All => "all classes of the bank".to_string(),
            ClassChoice::Named(v) => v.join(", "),
        };
        let asked = match query.engine {
            EnginePolicy::Auto => "auto".to_string(),
            EnginePolicy::Fixed(m) => m.name().to_string(),
        };
        let picked: Vec<String> = plan
            .encoders
            .iter()
            .map(|e| {
                let m = e.matching.map_or("per image (pre-filter)", |m| m.name());
                format!("{}: {m}", e.name)
            })
            .collect();
        let w = &query.windows;
        let sizes: Vec<String> = w.sizes.iter().map(u32::to_string).collect();
        let mut info = RunInfo::new(title)
            .fact("bank", bank.display().to_string())
            .fact("classes", classes);
        for e in &plan.encoders {
            info = info.fact(
                "encoder",
                format!("{} (fingerprint {})", e.name, e.fingerprint),
            );
        }
        info = info
            .fact("engine", format!("{asked} → {}", picked.join(", ")))
            .fact(
                "windows",
                format!(
                    "short side {}, windows {} at stride {}{}",
                    w.short_side,
                    sizes.join(", "),
                    w.stride,
                    if w.include_whole {
                        ", plus the whole image"
                    } else {
                        ""
                    }
                ),
            )
            .fact("label ids", query.label_ids.name());
        if let Some(p) = &query.prefilter {
            info = info.fact(
                "pre-filter",
                format!("{} (top {})", p.clip_dir.display(), p.topk),
            );
        }
        info.fact("tool", format!("ovdiff-bank {tool}"))
    }
}

/// `s` with `&`, `<`, `>`, `"` and `'` replaced by entities: safe in text
/// and in quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value as JSON that can sit inside `<script type="application/json">`:
/// `<`, `>` and `&` (only ever inside JSON strings) written as `\u00XX`, so
/// that no `</script>` or `<!--` can end the element early.
pub fn script_json<T: serde::Serialize>(value: &T) -> Result<String> {
    let json = serde_json::to_string(value)
        .map_err(|e| Error::Invalid(format!("cannot encode the report's data: {e}")))?;
    Ok(json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026"))
}

/// A relative path as a URL path: every byte but RFC 3986's unreserved
/// ones and `/` percent-encoded (so `#`, `?`, `%` and spaces in file names
/// keep working).
pub fn url_path(rel: &str) -> String {
    let mut out = String::with_capacity(rel.len());
    for b in rel.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `src` of an image file: its URL relative to `page_dir`
/// ([`Images::Linked`]), or its bytes as a `data:` URI.
pub fn image_src(file: &Path, page_dir: &Path, images: Images) -> Result<String> {
    match images {
        Images::Linked => {
            let rel = file.strip_prefix(page_dir).unwrap_or(file);
            Ok(url_path(&rel.to_string_lossy()))
        }
        Images::Inline => {
            let bytes = std::fs::read(file)
                .map_err(|e| Error::io("reading an image for the report", file, e))?;
            Ok(data_uri(&bytes, mime_of(file)))
        }
    }
}

/// `bytes` as a base64 `data:` URI of type `mime`.
pub fn data_uri(bytes: &[u8], mime: &str) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn mime_of(file: &Path) -> &'static str {
    match file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "image/png",
    }
}

/// A label's colour as CSS `#rrggbb` (the overlay's colour for it).
pub fn css_color(label: u16) -> String {
    let [r, g, b] = crate::render::display_color(label);
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// The page around `body`: doctype, title, inline CSS, and `script`
/// (inline JavaScript) at the end.
fn page(title: &str, body: &str, script: &str) -> String {
    let mut out = String::with_capacity(body.len() + CSS.len() + script.len() + 512);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    // No favicon request (a file:// page has none to fetch).
    out.push_str("<link rel=\"icon\" href=\"data:,\">\n");
    out.push_str(&format!("<title>{}</title>\n<style>\n", escape(title)));
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n");
    out.push_str(body);
    if !script.is_empty() {
        out.push_str("<script>\n");
        out.push_str(script);
        out.push_str("</script>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// The run facts as a definition list.
fn facts_html(info: &RunInfo) -> String {
    let mut out = String::from("<dl class=\"facts\" id=\"facts\">\n");
    for (k, v) in &info.facts {
        out.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", escape(k), escape(v)));
    }
    out.push_str("</dl>\n");
    out
}

/// Write `html` as `dir/report.html`, atomically; returns its path.
fn write_page(dir: &Path, html: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(REPORT_HTML);
    ovdiff_core::atomic::write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_text_and_attributes() {
        assert_eq!(
            escape(r#"<a href="x">Tom & Jerry's</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn script_json_cannot_close_its_element() {
        let s = script_json(&["</script><!-- & >"]).unwrap();
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('&'),
            "{s}"
        );
        let back: Vec<String> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, ["</script><!-- & >"]);
    }

    #[test]
    fn urls_and_data_uris() {
        assert_eq!(url_path("a b/#1?.png"), "a%20b/%231%3F.png");
        assert_eq!(data_uri(b"hi", "image/png"), "data:image/png;base64,aGk=");
        assert_eq!(
            image_src(Path::new("/o/x y.png"), Path::new("/o"), Images::Linked).unwrap(),
            "x%20y.png"
        );
        assert_eq!(css_color(1), "#00beff");
    }
}
