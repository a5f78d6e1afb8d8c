"""fine_tune: KD from cached logits really steers training, and fractional budgets subset them alike."""

import pytest
import torch
from torch import nn

from slimkit.data.arrays import Split
from slimkit.errors import SlimkitError
from slimkit.distill.finetune import fine_tune


def _task(n: int = 512) -> tuple[Split, torch.Tensor]:
    """Labels follow one rule (x0 < 0) and the teacher's logits the opposite (x0 > 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    rule = (x[:, 0] > 0).long()
    logits = torch.stack([-6.0 * (rule * 2 - 1), 6.0 * (rule * 2 - 1)], dim=1).float()
    return Split(x, 1 - rule), logits


def _agreement(model: nn.Module, split: Split, logits: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(split.x).argmax(1) == logits.argmax(1)).float().mean().item()


@pytest.mark.parametrize("epochs", [3.0, 2.5])
def test_pure_kd_follows_the_teacher_logits_and_ce_follows_the_labels(epochs):
    train, logits = _task()
    torch.manual_seed(0)
    kd = fine_tune(nn.Linear(8, 2), train, epochs=epochs, lr=0.05, batch_size=32, teacher=logits, alpha=1.0,
                   temperature=2.0, progress=False)  # 2.5 epochs: 3 passes over a subset, logits subset alike
    torch.manual_seed(0)
    ce = fine_tune(nn.Linear(8, 2), train, epochs=epochs, lr=0.05, batch_size=32, progress=False)
    assert _agreement(kd, train, logits) > 0.9  # the labels say the opposite; only the logits teach this
    assert _agreement(ce, train, logits) < 0.1


def test_budget_must_be_positive():
    train, _ = _task(64)
    with pytest.raises(SlimkitError, match="epochs > 0"):
        fine_tune(nn.Linear(8, 2), train, epochs=0, progress=False)
