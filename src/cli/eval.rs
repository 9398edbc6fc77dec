//! `ovdiff-bank eval`: segment a VOC-layout dataset and report mIoU, per-class IoU, pixel accuracy and the confusion matrix.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::segment::{print_plan, query_of, segmenter_options, EngineArg, PrefilterArgs};
use super::{print_json, Context};
use ovdiff_models::features::preprocess;
use ovdiff_segment::eval::{Confusion, IGNORE};
use ovdiff_segment::render::{read_label_png, write_rgb_png};
use ovdiff_segment::report::eval::{image_miou, truth_overlay, EvalPage, WorstImage, WorstSet};
use ovdiff_segment::report::{self, RunInfo};
use ovdiff_segment::Segmenter;

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Dataset root in VOC layout: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt.
    pub dataset: PathBuf,
    /// Class names, one per line: line k is dataset label k (line 0 is usually
    /// `background`); or `ID NAME` lines to evaluate a subset (ground-truth
    /// labels not listed are ignored, like 255).
    #[arg(long, value_name = "FILE")]
    pub classes_file: PathBuf,
    /// The bank: a name under <home>/banks, or a path [default: default].
    #[arg(long, value_name = "NAME|PATH")]
    pub bank: Option<String>,
    /// Which ImageSets/Segmentation list to use.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Evaluate at most N images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Write the confusion matrix (ground truth × prediction) as CSV here.
    #[arg(long, value_name = "FILE")]
    pub confusion: Option<PathBuf>,
    /// Evaluate the classes the bank has and ignore the pixels of those it
    /// lacks (without it, classes missing from the bank are an error that
    /// names them all).
    #[arg(long)]
    pub skip_missing: bool,
    /// Keep the predicted label PNGs here (ID.png, labels in classes-file
    /// order from 1, VOC palette) with the run's labels.json and labels.txt.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also write OUT/report.html (needs --out): mIoU, pixel accuracy, an
    /// IoU bar chart, the confusion heatmap and the 20 worst images as
    /// overlay | ground truth | image (their pictures under OUT/report-files/).
    #[arg(long, requires = "out")]
    pub report: bool,
    /// Like --report, with the pictures inlined in the page (base64).
    #[arg(long, requires = "out")]
    pub report_inline: bool,
    /// The matcher, as for `segment`.
    #[command(flatten)]
    pub engine: EngineArg,
    /// The CLIP pre-filter, as for `segment`.
    #[command(flatten)]
    pub prefilter: PrefilterArgs,
    /// Runtime options.
    #[command(flatten)]
    pub model: super::ModelArgs,
}

/// One class of the evaluation: its dataset label and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalClass {
    /// Label in the ground-truth PNGs.
    pub id: u8,
    /// Class name (as in the bank).
    pub name: String,
}

/// Parse a classes file (see [`EvalArgs::classes_file`]).
pub fn parse_classes(text: &str) -> anyhow::Result<Vec<EvalClass>> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let with_ids = lines.iter().all(|l| {
        l.split_once(char::is_whitespace)
            .is_some_and(|(a, _)| a.parse::<u8>().is_ok())
    });
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let (id, name) = if with_ids {
            let (a, b) = l.split_once(char::is_whitespace).expect("checked above");
            (
                a.parse::<u8>().expect("checked above"),
                b.trim().to_string(),
            )
        } else {
            let id = u8::try_from(i)
                .ok()
                .filter(|&i| i != IGNORE)
                .context("more than 255 classes")?;
            (id, l.to_string())
        };
        if id == IGNORE {
            bail!("label 255 is reserved for ignored pixels");
        }
        if out.iter().any(|c: &EvalClass| c.id == id || c.name == name) {
            bail!("class `{name}` (label {id}) is listed twice");
        }
        out.push(EvalClass { id, name });
    }
    if !out.iter().any(|c| c.id == 0) {
        bail!("the classes file has no label 0 (background)");
    }
    if out.len() < 2 {
        bail!("the classes file names no class besides background");
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct ClassIou {
    label: u8,
    name: String,
    iou: Option<f64>,
}

#[derive(Debug, Serialize)]
struct EvalReport {
    dataset: PathBuf,
    split: String,
    images: usize,
    failed: Vec<(String, String)>,
    miou: Option<f64>,
    pixel_accuracy: Option<f64>,
    per_class: Vec<ClassIou>,
    seconds: f64,
}

/// Run `eval`.
pub fn run(ctx: &Context, args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.classes_file)
        .with_context(|| format!("reading the classes file {}", args.classes_file.display()))?;
    let classes = parse_classes(&text)
        .with_context(|| format!("in the classes file {}", args.classes_file.display()))?;
    let bank_path = super::existing_bank_path(ctx, args.bank.as_deref())?;
    let segmenter = Segmenter::open(&bank_path, segmenter_options(ctx, &[]))?;
    // Every class the bank lacks, named at once.
    let mut absent = Vec::new();
    for c in classes.iter().filter(|c| c.id != 0) {
        if segmenter.store().class(&c.name)?.is_none() {
            absent.push(c.name.clone());
        }
    }
    if !absent.is_empty() {
        let list = absent
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if !args.skip_missing {
            bail!(
                "the bank {} lacks {} of the classes file {}: {list}; add them \
                 (`ovdiff-bank add CLASS --images DIR --bank …`), or pass --skip-missing to \
                 evaluate the others (their pixels are then ignored)",
                bank_path.display(),
                super::count(absent.len(), "class", "classes"),
                args.classes_file.display()
            );
        }
        eprintln!(
            "note: skipping {} the bank lacks ({list}); their pixels are ignored",
            super::count(absent.len(), "class", "classes")
        );
    }
    // metric index 0 = background; 1..K = the candidate classes in file order
    let candidates: Vec<&EvalClass> = classes
        .iter()
        .filter(|c| c.id != 0 && !absent.contains(&c.name))
        .collect();
    if candidates.is_empty() {
        bail!(
            "the bank has none of the classes of {}",
            args.classes_file.display()
        );
    }
    let mut gt_map = [IGNORE; 256];
    gt_map[0] = 0;
    for (k, c) in candidates.iter().enumerate() {
        gt_map[c.id as usize] = (k + 1) as u8;
    }
    let names: Vec<String> = std::iter::once("background".to_string())
        .chain(candidates.iter().map(|c| c.name.clone()))
        .collect();

    let ids = read_split(&args.dataset, &args.split)?;
    let ids: Vec<String> = ids
        .into_iter()
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    if ids.is_empty() {
        bail!(
            "split `{}` of {} lists no images",
            args.split,
            args.dataset.display()
        );
    }
    let wanted: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
    let query = query_of(Some(wanted), &args.engine, &args.prefilter, false);
    let plan = segmenter.prepare(&query)?;
    print_plan(&plan);
    let want_report = args.report || args.report_inline;
    let mut worst: WorstSet<Worst> = WorstSet::new(report::eval::WORST_IMAGES);
    if let Some(dir) = &args.out {
        ovdiff_store::bank::check_output_dir(dir)?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating output folder {}", dir.display()))?;
        segmenter
            .label_map(&query)?
            .write_files(dir, query.label_ids)?;
    }

    let pb = if ctx.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ids.len() as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} images, ETA {eta}, {msg}")
            .expect("invariant: template is valid")
            .progress_chars("=> "),
    );
    let mut confusion = Confusion::new(names.len());
    let mut failed = Vec::new();
    for id in &ids {
        let result = (|| -> anyhow::Result<()> {
            let img_path = args.dataset.join("JPEGImages").join(format!("{id}.jpg"));
            let gt_path = args
                .dataset
                .join("SegmentationClass")
                .join(format!("{id}.png"));
            if !img_path.is_file() {
                bail!("the image {} does not exist", img_path.display());
            }
            if !gt_path.is_file() {
                bail!("the ground truth {} does not exist", gt_path.display());
            }
            let img = preprocess::load_rgb(&img_path)?;
            let (gw, gh, gt) = read_label_png(&gt_path)?;
            if (gw, gh) != img.dimensions() {
                bail!(
                    "{} is {gw}×{gh} but its image is {}×{}",
                    gt_path.display(),
                    img.width(),
                    img.height()
                );
            }
            let seg = segmenter.segment(img, &query)?;
            if let Some(dir) = &args.out {
                seg.write_labels(&dir.join(format!("{id}.png")))?;
            }
            let pred = seg.labels_u8()?;
            let gt: Vec<u8> = gt.iter().map(|&g| gt_map[g as usize]).collect();
            confusion
                .add(&gt, &pred)
                .map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
            if want_report {
                let miou = image_miou(names.len(), &gt, &pred).map_err(|e| anyhow::anyhow!(e))?;
                if worst.wants(miou) {
                    let entry = Worst {
                        id: id.clone(),
                        miou,
                        overlay: seg.overlay(0.5),
                        truth: truth_overlay(&seg.image, &gt, &names[1..]),
                        image: img_path.clone(),
                    };
                    worst.offer(miou, entry);
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            pb.suspend(|| eprintln!("ovdiff-bank: {id}: {e:#}"));
            failed.push((id.clone(), format!("{e:#}")));
        }
        pb.inc(1);
        if let Some(m) = confusion.miou() {
            pb.set_message(format!("running mIoU {:.1}", m * 100.0));
        }
    }
    pb.finish_and_clear();
    if let Some(p) = &args.confusion {
        std::fs::write(p, confusion.to_csv(&names))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let report = EvalReport {
        dataset: args.dataset.clone(),
        split: args.split.clone(),
        images: ids.len() - failed.len(),
        failed,
        miou: confusion.miou(),
        pixel_accuracy: confusion.pixel_accuracy(),
        per_class: confusion
            .iou()
            .into_iter()
            .enumerate()
            .map(|(k, iou)| ClassIou {
                label: if k == 0 { 0 } else { candidates[k - 1].id },
                name: names[k].clone(),
                iou,
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if want_report {
        let dir = args
            .out
            .as_deref()
            .expect("invariant: --report requires --out");
        let path = write_report(
            args, dir, &bank_path, &query, &plan, &report, &confusion, worst,
        )?;
        if !ctx.json {
            eprintln!("info: report: {}", path.display());
        }
    }
    if ctx.json {
        print_json(&report)?;
    } else {
        let pct = |v: Option<f64>| {
            v.map(|v| format!("{:.1}", v * 100.0))
                .unwrap_or_else(|| "n/a".into())
        };
        println!("{:<20} {:>6}", "class", "IoU");
        for c in &report.per_class {
            println!("{:<20} {:>6}", c.name, pct(c.iou));
        }
        println!(
            "mIoU {} over {} with ground truth or predictions; pixel accuracy {}; {} in {:.1} s",
            pct(report.miou),
            super::count(
                report.per_class.iter().filter(|c| c.iou.is_some()).count(),
                "class",
                "classes"
            ),
            pct(report.pixel_accuracy),
            super::count(report.images, "image", "images"),
            report.seconds
        );
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One of the worst images so far, with its pictures.
struct Worst {
    id: String,
    miou: Option<f64>,
    overlay: image::RgbImage,
    truth: image::RgbImage,
    image: PathBuf,
}

/// Write OUT/report.html and the worst images' pictures under
/// OUT/report-files/.
#[allow(clippy::too_many_arguments)]
fn write_report(
    args: &EvalArgs,
    dir: &Path,
    bank: &Path,
    query: &ovdiff_segment::Query,
    plan: &ovdiff_segment::segmenter::PlanReport,
    r: &EvalReport,
    confusion: &Confusion,
    worst: WorstSet<Worst>,
) -> anyhow::Result<PathBuf> {
    let files = dir.join("report-files");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let mut shown = Vec::new();
    for (i, w) in worst.into_sorted().into_iter().enumerate() {
        // Numbered, so that any id makes a safe file name.
        let stem = format!("{i:02}");
        let overlay = files.join(format!("{stem}.overlay.png"));
        let truth = files.join(format!("{stem}.truth.png"));
        let ext = w
            .image
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_else(|| "jpg".into());
        let image = files.join(format!("{stem}.image.{ext}"));
        write_rgb_png(&overlay, &w.overlay)?;
        write_rgb_png(&truth, &w.truth)?;
        std::fs::copy(&w.image, &image)
            .with_context(|| format!("copying {} into the report", w.image.display()))?;
        shown.push(WorstImage {
            id: w.id,
            miou: w.miou,
            overlay,
            truth,
            image,
        });
    }
    let info = RunInfo::for_query(
        "ovdiff-bank eval",
        bank,
        query,
        plan,
        env!("CARGO_PKG_VERSION"),
    );
    let mut facts = vec![
        ("dataset".to_string(), r.dataset.display().to_string()),
        ("split".to_string(), r.split.clone()),
        (
            "classes file".to_string(),
            args.classes_file.display().to_string(),
        ),
    ];
    if let Some(n) = args.limit {
        facts.push(("limit".into(), n.to_string()));
    }
    if args.skip_missing {
        facts.push(("skip missing".into(), "yes".into()));
    }
    facts.extend(info.facts);
    facts.push((
        "timings".into(),
        format!(
            "{} in {:.1} s ({:.0} ms per image)",
            super::count(r.images, "image", "images"),
            r.seconds,
            1e3 * r.seconds / r.images.max(1) as f64
        ),
    ));
    let page = EvalPage {
        info: RunInfo {
            title: info.title,
            facts,
        },
        images: r.images,
        miou: r.miou,
        pixel_accuracy: r.pixel_accuracy,
        classes: r
            .per_class
            .iter()
            .map(|c| report::eval::EvalClass {
                label: c.label,
                name: c.name.clone(),
                iou: c.iou,
            })
            .collect(),
        confusion: confusion.clone(),
        worst: shown,
        failed: r
            .failed
            .iter()
            .map(|(image, error)| report::segment::Failed {
                image: image.clone(),
                error: error.clone(),
            })
            .collect(),
    };
    let images = if args.report_inline {
        report::Images::Inline
    } else {
        report::Images::Linked
    };
    Ok(page.write(dir, images)?)
}

fn read_split(root: &Path, split: &str) -> anyhow::Result<Vec<String>> {
    let p = root
        .join("ImageSets/Segmentation")
        .join(format!("{split}.txt"));
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading {} (is {} a VOC-layout dataset?)",
            p.display(),
            root.display()
        )
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_files_by_line_or_by_id() {
        let c = parse_classes("background\naeroplane\nbicycle\n").unwrap();
        assert_eq!(
            c[2],
            EvalClass {
                id: 2,
                name: "bicycle".into()
            }
        );
        let c = parse_classes("# VOC subset\n0 background\n15 person\n5 bottle\n").unwrap();
        assert_eq!(
            c[1],
            EvalClass {
                id: 15,
                name: "person".into()
            }
        );
        assert!(
            parse_classes("cat\ndog").is_ok(),
            "line 0 is background whatever its name"
        );
        assert!(parse_classes("5 cat\n6 dog").is_err(), "no background");
        assert!(parse_classes("background\ncat\ncat").is_err());
    }
}
