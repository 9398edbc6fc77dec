//! The committed golden files (`tests/fixtures/ovbank/vN/small.ovbank`): this
//! build writes the current version's byte for byte, and reads and migrates
//! every older one.

use std::path::PathBuf;

use half::f16;

use super::*;

fn golden_path(version: u32) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join(format!("tests/fixtures/ovbank/v{version}/small.ovbank"))
}

/// The content of the golden file: fixed, small, deterministic.
pub(super) fn golden_builds() -> (Vec<EncoderInfo>, Vec<(ClassBuild, u64)>) {
    let thumb = |k: u64| {
        let mut t = vec![0xff, 0xd8, 0xff, 0xe0];
        t.extend(format!("thumb {k}").bytes());
        t.extend([0xff, 0xd9]);
        t
    };
    let encoders = vec![encoder('1', 8), encoder('2', 4)];
    let builds = vec![
        (
            build("cat", &[('1', 4, 8), ('2', 3, 4)], 11, false, 3, &thumb),
            1_700_000_000,
        ),
        (
            build("sky", &[('1', 2, 8)], 12, true, 2, &thumb),
            1_700_000_100,
        ),
        (
            build("traffic light", &[('2', 5, 4)], 13, false, 2, &thumb),
            1_700_000_200,
        ),
    ];
    (encoders, builds)
}

/// The golden builds as format `version` stores them: format 1 has no
/// build statistics.
fn golden_builds_at(version: u32) -> (Vec<EncoderInfo>, Vec<(ClassBuild, u64)>) {
    let (encoders, mut builds) = golden_builds();
    if version < 2 {
        for (b, _) in &mut builds {
            b.record.stats = None;
        }
    }
    (encoders, builds)
}

/// Checks that `f` holds exactly `builds`.
fn assert_holds(f: &OvBankFile, encoders: &[EncoderInfo], builds: &[(ClassBuild, u64)]) {
    let report = f.verify().unwrap();
    assert_eq!((report.encoders, report.classes, report.blocks), (2, 3, 4));
    assert_eq!(report.prototypes, 4 + 3 + 2 + 5);
    assert_eq!(report.thumbnails, 2 + 1 + 1);
    assert_eq!(f.encoders(), encoders);
    for (b, created) in builds {
        let c = f.class(&b.record.name).unwrap();
        let mut want = class_of(b, *created);
        want.encoders = c.encoders.clone();
        assert_eq!(c, &want);
        for (efp, protos) in &b.encoders {
            let got = f.prototypes(&b.record.name, efp).unwrap();
            assert_eq!(got.len(), protos.len());
            for (g, p) in got.iter().zip(protos) {
                let rounded: Vec<f32> = p
                    .vector
                    .iter()
                    .map(|&x| f16::from_f32(x).to_f32())
                    .collect();
                assert_eq!(g.vector, rounded);
                assert_eq!(g.provenance, p.provenance);
                assert_eq!((g.level, g.side, g.support), (p.level, p.side, p.support));
            }
        }
        for (i, t) in b.thumbnails.iter().enumerate() {
            assert_eq!(f.thumbnail(&b.record.name, i as u32), Some(t.as_slice()));
        }
        assert_eq!(f.thumbnail(&b.record.name, b.thumbnails.len() as u32), None);
    }
}

/// Every committed golden file, of every format version from the oldest
/// supported, opens, verifies, and holds what it was written from; older
/// versions migrate (a rewrite) to exactly what this build writes.
#[test]
fn golden_files_of_every_version_open_and_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let current = OVBANK_FORMAT_VERSION;
    let golden = golden_path(current);
    let (encoders, builds) = golden_builds_at(current);
    let fresh = dir.path().join("fresh.ovbank");
    write_builds(&fresh, &encoders, &builds);
    if !golden.exists() {
        // The create step: writes the current version's fixture once, to be
        // committed. Older fixtures are frozen and never regenerated.
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::copy(&fresh, &golden).unwrap();
        eprintln!("created {}", golden.display());
    }
    // Format stability: this build writes the committed bytes exactly. If this
    // fails, the layout changed: that needs a new format version, not a new fixture.
    assert!(
        std::fs::read(&golden).unwrap() == std::fs::read(&fresh).unwrap(),
        "this build no longer writes the committed v{current} golden file byte for byte"
    );
    for version in OVBANK_OLDEST_SUPPORTED..=current {
        let path = golden_path(version);
        let f = OvBankFile::open(&path)
            .unwrap_or_else(|e| panic!("golden v{version} {}: {e}", path.display()));
        assert_eq!(f.header().format_version, version);
        assert_eq!(f.header().oldest_reader_version, 1);
        let (encoders, builds) = golden_builds_at(version);
        assert_holds(&f, &encoders, &builds);
        // Migration: rewriting gives the current format, with the content
        // the old version could hold, byte for byte what this build writes.
        let migrated = dir.path().join(format!("migrated-v{version}.ovbank"));
        merge(&[&f], &migrated, OnConflict::Skip).unwrap();
        let expected = dir.path().join(format!("expected-v{version}.ovbank"));
        write_builds(&expected, &encoders, &builds);
        assert_eq!(
            std::fs::read(&migrated).unwrap(),
            std::fs::read(&expected).unwrap(),
            "v{version} → v{current}"
        );
        let m = OvBankFile::open(&migrated).unwrap();
        assert_eq!(m.header().format_version, current);
        assert_holds(&m, &encoders, &builds);
    }
}
