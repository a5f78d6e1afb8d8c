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
