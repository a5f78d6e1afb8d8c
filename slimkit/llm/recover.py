"""KD recovery for pruned causal LMs: the LM recipe on the shared engine (`Distiller`, causal-LM task).

The teacher (the unpruned model) runs once over the training windows through the engine's
teacher cache: its top-k logits per position (and, with `hidden_weight`, its final hidden states)
are stored under a folder keyed by the teacher's weights and the windows, and reused by later runs.
The losses are the engine's pure functions: top-k KL (`soft_target_kl_topk`), next-token
cross-entropy and the scale-free hidden-state MSE. What this module adds is the recipe: frozen
embeddings, the zeros of unstructured or N:M students held, AdamW with clipping at 1 and a cosine
over the epochs or the time budget, whichever ends first. From the engine the run gets
checkpoints that survive kill -9, the NaN guard, AMP and torchrun.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from slimkit.distill.config import CacheConfig, CheckpointConfig, TrainConfig
from slimkit.distill.engine import Distiller
from slimkit.distill.losses import Term, ce, kd
from slimkit.distill.tasks import causal_lm
from slimkit.errors import SlimkitError, check_count, check_nonnegative, check_positive
from slimkit.io import cache_root

FINAL_HIDDEN = "model.norm"  # Llama-family decoders: the final norm's output is the last hidden state


@dataclass
class RecoveryConfig:
    """Settings of one KD recovery run (the LM recipe; `train_config()` gives the engine's settings)."""

    epochs: int = 1
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    temperature: float = 1.0
    top_k: int = 64
    # Next-token CE on the training text beside the top-k KD: perplexity is that CE, and the
    # top-k teacher drops the tail of its distribution; bench/llm.py measures both settings.
    ce_weight: float = 1.0
    hidden_weight: float = 0.0
    # Layer-wise hidden-state cosine after a depth cut: (student block, teacher block) module paths,
    # e.g. slimkit.llm.depth.seam_pairs; `layer_weight` is shared evenly among the pairs.
    layer_weight: float = 0.0
    layer_pairs: tuple[tuple[str, str], ...] = ()
    freeze_embeddings: bool = True
    max_minutes: float | None = None
    seed: int = 0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           warmup_steps=0, grad_clip=1.0, seed=self.seed, amp=self.amp, max_minutes=self.max_minutes,
                           parallel=self.parallel)

    def terms(self) -> list[Term]:
        """Top-k KD at `temperature`, plus next-token CE and final-hidden-state MSE when weighted."""
        if self.top_k < 1:
            raise SlimkitError(f"top-k must be >= 1, got {self.top_k}")
        if self.ce_weight < 0 or self.hidden_weight < 0:
            raise SlimkitError(f"ce_weight and hidden_weight must be >= 0, got {self.ce_weight}, {self.hidden_weight}")
        terms = [kd(1.0, self.temperature)]
        if self.ce_weight > 0:
            terms.append(ce(self.ce_weight))
        if self.hidden_weight > 0:
            terms.append(Term("hidden_mse", self.hidden_weight, student_layer=FINAL_HIDDEN, teacher_layer=FINAL_HIDDEN))
        if self.layer_weight > 0:
            share = self.layer_weight / len(self.layer_pairs)
            terms += [Term("hidden_cosine", share, student_layer=s, teacher_layer=t) for s, t in self.layer_pairs]
        return terms

    def __post_init__(self) -> None:
        check_count(self.epochs, "epochs")
        check_count(self.batch_size, "batch_size")
        check_positive(self.lr, "lr")
        check_nonnegative(self.weight_decay, "weight_decay")
        check_positive(self.temperature, "temperature")
        check_count(self.top_k, "top_k")
        check_nonnegative(self.ce_weight, "ce_weight")
        check_nonnegative(self.hidden_weight, "hidden_weight")
        check_nonnegative(self.layer_weight, "layer_weight")
        if self.layer_weight > 0 and not self.layer_pairs:
            raise SlimkitError("layer_weight needs layer_pairs, the (student, teacher) blocks to match, e.g. "
                               "slimkit.llm.depth.seam_pairs(removed, n_layers); or set layer_weight=0")
        if self.max_minutes is not None:
            check_positive(self.max_minutes, "max_minutes")


@dataclass
class RecoveryReport:
    steps: int
    seconds: float  # training, after the teacher cache
    teacher_seconds: float  # building (or opening) the teacher cache
    cache_reused: bool
    losses: list[float] = field(default_factory=list)
    resumed_from_step: int | None = None
    ended_by: str | None = None  # "time" when the budget ended the run before its epochs
    val_perplexity: list[tuple[int, float]] = field(default_factory=list)  # (step, perplexity) after each epoch
    # parallel "fsdp": the trained student's whole weights on rank 0 (the student itself stays sharded)
    full_weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "full_weights"}


def recover(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, cfg: RecoveryConfig | None = None,
            masks: dict[str, torch.Tensor] | None = None, cache_dir: Path | None = None,
            progress: bool = True, checkpoint: CheckpointConfig | None = None,
            val: torch.Tensor | None = None) -> RecoveryReport:
    """Fine-tune `student` in place towards the cached teacher over the (n, L) training windows.

    Embeddings (tied with the LM head in SmolLM2, a fifth of the weights) are frozen by default:
    their gradient is the costliest matmul and they were not pruned. Unstructured masks are held
    through every optimizer step. Stops after `epochs` or `max_minutes`, whichever comes first;
    the budget counts from the call, so a teacher pass that builds the cache is inside it.
    `checkpoint` makes the run resumable after a kill (the teacher cache is reused on resume).
    With `val` (n, L) windows the student's perplexity on them is measured after every epoch (inside
    the time budget), so a run shows how far each stretch of steps carried it.
    """
    cfg = cfg or RecoveryConfig()
    terms = cfg.terms()
    if cfg.hidden_weight > 0:
        for model, role in ((student, "student"), (teacher, "teacher")):
            if FINAL_HIDDEN not in dict(model.named_modules()):
                raise SlimkitError(f"hidden_weight needs the final norm at {FINAL_HIDDEN!r}, which the {role} "
                                   f"({type(model).__name__}) does not have; use hidden_weight=0")
    if cfg.freeze_embeddings:
        for module in student.modules():
            if isinstance(module, nn.Embedding):
                module.weight.requires_grad_(False)
    cache = CacheConfig(dir=cache_dir or cache_root() / "kd", topk=cfg.top_k, batch_size=4,
                        features=cfg.hidden_weight > 0 or cfg.layer_weight > 0)
    distiller = Distiller(teacher, student, terms, cfg.train_config(), checkpoint=checkpoint, cache=cache, masks=masks,
                          task=causal_lm())
    losses: list[float] = []
    ends: list = []  # (steps done, that epoch's log)
    t0 = time.perf_counter()
    try:
        distiller.fit({"input_ids": windows}, None if val is None else {"input_ids": val}, progress=progress,
                      desc="kd recovery", on_step=lambda _s: losses.append(distiller.last_loss),
                      on_epoch_end=lambda _e, _m, history: ends.append((distiller.steps_done, history[-1])))
    finally:
        student.eval()
    outputs = distiller.teacher_outputs
    curve = [(step, log.metrics["perplexity"]) for step, log in ends if "perplexity" in log.metrics]
    return RecoveryReport(distiller.steps_done, time.perf_counter() - t0 - distiller.cache_seconds,
                          distiller.cache_seconds, bool(outputs is not None and outputs.reused), losses,
                          distiller.resumed_from_step, distiller.ended_by, curve, distiller.full_weights)
