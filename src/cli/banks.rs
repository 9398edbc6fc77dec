//! `ovdiff-bank banks [create NAME | remove NAME]`: the banks under `<home>/banks`.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::bail;

use super::models::human_bytes;
use super::{count, outln, print_json, printable, Context};
use ovdiff_learn::banks;

/// `banks …`
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  ovdiff-bank banks                      # every bank: classes, encoders, size
  ovdiff-bank banks create team
  ovdiff-bank banks remove scratch --yes

See README.md (\"A short tour\").")]
pub struct BanksArgs {
    /// What to do [default: list the banks].
    #[command(subcommand)]
    pub action: Option<BanksAction>,
}

/// `banks create|remove`
#[derive(Debug, clap::Subcommand)]
pub enum BanksAction {
    /// Create an empty bank under <home>/banks.
    #[command(after_help = "Examples:
  ovdiff-bank banks create team
  ovdiff-bank add cat --images support/cat/ --bank team

See README.md (\"A short tour\").")]
    Create {
        /// The bank's name.
        name: String,
    },
    /// Remove a bank under <home>/banks and all its classes (asks first).
    #[command(after_help = "Examples:
  ovdiff-bank banks remove scratch          # asks for confirmation
  ovdiff-bank banks remove scratch --yes    # in scripts

See README.md (\"A short tour\").")]
    Remove {
        /// The bank's name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Run `banks`.
pub fn run(ctx: &Context, args: &BanksArgs) -> anyhow::Result<ExitCode> {
    match &args.action {
        None => list(ctx),
        Some(BanksAction::Create { name }) => {
            let path = banks::create_bank(&ctx.home, name)?;
            if ctx.json {
                print_json(&serde_json::json!({ "created": name, "path": path }))?;
            } else {
                outln!("created bank {} ({})", printable(name), path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(BanksAction::Remove { name, yes }) => {
            if !yes && !confirm(ctx, name)? {
                eprintln!("nothing removed");
                return Ok(ExitCode::from(1));
            }
            let path = banks::remove_bank(&ctx.home, name)?;
            if ctx.json {
                print_json(&serde_json::json!({ "removed": name, "path": path }))?;
            } else {
                outln!("removed bank {} ({})", printable(name), path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Ask on the terminal; without one, refuse and say to pass `--yes`.
fn confirm(ctx: &Context, name: &str) -> anyhow::Result<bool> {
    let path = ctx.home.banks_dir().join(name);
    if !std::io::stdin().is_terminal() {
        bail!(
            "removing bank {} needs confirmation: run it on a terminal, or pass --yes",
            path.display()
        );
    }
    let classes = banks::list_banks(&ctx.home)
        .into_iter()
        .find(|b| b.name == name)
        .map_or(0, |b| b.classes);
    eprint!(
        "remove bank {} and its {}? [y/N] ",
        path.display(),
        count(classes, "class", "classes")
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn list(ctx: &Context) -> anyhow::Result<ExitCode> {
    let rows = banks::list_banks(&ctx.home);
    if ctx.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!(
            "no banks under {}; `ovdiff-bank add CLASS --images DIR` builds the default one",
            ctx.home.banks_dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<20} {:>7} {:>10}  encoders", "bank", "classes", "size");
    for b in &rows {
        match &b.error {
            Some(e) => outln!(
                "{:<20} (cannot be read: {})",
                printable(&b.name),
                printable(e)
            ),
            None => outln!(
                "{:<20} {:>7} {:>10}  {}",
                printable(&b.name),
                b.classes,
                human_bytes(b.bytes),
                if b.encoders.is_empty() {
                    "-".to_string()
                } else {
                    b.encoders.join(", ")
                }
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
