//! Test harness: a throw-away `<home>` per test, and a runner for the real `ovdiff-bank` binary.
//!
//! Tests that need ONNX Runtime or the real `dinov2-s14` bundle read them
//! from the home that `scripts/setup` filled. When they are missing, the
//! test is skipped with a message, except under `CI=true`, where it fails:
//! CI runs the set-up first, so a missing model there is a real failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ovdiff_core::Home;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed fixture path.
pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures").join(rel)
}

/// The home `scripts/setup` installed into.
pub fn installed_home() -> Home {
    Home::from_env()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `true` when `path` exists. Otherwise: under CI, panic; elsewhere, print
/// why the test is skipped and return `false`.
pub fn require(path: &Path, what: &str) -> bool {
    if path.exists() {
        return true;
    }
    let msg = format!(
        "{what} is missing at {}; run `scripts/setup` first",
        path.display()
    );
    if in_ci() {
        panic!("CI=true and {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A test that cannot run here (no permission to mount, a missing tool):
/// under CI, a failure; elsewhere, a message (the caller then returns).
pub fn skip(why: &str) {
    if in_ci() {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A temporary `<home>` whose `lib/` points at the installed ONNX Runtime.
pub struct Sandbox {
    /// The temporary home folder.
    pub home: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox with ONNX Runtime, or `None` (skip) when it is not installed.
    pub fn with_runtime() -> Option<Sandbox> {
        let lib = installed_home().lib_dir();
        if !require(&lib.join("libonnxruntime.so"), "ONNX Runtime") {
            return None;
        }
        let sb = Sandbox::bare();
        std::os::unix::fs::symlink(&lib, sb.home.path().join("lib")).unwrap();
        std::fs::create_dir_all(sb.home.path().join("models")).unwrap();
        Some(sb)
    }

    /// A sandbox with nothing installed.
    pub fn bare() -> Sandbox {
        Sandbox {
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Make an installed bundle (or a fixture folder) visible under `models/`.
    pub fn link_model(&self, name: &str, dir: &Path) {
        std::os::unix::fs::symlink(dir, self.home.path().join("models").join(name)).unwrap();
    }

    /// The `ovdiff-bank` binary with this home.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ovdiff-bank"));
        c.env("OVDIFF_HOME", self.home.path())
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("OVDIFF_FAILPOINT");
        c
    }

    /// Run with `args` and return the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
}

/// `add CLASS --images SAMPLES/support/CLASS --bank BANK` for each of
/// `classes` (the sample kit of `scripts/setup`, the default encoder).
pub fn add_sample_classes(sb: &Sandbox, bank: &Path, samples: &Path, classes: &[&str]) {
    for class in classes {
        let dir = samples.join("support").join(class);
        let out = sb.run(&[
            "add",
            class,
            "--images",
            dir.to_str().unwrap(),
            "--bank",
            bank.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
}

/// Stdout and stderr as text, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copy a folder tree (fixtures are copied before a test changes them).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
