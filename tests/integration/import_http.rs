//! `import http://…`: a real `ovdiff-bank serve` on a loopback port, the
//! real binary as the client; a small proxy in the test breaks transfers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bank::{support_dir, Kit};
use crate::harness::text;

/// A running `ovdiff-bank serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// `token`: the one in `--token-file`, if `extra` passes one.
    fn start(kit: &Kit, bank: &Path, extra: &[&str], token: Option<&str>) -> Server {
        let mut cmd = kit.sb.cmd();
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--bank"])
            .arg(bank)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("serve prints a line").unwrap();
        let addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first line: {first:?}"))
            .trim()
            .to_string();
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let server = Server { child, addr };
        let t = Instant::now();
        loop {
            if server.get("/readyz", token).0 == 200 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "serve never got ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`: (status, body).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.get(self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r
                    .into_body()
                    .with_config()
                    .limit(1 << 30)
                    .read_to_vec()
                    .unwrap();
                (status, body)
            }
            Err(_) => (0, Vec::new()),
        }
    }

    /// The sha256 `GET /v1/banks` lists for the bank `name`.
    fn sha256(&self, name: &str, token: Option<&str>) -> String {
        let (status, body) = self.get("/v1/banks", token);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let banks = v.get("banks").unwrap_or(&v).as_array().unwrap().clone();
        banks
            .iter()
            .find(|b| b["name"] == name)
            .and_then(|b| b["sha256"].as_str())
            .unwrap_or_else(|| panic!("no bank {name} in {v}"))
            .to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy in front of the server: the first connection is closed after
/// `cut` bytes of its answer; the connections after it wait until `gate`
/// opens. It counts the `Range` requests it forwarded.
struct Proxy {
    addr: String,
    ranges: Arc<AtomicUsize>,
    cut_done: Arc<AtomicBool>,
    gate: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str, cut: usize, gate_open: bool) -> Proxy {
        Proxy::start_with(upstream, cut, gate_open, None)
    }

    /// [`Proxy::start`], also flipping the answer's byte at `corrupt` (of
    /// every connection).
    fn start_with(upstream: &str, cut: usize, gate_open: bool, corrupt: Option<usize>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let proxy = Proxy {
            addr,
            ranges: Arc::new(AtomicUsize::new(0)),
            cut_done: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(AtomicBool::new(gate_open)),
        };
        let (upstream, ranges, cut_done, gate) = (
            upstream.to_string(),
            proxy.ranges.clone(),
            proxy.cut_done.clone(),
            proxy.gate.clone(),
        );
        std::thread::spawn(move || {
            for (i, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { return };
                let (upstream, ranges, cut_done, gate) = (
                    upstream.clone(),
                    ranges.clone(),
                    cut_done.clone(),
                    gate.clone(),
                );
                std::thread::spawn(move || {
                    if i > 0 {
                        while !gate.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    let limit = (i == 0).then_some(cut);
                    forward(client, &upstream, limit, corrupt, &ranges);
                    if i == 0 {
                        cut_done.store(true, Ordering::SeqCst);
                    }
                });
            }
        });
        proxy
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Pipes one connection both ways; the answer stops after `limit` bytes.
fn forward(
    client: TcpStream,
    upstream: &str,
    limit: Option<usize>,
    corrupt: Option<usize>,
    ranges: &AtomicUsize,
) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let up = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = c_read.read(&mut buf) {
                if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            let _ = s_write.shutdown(Shutdown::Write);
        })
    };
    let (mut s_read, mut c_write) = (server, client);
    let mut sent = 0usize;
    let mut buf = [0u8; 8192];
    while let Ok(n) = s_read.read(&mut buf) {
        if n == 0 {
            break;
        }
        let n = limit.map_or(n, |l| n.min(l - sent));
        if let Some(at) = corrupt.filter(|&at| (sent..sent + n).contains(&at)) {
            buf[at - sent] ^= 0x55;
        }
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if limit.is_some_and(|l| sent >= l) {
            break;
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = s_read.shutdown(Shutdown::Both);
    let _ = up.join();
    let head = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    ranges.fetch_add(head.matches("\r\nrange: bytes=").count(), Ordering::SeqCst);
}

/// A kit with a two-class bank at `<data>/team`.
fn served_kit() -> Option<(Kit, PathBuf)> {
    let kit = Kit::new()?;
    let bank = kit.data.path().join("team");
    for (class, color) in [("red", [230, 40, 40]), ("blue", [40, 40, 230])] {
        let dir = support_dir(kit.data.path(), class, color, 2);
        let o = crate::bank::add_tiny(&kit.sb, &bank, class, &dir, &[]);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    Some((kit, bank))
}

fn classes(kit: &Kit, bank: &Path) -> Vec<String> {
    let o = kit
        .sb
        .run(&["list", "--json", "--bank", bank.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn verify(kit: &Kit, bank: &Path) {
    let o = kit.sb.run(&["verify", "--bank", bank.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
}

fn import(kit: &Kit, url: &str, into: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["import", url, "--into", into.to_str().unwrap()];
    args.extend_from_slice(extra);
    kit.sb.run(&args)
}

/// What is left in `<home>/cache/downloads` (nothing, once an import ended).
fn downloads_left(kit: &Kit) -> Vec<PathBuf> {
    match std::fs::read_dir(kit.sb.home.path().join("cache/downloads")) {
        Ok(d) => d.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn import_over_http_matches_the_served_bank() {
    let Some((kit, bank)) = served_kit() else {
        return;
    };
    let server = Server::start(&kit, &bank, &[], None);
    let other = kit.data.path().join("other");
    let url = server.url("/v1/banks/team.ovbank");
    let o = import(&kit, &url, &other, &["--json"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["download"]["etag_checked"], true, "{v}");
    assert_eq!(v["download"]["sha256"], server.sha256("team", None), "{v}");
    assert_eq!(v["download"]["resumes"], 0, "{v}");
    verify(&kit, &other);
    assert_eq!(classes(&kit, &other), classes(&kit, &bank));
    assert_eq!(classes(&kit, &other), ["blue", "red"]);
    assert!(
        downloads_left(&kit).is_empty(),
        "{:?}",
        downloads_left(&kit)
    );
    // Again: the classes exist, so they are skipped (exit 1, as for a file);
    // --on-conflict applies as it does to a file.
    let o = import(&kit, &url, &other, &[]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let o = import(&kit, &url, &other, &["--on-conflict", "rename"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(classes(&kit, &other).len(), 4);
    verify(&kit, &other);
    assert!(downloads_left(&kit).is_empty());
}

#[test]
fn a_transfer_cut_halfway_resumes() {
    let Some((kit, bank)) = served_kit() else {
        return;
    };
    let server = Server::start(&kit, &bank, &[], None);
    let (status, whole) = server.get("/v1/banks/team.ovbank", None);
    assert_eq!(status, 200);
    let proxy = Proxy::start(&server.addr, whole.len() / 2, true);
    let other = kit.data.path().join("other");
    let o = import(
        &kit,
        &proxy.url("/v1/banks/team.ovbank"),
        &other,
        &["--json"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(proxy.cut_done.load(Ordering::SeqCst));
    assert!(stderr.contains("resuming the download at byte"), "{stderr}");
    assert_eq!(proxy.ranges.load(Ordering::SeqCst), 1, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["download"]["resumes"], 1, "{v}");
    assert_eq!(v["download"]["restarts"], 0, "{v}");
    assert_eq!(v["download"]["bytes"], whole.len(), "{v}");
    verify(&kit, &other);
    assert_eq!(classes(&kit, &other), classes(&kit, &bank));
    assert!(downloads_left(&kit).is_empty());
}

#[test]
fn a_file_changed_on_the_server_mid_transfer_is_never_imported_half_and_half() {
    let Some((kit, bank)) = served_kit() else {
        return;
    };
    let server = Server::start(&kit, &bank, &[], None);
    let (_, whole) = server.get("/v1/banks/team.ovbank", None);
    let before = server.sha256("team", None);
    let proxy = Proxy::start(&server.addr, whole.len() / 2, false);
    let other = kit.data.path().join("other");
    let url = proxy.url("/v1/banks/team.ovbank");
    let client = kit
        .sb
        .cmd()
        .args(["import", &url, "--json", "--into", other.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !proxy.cut_done.load(Ordering::SeqCst) {
        assert!(t.elapsed() < Duration::from_secs(60), "the cut never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first half came from the old file; now the bank changes.
    let dir = support_dir(kit.data.path(), "green", [40, 230, 40], 2);
    let o = crate::bank::add_tiny(&kit.sb, &bank, "green", &dir, &[]);
    assert!(o.status.success(), "{:?}", text(&o));
    let t = Instant::now();
    while server.sha256("team", None) == before {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "serve never reloaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.gate.store(true, Ordering::SeqCst);
    let o = client.wait_with_output().unwrap();
    let (stdout, stderr) = text(&o);
    // serve answers the stale If-Range with the whole new file (200): the
    // import starts again from zero and gets the new file, wholly (a
    // mismatch would have been refused, exit 2; the unit tests of
    // ovdiff_learn::fetch cover that).
    assert!(o.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["download"]["restarts"], 1, "{v}");
    assert_eq!(v["download"]["etag_checked"], true, "{v}");
    assert_eq!(v["download"]["sha256"], server.sha256("team", None), "{v}");
    assert!(stderr.contains("changed on the server"), "{stderr}");
    assert!(stderr.contains("from the start"), "{stderr}");
    assert_eq!(classes(&kit, &other), ["blue", "green", "red"]);
    verify(&kit, &other);
    assert!(downloads_left(&kit).is_empty());
}

#[test]
fn bytes_altered_on_the_way_are_refused_and_nothing_is_imported() {
    let Some((kit, bank)) = served_kit() else {
        return;
    };
    let server = Server::start(&kit, &bank, &[], None);
    let (_, whole) = server.get("/v1/banks/team.ovbank", None);
    // One byte near the end of the answer (past the headers) is flipped.
    let proxy = Proxy::start_with(&server.addr, usize::MAX, true, Some(whole.len()));
    let other = kit.data.path().join("other");
    let o = import(&kit, &proxy.url("/v1/banks/team.ovbank"), &other, &[]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("but the server's ETag is"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert!(!other.exists(), "the bank is not even created");
    assert!(downloads_left(&kit).is_empty());
}

#[test]
fn a_server_with_a_token_asks_for_token_file() {
    let Some((kit, bank)) = served_kit() else {
        return;
    };
    let token_file = kit.data.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server = Server::start(
        &kit,
        &bank,
        &["--token-file", token_file.to_str().unwrap()],
        Some("s3cret-token"),
    );
    let other = kit.data.path().join("other");
    let url = server.url("/v1/banks/team.ovbank");
    let o = import(&kit, &url, &other, &[]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    let wrong = kit.data.path().join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let o = import(
        &kit,
        &url,
        &other,
        &["--token-file", wrong.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("refused the token"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!other.exists() || classes(&kit, &other).is_empty());
    let o = import(
        &kit,
        &url,
        &other,
        &["--token-file", token_file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(classes(&kit, &other), ["blue", "red"]);
    verify(&kit, &other);
    assert!(downloads_left(&kit).is_empty());
}

#[test]
fn an_unknown_bank_names_the_url_and_https_names_a_proxy() {
    let Some((kit, bank)) = served_kit() else {
        return;
    };
    let server = Server::start(&kit, &bank, &[], None);
    let other = kit.data.path().join("other");
    let url = server.url("/v1/banks/nope.ovbank");
    let o = import(&kit, &url, &other, &[]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    assert!(!other.exists());
    let o = import(
        &kit,
        "https://127.0.0.1:1/v1/banks/team.ovbank",
        &other,
        &[],
    );
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("TLS-terminating proxy"), "{stderr}");
    // Nothing listens: a few attempts, then a clear failure.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1/banks/team.ovbank", dead.local_addr().unwrap());
    drop(dead);
    let o = import(&kit, &dead_url, &other, &[]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("attempts"), "{stderr}");
    assert!(downloads_left(&kit).is_empty());
}

#[test]
fn ctrl_c_mid_download_removes_the_partial_file() {
    let Some((kit, bank)) = served_kit() else {
        return;
    };
    let server = Server::start(&kit, &bank, &[], None);
    let (_, whole) = server.get("/v1/banks/team.ovbank", None);
    // The resume never gets through the gate: the import waits with its
    // partial file until SIGINT.
    let proxy = Proxy::start(&server.addr, whole.len() / 2, false);
    let other = kit.data.path().join("other");
    let url = proxy.url("/v1/banks/team.ovbank");
    let client = kit
        .sb
        .cmd()
        .args(["import", &url, "--into", other.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !proxy.cut_done.load(Ordering::SeqCst) {
        assert!(t.elapsed() < Duration::from_secs(60), "the cut never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let left = downloads_left(&kit);
    assert_eq!(left.len(), 1, "{left:?}");
    let st = Command::new("kill")
        .args(["-INT", &client.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = client.wait_with_output().unwrap();
    proxy.gate.store(true, Ordering::SeqCst); // (lets the proxy's thread end)
    assert!(!o.status.success(), "{:?}", text(&o));
    assert!(
        downloads_left(&kit).is_empty(),
        "{:?}",
        downloads_left(&kit)
    );
    assert!(!other.exists());
}
