"""Fine-tuning after pruning: plain cross-entropy, or distillation from the unpruned model.

A thin, self-contained loop so structured pruning can be recovered and benchmarked on its own;
when slimkit.distill's trainer is available this is the piece to swap for it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from slimkit.data.arrays import Split, batches
from slimkit.errors import SlimkitError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.7) -> torch.Tensor:
    """Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def fine_tune(model: nn.Module, train: Split, epochs: float = 1.0, lr: float = 1e-3, batch_size: int = 128,
              teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.7, seed: int = 0,
              weight_decay: float = 1e-4, progress: bool = True, desc: str = "fine-tune") -> nn.Module:
    """Train `model` in place with AdamW and a cosine schedule; KD when a `teacher` is given.

    `epochs` may be fractional (a budget in passes over `train`), so CE and KD runs can be given
    exactly the same number of steps.
    """
    if epochs <= 0 or lr <= 0 or batch_size < 1:
        raise SlimkitError(f"fine_tune needs epochs > 0, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}")
    steps_per_epoch = max(1, len(train) // batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if teacher is not None:
        teacher.eval()
    model.train()
    step, epoch = 0, 0
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    while step < total:
        for x, y, _ in batches(train, batch_size, shuffle=True, seed=seed + epoch, drop_last=True):
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = kd_loss(logits, t_logits, y, temperature, alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step >= total:
                break
        epoch += 1
    bar.close()
    model.eval()
    return model
