//! The [`Learner`]: adding a class to a bank, from a folder of support
//! images or from a diffusion generator, as one library call.
//!
//! This is the whole of `ovdiff-bank add`, less the printing: choosing the
//! support set, loading the encoders, the foreground/background split,
//! pooling the prototypes and writing the class. A long-lived process (a
//! Python binding, an HTTP service) keeps one `Learner` and adds class after
//! class with it; its encoders (and its generator) are loaded once.

pub mod classes_file;
pub mod progress;
pub mod report;
mod sampling;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ovdiff_core::home::DEFAULT_ENCODER;
use ovdiff_core::Home;
use ovdiff_diffusion::generate::{Generator, SampleOptions};
use ovdiff_models::features::Encoder;
use ovdiff_models::runtime::{Runtime, RuntimeOptions};
use ovdiff_store::bank::{Bank, ClassSource, EncoderInfo, PrototypeCounts};

use crate::builder::{BuildOptions, DEFAULT_PARTS};
use crate::catalog::EncoderReport;
use crate::split::SplitMethod;
use crate::support_set::{self, millis, Event, LearnOptions, SupportImage};
use crate::{Error, Result};

pub use classes_file::{parse_classes_file, read_classes_file, ClassLine};
pub use progress::{NoProgress, Progress, Stage};
pub use report::{AddReport, SkippedImage};

/// The seed a [`Learner`] starts with (`add --seed`'s default).
pub const DEFAULT_SEED: u64 = 42;

/// A class to add: its name, checked, and its support folder, read; or no
/// folder, and the support set is sampled with the learner's generator.
#[derive(Debug, Clone)]
pub struct NewClass {
    name: String,
    /// The folder as given, and its images.
    images: Option<(PathBuf, Vec<SupportImage>)>,
    /// Entries of the folder that are not images (see [`support_set::unusable_entries`]).
    unusable: Vec<(PathBuf, String)>,
    stuff: bool,
    started: Instant,
}

impl NewClass {
    /// A class named `name`, learned from the PNG and JPEG images in
    /// `images` (each with its `NNN.attribution.png` map when one lies
    /// beside it, see [`support_set::with_attribution_maps`]), or sampled
    /// with the generator when `images` is `None`.
    ///
    /// # Errors
    ///
    /// An invalid class name, a folder that does not exist, and a folder
    /// without images; nothing has been written then. `images` may also be
    /// one image file.
    pub fn new(name: impl Into<String>, images: Option<PathBuf>) -> Result<NewClass> {
        let started = Instant::now();
        let name = name.into();
        ovdiff_store::bank::validate_class_name(&name)
            .map_err(|p| Error::Invalid(format!("class name `{name}` is not valid: {p}")))?;
        let mut unusable = Vec::new();
        let images = match images {
            // One image file is a support set of one.
            Some(file) if file.is_file() => {
                let found = vec![file.clone()];
                Some((file, support_set::with_attribution_maps(found)))
            }
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(Error::Invalid(format!(
                        "support folder {} does not exist (give a folder of images or one image file)",
                        dir.display()
                    )));
                }
                let found = support_set::list_images(&dir)?;
                unusable = support_set::unusable_entries(&dir);
                if found.is_empty() {
                    return Err(Error::Invalid(format!(
                        "no PNG or JPEG images in {}; nothing was written",
                        dir.display()
                    )));
                }
                Some((dir, support_set::with_attribution_maps(found)))
            }
            None => None,
        };
        Ok(NewClass {
            name,
            images,
            unusable,
            stuff: false,
            started,
        })
    }

    /// A class named `name`, learned from exactly these image `files`, in
    /// this order (each with its `NNN.attribution.png` map when one lies
    /// beside it), recording `source` as where the support set came from
    /// (what `NewClass::new` records as the folder). The Python binding's
    /// `Bank.add(images=[...])` uses it; a class learned from a folder's
    /// images in their sorted order, with that folder as `source`, is the
    /// same class as `new` learns from the folder.
    ///
    /// # Errors
    ///
    /// An invalid class name, or no files; nothing has been written then.
    pub fn from_files(
        name: impl Into<String>,
        files: Vec<PathBuf>,
        source: impl Into<PathBuf>,
    ) -> Result<NewClass> {
        let started = Instant::now();
        let name = name.into();
        ovdiff_store::bank::validate_class_name(&name)
            .map_err(|p| Error::Invalid(format!("class name `{name}` is not valid: {p}")))?;
        if files.is_empty() {
            return Err(Error::Invalid(format!(
                "no support images given for class `{name}`; nothing was written"
            )));
        }
        Ok(NewClass {
            name,
            images: Some((source.into(), support_set::with_attribution_maps(files))),
            unusable: Vec::new(),
            stuff: false,
            started,
        })
    }

    /// A *stuff* class (sky, grass, water): foreground prototypes only.
    pub fn stuff(mut self, stuff: bool) -> NewClass {
        self.stuff = stuff;
        self
    }

    /// The class name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Adds classes to banks: the library form of `ovdiff-bank add`.
///
/// A builder: [`Learner::new`] gives `add`'s defaults, and each option
/// method returns the learner. [`add`](Learner::add) then learns one
/// [`NewClass`] and writes it. ONNX Runtime, the encoders and the generator
/// are loaded when the first class needs them and kept for the next ones;
/// a load that fails is tried again by the next class.
///
/// Indexing the bank after a write (the IVF lists of its all-classes
/// query) is not the learner's job: it belongs to the query side
/// (`ovdiff_segment::query::index_bank`).
///
/// # Example
///
/// ```no_run
/// use std::path::PathBuf;
/// use ovdiff_core::Home;
/// use ovdiff_learn::learner::{Learner, NewClass};
/// use ovdiff_models::runtime::RuntimeOptions;
/// use ovdiff_store::bank::Bank;
///
/// # fn main() -> ovdiff_core::Result<()> {
/// let home = Home::from_env();
/// let bank = Bank::open(&home.bank_path(Some("zoo")))?;
/// let mut learner = Learner::new(home, RuntimeOptions::default())
///     .encoders(["dinov2-s14"])
///     .parts(32)
///     .seed(42);
/// for (name, dir) in [("giraffe", "support/giraffe"), ("zebra", "support/zebra")] {
///     let class = NewClass::new(name, Some(PathBuf::from(dir)))?;
///     let report = learner.add(&bank, class)?;
///     println!("{}: {} images used", report.class, report.images_used);
/// }
/// // no folder: sampled with a Stable Diffusion export
/// let mut learner = learner.generator(Some(PathBuf::from("sd-turbo-onnx")));
/// learner.add(&bank, NewClass::new("sky", None)?.stuff(true))?;
/// # Ok(())
/// # }
/// ```
pub struct Learner {
    home: Home,
    runtime_options: RuntimeOptions,
    runtime: Option<Runtime>,
    encoder_names: Vec<String>,
    /// The encoders loaded so far, in `encoder_names` order.
    encoders: Vec<Encoder>,
    generator_dir: Option<PathBuf>,
    generator: Option<Generator>,
    split: Option<SplitMethod>,
    parts: usize,
    seed: u64,
    replace: bool,
    sampling: SampleOptions,
    keep_support: Option<PathBuf>,
    progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("home", &self.home)
            .field("encoders", &self.encoder_names)
            .field("generator", &self.generator_dir)
            .field("split", &self.split)
            .field("parts", &self.parts)
            .field("seed", &self.seed)
            .field("replace", &self.replace)
            .field("sampling", &self.sampling)
            .field("keep_support", &self.keep_support)
            .finish_non_exhaustive()
    }
}

impl Learner {
    /// A learner with `add`'s defaults: the [`DEFAULT_ENCODER`], the split
    /// chosen per class, [`DEFAULT_PARTS`] parts, seed [`DEFAULT_SEED`],
    /// OVDiff's sampling options, the generator of `<home>/config.toml`,
    /// no replacing, no progress.
    pub fn new(home: Home, runtime: RuntimeOptions) -> Learner {
        Learner {
            home,
            runtime_options: runtime,
            runtime: None,
            encoder_names: vec![DEFAULT_ENCODER.to_string()],
            encoders: Vec::new(),
            generator_dir: None,
            generator: None,
            split: None,
            parts: DEFAULT_PARTS,
            seed: DEFAULT_SEED,
            replace: false,
            sampling: SampleOptions::default(),
            keep_support: None,
            progress: Arc::new(NoProgress),
        }
    }

    /// The encoder bundles every class gets prototypes for: names under
    /// `<home>/models`, or folders.
    pub fn encoders<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Learner {
        self.encoder_names = names.into_iter().map(Into::into).collect();
        self.encoders.clear();
        self
    }

    /// The foreground/background split; `None` (the default) chooses per
    /// class: the generator's attribution maps when it gives them, else the
    /// encoder's saliency. Attribution asked of a source without maps is
    /// refused before any work.
    pub fn split(mut self, split: Option<SplitMethod>) -> Learner {
        self.split = split;
        self
    }

    /// Number of K-means part prototypes per side.
    pub fn parts(mut self, parts: usize) -> Learner {
        self.parts = parts;
        self
    }

    /// Seed for sampling, K-means and the feature split.
    pub fn seed(mut self, seed: u64) -> Learner {
        self.seed = seed;
        self
    }

    /// Rebuild a class that exists (the old one stays until the new one is
    /// complete); without it, adding an existing class is an error.
    pub fn replace(mut self, replace: bool) -> Learner {
        self.replace = replace;
        self
    }

    /// The Stable Diffusion ONNX export that classes without a support
    /// folder are sampled with; `None`: `generator` in `<home>/config.toml`.
    pub fn generator(mut self, dir: Option<PathBuf>) -> Learner {
        self.generator_dir = dir;
        self.generator = None;
        self
    }

    /// How support sets are sampled. Its `seed` is not used: the learner's
    /// [`seed`](Learner::seed) seeds sampling too.
    pub fn sampling(mut self, options: SampleOptions) -> Learner {
        self.sampling = options;
        self
    }

    /// Also copy sampled support images (and their attribution maps) into
    /// this folder, named so that a later `NewClass::new(.., Some(dir))`
    /// pairs them again.
    pub fn keep_support(mut self, dir: Option<PathBuf>) -> Learner {
        self.keep_support = dir;
        self
    }

    /// Where progress goes (see [`Progress`]).
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Learner {
        self.progress = progress;
        self
    }

    /// Learn `class` and write it to `bank`.
    ///
    /// In order: an existing class is refused unless the learner replaces;
    /// the encoders are loaded (once) and registered in the bank; the
    /// generator is opened (once) when the class has no folder; the split
    /// is chosen and checked against the encoders; the support set is
    /// sampled ([`Stage::Sample`]); every image is encoded, split and
    /// pooled ([`Stage::Learn`]); the class is written atomically.
    ///
    /// # Errors
    ///
    /// Any of those steps; the bank then holds what it held before (an
    /// encoder registered on the way stays registered).
    pub fn add(&mut self, bank: &Bank, class: NewClass) -> Result<AddReport> {
        let NewClass {
            name,
            images: given,
            unusable,
            stuff,
            started,
        } = class;
        if !self.replace && bank.class(&name)?.is_some() {
            return Err(Error::Invalid(format!(
                "class `{}` already exists in bank {}; pass --replace to rebuild it",
                name,
                bank.path().display()
            )));
        }
        self.load_encoders(bank)?;
        if given.is_none() && self.generator.is_none() {
            let runtime = self.runtime()?;
            let generator =
                sampling::open_generator(&runtime, &self.home, self.generator_dir.as_deref())?;
            self.generator = Some(generator);
        }
        let generator = match given {
            Some(_) => None,
            None => self.generator.as_mut(),
        };
        let split = choose_split(
            self.split,
            generator.as_deref(),
            given.as_ref().map(|(_, images)| images.as_slice()),
        )?;
        support_set::check_encoders(&self.encoders, split)?;
        let mut sample_time = Duration::ZERO;
        let (images, source) = match (given, generator) {
            (Some((dir, images)), _) => (
                images,
                ClassSource::Images {
                    dir: dir.display().to_string(),
                },
            ),
            (None, Some(generator)) => {
                let t = Instant::now();
                let opts = SampleOptions {
                    seed: self.seed,
                    ..self.sampling.clone()
                };
                let sampled = sampling::sample_support(
                    generator,
                    &name,
                    &opts,
                    &self.home.cache_dir(),
                    self.keep_support.as_deref(),
                    self.progress.as_ref(),
                )?;
                sample_time = t.elapsed();
                sampled
            }
            (None, None) => {
                unreachable!("invariant: a generator is opened when no images are given")
            }
        };

        let opts = LearnOptions {
            split,
            build: BuildOptions {
                parts: self.parts,
                seed: self.seed,
                stuff,
                ..BuildOptions::default()
            },
        };
        let progress = self.progress.as_ref();
        progress.stage(Stage::Learn, &name, images.len() as u64);
        for (path, reason) in &unusable {
            progress.skipped(path, reason);
        }
        let learned = support_set::learn(&images, &mut self.encoders, &opts, &mut |ev| match ev {
            Event::Used { .. } => progress.advance(1),
            Event::Skipped { path, error } => {
                progress.skipped(path, &error.report());
                progress.advance(1);
            }
        });
        progress.finish();
        let learned = learned?;

        let mut build = learned.class_build(&name, stuff, source, split);
        if let Some(stats) = build.record.stats.as_mut() {
            stats.total_ms = millis(started.elapsed());
            stats.sample_ms = millis(sample_time);
        }
        bank.put_class(&build, self.replace)?;

        Ok(AddReport {
            class: name,
            bank: bank.path().to_path_buf(),
            images_used: learned.images.len(),
            images_skipped: unusable
                .iter()
                .chain(&learned.skipped)
                .map(|(path, reason)| SkippedImage {
                    path: path.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            split: split.as_str(),
            fallback_splits: learned.fallback_splits,
            encoders: learned
                .encoders
                .iter()
                .map(|e| EncoderReport {
                    name: e.name.clone(),
                    fingerprint: e.fingerprint.clone(),
                    prototypes: e.prototypes.len(),
                    counts: PrototypeCounts::of(&e.prototypes).into(),
                })
                .collect(),
            seconds: started.elapsed().as_secs_f64(),
            encode_seconds: learned.encode_time.as_secs_f64(),
            pool_seconds: learned.pool_time.as_secs_f64(),
        })
    }

    /// ONNX Runtime, loaded on first use.
    fn runtime(&mut self) -> Result<Runtime> {
        if let Some(r) = &self.runtime {
            return Ok(r.clone());
        }
        let r = Runtime::init(&self.home, self.runtime_options)?;
        self.runtime = Some(r.clone());
        Ok(r)
    }

    /// Load the encoders not loaded yet, and register every encoder in
    /// `bank`, each right after it is loaded.
    fn load_encoders(&mut self, bank: &Bank) -> Result<()> {
        let runtime = self.runtime()?;
        for i in 0..self.encoder_names.len() {
            if self.encoders.len() == i {
                let path = self.home.bundle_path(&self.encoder_names[i]);
                let bundle = runtime.open_bundle(&path)?;
                self.encoders.push(Encoder::load(&runtime, bundle)?);
            }
            bank.register_encoder(&encoder_info(&self.encoders[i]))?;
        }
        Ok(())
    }
}

/// The bank's record of an encoder.
fn encoder_info(enc: &Encoder) -> EncoderInfo {
    EncoderInfo {
        fingerprint: enc.bundle().fingerprint().to_string(),
        name: enc.bundle().name().to_string(),
        dim: enc.dim() as u32,
        dtype: "f16".into(),
    }
}

/// The split for a support set: the one asked for, else attribution maps
/// when the generator gives them, else the encoder's saliency. Attribution
/// asked of a source without maps is refused before any work; a folder of
/// images has them when every image has its map beside it (a folder
/// written by `--keep-support`).
fn choose_split(
    asked: Option<SplitMethod>,
    generator: Option<&Generator>,
    given: Option<&[SupportImage]>,
) -> Result<SplitMethod> {
    let has_maps = match (generator, given) {
        (Some(g), _) => g.has_attribution(),
        (None, Some(images)) => images.iter().all(|i| i.attribution.is_some()),
        (None, None) => false,
    };
    match asked {
        Some(SplitMethod::Attribution) if !has_maps => Err(Error::Invalid(format!(
            "--split attribution needs attribution maps, which only a generator whose UNet \
             declares cross-attention outputs gives ({}); use --split saliency or feature-split, \
             or run `python3 scripts/expose_attention.py EXPORT_DIR` on the export (see \
             docs/generators.md)",
            match generator {
                Some(g) => format!("{} declares none", g.dir().root().display()),
                None => "not every image in the --images folder has its NNN.attribution.png \
                         beside it, as `add --keep-support` writes them"
                    .to_string(),
            }
        ))),
        Some(m) => Ok(m),
        None if has_maps && generator.is_some() => Ok(SplitMethod::Attribution),
        None => Ok(SplitMethod::Saliency),
    }
}

#[cfg(test)]
mod tests;
