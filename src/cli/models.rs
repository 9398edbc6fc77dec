//! `ovdiff-bank models list|check`: what bundles are installed, and whether they are sound.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;

use super::{print_json, Context};
use ovdiff_models::features::Encoder;
use ovdiff_models::runtime::manifest::{Manifest, Role, MANIFEST_FILE};
use ovdiff_models::runtime::{Bundle, VerifyMode};

#[derive(Debug, Serialize)]
struct BundleRow {
    name: String,
    path: PathBuf,
    role: Option<String>,
    version: Option<String>,
    licence: Option<String>,
    size_bytes: u64,
    error: Option<String>,
}

fn installed(ctx: &Context) -> anyhow::Result<Vec<PathBuf>> {
    let dir = ctx.home.models_dir();
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    out.sort();
    Ok(out)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// `models list`
pub fn list(ctx: &Context) -> anyhow::Result<ExitCode> {
    let rows: Vec<BundleRow> = installed(ctx)?
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let size_bytes = dir_size(&path);
            match Manifest::load(&path) {
                Ok(m) => BundleRow {
                    name,
                    role: Some(m.role.to_string()),
                    version: Some(m.version),
                    licence: Some(m.provenance.licence),
                    size_bytes,
                    path,
                    error: None,
                },
                Err(e) => BundleRow {
                    name,
                    role: None,
                    version: None,
                    licence: None,
                    size_bytes,
                    path,
                    error: Some(format!("{:#}", anyhow::Error::from(e))),
                },
            }
        })
        .collect();
    if ctx.json {
        print_json(&rows)?;
    } else if rows.is_empty() {
        println!(
            "no model bundles in {}; run `scripts/setup` to install the default encoder",
            ctx.home.models_dir().display()
        );
    } else {
        println!(
            "{:<20} {:<16} {:<8} {:>10}  licence",
            "name", "role", "version", "size"
        );
        for r in &rows {
            match &r.error {
                None => println!(
                    "{:<20} {:<16} {:<8} {:>10}  {}",
                    r.name,
                    r.role.as_deref().unwrap_or("-"),
                    r.version.as_deref().unwrap_or("-"),
                    human_bytes(r.size_bytes),
                    r.licence.as_deref().unwrap_or("-")
                ),
                Some(e) => println!("{:<20} BROKEN: {e}", r.name),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct CheckRow {
    name: String,
    path: PathBuf,
    ok: bool,
    role: Option<String>,
    fingerprint: Option<String>,
    files_verified: usize,
    forward_pass: Option<String>,
    error: Option<String>,
}

/// `models check [NAME]`: manifest, hashes (always in full), signature, and
/// for encoders one forward pass on a grey image.
pub fn check(ctx: &Context, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let targets = match name {
        Some(n) => vec![ctx.home.bundle_path(n)],
        None => installed(ctx)?,
    };
    if targets.is_empty() {
        anyhow::bail!(
            "no model bundles in {}; run `scripts/setup` to install the default encoder",
            ctx.home.models_dir().display()
        );
    }
    let runtime = ctx.runtime()?;
    let verify = if ctx.runtime.verify == VerifyMode::Off {
        VerifyMode::Off
    } else {
        VerifyMode::Full
    };
    let mut rows = Vec::new();
    for path in targets {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut row = CheckRow {
            name,
            path: path.clone(),
            ok: false,
            role: None,
            fingerprint: None,
            files_verified: 0,
            forward_pass: None,
            error: None,
        };
        let result = (|| -> ovdiff_core::Result<()> {
            let bundle = Bundle::open(&path, verify, &ctx.home.cache_dir())?;
            row.role = Some(bundle.manifest().role.to_string());
            row.fingerprint = Some(bundle.fingerprint().to_string());
            row.files_verified = if verify == VerifyMode::Off {
                0
            } else {
                bundle.manifest().files.len()
            };
            if bundle.manifest().role == Role::FeatureEncoder {
                let mut enc = Encoder::load(&runtime, bundle)?;
                let side = enc.patch_size() * 8;
                let grey = image::RgbImage::from_pixel(side, side, image::Rgb([128, 128, 128]));
                let out = enc.encode_sized(&grey)?;
                row.forward_pass = Some(format!(
                    "{side}×{side} → {}×{} patches × {} dims{}",
                    out.grid.h,
                    out.grid.w,
                    out.grid.dim(),
                    out.saliency
                        .as_ref()
                        .map(|s| format!(", saliency {}×{}", s.nrows(), s.ncols()))
                        .unwrap_or_default()
                ));
            } else if bundle.manifest().graph.is_some() {
                runtime.session(&bundle)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => row.ok = true,
            Err(e) => row.error = Some(format!("{:#}", anyhow::Error::from(e))),
        }
        rows.push(row);
    }
    let all_ok = rows.iter().all(|r| r.ok);
    if ctx.json {
        print_json(&rows)?;
    } else {
        for r in &rows {
            if r.ok {
                println!(
                    "ok    {} ({}, {} files verified, fingerprint {})",
                    r.name,
                    r.role.as_deref().unwrap_or("-"),
                    r.files_verified,
                    &r.fingerprint.as_deref().unwrap_or("-")
                        [..12.min(r.fingerprint.as_deref().unwrap_or("-").len())]
                );
                if let Some(f) = &r.forward_pass {
                    println!("      forward pass: {f}");
                }
            } else {
                println!("FAIL  {}: {}", r.name, r.error.as_deref().unwrap_or("?"));
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
