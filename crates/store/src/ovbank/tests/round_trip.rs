//! Round trips: export, import and merge through banks and files, with their conflicts.

use super::*;
use crate::synthetic::fp;
use half::f16;

#[test]
fn round_trip_through_a_bank_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let bank = small_bank(&dir.path().join("bank"));
    let out = dir.path().join("small.ovbank");
    let stats = export(&bank, None, &out).unwrap();
    assert_eq!((stats.classes, stats.encoders), (3, 2));
    assert_eq!(stats.prototypes, 7 + 5 + 4 + 6);
    assert_eq!(stats.thumbnails, 2 + 1 + 1);
    assert_eq!(stats.bytes, std::fs::metadata(&out).unwrap().len());

    let file = OvBankFile::open(&out).unwrap();
    assert_eq!(file.header().format_version, OVBANK_FORMAT_VERSION);
    assert_eq!(file.encoders(), bank.encoders().unwrap().as_slice());
    let records = bank.classes().unwrap();
    let expected: Vec<OvClass> = records.iter().map(OvClass::from_record).collect();
    assert_eq!(file.classes(), expected.as_slice());
    for rec in &records {
        for e in &rec.encoders {
            let want = bank.prototypes(rec, &e.fingerprint).unwrap();
            let got = file.prototypes(&rec.name, &e.fingerprint).unwrap();
            assert_eq!(got, want, "{} / {}", rec.name, e.fingerprint);
            let view = file.vectors(&rec.name, &e.fingerprint).unwrap();
            assert_eq!(view.len(), want.len());
            for (i, p) in want.iter().enumerate() {
                let row = view.row(i).unwrap();
                let bits: Vec<u16> = row.iter().map(|x| x.to_bits()).collect();
                let want_bits: Vec<u16> = p
                    .vector
                    .iter()
                    .map(|&x| f16::from_f32(x).to_bits())
                    .collect();
                assert_eq!(bits, want_bits);
                let m = view.meta(i).unwrap();
                assert_eq!(
                    (m.level, m.side, m.support, m.image),
                    (p.level, p.side, p.support, p.provenance.image)
                );
            }
            // Zero copy: the view points into the mapping, 64-byte aligned.
            assert_eq!(view.as_slice().as_ptr() as usize % 64, 0);
        }
        for i in 0..=rec.support.len() as u32 {
            let want = bank.thumbnail(rec, i).unwrap();
            assert_eq!(
                file.thumbnail(&rec.name, i),
                want.as_deref(),
                "{} {i}",
                rec.name
            );
        }
    }
    let cat = file.thumbnail("cat", 0).unwrap();
    assert_eq!(&cat[..2], &[0xff, 0xd8]);
    image::load_from_memory(cat).unwrap();
    assert!(file.class("dog").is_none());
    assert!(matches!(
        file.prototypes("dog", &fp('a')),
        Err(OvBankError::ClassNotFound { .. })
    ));
    assert!(matches!(
        file.prototypes("sky", &fp('b')),
        Err(OvBankError::EncoderNotInClass { .. })
    ));
    let report = file.verify().unwrap();
    assert_eq!(
        (report.classes, report.blocks, report.prototypes),
        (3, 4, 22)
    );
    assert_eq!(verify(&out).unwrap(), report);

    // Import into a fresh bank, export again.
    let bank2 = Bank::open(&dir.path().join("bank2")).unwrap();
    let st = import(&file, &bank2, OnConflict::Skip).unwrap();
    assert_eq!(st.encoders_registered, 2);
    assert_eq!(st.added, vec!["cat", "sky", "traffic light"]);
    assert_eq!(st.prototypes, 22);
    let out2 = dir.path().join("again.ovbank");
    export(&bank2, None, &out2).unwrap();
    assert_same_but_created(&out, &out2);
    // Merging a single file rewrites it identically.
    let out3 = dir.path().join("merged.ovbank");
    merge(&[&file], &out3, OnConflict::Skip).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out3).unwrap());
}

#[test]
fn export_of_named_classes_and_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let bank = small_bank(&dir.path().join("bank"));
    let out = dir.path().join("sub.ovbank");
    let names = vec!["sky".to_string(), "sky".to_string()];
    let stats = export(&bank, Some(&names), &out).unwrap();
    assert_eq!((stats.classes, stats.encoders), (1, 1));
    let f = OvBankFile::open(&out).unwrap();
    assert_eq!(f.encoders(), &[encoder('a', 16)]);
    assert!(f.class("sky").unwrap().stuff);
    let err = export(&bank, Some(&["dog".to_string()]), &out).unwrap_err();
    assert!(err.to_string().contains("export"), "{err}");
    // The failed export left the earlier file intact and no temporary file.
    OvBankFile::open(&out).unwrap().verify().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn import_conflicts_skip_replace_rename() {
    let dir = tempfile::tempdir().unwrap();
    let bank = small_bank(&dir.path().join("bank"));
    let out = dir.path().join("f.ovbank");
    export(&bank, None, &out).unwrap();
    let file = OvBankFile::open(&out).unwrap();

    let st = import(&file, &bank, OnConflict::Skip).unwrap();
    assert_eq!(st.skipped.len(), 3);
    assert_eq!(st.encoders_registered, 0);

    let st = import(&file, &bank, OnConflict::Rename).unwrap();
    assert_eq!(
        st.renamed,
        vec![
            ("cat".to_string(), "cat (2)".to_string()),
            ("sky".to_string(), "sky (2)".to_string()),
            ("traffic light".to_string(), "traffic light (2)".to_string()),
        ]
    );
    let st = import(&file, &bank, OnConflict::Rename).unwrap();
    assert_eq!(st.renamed[0].1, "cat (3)");
    let renamed = bank.class("cat (3)").unwrap().unwrap();
    assert_eq!(
        bank.prototypes(&renamed, &fp('a')).unwrap(),
        file.prototypes("cat", &fp('a')).unwrap()
    );

    let before = bank.class("cat").unwrap().unwrap();
    let st = import(&file, &bank, OnConflict::Replace).unwrap();
    assert_eq!(st.replaced.len(), 3);
    let after = bank.class("cat").unwrap().unwrap();
    assert_ne!(before.build_id, after.build_id);
    assert_eq!(bank.classes().unwrap().len(), 9);
}

#[test]
fn import_refuses_a_dimension_mismatch_before_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let bank = small_bank(&dir.path().join("bank"));
    let out = dir.path().join("f.ovbank");
    export(&bank, None, &out).unwrap();
    let file = OvBankFile::open(&out).unwrap();
    let other = new_bank(&dir.path().join("other"), &[encoder('b', 9)]);
    let user = crate::synthetic::build("user", &[('b', 2, 9)], 5, false, 2, &|_| Vec::new());
    other.put_class(&user, false).unwrap();
    let err = import(&file, &other, OnConflict::Skip).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, OvBankError::EncoderRecord { dim: 8, .. }),
        "{err}"
    );
    assert!(msg.contains("whose dimension is 9, not 8"), "{msg}");
    assert_eq!(other.classes().unwrap().len(), 1);
    assert_eq!(other.encoders().unwrap(), vec![encoder('b', 9)]);
}

/// Issue #20, case 4: a record that no class of the bank uses (a leftover)
/// does not block an import of the real encoder, and a file's records that
/// no imported class uses are not taken in.
#[test]
fn import_replaces_leftover_records_and_takes_in_only_used_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bank = small_bank(&dir.path().join("bank"));
    let out = dir.path().join("f.ovbank");
    export(&bank, None, &out).unwrap();
    let file = OvBankFile::open(&out).unwrap();
    let other = new_bank(&dir.path().join("other"), &[encoder('b', 9)]);
    let st = import(&file, &other, OnConflict::Skip).unwrap();
    assert_eq!(st.added.len(), 3);
    assert_eq!(other.encoders().unwrap(), bank.encoders().unwrap());
    // Skipping every class takes in no encoder.
    let third = new_bank(&dir.path().join("third"), &[]);
    for c in file.classes() {
        let b = crate::synthetic::build(&c.name, &[], 1, false, 1, &|_| Vec::new());
        let b = ClassBuild {
            encoders: vec![(fp('f'), crate::synthetic::protos(1, 2, 1, 1, false))],
            ..b
        };
        third.register_encoder(&encoder('f', 2)).unwrap();
        third.put_class(&b, false).unwrap();
    }
    let st = import(&file, &third, OnConflict::Skip).unwrap();
    assert_eq!(st.skipped.len(), 3);
    assert_eq!(third.encoders().unwrap(), vec![encoder('f', 2)]);
}

#[test]
fn merge_conflicts_and_encoder_names() {
    let dir = tempfile::tempdir().unwrap();
    let jp = |s| vec![0xff, 0xd8, s as u8, 0xff, 0xd9];
    let a = dir.path().join("a.ovbank");
    let b = dir.path().join("b.ovbank");
    write_builds(
        &a,
        &[encoder('a', 4)],
        &[(build("cat", &[('a', 3, 4)], 1, false, 2, &jp), 100)],
    );
    write_builds(
        &b,
        &[encoder('a', 4), encoder('c', 2)],
        &[
            (build("cat", &[('a', 2, 4)], 2, false, 2, &jp), 200),
            (build("dog", &[('c', 2, 2)], 3, false, 1, &jp), 300),
        ],
    );
    let (fa, fb) = (OvBankFile::open(&a).unwrap(), OvBankFile::open(&b).unwrap());
    let out = dir.path().join("m.ovbank");

    let st = merge(&[&fa, &fb], &out, OnConflict::Skip).unwrap();
    assert_eq!(st.skipped, vec![(1, "cat".to_string())]);
    let m = OvBankFile::open(&out).unwrap();
    assert_eq!(m.class("cat").unwrap().created_unix, 100);
    assert_eq!(m.encoders().len(), 2);

    merge(&[&fa, &fb], &out, OnConflict::Replace).unwrap();
    let m = OvBankFile::open(&out).unwrap();
    assert_eq!(m.class("cat").unwrap().created_unix, 200);
    assert_eq!(m.prototypes("cat", &fp('a')).unwrap().len(), 2);

    let st = merge(&[&fa, &fb], &out, OnConflict::Rename).unwrap();
    assert_eq!(st.renamed, vec![(1, "cat".into(), "cat (2)".into())]);
    let m = OvBankFile::open(&out).unwrap();
    let names: Vec<&str> = m.classes().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cat", "cat (2)", "dog"]);
    assert_eq!(m.class("cat (2)").unwrap().created_unix, 200);
    m.verify().unwrap();

    // Only the encoders of the classes written are listed.
    let e = dir.path().join("e.ovbank");
    write_builds(
        &e,
        &[encoder('c', 2)],
        &[(build("cat", &[('c', 1, 2)], 5, false, 1, &jp), 1)],
    );
    let fe = OvBankFile::open(&e).unwrap();
    merge(&[&fa, &fe], &out, OnConflict::Skip).unwrap();
    assert_eq!(
        OvBankFile::open(&out).unwrap().encoders(),
        &[encoder('a', 4)]
    );

    // Same encoder name, another fingerprint: refused.
    let c = dir.path().join("c.ovbank");
    let mut renamed = encoder('d', 4);
    renamed.name = "enc-a".into();
    write_builds(
        &c,
        &[renamed],
        &[(build("emu", &[('d', 1, 4)], 4, false, 1, &jp), 1)],
    );
    let fc = OvBankFile::open(&c).unwrap();
    let err = merge(&[&fa, &fc], &out, OnConflict::Skip).unwrap_err();
    assert!(
        matches!(err, OvBankError::EncoderNameConflict { ref name, .. } if name == "enc-a"),
        "{err}"
    );
    // Same fingerprint, another dimension: refused.
    let d = dir.path().join("d.ovbank");
    write_builds(
        &d,
        &[encoder('a', 5)],
        &[(build("emu", &[('a', 1, 5)], 4, false, 1, &jp), 1)],
    );
    let fd = OvBankFile::open(&d).unwrap();
    let err = merge(&[&fa, &fd], &out, OnConflict::Skip).unwrap_err();
    assert!(
        matches!(err, OvBankError::DimensionMismatch { .. }),
        "{err}"
    );
}
