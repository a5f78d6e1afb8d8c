"""Accuracy, macro-F1 and the confusion matrix, as pure functions of predictions and labels."""

from dataclasses import dataclass, field

import torch
from torch import nn

from slimkit.data.arrays import Split, batches


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    macro_f1: float
    confusion: list[list[int]] = field(repr=False)

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "confusion": self.confusion}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts C[i, j] of samples with true class i predicted as j."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ClassificationMetrics:
    """Accuracy and macro-F1 (unweighted mean of per-class F1; a class never predicted nor present counts 0)."""
    cm = confusion_matrix(preds, labels, num_classes).double()
    tp = cm.diag()
    precision_den = cm.sum(0)
    recall_den = cm.sum(1)
    f1_den = precision_den + recall_den
    f1 = torch.where(f1_den > 0, 2 * tp / f1_den.clamp(min=1), torch.zeros_like(tp))
    accuracy = (tp.sum() / cm.sum().clamp(min=1)).item()
    return ClassificationMetrics(accuracy, f1.mean().item(), cm.long().tolist())


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, batch_size: int = 512) -> torch.Tensor:
    """Logits of `model` over `split`, in order, in eval mode (train mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(x) for x, _, _ in batches(split, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate_classifier(model: nn.Module, split: Split, num_classes: int, batch_size: int = 512) -> ClassificationMetrics:
    """Accuracy, macro-F1 and confusion matrix of `model` on `split`."""
    logits = predict_logits(model, split, batch_size)
    return classification_metrics(logits.argmax(1), split.y, num_classes)
