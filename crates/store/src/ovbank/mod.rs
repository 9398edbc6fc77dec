//! Bank exchange files (`.ovbank`): one self-describing, versioned, checksummed file per shared bank.
//!
//! A [`Bank`] is a sled directory that one process holds open; teams share
//! banks as single `.ovbank` files instead (layout: `schema/ovbank-v1.md`).
//!
//! * [`export`] writes some or all classes of a bank to a file, atomically.
//! * [`OvBankFile::open`] memory-maps a file and validates its header and
//!   metadata without reading the vectors; [`OvBankFile::vectors`] then gives
//!   zero-copy `&[f16]` views, [`OvBankFile::prototypes`] decoded prototypes
//!   with their regions, [`OvBankFile::thumbnail`] the JPEG bytes.
//! * [`verify`] checks every checksum and every record.
//! * [`import`] puts a file's classes into a bank in one atomic batch.
//! * [`merge`] combines files into one, without a bank.
//! * [`exercise_untrusted`] walks every accessor of arbitrary bytes, for the
//!   fuzzer (`fuzz/`).
//!
//! Files are deterministic: the same classes give the same bytes, so
//! [`merge`] is reproducible and `export → import → export` gives the same
//! file (see [`import`]).

mod error;
pub mod format;
mod read;
mod trust;
mod untrusted;
mod write;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

pub use error::{OvBankError, Result};
pub use format::{
    SectionKind, OVBANK_FORMAT_VERSION, OVBANK_OLDEST_READER, OVBANK_OLDEST_SUPPORTED,
};
pub use read::{
    AnnEntry, Header, OvBankFile, OvClass, PrototypeMeta, SectionInfo, VectorsView, VerifyReport,
    MAX_GRID_PATCHES, MAX_GRID_SIDE, NORM_TOLERANCE, SUPPORT_IMAGE_MAX_PX, THUMBNAIL_MAX_PX,
};
pub use trust::check_encoder_record;
pub use untrusted::exercise_untrusted;
#[doc(hidden)]
pub use untrusted::{
    dir_bytes, exercise_import, fuzz_import_overhead, fuzz_repair_checksums, FuzzImport,
};
pub use write::ExportStats;

use crate::bank::{Bank, ClassBuild, ClassRecord, EncoderInfo};
use write::{BlockIn, Writer};

/// What to do when a class being imported or merged has the name of one already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Keep the class already there; drop the incoming one.
    Skip,
    /// Replace the class already there with the incoming one.
    Replace,
    /// Keep both: the incoming class gets the first free name `name (2)`, `name (3)`, ….
    Rename,
}

/// What [`import`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Encoders the bank did not have before.
    pub encoders_registered: usize,
    /// Classes added under their own name.
    pub added: Vec<String>,
    /// Classes that replaced a class of the same name.
    pub replaced: Vec<String>,
    /// Classes added under a new name: (name in the file, name in the bank).
    pub renamed: Vec<(String, String)>,
    /// Classes not imported because the bank had one of that name.
    pub skipped: Vec<String>,
    /// Prototypes stored, over all imported classes.
    pub prototypes: u64,
}

/// What [`merge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// The written file.
    pub file: ExportStats,
    /// Classes dropped: (input index, name).
    pub skipped: Vec<(usize, String)>,
    /// Classes that replaced one of an earlier input: (input index, name).
    pub replaced: Vec<(usize, String)>,
    /// Classes written under a new name: (input index, old name, new name).
    pub renamed: Vec<(usize, String, String)>,
}

/// Writes the classes of `bank` named in `classes` (all classes when `None`)
/// to the `.ovbank` file `out`, with the encoders they use.
///
/// The file is written to a temporary file in the same directory, synced,
/// and renamed over `out` (then the directory is synced): `out` is either
/// left as it was or replaced by a complete file.
pub fn export(bank: &Bank, classes: Option<&[String]>, out: &Path) -> Result<ExportStats> {
    export_with(bank, classes, out, None)
}

/// Makes the prebuilt nearest-neighbour blob of one encoder for an export:
/// given the exported classes in file order and the encoder, returns the
/// algorithm name and the blob (which must index rows in the file's block
/// order: class number, then prototype index), or why it could not.
pub type AnnBuilder<'a> =
    dyn Fn(&[ClassRecord], &EncoderInfo) -> std::result::Result<(String, Vec<u8>), String> + 'a;

/// [`export`], and with `ann`, an `ann` section holding one blob per
/// encoder made by `ann`.
pub fn export_with(
    bank: &Bank,
    classes: Option<&[String]>,
    out: &Path,
    ann: Option<&AnnBuilder<'_>>,
) -> Result<ExportStats> {
    let records = match classes {
        None => bank
            .classes()
            .map_err(OvBankError::bank("listing the classes"))?,
        Some(names) => {
            let names: BTreeSet<&String> = names.iter().collect();
            let mut records = Vec::with_capacity(names.len());
            for name in names {
                let rec = bank
                    .class(name)
                    .map_err(OvBankError::bank(format!("reading class {name:?}")))?
                    .ok_or_else(|| OvBankError::Bank {
                        op: "export".into(),
                        source: Box::new(crate::bank::BankError::ClassNotFound {
                            path: bank.path().to_path_buf(),
                            name: name.clone(),
                        }),
                    })?;
                records.push(rec);
            }
            records
        }
    };
    let fps: BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.encoders.iter().map(|e| e.fingerprint.as_str()))
        .collect();
    let mut encoders = Vec::with_capacity(fps.len());
    for fp in fps {
        let info = bank
            .encoder(fp)
            .map_err(OvBankError::bank(format!("reading encoder {fp}")))?
            .ok_or_else(|| OvBankError::Unwritable {
                what: format!("encoder {fp}"),
                reason: "a class uses it but the bank does not list it".into(),
            })?;
        encoders.push(info);
    }
    let mut blobs = Vec::new();
    if let Some(build) = ann {
        for e in &encoders {
            let with: Vec<ClassRecord> = records
                .iter()
                .filter(|r| r.encoders.iter().any(|x| x.fingerprint == e.fingerprint))
                .cloned()
                .collect();
            let (alg, blob) = build(&with, e).map_err(|reason| OvBankError::Unwritable {
                what: format!("the ann blob of encoder {}", e.name),
                reason,
            })?;
            blobs.push((e.fingerprint.clone(), alg, blob));
        }
    }
    let labels = bank
        .label_ids()
        .map_err(OvBankError::bank("reading the label ids"))?;
    let mut w = Writer::create_with(out, encoders, ann.is_some())?;
    for (fp, alg, blob) in blobs {
        w.add_ann(&fp, &alg, blob)?;
    }
    for rec in &records {
        let mut blocks = Vec::with_capacity(rec.encoders.len());
        for e in &rec.encoders {
            let protos = bank
                .prototypes(rec, &e.fingerprint)
                .map_err(OvBankError::bank(format!("reading class {:?}", rec.name)))?;
            let number = w.encoder_number(&e.fingerprint).unwrap_or(u32::MAX);
            blocks.push(BlockIn::from_prototypes(number, &protos)?);
        }
        let mut thumbs = Vec::with_capacity(rec.support.len());
        for i in 0..rec.support.len() {
            let t = bank
                .thumbnail(rec, i as u32)
                .map_err(OvBankError::bank(format!("reading class {:?}", rec.name)))?;
            thumbs.push(t.unwrap_or_default());
        }
        let thumbs: Vec<&[u8]> = thumbs.iter().map(Vec::as_slice).collect();
        let label = labels.get(&rec.name).copied();
        w.add_labelled_class(&OvClass::from_record(rec), label, blocks, &thumbs)?;
    }
    w.finish()
}

/// Opens `path` and runs [`OvBankFile::verify`] (every section checksum, the
/// whole-file checksum, every record and the content check) and
/// [`OvBankFile::check_thumbnails`].
pub fn verify(path: &Path) -> Result<VerifyReport> {
    let file = OvBankFile::open(path)?;
    let report = file.verify()?;
    file.check_thumbnails()?;
    Ok(report)
}

/// Imports every class of `file` into `into`.
///
/// First every class's fate is decided (conflicts with classes already in
/// the bank follow `on_conflict`; a renamed class gets the first `name (k)`,
/// k ≥ 2, that neither the bank nor the file uses). Then the encoders the
/// imported classes use (and only those: a record no imported class uses is
/// not taken in) are checked against the bank's records of the same
/// fingerprint — another name or dimension is refused
/// ([`OvBankError::EncoderRecord`]) before anything changes, unless the
/// bank's record is a leftover that no class uses, which is replaced — and
/// registered. Then every class is stored in one batch that commits **all or
/// nothing**: if the import fails or is killed half-way, none of the file's
/// classes are in the bank (their data is removed, and so are the encoder
/// records it registered when it can).
///
/// Checking the file's records against the *installed* bundles is the
/// caller's part ([`OvBankFile::check_encoders`]), since this crate does not
/// know them.
///
/// Classes keep the file's `created_unix` and build statistics, so
/// `export → import → export` gives the same bytes.
pub fn import(file: &OvBankFile, into: &Bank, on_conflict: OnConflict) -> Result<ImportStats> {
    let mut stats = ImportStats::default();
    let mut taken: HashSet<String> = into
        .classes()
        .map_err(OvBankError::bank("listing the classes"))?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let in_file: HashSet<&str> = file.classes().iter().map(|c| c.name.as_str()).collect();
    // Decide every class's fate first (deterministic), then store them.
    let mut plan: Vec<Planned<'_>> = Vec::with_capacity(file.classes().len());
    for (c, label) in file.classes_and_labels() {
        let (target, replace) = if !taken.contains(&c.name) {
            stats.added.push(c.name.clone());
            (c.name.clone(), false)
        } else {
            match on_conflict {
                OnConflict::Skip => {
                    stats.skipped.push(c.name.clone());
                    continue;
                }
                OnConflict::Replace => {
                    stats.replaced.push(c.name.clone());
                    (c.name.clone(), true)
                }
                OnConflict::Rename => {
                    let new = free_name(&c.name, |n| taken.contains(n) || in_file.contains(n));
                    stats.renamed.push((c.name.clone(), new.clone()));
                    (new, false)
                }
            }
        };
        taken.insert(target.clone());
        plan.push((c, target, replace, label));
    }
    let used: BTreeSet<&str> = plan
        .iter()
        .flat_map(|(c, _, _, _)| c.encoders.iter().map(|e| e.fingerprint.as_str()))
        .collect();
    let in_use = bank_encoders_in_use(into)?;
    let mut to_register = Vec::new();
    for e in file.encoders() {
        if !used.contains(e.fingerprint.as_str()) {
            continue;
        }
        match into
            .encoder(&e.fingerprint)
            .map_err(OvBankError::bank("reading the bank's encoders"))?
        {
            Some(have) if have == *e => {}
            Some(have) if in_use.contains(&have.fingerprint) => {
                let what = format!("encoder {:?} in bank {}", have.name, into.path().display());
                trust::check_against(e, &have, &what)?;
            }
            // A leftover record that no class uses is replaced.
            Some(_) => to_register.push(e),
            None => {
                stats.encoders_registered += 1;
                to_register.push(e);
            }
        }
    }
    for e in to_register {
        into.register_encoder(e).map_err(OvBankError::bank(format!(
            "registering encoder {}",
            e.fingerprint
        )))?;
    }
    match store_classes(file, into, &plan) {
        Ok(n) => stats.prototypes = n,
        Err(e) => {
            // Best effort: the next removal or replacement drops them too.
            let _ = into.drop_unused_encoders();
            return Err(e);
        }
    }
    Ok(stats)
}

/// The fingerprints that at least one class of `bank` uses.
fn bank_encoders_in_use(bank: &Bank) -> Result<HashSet<String>> {
    Ok(bank
        .classes()
        .map_err(OvBankError::bank("listing the classes"))?
        .into_iter()
        .flat_map(|c| c.encoders.into_iter().map(|e| e.fingerprint))
        .collect())
}

/// Stores the planned classes in one [`ClassBatch`](crate::bank::ClassBatch):
/// every class's data is written, flushed once, and all class records are
/// committed in one transaction, so the import is all or nothing.
/// A class to import: the file's class, its name in the bank, whether it
/// replaces one, and the file's stable label id for it.
type Planned<'a> = (&'a OvClass, String, bool, Option<u32>);

fn store_classes(file: &OvBankFile, into: &Bank, plan: &[Planned<'_>]) -> Result<u64> {
    let mut batch = into
        .batch()
        .map_err(OvBankError::bank("starting the import"))?;
    let mut stored = 0u64;
    for (c, target, replace, label) in plan {
        if let Some(id) = label {
            batch.want_label_id(target, *id);
        }
        let mut encoders = Vec::with_capacity(c.encoders.len());
        for e in &c.encoders {
            let protos = file.prototypes(&c.name, &e.fingerprint)?;
            stored += protos.len() as u64;
            encoders.push((e.fingerprint.clone(), protos));
        }
        let build = ClassBuild {
            record: c.to_draft(target),
            encoders,
            thumbnails: (0..c.support.len() as u32)
                .map(|i| {
                    file.thumbnail(&c.name, i)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default()
                })
                .collect(),
        };
        batch
            .stage(&build, *replace)
            .map_err(OvBankError::bank(format!("storing class {target:?}")))?;
    }
    batch
        .commit()
        .map_err(OvBankError::bank("committing the imported classes"))?;
    Ok(stored)
}

/// The first `name (k)`, k ≥ 2, for which `taken` is false; `name` is cut
/// at a character boundary so that the result fits
/// [`MAX_CLASS_NAME_BYTES`](crate::bank::MAX_CLASS_NAME_BYTES) bytes.
fn free_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    let with_suffix = |suffix: String| {
        let mut end = name
            .len()
            .min(crate::bank::MAX_CLASS_NAME_BYTES.saturating_sub(suffix.len()));
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{suffix}", &name[..end])
    };
    (2u64..)
        .map(|k| with_suffix(format!(" ({k})")))
        .find(|n| !taken(n))
        .unwrap_or_else(|| with_suffix(" (copy)".to_owned()))
}

/// Merges `inputs` into one `.ovbank` file `out` (written atomically, like [`export`]).
///
/// The output lists the encoders its classes use, united by fingerprint
/// (the first input's name is kept). Two inputs that give the same encoder
/// *name* different fingerprints are refused
/// ([`OvBankError::EncoderNameConflict`]), as is a fingerprint with two
/// dimensions. Classes of the same name follow `on_conflict`, in input order:
/// `Skip` keeps the first, `Replace` the last, `Rename` writes later ones as
/// `name (k)` with the first k ≥ 2 that no input uses. The output is
/// deterministic; for inputs with disjoint class names, merging is
/// associative byte for byte.
pub fn merge(inputs: &[&OvBankFile], out: &Path, on_conflict: OnConflict) -> Result<MergeStats> {
    // Encoder names must mean the same fingerprints everywhere.
    let mut by_name: BTreeMap<&str, (usize, BTreeSet<&str>)> = BTreeMap::new();
    for (i, f) in inputs.iter().enumerate() {
        let mut mine: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for e in f.encoders() {
            mine.entry(&e.name).or_default().insert(&e.fingerprint);
        }
        for (name, fps) in mine {
            match by_name.get(name) {
                Some((first, seen)) if *seen != fps => {
                    let join =
                        |s: &BTreeSet<&str>| s.iter().copied().collect::<Vec<_>>().join(", ");
                    return Err(OvBankError::EncoderNameConflict {
                        name: name.to_owned(),
                        first_input: *first,
                        first: join(seen),
                        second_input: i,
                        second: join(&fps),
                    });
                }
                Some(_) => {}
                None => {
                    by_name.insert(name, (i, fps));
                }
            }
        }
    }
    let mut encoders: BTreeMap<&str, (usize, &EncoderInfo)> = BTreeMap::new();
    for (i, f) in inputs.iter().enumerate() {
        for e in f.encoders() {
            match encoders.get(e.fingerprint.as_str()) {
                Some((j, have)) if have.dim != e.dim => {
                    return Err(OvBankError::DimensionMismatch {
                        fingerprint: e.fingerprint.clone(),
                        existing_in: format!("input {j}"),
                        expected: have.dim,
                        found: e.dim,
                    })
                }
                Some(_) => {}
                None => {
                    encoders.insert(&e.fingerprint, (i, e));
                }
            }
        }
    }

    let mut stats = MergeStats::default();
    let all_names: HashSet<&str> = inputs
        .iter()
        .flat_map(|f| f.classes().iter().map(|c| c.name.as_str()))
        .collect();
    let mut chosen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, f) in inputs.iter().enumerate() {
        for (ci, c) in f.classes().iter().enumerate() {
            if !chosen.contains_key(&c.name) {
                chosen.insert(c.name.clone(), (i, ci));
                continue;
            }
            match on_conflict {
                OnConflict::Skip => stats.skipped.push((i, c.name.clone())),
                OnConflict::Replace => {
                    stats.replaced.push((i, c.name.clone()));
                    chosen.insert(c.name.clone(), (i, ci));
                }
                OnConflict::Rename => {
                    let new =
                        free_name(&c.name, |n| chosen.contains_key(n) || all_names.contains(n));
                    stats.renamed.push((i, c.name.clone(), new.clone()));
                    chosen.insert(new, (i, ci));
                }
            }
        }
    }

    // The encoders the chosen classes use.
    let used: BTreeSet<&str> = chosen
        .values()
        .flat_map(|&(i, ci)| inputs[i].classes()[ci].encoders.iter())
        .map(|e| e.fingerprint.as_str())
        .collect();
    let encoders = encoders
        .into_iter()
        .filter(|(fp, _)| used.contains(fp))
        .map(|(_, (_, e))| e.clone())
        .collect();
    // Stable label ids: a class keeps its input's id unless a class of an
    // earlier input (or earlier in the same one) holds it; then it has none
    // in the output, and readers number it after the recorded ones.
    let mut order: Vec<(usize, usize)> = chosen.values().copied().collect();
    order.sort_unstable();
    let mut taken_ids = HashSet::new();
    let mut labels: HashMap<(usize, usize), u32> = HashMap::new();
    for (i, ci) in order {
        if let Some(id) = inputs[i].recorded_label_id(ci) {
            if taken_ids.insert(id) {
                labels.insert((i, ci), id);
            }
        }
    }
    let mut w = Writer::create(out, encoders)?;
    for (name, (i, ci)) in &chosen {
        let label = labels.get(&(*i, *ci)).copied();
        let f = inputs[*i];
        let c = &f.classes()[*ci];
        let mut blocks = Vec::with_capacity(c.encoders.len());
        for e in &c.encoders {
            let b = f.block(&c.name, &e.fingerprint)?;
            blocks.push(BlockIn {
                encoder: w.encoder_number(&e.fingerprint).unwrap_or(u32::MAX),
                vectors: Cow::Borrowed(f.block_vector_bytes(b)),
                metas: Cow::Borrowed(f.block_meta_bytes(b)),
                regions: Cow::Borrowed(f.block_region_bytes(b)?),
            });
        }
        let thumbs: Vec<&[u8]> = (0..c.support.len() as u32)
            .map(|k| f.thumbnail(&c.name, k).unwrap_or_default())
            .collect();
        if *name == c.name {
            w.add_labelled_class(c, label, blocks, &thumbs)?;
        } else {
            let renamed = OvClass {
                name: name.clone(),
                ..c.clone()
            };
            w.add_labelled_class(&renamed, label, blocks, &thumbs)?;
        }
    }
    stats.file = w.finish()?;
    Ok(stats)
}

#[cfg(test)]
mod free_name_tests {
    use super::free_name;
    use crate::bank::MAX_CLASS_NAME_BYTES;

    #[test]
    fn renamed_names_fit_the_limit_on_a_char_boundary() {
        assert_eq!(free_name("cat", |n| n == "cat (2)"), "cat (3)");
        let long = "é".repeat(64); // 128 bytes
        let new = free_name(&long, |_| false);
        assert!(new.len() <= MAX_CLASS_NAME_BYTES, "{new}");
        assert!(new.ends_with(" (2)"));
        assert_eq!(new, format!("{} (2)", "é".repeat(62)));
    }
}
