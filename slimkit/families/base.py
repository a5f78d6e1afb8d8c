"""What every model family answers, so that `compress`, `prune`, `distill` and `eval` can ask it.

A family is one kind of model slimkit knows how to cut. It names:
- its cuts (whole blocks, FFN neurons, channels...), through a `Cutter` (slimkit.compression);
- its tasks, and how a task is read from the model itself (a Hugging Face config's
  `architectures`) so the user does not have to say it;
- how the result is saved so that it reloads (`saving`, in words, for the report and errors);
- its data readers: what `--data` may be for it.

`Source` is what a MODEL argument resolves to, and `Prepared` what a family's data reader gives:
splits the engine takes, and one sentence on how they were made, which the report keeps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import nn


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
    extras: dict = field(default_factory=dict)  # e.g. a tokenizer, the folder, the config's task
    family: str = "modules"
    processor: Any = None  # a tokenizer or image processor saved beside a Hugging Face result


@dataclass
class Prepared:
    """A family's data: {"train", "val", "test"} splits and how they were made (for the report)."""

    splits: dict
    how: str
    calib_texts: list[str] = field(default_factory=list)
    example: Any = None  # one input batch for MACs and timing, when the validation inputs are not one


@dataclass(frozen=True)
class Family:
    """One kind of model: what it takes, what it cuts, its tasks and how its results reload."""

    name: str
    takes: str  # the models, in words
    cuts: str
    tasks: tuple[str, ...]
    saving: str
    data: str  # what --data may be


def shared_copy(model: nn.Module) -> nn.Module:
    """A deepcopy whose parameters and buffers are the original's tensors: module objects (and their
    `layer_idx`, the config) are new, so layers can be dropped or replaced without touching the
    original, at no memory cost. Never train such a copy in place: compress's recover() deepcopies
    before training, which makes the tensors its own."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)
