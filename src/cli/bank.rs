//! `ovdiff-bank add|list|show|remove|rename`: building classes into a bank and looking after them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{print_json, Context};
use ovdiff_core::home::DEFAULT_ENCODER;
use ovdiff_diffusion::attribution;
use ovdiff_diffusion::generate::{
    Generator, Progress as GenProgress, SampleOptions, DEFAULT_NEGATIVE, DEFAULT_PROMPT,
};
use ovdiff_diffusion::scheduler::SchedulerKind;
use ovdiff_learn::builder::BuildOptions;
use ovdiff_learn::split::SplitMethod;
use ovdiff_learn::support_set::{self, Event, LearnOptions, SupportImage};
use ovdiff_models::features::Encoder;
use ovdiff_segment::query;
use ovdiff_store::bank::{Bank, ClassRecord, ClassSource, EncoderInfo, PrototypeCounts};

/// Arguments of `add`.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// The class name (e.g. giraffe).
    #[arg(required_unless_present = "classes_file")]
    pub class: Option<String>,
    /// Build many classes in one run: one per line, `CLASS [IMAGES_DIR] [stuff]`
    /// (no folder: sampled with the generator). A failed class is reported
    /// and the run goes on.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["class", "images"])]
    pub classes_file: Option<PathBuf>,
    /// With --classes-file: where to write the JSON error report
    /// [default: add-errors.json, written only when a class failed].
    #[arg(long, value_name = "FILE", requires = "classes_file")]
    pub error_report: Option<PathBuf>,
    /// A folder of support images (PNG or JPEG) showing the class. Without
    /// it, the support set is sampled from a diffusion generator.
    #[arg(long, value_name = "DIR", conflicts_with = "generator")]
    pub images: Option<PathBuf>,
    /// Options of the diffusion-sampled support set.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The bank: a name under <home>/banks, or a path.
    #[arg(long, value_name = "NAME|PATH")]
    pub bank: Option<String>,
    /// Encoder bundle(s): names under <home>/models, or folders. Repeatable.
    #[arg(long = "encoder", value_name = "BUNDLE", default_value = DEFAULT_ENCODER)]
    pub encoders: Vec<String>,
    /// A stuff class (sky, grass, water): keep foreground prototypes only.
    #[arg(long)]
    pub stuff: bool,
    /// Rebuild the class if it exists (the old one stays until the new one is complete).
    #[arg(long)]
    pub replace: bool,
    /// Foreground/background split: saliency (the encoder's saliency
    /// output), feature-split (2-means over patch tokens) or attribution
    /// (the generator's cross-attention maps) [default: attribution when
    /// the generator's UNet declares cross-attention outputs, else
    /// saliency].
    #[arg(long, value_name = "METHOD")]
    pub split: Option<SplitMethod>,
    /// Number of K-means part prototypes per side.
    #[arg(long, default_value_t = 32, value_name = "K")]
    pub parts: usize,
    /// Seed for sampling, K-means and the feature split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Index the bank once written: the IVF lists of its all-classes query,
    /// cached under <home>/cache. auto: when it has the 50,000 prototype
    /// rows from which `segment --engine auto` uses them.
    #[arg(long, value_enum, default_value = "auto")]
    pub index: IndexChoice,
}

/// When a command that writes a bank indexes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexChoice {
    /// When the bank reaches `segment --engine auto`'s IVF switch.
    Auto,
    /// Whatever its size (for `--engine ivf` users).
    Always,
    /// Not now (the first query that needs the lists builds them).
    Never,
}

/// Index `bank` after a write, as `choice` says (see [`query::index_bank`]).
/// The write has already succeeded, so a failure here is only a warning:
/// the first query that needs the lists builds them.
pub(super) fn index_after_write(ctx: &Context, bank: &Bank, choice: IndexChoice) {
    let min_rows = match choice {
        IndexChoice::Auto => query::AUTO_APPROX_MIN_ROWS,
        IndexChoice::Always => 1,
        IndexChoice::Never => return,
    };
    let started = Instant::now();
    match query::index_bank(bank, &ctx.home.cache_dir(), min_rows, ctx.runtime.threads) {
        Ok(done) => {
            for ix in done {
                let Some(st) = ix.ivf else { continue };
                let name = bank.encoder(&ix.encoder).ok().flatten().map_or_else(
                    || ix.encoder[..12.min(ix.encoder.len())].to_string(),
                    |e| e.name,
                );
                eprintln!(
                    "ovdiff-bank: index of {} for {name}: IVF lists over {} rows in {} lists, {} \
                     ({:.1} s)",
                    bank.path().display(),
                    st.rows,
                    st.lists,
                    if st.loaded {
                        "already cached and current"
                    } else {
                        "built and cached"
                    },
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Err(e) => eprintln!(
            "ovdiff-bank: warning: the bank was written but not indexed ({e}); the first \
             query that needs its IVF lists will build them"
        ),
    }
}

/// How `add` samples a support set when no `--images` are given (OVDiff's defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// A Stable Diffusion ONNX export folder (`optimum-cli export onnx`)
    /// [default: `generator` in <home>/config.toml].
    #[arg(long, value_name = "DIR")]
    pub generator: Option<PathBuf>,
    /// Support images to sample.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1 disables it).
    #[arg(long, default_value_t = 8.0)]
    pub guidance: f32,
    /// Sampler: dpm++2m, ddim, euler or turbo (one step, for SD-Turbo).
    #[arg(long, default_value = "dpm++2m")]
    pub scheduler: SchedulerKind,
    /// Images denoised together. The images do not depend on it; memory
    /// does: for SD 1.5 in f32 on a CPU, 2 fits in 24 GiB and 8 does not
    /// (docs/generators.md).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Prompt template; `{}` is the class name.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Negative prompt.
    #[arg(long, default_value = DEFAULT_NEGATIVE)]
    pub negative: String,
    /// Also copy the sampled support images into this folder as PNGs.
    #[arg(long, value_name = "DIR")]
    pub keep_support: Option<PathBuf>,
}

/// `<home>/config.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HomeConfig {
    /// The default diffusion export folder.
    generator: Option<PathBuf>,
}

fn generator_dir(ctx: &Context, arg: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.clone());
    }
    let cfg_path = ctx.home.root().join("config.toml");
    let cfg: HomeConfig = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => toml::from_str(&t).with_context(|| format!("reading {}", cfg_path.display()))?,
        Err(_) => HomeConfig::default(),
    };
    cfg.generator.ok_or_else(|| {
        anyhow::anyhow!(
            "no support images and no generator: pass --images DIR, or a Stable Diffusion ONNX \
             export with --generator DIR. To make one (with the weights and Python's optimum): \
             `optimum-cli export onnx --model stabilityai/sd-turbo sd-turbo-onnx/`; then pass \
             --generator sd-turbo-onnx, or put `generator = \"/abs/path/sd-turbo-onnx\"` in {} \
             (see docs/generators.md)",
            cfg_path.display()
        )
    })
}

/// The split for a support set: the one asked for, else attribution maps
/// when the generator gives them, else the encoder's saliency. Attribution
/// asked of a source without maps is refused before any work; a folder of
/// `--images` has them when every image has its map beside it (a folder
/// written by `--keep-support`).
fn choose_split(
    asked: Option<SplitMethod>,
    generator: Option<&Generator>,
    given: Option<&[SupportImage]>,
) -> anyhow::Result<SplitMethod> {
    let has_maps = match (generator, given) {
        (Some(g), _) => g.has_attribution(),
        (None, Some(images)) => images.iter().all(|i| i.attribution.is_some()),
        (None, None) => false,
    };
    match asked {
        Some(SplitMethod::Attribution) if !has_maps => bail!(
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
        ),
        Some(m) => Ok(m),
        None if has_maps && generator.is_some() => Ok(SplitMethod::Attribution),
        None => Ok(SplitMethod::Saliency),
    }
}

/// Open the generator `add` samples with (from --generator or config.toml).
fn open_generator(
    ctx: &Context,
    runtime: &ovdiff_models::runtime::Runtime,
    s: &SamplingArgs,
) -> anyhow::Result<Generator> {
    let dir = generator_dir(ctx, s.generator.as_ref())?;
    Generator::open(runtime, &dir).with_context(|| format!("opening generator {}", dir.display()))
}

/// Sample the support set; returns the cached images (with their
/// attribution maps when the generator gives them) and the class source.
fn sample_support(
    ctx: &Context,
    generator: &mut Generator,
    class: &str,
    s: &SamplingArgs,
    seed: u64,
) -> anyhow::Result<(Vec<SupportImage>, ClassSource)> {
    let opts = SampleOptions {
        n: s.n,
        steps: s.steps,
        guidance: s.guidance,
        scheduler: s.scheduler,
        seed,
        batch: s.batch,
        size: s.size,
        prompt: s.prompt.clone(),
        negative: s.negative.clone(),
    };
    let pb = if ctx.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(s.n as u64)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "sample {prefix} [{bar:30}] {pos}/{len} images, {msg}, ETA {eta}",
        )
        .expect("invariant: template is valid")
        .progress_chars("=> "),
    );
    pb.set_prefix(class.to_string());
    let paths = generator.generate(class, &opts, &ctx.home.cache_dir(), &mut |p| match p {
        GenProgress::Cached { .. } => pb.inc(1),
        GenProgress::Step {
            step,
            steps,
            first,
            count,
        } => pb.set_message(format!(
            "images {}..{}: step {step}/{steps}",
            first + 1,
            first + count
        )),
        GenProgress::Written { count, .. } => pb.inc(count as u64),
    });
    pb.finish_and_clear();
    let with_maps = generator.has_attribution();
    let images: Vec<SupportImage> = paths?
        .into_iter()
        .map(|path| SupportImage {
            attribution: with_maps.then(|| attribution::map_path(&path)),
            path,
        })
        .collect();
    if let Some(keep) = &s.keep_support {
        std::fs::create_dir_all(keep).with_context(|| format!("creating {}", keep.display()))?;
        for (i, image) in images.iter().enumerate() {
            // maps keep the name `add --images KEEP` pairs them by
            let kept = keep.join(format!("{class}-{i:03}.png"));
            let mut copies = vec![(&image.path, kept.clone())];
            if let Some(map) = &image.attribution {
                copies.push((map, attribution::map_path(&kept)));
            }
            for (from, to) in copies {
                std::fs::copy(from, &to).with_context(|| format!("writing {}", to.display()))?;
            }
        }
    }
    let source = ClassSource::Generator {
        fingerprint: generator.fingerprint().to_string(),
        params: opts.params(class),
    };
    Ok((images, source))
}

#[derive(Debug, Serialize)]
struct AddReport {
    class: String,
    bank: PathBuf,
    images_used: usize,
    images_skipped: Vec<SkippedImage>,
    /// The foreground/background split used.
    split: &'static str,
    fallback_splits: u32,
    encoders: Vec<EncoderReport>,
    seconds: f64,
    encode_seconds: f64,
    pool_seconds: f64,
}

#[derive(Debug, Serialize)]
struct SkippedImage {
    path: PathBuf,
    reason: String,
}

#[derive(Debug, Serialize)]
struct EncoderReport {
    name: String,
    fingerprint: String,
    prototypes: usize,
    counts: CountsJson,
}

#[derive(Debug, Serialize)]
struct CountsJson {
    class_fg: u32,
    class_bg: u32,
    instance_fg: u32,
    instance_bg: u32,
    part_fg: u32,
    part_bg: u32,
}

impl From<PrototypeCounts> for CountsJson {
    fn from(c: PrototypeCounts) -> Self {
        CountsJson {
            class_fg: c.class_fg,
            class_bg: c.class_bg,
            instance_fg: c.instance_fg,
            instance_bg: c.instance_bg,
            part_fg: c.part_fg,
            part_bg: c.part_bg,
        }
    }
}

fn open_bank(ctx: &Context, arg: Option<&str>) -> anyhow::Result<Bank> {
    let path = ctx.home.bank_path(arg);
    Bank::open(&path).map_err(anyhow::Error::from)
}

fn open_existing_bank(ctx: &Context, arg: Option<&str>) -> anyhow::Result<Bank> {
    let path = ctx.home.bank_path(arg);
    if !path.exists() {
        bail!(
            "bank {} does not exist; build one with `ovdiff-bank add CLASS --images DIR`",
            path.display()
        );
    }
    open_bank(ctx, arg)
}

/// One line of a classes file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLine {
    /// The class name.
    pub class: String,
    /// Its support folder, if any.
    pub images: Option<PathBuf>,
    /// A stuff class.
    pub stuff: bool,
}

/// Parse a classes file: `CLASS [IMAGES_DIR] [stuff]` per line, `#` comments.
pub fn parse_classes_file(text: &str) -> anyhow::Result<Vec<ClassLine>> {
    let mut out: Vec<ClassLine> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        let stuff = fields.len() > 1 && fields.last() == Some(&"stuff");
        if stuff {
            fields.pop();
        }
        let (class, images) = match fields.as_slice() {
            [c] => (c.to_string(), None),
            [c, dir] => (c.to_string(), Some(PathBuf::from(dir))),
            _ => bail!(
                "line {}: expected `CLASS [IMAGES_DIR] [stuff]`, got `{line}`",
                n + 1
            ),
        };
        if out.iter().any(|l| l.class == class) {
            bail!("line {}: class `{class}` is listed twice", n + 1);
        }
        out.push(ClassLine {
            class,
            images,
            stuff,
        });
    }
    if out.is_empty() {
        bail!("the classes file lists no class");
    }
    Ok(out)
}

/// `add`: one class, or every class of `--classes-file`.
pub fn add(ctx: &Context, args: &AddArgs) -> anyhow::Result<ExitCode> {
    let Some(file) = &args.classes_file else {
        return add_one(ctx, args);
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lines = parse_classes_file(&text)?;
    let overall = if ctx.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(lines.len() as u64)
    };
    overall.set_style(
        ProgressStyle::with_template(
            "classes [{bar:30}] {pos}/{len}, {elapsed} elapsed, ETA {eta} {msg}",
        )
        .expect("invariant: template is valid")
        .progress_chars("=> "),
    );
    let mut failures = Vec::new();
    for l in &lines {
        overall.set_message(l.class.clone());
        let mut one = args.clone();
        one.classes_file = None;
        one.class = Some(l.class.clone());
        one.images = l.images.clone();
        one.stuff = args.stuff || l.stuff;
        // indexed once, after the last class
        one.index = IndexChoice::Never;
        let result = overall.suspend(|| add_one(ctx, &one));
        if let Err(e) = result {
            overall.suspend(|| eprintln!("ovdiff-bank: class `{}`: {e:#}", l.class));
            failures.push(serde_json::json!({ "class": l.class, "error": format!("{e:#}") }));
        }
        overall.inc(1);
    }
    overall.finish_and_clear();
    let done = lines.len() - failures.len();
    if done > 0 && args.index != IndexChoice::Never {
        let bank = open_bank(ctx, args.bank.as_deref())?;
        index_after_write(ctx, &bank, args.index);
    }
    if !failures.is_empty() {
        let report = args
            .error_report
            .clone()
            .unwrap_or_else(|| PathBuf::from("add-errors.json"));
        std::fs::write(
            &report,
            serde_json::to_vec_pretty(&serde_json::json!({ "failed": failures }))?,
        )
        .with_context(|| format!("writing {}", report.display()))?;
        eprintln!(
            "ovdiff-bank: {} of {} classes failed; see {}",
            failures.len(),
            lines.len(),
            report.display()
        );
    }
    if !ctx.json {
        println!("{done} of {} classes added", lines.len());
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn add_one(ctx: &Context, args: &AddArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let class = args
        .class
        .clone()
        .expect("invariant: clap requires a class without --classes-file");
    ovdiff_store::bank::validate_class_name(&class)
        .map_err(|p| anyhow::anyhow!("class name `{class}` is not valid: {p}"))?;
    let given = match &args.images {
        Some(dir) => {
            if !dir.is_dir() {
                bail!(
                    "support folder {} does not exist or is not a folder",
                    dir.display()
                );
            }
            let images = support_set::list_images(dir)?;
            if images.is_empty() {
                bail!(
                    "no PNG or JPEG images in {}; nothing was written",
                    dir.display()
                );
            }
            Some(support_set::with_attribution_maps(images))
        }
        None => None,
    };
    let bank = open_bank(ctx, args.bank.as_deref())?;
    if !args.replace && bank.class(&class)?.is_some() {
        bail!(
            "class `{}` already exists in bank {}; pass --replace to rebuild it",
            class,
            bank.path().display()
        );
    }
    let runtime = ctx.runtime()?;
    let mut encoders = Vec::new();
    for name in &args.encoders {
        let bundle = runtime.open_bundle(&ctx.home.bundle_path(name))?;
        let enc = Encoder::load(&runtime, bundle)?;
        let info = EncoderInfo {
            fingerprint: enc.bundle().fingerprint().to_string(),
            name: enc.bundle().name().to_string(),
            dim: enc.dim() as u32,
            dtype: "f16".into(),
        };
        bank.register_encoder(&info)?;
        encoders.push(enc);
    }
    let mut generator = match given {
        Some(_) => None,
        None => Some(open_generator(ctx, &runtime, &args.sampling)?),
    };
    let split = choose_split(args.split, generator.as_ref(), given.as_deref())?;
    support_set::check_encoders(&encoders, split)?;
    let mut sample_time = std::time::Duration::ZERO;
    let (images, source) = match (given, &args.images, generator.as_mut()) {
        (Some(images), Some(dir), _) => (
            images,
            ClassSource::Images {
                dir: dir.display().to_string(),
            },
        ),
        (_, _, Some(generator)) => {
            let t = Instant::now();
            let sampled = sample_support(ctx, generator, &class, &args.sampling, args.seed)?;
            sample_time = t.elapsed();
            sampled
        }
        _ => unreachable!("invariant: a generator is opened when no images are given"),
    };

    let pb = if ctx.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(images.len() as u64)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} images, {elapsed} elapsed, ETA {eta}",
        )
        .expect("invariant: template is valid")
        .progress_chars("=> "),
    );
    pb.set_prefix(format!("add {}", class));
    let opts = LearnOptions {
        split,
        build: BuildOptions {
            parts: args.parts,
            seed: args.seed,
            stuff: args.stuff,
            ..BuildOptions::default()
        },
    };
    let learned = support_set::learn(&images, &mut encoders, &opts, &mut |ev| match ev {
        Event::Used { .. } => pb.inc(1),
        Event::Skipped { path, error } => {
            pb.suspend(|| eprintln!("warning: skipping {}: {}", path.display(), error.report()));
            pb.inc(1);
        }
    });
    pb.finish_and_clear();
    let learned = learned?;

    let mut build = learned.class_build(&class, args.stuff, source, split);
    if let Some(stats) = build.record.stats.as_mut() {
        stats.total_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        stats.sample_ms = u64::try_from(sample_time.as_millis()).unwrap_or(u64::MAX);
    }
    bank.put_class(&build, args.replace)?;
    index_after_write(ctx, &bank, args.index);

    let report = AddReport {
        class: class.clone(),
        bank: bank.path().to_path_buf(),
        images_used: learned.images.len(),
        images_skipped: learned
            .skipped
            .iter()
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
    };
    if ctx.json {
        print_json(&report)?;
    } else {
        println!(
            "added `{}` to {}: {} images used, {} skipped, {} split with {} fallback splits, \
             {:.1} s (encoder {:.1} s, pooling {:.1} s)",
            report.class,
            report.bank.display(),
            report.images_used,
            report.images_skipped.len(),
            report.split,
            report.fallback_splits,
            report.seconds,
            report.encode_seconds,
            report.pool_seconds
        );
        for e in &report.encoders {
            let c = &e.counts;
            println!(
                "  {}: {} prototypes (class {}+{}, instance {}+{}, part {}+{} fg+bg)",
                e.name,
                e.prototypes,
                c.class_fg,
                c.class_bg,
                c.instance_fg,
                c.instance_bg,
                c.part_fg,
                c.part_bg
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct ClassRow {
    name: String,
    stuff: bool,
    source: String,
    split: String,
    images: u32,
    prototypes: u64,
    encoders: Vec<String>,
    created_unix: u64,
}

fn source_text(s: &ClassSource) -> String {
    match s {
        ClassSource::Images { dir } => format!("images:{dir}"),
        ClassSource::Generator { fingerprint, .. } => {
            format!("generator:{}", &fingerprint[..12.min(fingerprint.len())])
        }
    }
}

fn row(rec: &ClassRecord, encoders: &[EncoderInfo]) -> ClassRow {
    let enc_name = |fp: &str| {
        encoders
            .iter()
            .find(|e| e.fingerprint == fp)
            .map(|e| e.name.clone())
            .unwrap_or_else(|| fp[..12.min(fp.len())].to_string())
    };
    ClassRow {
        name: rec.name.clone(),
        stuff: rec.stuff,
        source: source_text(&rec.source),
        split: rec.split_method.clone(),
        images: rec.images_used,
        prototypes: rec.encoders.iter().map(|e| e.counts.total()).sum(),
        encoders: rec
            .encoders
            .iter()
            .map(|e| enc_name(&e.fingerprint))
            .collect(),
        created_unix: rec.created_unix,
    }
}

/// `list`
pub fn list(ctx: &Context, bank: Option<&str>) -> anyhow::Result<ExitCode> {
    let bank = open_existing_bank(ctx, bank)?;
    let encoders = bank.encoders()?;
    let rows: Vec<ClassRow> = bank.classes()?.iter().map(|r| row(r, &encoders)).collect();
    if ctx.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("bank {} has no classes", bank.path().display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<6} {:>6} {:>10}  {:<16} source",
        "class", "stuff", "images", "prototypes", "encoders"
    );
    for r in &rows {
        println!(
            "{:<20} {:<6} {:>6} {:>10}  {:<16} {}",
            r.name,
            if r.stuff { "yes" } else { "no" },
            r.images,
            r.prototypes,
            r.encoders.join(","),
            r.source
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The error for a class that is not in the bank.
pub(crate) fn unknown_class(bank: &Bank, name: &str) -> anyhow::Error {
    ovdiff_segment::query::unknown_class_error(
        bank as &dyn ovdiff_store::class_store::ClassStore,
        name,
    )
    .into()
}

#[derive(Debug, Serialize)]
struct ShowReport {
    #[serde(flatten)]
    row: ClassRow,
    images_skipped: u32,
    fallback_splits: u32,
    source_params: Vec<(String, String)>,
    per_encoder: Vec<EncoderReport>,
    support: Vec<SupportJson>,
    created_unix: u64,
    /// Build statistics; null for classes built before bank format 2.
    build: Option<ovdiff_store::bank::BuildStats>,
}

#[derive(Debug, Serialize)]
struct SupportJson {
    index: usize,
    name: String,
    width: u32,
    height: u32,
    thumbnail_bytes: usize,
}

/// `show CLASS`
pub fn show(ctx: &Context, bank: Option<&str>, class: &str) -> anyhow::Result<ExitCode> {
    let bank = open_existing_bank(ctx, bank)?;
    let Some(rec) = bank.class(class)? else {
        return Err(unknown_class(&bank, class));
    };
    let encoders = bank.encoders()?;
    let mut support = Vec::new();
    for (i, s) in rec.support.iter().enumerate() {
        let thumb = bank.thumbnail(&rec, i as u32)?;
        support.push(SupportJson {
            index: i,
            name: s.name.clone(),
            width: s.width,
            height: s.height,
            thumbnail_bytes: thumb.map(|t| t.len()).unwrap_or(0),
        });
    }
    let report = ShowReport {
        row: row(&rec, &encoders),
        images_skipped: rec.images_skipped,
        fallback_splits: rec.fallback_splits,
        source_params: match &rec.source {
            ClassSource::Generator { params, .. } => params.clone(),
            ClassSource::Images { .. } => vec![],
        },
        per_encoder: rec
            .encoders
            .iter()
            .map(|e| EncoderReport {
                name: encoders
                    .iter()
                    .find(|i| i.fingerprint == e.fingerprint)
                    .map(|i| i.name.clone())
                    .unwrap_or_default(),
                fingerprint: e.fingerprint.clone(),
                prototypes: e.counts.total() as usize,
                counts: e.counts.into(),
            })
            .collect(),
        support,
        created_unix: rec.created_unix,
        build: rec.stats.clone(),
    };
    if ctx.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = &report.row;
    println!(
        "class      {}{}",
        r.name,
        if r.stuff { " (stuff)" } else { "" }
    );
    println!("source     {}", r.source);
    for (k, v) in &report.source_params {
        println!("           {k} = {v}");
    }
    println!(
        "split      {} ({} fallback splits)",
        r.split, report.fallback_splits
    );
    println!(
        "images     {} used, {} skipped",
        r.images, report.images_skipped
    );
    for e in &report.per_encoder {
        let c = &e.counts;
        println!(
            "encoder    {} {}: {} prototypes (class {}+{}, instance {}+{}, part {}+{} fg+bg)",
            e.name,
            &e.fingerprint[..12.min(e.fingerprint.len())],
            e.prototypes,
            c.class_fg,
            c.class_bg,
            c.instance_fg,
            c.instance_bg,
            c.part_fg,
            c.part_bg
        );
    }
    match &report.build {
        Some(b) => println!(
            "build      {:.1} s by ovdiff-bank {} (sampling {:.1} s, decoding {:.1} s, encoder {:.1} s, \
             pooling {:.1} s); {} fg + {} bg patches",
            b.total_ms as f64 / 1e3,
            b.tool_version,
            b.sample_ms as f64 / 1e3,
            b.decode_ms as f64 / 1e3,
            b.encode_ms as f64 / 1e3,
            b.pool_ms as f64 / 1e3,
            b.fg_patches,
            b.bg_patches
        ),
        None => println!("build      not recorded (built before bank format 2)"),
    }
    println!("support images:");
    for s in &report.support {
        println!(
            "  #{:<3} {} ({}×{}, thumbnail {} bytes)",
            s.index, s.name, s.width, s.height, s.thumbnail_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `remove CLASS`
pub fn remove(
    ctx: &Context,
    bank: Option<&str>,
    class: &str,
    index: IndexChoice,
) -> anyhow::Result<ExitCode> {
    let bank = open_existing_bank(ctx, bank)?;
    if !bank.remove_class(class)? {
        return Err(unknown_class(&bank, class));
    }
    index_after_write(ctx, &bank, index);
    if !ctx.json {
        println!("removed `{class}` from {}", bank.path().display());
    } else {
        print_json(&serde_json::json!({ "removed": class }))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rename OLD NEW`
pub fn rename(
    ctx: &Context,
    bank: Option<&str>,
    old: &str,
    new: &str,
    index: IndexChoice,
) -> anyhow::Result<ExitCode> {
    let bank = open_existing_bank(ctx, bank)?;
    if bank.class(old)?.is_none() {
        return Err(unknown_class(&bank, old));
    }
    bank.rename_class(old, new)?;
    index_after_write(ctx, &bank, index);
    if !ctx.json {
        println!("renamed `{old}` to `{new}` in {}", bank.path().display());
    } else {
        print_json(&serde_json::json!({ "renamed": old, "to": new }))?;
    }
    Ok(ExitCode::SUCCESS)
}
