"""Structured pruning: remove whole channels, neurons, attention heads and residual blocks.

Channel coupling comes from Torch-Pruning's DependencyGraph: one group is every parameter slice
that must shrink together (a conv's filters, its BatchNorm, the next conv's inputs, every block on
the same residual stream, a flatten->Linear's input columns). Slimkit decides *which* channels go
(importance.py) and *how many* (allocation.py); Torch-Pruning performs the surgery. Attention
heads and whole blocks are removed here directly, since they do not couple with anything outside
their module. The result is a plain nn.Module with smaller tensors.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from slimkit.errors import SlimkitError, check_count, check_sparsity
from slimkit.models.vit import Attention
from slimkit.prune import importance as imp
from slimkit.prune.allocation import global_keep, lowest, uniform_keep
from slimkit.prune.layers import (  # noqa: F401  (re-exported: heads and blocks are part of this API)
    attention_modules,
    block_influences,
    head_importance,
    masked_heads_reference,
    remove_blocks,
    remove_heads,
    removable_blocks,
)

Batch = tuple[torch.Tensor, torch.Tensor]
_LEAF_OK = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.PReLU)


class _AttentionPruner(tp.pruner.BasePruningFunc):
    """Residual-width pruning of slimkit's Attention: inputs of q/k/v, outputs of proj."""

    def prune_out_channels(self, layer: Attention, idxs: list[int]) -> Attention:
        tp.prune_linear_out_channels(layer.proj, idxs)
        return layer

    def prune_in_channels(self, layer: Attention, idxs: list[int]) -> Attention:
        for lin in (layer.q, layer.k, layer.v):
            tp.prune_linear_in_channels(lin, idxs)
        return layer

    def get_out_channels(self, layer: Attention) -> int:
        return layer.proj.out_features

    def get_in_channels(self, layer: Attention) -> int:
        return layer.q.in_features


def check_supported(model: nn.Module) -> None:
    """Raise a SlimkitError naming the first module whose parameters the pruner cannot cut."""
    allowed = set(getattr(model, "unwrapped_parameters", {}))
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            continue
        own = [p for p, _ in m.named_parameters(recurse=False)]
        if not own or (m is model and set(own) <= allowed):
            continue
        if any(isinstance(p, Attention) for p in _parents(model, name)):
            continue
        bad = not isinstance(m, _LEAF_OK) or isinstance(m, nn.ConvTranspose2d)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and 1 < m.groups and not (m.groups == m.in_channels == m.out_channels):
            bad = True
        if bad:
            kind = type(m).__name__
            raise SlimkitError(
                f"structured pruning cannot handle module {name or '<root>'} ({kind}); add it to ignored_layers, "
                f"replace it with a supported layer (Conv, Linear, BN/LN/GN, depthwise conv, slimkit Attention), "
                f"or keep it unpruned"
            )


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts, out, m = name.split(".") if name else [], [], model
    for p in parts[:-1]:
        m = getattr(m, p)
        out.append(m)
    return out


def classifier_of(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Conv/Linear to run in a forward pass: the head, whose outputs must stay intact."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise SlimkitError(f"{type(model).__name__} has no Conv or Linear layer to prune")
    return order[-1]


@dataclass
class Graph:
    """A traced model: its dependency graph and prunable channel groups, keyed by root module name."""

    model: nn.Module
    dg: tp.DependencyGraph
    groups: dict[str, tp.Group]
    names: dict[nn.Module, str] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {g: int(self.dg.get_out_channels(grp[0].dep.target.module)) for g, grp in self.groups.items()}


def build_graph(model: nn.Module, example: torch.Tensor, ignored: Iterable[str] | None = None) -> Graph:
    """Trace `model` on `example` and list its prunable groups (the classifier head excluded).

    Groups containing an `ignored` layer are not pruned; None means the model's own
    `structured_ignored` list (SmallViT keeps its residual width), or nothing.
    """
    check_supported(model)
    ignored = list(getattr(model, "structured_ignored", ()) if ignored is None else ignored)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    missing = [n for n in ignored if n not in modules]
    if missing:
        raise SlimkitError(f"ignored layers {missing} are not modules of {type(model).__name__}")
    ignored_mods = [classifier_of(model, example)] + [modules[n] for n in ignored]
    unwrapped = [(getattr(model, n), d) for n, d in getattr(model, "unwrapped_parameters", {}).items()]
    was_training = model.training
    model.eval()
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=example, unwrapped_parameters=unwrapped,
        customized_pruners={Attention: _AttentionPruner()}, verbose=False)
    model.train(was_training)
    groups = {}
    for grp in dg.get_all_groups(ignored_layers=ignored_mods, root_module_types=(nn.Conv1d, nn.Conv2d, nn.Linear)):
        root = grp[0].dep.target.module
        groups[names[root]] = grp
    return Graph(model, dg, groups, names)


def slices_of(graph: Graph, name: str) -> list[imp.Slice]:
    """The parameter slices a group cuts, for the pure importance functions."""
    out: list[imp.Slice] = []
    for item in graph.groups[name]:
        dep, idxs, roots = item.dep, list(item.idxs), list(item.root_idxs)
        m, is_out = dep.target.module, graph.dg.is_out_channel_pruning_fn(dep.handler)

        def add(p: torch.Tensor, dim: int, kind: str) -> None:
            out.append(imp.Slice(p.data, None if p.grad is None else p.grad.detach(), dim, idxs, roots, kind))

        if isinstance(m, nn.Parameter):
            add(m, dep.target.pruning_dim, "param")
        elif isinstance(m, Attention):
            if is_out:
                add(m.proj.weight, 0, "weight")
            else:
                for lin in (m.q, m.k, m.v):
                    add(lin.weight, 1, "weight")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            add(m.weight, 0, "norm")
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            depthwise = isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups > 1
            if is_out or depthwise:
                add(m.weight, 0, "weight")
            else:
                add(m.weight, 1, "weight")
    return out


def _consumer(graph: Graph, name: str) -> tuple[nn.Module, list[int], list[int]] | None:
    """The first module that reads the group's channels as input (sees them after BN and activation)."""
    for item in graph.groups[name]:
        m = item.dep.target.module
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, Attention)) and not graph.dg.is_out_channel_pruning_fn(item.dep.handler):
            return m, list(item.idxs), list(item.root_idxs)
    return None


def compute_scores(graph: Graph, kind: str, calib: Iterable[Batch] | None = None, bins: int = 32,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Importance of every channel of every group; Taylor and entropy run over `calib` batches."""
    if kind not in imp.IMPORTANCE_KINDS:
        raise SlimkitError(f"unknown importance {kind!r}; choose one of {', '.join(imp.IMPORTANCE_KINDS)}")
    sizes = graph.sizes
    if kind in ("taylor", "entropy"):
        batches = list(calib or [])
        if not batches:
            raise SlimkitError(f"{kind} importance needs calibration batches; pass calib=[(x, y), ...]")
    if kind == "l1" or kind == "l2":
        return {g: imp.magnitude_scores(slices_of(graph, g), n, 1 if kind == "l1" else 2) for g, n in sizes.items()}
    if kind == "bn":
        return {g: imp.bn_scale_scores(slices_of(graph, g), n) for g, n in sizes.items()}
    model = graph.model
    if kind == "taylor":
        model.zero_grad(set_to_none=True)
        was = model.training
        model.eval()
        for x, y in batches:
            torch.nn.functional.cross_entropy(model(x), y).backward()
        model.train(was)
        scores = {g: imp.taylor_scores(slices_of(graph, g), n) for g, n in sizes.items()}
        model.zero_grad(set_to_none=True)
        return scores
    consumers = {g: _consumer(graph, g) for g in sizes}
    seen: dict[nn.Module, list[torch.Tensor]] = {c[0]: [] for c in consumers.values() if c}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen[mod].append(args[0].detach())) for m in seen]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            for x, _ in batches:
                model(x)
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    scores = {}
    for g, n in sizes.items():
        c = consumers[g]
        if c is None:  # nothing reads these channels: they only cost compute
            scores[g] = torch.zeros(n, dtype=torch.float64)
            continue
        m, idxs, roots = c
        act = torch.cat(seen[m])
        cdim = act.dim() - 1 if isinstance(m, (nn.Linear, Attention)) else 1
        scores[g] = imp.entropy_scores(imp.channel_values(act, cdim, idxs, roots, n, seed=seed), bins)
    return scores


ChannelPlan = dict[str, list[int]]


def plan_channels(graph: Graph, scores: dict[str, torch.Tensor], keep: dict[str, int]) -> ChannelPlan:
    """Channels to remove per group: the lowest-scoring ones, down to `keep` per group."""
    return {g: lowest(scores[g], keep[g]) for g in keep if keep[g] < graph.sizes[g]}


def apply_plan(graph: Graph, plan: ChannelPlan) -> nn.Module:
    """Cut the planned channels from the model in place (via Torch-Pruning) and return it."""
    for g, idxs in plan.items():
        if g not in graph.groups:
            raise SlimkitError(f"plan names unknown group {g!r}; known groups: {sorted(graph.groups)}")
        if idxs:
            grp = graph.groups[g]
            root = grp[0].dep.target.module
            graph.dg.get_pruning_group(root, grp[0].dep.handler, idxs).prune()
    return graph.model


@torch.no_grad()
def masked_reference(graph: Graph, plan: ChannelPlan) -> nn.Module:
    """A dense copy whose planned channels output exactly zero: what the pruned model must equal."""
    ref = copy.deepcopy(graph.model)
    by_id = {id(m): n for n, m in graph.model.named_modules()}
    params = {id(p): n for n, p in graph.model.named_parameters()}
    ref_mods, ref_params = dict(ref.named_modules()), dict(ref.named_parameters())
    for g, idxs in plan.items():
        grp = graph.groups[g]
        root = grp[0].dep.target.module
        for item in graph.dg.get_pruning_group(root, grp[0].dep.handler, idxs):
            m, cut = item.dep.target.module, torch.as_tensor(list(item.idxs), dtype=torch.long)
            if not graph.dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            if isinstance(m, nn.Parameter):
                ref_params[params[id(m)]].index_fill_(item.dep.target.pruning_dim, cut, 0.0)
                continue
            if id(m) not in by_id:  # traced ops (add, relu, reshape) hold no weights
                continue
            r = ref_mods[by_id[id(m)]]
            target = r.proj if isinstance(r, Attention) else r
            for p in (target.weight, getattr(target, "bias", None)):
                if p is not None:
                    p.index_fill_(0, cut, 0.0)
    return ref


# ----- the usual entry point -------------------------------------------------------------------

@dataclass
class StructuredResult:
    """The pruned model and what was cut, in JSON-ready form."""

    model: nn.Module
    kept: dict[str, tuple[int, int]]
    removed_blocks: list[str] = field(default_factory=list)
    removed_heads: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prune_structured(model: nn.Module, example: torch.Tensor, ratio: float = 0.5, importance: str = "l2",
                     allocation: str = "uniform", per_layer: dict[str, float] | None = None, round_to: int = 8,
                     calib: Iterable[Batch] | None = None, ignored: Iterable[str] | None = None, max_ratio: float = 0.9,
                     blocks: int = 0, head_ratio: float = 0.0, inplace: bool = False) -> StructuredResult:
    """Remove `blocks` least influential blocks, a `head_ratio` of heads, then a `ratio` of channels.

    allocation "uniform" cuts every group by `ratio`; "global" ranks all channels together (scores
    normalised per group). `per_layer` overrides the ratio of named groups. Kept widths are
    multiples of `round_to`.
    """
    if allocation not in ("uniform", "global"):
        raise SlimkitError(f"allocation must be 'uniform' or 'global', got {allocation!r}")
    check_sparsity(ratio, "ratio")
    check_count(blocks, "blocks", 0)
    check_sparsity(head_ratio, "head_ratio")
    calib = list(calib or [])
    removed: list[str] = []
    if blocks:
        if not calib:
            raise SlimkitError("removing blocks ranks them by block influence; pass calib batches")
        n_removable = len(removable_blocks(model))
        if blocks > n_removable:
            raise SlimkitError(f"asked to remove {blocks} blocks but only {n_removable} are removable; lower blocks")
    m = model if inplace else copy.deepcopy(model)
    if blocks:
        infl = block_influences(m, calib)
        removed = sorted(infl, key=lambda n: (infl[n], n))[:blocks]
        remove_blocks(m, removed)
    heads: dict[str, list[int]] = {}
    if head_ratio > 0:
        for name, s in head_importance(m).items():
            drop = min(len(s) - 1, int(round(len(s) * head_ratio)))
            heads[name] = lowest(s, len(s) - drop)
        remove_heads(m, heads)
    graph = build_graph(m, example, ignored)
    sizes = graph.sizes
    scores = compute_scores(graph, importance, calib)
    if allocation == "global":
        keep = global_keep(scores, ratio, round_to, max_ratio, per_layer)
    else:
        keep = uniform_keep(sizes, ratio, round_to, per_layer)
    apply_plan(graph, plan_channels(graph, scores, keep))
    return StructuredResult(m, {g: (keep[g], sizes[g]) for g in sizes}, removed, heads)


def iterative_prune(model: nn.Module, example: torch.Tensor, ratio: float, steps: int,
                    recover, **kwargs) -> StructuredResult:
    """N steps of prune-then-recover; each step removes the same fraction of what is left.

    `recover(model) -> model` runs after every step (fine-tuning); other keyword arguments go to
    prune_structured. Rounding means the final ratio is close to, not exactly, `ratio`.
    """
    if steps < 1:
        raise SlimkitError(f"steps must be >= 1, got {steps}")
    per_step = 1.0 - (1.0 - ratio) ** (1.0 / steps)
    current, first_sizes = model, None
    result = None
    for _ in range(steps):
        result = prune_structured(current, example, per_step, **kwargs)
        first_sizes = first_sizes or {g: n for g, (_, n) in result.kept.items()}
        current = recover(result.model)
        result.model = current
    result.kept = {g: (k, first_sizes.get(g, n)) for g, (k, n) in result.kept.items()}
    return result
