"""Pruning: unstructured magnitude masks here; structured and LLM pruning live in sibling modules."""

from slimkit.prune.magnitude import (
    MaskHolder,
    PruneReport,
    apply_masks,
    bake,
    kept_ratio,
    magnitude_prune,
    masks_from_threshold,
    prunable_weights,
    threshold_for_sparsity,
)

__all__ = [
    "MaskHolder",
    "PruneReport",
    "apply_masks",
    "bake",
    "kept_ratio",
    "magnitude_prune",
    "masks_from_threshold",
    "prunable_weights",
    "threshold_for_sparsity",
]
