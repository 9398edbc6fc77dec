//! The library API: a [`Segmenter`] opens a bank once and segments images with [`Query`]s, from any number of threads.
//!
//! [`Segmenter::open`] opens the bank (a folder or a `.ovbank` file) and
//! ONNX Runtime. The first call with a query plans it: its classes are
//! looked up, the encoders their prototypes came from are found by
//! fingerprint (among the installed bundles, or the ones given in
//! [`SegmenterOptions::encoders`]) and loaded, and the vocabularies and
//! matchers (exact, IVF or HNSW, with their cache files under
//! [`SegmenterOptions::cache_dir`]) are built. Plans are kept per class
//! set and engine and shared by every later call; encoders (and CLIP
//! towers) are kept in small pools, one model per call running at a time,
//! so a segmenter used from several threads gives each its own and loads
//! another only when all are busy. Results do not depend on which thread
//! or model served a call.
//!
//! [`Segmenter::segment`] returns a [`Segmentation`]; its
//! [`write`](Segmentation::write) saves what `ovdiff-bank segment` saves.
//!
//! ```no_run
//! use ovdiff_core::Home;
//! use ovdiff_segment::{Query, Segmenter, SegmenterOptions, WriteOptions};
//!
//! # fn main() -> ovdiff_core::Result<()> {
//! let home = Home::from_env();
//! let bank = home.bank_path(Some("demo"));
//! let segmenter = Segmenter::open(&bank, SegmenterOptions::new(home))?;
//! let query = Query::classes(["person", "cat", "cup"]).with_explain(true);
//! for photo in ["a.jpg", "b.jpg"] {
//!     let seg = segmenter.segment(std::path::Path::new(photo), &query)?;
//!     for c in &seg.classes {
//!         println!("{photo}: {} {:.1}%", c.name, c.fraction * 100.0);
//!     }
//!     let stem = photo.trim_end_matches(".jpg");
//!     seg.write(std::path::Path::new("out"), stem, &WriteOptions::default())?;
//! }
//! # Ok(())
//! # }
//! ```

mod explain;
mod numbering;
mod pool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use ovdiff_match::{IvfStats, Matcher};
use ovdiff_models::features::{preprocess, Encoder};
use ovdiff_models::runtime::{Bundle, Runtime, RuntimeOptions};
use ovdiff_store::class_store::{open_store, ClassStore};

use crate::engine::{segment_image_ensemble, EnsembleMember, Fused, SegmentOptions};
use crate::label_map::{ClassLabels, LabelIds};
use crate::prefilter::{self, Prefilter};
use crate::query::{self, EnginePolicy, Matching, MemberPlan, ResolvedClasses, Restricted};
use crate::segmentation::{PrefilterReport, SegmentTimings, Segmentation};
use crate::window::WindowLayout;
use crate::{Error, Home, Result};
use ovdiff_models::clip::ClipBundle;
use pool::{Cache, Lease, Pool};

/// How a [`Segmenter`] loads and runs its models.
#[derive(Debug, Clone)]
pub struct SegmenterOptions {
    /// `<home>`: installed bundles, ONNX Runtime.
    pub home: Home,
    /// Threads, execution provider and hash checks of every session; the
    /// threads also match and fuse.
    pub runtime: RuntimeOptions,
    /// Encoder bundle folders to use (`--encoder`); empty: the installed
    /// bundles whose fingerprints the bank's classes recorded.
    pub encoders: Vec<PathBuf>,
    /// Where HNSW graphs and IVF lists are cached.
    pub cache_dir: PathBuf,
}

impl SegmenterOptions {
    /// The defaults for `home`: its runtime and cache, the installed encoders.
    pub fn new(home: Home) -> SegmenterOptions {
        SegmenterOptions {
            cache_dir: home.cache_dir(),
            home,
            runtime: RuntimeOptions::default(),
            encoders: Vec::new(),
        }
    }
}

/// The candidate classes of a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClassChoice {
    /// These classes, in this order (label `k` is the `k`-th).
    Named(Vec<String>),
    /// Every class of the bank, sorted by name.
    All,
}

/// The CLIP category pre-filter of a [`Query`] (see [`crate::prefilter`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrefilterChoice {
    /// The CLIP export (`optimum-cli export onnx`).
    pub clip_dir: PathBuf,
    /// Classes stage 1 keeps (1 to [`prefilter::MAX_TOPK`]).
    pub topk: usize,
}

/// What to segment an image with.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The candidate classes.
    pub classes: ClassChoice,
    /// Which matcher scores patches (`auto` by default).
    pub engine: EnginePolicy,
    /// The CLIP pre-filter, if any: then each image is segmented with only
    /// the classes CLIP picks for it.
    pub prefilter: Option<PrefilterChoice>,
    /// Also gather the explain sheet's rows (support thumbnails).
    pub explain: bool,
    /// Which windows are encoded (OVDiff's layout by default).
    pub windows: WindowLayout,
    /// How the classes are numbered in label maps (query order by default).
    pub label_ids: LabelIds,
}

impl Query {
    /// A query of the named classes, in this order, with the defaults.
    pub fn classes<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Query {
        Query::of(ClassChoice::Named(
            names.into_iter().map(Into::into).collect(),
        ))
    }

    /// A query of every class of the bank.
    pub fn all_classes() -> Query {
        Query::of(ClassChoice::All)
    }

    fn of(classes: ClassChoice) -> Query {
        Query {
            classes,
            engine: EnginePolicy::default(),
            prefilter: None,
            explain: false,
            windows: WindowLayout::default(),
            label_ids: LabelIds::default(),
        }
    }

    /// With this numbering of the classes in label maps.
    pub fn with_label_ids(mut self, label_ids: LabelIds) -> Query {
        self.label_ids = label_ids;
        self
    }

    /// With this matcher policy.
    pub fn with_engine(mut self, engine: EnginePolicy) -> Query {
        self.engine = engine;
        self
    }

    /// With the CLIP pre-filter of `clip_dir`, keeping `topk` classes in
    /// stage 1 ([`prefilter::DEFAULT_TOPK`] is the usual).
    pub fn with_prefilter(mut self, clip_dir: impl Into<PathBuf>, topk: usize) -> Query {
        self.prefilter = Some(PrefilterChoice {
            clip_dir: clip_dir.into(),
            topk,
        });
        self
    }

    /// With explanations (the explain sheet) or without.
    pub fn with_explain(mut self, explain: bool) -> Query {
        self.explain = explain;
        self
    }

    /// With this window layout.
    pub fn with_windows(mut self, windows: WindowLayout) -> Query {
        self.windows = windows;
        self
    }

    /// What its plan is built from (everything but the top-k, the
    /// explanations, the windows and the label ids, which do not change it).
    fn plan_key(&self) -> PlanKey {
        (
            self.classes.clone(),
            self.engine,
            self.prefilter.as_ref().map(|p| p.clip_dir.clone()),
        )
    }
}

/// An image to segment: a file, or one already decoded.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// A PNG or JPEG file, decoded by the call.
    Path(PathBuf),
    /// A decoded image.
    Image(Arc<RgbImage>),
    /// An image the caller decoded from `path`, which took `decode` (for
    /// the report).
    Decoded {
        /// The image.
        image: RgbImage,
        /// The file it came from.
        path: PathBuf,
        /// How long decoding took.
        decode: Duration,
    },
}

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> ImageInput {
        ImageInput::Path(p.to_path_buf())
    }
}

impl From<&PathBuf> for ImageInput {
    fn from(p: &PathBuf) -> ImageInput {
        ImageInput::Path(p.clone())
    }
}

impl From<PathBuf> for ImageInput {
    fn from(p: PathBuf) -> ImageInput {
        ImageInput::Path(p)
    }
}

impl From<RgbImage> for ImageInput {
    fn from(img: RgbImage) -> ImageInput {
        ImageInput::Image(Arc::new(img))
    }
}

impl From<&RgbImage> for ImageInput {
    fn from(img: &RgbImage) -> ImageInput {
        ImageInput::Image(Arc::new(img.clone()))
    }
}

impl From<Arc<RgbImage>> for ImageInput {
    fn from(img: Arc<RgbImage>) -> ImageInput {
        ImageInput::Image(img)
    }
}

impl ImageInput {
    /// The decoded image, the file it came from, and the decoding time.
    fn decode(self) -> Result<(Arc<RgbImage>, Option<PathBuf>, Duration)> {
        Ok(match self {
            ImageInput::Path(p) => {
                let t = Instant::now();
                let img = preprocess::load_rgb(&p)?;
                (Arc::new(img), Some(p), t.elapsed())
            }
            ImageInput::Image(img) => (img, None, Duration::ZERO),
            ImageInput::Decoded {
                image,
                path,
                decode,
            } => (Arc::new(image), Some(path), decode),
        })
    }
}

/// What planning a query did, for the caller to report.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanReport {
    /// Per encoder of the query, in order.
    pub encoders: Vec<EncoderReport>,
    /// The pre-filter's CLIP export, when the query has one.
    pub prefilter: Option<ClipReport>,
}

/// One encoder of a planned query.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderReport {
    /// The bundle's name.
    pub name: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The matcher of the whole query's rows; `None` with a pre-filter,
    /// which picks one per image for the classes it keeps.
    pub matching: Option<Matching>,
    /// Where the IVF lists came from and what they cost, when the whole
    /// query is matched with IVF.
    pub ivf: Option<IvfStats>,
}

/// The CLIP export of a planned query's pre-filter.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipReport {
    /// Its folder.
    pub root: PathBuf,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Whether its graph ties the text and image batch sizes (an older
    /// optimum export; see [`Prefilter::ties_batches`]).
    pub ties_batches: bool,
}

/// `(classes, engine, CLIP folder)`.
type PlanKey = (ClassChoice, EnginePolicy, Option<PathBuf>);
/// `(the query's class names, the kept ones, engine)`.
type NarrowKey = (Vec<String>, Vec<usize>, EnginePolicy);

/// Loaded encoders of one bundle.
struct EncoderPool {
    pool: Arc<Pool<Encoder>>,
    dim: usize,
}

/// Loaded CLIP exports of one folder.
struct ClipPool {
    pool: Arc<Pool<Prefilter>>,
    report: ClipReport,
}

/// One of a [`Segmenter`]'s loaded encoders, lent by
/// [`Segmenter::encoder`]: no call of the segmenter uses it until it is
/// dropped, which gives it back.
pub struct EncoderLease(Lease<Encoder>);

impl std::ops::Deref for EncoderLease {
    type Target = Encoder;
    fn deref(&self) -> &Encoder {
        &self.0
    }
}

impl std::ops::DerefMut for EncoderLease {
    fn deref_mut(&mut self) -> &mut Encoder {
        &mut self.0
    }
}

impl std::fmt::Debug for EncoderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EncoderLease").field(&**self).finish()
    }
}

/// One encoder of a planned query: where its encoders come from, and the
/// plan its features are matched with.
struct Member {
    encoders: Arc<EncoderPool>,
    plan: MemberPlan,
}

/// A planned query.
struct Planned {
    classes: ResolvedClasses,
    names: Vec<String>,
    members: Vec<Member>,
    prefilter: Option<Arc<ClipPool>>,
    report: PlanReport,
    /// The bank's stable label id of each class, in query order.
    bank_values: Option<Vec<u16>>,
}

/// Class sets whose plans a [`Segmenter`] keeps (vocabularies, matchers);
/// past it the least recently used are rebuilt when asked for again, so a
/// service that sees many class sets stays bounded.
pub const MAX_PLANS: usize = 64;

/// Pre-filter subsets whose narrowed matchers a [`Segmenter`] keeps.
pub const MAX_NARROWED: usize = 256;

/// A bank opened for queries, with the models and plans they need; see
/// the [module docs](self).
pub struct Segmenter {
    store: Box<dyn ClassStore>,
    runtime: Runtime,
    options: SegmenterOptions,
    encoders: Cache<PathBuf, EncoderPool>,
    clips: Cache<PathBuf, ClipPool>,
    plans: Cache<PlanKey, Planned>,
    narrowed: Cache<NarrowKey, Restricted>,
}

// One segmenter serves many threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Segmenter>();
};

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("bank", &self.store.location())
            .field("options", &self.options)
            .finish()
    }
}

/// `e` as the cause of `context`, which the chain prints first (`context:
/// e: …`), as the pre-filter's stages have always named themselves.
fn in_context(context: String, e: Error) -> Error {
    Error::ort(context, e)
}

impl Segmenter {
    /// Open the bank `bank_path` (a bank folder or a `.ovbank` file) and
    /// initialise ONNX Runtime. Nothing is loaded until a query is planned
    /// ([`prepare`](Self::prepare), or the first [`segment`](Self::segment)).
    pub fn open(bank_path: &Path, options: SegmenterOptions) -> Result<Segmenter> {
        let store = open_store(bank_path)?;
        let runtime = Runtime::init(&options.home, options.runtime)?;
        Ok(Segmenter {
            store,
            runtime,
            options,
            encoders: Cache::new(),
            clips: Cache::new(),
            plans: Cache::bounded(MAX_PLANS),
            narrowed: Cache::bounded(MAX_NARROWED),
        })
    }

    /// The bank.
    pub fn store(&self) -> &dyn ClassStore {
        self.store.as_ref()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &SegmenterOptions {
        &self.options
    }

    /// Plan `query` now (the first [`segment`](Self::segment) with it would
    /// otherwise): resolve its classes, check its pre-filter, load its
    /// encoders and build its matchers. Errors come in that order. Returns
    /// what was planned (the same report for every call with this query).
    pub fn prepare(&self, query: &Query) -> Result<PlanReport> {
        Ok(self.planned(query)?.report.clone())
    }

    /// What every label value of `query`'s label maps means (it plans the
    /// query): the same for every image it segments.
    pub fn label_map(&self, query: &Query) -> Result<ClassLabels> {
        let planned = self.planned(query)?;
        let values = numbering::values(
            query.label_ids,
            &planned.names,
            planned.bank_values.as_deref(),
        )?;
        numbering::class_labels(&planned.names, &values)
    }

    /// One of the loaded encoders of the bundle in `dir` (a planned query
    /// uses it), to encode with outside a query: the same model, session
    /// and threads the segmenter runs. A new one is loaded when all are in
    /// use; an error when no planned query uses that bundle.
    pub fn encoder(&self, dir: &Path) -> Result<EncoderLease> {
        let pool = self.encoders.get(&dir.to_path_buf()).ok_or_else(|| {
            Error::Invalid(format!(
                "no planned query uses the encoder bundle {}",
                dir.display()
            ))
        })?;
        Ok(EncoderLease(pool.pool.take()?))
    }

    /// How many encoders of the bundle in `dir` are loaded (a pool grows
    /// when calls overlap).
    pub fn encoders_loaded(&self, dir: &Path) -> usize {
        self.encoders
            .get(&dir.to_path_buf())
            .map_or(0, |p| p.pool.loaded())
    }

    /// Segment one image with `query`: every pixel gets the label of the
    /// nearest class (0 for background), with explanations of which support
    /// images won them. Safe to call from several threads at once.
    pub fn segment(&self, image: impl Into<ImageInput>, query: &Query) -> Result<Segmentation> {
        let (image, source, decode) = image.into().decode()?;
        let started = Instant::now();
        let planned = self.planned(query)?;
        let opts = SegmentOptions {
            layout: query.windows.clone(),
            threads: self.threads(),
            ..SegmentOptions::default()
        };
        let whole: Vec<&MemberPlan> = planned.members.iter().map(|m| &m.plan).collect();
        let (fused, narrowed, prefilter) = match (&planned.prefilter, &query.prefilter) {
            (Some(clip), Some(choice)) => {
                let (fused, narrowed, report) =
                    self.segment_prefiltered(&planned, clip, choice, query.engine, &image, &opts)?;
                (fused, Some(narrowed), Some(report))
            }
            _ => {
                let matchers: Vec<&dyn Matcher> =
                    whole.iter().map(|p| &*p.matcher as &dyn Matcher).collect();
                (run(&planned.members, &matchers, &image, &opts)?, None, None)
            }
        };
        let records = &planned.classes.records;
        let values = numbering::values(
            query.label_ids,
            &planned.names,
            planned.bank_values.as_deref(),
        )?;
        let label_map = numbering::class_labels(&planned.names, &values)?;
        let mut classes =
            explain::found_classes(&fused.labels, records, &whole, narrowed.as_deref());
        let mut explain = if query.explain {
            Some(explain::explain_rows(self.store(), records, &classes)?)
        } else {
            None
        };
        let mut fused = fused;
        let labels = &fused.labels;
        let total = (u64::from(labels.w) * u64::from(labels.h)).max(1);
        let background = labels.pixel_counts(1)[0];
        numbering::renumber(
            &values,
            &mut fused.labels.labels,
            &mut classes,
            explain.as_mut(),
        );
        let labels = &fused.labels;
        Ok(Segmentation {
            label_map,
            label_ids: query.label_ids,
            width: labels.w,
            height: labels.h,
            background_fraction: background as f64 / total as f64,
            class_names: planned.names.clone(),
            classes,
            timings: SegmentTimings {
                decode,
                engine: fused.timings,
                segment: started.elapsed(),
            },
            working_size: fused.working_size,
            windows: fused.windows,
            prefilter,
            explain,
            labels: fused.labels.labels,
            image,
            source,
        })
    }

    /// The pre-filter's classes for `img`, then the image segmented with
    /// only those (labels of the whole query).
    fn segment_prefiltered(
        &self,
        planned: &Planned,
        clip: &ClipPool,
        choice: &PrefilterChoice,
        engine: EnginePolicy,
        img: &RgbImage,
        opts: &SegmentOptions,
    ) -> Result<(Fused, Arc<Restricted>, PrefilterReport)> {
        let mut pf = clip.pool.take()?;
        let (sel, stats) = pf
            .select(img, &planned.names, choice.topk)
            .map_err(|e| in_context("running the CLIP pre-filter".into(), e))?;
        drop(pf);
        let mut kept = sel.kept.clone();
        kept.sort_unstable();
        kept.dedup();
        let narrowed = self
            .narrowed
            .get_or_build((planned.names.clone(), kept, engine), || {
                let whole: Vec<&MemberPlan> = planned.members.iter().map(|m| &m.plan).collect();
                query::restrict(
                    &whole,
                    &sel.kept,
                    engine,
                    &self.options.cache_dir,
                    self.threads(),
                )
            })?;
        let matchers: Vec<&dyn Matcher> = narrowed
            .members
            .iter()
            .map(|p| &*p.matcher as &dyn Matcher)
            .collect();
        let mut fused = run(&planned.members, &matchers, img, opts)?;
        let to_query = narrowed.to_query_labels();
        for l in &mut fused.labels.labels {
            *l = to_query[usize::from(*l)];
        }
        let report = PrefilterReport {
            bundle: clip.report.root.clone(),
            fingerprint: clip.report.fingerprint.clone(),
            topk: choice.topk,
            kept: sel.classes,
            stage1: sel.stage1,
            prompt: sel.prompt,
            score: sel.score,
            prompts: sel.prompts,
            engine: narrowed
                .matching()
                .into_iter()
                .map(Matching::name)
                .collect(),
            stats,
        };
        Ok((fused, narrowed, report))
    }

    fn threads(&self) -> usize {
        self.options.runtime.threads
    }

    /// The plan of `query`, built by the first call that needs it.
    fn planned(&self, query: &Query) -> Result<Arc<Planned>> {
        let planned = self
            .plans
            .get_or_build(query.plan_key(), || self.plan(query))?;
        if let Some(p) = &query.prefilter {
            check_topk(p.topk)?;
        }
        Ok(planned)
    }

    /// Plan `query`: classes, pre-filter bundle check, encoders, plans,
    /// matchers, then the pre-filter's graphs (the order of the errors).
    fn plan(&self, query: &Query) -> Result<Planned> {
        let store = self.store();
        let names = match &query.classes {
            ClassChoice::Named(v) => Some(v.as_slice()),
            ClassChoice::All => None,
        };
        let classes = query::resolve_classes(store, names)?;
        // The CLIP folder is checked before any model is loaded.
        let mut clip_bundle = None;
        if let Some(p) = &query.prefilter {
            check_topk(p.topk)?;
            if self.clips.get(&p.clip_dir).is_none() {
                clip_bundle = Some(open_clip(&p.clip_dir)?);
            }
        }
        let bundles = query::query_bundles(&self.runtime, store, &classes, &self.options.encoders)?;
        let threads = self.threads();
        let mut members = Vec::with_capacity(bundles.len());
        let mut report = PlanReport {
            encoders: Vec::new(),
            prefilter: None,
        };
        for bundle in bundles {
            let (name, fp) = (bundle.name().to_string(), bundle.fingerprint().to_string());
            let encoders = self.encoder_pool(bundle)?;
            let plan = MemberPlan::new(store, &classes, &fp, encoders.dim, threads)?;
            members.push(Member { encoders, plan });
            report.encoders.push(EncoderReport {
                name,
                fingerprint: fp,
                matching: None,
                ivf: None,
            });
        }
        // With a pre-filter, each image is matched against the classes it keeps.
        if query.prefilter.is_none() {
            for (m, r) in members.iter_mut().zip(&mut report.encoders) {
                m.plan = m.plan.clone().with_engine(
                    query.engine,
                    store,
                    &self.options.cache_dir,
                    threads,
                )?;
                r.matching = Some(m.plan.matching);
                r.ivf = m.plan.ivf;
            }
        }
        let prefilter = match &query.prefilter {
            Some(p) => {
                let clip = self.clips.get_or_build(p.clip_dir.clone(), || {
                    let bundle = match clip_bundle.take() {
                        Some(b) => b,
                        None => open_clip(&p.clip_dir)?,
                    };
                    self.load_clip(bundle)
                })?;
                report.prefilter = Some(clip.report.clone());
                Some(clip)
            }
            None => None,
        };
        let names = classes.records.iter().map(|r| r.name.clone()).collect();
        let bank_values = numbering::bank_values(store, &classes.records)?;
        Ok(Planned {
            classes,
            names,
            members,
            prefilter,
            report,
            bank_values,
        })
    }

    /// The pool of `bundle`'s encoders, with one loaded.
    fn encoder_pool(&self, bundle: Bundle) -> Result<Arc<EncoderPool>> {
        let dir = bundle.dir().to_path_buf();
        self.encoders.get_or_build(dir, || {
            let first = Encoder::load(&self.runtime, bundle.clone())?;
            let dim = first.dim();
            let runtime = self.runtime.clone();
            let load = move || Encoder::load(&runtime, bundle.clone());
            Ok(EncoderPool {
                pool: Arc::new(Pool::new(first, Box::new(load))),
                dim,
            })
        })
    }

    /// Load a checked CLIP export's graphs into a pool.
    fn load_clip(&self, bundle: ClipBundle) -> Result<ClipPool> {
        let fingerprint = bundle.fingerprint()?.to_string();
        let first = Prefilter::load(&self.runtime, bundle)
            .map_err(|e| in_context("loading the --prefilter CLIP graphs".into(), e))?;
        let root = first.bundle().root().to_path_buf();
        let report = ClipReport {
            root: root.clone(),
            fingerprint,
            ties_batches: first.ties_batches(),
        };
        let runtime = self.runtime.clone();
        let load = move || {
            let bundle = open_clip(&root)?;
            Prefilter::load(&runtime, bundle)
                .map_err(|e| in_context("loading the --prefilter CLIP graphs".into(), e))
        };
        Ok(ClipPool {
            pool: Arc::new(Pool::new(first, Box::new(load))),
            report,
        })
    }
}

/// Check a CLIP folder before anything runs ([`ClipBundle::open`]).
fn open_clip(dir: &Path) -> Result<ClipBundle> {
    ClipBundle::open(dir).map_err(|e| {
        in_context(
            format!("checking the --prefilter bundle {}", dir.display()),
            e,
        )
    })
}

/// The pre-filter's top-k must be 1 to [`prefilter::MAX_TOPK`].
fn check_topk(topk: usize) -> Result<()> {
    if (1..=prefilter::MAX_TOPK).contains(&topk) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--prefilter-topk {topk} is out of range: give 1 to {} (the second stage compares \
         2^K - 1 prompts per image)",
        prefilter::MAX_TOPK
    )))
}

/// Segment `img` with one encoder from each member's pool and the matcher
/// beside it in `matchers`, fused late.
fn run(
    members: &[Member],
    matchers: &[&dyn Matcher],
    img: &RgbImage,
    opts: &SegmentOptions,
) -> Result<Fused> {
    let mut leases = members
        .iter()
        .map(|m| m.encoders.pool.take())
        .collect::<Result<Vec<_>>>()?;
    let mut ensemble: Vec<EnsembleMember<'_>> = leases
        .iter_mut()
        .zip(matchers)
        .map(|(encoder, &matcher)| EnsembleMember {
            encoder: &mut **encoder,
            matcher,
        })
        .collect();
    segment_image_ensemble(&mut ensemble, img, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_built_with_the_defaults() {
        let q = Query::classes(["cat", "cup"]);
        assert_eq!(
            q.classes,
            ClassChoice::Named(vec!["cat".into(), "cup".into()])
        );
        assert_eq!(q.engine, EnginePolicy::Auto);
        assert!(q.prefilter.is_none() && !q.explain);
        assert_eq!(q.windows, WindowLayout::ovdiff());
        let q = Query::all_classes()
            .with_engine(EnginePolicy::Fixed(Matching::Ivf))
            .with_prefilter("clip", 4)
            .with_explain(true);
        assert_eq!(q.classes, ClassChoice::All);
        assert_eq!(
            q.plan_key(),
            (
                ClassChoice::All,
                EnginePolicy::Fixed(Matching::Ivf),
                Some(PathBuf::from("clip"))
            )
        );
        assert_eq!(q.prefilter.unwrap().topk, 4);
    }

    #[test]
    fn the_topk_is_checked() {
        assert!(check_topk(1).is_ok() && check_topk(prefilter::MAX_TOPK).is_ok());
        let e = check_topk(0).unwrap_err().to_string();
        assert!(e.contains("--prefilter-topk 0 is out of range"), "{e}");
        assert!(check_topk(prefilter::MAX_TOPK + 1).is_err());
    }

    #[test]
    fn pre_filter_stages_name_themselves_first() {
        let e = open_clip(Path::new("/no/such/clip")).unwrap_err();
        let report = e.report();
        assert!(
            report.starts_with("checking the --prefilter bundle /no/such/clip: "),
            "{report}"
        );
    }
}
