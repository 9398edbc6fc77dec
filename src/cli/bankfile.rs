//! `ovdiff-bank export|import|merge|inspect|verify`: `.ovbank` files, the unit of exchange between teams.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::{count, print_json, Context};
use ovdiff_learn::{bundles, catalog, exchange, fetch};
use ovdiff_store::bank::Bank;
use ovdiff_store::ovbank::{self, OnConflict};

/// What to do with a class whose name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConflictArg {
    /// Keep the existing class.
    Skip,
    /// Replace it with the incoming one.
    Replace,
    /// Keep both; the incoming class becomes `name (2)`.
    Rename,
}

impl From<ConflictArg> for OnConflict {
    fn from(c: ConflictArg) -> OnConflict {
        match c {
            ConflictArg::Skip => OnConflict::Skip,
            ConflictArg::Replace => OnConflict::Replace,
            ConflictArg::Rename => OnConflict::Rename,
        }
    }
}

/// Arguments of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Classes to export [default: all].
    pub classes: Vec<String>,
    /// The file to write (written to a temporary file, synced, then renamed).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The bank: a name under <home>/banks, or a path [default: default].
    #[arg(long, value_name = "NAME|PATH")]
    pub bank: Option<String>,
    /// Also write prebuilt IVF lists per encoder (an `ann` section), so that
    /// `segment --bank FILE --all-classes` with `--engine ivf` (or `auto`
    /// on a large file) starts without clustering (seconds at 1,000 classes).
    #[arg(long)]
    pub ann: bool,
}

/// Arguments of `import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The `.ovbank` file, or an http:// URL of one
    /// (`http://HOST:PORT/v1/banks/NAME.ovbank` from `ovdiff-bank serve`):
    /// downloaded to a temporary file (resumed after a broken transfer),
    /// checked against the server's ETag, then imported as a local file.
    #[arg(value_name = "FILE|URL")]
    pub file: PathBuf,
    /// With a URL: a file whose first line is the server's bearer token
    /// (the token in the server's --token-file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The bank to import into [default: default].
    #[arg(long, value_name = "NAME|PATH")]
    pub into: Option<String>,
    /// When a class of that name exists: skip, replace or rename.
    #[arg(long, value_enum, default_value = "skip")]
    pub on_conflict: ConflictArg,
    /// Index the bank once written (see `add --index`).
    #[arg(long, value_enum, default_value = "auto")]
    pub index: super::bank::IndexChoice,
    /// Threads for the index.
    #[command(flatten)]
    pub threads: super::ThreadsArg,
}

/// Arguments of `merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Input files, in priority order.
    #[arg(required = true, num_args = 2..)]
    pub inputs: Vec<PathBuf>,
    /// The merged file.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// When two inputs have a class of the same name: skip (keep the first), replace (keep the last) or rename.
    #[arg(long, value_enum, default_value = "skip")]
    pub on_conflict: ConflictArg,
}

/// `export`
pub fn export(ctx: &Context, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let path = super::existing_bank_path(ctx, args.bank.as_deref())?;
    let bank = catalog::open_existing_read(&path, "")?;
    let t = Instant::now();
    let names = (!args.classes.is_empty()).then_some(args.classes.as_slice());
    let build = |records: &[ovdiff_store::bank::ClassRecord],
                 e: &ovdiff_store::bank::EncoderInfo|
     -> std::result::Result<(String, Vec<u8>), String> {
        ovdiff_segment::query::ivf_file_blob(&bank, records, &e.fingerprint)
            .map_err(|err| err.to_string())
    };
    let ann: Option<&ovbank::AnnBuilder<'_>> = if args.ann { Some(&build) } else { None };
    ovdiff_store::bank::check_output_file(&args.output)?;
    let stats = ovbank::export_with(&bank, names, &args.output, ann)?;
    if ctx.json {
        print_json(&serde_json::json!({
            "file": args.output, "classes": stats.classes, "encoders": stats.encoders,
            "prototypes": stats.prototypes, "thumbnails": stats.thumbnails, "bytes": stats.bytes,
            "seconds": t.elapsed().as_secs_f64(),
        }))?;
    } else {
        println!(
            "exported {} ({}, {}, {}) to {} ({} bytes) in {:.2} s",
            count(stats.classes, "class", "classes"),
            count(stats.prototypes as usize, "prototype", "prototypes"),
            count(stats.thumbnails as usize, "thumbnail", "thumbnails"),
            count(stats.encoders, "encoder", "encoders"),
            args.output.display(),
            stats.bytes,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `import FILE|URL`
pub fn import(ctx: &Context, args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let url = args.file.to_str().filter(|s| fetch::is_url(s));
    if url.is_none() && args.token_file.is_some() {
        anyhow::bail!("--token-file is for a URL (import http://HOST:PORT/v1/banks/NAME.ovbank); {} is a file", args.file.display());
    }
    // A download lives (in a private folder under <home>/cache/downloads)
    // until the import is done, and is removed with it on every path.
    let download = url
        .map(|u| download(ctx, u, args.token_file.as_deref()))
        .transpose()?;
    let path = download.as_ref().map_or(args.file.as_path(), |d| d.path());
    let file = exchange::open_verified(path, &bundles::installed_encoders(&ctx.home))?;
    let into = super::bank_path(ctx, args.into.as_deref())?;
    let bank = Bank::open(&into).map_err(|e| super::explain_open_error(&into, e))?;
    let stats = ovbank::import(&file, &bank, args.on_conflict.into())?;
    let wrote = exchange::wrote_classes(&stats);
    if wrote {
        super::bank::index_after_write(ctx, &bank, args.index);
    }
    drop(file);
    if ctx.json {
        let mut out = serde_json::json!({
            "added": stats.added, "replaced": stats.replaced, "renamed": stats.renamed,
            "skipped": stats.skipped, "prototypes": stats.prototypes,
            "encoders_registered": stats.encoders_registered,
        });
        if let Some(d) = &download {
            out["download"] = serde_json::json!({
                "url": d.url, "bytes": d.bytes, "sha256": d.sha256,
                "etag_checked": d.etag_checked, "resumes": d.resumes, "restarts": d.restarts,
            });
        }
        print_json(&out)?;
    } else {
        if let Some(d) = &download {
            println!(
                "downloaded {} ({} bytes, sha256 {}{})",
                d.url,
                d.bytes,
                d.sha256,
                if d.etag_checked {
                    ", matches the server's ETag"
                } else {
                    ""
                }
            );
        }
        println!(
            "imported into {}: {} added, {} replaced, {} renamed, {} skipped ({} prototypes)",
            bank.path().display(),
            stats.added.len(),
            stats.replaced.len(),
            stats.renamed.len(),
            stats.skipped.len(),
            stats.prototypes
        );
        for (from, to) in &stats.renamed {
            println!("  renamed `{from}` to `{to}`");
        }
        for s in &stats.skipped {
            println!("  skipped `{s}` (exists; --on-conflict replace|rename to change that)");
        }
    }
    Ok(if wrote {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Downloads `url` for `import` (see [`fetch::download`]).
fn download(
    ctx: &Context,
    url: &str,
    token_file: Option<&Path>,
) -> anyhow::Result<fetch::Download> {
    let mut options = fetch::FetchOptions::new(ctx.home.cache_dir().join("downloads"));
    options.token = token_file.map(super::serve::read_token).transpose()?;
    let mut bar = super::progress::DownloadBar::new(ctx.json);
    let result = fetch::download(url, &options, &mut |e| bar.event(e));
    bar.finish();
    result.map_err(|e| match &e {
        fetch::FetchError::Unauthorized {
            token_sent: false, ..
        } => anyhow::Error::new(e).context(
            "the server asks for a bearer token: pass --token-file FILE, a file whose first line \
             is the token of the server's --token-file",
        ),
        fetch::FetchError::Unauthorized {
            token_sent: true, ..
        } => anyhow::Error::new(e).context(format!(
            "the server refused the token in --token-file {}: it must hold the token of the \
                 server's --token-file on its first line",
            token_file.map_or(String::new(), |p| p.display().to_string())
        )),
        _ => anyhow::Error::new(e),
    })
}

/// `merge`
pub fn merge(ctx: &Context, args: &MergeArgs) -> anyhow::Result<ExitCode> {
    ovdiff_store::bank::check_output_file(&args.output)?;
    let stats = exchange::merge_files(
        &args.inputs,
        &args.output,
        args.on_conflict.into(),
        &bundles::installed_encoders(&ctx.home),
    )?;
    if ctx.json {
        print_json(&serde_json::json!({
            "file": args.output, "classes": stats.file.classes, "bytes": stats.file.bytes,
            "skipped": stats.skipped, "replaced": stats.replaced, "renamed": stats.renamed,
        }))?;
    } else {
        println!(
            "merged {} files into {}: {} classes, {} prototypes, {} bytes ({} skipped, {} replaced, {} renamed)",
            args.inputs.len(),
            args.output.display(),
            stats.file.classes,
            stats.file.prototypes,
            stats.file.bytes,
            stats.skipped.len(),
            stats.replaced.len(),
            stats.renamed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `inspect FILE`: headers and records only; prototypes are not read.
pub fn inspect(ctx: &Context, file: &Path) -> anyhow::Result<ExitCode> {
    let report = exchange::inspect(file)?;
    if ctx.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: .ovbank format v{} (readable by v{}+), {} bytes, checksum {}",
        super::printable(&report.file.display().to_string()),
        report.format_version,
        report.oldest_reader_version,
        report.bytes,
        report.file_checksum
    );
    println!("sections:");
    for s in &report.sections {
        println!(
            "  {:<12} offset {:>10} length {:>10} xxh3 {}",
            s.name, s.offset, s.length, s.checksum
        );
    }
    println!("encoders:");
    for e in &report.encoders {
        println!(
            "  {} {} (dim {}, {})",
            super::printable(&e.name),
            &e.fingerprint[..12.min(e.fingerprint.len())],
            e.dim,
            super::printable(&e.dtype)
        );
    }
    if !report.ann.is_empty() {
        println!("prebuilt nearest-neighbour lists:");
        for a in &report.ann {
            println!(
                "  {} for {}: {} bytes, written by ovdiff-bank {}{}",
                a.algorithm,
                &a.encoder_fingerprint[..12.min(a.encoder_fingerprint.len())],
                a.bytes,
                a.written_by,
                if a.usable_here {
                    ""
                } else {
                    " (another build: rebuilt when queried)"
                }
            );
        }
    }
    println!("classes ({}):", report.classes.len());
    for c in &report.classes {
        println!(
            "  {:<20} {:>4} {:<6} {:>6} {}{}",
            super::printable(&c.name),
            c.images,
            super::plural(c.images as usize, "image", "images"),
            c.prototypes,
            super::plural(c.prototypes as usize, "prototype", "prototypes"),
            if c.stuff { " (stuff)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify FILE`: every checksum; exit 0 when all match, 2 otherwise.
pub fn verify(ctx: &Context, file: &Path) -> anyhow::Result<ExitCode> {
    let report = exchange::verify(file, &bundles::installed_encoders(&ctx.home))?;
    if ctx.json {
        print_json(&serde_json::json!({
            "file": file, "ok": true, "bytes": report.file_len, "sections": report.sections.len(),
            "classes": report.classes, "prototypes": report.prototypes, "thumbnails": report.thumbnails,
        }))?;
    } else {
        println!(
            "{}: ok ({}, {}, {}, {}; every checksum matches)",
            file.display(),
            count(report.sections.len(), "section", "sections"),
            count(report.classes as usize, "class", "classes"),
            count(report.prototypes as usize, "prototype", "prototypes"),
            count(report.thumbnails as usize, "thumbnail", "thumbnails")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify --bank B`: read back every class of a bank folder and check it
/// (see [`ovdiff_store::bank::verify_bank`]); exit 0 when sound, 2 otherwise. Each
/// class is printed with a content digest that leaves out timestamps and
/// build ids, so two builds of the same inputs compare equal. Encoder
/// records that no class uses are warnings (exit 0); with `repair` they are
/// removed first.
pub fn verify_bank(ctx: &Context, bank: Option<&str>, repair: bool) -> anyhow::Result<ExitCode> {
    let path = super::existing_bank_path(ctx, bank)?;
    let hint = "; pass an existing bank with --bank NAME|PATH";
    // --repair writes; a plain verify only reads (read-only banks too).
    let opened = if repair {
        catalog::open_existing(&path, hint)?
    } else {
        catalog::open_existing_read(&path, hint)?
    };
    let removed = if repair {
        opened.drop_unused_encoders()?
    } else {
        Vec::new()
    };
    let report = ovdiff_store::bank::verify_bank(&opened)?;
    let problems = report.all_problems();
    if ctx.json {
        let removed: Vec<_> = removed
            .iter()
            .map(
                |e| serde_json::json!({"fingerprint": e.fingerprint, "name": e.name, "dim": e.dim}),
            )
            .collect();
        print_json(&serde_json::json!({
            "bank": path, "ok": report.ok(), "report": report, "problems": problems,
            "warnings": report.warnings, "unused_encoders_removed": removed,
        }))?;
    } else {
        let protos: u64 = report.classes.iter().map(|c| c.prototypes).sum();
        let thumbs: u64 = report.classes.iter().map(|c| u64::from(c.thumbnails)).sum();
        let cleaned = if opened.is_read_only() {
            "read-only here, so leftovers of interrupted writes were not looked for".to_string()
        } else {
            format!(
                "{} of interrupted writes removed on open",
                count(
                    report.leftovers_cleaned as usize,
                    "leftover entry",
                    "leftover entries"
                )
            )
        };
        println!(
            "bank {}: {} (format v{}, {}, {}, {}, {}; {cleaned})",
            path.display(),
            if report.ok() { "ok" } else { "PROBLEMS FOUND" },
            report.format_version,
            count(report.encoders, "encoder", "encoders"),
            count(report.classes.len(), "class", "classes"),
            count(protos as usize, "prototype", "prototypes"),
            count(thumbs as usize, "thumbnail", "thumbnails"),
        );
        for c in &report.classes {
            println!(
                "  {}  {:>6} {:<10} {:>4} {:<10}  {}",
                c.digest,
                c.prototypes,
                super::plural(c.prototypes as usize, "prototype", "prototypes"),
                c.thumbnails,
                super::plural(c.thumbnails as usize, "thumbnail", "thumbnails"),
                c.name
            );
        }
        for e in &removed {
            println!(
                "  removed encoder record {} ({}, dim {}): no class used it",
                super::printable(&e.name),
                e.fingerprint,
                e.dim
            );
        }
        // Whether this run changed the bank.
        let changed = report.leftovers_cleaned > 0 || !removed.is_empty();
        println!(
            "{}",
            if opened.is_read_only() || !changed {
                "nothing in the bank was changed".to_string()
            } else {
                format!(
                    "changed: {} removed, {} removed",
                    count(
                        report.leftovers_cleaned as usize,
                        "leftover entry",
                        "leftover entries"
                    ),
                    count(
                        removed.len(),
                        "unused encoder record",
                        "unused encoder records"
                    )
                )
            }
        );
        for w in &report.warnings {
            eprintln!("ovdiff-bank: warning: {}", super::printable(w));
        }
        for p in &problems {
            eprintln!("ovdiff-bank: {p}");
        }
    }
    if report.ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !ctx.json {
            eprintln!(
                "ovdiff-bank: bank {} has {}; rebuild the classes named above \
                 (`ovdiff-bank add CLASS --images DIR --replace`) or remove them",
                path.display(),
                count(problems.len(), "problem", "problems")
            );
        }
        Ok(ExitCode::from(2))
    }
}
