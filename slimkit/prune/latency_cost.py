"""Measured latency of pruning choices: a per-layer lookup table and the latency-aware allocation it drives.

Timing a whole model with one group cut, against the dense model, buries a few microseconds of
saving in the noise of a millisecond-long forward pass (seen: negative predicted latencies). So,
as in NetAdapt, each prunable layer is timed *alone*: its batch-1 input shape is captured once with
hooks, then a fresh Conv/Linear of the same kind is built and timed at a few widths of its input
and output channels (full, 3/4, 1/2, 1/4 of each and the narrowest width the allocator may reach),
all widths of one layer in alternation, keeping the fastest run of each (interference only adds
time). Timings are made monotone (a narrower layer is never recorded as slower than a wider one;
a measured inversion is noise or a kernel switch the final never-slower check still guards), so
no saving is negative. The table is cached in JSON keyed by model class, shapes, input, threads,
layout, grid and torch version; building it takes seconds.

A layer's time at other widths is read by bilinear interpolation in (in, out) channels, so a layer
whose input and output both shrink is not double-counted. Predicted model latency = measured dense
latency minus the summed savings of every layer, times a scale fitted on one measured uniform cut
(`calibrate`), because layers timed alone overstate what narrowing them saves inside the model.
BatchNorm, activations and adds are left out: in the timed models BatchNorm is folded into the
conv (which therefore carries a bias here) and the rest is elementwise work whose per-op overhead
does not change with width.
"""

import bisect
import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.errors import SlimkitError
from slimkit.io.outputs import atomic_write_bytes
from slimkit.measure.cost import measure_latency_interleaved
from slimkit.prune.allocation import importance_lost, latency_aware_keep, next_keep, round_keep, uniform_keep
from slimkit.prune.result import PruneResult
from slimkit.prune.structured import Graph, apply_plan, build_graph, compute_scores, plan_channels

FRACTIONS = (1.0, 0.75, 0.5, 0.25)


@dataclass
class Site:
    """One prunable layer: how to rebuild it, its batch-1 input shape, and the groups setting its widths."""

    name: str
    kind: str  # "conv" or "linear"
    in_shape: list[int]
    c_in: int
    c_out: int
    kernel: list[int]
    stride: list[int]
    padding: list[int] | str  # "same"/"valid" are kept as strings
    depthwise: bool
    in_group: str | None
    out_group: str | None
    in_widths: list[int]  # in the layer's own units: features of a Linear fed by a flatten
    out_widths: list[int]
    in_scale: int = 1  # layer input features per group channel (H*W when a flatten feeds a Linear)
    ms: list[list[float]] = field(default_factory=list)  # ms[i][j] at in_widths[i], out_widths[j]
    dilation: list[int] = field(default_factory=list)

    def time_at(self, c_in: int, c_out: int) -> float:
        """Bilinear interpolation of the measured grid (linear along the diagonal for depthwise);
        widths beyond the grid are clamped to its ends."""
        m = self.ms
        if self.depthwise:
            i0, i1, a = _bracket(self.out_widths, c_out)
            return (1 - a) * m[i0][i0] + a * m[i1][i1]
        (i0, i1, a), (j0, j1, b) = _bracket(self.in_widths, c_in), _bracket(self.out_widths, c_out)
        return (1 - a) * ((1 - b) * m[i0][j0] + b * m[i0][j1]) + a * ((1 - b) * m[i1][j0] + b * m[i1][j1])


def _bracket(widths: list[int], w: int) -> tuple[int, int, float]:
    if len(widths) == 1 or w <= widths[0]:
        return 0, 0, 0.0
    if w >= widths[-1]:
        return len(widths) - 1, len(widths) - 1, 0.0
    j = bisect.bisect_left(widths, w)
    lo, hi = widths[j - 1], widths[j]
    return j - 1, j, (w - lo) / (hi - lo)


@dataclass
class LatencyTable:
    """Per-layer timings of one model on this machine; answers "how much does this shape save?"."""

    sites: dict[str, Site]
    sizes: dict[str, int]
    # measured whole-model saving / summed per-layer saving, for one uniform cut (see `calibrate`);
    # 1.0 until calibrated
    scale: float = 1.0
    # the prepared dense model's batch-1 time when the table was calibrated (None: not calibrated)
    dense_ms: float | None = None

    def site_ms(self, site: Site, keep: dict[str, int]) -> float:
        c_in = keep.get(site.in_group, site.c_in // site.in_scale) * site.in_scale if site.in_group else site.c_in
        c_out = keep.get(site.out_group, site.c_out) if site.out_group else site.c_out
        if site.depthwise:
            c_in = c_out
        return site.time_at(c_in, c_out)

    def saving_ms(self, keep: dict[str, int]) -> float:
        """Milliseconds all layers save at the kept widths `keep` (missing groups stay whole)."""
        full = dict(self.sizes)
        return self.scale * sum(self.site_ms(s, full) - self.site_ms(s, keep) for s in self.sites.values())

    def step_saving(self, keep: dict[str, int], group: str, new_k: int) -> float:
        """Milliseconds saved by moving `group` from keep[group] to `new_k`, other groups as they are."""
        after = {**keep, group: new_k}
        return self.scale * sum(self.site_ms(s, keep) - self.site_ms(s, after) for s in self.sites.values()
                   if group in (s.in_group, s.out_group))

    def per_channel(self, round_to: int = 8) -> dict[str, float]:
        """Saving per removed channel of each group's first chunk, at full widths (for reports)."""
        out = {}
        for g, n in self.sizes.items():
            k = next_keep(n, round_to)
            out[g] = self.step_saving(dict(self.sizes), g, k) / (n - k) if 0 < k < n else 0.0
        return out

    def as_dict(self) -> dict:
        return {"sites": {k: asdict(s) for k, s in self.sites.items()}, "sizes": self.sizes, "scale": self.scale,
                "dense_ms": self.dense_ms}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        return cls({k: Site(**s) for k, s in d["sites"].items()}, {k: int(v) for k, v in d["sizes"].items()},
                   float(d.get("scale", 1.0)), d.get("dense_ms"))


def _widths(n: int, round_to: int, max_ratio: float) -> list[int]:
    floor = round_keep(n, max(1, n - int(n * max_ratio)), round_to)
    return sorted({n, floor} | {round_keep(n, n * f, round_to) for f in FRACTIONS})


def find_sites(graph: Graph, example: torch.Tensor, round_to: int = 8, max_ratio: float = 0.9,
               batch: int = 1) -> dict[str, Site]:
    """Every Conv/Linear the groups resize, with its input shape at `batch` and width grid (not timed yet)."""
    model, dg, names = graph.model, graph.dg, graph.names
    shapes: dict[nn.Module, list[int]] = {}
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]

    def record(mod: nn.Module, args: tuple) -> None:  # a pre-hook must return None or it replaces the input
        shapes.setdefault(mod, [batch, *args[0].shape[1:]])

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()(example[:1])
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    governs: dict[nn.Module, dict[str, str]] = {}
    for g, grp in graph.groups.items():
        for item in grp:
            m, is_out = item.dep.target.module, dg.is_out_channel_pruning_fn(item.dep.handler)
            if isinstance(m, nn.Module) and m in graph.nodes:  # timed through the Linear layers it cuts
                h = graph.nodes[m]
                layers = h.writes(m) if is_out else [r for r in h.reads(m) if isinstance(r, nn.Linear)]
                targets = [(x, "out" if is_out else "in") for x in layers]
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                dw = isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups > 1
                targets = [(m, "in"), (m, "out")] if dw else [(m, "out" if is_out else "in")]
            else:
                continue
            for layer, side in targets:
                governs.setdefault(layer, {})[side] = g
    sizes, sites = graph.sizes, {}
    for m, gov in governs.items():
        if m not in shapes:
            continue  # not run on this input (a removed or unused branch)
        conv = isinstance(m, (nn.Conv1d, nn.Conv2d))
        c_in, c_out = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        gi, go = gov.get("in"), gov.get("out")
        dw = conv and m.groups > 1
        scale = c_in // sizes[gi] if gi else 1
        sites[names[m]] = Site(
            names[m], "conv" if conv else "linear", shapes[m], c_in, c_out,
            list(m.kernel_size) if conv else [], list(m.stride) if conv else [],
            (m.padding if isinstance(m.padding, str) else list(m.padding)) if conv else [],
            dw, gi, go, [w * scale for w in _widths(sizes[gi], round_to, max_ratio)] if gi else [c_in],
            _widths(sizes[go], round_to, max_ratio) if go else [c_out], scale,
            dilation=list(m.dilation) if conv else [])
    return sites


class _Timed(nn.Module):
    """A rebuilt layer with its own fixed input, so measure_latency_interleaved can time it alone."""

    def __init__(self, site: Site, c_in: int, c_out: int, channels_last: bool) -> None:
        super().__init__()
        shape = list(site.in_shape)
        if site.kind == "conv":
            shape[1] = c_in
            cls = nn.Conv2d if len(site.kernel) == 2 else nn.Conv1d
            self.layer: nn.Module = cls(c_in, c_out, site.kernel, site.stride, site.padding,
                                        dilation=site.dilation or 1, bias=True, groups=c_out if site.depthwise else 1)
        else:
            shape[-1] = c_in
            self.layer = nn.Linear(c_in, c_out)
        self.x = torch.randn(shape)
        if channels_last and self.x.dim() == 4:
            self.layer = self.layer.to(memory_format=torch.channels_last)
            self.x = self.x.to(memory_format=torch.channels_last)

    def forward(self, _unused: torch.Tensor) -> torch.Tensor:
        return self.layer(self.x)


def time_site(site: Site, threads: int = 2, rounds: int = 40, channels_last: bool = False) -> list[list[float]]:
    """Fastest-of-`rounds` milliseconds at every grid point, all points timed in alternation; monotone."""
    points = [(i, j) for i in range(len(site.in_widths)) for j in range(len(site.out_widths))
              if not site.depthwise or site.in_widths[i] == site.out_widths[j]]
    mods = [_Timed(site, site.in_widths[i], site.out_widths[j], channels_last).eval() for i, j in points]
    # burst=1: dozens of small layer variants, and the table's scale is fitted afterwards on whole
    # models timed warm (calibrate), which absorbs the cold-cache share of the layer timings
    res = measure_latency_interleaved(mods, torch.zeros(1), runs=rounds, warmup=3, threads=threads, stat="min",
                                      burst=1)
    ms = [[0.0] * len(site.out_widths) for _ in site.in_widths]
    for (i, j), r in zip(points, res):
        ms[i][j] = r.ms
    if site.depthwise:  # only in == out exists; off the diagonal, the wider point's time (read by monotone only)
        n = len(site.out_widths)
        ms = [[ms[max(i, j)][max(i, j)] for j in range(n)] for i in range(n)]
    return monotone(ms)


def monotone(ms: list[list[float]]) -> list[list[float]]:
    """Suffix minimum over both axes: no grid point costs more than any wider one."""
    out = [row[:] for row in ms]
    for i in reversed(range(len(out))):
        for j in reversed(range(len(out[i]))):
            if i + 1 < len(out):
                out[i][j] = min(out[i][j], out[i + 1][j])
            if j + 1 < len(out[i]):
                out[i][j] = min(out[i][j], out[i][j + 1])
    return out


def cache_key(model: nn.Module, example: torch.Tensor, threads: int, **settings) -> str:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    cfg = model.config() if callable(getattr(model, "config", None)) else {}
    blob = json.dumps([type(model).__name__, cfg, shapes, list(example.shape), str(example.device), threads,
                       torch.__version__, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def latency_table(model: nn.Module, example: torch.Tensor, round_to: int = 8, threads: int = 2,
                  cache: str | Path | None = None, ignored=None, progress: bool = True, rounds: int = 40,
                  max_ratio: float = 0.9, channels_last: bool = False,
                  calibrate_with: Callable[[nn.Module], nn.Module] | None = None, batch: int = 1) -> LatencyTable:
    """Measure (or read from `cache`) the per-layer lookup table of `model` on this machine.

    With `calibrate_with` (how a model is prepared for timing: e.g. BN folding and memory layout),
    the table's scale is fitted to one whole-model measurement, see `calibrate`. A cached calibrated
    table is reused only while the dense model still measures within 25% of its time at
    calibration: timings taken while the machine was busy, or on another machine state, are retaken.
    `batch` is the batch size every layer is timed at: per-op overhead dominates at batch 1, arithmetic
    and memory traffic at large batches, so a shape that pays at one need not pay at the other.
    """
    settings = {"round_to": round_to, "rounds": rounds, "max_ratio": max_ratio, "channels_last": channels_last,
                "fractions": FRACTIONS, "ignored": sorted(ignored) if ignored else None, "version": 4,
                "calibrated": calibrate_with is not None, **({"batch": batch} if batch != 1 else {})}
    key = cache_key(model, example[:1], threads, **settings)
    path = Path(cache) if cache else None
    stored = json.loads(path.read_text()) if path and path.is_file() else {}
    if key in stored:
        table = LatencyTable.from_dict(stored[key])
        if calibrate_with is None or _still_valid(table, model, example, calibrate_with, threads):
            return table
    graph = build_graph(copy.deepcopy(model), example[:1], ignored)
    sites = find_sites(graph, example, round_to, max_ratio, batch)
    for s in tqdm(sites.values(), desc="latency table", disable=not progress, leave=False):
        s.ms = time_site(s, threads, rounds, channels_last)
    table = LatencyTable(sites, graph.sizes)
    if calibrate_with is not None:
        table.scale, table.dense_ms = calibrate(table, model, example, calibrate_with, threads=threads,
                                                rounds=max(rounds, 100), round_to=round_to, ignored=ignored)
    if path:
        stored[key] = table.as_dict()
        atomic_write_bytes(path, json.dumps(stored, indent=1, sort_keys=True).encode())
    return table


def calibrate(table: LatencyTable, model: nn.Module, example: torch.Tensor,
              prepare: Callable[[nn.Module], nn.Module], ratio: float = 0.5, threads: int = 2, rounds: int = 100,
              round_to: int = 8, ignored=None) -> tuple[float, float]:
    """(scale, dense ms): the factor making the table's predicted saving equal one measured saving.

    Layers timed alone overstate what narrowing them saves inside the model at batch 1: the
    per-call overhead the isolated timing sees is still paid in the model, and work overlaps. A
    single factor, fitted on a uniform `ratio` cut (dense and cut model timed in alternation,
    fastest of `rounds`, both prepared by `prepare`), corrects the sum; other shapes are then
    predicted out of sample, which the structured benchmark reports against measurement.
    """
    table_scale, table.scale = table.scale, 1.0
    try:
        cut = copy.deepcopy(model)
        graph = build_graph(cut, example[:1], ignored)
        keep = uniform_keep(graph.sizes, ratio, round_to)
        apply_plan(graph, plan_channels(graph, compute_scores(graph, "l2"), keep))
        predicted = table.saving_ms(keep)
    finally:
        table.scale = table_scale
    d, p = measure_latency_interleaved([prepare(model), prepare(cut)], example[:1], runs=rounds, warmup=5,
                                       threads=threads, stat="min")
    return (max(0.0, d.ms - p.ms) / predicted if predicted > 0 else 1.0), d.ms


def _still_valid(table: LatencyTable, model: nn.Module, example: torch.Tensor,
                 prepare: Callable[[nn.Module], nn.Module], threads: int, stale: float = 0.25) -> bool:
    if table.dense_ms is None:
        return False
    now = measure_latency_interleaved([prepare(model)], example[:1], runs=100, warmup=5, threads=threads,
                                      stat="min")[0].ms
    return abs(now / table.dense_ms - 1.0) <= stale


def prune_latency_aware(model: nn.Module, example: torch.Tensor, ratio: float, importance: str = "l2",
                        calib=None, round_to: int = 8, threads: int = 2, cache: str | Path | None = None,
                        ignored=None, max_ratio: float = 0.9, progress: bool = True, rounds: int = 40,
                        channels_last: bool = False, table: LatencyTable | None = None, match: str = "importance",
                        normalize: bool | None = None) -> PruneResult:
    """Shape the cut by measured time saved per unit of importance lost, matched to a uniform `ratio` cut.

    match="importance" spends exactly the importance the uniform cut would lose, where it saves the
    most time; match="latency" reaches the uniform cut's predicted saving while losing the least
    importance. The model is changed in place (keep a `copy.deepcopy` first for the dense one). The
    result's `details` hold the dense latency (measured here, before the cut), the latency the
    lookup table predicts for this result and for the uniform cut, the importance spent by each,
    and each group's saving per channel.

    `normalize` (default: all criteria but Taylor) divides scores by their group mean. Taylor
    scores estimate the loss increase of removing a channel, a unit shared by all groups, so they
    are compared raw; magnitudes of different layers are not comparable and need the normalising.
    """
    if match not in ("importance", "latency"):
        raise SlimkitError(f"match must be 'importance' or 'latency', got {match!r}")
    table = table or latency_table(model, example, round_to, threads, cache, ignored, progress, rounds, max_ratio,
                                   channels_last)
    dense_ms = measure_latency_interleaved([model], example[:1], runs=rounds, warmup=3, threads=threads,
                                           stat="min")[0].ms
    graph = build_graph(model, example[:1], ignored)
    sizes = graph.sizes
    scores = compute_scores(graph, importance, calib)
    normalize = importance != "taylor" if normalize is None else normalize
    uniform = uniform_keep(sizes, ratio, round_to)
    budget = importance_lost(scores, uniform, normalize)
    if match == "importance":
        keep, notes = latency_aware_keep(scores, table.step_saving, budget, round_to, max_ratio, normalize=normalize)
    else:
        keep, notes = latency_aware_keep(scores, table.step_saving, math.inf, round_to, max_ratio,
                                         target_ms=table.saving_ms(uniform), normalize=normalize)
    apply_plan(graph, plan_channels(graph, scores, keep))
    info = {"dense_ms": dense_ms, "predicted_ms": dense_ms - table.saving_ms(keep), "match": match,
            "predicted_saving_ms": table.saving_ms(keep), "uniform_predicted_saving_ms": table.saving_ms(uniform),
            "importance_uniform": budget, "importance_spent": importance_lost(scores, keep, normalize),
            "ms_per_channel": table.per_channel(round_to)}
    return PruneResult(model, "latency-aware", {g: (keep[g], sizes[g]) for g in sizes}, notes=notes,
                       kept_intact=graph.kept_intact, held=graph.held, details=info)
