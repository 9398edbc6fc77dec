//! `ovdiff-bank list|show|remove|rename`: looking after the classes of a bank.

use std::process::ExitCode;
use std::time::Instant;

use super::{outln, print_json, printable, Context};
use ovdiff_learn::catalog;
use ovdiff_segment::query;
use ovdiff_store::bank::Bank;

/// When a command that writes a bank indexes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexChoice {
    /// When the bank reaches `segment --engine auto`'s IVF switch.
    Auto,
    /// Whatever its size (for `--engine ivf` users).
    Always,
    /// Not now (the first query that needs the lists builds them).
    Never,
}

/// Index `bank` after a write, as `choice` says (see [`query::index_bank`]).
/// The write has already succeeded, so a failure here is only a warning:
/// the first query that needs the lists builds them.
pub(super) fn index_after_write(ctx: &Context, bank: &Bank, choice: IndexChoice) {
    let min_rows = match choice {
        IndexChoice::Auto => query::AUTO_APPROX_MIN_ROWS,
        IndexChoice::Always => 1,
        IndexChoice::Never => return,
    };
    let started = Instant::now();
    match query::index_bank(bank, &ctx.home.cache_dir(), min_rows, ctx.runtime.threads) {
        Ok(done) => {
            for ix in done {
                let Some(st) = ix.ivf else { continue };
                let name = bank.encoder(&ix.encoder).ok().flatten().map_or_else(
                    || ix.encoder[..12.min(ix.encoder.len())].to_string(),
                    |e| e.name,
                );
                eprintln!(
                    "info: index of {} for {name}: IVF lists over {} rows in {} lists, {} \
                     ({:.1} s)",
                    bank.path().display(),
                    st.rows,
                    st.lists,
                    if st.loaded {
                        "already cached and current"
                    } else {
                        "built and cached"
                    },
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Err(e) => eprintln!(
            "ovdiff-bank: warning: the bank was written but not indexed ({e}); the first \
             query that needs its IVF lists will build them"
        ),
    }
}

const NO_BANK_HINT: &str = "; build one with `ovdiff-bank add CLASS --images DIR`";

/// The bank of `--bank`, for a command that changes it.
fn open_existing_bank(ctx: &Context, arg: Option<&str>) -> anyhow::Result<Bank> {
    let path = super::existing_bank_path(ctx, arg)?;
    catalog::open_existing(&path, NO_BANK_HINT).map_err(|e| super::explain_open_error(&path, e))
}

/// The bank of `--bank`, for a command that only reads it (read-only where
/// it cannot be written).
fn open_bank_to_read(ctx: &Context, arg: Option<&str>) -> anyhow::Result<Bank> {
    let path = super::existing_bank_path(ctx, arg)?;
    catalog::open_existing_read(&path, NO_BANK_HINT)
        .map_err(|e| super::explain_open_error(&path, e))
}

/// `list`
pub fn list(ctx: &Context, bank: Option<&str>) -> anyhow::Result<ExitCode> {
    let bank = open_bank_to_read(ctx, bank)?;
    let rows = catalog::class_rows(&bank)?;
    if ctx.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!("bank {} has no classes", bank.path().display());
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<20} {:<6} {:>6} {:>10}  {:<16} source",
        "class",
        "stuff",
        "images",
        "prototypes",
        "encoders"
    );
    for r in &rows {
        outln!(
            "{:<20} {:<6} {:>6} {:>10}  {:<16} {}",
            printable(&r.name),
            if r.stuff { "yes" } else { "no" },
            r.images,
            r.prototypes,
            r.encoders.join(","),
            printable(&r.source)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The error for a class that is not in the bank.
pub(crate) fn unknown_class(bank: &Bank, name: &str) -> anyhow::Error {
    ovdiff_segment::query::unknown_class_error(
        bank as &dyn ovdiff_store::class_store::ClassStore,
        name,
    )
    .into()
}

/// `show CLASS`
pub fn show(ctx: &Context, bank: Option<&str>, class: &str) -> anyhow::Result<ExitCode> {
    let bank = open_bank_to_read(ctx, bank)?;
    let Some(report) = catalog::class_details(&bank, class)? else {
        return Err(unknown_class(&bank, class));
    };
    if ctx.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = &report.row;
    outln!(
        "class      {}{}",
        printable(&r.name),
        if r.stuff { " (stuff)" } else { "" }
    );
    outln!("source     {}", printable(&r.source));
    for (k, v) in &report.source_params {
        outln!("           {} = {}", printable(k), printable(v));
    }
    outln!(
        "split      {} ({} with a fallback split: no clear foreground or background, so \
         the top and bottom 20% of patches by saliency were taken)",
        printable(&r.split),
        super::count(report.fallback_splits as usize, "image", "images")
    );
    outln!(
        "images     {} used, {} skipped",
        r.images,
        report.images_skipped
    );
    for e in &report.per_encoder {
        let c = &e.counts;
        outln!(
            "encoder    {} {}: {} prototypes (class {}+{}, instance {}+{}, part {}+{} fg+bg)",
            e.name,
            &e.fingerprint[..12.min(e.fingerprint.len())],
            e.prototypes,
            c.class_fg,
            c.class_bg,
            c.instance_fg,
            c.instance_bg,
            c.part_fg,
            c.part_bg
        );
    }
    match &report.build {
        Some(b) => outln!(
            "build      {:.1} s by ovdiff-bank {} (sampling {:.1} s, decoding {:.1} s, encoder {:.1} s, \
             pooling {:.1} s); {} fg + {} bg patches",
            b.total_ms as f64 / 1e3,
            b.tool_version,
            b.sample_ms as f64 / 1e3,
            b.decode_ms as f64 / 1e3,
            b.encode_ms as f64 / 1e3,
            b.pool_ms as f64 / 1e3,
            b.fg_patches,
            b.bg_patches
        ),
        None => outln!("build      not recorded (built before bank format 2)"),
    }
    outln!("support images:");
    for s in &report.support {
        outln!(
            "  #{:<3} {} ({}×{}, thumbnail {} bytes)",
            s.index,
            printable(&s.name),
            s.width,
            s.height,
            s.thumbnail_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `remove CLASS`
pub fn remove(
    ctx: &Context,
    bank: Option<&str>,
    class: &str,
    index: IndexChoice,
) -> anyhow::Result<ExitCode> {
    let bank = open_existing_bank(ctx, bank)?;
    if !bank.remove_class(class)? {
        return Err(unknown_class(&bank, class));
    }
    index_after_write(ctx, &bank, index);
    if !ctx.json {
        outln!(
            "removed `{}` from {}",
            printable(class),
            bank.path().display()
        );
    } else {
        print_json(&serde_json::json!({ "removed": class }))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rename OLD NEW`
pub fn rename(
    ctx: &Context,
    bank: Option<&str>,
    old: &str,
    new: &str,
    index: IndexChoice,
) -> anyhow::Result<ExitCode> {
    let bank = open_existing_bank(ctx, bank)?;
    if bank.class(old)?.is_none() {
        return Err(unknown_class(&bank, old));
    }
    super::add::refuse_comma(new)?;
    if bank.class(new)?.is_some() {
        anyhow::bail!(
            "cannot rename `{}` to `{}`: the bank {} already has a class `{}`; remove it first \
             (`ovdiff-bank remove {}`), or pick another name",
            printable(old),
            printable(new),
            bank.path().display(),
            printable(new),
            printable(new)
        );
    }
    bank.rename_class(old, new)?;
    index_after_write(ctx, &bank, index);
    if !ctx.json {
        outln!(
            "renamed `{}` to `{}` in {}",
            printable(old),
            printable(new),
            bank.path().display()
        );
    } else {
        print_json(&serde_json::json!({ "renamed": old, "to": new }))?;
    }
    Ok(ExitCode::SUCCESS)
}
