"""KD recovery for pruned causal LMs: a cached teacher, pure loss functions, and a thin loop.

The teacher (the unpruned model) runs once over the training windows; its top-k logits per
position (values fp16, indices int32) and, optionally, its final hidden states are written to a
safetensors file keyed by the teacher's fingerprint and the data settings. Every epoch then reads
the cache instead of running the teacher. Losses are pure functions so the shared distillation
engine can take them over; the loop only wires optimizer, schedule, masks and a time budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from slimkit.distill.config import budget_cosine
from slimkit.errors import SlimkitError, check_count, check_nonnegative, check_positive
from slimkit.io import cache_root
from slimkit.prune.magnitude import MaskHolder


def topk_kd_loss(student_logits: torch.Tensor, top_values: torch.Tensor, top_indices: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's renormalised top-k distribution.

    −Σ_k p_t(k) log p_s(k), with p_t the softmax of the teacher's k largest logits / T and p_s the
    student's full-vocabulary softmax / T, scaled by T² (the usual KD gradient scale). The mass the
    teacher puts outside its top-k (a few percent for k=64) is dropped; that is the price of not
    storing the full 49k-way distribution.
    """
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    pt = F.softmax(top_values.float() / temperature, dim=-1)
    picked = log_ps.gather(-1, top_indices.long())
    return -(pt * picked).sum(-1).mean() * temperature ** 2


def hidden_mse_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """MSE between final hidden states, normalised by the teacher's mean square (scale-free)."""
    t = teacher_hidden.float()
    return F.mse_loss(student_hidden.float(), t) / t.pow(2).mean().clamp_min(1e-8)


def next_token_loss(student_logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Plain language-modelling cross-entropy on the true next tokens."""
    return F.cross_entropy(student_logits[:, :-1].reshape(-1, student_logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the config and of cheap statistics of every parameter: same weights, same key."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().flatten().double()
            h.update(f"{name}:{tuple(p.shape)}:{float(flat.sum()):.6e}:{float(flat[::97].abs().sum()):.6e}".encode())
    return h.hexdigest()[:16]


@dataclass
class TeacherCache:
    """Teacher outputs for every training window: top-k logits and optionally final hidden states."""

    values: torch.Tensor  # (n, L, k) fp16
    indices: torch.Tensor  # (n, L, k) int32
    hidden: torch.Tensor | None  # (n, L, d) fp16
    path: Path
    reused: bool


@torch.no_grad()
def teacher_cache(teacher: nn.Module, windows: torch.Tensor, k: int = 64, with_hidden: bool = False,
                  key_extra: str = "", batch_size: int = 4, cache_dir: Path | None = None,
                  progress: bool = True) -> TeacherCache:
    """Run the teacher once and store its outputs, or reuse a matching cache file."""
    if k < 1:
        raise SlimkitError(f"top-k must be >= 1, got {k}")
    data_key = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
    name = f"teacher-{model_fingerprint(teacher)}-{data_key}-k{k}-h{int(with_hidden)}{key_extra}.safetensors"
    folder = cache_dir or cache_root() / "kd"
    path = folder / name
    if path.is_file():
        tensors = load_file(str(path))
        return TeacherCache(tensors["values"], tensors["indices"], tensors.get("hidden"), path, True)
    teacher.eval()
    vals, idxs, hids = [], [], []
    for s in tqdm(range(0, windows.shape[0], batch_size), desc="teacher cache", disable=not progress, leave=False):
        out = teacher(input_ids=windows[s:s + batch_size], use_cache=False, output_hidden_states=with_hidden)
        top = torch.topk(out.logits.float(), k, dim=-1)
        vals.append(top.values.half())
        idxs.append(top.indices.int())
        if with_hidden:
            hids.append(out.hidden_states[-1].half())
    tensors = {"values": torch.cat(vals).contiguous(), "indices": torch.cat(idxs).contiguous()}
    if with_hidden:
        tensors["hidden"] = torch.cat(hids).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return TeacherCache(tensors["values"], tensors["indices"], tensors.get("hidden"), path, False)


@dataclass
class RecoveryConfig:
    """Settings of one KD recovery run."""

    epochs: int = 1
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    temperature: float = 1.0
    top_k: int = 64
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    freeze_embeddings: bool = True
    max_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.epochs, "epochs")
        check_count(self.batch_size, "batch_size")
        check_positive(self.lr, "lr")
        check_nonnegative(self.weight_decay, "weight_decay")
        check_positive(self.temperature, "temperature")
        check_count(self.top_k, "top_k")
        check_nonnegative(self.ce_weight, "ce_weight")
        check_nonnegative(self.hidden_weight, "hidden_weight")
        if self.max_seconds is not None:
            check_positive(self.max_seconds, "max_seconds")


@dataclass
class RecoveryReport:
    steps: int
    seconds: float
    teacher_seconds: float
    cache_reused: bool
    losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def recover(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, cfg: RecoveryConfig | None = None,
            masks: dict[str, torch.Tensor] | None = None, cache_dir: Path | None = None,
            progress: bool = True) -> RecoveryReport:
    """Fine-tune `student` in place towards the cached teacher over the (n, L) training windows.

    Embeddings (tied with the LM head in SmolLM2, a fifth of the weights) are frozen by default:
    their gradient is the costliest matmul and they were not pruned. Unstructured masks are held
    through every optimizer step. Stops after `epochs` or `max_seconds`, whichever comes first;
    `max_seconds` counts from the call, so a teacher pass that builds the cache is inside the budget.
    """
    cfg = cfg or RecoveryConfig()
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    cache = teacher_cache(teacher, windows, cfg.top_k, cfg.hidden_weight > 0, cache_dir=cache_dir, progress=progress)
    teacher_s = time.perf_counter() - t0
    if cfg.freeze_embeddings:
        for module in student.modules():
            if isinstance(module, nn.Embedding):
                module.weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    holder = MaskHolder(student, masks, opt) if masks else None
    n = windows.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    student.train()
    step = 0
    start = time.perf_counter()
    budget = None if cfg.max_seconds is None else cfg.max_seconds - teacher_s
    bar = tqdm(total=total, desc="kd recovery", disable=not progress, leave=False)
    try:
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, cfg.batch_size):
                if budget is not None and time.perf_counter() - start > budget:
                    raise StopIteration
                b = order[s:s + cfg.batch_size]
                ids = windows[b]
                out = student(input_ids=ids, use_cache=False, output_hidden_states=cfg.hidden_weight > 0)
                loss = topk_kd_loss(out.logits, cache.values[b], cache.indices[b], cfg.temperature)
                if cfg.ce_weight > 0:
                    loss = loss + cfg.ce_weight * next_token_loss(out.logits, ids)
                if cfg.hidden_weight > 0:
                    loss = loss + cfg.hidden_weight * hidden_mse_loss(out.hidden_states[-1], cache.hidden[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                lr = cfg.lr * budget_cosine(step, total, time.perf_counter() - start, budget)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.step()
                losses.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    except StopIteration:
        pass
    finally:
        bar.close()
        if holder is not None:
            holder.remove()
        student.eval()
    return RecoveryReport(step, time.perf_counter() - start, teacher_s, cache.reused, losses)
