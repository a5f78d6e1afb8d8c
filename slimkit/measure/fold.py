"""Fold eval-mode BatchNorm into the preceding conv, so timings measure what a deployed model costs.

At batch 1 a small CNN spends much of its time in per-op overhead rather than arithmetic. An
eval-mode BatchNorm is an affine map per channel, so it can be merged into the preceding conv's
weights and bias: one op fewer per conv and the same outputs (up to float rounding). Deployment
runtimes do this anyway, so timing folded models measures what a deployed model would cost.
Applied to the dense and the pruned model alike, it removes a fixed overhead from both and makes
the measured speed-up reflect the arithmetic that pruning actually removed.

Pairs are found by running one example: a BatchNorm whose input *is* a conv's output tensor
(identity, with every output kept alive so no address is reused) is folded into that conv. The
folded model is then checked against the original on the example; if the conv's output also fed
something else, the outputs would differ and folding is refused.
"""

import copy
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.measure.cost import _call

_CONVS = (nn.Conv1d, nn.Conv2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)


def conv_bn_pairs(model: nn.Module, example: Any) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm that directly consumes a conv's output on `example`."""
    names = {m: n for n, m in model.named_modules()}
    outputs: list[tuple[nn.Module, torch.Tensor]] = []  # keeps tensors alive: identity stays meaningful
    pairs: list[tuple[str, str]] = []

    def on_conv(mod: nn.Module, _args, out: torch.Tensor) -> None:
        outputs.append((mod, out))

    def on_bn(mod: nn.Module, args) -> None:
        for conv, out in reversed(outputs):
            if out is args[0]:
                pairs.append((names[conv], names[mod]))
                return

    hooks = [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, _CONVS)]
    hooks += [m.register_forward_pre_hook(on_bn) for m in model.modules() if isinstance(m, _BNS)]
    was = model.training
    try:
        with torch.no_grad():
            _call(model.eval(), example)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return pairs


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv1d | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    """A new conv computing bn(conv(x)) with eval-mode statistics: w * s, (b - mean) * s + beta."""
    if conv.out_channels != bn.num_features:
        raise SlimkitError(f"cannot fold BatchNorm of {bn.num_features} channels into a conv with {conv.out_channels}")
    fused = copy.deepcopy(conv)
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    fused.weight = nn.Parameter(conv.weight * scale.reshape(shape))
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    shift = bn.bias if bn.bias is not None else torch.zeros(bn.num_features)
    fused.bias = nn.Parameter((bias - mean) * scale + shift)
    return fused


def fold_batchnorm(model: nn.Module, example: Any, atol: float = 1e-4) -> nn.Module:
    """An eval-mode copy of `model` with every conv->BatchNorm pair merged (BN becomes Identity).

    Raises SlimkitError if the folded copy's outputs on `example` differ from the original's by
    more than `atol` (relative to the output scale), which means a conv output was shared.
    """
    src = copy.deepcopy(model).eval()
    pairs = conv_bn_pairs(src, example)
    folded = copy.deepcopy(src)
    for conv_name, bn_name in pairs:
        _set(folded, conv_name, fold_conv_bn(src.get_submodule(conv_name), src.get_submodule(bn_name)))
        _set(folded, bn_name, nn.Identity())
    with torch.no_grad():
        ref, out = _first_tensor(_call(src, example)), _first_tensor(_call(folded, example))
    err = float((ref - out).abs().max()) / max(1.0, float(ref.abs().max()))
    if err > atol:
        raise SlimkitError(f"folding BatchNorm changed {type(model).__name__}'s outputs by {err:.2e} (relative); "
                           f"a conv output feeding a BatchNorm is also used elsewhere, so it cannot be folded")
    return folded.eval()


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


def _first_tensor(out):
    """The output tensor to compare: the output itself, or the first tensor of a tuple or dict-like output."""
    while not isinstance(out, torch.Tensor):
        values = list(out.values()) if hasattr(out, "values") else list(out)
        out = next(v for v in values if v is not None)
    return out
