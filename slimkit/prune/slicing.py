"""The slicing primitive every family's width cut uses: a Linear that keeps some rows or columns.

FFN neurons, attention heads and KV groups are all removed the same way: the projection that
writes them keeps the chosen output rows (and their bias), the one that reads them keeps the
chosen input columns. One function does both, so a fix here reaches every family.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def shrink_linear(lin: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear with the output rows `out_idx` and input columns `in_idx` of `lin` (None: all),
    on the same device and dtype; the bias follows the kept rows."""
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
        b = b.index_select(0, out_idx.to(b.device)) if b is not None else None
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if b is not None:
        new.bias.copy_(b)
    return new


__all__ = ["shrink_linear"]
