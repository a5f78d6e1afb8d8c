"""`slimkit llm` commands: bad input gives one line and exit 2; a tiny depth run saves a model."""

import pytest
from typer.testing import CliRunner

from slimkit.cli.llm import app
from tests.llm_helpers import MINILM, require

runner = CliRunner()


@pytest.mark.parametrize("args,needle", [
    (["prune", "--method", "obs", "--out", "x"], "unknown method"),
    (["prune", "--nm", "2-4", "--out", "x"], "N:M"),
    (["prune", "--sparsity", "1.5", "--out", "x"], "[0, 1)"),
    (["prune", "--model", "/no/such/folder", "--method", "magnitude", "--out", "x"], "neither a built-in"),
])
def test_bad_input_is_one_line(args, needle, tmp_path):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error:")


@pytest.mark.slow
def test_width_command_removes_ffn_and_kv_groups_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.llm_helpers import small_lm

    model, tok = small_lm(1)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "w"
    args = ["width", "--model", str(src), "--ffn-ratio", "0.5", "--kv-groups", "1", "--calib-samples", "2",
            "--seq-len", "64", "--eval-tokens", "128", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "KV groups 2" in result.output and "perplexity" in result.output
    back = AutoModelForCausalLM.from_pretrained(out)
    assert back.config.intermediate_size == 768 and back.config.num_key_value_heads == 2
    assert back.model.layers[0].self_attn.q_proj.out_features == 6 * 64  # 9 heads -> 6: 3 per KV group
    bad = runner.invoke(app, args[:6] + ["3"] + args[7:-1] + [str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "KV groups" in bad.output and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_encoder_command_prunes_distills_saves_and_reloads(tmp_path):
    """Real MiniLM, tiny budget: FFN halved, 9 of 12 heads, one layer dropped; fidelity printed; reloads."""
    import torch

    from slimkit.llm.encoder import embed
    from slimkit.llm.load import load_encoder

    require(*MINILM)
    out = tmp_path / "enc"
    result = runner.invoke(app, ["encoder", "--drop-layers", "1", "--minutes", "0.05", "--train", "48",
                                 "--calib", "32", "--held-out", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "layers 5, FFN 768, heads per layer [9]" in result.output
    assert "pruned + refit: mean cosine" in result.output and "distilled" in result.output
    model, tok = load_encoder(out)
    assert len(model.encoder.layer) == 5 and model.encoder.layer[0].attention.self.query.out_features == 9 * 32
    vec = embed(model, tok, ["A short sentence to embed."])
    assert vec.shape == (1, 384) and torch.isfinite(vec).all()
    bad = runner.invoke(app, ["encoder", "--head-ratio", "1.0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "head_ratio" in bad.output and not (tmp_path / "bad").exists()


def test_distill_command_runs_on_the_engine_and_resumes_from_its_checkpoint(tmp_path):
    """KD recovery from the CLI: a checkpoint folder makes a second run resume instead of starting over."""
    from tests.llm_helpers import small_lm

    for name, layers in (("teacher", 2), ("student", 1)):
        model, tok = small_lm(layers)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    args = ["distill", "--student", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
            "--samples", "2", "--seq-len", "32", "--batch-size", "1", "--top-k", "8", "--eval-tokens", "128",
            "--checkpoint-dir", str(tmp_path / "state")]
    first = runner.invoke(app, args + ["--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "2 steps in" in first.output and "student after KD" in first.output
    second = runner.invoke(app, args + ["--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert "teacher cache reused, resumed from step 2" in second.output
    bad = runner.invoke(app, args[:-1] + [str(tmp_path / "state"), "--amp", "fp8", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "--amp" in bad.output and not (tmp_path / "c").exists()
