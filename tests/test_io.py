import json
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io import load_model, read_architecture, save_model
from slimkit.models import SmallViT, SourceModel, TargetModel


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


def test_unknown_class_needs_the_users_builder(tmp_path):
    class Mine(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.fc = nn.Linear(width, 2)

    model = Mine(3)
    with pytest.raises(SlimkitError, match="no config\\(\\) method; pass builder="):
        save_model(model, tmp_path / "mine.safetensors")
    path = save_model(model, tmp_path / "mine.safetensors", builder=(Mine, {"width": 3}))
    with pytest.raises(SlimkitError, match="not one of slimkit's models; pass builder="):
        load_model(path)
    assert torch.equal(load_model(path, builder=Mine).fc.weight, model.fc.weight)


def test_format_1_checkpoints(tmp_path):
    """Dense format-1 checkpoints still load; pruned ones (no recorded attributes) are refused in one line."""
    model = TargetModel(in_channels=1, input_size=8, num_classes=3, widths=(4, 4, 8))
    dense = _with_description(tmp_path, {"format": 1, "class": "TargetModel", "kwargs": model.config(), "extra": {}},
                              model=model)
    assert torch.equal(load_model(dense).fc2.weight, model.fc2.weight)
    pruned = _with_description(tmp_path, {"format": 1, "class": "TargetModel", "kwargs": model.config(),
                                          "extra": {"shapes": {}, "removed_blocks": []}}, model=model, name="p.safetensors")
    with pytest.raises(SlimkitError, match="pruned checkpoint in format 1.*prune and save it again"):
        load_model(pruned)


def test_unwritable_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SlimkitError, match="cannot write .*Not a directory"):
        save_model(TargetModel(), blocker / "sub" / "m.safetensors")


def _with_description(tmp_path, description, model=None, name="m.safetensors"):
    """A real checkpoint whose header description is replaced by `description` (any JSON)."""
    model = model or TargetModel(in_channels=1, input_size=8, num_classes=3, widths=(4, 4, 8))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / name
    save_file(tensors, str(path), metadata={"slimkit": json.dumps(description)})
    return path


def _description(**changes):
    base = {"format": 2, "class": "TargetModel", "builder": None,
            "kwargs": {"in_channels": 1, "input_size": 8, "num_classes": 3, "widths": [4, 4, 8]}, "layout": None,
            "extra": {}}
    return {**base, **changes}


@pytest.mark.parametrize("description, message", [
    ([1, 2], "not a JSON object"),
    ("TargetModel", "not a JSON object"),
    (_description(**{"class": 7}), "model class as int, not text"),
    (_description(format=3), "written by a newer slimkit (checkpoint format 3; this one reads up to 2); upgrade slimkit"),
    (_description(format="1"), "no valid checkpoint format version"),
    (_description(kwargs=[1]), "header 'kwargs' of type list"),
    (_description(kwargs={"in_channels": 1, "input_size": 8, "num_classes": 3, "widths": [4, 4, 8], "depth": 3}),
     "arguments it does not take: ['depth']"),
    (_description(kwargs={"in_channels": "1", "input_size": 8, "num_classes": 3, "widths": [4, 4, 8]}),
     "argument in_channels='1', which is not a int"),
    (_description(kwargs={"in_channels": 1, "input_size": 8, "num_classes": 3, "widths": [4, 4]}),
     "argument widths=[4, 4], which is not a tuple"),
    (_description(kwargs={"in_channels": 1, "input_size": 8, "num_classes": 5, "widths": [4, 4, 8]}),
     "tensor 'fc2.weight' has shape [3, 8] in the file but [5, 8] in the TargetModel"),
    (_description(layout={"shapes": {"fc2.bias": [4]}}), "tensor 'fc2.bias' has shape [3] in the file but [4] in its layout"),
    (_description(layout={"shapes": {"fc2.bias": [3]}, "removed_blocks": ["fc2"]}), "does not match TargetModel: missing []"),
    (_description(layout={"shapes": {}, "removed_blocks": ["nope"]}), "removes block 'nope', which TargetModel does not have"),
    (_description(layout={"shapes": {}, "attributes": {"fc2": {"out_features": [1]}}}), "fc2.out_features to [1], which does not fit its int"),
    (_description(layout={"shapes": {}, "attributes": {"fc2": {"x": {"a": 1}}}}), "not a map of module names"),
    (_description(layout={"shapes": {}, "attributes": {"fc2": {"weight": 3}}}), "fc2.weight, which is not a plain attribute"),
    (_description(layout={"shapes": {}, "attributes": {"fc2": {"training": False}}}), "not a plain attribute"),
    (_description(layout={"shapes": {}, "attributes": {"fc9": {"x": 1}}}), "module 'fc9', which TargetModel does not"),
    (_description(layout=[1]), "layout that is not a JSON object"),
    (_description(builder=3), "names its builder as int"),
])
def test_malformed_headers_are_one_line(tmp_path, description, message):
    path = _with_description(tmp_path, description)
    with pytest.raises(SlimkitError, match=re.escape(message)) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_huge_declared_sizes_are_refused_without_allocating(tmp_path):
    """kwargs that would build petabytes of weights or a billion layers fail in well under a few seconds."""
    huge_width = _description(kwargs={"in_channels": 1, "input_size": 8, "num_classes": 3, "widths": [2**20] * 3})
    with pytest.raises(SlimkitError, match="has shape .* in the file but"):
        load_model(_with_description(tmp_path, huge_width, name="wide.safetensors"))
    vit = SmallViT(num_classes=3, input_size=4, patch=2, dim=4, depth=1, num_heads=2)
    deep = {"format": 2, "class": "SmallViT", "extra": {}, "layout": None,
            "kwargs": {**vit.config(), "depth": 10**9}}
    with pytest.raises(SlimkitError, match="more than .* layers and tensors"):
        load_model(_with_description(tmp_path, deep, model=vit, name="deep.safetensors"))
    pruned_lie = _description(kwargs={"in_channels": 1, "input_size": 8, "num_classes": 3, "widths": [4, 4, 2**26]},
                              layout={"shapes": {k: list(v.shape) for k, v in TargetModel(
                                  in_channels=1, input_size=8, num_classes=3, widths=(4, 4, 8)).state_dict().items()}})
    with pytest.raises(SlimkitError, match="dense TargetModel would need"):
        load_model(_with_description(tmp_path, pruned_lie, name="lie.safetensors"))


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(SlimkitError, match="is a folder; pass the .safetensors file"):
        load_model(tmp_path)
