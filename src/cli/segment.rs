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

use super::{print_json, Context};
use ovdiff_learn::support_set;
use ovdiff_models::features::preprocess;
use ovdiff_segment::prefilter;
use ovdiff_segment::query::{self, Matching};
use ovdiff_segment::segmenter::{ClassChoice, ImageInput, PlanReport, PrefilterChoice};
use ovdiff_segment::{ImageReport, Query, Segmenter, SegmenterOptions, WindowLayout, WriteOptions};

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

/// `--engine`, shared by `segment` and `eval`.
#[derive(Debug, clap::Args)]
pub struct EngineArg {
    /// Matcher: auto (exact below 50,000 prototype rows, IVF above), exact,
    /// ivf or hnsw (see docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineChoice,
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
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "all_classes",
        required_unless_present = "all_classes"
    )]
    pub classes: Vec<String>,
    /// Use every class of the bank as a candidate.
    #[arg(long)]
    pub all_classes: bool,
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
}

#[derive(Debug, Serialize)]
struct Failure {
    image: PathBuf,
    error: String,
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
        windows: WindowLayout::default(),
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
                "ovdiff-bank: IVF lists for {}: {} rows in {} lists, {}",
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
            "ovdiff-bank: note: the CLIP export {} gives text and image one batch dimension \
             (an older optimum export), so every prompt also costs an image pass; re-export \
             it with a current optimum to make the pre-filter much faster",
            clip.root.display()
        );
    }
}

/// Expand files, folders and globs into image paths, in order, without repeats.
pub fn expand_inputs(inputs: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for arg in inputs {
        let p = Path::new(arg);
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
            bail!("input {arg} does not exist");
        };
        for f in found {
            if seen.insert(f.clone()) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        bail!("no PNG or JPEG images among the inputs");
    }
    Ok(out)
}

/// Run `segment`.
pub fn run(ctx: &Context, args: &SegmentArgs) -> anyhow::Result<ExitCode> {
    let inputs = expand_inputs(&args.inputs)?;
    let bank_path = super::bank_path(ctx, args.bank.as_deref())?;
    if !bank_path.exists() {
        bail!(
            "bank {} does not exist; build classes with `ovdiff-bank add CLASS --images DIR`",
            bank_path.display()
        );
    }
    // Outputs never go inside a bank folder (the default `ovdiff-out` run in one, too).
    ovdiff_store::bank::check_output_dir(&args.out)?;
    // Every input's file names, chosen before anything is written: none
    // overwrites another's.
    let stems = ovdiff_segment::outputs::output_stems(&inputs, args.explain);
    let names = (!args.all_classes).then(|| {
        args.classes
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<String>>()
    });
    let query = query_of(names, &args.engine, &args.prefilter, args.explain);
    let segmenter = Segmenter::open(&bank_path, segmenter_options(ctx, &args.encoders))?;
    print_plan(&segmenter.prepare(&query)?);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;

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
    let write = WriteOptions::default();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
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
                    if !ctx.json {
                        pb.suspend(|| print_summary(&report, args.explain));
                    }
                    reports.push(report);
                }
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    pb.suspend(|| eprintln!("ovdiff-bank: {}: {e:#}", path.display()));
                    failures.push(Failure {
                        image: path.clone(),
                        error: format!("{e:#}"),
                    });
                }
            }
            pb.inc(1);
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    if ctx.json {
        print_json(&serde_json::json!({ "images": reports, "failed": failures }))?;
    } else if !failures.is_empty() {
        eprintln!(
            "ovdiff-bank: {} of {} images failed",
            failures.len(),
            inputs.len()
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
        // The explanation as one JSON line, as the sheet shows it.
        let classes: Vec<_> = r
            .classes
            .iter()
            .map(|c| serde_json::json!({ "class": c.name, "fraction": c.fraction, "support": c.support }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "image": r.image,
                "explain_sheet": r.explain,
                "classes": classes,
                "prefilter": r.prefilter.as_ref().map(|p| serde_json::json!({
                    "kept": p.kept, "stage1": p.stage1, "prompt": p.prompt, "score": p.score
                })),
            })
        );
    }
}
