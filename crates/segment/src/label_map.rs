//! What every label value of a query's label PNGs means: [`ClassLabels`], value → class name (0 is background), and how a query numbers its classes ([`LabelIds`]).
//!
//! Every front-end writes the same map: `segment` puts it in each
//! `NAME.json` (`label_map`) and in the run's `labels.json` and
//! `labels.txt`; the service and the Python package return it with each
//! segmentation.
//!
//! * [`LabelIds::Query`] (the default): the classes are numbered 1..K in
//!   query order (`--classes a,b`: a is 1, b is 2; every class of the
//!   bank: by name);
//! * [`LabelIds::Bank`]: each class has the stable id the bank recorded for
//!   it (`ovdiff_store::bank::assign_label_ids`), the same in every run of
//!   that bank whatever the query's order, kept across `add --replace`,
//!   `remove` and `rename`. Values may then have gaps.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The name of label 0.
pub const BACKGROUND_NAME: &str = "background";

/// The run's label map as JSON, in the output folder.
pub const LABELS_JSON: &str = "labels.json";

/// The run's label map as text, one name per line (line k, from 0, is
/// label k), in the output folder.
pub const LABELS_TXT: &str = "labels.txt";

/// How a query numbers its classes in label maps (`--label-ids`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelIds {
    /// 1..K in query order.
    #[default]
    Query,
    /// The stable ids the bank recorded per class.
    Bank,
}

impl LabelIds {
    /// Its name: `query` or `bank`.
    pub fn name(self) -> &'static str {
        match self {
            LabelIds::Query => "query",
            LabelIds::Bank => "bank",
        }
    }
}

/// Value → class name for every label a query's label maps can hold, 0
/// (background) included, sorted by value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLabels {
    /// `(value, name)`, by value, starting with `(0, "background")`.
    entries: Vec<(u16, String)>,
}

impl ClassLabels {
    /// The map of `names` numbered 1..K in this order.
    pub fn in_order(names: &[String]) -> Result<ClassLabels> {
        let values = (1..=names.len())
            .map(|v| {
                u16::try_from(v).map_err(|_| {
                    Error::Invalid(format!(
                        "{} classes are more than a label map holds (65,535)",
                        names.len()
                    ))
                })
            })
            .collect::<Result<Vec<u16>>>()?;
        ClassLabels::new(names.iter().cloned().zip(values))
    }

    /// The map of these `(name, value)` pairs: values from 1, each used once.
    pub fn new(classes: impl IntoIterator<Item = (String, u16)>) -> Result<ClassLabels> {
        let mut entries = vec![(0u16, BACKGROUND_NAME.to_string())];
        for (name, value) in classes {
            if value == 0 {
                return Err(Error::Invalid(format!(
                    "class {name:?} has label 0, which is background"
                )));
            }
            entries.push((value, name));
        }
        entries.sort();
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Invalid(format!(
                "classes {:?} and {:?} have the same label {}",
                w[0].1, w[1].1, w[0].0
            )));
        }
        Ok(ClassLabels { entries })
    }

    /// `(value, name)` by value, background first.
    pub fn entries(&self) -> &[(u16, String)] {
        &self.entries
    }

    /// The name of `value`, if it is used.
    pub fn name(&self, value: u16) -> Option<&str> {
        self.entries
            .binary_search_by_key(&value, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1.as_str())
    }

    /// The value of the class `name`.
    pub fn value(&self, name: &str) -> Option<u16> {
        self.entries.iter().find(|e| e.1 == name).map(|e| e.0)
    }

    /// The highest value used (0 for a map of background only).
    pub fn max_value(&self) -> u16 {
        self.entries.last().map_or(0, |e| e.0)
    }

    /// The names of values 1..=[`max_value`](Self::max_value), at index
    /// `value - 1`; unused values have an empty name (what the renderers
    /// take).
    pub fn names_by_value(&self) -> Vec<String> {
        let mut out = vec![String::new(); usize::from(self.max_value())];
        for (v, name) in &self.entries[1..] {
            out[usize::from(*v) - 1] = name.clone();
        }
        out
    }

    /// As JSON's object: `{"0": "background", "1": "cat", …}`.
    pub fn to_map(&self) -> BTreeMap<u16, String> {
        self.entries.iter().cloned().collect()
    }

    /// `labels.txt`: line k (from 0) is label k's name; an unused value's
    /// line is empty.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(BACKGROUND_NAME);
        out.push('\n');
        for name in self.names_by_value() {
            out.push_str(&name);
            out.push('\n');
        }
        out
    }

    /// Write [`LABELS_JSON`] and [`LABELS_TXT`] into `dir`, atomically.
    pub fn write_files(&self, dir: &Path, ids: LabelIds) -> Result<()> {
        let json = serde_json::to_vec_pretty(&serde_json::json!({
            "label_ids": ids.name(),
            "labels": self.to_map(),
        }))
        .map_err(|e| Error::Invalid(format!("cannot encode the label map: {e}")))?;
        ovdiff_core::atomic::write_atomic(&dir.join(LABELS_JSON), &json)?;
        ovdiff_core::atomic::write_atomic(&dir.join(LABELS_TXT), self.to_text().as_bytes())?;
        Ok(())
    }
}

impl Serialize for ClassLabels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_order_numbers_from_one() {
        let m = ClassLabels::in_order(&["cat".into(), "cup".into()]).unwrap();
        assert_eq!(m.name(0), Some("background"));
        assert_eq!(m.name(2), Some("cup"));
        assert_eq!(m.value("cat"), Some(1));
        assert_eq!(m.to_text(), "background\ncat\ncup\n");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"0":"background","1":"cat","2":"cup"}"#
        );
    }

    #[test]
    fn bank_ids_may_have_gaps_but_never_repeat() {
        let m = ClassLabels::new([("cup".to_string(), 5), ("cat".to_string(), 2)]).unwrap();
        assert_eq!(m.max_value(), 5);
        assert_eq!(m.names_by_value(), ["", "cat", "", "", "cup"]);
        assert_eq!(m.to_text(), "background\n\ncat\n\n\ncup\n");
        assert!(ClassLabels::new([("a".to_string(), 1), ("b".to_string(), 1)]).is_err());
        assert!(ClassLabels::new([("a".to_string(), 0)]).is_err());
    }
}
