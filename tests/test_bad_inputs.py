"""Every case of bench/bad_inputs.py, run in-process: one `error:` line with its advice, exit 2, no
traceback, and nothing written or deleted in the working folder.

The bench runs the same list through real subprocesses and prints the table; here each case is a
test, so a regression names its row.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimkit.cli.main import app
from slimkit.errors import SlimkitError

_spec = importlib.util.spec_from_file_location("bad_inputs", Path(__file__).resolve().parents[1] / "bench" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = bad_inputs
_spec.loader.exec_module(bad_inputs)


def _needs_transformers(case):
    if case.needs_transformers:
        pytest.importorskip("transformers", reason="the tiny HF model needs transformers (pip install -e '.[llm]')")


@pytest.mark.parametrize("case", [c for c in bad_inputs.CASES if c.call is None], ids=lambda c: c.name)
def test_cli_bad_input(case, tmp_path, monkeypatch, request):
    _needs_transformers(case)
    if case.known_issue:
        request.applymarker(pytest.mark.xfail(reason=case.known_issue, strict=False))
    bad_inputs.prepare(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = bad_inputs.snapshot(tmp_path)
    result = CliRunner().invoke(app, list(case.argv))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert bad_inputs.is_one_error_line(result.stderr, case.after_work), result.stderr
    assert "Traceback" not in result.output
    assert case.advice in result.stderr.strip().splitlines()[-1]
    assert bad_inputs.snapshot(tmp_path) == before


@pytest.mark.parametrize("case", [c for c in bad_inputs.CASES if c.call is not None], ids=lambda c: c.name)
def test_api_bad_input(case, tmp_path, monkeypatch):
    _needs_transformers(case)
    bad_inputs.prepare(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = bad_inputs.snapshot(tmp_path)
    with pytest.raises(SlimkitError) as info:
        case.call(tmp_path)
    assert "\n" not in str(info.value) and case.advice in str(info.value)
    assert bad_inputs.snapshot(tmp_path) == before


def test_the_docs_page_lists_exactly_these_cases():
    page = (Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    table = page[page.index("| bad input |"):].strip()
    assert table == bad_inputs.markdown_table(), "regenerate: python bench/bad_inputs.py --markdown"
