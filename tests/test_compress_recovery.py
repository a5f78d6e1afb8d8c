"""compress's recovery loss: KD from the dense model, or CE on labels alone, and `recover_chosen`, the
control that recovers the chosen cut again with only the loss changed.

A tiny ResNet on 8x8 digits, a few steps, and a timer that reports MACs as milliseconds, so no
test depends on the clock.
"""

import copy

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import slimkit
from slimkit.cli.main import app
from slimkit.compression import CompressSettings, recover_chosen
from slimkit.compression import recovery as recovery_mod
from slimkit.distill import Distiller, TrainConfig, ce, classification, embeddings
from slimkit.errors import SlimkitError
from slimkit.measure import count_macs
from slimkit.models import ResNetCifar

TINY = {"search_steps": 3, "recover_steps": 4, "batch_size": 64, "calib_batches": 2, "progress": False}


def tiny_resnet():
    torch.manual_seed(0)
    return ResNetCifar(depth=8, width=16, num_classes=10, in_channels=1, input_size=8)


@pytest.fixture(scope="module")
def data():
    from slimkit.data import load_digits

    d = load_digits(seed=0)
    return d.train.subset(256), d.val, d.test


class Unreadable(nn.Module):
    """A teacher that fails the moment anything reads it."""

    def forward(self, x):
        raise AssertionError("the teacher was read")


def test_ce_recovery_has_no_teacher_term_and_kd_has_one():
    task = classification()
    ce_terms = recovery_mod.terms_for(task, CompressSettings(recovery="ce"))
    kd_terms = recovery_mod.terms_for(task, CompressSettings(recovery="kd"))
    assert [t.kind for t in ce_terms] == ["ce"] and not any(t.needs_teacher for t in ce_terms)
    assert "kd" in [t.kind for t in kd_terms] and any(t.needs_teacher for t in kd_terms)
    assert CompressSettings().recovery == "kd"


def test_ce_recovery_is_plain_cross_entropy_that_never_reads_the_teacher(data):
    train, _, _ = data
    task, student = classification(), tiny_resnet()
    s = CompressSettings(recovery="ce", batch_size=64, lr=1e-3)
    got = recovery_mod.recover(student, Unreadable(), train, task, s, 5, "ce", progress=False)
    # the definition: the engine with no teacher and one CE term, under compress's schedule
    ref = copy.deepcopy(student)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-3, seed=0, max_steps=5, warmup_steps=1)
    Distiller(None, ref, [ce(1.0)], cfg, task=task).fit(train, None, progress=False)
    for (name, a), b in zip(got.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(got.state_dict()["fc.weight"], student.state_dict()["fc.weight"])  # it trained
    with pytest.raises(AssertionError, match="the teacher was read"):
        recovery_mod.recover(student, Unreadable(), train, task, s.model_copy(update={"recovery": "kd"}), 5, "kd",
                        progress=False)


def test_ce_recovery_is_refused_for_a_label_free_task_before_work(data):
    train, val, test = data
    with pytest.raises(SlimkitError, match="recovery='ce' trains on labels, and the embeddings task has none"):
        slimkit.compress(tiny_resnet(), train, val, test, task=embeddings(), target="macs=2x", recovery="ce",
                         timer=lambda ms: [1.0] * len(ms), timing_method="none", **TINY)
    with pytest.raises(SlimkitError, match="compress setting recovery"):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", recovery="mse", **TINY)
    res = CliRunner().invoke(app, ["compress", "nothing.safetensors", "--task", "embeddings", "--recovery", "ce",
                                   "--out", "unused"])
    assert res.exit_code == 2 and "has none; use --recovery kd" in res.output


@pytest.fixture(scope="module")
def run(data):
    train, val, test = data
    model = tiny_resnet()
    ex = val.x[:1]
    result = slimkit.compress(model, train, val, test, target="macs=2x", floor=0.0, seed=3,
                              timer=lambda ms: [count_macs(m, ex) / 1e6 for m in ms], timing_method="MACs as ms",
                              **TINY)
    return model, result


def test_recover_chosen_repeats_compress_recovery_exactly(run, data):
    model, result = run
    again = recover_chosen(result, model, data[0], progress=False)
    for (name, a), b in zip(again.state_dict().items(), result.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert result.settings.recovery == "kd" and result.report.settings["recovery"] == "kd"


def test_recover_chosen_with_ce_trains_the_same_cut_without_a_teacher(run, data):
    _, result = run
    ce_model = recover_chosen(result, Unreadable(), data[0], progress=False, recovery="ce")
    shapes = {k: v.shape for k, v in result.model.state_dict().items()}
    assert {k: v.shape for k, v in ce_model.state_dict().items()} == shapes  # same kept widths
    assert not torch.equal(ce_model.state_dict()["fc.weight"], result.model.state_dict()["fc.weight"])
    start = result.chosen.model.state_dict()
    assert not torch.equal(ce_model.state_dict()["fc.weight"], start["fc.weight"])  # it trained from the cut


def test_given_teacher_outputs_serve_the_kd_recoveries(run, data):
    """Outputs the caller computed already (the demo's KD student needs the same) replace the run's own."""
    from slimkit.distill import teacher_logits

    model, result = run
    train, val, test = data
    ex = val.x[:1]
    given = slimkit.compress(model, train, val, test, target="macs=2x", floor=0.0, seed=3,
                             timer=lambda ms: [count_macs(m, ex) / 1e6 for m in ms], timing_method="MACs as ms",
                             teacher_outputs=teacher_logits(model, train), **TINY)
    for (name, a), b in zip(given.model.state_dict().items(), result.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    with pytest.raises(SlimkitError, match="teacher outputs cover 10 samples"):
        slimkit.compress(model, train, val, test, target="macs=2x", floor=0.0, seed=3,
                         timer=lambda ms: [count_macs(m, ex) / 1e6 for m in ms], timing_method="MACs as ms",
                         teacher_outputs=teacher_logits(model, train)[:10], **TINY)
