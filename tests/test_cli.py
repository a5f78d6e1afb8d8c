"""The command line: help, bad input as one clear line with a non-zero exit, and a real run."""

import json
import os
import subprocess
import sys

import pytest

from slimkit.io import save_model
from slimkit.models import TargetModel


def slimkit(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "slimkit.cli.main", *args], capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_commands_and_demo_knobs():
    top = slimkit("--help")
    assert top.returncode == 0 and "demo" in top.stdout and "run" in top.stdout
    demo = slimkit("demo", "--help", env_extra={"COLUMNS": "160"})  # at 80, rich shortens the longest names
    for knob in ("--epochs", "--ratio", "--theta", "--temperature", "--alpha", "--seed", "--out",
                 "--no-headline", "--headline-target", "--headline-floor", "--headline-search-steps",
                 "--headline-recover-steps", "--headline-batch-size"):
        assert knob in demo.stdout
    assert "train" in top.stdout and "prune" in top.stdout  # sibling modules' commands
    assert slimkit("train", "--help").returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--ratio", "1.5"], "sparsity must be in [0, 1)"),
        (["demo", "--teacher", "vgg"], "unknown model 'vgg'"),
        (["demo", "--headline-target", "speed=2x"], "invalid setting headline_target: cannot read target"),
        (["demo", "--headline-floor", "+1pt"], "invalid setting headline_floor: cannot read floor"),
        (["demo", "--data-dir", "/nonexistent/fmnist"], "apt-get install dataset-fashion-mnist"),
        (["demo", "--data", "digits", "--out", "/proc/forbidden/run"], "not writable"),
        (["run", "/nonexistent/recipe.yaml"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    result = slimkit(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 5)
    result = slimkit("eval", str(bad))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_model_data_shape_mismatch_is_named(tmp_path):
    ckpt = save_model(TargetModel(in_channels=3, input_size=32), tmp_path / "cifar.safetensors")
    result = slimkit("eval", str(ckpt), "--data", "digits")
    assert result.returncode == 2 and "expects input of shape (N, 3, 32, 32)" in result.stderr


def test_profile_a_checkpoint_on_digits(tmp_path):
    ckpt = save_model(TargetModel(in_channels=1, input_size=8), tmp_path / "d.safetensors")
    result = slimkit("eval", str(ckpt), "--data", "digits")
    assert result.returncode == 0, result.stderr
    assert "MMACs" in result.stdout and "d.safetensors" in result.stdout


def test_recipe_run_end_to_end(tmp_path):
    recipe = tmp_path / "r.yaml"
    out = tmp_path / "out"
    recipe.write_text(
        f"dataset: digits\nteacher_epochs: 1\nstudent_epochs: 1\nfinetune_epochs: 0\nbatch_size: 64\n"
        f"latency_runs: 5\ntheta: 0.01\nheadline: false\nout: {out}\n"
    )
    result = slimkit("run", str(recipe), env_extra={"SLIMKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["theta"] == 0.01 and len(report["rows"]) == 4
