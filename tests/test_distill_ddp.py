"""torchrun with 2 gloo processes on CPU reaches the same result as 1 process for the same global batch."""

import pytest

from slimkit.data import load_digits
from slimkit.distill import ddp
from slimkit.distill.ddp import DistInfo
from tests._distill_proc import run_worker


def test_shards_of_two_ranks_form_the_single_process_global_batches():
    n, global_batch = 256, 32
    one = ddp.epoch_batches(n, global_batch, DistInfo(), seed=3, epoch=2)
    r0 = ddp.epoch_batches(n, global_batch // 2, DistInfo(0, 2), seed=3, epoch=2)
    r1 = ddp.epoch_batches(n, global_batch // 2, DistInfo(1, 2), seed=3, epoch=2)
    assert len(one) == len(r0) == len(r1)
    for full, a, b in zip(one, r0, r1):
        assert sorted(full.tolist()) == sorted(a.tolist() + b.tolist())
    assert not set(r0[0].tolist()) & set(r1[0].tolist())
    with pytest.raises(Exception, match="divisible"):
        ddp.per_rank_batch(33, DistInfo(0, 2))


def test_torchrun_two_processes_match_one_process(tmp_path):
    n_train = len(load_digits(seed=0).train)
    args = ["--dataset", "digits", "--train-subset", str(n_train - n_train % 64), "--epochs", "2",
            "--batch-size", "64", "--lr", "1e-2", "--threads", "1"]
    one = run_worker(args, tmp_path / "one.json")
    two = run_worker(args, tmp_path / "two.json", nproc=2)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["steps"] == one["steps"]
    # same samples per step and averaged gradients: only float summation order differs
    assert abs(two["val_accuracy"] - one["val_accuracy"]) <= 0.02
    for a, b in zip(one["history"], two["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
