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
use ovdiff_segment::render::read_label_png;
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
    print_plan(&segmenter.prepare(&query)?);
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
            "mIoU {} over {} classes with ground truth or predictions; pixel accuracy {}; {} images in {:.1} s",
            pct(report.miou),
            report.per_class.iter().filter(|c| c.iou.is_some()).count(),
            pct(report.pixel_accuracy),
            report.images,
            report.seconds
        );
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
