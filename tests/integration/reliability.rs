//! The reliability suite of issue #7 that runs under `cargo test`: bad images
//! through `add` and `segment`, readers and writers at the same time, and a
//! full disk. Crash safety under SIGKILL is `scripts/torture`; the second
//! writer refused in-process is `bank::a_second_writer_fails_fast_with_a_clear_message`.
//! The results are written up in `docs/reliability.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use image::{GrayImage, ImageBuffer, Luma, Rgb, Rgba, RgbaImage};

use crate::bank::{add_tiny, crc32, disc_image, support_dir};
use crate::harness::{fixture, text};

/// A sandbox with the tiny encoder and a bank at `<data>/bank` holding `red`.
struct Kit {
    base: crate::bank::Kit,
}

impl std::ops::Deref for Kit {
    type Target = crate::bank::Kit;
    fn deref(&self) -> &crate::bank::Kit {
        &self.base
    }
}

impl Kit {
    fn new() -> Option<Kit> {
        let base = crate::bank::Kit::new()?;
        let red = support_dir(base.data.path(), "red", [230, 40, 40], 2);
        let out = base.add("red", &red, &[]);
        assert!(out.status.success(), "{:?}", text(&out));
        Some(Kit { base })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.sb.cmd();
        c.args(args).args(["--bank", self.bank().to_str().unwrap()]);
        c
    }
}

/// Never a panic (exit 101, "panicked") and never a signal (an OOM kill).
fn assert_no_crash(what: &str, out: &Output) {
    let (stdout, stderr) = text(out);
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "{what}: exit {:?}\n{stdout}{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
}

/// The first line of stderr that names `file`, with its temporary folder cut.
fn first_error(stderr: &str, file: &Path) -> String {
    let name = file.file_name().unwrap().to_str().unwrap();
    let line = stderr
        .lines()
        .find(|l| l.contains(name))
        .or_else(|| stderr.lines().next())
        .unwrap_or("");
    line.replace(&format!("{}/", file.parent().unwrap().display()), "")
}

/// A PNG that claims `w`×`h` RGB pixels and holds none: a decompression bomb.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    for chunk in [ihdr, b"IDAT".to_vec(), b"IEND".to_vec()] {
        png.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// What an input is expected to do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Decodes and is used.
    Works,
    /// Refused with an error that names the file.
    Refused,
}

/// Every bad or unusual input of issue #7, as (file name, bytes, expectation).
fn bad_inputs() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use image::ImageFormat::{Jpeg, Png};
    let disc = image::DynamicImage::ImageRgb8(disc_image(120, 96, [230, 40, 40], 1));
    let png = encode(&disc, Png);
    let jpeg = encode(&disc, Jpeg);
    let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(120, 96, |x, y| {
        let p = disc_image(120, 96, [230, 40, 40], 1).get_pixel(x, y).0;
        Rgb(p.map(|c| u16::from(c) * 257))
    });
    let grey = GrayImage::from_fn(120, 96, |x, y| {
        Luma([disc_image(120, 96, [230, 40, 40], 1).get_pixel(x, y).0[0]])
    });
    let rgba = RgbaImage::from_fn(120, 96, |x, y| {
        let p = disc_image(120, 96, [230, 40, 40], 1).get_pixel(x, y).0;
        Rgba([p[0], p[1], p[2], ((x * 255) / 119) as u8])
    });
    vec![
        ("zero-bytes.png", Vec::new(), Expect::Refused),
        (
            "truncated.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            Expect::Refused,
        ),
        (
            "truncated.png",
            png[..png.len() / 2].to_vec(),
            Expect::Refused,
        ),
        ("png-named.jpg", png.clone(), Expect::Works),
        (
            "text-named.png",
            b"this is a text file, not an image\n".to_vec(),
            Expect::Refused,
        ),
        (
            "bomb-100000x100000.png",
            bomb_png(100_000, 100_000),
            Expect::Refused,
        ),
        (
            "rgb16.png",
            encode(&image::DynamicImage::ImageRgb16(rgb16), Png),
            Expect::Works,
        ),
        (
            "cmyk.jpg",
            std::fs::read(fixture("images/cmyk.jpg")).unwrap(),
            Expect::Works,
        ),
        (
            "grey.png",
            encode(&image::DynamicImage::ImageLuma8(grey.clone()), Png),
            Expect::Works,
        ),
        (
            "grey.jpg",
            encode(&image::DynamicImage::ImageLuma8(grey), Jpeg),
            Expect::Works,
        ),
        (
            "rgba-alpha.png",
            encode(&image::DynamicImage::ImageRgba8(rgba), Png),
            Expect::Works,
        ),
        (
            "1x1.png",
            encode(
                &image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                    1,
                    1,
                    Rgb([200, 30, 30]),
                )),
                Png,
            ),
            Expect::Works,
        ),
        (
            "10000x10.png",
            encode(
                &image::DynamicImage::ImageRgb8(disc_image(10_000, 10, [230, 40, 40], 2)),
                Png,
            ),
            Expect::Works,
        ),
    ]
}

/// Each bad input through `add --images` (a folder holding only it) and
/// `segment`: it works, or the error names the file; never a panic or OOM.
/// Prints the table of `docs/reliability.md` (run with `--nocapture`).
#[test]
fn bad_images_work_or_fail_clearly_in_add_and_segment() {
    let Some(kit) = Kit::new() else { return };
    let mut table = vec![
        "| input | add | segment |".to_string(),
        "|---|---|---|".to_string(),
    ];
    for (i, (name, bytes, expect)) in bad_inputs().into_iter().enumerate() {
        let dir = kit.data.path().join(format!("case-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, &bytes).unwrap();

        if name == "cmyk.jpg" {
            // CMYK is converted, not misread: the disc stays red.
            let rgb = ovdiff_models::features::preprocess::load_rgb(&file).unwrap();
            let p = rgb.get_pixel(rgb.width() / 2, rgb.height() / 2).0;
            assert!(p[0] > 150 && p[1] < 110 && p[2] < 110, "{p:?}");
        }
        let class = format!("case-{i}");
        let add = kit.add(&class, &dir, &[]);
        assert_no_crash(&format!("add {name}"), &add);
        let (add_out, add_err) = text(&add);

        let out_dir = kit.data.path().join(format!("out-{i}"));
        let seg = kit
            .cmd(&[
                "segment",
                file.to_str().unwrap(),
                "--classes",
                "red",
                "--out",
                out_dir.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_no_crash(&format!("segment {name}"), &seg);
        let (seg_out, seg_err) = text(&seg);

        match expect {
            Expect::Works => {
                assert!(
                    add.status.success() && add_out.contains("1 image used, 0 skipped"),
                    "add {name}: {add_out}{add_err}"
                );
                assert!(seg.status.success(), "segment {name}: {seg_out}{seg_err}");
                let stem = name.rsplit_once('.').unwrap().0;
                let labels = image::open(out_dir.join(format!("{stem}.png"))).unwrap();
                let src = image::ImageReader::open(&file)
                    .unwrap()
                    .with_guessed_format()
                    .unwrap()
                    .into_dimensions()
                    .unwrap();
                assert_eq!(
                    (labels.width(), labels.height()),
                    src,
                    "segment {name}: the label map has the input's size"
                );
            }
            Expect::Refused => {
                assert_eq!(add.status.code(), Some(2), "add {name}: {add_out}{add_err}");
                assert!(
                    add_err.contains("warning: skipping")
                        && add_err.contains(name)
                        && add_err.contains("no usable support images"),
                    "add {name}: {add_err}"
                );
                assert_eq!(seg.status.code(), Some(1), "segment {name}: {seg_err}");
                assert!(seg_err.contains(name), "segment {name}: {seg_err}");
            }
        }
        let add_cell = if add.status.success() {
            "works: 1 image used".to_string()
        } else {
            format!("exit 2: `{}`", first_error(&add_err, &file))
        };
        let seg_cell = if seg.status.success() {
            "works: label map at the input's size".to_string()
        } else {
            format!(
                "exit {}: `{}`",
                seg.status.code().unwrap_or(-1),
                first_error(&seg_err, &file)
            )
        };
        table.push(format!(
            "| {name} ({} bytes) | {add_cell} | {seg_cell} |",
            bytes.len()
        ));
    }
    eprintln!("{}", table.join("\n"));
}

/// Waits until `child` has the bank's `db` file open (and so holds the
/// bank), without opening the bank itself: an open from here could take the
/// lock at the moment the child opens, and the child would be refused.
/// Reads `/proc/PID/fd`; `false` when the child exits first.
fn wait_until_held(kit: &Kit, child: &mut std::process::Child) -> bool {
    let db = kit.bank().join("db").canonicalize().unwrap();
    let fds = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(entries) = std::fs::read_dir(&fds) {
            for e in entries.flatten() {
                if std::fs::read_link(e.path()).is_ok_and(|t| t == db) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// A long `add`: 40 support images.
fn long_add(kit: &Kit, class: &str) -> std::process::Child {
    let dir = support_dir(
        kit.data.path(),
        &format!("{class}-support"),
        [40, 230, 40],
        40,
    );
    kit.cmd(&[
        "add",
        class,
        "--images",
        dir.to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
        "--parts",
        "8",
        "--threads",
        "1",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Two writer processes: while one `add` runs, a second `add` (and an
/// `import`) fails at once with a message that names the bank and says it
/// is in use; the first completes.
#[test]
fn a_second_writer_process_fails_fast_while_an_add_runs() {
    let Some(kit) = Kit::new() else { return };
    let file = kit.data.path().join("red.ovbank");
    let out = kit
        .cmd(&["export", "-o", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let mut writer = long_add(&kit, "green");
    if !wait_until_held(&kit, &mut writer) {
        // The writer finished before a reader could see the lock: nothing
        // to test on this machine (it must be very fast).
        assert!(writer.wait().unwrap().success());
        eprintln!("SKIPPED: the add finished before a second process could start");
        return;
    }
    let blue = support_dir(kit.data.path(), "blue", [40, 40, 230], 2);
    let started = Instant::now();
    let second = kit.add("blue", &blue, &[]);
    let import = kit.sb.run(&[
        "import",
        file.to_str().unwrap(),
        "--into",
        kit.bank().to_str().unwrap(),
    ]);
    assert!(started.elapsed() < Duration::from_secs(10), "must not hang");
    for (what, out) in [("add", &second), ("import", &import)] {
        let (_, stderr) = text(out);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "bank {} is in use by another process",
                kit.bank().display()
            )),
            "{what}: {stderr}"
        );
    }
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "the writer failed: {:?}", text(&out));
    let names: Vec<String> = list_names(&kit).expect("the bank opens once the writer is done");
    assert_eq!(names, ["green", "red"]);
}

/// `list --json` names, or `None` when the bank is locked by a writer.
fn list_names(kit: &Kit) -> Option<Vec<String>> {
    let out = kit.cmd(&["list", "--json"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    if out.status.code() == Some(2) && stderr.contains("is in use by another process") {
        return None;
    }
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    Some(
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// Readers (`list`, `show`, `segment`) during a long write: sled lets one
/// process open a bank, so a reader is refused at once with a clear message
/// while the writer holds it, and otherwise sees the old state (no `green`)
/// or the new one (a complete `green`) — never a mix.
#[test]
fn readers_during_a_write_see_old_or_new_or_a_clear_refusal() {
    let Some(kit) = Kit::new() else { return };
    let query = kit.data.path().join("q.png");
    disc_image(140, 112, [40, 230, 40], 3).save(&query).unwrap();
    // The finished class, for comparison.
    let reference = {
        let mut w = long_add(&kit, "green");
        assert!(w.wait().unwrap().success());
        let out = kit.cmd(&["show", "green", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let out = kit.cmd(&["remove", "green"]).output().unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        v["prototypes"].clone()
    };
    let mut writer = long_add(&kit, "green");
    // Readers start once the writer holds the bank: a reader holding it at
    // the moment the writer opens would get the writer refused (the same
    // clear message; see docs/reliability.md).
    assert!(
        wait_until_held(&kit, &mut writer),
        "the writer ended before it opened the bank: {:?}",
        writer.wait_with_output().map(|o| text(&o))
    );
    let (mut refused, mut old, mut new) = (0, 0, 0);
    let mut round = 0;
    while writer.try_wait().unwrap().is_none() {
        round += 1;
        let t = Instant::now();
        let reader = match round % 3 {
            0 => vec!["list", "--json"],
            1 => vec!["show", "green", "--json"],
            _ => vec![
                "segment",
                query.to_str().unwrap(),
                "--classes",
                "red,green",
                "--json",
            ],
        };
        let mut c = kit.cmd(&reader);
        if round % 3 == 2 {
            c.args(["--out", kit.data.path().join("seg").to_str().unwrap()]);
        }
        let out = c.output().unwrap();
        assert_no_crash(&reader.join(" "), &out);
        let (stdout, stderr) = text(&out);
        if stderr.contains(&format!(
            "bank {} is in use by another process",
            kit.bank().display()
        )) {
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "a refusal must be fast"
            );
            refused += 1;
            continue;
        }
        // Not refused: the state is whole, old or new.
        let has_green = match round % 3 {
            0 => {
                let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                v.as_array().unwrap().iter().any(|c| c["name"] == "green")
            }
            1 => {
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                    assert_eq!(v["prototypes"], reference, "a complete class");
                    true
                } else {
                    assert!(stderr.contains("no class `green`"), "{stderr}");
                    false
                }
            }
            _ => {
                if out.status.success() {
                    true
                } else {
                    assert!(stderr.contains("green"), "{stderr}");
                    false
                }
            }
        };
        if has_green {
            new += 1
        } else {
            old += 1
        }
    }
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "the writer failed: {:?}", text(&out));
    eprintln!(
        "readers during the write: {refused} refused, {old} saw the old state, {new} the new"
    );
    assert!(
        refused + old + new > 0,
        "no reader ran while the writer did"
    );
    assert_eq!(
        list_names(&kit).expect("unlocked after the write"),
        ["green", "red"]
    );
}

/// Mounts a tmpfs of `size` at `dir`, or says why it cannot.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "ovdiff-test"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Tmpfs {
    /// Remounts it read-only, or says why it cannot.
    pub(crate) fn remount_read_only(&self) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` (a filler file written until ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

/// `verify --bank` digests (the lines after the summary).
fn digests(kit: &Kit, bank: &Path) -> String {
    let out = kit.sb.run(&["verify", "--bank", bank.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "verify: {stdout}{stderr}");
    stdout.lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// `add` and `export` onto a full disk: a clear error (exit 2, "No space
/// left on device", what to do next), no hang, no partial file, and the
/// bank as it was. Skipped with a message where mounting a tmpfs is not
/// permitted (not root, or no mount in this container).
#[test]
fn a_full_disk_fails_add_and_export_clearly_and_keeps_the_bank() {
    let Some(kit) = Kit::new() else { return };
    let mnt = kit.data.path().join("tmpfs");
    let tmpfs = match Tmpfs::mount(&mnt, "2m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED: mounting a 2 MiB tmpfs is not permitted here ({why})");
            return;
        }
    };
    let bank = mnt.join("bank");
    crate::harness::copy_dir(&kit.bank(), &bank);
    let before = digests(&kit, &bank);
    let support = support_dir(kit.data.path(), "green", [40, 230, 40], 12);

    let filler = fill(&mnt);
    let t = Instant::now();
    let out = kit.sb.run(&[
        "add",
        "green",
        "--images",
        support.to_str().unwrap(),
        "--bank",
        bank.to_str().unwrap(),
        "--encoder",
        "tiny-encoder",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(60), "no hang");
    assert!(
        stderr.contains("No space left on device") && stderr.contains("free some space"),
        "{stderr}"
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(digests(&kit, &bank), before, "the bank is as it was");

    let filler = fill(&mnt);
    let file = mnt.join("all.ovbank");
    let out = kit.sb.run(&[
        "export",
        "-o",
        file.to_str().unwrap(),
        "--bank",
        kit.bank().to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("No space left on device") && stderr.contains("free some space"),
        "{stderr}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["bank", "filler"], "no partial or temporary file");
    std::fs::remove_file(&filler).unwrap();
    drop(tmpfs);
}

/// `verify --bank`: a sound bank passes (exit 0) with per-class digests that
/// are equal for equal builds in different banks and differ otherwise; a
/// missing bank is a clear error and is not created.
#[test]
fn verify_bank_reads_back_classes_and_gives_build_independent_digests() {
    let Some(kit) = Kit::new() else { return };
    let red = support_dir(kit.data.path(), "red", [230, 40, 40], 2);
    let blue = support_dir(kit.data.path(), "blue", [40, 40, 230], 2);
    let other = kit.data.path().join("other");
    let add_to = |bank: &Path, class: &str, dir: &Path| {
        let out = add_tiny(&kit.sb, bank, class, dir, &[]);
        assert!(out.status.success(), "{:?}", text(&out));
    };
    // In `other`, `red` gets another build id and a later time.
    add_to(&other, "blue", &blue);
    add_to(&other, "red", &red);
    let json = |bank: &Path| {
        let out = kit
            .sb
            .run(&["verify", "--bank", bank.to_str().unwrap(), "--json"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        v
    };
    let (a, b) = (json(&kit.bank()), json(&other));
    let digest = |v: &serde_json::Value, name: &str| {
        v["report"]["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["digest"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(digest(&a, "red"), digest(&b, "red"));
    assert_ne!(digest(&b, "red"), digest(&b, "blue"));
    // 2 images, 4 parts: class 1+1, instance 2+2, part 4+4
    assert_eq!(a["report"]["classes"][0]["prototypes"], 14);
    assert!(a["problems"].as_array().unwrap().is_empty());

    let missing = kit.data.path().join("nope");
    let out = kit.sb.run(&["verify", "--bank", missing.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!missing.exists(), "verify must not create a bank");
}
