"""What a model costs: parameters (total and non-zero), MACs, measured latency and size on disk."""

import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimkit.errors import SlimkitError


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) parameter counts; shared parameters count once."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()).item())
    return total, nonzero


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor | tuple | dict) -> int:
    """Multiply-accumulates of one forward pass on `example`, from torch.utils.flop_counter.

    FlopCounterMode counts matmul and convolution FLOPs (2 per MAC) the dense kernels execute, so
    zeros from unstructured pruning do not reduce this number: it is the work actually done.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            _call(model, example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _call(model: nn.Module, example):
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, (tuple, list)):  # a list means what a tuple means
        return model(*example)
    return model(example)


STATS = ("median", "min")


@dataclass(frozen=True)
class LatencyResult:
    """Wall time of one forward pass (median, 90th percentile, fastest) and the conditions it ran under.

    `ms` is the statistic the caller asked for (`stat`): the median describes typical latency on a
    quiet machine; the minimum is the better estimator of a model's own cost when other jobs share
    the cores, because interference only ever adds time.
    """

    median_ms: float
    p90_ms: float
    runs: int
    warmup: int
    threads: int
    batch_size: int
    device: str
    min_ms: float = float("nan")
    stat: str = "median"

    @property
    def ms(self) -> float:
        return self.min_ms if self.stat == "min" else self.median_ms

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _check_stat(stat: str) -> None:
    if stat not in STATS:
        raise SlimkitError(f"latency stat must be one of {STATS}, got {stat!r}")


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example: torch.Tensor | tuple | dict,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    max_seconds: float = 20.0,
) -> LatencyResult:
    """Time `runs` forward passes after `warmup` untimed ones; report the median.

    `threads` sets torch's intra-op thread count for the measurement (restored afterwards) so the
    number printed says what it was measured with. Timing stops early after `max_seconds` so a
    large model does not stall a report; the result records how many runs were taken.
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        for _ in range(warmup):
            _call(model, example)
        sync()
        times: list[float] = []
        budget_end = time.perf_counter() + max_seconds
        for _ in range(runs):
            t0 = time.perf_counter()
            _call(model, example)
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() > budget_end and len(times) >= 5:
                break
        times.sort()
        batch = _batch_size(example)
        return LatencyResult(
            median_ms=statistics.median(times),
            p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
            runs=len(times),
            warmup=warmup,
            threads=torch.get_num_threads(),
            batch_size=batch,
            device=str(device),
            min_ms=times[0],
        )
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)


@torch.inference_mode()
def measure_latency_interleaved(
    models: list[nn.Module],
    example: torch.Tensor | tuple | dict,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    stat: str = "median",
    burst: int = 5,
) -> list[LatencyResult]:
    """Latency of several models timed in alternation (`burst` runs of each per round); `ms` is `stat`.

    Timing models one after another lets a slow spell on the machine land on one model only and
    shows a "speed-up" that is not there; alternating spreads such spells over all of them, so the
    ratios between the results are what the report can honestly compare. The order is reversed
    every other round so no model always runs right after the same neighbour (cache effects).
    Every result carries median, p90 and min; `stat` ("median" or "min") picks `ms`.

    With burst = 1 every call follows another model's call, so small models run with their weights
    partly evicted from the CPU caches, and how much depends on how many other models are in the
    mix: measured on ResNet-20 at batch 1, a depth+width cut timed 0.837 ms among 3 models and 0.915
    ms among 27. A deployed model runs alone and warm, so by default each model runs `burst` times
    in a row per round and all but the first call of the burst (which only brings the weights back
    in) are recorded: runs * (burst - 1) samples per model. The same cut then timed 0.821 and 0.817 ms.
    """
    _check_stat(stat)
    if runs < 1 or warmup < 0 or burst < 1:
        raise SlimkitError(f"latency timing needs runs >= 1, warmup >= 0 and burst >= 1, got runs={runs}, "
                           f"warmup={warmup}, burst={burst}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    modes = [m.training for m in models]
    cuda = any(p.is_cuda for m in models for p in m.parameters())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    try:
        for m in models:
            m.eval()
            for _ in range(warmup):
                _call(m, example)
        sync()
        samples: list[list[float]] = [[] for _ in models]
        for r in range(runs):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                for b in range(burst):
                    t0 = time.perf_counter()
                    _call(models[i], example)
                    sync()
                    if b or burst == 1:
                        samples[i].append((time.perf_counter() - t0) * 1e3)
        results = []
        for times in samples:
            times.sort()
            results.append(LatencyResult(
                median_ms=statistics.median(times), p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
                runs=len(times), warmup=warmup, threads=torch.get_num_threads(), batch_size=_batch_size(example),
                device="cuda" if cuda else "cpu", min_ms=times[0], stat=stat))
        return results
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
        torch.set_num_threads(old_threads)


def _batch_size(example) -> int:
    first = example
    if isinstance(example, dict):
        first = next(iter(example.values()))
    elif isinstance(example, (tuple, list)):
        first = example[0]
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1


def file_size_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a checkpoint file or folder (all files under it)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)
