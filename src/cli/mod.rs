//! The `ovdiff-bank` command line: argument parsing and one module per command.

mod add;
mod bank;
mod bankfile;
mod banks;
mod encode;
mod eval;
mod migrate;
mod models;
mod progress;
mod segment;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ovdiff_core::Home;
use ovdiff_models::runtime::{Provider, Runtime, RuntimeOptions, VerifyMode};

/// Zero-shot open-vocabulary segmentation from prototype banks (OVDiff).
#[derive(Debug, Parser)]
#[command(name = "ovdiff-bank", version, about, long_about = None)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Print machine-readable JSON instead of text (`segment`: one JSON line
    /// per image; errors: a JSON object on stderr).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
}

/// `--threads N`, for the commands that run ONNX Runtime or build IVF lists.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ThreadsArg {
    /// Threads: ONNX Runtime's intra-op threads, and those that build IVF
    /// lists [default: the machine's cores].
    #[arg(long, value_name = "N", help_heading = "Runtime options")]
    pub threads: Option<usize>,
}

/// `--threads` and `--provider`, for the commands that run a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ProviderArgs {
    /// Threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Execution provider: cpu, or cuda with a GPU build of ONNX Runtime.
    #[arg(
        long,
        default_value = "cpu",
        value_name = "cpu|cuda",
        help_heading = "Runtime options"
    )]
    pub provider: Provider,
}

/// The runtime options of a command that loads model bundles.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Threads and provider.
    #[command(flatten)]
    pub run: ProviderArgs,
    /// Skip sha256 checks of model bundle files.
    #[arg(long, help_heading = "Runtime options")]
    pub no_verify: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Learn a class from support images and store its prototypes in a bank.
    #[command(
        after_help = "Examples:\n  ovdiff-bank add cat --images support/cat/\n  ovdiff-bank add grass --images g/ --stuff --bank team --create\n  ovdiff-bank add giraffe --generator sd15-onnx/\n\nSee README.md (\"A short tour\") and docs/generators.md."
    )]
    Add(add::AddArgs),
    /// Segment images: label every pixel with the nearest candidate class.
    #[command(
        after_help = "Examples:\n  ovdiff-bank segment photo.jpg --classes person,cat,cup --out out/\n  ovdiff-bank segment photos/ --all-classes --label-ids bank --masks png,rle\n  ovdiff-bank segment photos/ 'more/*.jpg' --all-classes --explain --json\n\nSee README.md (\"A short tour\", the label PNG) and docs/prefilter.md."
    )]
    Segment(segment::SegmentArgs),
    /// Evaluate on a VOC-layout dataset: mIoU, per-class IoU, pixel accuracy.
    #[command(
        after_help = "Examples:\n  ovdiff-bank eval VOCdevkit/VOC2012 --classes-file voc.txt --bank voc21\n  ovdiff-bank eval <home>/samples/voc --classes-file <home>/samples/voc/classes.txt --skip-missing\n\nSee docs/eval.md."
    )]
    Eval(eval::EvalArgs),
    /// List the banks under <home>/banks; create or remove one.
    Banks(banks::BanksArgs),
    /// List the classes of a bank.
    #[command(
        after_help = "Examples:\n  ovdiff-bank list\n  ovdiff-bank list --bank team --json\n\nSee README.md (\"A short tour\")."
    )]
    List(BankArg),
    /// Describe one class: its record, prototypes and support images.
    #[command(
        after_help = "Examples:\n  ovdiff-bank show cat\n  ovdiff-bank show cat --bank team --json\n\nSee README.md (\"A short tour\")."
    )]
    Show {
        /// The class.
        class: String,
        /// The bank.
        #[command(flatten)]
        bank: BankArg,
    },
    /// Remove a class from a bank.
    #[command(
        after_help = "Examples:\n  ovdiff-bank remove kitten\n  ovdiff-bank remove kitten --bank team --index never\n\nSee README.md (\"A short tour\")."
    )]
    Remove {
        /// The class.
        class: String,
        /// The bank.
        #[command(flatten)]
        bank: BankArg,
        /// Index the bank once written (see `add --index`).
        #[arg(long, value_enum, default_value = "auto")]
        index: bank::IndexChoice,
        /// Threads for the index.
        #[command(flatten)]
        threads: ThreadsArg,
    },
    /// Rename a class.
    #[command(
        after_help = "Examples:\n  ovdiff-bank rename cat kitten\n  ovdiff-bank rename cat kitten --bank team\n\nSee README.md (\"A short tour\")."
    )]
    Rename {
        /// The current name.
        old: String,
        /// The new name.
        new: String,
        /// The bank.
        #[command(flatten)]
        bank: BankArg,
        /// Index the bank once written (see `add --index`).
        #[arg(long, value_enum, default_value = "auto")]
        index: bank::IndexChoice,
        /// Threads for the index.
        #[command(flatten)]
        threads: ThreadsArg,
    },
    /// Write classes of a bank to a shareable `.ovbank` file.
    #[command(
        after_help = "Examples:\n  ovdiff-bank export -o animals.ovbank\n  ovdiff-bank export -o pets.ovbank cat dog --bank team --ann\n\nSee docs/distributed.md."
    )]
    Export(bankfile::ExportArgs),
    /// Import a `.ovbank` file into a bank.
    #[command(
        after_help = "Examples:\n  ovdiff-bank import animals.ovbank --into team\n  ovdiff-bank import animals.ovbank --into team --on-conflict rename\n\nSee docs/distributed.md."
    )]
    Import(bankfile::ImportArgs),
    /// Merge `.ovbank` files into one.
    #[command(
        after_help = "Examples:\n  ovdiff-bank merge a.ovbank b.ovbank -o ab.ovbank\n  ovdiff-bank merge a.ovbank b.ovbank -o ab.ovbank --on-conflict replace\n\nSee docs/distributed.md."
    )]
    Merge(bankfile::MergeArgs),
    /// Bring a bank (or a `.ovbank` file) up to the current format, step by step.
    #[command(
        after_help = "Examples:\n  ovdiff-bank migrate\n  ovdiff-bank migrate --bank team\n  ovdiff-bank migrate old.ovbank -o new.ovbank\n\nSee migrations/ and README.md."
    )]
    Migrate(migrate::MigrateArgs),
    /// Describe a `.ovbank` file from its headers (fast; prototypes are not read).
    #[command(
        after_help = "Examples:\n  ovdiff-bank inspect animals.ovbank\n  ovdiff-bank inspect animals.ovbank --json\n\nSee docs/distributed.md."
    )]
    Inspect {
        /// The file.
        file: std::path::PathBuf,
    },
    /// Check every checksum of a `.ovbank` file, or with --bank read back
    /// and check every class of a bank folder (exit 0 or 2).
    #[command(
        after_help = "Examples:\n  ovdiff-bank verify animals.ovbank\n  ovdiff-bank verify --bank team\n  ovdiff-bank verify --bank team --repair\n\nSee docs/reliability.md."
    )]
    Verify {
        /// The `.ovbank` file.
        #[arg(required_unless_present = "bank", conflicts_with = "bank")]
        file: Option<std::path::PathBuf>,
        /// Check a bank folder instead: a name under <home>/banks, or a path.
        #[arg(long, value_name = "NAME|PATH")]
        bank: Option<String>,
        /// With --bank: first remove the encoder records that no class uses
        /// (leftovers that `verify --bank` warns about).
        #[arg(long, requires = "bank")]
        repair: bool,
    },
    /// List or check installed model bundles.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ovdiff-bank models list\n  ovdiff-bank models check dinov2-s14 --json\n\nSee README.md (\"Model bundles\")."
    )]
    Models(ModelsCommand),
    /// Encode one image and print its patch-grid statistics.
    #[command(
        after_help = "Examples:\n  ovdiff-bank encode photo.jpg\n  ovdiff-bank encode photo.jpg --encoder dinov2-s14 --json\n\nSee README.md (\"A short tour\")."
    )]
    Encode(encode::EncodeArgs),
    /// Serve segmentation and bank files over HTTP (see docs/serve.md).
    #[command(
        after_help = "Examples:\n  ovdiff-bank serve --bank team\n  curl --data-binary @photo.jpg 'http://127.0.0.1:8787/v1/segment?classes=person,cat'\n\nSee docs/serve.md."
    )]
    Serve(serve::ServeArgs),
}

impl Command {
    /// The runtime options this command takes: threads, provider, and the
    /// bundle checks (`None` where the command has no such option).
    fn runtime_args(
        &self,
    ) -> (
        Option<&ThreadsArg>,
        Option<&ProviderArgs>,
        Option<&ModelArgs>,
    ) {
        fn of(
            m: &ModelArgs,
        ) -> (
            Option<&ThreadsArg>,
            Option<&ProviderArgs>,
            Option<&ModelArgs>,
        ) {
            (Some(&m.run.threads), Some(&m.run), Some(m))
        }
        match self {
            Command::Add(a) => of(&a.model),
            Command::Segment(a) => of(&a.model),
            Command::Eval(a) => of(&a.model),
            Command::Encode(a) => of(&a.model),
            Command::Serve(a) => of(&a.model),
            Command::Models(ModelsCommand::Check { run, .. }) => {
                (Some(&run.threads), Some(run), None)
            }
            Command::Remove { threads, .. } | Command::Rename { threads, .. } => {
                (Some(threads), None, None)
            }
            Command::Import(a) => (Some(&a.threads), None, None),
            Command::Models(ModelsCommand::List)
            | Command::Banks(_)
            | Command::List(_)
            | Command::Show { .. }
            | Command::Export(_)
            | Command::Merge(_)
            | Command::Migrate(_)
            | Command::Inspect { .. }
            | Command::Verify { .. } => (None, None, None),
        }
    }
}

/// `--bank NAME|PATH`
#[derive(Debug, clap::Args)]
pub struct BankArg {
    /// The bank: a name under <home>/banks, or a path [default: default].
    #[arg(long, value_name = "NAME|PATH")]
    pub bank: Option<String>,
}

/// `ovdiff-bank models …`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the bundles under <home>/models.
    #[command(
        after_help = "Examples:\n  ovdiff-bank models list\n  ovdiff-bank models list --json\n\nSee README.md (\"Model bundles\")."
    )]
    List,
    /// Check bundles: manifest, file hashes, graph signature and a test forward pass.
    #[command(
        after_help = "Examples:\n  ovdiff-bank models check\n  ovdiff-bank models check dinov2-s14 --json\n\nSee README.md (\"Model bundles\")."
    )]
    Check {
        /// A bundle name or folder [default: every installed bundle].
        name: Option<String>,
        /// Threads and provider (hashes are always checked in full).
        #[command(flatten)]
        run: ProviderArgs,
    },
}

/// What every command gets: the home folder and runtime options.
#[derive(Debug, Clone)]
pub struct Context {
    /// `<home>`.
    pub home: Home,
    /// Session options.
    pub runtime: RuntimeOptions,
    /// `--json`.
    pub json: bool,
}

impl Context {
    fn new(g: &GlobalArgs, command: &Command) -> Context {
        let mut runtime = RuntimeOptions::default();
        let (threads, provider, verify) = command.runtime_args();
        if let Some(t) = threads.and_then(|t| t.threads) {
            runtime.threads = clamp_threads(t);
        }
        if let Some(p) = provider {
            runtime.provider = p.provider;
        }
        if verify.is_some_and(|m| m.no_verify) {
            runtime.verify = VerifyMode::Off;
        }
        Context {
            home: Home::from_env(),
            runtime,
            json: g.json,
        }
    }

    /// Load ONNX Runtime.
    pub fn runtime(&self) -> ovdiff_core::Result<Runtime> {
        Runtime::init(&self.home, self.runtime)
    }
}

/// Run a parsed command line. Ok(code) is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(&cli.global, &cli.command);
    match cli.command {
        Command::Models(ModelsCommand::List) => models::list(&ctx),
        Command::Models(ModelsCommand::Check { name, .. }) => models::check(&ctx, name.as_deref()),
        Command::Encode(args) => encode::run(&ctx, &args),
        Command::Add(args) => add::run(&ctx, &args),
        Command::Segment(args) => segment::run(&ctx, &args),
        Command::Serve(args) => serve::run(&ctx, &args),
        Command::Eval(args) => eval::run(&ctx, &args),
        Command::Export(args) => bankfile::export(&ctx, &args),
        Command::Import(args) => bankfile::import(&ctx, &args),
        Command::Merge(args) => bankfile::merge(&ctx, &args),
        Command::Migrate(args) => migrate::run(&ctx, &args),
        Command::Inspect { file } => bankfile::inspect(&ctx, &file),
        Command::Verify {
            file: Some(file), ..
        } => bankfile::verify(&ctx, &file),
        Command::Verify {
            file: None,
            bank,
            repair,
        } => bankfile::verify_bank(&ctx, bank.as_deref(), repair),
        Command::Banks(args) => banks::run(&ctx, &args),
        Command::List(b) => bank::list(&ctx, b.bank.as_deref()),
        Command::Show { class, bank: b } => bank::show(&ctx, b.bank.as_deref(), &class),
        Command::Remove {
            class,
            bank: b,
            index,
            ..
        } => bank::remove(&ctx, b.bank.as_deref(), &class, index),
        Command::Rename {
            old,
            new,
            bank: b,
            index,
            ..
        } => bank::rename(&ctx, b.bank.as_deref(), &old, &new, index),
    }
}

/// The most `--threads` honoured: four per core.
fn max_threads() -> usize {
    4 * ovdiff_core::threads::default_threads()
}

/// `--threads N`, at least 1 and at most [`max_threads`] (with a warning).
fn clamp_threads(t: usize) -> usize {
    let max = max_threads();
    if t > max {
        eprintln!("ovdiff-bank: warning: --threads {t} is more than 4 per core; using {max}");
        max
    } else {
        t.max(1)
    }
}

/// The bank path of `--bank NAME|PATH`: blank names are refused, and so is
/// a path inside another bank's folder.
pub(crate) fn bank_path(ctx: &Context, arg: Option<&str>) -> anyhow::Result<std::path::PathBuf> {
    if let Some(a) = arg {
        if a.trim().is_empty() {
            anyhow::bail!(
                "--bank {a:?} is blank: give a bank name (under {}) or a path",
                ctx.home.banks_dir().display()
            );
        }
    }
    let path = ctx.home.bank_path(arg);
    ovdiff_store::bank::check_bank_location(&path)?;
    Ok(path)
}

/// The bank path of `--bank` for a command that needs the bank to exist:
/// a missing one is an error that lists the existing banks and suggests
/// the closest name.
pub(crate) fn existing_bank_path(
    ctx: &Context,
    arg: Option<&str>,
) -> anyhow::Result<std::path::PathBuf> {
    let path = bank_path(ctx, arg)?;
    if !path.exists() {
        let name = arg.unwrap_or(ovdiff_core::home::DEFAULT_BANK);
        return Err(ovdiff_learn::banks::missing_bank(&ctx.home, name).into());
    }
    Ok(path)
}

/// An error from `open`, with the stray entries named when the folder holds
/// files that are not part of a bank database.
pub(crate) fn explain_open_error(
    path: &std::path::Path,
    err: impl Into<anyhow::Error>,
) -> anyhow::Error {
    let err = err.into();
    let stray = ovdiff_store::bank::stray_entries(path);
    if stray.is_empty() || !ovdiff_store::bank::is_bank_root(path) {
        return err;
    }
    let names: Vec<String> = stray
        .iter()
        .map(|p| printable(&p.display().to_string()).into_owned())
        .collect();
    err.context(format!(
        "the bank {} holds {} that {} not part of it: {}; move {} out of the bank folder \
         (nothing else in it needs to change)",
        printable(&path.display().to_string()),
        if stray.len() == 1 {
            "an entry"
        } else {
            "entries"
        },
        if stray.len() == 1 { "is" } else { "are" },
        names.join(", "),
        if stray.len() == 1 { "it" } else { "them" },
    ))
}

/// Writing to standard output failed; the command's work was already done.
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to standard output")
    }
}

impl std::error::Error for StdoutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Write formatted text and a newline to stdout, returning a [`StdoutError`]
/// instead of panicking when stdout is closed or full.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, $($arg)*)
            .and_then(|()| out.flush())
            .map_err($crate::cli::StdoutError)?;
    }};
}
pub(crate) use outln;

/// `s` with control characters escaped (`\u{1b}`), safe to print on a terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// `one` or `many`, by `n`.
pub(crate) fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `n` and the noun in the right number: "1 image", "2 images".
pub(crate) fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", plural(n, one, many))
}

/// Print a value as pretty JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
