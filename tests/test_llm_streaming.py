"""Streaming one-shot pruning: SmolLM2 cut to two blocks, saved to a folder, pruned block by block."""

import json

import pytest
import torch
from typer.testing import CliRunner

from slimkit.errors import SlimkitError
from slimkit.llm import streaming
from slimkit.llm.calibration import capture_block_inputs
from slimkit.llm.oneshot import prune_oneshot
from slimkit.llm.streaming import Checkpoint, _load_non_block, build_skeleton, prune_oneshot_folder
from tests.llm_helpers import small_lm, windows


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A 2-block SmolLM2 saved as a HF folder (one model.safetensors, tied lm_head, tokenizer)."""
    model, tok = small_lm(2)
    path = tmp_path_factory.mktemp("lm2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cal():
    _, tok = small_lm(1)
    return windows(tok, 2, 64)


def _assert_same_weights(expected: torch.nn.Module, folder) -> None:
    from transformers import AutoModelForCausalLM

    got = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    a, b = expected.state_dict(), got.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5, msg=name)
    assert got.lm_head.weight is got.model.embed_tokens.weight  # still tied after loading


@pytest.mark.slow
def test_skeleton_captures_what_the_full_model_gives(lm_folder, cal):
    from transformers import AutoConfig

    model, _ = small_lm(2)
    hidden, kwargs = capture_block_inputs(model, cal, 1, torch.device("cpu"))
    skeleton, layers, prefix = build_skeleton(AutoConfig.from_pretrained(str(lm_folder)))
    assert prefix == "model.layers" and all(p.is_meta for p in layers.parameters())
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1]
    ckpt = Checkpoint(lm_folder)
    _load_non_block(skeleton, ckpt.read([n for n in ckpt.names if not n.startswith("model.layers.")]), prefix)
    assert skeleton.lm_head.weight is skeleton.model.embed_tokens.weight
    s_hidden, s_kwargs = capture_block_inputs(skeleton, cal, 1, torch.device("cpu"))
    torch.testing.assert_close(s_hidden, hidden, rtol=0, atol=0)
    assert [kw.keys() for kw in s_kwargs] == [kw.keys() for kw in kwargs]
    for got, want in zip(s_kwargs, kwargs):
        for key, value in want.items():
            if isinstance(value, (torch.Tensor, tuple)):  # position ids, rotary (cos, sin), mask
                torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
            else:
                assert got[key] == value, key


@pytest.mark.slow
@pytest.mark.parametrize("method,sparsity,nm", [("magnitude", 0.5, None), ("wanda", 0.5, None),
                                                 ("sparsegpt", 0.5, None), ("wanda", 0.5, "2:4")])
def test_streamed_equals_in_memory(lm_folder, cal, tmp_path, method, sparsity, nm):
    out = tmp_path / "pruned"
    rep = prune_oneshot_folder(lm_folder, out, cal, method, sparsity, nm, progress=False)
    model, _ = small_lm(2)
    ref = prune_oneshot(model, cal, method, sparsity, nm, progress=False)
    _assert_same_weights(model, out)
    assert rep.kept_total == pytest.approx(ref.kept_total, abs=1e-9) and rep.masks == {} and rep.model is None
    assert rep.kept_per_layer == pytest.approx(ref.kept_per_layer, abs=1e-9)
    assert rep.details["block_order"] == [0, 1] and rep.details["calibration"] == ref.details["calibration"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)}
    assert "lm_head.weight" not in index["weight_map"]
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text()) == json.loads((lm_folder / "config.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
def test_sharded_input_and_one_block_at_a_time(lm_folder, tmp_path, monkeypatch):
    """A sharded checkpoint streams too; no two blocks ever hold real weights at once."""
    model, tok = small_lm(2)
    src = tmp_path / "sharded"
    model.save_pretrained(src, max_shard_size="20MB")
    assert (src / "model.safetensors.index.json").is_file()
    real_blocks = []
    load = streaming._load_block

    def counting(layers, i, *args):
        real_blocks.append(sum(not next(layer.parameters()).is_meta for layer in layers))
        return load(layers, i, *args)

    monkeypatch.setattr(streaming, "_load_block", counting)
    prune_oneshot_folder(src, tmp_path / "out", windows(tok, 2, 64), "wanda", 0.5, progress=False)
    assert real_blocks == [0, 0]  # block 0 was sent back to meta before block 1 was read
    prune_oneshot(model, windows(tok, 2, 64), "wanda", 0.5, progress=False)
    _assert_same_weights(model, tmp_path / "out")


@pytest.mark.slow
def test_failure_leaves_nothing(lm_folder, cal, tmp_path, monkeypatch):
    """The second shard fails to write: neither --out nor the staging folder is left behind."""
    save = streaming._save_shard
    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return save(*args)

    monkeypatch.setattr(streaming, "_save_shard", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        prune_oneshot_folder(lm_folder, tmp_path / "out", cal, "magnitude", 0.5, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bad_input(lm_folder, cal, tmp_path):
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((lm_folder / "config.json").read_text())
    cases = [(tmp_path / "missing", "magnitude", 0.5, "does not exist"),
             (tmp_path / "noweights", "magnitude", 0.5, "no safetensors"),
             (lm_folder, "obs", 0.5, "unknown method"),
             (lm_folder, "magnitude", 1.0, r"\[0, 1\)"),
             (lm_folder, "magnitude", -0.1, r"\[0, 1\)")]
    for src, method, sparsity, needle in cases:
        with pytest.raises(SlimkitError, match=needle) as info:
            prune_oneshot_folder(src, tmp_path / "out", cal, method, sparsity, progress=False)
        assert "\n" not in str(info.value)
    with pytest.raises(SlimkitError, match="calibration"):
        prune_oneshot_folder(lm_folder, tmp_path / "out", None, "wanda", 0.5, progress=False)
    with pytest.raises(SlimkitError, match="holds the input"):
        prune_oneshot_folder(lm_folder, lm_folder, cal, "magnitude", 0.5, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_stream_prunes_and_evaluates_from_disk(lm_folder, tmp_path):
    from slimkit.cli.main import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["prune", str(lm_folder), "--stream", "--method", "wanda",
                                      "--samples", "2", "--seq-len", "64", "--eval-tokens", "256",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "streamed block by block" in result.output and "perplexity" in result.output
    assert (out / "model.safetensors.index.json").is_file() and (out / "recipe.yaml").is_file()
