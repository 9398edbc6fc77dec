//! `ovdiff-bank serve`: segmentation as an HTTP service, and bank files
//! handed out to other teams.
//!
//! The server holds one [`Segmenter`](ovdiff_segment::Segmenter) per bank,
//! with its encoders loaded once, behind a bounded work queue
//! ([`queue`]). Banks are reloaded when they change on disk
//! ([`banks`]): a bank folder is exported to a snapshot `.ovbank` file in
//! `<home>/cache/serve` and queried in place from there, so the server
//! holds no lock on the folder and other processes keep writing it; a
//! served `.ovbank` file is reopened when it is replaced. Requests in
//! flight finish on the version they started with.
//!
//! The routes (API v1) are documented in `docs/serve.md` and, as OpenAPI 3,
//! at `/v1/openapi.json` ([`routes`]).
//!
//! This crate is the library: the command line parses its flags into
//! [`ServeOptions`] and calls [`run`].

pub mod banks;
mod error;
mod metrics;
pub mod queue;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ovdiff_core::{Error, Home, Result};
use ovdiff_segment::SegmenterOptions;

pub use banks::{BankSpec, ServedBank};
pub use queue::WorkQueue;

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `<home>`: installed bundles, ONNX Runtime, the snapshot cache.
    pub home: Home,
    /// The banks to serve; see [`banks::discover`] for the default.
    pub banks: Vec<BankSpec>,
    /// The address to listen on (127.0.0.1:8787; port 0 picks a free one).
    pub bind: SocketAddr,
    /// Segmentations that run at once.
    pub workers: usize,
    /// Requests that may wait for a worker; past it the answer is 503.
    pub queue: usize,
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// How long a request may take, queue included; past it the answer is
    /// 504 and the work is dropped.
    pub timeout: Duration,
    /// The bearer token every route but `/healthz` asks for, if any.
    pub token: Option<String>,
    /// The origin CORS allows, if any (off by default).
    pub cors: Option<String>,
    /// How often banks are checked for changes on disk.
    pub reload_interval: Duration,
    /// Log one JSON object per line instead of text.
    pub json_logs: bool,
    /// How each bank's segmenter loads and runs its models.
    pub segmenter: SegmenterOptions,
}

impl ServeOptions {
    /// The defaults for `home`: every bank under `<home>/banks`, on
    /// 127.0.0.1:8787, one worker, a queue of 64, 32 MiB bodies, 60 s.
    pub fn new(home: Home) -> ServeOptions {
        ServeOptions {
            segmenter: SegmenterOptions::new(home.clone()),
            home,
            banks: Vec::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8787)),
            workers: 1,
            queue: 64,
            max_body: 32 << 20,
            timeout: Duration::from_secs(60),
            token: None,
            cors: None,
            reload_interval: Duration::from_secs(1),
            json_logs: false,
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub banks: Vec<Arc<ServedBank>>,
    pub queue: WorkQueue,
    pub metrics: metrics::Metrics,
    pub ready: AtomicBool,
    pub options: ServeOptions,
}

impl AppState {
    /// The served bank called `name`.
    pub fn bank(&self, name: &str) -> Option<&Arc<ServedBank>> {
        self.banks.iter().find(|b| b.name() == name)
    }
}

/// Serve until SIGTERM or Ctrl-C, then finish the requests in flight and
/// return. `on_listening` is called with the bound address (useful with
/// port 0) before any bank is loaded; `/readyz` answers 200 once every bank
/// and its encoders are loaded.
pub fn run(options: ServeOptions, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    // Before any thread allocates: two arenas for the I/O threads, the
    // workers and ONNX Runtime's threads (measured: 42 MiB less RSS under
    // load than glibc's default of 8 per core, same throughput).
    ovdiff_core::heap::limit_arenas(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serve-io")
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the server's runtime: {e}")))?;
    runtime.block_on(serve(options, on_listening))
}

async fn serve(options: ServeOptions, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    let specs = if options.banks.is_empty() {
        banks::discover(&options.home)?
    } else {
        options.banks.clone()
    };
    if let Some(origin) = &options.cors {
        if origin.parse::<axum::http::HeaderValue>().is_err() || origin.is_empty() {
            return Err(Error::Invalid(format!(
                "--cors {origin:?} is not an origin like https://app.example.org"
            )));
        }
    }
    let snapshots = options.home.cache_dir().join("serve");
    let banks: Vec<Arc<ServedBank>> = specs
        .into_iter()
        .map(|s| Arc::new(ServedBank::new(s, &snapshots, options.segmenter.clone())))
        .collect();
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot listen on {}: {e}; pick another address with --bind",
                options.bind
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("cannot read the listening address: {e}")))?;
    let state = Arc::new(AppState {
        banks,
        queue: WorkQueue::new(options.workers, options.queue, options.timeout),
        metrics: metrics::Metrics::default(),
        ready: AtomicBool::new(false),
        options,
    });
    on_listening(addr);
    tracing::info!(%addr, banks = state.banks.len(), "listening");

    // Load every bank (and its encoders) off the async threads, then keep
    // checking them for changes.
    let loader = state.clone();
    tokio::spawn(async move {
        let st = loader.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut ok = true;
            for b in &st.banks {
                match b.reload_if_changed() {
                    Ok(_) => tracing::info!(bank = b.name(), "loaded"),
                    Err(e) => {
                        ok = false;
                        tracing::error!(bank = b.name(), error = %e, "cannot load the bank");
                    }
                }
            }
            ok
        })
        .await
        .unwrap_or(false);
        loader.ready.store(loaded, Ordering::SeqCst);
        let mut tick = tokio::time::interval(loader.options.reload_interval);
        loop {
            tick.tick().await;
            let st = loader.clone();
            let all = tokio::task::spawn_blocking(move || {
                for b in &st.banks {
                    match b.reload_if_changed() {
                        Ok(true) => tracing::info!(bank = b.name(), "reloaded: it changed on disk"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(bank = b.name(), error = %e,
                            "the bank changed but cannot be loaded; still serving the version before"),
                    }
                }
                // Ready once every bank has a version (not before: a bank
                // that failed to load is not served).
                st.banks.iter().all(|b| b.current().is_some())
            })
            .await
            .unwrap_or(false);
            if all {
                loader.ready.store(true, Ordering::SeqCst);
            }
        }
    });

    let app = routes::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::Invalid(format!("the server stopped: {e}")))?;
    tracing::info!("stopped: every request in flight was answered");
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("stopping: no new connections; finishing the requests in flight");
}

/// The stem of the snapshot files of the bank at `path` under
/// `<home>/cache/serve`: `NAME-KEY`, KEY from the bank's path. Each version
/// is `STEM.N.ovbank`.
pub(crate) fn snapshot_stem(dir: &std::path::Path, name: &str, path: &std::path::Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let key = hex::encode(&Sha256::digest(path.to_string_lossy().as_bytes())[..8]);
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}-{key}"))
}
