"""parallel="fsdp": 2 gloo processes on CPU match 1 process, survive kill -9 of one rank, and export.

One tiny Llama KD run per setting (tests/_fsdp_worker.py): 1 process with DDP's code path, and
2 processes under torchrun with FSDP2 and sharded DCP checkpoints every 5 steps.
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from slimkit.distill import TrainConfig, fsdp
from slimkit.errors import SlimkitError
from tests._distill_proc import ROOT, _env

WORKER = ROOT / "tests" / "_fsdp_worker.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _run(cmd: list[str], timeout: float = 120) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}): {proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 1-process run and the uninterrupted 2-process FSDP run (checkpointing every 5 steps)."""
    work = tmp_path_factory.mktemp("fsdp")
    _run([sys.executable, str(WORKER), "--out", str(work / "one.json")])
    _run(TORCHRUN + [str(WORKER), "--parallel", "fsdp", "--ckpt-dir", str(work / "ckpt"), "--out", str(work / "two.json")])
    return work, json.loads((work / "one.json").read_text()), json.loads((work / "two.json").read_text())


def test_fsdp_losses_match_one_process(runs):
    _, one, two = runs
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 20
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert two["metrics"] and two["metrics"] == pytest.approx(one["metrics"], rel=1e-5)  # validation, sharded
    a = _load(runs[0] / "one.safetensors")
    b = _load(runs[0] / "two.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_fsdp_with_an_adapter_term_matches_one_process(tmp_path):
    """A hint term adds a width adapter, built by a probe pass before the student is sharded."""
    _run([sys.executable, str(WORKER), "--hint", "--out", str(tmp_path / "one.json")])
    _run(TORCHRUN + [str(WORKER), "--hint", "--parallel", "fsdp", "--out", str(tmp_path / "two.json")])
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_kill9_of_rank1_then_restart_gives_the_same_weights(runs, tmp_path):
    work, _, unbroken = runs
    ckpt = tmp_path / "ckpt"
    args = [str(WORKER), "--parallel", "fsdp", "--ckpt-dir", str(ckpt), "--every", "5"]
    proc = subprocess.Popen(TORCHRUN + args + ["--step-sleep", "0.3", "--out", str(tmp_path / "never.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(), cwd=ROOT)
    killed_at = None
    for line in proc.stdout:  # "RANK r STEP n PID p"
        found = [(int(r), int(s), int(p)) for r, s, p in re.findall(r"RANK (\d+) STEP (\d+) PID (\d+)", line)]
        hit = next(((s, p) for r, s, p in found if r == 1 and s >= 7), None)
        if hit is not None:
            os.kill(hit[1], signal.SIGKILL)  # rank 1 only; torchrun then stops rank 0
            killed_at = hit[0]
            break
    proc.communicate(timeout=60)
    assert killed_at is not None and proc.returncode != 0
    saved = fsdp.latest(ckpt)
    assert saved is not None and saved.name == "step-00000005"  # the kill fell between checkpoints
    assert killed_at - 5 <= 5  # at most one interval lost
    _run(TORCHRUN + args + ["--out", str(tmp_path / "resumed.json")])
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["resumed_from_step"] == 5 and resumed["steps"] == 20
    assert resumed["digest"] == unbroken["digest"]  # bit-identical to the run that was never killed
    assert resumed["losses"] == unbroken["losses"][5:]


def test_export_of_the_sharded_checkpoint_reloads_with_the_same_logits(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from slimkit.cli.main import app
    from tests._fsdp_worker import tiny_llama
    from typer.testing import CliRunner

    work, _, _ = runs
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tiny_llama(2, 0).save_pretrained(tmp_path / "student")  # the architecture the run started from
    vocab = {f"t{i}": i for i in range(96)}  # a word-level tokenizer: the folder needs one, its words do not matter
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                            unk_token="t0").save_pretrained(tmp_path / "student")
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(work / "ckpt"), "--hf-folder", str(tmp_path / "hf"),
                              "--base", str(tmp_path / "student")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(work / "ckpt"), "--safetensors", str(tmp_path / "w.safetensors")])
    assert res.exit_code == 0, res.output
    trained = _load(work / "two.safetensors")
    single = _load(tmp_path / "w.safetensors")
    assert single.keys() == trained.keys() - {"lm_head.weight"}  # tied to the embedding: stored once
    assert all(torch.equal(single[k], trained[k]) for k in single)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    reference = tiny_llama(2, 0).eval()
    reference.load_state_dict(trained)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_fsdp_is_refused_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SlimkitError, match="WORLD_SIZE is unset.*torchrun"):
        fsdp.require_group()
    with pytest.raises(SlimkitError, match="'ddp' or 'fsdp'"):
        TrainConfig(parallel="zero3")


def test_blocks_are_the_largest_run_of_identical_layers():
    from tests._fsdp_worker import tiny_llama

    path, blocks = fsdp.find_blocks(tiny_llama(3, 0))
    assert path == "model.layers" and len(blocks) == 3
    assert fsdp.find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())) is None


def test_distiller_refuses_fsdp_without_torchrun_before_any_work(monkeypatch):
    from slimkit.distill import Distiller, ce

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    student = torch.nn.Linear(4, 3)
    before = student.weight.detach().clone()
    with pytest.raises(SlimkitError, match="WORLD_SIZE is unset"):
        Distiller(None, student, [ce()], TrainConfig(parallel="fsdp"))
    assert torch.equal(student.weight, before)


def test_a_checkpoint_folder_of_the_other_strategy_is_refused(tmp_path):
    (tmp_path / "step-00000005").mkdir()
    (tmp_path / "step-00000005" / fsdp.STATE_FILE).write_bytes(b"x")
    with pytest.raises(SlimkitError, match="sharded 'fsdp' checkpoint.*slimkit export"):
        fsdp.check_kind(tmp_path, sharded=False)
    (tmp_path / "last.safetensors").write_bytes(b"x")
    with pytest.raises(SlimkitError, match="holds a 'ddp' checkpoint"):
        fsdp.check_kind(tmp_path, sharded=True)


def test_only_step_folders_fsdp_writes_count_as_its_own(tmp_path):
    ours = tmp_path / "step-00000005"
    (ours / fsdp.SHARDS).mkdir(parents=True)
    (ours / fsdp.STATE_FILE).write_bytes(b"")
    theirs = tmp_path / "step-00000006"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert fsdp.own_step_folder(ours) and fsdp.own_step_folder(tmp_path / ".tmp-step-00000007") is False
    assert not fsdp.own_step_folder(theirs)  # a file slimkit did not write: never deleted
    assert not fsdp.own_step_folder(tmp_path / "step-final")
