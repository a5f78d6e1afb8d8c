"""Batch-1 timing in fresh inference processes that load the saved checkpoints, with OpenMP spin-waiting.

Why not time in the benchmark's own process: the same MobileNetV2 checkpoint (BN folded,
channels_last, 2 threads, fastest of 60-100 alternating rounds) timed 1.16-1.20 ms in most short
runs here and 1.60-1.69 ms in both full benchmark runs, which timed in-process after their training.
A new process that loads every model from its safetensors checkpoint starts from a known state and
runs the models as a deployment would.

Why OMP_WAIT_POLICY=ACTIVE: between two ops an idle OpenMP worker may sleep, and waking it costs
time on every op. With PASSIVE (always sleep) MobileNetV2 timed 2.7 ms and ResNet-20 2.6 ms instead
of 1.2 and 1.05; the default policy spins for a while before sleeping, so whether a model pays
depends on the gaps between its ops. ACTIVE (always spin) is the setting of a latency-bound CPU
deployment and removes that dependence; it applies to the dense and pruned models alike, and it must
be set before the OpenMP runtime starts, which a new process allows.

    python bench/fresh_timing.py DIR   # child side: times DIR/m*.safetensors, writes DIR/times.json
"""

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io import load_model
from slimkit.measure import measure_latency_interleaved
from slimkit.prune.batchnorm import fold_batchnorm
from slimkit.prune.reshape import save_pruned

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def time_in_fresh_process(models: list[nn.Module], example: torch.Tensor, layouts: list[str], rounds: int,
                          threads: int, fold: bool = True, passes: int = 3, batch: int = 1) -> list[dict[str, float]]:
    """Per model, {layout: ms}: the fastest over `passes` new processes, each timing every model in every
    layout in one alternating pass, at `batch` (the first rows of `example`).

    Several processes, one after another: this machine has slow spells that can cover a whole pass.
    Two back-to-back processes timing the same 14 ResNet-20 variants measured the dense model at 1.70
    and 4.29 ms (NCHW), its depth-only cut at 0.72 and 1.68 ms: the ratio moved too (2.34 and 2.56).
    Spells only add time, so the fastest over passes is the quiet machine's. Each pass prints the
    first model's times, so a spell shows in the log.
    Models must be rebuildable from their checkpoint (slimkit's model classes, pruned or not).
    """
    with tempfile.TemporaryDirectory(prefix="slimkit-timing-") as d:
        for i, m in enumerate(models):
            save_pruned(m, Path(d) / f"m{i:03d}.safetensors")
        save_file({"x": example[:batch].contiguous()}, str(Path(d) / "example.safetensors"))
        spec = {"n": len(models), "layouts": layouts, "rounds": rounds, "threads": threads, "fold": fold}
        (Path(d) / "spec.json").write_text(json.dumps(spec))
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE", "PYTHONPATH": path}
        best: list[dict[str, float]] = []
        for k in range(passes):
            done = subprocess.run([sys.executable, __file__, d], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SlimkitError(f"timing process failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            times = json.loads((Path(d) / "times.json").read_text())
            print(f"[timing] pass {k + 1}/{passes}, {len(models)} models: first model "
                  + ", ".join(f"{lay} {ms:.3f} ms" for lay, ms in times[0].items()), flush=True)
            best = times if not best else [{lay: min(b[lay], t[lay]) for lay in t} for b, t in zip(best, times)]
        return best


def _child(d: Path) -> None:
    spec = json.loads((d / "spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    example = load_file(str(d / "example.safetensors"))["x"]
    loaded = [load_model(d / f"m{i:03d}.safetensors").eval() for i in range(spec["n"])]
    ready = [fold_batchnorm(m, example) if spec["fold"] else m for m in loaded]
    # Module.to(memory_format=...) converts in place, so each layout gets its own copy
    timed = [copy.deepcopy(m).to(memory_format=LAYOUTS[layout]).eval() for layout in spec["layouts"] for m in ready]
    res = measure_latency_interleaved(timed, example, runs=spec["rounds"], warmup=5, threads=spec["threads"],
                                      stat="min")
    n = spec["n"]
    out = [{lay: res[j * n + i].ms for j, lay in enumerate(spec["layouts"])} for i in range(n)]
    (d / "times.json").write_text(json.dumps(out))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
