"""What `slimkit compress MODEL --data ...` points at: the model, its task and its data.

MODEL is one of:
- a slimkit checkpoint (.safetensors written by slimkit);
- a Hugging Face model folder (config.json): its family and task come from the architecture its
  config names (slimkit.families); `--task` may only agree with it; a `*ForCausalLM` folder, or the
  built-in name `smollm2`, is the causal-lm family (slimkit.families.causal_lm); a Whisper folder, or
  the built-in name `whisper-tiny.en`, the whisper family (slimkit.families.whisper); a BERT- or
  ViT-style folder, or the built-in name `minilm`, the hf-encoder family;
- `package.module:factory`, a Python callable the user names on the command line (never read from
  a file). The current folder is searched first, as for `python -m`. It returns the model, or a
  dict with "model" and optionally "task" (a Task), "data" (a Dataset or a dict with train, val,
  test), "example", "cutter" and "builder" (what builds the dense model: a callable, (callable,
  kwargs) or "package.module:callable"). A factory that returns the bare model is itself the
  builder; one that returns a dict and a model that is neither slimkit's nor a Hugging Face one
  must name "builder", or compress refuses it (it could not be reloaded once saved).

Data for checkpoints and factories is a built-in (fashion-mnist, digits), an .npz with x and y, an
image folder (one sub-folder per class, read with Pillow), or what the factory returns; a Hugging
Face model's data is read by its family (slimkit.families.hf_encoder.prepare, causal_lm.prepare,
whisper.prepare).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from torch import nn

from slimkit.errors import SlimkitError
from slimkit.families import family_module, is_factory, model_family
from slimkit.families.base import Source

TASKS = ("classification", "embeddings", "ctc", "causal-lm", "speech")  # --task; a Hugging Face folder's task comes from its config


def task_named(name: str):
    """The engine task for a --task name."""
    from slimkit.distill import (
        causal_lm,
        cer,
        classification,
        ctc_loss,
        embeddings,
        sequence_logits,
    )

    if name == "classification":
        return classification()
    if name == "embeddings":
        return embeddings()
    if name == "ctc":
        return sequence_logits(cer(), supervised=ctc_loss())
    if name == "causal-lm":
        return causal_lm()
    if name == "speech":
        raise SlimkitError("--task speech is a Whisper model's task: pass a Whisper folder written by save_pretrained "
                           "(with its processor) or the built-in whisper-tiny.en")
    raise SlimkitError(f"unknown --task {name!r}; choose one of {', '.join(TASKS)}")


def load_factory(spec: str) -> Source:
    """Import `package.module:function`, call it, and check what it returned."""
    module_name, attr = spec.split(":")
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # write nothing into the user's folders
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SlimkitError(f"cannot import {module_name!r} for factory {spec!r} ({exc}); name a module importable from "
                           f"the current folder or installed, as package.module:function") from None
    finally:
        sys.dont_write_bytecode = before
        if added:
            sys.path.remove(here)
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise SlimkitError(f"module {module_name!r} has no callable {attr!r}; define def {attr}(): return model "
                           f"(or a dict with 'model', 'task', 'data') and name it as {module_name}:{attr}")
    out = fn()
    parts = out if isinstance(out, dict) else {"model": out}
    model = parts.get("model")
    if isinstance(out, dict) and "model" not in out:
        raise SlimkitError(f"factory {spec!r} returned a dict without a 'model' entry (keys: {sorted(map(str, out))}); "
                           f"return the model, or a dict with 'model' (and optionally 'task', 'data')")
    if not isinstance(model, nn.Module):
        raise SlimkitError(f"factory {spec!r} returned {type(model if isinstance(out, dict) else out).__name__}, not a "
                           f"torch nn.Module; return the model, or a dict with 'model' (and optionally 'task', 'data')")
    data = parts.get("data")
    if data is not None and not isinstance(data, dict):
        data = {"train": data.train, "val": data.val, "test": data.test}
    builder = parts.get("builder") if isinstance(out, dict) else spec  # a bare model: the factory builds it
    return Source(model, "factory", parts.get("task"), data, parts.get("example"), parts.get("cutter"), builder)


def resolve_model(spec: str, task: str | None) -> Source:
    """MODEL on the command line -> Source (see the module docstring); the family is read once, by
    slimkit.families.model_family, as every verb reads it."""
    family = model_family(spec)
    if family != "modules":
        return family_module(family).load(spec, task)
    if is_factory(spec):
        return load_factory(spec)
    from slimkit.io import load_model

    return Source(load_model(Path(spec).expanduser()), "checkpoint")


def resolve_data(spec: str, data_dir: str | None, seed: int, n_train: int = 0) -> dict:
    """--data -> {"train", "val", "test"} Splits (built-ins, .npz, image folder)."""
    from slimkit.data import load_dataset

    p = Path(spec)
    if p.is_dir():
        from slimkit.data.images import image_folder

        ds = image_folder(p, seed)
    else:
        ds = load_dataset(spec, data_dir, seed=seed)
    train = ds.train.subset(n_train) if n_train else ds.train
    return {"train": train, "val": ds.val, "test": ds.test}
