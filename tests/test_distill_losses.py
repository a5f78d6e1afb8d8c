"""The loss functions against their definitions, and how terms combine."""

import pytest
import torch
import torch.nn.functional as F

from slimkit.distill import Term, attention_transfer, hidden_cosine, hint_loss, logit_mse, soft_target_kl, soft_target_kl_topk
from slimkit.distill.losses import attention_map, combine
from slimkit.errors import SlimkitError


def test_topk_kl_with_all_classes_equals_full_kl_and_ignores_dropped_mass():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    v, i = t.topk(10, -1)
    assert soft_target_kl_topk(s, v, i, 2.0).item() == pytest.approx(soft_target_kl(s, t, 2.0).item(), rel=1e-5)
    v3, i3 = t.topk(3, -1)
    loss = soft_target_kl_topk(s, v3, i3, 2.0).item()
    q = F.softmax(v3 / 2.0, -1)  # the teacher renormalised over its top 3: the dropped mass is ignored
    log_p = F.log_softmax(s / 2.0, -1).gather(-1, i3)  # the student keeps its full softmax
    assert loss == pytest.approx(((q * (q.log() - log_p)).sum(-1).mean() * 4.0).item(), rel=1e-5)
    low = t.clone().scatter_(-1, t.topk(7, -1, largest=False).indices, -30.0)  # move only the dropped mass
    assert soft_target_kl(s, low, 2.0).item() != pytest.approx(soft_target_kl(s, t, 2.0).item(), rel=1e-3)
    assert soft_target_kl_topk(s, *low.topk(3, -1), 2.0).item() == pytest.approx(loss, rel=1e-6)
    elsewhere = s.clone().scatter_add_(-1, t.topk(7, -1, largest=False).indices[:, :1], torch.full((6, 1), 5.0))
    assert soft_target_kl_topk(elsewhere, v3, i3, 2.0).item() > loss  # student mass off the top-k still costs
    seq_s, seq_t = torch.randn(2, 5, 10), torch.randn(2, 5, 10)  # per-position mean over (N, L)
    assert soft_target_kl(seq_s, seq_t, 1.0).item() == pytest.approx(
        soft_target_kl(seq_s.reshape(10, 10), seq_t.reshape(10, 10), 1.0).item(), rel=1e-6)


def test_attention_transfer_follows_zagoruyko_komodakis():
    fs, ft = torch.randn(3, 8, 5, 5), torch.randn(3, 16, 5, 5)  # channel counts may differ
    a = fs.pow(2).mean(1).flatten(1)
    a = a / a.norm(dim=1, keepdim=True)
    assert torch.allclose(attention_map(fs), a, atol=1e-6)
    b = F.normalize(ft.pow(2).mean(1).flatten(1), dim=1)
    assert attention_transfer(fs, ft).item() == pytest.approx((a - b).pow(2).sum(1).mean().item(), rel=1e-5)
    assert attention_transfer(fs, fs * 3).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert attention_transfer(fs, torch.randn(3, 4, 10, 10)).item() > 0  # teacher map pooled to 5x5


def test_hint_cosine_and_mse():
    s = torch.randn(2, 4, 6)
    assert hidden_cosine(s, 2 * s).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine(s, -s).item() == pytest.approx(2.0, abs=1e-6)
    assert hint_loss(s, s + 1).item() == pytest.approx(1.0)
    assert logit_mse(s, s).item() == 0.0
    with pytest.raises(SlimkitError, match="differ"):
        hidden_cosine(s, torch.randn(2, 4, 7))


def test_terms_validate_and_combine_with_weights():
    with pytest.raises(SlimkitError, match="student_layer"):
        Term("hint", 1.0)
    with pytest.raises(SlimkitError, match="unknown loss kind"):
        Term("focal")  # type: ignore[arg-type]
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    total, parts = combine([Term("kd", 0.5, 2.0), Term("ce", 0.25), Term("logit_mse", 2.0)], s, y, t)
    expected = 0.5 * soft_target_kl(s, t, 2.0) + 0.25 * F.cross_entropy(s, y) + 2.0 * F.mse_loss(s, t)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"kd", "ce", "logit_mse"}


def test_topk_kl_is_the_kl_of_the_renormalised_top_k_and_not_its_cross_entropy():
    """The one top-k KD loss, against its definition in float64: T^2 * sum_k p_t (log p_t - log p_s)
    with p_t renormalised over the teacher's k largest logits and log p_s the student's
    full-vocabulary log-softmax at those indices; cross-entropy would add the teacher's entropy."""
    torch.manual_seed(0)
    s, t, temp = torch.randn(2, 3, 50, dtype=torch.float64), torch.randn(2, 3, 50, dtype=torch.float64), 2.0
    v, i = t.topk(8, -1)
    p_t = torch.softmax(v / temp, -1)
    log_p_s = torch.log_softmax(s / temp, -1).gather(-1, i)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * temp ** 2
    assert soft_target_kl_topk(s, v, i, temp).item() == pytest.approx(kl.item(), rel=1e-9)
    entropy = -(p_t * p_t.log()).sum(-1).mean() * temp ** 2
    cross_entropy = -(p_t * log_p_s).sum(-1).mean() * temp ** 2
    assert cross_entropy.item() == pytest.approx(kl.item() + entropy.item(), rel=1e-9)
    assert soft_target_kl_topk(t, v, i, temp).item() > 0  # the teacher itself still pays for its mass outside the top k
    full = torch.full_like(t, -1e4).scatter(-1, i, v)  # a student matching the kept logits, nothing elsewhere
    assert soft_target_kl_topk(full, v, i, temp).item() == pytest.approx(0.0, abs=1e-9)
