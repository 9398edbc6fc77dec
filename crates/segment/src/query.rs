//! Query planning: from a bank and a vocabulary of class names to encoders and matchers ready to segment.
//!
//! A bank records, for every class, the fingerprints of the encoders its
//! prototypes came from. A query needs, for each encoder it uses, the very
//! bundle with that fingerprint (a different encoder's features are not
//! comparable), and every candidate class must have prototypes for it.
//! Several shared encoders are fused late, with equal weight.

use std::path::{Path, PathBuf};

use crate::engine::{segment_image_ensemble, EnsembleMember, SegmentOptions, Segmentation};
use crate::{Error, Home, Result};
use ovdiff_core::prototype::Side;
use ovdiff_match::ivf::IVF_ALGORITHM;
use ovdiff_match::vocabulary::MAX_CLASSES;
use ovdiff_match::{Candidate, ProtoRef, Vocabulary};
use ovdiff_match::{Fingerprint, HnswMatcher, HnswParams, IvfMatcher, IvfParams, IvfStats};
use ovdiff_models::features::Encoder;
use ovdiff_models::runtime::manifest::MANIFEST_FILE;
use ovdiff_models::runtime::{Bundle, Runtime, VerifyMode};
use ovdiff_store::bank::{ClassRecord, EncoderInfo};
use ovdiff_store::class_store::{ClassRows, ClassStore};

/// The classes of a query, resolved against a bank.
#[derive(Debug, Clone)]
pub struct ResolvedClasses {
    /// The candidate classes, in query order.
    pub records: Vec<ClassRecord>,
}

/// Known class names closest to `name` (edit distance), best first.
pub fn closest_names<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let lower = name.to_lowercase();
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (edit_distance(&lower, &k.to_lowercase()), k))
        .collect();
    scored.sort();
    let limit = (name.chars().count() / 2).max(2);
    scored
        .into_iter()
        .filter(|(d, _)| *d <= limit)
        .take(3)
        .map(|(_, k)| k)
        .collect()
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

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

/// One encoder of a query: the loaded encoder, its matcher, and each
/// candidate's prototypes (for explanations).
#[derive(Debug)]
pub struct QueryMember {
    /// The encoder.
    pub encoder: Encoder,
    /// Its candidates, stacked.
    pub vocabulary: Vocabulary,
    /// Per candidate (query order), its prototypes as f16 rows (shared
    /// with the vocabulary, not copied) and metas, in stored order.
    pub classes: Vec<ClassRows>,
    /// An approximate matcher over the same rows, when the query uses HNSW.
    pub hnsw: Option<HnswMatcher>,
    /// An approximate matcher over the same rows, when the query uses IVF.
    pub ivf: Option<IvfMatcher>,
}

/// `--engine auto` switches from the exact matcher to IVF at this many
/// prototype rows in a query. Measured (`hnsw_benchmark`, which also times
/// IVF, and `bench lookup`; docs/benchmarks.md): IVF is 3.7× faster than
/// exact at 12,400 rows and 7× at 124,000, with the same labels on the
/// synthetic banks; below about 50,000 rows exact matching costs less than
/// the encoder, so the exact answer is kept there.
pub const AUTO_APPROX_MIN_ROWS: usize = 50_000;

/// The former name of [`AUTO_APPROX_MIN_ROWS`] (auto used HNSW above it).
pub const AUTO_HNSW_MIN_ROWS: usize = AUTO_APPROX_MIN_ROWS;

/// A matcher: how a query's patches find their prototypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// Every patch against every row ([`Vocabulary`]).
    Exact,
    /// The HNSW graph ([`HnswMatcher`]).
    Hnsw,
    /// Inverted lists ([`IvfMatcher`]).
    Ivf,
}

/// How a query picks its [`Matching`]: one named engine, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl QueryMember {
    /// A member over `encoder` (its bundle's fingerprint picks the
    /// prototypes): each class's f16 rows as the store holds them (mapped,
    /// for a file) and a vocabulary that refers to them.
    pub fn new(
        bank: &dyn ClassStore,
        classes: &ResolvedClasses,
        encoder: Encoder,
        threads: usize,
    ) -> Result<QueryMember> {
        let fp = encoder.bundle().fingerprint().to_string();
        let (vocabulary, rows) = vocabulary_of(bank, classes, &fp, threads)?;
        let wrong = rows
            .iter()
            .zip(&classes.records)
            .find(|(c, _)| !c.rows.is_empty() && c.rows.dim() != encoder.dim());
        if let Some((class, rec)) = wrong {
            return Err(Error::DimensionMismatch {
                what: format!("prototypes of `{}`", rec.name),
                expected: encoder.dim().to_string(),
                found: class.rows.dim().to_string(),
            });
        }
        Ok(QueryMember {
            encoder,
            vocabulary,
            classes: rows,
            hnsw: None,
            ivf: None,
        })
    }

    /// Switch this member to HNSW: load the graph from `cache_dir` when a
    /// cached one matches these exact rows and parameters (never trusted
    /// otherwise), else build it and cache it.
    pub fn use_hnsw(&mut self, cache_dir: &Path, threads: usize) -> Result<()> {
        self.hnsw = Some(hnsw_matcher(&self.vocabulary, cache_dir, threads)?);
        Ok(())
    }

    /// Switch this member to IVF: use the lists in the bank file when it
    /// has some for exactly these rows; else load them from `cache_dir`
    /// when a cached set matches these exact rows and parameters (never
    /// trusted otherwise); else cluster the rows (seconds at 1,000 classes)
    /// and cache the lists. Returns the statistics.
    pub fn use_ivf(
        &mut self,
        store: &dyn ClassStore,
        cache_dir: &Path,
        threads: usize,
    ) -> Result<IvfStats> {
        let params = IvfParams::default();
        let ivf = match self.file_lists(store, params) {
            Some(m) => m.with_threads(threads),
            None => ivf_matcher(&self.vocabulary, params, cache_dir, threads)?,
        };
        let stats = ivf.stats();
        self.ivf = Some(ivf);
        Ok(stats)
    }

    /// The IVF lists of the bank file's `ann` section, when it has lists of
    /// this build's parameters that cover this member's rows.
    fn file_lists(&self, store: &dyn ClassStore, params: IvfParams) -> Option<IvfMatcher> {
        ivf_lists_from_file(
            store,
            &self.vocabulary,
            &self.classes,
            self.encoder.bundle().fingerprint(),
            params,
        )
    }
}

/// The vocabulary of `classes` for the encoder with fingerprint `fp`, over
/// the f16 rows `store` holds (shared with a mapped file, not copied), and
/// each class's rows and metas.
pub fn vocabulary_of(
    store: &dyn ClassStore,
    classes: &ResolvedClasses,
    fp: &str,
    threads: usize,
) -> Result<(Vocabulary, Vec<ClassRows>)> {
    let mut candidates = Vec::new();
    let mut rows = Vec::new();
    for rec in &classes.records {
        let class = store.prototype_rows(rec, fp)?;
        candidates.push(half_candidate(&rec.name, rec.stuff, &class)?);
        rows.push(class);
    }
    let vocabulary = match known_drops(store, classes, &rows, fp) {
        Some(listed) => {
            let (start, listed) = listed;
            Vocabulary::with_known_drops(candidates, &|i, id| !listed[start[i] + id as usize])?
        }
        None => Vocabulary::new(candidates)?,
    };
    Ok((vocabulary.with_threads(threads), rows))
}

/// When `store` is a bank file with IVF lists for encoder `fp` and the query
/// holds exactly the file's classes with that encoder, the stuff rule's
/// outcome recorded by the lists: each query class's first position in the
/// file, and which positions are listed (a background prototype not listed
/// was dropped). `None` when the lists do not apply, or when they do not
/// list every foreground prototype (then the rule runs as usual).
fn known_drops(
    store: &dyn ClassStore,
    classes: &ResolvedClasses,
    rows: &[ClassRows],
    fp: &str,
) -> Option<(Vec<usize>, Vec<bool>)> {
    let blob = store.ann_blob(fp, IVF_ALGORITHM)?;
    let names: Vec<&str> = classes.records.iter().map(|r| r.name.as_str()).collect();
    let (start, space) = file_starts(store, &names, rows, fp)?;
    let dim = rows.iter().map(|r| r.rows.dim()).find(|&d| d > 0)?;
    let listed = IvfMatcher::listed_in_file_blob(&IvfParams::default(), blob, dim, space).ok()?;
    let fg_listed = rows.iter().zip(&start).all(|(r, &s)| {
        r.metas
            .iter()
            .enumerate()
            .all(|(i, m)| m.side != Side::Foreground || listed[s + i])
    });
    fg_listed.then_some((start, listed))
}

/// IVF lists over `vocabulary` (whose classes' rows are `rows`, in query
/// order) from the `ann` section of the bank file `store`, when it holds
/// lists of this build's `params` for encoder `fp` and the query holds
/// exactly the file's classes with that encoder (`--all-classes`).
pub fn ivf_lists_from_file(
    store: &dyn ClassStore,
    vocabulary: &Vocabulary,
    rows: &[ClassRows],
    fp: &str,
    params: IvfParams,
) -> Option<IvfMatcher> {
    let blob = store.ann_blob(fp, IVF_ALGORITHM)?;
    let names: Vec<&str> = vocabulary.names().iter().map(String::as_str).collect();
    let (start, space) = file_starts(store, &names, rows, fp)?;
    let mut row_at = vec![None; space];
    for (r, p) in row_positions(vocabulary, &start).into_iter().enumerate() {
        row_at[p as usize] = Some(r as u32);
    }
    IvfMatcher::from_file_blob(vocabulary, params, blob, &row_at).ok()
}

/// Where the query's classes (`names`, with their rows `rows`) begin in the
/// block order of the bank file `store` for encoder `fp` (the file's
/// classes in order, then each class's prototypes), and how many positions
/// there are. `None` unless the query holds exactly the file's classes with
/// that encoder, in any order.
fn file_starts(
    store: &dyn ClassStore,
    names: &[&str],
    rows: &[ClassRows],
    fp: &str,
) -> Option<(Vec<usize>, usize)> {
    let file = store.classes().ok()?;
    let file: Vec<&ClassRecord> = file
        .iter()
        .filter(|r| r.encoders.iter().any(|e| e.fingerprint == fp))
        .collect();
    if file.len() != names.len() {
        return None;
    }
    let query: std::collections::HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut start = vec![0; names.len()];
    let mut space = 0;
    for rec in file {
        let i = *query.get(rec.name.as_str())?;
        start[i] = space;
        space += rows[i].rows.len();
    }
    Some((start, space))
}

/// Each vocabulary row's position in a file's block order: its class's
/// first position (`start`, in query order) plus its id in the class.
fn row_positions(vocabulary: &Vocabulary, start: &[usize]) -> Vec<u32> {
    (0..vocabulary.num_rows() as u32)
        .map(|r| {
            let p = vocabulary
                .proto_ref(r)
                .expect("invariant: every row has a prototype");
            (start[usize::from(p.class) - 1] + p.id as usize) as u32
        })
        .collect()
}

/// The `ann` blob of IVF lists for a bank file holding `records` (in file
/// order) with encoder `fp`, built over the vocabulary an `--all-classes`
/// query of that file stacks; row ids are positions in the file's block
/// order. Returns the algorithm name and the blob.
pub fn ivf_file_blob(
    store: &dyn ClassStore,
    records: &[ClassRecord],
    fp: &str,
) -> Result<(String, Vec<u8>)> {
    let mut candidates = Vec::with_capacity(records.len());
    let mut start = Vec::with_capacity(records.len());
    let mut space = 0usize;
    for rec in records {
        let class = store.prototype_rows(rec, fp)?;
        start.push(space);
        space += class.rows.len();
        candidates.push(half_candidate(&rec.name, rec.stuff, &class)?);
    }
    let vocabulary = Vocabulary::new(candidates)?;
    let ivf = IvfMatcher::from_vocabulary(&vocabulary, IvfParams::default())?;
    let position = row_positions(&vocabulary, &start);
    Ok((
        IVF_ALGORITHM.to_string(),
        ivf.to_file_blob(&position, space),
    ))
}

/// An HNSW matcher over `vocabulary`'s rows: loaded from `cache_dir` when a
/// cached graph matches these exact rows and parameters (never trusted
/// otherwise), else built and cached.
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

/// IVF lists over `vocabulary`'s rows: loaded from `cache_dir` when a
/// cached set matches these exact rows and parameters (never trusted
/// otherwise), else clustered and cached.
fn ivf_matcher(
    vocabulary: &Vocabulary,
    params: IvfParams,
    cache_dir: &Path,
    threads: usize,
) -> Result<IvfMatcher> {
    let fp = IvfMatcher::fingerprint(vocabulary, &params);
    let path = cache_dir
        .join("ivf")
        .join(format!("{}.lists", hex::encode(fp)));
    let matcher = match IvfMatcher::load(vocabulary, params, &fp, &path)? {
        Ok(m) => m,
        Err(_) => {
            let m = IvfMatcher::from_vocabulary(vocabulary, params)?;
            if let Some(dir) = path.parent() {
                if std::fs::create_dir_all(dir).is_ok() {
                    // a cache that cannot be written costs time, not correctness
                    let _ = m.save(&fp, &path);
                }
            }
            m
        }
    };
    Ok(matcher.with_threads(threads))
}

fn hnsw_matcher(vocabulary: &Vocabulary, cache_dir: &Path, threads: usize) -> Result<HnswMatcher> {
    let params = HnswParams::default();
    let fp = Fingerprint::new(vocabulary, &params);
    let path = cache_dir
        .join("hnsw")
        .join(format!("{}.graph", fp.to_hex()));
    let matcher = match HnswMatcher::load(&path, &fp)? {
        Some(m) => m,
        None => {
            let m = HnswMatcher::from_vocabulary(vocabulary, params)?;
            if std::fs::create_dir_all(path.parent().expect("invariant: has a parent")).is_ok() {
                // a cache that cannot be written costs time, not correctness
                let _ = m.save(&path);
            }
            m
        }
    };
    Ok(matcher.with_threads(threads))
}

/// A query narrowed to some of its candidates (the CLIP pre-filter's
/// choice for one image): per encoder, a vocabulary of only those classes,
/// so that their background prototypes alone stand for background.
#[derive(Debug)]
pub struct Restricted {
    /// The kept candidates (indices into the query), in query order.
    pub kept: Vec<usize>,
    /// Per member, the vocabulary of the kept candidates.
    pub vocabularies: Vec<Vocabulary>,
    /// Per member, the matcher its rows picked.
    pub matching: Vec<Matching>,
    hnsw: Vec<Option<HnswMatcher>>,
    ivf: Vec<Option<IvfMatcher>>,
}

impl Restricted {
    /// What row `row` of member `member`'s restricted vocabulary is, with
    /// `class` given as the label in the whole query (1-based).
    pub fn proto_ref(&self, member: usize, row: u32) -> Option<ProtoRef> {
        let mut r = self.vocabularies.get(member)?.proto_ref(row)?;
        r.class = u16::try_from(*self.kept.get(usize::from(r.class).checked_sub(1)?)? + 1).ok()?;
        Some(r)
    }
}

/// Narrow `members` to the candidates `keep` (indices into the query; at
/// least one). Each member's narrowed rows pick their matcher by `engine`,
/// as a whole query's do; graphs and lists are cached in `cache_dir`.
pub fn restrict(
    members: &[QueryMember],
    keep: &[usize],
    engine: EnginePolicy,
    cache_dir: &Path,
    threads: usize,
) -> Result<Restricted> {
    let mut kept = keep.to_vec();
    kept.sort_unstable();
    kept.dedup();
    let Some(first) = members.first() else {
        return Err(Error::Invalid("no encoder to segment with".into()));
    };
    if kept.is_empty() || kept.iter().any(|&i| i >= first.vocabulary.num_classes()) {
        return Err(Error::Invalid(format!(
            "cannot narrow a query of {} classes to {keep:?}",
            first.vocabulary.num_classes()
        )));
    }
    let mut vocabularies = Vec::with_capacity(members.len());
    let mut matching = Vec::with_capacity(members.len());
    let mut hnsw = Vec::with_capacity(members.len());
    let mut ivf = Vec::with_capacity(members.len());
    for m in members {
        let candidates = kept
            .iter()
            .map(|&i| {
                half_candidate(
                    &m.vocabulary.names()[i],
                    m.vocabulary.is_stuff(i + 1),
                    &m.classes[i],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let vocabulary = Vocabulary::new(candidates)?.with_threads(threads);
        let pick = engine.pick(vocabulary.num_rows());
        hnsw.push(match pick {
            Matching::Hnsw => Some(hnsw_matcher(&vocabulary, cache_dir, threads)?),
            _ => None,
        });
        ivf.push(match pick {
            Matching::Ivf => Some(ivf_matcher(
                &vocabulary,
                IvfParams::default(),
                cache_dir,
                threads,
            )?),
            _ => None,
        });
        matching.push(pick);
        vocabularies.push(vocabulary);
    }
    Ok(Restricted {
        kept,
        vocabularies,
        matching,
        hnsw,
        ivf,
    })
}

/// Segment one image with the narrowed query: labels are those of the
/// whole query (`1..K` in query order), and only the kept ones occur.
pub fn segment_restricted(
    members: &mut [QueryMember],
    restricted: &Restricted,
    img: &image::RgbImage,
    opts: &SegmentOptions,
) -> Result<Segmentation> {
    if members.len() != restricted.vocabularies.len() {
        return Err(Error::Invalid(
            "the narrowed query has another number of encoders".into(),
        ));
    }
    let all_names: Vec<String> = members
        .first()
        .map(|m| m.vocabulary.names().to_vec())
        .unwrap_or_default();
    let mut ensemble: Vec<EnsembleMember<'_>> = members
        .iter_mut()
        .enumerate()
        .map(|(k, m)| EnsembleMember {
            encoder: &mut m.encoder,
            matcher: match (&restricted.hnsw[k], &restricted.ivf[k]) {
                (Some(h), _) => h as &dyn ovdiff_match::Matcher,
                (None, Some(i)) => i,
                (None, None) => &restricted.vocabularies[k],
            },
        })
        .collect();
    let mut seg = segment_image_ensemble(&mut ensemble, img, opts)?;
    let to_query: Vec<u16> = std::iter::once(0)
        .chain(restricted.kept.iter().map(|&i| (i + 1) as u16))
        .collect();
    for l in &mut seg.labels.labels {
        *l = to_query[usize::from(*l)];
    }
    seg.class_names = std::iter::once("background".to_string())
        .chain(all_names)
        .collect();
    Ok(seg)
}

/// Load the encoders a query needs and build one vocabulary per encoder.
///
/// `explicit` bundles (from `--encoder`) must each match a fingerprint the
/// candidates share; otherwise every shared fingerprint is looked up among
/// the installed bundles. A bank encoder that is not installed is an error
/// naming the fingerprints involved.
pub fn plan(
    runtime: &Runtime,
    bank: &dyn ClassStore,
    classes: &ResolvedClasses,
    explicit: &[PathBuf],
    threads: usize,
) -> Result<Vec<QueryMember>> {
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
    let mut members = Vec::new();
    for bundle in bundles {
        let encoder = Encoder::load(runtime, bundle)?;
        members.push(QueryMember::new(bank, classes, encoder, threads)?);
    }
    Ok(members)
}

/// A candidate over a class's f16 rows (shared, not copied).
fn half_candidate(name: &str, stuff: bool, class: &ClassRows) -> Result<Candidate> {
    let sides: Vec<Side> = class.metas.iter().map(|m| m.side).collect();
    Candidate::from_half(name, stuff, class.rows.clone(), &sides)
}

/// Segment one image with every member of a query, fused late.
pub fn segment_with(
    members: &mut [QueryMember],
    img: &image::RgbImage,
    opts: &SegmentOptions,
) -> Result<Segmentation> {
    let mut ensemble: Vec<EnsembleMember<'_>> = members
        .iter_mut()
        .map(|m| EnsembleMember {
            encoder: &mut m.encoder,
            matcher: match (&m.hnsw, &m.ivf) {
                (Some(h), _) => h as &dyn ovdiff_match::Matcher,
                (None, Some(i)) => i,
                (None, None) => &m.vocabulary,
            },
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
    fn a_narrowed_query_reports_labels_of_the_whole_query() {
        use ndarray::array;
        let cand = |name: &str, v: [f32; 2]| {
            Candidate::new(name, false, array![[v[0], v[1]]], array![[v[1], v[0]]])
        };
        // the query was [a, b, c]; the pre-filter kept a and c
        let vocabulary =
            Vocabulary::new(vec![cand("a", [1.0, 0.0]), cand("c", [0.0, 1.0])]).unwrap();
        let c_row = vocabulary.segment(2).start as u32;
        let bg_row = vocabulary.segment(0).start as u32;
        let narrow = Restricted {
            kept: vec![0, 2],
            vocabularies: vec![vocabulary],
            matching: vec![Matching::Exact],
            hnsw: vec![None],
            ivf: vec![None],
        };
        let r = narrow.proto_ref(0, c_row).unwrap();
        assert_eq!(
            (r.class, r.side, r.id),
            (3, ovdiff_core::prototype::Side::Foreground, 0)
        );
        // a background prototype names the class whose images it came from
        let r = narrow.proto_ref(0, bg_row).unwrap();
        assert_eq!(
            (r.class, r.side),
            (1, ovdiff_core::prototype::Side::Background)
        );
        assert!(narrow.proto_ref(1, c_row).is_none(), "no such member");
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
        use ovdiff_store::synthetic::{build, encoder, new_bank, noise, protos};

        let n: usize = std::env::var("OVBANK_PERF_CLASSES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let dir = tempfile::tempdir().unwrap();
        let enc = encoder('e', 384);
        let bank2 = new_bank(&dir.path().join("bank"), std::slice::from_ref(&enc));
        for i in 0..n {
            let name = format!("class {i:04}");
            let mut b = build(&name, &[], i as u64, i % 10 == 0, 4, &|_| Vec::new());
            b.encoders = vec![(
                enc.fingerprint.clone(),
                protos(130, 384, 4, i as u64, i % 10 == 0),
            )];
            b.thumbnails = vec![noise(i as u64, 15_000)
                .iter()
                .map(|&x| (x * 127.0) as i8 as u8)
                .collect()];
            bank2.put_class(&b, false).unwrap();
        }
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
