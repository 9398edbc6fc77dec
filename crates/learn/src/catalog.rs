//! What a bank holds, as front-ends list and show it: one row per class,
//! and the full description of one class (its record, prototypes per
//! encoder, support images and build statistics).

use std::path::Path;

use serde::Serialize;

use ovdiff_store::bank::{
    Bank, BuildStats, ClassRecord, ClassSource, EncoderInfo, PrototypeCounts,
};

use ovdiff_store::class_store::ClassStore;

use crate::{Error, Result};

/// Open the bank at `path`, which must exist: opening a missing path would
/// create an empty bank. When it does not exist, the error is `bank PATH
/// does not exist` followed by `hint` (what to do, e.g. `; build one with
/// …`).
pub fn open_existing(path: &Path, hint: &str) -> Result<Bank> {
    require_existing(path, hint)?;
    Ok(Bank::open(path)?)
}

/// [`open_existing`] for commands that only read the bank: one this process
/// may not write (a read-only file system, another user's files) opens
/// read-only ([`Bank::open_read`]).
pub fn open_existing_read(path: &Path, hint: &str) -> Result<Bank> {
    require_existing(path, hint)?;
    Ok(Bank::open_read(path)?)
}

fn require_existing(path: &Path, hint: &str) -> Result<()> {
    if !path.exists() {
        return Err(Error::Invalid(format!(
            "bank {} does not exist{hint}",
            path.display()
        )));
    }
    Ok(())
}

/// Prototype counts per level and side, for one encoder of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CountsReport {
    /// Class-level foreground prototypes.
    pub class_fg: u32,
    /// Class-level background prototypes.
    pub class_bg: u32,
    /// Instance-level foreground prototypes.
    pub instance_fg: u32,
    /// Instance-level background prototypes.
    pub instance_bg: u32,
    /// Part-level foreground prototypes.
    pub part_fg: u32,
    /// Part-level background prototypes.
    pub part_bg: u32,
}

impl From<PrototypeCounts> for CountsReport {
    fn from(c: PrototypeCounts) -> Self {
        CountsReport {
            class_fg: c.class_fg,
            class_bg: c.class_bg,
            instance_fg: c.instance_fg,
            instance_bg: c.instance_bg,
            part_fg: c.part_fg,
            part_bg: c.part_bg,
        }
    }
}

/// The prototypes of one class for one encoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncoderReport {
    /// The encoder bundle's name.
    pub name: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Prototypes in all.
    pub prototypes: usize,
    /// Prototypes per level and side.
    pub counts: CountsReport,
}

/// One class, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassRow {
    /// The class name.
    pub name: String,
    /// A stuff class.
    pub stuff: bool,
    /// Where its support set came from: `images:DIR` or
    /// `generator:FINGERPRINT12`.
    pub source: String,
    /// The foreground/background split used.
    pub split: String,
    /// Support images used.
    pub images: u32,
    /// Prototypes over every encoder.
    pub prototypes: u64,
    /// The encoders' names (the first 12 fingerprint digits for an encoder
    /// the bank does not describe).
    pub encoders: Vec<String>,
    /// When the class was stored, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// A source as one short text: `images:DIR` or `generator:FINGERPRINT12`.
pub fn source_text(s: &ClassSource) -> String {
    match s {
        ClassSource::Images { dir } => format!("images:{dir}"),
        ClassSource::Generator { fingerprint, .. } => {
            // A file may carry any text here: cut at a character boundary.
            let short: String = fingerprint.chars().take(12).collect();
            format!("generator:{short}")
        }
    }
}

/// The row of one class record; `encoders` are the bank's, for names.
pub fn class_row(rec: &ClassRecord, encoders: &[EncoderInfo]) -> ClassRow {
    let enc_name = |fp: &str| {
        encoders
            .iter()
            .find(|e| e.fingerprint == fp)
            .map(|e| e.name.clone())
            .unwrap_or_else(|| fp[..12.min(fp.len())].to_string())
    };
    ClassRow {
        name: rec.name.clone(),
        stuff: rec.stuff,
        source: source_text(&rec.source),
        split: rec.split_method.clone(),
        images: rec.images_used,
        prototypes: rec.encoders.iter().map(|e| e.counts.total()).sum(),
        encoders: rec
            .encoders
            .iter()
            .map(|e| enc_name(&e.fingerprint))
            .collect(),
        created_unix: rec.created_unix,
    }
}

/// Every class of `bank` (a folder or a `.ovbank` file), in the bank's order.
pub fn class_rows(bank: &dyn ClassStore) -> Result<Vec<ClassRow>> {
    let encoders = bank.encoders()?;
    Ok(bank
        .classes()?
        .iter()
        .map(|r| class_row(r, &encoders))
        .collect())
}

/// One support image of a class, as `show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupportSummary {
    /// Its position in the support set (prototype provenance indexes it).
    pub index: usize,
    /// The original file name.
    pub name: String,
    /// Original width.
    pub width: u32,
    /// Original height.
    pub height: u32,
    /// Size of its stored thumbnail (0 when there is none).
    pub thumbnail_bytes: usize,
}

/// One class, as `show` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassDetails {
    /// The class's list row.
    #[serde(flatten)]
    pub row: ClassRow,
    /// Support images skipped when it was built.
    pub images_skipped: u32,
    /// Splits that needed the quantile fallback.
    pub fallback_splits: u32,
    /// The generator's parameters (none for a support folder).
    pub source_params: Vec<(String, String)>,
    /// Prototypes per encoder.
    pub per_encoder: Vec<EncoderReport>,
    /// The support images.
    pub support: Vec<SupportSummary>,
    /// Build statistics; null for classes built before bank format 2.
    pub build: Option<BuildStats>,
}

/// Describe the class `name` of `bank`; `None` when there is no such class.
pub fn class_details(bank: &dyn ClassStore, name: &str) -> Result<Option<ClassDetails>> {
    let Some(rec) = bank.class(name)? else {
        return Ok(None);
    };
    let encoders = bank.encoders()?;
    let mut support = Vec::new();
    for (i, s) in rec.support.iter().enumerate() {
        let thumb = bank.thumbnail(&rec, i as u32)?;
        support.push(SupportSummary {
            index: i,
            name: s.name.clone(),
            width: s.width,
            height: s.height,
            thumbnail_bytes: thumb.map(|t| t.len()).unwrap_or(0),
        });
    }
    Ok(Some(ClassDetails {
        row: class_row(&rec, &encoders),
        images_skipped: rec.images_skipped,
        fallback_splits: rec.fallback_splits,
        source_params: match &rec.source {
            ClassSource::Generator { params, .. } => params.clone(),
            ClassSource::Images { .. } => vec![],
        },
        per_encoder: rec
            .encoders
            .iter()
            .map(|e| EncoderReport {
                name: encoders
                    .iter()
                    .find(|i| i.fingerprint == e.fingerprint)
                    .map(|i| i.name.clone())
                    .unwrap_or_default(),
                fingerprint: e.fingerprint.clone(),
                prototypes: e.counts.total() as usize,
                counts: e.counts.into(),
            })
            .collect(),
        support,
        build: rec.stats.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generator_fingerprint_that_is_not_hex_is_cut_at_a_character() {
        // tests/fixtures/hostile/11h: a file's generator "fingerprint" with
        // a multi-byte character across byte 12 once panicked `list`.
        let s = source_text(&ClassSource::Generator {
            fingerprint: "abcdefghijké-and-more".into(),
            params: vec![],
        });
        assert_eq!(s, "generator:abcdefghijké");
    }

    #[test]
    fn sources_are_short() {
        assert_eq!(
            source_text(&ClassSource::Images {
                dir: "/d/red".into()
            }),
            "images:/d/red"
        );
        assert_eq!(
            source_text(&ClassSource::Generator {
                fingerprint: "0123456789abcdef".into(),
                params: vec![]
            }),
            "generator:0123456789ab"
        );
    }

    #[test]
    fn a_missing_bank_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        let err = open_existing(&path, "; build one").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("bank {} does not exist; build one", path.display())
        );
        assert!(!path.exists());
    }
}
