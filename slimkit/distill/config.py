"""Settings of a distillation run, grouped so that `Distiller`'s constructor stays small."""

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from slimkit.errors import SlimkitError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW with linear warm-up then cosine decay, per optimizer step.

    `batch_size` is the global batch (split across processes under torchrun, and across
    `grad_accum` micro-batches). `amp="auto"` uses bf16 (or fp16 with loss scaling) on CUDA and
    stays off on CPU: there bf16 changes the numerics and its speed depends on the CPU's bf16
    support (bench/distill.py part 1b measures it), so it is opt-in with amp="bf16".
    `early_stop_patience` > 0 stops after that many epochs without a gain in the task's metric
    (in its direction: accuracy up, error rate or perplexity down) above `early_stop_min_delta`,
    and restores the best weights.

    `max_minutes` is a time budget counted from the start of `fit` (a teacher-cache build
    included, and continued across a resume); with it the learning rate follows a cosine to zero
    over whichever ends first, the steps or the minutes left after the teacher cache is built
    (`budget_cosine`), so a run cut by time still ends at a small learning rate and a slow cache
    build does not make training start below the peak. The LR then depends on the clock, so a time-budgeted run
    is not bit-reproducible. `max_steps` stops after that many optimizer steps; it also sets the
    schedule's length when the data cannot say how many batches an epoch has.

    `parallel` says how several torchrun processes share the work: "ddp" keeps a whole copy of the
    student, its gradients and optimizer state on every rank; "fsdp" shards them (and a live
    teacher) across the ranks with FSDP2, for models that do not fit one device (fsdp.py).
    """

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float | None = 5.0
    seed: int = 0
    grad_accum: int = 1
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    max_minutes: float | None = None
    max_steps: int | None = None
    parallel: Literal["ddp", "fsdp"] = "ddp"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise SlimkitError(f"invalid training settings: epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise SlimkitError(f"grad_accum={self.grad_accum} must be >= 1 and divide batch_size={self.batch_size}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise SlimkitError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.early_stop_patience < 0:
            raise SlimkitError(f"early_stop_patience must be >= 0, got {self.early_stop_patience}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise SlimkitError(f"max_minutes must be > 0 (or None for no time budget), got {self.max_minutes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise SlimkitError(f"max_steps must be >= 1 (or None), got {self.max_steps}")
        if self.parallel not in ("ddp", "fsdp"):
            raise SlimkitError(f"parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to save the full training state; `resume` continues from it if present.

    `every_steps` counts optimizer steps (0: only at the end of each epoch). A kill loses at most
    that many steps of work.
    """

    dir: str | Path
    every_steps: int = 0
    resume: bool = True

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise SlimkitError(f"every_steps must be >= 0, got {self.every_steps}")

    @property
    def path(self) -> Path:
        return Path(self.dir) / "last.safetensors"


@dataclass(frozen=True)
class CacheConfig:
    """Teacher-output caching. "auto" caches when it is exact: in-memory data (so outputs are looked
    up by sample index), no augmentation, and output terms only unless `features` is set.

    With `dir` the cache is memory-mapped on disk and reused across runs (keyed by teacher, data,
    task and `settings`); without it, it lives in memory for this run. `topk` keeps only the k
    largest logits (per position for sequences). `features=True` also caches the teacher's
    features for feature terms (e.g. a language model's final hidden states): exact, but one
    feature map per sample, so it is opt-in. `batch_size` is the teacher's batch while caching.
    """

    mode: Literal["auto", "off"] = "auto"
    dir: str | Path | None = None
    topk: int | None = None
    batch_size: int = 512
    settings: tuple[tuple[str, str], ...] = ()
    features: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "off"):
            raise SlimkitError(f"cache mode must be 'auto' or 'off', got {self.mode!r}")
        if self.topk is not None and self.topk < 1:
            raise SlimkitError(f"topk must be >= 1, got {self.topk}")


@dataclass(frozen=True)
class EpochLog:
    """One epoch (or the part of it a time or step budget allowed): mean train loss, every
    validation metric of the task by name (empty without validation data), time and throughput."""

    epoch: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    samples_per_s: float

    @property
    def val_accuracy(self) -> float:
        return self.metrics.get("accuracy", float("nan"))

    @property
    def val_macro_f1(self) -> float:
        return self.metrics.get("macro_f1", float("nan"))

    def as_dict(self) -> dict:
        return asdict(self)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def budget_cosine(step: int, total: int, elapsed: float = 0.0, budget: float | None = None,
                  warmup: int = 0) -> float:
    """LR multiplier for time-budgeted runs: a cosine to 0 over whichever ends first, `total` steps
    or `budget` seconds (so a run cut by time still ends at a small LR), times a linear ramp over
    the first `warmup` steps."""
    done = step / total
    if budget:
        done = max(done, elapsed / max(budget, 1e-9))
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return ramp * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def amp_dtype(setting: str, device: "torch.device") -> "torch.dtype | None":
    """The autocast dtype for `setting` on `device`, or None for full precision."""
    import torch

    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16" and device.type != "cuda":
        raise SlimkitError("amp='fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16
