"""Choose the pruning ratio on the validation split, against a metric floor or a latency target.

The caller supplies `prune(ratio) -> model` (including any recovery) so the same search serves any
criterion and allocation. A coarse sweep brackets the answer, then bisection narrows it; every
point evaluated is kept in the curve. The metric is the task's (accuracy for classification, or
character error rate, perplexity, embedding cosine, a user's own), read with its direction: a
floor on an error rate is a ceiling. Only the validation split is used here; the caller reports
on test after choosing.
"""

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.distill.tasks import Task, classification, evaluate
from slimkit.errors import SlimkitError
from slimkit.io.outputs import atomic_write_bytes
from slimkit.measure import count_macs, measure_latency_interleaved


@dataclass
class Point:
    ratio: float
    val_metric: float  # the task's metric on the validation data
    latency_ms: float
    macs: int
    ok: bool


@dataclass
class Selection:
    """The chosen point (None when no ratio met the constraint), every point evaluated, and the
    chosen model itself, so a caller can report on test the very model that was chosen on val."""

    chosen: Point | None
    curve: list[Point] = field(default_factory=list)
    constraint: dict = field(default_factory=dict)
    dense: dict = field(default_factory=dict)
    chosen_model: nn.Module | None = None

    def as_dict(self) -> dict:
        return {"chosen": asdict(self.chosen) if self.chosen else None, "constraint": self.constraint,
                "dense": self.dense, "curve": [asdict(p) for p in sorted(self.curve, key=lambda p: p.ratio)]}


def choose_ratio(dense: nn.Module, prune: Callable[[float], nn.Module], val: Any, example: torch.Tensor,
                 floor: float | None = None, latency_ms: float | None = None,
                 grid: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8), bisect_steps: int = 2, threads: int = 2,
                 progress: bool = True, prepare: Callable[[nn.Module], nn.Module] | None = None,
                 timing_rounds: int = 40, task: Task | None = None, teacher: nn.Module | None = None) -> Selection:
    """Largest ratio whose val metric meets `floor`, or smallest whose latency <= `latency_ms`.

    `val` is a Split, in-memory tensors or a loader; the metric is `task`'s (default:
    classification accuracy) and meeting the floor follows its direction (>= for accuracy, <= for
    an error rate). Fidelity metrics compare with `teacher` (default: the dense model). Exactly one
    constraint must be given. Quality is assumed to fall and latency to fall as the ratio grows
    (checked only through the points measured). Each point's batch-1 latency is the
    fastest of `timing_rounds` runs alternating with the dense model; `prepare(model)` (e.g. BN
    folding) is applied to both before timing so the curve matches how the final table times.
    """
    if (floor is None) == (latency_ms is None):
        raise SlimkitError("give exactly one of floor (the val metric to hold) or latency_ms (maximum latency)")
    task = task or classification()
    metric = task.metric
    if metric is None:
        raise SlimkitError(f"the {task.name} task has no metric to choose a ratio by; give it one")
    teacher = teacher if teacher is not None else dense

    def score(m: nn.Module) -> float:
        return evaluate(m, val, task, teacher)[metric.name]
    curve: list[Point] = []
    models: dict[float, nn.Module] = {}
    prepare = prepare or (lambda m: m)
    timed_dense = prepare(dense)

    def time_pair(m: nn.Module) -> tuple[float, float]:
        d, p = measure_latency_interleaved([timed_dense, prepare(m)], example, runs=timing_rounds, warmup=3,
                                           threads=threads, stat="min")
        return d.ms, p.ms

    dense_ms = time_pair(dense)[0]

    def ok(value: float, ms: float) -> bool:
        return metric.meets(value, floor) if floor is not None else ms <= latency_ms

    def measure(r: float) -> Point:
        m = prune(r)
        value = score(m)
        ms = time_pair(m)[1]
        p = Point(r, value, ms, count_macs(m, example), ok(value, ms))
        curve.append(p)
        models[r] = m
        return p

    bar = tqdm(total=len(grid) + bisect_steps, desc="ratio search", disable=not progress, leave=False)
    points = []
    for r in sorted(grid):
        points.append(measure(r))
        bar.update(1)
    # floor: passing ratios are the small ones; latency: passing ratios are the large ones
    passing = [p for p in points if p.ok]
    failing = [p for p in points if not p.ok]
    if floor is not None:
        lo = max((p.ratio for p in passing), default=0.0)
        hi = min((p.ratio for p in failing if p.ratio > lo), default=None)
    else:
        hi = min((p.ratio for p in passing), default=None)
        lo = max((p.ratio for p in failing if hi is None or p.ratio < hi), default=0.0)
    for _ in range(bisect_steps):
        if hi is None:
            break
        mid = round((lo + hi) / 2, 4)
        p = measure(mid)
        bar.update(1)
        if (p.ok and floor is not None) or (not p.ok and floor is None):
            lo = mid
        else:
            hi = mid
    bar.close()
    good = [p for p in curve if p.ok]
    chosen = (max(good, key=lambda p: p.ratio) if floor is not None else min(good, key=lambda p: p.ratio)) if good else None
    constraint = ({"val_floor": floor, "metric": metric.name, "higher_is_better": metric.higher_is_better}
                  if floor is not None else {"latency_ms_max": latency_ms})
    return Selection(chosen, curve, constraint, {"val_metric": score(dense), "metric": metric.name,
                                                 "latency_ms": dense_ms, "macs": count_macs(dense, example)},
                     models[chosen.ratio] if chosen else None)


def write_selection(sel: Selection, json_path: str | Path, png_path: str | Path | None = None) -> None:
    """Write the curve as JSON and (optionally) a PNG of the val metric, latency and MACs vs ratio; atomic."""
    atomic_write_bytes(Path(json_path), json.dumps(sel.as_dict(), indent=2).encode())
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(sel.curve, key=lambda p: p.ratio)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    r = [p.ratio for p in pts]
    for ax, ys, label in zip(axes, ([p.val_metric for p in pts], [p.latency_ms for p in pts],
                                    [p.macs / 1e6 for p in pts]),
                             (f"val {sel.dense.get('metric', 'metric')}", "latency (ms)", "MMACs")):
        ax.plot(r, ys, "o-")
        if sel.chosen:
            ax.axvline(sel.chosen.ratio, color="r", ls="--", label=f"chosen {sel.chosen.ratio:.2f}")
            ax.legend()
        ax.set_xlabel("pruning ratio")
        ax.set_ylabel(label)
    if "val_floor" in sel.constraint:
        axes[0].axhline(sel.constraint["val_floor"], color="g", ls=":")
    else:
        axes[1].axhline(sel.constraint["latency_ms_max"], color="g", ls=":")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(png_path), buf.getvalue())
