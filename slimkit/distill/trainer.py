"""`train_classifier`: the pipeline's one-call convenience over `Distiller`.

Hinton KD when a teacher (model or its train-set logits) is given, cross-entropy otherwise. Without
data augmentation the teacher runs once over the training set and the loop reads its logits by
sample index, so each KD epoch costs only the student's forward and backward pass.
"""

from pathlib import Path

import torch
from torch import nn

from slimkit.data.arrays import Dataset, Split
from slimkit.distill.config import CheckpointConfig, EpochLog, TrainConfig
from slimkit.distill.engine import Distiller
from slimkit.distill.losses import ce, hinton
from slimkit.io import Builder, dense_builder, save_model
from slimkit.measure.metrics import predict_logits
from slimkit.masks import Masks


def teacher_logits(teacher: nn.Module, split: Split, batch_size: int = 512) -> torch.Tensor:
    """The teacher's logits for every sample of `split`, in index order (an in-memory KD cache)."""
    return predict_logits(teacher, split, batch_size).detach()


def train_classifier(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    teacher: nn.Module | torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    masks: Masks | None = None,
    checkpoint_dir: str | Path | None = None,
    desc: str = "train",
    progress: bool = True,
    resume_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    builder: Builder | None = None,
) -> list[EpochLog]:
    """Train `model` in place on `data.train`, evaluating on `data.val` after every epoch.

    `teacher` (a model, or its precomputed train-set logits) switches the loss to Hinton KD with
    `temperature` and `alpha`. `masks` are held after every optimizer step (pruned fine-tuning).
    With `checkpoint_dir`, the model is saved after every epoch as `epoch{N}.safetensors` by
    slimkit.io.save_model, recorded against `builder` (what builds the dense model; slimkit's own
    models need none), so a structurally pruned model of any kind reloads with load_model; with
    `resume_dir`, the full training state is saved there (every `checkpoint_every` steps and at each
    epoch end) and a killed run picks up from it.
    """
    terms = hinton(temperature, alpha) if teacher is not None else [ce()]
    ckpt = CheckpointConfig(resume_dir, every_steps=checkpoint_every) if resume_dir is not None else None
    distiller = Distiller(teacher, model, terms, config, checkpoint=ckpt, masks=masks)
    on_epoch = None
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        dense_builder(model, builder)  # a model save_model cannot describe fails now, not after an epoch

        def on_epoch(epoch: int, student: nn.Module, history: list[EpochLog]) -> None:
            save_model(student, folder / f"epoch{epoch}.safetensors", builder=builder,
                       extra={"epoch": epoch, "history": [h.as_dict() for h in history]})

    return distiller.fit(data, progress=progress, desc=desc, on_epoch_end=on_epoch)
