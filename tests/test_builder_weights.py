"""Builders that load pretrained weights (load_state_dict, from_pretrained): slimkit builds them on
the meta device to read shapes, which must neither flood the terminal with torch's per-tensor
"copying from a non-meta parameter ... to a meta parameter" warning nor fail, and a checkpoint
saved with such a builder must reload with its own weights, not the pretrained ones."""

import warnings

import pytest
import torch
from torch import nn

from slimkit.io.header import build_dense
from slimkit.io import load_model, save_model

META_COPY = "to a meta parameter"


class Net(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, hidden), nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).relu())


@pytest.fixture
def pretrained(tmp_path):
    """A builder that loads weights from a file, as users write it, and those weights."""
    path = tmp_path / "pretrained.pt"
    torch.manual_seed(1)
    torch.save(Net().state_dict(), path)

    def build() -> Net:
        m = Net()
        m.load_state_dict(torch.load(path, weights_only=True))
        return m

    return build, torch.load(path, weights_only=True)


def _meta_copies(caught) -> list[str]:
    return [str(w.message) for w in caught if META_COPY in str(w.message)]


def test_meta_build_of_a_loading_builder_prints_no_copy_warning(pretrained, recwarn):
    build, _ = pretrained
    filters = list(warnings.filters)
    dense = build_dense(build, {})
    assert not _meta_copies(recwarn.list)
    assert warnings.filters == filters  # the silencing ends with the build
    assert all(p.is_meta for p in dense.parameters())  # still a meta build: shapes only, nothing copied
    assert {k: v.shape for k, v in dense.state_dict().items()} == {k: v.shape for k, v in Net().state_dict().items()}
    with pytest.warns(UserWarning, match=META_COPY):  # torch's warning itself is untouched outside the build
        with torch.device("meta"):
            Net().load_state_dict(pretrained[1])


def test_other_builder_warnings_still_show():
    def build() -> Net:
        warnings.warn("the user's own warning", UserWarning)
        return Net()

    with pytest.warns(UserWarning, match="the user's own warning"):
        build_dense(build, {})


def test_saved_with_a_loading_builder_reloads_its_own_weights(pretrained, tmp_path):
    build, weights = pretrained
    model = build()
    with torch.no_grad():
        model.a.weight.add_(1.0)  # fine-tuned after loading: the file must hold these, not the pretrained ones
        a, b = nn.Linear(4, 6), nn.Linear(6, 2)  # and pruned to 6 hidden units: the layout is replayed on load
        a.weight.copy_(model.a.weight[:6]), a.bias.copy_(model.a.bias[:6])
        b.weight.copy_(model.b.weight[:, :6]), b.bias.copy_(model.b.bias)
        model.a, model.b = a, b
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = save_model(model, tmp_path / "m.safetensors", builder=build)
        loaded = load_model(path, builder=build)
    assert not _meta_copies(caught)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor) and not loaded.state_dict()[name].is_meta
    assert loaded.a.out_features == 6 and torch.equal(loaded.a.weight, weights["a.weight"][:6] + 1.0)
    assert torch.equal(loaded.b.weight, weights["b.weight"][:, :6])


def test_a_from_pretrained_builder_saves_and_reloads(tmp_path):
    """transformers refuses from_pretrained under a meta device context (RuntimeError): such a
    builder is built for real instead, as one whose constructor reads tensor values."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(folder)

    def build():
        return transformers.BertModel.from_pretrained(folder)

    model = build()
    with torch.no_grad():
        model.pooler.dense.weight.mul_(2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not any(p.is_meta for p in build_dense(build, {}).parameters())
        loaded = load_model(save_model(model, tmp_path / "bert.safetensors", builder=build), builder=build)
    assert not _meta_copies(caught)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
