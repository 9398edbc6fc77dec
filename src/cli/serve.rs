//! `serve`: segmentation as an HTTP service (see `ovdiff_serve` and
//! docs/serve.md). Parses the flags, sets up logging, and runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use ovdiff_serve::{BankSpec, ServeOptions};

use super::Context;

/// `serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A bank to serve: a name under <home>/banks, a folder, or a .ovbank
    /// file (repeat for several) [default: every bank under <home>/banks].
    #[arg(long = "bank", value_name = "NAME|PATH|FILE.ovbank")]
    pub banks: Vec<String>,
    /// The address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR:PORT")]
    pub bind: SocketAddr,
    /// Segmentations that run at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// Requests that may wait for a worker; past it the answer is 503.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub queue: usize,
    /// The largest request body (e.g. 32MiB, 500KB, 1000000).
    #[arg(long, default_value = "32MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub max_body: usize,
    /// How long a request may take, queue included (e.g. 60s, 2m, 500ms).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "TIME")]
    pub timeout: Duration,
    /// Ask every route but /healthz for `Authorization: Bearer TOKEN`, with
    /// TOKEN the first line of this file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Allow cross-origin requests from this origin (CORS is off without it).
    #[arg(long, value_name = "ORIGIN")]
    pub cors: Option<String>,
    /// How often banks are checked for changes on disk.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "TIME")]
    pub reload_interval: Duration,
    /// Encoder bundles to use (as `segment --encoder`) [default: those the
    /// bank's classes recorded].
    #[arg(long = "encoder", value_name = "BUNDLE")]
    pub encoders: Vec<String>,
    /// Runtime options.
    #[command(flatten)]
    pub model: super::ModelArgs,
}

/// `32MiB`, `500KB`, `1000`.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 32MiB, 500KB or 1000000"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

/// `60s`, `2m`, `500ms`, `60`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a time like 60s, 2m or 500ms"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown time unit {other:?} (use ms, s, m, h)")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The first line of the token file.
pub(crate) fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        bail!(
            "the token file {} is empty; put the bearer token on its first line",
            path.display()
        );
    }
    Ok(token)
}

pub fn run(ctx: &Context, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(ctx.json);
    let mut options = ServeOptions::new(ctx.home.clone());
    for b in &args.banks {
        let path = if b.ends_with(".ovbank") || std::path::Path::new(b).is_file() {
            PathBuf::from(b)
        } else {
            super::bank_path(ctx, Some(b))?
        };
        if !path.exists() {
            bail!(
                "bank {} does not exist; `ovdiff-bank add CLASS --bank {b}` builds one",
                path.display()
            );
        }
        let spec = BankSpec::from_path(path);
        if options.banks.iter().any(|s: &BankSpec| s.name == spec.name) {
            bail!(
                "two banks would be served as `{}`; serve one of them from a copy with \
                 another name",
                spec.name
            );
        }
        options.banks.push(spec);
    }
    options.bind = args.bind;
    options.workers = args.workers.max(1);
    options.queue = args.queue;
    options.max_body = args.max_body;
    options.timeout = args.timeout;
    options.token = args.token_file.as_deref().map(read_token).transpose()?;
    options.cors = args.cors.clone();
    options.reload_interval = args.reload_interval;
    options.json_logs = ctx.json;
    options.segmenter = super::segment::segmenter_options(ctx, &args.encoders);
    let json = ctx.json;
    ovdiff_serve::run(options, |addr| {
        use std::io::Write;
        if json {
            println!(
                "{}",
                serde_json::json!({"listening": format!("http://{addr}")})
            );
        } else {
            println!("listening on http://{addr}");
        }
        let _ = std::io::stdout().flush();
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One line per event on stderr: text, or JSON objects with --json.
fn init_logging(json: bool) {
    let base = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    if json {
        base.json().flatten_event(true).init();
    } else {
        base.with_ansi(false).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_parse_with_units() {
        assert_eq!(parse_bytes("32MiB"), Ok(32 << 20));
        assert_eq!(parse_bytes("500KB"), Ok(500_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("0").is_err() && parse_bytes("12 parsecs").is_err());
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err() && parse_duration("soon").is_err());
    }
}
