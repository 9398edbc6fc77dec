//! Query planning: from a bank and a vocabulary of class names to encoders and matchers ready to segment.
//!
//! A bank records, for every class, the fingerprints of the encoders its
//! prototypes came from. A query needs, for each encoder it uses, the very
//! bundle with that fingerprint (a different encoder's features are not
//! comparable), and every candidate class must have prototypes for it.
//! Several shared encoders are fused late, with equal weight.
//!
//! * [`query_bundles`] finds those bundles (or says which one is missing);
//! * a [`MemberPlan`] is one encoder's vocabulary and matcher, with no
//!   encoder in it, so that threads share it;
//! * [`restrict`] narrows a query to the classes the pre-filter kept;
//! * [`plan`] and [`segment_with`] are the single-threaded path, whose
//!   [`QueryMember`]s own their encoders; [`crate::Segmenter`] is the
//!   shared one.

mod member;
mod narrow;

use std::path::{Path, PathBuf};

pub use member::{ivf_file_blob, ivf_lists_from_file, vocabulary_of, MemberPlan, SharedMatcher};
pub use narrow::{restrict, Restricted};

use crate::engine::{segment_image_ensemble, EnsembleMember, Fused, SegmentOptions};
use crate::{Error, Home, Result};
use member::ivf_matcher;
use ovdiff_match::vocabulary::MAX_CLASSES;
use ovdiff_match::{IvfParams, IvfStats};
use ovdiff_models::features::Encoder;
use ovdiff_models::runtime::manifest::MANIFEST_FILE;
use ovdiff_models::runtime::{Bundle, Runtime, VerifyMode};
use ovdiff_store::bank::{ClassRecord, EncoderInfo};
use ovdiff_store::class_store::ClassStore;

/// The classes of a query, resolved against a bank.
#[derive(Debug, Clone)]
pub struct ResolvedClasses {
    /// The candidate classes, in query order.
    pub records: Vec<ClassRecord>,
}

pub use ovdiff_core::names::{closest_names, edit_distance};

/// The "no such class" error, with the closest known names.
pub fn unknown_class_error(bank: &dyn ClassStore, name: &str) -> Error {
    let classes = bank.classes().unwrap_or_default();
    let near = closest_names(name, classes.iter().map(|c| c.name.as_str()));
    let hint = if near.is_empty() {
        format!(
            "`ovdiff-bank list --bank {}` shows its classes",
            bank.location().display()
        )
    } else {
        let names: Vec<String> = near.iter().map(|n| format!("`{n}`")).collect();
        format!("did you mean {}?", names.join(", "))
    };
    Error::Invalid(format!(
        "no class `{name}` in bank {}; {hint}",
        bank.location().display()
    ))
}

/// Look up the named classes (or all, when `names` is `None`).
pub fn resolve_classes(bank: &dyn ClassStore, names: Option<&[String]>) -> Result<ResolvedClasses> {
    let records = match names {
        None => bank.classes()?,
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                if out.iter().any(|r: &ClassRecord| &r.name == n) {
                    return Err(Error::Invalid(format!("class `{n}` is named twice")));
                }
                match bank.class(n)? {
                    Some(r) => out.push(r),
                    None => return Err(unknown_class_error(bank, n)),
                }
            }
            out
        }
    };
    if records.is_empty() {
        return Err(Error::Invalid(match names {
            None => format!(
                "bank {} has no classes; add some with `ovdiff-bank add`",
                bank.location().display()
            ),
            Some(_) => "the vocabulary is empty; name classes with --classes a,b,c".into(),
        }));
    }
    if records.len() > MAX_CLASSES {
        return Err(Error::Invalid(format!(
            "{} classes asked for; a query holds at most {MAX_CLASSES} (16-bit labels)",
            records.len()
        )));
    }
    Ok(ResolvedClasses { records })
}

/// Fingerprints shared by every candidate class, in the first class's order.
pub fn shared_encoders(classes: &ResolvedClasses) -> Vec<String> {
    let first = &classes.records[0];
    first
        .encoders
        .iter()
        .map(|e| e.fingerprint.clone())
        .filter(|fp| {
            classes
                .records
                .iter()
                .all(|r| r.encoders.iter().any(|e| &e.fingerprint == fp))
        })
        .collect()
}

/// Installed bundles under `<home>/models`, with their fingerprints
/// (computed from manifests and recorded hashes; files are not hashed here).
pub fn installed_bundles(home: &Home) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(home.models_dir()) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .collect();
    dirs.sort();
    for d in dirs {
        if let Ok(b) = Bundle::open(&d, VerifyMode::Off, &home.cache_dir()) {
            out.push((d, b.fingerprint().to_string()));
        }
    }
    out
}

/// `--engine auto` switches from the exact matcher to IVF at this many
/// prototype rows in a query. Measured (`hnsw_benchmark`, which also times
/// IVF, and `bench lookup`; docs/benchmarks.md): IVF is 3.7× faster than
/// exact at 12,400 rows and 7× at 124,000, with the same labels on the
/// synthetic banks; below about 50,000 rows exact matching costs less than
/// the encoder, so the exact answer is kept there.
pub const AUTO_APPROX_MIN_ROWS: usize = 50_000;

/// A matcher: how a query's patches find their prototypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Matching {
    /// Every patch against every row ([`ovdiff_match::Vocabulary`]).
    Exact,
    /// The HNSW graph ([`ovdiff_match::HnswMatcher`]).
    Hnsw,
    /// Inverted lists ([`ovdiff_match::IvfMatcher`]).
    Ivf,
}

impl Matching {
    /// Its name, as `--engine` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Matching::Exact => "exact",
            Matching::Hnsw => "hnsw",
            Matching::Ivf => "ivf",
        }
    }
}

/// How a query picks its [`Matching`]: one named engine, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EnginePolicy {
    /// Exact below [`AUTO_APPROX_MIN_ROWS`] rows, IVF from there.
    #[default]
    Auto,
    /// Always this one.
    Fixed(Matching),
}

impl EnginePolicy {
    /// The matcher for a query (whole, or narrowed by the pre-filter) of
    /// `rows` prototype rows. The same rule holds for both.
    pub fn pick(self, rows: usize) -> Matching {
        match self {
            EnginePolicy::Fixed(m) => m,
            EnginePolicy::Auto if rows >= AUTO_APPROX_MIN_ROWS => Matching::Ivf,
            EnginePolicy::Auto => Matching::Exact,
        }
    }
}

/// One encoder of a query with the encoder itself: for the single-threaded
/// path ([`plan`], [`segment_with`]).
#[derive(Debug)]
pub struct QueryMember {
    /// The encoder.
    pub encoder: Encoder,
    /// Its candidates' rows, vocabulary and matcher.
    pub plan: MemberPlan,
}

impl QueryMember {
    /// A member over `encoder` (its bundle's fingerprint picks the
    /// prototypes; see [`MemberPlan::new`]), matched exactly.
    pub fn new(
        bank: &dyn ClassStore,
        classes: &ResolvedClasses,
        encoder: Encoder,
        threads: usize,
    ) -> Result<QueryMember> {
        let fp = encoder.bundle().fingerprint().to_string();
        let plan = MemberPlan::new(bank, classes, &fp, encoder.dim(), threads)?;
        Ok(QueryMember { encoder, plan })
    }
}

/// What [`index_bank`] did for one encoder of a bank.
#[derive(Debug, Clone)]
pub struct BankIndex {
    /// The encoder's fingerprint.
    pub encoder: String,
    /// Prototype rows of the bank's all-classes query for that encoder (an
    /// upper bound, the records' count, when `ivf` is `None`).
    pub rows: usize,
    /// The lists' statistics (`loaded`: they were already in the cache and
    /// matched these rows); `None` when the bank is below `min_rows`.
    pub ivf: Option<IvfStats>,
}

/// Index a bank after it was written: for each encoder that every class
/// has, build the IVF lists of the bank's all-classes query (the one
/// `segment --all-classes` runs) when it has at least `min_rows` prototype
/// rows ([`AUTO_APPROX_MIN_ROWS`] is where `--engine auto` starts using
/// them), and cache them in `cache_dir`. Lists already cached for exactly
/// these rows are checked and kept; stale ones are never used, because the
/// cache key is the fingerprint of every row, name and parameter. A bank
/// with no classes, or no shared encoder, has nothing to index.
pub fn index_bank(
    store: &dyn ClassStore,
    cache_dir: &Path,
    min_rows: usize,
    threads: usize,
) -> Result<Vec<BankIndex>> {
    let records = store.classes()?;
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let classes = ResolvedClasses { records };
    let mut out = Vec::new();
    for fp in shared_encoders(&classes) {
        // The records' counts bound the rows from above (the stuff rule
        // only drops some): a bank clearly below `min_rows` is skipped
        // without building its vocabulary.
        let most: usize = classes
            .records
            .iter()
            .flat_map(|r| r.encoders.iter().filter(|e| e.fingerprint == fp))
            .map(|e| e.prototype_count as usize)
            .sum();
        if most < min_rows.max(1) {
            out.push(BankIndex {
                encoder: fp,
                rows: most,
                ivf: None,
            });
            continue;
        }
        let (vocabulary, _rows) = vocabulary_of(store, &classes, &fp, threads)?;
        let rows = vocabulary.num_rows();
        let ivf = if rows >= min_rows.max(1) {
            Some(ivf_matcher(&vocabulary, IvfParams::default(), cache_dir, threads)?.stats())
        } else {
            None
        };
        out.push(BankIndex {
            encoder: fp,
            rows,
            ivf,
        });
    }
    Ok(out)
}

/// The encoder bundles a query needs, opened (files checked), one per
/// encoder the candidates share.
///
/// `explicit` bundles (from `--encoder`) must each match a fingerprint the
/// candidates share; otherwise every shared fingerprint is looked up among
/// the installed bundles. A bank encoder that is not installed is an error
/// naming the fingerprints involved.
pub fn query_bundles(
    runtime: &Runtime,
    bank: &dyn ClassStore,
    classes: &ResolvedClasses,
    explicit: &[PathBuf],
) -> Result<Vec<Bundle>> {
    let shared = shared_encoders(classes);
    let known: Vec<EncoderInfo> = bank.encoders()?;
    let describe = |fp: &str| {
        let name = known
            .iter()
            .find(|e| e.fingerprint == fp)
            .map(|e| e.name.as_str())
            .unwrap_or("?");
        format!("{name} ({fp})")
    };
    if shared.is_empty() {
        return Err(Error::Invalid(
            "the candidate classes share no encoder (each was built with a different one); \
             rebuild them with a common --encoder"
                .into(),
        ));
    }
    let mut bundles: Vec<Bundle> = Vec::new();
    if explicit.is_empty() {
        let installed = installed_bundles(runtime.home());
        for fp in &shared {
            match installed.iter().find(|(_, f)| f == fp) {
                Some((dir, _)) => bundles.push(runtime.open_bundle(dir)?),
                None => {
                    return Err(Error::Invalid(format!(
                        "the bank's classes were built with encoder {}, which is not installed \
                         in {} (installed: {}); install that bundle or pass --encoder DIR",
                        describe(fp),
                        runtime.home().models_dir().display(),
                        if installed.is_empty() {
                            "none".to_string()
                        } else {
                            installed
                                .iter()
                                .map(|(d, f)| format!("{} ({})", dir_name(d), &f[..12]))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    )))
                }
            }
        }
    } else {
        for dir in explicit {
            let b = runtime.open_bundle(dir)?;
            if !shared.iter().any(|fp| fp == b.fingerprint()) {
                return Err(Error::Invalid(format!(
                    "encoder {} has fingerprint {}, but the candidate classes were built with: {}; \
                     features of different encoders cannot be compared",
                    b.name(),
                    b.fingerprint(),
                    shared.iter().map(|f| describe(f)).collect::<Vec<_>>().join(", ")
                )));
            }
            bundles.push(b);
        }
    }
    // A record of the bank or file that disagrees with the bundle of its
    // fingerprint (a spoofed record) is refused as import refuses it.
    for b in &bundles {
        let record = known.iter().find(|e| e.fingerprint == b.fingerprint());
        if let (Some(record), Some(spec)) = (record, &b.manifest().encoder) {
            let bundle = EncoderInfo {
                fingerprint: b.fingerprint().to_string(),
                name: b.name().to_string(),
                dim: spec.feature_dim,
                dtype: record.dtype.clone(),
            };
            ovdiff_store::ovbank::check_encoder_record(record, &[bundle])?;
        }
    }
    Ok(bundles)
}

/// Load the encoders a query needs ([`query_bundles`]) and build one exact
/// vocabulary per encoder.
pub fn plan(
    runtime: &Runtime,
    bank: &dyn ClassStore,
    classes: &ResolvedClasses,
    explicit: &[PathBuf],
    threads: usize,
) -> Result<Vec<QueryMember>> {
    let mut members = Vec::new();
    for bundle in query_bundles(runtime, bank, classes, explicit)? {
        let encoder = Encoder::load(runtime, bundle)?;
        members.push(QueryMember::new(bank, classes, encoder, threads)?);
    }
    Ok(members)
}

/// Segment one image with every member of a query, fused late.
pub fn segment_with(
    members: &mut [QueryMember],
    img: &image::RgbImage,
    opts: &SegmentOptions,
) -> Result<Fused> {
    let mut ensemble: Vec<EnsembleMember<'_>> = members
        .iter_mut()
        .map(|m| EnsembleMember {
            encoder: &mut m.encoder,
            matcher: &*m.plan.matcher,
        })
        .collect();
    segment_image_ensemble(&mut ensemble, img, opts)
}

fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_alike_for_whole_and_narrowed_queries() {
        let auto = EnginePolicy::default();
        assert_eq!(auto.pick(0), Matching::Exact);
        assert_eq!(auto.pick(AUTO_APPROX_MIN_ROWS - 1), Matching::Exact);
        assert_eq!(auto.pick(AUTO_APPROX_MIN_ROWS), Matching::Ivf);
        for m in [Matching::Exact, Matching::Hnsw, Matching::Ivf] {
            assert_eq!(EnginePolicy::Fixed(m).pick(3), m);
            assert_eq!(EnginePolicy::Fixed(m).pick(1 << 30), m);
        }
    }

    #[test]
    fn closest_names_are_suggested() {
        let known = ["person", "cat", "cup", "rocket"];
        assert_eq!(closest_names("persn", known), vec!["person"]);
        assert_eq!(closest_names("cap", known)[..2], ["cat", "cup"]);
        assert!(closest_names("zzzzzzzz", known).is_empty());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// The `.ovbank` figures that need a matcher (`scripts/bench`; the rest
    /// are `ovdiff-store`'s `perf_thousand_classes`): a synthetic bank of
    /// `OVBANK_PERF_CLASSES` classes (default 1,000) exported with IVF lists
    /// in its `ann` section, then opened for an `--all-classes` query.
    #[test]
    #[ignore = "timing; run in release"]
    fn perf_file_with_ivf_lists() {
        use std::time::{Duration, Instant};

        use ovdiff_store::bank::{ClassRecord, EncoderInfo};
        use ovdiff_store::class_store::FileStore;

        let n: usize = std::env::var("OVBANK_PERF_CLASSES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let dir = tempfile::tempdir().unwrap();
        let (bank2, enc) = ovdiff_store::synthetic::perf_bank(&dir.path().join("bank"), n);
        // The same file with IVF lists in its `ann` section, then opened for an
        // `--all-classes` query: open, classes, vocabulary over the mapped
        // rows, lists from the file (everything `segment` does before the
        // first window but loading the encoder model).
        let ann_path = dir.path().join("ann.ovbank");
        let t = Instant::now();
        let blob_of = |records: &[ClassRecord],
                       e: &EncoderInfo|
         -> std::result::Result<(String, Vec<u8>), String> {
            ivf_file_blob(&bank2, records, &e.fingerprint).map_err(|err| err.to_string())
        };
        ovdiff_store::ovbank::export_with(&bank2, None, &ann_path, Some(&blob_of)).unwrap();
        let export_ann = t.elapsed();
        let mut open_ann = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let store = FileStore::open(&ann_path).unwrap();
            // every class
            let classes = ResolvedClasses {
                records: store.classes().unwrap(),
            };
            let t1 = Instant::now();
            let (vocab, rows) = vocabulary_of(&store, &classes, &enc.fingerprint, 0).unwrap();
            let t2 = Instant::now();
            let lists =
                ivf_lists_from_file(&store, &vocab, &rows, &enc.fingerprint, Default::default());
            println!(
                "perf: open for queries: open + classes {:.2?}, vocabulary {:.2?}, lists {:.2?}",
                t1 - t,
                t2 - t1,
                t2.elapsed()
            );
            assert!(lists.is_some_and(|l| l.stats().from_file));
            open_ann = open_ann.min(t.elapsed());
        }
        println!("perf: export with IVF lists {export_ann:.2?}, open for queries with the lists {open_ann:.2?}");

        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let met = |d: Duration, limit: f64| {
            if d.as_secs_f64() <= limit {
                "yes"
            } else {
                "**no**"
            }
        };
        // The rows scripts/bench collects into docs/benchmarks.md.
        println!(
            "| export with IVF lists (`export --ann`: clustering included) | {} | | |",
            s(export_ann)
        );
        println!(
            "| open for an `--all-classes` query with the IVF lists in the file (open, classes, vocabulary over the mapped rows, lists; not the encoder model) | {} | ≤ 0.5 s | {} |",
            ms(open_ann),
            met(open_ann, 0.5)
        );
    }
}
