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


def test_encoder_distillation_smoke():
    """MiniLM: prune FFN and heads, distill a few steps; fidelity rises and stays in [0, 1]."""
    import copy

    from slimkit.llm.encoder import default_sentences, distill_encoder, fidelity, prune_encoder
    from slimkit.llm.load import load_encoder

    teacher, tok = load_encoder("minilm")
    student = copy.deepcopy(teacher)
    train, held = default_sentences(64, 32)
    kept = prune_encoder(student, tok, train[:32], 0.5, 0.25)
    assert kept["intermediate_size"] == 768 and all(len(h) == 9 for h in kept["heads_kept"])
    before = fidelity(student, teacher, tok, held)
    distill_encoder(student, teacher, tok, train, epochs=2, batch_size=16, lr=2e-4, progress=False)
    after = fidelity(student, teacher, tok, held)
    assert 0 < before.mean_cosine < after.mean_cosine <= 1
