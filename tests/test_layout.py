"""Any model saves and reloads without pickle: the checkpoint records tensor shapes, removed blocks
and changed module attributes against the dense model its builder makes (slimkit.io.layout)."""

import copy

import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io import load_model, read_architecture, save_model
from slimkit.io.layout import apply_layout, record_layout
from tests.foreign import Net, build, cut_by_hand

X = torch.randn(4, 3, 12, 12)


def _cut(width: int = 16) -> Net:
    torch.manual_seed(1)
    net = build(width)
    for m in net.modules():  # non-trivial BN statistics, so a lost buffer would show in the outputs
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return cut_by_hand(net).eval()


def test_layout_records_what_the_cut_changed():
    cut = _cut()
    layout = record_layout(cut, build(16))
    assert layout["removed_blocks"] == ["extra"]
    assert layout["attributes"]["mix"] == {"groups": 2}
    assert layout["attributes"]["stem.0"] == {"out_channels": 4}
    assert layout["attributes"]["down.0"] == {"in_channels": 4, "out_channels": 12}
    assert layout["attributes"]["fc1"] == {"in_features": 12, "out_features": 16}
    assert "training" not in str(layout["attributes"])
    rebuilt = apply_layout(build(16), layout)
    rebuilt.load_state_dict(cut.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(X), cut(X), rtol=0, atol=1e-5)


@pytest.mark.parametrize("builder", [build, (build, {"width": 16}), (Net, {"channels": [8, 16], "hidden": 32})])
def test_user_model_round_trip(tmp_path, builder):
    cut = _cut()
    path = save_model(cut, tmp_path / "cut.safetensors", builder=builder)
    loaded = load_model(path, builder=builder).eval()
    assert isinstance(loaded.extra, nn.Identity) and loaded.mix.groups == 2 and loaded.fc1.in_features == 12
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), cut(X), rtol=0, atol=1e-5)


def test_header_names_the_builder_but_loading_needs_it(tmp_path):
    path = save_model(_cut(), tmp_path / "cut.safetensors", builder=(build, {"width": 16}))
    arch = read_architecture(path)
    assert arch["builder"] == "tests.foreign:build" and arch["kwargs"] == {"width": 16} and arch["class"] == "Net"
    with pytest.raises(SlimkitError, match=r"holds a Net \(saved with builder tests.foreign:build\).*pass builder="):
        load_model(path)


def test_without_the_recorded_attribute_the_model_would_differ(tmp_path):
    """The mixer's group count lives in no tensor shape: only the recorded attribute restores it."""
    cut = _cut()
    layout = record_layout(cut, build(16))
    del layout["attributes"]["mix"]
    wrong = apply_layout(build(16), layout)
    wrong.load_state_dict(cut.state_dict())
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot be multiplied"):
        wrong.eval()(X)


def test_wrong_builder_or_foreign_structure_is_refused_at_save(tmp_path):
    cut = _cut()
    no_bias = copy.deepcopy(cut)
    no_bias.fc2.bias = None  # a change no layout records: the replay on the dense build must notice
    with pytest.raises(SlimkitError, match=r"missing \['fc2.bias'\].*does not make this model's dense form"):
        save_model(no_bias, tmp_path / "a.safetensors", builder=build)
    swapped = copy.deepcopy(cut)
    swapped.mix = nn.Linear(16, 16)
    with pytest.raises(SlimkitError, match="module 'mix' is a Linear but the dense build has a GroupMixer"):
        save_model(swapped, tmp_path / "b.safetensors", builder=build)
    with pytest.raises(SlimkitError, match="builder must be a callable"):
        save_model(cut, tmp_path / "c.safetensors", builder="tests.foreign:build")
    with pytest.raises(SlimkitError, match="returned a int, not an nn.Module"):
        save_model(cut, tmp_path / "d.safetensors", builder=lambda: 3)
    assert not list(tmp_path.iterdir())


def test_tied_weights_stay_tied_when_resized():
    class Tied(nn.Module):
        def __init__(self, n: int = 6) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, n)
            self.out = nn.Linear(n, 10, bias=False)
            self.out.weight = self.emb.weight

    small = Tied(4)
    layout = record_layout(small, Tied(6))
    rebuilt = apply_layout(Tied(6), layout)
    assert rebuilt.out.weight is rebuilt.emb.weight and list(rebuilt.emb.weight.shape) == [10, 4]


def test_recurrent_layer_cut_round_trips():
    """A narrower LSTM (hidden size, four gates, both directions) is rebuilt from the dense one."""
    class Recogniser(nn.Module):
        def __init__(self, hidden: int = 16) -> None:
            super().__init__()
            self.rnn = nn.LSTM(8, hidden, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * hidden, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0])

    narrow = Recogniser(12).eval()
    layout = record_layout(narrow, Recogniser(16))
    assert layout["attributes"]["rnn"] == {"hidden_size": 12}
    rebuilt = apply_layout(Recogniser(16), layout)
    rebuilt.load_state_dict(narrow.state_dict())
    seq = torch.randn(2, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(seq), narrow(seq), rtol=0, atol=1e-5)


def test_fresh_process_timer_takes_a_users_builder():
    from slimkit.measure.fresh import time_in_fresh_processes

    cut = _cut()
    times = time_in_fresh_processes([build(16).eval(), cut], X[:1], rounds=2, passes=1, log=False,
                                    builder="tests.foreign:build", kwargs={"width": 16})
    assert len(times) == 2 and all(t["nchw"] > 0 for t in times)
    with pytest.raises(SlimkitError, match="has no 'nope'"):
        time_in_fresh_processes([cut], X[:1], rounds=1, passes=1, log=False, builder="tests.foreign:nope")


def test_fresh_child_sets_the_wait_policy_itself(tmp_path):
    """Started without OMP_WAIT_POLICY, the child restarts itself with it and records it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import save_file

    save_model(_cut(), tmp_path / "m000.safetensors", builder=build)
    save_file({"x": X[:1].contiguous()}, str(tmp_path / "example.safetensors"))
    (tmp_path / "spec.json").write_text(json.dumps({"n": 1, "layouts": ["nchw"], "rounds": 1, "threads": 1,
                                                    "fold": True, "burst": 2, "warmup": 1}))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-m", "slimkit.measure.fresh", str(tmp_path), "--builder", "tests.foreign:build"],
                   env=env, check=True, capture_output=True)
    assert json.loads((tmp_path / "times.json").read_text())["omp_wait_policy"] == "ACTIVE"
