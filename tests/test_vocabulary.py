"""One vocabulary: `slimkit --help` lists the verbs, and every verb names a thing the same way."""

import re

import pytest
from typer.testing import CliRunner

from slimkit.cli.main import app

VERBS = ["compress", "prune", "distill", "eval", "export", "report", "train", "demo", "run"]
# Names the verbs replaced: one concept, one option name (--ratio, --blocks, --data, --samples...).
RETIRED = ["--dataset", "--sparsity", "--ffn-ratio", "--head-ratio", "--encoder-ffn", "--remove", "--drop-layers",
           "--decoder-layers", "--kv-groups", "--calib-text", "--calib-samples", "--train-text", "--eval-text",
           "--utterances", "--train-utterances", "--val-utterances", "--max-minutes", "--model"]


def help_of(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def test_help_lists_exactly_the_verbs_in_order():
    text = help_of()
    listed = re.findall(r"│ (\w+)\s{2,}", text.split("Commands")[1])
    assert listed == VERBS


@pytest.mark.parametrize("verb", VERBS)
def test_no_verb_uses_a_retired_option_name(verb):
    options = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_of(verb)))
    assert not options & set(RETIRED), options & set(RETIRED)


@pytest.mark.parametrize("verb, shared", [
    ("compress", ["--data", "--task", "--target", "--floor", "--out", "--overwrite", "--seed"]),
    ("prune", ["--data", "--ratio", "--blocks", "--heads", "--ffn", "--out", "--overwrite", "--seed"]),
    ("distill", ["--teacher", "--data", "--samples", "--out", "--overwrite", "--seed"]),
    ("eval", ["--data", "--samples", "--seed"]),
    ("export", ["--data", "--samples", "--seed", "--overwrite"]),
    ("train", ["--data", "--out", "--overwrite", "--seed"]),
    ("demo", ["--data", "--ratio", "--out", "--overwrite", "--seed"]),
])
def test_each_verb_uses_the_shared_names(verb, shared):
    options = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_of(verb)))
    assert set(shared) <= options, set(shared) - options


@pytest.mark.parametrize("verb", ["compress", "prune", "distill", "eval", "export", "train"])
def test_model_is_the_first_argument(verb):
    usage = next(line for line in help_of(verb).splitlines() if "Usage:" in line)
    assert usage.rstrip().endswith(("{model}", "MODEL")), usage


def test_the_check_can_fail():
    """The retired-name check finds an old name in a help text that has one."""
    assert set(re.findall(r"(--[a-z][a-z0-9-]*)", "│ --dataset  <str> │")) & set(RETIRED) == {"--dataset"}
