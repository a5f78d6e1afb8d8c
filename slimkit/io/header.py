"""Build the model a checkpoint header describes, refusing a header that does not fit the file.

A header is text anyone can edit, so nothing it says is trusted before it is checked:
- its kwargs must be ones the builder takes, of the annotated types (inspect.signature);
- the model is built first on the meta device, where no memory is allocated, under a cap on how
  many modules and tensors its constructor may create (a header asking for depth 10^9 is stopped
  early instead of looping);
- that meta model, resized to the recorded pruned layout, must have exactly the file's tensor
  names and shapes, which safetensors reads from the file header without touching the data.
Only then is the real model built, so memory is spent only on what the file really holds.
"""

import inspect
import os
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.modules.module as module_hooks
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io.layout import CORRUPT, apply_layout, check_layout

# A constructor may register this many modules, parameters and buffers beyond 16 per file tensor.
# Pruned checkpoints (whose dense build is larger than the file) stay far below it; a header whose
# kwargs would build millions of layers does not.
_REGISTRATION_FLOOR = 20_000
# A pruned checkpoint's dense build may be this many times the size of the file's tensors.
_DENSE_GROWTH = 100
# What torch warns, once per tensor, when a builder that loads pretrained weights (load_state_dict,
# from_pretrained) copies them into a model being built on the meta device: the copy is skipped,
# and a meta build needs only the shapes, so the warning says nothing to the user.
_META_COPY_WARNING = r".*copying from a non-meta parameter in the checkpoint to a meta parameter"


def build_checked(builder: Callable[..., nn.Module], kwargs: dict[str, Any], layout: dict[str, Any] | None,
                  file_shapes: dict[str, list[int]], where: str | os.PathLike) -> nn.Module:
    """`builder(**kwargs)` turned into `layout`, after proving on the meta device that it matches `file_shapes`."""
    check_kwargs(builder, kwargs, where)
    if layout is not None:
        check_layout(layout, file_shapes, where)
    limit = 16 * len(file_shapes) + _REGISTRATION_FLOOR
    name = builder_name(builder)
    try:
        with torch.device("meta"):
            model, dense_bytes = _build(builder, kwargs, layout, limit, where, meta=True)
    except _NotOnMeta:
        # a constructor that reads tensor values (e.g. .tolist()), or a builder that loads pretrained
        # weights with transformers' from_pretrained (which refuses a meta device), cannot run on
        # meta; such a model is built for real, still under the registration cap, and compared
        # before loading
        model, _ = _build(builder, kwargs, layout, limit, where, meta=False)
        compare_shapes(model, file_shapes, where)
        return model
    compare_shapes(model, file_shapes, where)
    kept = _nbytes(model)
    if dense_bytes > _DENSE_GROWTH * kept + 2**26:
        raise SlimkitError(f"checkpoint {where} holds {kept / 2**20:.1f} MiB of weights but its header's dense "
                           f"{name} would need {dense_bytes / 2**20:.0f} MiB; {CORRUPT}")
    return _build(builder, kwargs, layout, limit, where, meta=False)[0]


def build_dense(builder: Callable[..., nn.Module], kwargs: dict[str, Any], meta: bool = True) -> nn.Module:
    """`builder(**kwargs)`, on the meta device when `meta` and the constructor allows it; one line on failure.

    Used when saving, to compare a model with the dense build its builder makes. Weights a builder
    loads are not copied into a meta build (only its shapes are read), and torch's warning saying
    so, one per tensor, is silenced there; every other warning of the builder is shown.
    """
    name = builder_name(builder)
    try:
        if meta:
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.filterwarnings("ignore", message=_META_COPY_WARNING, category=UserWarning)
                    model = builder(**kwargs)
            except Exception as exc:  # noqa: BLE001 - sorted by cannot_run_on_meta; the rest is reported below
                if not cannot_run_on_meta(exc):
                    raise
                model = builder(**kwargs)
        else:
            model = builder(**kwargs)
    except SlimkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the user's builder is reported in one line
        raise SlimkitError(f"the builder {name} failed ({type(exc).__name__}: {_first_line(exc)}); pass the "
                           f"builder that makes the dense model, with its kwargs") from None
    if not isinstance(model, nn.Module):
        raise SlimkitError(f"the builder {name} returned a {type(model).__name__}, not an nn.Module; pass a callable "
                           f"that returns the dense model")
    return model


def cannot_run_on_meta(exc: BaseException) -> bool:
    """Whether a builder failed only because it ran on the meta device: a constructor that reads
    tensor values (NotImplementedError, or RuntimeError on meta tensors), or transformers'
    from_pretrained, which refuses a meta device context (RuntimeError)."""
    if isinstance(exc, NotImplementedError):
        return True
    return isinstance(exc, RuntimeError) and re.search(r"\bmeta (device|tensor)", str(exc)) is not None


class _NotOnMeta(Exception):
    """Raised by _build when a meta build is impossible (cannot_run_on_meta): build for real instead."""


def builder_name(builder: Callable[..., Any]) -> str:
    return getattr(builder, "__qualname__", None) or getattr(builder, "__name__", None) or type(builder).__name__


def _build(builder: Callable[..., nn.Module], kwargs: dict[str, Any], layout: dict[str, Any] | None, limit: int,
           where: str | os.PathLike, meta: bool) -> tuple[nn.Module, int]:
    """(builder(**kwargs) turned into `layout`, bytes of the dense build); any failure is one SlimkitError."""
    name = builder_name(builder)
    try:
        with _registration_cap(limit), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. zero-size layers from odd kwargs; the checks below judge them
            model = builder(**kwargs)
        if not isinstance(model, nn.Module):
            raise SlimkitError(f"it returned a {type(model).__name__}, not an nn.Module")
        dense_bytes = _nbytes(model)
        if layout is not None:
            apply_layout(model, layout)
    except SlimkitError as exc:
        raise SlimkitError(f"checkpoint {where} describes a {name} that cannot be built: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any constructor failure on header values is a bad header
        if meta and cannot_run_on_meta(exc):
            raise _NotOnMeta from None
        if isinstance(exc, NotImplementedError):
            raise SlimkitError(f"checkpoint {where} describes a {name} that cannot be built") from None
        raise SlimkitError(f"checkpoint {where} describes a {name} that cannot be built from its kwargs "
                           f"({type(exc).__name__}: {_first_line(exc)})") from None
    return model, dense_bytes


def check_kwargs(cls: Callable[..., Any], kwargs: dict[str, Any], where: str | os.PathLike) -> None:
    """Refuse kwargs the constructor does not take, lacks, or would get with the wrong type."""
    name = builder_name(cls)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return  # no introspectable signature: the constructor itself is the check
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(kwargs) - set(named))
    if unknown and not takes_any:
        raise SlimkitError(f"checkpoint {where} passes {name} arguments it does not take: {unknown[:5]} "
                           f"(it takes {', '.join(named) or 'none'}); the header is corrupt or from another version")
    missing = [n for n, p in named.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise SlimkitError(f"checkpoint {where} lacks required {name} arguments {missing[:5]}; the header "
                           f"is corrupt")
    try:
        hints = typing.get_type_hints(cls.__init__ if isinstance(cls, type) else cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave types to the constructor
        hints = {}
    for key, value in kwargs.items():
        if key in hints and not _fits(value, hints[key]):
            raise SlimkitError(f"checkpoint {where} gives {name} argument {key}={_short(value)}, which is "
                               f"not a {_type_name(hints[key])}; {CORRUPT}")


def compare_shapes(model: nn.Module, file_shapes: dict[str, list[int]], where: str | os.PathLike) -> None:
    """The model's state dict must have exactly the file's tensor names and shapes."""
    name = type(model).__name__
    mine = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(mine) - set(file_shapes))
    unexpected = sorted(set(file_shapes) - set(mine))
    if missing or unexpected:
        raise SlimkitError(f"checkpoint {where} does not match {name}: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")
    for key, shape in mine.items():
        if file_shapes[key] != shape:
            raise SlimkitError(f"checkpoint {where}: tensor {key!r} has shape {file_shapes[key]} in the file but "
                               f"{shape} in the {name} its header describes; {CORRUPT}")


@contextmanager
def _registration_cap(limit: int) -> Iterator[None]:
    """Stop a constructor that registers more than `limit` modules, parameters and buffers."""
    count = 0

    def hook(*_):
        nonlocal count
        count += 1
        if count > limit:
            raise SlimkitError(f"its constructor creates more than {limit} layers and tensors, far more than the "
                               f"file holds; {CORRUPT}")

    handles = [module_hooks.register_module_module_registration_hook(hook),
               module_hooks.register_module_parameter_registration_hook(hook),
               module_hooks.register_module_buffer_registration_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _nbytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a constructor annotation (JSON lists stand for tuples)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return all(_fits(v, args[0]) for v in value) if args else True
    if hint is dict or origin is dict:
        return isinstance(value, dict) and (not args or all(_fits(v, args[1]) for v in value.values()))
    return True  # an annotation this check does not model is left to the constructor


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else "")[:200]
