//! `ovdiff-bank`: parse, run, and map the outcome to an exit code (0 ok, 1 partial, 2 error).

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
use ovdiff_bank::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`ovdiff-bank list | head`) is not a failure.
            let broken_pipe = err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("ovdiff-bank: {err:#}");
            ExitCode::from(2)
        }
    }
}
