"""Measured latency: interleaved timing, per-group latency costs (cached), never-slower checks.

Latency on a shared CPU is noisy, so models under comparison are timed in alternation (round
robin) and compared by their medians. Per-group costs are measured by cutting one group at a time
and timing it against the unpruned model; they are cached in a JSON file keyed by model class and
configuration, current layer shapes, input shape, device, thread count and torch version.
"""

import copy
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.io import atomic_write_bytes
from slimkit.prune.allocation import round_keep
from slimkit.prune.structured import apply_plan, build_graph


@torch.inference_mode()
def interleaved_latency(models: list[nn.Module], example: torch.Tensor, rounds: int = 40, runs: int = 1,
                        warmup: int = 3, threads: int = 2, stat: str = "median") -> list[float]:
    """Per-forward milliseconds of each model (median, or min), timed in alternation to share noise.

    "min" is the better estimator for small differences on a shared machine: interference only
    ever adds time, so the fastest run is the closest to the model's own cost.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for m in models:
            m.eval()
            for _ in range(warmup):
                m(example)
        samples: list[list[float]] = [[] for _ in models]
        for _ in range(rounds):
            for i, m in enumerate(models):
                for _ in range(runs):
                    t0 = time.perf_counter()
                    m(example)
                    samples[i].append((time.perf_counter() - t0) * 1e3)
        return [statistics.median(s) if stat == "median" else min(s) for s in samples]
    finally:
        torch.set_num_threads(old)


def cache_key(model: nn.Module, example: torch.Tensor, threads: int) -> str:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    cfg = model.config() if callable(getattr(model, "config", None)) else {}
    blob = json.dumps([type(model).__name__, cfg, shapes, list(example.shape), str(example.device), threads,
                       torch.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def group_latency_costs(model: nn.Module, example: torch.Tensor, round_to: int = 8, threads: int = 2,
                        cache: str | Path | None = None, ignored=None, progress: bool = True,
                        pairs: int = 40) -> dict[str, float]:
    """Milliseconds saved per removed channel, per group, measured by halving each group alone.

    Each cost compares the fastest of `pairs` alternating runs of the dense and the cut model: on a
    shared machine interference only adds time, and medians of 2-thread runs were seen to swing by
    seconds when other jobs held the cores.

    The value can be zero or negative (no measurable saving): the allocator then leaves the group.
    """
    key = cache_key(model, example, threads)
    path = Path(cache) if cache else None
    table = json.loads(path.read_text()) if path and path.is_file() else {}
    if key in table:
        return table[key]
    graph = build_graph(copy.deepcopy(model), example, ignored)
    dense = graph.model
    costs: dict[str, float] = {}
    for g, n in tqdm(graph.sizes.items(), desc="latency costs", disable=not progress, leave=False):
        keep = round_keep(n, n / 2, round_to)
        if keep >= n:
            costs[g] = 0.0
            continue
        pruned = apply_plan(build_graph(copy.deepcopy(dense), example, ignored), {g: list(range(n - keep))})
        d_ms, p_ms = interleaved_latency([dense, pruned], example, rounds=pairs, threads=threads, stat="min")
        costs[g] = (d_ms - p_ms) / (n - keep)
    if path:
        table[key] = costs
        atomic_write_bytes(path, json.dumps(table, indent=1, sort_keys=True).encode())
    return costs


def predicted_latency(dense_ms: float, costs: dict[str, float], sizes: dict[str, int], keep: dict[str, int]) -> float:
    """Dense latency minus the measured per-channel savings of every cut (a linear model)."""
    return dense_ms - sum(max(costs.get(g, 0.0), 0.0) * (sizes[g] - keep[g]) for g in keep)


def not_slower(dense: nn.Module, pruned: nn.Module, example: torch.Tensor, threads: int = 2,
               rounds: int = 60, runs: int = 1) -> tuple[nn.Module, dict]:
    """Return the pruned model if it measures faster than the dense one, else the dense one.

    Compared on the fastest of alternating runs (see group_latency_costs for why).

    The returned dict records both medians and a note when the cut did not pay.
    """
    d_ms, p_ms = interleaved_latency([dense, pruned], example, rounds, runs, threads=threads, stat="min")
    info = {"dense_ms": d_ms, "pruned_ms": p_ms, "kept_pruned": p_ms < d_ms}
    if p_ms >= d_ms:
        info["note"] = f"pruned model measured {p_ms:.3f} ms vs dense {d_ms:.3f} ms: the cut does not pay, kept dense"
        return dense, info
    return pruned, info


def prune_latency_aware(model: nn.Module, example: torch.Tensor, ratio: float, importance: str = "l2",
                        calib=None, round_to: int = 8, threads: int = 2, cache: str | Path | None = None,
                        ignored=None, max_ratio: float = 0.9, progress: bool = True, pairs: int = 40):
    """Spend the importance a uniform `ratio` cut would lose, but where it saves the most latency.

    Returns (StructuredResult, info) with info holding the dense latency, the latency the linear
    cost model predicts for the result, and notes on groups whose cut would not pay.
    """
    from slimkit.prune.allocation import importance_lost, latency_aware_keep, uniform_keep
    from slimkit.prune.structured import StructuredResult, compute_scores, plan_channels

    costs = group_latency_costs(model, example, round_to, threads, cache, ignored, progress, pairs)
    m = copy.deepcopy(model)
    graph = build_graph(m, example, ignored)
    sizes = graph.sizes
    scores = compute_scores(graph, importance, calib)
    budget = importance_lost(scores, uniform_keep(sizes, ratio, round_to))
    keep, notes = latency_aware_keep(scores, costs, budget, round_to, max_ratio)
    apply_plan(graph, plan_channels(graph, scores, keep))
    dense_ms = interleaved_latency([model], example, threads=threads, stat="min")[0]
    info = {"dense_ms": dense_ms, "predicted_ms": predicted_latency(dense_ms, costs, sizes, keep),
            "importance_budget": budget, "costs_ms_per_channel": costs}
    return StructuredResult(m, {g: (keep[g], sizes[g]) for g in sizes}, notes=notes), info
