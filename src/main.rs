//! `ovdiff-bank`: parse, run, and map the outcome to an exit code (0 ok, 1 partial, 2 error).

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
mod cli;

use cli::{printable, run, Cli, StdoutError};

/// Standard output was closed (broken pipe) or could not be written (full):
/// the first is success, as in ripgrep; the second is exit 2 with a message
/// saying the work was done.
fn stdout_failure(kind: ErrorKind, what: &str) -> ExitCode {
    if kind == ErrorKind::BrokenPipe {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "ovdiff-bank: {what}; the command's work was done and committed, only its output \
         was lost (do not run it again: run `list` or `show` to see the result)"
    );
    ExitCode::from(2)
}

/// A `println!` that failed (in code that does not yet print through
/// `outln!`) panics; turn that panic into [`stdout_failure`]'s exit.
fn install_stdout_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(rest) = msg.strip_prefix("failed printing to stdout: ") {
            let kind = if rest.contains("os error 32") || rest.contains("Broken pipe") {
                ErrorKind::BrokenPipe
            } else {
                ErrorKind::Other
            };
            let code = if kind == ErrorKind::BrokenPipe { 0 } else { 2 };
            stdout_failure(kind, &format!("writing to standard output: {rest}"));
            std::process::exit(code);
        }
        default(info);
    }));
}

/// What SIGINT or SIGTERM removed before the process ends by it (a shell
/// reports 130 or 143).
fn report_signal(sig: i32, removed: &[std::path::PathBuf]) {
    for p in removed {
        eprintln!(
            "ovdiff-bank: stopped by signal {sig}; removed the unfinished {}",
            printable(&p.display().to_string())
        );
    }
}

fn main() -> ExitCode {
    install_stdout_panic_hook();
    let cli = Cli::parse();
    let json = cli.global.json;
    // Ctrl-C or SIGTERM mid-write leaves no `.NAME.tmp-PID-N` behind. If
    // the handlers cannot be installed, the signals keep their default.
    // `serve` handles both itself: it stops accepting and drains.
    if !matches!(cli.command, cli::Command::Serve(_)) {
        let _ = ovdiff_core::atomic::remove_temporary_files_on_signals(report_signal);
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(e) = err.chain().find_map(|c| c.downcast_ref::<StdoutError>()) {
                return stdout_failure(e.0.kind(), &format!("{err:#}"));
            }
            // A closed pipe (`ovdiff-bank list | head`) is not a failure.
            let broken_pipe = err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            let message = format!("{err:#}");
            let disk_full = err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::StorageFull)
            });
            if json {
                // Under --json, errors are JSON objects on stderr too.
                eprintln!(
                    "{}",
                    serde_json::json!({ "error": message, "exit_code": 2, "disk_full": disk_full })
                );
                return ExitCode::from(2);
            }
            let lines: Vec<_> = message.split('\n').map(printable).collect();
            eprintln!("ovdiff-bank: {}", lines.join("\n"));
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
