"""Depth pruning: score decoder blocks and remove the least informative.

Two rules, both from one dense forward over calibration tokens (hooks on every block):
- "influence": block influence BI_i = 1 − E_tokens[cos(x_i, y_i)], where x_i is what enters block i
  and y_i what leaves it; the n blocks of lowest BI go, wherever they are. A block whose output
  points where its input pointed changes little, so removing it costs little.
- "span": the run of n consecutive blocks whose input and output are closest in angle
  (slimkit.prune.layers.span_distances) goes as a unit, which counts what neighbours compound.

After a cut, each kept block that now sits before a gap should do what the removed blocks did:
`seam_pairs` names, for recovery's layer-wise terms, the teacher state each such block must reach.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.llm.calibration import decoder_layers
from slimkit.prune.layers import influences_of, span_distances
from slimkit.prune.result import PruneResult

DEPTH_RULES = ("influence", "span")


def _calibration_pass(model: nn.Module, windows: torch.Tensor, batch_size: int):
    """The decoder blocks, the windows in batches, and the call that runs the model's body on a batch
    (no LM head, no KV cache): what both depth scores hook into."""
    body = model.model if hasattr(model, "model") else model
    batches = [windows[i:i + batch_size] for i in range(0, windows.shape[0], batch_size)]
    return decoder_layers(model), batches, lambda ids: body(input_ids=ids, use_cache=False)


def block_influence(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = True) -> list[float]:
    """BI per decoder block, averaged over every calibration token (slimkit.prune.layers.influences_of)."""
    layers, batches, run = _calibration_pass(model, windows, batch_size)
    scores = influences_of(model, {str(i): layer for i, layer in enumerate(layers)}, batches, run, progress)
    return [scores[str(i)] for i in range(len(layers))]


def span_scores(model: nn.Module, windows: torch.Tensor, span: int, batch_size: int = 4,
                progress: bool = True) -> list[float]:
    """Angular distance over every run of `span` consecutive decoder blocks, by its first block."""
    layers, batches, run = _calibration_pass(model, windows, batch_size)
    return span_distances(model, list(layers), batches, run, span, progress)


def seam_pairs(removed: list[int], n_layers: int, stack: str = "model.layers") -> list[tuple[str, str]]:
    """(student block, teacher block) module paths whose outputs recovery should match after removing
    the blocks `removed` of `n_layers`: each kept block followed by a gap, paired with the last removed
    block of that gap, whose output is what the next kept block received in the dense model.

    Blocks are named as each model numbers them: kept block j is `{stack}.{j}` in the cut model. A
    gap at the very start has no kept block before it and gives no pair; a gap at the end pairs the
    last kept block with the dense model's last block."""
    gone = set(removed)
    kept = [i for i in range(n_layers) if i not in gone]
    pairs = []
    for j, i in enumerate(kept):
        end = kept[j + 1] if j + 1 < len(kept) else n_layers
        if end - 1 != i:
            pairs.append((f"{stack}.{j}", f"{stack}.{end - 1}"))
    return pairs


def remove_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """Delete decoder blocks `drop` in place and renumber the rest so the model saves and reloads.

    Each attention module's `layer_idx` indexes the KV cache, so the kept blocks are renumbered
    0..n-1, and config.num_hidden_layers (and per-layer lists such as layer_types) follow.
    """
    layers = decoder_layers(model)
    n = len(layers)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) != len(drop):
        raise SlimkitError(f"layers to drop must be distinct indices in [0, {n}), got {drop}")
    if len(drop) >= n:
        raise SlimkitError(f"cannot remove all {n} layers")
    keep = [i for i in range(n) if i not in set(drop)]
    kept = nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    parent = model.model if hasattr(model, "model") and getattr(model.model, "layers", None) is layers else None
    if parent is None:
        raise SlimkitError(f"depth pruning supports models with model.layers; {type(model).__name__} differs")
    parent.layers = kept
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    for attr in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(cfg, attr, None)
        if isinstance(value, list) and len(value) == n:
            setattr(cfg, attr, [value[i] for i in keep])
    return model


def check_depth_cut(n_layers: int, n_remove: int) -> None:
    """Refuse removing `n_remove` of `n_layers` decoder layers unless at least one stays."""
    if not 0 <= n_remove < n_layers:
        raise SlimkitError(f"can remove between 0 and {n_layers - 1} of {n_layers} layers, asked for {n_remove}; "
                           f"remove fewer layers")


def prune_depth(model: nn.Module, windows: torch.Tensor, n_remove: int, progress: bool = True,
                rule: str = "influence") -> PruneResult:
    """Remove `n_remove` blocks in place: those of lowest block influence, or with rule "span" the
    run of consecutive blocks of least angular distance (see the module docstring).

    The result names blocks as the dense model did (`model.layers.<i>`): `scores` holds every
    block's influence (rule "influence") or each run's distance by its first block ("span"),
    `removed_blocks` the removed ones in layer order, `kept` the (kept, original) count of blocks,
    and `details["removed"]` their indices (what seam_pairs takes).
    """
    if rule not in DEPTH_RULES:
        raise SlimkitError(f"unknown depth rule {rule!r}; choose one of {', '.join(DEPTH_RULES)}")
    layers = decoder_layers(model)
    n = len(layers)
    check_depth_cut(n, n_remove)
    names = {id(m): name for name, m in model.named_modules()}
    block_names = [names[id(layer)] for layer in layers]
    if rule == "span" and n_remove > 0:
        scores = span_scores(model, windows, n_remove, progress=progress)
        start = min(range(len(scores)), key=lambda i: scores[i])
        removed = list(range(start, start + n_remove))
    else:
        scores = block_influence(model, windows, progress=progress)
        removed = sorted(sorted(range(n), key=lambda i: scores[i])[:n_remove])
    remove_layers(model, removed)
    stack = block_names[0].rpartition(".")[0]
    return PruneResult(model, "depth", {stack: (n - n_remove, n)}, removed_blocks=[block_names[i] for i in removed],
                       scores=dict(zip(block_names, scores)), details={"removed": removed})
