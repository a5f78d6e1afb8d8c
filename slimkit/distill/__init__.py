"""Knowledge distillation: pure losses, feature hooks, a teacher-output cache and one training engine.

Public surface (what other slimkit stages and users call):
- `Distiller(teacher, student, losses, config, checkpoint=, cache=, augment=, masks=, task=)` and
  `.fit(train, val)`, with data as in-memory tensors or any loader of tensor, tuple or dict batches;
- tasks: `classification`, `sequence_logits` (with `ctc_loss`, `cer`), `causal_lm`, `seq2seq`, `embeddings`,
  or a user's `Task` and `Metric`; `evaluate(model, data, task)`;
- loss terms `Term` with helpers `kd`, `ce`, `cosine`, `hint`, `attention`, `hinton`, and the pure
  loss functions;
- settings `TrainConfig`, `CheckpointConfig`, `CacheConfig`; results `EpochLog`;
- `train_classifier` / `teacher_logits`, the pipeline's conveniences;
- `slimkit.distill.hf.DistillationTrainer` for transformers users (imported lazily: transformers is optional).
"""

from slimkit.distill.cache import TeacherOutputs, build_or_load, compute_teacher_outputs, open_cache
from slimkit.distill.config import CacheConfig, CheckpointConfig, EpochLog, TrainConfig, cosine_with_warmup
from slimkit.distill.engine import Distiller, NonFiniteLossError, describe
from slimkit.distill.features import FeatureTap, resolve_module
from slimkit.distill.losses import (
    Term,
    attention,
    attention_transfer,
    ce,
    cosine,
    hard_ce,
    hidden_cosine,
    hidden_mse,
    hint,
    hint_loss,
    hinton,
    hinton_kd_loss,
    kd,
    logit_mse,
    soft_target_kl,
    soft_target_kl_topk,
)
from slimkit.distill.tasks import (
    Metric,
    Task,
    causal_lm,
    cer,
    classification,
    ctc_loss,
    embeddings,
    evaluate,
    seq2seq,
    sequence_logits,
)
from slimkit.distill.trainer import teacher_logits, train_classifier

__all__ = [
    "CacheConfig", "CheckpointConfig", "Distiller", "EpochLog", "FeatureTap", "Metric", "NonFiniteLossError", "Task",
    "TeacherOutputs", "Term", "TrainConfig", "attention", "attention_transfer", "build_or_load", "causal_lm", "ce",
    "cer", "classification", "compute_teacher_outputs", "cosine", "cosine_with_warmup", "ctc_loss", "describe",
    "embeddings", "evaluate", "hard_ce", "hidden_cosine", "hidden_mse", "hint", "hint_loss", "hinton", "hinton_kd_loss", "kd",
    "logit_mse", "open_cache", "resolve_module", "soft_target_kl", "soft_target_kl_topk", "teacher_logits",
    "seq2seq", "sequence_logits", "train_classifier",
]
