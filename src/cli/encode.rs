//! `ovdiff-bank encode IMAGE`: run the encoder on one image and describe the patch grid.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{outln, print_json, Context};
use ovdiff_core::home::DEFAULT_ENCODER;
use ovdiff_learn::bundles;

/// Arguments of `encode`.
#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// The image to encode.
    pub image: PathBuf,
    /// Encoder bundle: a name under <home>/models or a folder.
    #[arg(long, default_value = DEFAULT_ENCODER)]
    pub encoder: String,
    /// Runtime options.
    #[command(flatten)]
    pub model: super::ModelArgs,
}

/// Run `encode`.
pub fn run(ctx: &Context, args: &EncodeArgs) -> anyhow::Result<ExitCode> {
    let runtime = ctx.runtime()?;
    let report = bundles::encode_image(&runtime, &args.encoder, &args.image)?;
    if ctx.json {
        print_json(&report)?;
    } else {
        outln!(
            "{}: encoded at {}×{} (width×height) by {} in {:.0} ms → {}×{} patches × {} dims; \
             mean neighbour cosine {:.3}{}",
            report.image.display(),
            report.input_size[0],
            report.input_size[1],
            report.encoder,
            report.encode_ms,
            report.grid[0],
            report.grid[1],
            report.dim,
            report.mean_neighbour_cosine,
            report
                .saliency
                .map(|s| format!("; saliency map {}×{}", s[0], s[1]))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
