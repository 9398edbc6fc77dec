//! `ovdiff-bank add`: learn classes into a bank with the library's [`Learner`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::bank::{index_after_write, IndexChoice};
use super::progress::Bars;
use super::{count, outln, print_json, Context};
use ovdiff_core::home::DEFAULT_ENCODER;
use ovdiff_core::shard::Shard;
use ovdiff_diffusion::generate::{SampleOptions, DEFAULT_NEGATIVE, DEFAULT_PROMPT};
use ovdiff_diffusion::scheduler::SchedulerKind;
use ovdiff_learn::learner::{read_classes_file, AddReport, Learner, NewClass};
use ovdiff_learn::split::SplitMethod;
use ovdiff_store::bank::Bank;

/// Arguments of `add`.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// The class name (e.g. giraffe).
    #[arg(required_unless_present = "classes_file")]
    pub class: Option<String>,
    /// Build many classes in one run: one per line, `CLASS [IMAGES_DIR] [stuff]`
    /// (no folder: sampled with the generator). A line holding a tab is
    /// split on tabs only, `NAME<TAB>DIR[<TAB>stuff]`, so that a name may
    /// hold spaces (`dining table`). A failed class is reported and the run
    /// goes on.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["class", "images"])]
    pub classes_file: Option<PathBuf>,
    /// With --classes-file: where to write the JSON error report
    /// [default: add-errors.json, written only when a class failed].
    #[arg(long, value_name = "FILE", requires = "classes_file")]
    pub error_report: Option<PathBuf>,
    /// With --classes-file: build only shard I of N (from 0), the classes
    /// whose name hashes to I. N workers split a file without overlap, and
    /// lines added to the file never move the other classes. An empty shard
    /// still creates the bank, so that it can be exported like the others.
    #[arg(long, value_name = "I/N", requires = "classes_file")]
    pub shard: Option<Shard>,
    /// A folder of support images (PNG or JPEG) showing the class, or one
    /// image file. Without it, the support set is sampled from a diffusion
    /// generator.
    #[arg(long, value_name = "DIR|FILE", conflicts_with = "generator")]
    pub images: Option<PathBuf>,
    /// Options of the diffusion-sampled support set.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The bank: a name under <home>/banks, or a path [default: default].
    /// A bank that does not exist is created when it is the default one,
    /// a path, or with --create.
    #[arg(long, value_name = "NAME|PATH")]
    pub bank: Option<String>,
    /// Create the bank NAME when it does not exist (a typo in --bank NAME
    /// otherwise is an error that suggests the closest bank).
    #[arg(long)]
    pub create: bool,
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
    /// Runtime options.
    #[command(flatten)]
    pub model: super::ModelArgs,
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

/// The learner `args` describe; its bars are hidden with `--json`.
fn learner(ctx: &Context, args: &AddArgs) -> Learner {
    let s = &args.sampling;
    Learner::new(ctx.home.clone(), ctx.runtime)
        .encoders(args.encoders.iter().cloned())
        .split(args.split)
        .parts(args.parts)
        .seed(args.seed)
        .replace(args.replace)
        .generator(s.generator.clone())
        .sampling(SampleOptions {
            n: s.n,
            steps: s.steps,
            guidance: s.guidance,
            scheduler: s.scheduler,
            seed: args.seed,
            batch: s.batch,
            size: s.size,
            prompt: s.prompt.clone(),
            negative: s.negative.clone(),
        })
        .keep_support(s.keep_support.clone())
        .progress(Arc::new(Bars::new(ctx.json)))
}

/// The path of `--bank`, refused when it names a bank that does not exist
/// and may not be created (a name other than the default, without `create`).
fn check_bank(
    ctx: &Context,
    arg: Option<&str>,
    create: bool,
) -> anyhow::Result<std::path::PathBuf> {
    let path = super::bank_path(ctx, arg)?;
    let is_name = arg.is_some_and(|a| {
        !a.contains(std::path::MAIN_SEPARATOR) && a != ovdiff_core::home::DEFAULT_BANK
    });
    if !path.exists() && is_name && !create {
        let err = ovdiff_learn::banks::missing_bank(&ctx.home, arg.unwrap_or_default());
        anyhow::bail!("{err}; pass --create to make a new bank of that name");
    }
    Ok(path)
}

/// The bank of `--bank`, created when it does not exist and is the
/// default one, a path, or `create` says so; a new bank is reported on
/// stderr ("created bank X").
fn open_bank(ctx: &Context, arg: Option<&str>, create: bool) -> anyhow::Result<Bank> {
    let path = check_bank(ctx, arg, create)?;
    let new = !path.exists();
    let bank = Bank::open(&path).map_err(|e| super::explain_open_error(&path, e))?;
    if new {
        eprintln!("created bank {}", path.display());
    }
    Ok(bank)
}

/// Refuses a new class name with a comma: `--classes a,b` could not select it.
pub(crate) fn refuse_comma(name: &str) -> anyhow::Result<()> {
    if name.contains(',') {
        anyhow::bail!(
            "class name `{}` is not valid: it holds a comma, and `--classes` separates \
             names with commas, so the class could not be selected",
            super::printable(name)
        );
    }
    Ok(())
}

/// Where `add --classes-file` reports failed classes without `--error-report`.
const DEFAULT_ERROR_REPORT: &str = "add-errors.json";

/// `add`: one class, or every class of `--classes-file`.
pub fn run(ctx: &Context, args: &AddArgs) -> anyhow::Result<ExitCode> {
    let mut learner = learner(ctx, args);
    if args.shard.is_some() && args.classes_file.is_none() {
        anyhow::bail!(
            "--shard splits the classes of a --classes-file over workers; one class is not \
             split: drop --shard, or list the classes in a file and pass --classes-file FILE"
        );
    }
    let Some(file) = &args.classes_file else {
        let class = args
            .class
            .clone()
            .expect("invariant: clap requires a class without --classes-file");
        return add_one(
            ctx,
            &mut learner,
            args,
            class,
            args.images.clone(),
            args.stuff,
            args.index,
        );
    };
    // The error report is checked before any class is built: it must not
    // replace a device, FIFO or socket, nor land inside a bank (case 1).
    let report = args
        .error_report
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ERROR_REPORT));
    ovdiff_store::bank::check_output_file(&report)?;
    check_bank(ctx, args.bank.as_deref(), args.create)?;
    let mut lines = read_classes_file(file)?;
    if let Some(shard) = args.shard {
        let all = lines.len();
        lines.retain(|l| shard.owns(&l.class));
        eprintln!(
            "info: shard {shard}: {} of {all} in {}",
            count(lines.len(), "class", "classes"),
            file.display()
        );
        if lines.is_empty() {
            // the bank exists afterwards, as after any other shard
            open_bank(ctx, args.bank.as_deref(), args.create)?;
        }
    }
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
        // indexed once, after the last class
        let result = overall.suspend(|| {
            add_one(
                ctx,
                &mut learner,
                args,
                l.class.clone(),
                l.images.clone(),
                args.stuff || l.stuff,
                IndexChoice::Never,
            )
        });
        if let Err(e) = result {
            overall.suspend(|| eprintln!("ovdiff-bank: class `{}`: {e:#}", l.class));
            failures.push(serde_json::json!({ "class": l.class, "error": format!("{e:#}") }));
        }
        overall.inc(1);
    }
    overall.finish_and_clear();
    let done = lines.len() - failures.len();
    if done > 0 && args.index != IndexChoice::Never {
        let bank = open_bank(ctx, args.bank.as_deref(), args.create)?;
        index_after_write(ctx, &bank, args.index);
    }
    if !failures.is_empty() {
        ovdiff_core::atomic::write_atomic(
            &report,
            &serde_json::to_vec_pretty(&serde_json::json!({ "failed": failures }))?,
        )
        .with_context(|| format!("writing the error report {}", report.display()))?;
        eprintln!(
            "ovdiff-bank: {} of {} classes failed; see {}",
            failures.len(),
            lines.len(),
            report.display()
        );
    }
    if !ctx.json {
        outln!("{done} of {} added", count(lines.len(), "class", "classes"));
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Add one class to the bank of `args`, index it as `index` says, print
/// the report.
fn add_one(
    ctx: &Context,
    learner: &mut Learner,
    args: &AddArgs,
    class: String,
    images: Option<PathBuf>,
    stuff: bool,
    index: IndexChoice,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    refuse_comma(&class)?;
    check_bank(ctx, args.bank.as_deref(), args.create)?;
    let class = NewClass::new(class, images)?.stuff(stuff);
    let bank = open_bank(ctx, args.bank.as_deref(), args.create)?;
    let existed = bank.class(class.name())?.is_some();
    let mut report = learner.add(&bank, class)?;
    index_after_write(ctx, &bank, index);
    // the command's time, indexing included
    report.seconds = started.elapsed().as_secs_f64();
    print_report(ctx, &report, existed)?;
    Ok(ExitCode::SUCCESS)
}

fn print_report(ctx: &Context, report: &AddReport, replaced: bool) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(report);
    }
    outln!(
        "{} `{}` {} {}: {} used, {} skipped, {} split{}, \
         {:.1} s (encoder {:.1} s, pooling {:.1} s)",
        if replaced { "replaced" } else { "added" },
        report.class,
        if replaced { "in" } else { "to" },
        report.bank.display(),
        count(report.images_used, "image", "images"),
        report.images_skipped.len(),
        report.split,
        match report.fallback_splits {
            0 => String::new(),
            n => format!(
                " ({} with a fallback split: no clear foreground or background, so the top and bottom 20% of patches were taken)",
                count(n as usize, "image", "images")
            ),
        },
        report.seconds,
        report.encode_seconds,
        report.pool_seconds
    );
    for e in &report.encoders {
        let c = &e.counts;
        outln!(
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
    Ok(())
}
