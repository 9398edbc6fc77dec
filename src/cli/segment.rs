//! `ovdiff-bank segment`: label every pixel of images with the nearest class, write label maps, overlays and explanations.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{print_json, Context};
use ovdiff_core::prototype::{Level, Side};
use ovdiff_learn::support_set;
use ovdiff_models::clip::ClipBundle;
use ovdiff_models::features::preprocess;
use ovdiff_segment::engine::{SegmentOptions, Segmentation};
use ovdiff_segment::prefilter::{self, Prefilter, PrefilterStats, Ranked};
use ovdiff_segment::query::{self, Matching, QueryMember};
use ovdiff_segment::render::{self, ExplainMatch, ExplainOptions, ExplainRow, PatchMask};
use ovdiff_store::bank::ClassRecord;
use ovdiff_store::class_store::{open_store, ClassStore};

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
    /// Matcher: auto (exact below 50,000 prototype rows, IVF above), exact,
    /// ivf or hnsw (see docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineChoice,
    /// Encoder bundle(s) to use [default: the installed bundles the bank's classes were built with].
    #[arg(long = "encoder", value_name = "BUNDLE")]
    pub encoders: Vec<String>,
    /// Also write NAME.explain.png and print, per class, the support images whose prototypes won its pixels.
    #[arg(long)]
    pub explain: bool,
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

#[derive(Debug, Serialize)]
struct ClassFound {
    label: u16,
    name: String,
    pixels: u64,
    fraction: f64,
    mean_score: f32,
    support: Vec<SupportMatch>,
}

#[derive(Debug, Serialize)]
struct SupportMatch {
    image: u32,
    name: String,
    pixels: u64,
    prototypes: Vec<ProtoMatch>,
}

#[derive(Debug, Serialize, Clone)]
struct ProtoMatch {
    kind: String,
    id: u32,
    pixels: u64,
}

#[derive(Debug, Serialize)]
struct ImageReport {
    image: PathBuf,
    width: u32,
    height: u32,
    labels: PathBuf,
    /// How `labels` stores them: `palette8` (VOC palette, up to 254
    /// classes) or `grey16` (16-bit greyscale, larger queries).
    labels_format: &'static str,
    overlay: PathBuf,
    report: PathBuf,
    explain: Option<PathBuf>,
    classes: Vec<ClassFound>,
    background_fraction: f64,
    timings_ms: BTreeMap<&'static str, f64>,
    windows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefilter: Option<PrefilterReport>,
}

/// What the CLIP pre-filter kept for one image.
#[derive(Debug, Serialize)]
struct PrefilterReport {
    bundle: PathBuf,
    fingerprint: String,
    topk: usize,
    /// The classes segmented, in stage-1 rank order.
    kept: Vec<String>,
    /// Stage 1: the top-k classes with their cosines, best first.
    stage1: Vec<Ranked>,
    /// Stage 2's winning prompt and its cosine.
    prompt: String,
    score: f32,
    prompts: usize,
    /// Per encoder, the matcher the kept classes' rows picked (`--engine`,
    /// with auto's rule applied to the narrowed rows).
    engine: Vec<&'static str>,
    stats: PrefilterStats,
}

/// The pre-filter of a run and how the classes it keeps are matched.
struct PrefilterRun {
    prefilter: Prefilter,
    fingerprint: String,
    topk: usize,
    engine: query::EnginePolicy,
    cache_dir: PathBuf,
    threads: usize,
}

impl PrefilterRun {
    /// Load the checked bundle's graphs and fingerprint it.
    fn load(
        ctx: &Context,
        args: &SegmentArgs,
        runtime: &ovdiff_models::runtime::Runtime,
        bundle: ClipBundle,
        topk: usize,
    ) -> anyhow::Result<PrefilterRun> {
        let fingerprint = bundle.fingerprint()?.to_string();
        let prefilter =
            Prefilter::load(runtime, bundle).context("loading the --prefilter CLIP graphs")?;
        if prefilter.ties_batches() {
            eprintln!(
                "ovdiff-bank: note: the CLIP export {} gives text and image one batch dimension \
                 (an older optimum export), so every prompt also costs an image pass; re-export \
                 it with a current optimum to make the pre-filter much faster",
                prefilter.bundle().root().display()
            );
        }
        Ok(PrefilterRun {
            prefilter,
            fingerprint,
            topk,
            engine: args.engine.policy(),
            cache_dir: ctx.home.cache_dir(),
            threads: ctx.runtime.threads,
        })
    }

    /// Select the classes of `img`, then segment it with only those.
    fn segment(
        &mut self,
        members: &mut [QueryMember],
        img: &RgbImage,
        names: &[String],
        opts: &SegmentOptions,
    ) -> anyhow::Result<(Segmentation, query::Restricted, PrefilterReport)> {
        let (sel, stats) = self
            .prefilter
            .select(img, names, self.topk)
            .context("running the CLIP pre-filter")?;
        let restricted = query::restrict(
            members,
            &sel.kept,
            self.engine,
            &self.cache_dir,
            self.threads,
        )?;
        let seg = query::segment_restricted(members, &restricted, img, opts)?;
        let report = PrefilterReport {
            bundle: self.prefilter.bundle().root().to_path_buf(),
            fingerprint: self.fingerprint.clone(),
            topk: self.topk,
            kept: sel.classes,
            stage1: sel.stage1,
            prompt: sel.prompt,
            score: sel.score,
            prompts: sel.prompts,
            engine: restricted
                .matching
                .iter()
                .map(|m| match m {
                    Matching::Exact => "exact",
                    Matching::Hnsw => "hnsw",
                    Matching::Ivf => "ivf",
                })
                .collect(),
            stats,
        };
        Ok((seg, restricted, report))
    }
}

#[derive(Debug, Serialize)]
struct Failure {
    image: PathBuf,
    error: String,
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

/// Pixels a support image won for a class: in all, and per (kind, prototype id).
type ImageWins = (u64, BTreeMap<(String, u32), u64>);

fn kind(level: Level, side: Side) -> String {
    let l = match level {
        Level::Class => "class",
        Level::Instance => "instance",
        Level::Part => "part",
    };
    let s = match side {
        Side::Foreground => "fg",
        Side::Background => "bg",
    };
    format!("{l} {s}")
}

/// A unique output stem per input (`photo`, `photo-2`, …).
fn stems(paths: &[PathBuf]) -> Vec<String> {
    let mut used = HashSet::new();
    paths
        .iter()
        .map(|p| {
            let base = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let mut name = base.clone();
            let mut i = 2;
            while !used.insert(name.clone()) {
                name = format!("{base}-{i}");
                i += 1;
            }
            name
        })
        .collect()
}

/// Run `segment`.
pub fn run(ctx: &Context, args: &SegmentArgs) -> anyhow::Result<ExitCode> {
    let inputs = expand_inputs(&args.inputs)?;
    let bank_path = ctx.home.bank_path(args.bank.as_deref());
    if !bank_path.exists() {
        bail!(
            "bank {} does not exist; build classes with `ovdiff-bank add CLASS --images DIR`",
            bank_path.display()
        );
    }
    let store = open_store(&bank_path)?;
    let bank = store.as_ref();
    let names = if args.all_classes {
        None
    } else {
        let v: Vec<String> = args
            .classes
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if v.is_empty() {
            bail!("the vocabulary is empty; name classes with --classes a,b,c");
        }
        Some(v)
    };
    let classes = query::resolve_classes(bank, names.as_deref())?;
    let topk = args.prefilter_topk.unwrap_or(prefilter::DEFAULT_TOPK);
    if !(1..=prefilter::MAX_TOPK).contains(&topk) {
        bail!(
            "--prefilter-topk {topk} is out of range: give 1 to {} (the second stage compares \
             2^K - 1 prompts per image)",
            prefilter::MAX_TOPK
        );
    }
    // The CLIP folder is checked before any model is loaded.
    let clip = match &args.prefilter {
        Some(dir) => Some(
            ClipBundle::open(dir)
                .with_context(|| format!("checking the --prefilter bundle {}", dir.display()))?,
        ),
        None => None,
    };
    let runtime = ctx.runtime()?;
    let explicit: Vec<PathBuf> = args
        .encoders
        .iter()
        .map(|e| ctx.home.bundle_path(e))
        .collect();
    let mut members = query::plan(&runtime, bank, &classes, &explicit, ctx.runtime.threads)?;
    for m in &mut members {
        let pick = args.engine.policy().pick(m.vocabulary.num_rows());
        let (hnsw, ivf) = (pick == Matching::Hnsw, pick == Matching::Ivf);
        // With a pre-filter, each image is matched against the classes it keeps.
        if hnsw && clip.is_none() {
            m.use_hnsw(&ctx.home.cache_dir(), ctx.runtime.threads)?;
        }
        if ivf && clip.is_none() {
            let st = m.use_ivf(bank, &ctx.home.cache_dir(), ctx.runtime.threads)?;
            eprintln!(
                "ovdiff-bank: IVF lists for {}: {} rows in {} lists, {}",
                m.encoder.bundle().name(),
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
    let mut pre = match clip {
        Some(bundle) => Some(PrefilterRun::load(ctx, args, &runtime, bundle, topk)?),
        None => None,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;

    let opts = SegmentOptions {
        threads: ctx.runtime.threads,
        ..SegmentOptions::default()
    };
    let stems = stems(&inputs);
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
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    // Decode the next image on a second thread while this one segments.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<RgbImage, ovdiff_core::Error>, f64)>(2);
        let paths = &inputs;
        scope.spawn(move || {
            for (i, p) in paths.iter().enumerate() {
                let t = Instant::now();
                let img = preprocess::load_rgb(p);
                if tx.send((i, img, t.elapsed().as_secs_f64() * 1e3)).is_err() {
                    break;
                }
            }
        });
        for (i, img, decode_ms) in rx {
            let path = &inputs[i];
            let result = img.map_err(anyhow::Error::from).and_then(|img| {
                segment_one(
                    bank,
                    &classes.records,
                    &mut members,
                    pre.as_mut(),
                    &img,
                    path,
                    &stems[i],
                    args,
                    &opts,
                    decode_ms,
                )
            });
            match result {
                Ok(report) => {
                    if !ctx.json {
                        pb.suspend(|| print_summary(&report, args.explain));
                    }
                    reports.push(report);
                }
                Err(e) => {
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

#[allow(clippy::too_many_arguments)]
fn segment_one(
    bank: &dyn ClassStore,
    records: &[ClassRecord],
    members: &mut [QueryMember],
    pre: Option<&mut PrefilterRun>,
    img: &RgbImage,
    path: &Path,
    stem: &str,
    args: &SegmentArgs,
    opts: &SegmentOptions,
    decode_ms: f64,
) -> anyhow::Result<ImageReport> {
    let started = Instant::now();
    let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
    let (seg, restricted, prefilter) = match pre {
        None => (query::segment_with(members, img, opts)?, None, None),
        Some(run) => {
            let (seg, restricted, report) = run.segment(members, img, &names, opts)?;
            (seg, Some(restricted), Some(report))
        }
    };
    let t_write = Instant::now();
    let labels = &seg.labels.labels;
    let depth = render::LabelDepth::for_classes(names.len());
    let (w, h) = img.dimensions();
    let counts = seg.labels.pixel_counts(names.len() + 1);
    let total = (w as u64 * h as u64).max(1);

    // Mean winning score per label.
    let mut score_sum = vec![0f64; names.len() + 1];
    for (l, s) in seg.labels.labels.iter().zip(&seg.labels.score) {
        score_sum[*l as usize] += f64::from(*s);
    }
    // Pixels won per (label, support image) and per prototype.
    let mut per_image: BTreeMap<(u16, u32), ImageWins> = BTreeMap::new();
    for ((label, source, row), pixels) in seg.labels.proto_wins() {
        if label == 0 {
            continue;
        }
        let m = &members[source as usize];
        let r = match &restricted {
            Some(narrow) => narrow.proto_ref(source as usize, row),
            None => m.vocabulary.proto_ref(row),
        };
        let Some(r) = r else {
            continue;
        };
        let Some(p) = m.classes[r.class as usize - 1].metas.get(r.id as usize) else {
            continue;
        };
        let e = per_image
            .entry((label, p.image))
            .or_insert_with(|| (0, BTreeMap::new()));
        e.0 += pixels;
        *e.1.entry((kind(p.level, p.side), r.id)).or_insert(0) += pixels;
    }
    let mut classes = Vec::new();
    for (k, rec) in records.iter().enumerate() {
        let label = (k + 1) as u16;
        let pixels = counts[label as usize];
        if pixels == 0 {
            continue;
        }
        let mut support: Vec<SupportMatch> = per_image
            .iter()
            .filter(|((l, _), _)| *l == label)
            .map(|((_, image), (px, protos))| {
                let mut prototypes: Vec<ProtoMatch> = protos
                    .iter()
                    .map(|((kind, id), n)| ProtoMatch {
                        kind: kind.clone(),
                        id: *id,
                        pixels: *n,
                    })
                    .collect();
                prototypes.sort_by_key(|p| std::cmp::Reverse(p.pixels));
                prototypes.truncate(5);
                SupportMatch {
                    image: *image,
                    name: rec
                        .support
                        .get(*image as usize)
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    pixels: *px,
                    prototypes,
                }
            })
            .collect();
        support.sort_by_key(|s| std::cmp::Reverse(s.pixels));
        support.truncate(3);
        classes.push(ClassFound {
            label,
            name: rec.name.clone(),
            pixels,
            fraction: pixels as f64 / total as f64,
            mean_score: (score_sum[label as usize] / pixels as f64) as f32,
            support,
        });
    }

    let labels_path = args.out.join(format!("{stem}.png"));
    let overlay_path = args.out.join(format!("{stem}.overlay.png"));
    let report_path = args.out.join(format!("{stem}.json"));
    render::write_label_png(&labels_path, w, h, labels, depth)?;
    let over = render::overlay(img, labels, &names, 0.5);
    render::write_rgb_png(&overlay_path, &over)?;
    let explain = if args.explain {
        let p = args.out.join(format!("{stem}.explain.png"));
        let rows = explain_rows(bank, records, &classes)?;
        let sheet = render::explain_sheet(
            img,
            labels,
            &rows,
            &ExplainOptions {
                title: Some(path.display().to_string()),
                ..ExplainOptions::default()
            },
        );
        render::write_rgb_png(&p, &sheet)?;
        Some(p)
    } else {
        None
    };
    let write_ms = t_write.elapsed().as_secs_f64() * 1e3;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let t = seg.timings;
    let mut timings_ms = BTreeMap::from([
        ("decode", decode_ms),
        ("resize", ms(t.resize)),
        ("encoder", ms(t.encode)),
        ("matching", ms(t.matching)),
        ("upsampling", ms(t.upsample)),
        ("writing", write_ms),
        ("total", started.elapsed().as_secs_f64() * 1e3 + decode_ms),
    ]);
    if let Some(p) = &prefilter {
        timings_ms.insert("prefilter", p.stats.ms);
    }
    let report = ImageReport {
        image: path.to_path_buf(),
        width: w,
        height: h,
        labels: labels_path,
        labels_format: depth.name(),
        overlay: overlay_path,
        report: report_path.clone(),
        explain,
        background_fraction: counts[0] as f64 / total as f64,
        classes,
        timings_ms,
        windows: t.windows,
        prefilter,
    };
    let json = serde_json::to_vec_pretty(&report)?;
    ovdiff_core::atomic::write_atomic(&report_path, &json)?;
    Ok(report)
}

fn explain_rows(
    bank: &dyn ClassStore,
    records: &[ClassRecord],
    found: &[ClassFound],
) -> anyhow::Result<Vec<ExplainRow>> {
    let mut rows = Vec::new();
    for c in found {
        let rec = &records[c.label as usize - 1];
        let fp = rec
            .encoders
            .first()
            .map(|e| e.fingerprint.clone())
            .unwrap_or_default();
        let protos = bank.prototypes(rec, &fp)?;
        let mut matches = Vec::new();
        for s in &c.support {
            let Some(thumb) = bank.thumbnail(rec, s.image)? else {
                continue;
            };
            let best = s.prototypes.first();
            let region = best
                .and_then(|b| protos.get(b.id as usize))
                .map(|p| PatchMask {
                    grid_h: p.provenance.grid_h,
                    grid_w: p.provenance.grid_w,
                    cells: p.provenance.region.clone(),
                });
            let caption = match best {
                Some(b) => format!(
                    "{} #{}: {:.1}%",
                    b.kind,
                    b.id,
                    100.0 * s.pixels as f64 / c.pixels.max(1) as f64
                ),
                None => s.name.clone(),
            };
            matches.push(ExplainMatch {
                image: thumb,
                region,
                caption,
            });
        }
        rows.push(ExplainRow {
            class: c.name.clone(),
            label: c.label,
            matches,
        });
    }
    Ok(rows)
}
