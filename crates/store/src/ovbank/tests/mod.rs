//! Tests of `.ovbank` files across modules, by topic: round trips through a
//! bank ([`round_trip`]), determinism (proptest, [`determinism`]), corruption
//! ([`corruption`]), the committed golden files of every format version
//! ([`golden`]), a bounded mutation-fuzzing loop ([`fuzz`]) and performance
//! figures ([`perf`]; both `#[ignore]`). The helpers here write and rewrite
//! files and make small valid ones.

mod corruption;
mod determinism;
mod fuzz;
mod golden;
mod perf;
mod round_trip;

use std::borrow::Cow;
use std::path::Path;

use super::format::{self, checksum, END_MAGIC, FOOTER_LEN, MAGIC};
use super::write::{BlockIn, Writer};
use super::*;
use crate::bank::EncoderInfo;
use crate::synthetic::{build, encoder, jpeg, new_bank};

/// A bank with three classes (one stuff), two encoders, real JPEG thumbnails.
fn small_bank(path: &Path) -> Bank {
    let bank = new_bank(path, &[encoder('a', 16), encoder('b', 8)]);
    for b in [
        build("cat", &[('a', 7, 16), ('b', 5, 8)], 1, false, 3, &jpeg),
        build("sky", &[('a', 4, 16)], 2, true, 2, &jpeg),
        build("traffic light", &[('b', 6, 8)], 3, false, 2, &jpeg),
    ] {
        bank.put_class(&b, false).unwrap();
    }
    bank
}

/// The file view of a build stored at `created`.
fn class_of(b: &ClassBuild, created: u64) -> OvClass {
    let d = &b.record;
    OvClass {
        name: d.name.clone(),
        stuff: d.stuff,
        source: d.source.clone(),
        split_method: d.split_method.clone(),
        created_unix: created,
        images_used: d.images_used,
        images_skipped: d.images_skipped,
        fallback_splits: d.fallback_splits,
        encoders: Vec::new(),
        support: d.support.clone(),
        stats: d.stats.clone(),
    }
}

/// Writes builds straight to a file, without a bank.
fn write_builds(out: &Path, encoders: &[EncoderInfo], builds: &[(ClassBuild, u64)]) -> ExportStats {
    let mut w = Writer::create(out, encoders.to_vec()).unwrap();
    let mut sorted: Vec<&(ClassBuild, u64)> = builds.iter().collect();
    sorted.sort_by(|a, b| a.0.record.name.cmp(&b.0.record.name));
    for (b, created) in sorted {
        let blocks = b
            .encoders
            .iter()
            .map(|(f, p)| BlockIn::from_prototypes(w.encoder_number(f).unwrap(), p).unwrap())
            .collect();
        let thumbs: Vec<&[u8]> = b.thumbnails.iter().map(Vec::as_slice).collect();
        w.add_class(&class_of(b, *created), blocks, &thumbs)
            .unwrap();
    }
    w.finish().unwrap()
}

/// Rewrites `file` to `out` with each class's creation time from `created`
/// and label id from `label`.
fn rewrite(
    file: &OvBankFile,
    out: &Path,
    created: impl Fn(&str) -> u64,
    label: impl Fn(&str) -> Option<u32>,
) {
    let mut w = Writer::create(out, file.encoders().to_vec()).unwrap();
    for c in file.classes() {
        let blocks = c
            .encoders
            .iter()
            .map(|e| {
                let b = file.block(&c.name, &e.fingerprint).unwrap();
                BlockIn {
                    encoder: w.encoder_number(&e.fingerprint).unwrap(),
                    vectors: Cow::Borrowed(file.block_vector_bytes(b)),
                    metas: Cow::Borrowed(file.block_meta_bytes(b)),
                    regions: Cow::Borrowed(file.block_region_bytes(b).unwrap()),
                }
            })
            .collect();
        let thumbs: Vec<&[u8]> = (0..c.support.len() as u32)
            .map(|i| file.thumbnail(&c.name, i).unwrap_or_default())
            .collect();
        let class = OvClass {
            created_unix: created(&c.name),
            ..c.clone()
        };
        w.add_labelled_class(&class, label(&c.name), blocks, &thumbs)
            .unwrap();
    }
    w.finish().unwrap();
}

/// Asserts that `second` (exported after an import of `first`) equals
/// `first` byte for byte once its classes carry `first`'s creation times:
/// [`import`] cannot preserve them (the bank stamps stored classes). Label
/// ids too: `first` may have none, which the bank then numbers (the CLI's
/// tests check that ids a file gives survive the trip).
fn assert_same_but_created(first: &Path, second: &Path) {
    let a = OvBankFile::open(first).unwrap();
    let b = OvBankFile::open(second).unwrap();
    let fixed = second.with_extension("fixed");
    let ids: std::collections::HashMap<String, Option<u32>> = a
        .classes_and_labels()
        .map(|(c, id)| (c.name.clone(), id))
        .collect();
    rewrite(
        &b,
        &fixed,
        |name| a.class(name).unwrap().created_unix,
        |name| ids[name],
    );
    let (ab, fb) = (
        std::fs::read(first).unwrap(),
        std::fs::read(&fixed).unwrap(),
    );
    assert_eq!(ab.len(), fb.len());
    assert!(ab == fb, "files differ beyond creation times");
}

/// A small valid file with every section non-empty, as bytes.
fn sample_bytes(dir: &Path) -> Vec<u8> {
    let jp = |s: u64| vec![0xff, 0xd8, s as u8, 1, 2, 3, 0xff, 0xd9];
    let p = dir.join("sample.ovbank");
    write_builds(
        &p,
        &[encoder('a', 4), encoder('b', 2)],
        &[
            (
                build("cat", &[('a', 3, 4), ('b', 2, 2)], 1, false, 2, &jp),
                10,
            ),
            (build("sky", &[('b', 2, 2)], 2, true, 2, &jp), 20),
        ],
    );
    std::fs::read(p).unwrap()
}

fn open_and_verify(bytes: Vec<u8>) -> Result<VerifyReport> {
    OvBankFile::from_bytes(bytes)?.verify()
}

/// Lays `sections` (kind, flags, bytes) out as a file with a fresh header and footer.
fn assemble(sections: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let n = sections.len() as u32;
    let mut pos = format::align_up(format::header_len(n));
    let mut body = vec![0u8; pos as usize];
    let mut table = Vec::new();
    for (kind, flags, bytes) in sections {
        body.resize(format::align_up(pos) as usize, 0);
        pos = body.len() as u64;
        table.push((*kind, *flags, pos, bytes.len() as u64, checksum(bytes)));
        body.extend_from_slice(bytes);
        pos = body.len() as u64;
    }
    table.sort_by_key(|t| t.0);
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&OVBANK_FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&OVBANK_OLDEST_READER.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&n.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    for (kind, flags, off, len, sum) in table {
        for v in [kind, flags] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in [off, len, sum] {
            h.extend_from_slice(&v.to_le_bytes());
        }
    }
    let sum = checksum(&h);
    h.extend_from_slice(&sum.to_le_bytes());
    body[..h.len()].copy_from_slice(&h);
    let total = body.len() as u64 + FOOTER_LEN;
    let sum = checksum(&body);
    body.extend_from_slice(&total.to_le_bytes());
    body.extend_from_slice(&sum.to_le_bytes());
    body.extend_from_slice(&END_MAGIC);
    body
}

/// The sections of a valid file in file order, as (kind, flags, bytes).
fn sections_of(bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let f = OvBankFile::from_bytes(bytes.to_vec()).unwrap();
    let mut secs = f.sections().to_vec();
    secs.sort_by_key(|s| s.offset);
    secs.iter()
        .map(|s| {
            (
                s.kind.code(),
                s.flags,
                bytes[s.offset as usize..(s.offset + s.length) as usize].to_vec(),
            )
        })
        .collect()
}
