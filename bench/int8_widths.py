"""int8 against fp32 in ONNX Runtime for one inverted-residual block, by its expanded width; prints one table.

A pruned model's int8 speed-up depends on the widths the cut leaves, not only on how many: this
bench isolates that. Each row is a MobileNetV2 block (1x1 expand conv, ReLU6, 3x3 depthwise,
ReLU6, 1x1 project) with random weights, at the input width, spatial size and expanded widths of
the Fashion-MNIST MobileNetV2 stages, exported with slimkit.export (checked against PyTorch),
quantized static int8 as bench/deploy.py does (QDQ, per-channel weights, calibrated on 4 random
batches), and timed at batch 32 with bench/ort_timing.py (ORT_ENABLE_ALL, 2 intra-op threads, a
group's files alternating, fastest of 3 fresh processes). Widths step by 8, the default rounding
of slimkit's structured pruner; `--round-to 16` (bench/deploy.py, `slimkit compress`) keeps
multiples of 16 only.

    PYTHONPATH=. python bench/int8_widths.py     # ~3 min on 2 cores
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit.export import describe_session, export_onnx, quantize_int8

from ort_timing import time_onnx_in_fresh_process
from run_clock import cpu_name

# (input width, output width, spatial size, expanded widths): the stages the depth+width cut thins
STAGES = ((16, 24, 14, (80, 88, 96)), (24, 32, 7, (128, 136, 144)), (32, 32, 7, (168, 176, 184, 192)))


def block(c_in: int, width: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, width, 1), nn.ReLU6(), nn.Conv2d(width, width, 3, padding=1, groups=width),
                         nn.ReLU6(), nn.Conv2d(width, c_out, 1)).eval()


def stage_rows(c_in: int, c_out: int, hw: int, widths: tuple[int, ...], d: Path, a) -> list[tuple]:
    files = []
    for width in widths:
        torch.manual_seed(a.seed)
        model = block(c_in, width, c_out)
        res = export_onnx(model, torch.randn(2, c_in, hw, hw), exporters=("dynamo",))
        rng = np.random.default_rng(a.seed)
        feeds = [{"input": rng.standard_normal((32, c_in, hw, hw)).astype(np.float32)} for _ in range(4)]
        fp32, int8 = d / f"{c_in}_{width}.onnx", d / f"{c_in}_{width}.int8.onnx"
        fp32.write_bytes(res.model_bytes)
        int8.write_bytes(quantize_int8(res.model_bytes, "static", feeds).model_bytes)
        files += [fp32, int8]
    times, _ = time_onnx_in_fresh_process(files, {"batch 32": torch.randn(32, c_in, hw, hw)}, {"batch 32": a.rounds},
                                          a.threads, a.passes)
    return [(c_in, hw, width, times[2 * i]["batch 32"], times[2 * i + 1]["batch 32"]) for i, width in enumerate(widths)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=50, help="alternating timing rounds (x4 warm calls)")
    p.add_argument("--passes", type=int, default=3, help="fresh timing processes; the fastest is kept")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-widths-") as d:
        rows = [r for c_in, c_out, hw, widths in STAGES for r in stage_rows(c_in, c_out, hw, widths, Path(d), a)]
    print(f"\nCPU {cpu_name()}, torch {torch.__version__}; ONNX Runtime: {describe_session(a.threads)}; batch 32, "
          f"fastest of {a.rounds} alternating rounds x 4 warm calls, fastest of {a.passes} fresh processes")
    print("in | hw | width | width % 16 | fp32 ms | int8 ms | int8 speed-up")
    for c_in, hw, width, fp32, int8 in rows:
        print(f"{c_in} | {hw}x{hw} | {width} | {width % 16} | {fp32:.3f} | {int8:.3f} | {fp32 / int8:.2f}x")


if __name__ == "__main__":
    main()
