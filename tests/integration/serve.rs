//! `serve`: a real server on an ephemeral loopback port, talked to with a
//! real HTTP client, over a bank of the tiny fixture encoder.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::bank::{add_tiny, disc_image, support_dir};
use crate::harness::{fixture, text, Sandbox};

/// A running `serve`, killed on drop.
pub(crate) struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// An answer: status, headers we look at, body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: ureq::http::HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

fn answer(mut r: ureq::http::Response<ureq::Body>) -> Answer {
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body,
    }
}

pub(crate) fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.call().unwrap())
}

pub(crate) fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send(body).unwrap())
}

impl Server {
    /// `serve --bind 127.0.0.1:0 ARGS`, once `/readyz` says ready.
    pub(crate) fn start(sb: &Sandbox, args: &[&str]) -> Server {
        Server::start_with(sb, args, None)
    }

    fn start_with(sb: &Sandbox, args: &[&str], token: Option<&str>) -> Server {
        Server::spawn(sb.cmd(), args, token)
    }

    fn spawn(mut cmd: std::process::Command, args: &[&str], token: Option<&str>) -> Server {
        let mut child = cmd
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--reload-interval",
                "200ms",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let server = Server { child, url };
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let started = Instant::now();
        loop {
            if get(&server.at("/readyz"), &headers).status == 200 {
                return server;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the server never got ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// A sandbox with the tiny encoder, a bank `team` of `red` and `blue` under
/// `<home>/banks`, and a query image.
fn kit() -> Option<(Sandbox, tempfile::TempDir, PathBuf, PathBuf)> {
    let sb = Sandbox::with_runtime()?;
    sb.link_model("tiny-encoder", &fixture("models/tiny-encoder"));
    let data = tempfile::tempdir().unwrap();
    let bank = sb.home.path().join("banks").join("team");
    for (class, color) in [("red", [230, 40, 40]), ("blue", [40, 40, 230])] {
        let dir = support_dir(data.path(), class, color, 2);
        let o = add_tiny(&sb, &bank, class, &dir, &[]);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    let img = data.path().join("q.png");
    disc_image(168, 140, [230, 40, 40], 9).save(&img).unwrap();
    Some((sb, data, bank, img))
}

/// What `segment` writes for `img`: (label PNG, JSON report).
fn cli_segment(
    sb: &Sandbox,
    bank: &Path,
    img: &Path,
    classes: &str,
) -> (Vec<u8>, serde_json::Value) {
    let out = tempfile::tempdir().unwrap();
    let o = sb.run(&[
        "segment",
        img.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
        "--classes",
        classes,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let png = std::fs::read(out.path().join("q.png")).unwrap();
    let json = serde_json::from_slice(&std::fs::read(out.path().join("q.json")).unwrap()).unwrap();
    (png, json)
}

#[test]
fn every_route_answers_and_segment_matches_the_cli_byte_for_byte() {
    let Some((sb, _data, bank, img)) = kit() else {
        return;
    };
    let s = Server::start(&sb, &[]);
    let image = std::fs::read(&img).unwrap();

    assert_eq!(get(&s.at("/healthz"), &[]).status, 200);
    assert_eq!(get(&s.at("/readyz"), &[]).status, 200);
    let doc = get(&s.at("/v1/openapi.json"), &[]).json();
    assert!(doc["paths"]["/v1/segment"]["post"].is_object());

    let banks = get(&s.at("/v1/banks"), &[]).json();
    let b = &banks["banks"][0];
    assert_eq!(b["name"], "team");
    assert_eq!(b["classes"], 2);
    assert_eq!(b["encoders"][0]["name"], "tiny-encoder");
    let sha = b["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);

    let classes = get(&s.at("/v1/banks/team/classes?q=re"), &[]).json();
    assert_eq!(classes["classes"].as_array().unwrap().len(), 1);
    assert_eq!(classes["classes"][0]["name"], "red");

    // The label PNG: the same bytes as the CLI's.
    let (cli_png, cli_json) = cli_segment(&sb, &bank, &img, "red,blue");
    let png = post(
        &s.at("/v1/segment?classes=red,blue"),
        &image,
        &[("Accept", "image/png")],
    );
    assert_eq!(png.status, 200, "{}", png.text());
    assert_eq!(png.header("content-type").as_deref(), Some("image/png"));
    assert!(png.body == cli_png, "the label PNG differs from the CLI's");
    let labels = image::load_from_memory(&cli_png).unwrap();
    let (w, h) = (labels.width(), labels.height());
    let label_of: Vec<u16> = {
        let (_, _, l) = ovdiff_segment::render::read_label_png(&{
            let p = _data.path().join("cli.png");
            std::fs::write(&p, &cli_png).unwrap();
            p
        })
        .unwrap();
        l.into_iter().map(u16::from).collect()
    };

    // The JSON: the CLI's classes and fractions, with RLE masks that decode
    // to exactly the label map's pixels.
    let j = post(&s.at("/v1/segment?classes=red,blue"), &image, &[]);
    assert_eq!(j.status, 200, "{}", j.text());
    let j = j.json();
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(w as u64), Some(h as u64))
    );
    assert_eq!(
        j["labels"],
        serde_json::json!(["background", "red", "blue"])
    );
    let found = j["classes"].as_array().unwrap();
    assert_eq!(found.len(), cli_json["classes"].as_array().unwrap().len());
    assert!(!found.is_empty());
    for (c, cli) in found.iter().zip(cli_json["classes"].as_array().unwrap()) {
        assert_eq!(c["name"], cli["name"]);
        assert_eq!(c["pixels"], cli["pixels"]);
        let rle: ovdiff_segment::rle::CocoRle = serde_json::from_value(c["mask"].clone()).unwrap();
        assert_eq!(rle.size, [h, w]);
        let mask = rle.decode().unwrap();
        let label = c["label"].as_u64().unwrap() as u16;
        // decode() is row-major, like the label map
        let want: Vec<bool> = label_of.iter().map(|&l| l == label).collect();
        assert!(
            mask == want,
            "the RLE of {} is not its label map mask",
            c["name"]
        );
        assert_eq!(rle.area().unwrap(), c["pixels"].as_u64().unwrap());
    }

    // Multipart, all classes, explanations with thumbnail URLs that resolve.
    let boundary = "XyZboundary";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(&image);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let e = post(
        &s.at("/v1/segment?bank=team&classes=all&explain=true"),
        &form,
        &[("Content-Type", &ct)],
    );
    assert_eq!(e.status, 200, "{}", e.text());
    let e = e.json();
    let thumb = e["classes"][0]["support"][0]["thumbnail"]
        .as_str()
        .unwrap()
        .to_string();
    let t = get(&s.at(&thumb), &[]);
    assert_eq!(t.status, 200);
    assert_eq!(&t.body[..2], &[0xff, 0xd8], "a JPEG");

    let o = post(&s.at("/v1/segment?classes=red&format=overlay"), &image, &[]);
    assert_eq!(o.status, 200);
    let overlay = image::load_from_memory(&o.body).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (w, h));

    // The bank file: ETag = its sha256, Range, If-None-Match.
    let f = get(&s.at("/v1/banks/team.ovbank"), &[]);
    assert_eq!(f.status, 200);
    assert_eq!(f.header("etag"), Some(format!("\"{sha}\"")));
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&f.body)), sha);
    let part = get(&s.at("/v1/banks/team.ovbank"), &[("Range", "bytes=10-19")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, f.body[10..20]);
    let etag = format!("\"{sha}\"");
    assert_eq!(
        get(&s.at("/v1/banks/team.ovbank"), &[("If-None-Match", &etag)]).status,
        304
    );
    // The downloaded file is a sound bank file.
    let dl = _data.path().join("dl.ovbank");
    std::fs::write(&dl, &f.body).unwrap();
    let v = sb.run(&["verify", dl.to_str().unwrap()]);
    assert!(v.status.success(), "{:?}", text(&v));

    let m = get(&s.at("/metrics"), &[]).text();
    assert!(m.contains("ovdiff_requests_total{route=\"/v1/segment\",status=\"200\"}"));
    assert!(m.contains("ovdiff_images_segmented_total 4"), "{m}");
    assert!(m.contains("ovdiff_request_seconds_bucket"));
    assert!(m.contains("ovdiff_queue_depth"));
}

#[test]
fn bad_requests_get_their_status_and_a_json_message() {
    let Some((sb, data, _bank, img)) = kit() else {
        return;
    };
    let s = Server::start(&sb, &["--max-body", "200KB"]);
    let image = std::fs::read(&img).unwrap();
    let status_of = |a: &Answer| {
        let j = a.json();
        assert_eq!(j["error"]["status"].as_u64(), Some(a.status as u64));
        assert!(!j["error"]["message"].as_str().unwrap().is_empty());
        (
            a.status,
            j["error"]["message"].as_str().unwrap().to_string(),
        )
    };

    let (st, msg) = status_of(&post(&s.at("/v1/segment?classes=red,bleu"), &image, &[]));
    assert_eq!(st, 422);
    assert!(msg.contains("`blue`"), "{msg}");
    let (st, msg) = status_of(&post(
        &s.at("/v1/segment?bank=nope&classes=red"),
        &image,
        &[],
    ));
    assert_eq!(st, 404);
    assert!(msg.contains("team"), "{msg}");
    let (st, _) = status_of(&post(
        &s.at("/v1/segment?classes=red"),
        b"hello, not an image",
        &[],
    ));
    assert_eq!(st, 415);
    // truncated: the first half of a JPEG
    let jpeg_path = data.path().join("q.jpg");
    image::open(&img)
        .unwrap()
        .to_rgb8()
        .save(&jpeg_path)
        .unwrap();
    let jpeg = std::fs::read(&jpeg_path).unwrap();
    let (st, msg) = status_of(&post(
        &s.at("/v1/segment?classes=red"),
        &jpeg[..jpeg.len() / 2],
        &[],
    ));
    assert_eq!(st, 422, "{msg}");
    // more pixels than the decode limit, refused from the header: a JPEG
    // whose frame header says 60000×60000
    let mut bomb = jpeg.clone();
    let sof = bomb
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .expect("a baseline JPEG");
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]);
    let (st, msg) = status_of(&post(&s.at("/v1/segment?classes=red"), &bomb, &[]));
    assert_eq!(st, 422);
    assert!(msg.contains("over the limit"), "{msg}");
    // Over --max-body by its Content-Length: 413 at once, without reading
    // the body, and the connection is closed; a client still sending may
    // see that close instead of the answer.
    match agent()
        .post(&s.at("/v1/segment?classes=red"))
        .send(&vec![0u8; 300_000][..])
    {
        Ok(r) => {
            let a = answer(r);
            assert_eq!(status_of(&a).0, 413);
        }
        Err(e) => assert!(
            matches!(e, ureq::Error::Io(_) | ureq::Error::ConnectionFailed),
            "{e}"
        ),
    }
    let (st, _) = status_of(&post(&s.at("/v1/segment?classes=red"), b"", &[]));
    assert_eq!(st, 400);
    let (st, _) = status_of(&post(&s.at("/v1/segment"), &image, &[]));
    assert_eq!(st, 400, "classes= is required");
    let (st, _) = status_of(&post(
        &s.at("/v1/segment?classes=red&engine=warp"),
        &image,
        &[],
    ));
    assert_eq!(st, 400);

    // Names in paths cannot leave what they name.
    for path in [
        "/v1/banks/..%2F..%2Fetc/classes",
        "/v1/banks/%2e%2e/classes",
        "/v1/banks/team/support/..%2Fred/0.jpg",
        "/v1/banks/team/support/red%00/0.jpg",
        "/v1/banks/..%2Fteam.ovbank",
    ] {
        let a = get(&s.at(path), &[]);
        assert!(
            a.status == 400 || a.status == 404,
            "{path}: {} {}",
            a.status,
            a.text()
        );
        assert!(a.json()["error"].is_object(), "{path}");
    }
    assert_eq!(
        get(&s.at("/v1/banks/team/support/red/99.jpg"), &[]).status,
        404
    );
    assert_eq!(get(&s.at("/etc/passwd"), &[]).status, 404);
    // still serving
    assert_eq!(
        post(&s.at("/v1/segment?classes=red"), &image, &[]).status,
        200
    );
}

#[test]
fn tokens_guard_every_route_but_healthz() {
    let Some((sb, data, _bank, img)) = kit() else {
        return;
    };
    let token_file = data.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let s = Server::start_with(
        &sb,
        &["--token-file", token_file.to_str().unwrap()],
        Some("s3cret-token"),
    );
    let image = std::fs::read(&img).unwrap();
    assert_eq!(get(&s.at("/healthz"), &[]).status, 200);
    // the web page is static and asks for the token itself
    let page = get(&s.at("/"), &[]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("access token"));
    for path in ["/readyz", "/v1/banks", "/metrics", "/v1/banks/team.ovbank"] {
        let a = get(&s.at(path), &[]);
        assert_eq!(a.status, 401, "{path}");
        assert_eq!(a.header("www-authenticate").as_deref(), Some("Bearer"));
        assert_eq!(
            get(&s.at(path), &[("Authorization", "Bearer wrong")]).status,
            401
        );
        assert_eq!(
            get(&s.at(path), &[("Authorization", "Bearer s3cret-token")]).status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        post(&s.at("/v1/segment?classes=red"), &image, &[]).status,
        401
    );
    let ok = post(
        &s.at("/v1/segment?classes=red"),
        &image,
        &[("Authorization", "Bearer s3cret-token")],
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn overload_answers_503_then_recovers_and_timeouts_answer_504() {
    let Some((sb, _data, _bank, img)) = kit() else {
        return;
    };
    let image = std::fs::read(&img).unwrap();
    {
        let s = Server::start(&sb, &["--workers", "1", "--queue", "0"]);
        let url = s.at("/v1/segment?classes=red,blue&explain=true");
        let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..12)
                .map(|_| {
                    scope.spawn(|| {
                        let a = post(&url, &image, &[]);
                        (a.status, a.header("retry-after"))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(statuses.iter().any(|s| s.0 == 200), "{statuses:?}");
        assert!(
            statuses.iter().all(|s| s.0 == 200 || s.0 == 503),
            "only 503s under overload: {statuses:?}"
        );
        assert!(statuses.iter().any(|s| s.0 == 503), "{statuses:?}");
        for s in statuses.iter().filter(|s| s.0 == 503) {
            let secs: u32 = s.1.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
            assert!(secs >= 1, "503 carries Retry-After in seconds: {s:?}");
        }
        // and once the load stops
        assert_eq!(post(&url, &image, &[]).status, 200);
    }
    let s = Server::start(&sb, &["--timeout", "1ms"]);
    let a = post(&s.at("/v1/segment?classes=red,blue"), &image, &[]);
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(get(&s.at("/healthz"), &[]).status, 200);
}

#[test]
fn a_request_that_would_wait_past_the_timeout_is_refused_at_once_with_503() {
    let Some((sb, _data, _bank, img)) = kit() else {
        return;
    };
    let image = std::fs::read(&img).unwrap();
    // Each segmentation takes at least 1 s and the timeout is 2 s, of which
    // the queue fills at most 80%: one running fits (about 1.1 s), one
    // waiting behind it (about 2.2 s) would not.
    let mut cmd = sb.cmd();
    cmd.env(ovdiff_core::failpoint::ENV, "serve-slow")
        .env(ovdiff_core::failpoint::PAUSE_ENV, "1000");
    let s = Server::spawn(
        cmd,
        &["--workers", "1", "--queue", "64", "--timeout", "2s"],
        None,
    );
    let url = s.at("/v1/segment?classes=red");
    // the first one teaches the queue how long a segmentation takes
    assert_eq!(post(&url, &image, &[]).status, 200);
    let answers: Vec<(u16, Option<String>, String)> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    let a = post(&url, &image, &[]);
                    (a.status, a.header("retry-after"), a.text())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "refused at admission, never a 504: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 503).count() >= 3,
        "only the first fits in the timeout: {statuses:?}"
    );
    for a in answers.iter().filter(|a| a.0 == 503) {
        assert!(a.2.contains("--timeout"), "{}", a.2);
        assert!(
            a.1.as_deref()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
                >= 1
        );
    }
    // once the burst is over, requests are admitted again
    assert_eq!(post(&url, &image, &[]).status, 200);
}

#[test]
fn sigterm_drains_requests_in_flight_and_exits_0() {
    let Some((sb, _data, _bank, img)) = kit() else {
        return;
    };
    let image = std::fs::read(&img).unwrap();
    let mut s = Server::start(&sb, &["--workers", "1"]);
    let url = s.at("/v1/segment?classes=red,blue&explain=true");
    let pid = s.child.id();
    let answers = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| post(&url, &image, &[]).status))
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        let k = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(k.success());
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(answers.iter().all(|&st| st == 200), "{answers:?}");
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_bank_changed_on_disk_is_served_without_a_restart() {
    let Some((sb, data, bank, img)) = kit() else {
        return;
    };
    let image = std::fs::read(&img).unwrap();
    let s = Server::start(&sb, &[]);
    let before = get(&s.at("/v1/banks"), &[]).json()["banks"][0]["sha256"].clone();
    let url = s.at("/v1/segment?classes=red,blue");
    // requests keep flowing while another process writes the bank
    let (statuses, added) = std::thread::scope(|scope| {
        let h = scope.spawn(|| {
            (0..6)
                .map(|_| post(&url, &image, &[]).status)
                .collect::<Vec<_>>()
        });
        let dir = support_dir(data.path(), "green", [40, 230, 40], 2);
        let o = add_tiny(&sb, &bank, "green", &dir, &[]);
        (h.join().unwrap(), o)
    });
    assert!(
        added.status.success(),
        "add while serving: {:?}",
        text(&added)
    );
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let started = Instant::now();
    loop {
        let b = get(&s.at("/v1/banks"), &[]).json();
        if b["banks"][0]["classes"] == 3 {
            assert_ne!(b["banks"][0]["sha256"], before);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never reloaded: {b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = post(&s.at("/v1/segment?classes=green,red"), &image, &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    // one snapshot file per version served: the old one is gone
    let snapshots = || {
        std::fs::read_dir(sb.home.path().join("cache/serve"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ovbank"))
            .count()
    };
    assert_eq!(snapshots(), 1);

    // A served .ovbank file replaced by rename is reopened.
    let file = data.path().join("shared.ovbank");
    let o = sb.run(&[
        "export",
        "red",
        "--bank",
        bank.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let fs = Server::start(&sb, &["--bank", file.to_str().unwrap()]);
    let b = get(&fs.at("/v1/banks"), &[]).json();
    assert_eq!(b["banks"][0]["name"], "shared");
    assert_eq!(b["banks"][0]["classes"], 1);
    let next = data.path().join("next.ovbank");
    let o = sb.run(&[
        "export",
        "--bank",
        bank.to_str().unwrap(),
        "-o",
        next.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    std::fs::rename(&next, &file).unwrap();
    let started = Instant::now();
    loop {
        let b = get(&fs.at("/v1/banks"), &[]).json();
        if b["banks"][0]["classes"] == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never reopened: {b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        post(&fs.at("/v1/segment?classes=green"), &image, &[]).status,
        200
    );
}

#[test]
fn a_panic_inside_a_request_is_a_500_and_the_server_keeps_serving() {
    let Some((sb, _data, _bank, img)) = kit() else {
        return;
    };
    let mut cmd = sb.cmd();
    cmd.env(ovdiff_core::failpoint::ENV, "serve-panic");
    let s = Server::spawn(cmd, &[], None);
    let image = std::fs::read(&img).unwrap();
    for _ in 0..3 {
        let a = post(&s.at("/v1/segment?classes=red"), &image, &[]);
        assert_eq!(a.status, 500, "{}", a.text());
        assert!(a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("internal error"));
    }
    assert_eq!(get(&s.at("/healthz"), &[]).status, 200);
    assert_eq!(get(&s.at("/v1/banks"), &[]).status, 200);
    let m = get(&s.at("/metrics"), &[]).text();
    assert!(
        m.contains("ovdiff_requests_total{route=\"/v1/segment\",status=\"500\"} 3"),
        "{m}"
    );
}

/// `GET /` is the web page; `overlay=true` adds the overlay PNG to the
/// JSON as a data: URI, the same bytes as `format=overlay` (issue #18).
#[test]
fn the_page_and_the_overlay_in_the_json() {
    let Some((sb, _data, _bank, img)) = kit() else {
        return;
    };
    let s = Server::start(&sb, &[]);
    let page = get(&s.at("/"), &[]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("/v1/banks") && html.contains("overlay=true"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no network"
    );
    let image = std::fs::read(&img).unwrap();
    let plain = post(&s.at("/v1/segment?classes=red,blue"), &image, &[]).json();
    assert!(
        plain.get("overlay").is_none(),
        "unchanged without overlay=true"
    );
    let with = post(
        &s.at("/v1/segment?classes=red,blue&overlay=true"),
        &image,
        &[],
    )
    .json();
    let uri = with["overlay"].as_str().unwrap();
    let png = post(
        &s.at("/v1/segment?classes=red,blue&format=overlay"),
        &image,
        &[],
    )
    .body;
    assert_eq!(
        uri,
        ovdiff_segment::report::data_uri(&png, "image/png"),
        "the overlay PNG's bytes"
    );
    assert_eq!(with["classes"], plain["classes"]);
    let bad = post(&s.at("/v1/segment?classes=red&overlay=maybe"), &image, &[]);
    assert_eq!(bad.status, 400);
}

#[test]
fn presets_choose_the_windows_and_a_bad_one_is_a_400() {
    let Some((sb, _data, _bank, img)) = kit() else {
        return;
    };
    let s = Server::start(&sb, &[]);
    let image = std::fs::read(&img).unwrap();
    let windows = |preset: &str| {
        let a = post(
            &s.at(&format!("/v1/segment?classes=red&preset={preset}")),
            &image,
            &[],
        );
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()["windows"].as_u64().unwrap()
    };
    assert_eq!(windows("fast"), 1);
    assert!(windows("balanced") < windows("accurate"));
    let a = post(&s.at("/v1/segment?classes=red&preset=quick"), &image, &[]);
    assert_eq!(a.status, 400);
    assert!(
        a.text().contains("accurate, balanced or fast"),
        "{}",
        a.text()
    );
}
