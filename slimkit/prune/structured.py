"""Structured pruning: remove whole channels, neurons, attention heads and residual blocks.

Channel coupling comes from Torch-Pruning's DependencyGraph: one group is every parameter slice
that must shrink together (a conv's filters, its BatchNorm, the next conv's inputs, every block on
the same residual stream, a flatten->Linear's input columns). Slimkit decides *which* channels go
(importance.py) and *how many* (allocation.py); Torch-Pruning performs the surgery. Modules other
than plain layers are handled by type through the table in handlers.py (attention, recurrent
layers, own parameters); `survey` sorts every module into cut or kept before tracing, and a channel
group touching anything kept is left whole, so a model with parts nobody can cut is pruned around
them rather than refused. Attention heads and whole blocks are removed directly (layers.py), since
they do not couple with anything outside their module. The result is a plain nn.Module with
smaller tensors and consistent attributes.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from slimkit.errors import SlimkitError, check_count, check_sparsity
from slimkit.prune import importance as imp
from slimkit.prune.allocation import global_keep, lowest, uniform_keep
from slimkit.prune.cuttable import Survey, expand_flattened, linked_nodes, survey
from slimkit.prune.handlers import Handler, NodePruner
from slimkit.prune.hf_config import hf_config_snapshot, sync_hf_config
from slimkit.prune.layers import (  # noqa: F401  (re-exported: heads and blocks are part of this API)
    attention_modules,
    block_influences,
    head_importance,
    masked_heads_reference,
    removable_blocks,
    remove_blocks,
    remove_heads,
)
from slimkit.prune.result import PruneResult

Batch = tuple[torch.Tensor, torch.Tensor]
def classifier_of(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Conv/Linear to run in a forward pass: the head, whose outputs must stay intact."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))]
    was = model.training
    try:
        with torch.no_grad():
            _forward(model.eval(), example)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if not order:
        raise SlimkitError(f"{type(model).__name__} has no Conv or Linear layer to prune")
    return order[-1]


@dataclass
class Graph:
    """A traced model: its dependency graph and prunable channel groups, keyed by root module name.

    `nodes` maps modules cut through a handler to it; `kept_intact` names what stays and why;
    `held` names the channel groups left whole because they touch something kept.
    """

    model: nn.Module
    dg: tp.DependencyGraph
    groups: dict[str, tp.Group]
    names: dict[nn.Module, str] = field(default_factory=dict)
    nodes: dict[nn.Module, Handler] = field(default_factory=dict)
    kept_intact: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {g: int(self.dg.get_out_channels(grp[0].dep.target.module)) for g, grp in self.groups.items()}


def _forward(model: nn.Module, example):
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, (tuple, list)):  # a list means what a tuple means
        return model(*example)
    return model(example)


def _logits(out) -> torch.Tensor:
    """A classifier's scores, from a plain tensor or a Hugging Face output with `logits`."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    raise SlimkitError("taylor importance needs a classifier: the model's output is neither a tensor of scores nor "
                       "has 'logits'; use l1, l2, bn or entropy importance")


def build_graph(model: nn.Module, example: torch.Tensor, ignored: Iterable[str] | None = None) -> Graph:
    """Trace `model` on `example` and list its prunable groups (the classifier head's outputs excluded).

    Groups touching an `ignored` module, or anything `survey` keeps, are not pruned; None means the
    model's own `structured_ignored` list (SmallViT keeps its residual width), or nothing.
    """
    ignored = list(getattr(model, "structured_ignored", ()) if ignored is None else ignored)
    found = survey(model, ignored)
    names = {m: n for n, m in model.named_modules()}
    head = classifier_of(model, example)
    out_frozen = [head] + found.out_frozen
    was_training = model.training
    model.eval()
    customized = {**found.pruners, **{type(m): NodePruner(h) for m, h in found.nodes.items()}}
    try:
        with linked_nodes(found.nodes):
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example, forward_fn=_forward, unwrapped_parameters=found.unwrapped,
                customized_pruners=customized, verbose=False)
    finally:
        model.train(was_training)
    groups, held = {}, {}
    for grp in dg.get_all_groups(ignored_layers=out_frozen, root_module_types=(nn.Conv1d, nn.Conv2d, nn.Linear)):
        root = names[grp[0].dep.target.module]
        why = _holds(grp, dg, found, names)
        if why:
            held[root] = why
        else:
            groups[root] = expand_flattened(dg, found.nodes, grp)
    return Graph(model, dg, groups, names, found.nodes, found.kept_intact, held)


def pruning_group(graph: Graph, name: str, idxs: list[int]) -> tp.Group:
    """The group `name` restricted to channels `idxs`, ready to prune."""
    grp = graph.groups[name]
    return expand_flattened(graph.dg, graph.nodes, graph.dg.get_pruning_group(grp[0].dep.target.module,
                                                                               grp[0].dep.handler, idxs))


def _holds(grp: tp.Group, dg: tp.DependencyGraph, found: Survey, names: dict) -> str | None:
    """Why a group must stay whole: it touches a kept module/parameter or a node's kept outputs."""
    for item in grp:
        m = item.dep.target.module
        if id(m) in found.frozen:
            return f"coupled to kept {names.get(m) or found.param_names.get(id(m), 'parameter')}"
        h = found.nodes.get(m) if isinstance(m, nn.Module) else None
        if h is not None and dg.is_out_channel_pruning_fn(item.dep.handler) and not h.writes(m):
            return f"coupled to the outputs of {names[m]} ({type(m).__name__}), which are not cut"
    return None


def _node_weights(graph: Graph, m: nn.Module, is_out: bool) -> list[tuple[torch.Tensor, int]]:
    """(weight, channel dimension) of every tensor a node handler cuts on that side."""
    h = graph.nodes[m]
    if is_out:
        return [(w.weight, 0) for w in h.writes(m)]
    out = []
    for r in h.reads(m):
        if isinstance(r, nn.RNNBase):
            out += [(getattr(r, f"weight_ih_l0{sfx}"), 1) for sfx in (("", "_reverse") if r.bidirectional else ("",))]
        else:
            out.append((r.weight, 1))
    return out


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
        elif m in graph.nodes:
            for w, dim in _node_weights(graph, m, is_out):
                add(w, dim, "weight")
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
        reads = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) or (isinstance(m, nn.Module) and m in graph.nodes)
        if reads and not graph.dg.is_out_channel_pruning_fn(item.dep.handler):
            return m, list(item.idxs), list(item.root_idxs)
    return None


def check_importance(kind: str, calib: list) -> None:
    """Refuse an unknown importance kind, or Taylor / entropy without calibration batches."""
    if kind not in imp.IMPORTANCE_KINDS:
        raise SlimkitError(f"unknown importance {kind!r}; choose one of {', '.join(imp.IMPORTANCE_KINDS)}")
    if kind in ("taylor", "entropy") and not calib:
        raise SlimkitError(f"{kind} importance needs calibration batches; pass calib=[(x, y), ...]")
    if kind == "taylor" and any(y is None for _, y in calib):
        raise SlimkitError("taylor importance needs labelled calibration batches [(x, y), ...] (it is the "
                           "gradient of the loss on the labels); use l2, bn or entropy without labels")


def compute_scores(graph: Graph, kind: str, calib: Iterable[Batch] | None = None, bins: int = 32,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Importance of every channel of every group; Taylor and entropy run over `calib` batches."""
    batches = list(calib or [])
    check_importance(kind, batches)
    sizes = graph.sizes
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
            torch.nn.functional.cross_entropy(_logits(_forward(model, x)), y).backward()
        model.train(was)
        scores = {g: imp.taylor_scores(slices_of(graph, g), n) for g, n in sizes.items()}
        model.zero_grad(set_to_none=True)
        return scores
    consumers = {g: _consumer(graph, g) for g in sizes}
    seen: dict[nn.Module, list[torch.Tensor]] = {c[0]: [] for c in consumers.values() if c}
    def grab(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        seen[mod].append(first.detach())

    hooks = [m.register_forward_pre_hook(grab, with_kwargs=True) for m in seen]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            for x, _ in batches:
                _forward(model, x)
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
        cdim = 1 if isinstance(m, (nn.Conv1d, nn.Conv2d)) else act.dim() - 1  # Linear, attention, RNN: last
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
            pruning_group(graph, g, idxs).prune()
    return graph.model


@torch.no_grad()
def masked_reference(graph: Graph, plan: ChannelPlan) -> nn.Module:
    """A dense copy whose planned channels output exactly zero: what the pruned model must equal."""
    ref = copy.deepcopy(graph.model)
    by_id = {id(m): n for n, m in graph.model.named_modules()}
    params = {id(p): n for n, p in graph.model.named_parameters()}
    ref_mods, ref_params = dict(ref.named_modules()), dict(ref.named_parameters())
    for g, idxs in plan.items():
        for item in pruning_group(graph, g, idxs):
            m, cut = item.dep.target.module, torch.as_tensor(list(item.idxs), dtype=torch.long)
            if not graph.dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            if isinstance(m, nn.Parameter):
                ref_params[params[id(m)]].index_fill_(item.dep.target.pruning_dim, cut, 0.0)
                continue
            if id(m) not in by_id:  # traced ops (add, relu, reshape) hold no weights
                continue
            r = ref_mods[by_id[id(m)]]
            targets = graph.nodes[m].writes(r) if m in graph.nodes else [r]
            for target in targets:
                for p in (target.weight, getattr(target, "bias", None)):
                    if p is not None:
                        p.index_fill_(0, cut, 0.0)
    return ref


# ----- the usual entry point -------------------------------------------------------------------

def prune_structured(model: nn.Module, example: torch.Tensor, ratio: float = 0.5, importance: str = "l2",
                     allocation: str = "uniform", per_layer: dict[str, float] | None = None, round_to: int = 8,
                     calib: Iterable[Batch] | None = None, ignored: Iterable[str] | None = None, max_ratio: float = 0.9,
                     blocks: int = 0, head_ratio: float = 0.0) -> PruneResult:
    """Remove `blocks` least influential blocks, a `head_ratio` of heads, then a `ratio` of channels.

    The model is changed in place (keep a `copy.deepcopy` first for the dense one); the result's
    `kept` holds (kept, original) channels per group, `kept_intact` every module left whole (with
    the reason) and `held` every channel group left whole because it is coupled to one, so a
    report can say what was not cut. allocation "uniform" cuts every group by `ratio`; "global"
    ranks all channels together (scores normalised per group). `per_layer` overrides the ratio of
    named groups. Kept widths are multiples of `round_to`.
    """
    if allocation not in ("uniform", "global"):
        raise SlimkitError(f"allocation must be 'uniform' or 'global', got {allocation!r}")
    check_sparsity(ratio, "ratio")
    check_count(blocks, "blocks", 0)
    check_sparsity(head_ratio, "head_ratio")
    calib = list(calib or [])
    check_importance(importance, calib)  # before anything is cut: the model is pruned in place
    removed: list[str] = []
    if blocks:
        if not calib:
            raise SlimkitError("removing blocks ranks them by block influence; pass calib batches")
        n_removable = len(removable_blocks(model))
        if blocks > n_removable:
            raise SlimkitError(f"asked to remove {blocks} blocks but only {n_removable} are removable; lower blocks")
    if ignored is not None:
        survey(model, ignored)  # names are checked before anything is cut
    infl: dict[str, float] = {}
    if blocks:
        infl = block_influences(model, calib)
        removed = sorted(infl, key=lambda n: (infl[n], n))[:blocks]
        remove_blocks(model, removed)
    heads: dict[str, list[int]] = {}
    if head_ratio > 0:
        frozen = survey(model, list(getattr(model, "structured_ignored", ()) if ignored is None else ignored)).frozen
        for name, s in head_importance(model).items():
            if id(model.get_submodule(name)) in frozen:
                continue
            drop = min(len(s) - 1, int(round(len(s) * head_ratio)))
            heads[name] = lowest(s, len(s) - drop)
        remove_heads(model, heads)
    graph = build_graph(model, example, ignored)
    sizes = graph.sizes
    scores = compute_scores(graph, importance, calib)
    if allocation == "global":
        keep = global_keep(scores, ratio, round_to, max_ratio, per_layer)
    else:
        keep = uniform_keep(sizes, ratio, round_to, per_layer)
    dense_config = hf_config_snapshot(model)
    apply_plan(graph, plan_channels(graph, scores, keep))
    notes = sync_hf_config(model, dense_config)
    return PruneResult(model, "structured", {g: (keep[g], sizes[g]) for g in sizes}, removed_blocks=removed,
                       removed_heads=heads, scores=infl, kept_intact=graph.kept_intact, held=graph.held, notes=notes)


def iterative_prune(model: nn.Module, example: torch.Tensor, ratio: float, steps: int,
                    recover, **kwargs) -> PruneResult:
    """N steps of prune-then-recover, in place; each step removes the same fraction of what is left.

    `recover(model) -> model` runs after every step (fine-tuning; the next step prunes what it
    returns, and the result's `model` is its last return, `model` itself when it trains in place);
    other keyword arguments go to prune_structured. Rounding means the final ratio is close to, not
    exactly, `ratio`.
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
