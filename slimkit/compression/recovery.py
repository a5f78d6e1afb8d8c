"""How compress recovers a cut: the losses, the teacher every recovery of a run learns from, and
the engine run itself, plus the calibration batches the cutters read.

Recovery is KD from the dense model by default (cosine for embeddings; top-k KD plus next-token CE
for causal LMs and speech); `recovery="ce"` is the task's supervised loss alone, the control that
shows what KD adds. Both run on the one engine (slimkit.distill.Distiller) under one schedule.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from slimkit.compression.settings import CompressSettings
from slimkit.distill import Distiller, Task, TrainConfig, ce, cosine, kd
from slimkit.distill.cache import TeacherOutputs, compute_teacher_outputs
from slimkit.distill.train_data import InMemory, as_train_data, batches_of
from slimkit.errors import SlimkitError

# Causal LMs and speech: the teacher's top-k logits per position are what KD reads (slimkit.llm.recover's
# and slimkit.speech.recover's recipe). Full logits would be N x L x vocab floats: 1000 windows of 256
# tokens over SmolLM2's 49152 tokens are 50 GB; the top 64 (value + index) are 131 MB.
LM_TOP_K = 64
TOP_K_TASKS = ("causal_lm", "speech")  # tasks whose outputs are distributions over a vocabulary


def check_recovery(task: Task, recovery: str) -> None:
    """Refuse CE recovery for a task without labels (embeddings learn the dense model's outputs only)."""
    if recovery == "ce" and task.supervised is None:
        raise SlimkitError(f"recovery='ce' trains on labels, and the {task.name} task has none; use recovery='kd' "
                           f"(the dense model's outputs are the targets)")


def terms_for(task: Task, s: CompressSettings) -> list:
    """The recovery losses. `recovery="ce"`: the task's supervised loss alone, no teacher term (the
    control). `recovery="kd"`: cosine to the teacher for embeddings, else KD (+ the task's supervised
    loss, weighted 1 - alpha)."""
    if s.recovery == "ce":
        check_recovery(task, s.recovery)
        return [ce(1.0)]
    if task.name == "embeddings":
        return [cosine()]
    if task.name == "causal_lm":  # slimkit.llm.recover's recipe: top-k KD plus next-token CE at weight 1
        return [kd(1.0, s.temperature), ce(1.0)]
    if task.supervised is None or s.alpha >= 1:
        return [kd(1.0, s.temperature)]
    return [t for t in (kd(s.alpha, s.temperature), ce(1.0 - s.alpha)) if t.weight > 0]


def recovery_teacher(dense: nn.Module, train: Any, task: Task, s: CompressSettings, progress: bool,
                     given: torch.Tensor | TeacherOutputs | None = None) -> nn.Module | TeacherOutputs | None:
    """What every recovery of a run learns from: nothing for CE; for KD on in-memory data the dense
    model's outputs, `given` or computed once here (the engine would otherwise run the dense model
    over the whole training split again for every mix); for KD on a loader, the dense model, live.
    A causal LM's (or speech model's) outputs are kept as the top LM_TOP_K logits per position, computed in batches of
    the run's batch size (the full logits would not fit in memory)."""
    if s.recovery == "ce":
        return None
    if given is not None:
        return given if isinstance(given, TeacherOutputs) else TeacherOutputs(given)
    data = as_train_data(train)
    if not isinstance(data, InMemory):
        return dense
    if task.name in TOP_K_TASKS:
        return compute_teacher_outputs(dense.eval(), data, batch_size=s.batch_size, topk=LM_TOP_K, task=task,
                                       progress=progress)
    return compute_teacher_outputs(dense.eval(), data, task=task, progress=progress)


def check_teacher_outputs(given: torch.Tensor | TeacherOutputs | None, train: Any) -> None:
    """Refuse, before the search, given outputs that cannot be looked up for every training sample."""
    if given is None:
        return
    data = as_train_data(train)
    if not isinstance(data, InMemory):
        raise SlimkitError("teacher_outputs are looked up by sample index, so the training data must be in-memory "
                           "tensors, not a loader; leave teacher_outputs out")
    if len(given) != len(data):
        raise SlimkitError(f"teacher outputs cover {len(given)} samples but the training data has {len(data)}; pass "
                           f"the dense model's outputs over the whole training split, in its order")


def recover(student: nn.Module, teacher: nn.Module | TeacherOutputs | None, train: Any, task: Task,
            s: CompressSettings, steps: int, desc: str, progress: bool, curve: list | None = None) -> nn.Module:
    """`steps` optimizer steps of a copy of `student` on the engine with the losses of `s.recovery`;
    no validation. The engine gets the teacher only when a loss term reads it, so a CE recovery
    cannot learn from the dense model. With `curve`, every step's training loss is appended to it
    as [step, loss], the steps counted on from its last entry (so two phases make one curve)."""
    model = copy.deepcopy(student)
    if steps == 0:
        return model.eval()
    terms = terms_for(task, s)
    data = as_train_data(train)
    per_epoch = -(-len(data) // s.batch_size) if isinstance(data, InMemory) else data.length()
    epochs = max(1, -(-steps // per_epoch)) if per_epoch else 10**6
    cfg = TrainConfig(epochs=epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed, max_steps=steps,
                      warmup_steps=max(1, min(100, steps // 10)))
    teacher = teacher if any(t.needs_teacher for t in terms) else None
    distiller = Distiller(teacher, model, terms, cfg, task=task)
    on_step = None
    if curve is not None:
        start = curve[-1][0] if curve else 0
        on_step = lambda step: curve.append([start + step, distiller.last_loss])  # noqa: E731
    distiller.fit(train, None, progress=progress, desc=desc, on_step=on_step)
    return model.eval()


def training_record(s: CompressSettings, metric: str, curve: list, vals: list) -> dict:
    """report.training: the recovery's loss at every step and the validation metric where it was
    measured (after the short recovery and after the full one), for the report's training plot."""
    return {"recovery": s.recovery, "metric": metric, "loss": curve,
            "val": [[step, v] for step, v in vals if v is not None]}


def calibration_batches(train: Any, task: Task, n: int, batch_size: int) -> list[tuple[Any, Any]]:
    """(inputs, targets) of the first `n` training batches: the inputs serve block influence, BatchNorm
    statistics and the cutters; the targets, Taylor importance."""
    out = []
    for batch in batches_of(train, batch_size):
        out.append(task.split(batch))
        if len(out) >= n:
            break
    if not out:
        raise SlimkitError("the training data gave no batches; compress needs training samples")
    return out


def class_labels(batches: list[tuple[Any, Any]]) -> list[torch.Tensor]:
    """The class labels of calibration batches, for Taylor importance (the gradient of the loss on
    them); refused in one line when the batches carry no class labels."""
    ys = [y for _, y in batches]
    if not all(isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point() for y in ys):
        raise SlimkitError("taylor importance needs class labels in the training batches; this task's batches "
                           "have none: use importance l2, bn or entropy")
    return ys
