"""Fine-tuning after pruning: cross-entropy, or distillation from the unpruned model.

A thin adapter over slimkit.distill's Distiller that accepts a fractional budget in passes over the
training split, so that CE and KD recovery, and each point of a ratio sweep, can be given exactly
the same number of samples.
"""

import math

import torch
from torch import nn

from slimkit.data.arrays import Dataset, Split
from slimkit.distill import Distiller, TrainConfig, ce, hinton
from slimkit.distill.cache import TeacherOutputs
from slimkit.errors import SlimkitError
from slimkit.masks import Masks


def fine_tune(model: nn.Module, train: Split, epochs: float = 1.0, lr: float = 1e-3, batch_size: int = 128,
              teacher: nn.Module | torch.Tensor | TeacherOutputs | None = None, temperature: float = 2.0,
              alpha: float = 0.5, seed: int = 0,
              weight_decay: float = 1e-4, progress: bool = True, desc: str = "fine-tune",
              masks: Masks | None = None) -> nn.Module:
    """Train `model` in place (AdamW, cosine schedule); Hinton KD from `teacher` when one is given.

    `teacher` is the unpruned model or its logits over `train` (a tensor in train order). A
    fractional `epochs` budget is spread over ceil(epochs) passes of a seeded random subset of
    `train` holding epochs/ceil(epochs) of its samples; cached logits are subset alike. `masks`
    (unstructured pruning) are held after every optimizer step.

    The KD defaults (T=2, alpha=0.5) were chosen on validation accuracy for recovering structured
    cuts (bench/structured.py, ResNet-20, two seeds): they beat T=4/alpha=0.7, T=4/alpha=1 and
    T=1/alpha=1, and beat CE on the same samples on ResNet-20 and MobileNetV2.
    """
    if epochs <= 0 or lr <= 0 or batch_size < 1:
        raise SlimkitError(f"fine_tune needs epochs > 0, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}")
    passes = max(1, math.ceil(epochs))
    n = max(batch_size, int(round(len(train) * epochs / passes)))
    if n < len(train):
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        train = Split(train.x[idx], train.y[idx])
        if isinstance(teacher, torch.Tensor):
            teacher = teacher[idx]
        elif isinstance(teacher, TeacherOutputs):
            rows = idx.numpy() if not isinstance(teacher.values, torch.Tensor) else idx
            teacher = TeacherOutputs(teacher.values[rows], None if teacher.indices is None else teacher.indices[rows])
    empty = Split(train.x[:0], train.y[:0])
    data = Dataset("recovery", train, empty, empty, num_classes=int(train.y.max().item()) + 1)
    config = TrainConfig(epochs=passes, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, warmup_steps=0)
    terms = hinton(temperature, alpha) if teacher is not None else [ce()]
    Distiller(teacher, model, terms, config, masks=masks).fit(data, progress=progress, desc=desc)
    model.eval()
    return model
