"""Weight masks: which weights a sparse model keeps, and the hook that keeps the rest at zero.

Masks are shared by pruning (which makes them) and distillation (which trains under them), so they
live here, apart from both: neither package needs to import the other.
"""

import torch
from torch import nn

from slimkit.errors import SlimkitError

# Boolean keep-masks by parameter name: True where the weight stays.
Masks = dict[str, torch.Tensor]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every masked-out weight in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise SlimkitError(f"mask names parameter {name!r}, which the model does not have")
        params[name].mul_(mask.to(params[name].dtype))


class MaskHolder:
    """Keeps pruned weights at zero through training by re-masking after each optimizer step.

    It hooks `optimizer.step` (register_step_post_hook), so any training loop keeps the masks
    without knowing about them. Call `remove()` (or `bake`) when done.
    """

    def __init__(self, model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.masks = masks
        self._handles = []
        apply_masks(model, masks)
        if optimizer is not None:
            self.attach(optimizer)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles.append(optimizer.register_step_post_hook(lambda *_: apply_masks(self.model, self.masks)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def bake(model: nn.Module, masks: Masks, holder: MaskHolder | None = None) -> nn.Module:
    """Make masks permanent: zero the weights once more and drop any hooks that held them."""
    if holder is not None:
        holder.remove()
    apply_masks(model, masks)
    return model


def zero_masks(model: nn.Module, min_fraction: float = 0.1) -> Masks:
    """Keep-masks of the Linear and Conv weights a prune zeroed, for training that keeps them zero.

    A weight counts as pruned when at least `min_fraction` of it is zero: the stray exact zeros of a
    trained or dequantized dense weight are not worth holding."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return {f"{n}.weight": m.weight != 0 for n, m in model.named_modules()
            if isinstance(m, kinds) and float((m.weight == 0).float().mean()) >= min_fraction}
