"""The depth+width mixes `compress` tries: k whole blocks removed plus the channel cut reaching the target.

For k = 0, 1, ... the k blocks with the least influence per millisecond their removal saves go
first (`rank_blocks`, measured: one alternating timing pass over the dense model and each
single-block removal), then channels:

- a MACs or parameter target: the smallest uniform channel ratio whose cost reaches it
  (bisection; widths depend on the ratio alone);
- a latency target: every ratio of a grid is cut and timed with the rest in one alternating
  pass, and per k the smallest ratio measured under the target is kept.

Every candidate is timed with the dense model in that one pass, so the ratios compare like with
like. Under a latency target, the mix kept per k is then timed again with the dense model alone
(`_confirmed`): picking, among dozens of mixes timed in few rounds, the lightest one measured under
the target favours one whose time came out low by chance, and the final timing (two models, many
rounds) would then miss the target the search promised. A mix that misses there gives way to the
next larger channel cut at its depth. A target no mix reaches is refused here, before any
recovery, with the nearest reachable value in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from slimkit.compression.cutters import Cutter, Timer
from slimkit.compression.settings import CompressSettings, Target
from slimkit.errors import SlimkitError
from slimkit.measure import count_macs, count_params

MAX_RATIO = 0.9  # the deepest channel cut tried: 10% of every group kept


@dataclass
class Candidate:
    """One measured mix; `val` is its validation metric after the short recovery (None: not tried)."""

    blocks: int
    removed: list[str]
    ratio: float
    macs: int
    params: int
    ms: float
    latency_share: float  # ms / dense ms, from the same alternating run
    kept: dict[str, list[int]] = field(default_factory=dict)
    confirmed_share: float | None = None  # ms / dense ms timed again, the two models alone (latency targets)
    val: float | None = None
    held: bool | None = None
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """How progress lines and refusals name this mix."""
        return f"{self.blocks} block{'' if self.blocks == 1 else 's'}, channel ratio {self.ratio:g}"

    @property
    def timed_share(self) -> float:
        """The latency share that decides: the one timed again when there is one, else the search's."""
        return self.latency_share if self.confirmed_share is None else self.confirmed_share

    def share(self, target: Target, dense_macs: int, dense_params: int) -> float:
        """This mix's cost as a share of the dense model's, in the target's unit."""
        if target.kind == "latency":
            return self.timed_share
        return self.macs / dense_macs if target.kind == "macs" else self.params / dense_params

    def as_dict(self) -> dict:
        return {"blocks": self.blocks, "removed": self.removed, "ratio": self.ratio, "macs": self.macs,
                "params": self.params, "ms": self.ms, "latency_share": self.latency_share,
                "confirmed_share": self.confirmed_share, "kept": self.kept, "val": self.val, "held": self.held}


@dataclass
class Search:
    candidates: list[Candidate]  # fastest first
    dense_ms: float
    block_ranking: list[dict]


def rank_blocks(influence: dict[str, float], saving_ms: dict[str, float]) -> list[str]:
    """Blocks in the order to remove them: least influence lost per millisecond saved first.

    At batch 1 on a CPU a small network's time is largely per-op overhead, so removing a block
    (its ops go) can save more than its MACs suggest, or nothing at all. A block whose removal
    measured no saving is never worth its accuracy for speed, so those come last, by influence;
    ties break by name so the order is reproducible.
    """
    paying = sorted((n for n in influence if saving_ms.get(n, 0.0) > 0),
                    key=lambda n: (influence[n] / saving_ms[n], n))
    rest = sorted((n for n in influence if saving_ms.get(n, 0.0) <= 0), key=lambda n: (influence[n], n))
    return paying + rest


def params_of(model: nn.Module) -> int:
    return count_params(model)[0]


def _cost(target: Target, example: Any) -> Callable[[nn.Module], int]:
    return (lambda m: count_macs(m, example)) if target.kind == "macs" else params_of


def ratio_for(cutter: Cutter, model: nn.Module, calib: list, cost: Callable[[nn.Module], int], limit: float,
              steps: int = 8) -> float | None:
    """Close to the smallest channel ratio whose cut costs <= limit; 0.0 when the model already
    does, None when even MAX_RATIO does not (bisection: cost falls in steps as the ratio grows)."""
    if cost(model) <= limit:
        return 0.0
    if cost(cutter.cut(model, MAX_RATIO, calib, exact=False)[0]) > limit:
        return None
    lo, hi = 0.0, MAX_RATIO
    for _ in range(steps):
        mid = (lo + hi) / 2
        if cost(cutter.cut(model, mid, calib, exact=False)[0]) <= limit:
            hi = mid
        else:
            lo = mid
    return round(hi, 4)


def check_reachable(dense: nn.Module, cutter: Cutter, example: Any, target: Target, calib: list,
                    max_blocks: int | None) -> None:
    """Refuse a MACs or parameter target that even the deepest cut misses, before anything is timed.

    The deepest cut: the `max_blocks` blocks whose removal alone saves the most cost, then
    MAX_RATIO of the channels. (A latency target can only be judged by timing: `search` does.)
    """
    if target.kind == "latency":
        return
    cost = _cost(target, example)
    full = cost(dense)
    names = cutter.blocks(dense)
    k = len(names) if max_blocks is None else min(max_blocks, len(names))
    if k:
        saved = {n: full - cost(cutter.remove(dense, [n])) for n in names}
        dense = cutter.remove(dense, sorted(names, key=lambda n: (-saved[n], n))[:k])
    best = full / cost(cutter.cut(dense, MAX_RATIO, calib, exact=False)[0])
    if best < 1.01:
        raise SlimkitError(f"no cut reaches {target.text}: every channel group of this model is already at its "
                           f"smallest width and no block can go, so slimkit cannot make it cheaper; compress a wider "
                           f"model")
    if best < 1 / target.share:
        raise SlimkitError(f"no cut reaches {target.text}: the deepest cut slimkit makes ({k} blocks and "
                           f"{MAX_RATIO:.0%} of the channels) gives {best:.2f}x fewer {target.kind}; try "
                           f"{target.kind}={max(1.0, int(best * 10) / 10):g}x or less")


def block_order(cutter: Cutter, dense: nn.Module, calib: list, timer: Timer, max_blocks: int) -> tuple[list[str], list[dict]]:
    """Blocks in removal order (least influence per ms saved first) and the ranking, for the report."""
    names = cutter.blocks(dense)
    if not names or max_blocks == 0:
        return [], []
    infl = cutter.influences(dense, calib)
    names = sorted(infl)
    dense_alone, *without = timer([dense] + [cutter.remove(dense, [n]) for n in names])
    saving = {n: dense_alone - t for n, t in zip(names, without)}
    order = rank_blocks(infl, saving)
    return order, [{"block": n, "influence": infl[n], "saving_ms": saving[n]} for n in order]


def search(dense: nn.Module, cutter: Cutter, example: Any, target: Target, calib: list, settings: CompressSettings,
           timer: Timer, progress: bool = True) -> Search:
    """Build, time and order the mixes (see the module docstring); raises when none reaches `target`."""
    n_blocks = len(cutter.blocks(dense))
    max_blocks = n_blocks if settings.max_blocks is None else min(settings.max_blocks, n_blocks)
    order, ranking = block_order(cutter, dense, calib, timer, max_blocks)
    max_blocks = min(max_blocks, len(order))
    dense_macs, dense_params = count_macs(dense, example), params_of(dense)
    built: list[tuple[int, float, nn.Module, dict]] = []
    deepest: float | None = None  # the lowest cost share any cut reached, for the refusal message
    bar = tqdm(range(max_blocks + 1), desc="build mixes", disable=not progress, leave=False)
    for k in bar:
        shallow = cutter.remove(dense, order[:k]) if k else dense
        if target.kind == "latency":
            for r in (0.0, *settings.ratios):
                if k == 0 and r == 0.0:
                    continue  # that is the dense model
                m, kept = cutter.cut(shallow, r, calib)
                built.append((k, r, m, kept))
            continue
        cost = _cost(target, example)
        full = dense_macs if target.kind == "macs" else dense_params
        r = ratio_for(cutter, shallow, calib, cost, target.share * full)
        if r is None:
            share = cost(cutter.cut(shallow, MAX_RATIO, calib, exact=False)[0]) / full
            deepest = share if deepest is None else min(deepest, share)
            continue
        m, kept = cutter.cut(shallow, r, calib)
        built.append((k, r, m, kept))
        if r == 0.0:
            break  # blocks alone reach the target: more blocks only cost accuracy
    if not built:
        best = 1 / deepest if deepest else 1.0
        raise SlimkitError(f"no cut reaches {target.text}: the deepest cut tried ({max_blocks} blocks and "
                           f"{MAX_RATIO:.0%} of the channels) gives {best:.2f}x fewer {target.kind}; try "
                           f"{target.kind}={max(1.0, int(best * 10) / 10):g}x or less")
    dense_ms, *times = timer([dense] + [m for _, _, m, _ in built])
    cands = [Candidate(k, order[:k], r, count_macs(m, example), params_of(m), t, t / dense_ms, kept, model=m)
             for (k, r, m, kept), t in zip(built, times)]
    if target.kind == "latency":
        every = cands
        cands = _lightest_meeting(every, target)
        if not cands:
            fastest = min(t / dense_ms for t in times)
            raise SlimkitError(f"no cut reaches {target.text}: the fastest cut tried is {fastest:.2f}x the dense "
                               f"latency ({min(times):.3f} ms vs {dense_ms:.3f} ms); try latency="
                               f"{_reachable(fastest):g}x or more, or allow more blocks to go")
        cands = _confirmed(every, cands, dense, timer, target, progress)
        if not cands:
            timed = [c.confirmed_share for c in every if c.confirmed_share is not None]
            raise SlimkitError(f"no cut reaches {target.text} when timed again against the dense model alone: the "
                               f"search's pass measured some under it, but each one timed again measured "
                               f"{min(timed):.2f}x or slower; try latency={_reachable(min(timed)):g}x or more, or "
                               f"allow more blocks to go")
    # fastest first: by the time measured, each confirmed mix's against its own dense run
    cands.sort(key=lambda c: (c.timed_share, c.blocks, c.ratio))
    return Search(cands, dense_ms, ranking)


def _reachable(share: float) -> float:
    """The latency target to suggest when `share` is the fastest measured: `share` rounded up to 0.05, at most 0.99."""
    return min(0.99, -(-share * 20 // 1) / 20)


def _confirmed(every: list[Candidate], picked: list[Candidate], dense: nn.Module, timer: Timer, target: Target,
               progress: bool = True) -> list[Candidate]:
    """Each picked mix timed again with the dense model, the two alone in one run (see the module
    docstring); one that misses the target there gives way to the next larger channel cut at its
    depth, timed again the same way, and a depth none of whose cuts holds up is dropped."""
    out = []
    for c in tqdm(picked, desc="confirm latency", disable=not progress, leave=False):
        for d in sorted((d for d in every if d.blocks == c.blocks and d.ratio >= c.ratio), key=lambda d: d.ratio):
            dense_ms, ms = timer([dense, d.model])
            d.confirmed_share = ms / dense_ms
            if target.met(d.confirmed_share):
                out.append(d)
                break
    return out


def _lightest_meeting(cands: list[Candidate], target: Target) -> list[Candidate]:
    """Per number of blocks removed, the smallest channel ratio measured under the latency target."""
    out = []
    for k in sorted({c.blocks for c in cands}):
        ok = [c for c in cands if c.blocks == k and target.met(c.latency_share)]
        if ok:
            out.append(min(ok, key=lambda c: c.ratio))
    return out
