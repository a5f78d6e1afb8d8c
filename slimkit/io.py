"""Checkpoints without pickle: safetensors weights with the architecture as JSON in the header.

One file holds both: safetensors' string metadata carries {"class": ..., "kwargs": ...} (and
anything else the caller records, such as pruned shapes), so a checkpoint cannot be half-written
apart from its description. Loading looks the class name up in a fixed table, never imports a path
read from a file, and never unpickles.
"""

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.outputs import write_file_atomic

FORMAT_VERSION = 1
_META_KEY = "slimkit"
# The advice every refusal of a malformed header ends with.
CORRUPT = "the header is corrupt (save the model again with slimkit)"


def cache_root() -> Path:
    """Where reusable artefacts (trained teachers, converted built-in models) live:
    $SLIMKIT_CACHE, else ~/.cache/slimkit."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def architecture_of(model: nn.Module) -> dict[str, Any]:
    """{"class", "kwargs"} for a model that exposes `config()` (slimkit's reference models do)."""
    config = getattr(model, "config", None)
    if not callable(config):
        raise SlimkitError(
            f"{type(model).__name__} has no config() method; pass arch={{'class': ..., 'kwargs': ...}} to save_model"
        )
    return {"class": type(model).__name__, "kwargs": config()}


def save_model(model: nn.Module, path: str | os.PathLike, arch: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Save weights and architecture to one .safetensors file, atomically; returns the path.

    This replaces `path` if it exists: callers that take a user's path check it first with
    slimkit.outputs.check_output_file.
    """
    out = Path(path)
    description = {"format": FORMAT_VERSION, **(arch or architecture_of(model)), "extra": extra or {}}
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:  # safetensors refuses shared storage: tied names get a copy each
            tensors[name] = tensor.detach().clone().contiguous().cpu()
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    metadata = {_META_KEY: json.dumps(description)}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:  # safetensors reports I/O failures (a full disk) as its own error
            code = re.search(r"os error (\d+)", str(exc))
            raise OSError(int(code.group(1)) if code else errno.EIO, os.strerror(int(code.group(1))) if code
                          else str(exc)) from None

    return write_file_atomic(out, write)


def read_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description stored in a slimkit checkpoint's header, checked for shape and version."""
    p = Path(path)
    meta, _ = read_header(p)
    if _META_KEY not in meta:
        raise SlimkitError(f"{p} is a safetensors file without slimkit's architecture header; load its weights with load_state")
    try:
        description = json.loads(meta[_META_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SlimkitError(f"{p} has a corrupt architecture header: {str(exc)[:200]}") from None
    return check_description(description, p)


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, list[int]]]:
    """(string metadata, {tensor name: shape}) of a safetensors file, without reading any tensor data."""
    p = Path(path)
    if p.is_dir():
        raise SlimkitError(f"checkpoint {p} is a folder; pass the .safetensors file (slimkit run folders keep "
                           f"theirs under checkpoints/)")
    if not p.is_file():
        raise SlimkitError(f"checkpoint {p} does not exist; check the path (slimkit checkpoints end in .safetensors)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise SlimkitError(f"cannot read {p} as a safetensors checkpoint ({str(exc)[:200]}); pass a .safetensors "
                           f"file written by slimkit") from None
    return meta, shapes


def check_description(description: Any, where: str | os.PathLike) -> dict[str, Any]:
    """The header's {"format", "class", "kwargs", "extra"}, refused with one line when malformed or too new."""
    if not isinstance(description, dict):
        raise SlimkitError(f"{where} has an architecture header that is not a JSON object "
                           f"({type(description).__name__}); it was not written by slimkit's save_model")
    version = description.get("format")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SlimkitError(f"{where} has no valid checkpoint format version (got {repr(version)[:60]}); it was not "
                           f"written by slimkit's save_model")
    if version > FORMAT_VERSION:
        raise SlimkitError(f"{where} was written by a newer slimkit (checkpoint format {version}; this one reads up to "
                           f"{FORMAT_VERSION}); upgrade slimkit to load it")
    if not isinstance(description.get("class"), str):
        raise SlimkitError(f"{where} names its model class as {type(description.get('class')).__name__}, not text; "
                           f"{CORRUPT}")
    for key in ("kwargs", "extra"):
        if not isinstance(description.setdefault(key, {}), dict):
            raise SlimkitError(f"{where} has header {key!r} of type {type(description[key]).__name__}, not an "
                               f"object; {CORRUPT}")
    return description


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no pickle involved)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SlimkitError(f"cannot read {path} as safetensors: {exc}") from None


def load_model(path: str | os.PathLike, classes: dict[str, type[nn.Module]] | None = None) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strict).

    `classes` adds the user's own model classes to slimkit's table, by class name. The header is
    checked against the class's signature and the file's tensor shapes before anything is
    allocated (slimkit.header), so a corrupt or hostile header costs an error line, not memory.
    """
    from slimkit.header import build_checked
    from slimkit.models import MODEL_CLASSES

    arch = read_architecture(path)
    table = {**MODEL_CLASSES, **(classes or {})}
    name = arch["class"]
    if name not in table:
        raise SlimkitError(
            f"checkpoint {path} needs model class {name!r}, which is not known; pass classes={{{name!r}: YourClass}}"
        )
    _, shapes = read_header(path)
    model = build_checked(table[name], arch["kwargs"], arch["extra"], shapes, path)
    state = load_state(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SlimkitError(f"checkpoint {path} does not load into {name}: {' '.join(str(exc).split())[:300]}") from None
    return model
