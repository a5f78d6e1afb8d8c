"""Pruned Hugging Face models round trip through save_hf: plain from_pretrained where the config can
carry the new widths, load_hf where they differ per layer. Small configs built here; no downloads."""

import json

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import AutoModel, BertConfig, BertModel, ViTConfig, ViTModel

from slimkit.errors import SlimkitError
from slimkit.io.hf_folder import LAYOUT_KEY, load_hf, save_hf, write_hf

IDS = torch.randint(0, 50, (2, 12))


def _bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=32)
    return BertModel(cfg).eval()


def _vit() -> ViTModel:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=48)
    return ViTModel(cfg).eval()


def _slice(linear: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep rows (dim 0: outputs) or columns (dim 1: inputs) of a Linear, fixing its width attribute."""
    linear.weight = nn.Parameter(linear.weight.detach().index_select(dim, keep).clone())
    if dim == 0:
        linear.bias = nn.Parameter(linear.bias.detach()[keep].clone())
        linear.out_features = len(keep)
    else:
        linear.in_features = len(keep)


def cut_ffn(layer: nn.Module, width: int) -> None:
    keep = torch.arange(width)
    if hasattr(layer, "mlp"):  # ViT
        _slice(layer.mlp.fc1, keep, 0)
        _slice(layer.mlp.fc2, keep, 1)
    else:  # BERT
        _slice(layer.intermediate.dense, keep, 0)
        _slice(layer.output.dense, keep, 1)


def cut_heads(layer: nn.Module, heads: list[int]) -> None:
    """Remove whole heads as a pruner would: q/k/v rows, output projection columns, head counts."""
    if hasattr(layer.attention, "q_proj"):  # ViT
        att, size = layer.attention, layer.attention.head_dim
        projections, out = (att.q_proj, att.k_proj, att.v_proj), att.o_proj
    else:  # BERT
        att, size = layer.attention.self, layer.attention.self.attention_head_size
        projections, out = (att.query, att.key, att.value), layer.attention.output.dense
    keep = torch.cat([torch.arange(h * size, (h + 1) * size) for h in range(att.num_attention_heads) if h not in heads])
    for proj in projections:
        _slice(proj, keep, 0)
    _slice(out, keep, 1)
    att.num_attention_heads -= len(heads)
    if hasattr(att, "all_head_size"):
        att.all_head_size = len(keep)


def _same(a, b) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=0, atol=1e-5)


def test_uniform_ffn_cut_reloads_with_plain_from_pretrained(tmp_path):
    model = _bert()
    for layer in model.encoder.layer:
        cut_ffn(layer, 24)
    folder = save_hf(model, tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    assert config["intermediate_size"] == 24 and LAYOUT_KEY not in config
    assert model.config.intermediate_size == 64  # the user's model is not changed
    with torch.no_grad():
        _same(AutoModel.from_pretrained(folder).eval()(IDS), model(IDS))
        _same(load_hf(folder)(IDS), model(IDS))


def test_per_layer_widths_and_heads_need_load_hf(tmp_path):
    model = _bert()
    cut_ffn(model.encoder.layer[0], 16)
    cut_ffn(model.encoder.layer[1], 40)
    cut_heads(model.encoder.layer[1], [0, 2])
    folder = save_hf(model, tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    layout = config[LAYOUT_KEY]
    assert layout["attributes"]["encoder.layer.1.attention.self"] == {"num_attention_heads": 2, "all_head_size": 16}
    assert "load_hf" in config["slimkit_note"]
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModel.from_pretrained(folder)
    loaded = load_hf(folder)
    assert loaded.encoder.layer[1].attention.self.num_attention_heads == 2
    with torch.no_grad():
        _same(loaded(IDS), model(IDS))


def test_vit_uniform_heads_and_ffn_reload_with_plain_from_pretrained(tmp_path):
    """ViT reads config.head_dim, so a uniform head cut fits its config: 3 heads of the dense size 8."""
    model = _vit()
    for layer in model.layers:
        cut_heads(layer, [1])
        cut_ffn(layer, 32)
    pixels = torch.randn(2, 3, 16, 16)
    folder = save_hf(model, tmp_path / "vit")
    config = json.loads((folder / "config.json").read_text())
    assert (config["intermediate_size"], config["num_attention_heads"], config["head_dim"]) == (32, 3, 8)
    assert LAYOUT_KEY not in config
    with torch.no_grad():
        _same(AutoModel.from_pretrained(folder).eval()(pixels), model(pixels))
        _same(load_hf(folder)(pixels), model(pixels))


def test_vit_per_layer_heads_round_trip(tmp_path):
    model = _vit()
    cut_heads(model.layers[0], [1, 3])
    cut_ffn(model.layers[1], 40)
    pixels = torch.randn(2, 3, 16, 16)
    folder = save_hf(model, tmp_path / "vit")
    layout = json.loads((folder / "config.json").read_text())[LAYOUT_KEY]
    assert layout["attributes"]["layers.0.attention"] == {"num_attention_heads": 2}
    assert layout["attributes"]["layers.1.mlp.fc1"] == {"out_features": 40} and "layers.1.attention" not in layout["attributes"]
    with torch.no_grad():
        _same(load_hf(folder)(pixels), model(pixels))


def test_folders_of_others_are_not_replaced(tmp_path):
    model = _bert()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(SlimkitError, match="not made by slimkit"):
        save_hf(model, mine)
    assert (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1
    assert write_hf(model, tmp_path / "new") is False and (tmp_path / "new" / "config.json").is_file()
    (mine / "config.json").write_text("{}")
    with pytest.raises(SlimkitError, match=r"already holds \['config.json'\]; write_hf fills new folders only"):
        write_hf(model, mine)
    folder = save_hf(model, tmp_path / "bert")
    with pytest.raises(SlimkitError, match="--overwrite"):
        save_hf(model, folder)
    save_hf(model, folder, overwrite=True)
    with torch.no_grad():
        _same(AutoModel.from_pretrained(folder).eval()(IDS), model(IDS))


def test_bad_inputs_are_one_line(tmp_path):
    with pytest.raises(SlimkitError, match="save_model\\(model, path, builder=...\\)"):
        save_hf(nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(SlimkitError, match="no config.json"):
        load_hf(tmp_path)
    model = _bert()
    cut_ffn(model.encoder.layer[0], 16)
    folder = save_hf(model, tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    config[LAYOUT_KEY]["shapes"]["encoder.layer.0.intermediate.dense.bias"] = [2**40]
    config["hidden_size"] = 2**20
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlimkitError, match=r"has shape \[16\] in the file but \[1099511627776\] in its layout") as info:
        load_hf(folder)
    assert "\n" not in str(info.value)


def test_fresh_process_timer_times_hf_models():
    from slimkit.measure.fresh import time_in_fresh_processes

    dense, cut = _bert(), _bert()
    for i, layer in enumerate(cut.encoder.layer):
        cut_heads(layer, [0])
        cut_ffn(layer, 16 + 8 * i)
    times = time_in_fresh_processes([dense, cut], IDS[:1], rounds=2, passes=1, log=False, builder="hf",
                                    burst=2, warmup=1)  # the large-batch settings of bench/compress.py
    assert len(times) == 2 and all(t["nchw"] > 0 for t in times)
    with pytest.raises(SlimkitError, match="burst >= 2"):
        time_in_fresh_processes([dense], IDS[:1], builder="hf", burst=1)


def test_fresh_process_timer_takes_the_dict_and_tuple_inputs_encoders_are_called_with():
    """A tokenizer's batch (a dict) reaches the child as the same keyword arguments, a tuple as the same
    positional ones; BERT refuses a wrong key or a shape mismatch, so a mangled input fails the timing."""
    from slimkit.measure.fresh import not_slower, sendable, time_in_fresh_processes

    dense, cut = _bert(), _bert()
    cut_ffn(cut.encoder.layer[0], 16)
    batch = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "token_type_ids": torch.zeros_like(IDS)}
    for example in (batch, (IDS, torch.ones_like(IDS))):
        times = time_in_fresh_processes([dense, cut], example, rounds=2, passes=1, log=False, builder="hf", warmup=1)
        assert len(times) == 2 and all(t["nchw"] > 0 for t in times)
    _, info = not_slower(dense, cut, batch, rounds=2, passes=1)
    assert "fresh processes" in info["method"]
    assert not sendable({"input_ids": IDS, "attention_mask": IDS[:1]}) and not sendable({"x": None})
    with pytest.raises(SlimkitError, match="one tensor or a dict, tuple or list of tensors"):
        time_in_fresh_processes([dense], {"input_ids": IDS, "attention_mask": IDS[:1]}, builder="hf")


FOREIGN = {
    "resnet": (lambda: transformers.ResNetModel(transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck")), (1, 3, 32, 32)),
    "convnext": (lambda: transformers.ConvNextModel(transformers.ConvNextConfig(
        hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)), (1, 3, 32, 32)),
    "vit": (_vit, (1, 3, 16, 16)),
    "bert": (_bert, None),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_torch_pruning_cut_round_trips(name, tmp_path):
    """Torch-Pruning's own 50% cut of real transformers classes (layer scale, class token, attention
    included) reloads through save_model with the builder and through save_hf."""
    import torch_pruning as tp

    build, shape = FOREIGN[name]
    torch.manual_seed(0)
    model = build().eval()
    x = IDS[:1] if shape is None else torch.randn(shape)
    ignored = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                         ignored_layers=ignored).step()
    from slimkit.io import load_model, save_model

    path = save_model(model, tmp_path / "cut.safetensors", builder=build)
    with torch.no_grad():
        _same(load_model(path, builder=build).eval()(x), model(x))
        _same(load_hf(save_hf(model, tmp_path / "hf"))(x), model(x))


def test_weight_normed_wav2vec2_round_trips(tmp_path):
    """wav2vec2's positional convolution is weight-normed (a parametrized module): saved and rebuilt
    like any other, here with a per-layer FFN cut."""
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                                         conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=4)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2Model(config).eval()
    ff = model.encoder.layers[0].feed_forward
    keep = torch.arange(24)
    _slice(ff.intermediate_dense, keep, 0)
    _slice(ff.output_dense, keep, 1)
    audio = torch.randn(1, 1600)
    with torch.no_grad():
        _same(load_hf(save_hf(model, tmp_path / "w2v"))(audio), model(audio))
