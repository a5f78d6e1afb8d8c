"""Unstructured magnitude pruning: |w| <= theta is removed; P_r = sum I(|w| > theta) / M.

Scores, thresholds and masks are pure functions of tensors. Holding masks through training
(`MaskHolder`, `bake`) lives in slimkit.masks, shared with distillation. Biases are left alone.
"""

import math
from collections.abc import Iterable

import torch
from torch import nn

from slimkit.errors import SlimkitError, check_sparsity
from slimkit.masks import Masks, apply_masks
from slimkit.prune.result import PruneResult


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of every Conv and Linear layer, keyed by parameter name, minus modules in `exclude`."""
    skip = set(exclude)
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if name in skip:
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out[f"{name}.weight" if name else "weight"] = module.weight
    unknown = skip - {n for n, _ in model.named_modules()}
    if unknown:
        raise SlimkitError(f"exclude names modules the model does not have: {sorted(unknown)}")
    return out


def threshold_for_sparsity(weights: Iterable[torch.Tensor], sparsity: float) -> float:
    """The theta such that removing |w| <= theta removes `sparsity` of the given weights (pooled).

    Pass one tensor for a per-layer threshold, or all of them for a global one. Ties at theta are
    removed together, so the realised sparsity can exceed the request by the tied count.
    """
    check_sparsity(sparsity)
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights])
    k = int(sparsity * flat.numel())
    if k == 0:
        return -1.0  # nothing satisfies |w| <= -1
    return float(torch.kthvalue(flat, k).values.item())


def check_theta(theta: float, weights: dict[str, torch.Tensor]) -> float:
    """A usable absolute threshold: finite, >= 0 and below the largest |w| (else nothing would be kept)."""
    if not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta < 0:
        raise SlimkitError(f"theta must be a finite number >= 0, got {theta!r}; weights with |w| <= theta are removed")
    largest = max((float(w.detach().abs().max()) for w in weights.values() if w.numel()), default=0.0)
    if theta >= largest:
        raise SlimkitError(f"theta {theta:g} is at or above the largest |w| ({largest:.4g}) and would remove every "
                           f"weight; choose a theta below {largest:.4g}, or give a sparsity instead")
    return float(theta)


def masks_from_threshold(weights: dict[str, torch.Tensor], theta: float | dict[str, float]) -> Masks:
    """Boolean keep-masks: True where |w| > theta (a float, or one theta per weight name)."""
    masks = {}
    for name, w in weights.items():
        t = theta[name] if isinstance(theta, dict) else theta
        masks[name] = w.detach().abs() > t
    return masks


def kept_ratio(masks: Masks) -> tuple[dict[str, float], float]:
    """P_r per layer and in total: the fraction of weights kept (mask True)."""
    per_layer = {n: m.float().mean().item() for n, m in masks.items()}
    total_kept = sum(int(m.sum().item()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return per_layer, (total_kept / total if total else 1.0)


def magnitude_prune(
    model: nn.Module,
    sparsity: float | None = None,
    theta: float | None = None,
    scope: str = "global",
    exclude: Iterable[str] = (),
    ratios: dict[str, float] | None = None,
) -> PruneResult:
    """Zero weights with |w| <= theta, in place; the result holds the masks, P_r and the thresholds.

    Give exactly one of: `theta` (an absolute threshold), `sparsity` (a ratio turned into theta over
    all weights when scope='global', or layer by layer when scope='layer'), or `ratios` (a sparsity
    per parameter name).
    """
    if sum(v is not None for v in (sparsity, theta, ratios)) != 1:
        raise SlimkitError("give exactly one of sparsity, theta or ratios")
    weights = prunable_weights(model, exclude)
    if not weights:
        raise SlimkitError("the model has no Conv or Linear weights to prune")
    if theta is not None:
        thresholds: float | dict[str, float] = check_theta(theta, weights)
    elif ratios is not None:
        unknown = set(ratios) - set(weights)
        if unknown:
            raise SlimkitError(f"ratios name unknown weights {sorted(unknown)}; prunable: {sorted(weights)}")
        thresholds = {n: threshold_for_sparsity([w], ratios.get(n, 0.0)) for n, w in weights.items()}
    elif scope == "global":
        thresholds = threshold_for_sparsity(weights.values(), sparsity)
    elif scope == "layer":
        thresholds = {n: threshold_for_sparsity([w], sparsity) for n, w in weights.items()}
    else:
        raise SlimkitError(f"scope must be 'global' or 'layer', got {scope!r}")
    masks = masks_from_threshold(weights, thresholds)
    apply_masks(model, masks)
    per_layer, total = kept_ratio(masks)
    return PruneResult(model, "magnitude", kept_per_layer=per_layer, kept_total=total, masks=masks,
                       details={"theta": thresholds})
