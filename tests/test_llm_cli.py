"""`slimkit llm` commands: bad input gives one line and exit 2; a tiny depth run saves a model."""

import pytest
from typer.testing import CliRunner

from slimkit.cli.llm import app

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
