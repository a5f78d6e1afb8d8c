"""What a pruning verb did, in one shape for every method.

Every `prune_*` function of slimkit changes the model it is given in place and returns a
`PruneResult` whose `model` is that same object: a large language model is too big to copy by
default, and one convention means no caller has to remember which verb copies. A caller that still
needs the dense model keeps a `copy.deepcopy` before pruning. (`prune_oneshot_folder` writes a new
folder instead of holding a model, so its `model` is None.)

One name per concept across methods:
- `kept`: per channel group, layer or module, (kept, original) count of its units (channels,
  neurons, heads or KV groups; the key says which module they belong to);
- `kept_per_layer` / `kept_total`: fraction of weights kept (unstructured and one-shot pruning,
  where shapes do not change);
- `removed_blocks`: names of residual blocks or decoder layers removed; `removed_heads`: attention
  module name -> removed head indices (in the module's numbering before the cut);
- `scores`: per-block scores the method ranked by (block influence), where it computed them;
- `masks`: keep-masks of unstructured and one-shot pruning, for holding zeros through fine-tuning;
  tensors, so left out of `as_dict`;
- `kept_intact` / `held`: modules and channel groups left whole, with the reason; `notes`: what a
  report should say;
- `details`: the few method-specific numbers (thresholds, the one-shot target and wall time, the
  latency-aware predictions), JSON-ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class PruneResult:
    """The pruned model (the very object passed in) and what was cut; `as_dict` is JSON-ready."""

    model: nn.Module | None
    method: str
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    kept_per_layer: dict[str, float] = field(default_factory=dict)
    kept_total: float | None = None
    removed_blocks: list[str] = field(default_factory=list)
    removed_heads: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    kept_intact: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Everything but the model and the masks, as plain JSON types."""
        return {"method": self.method, "kept": {k: list(v) for k, v in self.kept.items()},
                "kept_per_layer": dict(self.kept_per_layer), "kept_total": self.kept_total,
                "removed_blocks": list(self.removed_blocks),
                "removed_heads": {k: list(v) for k, v in self.removed_heads.items()}, "scores": dict(self.scores),
                "kept_intact": dict(self.kept_intact), "held": dict(self.held), "notes": list(self.notes),
                "details": dict(self.details)}
