//! Storing, reading, listing, replacing, removing and renaming classes; encoders and the validation of builds.

use super::*;

#[test]
fn round_trip_of_all_record_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let (ea, eb) = (encoder('a', 24), encoder('b', 40));
    let b = build("cat", &[('a', 7, 24), ('b', 5, 40)], 1);
    let stored = {
        let bank = open_with(&path, &[ea.clone(), eb.clone()]);
        assert_eq!(bank.format_version(), BANK_FORMAT_VERSION);
        assert_eq!(bank.leftovers_cleaned(), 0);
        bank.put_class(&b, false).unwrap()
    };
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.leftovers_cleaned(), 0);
    assert_eq!(bank.created_by().unwrap().as_deref(), Some(TOOL_VERSION));
    assert_eq!(bank.encoders().unwrap(), vec![ea.clone(), eb.clone()]);
    assert_eq!(bank.encoder(&ea.fingerprint).unwrap(), Some(ea.clone()));
    let rec = bank.class("cat").unwrap().unwrap();
    assert_eq!(rec, stored);
    assert_eq!(rec.support, b.record.support);
    assert_eq!(rec.source, b.record.source);
    assert_eq!(
        (rec.images_used, rec.images_skipped, rec.fallback_splits),
        (4, 1, 2)
    );
    assert_eq!(rec.encoders.len(), 2);
    assert_eq!(rec.encoders[0].prototype_count, 7);
    assert_eq!(rec.encoders[0].counts.total(), 7);
    assert_eq!(
        rec.encoders[0].counts,
        PrototypeCounts::of(&b.encoders[0].1)
    );
    assert_protos_close(&bank.prototypes(&rec, &fp('a')).unwrap(), &b.encoders[0].1);
    assert_protos_close(&bank.prototypes(&rec, &fp('b')).unwrap(), &b.encoders[1].1);
    for (i, t) in b.thumbnails.iter().enumerate() {
        assert_eq!(bank.thumbnail(&rec, i as u32).unwrap().as_ref(), Some(t));
    }
    assert_eq!(bank.thumbnail(&rec, 99).unwrap(), None);
    assert!(matches!(
        bank.prototypes(&rec, &fp('c')),
        Err(BankError::EncoderNotInClass { .. })
    ));
}

#[test]
fn classes_are_sorted_and_replace_needs_permission() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_with(dir.path(), &[encoder('a', 8)]);
    for name in ["zebra", "apple", "Mango"] {
        bank.put_class(&build(name, &[('a', 3, 8)], 2), false)
            .unwrap();
    }
    let names: Vec<_> = bank
        .classes()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Mango", "apple", "zebra"]);
    let before = (
        entries(&bank, TreeId::Prototypes),
        entries(&bank, TreeId::Support),
        builds(&bank),
    );
    let err = bank
        .put_class(&build("apple", &[('a', 3, 8)], 3), false)
        .unwrap_err();
    assert!(
        matches!(err, BankError::ClassExists { ref name, .. } if name == "apple"),
        "{err}"
    );
    assert_eq!(
        (
            entries(&bank, TreeId::Prototypes),
            entries(&bank, TreeId::Support),
            builds(&bank)
        ),
        before
    );
    let old = bank.class("apple").unwrap().unwrap();
    let new = bank
        .put_class(&build("apple", &[('a', 5, 8)], 4), true)
        .unwrap();
    assert_ne!(old.build_id, new.build_id);
    assert_eq!(bank.class("apple").unwrap().unwrap(), new);
    // The old build is gone, the new one complete: one build file per class.
    assert_eq!(builds(&bank), 3);
    assert!(matches!(
        bank.prototypes(&old, &fp('a')),
        Err(BankError::StaleClass { build_id, .. }) if build_id == old.build_id
    ));
    assert_eq!(bank.prototypes(&new, &fp('a')).unwrap().len(), 5);
}

#[test]
fn remove_deletes_class_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_with(dir.path(), &[encoder('a', 8)]);
    bank.put_class(&build("a", &[('a', 3, 8)], 1), false)
        .unwrap();
    bank.put_class(&build("b", &[('a', 2, 8)], 2), false)
        .unwrap();
    assert!(bank.remove_class("a").unwrap());
    assert!(bank.class("a").unwrap().is_none());
    assert_eq!(builds(&bank), 1);
    assert!(!bank.remove_class("a").unwrap());
    assert!(bank.class("b").unwrap().is_some());
}

#[test]
fn rename_moves_the_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let b = build("kitty", &[('a', 3, 8)], 1);
    {
        let bank = open_with(&path, &[encoder('a', 8)]);
        bank.put_class(&b, false).unwrap();
        bank.put_class(&build("dog", &[('a', 2, 8)], 2), false)
            .unwrap();
        bank.rename_class("kitty", "cat").unwrap();
        let err = bank.rename_class("kitty", "lion").unwrap_err();
        assert!(
            matches!(err, BankError::ClassNotFound { ref name, .. } if name == "kitty"),
            "{err}"
        );
        let err = bank.rename_class("cat", "dog").unwrap_err();
        assert!(
            matches!(err, BankError::ClassExists { ref name, .. } if name == "dog"),
            "{err}"
        );
        let err = bank.rename_class("cat", "cat\t").unwrap_err();
        assert!(matches!(err, BankError::InvalidClassName { .. }), "{err}");
    }
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.leftovers_cleaned(), 0);
    assert!(bank.class("kitty").unwrap().is_none());
    let rec = bank.class("cat").unwrap().unwrap();
    assert_eq!(rec.name, "cat");
    assert_protos_close(&bank.prototypes(&rec, &fp('a')).unwrap(), &b.encoders[0].1);
}

#[test]
fn encoder_registration_and_dimension_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_with(dir.path(), &[encoder('a', 8)]);
    bank.register_encoder(&encoder('a', 8)).unwrap(); // idempotent
                                                      // While no class uses it, a record of another dimension is a leftover
                                                      // and is replaced (issue #20: a stale record must not lock the bank).
    bank.register_encoder(&encoder('a', 16)).unwrap();
    assert_eq!(bank.encoders().unwrap(), vec![encoder('a', 16)]);
    bank.register_encoder(&encoder('a', 8)).unwrap();
    bank.put_class(&build("used", &[('a', 2, 8)], 1), false)
        .unwrap();
    let err = bank.register_encoder(&encoder('a', 16)).unwrap_err();
    assert!(
        matches!(
            err,
            BankError::DimensionMismatch {
                expected: 8,
                found: 16,
                ..
            }
        ),
        "{err}"
    );
    let err = bank
        .put_class(&build("x", &[('a', 2, 7)], 1), false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            BankError::DimensionMismatch {
                expected: 8,
                found: 7,
                ..
            }
        ),
        "{err}"
    );
    let err = bank
        .put_class(&build("x", &[('b', 2, 8)], 1), false)
        .unwrap_err();
    assert!(matches!(err, BankError::UnknownEncoder { .. }), "{err}");
    let mut bad = encoder('c', 8);
    bad.fingerprint = "C".repeat(64);
    assert!(matches!(
        bank.register_encoder(&bad),
        Err(BankError::InvalidEncoder { .. })
    ));
    let mut bad = encoder('c', 8);
    bad.dtype = "f32".into();
    assert!(matches!(
        bank.register_encoder(&bad),
        Err(BankError::InvalidEncoder { .. })
    ));
    assert!(matches!(
        bank.register_encoder(&encoder('c', 70_000)),
        Err(BankError::InvalidEncoder { .. })
    ));
    assert_eq!(bank.encoders().unwrap(), vec![encoder('a', 8)]);
}

/// Issue #20, case 4: an encoder record that no class uses is dropped when
/// the last class using it goes, and reported until then.
#[test]
fn removing_the_last_class_of_an_encoder_drops_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_with(dir.path(), &[encoder('a', 8), encoder('b', 4)]);
    bank.put_class(&build("one", &[('a', 2, 8), ('b', 2, 4)], 1), false)
        .unwrap();
    bank.put_class(&build("two", &[('a', 2, 8)], 2), false)
        .unwrap();
    assert!(bank.unused_encoders().unwrap().is_empty());
    // Replacing "one" with a build of `a` only leaves `b` unused: dropped.
    bank.put_class(&build("one", &[('a', 3, 8)], 3), true)
        .unwrap();
    assert_eq!(bank.encoders().unwrap(), vec![encoder('a', 8)]);
    assert!(bank.remove_class("one").unwrap());
    assert_eq!(bank.encoders().unwrap(), vec![encoder('a', 8)]);
    assert!(bank.remove_class("two").unwrap());
    assert!(bank.encoders().unwrap().is_empty());
    // A leftover (registered, never used) is reported by verify, with the
    // fix-up, and the fix-up removes it.
    bank.register_encoder(&encoder('c', 16)).unwrap();
    let report = crate::bank::verify_bank(&bank).unwrap();
    assert!(report.ok());
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("is used by no class"),
        "{:?}",
        report.warnings
    );
    assert!(
        report.warnings[0].contains("--repair"),
        "{:?}",
        report.warnings
    );
    assert_eq!(bank.drop_unused_encoders().unwrap(), vec![encoder('c', 16)]);
    assert!(crate::bank::verify_bank(&bank).unwrap().warnings.is_empty());
}

#[test]
fn invalid_names_and_builds_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bank = open_with(dir.path(), &[encoder('a', 8)]);
    for name in ["", " cat", "cat ", "ca\u{7}t", &"x".repeat(129)] {
        let err = bank
            .put_class(&build(name, &[('a', 2, 8)], 1), false)
            .unwrap_err();
        assert!(
            matches!(err, BankError::InvalidClassName { .. }),
            "{name:?}: {err}"
        );
    }
    let invalid = |b: ClassBuild| {
        let err = bank.put_class(&b, false).unwrap_err();
        assert!(matches!(err, BankError::InvalidBuild { .. }), "{err}");
    };
    let mut b = build("x", &[('a', 2, 8)], 1);
    b.encoders[0].1[1].provenance.image = 4;
    invalid(b);
    let mut b = build("x", &[('a', 2, 8)], 1);
    b.encoders[0].1[0].provenance.region.pop();
    invalid(b);
    let mut b = build("x", &[('a', 2, 8)], 1);
    b.record.stuff = true;
    invalid(b); // prototype 1 is background
    let mut b = build("x", &[('a', 2, 8)], 1);
    b.encoders.push(b.encoders[0].clone());
    invalid(b);
    let mut b = build("x", &[('a', 2, 8)], 1);
    b.thumbnails.push(vec![1]);
    invalid(b);
    let mut b = build("x", &[('a', 2, 8)], 1);
    b.encoders[0].1[0].vector[0] = f32::NAN;
    invalid(b);
    invalid(build("x", &[('a', 0, 8)], 1));
    assert!(bank.classes().unwrap().is_empty());
    assert_eq!(entries(&bank, TreeId::Prototypes), 0);
}
