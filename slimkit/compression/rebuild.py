"""How a model handed to `compress` is saved and rebuilt: for the result on disk and for the timer.

Three kinds of model can be rebuilt without pickle:

- Hugging Face models (transformers PreTrainedModel): written as a folder by
  slimkit.io.hf_folder.write_hf (the config carries the new widths where it can, the rest is recorded
  and restored by load_hf); the fresh-process timer rebuilds them with its "hf" builder;
- slimkit's own models (they have config()): a slimkit checkpoint, no builder needed;
- any other module, given the user's `builder` for its dense form (slimkit.io.save_model): a
  callable, (callable, kwargs), or "package.module:callable". The timer's child process gets the
  builder by name on its command line, so a callable that cannot be imported by name (a lambda, a
  function of a script's __main__) still saves, but is timed in this process, and the report says so.

A model that none of these rebuilds is refused before any work starts: a compressed model that
cannot be loaded again is not a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io.hf_folder import is_hf

MODEL_FILE = "model.safetensors"
HF_FOLDER = "model"


@dataclass(frozen=True)
class Rebuild:
    """How one model is saved and rebuilt; `spec` is what the timing child is told (None: slimkit's own)."""

    kind: str  # "hf", "slimkit", "builder" or "none"
    builder: Any = None  # (callable, kwargs) for save_model
    spec: str | None = None  # "hf", "package.module:callable", or None
    kwargs: dict | None = None
    why_not_fresh: str = ""  # why the child cannot rebuild it ("" when it can)
    processor: Any = None  # a Hugging Face tokenizer or image processor, saved into the model's folder

    @property
    def fresh(self) -> bool:
        return not self.why_not_fresh


def _spec_of(fn: Any) -> str | None:
    """"package.module:callable" when a new process can import `fn` by that name, else None."""
    from slimkit.io import builder_ref, import_builder

    ref = builder_ref(fn)
    if ref is None or ref.startswith("__main__:"):
        return None
    try:
        return ref if import_builder(ref) is fn else None
    except SlimkitError:
        return None


def plan_rebuild(model: nn.Module, builder: Any = None, processor: Any = None) -> Rebuild:
    """The Rebuild for `model` with the user's `builder` (None, a callable, (callable, kwargs), or a
    spec string); a Hugging Face model's `processor` (tokenizer or image processor) is saved with it."""
    from slimkit.io import import_builder, split_builder

    if builder is None:
        if is_hf(model):
            return Rebuild("hf", spec="hf", processor=processor)
        if callable(getattr(model, "config", None)):
            return Rebuild("slimkit")
        return Rebuild("none", why_not_fresh=f"{type(model).__name__} cannot be rebuilt without a builder")
    spec: str | None = None
    if isinstance(builder, tuple) and len(builder) == 2 and isinstance(builder[0], str):
        spec, builder = builder[0], (import_builder(builder[0]), builder[1])
    elif isinstance(builder, str):
        spec, builder = builder, import_builder(builder)
    fn, kwargs = split_builder(builder)
    spec = spec or _spec_of(fn)
    why = "" if spec else (f"the builder {getattr(fn, '__qualname__', fn)!r} cannot be imported by name in a new "
                           f"process (pass builder='package.module:callable')")
    return Rebuild("builder", (fn, kwargs or {}), spec, kwargs or None, why)


def check_rebuild(model: nn.Module, plan: Rebuild) -> None:
    """Refuse, in one line and before any work, a model that could not be loaded again once saved."""
    if plan.kind == "none":
        raise SlimkitError(f"slimkit cannot save {type(model).__name__} so that it reloads: pass builder= (the callable "
                           f"that builds the dense model, (callable, kwargs), or 'package.module:callable'; from the "
                           f"CLI, a factory that returns the bare model, or a dict with 'builder')")
    if plan.kind != "builder":
        return
    from slimkit.io.header import build_dense

    fn, kwargs = plan.builder
    dense = build_dense(fn, kwargs)
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in dense.state_dict().items()}
    if mine != theirs:
        diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
        raise SlimkitError(f"the builder {getattr(fn, '__qualname__', fn)!r} does not build this "
                           f"{type(model).__name__}'s dense form (first difference: {diff[0]!r}); pass the builder of "
                           f"the model given to compress, with its kwargs")


def save_compressed(model: nn.Module, folder: Path, plan: Rebuild) -> dict:
    """Save the model into `folder` as `plan` says; returns {"path", "format", "reload"} for the report."""
    if plan.kind == "hf":
        from slimkit.io.hf_folder import write_hf

        needs_layout = write_hf(model, folder / HF_FOLDER)
        if plan.processor is not None:  # the folder then serves as it is: model, config and its inputs' processor
            plan.processor.save_pretrained(folder / HF_FOLDER)
        how = ("slimkit.io.hf_folder.load_hf(path) (per-layer widths are recorded beside the config)" if needs_layout
               else f"{type(model).__name__}.from_pretrained(path) or slimkit.io.hf_folder.load_hf(path)")
        return {"path": HF_FOLDER, "format": "Hugging Face folder", "reload": how}
    from slimkit.io import save_model

    if plan.kind == "slimkit":
        save_model(model, folder / MODEL_FILE)
        return {"path": MODEL_FILE, "format": "slimkit checkpoint", "reload": "slimkit.io.load_model(path)"}
    if plan.kind != "builder":
        check_rebuild(model, plan)
    save_model(model, folder / MODEL_FILE, builder=plan.builder)
    name = plan.spec or getattr(plan.builder[0], "__qualname__", "the dense builder")
    return {"path": MODEL_FILE, "format": "slimkit checkpoint with the dense builder", "builder": plan.spec,
            "kwargs": plan.kwargs or {}, "reload": f"slimkit.io.load_model(path, builder={name})"}
