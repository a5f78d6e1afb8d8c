"""Keep a Hugging Face model's config describing the model after a structured cut.

A Hugging Face model is rebuilt from its config, so after heads or FFN neurons are removed the
config should carry the new widths where one number can say them: `num_attention_heads` when every
attention module kept the same head count, `intermediate_size` when every FFN kept the same width.
Some classes derive other sizes from these (BERT's head size is hidden_size / num_attention_heads),
so an update is kept only when a model built from the updated config, on the meta device, has
exactly the pruned model's tensor shapes; otherwise the config keeps its dense values and the
per-layer widths live in the module attributes the cut set (num_attention_heads, all_head_size,
in/out_features), which a checkpoint records.
"""

import copy

import torch
from torch import nn

from slimkit.prune.layers import attention_modules, heads_of


def _config(model: nn.Module):
    cfg = getattr(model, "config", None)
    return cfg if cfg is not None and hasattr(cfg, "to_dict") and not callable(cfg) else None


def hf_config_snapshot(model: nn.Module) -> dict | None:
    """What sync_hf_config needs from the dense model: its config and the Linear layers of FFN width."""
    cfg = _config(model)
    if cfg is None:
        return None
    inter = getattr(cfg, "intermediate_size", None)
    ffn = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == inter]
    return {"config": copy.deepcopy(cfg), "ffn": ffn}


def sync_hf_config(model: nn.Module, dense: dict | None) -> list[str]:
    """Write uniform head counts / FFN widths into `model.config` where a rebuild confirms them.

    An update is confirmed when every tensor it changes in a model built from the config (on the
    meta device) takes exactly the pruned model's shape. Heads are tried with their head size first
    (classes that read `head_dim` from the config), then alone; the FFN width on its own.
    """
    if dense is None:
        return []
    cfg = model.config
    heads, ffn = {}, {}
    counts = {heads_of(model, n).num_heads for n in attention_modules(model)}
    if len(counts) == 1 and hasattr(cfg, "num_attention_heads") and counts != {cfg.num_attention_heads}:
        heads["num_attention_heads"] = counts.pop()
    widths = {model.get_submodule(n).out_features for n in dense["ffn"]}
    if len(widths) == 1 and widths != {cfg.intermediate_size}:
        ffn["intermediate_size"] = widths.pop()
    if not heads and not ffn:
        return []
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    base = _meta_shapes(model, cfg)
    options = []
    if heads:
        dims = {heads_of(model, n).head_dim for n in attention_modules(model)}
        options.append([{**heads, "head_dim": dims.pop()}, heads] if len(dims) == 1 else [heads])
    if ffn:
        options.append([ffn])
    done, kept = [], []
    for tries in options:
        for updates in tries:
            old = {k: getattr(cfg, k, _MISSING) for k in updates}
            _assign(cfg, updates)
            shapes = _meta_shapes(model, cfg)
            changed = {k for k in shapes if base is not None and shapes[k] != base.get(k)}
            if base is not None and changed and all(want.get(k) == shapes[k] for k in changed):
                done.append(", ".join(f"{k} {'unset' if old[k] is _MISSING else old[k]} -> {v}"
                                      for k, v in updates.items()))
                break
            _assign(cfg, old)
        else:
            kept.extend(tries[-1])
    notes = [f"config updated: {', '.join(done)}"] if done else []
    if kept:
        notes.append(f"config keeps its dense {', '.join(kept)}: {type(model).__name__} built from a new value would "
                     "not have the pruned shapes; the widths live in the module attributes")
    return notes


_MISSING = object()


def _assign(cfg, values: dict) -> None:
    for k, v in values.items():
        if v is _MISSING:
            delattr(cfg, k)
        else:
            setattr(cfg, k, v)


def _meta_shapes(model: nn.Module, cfg) -> dict | None:
    """Tensor shapes of the model class built from `cfg` on the meta device (None: it cannot be)."""
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(cfg))
    except Exception:  # noqa: BLE001  (a class that cannot be built from its config alone: config stays dense)
        return None
    return {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
