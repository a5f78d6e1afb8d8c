"""How many channels each group keeps: uniform, global, per-layer, latency-aware; pure functions.

Counts are rounded so that kept widths are multiples of `round_to` (8 by default): CPU and GPU
kernels vectorise over channel blocks, and a width of 37 often runs no faster than 40.
"""

import math
from collections.abc import Callable

import torch

from slimkit.errors import SlimkitError


def check_ratio(ratio: float, name: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise SlimkitError(f"{name} must be in [0, 1), got {ratio!r}; e.g. 0.5 removes half the channels")
    return float(ratio)


def round_keep(n: int, keep: float, round_to: int = 8) -> int:
    """Kept channel count rounded to the nearest multiple of `round_to`, at least one multiple.

    A group no wider than `round_to` is left whole: it cannot shrink to a smaller multiple.
    """
    if round_to < 1:
        raise SlimkitError(f"round_to must be >= 1, got {round_to}")
    if n <= round_to:
        return n
    k = int(round(keep / round_to)) * round_to
    return int(min(n, max(round_to, k)))


def uniform_keep(sizes: dict[str, int], ratio: float, round_to: int = 8,
                 per_layer: dict[str, float] | None = None) -> dict[str, int]:
    """Every group removes the same fraction (or its entry in `per_layer`)."""
    per_layer = per_layer or {}
    unknown = set(per_layer) - set(sizes)
    if unknown:
        raise SlimkitError(f"per-layer ratios name unknown groups {sorted(unknown)}; known: {sorted(sizes)}")
    return {g: round_keep(n, n * (1 - check_ratio(per_layer.get(g, ratio), f"ratio of {g}")), round_to)
            for g, n in sizes.items()}


def normalise(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores divided by their group mean, so groups with different scales can be ranked together."""
    return {g: s.double() / s.double().mean().clamp(min=1e-12) for g, s in scores.items()}


def global_keep(scores: dict[str, torch.Tensor], ratio: float, round_to: int = 8, max_ratio: float = 0.9,
                per_layer: dict[str, float] | None = None) -> dict[str, int]:
    """Remove the `ratio` least important channels network-wide (scores normalised per group).

    No group loses more than `max_ratio` of its channels; groups in `per_layer` use their own ratio.
    """
    check_ratio(ratio)
    per_layer = per_layer or {}
    fixed = uniform_keep({g: len(scores[g]) for g in per_layer}, 0.0, round_to, per_layer) if per_layer else {}
    free = {g: s for g, s in normalise(scores).items() if g not in per_layer}
    total = sum(len(s) for s in free.values())
    if not free:
        return fixed
    pairs = sorted((float(v), g, i) for g, s in free.items() for i, v in enumerate(s))
    removed = dict.fromkeys(free, 0)
    budget = int(round(total * ratio))
    for _, g, _ in pairs:
        if budget <= 0:
            break
        if removed[g] < math.floor(len(free[g]) * max_ratio):
            removed[g] += 1
            budget -= 1
    return {**{g: round_keep(len(s), len(s) - removed[g], round_to) for g, s in free.items()}, **fixed}


def lowest(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the channels to remove: the len-keep lowest scores, ties broken by index."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[: len(scores) - keep])


def importance_lost(scores: dict[str, torch.Tensor], keep: dict[str, int], normalize: bool = True) -> float:
    """Sum of the (group-normalised, unless `normalize` is False) scores of the channels `keep` would remove."""
    norm = normalise(scores) if normalize else {g: s.double() for g, s in scores.items()}
    return float(sum(norm[g][lowest(norm[g], keep[g])].sum() for g in keep if g in norm))


# (current kept counts, group, that group's new kept count) -> milliseconds saved by the change
Saving = Callable[[dict[str, int], str, int], float]


def linear_saving(ms_per_channel: dict[str, float]) -> Saving:
    """A saving model with a fixed cost per removed channel of each group (no interactions)."""
    return lambda keep, g, new_k: ms_per_channel.get(g, 0.0) * (keep[g] - new_k)


def next_keep(k: int, round_to: int) -> int:
    """The next smaller multiple of `round_to` below `k` (one chunk of channels fewer)."""
    return k - round_to if k % round_to == 0 else k - k % round_to


def latency_aware_keep(scores: dict[str, torch.Tensor], saving: Saving | dict[str, float], budget: float = math.inf,
                       round_to: int = 8, max_ratio: float = 0.9, target_ms: float | None = None,
                       normalize: bool = True) -> tuple[dict[str, int], list[str]]:
    """Greedy cuts by latency saved per unit of importance lost, until `budget` importance is spent
    (or, with `target_ms`, until the cuts save that many milliseconds, whichever comes first).

    Each step removes one chunk (down to the next multiple of `round_to`, the least important
    channels left) from the group whose chunk saves the most milliseconds per unit of normalised
    importance. `saving(keep, group, new_keep)` is asked at the current widths of every group, so a
    lookup table can account for layers whose cost depends on two groups (in and out channels);
    a dict is read as a fixed saving per channel. A chunk that would overspend the budget retires
    its group and the search goes on with cheaper chunks elsewhere, so the budget is spent as fully
    as uniform cutting spends it. Groups whose first chunk saves nothing are never cut; they are
    returned as notes ("cut would not pay"). `normalize=False` keeps raw scores, for criteria whose
    units are comparable across groups (Taylor: an estimate of the loss increase).
    """
    if isinstance(saving, dict):
        saving = linear_saving(saving)
    norm = normalise(scores) if normalize else {g: s.double() for g, s in scores.items()}
    order = {g: sorted(s.tolist()) for g, s in norm.items()}
    keep = {g: len(s) for g, s in norm.items()}
    done = {g for g, s in order.items() if len(s) <= round_to}
    notes = []
    for g in sorted(set(order) - done):
        first = saving(keep, g, next_keep(keep[g], round_to))
        if first <= 0.0:
            notes.append(f"{g}: first cut saves {first * 1e3:+.1f} us, would not pay; skipped")
            done.add(g)
    spent = saved = 0.0
    while target_ms is None or saved < target_ms:
        best, best_gain, best_cost, best_ms = None, 0.0, 0.0, 0.0
        for g in sorted(set(order) - done):
            s, n, k = order[g], len(order[g]), keep[g]
            new_k = next_keep(k, round_to)
            if new_k < max(round_to, n - math.floor(n * max_ratio)):
                done.add(g)
                continue
            gain_ms = saving(keep, g, new_k)
            if gain_ms <= 0:
                continue
            cost = sum(s[n - k: n - new_k])
            gain = gain_ms / max(cost, 1e-12)
            if gain > best_gain:
                best, best_gain, best_cost, best_ms = g, gain, cost, gain_ms
        if best is None:
            break
        if spent + best_cost > budget * (1 + 1e-9):
            done.add(best)
            continue
        keep[best] = next_keep(keep[best], round_to)
        spent += best_cost
        saved += best_ms
    return keep, notes
