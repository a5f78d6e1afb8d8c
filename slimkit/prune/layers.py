"""Removing whole attention heads and whole residual blocks.

Neither couples with anything outside its module (a head lives between q/k/v and proj; a block
with an identity shortcut maps the stream to itself), so they are cut here directly rather than
through the dependency graph.
"""

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from slimkit.errors import SlimkitError
from slimkit.prune import importance as imp
from slimkit.prune.handlers import Heads, handler_for

Batch = tuple[torch.Tensor, torch.Tensor]


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module whose handler can remove heads (slimkit's Attention, Hugging Face attention, ...)."""
    out = {}
    for n, m in model.named_modules():
        h = handler_for(m)
        if h is not None and h.heads is not None:
            out[n] = m
    return out


def heads_of(model: nn.Module, name: str) -> Heads:
    """The heads view of attention module `name` (its handler knows where q/k/v and the output live)."""
    m = model.get_submodule(name)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return handler_for(m).heads(m, parent)


def head_importance(model: nn.Module, kind: str = "l2") -> dict[str, torch.Tensor]:
    """Per-head magnitude (q/k/v rows and output-projection columns of the head) of every attention module."""
    if kind not in ("l1", "l2"):
        raise SlimkitError(f"head importance supports l1 or l2, got {kind!r}")
    out = {}
    for name in attention_modules(model):
        a = heads_of(model, name)
        n = a.num_heads * a.head_dim
        idx = list(range(n))
        sl = [imp.Slice(lin.weight.data, None, 0, idx, idx, "weight") for lin in (a.q, a.k, a.v)]
        sl.append(imp.Slice(a.out.weight.data, None, 1, idx, idx, "weight"))
        out[name] = imp.head_scores(imp.magnitude_scores(sl, n, 1 if kind == "l1" else 2), a.num_heads)
    return out


@torch.no_grad()
def remove_heads(model: nn.Module, plan: dict[str, list[int]]) -> nn.Module:
    """Remove whole heads in place: slice q/k/v rows and output-projection columns, then let the
    handler set the head count (and sizes derived from it) the module's forward reads."""
    mods = attention_modules(model)
    for name, heads in plan.items():
        if name not in mods:
            raise SlimkitError(f"{name!r} is not an attention module; known: {sorted(mods)}")
        a = heads_of(model, name)
        if not heads:
            continue
        if len(set(heads)) >= a.num_heads or min(heads) < 0 or max(heads) >= a.num_heads:
            raise SlimkitError(f"{name}: cannot remove heads {heads} of {a.num_heads}; keep at least one")
        cut = [h * a.head_dim + i for h in sorted(set(heads)) for i in range(a.head_dim)]
        for lin in (a.q, a.k, a.v):
            tp.prune_linear_out_channels(lin, cut)
        tp.prune_linear_in_channels(a.out, cut)
        handler_for(mods[name]).set_heads(mods[name], a.num_heads - len(set(heads)))
    return model


@torch.no_grad()
def masked_heads_reference(model: nn.Module, plan: dict[str, list[int]]) -> nn.Module:
    """Dense copy where the planned heads contribute nothing (their v rows and bias are zero)."""
    ref = copy.deepcopy(model)
    for name, heads in plan.items():
        a = heads_of(ref, name)
        for h in heads:
            a.v.weight[h * a.head_dim:(h + 1) * a.head_dim] = 0
            if a.v.bias is not None:
                a.v.bias[h * a.head_dim:(h + 1) * a.head_dim] = 0
    return ref


# ----- whole residual blocks -------------------------------------------------------------------

def removable_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Blocks whose output has the input's shape and whose `removable` says so (identity shortcut)."""
    return {n: m for n, m in model.named_modules() if getattr(m, "removable", False) is True}


@torch.no_grad()
def _watch(model: nn.Module, blocks: dict[Any, nn.Module], seen: Callable[[Any, torch.Tensor, torch.Tensor], None],
           batches: Iterable, run: Callable[[Any], Any], desc: str, progress: bool,
           after_batch: Callable[[], None] | None = None) -> None:
    """Run `run(batch)` over `batches` in eval mode, handing `seen(key, input, output)` what each of
    `blocks` took and gave, and calling `after_batch()` after each batch; the model's mode is restored
    and the hooks removed however it ends.

    A block's input is its first positional argument, or `hidden_states` where a Hugging Face layer
    takes it by keyword; its output is the tensor it returns, or the first item of a tuple."""
    def hook(key):
        def fn(_mod, args, kwargs, out):
            seen(key, args[0] if args else kwargs["hidden_states"], out[0] if isinstance(out, tuple) else out)
        return fn

    hooks = [m.register_forward_hook(hook(k), with_kwargs=True) for k, m in blocks.items()]
    was = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            run(batch)
            if after_batch is not None:
                after_batch()
    finally:
        model.train(was)
        for h in hooks:
            h.remove()


def _channel_dim(y: torch.Tensor) -> int:
    """The channels: the last dim of (batch, tokens, width), dim 1 of feature maps."""
    return y.dim() - 1 if y.dim() == 3 else 1


@torch.no_grad()
def influences_of(model: nn.Module, blocks: dict[str, nn.Module], batches: Iterable, run: Callable[[Any], Any],
                  progress: bool = False) -> dict[str, float]:
    """Block influence, 1 - cos(input, output), of each of `blocks`, averaged over every pixel or token of
    every batch, from one forward pass per batch (`run(batch)` makes it): the one hook every family's
    depth cut ranks its blocks with. The cosine runs over the channels (`_watch` says what a block's
    input and output are)."""
    sums = {n: 0.0 for n in blocks}
    counts = {n: 0 for n in blocks}

    def seen(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        per_position = 1.0 - imp.block_cosines(x, y, _channel_dim(y))
        sums[name] += float(per_position.sum())
        counts[name] += per_position.numel()

    _watch(model, blocks, seen, batches, run, "block influence", progress)
    return {n: sums[n] / counts[n] for n in blocks if counts[n]}


@torch.no_grad()
def span_distances(model: nn.Module, blocks: list[nn.Module], batches: Iterable, run: Callable[[Any], Any],
                   span: int, progress: bool = False) -> list[float]:
    """Angular distance arccos(cos(h_l, h_{l+span})) / pi between what enters block l and what leaves
    block l+span-1, averaged over every token of every batch, for each start l of a run of `span`
    consecutive `blocks` (in stack order).

    Block influence scores blocks one at a time; removing several neighbours compounds what each
    adds. This scores a whole run of blocks at once, so a depth cut can remove the run that changes
    the stream least as a unit. The angle (not 1 - cos) keeps distances of long spans comparable."""
    n = len(blocks)
    if not 1 <= span <= n:
        raise SlimkitError(f"a span of consecutive blocks must be 1..{n}, got {span}")
    sums = [0.0] * (n - span + 1)
    count = 0
    states: list[torch.Tensor | None] = [None] * (n + 1)  # h_0..h_n: the inputs of the blocks, then the last output

    def seen(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        states[i] = x.detach()
        if i == n - 1:
            states[n] = y.detach()

    def after_batch() -> None:
        nonlocal count
        if any(h is None for h in states):
            raise SlimkitError("a block was not called in the forward pass: span distances need every block")
        cdim = _channel_dim(states[0])
        for l in range(n - span + 1):
            cos = imp.block_cosines(states[l], states[l + span], cdim).clamp(-1.0, 1.0)
            sums[l] += float(torch.arccos(cos).sum() / torch.pi)
        count += int(cos.numel())
        states[:] = [None] * (n + 1)

    _watch(model, dict(enumerate(blocks)), seen, batches, run, "span distance", progress, after_batch)
    return [s / count for s in sums]


def block_influences(model: nn.Module, calib: Iterable[Batch]) -> dict[str, float]:
    """Block influence of every removable block over calibration batches (inputs, targets)."""
    return influences_of(model, removable_blocks(model), calib, lambda batch: model(batch[0]))


def remove_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Replace the named removable blocks with nn.Identity, in place."""
    blocks = removable_blocks(model)
    for name in names:
        if name not in blocks:
            raise SlimkitError(f"{name!r} is not a removable block (needs an identity shortcut); removable: {sorted(blocks)}")
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return model
