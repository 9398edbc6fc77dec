#!/usr/bin/env python3
"""Write a random-weight CLIP ViT-B/16 in the optimum export layout, to time the CLIP pre-filter.

No CLIP weights ship with ovdiff-bank (and none are needed to measure cost):
this builds, with onnx.helper and numpy only, a joint `model.onnx` with the
shapes of openai/clip-vit-base-patch16 (text: 12 layers, width 512, 8 heads,
77 positions, causal, pooled at the end token; image: 224 px, patch 16,
12 layers, width 768, 12 heads; both projected to 512) and random weights.
Its answers are meaningless; its run time is that of the real model. The
tokenizer files are CLIP's real ones (from <home>/models/clip-vocab, which
scripts/setup installs), so prompts have their real lengths.

    python3 examples/clip_shaped_export.py OUT_DIR
    cargo run --example bench -- prefilter OUT_DIR

About 600 MB is written. Deterministic (fixed seed).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
VOCAB = 49408
CTX = 77
PROJ = 512

rng = np.random.default_rng(20240601)
inits: list = []
nodes: list = []
counter = [0]


def name(prefix: str) -> str:
    counter[0] += 1
    return f"{prefix}_{counter[0]}"


def weight(shape, scale=0.02, value=None) -> str:
    n = name("w")
    arr = value if value is not None else (rng.standard_normal(shape) * scale).astype(np.float32)
    inits.append(numpy_helper.from_array(np.asarray(arr), n))
    return n


def node(op, inputs, **attrs) -> str:
    out = name(op.lower())
    nodes.append(helper.make_node(op, inputs, [out], **attrs))
    return out


def layer_norm(x, width):
    return node("LayerNormalization", [x, weight(None, value=np.ones(width, np.float32)),
                                       weight(None, value=np.zeros(width, np.float32))], axis=-1)


def linear(x, fan_in, fan_out):
    return node("Add", [node("MatMul", [x, weight((fan_in, fan_out))]),
                        weight(None, value=np.zeros(fan_out, np.float32))])


def attention(x, width, heads, bias=None):
    hd = width // heads
    split = weight(None, value=np.array([0, 0, heads, hd], np.int64))

    def proj(perm):
        return node("Transpose", [node("Reshape", [linear(x, width, width), split])], perm=perm)

    q, k, v = proj([0, 2, 1, 3]), proj([0, 2, 3, 1]), proj([0, 2, 1, 3])
    s = node("Mul", [node("MatMul", [q, k]), weight(None, value=np.array(hd ** -0.5, np.float32))])
    if bias is not None:
        s = node("Add", [s, bias])
    a = node("MatMul", [node("Softmax", [s], axis=-1), v])
    a = node("Reshape", [node("Transpose", [a], perm=[0, 2, 1, 3]),
                         weight(None, value=np.array([0, 0, width], np.int64))])
    return linear(a, width, width)


def quick_gelu(x):
    return node("Mul", [x, node("Sigmoid", [node("Mul", [x, weight(None, value=np.array(1.702, np.float32))])])])


def block(x, width, heads, bias=None):
    x = node("Add", [x, attention(layer_norm(x, width), width, heads, bias)])
    h = linear(quick_gelu(linear(layer_norm(x, width), width, 4 * width)), 4 * width, width)
    return node("Add", [x, h])


def text_tower() -> str:
    width, heads = 512, 8
    x = node("Gather", [weight((VOCAB, width)), "input_ids"], axis=0)
    seq = node("Unsqueeze", [node("Gather", [node("Shape", ["input_ids"]),
                                            weight(None, value=np.array(1, np.int64))], axis=0),
                             weight(None, value=np.array([0], np.int64))])
    zero = weight(None, value=np.array([0], np.int64))
    x = node("Add", [x, node("Slice", [weight((CTX, width)), zero, seq, zero])])
    causal = np.triu(np.full((CTX, CTX), -1e9, np.float32), 1)
    c = node("Slice", [node("Slice", [weight(None, value=causal), zero, seq, zero]), zero, seq,
                       weight(None, value=np.array([1], np.int64))])
    m = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    m = node("Mul", [node("Sub", [weight(None, value=np.array(1.0, np.float32)), m]),
                     weight(None, value=np.array(-1e9, np.float32))])
    m = node("Unsqueeze", [m, weight(None, value=np.array([1, 2], np.int64))])  # [B, 1, 1, L]
    bias = node("Add", [c, m])
    for _ in range(12):
        x = block(x, width, heads, bias)
    x = layer_norm(x, width)
    eos = node("ArgMax", ["input_ids"], axis=1, keepdims=1)  # [B, 1]
    pooled = node("GatherND", [x, eos], batch_dims=1)  # [B, width]
    return node("MatMul", [pooled, weight((width, PROJ))])


def vision_tower() -> str:
    width, heads, patch, size = 768, 12, 16, 224
    x = node("Conv", ["pixel_values", weight((width, 3, patch, patch))], strides=[patch, patch])
    x = node("Transpose", [node("Reshape", [x, weight(None, value=np.array([0, width, -1], np.int64))])],
             perm=[0, 2, 1])
    batch = node("Slice", [node("Shape", ["pixel_values"]), weight(None, value=np.array([0], np.int64)),
                           weight(None, value=np.array([1], np.int64))])
    shape = node("Concat", [batch, weight(None, value=np.array([1, width], np.int64))], axis=0)
    cls = node("Expand", [weight((1, 1, width)), shape])
    x = node("Concat", [cls, x], axis=1)
    x = node("Add", [x, weight((1 + (size // patch) ** 2, width))])
    x = layer_norm(x, width)
    for _ in range(12):
        x = block(x, width, heads)
    first = node("Gather", [x, weight(None, value=np.array(0, np.int64))], axis=1)
    return node("MatMul", [layer_norm(first, width), weight((width, PROJ))])


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ.get("OVDIFF_HOME") or
                Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "ovdiff-bank")
    for f in ["vocab.json", "merges.txt"]:
        shutil.copy(home / "models/clip-vocab" / f, out / f)
    t, i = text_tower(), vision_tower()
    nodes.append(helper.make_node("Identity", [t], ["text_embeds"]))
    nodes.append(helper.make_node("Identity", [i], ["image_embeds"]))
    tn = node("Div", [t, node("ReduceL2", [t], axes=[1], keepdims=1)])
    im = node("Div", [i, node("ReduceL2", [i], axes=[1], keepdims=1)])
    lpi = node("Mul", [node("MatMul", [im, node("Transpose", [tn], perm=[1, 0])]),
                       weight(None, value=np.array(100.0, np.float32))])
    nodes.append(helper.make_node("Identity", [lpi], ["logits_per_image"]))
    nodes.append(helper.make_node("Transpose", [lpi], ["logits_per_text"], perm=[1, 0]))
    f = TensorProto.FLOAT
    g = helper.make_graph(
        nodes, "clip_vit_b16_shaped",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["text_batch_size", "sequence_length"]),
         helper.make_tensor_value_info("pixel_values", f, ["image_batch_size", 3, 224, 224]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["text_batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("logits_per_image", f, ["image_batch_size", "text_batch_size"]),
         helper.make_tensor_value_info("logits_per_text", f, ["text_batch_size", "image_batch_size"]),
         helper.make_tensor_value_info("text_embeds", f, ["text_batch_size", PROJ]),
         helper.make_tensor_value_info("image_embeds", f, ["image_batch_size", PROJ])],
        inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="clip_shaped_export.py")
    m.ir_version = 8
    onnx.save_model(m, str(out / "model.onnx"))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224},
        "image_mean": MEAN, "image_std": STD}, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
