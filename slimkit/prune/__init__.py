"""Pruning: unstructured magnitude masks (magnitude.py), structured removal (structured.py and its
helpers: handlers, cuttable, importance, allocation, layers) and latency-aware
allocation (latency_cost.py: per-layer widths from measured layer times; the search over
whole-model cuts is compress's, slimkit.compression.search).

Every `prune_*` verb (and `magnitude_prune`, `iterative_prune`) changes the model it is given in
place and returns a `PruneResult` whose `model` is that object; keep a `copy.deepcopy` first when
the dense model is still needed.
"""

from slimkit.prune.cuttable import Survey, survey
from slimkit.prune.handlers import Handler, Heads, register_handler
from slimkit.masks import MaskHolder, apply_masks, bake
from slimkit.prune.latency_cost import LatencyTable, latency_table, prune_latency_aware
from slimkit.prune.magnitude import (
    kept_ratio,
    magnitude_prune,
    masks_from_threshold,
    prunable_weights,
    threshold_for_sparsity,
)
from slimkit.prune.result import PruneResult
from slimkit.prune.structured import (
    build_graph,
    compute_scores,
    iterative_prune,
    prune_structured,
)

__all__ = [
    "Handler",
    "Heads",
    "LatencyTable",
    "MaskHolder",
    "PruneResult",
    "Survey",
    "apply_masks",
    "bake",
    "build_graph",
    "compute_scores",
    "iterative_prune",
    "kept_ratio",
    "latency_table",
    "magnitude_prune",
    "masks_from_threshold",
    "prunable_weights",
    "prune_latency_aware",
    "prune_structured",
    "register_handler",
    "survey",
    "threshold_for_sparsity",
]
