//! `.ovbank` files, the unit of exchange between teams, as front-ends use
//! them: opened and verified before anything is read from them, merged, and
//! described from their headers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use ovdiff_store::bank::EncoderInfo;
use ovdiff_store::ovbank::{self, ImportStats, MergeStats, OnConflict, OvBankFile, VerifyReport};

use crate::Result;

/// Open the `.ovbank` file at `path` and check every checksum and its
/// content (see [`OvBankFile::verify`] and [`OvBankFile::check_thumbnails`]),
/// and its encoder records against the `installed` encoder bundles
/// ([`bundles::installed_encoders`](crate::bundles::installed_encoders);
/// see [`OvBankFile::check_encoders`]), before anything is read from it.
pub fn open_verified(path: &Path, installed: &[EncoderInfo]) -> Result<OvBankFile> {
    verified(path, installed).map(|(file, _)| file)
}

/// [`open_verified`], with what the verification found: `verify FILE`.
pub fn verify(path: &Path, installed: &[EncoderInfo]) -> Result<VerifyReport> {
    verified(path, installed).map(|(_, report)| report)
}

fn verified(path: &Path, installed: &[EncoderInfo]) -> Result<(OvBankFile, VerifyReport)> {
    let file = OvBankFile::open(path)?;
    let report = file.verify()?;
    file.check_thumbnails()?;
    file.check_encoders(installed)?;
    Ok((file, report))
}

/// True when an import wrote a class (added, replaced or renamed), so the
/// bank changed.
pub fn wrote_classes(stats: &ImportStats) -> bool {
    !(stats.added.is_empty() && stats.replaced.is_empty() && stats.renamed.is_empty())
}

/// Merge the `.ovbank` files `inputs` (in priority order) into `out`:
/// every input is opened, then every input is verified (as
/// [`open_verified`] does, against the `installed` encoders), before the
/// merged file is written (atomically; see [`ovbank::merge`]).
pub fn merge_files(
    inputs: &[PathBuf],
    out: &Path,
    on_conflict: OnConflict,
    installed: &[EncoderInfo],
) -> Result<MergeStats> {
    let files = inputs
        .iter()
        .map(|p| OvBankFile::open(p))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for f in &files {
        f.verify()?;
        f.check_thumbnails()?;
        f.check_encoders(installed)?;
    }
    let refs: Vec<&OvBankFile> = files.iter().collect();
    Ok(ovbank::merge(&refs, out, on_conflict)?)
}

/// An `.ovbank` file described from its headers and records (its
/// prototypes are not read).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectReport {
    /// The file.
    pub file: PathBuf,
    /// Format version it was written with.
    pub format_version: u32,
    /// Oldest reader format version that can read it.
    pub oldest_reader_version: u32,
    /// Its length.
    pub bytes: u64,
    /// The whole-file checksum from the footer, 16 hex digits.
    pub file_checksum: String,
    /// The section table.
    pub sections: Vec<SectionSummary>,
    /// The encoders whose prototypes it holds.
    pub encoders: Vec<EncoderSummary>,
    /// Its prebuilt nearest-neighbour lists.
    pub ann: Vec<AnnSummary>,
    /// Its classes.
    pub classes: Vec<ClassSummary>,
    /// Time taken to read all this, in milliseconds.
    pub milliseconds: f64,
}

/// A prebuilt nearest-neighbour blob of an `.ovbank` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnnSummary {
    /// The encoder whose prototypes it indexes.
    pub encoder_fingerprint: String,
    /// The algorithm.
    pub algorithm: String,
    /// Length of the blob.
    pub bytes: u64,
    /// The ovdiff-bank version that wrote it.
    pub written_by: String,
    /// Same endianness, pointer width and crate version as this build.
    pub usable_here: bool,
}

/// One entry of an `.ovbank` file's section table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionSummary {
    /// The section's name.
    pub name: &'static str,
    /// Absolute offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Stored checksum, 16 hex digits.
    pub checksum: String,
}

/// An encoder of an `.ovbank` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncoderSummary {
    /// Its name.
    pub name: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Feature dimension.
    pub dim: u32,
    /// Element type of the stored vectors.
    pub dtype: String,
}

/// A class of an `.ovbank` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassSummary {
    /// Its name.
    pub name: String,
    /// A stuff class.
    pub stuff: bool,
    /// Support images used.
    pub images: u32,
    /// Prototypes over every encoder.
    pub prototypes: u64,
}

/// Describe the `.ovbank` file at `path` from its headers and records
/// (fast: prototypes are not read, checksums are not checked).
pub fn inspect(path: &Path) -> Result<InspectReport> {
    let t = Instant::now();
    let f = OvBankFile::open(path)?;
    let h = f.header();
    Ok(InspectReport {
        file: path.to_path_buf(),
        format_version: h.format_version,
        oldest_reader_version: h.oldest_reader_version,
        bytes: h.file_len,
        file_checksum: format!("{:016x}", h.file_checksum),
        sections: f
            .sections()
            .iter()
            .map(|s| SectionSummary {
                name: s.name(),
                offset: s.offset,
                length: s.length,
                checksum: format!("{:016x}", s.checksum),
            })
            .collect(),
        encoders: f
            .encoders()
            .iter()
            .map(|e| EncoderSummary {
                name: e.name.clone(),
                fingerprint: e.fingerprint.clone(),
                dim: e.dim,
                dtype: e.dtype.clone(),
            })
            .collect(),
        ann: f
            .ann_entries()?
            .into_iter()
            .map(|e| AnnSummary {
                usable_here: e.matches_this_build(),
                encoder_fingerprint: e.encoder_fingerprint,
                algorithm: e.algorithm,
                bytes: e.blob_length,
                written_by: e.crate_version,
            })
            .collect(),
        classes: f
            .classes()
            .iter()
            .map(|c| ClassSummary {
                name: c.name.clone(),
                stuff: c.stuff,
                images: c.images_used,
                prototypes: c.encoders.iter().map(|e| e.counts.total()).sum(),
            })
            .collect(),
        milliseconds: t.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovdiff_store::bank::Bank;

    #[test]
    fn imports_that_wrote_nothing_are_told_apart() {
        let mut stats = ImportStats::default();
        stats.skipped.push("a".into());
        assert!(!wrote_classes(&stats));
        stats.renamed.push(("a".into(), "a (2)".into()));
        assert!(wrote_classes(&stats));
    }

    #[test]
    fn an_empty_export_inspects_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let bank = Bank::open(&dir.path().join("bank")).unwrap();
        let file = dir.path().join("empty.ovbank");
        ovbank::export(&bank, None, &file).unwrap();
        let report = inspect(&file).unwrap();
        assert_eq!(report.format_version, ovbank::OVBANK_FORMAT_VERSION);
        assert!(report.classes.is_empty() && report.ann.is_empty());
        assert_eq!(report.file_checksum.len(), 16);
        assert!(open_verified(&file, &[]).is_ok());
        let merged = dir.path().join("merged.ovbank");
        let stats = merge_files(&[file.clone(), file], &merged, OnConflict::Skip, &[]).unwrap();
        assert_eq!(stats.file.classes, 0);
        assert!(merged.is_file());
    }
}
