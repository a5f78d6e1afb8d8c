"""Checkpoints without pickle: safetensors weights with the architecture as JSON in the header.

One file holds both, so a checkpoint cannot be half-written apart from its description.
safetensors' string metadata carries {"format", "class", "builder", "kwargs", "layout", "extra"}:
the model is its builder's dense model (`builder(**kwargs)`) turned into the recorded layout
(slimkit.io.layout: tensor shapes, removed blocks, changed module attributes). Any model can be saved
this way given the callable that builds its dense form; slimkit's own models name their class and
config() instead. Loading never imports a path read from a file and never unpickles: the builder
is the caller's (or slimkit's own class, looked up by name in a fixed table).
"""

import errno
import importlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io.header import build_checked, build_dense, builder_name, compare_shapes
from slimkit.io.layout import CORRUPT, apply_layout, record_layout
from slimkit.io.outputs import write_file_atomic

# 2: the layout records changed module attributes; format-1 pruned layouts lack them.
FORMAT_VERSION = 2
_META_KEY = "slimkit"
# What save_model and load_model take as `builder`: the callable that makes the dense model
# (a class or a factory), or (callable, kwargs).
Builder = Callable[..., nn.Module] | tuple[Callable[..., nn.Module], dict[str, Any]]


def cache_root() -> Path:
    """Where reusable artefacts (trained teachers, converted built-in models) live:
    $SLIMKIT_CACHE, else ~/.cache/slimkit."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def split_builder(builder: Builder | None) -> tuple[Callable[..., nn.Module] | None, dict[str, Any] | None]:
    """(callable, kwargs or None) from what a caller passes as `builder`."""
    if builder is None:
        return None, None
    if isinstance(builder, tuple) and len(builder) == 2 and callable(builder[0]) and isinstance(builder[1], dict):
        return builder[0], dict(builder[1])
    if callable(builder) and not isinstance(builder, tuple):
        return builder, None
    raise SlimkitError(f"builder must be a callable that returns the dense model (a class or a factory), or "
                       f"(callable, kwargs); got {type(builder).__name__}")


def builder_ref(fn: Callable[..., Any]) -> str | None:
    """"package.module:name" of an importable callable (recorded for people to read, never imported from a
    file); None for lambdas and local functions."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def import_builder(ref: str) -> Callable[..., nn.Module]:
    """The callable named "package.module:name" (a user's own code, named by the user on a command line)."""
    module, _, attr = ref.partition(":")
    if not module or not attr or not all(part.isidentifier() for part in module.split(".") + attr.split(".")):
        raise SlimkitError(f"builder {ref!r} is not of the form package.module:callable")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise SlimkitError(f"cannot import {module!r} for builder {ref!r} ({exc}); check the name and that the "
                           f"package is on PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SlimkitError(f"module {module!r} has no {attr!r}; check the builder name {ref!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SlimkitError(f"builder {ref!r} is a {type(obj).__name__}, not a callable that returns the model")
    return obj


def dense_builder(model: nn.Module, builder: Builder | None) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """(callable, kwargs) that build `model`'s dense form: the given builder, or its class and config()."""
    fn, kwargs = split_builder(builder)
    if fn is None:
        config = getattr(model, "config", None)
        if not callable(config):
            raise SlimkitError(f"{type(model).__name__} has no config() method; pass builder= (the class or function "
                               f"that builds the dense model, or (class, kwargs)) to save_model")
        return type(model), config()
    return fn, kwargs or {}


def save_model(model: nn.Module, path: str | os.PathLike, builder: Builder | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Save weights, builder kwargs and layout to one .safetensors file, atomically; returns the path.

    `builder` makes the dense model (see slimkit.io.layout for what is recorded against it); slimkit's
    own models need none. The layout is replayed on a meta-device dense build before writing, so a
    model that could not be rebuilt is refused here rather than when someone loads it. This
    replaces `path` if it exists: callers that take a user's path check it first with
    slimkit.io.outputs.check_output_file.
    """
    out = Path(path)
    fn, kwargs = dense_builder(model, builder)
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SlimkitError(f"builder kwargs must be plain JSON values (numbers, text, lists, objects): {exc}") from None
    dense = build_dense(fn, kwargs)
    layout = record_layout(model, dense)
    try:
        compare_shapes(apply_layout(dense, layout), layout["shapes"], f"the {type(model).__name__} being saved")
    except SlimkitError as exc:
        raise SlimkitError(f"{exc} (the builder {builder_name(fn)} does not make this model's dense form)") from None
    description = {"format": FORMAT_VERSION, "class": type(model).__name__, "builder": builder_ref(fn),
                   "kwargs": kwargs, "layout": layout, "extra": extra or {}}
    tensors = tensors_for_file(model)
    metadata = {_META_KEY: json.dumps(description)}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:  # safetensors reports I/O failures (a full disk) as its own error
            code = re.search(r"os error (\d+)", str(exc))
            raise OSError(int(code.group(1)) if code else errno.EIO, os.strerror(int(code.group(1))) if code
                          else str(exc)) from None

    return write_file_atomic(out, write)


def tensors_for_file(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors that safetensors accepts: tied names get a copy each
    (safetensors refuses shared storage)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel() > 0:
            tensors[name] = tensor.detach().clone().contiguous().cpu()
            continue
        seen.add(key)
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors


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
    """The header's {"format", "class", "builder", "kwargs", "layout", "extra"}, refused with one line when
    malformed, too new, or a format-1 pruned layout (which lacks the module attributes needed to rebuild it)."""
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
    if not isinstance(description.setdefault("builder", None), (str, type(None))):
        raise SlimkitError(f"{where} names its builder as {type(description['builder']).__name__}, not text; {CORRUPT}")
    if version == 1:
        if "shapes" in description["extra"]:
            raise SlimkitError(f"{where} is a pruned checkpoint in format 1, which does not record the module "
                               f"attributes needed to rebuild it; prune and save it again with this slimkit")
        description["layout"] = None
    elif "layout" not in description:
        raise SlimkitError(f"{where} has no 'layout' in its header; {CORRUPT}")
    return description


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no pickle involved)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SlimkitError(f"cannot read {path} as safetensors: {exc}") from None


def load_model(path: str | os.PathLike, builder: Builder | None = None) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strict).

    `builder` makes the dense model: a callable, called with the kwargs the header records, or
    (callable, kwargs). Without one, the header's class is looked up among slimkit's own models.
    The header is checked against the builder's signature and the file's tensor shapes on the meta
    device before anything is allocated (slimkit.io.header), so a corrupt or hostile header costs an
    error line, not memory.
    """
    from slimkit.models import MODEL_CLASSES

    arch = read_architecture(path)
    fn, kwargs = split_builder(builder)
    name = arch["class"]
    if fn is None:
        if name not in MODEL_CLASSES:
            made_by = f" (saved with builder {arch['builder']})" if arch["builder"] else ""
            raise SlimkitError(f"checkpoint {path} holds a {name}{made_by}, which is not one of slimkit's models; "
                               f"pass builder= (the callable that builds the dense model) to load_model")
        fn = MODEL_CLASSES[name]
    _, shapes = read_header(path)
    model = build_checked(fn, arch["kwargs"] if kwargs is None else kwargs, arch["layout"], shapes, path)
    state = load_state(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SlimkitError(f"checkpoint {path} does not load into {name}: {' '.join(str(exc).split())[:300]}") from None
    return model
