//! `.ovbank` files fetched over plain HTTP (from `ovdiff-bank serve`'s
//! `GET /v1/banks/{bank}.ovbank`, or any server that sends an `ETag` and
//! honours `Range`), to a private temporary file, before they are opened
//! and verified like a local file ([`exchange::open_verified`](crate::exchange::open_verified)).
//!
//! * A broken transfer (a connection error, a timeout, a body shorter than
//!   its `Content-Length`, a 5xx) is retried a few times with backoff, and
//!   resumed where it stopped with `Range: bytes=N-` and `If-Range: ETAG`:
//!   the partial file is kept between attempts.
//! * A server whose file changed meanwhile answers `200` (the whole new
//!   file) instead of `206`: the download starts again from zero. A `206`
//!   with another `ETag` or another total length does too.
//! * At the end, the SHA-256 of the bytes received must equal the `ETag`
//!   (when it is one, as `serve` sends it): otherwise the download is
//!   refused ([`FetchError::Mismatch`]), and nothing was handed on.
//! * The temporary file lives in a private folder of its own, removed when
//!   the [`Download`] is dropped, on every error, and (registered with
//!   [`remove_on_signal`](ovdiff_core::atomic::remove_on_signal)) when
//!   SIGINT or SIGTERM ends a front-end that asked for that clean-up;
//!   folders that killed processes left are swept by the next download.
//!
//! Plain `http://` only: there is no TLS client here. For `https://`, put
//! a TLS-terminating proxy in front, or download the file with another
//! tool and import the local file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// What can stop a download.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Not a URL this client fetches (`https://`, another scheme, no host).
    #[error("{0}")]
    Url(String),
    /// 401: the server asks for a bearer token, or refused the one sent.
    #[error(
        "{url}: the server answered 401 Unauthorized ({}): {message}",
        if *token_sent { "the token sent was refused" } else { "no token was sent" }
    )]
    Unauthorized {
        /// The URL.
        url: String,
        /// Whether a token was sent.
        token_sent: bool,
        /// The server's own message.
        message: String,
    },
    /// 404: no such bank (or file) on the server.
    #[error("{url}: not found on the server (404): {message}")]
    NotFound {
        /// The URL.
        url: String,
        /// The server's own message.
        message: String,
    },
    /// Another status that retrying does not fix (or a 5xx that lasted).
    #[error("{url}: the server answered {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's own message.
        message: String,
    },
    /// The transfer kept failing (connection errors, short bodies).
    #[error("{url}: the download failed after {attempts} attempts ({}): {last}",
        match total {
            Some(t) => format!("{have} of {t} bytes received"),
            None if *have == 0 => "nothing received".to_string(),
            None => format!("{have} bytes received"),
        })]
    Transfer {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Bytes kept when it gave up.
        have: u64,
        /// The length the server announced.
        total: Option<u64>,
        /// The last error.
        last: String,
    },
    /// The file kept changing on the server (every resume got another one).
    #[error(
        "{url}: the file changed on the server {restarts} times during the download; \
         nothing was imported; try again once the bank stops changing"
    )]
    KeptChanging {
        /// The URL.
        url: String,
        /// Restarts from zero made.
        restarts: u32,
    },
    /// The bytes received do not hash to the server's `ETag`.
    #[error(
        "{url}: the downloaded file's sha256 is {sha256} but the server's ETag is {etag}: the \
         file changed on the server during the transfer, or was damaged on the way; it was \
         refused and nothing was imported (run the import again)"
    )]
    Mismatch {
        /// The URL.
        url: String,
        /// The `ETag` (without quotes).
        etag: String,
        /// The SHA-256 of what was received.
        sha256: String,
    },
    /// The server's answer makes no sense for a download (a bad
    /// `Content-Range`, more bytes than announced).
    #[error("{url}: {problem}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        problem: String,
    },
    /// Writing the temporary file.
    #[error("{context} {}", path.display())]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl From<FetchError> for ovdiff_core::Error {
    fn from(e: FetchError) -> ovdiff_core::Error {
        match e {
            FetchError::Io {
                context,
                path,
                source,
            } => ovdiff_core::Error::Io {
                context,
                path,
                source,
            },
            other => ovdiff_core::Error::Invalid(other.to_string()),
        }
    }
}

/// What a download tells its caller as it goes (for a progress bar).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchEvent {
    /// The server answered: the body starts at `offset` (above 0 when
    /// resumed) of `total` bytes (when it said).
    Started {
        /// Where this response's body starts in the file.
        offset: u64,
        /// The file's length, when known.
        total: Option<u64>,
    },
    /// Bytes received so far (of the whole file).
    Received {
        /// Bytes in the temporary file.
        have: u64,
        /// The file's length, when known.
        total: Option<u64>,
    },
    /// An attempt failed; the next starts after `delay`, resuming at `have`.
    Retrying {
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Attempts allowed.
        attempts: u32,
        /// Why it failed.
        error: String,
        /// Bytes kept.
        have: u64,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// What was received is dropped and the download starts from zero.
    Restarting {
        /// Why.
        reason: String,
    },
}

/// How to download.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The bearer token to send, if any.
    pub token: Option<String>,
    /// The folder under which the private temporary folder is made
    /// (`<home>/cache/downloads` for the command line).
    pub dir: PathBuf,
    /// Failed attempts allowed in a row (an attempt that received bytes
    /// resets the count).
    pub attempts: u32,
    /// The wait after the first failure; doubled after each (at most 5 s).
    pub backoff: Duration,
    /// Restarts from zero allowed (the file changed on the server).
    pub restarts: u32,
    /// Connection and per-read timeout.
    pub timeout: Duration,
}

impl FetchOptions {
    /// Defaults: no token, 5 attempts, 250 ms backoff, 3 restarts, 60 s
    /// timeouts.
    pub fn new(dir: impl Into<PathBuf>) -> FetchOptions {
        FetchOptions {
            token: None,
            dir: dir.into(),
            attempts: 5,
            backoff: Duration::from_millis(250),
            restarts: 3,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A finished download: a temporary file whose SHA-256 matched the
/// server's `ETag`, removed (with its folder) when this is dropped.
#[derive(Debug)]
pub struct Download {
    dir: TempDir,
    path: PathBuf,
    /// The URL.
    pub url: String,
    /// Its length.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Whether the `ETag` was a SHA-256 and was checked against it.
    pub etag_checked: bool,
    /// Transfers resumed with `Range`.
    pub resumes: u32,
    /// Restarts from zero (the file changed on the server).
    pub restarts: u32,
}

impl Download {
    /// The temporary file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private folder holding it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The private folder of one download (folders of dead processes are
/// swept when one is made).
#[derive(Debug)]
struct TempDir(ovdiff_core::atomic::PrivateDir);

const DIR_PREFIX: &str = "dl-";

impl TempDir {
    fn new(parent: &Path) -> Result<TempDir, FetchError> {
        let io = |context, path: &Path| {
            let path = path.to_path_buf();
            move |source| FetchError::Io {
                context,
                path,
                source,
            }
        };
        fs::create_dir_all(parent).map_err(io("cannot create the download folder", parent))?;
        ovdiff_core::atomic::PrivateDir::create(parent, DIR_PREFIX)
            .map(TempDir)
            .map_err(|(dir, e)| io("cannot create the temporary download folder", &dir)(e))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Whether `s` is a URL for [`download`] (`http://` or `https://`, any
/// case): what a front-end tells a URL from a file name by.
pub fn is_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Checks that `url` is a plain `http://` URL with a host; returns the
/// file name to save it under (the last path segment, made safe).
fn check_url(url: &str) -> Result<String, FetchError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(FetchError::Url(format!(
            "{url}: https is not supported (this build has no TLS client); put a \
             TLS-terminating proxy in front of the server and use http://, or download the \
             file with another tool (curl -fLO URL) and import the local file"
        )));
    }
    let Some(rest) = lower.strip_prefix("http://").map(|_| &url[7..]) else {
        return Err(FetchError::Url(format!(
            "{url}: not an http:// URL; give http://HOST:PORT/v1/banks/NAME.ovbank, or a local file"
        )));
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if host.is_empty() {
        return Err(FetchError::Url(format!("{url}: the URL has no host")));
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    let safe: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let safe = safe.trim_start_matches('.');
    Ok(if safe.is_empty() {
        "download.ovbank".to_string()
    } else {
        safe.to_string()
    })
}

/// A strong `ETag` without its quotes (`None` for a weak or absent one:
/// no `If-Range` then, and no hash check).
fn strong_etag(v: Option<&str>) -> Option<String> {
    let v = v?.trim();
    if v.starts_with("W/") {
        return None;
    }
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.is_empty()).then(|| inner.to_string())
}

/// Whether an `ETag` is a SHA-256 (64 hex digits), as `serve` sends it.
fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `Content-Range: bytes START-END/TOTAL` as (start, end, total).
fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let total = if total.trim() == "*" {
        None
    } else {
        Some(total.trim().parse().ok()?)
    };
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total))
}

/// The message in an error answer: `serve`'s `{"error": {"message": …}}`,
/// or the body's first 300 characters.
fn error_message(body: &mut ureq::Body) -> String {
    let text = body
        .with_config()
        .limit(64 * 1024)
        .lossy_utf8(true)
        .read_to_string()
        .unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        if let Some(m) = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
        {
            return m.to_string();
        }
    }
    let t: String = text.trim().chars().take(300).collect();
    if t.is_empty() {
        "(no message)".to_string()
    } else {
        t
    }
}

/// The partial file and what is known about it.
struct Partial {
    file: File,
    path: PathBuf,
    have: u64,
    hasher: Sha256,
    etag: Option<String>,
    total: Option<u64>,
}

impl Partial {
    fn io(&self, context: &'static str) -> impl FnOnce(io::Error) -> FetchError {
        let path = self.path.clone();
        move |source| FetchError::Io {
            context,
            path,
            source,
        }
    }

    /// Drops what was received.
    fn reset(&mut self) -> Result<(), FetchError> {
        self.file
            .set_len(0)
            .map_err(self.io("cannot truncate the download"))?;
        // (set_len leaves the cursor where it was.)
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(self.io("cannot rewind the download"))?;
        self.have = 0;
        self.hasher = Sha256::new();
        self.etag = None;
        self.total = None;
        Ok(())
    }
}

/// One attempt's outcome.
enum Attempt {
    /// The whole file is there.
    Done,
    /// Failed in a way retrying may fix (after the server's `Retry-After`,
    /// when it said one).
    Retry(String, Option<Duration>),
    /// The server's file is another one: start from zero.
    Restart(String),
}

/// Downloads `url` to a private temporary file under `options.dir`,
/// resuming after broken transfers, and checks its SHA-256 against the
/// server's `ETag`; `on_event` hears how it goes. The file is not opened
/// as an `.ovbank` here: hand [`Download::path`] to
/// [`exchange::open_verified`](crate::exchange::open_verified).
pub fn download(
    url: &str,
    options: &FetchOptions,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<Download, FetchError> {
    let name = check_url(url)?;
    let dir = TempDir::new(&options.dir)?;
    let path = dir.path().join(&name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| FetchError::Io {
            context: "cannot create the temporary download",
            path: path.clone(),
            source,
        })?;
    let mut part = Partial {
        file,
        path: path.clone(),
        have: 0,
        hasher: Sha256::new(),
        etag: None,
        total: None,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(options.timeout))
        .timeout_recv_response(Some(options.timeout.max(Duration::from_secs(120))))
        .timeout_per_read(Some(options.timeout))
        .build()
        .into();
    let mut failures = 0u32;
    let mut restarts = 0u32;
    let mut resumes = 0u32;
    let mut delay = options.backoff;
    loop {
        let before = part.have;
        match attempt(&agent, url, options, &mut part, &mut resumes, on_event)? {
            Attempt::Done => break,
            Attempt::Restart(reason) => {
                restarts += 1;
                if restarts > options.restarts {
                    return Err(FetchError::KeptChanging {
                        url: url.to_string(),
                        restarts: restarts - 1,
                    });
                }
                on_event(&FetchEvent::Restarting { reason });
                part.reset()?;
            }
            Attempt::Retry(error, retry_after) => {
                if part.have > before {
                    failures = 0;
                    delay = options.backoff;
                }
                failures += 1;
                if failures >= options.attempts {
                    return Err(FetchError::Transfer {
                        url: url.to_string(),
                        attempts: failures,
                        have: part.have,
                        total: part.total,
                        last: error,
                    });
                }
                let wait = retry_after.map_or(delay, |r| r.clamp(delay, Duration::from_secs(30)));
                on_event(&FetchEvent::Retrying {
                    attempt: failures,
                    attempts: options.attempts,
                    error,
                    have: part.have,
                    delay: wait,
                });
                std::thread::sleep(wait);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    part.file
        .sync_all()
        .map_err(part.io("cannot sync the download"))?;
    let sha256 = hex::encode(part.hasher.finalize_reset());
    let etag_checked = match &part.etag {
        Some(etag) if is_sha256(etag) => {
            if !etag.eq_ignore_ascii_case(&sha256) {
                return Err(FetchError::Mismatch {
                    url: url.to_string(),
                    etag: etag.clone(),
                    sha256,
                });
            }
            true
        }
        _ => false,
    };
    Ok(Download {
        dir,
        path,
        url: url.to_string(),
        bytes: part.have,
        sha256,
        etag_checked,
        resumes,
        restarts,
    })
}

/// Whether a client error is worth another attempt (the connection, not
/// the request, was the problem).
fn transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

/// One request: the whole file, or the rest of it from `part.have`.
fn attempt(
    agent: &ureq::Agent,
    url: &str,
    options: &FetchOptions,
    part: &mut Partial,
    resumes: &mut u32,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<Attempt, FetchError> {
    let mut req = agent.get(url).header("Accept-Encoding", "identity");
    if let Some(t) = &options.token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let ranged = part.have > 0;
    if ranged {
        let Some(etag) = &part.etag else {
            // Without a strong ETag a resumed range could be of another
            // file: start again.
            return Ok(Attempt::Restart(
                "the server sent no strong ETag to resume against".to_string(),
            ));
        };
        req = req
            .header("Range", format!("bytes={}-", part.have))
            .header("If-Range", format!("\"{etag}\""));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(e) if transient(&e) => return Ok(Attempt::Retry(e.to_string(), None)),
        Err(ureq::Error::HostNotFound) => {
            return Err(FetchError::Url(format!("{url}: host not found")))
        }
        Err(e) => {
            return Err(FetchError::Protocol {
                url: url.to_string(),
                problem: e.to_string(),
            })
        }
    };
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = strong_etag(header("etag").as_deref());
    let length: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
    let range = header("content-range");
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = resp.into_body();
    match status {
        200 => {
            if ranged {
                return Ok(Attempt::Restart(
                    "the file changed on the server (it sent the whole file, not the rest)"
                        .to_string(),
                ));
            }
            part.etag = etag;
            part.total = length;
        }
        206 if ranged => {
            let (start, _end, total) =
                range
                    .as_deref()
                    .and_then(content_range)
                    .ok_or_else(|| FetchError::Protocol {
                        url: url.to_string(),
                        problem: format!(
                            "206 Partial Content without a valid Content-Range ({range:?})"
                        ),
                    })?;
            if etag.is_some() && etag != part.etag {
                return Ok(Attempt::Restart(
                    "the file changed on the server (another ETag)".to_string(),
                ));
            }
            if total.is_some() && part.total.is_some() && total != part.total {
                return Ok(Attempt::Restart(
                    "the file changed on the server (another length)".to_string(),
                ));
            }
            if start != part.have {
                return Ok(Attempt::Restart(format!(
                    "the server resumed at byte {start}, not {}",
                    part.have
                )));
            }
            part.total = part.total.or(total);
            *resumes += 1;
        }
        401 => {
            return Err(FetchError::Unauthorized {
                url: url.to_string(),
                token_sent: options.token.is_some(),
                message: error_message(&mut body),
            })
        }
        404 => {
            return Err(FetchError::NotFound {
                url: url.to_string(),
                message: error_message(&mut body),
            })
        }
        416 => {
            return Ok(Attempt::Restart(
                "the server could not serve the rest (416): the file changed".to_string(),
            ))
        }
        s if s >= 500 || s == 408 || s == 429 => {
            let message = error_message(&mut body);
            return Ok(Attempt::Retry(
                format!("the server answered {s}: {message}"),
                retry_after,
            ));
        }
        s => {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: s,
                message: error_message(&mut body),
            })
        }
    }
    on_event(&FetchEvent::Started {
        offset: part.have,
        total: part.total,
    });
    let mut reader = body.into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut since_event = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Ok(Attempt::Retry(format!("the transfer broke: {e}"), None)),
        };
        if part.total.is_some_and(|t| part.have + n as u64 > t) {
            return Ok(Attempt::Restart(
                "the server sent more bytes than it announced".to_string(),
            ));
        }
        part.file
            .write_all(&buf[..n])
            .map_err(part.io("cannot write the download"))?;
        part.hasher.update(&buf[..n]);
        part.have += n as u64;
        since_event += n as u64;
        if since_event >= 1 << 20 {
            since_event = 0;
            on_event(&FetchEvent::Received {
                have: part.have,
                total: part.total,
            });
        }
    }
    on_event(&FetchEvent::Received {
        have: part.have,
        total: part.total,
    });
    match part.total {
        Some(t) if part.have < t => Ok(Attempt::Retry(
            format!("the connection closed after {} of {t} bytes", part.have),
            None,
        )),
        _ => Ok(Attempt::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_named() {
        assert_eq!(
            check_url("http://127.0.0.1:8787/v1/banks/team.ovbank").unwrap(),
            "team.ovbank"
        );
        assert_eq!(
            check_url("HTTP://h/v1/banks/a%2Fb.ovbank?x=1").unwrap(),
            "a_2Fb.ovbank"
        );
        assert_eq!(check_url("http://h/").unwrap(), "download.ovbank");
        assert_eq!(check_url("http://h/..").unwrap(), "download.ovbank");
        let e = check_url("https://h/v1/banks/a.ovbank").unwrap_err();
        assert!(e.to_string().contains("TLS-terminating proxy"), "{e}");
        assert!(check_url("ftp://h/a").is_err());
        assert!(check_url("http:///a").is_err());
        assert!(is_url("https://x") && is_url("Http://x") && !is_url("team.ovbank"));
    }

    #[test]
    fn etags_and_ranges_are_parsed() {
        assert_eq!(strong_etag(Some("\"abc\"")), Some("abc".to_string()));
        assert_eq!(strong_etag(Some("W/\"abc\"")), None);
        assert_eq!(strong_etag(Some("abc")), None);
        assert_eq!(strong_etag(None), None);
        assert!(is_sha256(&"a".repeat(64)) && !is_sha256("abc"));
        assert_eq!(content_range("bytes 10-99/100"), Some((10, 99, Some(100))));
        assert_eq!(content_range("bytes 10-99/*"), Some((10, 99, None)));
        assert_eq!(content_range("items 1-2/3"), None);
    }

    #[test]
    fn the_private_folder_goes_with_the_download() {
        let parent = tempfile::tempdir().unwrap();
        let d = TempDir::new(parent.path()).unwrap();
        let p = d.path().to_path_buf();
        assert!(p.is_dir());
        drop(d);
        assert!(!p.exists());
        // A dead process's folder is swept by the next one.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = parent.path().join(format!("{DIR_PREFIX}{dead}-0"));
        fs::create_dir(&stale).unwrap();
        let d = TempDir::new(parent.path()).unwrap();
        assert!(!stale.exists());
        drop(d);
    }

    /// A scripted server (test scaffolding): the `n`th connection gets
    /// `answer(n, request head)`, written raw, then the connection closes.
    fn scripted(
        answer: impl Fn(usize, &str) -> Vec<u8> + Send + 'static,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let mut head = String::new();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                log.lock().unwrap().push(head.clone());
                let _ = conn.write_all(&answer(n, &head));
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        (format!("http://{addr}/v1/banks/b.ovbank"), seen)
    }

    fn response(status: &str, etag: &str, headers: &str, body: &[u8], len: usize) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nETag: \"{etag}\"\r\nContent-Length: {len}\r\n{headers}\
             Connection: close\r\n\r\n"
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn quick(dir: &Path) -> FetchOptions {
        FetchOptions {
            backoff: Duration::from_millis(1),
            ..FetchOptions::new(dir)
        }
    }

    fn empty(dir: &Path) -> bool {
        fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
    }

    #[test]
    fn a_cut_transfer_resumes_with_range_and_if_range() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let tag = sha(&body);
        let (b, t) = (body.clone(), tag.clone());
        let (url, seen) = scripted(move |n, _| match n {
            // Announces the whole length, sends 4,000 bytes, closes.
            0 => response("200 OK", &t, "", &b[..4000], b.len()),
            _ => response(
                "206 Partial Content",
                &t,
                &format!("Content-Range: bytes 4000-9999/{}\r\n", b.len()),
                &b[4000..],
                6000,
            ),
        });
        let parent = tempfile::tempdir().unwrap();
        let mut events = Vec::new();
        let d = download(&url, &quick(parent.path()), &mut |e| events.push(e.clone())).unwrap();
        assert!(fs::read(d.path()).unwrap() == body, "the file is the body");
        assert_eq!(
            (d.sha256.as_str(), d.etag_checked, d.resumes),
            (tag.as_str(), true, 1)
        );
        let seen = seen.lock().unwrap();
        assert!(seen[1].contains("range: bytes=4000-"), "{seen:?}");
        assert!(
            seen[1].contains(&format!("if-range: \"{tag}\"")),
            "{seen:?}"
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, FetchEvent::Retrying { have: 4000, .. })));
        assert!(events.contains(&FetchEvent::Started {
            offset: 4000,
            total: Some(10_000)
        }));
        drop(d);
        assert!(empty(parent.path()));
    }

    #[test]
    fn another_file_on_resume_restarts_from_zero() {
        let old = vec![1u8; 5000];
        let new = vec![2u8; 6000];
        let (o, nw) = (old.clone(), new.clone());
        let (url, seen) = scripted(move |n, head| match n {
            0 => response("200 OK", &sha(&o), "", &o[..1000], o.len()),
            // A server that ignores If-Range: a range of the new file, with
            // the new ETag.
            1 => {
                assert!(head.contains("range: bytes=1000-"));
                response(
                    "206 Partial Content",
                    &sha(&nw),
                    &format!("Content-Range: bytes 1000-5999/{}\r\n", nw.len()),
                    &nw[1000..],
                    5000,
                )
            }
            _ => response("200 OK", &sha(&nw), "", &nw, nw.len()),
        });
        let parent = tempfile::tempdir().unwrap();
        let mut events = Vec::new();
        let d = download(&url, &quick(parent.path()), &mut |e| events.push(e.clone())).unwrap();
        assert!(
            fs::read(d.path()).unwrap() == new,
            "the file is the new one"
        );
        assert_eq!((d.restarts, d.resumes), (1, 0));
        assert!(!seen.lock().unwrap()[2].contains("range:"));
        assert!(events
            .iter()
            .any(|e| matches!(e, FetchEvent::Restarting { .. })));
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_etag_are_refused_and_removed() {
        let body = vec![7u8; 3000];
        let b = body.clone();
        let (url, _) = scripted(move |_, _| response("200 OK", &"0".repeat(64), "", &b, b.len()));
        let parent = tempfile::tempdir().unwrap();
        let e = download(&url, &quick(parent.path()), &mut |_| {}).unwrap_err();
        assert!(matches!(e, FetchError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("nothing was imported"), "{e}");
        assert!(empty(parent.path()), "the partial download is removed");
    }

    #[test]
    fn statuses_become_clear_errors() {
        let (url, _) = scripted(|n, _| {
            let (status, msg) = match n {
                0 => ("401 Unauthorized", "a bearer token is required"),
                1 => ("404 Not Found", "no bank `b`"),
                _ => ("400 Bad Request", "no"),
            };
            let body = format!("{{\"error\":{{\"status\":1,\"message\":\"{msg}\"}}}}");
            response(status, "x", "", body.as_bytes(), body.len())
        });
        let parent = tempfile::tempdir().unwrap();
        let o = quick(parent.path());
        let e = download(&url, &o, &mut |_| {}).unwrap_err();
        assert!(
            matches!(&e, FetchError::Unauthorized { token_sent: false, message, .. }
                if message == "a bearer token is required"),
            "{e}"
        );
        let e = download(&url, &o, &mut |_| {}).unwrap_err();
        assert!(matches!(&e, FetchError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains(&url), "{e}");
        let e = download(&url, &o, &mut |_| {}).unwrap_err();
        assert!(matches!(&e, FetchError::Status { status: 400, .. }), "{e}");
        assert!(empty(parent.path()));
    }

    #[test]
    fn a_file_that_keeps_changing_is_given_up_on() {
        let (url, _) = scripted(|n, _| {
            let b = vec![n as u8; 2000];
            // Always cut, and always another file on resume.
            response("200 OK", &sha(&b), "", &b[..500], b.len())
        });
        let parent = tempfile::tempdir().unwrap();
        let e = download(&url, &quick(parent.path()), &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                e,
                FetchError::KeptChanging { .. } | FetchError::Transfer { .. }
            ),
            "{e}"
        );
        assert!(empty(parent.path()));
    }
}
