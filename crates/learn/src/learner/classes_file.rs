//! Classes files: many classes to add in one run, one per line.
//!
//! ```text
//! # CLASS [IMAGES_DIR] [stuff]
//! giraffe /data/giraffe
//! sky /data/sky stuff
//! zebra
//! ```
//!
//! A class without a folder is sampled with the generator; `#` starts a
//! comment line. A line holding a tab is split on tabs only, so that a name
//! may hold spaces: `dining table<TAB>/data/dining table[<TAB>stuff]`.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One line of a classes file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLine {
    /// The class name.
    pub class: String,
    /// Its support folder, if any.
    pub images: Option<PathBuf>,
    /// A stuff class.
    pub stuff: bool,
}

/// Parse a classes file: `CLASS [IMAGES_DIR] [stuff]` per line, `#` comments;
/// a line with a tab is split on tabs (`NAME<TAB>DIR`), so names and folders
/// may hold spaces.
/// A class listed twice, a line of more fields, and a file without a
/// class are errors.
pub fn parse_classes_file(text: &str) -> Result<Vec<ClassLine>> {
    let mut out: Vec<ClassLine> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields: Vec<&str> = if line.contains('\t') {
            line.split('\t')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .collect()
        } else {
            line.split_whitespace().collect()
        };
        let stuff = fields.len() > 1 && fields.last() == Some(&"stuff");
        if stuff {
            fields.pop();
        }
        let (class, images) = match fields.as_slice() {
            [c] => (c.to_string(), None),
            [c, dir] => (c.to_string(), Some(PathBuf::from(dir))),
            _ => {
                return Err(Error::Invalid(format!(
                    "line {}: expected `CLASS [IMAGES_DIR] [stuff]`, got `{line}`",
                    n + 1
                )))
            }
        };
        if out.iter().any(|l| l.class == class) {
            return Err(Error::Invalid(format!(
                "line {}: class `{class}` is listed twice",
                n + 1
            )));
        }
        out.push(ClassLine {
            class,
            images,
            stuff,
        });
    }
    if out.is_empty() {
        return Err(Error::Invalid("the classes file lists no class".into()));
    }
    Ok(out)
}

/// Read and parse the classes file at `path` (see [`parse_classes_file`]).
pub fn read_classes_file(path: &Path) -> Result<Vec<ClassLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_classes_file(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_class_folder_and_stuff() {
        let lines =
            parse_classes_file("# name folder [stuff]\n\nred /d/red\n sky /d/sky stuff \nzebra\n")
                .unwrap();
        assert_eq!(
            lines,
            [
                ClassLine {
                    class: "red".into(),
                    images: Some("/d/red".into()),
                    stuff: false
                },
                ClassLine {
                    class: "sky".into(),
                    images: Some("/d/sky".into()),
                    stuff: true
                },
                ClassLine {
                    class: "zebra".into(),
                    images: None,
                    stuff: false
                },
            ]
        );
        // a lone `stuff` is a class name
        assert_eq!(parse_classes_file("stuff").unwrap()[0].class, "stuff");
    }

    #[test]
    fn tab_separated_lines_allow_spaces() {
        let lines =
            parse_classes_file("dining table\t/d/dining table\npotted plant\t/d/p\tstuff\n")
                .unwrap();
        assert_eq!(lines[0].class, "dining table");
        assert_eq!(lines[0].images, Some("/d/dining table".into()));
        assert!(!lines[0].stuff);
        assert_eq!(lines[1].class, "potted plant");
        assert!(lines[1].stuff);
    }

    #[test]
    fn bad_files_are_errors_that_name_the_line() {
        let err = |t: &str| parse_classes_file(t).unwrap_err().to_string();
        assert_eq!(
            err("a\na b c d\n"),
            "line 2: expected `CLASS [IMAGES_DIR] [stuff]`, got `a b c d`"
        );
        assert_eq!(err("a\n# c\na\n"), "line 3: class `a` is listed twice");
        assert_eq!(err("# only\n\n"), "the classes file lists no class");
        let missing = read_classes_file(Path::new("/no/such/classes.txt")).unwrap_err();
        assert_eq!(missing.to_string(), "reading /no/such/classes.txt");
    }
}
