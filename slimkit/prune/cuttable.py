"""What the structured pruner may cut, decided before tracing, and two fixes to the trace itself.

`survey` sorts every module of a model into: cut by Torch-Pruning as a plain layer, cut through its
handler (handlers.py) as one graph node, or kept with the reason. `linked_nodes` and
`expand_flattened` correct how Torch-Pruning sees handler nodes (see their docstrings).
"""

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from slimkit.errors import SlimkitError
from slimkit.prune.handlers import Handler, handler_for, in_width

_LEAF_OK = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.PReLU)


@dataclass
class Survey:
    """What the pruner may cut in a model, read before tracing.

    `nodes`: modules cut through their handler as one graph node; `frozen`: ids of modules and
    parameters whose channels must stay (every channel group touching one is left whole);
    `out_frozen`: modules whose output channels stay (the classifier head, `keep_with` layers);
    `unwrapped`: own parameters cut with their channels, with the dimension; `kept_intact`: what
    stays and why, for the report.
    """

    nodes: dict[nn.Module, Handler] = field(default_factory=dict)
    pruners: dict[type, tp.pruner.BasePruningFunc] = field(default_factory=dict)
    frozen: set[int] = field(default_factory=set)
    out_frozen: list[nn.Module] = field(default_factory=list)
    unwrapped: list[tuple[nn.Parameter, int]] = field(default_factory=list)
    kept_intact: dict[str, str] = field(default_factory=dict)
    param_names: dict[int, str] = field(default_factory=dict)


def _leaf_reason(m: nn.Module) -> str | None:
    """Why a layer's channels cannot be cut (None: Torch-Pruning cuts it correctly)."""
    if parametrize.is_parametrized(m):
        return "parametrized weight (e.g. weight norm): its stored tensors are not the weight the pruner cuts"
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return "transposed convolution"
    if isinstance(m, (nn.Conv1d, nn.Conv2d)) and 1 < m.groups and not (m.groups == m.in_channels == m.out_channels):
        return f"grouped convolution (groups={m.groups}): its channels are coupled within groups"
    if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
        return f"group normalisation over {m.num_groups} groups: cutting channels would move them between groups"
    return None


def survey(model: nn.Module, ignored: Iterable[str] = ()) -> Survey:
    """Sort every module into cut, cut-through-its-handler, or kept (with the reason).

    `ignored` is read first: an ignored module keeps its exact weights, and so does every channel
    coupled to it. A module type the handler table does not know, holding parameters of its own, keeps
    them (and their channels); nothing is refused.
    """
    modules = dict(model.named_modules())
    ignored = list(ignored)
    missing = [n for n in ignored if n not in modules]
    if missing:
        raise SlimkitError(f"ignored layers {missing} are not modules of {type(model).__name__}; "
                           f"use names from model.named_modules()")
    s = Survey(param_names={id(p): n for n, p in model.named_parameters()})
    root_params = dict(getattr(model, "unwrapped_parameters", {}))
    whole: dict[str, str] = {n: "ignored" for n in ignored}  # subtrees kept whole
    covered: list[str] = []  # subtrees a node handler takes care of

    def under(name: str, prefixes) -> bool:
        return any(name == p or name.startswith(p + ".") or p == "" for p in prefixes)

    for name, m in modules.items():
        if under(name, whole) or under(name, covered):
            continue
        h = handler_for(m)
        if h is not None and h.keep:
            whole[name] = h.keep
            continue
        if h is not None and h.pruner is not None:
            s.pruners[type(m)] = h.pruner
        reason = _leaf_reason(m)
        if reason:
            whole[name] = reason
            continue
        if h is not None and h.is_node:
            s.nodes[m] = h
            covered.append(name)
            if h.kept_outputs:
                s.kept_intact[name or _root(model)] = h.kept_outputs
            continue
        declared = dict(h.params) if h is not None else {}
        for kw in (h.keep_with if h is not None else ()):
            s.out_frozen.append(m.get_submodule(kw))
        own = [(p, t) for p, t in m.named_parameters(recurse=False) if t is not None]
        if not own or isinstance(m, _LEAF_OK):
            continue
        kept = []
        for p, t in own:
            if p in declared:
                s.unwrapped.append((t, declared[p]))
            elif m is model and p in root_params:
                s.unwrapped.append((t, root_params[p]))
            else:
                s.frozen.add(id(t))
                kept.append(p)
        if kept:
            why = ("kept, with the hidden width it follows" if h is not None and h.keep_with
                   else "no handler says how to cut them; they and their channels are kept")
            s.kept_intact[name or _root(model)] = f"holds its own parameters {', '.join(kept)}: {why}"
    for name, reason in whole.items():
        s.kept_intact[name or _root(model)] = reason
        sub = modules[name]
        s.frozen.update(id(x) for x in sub.modules())
        s.frozen.update(id(p) for p in sub.parameters())
    return s


def _root(model: nn.Module) -> str:
    return f"<root {type(model).__name__}>"


class _Link(torch.autograd.Function):
    """One traced edge from a node's input to its output, hiding the node's inner operations."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None


@contextmanager
def linked_nodes(nodes: dict[nn.Module, Handler]):
    """While tracing, each node's output hangs directly off its input.

    Otherwise Torch-Pruning walks the node's inner operations (a 2-layer BiLSTM concatenates its
    directions between layers) and maps the node's input channels through them, which is wrong.
    """
    def wrap(m: nn.Module):
        inner = m.forward

        def forward(*args, **kwargs):
            out = inner(*args, **kwargs)
            x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            if not x.requires_grad:  # fed by the model's input: no channels upstream to map
                return out
            first = out[0] if isinstance(out, tuple) else out
            y = _Link.apply(x, first.detach())
            return (y, *out[1:]) if isinstance(out, tuple) else y
        return forward

    own = {m: m.__dict__["forward"] for m in nodes if "forward" in m.__dict__}
    try:
        for m in nodes:
            m.forward = wrap(m)
        yield
    finally:
        for m in nodes:
            del m.forward
            if m in own:
                m.forward = own[m]


def expand_flattened(dg: tp.DependencyGraph, nodes: dict, grp: tp.Group) -> tp.Group:
    """Map channels to features where a flatten feeds a node handler (a CRNN's conv -> LSTM).

    Torch-Pruning expands the indices of a flatten only for the Linear layers it knows: a node that
    reads C*H features after flatten(1, 2) gets the C channel indices. Flatten is channel-major, so
    channel c is features c*H .. c*H + H-1.
    """
    n_root = int(dg.get_out_channels(grp[0].dep.target.module))
    if not any(isinstance(it.dep.target.module, tp.ops._ReshapeOp) for it in grp):
        return grp
    for i, item in enumerate(grp):
        m = item.dep.target.module
        if not (isinstance(m, nn.Module) and m in nodes and dg.is_in_channel_pruning_fn(item.dep.handler)):
            continue
        width = in_width(m, nodes[m])
        idxs = list(item.idxs)
        if width > n_root and width % n_root == 0 and idxs and max(idxs) < n_root:
            k = width // n_root
            roots = list(item.root_idxs)
            new = tp._helpers.GroupItem(item.dep, [c * k + j for c in idxs for j in range(k)])
            new.root_idxs = [r for r in roots for _ in range(k)]
            grp[i] = new
    return grp
