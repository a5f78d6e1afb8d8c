"""Structured compression of Whisper that keeps a plain `WhisperForConditionalGeneration`.

Two cuts, each leaving a model whose config describes it exactly, so `save_pretrained` writes a
folder that `from_pretrained` rebuilds and `generate()` runs:

- **decoder depth** (`remove_decoder_layers`, `spaced_layers`): drop whole decoder layers, as
  distil-whisper does. Which layers stay: by default the maximally spaced ones (first and last for
  2 of 4). Distil-whisper initialises its 2-layer students from the teacher's first and last
  decoder layers: the first holds the token embedding's processing, the last feeds the shared
  output projection, and both ends are what a student cannot learn back cheaply. Any other set is
  a `keep=` away. The kept layers are renumbered (each attention's `layer_idx` indexes the KV
  cache), `config.decoder_layers` follows, and the generation config's `alignment_heads` (pairs of
  decoder layer and head used for word timestamps) keep only pairs of kept layers, renumbered.
- **encoder FFN width** (`prune_encoder_ffn`, `ffn_neuron_scores`): remove the same number of
  hidden neurons from every encoder layer's fc1/fc2 (a neuron is a row of fc1 and its bias, and the
  matching column of fc2), because WhisperConfig has one `encoder_ffn_dim` for all layers. Removing
  a neuron removes exactly its contribution to the layer's output (plus GELU(bias) times the fc2
  column, which is small for low-scoring neurons; recovery trains it back). Neurons are ranked by
  a pure magnitude score. Encoder attention heads are not cut: WhisperAttention derives its head
  size as d_model / heads, so no WhisperConfig describes fewer heads of the original size, and the
  folder would not rebuild with `from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from slimkit.errors import SlimkitError, check_sparsity
from slimkit.prune.result import PruneResult
from slimkit.prune.slicing import shrink_linear


def _layers(model: nn.Module, side: str) -> nn.ModuleList:
    """The layer list of a Whisper model's "encoder" or "decoder" (WhisperForConditionalGeneration or WhisperModel)."""
    getter = getattr(model, f"get_{side}", None)
    layers = getattr(getter() if callable(getter) else None, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise SlimkitError(f"{type(model).__name__} is not a Whisper model with {side}.layers")
    return layers


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _layers(model, "decoder")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    return _layers(model, "encoder")


def spaced_layers(n_layers: int, n_keep: int) -> list[int]:
    """`n_keep` of `n_layers` indices spread as evenly as possible, first and last always included
    (distil-whisper's choice: 2 of 4 -> [0, 3]; 1 keeps the first)."""
    if not 1 <= n_keep <= n_layers:
        raise SlimkitError(f"can keep between 1 and {n_layers} decoder layers, asked for {n_keep}")
    if n_keep == 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (n_keep - 1)) for i in range(n_keep)})


def check_keep(keep: Sequence[int], n_layers: int) -> list[int]:
    """`keep` as a sorted list of distinct, valid decoder layer indices; one SlimkitError line if not."""
    keep = list(keep)
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= i < n_layers for i in keep):
        raise SlimkitError(f"decoder layers to keep must be distinct indices in [0, {n_layers}), at least one; "
                           f"got {keep}")
    return sorted(keep)


def remove_decoder_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only decoder layers `keep` (in order), in place; config and generation config follow."""
    layers = decoder_layers(model)
    keep = check_keep(keep, len(layers))
    kept = nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    model.get_decoder().layers = kept
    model.config.decoder_layers = len(keep)
    gen = getattr(model, "generation_config", None)
    heads = getattr(gen, "alignment_heads", None)
    if heads:
        where = {old: new for new, old in enumerate(keep)}
        gen.alignment_heads = [[where[layer], head] for layer, head in heads if layer in where]
    return model


def ffn_neuron_scores(fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """Per hidden neuron: ||fc1 row|| * ||fc2 column||, a bound on how much the neuron can move the
    layer's output for an input of unit norm (before the GELU's own scaling)."""
    return fc1.weight.detach().float().norm(dim=1) * fc2.weight.detach().float().norm(dim=0)


def prune_encoder_ffn(model: nn.Module, fraction: float) -> PruneResult:
    """Remove round(fraction * encoder_ffn_dim) neurons with the lowest `ffn_neuron_scores` from
    every encoder layer, in place; the result's `kept` holds (kept, original) neurons per layer's fc1."""
    check_sparsity(fraction, "encoder FFN fraction")
    layers = encoder_layers(model)
    dim = layers[0].fc1.out_features
    n_keep = dim - round(fraction * dim)
    if n_keep < 1:
        raise SlimkitError(f"removing {fraction:g} of {dim} FFN neurons leaves none; remove less")
    if any(layer.fc1.out_features != dim for layer in layers):
        raise SlimkitError("encoder layers differ in FFN width; WhisperConfig needs one encoder_ffn_dim")
    names = {id(m): n for n, m in model.named_modules()}
    kept = {}
    for layer in layers:
        idx = ffn_neuron_scores(layer.fc1, layer.fc2).topk(n_keep).indices.sort().values
        layer.fc1 = shrink_linear(layer.fc1, out_idx=idx)
        layer.fc2 = shrink_linear(layer.fc2, in_idx=idx)
        kept[f"{names[id(layer)]}.fc1"] = (n_keep, dim)
    model.config.encoder_ffn_dim = n_keep
    return PruneResult(model, "encoder-ffn", kept)


__all__ = ["check_keep", "decoder_layers", "encoder_layers", "ffn_neuron_scores", "prune_encoder_ffn",
           "remove_decoder_layers", "spaced_layers"]
