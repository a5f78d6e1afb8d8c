"""Commands that read a checkpoint default to the data it was trained on, and a mismatch names --data."""

import torch
from typer.testing import CliRunner

from slimkit.cli.app import checkpoint_dataset
from slimkit.cli.main import app
from slimkit.io import save_model
from slimkit.models import ResNetCifar


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_records_its_data(tmp_path):
    ckpt = tmp_path / "d.safetensors"
    res = run("train", "resnet", "--data", "digits", "--epochs", "1", "--out", ckpt)
    assert res.exit_code == 0, res.output
    assert checkpoint_dataset(ckpt, None) == "digits"


def test_profile_follows_the_recorded_data_and_a_mismatch_names_the_option(tmp_path):
    import numpy as np

    torch.manual_seed(0)
    ckpt = tmp_path / "digits.safetensors"
    save_model(ResNetCifar(depth=8, width=16, num_classes=10, in_channels=1, input_size=28), ckpt,
               extra={"dataset": "digits"})  # 28 would say fashion-mnist: the record wins
    assert checkpoint_dataset(ckpt, None) == "digits"
    res = run("eval", ckpt)
    assert res.exit_code == 0, res.output
    assert "on digits test" in res.output
    np.savez(tmp_path / "three.npz", x=np.random.rand(60, 1, 8, 8).astype("float32"), y=np.arange(60) % 3)
    res = run("eval", ckpt, "--data", tmp_path / "three.npz")  # 10 classes against 3
    assert res.exit_code != 0 and "pass --data" in res.output


def test_a_checkpoint_without_a_record_follows_its_input_shape(tmp_path):
    torch.manual_seed(0)
    small = ResNetCifar(depth=8, width=16, num_classes=10, in_channels=1, input_size=8)
    save_model(small, tmp_path / "small.safetensors")
    assert checkpoint_dataset(tmp_path / "small.safetensors", None) == "digits"
    assert checkpoint_dataset(tmp_path / "small.safetensors", "my.npz") == "my.npz"  # the option wins
    big = ResNetCifar(depth=8, width=16, num_classes=10, in_channels=1, input_size=28)
    save_model(big, tmp_path / "big.safetensors")
    assert checkpoint_dataset(tmp_path / "big.safetensors", None) == "fashion-mnist"
