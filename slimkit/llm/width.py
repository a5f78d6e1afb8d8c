"""Width pruning of Llama-style decoders: FFN neurons and attention heads, GQA-correct.

Heads leave together with their KV group. In grouped-query attention each key/value head serves
`num_attention_heads / num_key_value_heads` query heads, and the modeling code derives that ratio
from the config and repeats K/V that many times. Removing a whole group (its K and V head plus all
query heads reading from it) keeps the ratio, so the pruned model is still a valid instance of the
same class; dropping query heads one by one would leave groups of unequal size, which neither the
config nor `repeat_kv` can express. (That mismatch is what breaks generic dependency-graph pruners
on Llama and Qwen.)

Widths are uniform across layers because the HF config has one `intermediate_size`, one
`num_attention_heads` and one `num_key_value_heads` for all layers: each layer keeps the same
number of neurons / groups, but which ones it keeps is decided per layer. `head_dim` is written to
the config explicitly so that hidden_size / num_attention_heads no longer has to equal it.

Importance is activation-aware: neuron j scores ‖a_j‖₂·‖W_down[:, j]‖₂ and a KV group scores
Σ_heads ‖o_h‖₂·‖W_o[:, h]‖_F over calibration tokens, so what rarely fires or barely reaches the
residual stream goes first.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from slimkit.errors import SlimkitError, check_sparsity
from slimkit.llm.calibration import decoder_layers
from slimkit.prune.result import PruneResult
from slimkit.prune.slicing import shrink_linear


def head_columns(heads: list[int], head_dim: int) -> torch.Tensor:
    """The channel indices that the listed heads occupy in a projection, in the order given."""
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def _accumulate(sums: list[torch.Tensor], i: int):
    """Forward hook adding Σ x² per input channel to sums[i]; returns None so the output is untouched."""
    def hook(_module, inp, _out) -> None:
        x = inp[0].detach()
        sums[i].add_(x.double().pow(2).reshape(-1, x.shape[-1]).sum(0))
    return hook


@torch.no_grad()
def collect_width_stats(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
                        progress: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: Σ a_j² of FFN activations (down_proj inputs) and Σ o² of attention outputs per channel."""
    layers = decoder_layers(model)
    ffn = [torch.zeros(l.mlp.down_proj.in_features, dtype=torch.float64) for l in layers]
    att = [torch.zeros(l.self_attn.o_proj.in_features, dtype=torch.float64) for l in layers]
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_hook(
            _accumulate(ffn, i)))
        handles.append(layer.self_attn.o_proj.register_forward_hook(
            _accumulate(att, i)))
    model.eval()
    try:
        for s in tqdm(range(0, windows.shape[0], batch_size), desc="width stats", disable=not progress, leave=False):
            model(input_ids=windows[s:s + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ffn, att


@torch.no_grad()
def remove_ffn_neurons(model: nn.Module, keep_per_layer: list[torch.Tensor]) -> None:
    """Keep the given intermediate neurons (same count in every layer) of every gated MLP."""
    sizes = {int(k.numel()) for k in keep_per_layer}
    if len(sizes) != 1:
        raise SlimkitError("the HF config has one intermediate_size: keep the same number of neurons per layer")
    for layer, keep in zip(decoder_layers(model), keep_per_layer):
        mlp = layer.mlp
        keep = keep.sort().values
        mlp.gate_proj = shrink_linear(mlp.gate_proj, out_idx=keep)
        mlp.up_proj = shrink_linear(mlp.up_proj, out_idx=keep)
        mlp.down_proj = shrink_linear(mlp.down_proj, in_idx=keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(keep.numel())
    model.config.intermediate_size = sizes.pop()


@torch.no_grad()
def remove_kv_groups(model: nn.Module, keep_groups_per_layer: list[list[int]]) -> None:
    """Keep the listed KV groups (same count per layer), with all their query heads."""
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    group = n_heads // n_kv
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    counts = {len(g) for g in keep_groups_per_layer}
    if len(counts) != 1 or 0 in counts:
        raise SlimkitError("keep the same, non-zero number of KV groups in every layer")
    for layer, groups in zip(decoder_layers(model), keep_groups_per_layer):
        if any(not 0 <= g < n_kv for g in groups):
            raise SlimkitError(f"KV group indices must lie in [0, {n_kv}), got {groups}")
        groups = sorted(groups)
        attn = layer.self_attn
        kv_idx = head_columns(groups, head_dim)
        q_heads = [g * group + j for g in groups for j in range(group)]
        q_idx = head_columns(q_heads, head_dim)
        attn.q_proj = shrink_linear(attn.q_proj, out_idx=q_idx)
        attn.k_proj = shrink_linear(attn.k_proj, out_idx=kv_idx)
        attn.v_proj = shrink_linear(attn.v_proj, out_idx=kv_idx)
        attn.o_proj = shrink_linear(attn.o_proj, in_idx=q_idx)
        for name, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(groups))):
            if hasattr(attn, name):
                setattr(attn, name, value)
    kept = counts.pop()
    cfg.head_dim = head_dim
    cfg.num_key_value_heads = kept
    cfg.num_attention_heads = kept * group


def check_width_cut(n_kv: int, ffn_ratio: float, kv_groups_remove: int) -> None:
    """Refuse a cut a model with `n_kv` KV groups cannot take: a ratio outside [0, 1), or every KV group."""
    check_sparsity(ffn_ratio, "ffn_ratio")
    if not 0 <= kv_groups_remove < n_kv:
        raise SlimkitError(f"can remove 0..{n_kv - 1} KV groups, asked for {kv_groups_remove}; remove fewer KV groups")


def prune_width(model: nn.Module, windows: torch.Tensor, ffn_ratio: float = 0.0, kv_groups_remove: int = 0,
                progress: bool = True) -> PruneResult:
    """Remove `ffn_ratio` of FFN neurons and `kv_groups_remove` KV groups from every layer, in place.

    The result's `kept` holds (kept, original) FFN neurons per `<layer>.mlp` and KV groups per
    `<layer>.self_attn`; `removed_heads` the query heads that left with the removed groups.
    """
    check_width_cut(model.config.num_key_value_heads, ffn_ratio, kv_groups_remove)
    cfg = model.config
    ffn, att = collect_width_stats(model, windows, progress=progress)
    layers = decoder_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    layer_names = [names[id(layer)] for layer in layers]
    n_ffn = cfg.intermediate_size
    n_keep = n_ffn - int(n_ffn * ffn_ratio)
    if ffn_ratio > 0:
        keep = []
        for layer, sq in zip(layers, ffn):
            score = sq.sqrt().float() * layer.mlp.down_proj.weight.norm(dim=0)
            keep.append(torch.topk(score, n_keep).indices)
        remove_ffn_neurons(model, keep)
    n_kv = cfg.num_key_value_heads
    group = cfg.num_attention_heads // n_kv
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    removed_heads: dict[str, list[int]] = {}
    if kv_groups_remove > 0:
        groups_kept = []
        for name, layer, sq in zip(layer_names, layers, att):
            w_norm = layer.self_attn.o_proj.weight.pow(2).sum(0).reshape(-1, head_dim).sum(1).sqrt()
            o_norm = sq.reshape(-1, head_dim).sum(1).sqrt().float()
            score = (o_norm * w_norm).reshape(n_kv, group).sum(1)
            kept = sorted(torch.topk(score, n_kv - kv_groups_remove).indices.tolist())
            groups_kept.append(kept)
            removed_heads[f"{name}.self_attn"] = [g * group + j for g in range(n_kv) if g not in kept
                                                  for j in range(group)]
        remove_kv_groups(model, groups_kept)
    kept_widths: dict[str, tuple[int, int]] = {}
    for name in layer_names:
        kept_widths[f"{name}.mlp"] = (cfg.intermediate_size, n_ffn)
        kept_widths[f"{name}.self_attn"] = (cfg.num_key_value_heads, n_kv)
    return PruneResult(model, "width", kept_widths, removed_heads=removed_heads)
