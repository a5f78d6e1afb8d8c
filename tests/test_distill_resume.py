"""Fault tolerance: kill -9 mid-epoch-2 and resume to the same result; NaN stops cleanly."""

import math

import pytest
import torch

from slimkit.distill import CheckpointConfig, Distiller, NonFiniteLossError, TrainConfig, ce
from slimkit.distill.checkpoint import load_checkpoint
from slimkit.models import SeedCNN
from tests._distill_proc import run_worker

ARGS = ["--dataset", "digits", "--train-subset", "512", "--epochs", "3", "--batch-size", "32", "--lr", "1e-2",
        "--threads", "1"]


def test_kill9_mid_epoch2_then_resume_matches_unbroken_run(tmp_path):
    every = 5  # 16 steps per epoch; kill at step 22, in epoch 2
    unbroken = run_worker(ARGS, tmp_path / "unbroken.json")
    ckpt = ["--ckpt-dir", str(tmp_path / "ckpt"), "--every", str(every)]
    killed_at = run_worker(ARGS + ckpt, tmp_path / "never.json", kill_at_step=22)
    saved = load_checkpoint(tmp_path / "ckpt" / "last.safetensors")["position"]
    assert saved["epoch"] == 2 and 0 < saved["batch"] < 16
    assert killed_at - saved["step"] <= every  # work lost is at most one checkpoint interval
    resumed = run_worker(ARGS + ckpt, tmp_path / "resumed.json")
    assert resumed["resumed_from_step"] == saved["step"]
    assert resumed["steps"] == unbroken["steps"] == 48
    assert abs(resumed["val_accuracy"] - unbroken["val_accuracy"]) <= 0.002
    assert resumed["weights"] == unbroken["weights"]  # bit-identical: same data order, optimizer and RNG state
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in unbroken["history"]], rel=1e-9)


class _Exploding(torch.nn.Module):
    """Wraps a model and returns NaN logits from a given call on (simulates a diverging run)."""

    def __init__(self, inner: torch.nn.Module, from_call: int) -> None:
        super().__init__()
        self.inner, self.from_call, self.calls = inner, from_call, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls >= self.from_call and self.training else out


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(digits, tmp_path):
    model = _Exploding(SeedCNN(1, 8, (8, 16, 32)), from_call=12)
    ckpt = CheckpointConfig(tmp_path, every_steps=4)
    d = Distiller(None, model, [ce()], TrainConfig(epochs=1, batch_size=64, warmup_steps=1), checkpoint=ckpt)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan .* step 12.*last\.safetensors"):
        d.fit(digits, progress=False)
    state = load_checkpoint(ckpt.path)
    assert state["position"]["step"] == 8
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert math.isfinite(state["position"]["loss_sum"])


def test_checkpoint_restores_optimizer_scheduler_exactly(digits, tmp_path):
    torch.manual_seed(0)
    model = SeedCNN(1, 8, (8, 16, 32))
    d = Distiller(None, model, [ce()], TrainConfig(epochs=1, batch_size=128, warmup_steps=2),
                  checkpoint=CheckpointConfig(tmp_path))
    d.fit(digits, progress=False)
    state = load_checkpoint(tmp_path / "last.safetensors")
    assert isinstance(next(iter(state["optimizer"]["state"])), int)  # integer keys survive JSON
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert state["scheduler"]["last_epoch"] == state["position"]["step"]
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(state["optimizer"])
    assert torch.equal(opt.state[opt.param_groups[0]["params"][0]]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    with pytest.raises(Exception, match="other settings"):
        Distiller(None, model, [ce()], TrainConfig(epochs=2, batch_size=128, warmup_steps=2),
                  checkpoint=CheckpointConfig(tmp_path)).fit(digits, progress=False)
