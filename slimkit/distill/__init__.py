"""Distillation: loss functions (pure) and a thin, seeded training loop around them."""

from slimkit.distill.losses import hinton_kd_loss, soft_target_kl
from slimkit.distill.trainer import EpochLog, TrainConfig, teacher_logits, train_classifier

__all__ = ["EpochLog", "TrainConfig", "hinton_kd_loss", "soft_target_kl", "teacher_logits", "train_classifier"]
