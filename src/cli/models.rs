//! `ovdiff-bank models list|check`: what bundles are installed, and whether they are sound.

use std::process::ExitCode;

use super::{outln, print_json, Context};
use ovdiff_learn::bundles;

/// `models list`
pub fn list(ctx: &Context) -> anyhow::Result<ExitCode> {
    let rows = bundles::list(&ctx.home)?;
    if ctx.json {
        print_json(&rows)?;
    } else if rows.is_empty() {
        outln!(
            "no model bundles in {}; run `scripts/setup` to install the default encoder",
            ctx.home.models_dir().display()
        );
    } else {
        outln!(
            "{:<20} {:<16} {:<8} {:>10}  licence",
            "name",
            "role",
            "version",
            "size"
        );
        for r in &rows {
            match &r.error {
                None => outln!(
                    "{:<20} {:<16} {:<8} {:>10}  {}",
                    r.name,
                    r.role.as_deref().unwrap_or("-"),
                    r.version.as_deref().unwrap_or("-"),
                    human_bytes(r.size_bytes),
                    r.licence.as_deref().unwrap_or("-")
                ),
                Some(e) => outln!("{:<20} BROKEN: {e}", r.name),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `models check [NAME]`: manifest, hashes (always in full), signature, and
/// for encoders one forward pass on a grey image.
pub fn check(ctx: &Context, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let targets = bundles::check_targets(&ctx.home, name)?;
    let runtime = ctx.runtime()?;
    let rows = bundles::check(&runtime, &targets);
    let all_ok = rows.iter().all(|r| r.ok);
    if ctx.json {
        print_json(&rows)?;
    } else {
        for r in &rows {
            if r.ok {
                outln!(
                    "ok    {} ({}, {} files verified, fingerprint {})",
                    r.name,
                    r.role.as_deref().unwrap_or("-"),
                    r.files_verified,
                    &r.fingerprint.as_deref().unwrap_or("-")
                        [..12.min(r.fingerprint.as_deref().unwrap_or("-").len())]
                );
                if let Some(f) = &r.forward_pass {
                    outln!("      forward pass: {f}");
                }
            } else {
                outln!("FAIL  {}: {}", r.name, r.error.as_deref().unwrap_or("?"));
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `12.3 MB` style sizes.
pub(crate) fn human_bytes(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
