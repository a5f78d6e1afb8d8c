"""Pruning: unstructured magnitude masks (magnitude.py) and structured removal (structured.py and
its helpers: handlers, cuttable, importance, allocation, layers, latency_cost, select, recovery)."""

from slimkit.prune.cuttable import Survey, survey
from slimkit.prune.handlers import Handler, Heads, register_handler
from slimkit.masks import MaskHolder, apply_masks, bake
from slimkit.prune.magnitude import (
    PruneReport,
    kept_ratio,
    magnitude_prune,
    masks_from_threshold,
    prunable_weights,
    threshold_for_sparsity,
)
from slimkit.prune.structured import (
    StructuredResult,
    build_graph,
    compute_scores,
    iterative_prune,
    prune_structured,
)

__all__ = [
    "Handler",
    "Heads",
    "MaskHolder",
    "PruneReport",
    "StructuredResult",
    "Survey",
    "apply_masks",
    "bake",
    "build_graph",
    "compute_scores",
    "iterative_prune",
    "kept_ratio",
    "magnitude_prune",
    "masks_from_threshold",
    "prunable_weights",
    "prune_structured",
    "register_handler",
    "survey",
    "threshold_for_sparsity",
]
