//! Resuming a run over an image collection: whether an image's outputs are already all there.
//!
//! [`Segmentation::write`](crate::Segmentation::write) writes every file of
//! an image atomically, and `NAME.json` last. So a present file is a
//! complete one, and a present `NAME.json` says that the files before it
//! were written too. An image counts as done ([`outputs_complete`]) when its
//! `NAME.json` reads back, names the same input, was written for the same
//! label map (the same classes, numbered alike), and every file this run
//! would write for it exists: the label PNG, the overlay, the explain sheet
//! when asked for, each class's mask PNG when asked for, and each class's
//! RLE in the report when asked for. Anything else (no report, a report of
//! another input or query, a file deleted since) means the image is
//! segmented again. The check reads one small JSON file per image; it
//! decodes no image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::label_map::ClassLabels;
use crate::outputs::{mask_file_name, output_files, MASKS_SUFFIX, REPORT_SUFFIX};
use crate::WriteOptions;

/// What a run expects of one image's outputs.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The input, as this run names it (`NAME.json`'s `image`).
    pub image: &'a Path,
    /// The query's label map (`NAME.json`'s `label_map`).
    pub label_map: &'a ClassLabels,
    /// Whether the query explains (an explain sheet is then written,
    /// unless `write` says not to).
    pub explain: bool,
    /// What is written per image.
    pub write: &'a WriteOptions,
}

/// The fields of `NAME.json` that decide whether it is complete.
#[derive(Debug, Deserialize)]
struct WrittenReport {
    image: PathBuf,
    label_map: BTreeMap<u16, String>,
    classes: Vec<WrittenClass>,
}

#[derive(Debug, Deserialize)]
struct WrittenClass {
    name: String,
    #[serde(default)]
    rle: Option<serde::de::IgnoredAny>,
}

/// Whether `out_dir` already holds every output of the image named `stem`
/// that this run would write (the rules are in the module docs).
pub fn outputs_complete(out_dir: &Path, stem: &str, expected: &Expected<'_>) -> bool {
    let Ok(bytes) = std::fs::read(out_dir.join(format!("{stem}{REPORT_SUFFIX}"))) else {
        return false;
    };
    let Ok(report) = serde_json::from_slice::<WrittenReport>(&bytes) else {
        return false;
    };
    if report.image != expected.image || report.label_map != expected.label_map.to_map() {
        return false;
    }
    let explain = expected.explain && expected.write.explain_sheet;
    let files_there = output_files(stem, explain)
        .iter()
        .all(|f| out_dir.join(f).is_file());
    let masks_there = !expected.write.mask_pngs
        || report.classes.iter().all(|c| {
            out_dir
                .join(format!("{stem}{MASKS_SUFFIX}"))
                .join(mask_file_name(&c.name))
                .is_file()
        });
    let rle_there = !expected.write.rle || report.classes.iter().all(|c| c.rle.is_some());
    files_there && masks_there && rle_there
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_report(dir: &Path, stem: &str, image: &str, classes: &str) {
        let json = format!(
            r#"{{"image": "{image}", "width": 2, "height": 2,
                "label_map": {{"0": "background", "1": "cat", "2": "cup"}},
                "classes": [{classes}]}}"#
        );
        std::fs::write(dir.join(format!("{stem}.json")), json).unwrap();
    }

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            let p = dir.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
    }

    #[test]
    fn complete_only_when_every_expected_file_of_the_same_input_and_query_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let map = ClassLabels::in_order(&["cat".into(), "cup".into()]).unwrap();
        let write = WriteOptions::default();
        let image = PathBuf::from("in/q.jpg");
        let exp = Expected {
            image: &image,
            label_map: &map,
            explain: false,
            write: &write,
        };
        assert!(!outputs_complete(d, "q", &exp), "nothing written yet");
        touch(d, &["q.png", "q.overlay.png"]);
        assert!(!outputs_complete(d, "q", &exp), "no report: not finished");
        write_report(d, "q", "in/q.jpg", r#"{"name": "cat", "label": 1}"#);
        assert!(outputs_complete(d, "q", &exp));

        // another input of the same name, another query: not this image's
        let other = PathBuf::from("other/q.jpg");
        assert!(!outputs_complete(
            d,
            "q",
            &Expected {
                image: &other,
                ..exp
            }
        ));
        let map3 = ClassLabels::in_order(&["cat".into(), "cup".into(), "dog".into()]).unwrap();
        assert!(!outputs_complete(
            d,
            "q",
            &Expected {
                label_map: &map3,
                ..exp
            }
        ));

        // options that write more
        assert!(!outputs_complete(
            d,
            "q",
            &Expected {
                explain: true,
                ..exp
            }
        ));
        touch(d, &["q.explain.png"]);
        assert!(outputs_complete(
            d,
            "q",
            &Expected {
                explain: true,
                ..exp
            }
        ));
        let masks = WriteOptions {
            mask_pngs: true,
            ..WriteOptions::default()
        };
        let with_masks = Expected {
            write: &masks,
            ..exp
        };
        assert!(!outputs_complete(d, "q", &with_masks));
        touch(d, &["q.masks/cat.png"]);
        assert!(outputs_complete(d, "q", &with_masks));
        let rle = WriteOptions {
            rle: true,
            ..WriteOptions::default()
        };
        let with_rle = Expected { write: &rle, ..exp };
        assert!(!outputs_complete(d, "q", &with_rle));
        write_report(
            d,
            "q",
            "in/q.jpg",
            r#"{"name": "cat", "rle": {"counts": "x"}}"#,
        );
        assert!(outputs_complete(d, "q", &with_rle));

        // a file removed since, or a damaged report
        std::fs::remove_file(d.join("q.overlay.png")).unwrap();
        assert!(!outputs_complete(d, "q", &exp));
        touch(d, &["q.overlay.png"]);
        std::fs::write(d.join("q.json"), b"{\"image\": ").unwrap();
        assert!(!outputs_complete(d, "q", &exp));
    }
}
