"""Static int8 with every convolution in the precision that runs faster here, decided by measurement.

Why: ONNX Runtime's int8 convolution (QLinearConv) is not faster than its fp32 one everywhere. Where
a convolution's dot products are short, or its channels few at a high resolution, the int8 kernel
can take several times the fp32 kernel: a 3x3 stem over one grayscale channel multiplies 9 values
per output, too few for the int8 GEMM's packing to pay, and a depthwise convolution over few
channels does likewise. A pruned network keeps those layers (a cut narrows the wide ones), so there
they are a larger share of the time and int8 gains less than on the dense model.

How (`quantize_int8_fastest`):
1. quantize every convolution (`quantize_int8`, static) and profile the fp32 model and the int8 one
   in ONNX Runtime on the timing batch (`profile_onnx`);
2. pair each convolution's fp32 kernel with its int8 kernel (`slower_in_int8`): the fused int8 node
   is named after the convolution; the fp32 kernels are taken in the order they ran, each checked
   against its convolution's output shape, and no pairing is proposed when any check fails;
3. quantize again with those slower convolutions left in fp32 (`fp32_candidates`): the leading ones
   only (one fp32/int8 border), and all of them;
4. time the whole models alternating (`time_onnx`, fastest of the rounds) and keep the fastest.
The profile only proposes; the whole-model timer decides, because each fp32 island adds a
DequantizeLinear/QuantizeLinear pair and a layout change (int8 convolutions run channels-last) at
its borders. Both models are checked by the caller the
same way (accuracy is measured, never assumed); the details say what was measured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from slimkit.errors import SlimkitError
from slimkit.export.profile import KernelProfile, profile_onnx
from slimkit.export.quantize import QuantResult, pre_processed, quantize_int8
from slimkit.export.runtime import time_onnx

FP32_CONV_OPS = ("Conv", "FusedConv")


def conv_outputs(model_bytes: bytes) -> list[tuple[str, tuple[int, ...] | None]]:
    """The Conv nodes of an ONNX graph in graph order, each with its inferred output shape (None if unknown)."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(model_bytes))
    shapes = {v.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
              for v in list(m.graph.value_info) + list(m.graph.output)}
    return [(n.name, shapes.get(n.output[0])) for n in m.graph.node if n.op_type == "Conv"]


def _fits(expected: tuple[int, ...] | None, ran: tuple[int, ...]) -> bool:
    """Whether a profiled fp32 kernel's output is the convolution's: the same rank and spatial size (-1: not
    known), and as many channels or up to 15 more (ONNX Runtime's blocked NCHWc layout pads channels)."""
    if expected is None:
        return True
    if len(expected) != len(ran) or len(ran) < 3:
        return False
    spatial = all(e < 0 or e == r for e, r in zip(expected[2:], ran[2:]))
    return spatial and (expected[1] < 0 or 0 <= ran[1] - expected[1] < 16)


def slower_in_int8(convs: Sequence[tuple[str, tuple[int, ...] | None]], fp32: KernelProfile,
                   int8: KernelProfile) -> tuple[list[str], str | None]:
    """The convolutions whose int8 kernel took longer than their fp32 kernel, or ([], why no pairing was made).

    `convs` are the fp32 graph's convolutions in order with their output shapes (`conv_outputs`); a
    QLinearConv is ONNX Runtime's fusion of one of them, named after it plus "_token_<n>"."""
    ran = [n for n in fp32.nodes if n.op in FP32_CONV_OPS]
    if len(ran) != len(convs):
        return [], f"{len(ran)} fp32 convolution kernels ran for {len(convs)} convolutions"
    bad = [name for (name, shape), node in zip(convs, ran) if not _fits(shape, node.output_shape)]
    if bad:
        return [], f"the fp32 kernels did not match the graph's convolutions in order (first mismatch {bad[0]})"
    q8 = {n.name.rsplit("_token_", 1)[0]: n.us for n in int8.nodes if n.op == "QLinearConv"}
    return [name for (name, _), node in zip(convs, ran) if name in q8 and q8[name] > node.us], None


def _example(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}


def fp32_candidates(convs: Sequence[str], slower: Sequence[str]) -> list[list[str]]:
    """The sets of convolutions to try in fp32: the leading ones (those slower in int8 before the first that is
    faster; one fp32/int8 border only), then all that were slower (a border around each island)."""
    lead = []
    for name in convs:
        if name not in slower:
            break
        lead.append(name)
    sets = [lead, list(slower)]
    return [c for i, c in enumerate(sets) if c and c not in sets[:i]]


def quantize_int8_fastest(model: bytes | str | os.PathLike, calibration: Sequence[dict[str, np.ndarray]],
                          timing_feeds: dict[str, np.ndarray], threads: int = 2, profile_runs: int = 30,
                          timing_rounds: int = 30, **kwargs) -> QuantResult:
    """Static int8 of `model`, with convolutions measured slower in int8 left in fp32 where that measures faster
    as a whole (see the module docstring). `timing_feeds` is the batch every decision is measured on, e.g. 32
    validation images; `calibration` must be a list (it is read once per candidate)."""
    if not isinstance(calibration, Sequence):
        raise SlimkitError("calibration for quantize_int8_fastest must be a list of feed dicts (it is read repeatedly)")
    fp32 = pre_processed(model)
    every = quantize_int8(fp32, "static", calibration, **kwargs)
    prof32 = profile_onnx(fp32, timing_feeds, threads, runs=profile_runs)
    prof8 = profile_onnx(every.model_bytes, timing_feeds, threads, runs=profile_runs)
    convs = conv_outputs(fp32)
    slower, why = slower_in_int8(convs, prof32, prof8)
    batch = int(next(iter(timing_feeds.values())).shape[0])
    every.details.update(precision_choice="all int8", measured_at_batch=batch)
    if why or not slower:
        every.details["precision_note"] = (f"no per-convolution choice: {why}" if why else
                                           "every convolution's int8 kernel was faster than its fp32 one")
        return every
    sets = fp32_candidates([name for name, _ in convs], slower)
    tried = [every] + [quantize_int8(fp32, "static", calibration, keep_fp32=c, **kwargs) for c in sets]
    ms = [r.ms for r in time_onnx([q.model_bytes for q in tried], _example(timing_feeds), runs=timing_rounds,
                                  warmup=5, threads=threads, stat="min")]
    best = min(range(len(tried)), key=ms.__getitem__)
    keep = tried[best]
    keep.details.update(precision_choice="all int8" if best == 0 else "mixed", measured_at_batch=batch,
                        slower_in_int8=list(slower), all_int8_ms=ms[0],
                        tried_ms={", ".join(c): t for c, t in zip(sets, ms[1:])})
    keep.details["precision_note"] = (
        f"{len(sets[best - 1])} convolution(s) kept fp32 ({ms[best]:.3f} vs {ms[0]:.3f} ms all int8 at batch {batch})"
        if best else f"{len(slower)} convolution(s) slower in int8, but all int8 measured fastest as a whole "
                     f"({ms[0]:.3f} ms vs {min(ms[1:]):.3f} at batch {batch})")
    return keep


__all__ = ["conv_outputs", "fp32_candidates", "quantize_int8_fastest", "slower_in_int8"]
