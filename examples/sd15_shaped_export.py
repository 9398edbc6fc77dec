#!/usr/bin/env python3
"""Write a random-weight Stable Diffusion 1.5 in the `optimum-cli export onnx`
layout, to time `ovdiff-bank add --generator` with real-sized models.

No Stable Diffusion weights ship with ovdiff-bank (and none are needed to
measure cost): this builds, with onnx.helper and numpy only, the three graphs
of an SD 1.5 export with SD 1.5's shapes and random weights. Its images are
noise; its run time is that of the real model (run time does not depend on
the weight values). The tokenizer files are CLIP's real ones (from
<home>/models/clip-vocab, which scripts/setup installs; <home> is
$OVDIFF_HOME, else ${XDG_DATA_HOME:-~/.local/share}/ovdiff-bank), so prompts
have their real lengths.

    <home>/setup-venv/bin/python examples/sd15_shaped_export.py OUT_DIR [--check]
    python3 scripts/expose_attention.py OUT_DIR      # optional: attention maps
    ovdiff-bank add CLASS --generator OUT_DIR

`--check` then runs onnx.checker on each graph and each graph once with
onnxruntime at 512 px (text encoder batch 2, UNet batch 2 on 64x64 latents,
VAE decoder batch 1) and prints the times (about 6 GB of memory at peak).

About 4.1 GB is written (unet/model.onnx_data alone 3.4 GB, generated and
written tensor by tensor, never all in memory; about 20 s). Deterministic (fixed seed,
sorted JSON): a re-run rewrites every file byte for byte.

Files
-----
model_index.json                  StableDiffusionPipeline
scheduler/scheduler_config.json   SD 1.5's PNDM config
tokenizer/                        CLIP's vocab.json + merges.txt,
                                  special_tokens_map.json, tokenizer_config.json
text_encoder/model.onnx           CLIP ViT-L/14 text encoder (123M parameters):
                                  input_ids int64 [batch_size, sequence_length]
                                  -> last_hidden_state f32 [batch_size,
                                  sequence_length, 768], pooler_output f32
                                  [batch_size, 768] (at the end token, the
                                  highest id, as CLIP pools)
unet/model.onnx + model.onnx_data UNet2DConditionModel (860M parameters):
                                  sample f32 [batch_size, 4, height, width],
                                  timestep f32 [], encoder_hidden_states f32
                                  [batch_size, sequence_length, 768]
                                  -> out_sample f32 [batch_size, 4, height, width]
vae_decoder/model.onnx            AutoencoderKL decoder (49M parameters):
                                  latent_sample f32 [batch_size, 4,
                                  latent_height, latent_width] -> sample f32
                                  [batch_size, 3, 8 latent_height, 8 latent_width]
*/config.json                     SD 1.5's configs (sample_size 64,
                                  cross_attention_dim 768, scaling_factor
                                  0.18215, ...)

The UNet
--------
SD 1.5's architecture, module for module: time_proj (sinusoidal 320, cos
first) -> time_embedding (linear 320->1280, SiLU, linear 1280->1280); conv_in
4->320; down_blocks 0-2 CrossAttnDownBlock2D (2 resnets + 2 transformers,
then a stride-2 3x3 conv), down_blocks.3 DownBlock2D (2 resnets); mid_block
(resnet, transformer, resnet); up_blocks.0 UpBlock2D, up_blocks 1-3
CrossAttnUpBlock2D (3 resnets each, each fed the concatenation with one skip
tensor of the down path; 2x nearest upsampling + 3x3 conv after blocks 0-2);
GroupNorm(32) + SiLU + conv_out 320->4. A resnet is GroupNorm, SiLU, conv3x3,
+ linear(SiLU(temb)), GroupNorm, SiLU, conv3x3, + the input (through a 1x1
conv where the width changes). A transformer is GroupNorm, 1x1 proj_in, one
block of LayerNorm + self-attention (attn1), LayerNorm + cross-attention
(attn2, keys and values from the 768-wide text embeddings), LayerNorm + GEGLU
feed-forward (C -> 2x4C, exact erf GELU, 4C -> C), then 1x1 proj_out and the
residual. 8 heads everywhere. The parameter count is SD 1.5's exactly
(859,520,964) and so are the multiply-adds of every convolution, linear layer
and attention product (the script prints both).

Nodes are named as torch's exporter names them in a diffusers export,
`/<module path>/<Op>[_n]`, with outputs `<node name>_output_0`; in
particular every attention Softmax is
`/down_blocks.0/attentions.0/transformer_blocks.0/attn{1,2}/Softmax` and
the like, over [batch, 8, L, T] (T = the 77 tokens for attn2), which is what
scripts/expose_attention.py looks for (16 cross-attention maps).

Simplifications (none changes the work done by more than a few percent)
-----------------------------------------------------------------------
* Weights are N(0, 1/fan_in) (embeddings N(0, 0.02^2)), biases 0, norm
  scales 1 and shifts 0: activations stay bounded, outputs finite.
* GroupNorm is exported the way torch exports it at opset 17 (Reshape to
  [B, 32, -1], InstanceNormalization, Reshape back, scale, shift);
  attention as MatMul, Mul by 1/sqrt(head dim), Softmax, MatMul, no fused
  kernel (torch's export of scaled_dot_product_attention scales q and k
  separately instead).
* The time embedding is computed for one timestep ([1, 1280]) and
  broadcast over the batch, instead of being expanded to the batch first.
* The text encoder's causal mask is an additive [77, 77] constant; no
  attention_mask input (SD exports have none).
* Linear weights are stored [in, out] for MatMul under their module names
  (`...to_q.weight`); torch's exporter stores them transposed as
  `onnx::MatMul_NNNN`.
* Dropout and everything the export does not run are left out.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

SEED = 20240615
OPSET = 17
IR_VERSION = 8
PRODUCER = "sd15_shaped_export.py"

# Stable Diffusion 1.5
CTX = 77                      # text tokens
TEXT_WIDTH = 768              # CLIP ViT-L/14 text width = cross_attention_dim
TEXT_HEADS = 12
TEXT_LAYERS = 12
VOCAB = 49408
LATENT = 4
UNET_CHANNELS = [320, 640, 1280, 1280]
UNET_HEADS = 8
TIME_DIM = 1280
GROUPS = 32
VAE_CHANNELS = [128, 256, 512, 512]
VAE_SCALE = 8
SAMPLE_SIZE = 64              # latent side the MAC counts are for (512 px)
SD15_UNET_PARAMS = 859_520_964

DATA_FILE = "model.onnx_data"
EXTERNAL_MIN_BYTES = 1024     # smaller tensors stay in model.onnx (as onnx's saver does)
ALIGN = 4096                  # external tensors start on a page boundary
PROGRESS_BYTES = 512 << 20


class Graph:
    """Builds one graph: nodes named torch-style from a scope stack, weights
    drawn from `rng` and, when `data_dir` is given, written to
    `data_dir`/model.onnx_data as they are made (never all in memory)."""

    def __init__(self, label: str, rng: np.random.Generator, data_dir: Path | None = None):
        self.label = label
        self.rng = rng
        self.nodes: list = []
        self.inits: list = []
        self.scope: list[str] = []
        self.used: Counter = Counter()
        self.consts: dict = {}
        self.params = 0
        self.macs = 0          # multiply-adds at batch 1, SAMPLE_SIZE latents
        self.data_dir = data_dir
        self.data_size = 0
        self.next_report = PROGRESS_BYTES
        self.t0 = time.monotonic()
        if data_dir is not None:
            (data_dir / DATA_FILE).write_bytes(b"")

    @contextmanager
    def at(self, *parts: str):
        self.scope.extend(parts)
        try:
            yield
        finally:
            del self.scope[len(self.scope) - len(parts):]

    def op(self, op_type: str, inputs: list, outputs: int = 1, **attrs):
        base = "/" + "/".join(self.scope + [op_type])
        n = self.used[base]
        self.used[base] += 1
        name = base if n == 0 else f"{base}_{n}"
        outs = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            name = f"/Constant_{len(self.consts)}_output_0"
            self.inits.append(numpy_helper.from_array(arr, name))
            self.consts[key] = name
        return self.consts[key]

    def param(self, leaf: str, shape: tuple, std: float | None = None, fill: float = 0.0) -> str:
        """A parameter named after its module path: N(0, std^2) if std is
        given, else filled with `fill`."""
        name = ".".join(self.scope + [leaf])
        if std is not None:
            arr = self.rng.standard_normal(shape, dtype=np.float32)
            arr *= np.float32(std)
        else:
            arr = np.full(shape, fill, np.float32)
        self.params += arr.size
        if self.data_dir is None or arr.nbytes < EXTERNAL_MIN_BYTES:
            self.inits.append(numpy_helper.from_array(arr, name))
            return name
        # External: the bytes go straight to the file, never into the
        # protobuf (whose arena would keep every tensor's copy alive).
        offset = -(-self.data_size // ALIGN) * ALIGN
        with open(self.data_dir / DATA_FILE, "r+b") as f:
            f.seek(self.data_size)
            f.write(b"\0" * (offset - self.data_size))
            f.write(memoryview(np.ascontiguousarray(arr, "<f4")).cast("B"))
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=arr.shape,
                             raw_data=b"")
        external_data_helper.set_external_data(tensor, DATA_FILE, offset, arr.nbytes)
        tensor.ClearField("raw_data")
        self.data_size = offset + arr.nbytes
        self.inits.append(tensor)
        if self.data_size >= self.next_report:
            print(f"  {self.label}: {self.data_size / 2**30:.2f} GiB of weights written "
                  f"({time.monotonic() - self.t0:.0f} s)", file=sys.stderr)
            self.next_report += PROGRESS_BYTES
        return name


# ---------------------------------------------------------------------------
# layers (hw: positions of the feature map at SAMPLE_SIZE latents, for MACs)


def conv(g: Graph, x: str, cin: int, cout: int, k: int, hw: int, name: str, stride: int = 1) -> str:
    with g.at(name):
        w = g.param("weight", (cout, cin, k, k), std=(cin * k * k) ** -0.5)
        b = g.param("bias", (cout,))
        g.macs += cout * cin * k * k * hw
        return g.op("Conv", [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4,
                    strides=[stride, stride])


def linear(g: Graph, x: str, fin: int, fout: int, tokens: int, name: str, bias: bool = True) -> str:
    with g.at(name):
        y = g.op("MatMul", [x, g.param("weight", (fin, fout), std=fin ** -0.5)])
        g.macs += fin * fout * tokens
        if bias:
            y = g.op("Add", [y, g.param("bias", (fout,))])
        return y


def silu(g: Graph, x: str) -> str:
    return g.op("Mul", [x, g.op("Sigmoid", [x])])


def group_norm(g: Graph, x: str, c: int, eps: float, name: str) -> str:
    with g.at(name):
        shape = g.op("Shape", [x])
        y = g.op("Reshape", [x, g.const([0, GROUPS, -1])])
        y = g.op("InstanceNormalization", [y, g.const(np.ones(GROUPS), np.float32),
                                           g.const(np.zeros(GROUPS), np.float32)], epsilon=eps)
        y = g.op("Reshape", [y, shape])
        y = g.op("Mul", [y, g.param("weight", (c, 1, 1), fill=1.0)])
        return g.op("Add", [y, g.param("bias", (c, 1, 1))])


def layer_norm(g: Graph, x: str, c: int, name: str, eps: float = 1e-5) -> str:
    with g.at(name):
        return g.op("LayerNormalization", [x, g.param("weight", (c,), fill=1.0),
                                           g.param("bias", (c,))], axis=-1, epsilon=eps)


def attention(g: Graph, x: str, context: str | None, c: int, ctx_dim: int, heads: int,
              queries: int, keys: int, name: str, names=("to_q", "to_k", "to_v", "to_out.0"),
              qkv_bias: bool = False, mask: str | None = None) -> str:
    """Multi-head attention of x [B, L, c] over context [B, T, ctx_dim] (x
    itself when None), probabilities [B, heads, L, T] from a node named
    `<scope>/<name>/Softmax`."""
    hd = c // heads
    with g.at(name):
        src = x if context is None else context
        q = linear(g, x, c, c, queries, names[0], qkv_bias)
        k = linear(g, src, ctx_dim, c, keys, names[1], qkv_bias)
        v = linear(g, src, ctx_dim, c, keys, names[2], qkv_bias)
        split = g.const([0, 0, heads, hd])
        q = g.op("Transpose", [g.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, split])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, split])], perm=[0, 2, 1, 3])
        s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(hd ** -0.5, np.float32)])
        if mask is not None:
            s = g.op("Add", [s, mask])
        p = g.op("Softmax", [s], axis=-1)
        o = g.op("MatMul", [p, v])
        g.macs += 2 * queries * keys * c
        o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]), g.const([0, 0, c])])
        return linear(g, o, c, c, queries, names[3])


# ---------------------------------------------------------------------------
# UNet


def resnet(g: Graph, x: str, cin: int, cout: int, hw: int, temb: str | None, eps: float,
           name: str) -> str:
    with g.at(name):
        h = conv(g, silu(g, group_norm(g, x, cin, eps, "norm1")), cin, cout, 3, hw, "conv1")
        if temb is not None:
            t = linear(g, temb, TIME_DIM, cout, 1, "time_emb_proj")
            h = g.op("Add", [h, g.op("Unsqueeze", [t, g.const([2, 3])])])
        h = conv(g, silu(g, group_norm(g, h, cout, eps, "norm2")), cout, cout, 3, hw, "conv2")
        if cin != cout:
            x = conv(g, x, cin, cout, 1, hw, "conv_shortcut")
        return g.op("Add", [x, h])


def geglu_ff(g: Graph, x: str, c: int, tokens: int) -> str:
    inner = 4 * c
    with g.at("ff"):
        with g.at("net.0"):
            h = linear(g, x, c, 2 * inner, tokens, "proj")
            axis = g.const([-1])
            a = g.op("Slice", [h, g.const([0]), g.const([inner]), axis])
            gate = g.op("Slice", [h, g.const([inner]), g.const([2 * inner]), axis])
            erf = g.op("Erf", [g.op("Div", [gate, g.const(math.sqrt(2.0), np.float32)])])
            gelu = g.op("Mul", [g.op("Mul", [gate, g.op("Add", [erf, g.const(1.0, np.float32)])]),
                                g.const(0.5, np.float32)])
            h = g.op("Mul", [a, gelu])
        return linear(g, h, inner, c, tokens, "net.2")


def transformer(g: Graph, x: str, c: int, hw: int, ehs: str, name: str) -> str:
    with g.at(name):
        shape = g.op("Shape", [x])
        h = conv(g, group_norm(g, x, c, 1e-6, "norm"), c, c, 1, hw, "proj_in")
        h = g.op("Transpose", [g.op("Reshape", [h, g.const([0, c, -1])])], perm=[0, 2, 1])
        with g.at("transformer_blocks.0"):
            h = g.op("Add", [attention(g, layer_norm(g, h, c, "norm1"), None, c, c, UNET_HEADS,
                                       hw, hw, "attn1"), h])
            h = g.op("Add", [attention(g, layer_norm(g, h, c, "norm2"), ehs, c, TEXT_WIDTH,
                                       UNET_HEADS, hw, CTX, "attn2"), h])
            h = g.op("Add", [geglu_ff(g, layer_norm(g, h, c, "norm3"), c, hw), h])
        h = g.op("Reshape", [g.op("Transpose", [h], perm=[0, 2, 1]), shape])
        return g.op("Add", [conv(g, h, c, c, 1, hw, "proj_out"), x])


def upsample(g: Graph, x: str, c: int, hw: int) -> str:
    """2x nearest + conv3x3; hw is the size after upsampling."""
    with g.at("upsamplers.0"):
        x = g.op("Resize", [x, "", g.const([1.0, 1.0, 2.0, 2.0], np.float32)], mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return conv(g, x, c, c, 3, hw, "conv")


def build_unet(g: Graph) -> onnx.GraphProto:
    eps = 1e-5
    with g.at("time_proj"):
        half = UNET_CHANNELS[0] // 2
        freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
        e = g.op("Mul", [g.op("Cast", ["timestep"], to=TensorProto.FLOAT),
                         g.const(freqs, np.float32)])
        e = g.op("Concat", [g.op("Cos", [e]), g.op("Sin", [e])], axis=0)   # flip_sin_to_cos
        e = g.op("Unsqueeze", [e, g.const([0])])                             # [1, 320]
    with g.at("time_embedding"):
        t = linear(g, e, UNET_CHANNELS[0], TIME_DIM, 1, "linear_1")
        t = linear(g, silu(g, t), TIME_DIM, TIME_DIM, 1, "linear_2")
    temb = silu(g, t)   # every resnet's time_emb_proj reads SiLU(temb)
    hw = SAMPLE_SIZE * SAMPLE_SIZE
    x = conv(g, "sample", LATENT, UNET_CHANNELS[0], 3, hw, "conv_in")
    skips = [(x, UNET_CHANNELS[0])]
    cin = UNET_CHANNELS[0]
    last = len(UNET_CHANNELS) - 1
    for i, c in enumerate(UNET_CHANNELS):
        with g.at(f"down_blocks.{i}"):
            for j in range(2):
                x = resnet(g, x, cin, c, hw, temb, eps, f"resnets.{j}")
                cin = c
                if i < last:
                    x = transformer(g, x, c, hw, "encoder_hidden_states", f"attentions.{j}")
                skips.append((x, c))
            if i < last:
                with g.at("downsamplers.0"):
                    hw //= 4
                    x = conv(g, x, c, c, 3, hw, "conv", stride=2)
                skips.append((x, c))
    with g.at("mid_block"):
        c = UNET_CHANNELS[-1]
        x = resnet(g, x, c, c, hw, temb, eps, "resnets.0")
        x = transformer(g, x, c, hw, "encoder_hidden_states", "attentions.0")
        x = resnet(g, x, c, c, hw, temb, eps, "resnets.1")
    for i, c in enumerate(reversed(UNET_CHANNELS)):
        with g.at(f"up_blocks.{i}"):
            for j in range(3):
                skip, sc = skips.pop()
                x = g.op("Concat", [x, skip], axis=1)
                x = resnet(g, x, cin + sc, c, hw, temb, eps, f"resnets.{j}")
                cin = c
                if i > 0:
                    x = transformer(g, x, c, hw, "encoder_hidden_states", f"attentions.{j}")
            if i < last:
                hw *= 4
                x = upsample(g, x, c, hw)
    assert not skips
    x = silu(g, group_norm(g, x, UNET_CHANNELS[0], eps, "conv_norm_out"))
    x = conv(g, x, UNET_CHANNELS[0], LATENT, 3, hw, "conv_out")
    g.nodes.append(helper.make_node("Identity", [x], ["out_sample"], name="/Identity"))
    f = TensorProto.FLOAT
    return helper.make_graph(
        g.nodes, "sd15_shaped_unet",
        [helper.make_tensor_value_info("sample", f, ["batch_size", LATENT, "height", "width"]),
         helper.make_tensor_value_info("timestep", f, []),
         helper.make_tensor_value_info("encoder_hidden_states", f,
                                       ["batch_size", "sequence_length", TEXT_WIDTH])],
        [helper.make_tensor_value_info("out_sample", f, ["batch_size", LATENT, "height", "width"])],
        g.inits)


# ---------------------------------------------------------------------------
# VAE decoder


def vae_attention(g: Graph, x: str, c: int, hw: int) -> str:
    with g.at("attentions.0"):
        shape = g.op("Shape", [x])
        h = group_norm(g, x, c, 1e-6, "group_norm")
        h = g.op("Transpose", [g.op("Reshape", [h, g.const([0, c, -1])])], perm=[0, 2, 1])
    # one head over all 64x64 positions: probabilities [B, 1, 4096, 4096]
    h = attention(g, h, None, c, c, 1, hw, hw, "attentions.0", qkv_bias=True)
    with g.at("attentions.0"):
        h = g.op("Reshape", [g.op("Transpose", [h], perm=[0, 2, 1]), shape])
        return g.op("Add", [h, x])


def build_vae_decoder(g: Graph) -> onnx.GraphProto:
    eps = 1e-6
    hw = SAMPLE_SIZE * SAMPLE_SIZE
    x = conv(g, "latent_sample", LATENT, LATENT, 1, hw, "post_quant_conv")
    chans = list(reversed(VAE_CHANNELS))
    with g.at("decoder"):
        x = conv(g, x, LATENT, chans[0], 3, hw, "conv_in")
        with g.at("mid_block"):
            c = chans[0]
            x = resnet(g, x, c, c, hw, None, eps, "resnets.0")
            x = vae_attention(g, x, c, hw)
            x = resnet(g, x, c, c, hw, None, eps, "resnets.1")
        cin = chans[0]
        for i, c in enumerate(chans):
            with g.at(f"up_blocks.{i}"):
                for j in range(3):
                    x = resnet(g, x, cin, c, hw, None, eps, f"resnets.{j}")
                    cin = c
                if i < len(chans) - 1:
                    hw *= 4
                    x = upsample(g, x, c, hw)
        x = silu(g, group_norm(g, x, chans[-1], eps, "conv_norm_out"))
        x = conv(g, x, chans[-1], 3, 3, hw, "conv_out")
    g.nodes.append(helper.make_node("Identity", [x], ["sample"], name="/Identity"))
    f = TensorProto.FLOAT
    return helper.make_graph(
        g.nodes, "sd15_shaped_vae_decoder",
        [helper.make_tensor_value_info("latent_sample", f,
                                       ["batch_size", LATENT, "latent_height", "latent_width"])],
        [helper.make_tensor_value_info("sample", f, ["batch_size", 3, "latent_height * 8",
                                                     "latent_width * 8"])],
        g.inits)


# ---------------------------------------------------------------------------
# text encoder


def build_text_encoder(g: Graph) -> onnx.GraphProto:
    w = TEXT_WIDTH
    zero = g.const([0])
    with g.at("text_model"):
        with g.at("embeddings"):
            with g.at("token_embedding"):
                x = g.op("Gather", [g.param("weight", (VOCAB, w), std=0.02), "input_ids"], axis=0)
            seq = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", ["input_ids"]),
                                                     g.const(1)], axis=0), zero])
            with g.at("position_embedding"):
                pos = g.op("Slice", [g.param("weight", (CTX, w), std=0.01), zero, seq, zero])
            x = g.op("Add", [x, pos])
        causal = np.triu(np.full((CTX, CTX), np.finfo(np.float32).min, np.float32), 1)
        mask = g.op("Slice", [g.op("Slice", [g.const(causal, np.float32), zero, seq, zero]),
                              zero, seq, g.const([1])])
        with g.at("encoder"):
            for i in range(TEXT_LAYERS):
                with g.at(f"layers.{i}"):
                    a = attention(g, layer_norm(g, x, w, "layer_norm1"), None, w, w, TEXT_HEADS,
                                  CTX, CTX, "self_attn",
                                  names=("q_proj", "k_proj", "v_proj", "out_proj"),
                                  qkv_bias=True, mask=mask)
                    x = g.op("Add", [x, a])
                    with g.at("mlp"):
                        h = linear(g, layer_norm(g, x, w, "layer_norm2"), w, 4 * w, CTX, "fc1")
                        h = g.op("Mul", [h, g.op("Sigmoid", [g.op("Mul", [
                            h, g.const(1.702, np.float32)])])])   # quick_gelu
                        h = linear(g, h, 4 * w, w, CTX, "fc2")
                    x = g.op("Add", [x, h])
        x = layer_norm(g, x, w, "final_layer_norm")
        # CLIP pools at the end token, the highest id of each row
        eos = g.op("ArgMax", [g.op("Cast", ["input_ids"], to=TensorProto.INT32)],
                   axis=1, keepdims=1)
        pooled = g.op("GatherND", [x, g.op("Cast", [eos], to=TensorProto.INT64)], batch_dims=1)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/Identity"))
    g.nodes.append(helper.make_node("Identity", [pooled], ["pooler_output"], name="/Identity_1"))
    f = TensorProto.FLOAT
    return helper.make_graph(
        g.nodes, "sd15_shaped_text_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                       ["batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("last_hidden_state", f,
                                       ["batch_size", "sequence_length", TEXT_WIDTH]),
         helper.make_tensor_value_info("pooler_output", f, ["batch_size", TEXT_WIDTH])],
        g.inits)


# ---------------------------------------------------------------------------
# files


def make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name=PRODUCER, producer_version="1")
    m.ir_version = IR_VERSION
    return m


def dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def ovdiff_home() -> Path:
    home = os.environ.get("OVDIFF_HOME")
    if home:
        return Path(home)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "ovdiff-bank"


def write_configs(out: Path, vocab: dict) -> None:
    dump_json(out / "model_index.json", {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.32.2",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    dump_json(out / "scheduler/scheduler_config.json", {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.32.2",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    })
    special = {"content": None, "lstrip": False, "normalized": True, "rstrip": False,
               "single_word": False}
    bos = dict(special, content="<|startoftext|>")
    eos = dict(special, content="<|endoftext|>")
    dump_json(out / "tokenizer/special_tokens_map.json", {
        "bos_token": bos, "eos_token": eos, "pad_token": "<|endoftext|>", "unk_token": eos,
    })
    dump_json(out / "tokenizer/tokenizer_config.json", {
        "add_prefix_space": False,
        "bos_token": bos,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": CTX,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": eos,
    })
    dump_json(out / "text_encoder/config.json", {
        "_name_or_path": "sd15-shaped/text_encoder",
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "hidden_act": "quick_gelu",
        "hidden_size": TEXT_WIDTH,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * TEXT_WIDTH,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": CTX,
        "model_type": "clip_text_model",
        "num_attention_heads": TEXT_HEADS,
        "num_hidden_layers": TEXT_LAYERS,
        "pad_token_id": 1,
        "projection_dim": TEXT_WIDTH,
        "torch_dtype": "float32",
        "vocab_size": VOCAB,
    })
    dump_json(out / "unet/config.json", {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.32.2",
        "act_fn": "silu",
        "addition_embed_type": None,
        "attention_head_dim": UNET_HEADS,
        "block_out_channels": UNET_CHANNELS,
        "center_input_sample": False,
        "cross_attention_dim": TEXT_WIDTH,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": LATENT,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": GROUPS,
        "out_channels": LATENT,
        "sample_size": SAMPLE_SIZE,
        "time_cond_proj_dim": None,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "use_linear_projection": False,
    })
    dump_json(out / "vae_decoder/config.json", {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.32.2",
        "act_fn": "silu",
        "block_out_channels": VAE_CHANNELS,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": LATENT,
        "layers_per_block": 2,
        "norm_num_groups": GROUPS,
        "out_channels": 3,
        "sample_size": SAMPLE_SIZE * VAE_SCALE,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    })


def size_of(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:,.1f} MiB"


def check(out: Path, vocab: dict) -> None:
    """onnx.checker on every graph, then each graph once with onnxruntime at
    512 px; prints times and output statistics."""
    import onnxruntime as ort

    for rel in ("text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx"):
        t0 = time.monotonic()
        onnx.checker.check_model(str(out / rel))
        print(f"onnx.checker: {rel} ok ({time.monotonic() - t0:.1f} s)", file=sys.stderr)

    rng = np.random.default_rng(SEED + 1)

    def run(rel, feeds, want):
        t0 = time.monotonic()
        s = ort.InferenceSession(str(out / rel), providers=["CPUExecutionProvider"])
        load = time.monotonic() - t0
        t0 = time.monotonic()
        res = s.run(None, feeds)
        took = time.monotonic() - t0
        for o, r, w in zip(s.get_outputs(), res, want):
            ok = np.isfinite(r).all()
            print(f"  {o.name} {r.dtype}{list(r.shape)} finite={ok} "
                  f"mean {r.mean():+.3f} std {r.std():.3f}", file=sys.stderr)
            assert r.shape == w, (o.name, r.shape, w)
            assert ok, f"{o.name}: not finite"
        print(f"onnxruntime: {rel}: session {load:.1f} s, run {took:.2f} s", file=sys.stderr)
        del s
        return res

    start, end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    ids = np.full((2, CTX), end, np.int64)
    ids[:, 0] = start
    ids[0, 1:6] = [vocab.get(t, 320) for t in ("a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>")]
    hidden, _ = run("text_encoder/model.onnx", {"input_ids": ids},
                    [(2, CTX, TEXT_WIDTH), (2, TEXT_WIDTH)])
    s = SAMPLE_SIZE
    run("unet/model.onnx", {"sample": rng.standard_normal((2, LATENT, s, s), dtype=np.float32),
                            "timestep": np.array(981.0, np.float32),
                            "encoder_hidden_states": hidden},
        [(2, LATENT, s, s)])
    run("vae_decoder/model.onnx",
        {"latent_sample": rng.standard_normal((1, LATENT, s, s), dtype=np.float32) / 0.18215},
        [(1, 3, s * VAE_SCALE, s * VAE_SCALE)])


def main() -> None:
    args = sys.argv[1:]
    do_check = "--check" in args
    args = [a for a in args if a != "--check"]
    if len(args) != 1 or args[0].startswith("-"):
        sys.exit(__doc__)
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()

    src = ovdiff_home() / "models/clip-vocab"
    tok = out / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        if not (src / f).is_file():
            sys.exit(f"{src / f} is missing: run scripts/setup first "
                     "(it installs CLIP's vocabulary)")
        shutil.copyfile(src / f, tok / f)
    vocab = json.loads((tok / "vocab.json").read_text(encoding="utf-8"))
    write_configs(out, vocab)
    rng = np.random.default_rng(SEED)

    # text encoder and VAE decoder fit in one protobuf (< 2 GB): weights inline
    reports = []
    for rel, build, label in (("text_encoder", build_text_encoder, "text encoder"),
                              ("vae_decoder", build_vae_decoder, "VAE decoder")):
        t0 = time.monotonic()
        g = Graph(label, rng)
        (out / rel).mkdir(parents=True, exist_ok=True)
        model = make_model(build(g))
        del g.inits[:]
        onnx.save_model(model, str(out / rel / "model.onnx"))
        del model
        reports.append((label, g, time.monotonic() - t0))
        print(f"wrote {rel}/model.onnx ({size_of(out / rel / 'model.onnx')}, "
              f"{time.monotonic() - t0:.0f} s)", file=sys.stderr)

    # the UNet: 3.4 GB of weights, streamed into unet/model.onnx_data
    t0 = time.monotonic()
    unet_dir = out / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    stale = unet_dir / "manifest.toml"
    if stale.exists():
        stale.unlink()   # an earlier expose_attention.py run's; it no longer matches
    g = Graph("unet", rng, data_dir=unet_dir)
    model = make_model(build_unet(g))
    onnx.save_model(model, str(unet_dir / "model.onnx"))
    del model
    reports.append(("UNet", g, time.monotonic() - t0))
    print(f"wrote unet/model.onnx ({size_of(unet_dir / 'model.onnx')}) + {DATA_FILE} "
          f"({size_of(unet_dir / DATA_FILE)}, {time.monotonic() - t0:.0f} s)", file=sys.stderr)

    print(f"\n{'graph':<14}{'parameters':>16}{'GMACs':>10}   (multiply-adds at batch 1, "
          f"{SAMPLE_SIZE}x{SAMPLE_SIZE} latents / {SAMPLE_SIZE * VAE_SCALE} px, 77 tokens)")
    for label, g, _ in reports:
        print(f"{label:<14}{g.params:>16,}{g.macs / 1e9:>10.1f}")
    unet_params = reports[-1][1].params
    print(f"UNet parameters vs SD 1.5's {SD15_UNET_PARAMS:,}: "
          f"{100 * (unet_params / SD15_UNET_PARAMS - 1):+.3f}%")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {total / 2**30:.2f} GiB in {time.monotonic() - t_all:.0f} s")

    if do_check:
        check(out, vocab)


if __name__ == "__main__":
    main()
