"""Latency-aware shaping by measurement: which whole blocks to remove and how thin the channels.

At batch 1 on a CPU a small network's time is largely per-op overhead: a channel cut shrinks the
work of every op but keeps every op, while removing a block removes its ops outright. Which mix
is fastest at equal MACs, and what it costs in accuracy, depends on the model and the device, so
both are measured rather than predicted:

1. every removable block is timed away on its own (one alternating pass over the dense model and
   each single-block removal); blocks are ranked by block influence per millisecond saved, the
   same "importance lost per time saved" rule the channel lookup table follows;
2. for k = 0, 1, ..., the first k blocks of that ranking go, then the smallest uniform channel
   ratio reaching the MACs target (k stops growing once blocks alone reach it);
3. every candidate and the dense model are timed in one alternating pass;
4. the caller scores candidates (e.g. the task's validation metric after a recovery; with
   `higher_is_better=False` for error rates or perplexity), and one is chosen:
   - by default every candidate is scored (a cheap score: a short recovery) and the fastest
     scoring within `tolerance` of the best is chosen;
   - with a `floor`, candidates are scored fastest first and the first meeting it is chosen,
     so an expensive score (the full recovery) runs only until a mix holds the floor; when none
     does, the best-scoring one is chosen and the caller can see it missed.

k = 0 is plain uniform channel pruning, so the choice is uniform unless removing blocks is
measured faster at a score the rule accepts.
"""

import copy
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.errors import SlimkitError
from slimkit.measure import count_macs, measure_latency_interleaved
from slimkit.prune.layers import block_influences, removable_blocks, remove_blocks
from slimkit.prune.structured import Batch, prune_structured

# Times a list of models the same way (alternating, on this device); returns one ms per model.
Timer = Callable[[list[nn.Module]], list[float]]


def interleaved_timer(example: torch.Tensor, threads: int = 2, rounds: int = 100,
                      prepare: Callable[[nn.Module], nn.Module] | None = None) -> Timer:
    """A Timer running every model in this process, fastest of `rounds` alternating warm bursts.

    `prepare(model)` is applied to a copy before timing (e.g. BN folding and memory layout), so
    models are timed as they will run.
    """
    prepare = prepare or (lambda m: m)

    def time_models(models: list[nn.Module]) -> list[float]:
        res = measure_latency_interleaved([prepare(copy.deepcopy(m)) for m in models], example[:1], runs=rounds,
                                          warmup=5, threads=threads, stat="min")
        return [r.ms for r in res]
    return time_models


@dataclass
class ShapeCandidate:
    blocks: int
    removed: list[str]
    ratio: float
    macs: int
    ms: float
    score: float | None  # None: not scored (a faster mix already held the floor)


@dataclass
class ShapeChoice:
    """The chosen candidate, every candidate measured (for the report), the chosen pruned model, and
    the dense model's time from the same alternating runs: `pays` is False when even the chosen
    cut measured no faster than the dense model, and the caller should keep the dense one.
    `block_ranking` is the order blocks were taken in, with each block's influence and the time its
    removal alone saved."""

    chosen: ShapeCandidate
    candidates: list[ShapeCandidate] = field(default_factory=list)
    model: nn.Module | None = None
    dense_ms: float = 0.0
    block_ranking: list[dict] = field(default_factory=list)

    @property
    def pays(self) -> bool:
        return self.chosen.ms < self.dense_ms

    def as_dict(self) -> dict:
        return {"chosen": asdict(self.chosen), "candidates": [asdict(c) for c in self.candidates],
                "dense_ms": self.dense_ms, "pays": self.pays, "block_ranking": self.block_ranking}


def rank_blocks(influence: dict[str, float], saving_ms: dict[str, float]) -> list[str]:
    """Blocks in the order to remove them: least influence lost per millisecond saved first.

    A block whose removal measured no saving is never worth its accuracy for speed, so those come
    last, by influence; ties break by name so the order is reproducible.
    """
    paying = sorted((n for n in influence if saving_ms.get(n, 0.0) > 0),
                    key=lambda n: (influence[n] / saving_ms[n], n))
    rest = sorted((n for n in influence if saving_ms.get(n, 0.0) <= 0), key=lambda n: (influence[n], n))
    return paying + rest


def ratio_for_macs(model: nn.Module, example: torch.Tensor, target_macs: float, steps: int = 10,
                   round_to: int = 8) -> float:
    """Close to the smallest uniform channel ratio whose pruned MACs are <= target_macs (bisection).

    Uniform widths depend on the ratio alone, not on the importance criterion, so the cheap L2
    score is used here. MACs fall monotonically (in steps, as widths are rounded) as the ratio
    grows; 10 steps resolve the ratio to 0.001, finer than one rounding step of any layer here, so
    the result lands on the first width step under the target rather than overshooting it.
    Returns 0.0 when the model already meets the target; raises when even the largest ratio cannot.
    """
    def macs(ratio: float) -> int:
        cut = prune_structured(copy.deepcopy(model), example, ratio, "l2", round_to=round_to).model
        return count_macs(cut, example)

    if macs(0.0) <= target_macs:
        return 0.0
    lo, hi = 0.0, 0.9
    if macs(hi) > target_macs:
        raise SlimkitError(f"no channel ratio up to {hi} reaches {target_macs / 1e6:.2f} MMACs")
    for _ in range(steps):
        mid = (lo + hi) / 2
        if macs(mid) <= target_macs:
            hi = mid
        else:
            lo = mid
    return round(hi, 4)


def choose_depth_width(model: nn.Module, example: torch.Tensor, target_macs: float,
                       score: Callable[[nn.Module], float], importance: str = "l2",
                       calib: Iterable[Batch] | None = None, max_blocks: int | None = None,
                       tolerance: float = 0.5, floor: float | None = None, time_models: Timer | None = None,
                       progress: bool = True, higher_is_better: bool = True, round_to: int = 8) -> ShapeChoice:
    """Measure block-plus-channel mixes at one MACs target; keep the fastest that scores near the best.

    `score(pruned_model)` is in the same units as `tolerance` (e.g. val accuracy points after a
    recovery; it may train a copy), higher-is-better unless `higher_is_better=False` (an error
    rate, a perplexity: then "meets the floor" is <= and "the best" the lowest, as
    `slimkit.distill.Metric` reads it). Kept widths are multiples of `round_to` (16 suits ONNX Runtime's
    int8 convolutions on x86, which run widths between multiples of 16 slower than fp32).
    `floor` switches to the fastest-first
    rule of the module docstring. `time_models` times a list of
    models alike (default: `interleaved_timer(example)`, in this process); a caller that wants
    timings free of its own process's state can time them elsewhere.
    """
    calib = list(calib or [])
    if not calib:
        raise SlimkitError("choose_depth_width ranks blocks by block influence; pass calib batches")
    if tolerance < 0:
        raise SlimkitError(f"tolerance must be >= 0, got {tolerance}")
    n_removable = len(removable_blocks(model))
    max_blocks = n_removable if max_blocks is None else max_blocks
    if not 0 <= max_blocks <= n_removable:
        raise SlimkitError(f"max_blocks must be in 0..{n_removable} (removable blocks of this model), got {max_blocks}")
    time_models = time_models or interleaved_timer(example)
    infl = block_influences(model, calib)
    names = sorted(infl)
    dense_alone, *without = time_models([model] + [remove_blocks(copy.deepcopy(model), [n]) for n in names])
    saving = {n: dense_alone - t for n, t in zip(names, without)}
    order = rank_blocks(infl, saving)
    ranking = [{"block": n, "influence": infl[n], "saving_ms": saving[n]} for n in order]
    built: list[tuple[int, float, nn.Module, list[str]]] = []
    for k in range(max_blocks + 1):
        shallow = remove_blocks(copy.deepcopy(model), order[:k])
        ratio = ratio_for_macs(shallow, example, target_macs, round_to=round_to)
        pruned = prune_structured(shallow, example, ratio, importance, calib=calib, round_to=round_to).model
        built.append((k, ratio, pruned, order[:k]))
        if ratio == 0.0:
            break
    models = [m for _, _, m, _ in built]
    dense_ms, *times = time_models([model] + models)
    candidates = [ShapeCandidate(k, removed, ratio, count_macs(m, example), t, None)
                  for (k, ratio, m, removed), t in zip(built, times)]
    fastest_first = sorted(range(len(candidates)), key=lambda i: (candidates[i].ms, candidates[i].blocks))
    sign = 1.0 if higher_is_better else -1.0  # compare signed scores: larger is better either way
    chosen = None
    for i in tqdm(fastest_first if floor is not None else range(len(candidates)), desc="score shapes",
                  disable=not progress, leave=False):
        candidates[i].score = float(score(models[i]))
        if floor is not None and sign * candidates[i].score >= sign * floor:
            chosen = candidates[i]
            break
    scored = [c for c in candidates if c.score is not None]
    if chosen is None:
        best = max(sign * c.score for c in scored)
        within = best if floor is not None else best - tolerance  # no mix held the floor: the best one
        chosen = min((c for c in scored if sign * c.score >= within), key=lambda c: (c.ms, c.blocks))
    return ShapeChoice(chosen, candidates, models[candidates.index(chosen)], dense_ms, ranking)
