"""The verbs on every family: bad input is one line and exit 2 with nothing written; tiny runs save
results that reload, and their recipe.yaml (or checkpoint header) replays them."""

import json

import pytest
from typer.testing import CliRunner

from slimkit.cli.main import app
from tests.llm_helpers import MINILM, require

runner = CliRunner()


def one_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["prune", "smollm2", "--method", "obs", "--out", "x"], "unknown --method"),
    (["prune", "smollm2", "--method", "sparsegpt", "--nm", "2-4", "--out", "x"], "N:M"),
    (["prune", "smollm2", "--method", "sparsegpt", "--ratio", "1.5", "--out", "x"], "[0, 1)"),
    (["prune", "smollm2", "--method", "wanda", "--blocks", "2", "--out", "x"], "--blocks does not apply"),
    (["prune", "smollm2", "--out", "x"], "nothing to cut"),
    (["prune", "smollm2", "--importance", "l1", "--blocks", "1", "--out", "x"], "--importance does not apply"),
    (["prune", "/no/such/folder", "--method", "magnitude", "--out", "x"], "is neither a file, a folder"),
    (["prune", "minilm", "--ratio", "0.5", "--out", "x"], "--ratio does not apply to a hf-encoder model"),
    (["prune", "whisper-tiny.en", "--heads", "0.5", "--out", "x"], "--heads does not apply to a whisper model"),
    (["distill", "smollm2", "--teacher", "minilm", "--out", "x"], "is a hf-encoder model and smollm2 a causal-lm"),
    (["distill", "smollm2", "--alpha", "0.5", "--out", "x"], "--alpha does not apply"),
    (["eval", "smollm2", "--trim-encoder"], "--trim-encoder does not apply"),
    (["eval", "smollm2", "--data", "emma", "--data", "prideprejudice"], "is given 2 times"),
    (["eval", "minilm"], "pass --reference"),
])
def test_bad_input_is_one_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert needle in one_error(runner.invoke(app, args))
    assert not (tmp_path / "x").exists()


def _checkpoints(tmp_path):
    """A digits classifier saved as the teacher and a magnitude-pruned copy as the student."""
    import copy

    import torch

    from slimkit.io import save_model
    from slimkit.models import TargetModel
    from slimkit.prune import magnitude_prune

    torch.manual_seed(0)
    dense = TargetModel(in_channels=1, input_size=8, num_classes=10)
    save_model(dense, tmp_path / "dense.safetensors", extra={"dataset": "digits"})
    student = copy.deepcopy(dense)
    magnitude_prune(student, sparsity=0.5)
    save_model(student, tmp_path / "student.safetensors", extra={"dataset": "digits"})
    return tmp_path / "dense.safetensors", tmp_path / "student.safetensors"


def test_checkpoint_distill_trains_holds_zeros_and_replays(tmp_path):
    from safetensors.torch import load_file

    from slimkit.io import load_model

    dense, student = _checkpoints(tmp_path)
    out = tmp_path / "kd.safetensors"
    args = ["distill", str(student), "--teacher", str(dense), "--epochs", "1", "--batch-size", "64",
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "student kd" in result.output and "teacher" in result.output
    before, after = load_model(student), load_model(out)
    for (name, p0), p1 in zip(before.named_parameters(), after.parameters()):
        if name.endswith("weight") and p0.dim() > 1 and (p0 == 0).float().mean() >= 0.1:
            assert bool((p1[p0 == 0] == 0).all()), name  # the pruned weights stayed zero
    assert any(not (p0 == p1).all() for p0, p1 in zip(before.parameters(), after.parameters()))  # it trained
    first = load_file(out)
    again = runner.invoke(app, ["run", str(out), "--overwrite"])  # the checkpoint's header holds the recipe
    assert again.exit_code == 0, again.output
    second = load_file(out)
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)  # seeded: the same
    assert "needs its teacher" in one_error(runner.invoke(app, ["distill", str(student), "--out", str(tmp_path / "y")]))
    assert "--minutes does not apply" in one_error(runner.invoke(app, args[:-1] + [str(tmp_path / "z"), "--minutes",
                                                                                    "1"]))
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_checkpoint_eval_and_prune_with_the_shared_names(tmp_path):
    dense, _ = _checkpoints(tmp_path)
    result = runner.invoke(app, ["eval", str(dense)])  # the data it records: digits
    assert result.exit_code == 0, result.output
    assert "on digits test" in " ".join(result.output.split())
    out = tmp_path / "cut.safetensors"
    result = runner.invoke(app, ["prune", str(dense), "--method", "magnitude", "--ratio", "0.25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "--ffn does not apply" in one_error(runner.invoke(app, ["prune", str(dense), "--ffn", "0.5", "--out",
                                                                    str(tmp_path / "w.safetensors")]))


@pytest.mark.slow
def test_causal_lm_structured_prune_removes_ffn_and_kv_groups_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.llm_helpers import small_lm

    model, tok = small_lm(1)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "w"
    args = ["prune", str(src), "--ffn", "0.5", "--heads", "0.34", "--samples", "2", "--seq-len", "64",
            "--eval-tokens", "128", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "KV groups 2" in result.output and "perplexity" in result.output
    back = AutoModelForCausalLM.from_pretrained(out)
    assert back.config.intermediate_size == 768 and back.config.num_key_value_heads == 2
    assert back.model.layers[0].self_attn.q_proj.out_features == 6 * 64  # 9 heads -> 6: 3 per KV group
    assert (out / "recipe.yaml").is_file()
    report = json.loads((out / "report.json").read_text())
    assert [row[0] for row in report["table"]["rows"]] == ["dense", "-0 layers, -0.5 FFN, -1 KV groups"]
    assert report["table"]["rows"][1][1] > 0 and "provenance" in report
    page = (out / "report.html").read_text()
    assert "-0.5 FFN" in page and "<script" in page and "https://" not in page.split("</script>")[-1]
    bad = runner.invoke(app, args[:5] + ["0.99"] + args[6:-1] + [str(tmp_path / "bad")])
    assert "KV groups" in one_error(bad) and not (tmp_path / "bad").exists()
    few = runner.invoke(app, args[:5] + ["0.1"] + args[6:-1] + [str(tmp_path / "bad")])
    assert "removes none" in one_error(few)


@pytest.mark.slow
def test_encoder_prune_then_distill_then_eval(tmp_path):
    """Real MiniLM, tiny budget: FFN halved, 9 of 12 heads, one layer dropped; then distilled; each reloads."""
    import torch

    from slimkit.llm.encoder import embed
    from slimkit.llm.load import load_encoder

    require(*MINILM)
    cut, out = tmp_path / "cut", tmp_path / "enc"
    result = runner.invoke(app, ["prune", "minilm", "--blocks", "1", "--ffn", "0.5", "--heads", "0.25",
                                 "--samples", "32", "--out", str(cut)])
    assert result.exit_code == 0, result.output
    assert "layers 5, FFN 768, heads per layer [9]" in result.output and "pruned + refit: mean cosine" in result.output
    result = runner.invoke(app, ["distill", str(cut), "--minutes", "0.05", "--samples", "48", "--val-samples", "16",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "distilled" in result.output
    model, tok = load_encoder(out)
    assert len(model.encoder.layer) == 5 and model.encoder.layer[0].attention.self.query.out_features == 9 * 32
    vec = embed(model, tok, ["A short sentence to embed."])
    assert vec.shape == (1, 384) and torch.isfinite(vec).all()
    rows = json.loads((out / "report.json").read_text())["table"]["rows"]
    assert [r[0] for r in rows][0] == "before" and rows[1][1] >= rows[0][1] - 0.05  # cosine after distillation
    result = runner.invoke(app, ["eval", str(out), "--reference", "minilm", "--samples", "16"])
    assert result.exit_code == 0 and "against minilm: mean cosine" in result.output, result.output
    bad = runner.invoke(app, ["prune", "minilm", "--heads", "1.0", "--out", str(tmp_path / "bad")])
    assert "--heads" in one_error(bad) and not (tmp_path / "bad").exists()


def test_causal_lm_distill_runs_on_the_engine_and_resumes_from_its_checkpoint(tmp_path):
    """KD recovery from the CLI: a checkpoint folder makes a second run resume instead of starting over."""
    from tests.llm_helpers import small_lm

    for name, layers in (("teacher", 2), ("student", 1)):
        model, tok = small_lm(layers)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    args = ["distill", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
            "--samples", "2", "--seq-len", "32", "--batch-size", "1", "--top-k", "8", "--eval-tokens", "128",
            "--checkpoint-dir", str(tmp_path / "state")]
    first = runner.invoke(app, args + ["--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "2 steps in" in first.output and "student after KD" in first.output
    second = runner.invoke(app, args + ["--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert "teacher cache reused, resumed from step 2" in second.output
    bad = runner.invoke(app, args[:-1] + [str(tmp_path / "state"), "--amp", "fp8", "--out", str(tmp_path / "c")])
    assert "--amp" in one_error(bad) and not (tmp_path / "c").exists()
