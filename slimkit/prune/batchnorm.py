"""BatchNorm after structured pruning: re-estimate its statistics.

Removing channels changes the distribution every later BatchNorm sees, and its
running statistics no longer match: a pruned ResNet can drop to chance accuracy although its
weights are fine. Re-estimating the statistics with a few forward passes (no gradients, no weight
change) repairs that (EagleEye's "adaptive BN"), so an accuracy measured before recovery says
something about the pruned structure rather than about stale statistics.

Folding BatchNorm into convs for timing lives in slimkit.measure.fold.
"""

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], reset: bool = True) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var over `batches` (inputs only), in place.

    Statistics are a plain average over the batches (momentum None) after a reset; weights and
    affine parameters are untouched. Returns the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        if reset:
            m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
    return model.eval()
