//! `ovdiff-bank`: parse, run, and map the outcome to an exit code (0 ok, 1 partial, 2 error).

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
mod cli;

use cli::{run, Cli};

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
            let disk_full = err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::StorageFull)
            });
            if disk_full {
                eprintln!(
                    "ovdiff-bank: the disk is full: free some space on it and run the command \
                     again. A bank only ever holds complete classes, so it is as it was before \
                     this command; `ovdiff-bank verify --bank B` checks it"
                );
            }
            ExitCode::from(2)
        }
    }
}
