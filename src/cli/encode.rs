//! `ovdiff-bank encode IMAGE`: run the encoder on one image and describe the patch grid.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;

use super::{print_json, Context};
use ovdiff_core::home::DEFAULT_ENCODER;
use ovdiff_models::features::{preprocess, Encoder};

/// Arguments of `encode`.
#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// The image to encode.
    pub image: PathBuf,
    /// Encoder bundle: a name under <home>/models or a folder.
    #[arg(long, default_value = DEFAULT_ENCODER)]
    pub encoder: String,
}

#[derive(Debug, Serialize)]
struct EncodeReport {
    image: PathBuf,
    encoder: String,
    fingerprint: String,
    input_size: [u32; 2],
    grid: [usize; 2],
    dim: usize,
    saliency: Option<[usize; 2]>,
    mean_neighbour_cosine: f32,
    encode_ms: f64,
}

/// Run `encode`.
pub fn run(ctx: &Context, args: &EncodeArgs) -> anyhow::Result<ExitCode> {
    let runtime = ctx.runtime()?;
    let bundle = runtime.open_bundle(&ctx.home.bundle_path(&args.encoder))?;
    let mut encoder = Encoder::load(&runtime, bundle)?;
    let img = preprocess::load_rgb(&args.image)?;
    let t = Instant::now();
    let out = encoder.encode_image(&img)?;
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let g = &out.grid;
    // Mean cosine between horizontally adjacent patches: high for a real
    // encoder on a natural image, near zero for random features.
    let mut sum = 0.0f32;
    let mut n = 0usize;
    for y in 0..g.h {
        for x in 1..g.w {
            let a = g.features.row(y * g.w + x - 1);
            let b = g.features.row(y * g.w + x);
            sum += a.dot(&b);
            n += 1;
        }
    }
    let report = EncodeReport {
        image: args.image.clone(),
        encoder: encoder.bundle().name().to_string(),
        fingerprint: encoder.bundle().fingerprint().to_string(),
        input_size: [out.input_size.0, out.input_size.1],
        grid: [g.h, g.w],
        dim: g.dim(),
        saliency: out.saliency.as_ref().map(|s| [s.nrows(), s.ncols()]),
        mean_neighbour_cosine: if n > 0 { sum / n as f32 } else { 0.0 },
        encode_ms,
    };
    if ctx.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: encoded at {}×{} by {} in {:.0} ms → {}×{} patches × {} dims; \
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
