"""Every compress run folder holds the recipe.yaml that reproduces it, and `slimkit run` replays it."""

import json

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from slimkit.cli.main import app
from slimkit.cli.recipe import arguments, replay
from slimkit.errors import SlimkitError
from tests.test_compress import FACTORY

ARGS = ["compress", "compress_factory_mod:build", "--out", "run", "--target", "macs=2x", "--floor", "0",
        "--search-steps", "2", "--recover-steps", "2", "--batch-size", "64", "--train-n", "128", "--max-blocks", "0",
        "--keep-slower"]


def test_a_compress_run_replays_from_its_recipe(tmp_path, monkeypatch):
    (tmp_path / "compress_factory_mod.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ARGS)
    assert res.exit_code == 0, res.output
    recipe = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert recipe["command"] == "compress" and recipe["model"] == "compress_factory_mod:build"
    assert recipe["target"] == "macs=2x" and recipe["search_steps"] == 2 and recipe["out"] == "run"
    assert "overwrite" not in recipe  # a replay asks for it itself
    first = load_file(tmp_path / "run" / "model.safetensors")
    first_report = json.loads((tmp_path / "run" / "report.json").read_text())
    (tmp_path / "replay.yaml").write_text((tmp_path / "run" / "recipe.yaml").read_text())
    res = CliRunner().invoke(app, ["run", "replay.yaml"])  # the folder exists: refused without --overwrite
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = CliRunner().invoke(app, ["run", "replay.yaml", "--overwrite"])
    assert res.exit_code == 0, res.output
    again = load_file(tmp_path / "run" / "model.safetensors")
    assert first.keys() == again.keys() and all((first[k] == again[k]).all() for k in first)  # seeded: the same
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["candidates"][report["chosen"]]["kept"] == first_report["candidates"][first_report["chosen"]]["kept"]


def test_recipe_keys_are_checked_before_anything_runs(tmp_path):
    from slimkit.cli.compress import compress

    with pytest.raises(SlimkitError, match="unknown key 'serach_steps'"):
        arguments(compress, {"model": "m", "out": "o", "serach_steps": 3}, "recipe r")
    with pytest.raises(SlimkitError, match="'out' is missing"):
        arguments(compress, {"model": "m"}, "recipe r")
    (tmp_path / "r.yaml").write_text("command: compress\nmodel: null\nout: o\n")
    with pytest.raises(SlimkitError, match="names no model"):
        replay(tmp_path / "r.yaml", overwrite=False)
    (tmp_path / "d.yaml").write_text("dataset: digits\n")
    assert replay(tmp_path / "d.yaml", overwrite=False) is False  # a demo recipe: slimkit run runs the demo
    (tmp_path / "x.yaml").write_text("command: train\n")
    with pytest.raises(SlimkitError, match="replays compress, prune, distill recipes"):
        replay(tmp_path / "x.yaml", overwrite=False)
