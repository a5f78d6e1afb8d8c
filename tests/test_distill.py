import math

import pytest
import torch
import torch.nn.functional as F

from slimkit.distill import TrainConfig, hinton_kd_loss, soft_target_kl, teacher_logits, train_classifier
from slimkit.distill import cosine_with_warmup
from slimkit.models import SeedCNN
from slimkit.prune import magnitude_prune, prunable_weights


def test_soft_target_kl_matches_definition():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    p_t = F.softmax(t / T, -1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert soft_target_kl(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)
    assert soft_target_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_hinton_loss_mixes_kd_and_ce():
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    ce = F.cross_entropy(s, y)
    kd = soft_target_kl(s, t, 2.0)
    assert hinton_kd_loss(s, t, y, 2.0, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    assert hinton_kd_loss(s, t, y, 2.0, 1.0).item() == pytest.approx(kd.item(), rel=1e-6)
    assert hinton_kd_loss(s, t, y, 2.0, 0.25).item() == pytest.approx(0.25 * kd.item() + 0.75 * ce.item(), rel=1e-6)
    with pytest.raises(ValueError):
        hinton_kd_loss(s, t, y, 0.0, 0.5)


def test_schedule_warms_up_then_decays_to_zero():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0, abs=1e-9)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def _small(widths=(16, 32, 64)) -> SeedCNN:
    return SeedCNN(in_channels=1, input_size=8, widths=widths)


def test_training_learns_digits_and_is_seeded(digits, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, seed=1, warmup_steps=5)
    torch.manual_seed(0)
    a = _small()
    log_a = train_classifier(a, digits, cfg, checkpoint_dir=tmp_path, progress=False)
    torch.manual_seed(0)
    b = _small()
    log_b = train_classifier(b, digits, cfg, progress=False)
    assert log_a[-1].val_accuracy > 0.85  # 3 short epochs on 1.3k images
    assert [h.train_loss for h in log_a] == [h.train_loss for h in log_b]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch1.safetensors", "epoch2.safetensors", "epoch3.safetensors"]


def test_kd_from_cached_logits_equals_kd_from_live_teacher(digits):
    torch.manual_seed(0)
    teacher = _small((16, 32, 64))
    train_classifier(teacher, digits, TrainConfig(epochs=2, batch_size=64, lr=3e-3, warmup_steps=5), progress=False)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, seed=2, warmup_steps=5)
    torch.manual_seed(1)
    s1 = _small()
    torch.manual_seed(1)
    s2 = _small()
    log1 = train_classifier(s1, digits, cfg, teacher=teacher, progress=False)
    log2 = train_classifier(s2, digits, cfg, teacher=teacher_logits(teacher, digits.train), progress=False)
    assert log1[0].train_loss == pytest.approx(log2[0].train_loss, rel=1e-6)


def test_masks_are_held_during_finetune(digits):
    torch.manual_seed(0)
    model = _small()
    report = magnitude_prune(model, sparsity=0.7)
    train_classifier(model, digits, TrainConfig(epochs=1, batch_size=64, warmup_steps=1), masks=report.masks, progress=False)
    weights = prunable_weights(model)
    assert all(torch.all(weights[n][~m] == 0) for n, m in report.masks.items())


def test_budget_cosine_decays_over_whichever_budget_ends_first():
    import pytest

    from slimkit.distill.config import budget_cosine

    assert budget_cosine(0, 100) == 1.0 and budget_cosine(100, 100) == pytest.approx(0.0)
    assert budget_cosine(50, 100) == pytest.approx(0.5)
    # half the seconds spent at a tenth of the steps: time is the binding budget
    assert budget_cosine(10, 100, elapsed=30.0, budget=60.0) == pytest.approx(0.5)
    assert budget_cosine(10, 100, elapsed=90.0, budget=60.0) == pytest.approx(0.0)
    assert budget_cosine(4, 100, warmup=20) == pytest.approx(0.25 * budget_cosine(4, 100))


def mlp(hidden: int = 32) -> torch.nn.Sequential:
    """A model slimkit does not know (no config()): 8x8 digits -> hidden -> 10."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def test_epoch_checkpoints_of_a_pruned_foreign_model_reload_with_its_builder(digits, tmp_path):
    """A structurally pruned model that is not slimkit's: its epoch checkpoints record the caller's
    builder and reload into the pruned shapes; without a builder training refuses before it starts."""
    from slimkit.errors import SlimkitError
    from slimkit.io import load_model

    net = mlp()
    keep = torch.arange(0, 32, 2)  # half the hidden units
    with torch.no_grad():
        net[1].weight, net[1].bias = torch.nn.Parameter(net[1].weight[keep]), torch.nn.Parameter(net[1].bias[keep])
        net[3].weight = torch.nn.Parameter(net[3].weight[:, keep])
    net[1].out_features = net[3].in_features = 16
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2, seed=0, warmup_steps=2)
    with pytest.raises(SlimkitError, match="builder"):
        train_classifier(net, digits, cfg, checkpoint_dir=tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()
    train_classifier(net, digits, cfg, checkpoint_dir=tmp_path, progress=False, builder=(mlp, {"hidden": 32}))
    back = load_model(tmp_path / "epoch1.safetensors", builder=mlp)
    assert back[1].out_features == 16
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(back(x), net.eval()(x))
