//! One encoder's side of a query: the candidates' prototypes stacked into a vocabulary, and the matcher that searches them.
//!
//! A [`MemberPlan`] holds no encoder: it is shared (behind an `Arc`) by
//! every call that segments with that class set and engine, while the
//! encoders that produce the features are taken from a pool per call.

use std::path::Path;
use std::sync::Arc;

use super::{EnginePolicy, Matching, ResolvedClasses};
use crate::{Error, Result};
use ovdiff_core::prototype::Side;
use ovdiff_match::ivf::IVF_ALGORITHM;
use ovdiff_match::{Candidate, Matcher, ProtoRef, Vocabulary};
use ovdiff_match::{Fingerprint, HnswMatcher, HnswParams, IvfMatcher, IvfParams, IvfStats};
use ovdiff_store::bank::ClassRecord;
use ovdiff_store::class_store::{ClassRows, ClassStore};

/// A matcher that threads can share.
pub type SharedMatcher = Arc<dyn Matcher + Send + Sync>;

/// One encoder of a query, without the encoder: its candidates' rows, the
/// vocabulary over them, and the matcher its patches are scored with.
#[derive(Clone)]
pub struct MemberPlan {
    /// The encoder's fingerprint (which prototypes these are).
    pub fingerprint: String,
    /// Its candidates, stacked.
    pub vocabulary: Arc<Vocabulary>,
    /// Per candidate (query order), its prototypes as f16 rows (shared
    /// with the vocabulary, not copied) and metas, in stored order.
    pub classes: Vec<ClassRows>,
    /// Which matcher [`matcher`](Self::matcher) is.
    pub matching: Matching,
    /// Scores patches against the vocabulary's rows: the vocabulary itself
    /// (exact), or an HNSW graph or IVF lists over the same rows.
    pub matcher: SharedMatcher,
    /// The IVF lists' statistics, when the matcher is IVF.
    pub ivf: Option<IvfStats>,
}

impl std::fmt::Debug for MemberPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberPlan")
            .field("fingerprint", &self.fingerprint)
            .field("classes", &self.vocabulary.num_classes())
            .field("rows", &self.vocabulary.num_rows())
            .field("matching", &self.matching)
            .finish()
    }
}

impl MemberPlan {
    /// The plan of `classes` for the encoder with fingerprint `fp` whose
    /// features have `dim` dimensions: each class's f16 rows as the store
    /// holds them (mapped, for a file) and a vocabulary that refers to
    /// them, matched exactly until [`with_engine`](Self::with_engine).
    pub fn new(
        store: &dyn ClassStore,
        classes: &ResolvedClasses,
        fp: &str,
        dim: usize,
        threads: usize,
    ) -> Result<MemberPlan> {
        let (vocabulary, rows) = vocabulary_of(store, classes, fp, threads)?;
        let wrong = rows
            .iter()
            .zip(&classes.records)
            .find(|(c, _)| !c.rows.is_empty() && c.rows.dim() != dim);
        if let Some((class, rec)) = wrong {
            return Err(Error::DimensionMismatch {
                what: format!("prototypes of `{}`", rec.name),
                expected: dim.to_string(),
                found: class.rows.dim().to_string(),
            });
        }
        Ok(MemberPlan::exact(fp, vocabulary, rows))
    }

    /// A plan that matches `vocabulary` (over `classes`' rows) exactly.
    pub fn exact(fp: &str, vocabulary: Vocabulary, classes: Vec<ClassRows>) -> MemberPlan {
        let vocabulary = Arc::new(vocabulary);
        MemberPlan {
            fingerprint: fp.to_string(),
            matcher: vocabulary.clone(),
            vocabulary,
            classes,
            matching: Matching::Exact,
            ivf: None,
        }
    }

    /// This plan with the matcher `engine` picks for its rows (see
    /// [`use_hnsw`](Self::use_hnsw) and [`use_ivf`](Self::use_ivf)).
    pub fn with_engine(
        mut self,
        engine: EnginePolicy,
        store: &dyn ClassStore,
        cache_dir: &Path,
        threads: usize,
    ) -> Result<MemberPlan> {
        match engine.pick(self.vocabulary.num_rows()) {
            Matching::Exact => {}
            Matching::Hnsw => self.use_hnsw(cache_dir, threads)?,
            Matching::Ivf => {
                self.use_ivf(store, cache_dir, threads)?;
            }
        }
        Ok(self)
    }

    /// Switch to HNSW: load the graph from `cache_dir` when a cached one
    /// matches these exact rows and parameters (never trusted otherwise),
    /// else build it and cache it.
    pub fn use_hnsw(&mut self, cache_dir: &Path, threads: usize) -> Result<()> {
        self.matcher = Arc::new(hnsw_matcher(&self.vocabulary, cache_dir, threads)?);
        self.matching = Matching::Hnsw;
        self.ivf = None;
        Ok(())
    }

    /// Switch to IVF: use the lists in the bank file when it has some for
    /// exactly these rows; else load them from `cache_dir` when a cached
    /// set matches these exact rows and parameters (never trusted
    /// otherwise); else cluster the rows (seconds at 1,000 classes) and
    /// cache the lists. Returns the statistics.
    pub fn use_ivf(
        &mut self,
        store: &dyn ClassStore,
        cache_dir: &Path,
        threads: usize,
    ) -> Result<IvfStats> {
        let params = IvfParams::default();
        let from_file = ivf_lists_from_file(
            store,
            &self.vocabulary,
            &self.classes,
            &self.fingerprint,
            params,
        );
        let ivf = match from_file {
            Some(m) => m.with_threads(threads),
            None => ivf_matcher(&self.vocabulary, params, cache_dir, threads)?,
        };
        let stats = ivf.stats();
        self.matcher = Arc::new(ivf);
        self.matching = Matching::Ivf;
        self.ivf = Some(stats);
        Ok(stats)
    }

    /// The plan of only the candidates `kept` (indices into this plan's,
    /// sorted, at least one): a vocabulary of just their rows, so that their
    /// background prototypes alone stand for background, with the matcher
    /// `engine` picks for those rows (graphs and lists cached in
    /// `cache_dir`; a bank file's lists never cover a narrowed query).
    pub fn narrowed(
        &self,
        kept: &[usize],
        engine: EnginePolicy,
        cache_dir: &Path,
        threads: usize,
    ) -> Result<MemberPlan> {
        let candidates = kept
            .iter()
            .map(|&i| {
                half_candidate(
                    &self.vocabulary.names()[i],
                    self.vocabulary.is_stuff(i + 1),
                    &self.classes[i],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let classes = kept.iter().map(|&i| self.classes[i].clone()).collect();
        let vocabulary = Vocabulary::new(candidates)?.with_threads(threads);
        let mut plan = MemberPlan::exact(&self.fingerprint, vocabulary, classes);
        match engine.pick(plan.vocabulary.num_rows()) {
            Matching::Exact => {}
            Matching::Hnsw => plan.use_hnsw(cache_dir, threads)?,
            Matching::Ivf => {
                let ivf = ivf_matcher(&plan.vocabulary, IvfParams::default(), cache_dir, threads)?;
                plan.ivf = Some(ivf.stats());
                plan.matcher = Arc::new(ivf);
                plan.matching = Matching::Ivf;
            }
        }
        Ok(plan)
    }

    /// What row `row` of the vocabulary is.
    pub fn proto_ref(&self, row: u32) -> Option<ProtoRef> {
        self.vocabulary.proto_ref(row)
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

/// IVF lists over `vocabulary`'s rows: loaded from `cache_dir` when a
/// cached set matches these exact rows and parameters (never trusted
/// otherwise), else clustered and cached.
pub(super) fn ivf_matcher(
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

/// An HNSW matcher over `vocabulary`'s rows: loaded from `cache_dir` when a
/// cached graph matches these exact rows and parameters (never trusted
/// otherwise), else built and cached.
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

/// A candidate over a class's f16 rows (shared, not copied).
pub(super) fn half_candidate(name: &str, stuff: bool, class: &ClassRows) -> Result<Candidate> {
    let sides: Vec<Side> = class.metas.iter().map(|m| m.side).collect();
    Candidate::from_half(name, stuff, class.rows.clone(), &sides)
}
