import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.prune import (
    MaskHolder,
    bake,
    kept_ratio,
    magnitude_prune,
    masks_from_threshold,
    prunable_weights,
    threshold_for_sparsity,
)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_theta_gives_mask_and_kept_ratio_by_definition():
    w = torch.tensor([[0.1, -0.5, 0.2], [0.0, 0.3, -0.05]])
    masks = masks_from_threshold({"w": w}, 0.1)
    assert masks["w"].tolist() == [[False, True, True], [False, True, False]]
    per_layer, total = kept_ratio(masks)
    assert per_layer["w"] == pytest.approx(3 / 6) and total == pytest.approx(3 / 6)


def test_ratio_to_theta_global_and_per_layer():
    a, b = torch.arange(1.0, 11.0), torch.arange(101.0, 111.0)
    assert threshold_for_sparsity([a, b], 0.5) == 10.0  # global: all of `a` goes
    assert threshold_for_sparsity([b], 0.5) == 105.0
    assert threshold_for_sparsity([a], 0.0) < 0


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    with pytest.raises(SlimkitError, match=r"\[0, 1\)"):
        magnitude_prune(_net(), sparsity=bad)


def test_global_and_layer_scopes_reach_the_requested_sparsity():
    model = _net()
    report = magnitude_prune(model, sparsity=0.6, scope="layer")
    for ratio in report.kept_per_layer.values():
        assert ratio == pytest.approx(0.4, abs=0.02)
    model = _net()
    report = magnitude_prune(model, sparsity=0.6)
    assert report.kept_total == pytest.approx(0.4, abs=0.01)
    zeros = sum(int((w == 0).sum()) for w in prunable_weights(model).values())
    total = sum(w.numel() for w in prunable_weights(model).values())
    assert zeros / total == pytest.approx(0.6, abs=0.01)


def test_biases_are_left_alone_and_theta_is_absolute():
    model = _net()
    bias_before = model[0].bias.detach().clone()
    report = magnitude_prune(model, theta=0.05)
    assert torch.equal(model[0].bias, bias_before)
    for name, w in prunable_weights(model).items():
        nz = w[w != 0].abs()
        assert nz.numel() == 0 or nz.min() > 0.05
        assert report.kept_per_layer[name] == pytest.approx((w != 0).float().mean().item())


def test_exactly_one_knob_and_known_names():
    with pytest.raises(SlimkitError, match="exactly one"):
        magnitude_prune(_net(), sparsity=0.5, theta=0.1)
    with pytest.raises(SlimkitError, match="does not have"):
        magnitude_prune(_net(), sparsity=0.5, exclude=["head"])
    report = magnitude_prune(_net(), ratios={"3.weight": 0.9})
    assert report.kept_per_layer["0.weight"] == 1.0 and report.kept_per_layer["3.weight"] == pytest.approx(0.1, abs=0.01)


def test_masks_survive_training_and_bake_makes_them_permanent():
    model = _net()
    report = magnitude_prune(model, sparsity=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    holder = MaskHolder(model, report.masks, opt)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, w in prunable_weights(model).items():
        assert torch.all(w[~report.masks[name]] == 0)
    bake(model, report.masks, holder)
    opt.step()  # hooks are gone, and the momentum regrows weights: bake's zeros are what was saved
    assert not holder._handles


def test_without_holder_weights_grow_back():
    """The control for the test above: training without the mask holder un-prunes weights."""
    model = _net()
    report = magnitude_prune(model, sparsity=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    regrown = sum(int((w[~report.masks[n]] != 0).sum()) for n, w in prunable_weights(model).items())
    assert regrown > 0


@pytest.mark.parametrize("theta, message", [
    (float("nan"), "theta must be a finite number >= 0"),
    (-0.5, "theta must be a finite number >= 0"),
    (float("inf"), "theta must be a finite number >= 0"),
    (1e9, "would remove every weight; choose a theta below"),
])
def test_unusable_theta_is_refused_and_nothing_is_zeroed(theta, message):
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SlimkitError, match=message):
        magnitude_prune(model, theta=theta)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
