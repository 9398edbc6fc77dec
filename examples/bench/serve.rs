//! `bench serve [quick]`: `ovdiff-bank serve` on loopback under a real load
//! generator (client threads with ureq), the 448 px image with 10 classes at
//! concurrency 1, 2, 8 and 32: images/s, p50/p95/p99 latency, the server's
//! cores busy and peak RSS, and the share of 503s; overload; a 5-minute
//! soak at concurrency 8 (not in quick runs); and the download rate of a
//! 1,000-class `.ovbank` file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ovdiff_core::Home;
use ovdiff_segment::{Query, Segmenter, SegmenterOptions};

use crate::segment::sample_kit;

/// A `serve` child process, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("ovdiff-bank"))
        .unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

impl Server {
    fn start(home: &Home, bank: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(binary())
            .env("OVDIFF_HOME", home.root())
            .args(["serve", "--bind", "127.0.0.1:0", "--bank"])
            .arg(bank)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().trim_start_matches("listening on ").to_string();
        let s = Server { child, url };
        let t = Instant::now();
        while agent()
            .get(&format!("{}/readyz", s.url))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "serve never got ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    /// (user + system CPU seconds, VmRSS KiB, VmHWM KiB) of the server.
    fn usage(&self) -> (f64, u64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        ((ticks(11) + ticks(12)) / 100.0, kib("VmRSS"), kib("VmHWM"))
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What `clients` threads sending `per_client` requests each saw.
struct Level {
    latencies: Vec<f64>,
    ok: usize,
    busy: usize,
    /// Answers other than 200 and 503: the status, or the client's error.
    other: Vec<String>,
    wall: f64,
    cpu: f64,
}

fn load(server: &Server, url: &str, image: &[u8], clients: usize, per_client: usize) -> Level {
    let (cpu0, _, _) = server.usage();
    let t = Instant::now();
    let results: Vec<(f64, u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let a = agent();
                    (0..per_client)
                        .map(|_| {
                            let t = Instant::now();
                            let (st, what) = post(&a, url, image);
                            (t.elapsed().as_secs_f64(), st, what)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = t.elapsed().as_secs_f64();
    let (cpu1, _, _) = server.usage();
    let mut latencies: Vec<f64> = results.iter().filter(|r| r.1 == 200).map(|r| r.0).collect();
    latencies.sort_by(f64::total_cmp);
    Level {
        ok: results.iter().filter(|r| r.1 == 200).count(),
        busy: results.iter().filter(|r| r.1 == 503).count(),
        other: results
            .iter()
            .filter(|r| r.1 != 200 && r.1 != 503)
            .map(|r| r.2.clone())
            .collect(),
        latencies,
        wall,
        cpu: cpu1 - cpu0,
    }
}

/// POST the image for a label PNG: the status (0 when no answer came) and
/// what it was, `HTTP 504: message` or the client's error.
fn post(a: &ureq::Agent, url: &str, image: &[u8]) -> (u16, String) {
    match a.post(url).header("Accept", "image/png").send(image) {
        Ok(mut r) => {
            let st = r.status().as_u16();
            let body = r.body_mut().read_to_vec().unwrap_or_default();
            let what = if st == 200 {
                String::new()
            } else {
                let text = String::from_utf8_lossy(&body);
                format!("HTTP {st}: {}", text.chars().take(160).collect::<String>())
            };
            (st, what)
        }
        Err(e) => (0, format!("no answer: {e}")),
    }
}

/// `n × what` for each distinct entry.
fn tally(items: &[String]) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for i in items {
        match seen.iter_mut().find(|(s, _)| s == i) {
            Some((_, n)) => *n += 1,
            None => seen.push((i.clone(), 1)),
        }
    }
    let parts: Vec<String> = seen.iter().map(|(s, n)| format!("{n} × {s}")).collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("; ")
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub(crate) fn bench_serve(home: &Home, quick: bool) {
    let data = tempfile::tempdir().unwrap();
    let (bank_dir, img_path) = sample_kit(home, data.path());
    let image = std::fs::read(&img_path).unwrap();

    // The library's time for the same image and classes, label PNG included.
    let lib = {
        let seg = Segmenter::open(&bank_dir, SegmenterOptions::new(home.clone())).unwrap();
        let names: Vec<String> = seg
            .store()
            .classes()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        let q = Query::classes(names);
        seg.segment(img_path.as_path(), &q).unwrap(); // warm-up
        let mut runs: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                let s = seg.segment(img_path.as_path(), &q).unwrap();
                let png = ovdiff_segment::render::encode_label_png(
                    Path::new("q.png"),
                    s.width,
                    s.height,
                    &s.labels,
                    s.label_depth(),
                )
                .unwrap();
                std::hint::black_box(png);
                t.elapsed().as_secs_f64()
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[1]
    };

    let server = Server::start(home, &bank_dir, &["--workers", "1", "--queue", "64"]);
    let url = format!("{}/v1/segment?classes=all", server.url);
    // warm-up: the first request after start pays nothing more (encoders are
    // loaded before /readyz), but the page cache and allocator settle
    let _ = load(&server, &url, &image, 1, 1);
    println!();
    println!("| serve: 448×448 JPEG, 10 classes, label PNG answers, 1 worker, queue 64 | images/s | p50 / p95 / p99 latency | cores busy | server RSS (peak) | 503s |");
    println!("|---|---|---|---|---|---|");
    let levels: &[(usize, usize)] = if quick {
        &[(1, 3), (2, 2), (8, 1), (32, 1)]
    } else {
        &[(1, 5), (2, 4), (8, 2), (32, 1)]
    };
    let mut rows = Vec::new();
    for &(c, n) in levels {
        let l = load(&server, &url, &image, c, n);
        let (_, rss, hwm) = server.usage();
        println!(
            "| concurrency {c} ({} requests) | {:.3} | {:.2} / {:.2} / {:.2} s | {:.2} | {} MiB ({} MiB) | {:.0}% |",
            c * n,
            l.ok as f64 / l.wall,
            percentile(&l.latencies, 0.5),
            percentile(&l.latencies, 0.95),
            percentile(&l.latencies, 0.99),
            l.cpu / l.wall,
            rss / 1024,
            hwm / 1024,
            100.0 * l.busy as f64 / (c * n) as f64
        );
        rows.push((c, l));
    }
    println!();
    let c1 = &rows[0].1;
    let r = percentile(&c1.latencies, 0.5) / lib;
    println!(
        "| serve at concurrency 1: median latency ÷ the library's segment time for the image ({:.0} ms) | {r:.3}× | ≤ 1.1× | {} |",
        lib * 1e3,
        yes(r <= 1.1)
    );
    for (c, l) in rows.iter().filter(|(c, _)| *c >= 2) {
        let cores = l.cpu / l.wall;
        println!(
            "| serve at concurrency {c}: cores busy (server CPU time ÷ wall time) | {cores:.2} | ≥ 1.8 | {} |",
            yes(cores >= 1.8)
        );
    }
    let others: Vec<String> = rows.iter().flat_map(|(_, l)| l.other.clone()).collect();
    let busy: usize = rows.iter().map(|(_, l)| l.busy).sum();
    println!(
        "| serve, concurrency 1 to 32 with a queue of 64: answers other than 200 and 503 ({busy} × 503, refused at admission) | {} ({}) | 0 | {} |",
        others.len(),
        tally(&others),
        yes(others.is_empty())
    );
    drop(server);

    // Overload: a queue of 2 against 16 clients.
    let server = Server::start(home, &bank_dir, &["--workers", "1", "--queue", "2"]);
    let url = format!("{}/v1/segment?classes=all", server.url);
    let l = load(&server, &url, &image, 16, 1);
    let recovered = load(&server, &url, &image, 1, 1).ok == 1;
    println!(
        "| overload (1 worker, queue 2, 16 clients at once): {} answered, {} × 503, other answers: {}; a request after the burst {} | only 503s | only 503s, then recovery | {} |",
        l.ok,
        l.busy,
        tally(&l.other),
        if recovered { "succeeds" } else { "fails" },
        yes(l.other.is_empty() && l.busy > 0 && recovered)
    );

    drop(server);
    if !quick {
        soak(home, &bank_dir, &image, Duration::from_secs(300));
    }

    download_rate(home, data.path());
}

/// A server for the soak (its own, with a queue of 64).
fn server_soak(home: &Home, bank: &Path) -> (Server, String) {
    let s = Server::start(home, bank, &["--workers", "1", "--queue", "64"]);
    let url = format!("{}/v1/segment?classes=all", s.url);
    (s, url)
}

/// `bench serve-soak SECONDS`: only the soak, for as long as asked.
pub(crate) fn bench_serve_soak(home: &Home, length: Duration) {
    let data = tempfile::tempdir().unwrap();
    let (bank_dir, img_path) = sample_kit(home, data.path());
    let image = std::fs::read(&img_path).unwrap();
    soak(home, &bank_dir, &image, length);
}

fn soak(home: &Home, bank: &Path, image: &[u8], length: Duration) {
    let (server, url) = server_soak(home, bank);
    let t = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut done = 0usize;
    let mut other: Vec<String> = Vec::new();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let a = agent();
                    let (mut n, mut bad) = (0usize, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let (st, what) = post(&a, &url, image);
                        if st == 200 {
                            n += 1;
                        } else {
                            bad.push(what);
                        }
                    }
                    (n, bad)
                })
            })
            .collect();
        while t.elapsed() < length {
            std::thread::sleep(Duration::from_secs(10));
            samples.push((t.elapsed().as_secs_f64(), server.usage().1));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in hs {
            let (n, bad) = h.join().unwrap();
            done += n;
            other.extend(bad);
        }
    });
    let after_warmup = samples.iter().find(|(s, _)| *s >= 60.0).map_or(0, |x| x.1);
    let end = samples.last().map_or(0, |x| x.1);
    let most = samples
        .iter()
        .filter(|(s, _)| *s >= 60.0)
        .map(|x| x.1)
        .max()
        .unwrap_or(0);
    let growth = 100.0 * (most as f64 - after_warmup as f64) / after_warmup.max(1) as f64;
    // The path, to tell a leak (steady growth) from settling (a plateau).
    let path: Vec<String> = samples
        .iter()
        .filter(|(s, _)| (*s as u64) % 30 < 10)
        .map(|(s, kib)| format!("{:.0}s {}", s, kib / 1024))
        .collect();
    println!("soak: server RSS (MiB) every 30 s: {}", path.join(", "));
    println!(
        "| {:.0}-minute soak at concurrency 8 ({done} images, errors: {}): server RSS after the first minute {} MiB, at most {} MiB after, {} MiB at the end | {growth:+.1}% | ≤ +5% | {} |",
        length.as_secs_f64() / 60.0,
        tally(&other),
        after_warmup / 1024,
        most / 1024,
        end / 1024,
        yes(growth <= 5.0 && other.is_empty())
    );
}

/// The 1,000-class synthetic bank as a `.ovbank` file, served and downloaded
/// over loopback (median of 3).
fn download_rate(home: &Home, dir: &Path) {
    let bank_path = dir.join("perf-bank");
    let (bank, _) = ovdiff_store::synthetic::perf_bank(&bank_path, 1000);
    let file = dir.join("perf.ovbank");
    ovdiff_store::ovbank::export(&bank, None, &file).unwrap();
    drop(bank);
    let bytes = std::fs::metadata(&file).unwrap().len();
    // Its encoder is synthetic (not installed): the server serves the file
    // and its classes, and says segment cannot run with it.
    let server = Server::start(home, &file, &[]);
    let url = format!("{}/v1/banks/perf.ovbank", server.url);
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            let mut r = agent().get(&url).call().unwrap();
            let mut reader = r.body_mut().as_reader();
            let got = std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
            assert_eq!(got, bytes);
            got as f64 / 1e6 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "| download of the 1,000-class .ovbank file ({:.0} MB) on loopback, `GET /v1/banks/NAME.ovbank` | {:.0} MB/s | ≥ 300 MB/s | {} |",
        bytes as f64 / 1e6,
        rates[1],
        yes(rates[1] >= 300.0)
    );
}
