//! Determinism (proptest): `export → import → export` gives the same bytes,
//! and merging files of disjoint classes is associative byte for byte.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;
use crate::synthetic::noise;

#[derive(Debug, Clone)]
struct ClassSpec {
    stuff: bool,
    images: u32,
    /// (encoder index into ENCODERS, prototype count)
    blocks: Vec<(usize, usize)>,
    seed: u64,
}

const ENCODERS: [(char, u32); 3] = [('a', 8), ('b', 4), ('c', 3)];

fn class_spec() -> impl Strategy<Value = ClassSpec> {
    (
        any::<bool>(),
        1u32..4,
        proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3),
        proptest::collection::vec(1usize..6, 3),
        any::<u64>(),
    )
        .prop_map(|(stuff, images, encs, counts, seed)| ClassSpec {
            stuff,
            images,
            blocks: encs.into_iter().map(|e| (e, counts[e])).collect(),
            seed: seed % 1_000_000,
        })
}

fn spec_build(name: &str, s: &ClassSpec) -> ClassBuild {
    let encs: Vec<(char, usize, usize)> = s
        .blocks
        .iter()
        .map(|&(e, n)| (ENCODERS[e].0, n, ENCODERS[e].1 as usize))
        .collect();
    let thumb = |k: u64| {
        let mut t = vec![0xff, 0xd8];
        t.extend(
            noise(k, (k % 40) as usize)
                .iter()
                .map(|&x| (x * 100.0) as i8 as u8),
        );
        t
    };
    build(name, &encs, s.seed, s.stuff, s.images, &thumb)
}

fn all_encoders() -> Vec<EncoderInfo> {
    ENCODERS.iter().map(|&(c, d)| encoder(c, d)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn export_import_export_is_identical(
        specs in proptest::collection::btree_map("[a-d]{1,3}( [a-d]{1,2})?", class_spec(), 1..4)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let bank = new_bank(&dir.path().join("b1"), &all_encoders());
        for (name, s) in &specs {
            bank.put_class(&spec_build(name, s), false).unwrap();
        }
        let first = dir.path().join("1.ovbank");
        export(&bank, None, &first).unwrap();
        let bank2 = Bank::open(&dir.path().join("b2")).unwrap();
        let f = OvBankFile::open(&first).unwrap();
        let st = import(&f, &bank2, OnConflict::Skip).unwrap();
        prop_assert_eq!(st.added.len(), specs.len());
        let second = dir.path().join("2.ovbank");
        export(&bank2, None, &second).unwrap();
        assert_same_but_created(&first, &second);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_associative_for_disjoint_classes(
        specs in proptest::collection::btree_map("[a-z]{1,4}", (0usize..3, class_spec(), 0u64..2_000_000_000), 0..7)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let encs = all_encoders();
        let paths: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("{i}.ovbank"))).collect();
        for (i, p) in paths.iter().enumerate() {
            let builds: Vec<(ClassBuild, u64)> = specs
                .iter()
                .filter(|(_, (part, _, _))| *part == i)
                .map(|(name, (_, s, created))| (spec_build(name, s), *created))
                .collect();
            let used: Vec<EncoderInfo> = encs
                .iter()
                .filter(|e| builds.iter().any(|(b, _)| b.encoders.iter().any(|(f, _)| *f == e.fingerprint)))
                .cloned()
                .collect();
            write_builds(p, &used, &builds);
        }
        let files: Vec<OvBankFile> = paths.iter().map(|p| OvBankFile::open(p).unwrap()).collect();
        let (a, b, c) = (&files[0], &files[1], &files[2]);
        let out = |n: &str| dir.path().join(n);
        merge(&[a, b], &out("ab"), OnConflict::Skip).unwrap();
        merge(&[b, c], &out("bc"), OnConflict::Skip).unwrap();
        let ab = OvBankFile::open(&out("ab")).unwrap();
        let bc = OvBankFile::open(&out("bc")).unwrap();
        merge(&[&ab, c], &out("ab_c"), OnConflict::Skip).unwrap();
        merge(&[a, &bc], &out("a_bc"), OnConflict::Skip).unwrap();
        merge(&[c, b, a], &out("cba"), OnConflict::Skip).unwrap();
        let left = std::fs::read(out("ab_c")).unwrap();
        prop_assert!(left == std::fs::read(out("a_bc")).unwrap());
        prop_assert!(left == std::fs::read(out("cba")).unwrap());
        let m = OvBankFile::open(&out("ab_c")).unwrap();
        prop_assert_eq!(m.classes().len(), specs.len());
        m.verify().unwrap();
    }
}
