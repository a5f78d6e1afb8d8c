"""OWL: outlier-weighted layerwise sparsity, a per-block allocation for one-shot pruning.

Uniform allocation removes the same share of weights from every decoder block. OWL (Yin et al.,
2023) observes that blocks differ in how many of their weights carry outlier activations, and
that those weights matter most: a block's ratio falls as its share of outliers rises.

For each block, on the dense model and the calibration windows:
- every Linear's Wanda score |W_ij| * ||x_j||_2 (one score per weight);
- the block's outlier share D_b: the fraction of all its scores above `m` times their mean;
- the block's sparsity: the target minus its centred, rescaled share,
  S_b = target - (D'_b - mean(D')), with D' = 2 * lam * (D - min D) / (max D - min D),
  so the mean over blocks is the target and the blocks' sparsities span 2 * lam around it (not
  symmetrically: where most blocks have few outliers, the outlier-rich one falls further).

The shares are measured on the dense blocks (each block fed the dense outputs of the blocks
before it) in one pass before any weight changes. The rule itself (`owl_sparsities`) and the share
(`outlier_share`) are pure functions of tensors, so their definitions are tested directly.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.llm.calibration import advance, capture_block_inputs, collect_input_stats, decoder_layers

M_DEFAULT = 5.0  # a score above 5x its block's mean counts as an outlier (the paper's setting)
LAMBDA_DEFAULT = 0.08  # blocks' sparsities span 2 * 0.08 around the target (the paper's setting)


def outlier_share(scores: list[torch.Tensor], m: float = M_DEFAULT) -> float:
    """The fraction of all `scores` (one block's Linears together) above `m` times their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_sparsities(shares: list[float], sparsity: float, lam: float = LAMBDA_DEFAULT) -> list[float]:
    """Per block, the sparsity OWL gives it (see the module docstring); uniform when shares are equal."""
    if not shares:
        return []
    if not 0 < lam or not (0 < sparsity - 2 * lam and sparsity + 2 * lam < 1):
        raise SlimkitError(f"OWL spreads the blocks' sparsities over 2 x {lam:g} around {sparsity:g}, which must stay "
                           f"inside (0, 1) whatever the outliers; use a ratio between {2 * lam:g} and {1 - 2 * lam:g}, "
                           f"or uniform allocation")
    d = torch.tensor(shares, dtype=torch.float64)
    span = float(d.max() - d.min())
    if span == 0:
        return [sparsity] * len(shares)
    scaled = (d - d.min()) / span * 2 * lam
    return [float(v) for v in sparsity - (scaled - scaled.mean())]


@torch.no_grad()
def block_outlier_shares(model: nn.Module, windows: torch.Tensor, blocks: list[int], batch_size: int,
                         device: torch.device, m: float = M_DEFAULT) -> dict[int, float]:
    """Each listed block's outlier share on the dense model: calibration flows through every block up
    to the last one listed, unchanged."""
    layers = decoder_layers(model)
    hidden, kwargs = capture_block_inputs(model, windows, batch_size, device)
    shares: dict[int, float] = {}
    for i in range(max(blocks) + 1):
        block = layers[i]
        home = next(block.parameters()).device
        block.to(device)
        if i in blocks:
            stats = collect_input_stats(block, hidden, kwargs, False, device)
            shares[i] = outlier_share([lin.weight.abs().float() * st.sq.sqrt().reshape(1, -1)
                                       for lin, st in stats.items()], m)
        advance(block, hidden, kwargs)
        block.to(home)
    return shares


__all__ = ["LAMBDA_DEFAULT", "M_DEFAULT", "block_outlier_shares", "outlier_share", "owl_sparsities"]
