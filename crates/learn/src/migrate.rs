//! Bringing a bank, or a `.ovbank` file, up to the format this build writes.

use std::path::{Path, PathBuf};

use serde::Serialize;

use ovdiff_store::bank::MigrationStep;
use ovdiff_store::ovbank::{self, OnConflict, OvBankFile, OVBANK_FORMAT_VERSION};

use crate::catalog::open_existing;
use crate::{Error, Result};

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateReport {
    /// The bank folder or file migrated.
    pub target: PathBuf,
    /// `"bank"` or `"file"`.
    pub kind: &'static str,
    /// Its format version before.
    pub from: u32,
    /// Its format version after (equal to `from`: nothing was done).
    pub to: u32,
    /// The steps applied, oldest first.
    pub steps: Vec<MigrationStep>,
    /// Where a migrated file was written.
    pub output: Option<PathBuf>,
}

/// Migrate the bank at `path` in place, one format step at a time (see
/// [`Bank::migrate`](ovdiff_store::bank::Bank::migrate)). A missing bank is
/// an error, not a new bank.
pub fn migrate_bank(path: &Path) -> Result<MigrateReport> {
    let mut bank = open_existing(path, "; nothing to migrate")?;
    let from = bank.format_version();
    let steps = bank.migrate()?;
    Ok(MigrateReport {
        target: path.to_path_buf(),
        kind: "bank",
        from,
        to: bank.format_version(),
        steps,
        output: None,
    })
}

/// Rewrite the `.ovbank` file `file` in the current format, to `output`
/// (default: over `file`, atomically). The file must verify first; a file
/// already current is left alone unless `output` is given; a file newer
/// than this build is refused.
pub fn migrate_file(file: &Path, output: Option<&Path>) -> Result<MigrateReport> {
    let opened = OvBankFile::open(file)?;
    opened.verify().map_err(|e| {
        Error::Invalid(format!(
            "{} does not verify; nothing was written: {}",
            file.display(),
            Error::from(e).report()
        ))
    })?;
    let from = opened.header().format_version;
    let out = output.map_or_else(|| file.to_path_buf(), Path::to_path_buf);
    if from > OVBANK_FORMAT_VERSION {
        return Err(Error::Invalid(format!(
            "{} has format version {from}, newer than the {OVBANK_FORMAT_VERSION} this ovdiff-bank writes; upgrade ovdiff-bank",
            file.display()
        )));
    }
    if from == OVBANK_FORMAT_VERSION && output.is_none() {
        return Ok(MigrateReport {
            target: file.to_path_buf(),
            kind: "file",
            from,
            to: from,
            steps: Vec::new(),
            output: None,
        });
    }
    // A rewrite through the writer is the whole migration: it reads every
    // older version and writes the current one, atomically.
    let stats = ovbank::merge(&[&opened], &out, OnConflict::Skip)?;
    drop(opened);
    let steps = (from..OVBANK_FORMAT_VERSION)
        .map(|v| MigrationStep {
            from: v,
            to: v + 1,
            records: stats.file.classes as u64,
            summary: file_step_summary(v),
        })
        .collect();
    Ok(MigrateReport {
        target: file.to_path_buf(),
        kind: "file",
        from,
        to: OVBANK_FORMAT_VERSION,
        steps,
        output: Some(out),
    })
}

/// What the `.ovbank` step from format `v` to `v + 1` does.
fn file_step_summary(v: u32) -> &'static str {
    match v {
        1 => "adds the optional stats section (no statistics for classes exported from format 1)",
        2 => "adds the optional labels section (no stable label ids for classes exported from format 2; readers number them in creation order)",
        _ => "rewritten in the next format",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_store::bank::Bank;

    #[test]
    fn a_current_file_is_left_alone_and_a_missing_bank_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bank = Bank::open(&dir.path().join("bank")).unwrap();
        let file = dir.path().join("a.ovbank");
        ovbank::export(&bank, None, &file).unwrap();
        drop(bank);
        let r = migrate_file(&file, None).unwrap();
        assert_eq!(
            (r.kind, r.from, r.to),
            ("file", OVBANK_FORMAT_VERSION, r.from)
        );
        assert!(r.steps.is_empty() && r.output.is_none());
        let out = dir.path().join("b.ovbank");
        let r = migrate_file(&file, Some(&out)).unwrap();
        assert_eq!(r.output.as_deref(), Some(out.as_path()));
        assert!(out.is_file());

        let r = migrate_bank(&dir.path().join("bank")).unwrap();
        assert_eq!((r.kind, r.from), ("bank", r.to));
        let missing = dir.path().join("nope");
        assert_eq!(
            migrate_bank(&missing).unwrap_err().to_string(),
            format!(
                "bank {} does not exist; nothing to migrate",
                missing.display()
            )
        );
        assert!(!missing.exists());
    }
}
