//! `ovdiff-bank segment`: label every pixel of images with the nearest class, write label maps, overlays and explanations.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{outln, plural, Context};
use ovdiff_core::shard::{path_key, Shard};
use ovdiff_learn::support_set;
use ovdiff_models::features::preprocess;
use ovdiff_segment::prefilter;
use ovdiff_segment::query::{self, Matching};
use ovdiff_segment::report::segment::{SegmentPage, SegmentRow};
use ovdiff_segment::report::{self, RunInfo};
use ovdiff_segment::resume::{outputs_complete, Expected};
use ovdiff_segment::segmenter::{ClassChoice, ImageInput, PlanReport, PrefilterChoice};
use ovdiff_segment::{ImageReport, LabelIds, Query, Segmenter, SegmenterOptions, WriteOptions};

/// Which matcher scores patches against prototypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// Exact below 50,000 prototype rows, IVF above.
    Auto,
    /// Exact blocked matrix multiply.
    Exact,
    /// Approximate nearest neighbours (HNSW graph, cached).
    Hnsw,
    /// Approximate: inverted lists by k-means, exact products within the
    /// lists a patch probes (from the bank file, the cache, or built in
    /// seconds).
    Ivf,
}

impl EngineChoice {
    /// The rule that picks each query's matcher, narrowed by `--prefilter`
    /// or not.
    fn policy(self) -> query::EnginePolicy {
        match self {
            EngineChoice::Auto => query::EnginePolicy::Auto,
            EngineChoice::Exact => query::EnginePolicy::Fixed(Matching::Exact),
            EngineChoice::Hnsw => query::EnginePolicy::Fixed(Matching::Hnsw),
            EngineChoice::Ivf => query::EnginePolicy::Fixed(Matching::Ivf),
        }
    }
}

/// `--label-ids`: how label PNGs number the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelIdsArg {
    /// 1..K in the order of --classes (every class: by name).
    Query,
    /// The stable id the bank recorded for each class: the same in every run.
    Bank,
}

impl LabelIdsArg {
    /// The library's numbering.
    pub fn ids(self) -> LabelIds {
        match self {
            LabelIdsArg::Query => LabelIds::Query,
            LabelIdsArg::Bank => LabelIds::Bank,
        }
    }
}

/// `--masks`: per-class masks in standard formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaskFormat {
    /// NAME.masks/CLASS.png, binary 0/255, per class found.
    Png,
    /// COCO compressed RLE per class found, in NAME.json (as pycocotools' mask.encode).
    Rle,
}

/// `--engine`, shared by `segment` and `eval`.
#[derive(Debug, clap::Args)]
pub struct EngineArg {
    /// Matcher: auto (exact below 50,000 prototype rows, IVF above), exact,
    /// ivf or hnsw (see docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineChoice,
    /// Windows encoded per image: accurate (OVDiff's: the whole image, the
    /// 448 and 336 windows), balanced (the whole image and the 448 windows)
    /// or fast (the whole image only, one forward pass); see docs/quality.md.
    #[arg(
        long,
        default_value = "accurate",
        value_name = "accurate|balanced|fast"
    )]
    pub preset: ovdiff_segment::WindowPreset,
}

/// `--prefilter` and `--prefilter-topk`, shared by `segment` and `eval`.
#[derive(Debug, clap::Args)]
pub struct PrefilterArgs {
    /// CLIP category pre-filter: a CLIP ONNX export (`optimum-cli export onnx --model
    /// openai/clip-vit-base-patch16 DIR`); per image, only the classes CLIP picks are candidates.
    /// Without it, no pre-filter runs.
    #[arg(long, value_name = "CLIP_DIR")]
    pub prefilter: Option<PathBuf>,
    /// Classes the pre-filter's first stage keeps; the second compares all 2^K − 1 subsets of
    /// them [default: 6; OVDiff uses 10, which costs 1023 text-tower prompts per image].
    #[arg(long, value_name = "K", requires = "prefilter")]
    pub prefilter_topk: Option<usize>,
}

impl PrefilterArgs {
    /// The query's pre-filter, if `--prefilter` was given.
    fn choice(&self) -> Option<PrefilterChoice> {
        self.prefilter.as_ref().map(|dir| PrefilterChoice {
            clip_dir: dir.clone(),
            topk: self.prefilter_topk.unwrap_or(prefilter::DEFAULT_TOPK),
        })
    }
}

/// Arguments of `segment`.
#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// Images: files, folders, or globs (quoted, e.g. 'photos/*.jpg').
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Candidate classes, comma-separated (e.g. giraffe,zebra).
    /// Required unless --all-classes.
    #[arg(long, value_delimiter = ',', conflicts_with = "all_classes")]
    pub classes: Vec<String>,
    /// Use every class of the bank as a candidate.
    #[arg(long)]
    pub all_classes: bool,
    /// Label values: query (1..K in --classes order) or bank (each class's
    /// stable id, the same in every run of the bank); labels.json says which.
    #[arg(long, value_enum, default_value = "query")]
    pub label_ids: LabelIdsArg,
    /// Also write per-class masks: png (NAME.masks/CLASS.png, 0/255) and/or
    /// rle (COCO RLE in NAME.json); comma-separated or repeated.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "png|rle")]
    pub masks: Vec<MaskFormat>,
    /// The bank: a name under <home>/banks, or a path [default: default].
    #[arg(long, value_name = "NAME|PATH")]
    pub bank: Option<String>,
    /// Output folder.
    #[arg(long, default_value = "ovdiff-out", value_name = "DIR")]
    pub out: PathBuf,
    /// The matcher.
    #[command(flatten)]
    pub engine: EngineArg,
    /// Encoder bundle(s) to use [default: the installed bundles the bank's classes were built with].
    #[arg(long = "encoder", value_name = "BUNDLE")]
    pub encoders: Vec<String>,
    /// Also write NAME.explain.png and print, per class, the support images whose prototypes won its pixels.
    #[arg(long)]
    pub explain: bool,
    /// The CLIP pre-filter.
    #[command(flatten)]
    pub prefilter: PrefilterArgs,
    /// Segment only shard I of N (from 0): the images whose path relative
    /// to the folder named (a file or glob match: its path as named) hashes
    /// to I, so that N workers split a collection without overlap, and new
    /// images never move the others. File names are chosen over all inputs,
    /// as one run would.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Skip an image whose outputs are all there: its NAME.json (written
    /// last) names the same input and classes, and every file this run
    /// would write for it exists. A re-run resumes.
    #[arg(long)]
    pub skip_existing: bool,
    /// Runtime options.
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Also write OUT/report.html: one page with the run's facts, every
    /// image's overlay, classes and fractions (and explanation with
    /// --explain), and the inputs that failed; images are linked relative
    /// to the page (keep the folder together).
    #[arg(long)]
    pub report: bool,
    /// Like --report, with every image inlined in the page (base64): one
    /// file that opens anywhere, but much larger.
    #[arg(long)]
    pub report_inline: bool,
}

#[derive(Debug, Serialize)]
struct Failure {
    image: PathBuf,
    error: String,
}

/// An input that failed: an error line, or under `--json` a JSON object
/// `{"image", "error"}`, on stderr.
fn report_failure(ctx: &Context, image: &Path, error: &str) {
    if ctx.json {
        eprintln!("{}", serde_json::json!({ "image": image, "error": error }));
    } else {
        eprintln!("ovdiff-bank: {}: {error}", image.display());
    }
}

/// The query of `classes` (`None`: all) with `--engine` and `--prefilter`.
pub(super) fn query_of(
    classes: Option<Vec<String>>,
    engine: &EngineArg,
    pre: &PrefilterArgs,
    explain: bool,
) -> Query {
    Query {
        classes: match classes {
            Some(v) => ClassChoice::Named(v),
            None => ClassChoice::All,
        },
        engine: engine.engine.policy(),
        prefilter: pre.choice(),
        explain,
        windows: engine.preset.layout(),
        label_ids: LabelIds::Query,
    }
}

/// The options of a segmenter for this command line.
pub(super) fn segmenter_options(ctx: &Context, encoders: &[String]) -> SegmenterOptions {
    SegmenterOptions {
        home: ctx.home.clone(),
        runtime: ctx.runtime,
        encoders: encoders.iter().map(|e| ctx.home.bundle_path(e)).collect(),
        cache_dir: ctx.home.cache_dir(),
    }
}

/// Say on stderr where each encoder's IVF lists came from, and when the
/// pre-filter's CLIP export is a slow one.
pub(super) fn print_plan(plan: &PlanReport) {
    for e in &plan.encoders {
        if let Some(st) = &e.ivf {
            eprintln!(
                "info: IVF lists for {}: {} rows in {} lists, {}",
                e.name,
                st.rows,
                st.lists,
                if st.from_file {
                    format!("from the bank file in {:.2} s", st.build_s)
                } else if st.loaded {
                    format!("loaded from the cache in {:.1} s", st.build_s)
                } else {
                    format!("built in {:.1} s and cached", st.build_s)
                }
            );
        }
    }
    if let Some(clip) = plan.prefilter.as_ref().filter(|c| c.ties_batches) {
        eprintln!(
            "note: the CLIP export {} gives text and image one batch dimension \
             (an older optimum export), so every prompt also costs an image pass; re-export \
             it with a current optimum to make the pre-filter much faster",
            clip.root.display()
        );
    }
}

/// Inputs expanded: the image paths, and the named files that do not exist.
pub struct Inputs {
    /// Image paths, in order, without repeats.
    pub images: Vec<PathBuf>,
    /// Each image's shard key: its path relative to the folder named, or
    /// (a file, a glob match) its path as named ([`path_key`]).
    pub keys: Vec<String>,
    /// Named files that do not exist (reported and skipped).
    pub missing: Vec<PathBuf>,
}

/// Expand files, folders and globs into image paths, in order, without
/// repeats. A named file that does not exist is set aside in `missing`; a
/// glob or folder that matches nothing is an error, and so are inputs that
/// are all missing... only when nothing else was named.
pub fn expand_inputs(inputs: &[String]) -> anyhow::Result<Inputs> {
    let mut out = Vec::new();
    let mut keys = Vec::new();
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for arg in inputs {
        let p = Path::new(arg);
        let root = p.is_dir().then_some(p);
        let found: Vec<PathBuf> = if p.is_dir() {
            support_set::list_images(p)?
        } else if p.exists() {
            vec![p.to_path_buf()]
        } else if arg.contains(['*', '?', '[']) {
            let mut v: Vec<PathBuf> = glob::glob(arg)
                .with_context(|| format!("bad glob pattern `{arg}`"))?
                .flatten()
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            if v.is_empty() {
                bail!("no files match `{arg}`");
            }
            v
        } else {
            missing.push(p.to_path_buf());
            continue;
        };
        for f in found {
            if seen.insert(f.clone()) {
                let rel = root.and_then(|r| f.strip_prefix(r).ok()).unwrap_or(&f);
                keys.push(path_key(rel));
                out.push(f);
            }
        }
    }
    if out.is_empty() && missing.is_empty() {
        bail!("no PNG or JPEG images among the inputs");
    }
    Ok(Inputs {
        images: out,
        keys,
        missing,
    })
}

/// Run `segment`.
pub fn run(ctx: &Context, args: &SegmentArgs) -> anyhow::Result<ExitCode> {
    if args.classes.is_empty() && !args.all_classes {
        bail!(
            "no candidate classes: name them with --classes a,b,c (see `ovdiff-bank list`), \
             or use every class of the bank with --all-classes"
        );
    }
    let Inputs {
        images: all,
        keys,
        mut missing,
    } = expand_inputs(&args.inputs)?;
    let bank_path = super::existing_bank_path(ctx, args.bank.as_deref())?;
    // Outputs never go inside a bank folder (the default `ovdiff-out` run in one, too).
    ovdiff_store::bank::check_output_dir(&args.out)?;
    // Every input's file names, chosen before anything is written: none
    // overwrites another's.
    // Over all inputs, so that a shard names its files as one run would.
    let stems = ovdiff_segment::outputs::output_stems(&all, args.explain);
    let shard = args.shard.unwrap_or_else(Shard::whole);
    let (mut inputs, mut stems): (Vec<PathBuf>, Vec<String>) = all
        .iter()
        .cloned()
        .zip(stems)
        .zip(&keys)
        .filter(|(_, k)| shard.owns(k))
        .map(|(pair, _)| pair)
        .unzip();
    missing.retain(|p| shard.owns_path(p));
    let names = (!args.all_classes).then(|| {
        args.classes
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<String>>()
    });
    let query = query_of(names, &args.engine, &args.prefilter, args.explain)
        .with_label_ids(args.label_ids.ids());
    let started = Instant::now();
    let segmenter = Segmenter::open(&bank_path, segmenter_options(ctx, &args.encoders))?;
    let plan = segmenter.prepare(&query)?;
    print_plan(&plan);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    // What every label value means, for the whole run.
    let label_map = segmenter.label_map(&query)?;
    label_map.write_files(&args.out, query.label_ids)?;
    let write = WriteOptions {
        mask_pngs: args.masks.contains(&MaskFormat::Png),
        rle: args.masks.contains(&MaskFormat::Rle),
        ..WriteOptions::default()
    };
    let in_shard = inputs.len() + missing.len();
    let mut skipped = 0usize;
    if args.skip_existing {
        let before = inputs.len();
        (inputs, stems) = inputs
            .into_iter()
            .zip(stems)
            .filter(|(image, stem)| {
                let expected = Expected {
                    image,
                    label_map: &label_map,
                    explain: args.explain,
                    write: &write,
                };
                !outputs_complete(&args.out, stem, &expected)
            })
            .unzip();
        skipped = before - inputs.len();
    }
    let mut failures = Vec::new();
    for p in missing {
        let error = "the file does not exist; skipped".to_string();
        report_failure(ctx, &p, &error);
        failures.push(Failure { image: p, error });
    }
    let missing_count = failures.len();

    let pb = if ctx.json || inputs.len() == 1 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(inputs.len() as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("segment [{bar:30}] {pos}/{len} images, ETA {eta} {msg}")
            .expect("invariant: template is valid")
            .progress_chars("=> "),
    );
    let mut segmented = 0usize;
    let want_report = args.report || args.report_inline;
    let mut rows: Vec<SegmentRow> = Vec::new();
    // Decode the next image on a second thread while this one segments.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        type Decoded = (usize, Result<RgbImage, ovdiff_core::Error>, Duration);
        let (tx, rx) = mpsc::sync_channel::<Decoded>(2);
        let paths = &inputs;
        scope.spawn(move || {
            for (i, p) in paths.iter().enumerate() {
                let t = Instant::now();
                let img = preprocess::load_rgb(p);
                if tx.send((i, img, t.elapsed())).is_err() {
                    break;
                }
            }
        });
        for (i, img, decode) in rx {
            let path = &inputs[i];
            let result = img.and_then(|image| {
                let input = ImageInput::Decoded {
                    image,
                    path: path.clone(),
                    decode,
                };
                segmenter
                    .segment(input, &query)?
                    .write(&args.out, &stems[i], &write)
            });
            match result {
                Ok(report) => {
                    if want_report {
                        rows.push(SegmentRow::from(&report));
                    }
                    if ctx.json {
                        // One JSON object per image, as JSON lines, while it works.
                        outln!("{}", serde_json::to_string(&report)?);
                    } else {
                        pb.suspend(|| print_summary(&report, args.explain));
                    }
                    segmented += 1;
                }
                Err(e) => {
                    let error = format!("{:#}", anyhow::Error::from(e));
                    pb.suspend(|| report_failure(ctx, path, &error));
                    failures.push(Failure {
                        image: path.clone(),
                        error,
                    });
                }
            }
            pb.inc(1);
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    if want_report {
        let seconds = started.elapsed().as_secs_f64();
        let info = RunInfo::for_query(
            "ovdiff-bank segment",
            &bank_path,
            &query,
            &plan,
            env!("CARGO_PKG_VERSION"),
        )
        .fact(
            "timings",
            format!(
                "{} segmented in {seconds:.1} s ({:.0} ms per image, {:.0} ms median)",
                super::count(rows.len(), "image", "images"),
                1e3 * seconds / rows.len().max(1) as f64,
                median(rows.iter().map(|r| r.total_ms))
            ),
        );
        let page = SegmentPage {
            info,
            rows,
            failed: failures
                .iter()
                .map(|f| report::segment::Failed {
                    image: f.image.display().to_string(),
                    error: f.error.clone(),
                })
                .collect(),
        };
        let images = if args.report_inline {
            report::Images::Inline
        } else {
            report::Images::Linked
        };
        let path = page.write(&args.out, images)?;
        if !ctx.json {
            eprintln!("info: report: {}", path.display());
        }
    }
    let total = inputs.len() + missing_count;
    if args.shard.is_some() || args.skip_existing {
        let summary = RunSummary {
            images: all.len(),
            shard: args.shard.map(|s| s.to_string()),
            in_shard,
            segmented,
            skipped,
            failed: failures.len(),
        };
        summary.print(ctx)?;
    }
    if !failures.is_empty() && !ctx.json {
        eprintln!(
            "ovdiff-bank: {} of {} {} failed ({} segmented)",
            failures.len(),
            total,
            plural(total, "input", "inputs"),
            segmented
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What a run with `--shard` or `--skip-existing` did, printed last (under
/// `--json` as one line `{"summary": {…}}`).
#[derive(Debug, Serialize)]
struct RunSummary {
    /// Images among the inputs, every shard's.
    images: usize,
    /// `I/N`, with `--shard`.
    shard: Option<String>,
    /// Inputs of this shard (missing files included).
    in_shard: usize,
    segmented: usize,
    /// Images whose outputs were complete (`--skip-existing`).
    skipped: usize,
    failed: usize,
}

impl RunSummary {
    fn print(&self, ctx: &Context) -> anyhow::Result<()> {
        if ctx.json {
            outln!("{}", serde_json::json!({ "summary": self }));
            return Ok(());
        }
        let of = match &self.shard {
            Some(s) => format!("shard {s}: {} of {}", self.in_shard, self.images),
            None => format!("{}", self.in_shard),
        };
        outln!(
            "{of} {}: {} segmented, {} skipped (outputs complete), {} failed",
            plural(self.images, "image", "images"),
            self.segmented,
            self.skipped,
            self.failed
        );
        Ok(())
    }
}

/// The median of some values (0 for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_summary(r: &ImageReport, explain: bool) {
    let found: Vec<String> = r
        .classes
        .iter()
        .map(|c| format!("{} {:.1}%", c.name, c.fraction * 100.0))
        .collect();
    println!(
        "{}: {} → {} ({:.0} ms)",
        r.image.display(),
        if found.is_empty() {
            "background only".to_string()
        } else {
            found.join(", ")
        },
        r.overlay.display(),
        r.timings_ms.get("total").copied().unwrap_or(0.0)
    );
    if let Some(p) = &r.prefilter {
        let ranked: Vec<String> = p
            .stage1
            .iter()
            .map(|c| format!("{} {:.3}", c.class, c.score))
            .collect();
        println!(
            "  pre-filter kept {} (\"{}\", cosine {:.3}; top-{}: {})",
            p.kept.join(", "),
            p.prompt,
            p.score,
            p.stage1.len(),
            ranked.join(", ")
        );
    }
    if explain {
        print!("{}", explain_table(r));
    }
}

/// `--explain` in text: per class found, the support images whose
/// prototypes won its pixels and the kinds of those prototypes, each with
/// its share of the class's pixels.
fn explain_table(r: &ImageReport) -> String {
    let pct = |n: u64, of: u64| format!("{:.0}%", 100.0 * n as f64 / of.max(1) as f64);
    let mut rows: Vec<[String; 5]> = Vec::new();
    for c in &r.classes {
        let mut first = true;
        for s in &c.support {
            let mut kinds: Vec<(String, u64)> = Vec::new();
            for p in &s.prototypes {
                match kinds.iter_mut().find(|k| k.0 == p.kind) {
                    Some(k) => k.1 += p.pixels,
                    None => kinds.push((p.kind.clone(), p.pixels)),
                }
            }
            let kinds: Vec<String> = kinds
                .iter()
                .map(|(k, n)| format!("{k} {}", pct(*n, c.pixels)))
                .collect();
            rows.push([
                if first { c.name.clone() } else { String::new() },
                if first {
                    format!("{:.1}%", c.fraction * 100.0)
                } else {
                    String::new()
                },
                s.name.clone(),
                pct(s.pixels, c.pixels),
                kinds.join(", "),
            ]);
            first = false;
        }
        if first {
            rows.push([
                c.name.clone(),
                format!("{:.1}%", c.fraction * 100.0),
                "-".into(),
                String::new(),
                String::new(),
            ]);
        }
    }
    let head = [
        "class",
        "image",
        "support image",
        "of class",
        "prototype kinds (of class)",
    ];
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 5]| {
        let mut l = String::from("  ");
        for i in 0..4 {
            l.push_str(&format!("{:<w$}  ", cells[i], w = widths[i]));
        }
        l.push_str(cells[4]);
        format!("{}\n", l.trim_end())
    };
    let mut out = match &r.explain {
        Some(p) => format!("  explained in {}:\n", p.display()),
        None => "  explanation:\n".to_string(),
    };
    out.push_str(&line(head));
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    if rows.is_empty() {
        out.push_str("  (no class won a pixel)\n");
    }
    out
}
