//! End-to-end check of a bank folder: every class's record, prototypes,
//! regions and thumbnails are read back and checked, and each class gets a
//! content digest that leaves out what differs between two identical builds
//! (the creation time and the build id).
//!
//! [`verify_bank`] only uses the public [`Bank`] API, so it checks what a
//! reader would see. Opening the bank (done by the caller) already removed
//! the leftovers of interrupted writes; [`Bank::leftovers_cleaned`] says how
//! many there were.

use sha2::{Digest, Sha256};

use super::{
    validate_class_name, Bank, BankError, ClassRecord, ClassSource, EncoderInfo, PrototypeCounts,
    Result,
};
use ovdiff_core::prototype::{Level, Prototype, Side};

/// How far a stored prototype's L2 norm may be from 1 (vectors are stored
/// as f16, so a unit vector reads back with a norm within about 1e-3).
pub const NORM_TOLERANCE: f32 = 1e-2;

/// What [`verify_bank`] found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BankVerifyReport {
    /// Format version of the bank.
    pub format_version: u32,
    /// Unreferenced build entries the open removed (leftovers of a crash).
    pub leftovers_cleaned: u64,
    /// Registered encoders.
    pub encoders: usize,
    /// Every class, sorted by name.
    pub classes: Vec<ClassVerifyReport>,
    /// Problems that concern no single class.
    pub problems: Vec<String>,
    /// What is not wrong but should be cleaned up: encoder records that no
    /// class uses ([`Bank::unused_encoders`]; banks written before issue #20
    /// kept them), each with how to remove it.
    pub warnings: Vec<String>,
}

/// One class as [`verify_bank`] read it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassVerifyReport {
    /// The class name.
    pub name: String,
    /// Prototypes read, over every encoder.
    pub prototypes: u64,
    /// Support images with a stored thumbnail.
    pub thumbnails: u32,
    /// SHA-256 (hex) of the class's content: record (without creation time
    /// and build id), every prototype with its region, every thumbnail.
    /// Two builds of the same class from the same inputs and seed have the
    /// same digest.
    pub digest: String,
    /// What is wrong with the class; empty when it is sound.
    pub problems: Vec<String>,
}

impl BankVerifyReport {
    /// `true` when no problem was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.classes.iter().all(|c| c.problems.is_empty())
    }

    /// Every problem, prefixed with its class where it has one.
    pub fn all_problems(&self) -> Vec<String> {
        let mut out = self.problems.clone();
        for c in &self.classes {
            out.extend(
                c.problems
                    .iter()
                    .map(|p| format!("class {:?}: {p}", c.name)),
            );
        }
        out
    }
}

/// Reads every class of `bank` back and checks it: the record is valid, each
/// encoder it names is registered, all announced prototypes and their
/// regions exist, the per-level counts match, every vector has the encoder's
/// dimension, is finite and has unit norm, provenance points at a support
/// image, a stuff class has no background prototypes, and thumbnails are
/// JPEGs.
///
/// Problems with the content are collected in the report; an `Err` means
/// the bank could not be read at all (a storage failure, or a class record
/// that cannot be decoded).
pub fn verify_bank(bank: &Bank) -> Result<BankVerifyReport> {
    let encoders = bank.encoders()?;
    let mut problems = Vec::new();
    for e in &encoders {
        if e.dim == 0 {
            problems.push(format!("encoder {} has dimension 0", e.fingerprint));
        }
    }
    let mut classes = Vec::new();
    for rec in bank.classes()? {
        classes.push(verify_class(bank, &rec, &encoders)?);
    }
    let warnings = bank
        .unused_encoders()?
        .iter()
        .map(|e| {
            format!(
                "encoder record {:?} ({}, dim {}) is used by no class (left by an older \
                 ovdiff-bank, or by a write that failed); `ovdiff-bank verify --bank {} --repair` \
                 removes it, as does the next removal or replacement of a class",
                e.name,
                e.fingerprint,
                e.dim,
                bank.path().display()
            )
        })
        .collect();
    Ok(BankVerifyReport {
        format_version: bank.format_version(),
        leftovers_cleaned: bank.leftovers_cleaned(),
        encoders: encoders.len(),
        classes,
        problems,
        warnings,
    })
}

fn verify_class(
    bank: &Bank,
    rec: &ClassRecord,
    encoders: &[EncoderInfo],
) -> Result<ClassVerifyReport> {
    let mut problems = Vec::new();
    let mut h = Hasher::default();
    if let Err(p) = validate_class_name(&rec.name) {
        problems.push(format!("the name is not valid: {p}"));
    }
    hash_record(&mut h, rec);
    let n_support = rec.support.len();
    if rec.images_used as usize != n_support {
        problems.push(format!(
            "the record says {} images were used but lists {n_support} support images",
            rec.images_used
        ));
    }
    if rec.encoders.is_empty() {
        problems.push("the record names no encoder".into());
    }
    let mut total = 0u64;
    for entry in &rec.encoders {
        let fp = &entry.fingerprint;
        let Some(info) = encoders.iter().find(|e| &e.fingerprint == fp) else {
            problems.push(format!("encoder {fp} is not registered in the bank"));
            continue;
        };
        let protos = match bank.prototypes(rec, fp) {
            Ok(p) => p,
            Err(e @ (BankError::Incomplete { .. } | BankError::Corrupt { .. })) => {
                problems.push(ovdiff_core::error::chain(&e));
                continue;
            }
            Err(e) => return Err(e),
        };
        total += protos.len() as u64;
        if PrototypeCounts::of(&protos) != entry.counts {
            problems.push(format!(
                "encoder {fp}: the record's per-level counts differ from the stored prototypes"
            ));
        }
        h.str(fp);
        h.u64(protos.len() as u64);
        for (i, p) in protos.iter().enumerate() {
            check_prototype(p, i, info, rec, &mut problems);
            hash_prototype(&mut h, p);
        }
    }
    let mut thumbnails = 0u32;
    for i in 0..n_support {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        match bank.thumbnail(rec, i)? {
            Some(t) => {
                thumbnails += 1;
                if !t.starts_with(&[0xff, 0xd8]) {
                    problems.push(format!("the thumbnail of support image {i} is not a JPEG"));
                }
                h.u64(u64::from(i));
                h.bytes(&t);
            }
            None => h.u64(u64::MAX),
        }
    }
    Ok(ClassVerifyReport {
        name: rec.name.clone(),
        prototypes: total,
        thumbnails,
        digest: h.finish(),
        problems,
    })
}

fn check_prototype(
    p: &Prototype,
    i: usize,
    info: &EncoderInfo,
    rec: &ClassRecord,
    problems: &mut Vec<String>,
) {
    let fp = &info.fingerprint;
    let mut bad = |what: String| problems.push(format!("encoder {fp}, prototype {i}: {what}"));
    if p.vector.len() != info.dim as usize {
        bad(format!(
            "{} dimensions, the encoder has {}",
            p.vector.len(),
            info.dim
        ));
    }
    if !p.vector.iter().all(|v| v.is_finite()) {
        bad("holds a non-finite value".into());
    } else {
        let norm = p.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        if (norm - 1.0).abs() > NORM_TOLERANCE {
            bad(format!("norm {norm:.4}, expected 1"));
        }
    }
    let pv = &p.provenance;
    if pv.image as usize >= rec.support.len() {
        bad(format!(
            "refers to support image {} of {}",
            pv.image,
            rec.support.len()
        ));
    }
    if pv.region.len() as u64 != u64::from(pv.grid_h) * u64::from(pv.grid_w) {
        bad(format!(
            "a region of {} patches for a {}x{} grid",
            pv.region.len(),
            pv.grid_h,
            pv.grid_w
        ));
    }
    if rec.stuff && p.side == Side::Background {
        bad("a background prototype in a stuff class".into());
    }
}

/// Everything in the record but `created_unix` and `build_id`.
fn hash_record(h: &mut Hasher, rec: &ClassRecord) {
    h.str(&rec.name);
    h.u64(u64::from(rec.stuff));
    match &rec.source {
        ClassSource::Images { dir } => {
            h.str("images");
            h.str(dir);
        }
        ClassSource::Generator {
            fingerprint,
            params,
        } => {
            h.str("generator");
            h.str(fingerprint);
            h.u64(params.len() as u64);
            for (k, v) in params {
                h.str(k);
                h.str(v);
            }
        }
    }
    h.str(&rec.split_method);
    h.u64(u64::from(rec.images_used));
    h.u64(u64::from(rec.images_skipped));
    h.u64(u64::from(rec.fallback_splits));
    h.u64(rec.encoders.len() as u64);
    for e in &rec.encoders {
        h.str(&e.fingerprint);
        h.u64(u64::from(e.prototype_count));
        let c = &e.counts;
        for n in [
            c.class_fg,
            c.class_bg,
            c.instance_fg,
            c.instance_bg,
            c.part_fg,
            c.part_bg,
        ] {
            h.u64(u64::from(n));
        }
    }
    h.u64(rec.support.len() as u64);
    for s in &rec.support {
        h.str(&s.name);
        h.u64(u64::from(s.width));
        h.u64(u64::from(s.height));
    }
}

fn hash_prototype(h: &mut Hasher, p: &Prototype) {
    let level = match p.level {
        Level::Class => 0,
        Level::Instance => 1,
        Level::Part => 2,
    };
    let side = match p.side {
        Side::Foreground => 0,
        Side::Background => 1,
    };
    h.u64(level);
    h.u64(side);
    h.u64(u64::from(p.support));
    h.u64(p.vector.len() as u64);
    for v in &p.vector {
        h.0.update(v.to_bits().to_le_bytes());
    }
    let pv = &p.provenance;
    h.u64(u64::from(pv.image));
    h.u64(u64::from(pv.grid_h));
    h.u64(u64::from(pv.grid_w));
    h.u64(pv.region.len() as u64);
    h.0.update(pv.region.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>());
}

/// SHA-256 over length-prefixed fields, so no two field sequences collide.
#[derive(Default)]
struct Hasher(Sha256);

impl Hasher {
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::{ClassBuild, ClassRecordDraft, SupportImageInfo, DTYPE_F16};
    use ovdiff_core::prototype::Provenance;

    fn encoder() -> EncoderInfo {
        EncoderInfo {
            fingerprint: "e".repeat(64),
            name: "enc".into(),
            dim: 4,
            dtype: DTYPE_F16.into(),
        }
    }

    fn proto(level: Level, side: Side, v: [f32; 4], image: u32) -> Prototype {
        Prototype {
            level,
            side,
            vector: v.to_vec(),
            support: 3,
            provenance: Provenance {
                image,
                grid_h: 2,
                grid_w: 3,
                region: vec![true, false, true, false, true, true],
            },
        }
    }

    fn build(name: &str, first: [f32; 4]) -> ClassBuild {
        ClassBuild {
            record: ClassRecordDraft {
                name: name.into(),
                stuff: false,
                source: ClassSource::Images {
                    dir: "support/x".into(),
                },
                split_method: "saliency".into(),
                images_used: 2,
                images_skipped: 0,
                fallback_splits: 0,
                support: (0..2)
                    .map(|i| SupportImageInfo {
                        name: format!("{i}.png"),
                        width: 30,
                        height: 20,
                    })
                    .collect(),
                created_unix: None,
                stats: None,
            },
            encoders: vec![(
                encoder().fingerprint,
                vec![
                    proto(Level::Class, Side::Foreground, first, 0),
                    proto(Level::Class, Side::Background, [0.0, 1.0, 0.0, 0.0], 1),
                    proto(Level::Instance, Side::Foreground, [0.6, 0.8, 0.0, 0.0], 1),
                ],
            )],
            thumbnails: vec![vec![0xff, 0xd8, 0xff, 1, 2], vec![]],
        }
    }

    fn bank_with(path: &std::path::Path, builds: &[ClassBuild]) -> Bank {
        let bank = Bank::open(path).unwrap();
        bank.register_encoder(&encoder()).unwrap();
        for b in builds {
            bank.put_class(b, false).unwrap();
        }
        bank
    }

    #[test]
    fn sound_classes_pass_and_digests_ignore_time_and_build_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = bank_with(&dir.path().join("a"), &[build("cat", [1.0, 0.0, 0.0, 0.0])]);
        // Another bank where "cat" gets a different build id.
        let b = bank_with(
            &dir.path().join("b"),
            &[
                build("dog", [1.0, 0.0, 0.0, 0.0]),
                build("cat", [1.0, 0.0, 0.0, 0.0]),
            ],
        );
        let (ra, rb) = (verify_bank(&a).unwrap(), verify_bank(&b).unwrap());
        assert!(
            ra.ok() && rb.ok(),
            "{:?} {:?}",
            ra.all_problems(),
            rb.all_problems()
        );
        let cat_b = rb.classes.iter().find(|c| c.name == "cat").unwrap();
        assert_eq!(ra.classes[0].digest, cat_b.digest);
        assert_eq!((ra.classes[0].prototypes, ra.classes[0].thumbnails), (3, 1));
        assert_ne!(
            a.class("cat").unwrap().unwrap().build_id,
            b.class("cat").unwrap().unwrap().build_id
        );
        // Any change to a vector changes the digest.
        let c = bank_with(&dir.path().join("c"), &[build("cat", [0.0, 0.0, 1.0, 0.0])]);
        assert_ne!(
            verify_bank(&c).unwrap().classes[0].digest,
            ra.classes[0].digest
        );
    }

    #[test]
    fn a_partial_snapshot_left_by_a_full_disk_does_not_break_the_bank() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank");
        let digest = {
            let bank = bank_with(&path, &[build("cat", [1.0, 0.0, 0.0, 0.0])]);
            verify_bank(&bank).unwrap().classes[0].digest.clone()
        };
        // What sled leaves when the disk fills while it writes a snapshot.
        std::fs::write(path.join("snap.00000000FFFFFFFF.generating"), b"").unwrap();
        let bank = Bank::open(&path).unwrap();
        let report = verify_bank(&bank).unwrap();
        assert!(report.ok());
        assert_eq!(report.classes[0].digest, digest);
        assert!(!path.join("snap.00000000FFFFFFFF.generating").exists());
    }

    #[test]
    fn non_unit_vectors_and_missing_prototypes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let bank = bank_with(
            dir.path(),
            &[
                build("long", [2.0, 0.0, 0.0, 0.0]),
                build("holed", [1.0, 0.0, 0.0, 0.0]),
            ],
        );
        // Delete the build file of "holed", as a lost file would.
        let rec = bank.class("holed").unwrap().unwrap();
        crate::bank::build_file::remove(bank.path(), rec.build_id).unwrap();
        let report = verify_bank(&bank).unwrap();
        assert!(!report.ok());
        let all = report.all_problems().join("\n");
        assert!(
            all.contains("class \"long\"") && all.contains("norm 2.0000"),
            "{all}"
        );
        assert!(
            all.contains("class \"holed\"") && all.contains("should have 3 prototypes"),
            "{all}"
        );
    }
}
