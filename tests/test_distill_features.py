"""Features by module path through hooks, adapters, and the teacher-output cache."""

import warnings

import numpy as np
import pytest
import torch

from slimkit.data import Dataset
from slimkit.distill import (CacheConfig, Distiller, FeatureTap, Term, TrainConfig, attention, build_or_load, hint,
                             hinton, kd, resolve_module)
from slimkit.errors import SlimkitError
from slimkit.models import SeedCNN


def _pair():
    torch.manual_seed(0)
    return SeedCNN(1, 8, (16, 32, 64)), SeedCNN(1, 8, (8, 16, 32))


def _small(digits, n=384) -> Dataset:
    return Dataset(digits.name, digits.train.subset(n), digits.val, digits.test, digits.num_classes)


def test_unknown_path_lists_nearest_names():
    teacher, student = _pair()
    with pytest.raises(SlimkitError, match=r"no module 'conv3'.*nearest names: conv2, conv1"):
        resolve_module(teacher, "conv3", "teacher")
    with pytest.raises(SlimkitError, match="student"):
        Distiller(teacher, student, [hint("cnv2", "conv2")])


def test_tap_records_outputs_and_leaves_no_hooks():
    teacher, _ = _pair()
    tap = FeatureTap(teacher, ["conv2", "fc1"])
    teacher(torch.randn(2, 1, 8, 8))
    assert tap.features["conv2"].shape == (2, 32, 4, 4) and tap.features["fc1"].shape == (2, 64)
    tap.remove()
    assert not teacher.conv2._forward_hooks and not tap.features


def test_hint_trains_an_adapter_and_leaves_the_models_unchanged(digits):
    teacher, student = _pair()
    d = Distiller(teacher, student, [*hinton(4.0, 0.7), hint("conv2", "conv2", 0.5), attention("conv1", "conv1", 10.0)],
                  TrainConfig(epochs=1, batch_size=64, lr=1e-2, warmup_steps=2))
    before = {k: v.clone() for k, v in d.bundle.state_dict().items() if k.startswith("student.")}
    d.fit(_small(digits), progress=False)
    adapter = d.bundle.adapters["conv2__conv2"]
    assert isinstance(adapter, torch.nn.Conv2d) and adapter.weight.shape == (32, 16, 1, 1)
    assert "conv1__conv1" not in d.bundle.adapters  # attention transfer needs no adapter
    assert any(not torch.equal(before[k], v) for k, v in d.bundle.state_dict().items() if k in before)
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    assert set(student.state_dict()) == {k.removeprefix("student.") for k in before}


def test_disk_cache_is_built_once_keyed_by_teacher_and_topk(digits, tmp_path):
    teacher, _ = _pair()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    x = digits.train.x[:100]
    a = build_or_load(teacher, x, tmp_path, {"augment": None})
    n = len(calls)
    b = build_or_load(teacher, x, tmp_path, {"augment": None})
    assert len(calls) == n and a.folder == b.folder and isinstance(b.values, np.memmap)
    assert np.allclose(np.asarray(b.values), teacher.eval()(x).detach().numpy(), atol=1e-5)
    top = build_or_load(teacher, x, tmp_path, {"augment": None}, topk=3)
    assert top.folder != a.folder and top.values.shape == (100, 3) and top.indices.shape == (100, 3)
    with torch.no_grad():
        teacher.fc2.bias.add_(1.0)
    assert build_or_load(teacher, x, tmp_path, {"augment": None}).folder != a.folder
    assert sorted(p.name for p in (tmp_path / a.folder.name).iterdir()) == ["meta.json", "values.npy"]


def test_cached_kd_equals_live_kd_and_augmentation_falls_back(digits, tmp_path):
    teacher, _ = _pair()
    data = _small(digits)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2, warmup_steps=2)
    logs = []
    for cache in (CacheConfig(dir=tmp_path), CacheConfig(mode="off")):
        torch.manual_seed(1)
        student = SeedCNN(1, 8, (8, 16, 32))
        logs.append(Distiller(teacher, student, [kd(1.0, 2.0)], cfg, cache=cache).fit(data, progress=False))
    assert logs[0][0].train_loss == pytest.approx(logs[1][0].train_loss, rel=1e-5)
    flip = lambda x, g: torch.where(torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)  # noqa: E731
    d = Distiller(teacher, SeedCNN(1, 8, (8, 16, 32)), [Term("kd", 1.0)], cfg, cache=CacheConfig(dir=tmp_path / "aug"),
                  augment=flip)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d.fit(data, progress=False)
    assert any("cannot be cached" in str(w.message) for w in caught)
    assert not (tmp_path / "aug").exists()


def test_grad_accumulation_matches_full_batch(digits):
    data = _small(digits, 256)
    logs = []
    for accum in (1, 4):
        torch.manual_seed(0)
        model = SeedCNN(1, 8, (8, 16, 32))
        cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-2, warmup_steps=2, grad_accum=accum)
        logs.append((Distiller(None, model, [Term("ce")], cfg).fit(data, progress=False), model))
    assert logs[0][0][0].train_loss == pytest.approx(logs[1][0][0].train_loss, rel=1e-4)
    for p, q in zip(logs[0][1].parameters(), logs[1][1].parameters()):
        assert torch.allclose(p, q, atol=1e-4)


def test_early_stopping_restores_best_weights(digits):
    torch.manual_seed(0)
    model = SeedCNN(1, 8, (8, 16, 32))
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.5, warmup_steps=1, early_stop_patience=1, grad_clip=None)
    d = Distiller(None, model, [Term("ce")], cfg)
    history = d.fit(_small(digits, 256), progress=False)
    assert len(history) < 6  # a learning rate this large stalls, so it stops early
    from slimkit.measure.metrics import evaluate_classifier
    assert evaluate_classifier(model, digits.val, 10).accuracy == pytest.approx(max(h.val_accuracy for h in history))


def test_amp_choice_and_bf16_on_cpu(digits):
    from slimkit.distill.engine import amp_dtype
    assert amp_dtype("auto", torch.device("cpu")) is None  # off by default on CPU
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(SlimkitError, match="CUDA"):
        amp_dtype("fp16", torch.device("cpu"))
    torch.manual_seed(0)
    log = Distiller(None, SeedCNN(1, 8, (8, 16, 32)), [Term("ce")],
                    TrainConfig(epochs=1, batch_size=64, lr=1e-2, warmup_steps=1, amp="bf16")).fit(_small(digits, 256), progress=False)
    assert np.isfinite(log[0].train_loss)
