//! The names of the files a run of `segment` writes per image, chosen for all inputs at once so that no input's files overwrite another's.
//!
//! Each image gets `NAME.png` (labels), `NAME.overlay.png`, `NAME.json`
//! and, with explanations, `NAME.explain.png` ([`output_files`]).
//! [`output_stems`] picks every input's `NAME` before anything is written:
//!
//! 1. `NAME` is the file name without its extension (`photo` for
//!    `photo.jpg`);
//! 2. when two inputs would write a file of the same name (`photo.jpg` and
//!    `photo.png`; `x.png`, whose overlay is `x.overlay.png`, and
//!    `x.overlay.png`, whose labels are too), each of them keeps its
//!    extension instead: `photo.jpg`, `photo.png`, `x.png`, `x.overlay.png`;
//! 3. those that still clash (the same file name in different folders:
//!    `a/x.png`, `b/x.png`), or whose new name would clash with an input
//!    of rule 1, are numbered in input order: `x-1`, `x-2` (with `a/x.jpg`
//!    and `b/x.jpg` in the same run too: `x-3`, `x-4`), a number being
//!    skipped when its files would clash with another input's.
//!
//! An input whose plain name clashes with no other's keeps it, and no run
//! is refused. The rules depend only on the inputs' paths and order, so
//! every front-end that writes these files names them alike.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The label PNG's suffix after `NAME`.
pub const LABELS_SUFFIX: &str = ".png";
/// The overlay's suffix.
pub const OVERLAY_SUFFIX: &str = ".overlay.png";
/// The JSON report's suffix.
pub const REPORT_SUFFIX: &str = ".json";
/// The explain sheet's suffix.
pub const EXPLAIN_SUFFIX: &str = ".explain.png";
/// The suffix of the folder of per-class masks (`--masks png`).
pub const MASKS_SUFFIX: &str = ".masks";

/// Files a run writes once, not per image: an input whose files would
/// take one of these names keeps its extension in `NAME` (rule 2).
pub const RUN_FILES: [&str; 2] = [crate::label_map::LABELS_JSON, crate::label_map::LABELS_TXT];

/// The file of a class's mask inside `NAME.masks/`: `CLASS.png`, with
/// `/`, `\` and a leading `.` replaced by `_` so that it stays in the folder.
pub fn mask_file_name(class: &str) -> String {
    let mut name: String = class
        .chars()
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    format!("{name}.png")
}

/// The files written for one image named `stem`, in the order
/// [`Segmentation::write`](crate::Segmentation::write) writes them; with
/// `explain`, the explain sheet too.
pub fn output_files(stem: &str, explain: bool) -> Vec<String> {
    let mut v = vec![
        format!("{stem}{LABELS_SUFFIX}"),
        format!("{stem}{OVERLAY_SUFFIX}"),
    ];
    if explain {
        v.push(format!("{stem}{EXPLAIN_SUFFIX}"));
    }
    v.push(format!("{stem}{REPORT_SUFFIX}"));
    v
}

/// One `NAME` per input, in input order, such that no two inputs write a
/// file of the same name into one folder (the rules are in the module
/// docs). `explain`: whether explain sheets are written.
pub fn output_stems(inputs: &[PathBuf], explain: bool) -> Vec<String> {
    let plain: Vec<String> = inputs
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into())
        })
        .collect();
    // Rule 1 for every input, rule 2 for those that clash.
    let mut stems: Vec<Option<String>> = plain.iter().cloned().map(Some).collect();
    for i in clashing(&stems, explain) {
        stems[i] = Some(file_name(&inputs[i]));
    }
    // Rule 3 for rule-2 inputs that still clash with anyone (a rule-1
    // input keeps its name).
    let renamed: Vec<bool> = stems
        .iter()
        .zip(&plain)
        .map(|(s, p)| s.as_ref() != Some(p))
        .collect();
    loop {
        let bad: Vec<usize> = clashing(&stems, explain)
            .into_iter()
            .filter(|&i| renamed[i])
            .collect();
        if bad.is_empty() {
            break;
        }
        for i in bad {
            stems[i] = None;
        }
    }
    // Those left are numbered, avoiding every file already planned.
    let mut taken: HashSet<String> = stems
        .iter()
        .flatten()
        .flat_map(|s| output_files(s, explain))
        .chain(RUN_FILES.iter().map(|f| f.to_string()))
        .collect();
    let mut next: HashMap<String, usize> = HashMap::new();
    for i in 0..inputs.len() {
        if stems[i].is_some() {
            continue;
        }
        let k = next.entry(plain[i].clone()).or_insert(1);
        loop {
            let candidate = format!("{}-{k}", plain[i]);
            *k += 1;
            let files = output_files(&candidate, explain);
            if files.iter().all(|f| !taken.contains(f)) {
                taken.extend(files);
                stems[i] = Some(candidate);
                break;
            }
        }
    }
    stems
        .into_iter()
        .map(|s| s.expect("invariant: every input was named"))
        .collect()
}

/// The inputs (with a name) whose planned files clash with another's.
fn clashing(stems: &[Option<String>], explain: bool) -> BTreeSet<usize> {
    let mut owner: HashMap<String, usize> = RUN_FILES
        .iter()
        .map(|f| (f.to_string(), usize::MAX))
        .collect();
    let mut out = BTreeSet::new();
    for (i, s) in stems.iter().enumerate() {
        let Some(s) = s else { continue };
        for f in output_files(s, explain) {
            if let Some(&j) = owner.get(&f) {
                out.insert(i);
                if j != usize::MAX {
                    out.insert(j);
                }
            } else {
                owner.insert(f, i);
            }
        }
    }
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stems(paths: &[&str], explain: bool) -> Vec<String> {
        let v: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
        output_stems(&v, explain)
    }

    #[test]
    fn the_run_files_are_never_an_image_s() {
        assert_eq!(stems(&["labels.jpg", "q.png"], false), ["labels.jpg", "q"]);
        assert_eq!(mask_file_name("a/b"), "a_b.png");
        assert_eq!(mask_file_name(".."), "_..png");
    }

    #[test]
    fn inputs_without_a_clash_keep_their_plain_names() {
        assert_eq!(
            stems(&["in/q.jpg", "b/cat.png", "dog.jpeg"], true),
            ["q", "cat", "dog"]
        );
    }

    #[test]
    fn clashing_inputs_keep_their_extension() {
        assert_eq!(
            stems(&["x.png", "x.overlay.png", "y.png"], false),
            ["x.png", "x.overlay.png", "y"]
        );
        assert_eq!(
            stems(&["p/photo.jpg", "photo.png"], false),
            ["photo.jpg", "photo.png"]
        );
        // the explain sheet only clashes when it is written
        assert_eq!(
            stems(&["x.png", "x.explain.png"], false),
            ["x", "x.explain"]
        );
        assert_eq!(
            stems(&["x.png", "x.explain.png"], true),
            ["x.png", "x.explain.png"]
        );
    }

    #[test]
    fn the_same_name_in_two_folders_is_numbered_in_input_order() {
        assert_eq!(
            stems(&["b/x.png", "a/x.png", "c/x.jpg", "z.png"], false),
            ["x-1", "x-2", "x.jpg", "z"]
        );
        assert_eq!(
            stems(&["a/x.png", "a/x.jpg", "b/x.png", "b/x.jpg"], true),
            ["x-1", "x-2", "x-3", "x-4"]
        );
        assert_eq!(
            stems(&["a/x.png", "b/x.png", "c/x-1.png", "d/x-1.png"], false),
            ["x-1", "x-2", "x-1-1", "x-1-2"],
            "numbered names are numbered again"
        );
    }

    #[test]
    fn a_name_of_its_own_is_never_taken_by_a_renamed_input() {
        // `x-1.jpg` clashes with nobody: the numbering skips its name
        assert_eq!(
            stems(&["a/x.png", "b/x.png", "x-1.jpg"], false),
            ["x-2", "x-3", "x-1"]
        );
        // `x.png.png` keeps its name; `x.png` (clashing with x.overlay.png)
        // may not take it and is numbered
        assert_eq!(
            stems(&["x.overlay.png", "x.png.png", "x.png"], false),
            ["x.overlay.png", "x.png", "x-1"]
        );
    }

    proptest::proptest! {
        /// Any inputs built from clash-prone pieces: every planned file is
        /// distinct, and an input whose plain names clash with nothing keeps
        /// its plain name.
        #[test]
        fn planned_files_never_clash(
            picks in proptest::collection::vec((0usize..3, 0usize..4, 0usize..6, 0usize..3), 1..12),
            explain in proptest::bool::ANY,
        ) {
            let dirs = ["a", "b", "c"];
            let bases = ["x", "x-1", "x.overlay", "x.explain"];
            let mids = ["", "-1", "-2", ".png", ".json", ".overlay"];
            let exts = ["png", "jpg", "jpeg"];
            let mut inputs: Vec<PathBuf> = picks
                .iter()
                .map(|&(d, b, m, e)| PathBuf::from(format!("{}/{}{}.{}", dirs[d], bases[b], mids[m], exts[e])))
                .collect();
            inputs.dedup();
            let mut seen = std::collections::HashSet::new();
            inputs.retain(|p| seen.insert(p.clone()));
            let stems = output_stems(&inputs, explain);
            let files: Vec<String> = stems.iter().flat_map(|s| output_files(s, explain)).collect();
            let unique: BTreeSet<&String> = files.iter().collect();
            proptest::prop_assert_eq!(unique.len(), files.len());
            // plain-name files of all inputs, to find those that clash with nothing
            let plain: Vec<String> = inputs
                .iter()
                .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
                .collect();
            for (i, s) in stems.iter().enumerate() {
                let mine = output_files(&plain[i], explain);
                let alone = plain.iter().enumerate().filter(|&(j, _)| j != i).all(|(_, o)| {
                    output_files(o, explain).iter().all(|f| !mine.contains(f))
                });
                if alone {
                    proptest::prop_assert_eq!(s, &plain[i]);
                }
            }
        }
    }
}
