#!/usr/bin/env python3
"""Write a copy of tests/fixtures/sd-tiny/ whose UNet does real convolution
work, for `bench generate` (OVDIFF_BENCH_GENERATOR=DIR): how the sampling
loop's overhead compares with a UNet that costs more than a few microseconds.

    python3 examples/sd_heavier_unet.py DIR [--width 64]

Everything but unet/model.onnx is copied unchanged (same tokenizer, text
encoder, VAE, scheduler). The UNet keeps the export's inputs and output
(`sample` f32 [B, 4, H, W], `timestep` f32 scalar, `encoder_hidden_states`
f32 [B, 77, 32] -> `out_sample`), and computes

    out = 0.1·sample + conv3(relu(conv2(relu(conv1(sample))))) + cond + temb

with 3×3 convolutions 4 → W → W → 4 (random weights, small enough that the
output stays finite over 30 steps). Per latent position that is
9·(4·W + W·W + W·4) multiply-adds: 41,472 for W = 64, against 144 for the
fixture's single 4 → 4 convolution, and still far below a real SD UNet
(hundreds of millions of parameters). Random weights: the images are noise.
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "tests" / "fixtures" / "sd-tiny"
LATENT = 4
HIDDEN = 32


def init(name, arr):
    return onnx.numpy_helper.from_array(arr, name)


def unet(width: int, rng) -> bytes:
    def conv_w(o, i):
        return (rng.standard_normal((o, i, 3, 3)) * (0.5 / np.sqrt(9 * i))).astype(np.float32)

    nodes = [
        helper.make_node("Mul", ["sample", "skip_scale"], ["skip"]),
        helper.make_node("Conv", ["sample", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c3", "out_scale"], ["conv"]),
        helper.make_node("ReduceMean", ["encoder_hidden_states"], ["ctx"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["ctx", "cond_a"], ["cond"]),
        helper.make_node("Unsqueeze", ["cond", "axes_23"], ["cond4"]),
        helper.make_node("Cast", ["timestep"], ["t"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["t", "thousand"], ["t01"]),
        helper.make_node("Mul", ["t01", "freq"], ["tf"]),
        helper.make_node("Sin", ["tf"], ["ts"]),
        helper.make_node("Mul", ["ts", "skip_scale"], ["ts01"]),
        helper.make_node("Reshape", ["ts01", "t_shape"], ["temb"]),
        helper.make_node("Add", ["skip", "conv"], ["a"]),
        helper.make_node("Add", ["a", "cond4"], ["b"]),
        helper.make_node("Add", ["b", "temb"], ["out_sample"]),
    ]
    g = helper.make_graph(
        nodes, "sd_heavier_unet",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT,
                                       ["batch_size", LATENT, "height", "width"]),
         helper.make_tensor_value_info("timestep", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT,
                                       ["batch_size", "sequence_length", HIDDEN])],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT,
                                       ["batch_size", LATENT, "height", "width"])],
        [init("skip_scale", np.array(0.1, np.float32)),
         init("out_scale", np.array(0.1, np.float32)),
         init("w1", conv_w(width, LATENT)), init("w2", conv_w(width, width)),
         init("w3", conv_w(LATENT, width)),
         init("cond_a", (rng.standard_normal((HIDDEN, LATENT)) * 0.2).astype(np.float32)),
         init("axes_23", np.array([2, 3], np.int64)),
         init("thousand", np.array(1000.0, np.float32)),
         init("freq", np.array([1.0, 3.0, 7.0, 13.0], np.float32)),
         init("t_shape", np.array([1, LATENT, 1, 1], np.int64))],
    )
    m = helper.make_model(g, producer_name="ovdiff-bank sd_heavier_unet",
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; give a new folder")
    shutil.copytree(FIXTURE, args.out, ignore=shutil.ignore_patterns("*.py", "variants"))
    (args.out / "unet" / "model.onnx").write_bytes(unet(args.width, np.random.default_rng(7)))
    per_position = 9 * (LATENT * args.width + args.width * args.width + args.width * LATENT)
    print(f"wrote {args.out}: UNet 4 -> {args.width} -> {args.width} -> 4, "
          f"{per_position} multiply-adds per latent position")


if __name__ == "__main__":
    main()
