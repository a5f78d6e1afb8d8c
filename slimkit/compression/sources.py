"""What `slimkit compress MODEL --data ...` points at: the model, its task and its data.

MODEL is one of:
- a slimkit checkpoint (.safetensors written by slimkit);
- a Hugging Face model folder (config.json) with `--task embeddings` (BERT-style encoders);
- `package.module:factory`, a Python callable the user names on the command line (never read from
  a file). The current folder is searched first, as for `python -m`. It returns the model, or a
  dict with "model" and optionally "task" (a Task), "data" (a Dataset or a dict with train, val,
  test), "example", "cutter" and "builder" (what builds the dense model: a callable, (callable,
  kwargs) or "package.module:callable"). A factory that returns the bare model is itself the
  builder; one that returns a dict and a model that is neither slimkit's nor a Hugging Face one
  must name "builder", or compress refuses it (it could not be reloaded once saved).

Data is a built-in (fashion-mnist, digits), an .npz with x and y, an image folder (one sub-folder
per class, read with Pillow), a text file of sentences (embeddings), or what the factory returns.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError

TASKS = ("classification", "embeddings", "ctc")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Source:
    """A resolved MODEL: the model and whatever else it came with."""

    model: nn.Module
    kind: str  # "checkpoint", "huggingface" or "factory"
    task: Any = None
    data: dict | None = None  # {"train", "val", "test"}
    example: Any = None
    cutter: Any = None
    builder: Any = None  # what builds the dense model (slimkit.compression.rebuild)
    extras: dict = field(default_factory=dict)  # e.g. a tokenizer


def task_named(name: str):
    """The engine task for a --task name."""
    from slimkit.distill import (
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
    raise SlimkitError(f"unknown --task {name!r}; choose one of {', '.join(TASKS)}")


def is_factory(text: str) -> bool:
    return bool(_FACTORY.match(text)) and not Path(text).exists()


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
    """MODEL on the command line -> Source (see the module docstring)."""
    if is_factory(spec):
        return load_factory(spec)
    p = Path(spec)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SlimkitError(f"{spec} is a folder without config.json; pass a Hugging Face folder written by "
                               f"save_pretrained, a slimkit .safetensors checkpoint, or package.module:factory")
        if task != "embeddings":
            raise SlimkitError("a Hugging Face folder is compressed here with --task embeddings (BERT-style "
                               "encoders); other tasks: wrap the model in a factory (package.module:factory)")
        from transformers import AutoModel, AutoTokenizer

        return Source(AutoModel.from_pretrained(p).eval(), "huggingface", extras={"tokenizer": AutoTokenizer.from_pretrained(p)})
    if p.suffix == ".safetensors" or p.is_file():
        from slimkit.io import load_model

        return Source(load_model(p), "checkpoint")
    raise SlimkitError(f"MODEL {spec!r} is neither a file, a folder nor package.module:factory; check the path")


def image_folder(root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2):
    """A Dataset from one sub-folder per class (sorted names are labels 0..C-1), images resized to
    the first image's size, grayscale when every image is."""
    from PIL import Image

    from slimkit.data.arrays import Dataset, Split

    classes = sorted(d for d in root.iterdir() if d.is_dir())
    files = [(f, i) for i, d in enumerate(classes) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise SlimkitError(f"{root} needs one sub-folder per class (at least 2) holding images "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    with Image.open(files[0][0]) as first:
        size = first.size
    images = []
    for f, _ in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB").resize(size))
    gray = all(im.convert("L").convert("RGB").tobytes() == im.tobytes() for im in images)
    arrays = [torch.frombuffer(bytearray((im.convert("L") if gray else im).tobytes()), dtype=torch.uint8)
              for im in images]
    c = 1 if gray else 3
    x = torch.stack([a.reshape(size[1], size[0], c).permute(2, 0, 1) for a in arrays]).float() / 255
    y = torch.tensor([i for _, i in files])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(len(y) * test_fraction), int(len(y) * val_fraction)
    if len(y) - n_test - n_val < 1 or n_val < 1:
        raise SlimkitError(f"{root} holds {len(y)} images; give at least 10 so train, val and test each get some")
    te, va, tr = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return Dataset(root.name, Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]), len(classes))


def sentence_data(spec: str, tokenizer, seed: int = 0, n: int = 0) -> tuple[dict, list[str]]:
    """Token batches for the embeddings task from a text file (or 'sentences', slimkit's built-in
    public-domain text), split 80/10/10; returns the splits and the training sentences."""
    from slimkit.llm.encoder import encode_sentences, sentences

    if spec == "sentences":
        from slimkit.llm.encoder import DEFAULT_TRAIN_SENTENCES, default_sentences

        # n above the default: more of the training book, the default's sentences first
        train, held = default_sentences(n_train=max(n, DEFAULT_TRAIN_SENTENCES), seed=seed)
        texts = train + held
    else:
        p = Path(spec)
        if not p.is_file():
            raise SlimkitError(f"--data {spec} is not a file; give a UTF-8 text file of sentences or 'sentences'")
        texts = sentences(p.read_text(encoding="utf-8"))
    texts = texts[:n] if n else texts
    if len(texts) < 10:
        raise SlimkitError(f"--data {spec} gives {len(texts)} sentences; give at least 10")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g).tolist()
    k1, k2 = int(len(texts) * 0.8), int(len(texts) * 0.9)
    split = {"train": [texts[i] for i in order[:k1]], "val": [texts[i] for i in order[k1:k2]],
             "test": [texts[i] for i in order[k2:]]}
    return {k: encode_sentences(tokenizer, v) for k, v in split.items()}, split["train"]


def resolve_data(spec: str, data_dir: str | None, seed: int, n_train: int = 0) -> dict:
    """--data -> {"train", "val", "test"} Splits (built-ins, .npz, image folder)."""
    from slimkit.data import load_dataset

    p = Path(spec)
    if p.is_dir():
        ds = image_folder(p, seed)
    else:
        ds = load_dataset(spec, data_dir, seed=seed)
    train = ds.train.subset(n_train) if n_train else ds.train
    return {"train": train, "val": ds.val, "test": ds.test}
