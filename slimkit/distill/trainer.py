"""A thin, seeded training loop: cross-entropy, or Hinton KD from a teacher's cached logits.

Without data augmentation the teacher's outputs for a training sample never change, so the teacher
runs once over the training set and the loop reads its logits by sample index: each KD epoch then
costs only the student's forward and backward pass.
"""

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from slimkit.data.arrays import Dataset, Split, batches
from slimkit.distill.losses import hinton_kd_loss
from slimkit.errors import SlimkitError
from slimkit.measure.metrics import evaluate_classifier, predict_logits
from slimkit.prune.magnitude import Masks, MaskHolder


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings: AdamW with linear warm-up then cosine decay, per step."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float | None = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise SlimkitError(f"invalid training settings: epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}")


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    val_accuracy: float
    val_macro_f1: float
    seconds: float
    samples_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def teacher_logits(teacher: nn.Module, split: Split, batch_size: int = 512) -> torch.Tensor:
    """The teacher's logits for every sample of `split`, in index order (the KD cache)."""
    return predict_logits(teacher, split, batch_size).detach()


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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
) -> list[EpochLog]:
    """Train `model` in place on `data.train`, evaluating on `data.val` after every epoch.

    `teacher` (a model, or its precomputed train-set logits) switches the loss to Hinton KD with
    `temperature` and `alpha`. `masks` are held after every optimizer step (pruned fine-tuning).
    With `checkpoint_dir`, the weights are saved after every epoch as `epoch{N}.safetensors`.
    """
    torch.manual_seed(config.seed)
    cached: torch.Tensor | None = None
    if isinstance(teacher, nn.Module):
        cached = teacher_logits(teacher, data.train)
    elif isinstance(teacher, torch.Tensor):
        cached = teacher
    if cached is not None and cached.shape[0] != len(data.train):
        raise SlimkitError(f"teacher logits cover {cached.shape[0]} samples but the training split has {len(data.train)}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    holder = MaskHolder(model, masks, optimizer) if masks else None
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, total_steps, min(config.warmup_steps, total_steps // 10 + 1))
    )
    history: list[EpochLog] = []
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            start, seen, loss_sum = time.perf_counter(), 0, 0.0
            bar = tqdm(
                batches(data.train, config.batch_size, shuffle=True, seed=config.seed * 1000 + epoch),
                total=steps_per_epoch, desc=f"{desc} epoch {epoch}/{config.epochs}", disable=not progress,
                leave=False, dynamic_ncols=True,
            )
            for x, y, idx in bar:
                logits = model(x)
                if cached is None:
                    loss = F.cross_entropy(logits, y)
                else:
                    loss = hinton_kd_loss(logits, cached[idx], y, temperature, alpha)
                if not torch.isfinite(loss):
                    raise SlimkitError(f"{desc}: loss became {loss.item()} at epoch {epoch}; lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                seen += x.shape[0]
                loss_sum += loss.item() * x.shape[0]
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            elapsed = time.perf_counter() - start
            metrics = evaluate_classifier(model, data.val, data.num_classes)
            log = EpochLog(epoch, loss_sum / max(seen, 1), metrics.accuracy, metrics.macro_f1, elapsed, seen / elapsed)
            history.append(log)
            if progress:
                tqdm.write(f"{desc} epoch {epoch}/{config.epochs}: loss {log.train_loss:.4f}  "
                           f"val acc {log.val_accuracy:.4f}  val F1 {log.val_macro_f1:.4f}  {log.samples_per_s:.0f} samples/s")
            if checkpoint_dir is not None:
                _save_epoch(model, Path(checkpoint_dir), epoch, history)
    finally:
        if holder is not None:
            holder.remove()
    return history


def _save_epoch(model: nn.Module, folder: Path, epoch: int, history: list[EpochLog]) -> None:
    from slimkit.io import save_model

    save_model(model, folder / f"epoch{epoch}.safetensors", extra={"epoch": epoch, "history": [h.as_dict() for h in history]})
