//! `ovdiff-bank migrate`: bring a bank, or a `.ovbank` file, up to the format this build writes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use super::{print_json, BankArg, Context};
use ovdiff_store::bank::Bank;
use ovdiff_store::ovbank::{self, OnConflict, OvBankFile, OVBANK_FORMAT_VERSION};

/// `migrate [FILE.ovbank [-o OUT]] [--bank B]`
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// A `.ovbank` file to rewrite in the current format. Without it, the
    /// bank named by --bank is migrated in place.
    pub file: Option<PathBuf>,
    /// Where to write the migrated file [default: over FILE, atomically].
    #[arg(short = 'o', long, value_name = "OUT", requires = "file")]
    pub output: Option<PathBuf>,
    /// The bank to migrate.
    #[command(flatten)]
    pub bank: BankArg,
}

#[derive(serde::Serialize)]
struct Report {
    target: PathBuf,
    kind: &'static str,
    from: u32,
    to: u32,
    steps: Vec<ovdiff_store::bank::MigrationStep>,
    output: Option<PathBuf>,
}

/// `migrate`
pub fn run(ctx: &Context, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let report = match &args.file {
        Some(file) => migrate_file(file, args.output.as_ref())?,
        None => migrate_bank(ctx, args.bank.bank.as_deref())?,
    };
    if ctx.json {
        print_json(&report)?;
    } else if report.from == report.to {
        println!(
            "{} {} is already at format version {}; nothing to do",
            report.kind,
            report.target.display(),
            report.to
        );
    } else {
        println!(
            "migrated {} {} from format version {} to {}",
            report.kind,
            report.target.display(),
            report.from,
            report.to
        );
        for s in &report.steps {
            println!(
                "  {} -> {}: {} ({} records)",
                s.from, s.to, s.summary, s.records
            );
        }
        if let Some(out) = &report.output {
            println!("  written to {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn migrate_bank(ctx: &Context, arg: Option<&str>) -> anyhow::Result<Report> {
    let path = ctx.home.bank_path(arg);
    if !path.exists() {
        bail!("bank {} does not exist; nothing to migrate", path.display());
    }
    let mut bank = Bank::open(&path)?;
    let from = bank.format_version();
    let steps = bank.migrate()?;
    Ok(Report {
        target: path,
        kind: "bank",
        from,
        to: bank.format_version(),
        steps,
        output: None,
    })
}

fn migrate_file(file: &std::path::Path, output: Option<&PathBuf>) -> anyhow::Result<Report> {
    let opened = OvBankFile::open(file)?;
    opened
        .verify()
        .with_context(|| format!("{} does not verify; nothing was written", file.display()))?;
    let from = opened.header().format_version;
    let out = output.cloned().unwrap_or_else(|| file.to_path_buf());
    if from > OVBANK_FORMAT_VERSION {
        bail!(
            "{} has format version {from}, newer than the {OVBANK_FORMAT_VERSION} this ovdiff-bank writes; upgrade ovdiff-bank",
            file.display()
        );
    }
    if from == OVBANK_FORMAT_VERSION && output.is_none() {
        return Ok(Report {
            target: file.to_path_buf(),
            kind: "file",
            from,
            to: from,
            steps: Vec::new(),
            output: None,
        });
    }
    // A rewrite through the writer is the whole migration: it reads every
    // older version and writes the current one, atomically.
    let stats = ovbank::merge(&[&opened], &out, OnConflict::Skip)?;
    drop(opened);
    let steps = (from..OVBANK_FORMAT_VERSION)
        .map(|v| ovdiff_store::bank::MigrationStep {
            from: v,
            to: v + 1,
            records: stats.file.classes as u64,
            summary: file_step_summary(v),
        })
        .collect();
    Ok(Report {
        target: file.to_path_buf(),
        kind: "file",
        from,
        to: OVBANK_FORMAT_VERSION,
        steps,
        output: Some(out),
    })
}

/// What the `.ovbank` step from format `v` to `v + 1` does.
fn file_step_summary(v: u32) -> &'static str {
    match v {
        1 => "adds the optional stats section (no statistics for classes exported from format 1)",
        _ => "rewritten in the next format",
    }
}
