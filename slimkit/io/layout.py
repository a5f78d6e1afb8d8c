"""The layout of a model whose structure departs from the dense model its builder makes.

A pruned model is described by how to build the dense model (its builder) plus what pruning
changed. `record_layout` compares the pruned model with a fresh dense build and notes three things:
- every tensor's shape (parameters and buffers in the state dict);
- removed blocks: modules that the pruned model holds as nn.Identity where the dense build has a
  real module;
- changed attributes: per module, every plain attribute (int, float, bool, str, None, or a
  tuple/list of those) whose value differs from the dense build's, such as in/out channels,
  groups, num_features or a head count.

`apply_layout` replays that on a fresh dense build: blocks become nn.Identity, the attributes are
set, and every tensor is resized to its recorded shape (new, empty tensors on the model's own
device, so a model on the meta device is resized without allocating). No per-class knowledge is
needed: whatever a forward pass reads from a module's attributes is restored as it was saved.

A layout is JSON and may come from a file, so `check_layout` judges it against the file's real
tensor shapes before anything is built, and `apply_layout` only sets attributes that the dense
module already holds as plain values.
"""

import math
import os
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError

CORRUPT = "the header is corrupt (save the model again with slimkit)"
# Module attributes that are state of the run, not of the architecture.
_NOT_ARCHITECTURE = {"training"}


def record_layout(model: nn.Module, dense: nn.Module) -> dict[str, Any]:
    """{"shapes", "removed_blocks", "attributes"} of `model` relative to `dense` (a fresh build).

    Refuses a model whose structure is not the dense one with blocks removed and tensors resized
    (for example a layer swapped for another type), since no layout could rebuild it.
    """
    dense_modules = dict(dense.named_modules())
    removed: list[str] = []
    attributes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if any(name.startswith(r + ".") for r in removed):
            continue
        d = dense_modules.get(name)
        if d is None:
            raise SlimkitError(f"{type(model).__name__} has module {name!r} ({type(m).__name__}), which its dense "
                               f"build does not have; only removed blocks (nn.Identity) and resized layers can be "
                               f"saved against the builder")
        if isinstance(m, nn.Identity) and not isinstance(d, nn.Identity):
            if not name:
                raise SlimkitError("the whole model is nn.Identity; there is nothing to save")
            removed.append(name)
            continue
        if _kind(m) != _kind(d):
            raise SlimkitError(f"module {name!r} is a {type(m).__name__} but the dense build has a "
                               f"{type(d).__name__} there; build the model with the builder that made it")
        changed = {k: _to_json(v) for k, v in vars(m).items()
                   if k not in _NOT_ARCHITECTURE and is_plain(v) and k in vars(d) and is_plain(vars(d)[k])
                   and not _same(v, vars(d)[k])}
        if changed:
            attributes[name] = changed
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"shapes": shapes, "removed_blocks": removed, "attributes": attributes}


def apply_layout(model: nn.Module, layout: dict[str, Any]) -> nn.Module:
    """Turn a fresh dense build into the recorded layout, in place (see the module docstring).

    Tensors shared by several names (tied weights) stay shared when resized.
    """
    for name in layout.get("removed_blocks", []):
        try:
            model.get_submodule(name)
        except AttributeError:
            raise SlimkitError(f"the layout removes block {name!r}, which {type(model).__name__} does not "
                               f"have") from None
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    for name, changes in layout.get("attributes", {}).items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise SlimkitError(f"the layout sets attributes of module {name!r}, which {type(model).__name__} does "
                               f"not have") from None
        for key, value in changes.items():
            current = vars(m).get(key, _MISSING)
            if key in _NOT_ARCHITECTURE or current is _MISSING or not is_plain(current) or not is_plain(value):
                raise SlimkitError(f"the layout sets {name or 'the model'}.{key}, which is not a plain attribute of "
                                   f"its {type(m).__name__}")
            if not _compatible(value, current):
                raise SlimkitError(f"the layout sets {name or 'the model'}.{key} to {str(value)[:40]}, which does not "
                                   f"fit its {type(current).__name__} value; {CORRUPT}")
            setattr(m, key, _like(value, current))
    shapes = layout.get("shapes", {})
    resized: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(old) -> (old, kept alive; new)
    for mod_name, m in model.named_modules(remove_duplicate=False):
        for kind, table in (("param", m._parameters), ("buffer", m._buffers)):
            for t_name, t in list(table.items()):  # a copy: setattr below replaces entries
                key = f"{mod_name}.{t_name}" if mod_name else t_name
                if t is None or key not in shapes or list(t.shape) == shapes[key]:
                    continue
                new = resized[id(t)][1] if id(t) in resized else None
                if new is None or list(new.shape) != shapes[key]:
                    empty = torch.empty(shapes[key], dtype=t.dtype, device=t.device)
                    new = nn.Parameter(empty, requires_grad=t.requires_grad) if kind == "param" else empty
                    resized[id(t)] = (t, new)
                setattr(m, t_name, new)  # through the module, so e.g. an LSTM refreshes its flat weight list
    return model


def check_layout(layout: Any, file_shapes: dict[str, list[int]], where: str | os.PathLike) -> dict[str, Any]:
    """A layout read from a file, checked for form and against the tensor shapes the file really holds.

    Checked before apply_layout so that a header cannot ask for tensors larger than the file.
    """
    if not isinstance(layout, dict):
        raise SlimkitError(f"checkpoint {where} has a layout that is not a JSON object; {CORRUPT}")
    shapes = layout.get("shapes")
    removed = layout.setdefault("removed_blocks", [])
    attributes = layout.setdefault("attributes", {})
    if not isinstance(shapes, dict) or not all(_is_shape(v) for v in shapes.values()):
        raise SlimkitError(f"checkpoint {where} has a layout whose 'shapes' is not a map of tensor names to lists of "
                           f"sizes; {CORRUPT}")
    if not isinstance(removed, list) or not all(isinstance(n, str) and n for n in removed):
        raise SlimkitError(f"checkpoint {where} has a layout whose 'removed_blocks' is not a list of block names; "
                           f"{CORRUPT}")
    if not isinstance(attributes, dict) or not all(
            isinstance(changes, dict) and all(isinstance(k, str) and is_plain(v) for k, v in changes.items())
            for changes in attributes.values()):
        raise SlimkitError(f"checkpoint {where} has a layout whose 'attributes' is not a map of module names to "
                           f"plain values; {CORRUPT}")
    for key, shape in shapes.items():
        if key not in file_shapes:
            raise SlimkitError(f"checkpoint {where}: its layout records tensor {key!r}, which the file does not hold; "
                               f"{CORRUPT}")
        if list(shape) != file_shapes[key]:
            raise SlimkitError(f"checkpoint {where}: tensor {key!r} has shape {file_shapes[key]} in the file but "
                               f"{list(shape)} in its layout; {CORRUPT}")
    return layout


def is_plain(value: Any, depth: int = 0) -> bool:
    """None, bool, int, float, str, or a (nested, shallow) tuple/list of those."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)) and depth < 4:
        return all(is_plain(v, depth + 1) for v in value)
    return False


_MISSING = object()


def _kind(m: nn.Module) -> tuple[str, str]:
    """A module's class by name: torch.nn.utils.parametrize makes a new class per parametrized module."""
    return type(m).__module__, type(m).__qualname__


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _compatible(value: Any, current: Any) -> bool:
    """A recorded value may replace the dense one only as the same kind of value (None standing for either)."""
    if value is None or current is None:
        return True
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(current, float) or isinstance(value, int))
    if isinstance(current, (tuple, list)):
        return isinstance(value, list)
    return type(value) is type(current)


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def _like(value: Any, template: Any) -> Any:
    """A JSON value given the container types of the dense value it replaces (JSON has no tuples)."""
    if isinstance(value, list):
        items = list(template) if isinstance(template, (tuple, list)) else []
        out = [_like(v, items[i] if i < len(items) else None) for i, v in enumerate(value)]
        return tuple(out) if isinstance(template, tuple) else out
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(template, float):
        return float(value)
    return value
