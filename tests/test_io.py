import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io import load_model, read_architecture, save_model
from slimkit.models import SourceModel, TargetModel


def test_round_trip_keeps_architecture_and_outputs(tmp_path):
    model = TargetModel(in_channels=3, input_size=32, num_classes=7)
    path = save_model(model, tmp_path / "m.safetensors", extra={"note": "x"})
    arch = read_architecture(path)
    assert arch["class"] == "TargetModel" and arch["kwargs"]["num_classes"] == 7 and arch["extra"] == {"note": "x"}
    loaded = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded.eval()(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_is_plain_safetensors_not_pickle(tmp_path):
    path = save_model(SourceModel(), tmp_path / "m.safetensors")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert "__metadata__" in header and "fc1.weight" in header


def test_unreadable_and_foreign_checkpoints_fail_clearly(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SlimkitError, match="cannot read"):
        load_model(junk)
    with pytest.raises(SlimkitError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(SlimkitError, match="architecture header"):
        load_model(plain)


def test_unknown_class_needs_the_users_class(tmp_path):
    class Mine(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.fc = nn.Linear(width, 2)

    model = Mine(3)
    path = save_model(model, tmp_path / "mine.safetensors", arch={"class": "Mine", "kwargs": {"width": 3}})
    with pytest.raises(SlimkitError, match="classes="):
        load_model(path)
    assert torch.equal(load_model(path, classes={"Mine": Mine}).fc.weight, model.fc.weight)


def test_unwritable_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SlimkitError, match="cannot write .*Not a directory"):
        save_model(TargetModel(), blocker / "sub" / "m.safetensors")
