//! `ovdiff-bank migrate`: bring a bank, or a `.ovbank` file, up to the format this build writes.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{print_json, BankArg, Context};
use ovdiff_learn::migrate::{migrate_bank, migrate_file};

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

/// `migrate`
pub fn run(ctx: &Context, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let report = match &args.file {
        Some(file) => {
            if let Some(out) = &args.output {
                ovdiff_store::bank::check_output_file(out)?;
            }
            migrate_file(file, args.output.as_deref())?
        }
        None => migrate_bank(&super::bank_path(ctx, args.bank.bank.as_deref())?)?,
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
