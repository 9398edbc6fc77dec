#!/usr/bin/env python3
"""Expose a Stable Diffusion UNet's cross-attention probabilities as graph
outputs, so that `ovdiff-bank` can build OVDiff's attribution maps.

    python3 scripts/expose_attention.py EXPORT_DIR [--pattern SUBSTRING] [--dry-run]

EXPORT_DIR is a diffusion export in the layout `optimum-cli export onnx`
writes (model_index.json, unet/, text_encoder/, vae_decoder/, ...). The
script edits only the UNet folder:

  unet/model.onnx     every cross-attention Softmax output becomes a graph
                      output as well (the computation is unchanged). The graph
                      is read without its external data: the weights in
                      unet/model.onnx_data (gigabytes for a real UNet) are
                      neither loaded nor rewritten, and stay referenced.
  unet/manifest.toml  a model manifest (schema/model-manifest-v1.toml, role
                      unet) listing every file of unet/ with its sha256, the
                      graph's inputs and outputs, and an [attribution] table
                      naming the exposed tensors. Its presence is what makes
                      `ovdiff-bank` read the maps while sampling.

Cross-attention Softmax nodes are those of op type Softmax whose node name
contains `/attn2/` (diffusers names cross-attention `attn2` and
self-attention `attn1`; torch's exporter keeps the module path in the node
name, e.g. `/down_blocks.0/attentions.0/transformer_blocks.0/attn2/Softmax`).
`--pattern` replaces that substring. Each exposed tensor must have rank 4,
[B, heads, L, T] (torch scaled_dot_product_attention exports), or rank 3,
[B*heads, L, T] (older diffusers attention processors): L is the number of
positions of that block's latent grid, T the number of text tokens.

Both files are written atomically (a temporary file in unet/, fsync,
rename); model.onnx first, after removing a manifest that would no longer
match it, so an interrupted run leaves a plain export behind and a re-run
finishes the job. Re-running on an exposed export changes nothing: outputs
that already exist are kept, and the same input gives byte-identical files.
`--dry-run` reports what would be exposed and writes nothing.

Workflow with real weights
--------------------------
    optimum-cli export onnx --model <sd model> DIR
    python3 scripts/expose_attention.py DIR
    ovdiff-bank add CLASS --generator DIR

`ovdiff-bank` then reads the cross-attention probabilities at every
denoising step and uses the class tokens' attribution map to split each
support image into foreground and background.

Every Softmax under /attn2/ is exposed by default (16 in SD 1.x); each is
copied out of the session every step, so `--pattern` (for example
`/up_blocks.1/`, `/up_blocks.1/attentions.0/transformer_blocks.0/attn2/`)
can keep only the blocks wanted.

The script needs the `onnx` Python package (numpy comes with it);
`scripts/setup` installs it in <home>/setup-venv, where <home> is
$OVDIFF_HOME, else ${XDG_DATA_HOME:-~/.local/share}/ovdiff-bank:

    <home>/setup-venv/bin/python scripts/expose_attention.py DIR

Exit status: 0 on success, 2 when the export cannot be used (no UNet graph,
no matching Softmax node, an unexpected rank or element type).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

try:
    import onnx
except ImportError:  # reported by main(), after --help had its chance
    onnx = None

DEFAULT_PATTERN = "/attn2/"
UNET = "unet"
GRAPH_FILE = "model.onnx"
MANIFEST_FILE = "manifest.toml"
SAMPLE_INPUT = "sample"
MAIN_OUTPUT = "out_sample"
TMP_SUFFIX = ".expose-tmp"
SCRIPT = "scripts/expose_attention.py"

# onnx.TensorProto element types the manifest can name (onnx may be missing
# at import time, so the numbers are spelled out).
FLOAT, INT32, INT64, FLOAT16 = 1, 6, 7, 10
DTYPES = {FLOAT: "f32", FLOAT16: "f16", INT64: "i64", INT32: "i32"}
PROB_DTYPES = (FLOAT, FLOAT16)
# External tensors up to this many elements are read for shape inference.
SMALL_TENSOR = 4096


class ExposeError(Exception):
    """The export cannot be used as asked; the message says why (exit 2)."""


@dataclass(frozen=True)
class Exposed:
    """One cross-attention probability tensor."""

    name: str           # tensor name (the Softmax node's output)
    node: str           # Softmax node name
    elem_type: int      # onnx.TensorProto element type
    dims: tuple         # int (fixed) or str (symbolic) per dimension
    already: bool       # it was a graph output before this run


@dataclass(frozen=True)
class Result:
    unet_dir: Path
    exposed: tuple      # Exposed, graph order
    model_changed: bool
    manifest: str | None  # the manifest text (None on a dry run)


def ovdiff_home() -> Path:
    """Where scripts/setup installs (same rule as scripts/setup)."""
    home = os.environ.get("OVDIFF_HOME")
    if home:
        return Path(home)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "ovdiff-bank"


# --------------------------------------------------------------------------
# TOML


def toml_str(s: str) -> str:
    """A TOML basic string (escapes what TOML requires, nothing else)."""
    out = []
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


# --------------------------------------------------------------------------
# graph


def load_graph(path: Path):
    """The ModelProto without its external data (tensors keep their
    external_data references, so serialising it keeps them valid)."""
    if not path.is_file():
        raise ExposeError(f"{path}: no such file (expected an `optimum-cli export onnx` "
                          f"folder with {UNET}/{GRAPH_FILE})")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ExposeError(f"{path}: not a readable ONNX model ({e})") from e


def with_small_tensors(model, base_dir: Path):
    """A copy of `model` for shape inference: external tensors of at most
    SMALL_TENSOR elements (shape operands such as Reshape targets or Resize
    scales, when an export stored those outside too) read into it; the big
    weights stay external. The external data files are only read."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    tensors = list(copy.graph.initializer)
    for node in copy.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        n = 1
        for d in t.dims:
            n *= d
        if n > SMALL_TENSOR:
            continue
        try:
            onnx.external_data_helper.load_external_data_for_tensor(t, str(base_dir))
        except Exception:
            continue  # inference just knows less
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    return copy


def inferred_value_infos(model, base_dir: Path) -> dict:
    """name -> ValueInfoProto from ONNX shape inference on the graph without
    its big weights (data propagation first, plain inference if that fails,
    nothing if both fail), plus the graph's own inputs and outputs."""
    infos = {}
    small = with_small_tensors(model, base_dir)
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(small, strict_mode=False,
                                                         data_prop=data_prop)
        except Exception:
            continue
        for vi in inferred.graph.value_info:
            infos[vi.name] = vi
        break
    for vi in list(model.graph.input) + list(model.graph.output):
        if known_dims(vi) is not None or vi.name not in infos:
            infos[vi.name] = vi  # what the graph declares wins over inference
    return infos


def known_dims(vi) -> tuple | None:
    """Dims of a ValueInfoProto's tensor type: int, str, or None (unknown);
    None when the rank itself is unknown."""
    if vi is None or not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param and not d.dim_param.startswith("unk__"):
            # unk__N names are made up by shape inference: not worth keeping
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def name_dims(dims: tuple, prefix: str) -> tuple:
    return tuple(f"{prefix}_d{i}" if d is None else d for i, d in enumerate(dims))


def elem_type_of(vi) -> int:
    if vi is None or not vi.type.HasField("tensor_type"):
        return 0
    return vi.type.tensor_type.elem_type


def find_cross_attention(model, pattern: str, path: Path) -> tuple:
    """The Exposed tensors of every matching Softmax node, in graph order."""
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    matched = [n for n in softmax if pattern in n.name]
    if not matched:
        examples = ", ".join(repr(n.name) for n in softmax[:3] if n.name)
        raise ExposeError(
            f"{path}: no Softmax node whose name contains {pattern!r}; the graph has "
            f"{len(softmax)} Softmax node{'s' if len(softmax) != 1 else ''}"
            + (f" (e.g. {examples})" if examples else "")
            + ". Pass --pattern with a substring of the cross-attention Softmax names.")
    infos = inferred_value_infos(model, path.parent)
    outputs = {o.name for o in model.graph.output}
    sample = next((i for i in model.graph.input if i.name == SAMPLE_INPUT), None)
    fallback = elem_type_of(sample)
    found = []
    seen = set()
    for node in matched:
        if len(node.output) != 1 or not node.output[0]:
            raise ExposeError(f"{path}: Softmax node {node.name!r} has no single output")
        name = node.output[0]
        if name in seen:
            continue
        seen.add(name)
        vi = infos.get(name)
        elem = elem_type_of(vi) or fallback
        if elem not in PROB_DTYPES:
            raise ExposeError(
                f"{path}: {name!r} has element type "
                f"{onnx.TensorProto.DataType.Name(elem) if elem else 'unknown'}; "
                "cross-attention probabilities must be float32 or float16")
        dims = known_dims(vi)
        if dims is None:
            raise ExposeError(
                f"{path}: shape inference could not tell the rank of {name!r} (node "
                f"{node.name!r}); expected 4 ([B, heads, L, T]) or 3 ([B*heads, L, T])")
        if len(dims) not in (3, 4):
            raise ExposeError(
                f"{path}: {name!r} (node {node.name!r}) has rank {len(dims)}, not a "
                "cross-attention probability layout: expected rank 4 ([B, heads, L, T], "
                "torch SDPA exports) or rank 3 ([B*heads, L, T], older diffusers attention "
                "processors). Narrow the match with --pattern.")
        found.append(Exposed(name=name, node=node.name, elem_type=elem,
                             dims=name_dims(dims, f"attn{len(found)}"), already=name in outputs))
    return tuple(found)


def previously_exposed(manifest_path: Path) -> list[str]:
    """The outputs an earlier run exposed (its manifest's [attribution])."""
    if not manifest_path.is_file():
        return []
    try:
        import tomllib
        m = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    except (ImportError, ValueError, OSError):
        return []
    names = m.get("attribution", {}).get("cross_attention_outputs", [])
    return [n for n in names if isinstance(n, str)]


def drop_stale_outputs(model, exposed: tuple, earlier: list[str]) -> list[str]:
    """Remove from graph.output what an earlier run exposed that the current
    pattern no longer matches (a re-run with a narrower --pattern), so that
    ONNX Runtime stops copying it out every step. Returns the names dropped."""
    keep = {e.name for e in exposed}
    stale = [n for n in earlier if n not in keep and n != MAIN_OUTPUT]
    dropped = []
    for i in reversed(range(len(model.graph.output))):
        name = model.graph.output[i].name
        if name in stale:
            del model.graph.output[i]
            dropped.append(name)
    return sorted(dropped)


def add_outputs(model, exposed: tuple) -> bool:
    """Append the new ones to graph.output; True if the graph changed."""
    changed = False
    for e in exposed:
        if not e.already:
            model.graph.output.append(onnx.helper.make_tensor_value_info(e.name, e.elem_type,
                                                                         list(e.dims)))
            changed = True
    return changed


def tensor_spec(vi, prefix: str) -> tuple:
    elem = elem_type_of(vi)
    if elem not in DTYPES:
        kind = onnx.TensorProto.DataType.Name(elem) if elem else "no tensor type"
        raise ExposeError(f"graph tensor {vi.name!r} is {kind}; a model manifest can only "
                          f"describe {', '.join(DTYPES.values())} tensors")
    dims = known_dims(vi)
    if dims is None:
        raise ExposeError(f"graph tensor {vi.name!r} declares no shape")
    return vi.name, DTYPES[elem], name_dims(dims, prefix)


def graph_specs(model, exposed: tuple) -> tuple[list, list]:
    """(inputs, outputs) for the manifest as (name, dtype, dims): every real
    input (not an initializer; the Rust side wants them all), then
    out_sample and the exposed tensors (other outputs, if any, need not be
    declared)."""
    inits = {t.name for t in model.graph.initializer}
    ins = [tensor_spec(vi, f"in{i}") for i, vi in enumerate(model.graph.input)
           if vi.name not in inits]
    main = next((vi for vi in model.graph.output if vi.name == MAIN_OUTPUT), None)
    if main is None:
        raise ExposeError(f"the graph has no `{MAIN_OUTPUT}` output; is this a diffusers "
                          "UNet export?")
    outs = [tensor_spec(main, "out")]
    outs += [(e.name, DTYPES[e.elem_type], e.dims) for e in exposed]
    return ins, outs


# --------------------------------------------------------------------------
# files


def is_our_tmp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)


def bundle_files(unet_dir: Path) -> list[str]:
    """Every file under unet/ but the manifest (and our own temporary files),
    as sorted POSIX paths relative to unet/."""
    rels = []
    for p in unet_dir.rglob("*"):
        # hidden files are not part of the bundle (ovdiff-bank's fingerprint
        # skips them too); this also skips our own temporary files
        hidden = any(part.startswith(".") for part in p.relative_to(unet_dir).parts)
        if p.is_file() and not hidden and not is_our_tmp(p):
            rel = p.relative_to(unet_dir).as_posix()
            if rel != MANIFEST_FILE:
                rels.append(rel)
    return sorted(rels)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, rename over it
    (keeping the old file's permission bits)."""
    mode = None
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


# --------------------------------------------------------------------------
# manifest


def render_manifest(export_name: str, files: list, ins: list, outs: list,
                    exposed: tuple) -> str:
    n = len(exposed)
    L = [
        f"# Written by {SCRIPT}; model-manifest-v1.",
        "manifest_version = 1",
        f"name = {toml_str(UNET)}",
        'version = "1"',
        'role = "unet"',
        "description = " + toml_str(
            f"UNet of {export_name} with its {n} cross-attention map{'s' if n != 1 else ''} "
            f"exposed by {SCRIPT}"),
        "",
        "[provenance]",
        "source = " + toml_str(f"{export_name}/{UNET}, cross-attention outputs exposed by {SCRIPT}"),
        'licence = "that of the exported model"',
    ]
    for rel, sha in files:
        L += ["", "[[files]]", f"path = {toml_str(rel)}", f"sha256 = {toml_str(sha)}"]
    L += ["", "[graph]", f"file = {toml_str(GRAPH_FILE)}"]
    for table, rows in (("inputs", ins), ("outputs", outs)):
        for name, dtype, dims in rows:
            L += ["", f"[[{table}]]", f"name = {toml_str(name)}", f"dtype = {toml_str(dtype)}",
                  f"shape = {toml_value(list(dims))}"]
    L += ["", "[attribution]", "cross_attention_outputs = ["]
    L += [f"  {toml_str(e.name)}," for e in exposed]
    L += ["]"]
    return "\n".join(L) + "\n"


def check_manifest(text: str, exposed: tuple) -> None:
    """Parse what we are about to write (tomllib is in Python >= 3.11)."""
    try:
        import tomllib
    except ImportError:
        return
    try:
        m = tomllib.loads(text)
        ok = (m["role"] == "unet" and m["graph"]["file"] == GRAPH_FILE
              and m["attribution"]["cross_attention_outputs"] == [e.name for e in exposed]
              and all(e.name in [o["name"] for o in m["outputs"]] for e in exposed)
              and GRAPH_FILE in [f["path"] for f in m["files"]])
    except (ValueError, KeyError, TypeError) as err:
        raise ExposeError(f"internal error: the manifest about to be written does not parse "
                          f"back ({err}); the manifest was not written") from None
    if not ok:
        raise ExposeError("internal error: the manifest about to be written does not describe "
                          "the exposed outputs; the manifest was not written")


# --------------------------------------------------------------------------
# the whole job


def expose(export_dir: Path, pattern: str = DEFAULT_PATTERN, dry_run: bool = False,
           export_name: str | None = None, log=print) -> Result:
    """Expose the cross-attention outputs of `export_dir`/unet and write its
    manifest (nothing is written on a dry run). `export_name` (default: the
    folder's name) goes into the manifest's description and provenance."""
    if onnx is None:
        raise ExposeError("the onnx Python package is missing")
    export_dir = Path(export_dir)
    if export_name is None:
        export_name = export_dir.resolve().name
    unet_dir = export_dir / UNET
    graph_path = unet_dir / GRAPH_FILE
    model = load_graph(graph_path)
    exposed = find_cross_attention(model, pattern, graph_path)
    for e in exposed:
        dims = ", ".join(str(d) for d in e.dims)
        state = "already an output" if e.already else ("would expose" if dry_run else "exposed")
        log(f"{state}: {e.name} rank {len(e.dims)} {DTYPES[e.elem_type]}[{dims}]")
    try:
        ins, outs = graph_specs(model, exposed)
    except ExposeError as e:
        raise ExposeError(f"{graph_path}: {e}") from None
    manifest_path = unet_dir / MANIFEST_FILE
    dropped = drop_stale_outputs(model, exposed, previously_exposed(manifest_path))
    for name in dropped:
        log(f"{'would drop' if dry_run else 'dropped'} (no longer matched): {name}")
    changed = add_outputs(model, exposed) or bool(dropped)
    new = sum(not e.already for e in exposed)
    if dry_run:
        log(f"dry run: would write {graph_path} ({new} new output{'s' if new != 1 else ''})"
            if changed else f"dry run: {graph_path} already exposes them all, left as is")
        log(f"dry run: would write {manifest_path} listing "
            f"{', '.join(bundle_files(unet_dir))}")
        return Result(unet_dir, exposed, changed, None)
    if changed:
        data = model.SerializeToString()
        # The old manifest no longer describes the graph: drop it first, so
        # that an interruption leaves a plain export rather than a bad hash.
        if manifest_path.exists():
            manifest_path.unlink()
            fsync_dir(unet_dir)
        atomic_write(graph_path, data)
        log(f"wrote {graph_path} ({new} new output{'s' if new != 1 else ''}, "
            f"{len(model.graph.output)} in all)")
    else:
        log(f"{graph_path} already exposes them all, left as is")
    files = [(rel, sha256_file(unet_dir / rel)) for rel in bundle_files(unet_dir)]
    text = render_manifest(export_name, files, ins, outs, exposed)
    check_manifest(text, exposed)
    atomic_write(manifest_path, text.encode("utf-8"))
    log(f"wrote {manifest_path} ({len(files)} file{'s' if len(files) != 1 else ''}, "
        f"{len(exposed)} cross-attention output{'s' if len(exposed) != 1 else ''})")
    return Result(unet_dir, exposed, changed, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="expose_attention.py",
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir", metavar="EXPORT_DIR", type=Path,
                    help="an `optimum-cli export onnx` Stable Diffusion folder (holds unet/)")
    ap.add_argument("--pattern", default=DEFAULT_PATTERN, metavar="SUBSTRING",
                    help=f"substring of the Softmax node names to expose (default {DEFAULT_PATTERN})")
    ap.add_argument("--dry-run", action="store_true",
                    help="report what would be exposed and written; write nothing")
    args = ap.parse_args(argv)
    if onnx is None:
        py = ovdiff_home() / "setup-venv" / "bin" / "python"
        print(f"expose_attention.py: error: the `onnx` Python package is not installed for "
              f"{sys.executable}; run this script with {py} (scripts/setup installs onnx "
              f"there): {shlex.join([str(py), sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))}",
              file=sys.stderr)
        return 2
    if not args.pattern:
        ap.error("--pattern must not be empty")
    try:
        expose(args.export_dir, args.pattern, args.dry_run)
    except ExposeError as e:
        print(f"expose_attention.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
