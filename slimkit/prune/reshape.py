"""Save and rebuild pruned models with heterogeneous widths, without pickle.

A pruned model's class and constructor arguments describe the *dense* model. The checkpoint also
records the shape of every tensor and which blocks were removed; loading builds the dense model,
swaps removed blocks for nn.Identity, resizes every layer to the recorded shapes (fixing the
attributes its forward reads: in/out channels, groups, num_features, num_heads...) and then loads
the weights strictly.
"""

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io import CORRUPT, save_model
from slimkit.models.vit import Attention


def pruned_layout(model: nn.Module) -> dict[str, Any]:
    """{"shapes": {tensor name: shape}, "removed_blocks": [...]} for a model built from config()."""
    config = getattr(model, "config", None)
    if not callable(config):
        raise SlimkitError(f"{type(model).__name__} has no config(); pruned checkpoints need a model built from kwargs")
    fresh = type(model)(**config())
    removed = [n for n, m in fresh.named_modules()
               if getattr(m, "removable", False) is True and isinstance(model.get_submodule(n), nn.Identity)]
    return {"shapes": {k: list(v.shape) for k, v in model.state_dict().items()}, "removed_blocks": removed}


def save_pruned(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a structurally pruned model as safetensors with its layout in the header."""
    return save_model(model, path, extra=pruned_layout(model))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)


def _fix_attributes(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[0] if depthwise else m.weight.shape[1] * m.groups
        if depthwise:
            m.groups = m.out_channels
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.num_features = m.running_mean.shape[0] if m.running_mean is not None else m.weight.shape[0]
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = (m.weight.shape[0],)
    elif isinstance(m, nn.GroupNorm):
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, Attention):
        m.num_heads = m.q.out_features // m.head_dim


def check_layout(layout: dict[str, Any], file_shapes: dict[str, list[int]], where: str | os.PathLike) -> None:
    """A recorded layout must be well-formed and agree with the tensor shapes the file really holds.

    Checked before apply_layout so that a header cannot ask for tensors larger than the file.
    """
    shapes, removed = layout.get("shapes"), layout.get("removed_blocks", [])
    if not isinstance(shapes, dict) or not all(_is_shape(v) for v in shapes.values()):
        raise SlimkitError(f"checkpoint {where} has a pruned layout whose 'shapes' is not a map of tensor names to "
                           f"lists of sizes; {CORRUPT}")
    if not isinstance(removed, list) or not all(isinstance(n, str) and n for n in removed):
        raise SlimkitError(f"checkpoint {where} has a pruned layout whose 'removed_blocks' is not a list of block "
                           f"names; {CORRUPT}")
    for key, shape in shapes.items():
        if key not in file_shapes:
            raise SlimkitError(f"checkpoint {where}: its layout records tensor {key!r}, which the file does not hold; "
                               f"{CORRUPT}")
        if list(shape) != file_shapes[key]:
            raise SlimkitError(f"checkpoint {where}: tensor {key!r} has shape {file_shapes[key]} in the file but "
                               f"{list(shape)} in its layout; {CORRUPT}")


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def apply_layout(model: nn.Module, layout: dict[str, Any]) -> nn.Module:
    """Resize a freshly built dense model, in place, to a recorded pruned layout.

    New tensors are made on the model's own device, so a model built on the meta device is resized
    without allocating (slimkit.header checks a header that way before building for real).
    """
    for name in layout.get("removed_blocks", []):
        try:
            block = model.get_submodule(name)
        except AttributeError:
            raise SlimkitError(f"checkpoint removes block {name!r}, which {type(model).__name__} does not have") from None
        if getattr(block, "removable", False) is not True:
            raise SlimkitError(f"checkpoint removes {name!r}, which is not a removable block of {type(model).__name__}")
        _set_module(model, name, nn.Identity())
    shapes = layout.get("shapes", {})
    for mod_name, m in model.named_modules():
        changed = False
        for kind, table in (("param", m._parameters), ("buffer", m._buffers)):
            for t_name, t in list(table.items()):
                key = f"{mod_name}.{t_name}" if mod_name else t_name
                if t is None or key not in shapes or list(t.shape) == shapes[key]:
                    continue
                empty = torch.empty(shapes[key], dtype=t.dtype, device=t.device)
                table[t_name] = nn.Parameter(empty, requires_grad=t.requires_grad) if kind == "param" else empty
                changed = True
        if changed:
            _fix_attributes(m)
    for m in model.modules():  # attention reads head counts from its (possibly resized) children
        if isinstance(m, Attention):
            _fix_attributes(m)
    return model
