"""The deciding timer: batch-1 latency in fresh processes that load saved checkpoints, with OpenMP spinning.

Whether a cut pays is decided here (the CLI's "not slower" check, shape search timings in the
benchmarks); the in-process interleaved timer (slimkit.measure.cost) stays for quick tables.

Why not time in the calling process: a process that has trained, evaluated or allocated a lot runs
the same checkpoint measurably slower than a new one, and by an amount that varies from run to run
(bench/structured.py's history records one MobileNetV2 checkpoint at both ends of a wide range). A
new process that loads every model from its safetensors checkpoint starts from a known state and
runs the models as a deployment would.

Why OMP_WAIT_POLICY=ACTIVE: between two ops an idle OpenMP worker may sleep, and waking it costs
time on every op; the default policy spins for a while before sleeping, so whether a model pays
depends on the gaps between its ops. ACTIVE (always spin) is the setting of a latency-bound CPU
deployment and removes that dependence. It applies to the dense and pruned models alike, and it must
be set before the OpenMP runtime starts, which only a new process allows. The child sets it itself:
started without it, it restarts itself with it before loading anything (the parent passes it in the
environment too, which saves that restart), and it records what it ran with. The calling process
should not run with ACTIVE itself: its idle OpenMP workers would spin through the children's timing.

Why several processes: a machine can have slow spells that cover a whole pass. Spells only add time,
so per model the fastest over `passes` processes is the quiet machine's.

Any model can be timed, given how to build its dense form (`builder`, see slimkit.io): the
models are saved as checkpoints against that builder and the child rebuilds them from the same
builder. The builder reaches the child on its command line, as "package.module:callable" and JSON
kwargs (or "hf" for Hugging Face models, saved as folders as slimkit.io.hf_folder.save_hf writes them); the
child never takes a code reference from a file.

    python -m slimkit.measure.fresh DIR [--builder package.module:callable --kwargs JSON | --builder hf]
    # child side: times DIR/m* (checkpoints or folders), writes DIR/times.json
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.measure.cost import measure_latency_interleaved

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
METHOD = ("fastest of {passes} fresh processes (each loads the saved checkpoints, OMP_WAIT_POLICY=ACTIVE, "
          "{threads} threads, BN folded: {fold}), alternating {rounds} rounds x 4 warm calls per model, batch {batch}")


def rebuildable(model: nn.Module) -> bool:
    """True when a child process can rebuild `model` without a builder (slimkit's models: it has config())."""
    return callable(getattr(model, "config", None))


HF = "hf"  # the builder spec for Hugging Face models, saved and reloaded as folders
Example = torch.Tensor | dict[str, torch.Tensor] | tuple[torch.Tensor, ...] | list[torch.Tensor]


def sendable(example: Any) -> bool:
    """Whether a child process can be handed `example`: one tensor, or a dict, tuple or list of tensors
    (a Hugging Face encoder's input_ids and attention_mask) sharing the batch dimension."""
    if isinstance(example, torch.Tensor):
        return example.dim() > 0
    if isinstance(example, dict):
        if not all(isinstance(k, str) for k in example):
            return False
        parts = list(example.values())
    elif isinstance(example, (tuple, list)):
        parts = list(example)
    else:
        return False
    return bool(parts) and all(isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == parts[0].shape[0]
                               for t in parts)


def rows_of(example: Example) -> int:
    """The batch size of an input that `sendable` accepts."""
    first = example if isinstance(example, torch.Tensor) else \
        next(iter(example.values())) if isinstance(example, dict) else example[0]
    return first.shape[0]


def _pack(example: Example, batch: int) -> tuple[dict[str, torch.Tensor], str]:
    """The first `batch` rows of an input as named tensors for one safetensors file, and its kind."""
    if isinstance(example, torch.Tensor):
        return {"x": example[:batch].contiguous()}, "tensor"
    if isinstance(example, dict):
        return {f"dict.{k}": v[:batch].contiguous() for k, v in example.items()}, "dict"
    return {f"seq.{i:03d}": v[:batch].contiguous() for i, v in enumerate(example)}, "tuple"


def _unpack(tensors: dict[str, torch.Tensor], kind: str) -> Example:
    if kind == "tensor":
        return tensors["x"]
    if kind == "dict":
        return {k.split(".", 1)[1]: v for k, v in tensors.items()}
    return tuple(tensors[k] for k in sorted(tensors))


def time_in_fresh_processes(models: list[nn.Module], example: Example, layouts: list[str] | None = None,
                            rounds: int = 60, threads: int = 2, fold: bool = True, passes: int = 3,
                            log: bool = True, batch: int = 1, builder: str | None = None,
                            kwargs: dict[str, Any] | None = None, burst: int = 5,
                            warmup: int = 5) -> list[dict[str, float]]:
    """Per model, {layout: ms}: the fastest over `passes` new processes, each timing every model in
    every layout in one alternating pass at `batch` (the first rows of `example`: one tensor, or a
    dict, tuple or list of tensors, see `sendable`). Each pass logs the first model's times, so a
    slow spell shows.

    `builder` says how the child rebuilds the models: None for slimkit's own models (`rebuildable`),
    "package.module:callable" with JSON `kwargs` for any model that callable builds densely, or "hf"
    for Hugging Face models. `burst` calls per model and round (the first not recorded) and
    `warmup` calls per model before the first round: fewer of both suit large batches, where one
    call takes seconds.
    """
    from slimkit.io import import_builder, save_model

    layouts = layouts or ["nchw"]
    unknown = [lay for lay in layouts if lay not in LAYOUTS]
    if not sendable(example):
        raise SlimkitError(f"fresh-process timing takes one tensor or a dict, tuple or list of tensors with one batch "
                           f"dimension as the example, got {type(example).__name__}; time it in process with "
                           f"slimkit.measure.measure_latency_interleaved")
    if (unknown or rounds < 1 or passes < 1 or threads < 1 or burst < 2 or warmup < 0
            or not 1 <= batch <= rows_of(example)):
        raise SlimkitError(f"fresh-process timing needs layouts from {sorted(LAYOUTS)}, rounds, passes and threads "
                           f">= 1, burst >= 2, warmup >= 0 and 1 <= batch <= len(example); got layouts={layouts}, "
                           f"rounds={rounds}, passes={passes}, threads={threads}, burst={burst}, warmup={warmup}, "
                           f"batch={batch}")
    if kwargs is not None and (builder is None or builder == HF):
        raise SlimkitError("kwargs go with builder='package.module:callable'; slimkit's own models and Hugging Face "
                           "models take none")
    try:
        kwargs_json = json.dumps(kwargs or {}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SlimkitError(f"builder kwargs must be plain JSON values: {exc}") from None
    args: list[str] = []
    if builder == HF:
        from slimkit.io.hf_folder import write_hf

        args = ["--builder", HF]
    elif builder is not None:
        fn = import_builder(builder)
        args = ["--builder", builder, "--kwargs", kwargs_json]
    with tempfile.TemporaryDirectory(prefix="slimkit-timing-") as d:
        for i, m in enumerate(models):
            if builder == HF:
                write_hf(m, Path(d) / f"m{i:03d}")
            else:
                save_model(m, Path(d) / f"m{i:03d}.safetensors", builder=None if builder is None else (fn, kwargs or {}))
        tensors, kind = _pack(example, batch)
        save_file(tensors, str(Path(d) / "example.safetensors"))
        spec = {"n": len(models), "layouts": layouts, "rounds": rounds, "threads": threads, "fold": fold,
                "burst": burst, "warmup": warmup, "example": kind}
        (Path(d) / "spec.json").write_text(json.dumps(spec))
        root = str(Path(__file__).resolve().parents[2])  # this slimkit, also when run from a checkout
        # the child imports what this process can: a user's builder module may sit on a path added at run time
        extra = [p for p in sys.path if p and Path(p).is_dir()] if builder not in (None, HF) else []
        path = os.pathsep.join(dict.fromkeys(filter(None, [root, *extra, os.environ.get("PYTHONPATH")])))
        env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE", "PYTHONPATH": path}
        best: list[dict[str, float]] = []
        for k in range(passes):
            done = subprocess.run([sys.executable, "-m", "slimkit.measure.fresh", d, *args], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SlimkitError(f"timing process failed (exit {done.returncode}): "
                                   f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
            result = json.loads((Path(d) / "times.json").read_text())
            if result["omp_wait_policy"] != "ACTIVE":
                raise SlimkitError("the timing process did not run with OMP_WAIT_POLICY=ACTIVE")
            times = result["times"]
            if log:
                print(f"[timing] pass {k + 1}/{passes}, {len(models)} models: first model "
                      + ", ".join(f"{lay} {ms:.3f} ms" for lay, ms in times[0].items()), flush=True)
            best = times if not best else [{lay: min(b[lay], t[lay]) for lay in t} for b, t in zip(best, times)]
        return best


def describe(rounds: int = 60, threads: int = 2, fold: bool = True, passes: int = 3, batch: int = 1) -> str:
    """The timing method in words, for reports."""
    return METHOD.format(passes=passes, threads=threads, fold=fold, rounds=rounds, batch=batch)


def _load(d: Path, i: int, builder: str | None, kwargs: dict[str, Any]) -> nn.Module:
    from slimkit.io import import_builder, load_model

    if builder == HF:
        from slimkit.io.hf_folder import load_hf

        return load_hf(d / f"m{i:03d}")
    fn = None if builder is None else (import_builder(builder), kwargs)
    return load_model(d / f"m{i:03d}.safetensors", builder=fn)


def _child(d: Path, builder: str | None, kwargs: dict[str, Any]) -> None:
    from slimkit.measure.fold import fold_batchnorm

    spec = json.loads((d / "spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    example = _unpack(load_file(str(d / "example.safetensors")), spec.get("example", "tensor"))
    loaded = [_load(d, i, builder, kwargs).eval() for i in range(spec["n"])]
    ready = [fold_batchnorm(m, example) if spec["fold"] else m for m in loaded]
    # Module.to(memory_format=...) converts in place, so each layout gets its own copy
    timed = [copy.deepcopy(m).to(memory_format=LAYOUTS[layout]).eval() for layout in spec["layouts"] for m in ready]
    res = measure_latency_interleaved(timed, example, runs=spec["rounds"], warmup=spec["warmup"],
                                      threads=spec["threads"], stat="min", burst=spec["burst"])
    n = spec["n"]
    times = [{lay: res[j * n + i].ms for j, lay in enumerate(spec["layouts"])} for i in range(n)]
    result = {"times": times, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads()}
    (d / "times.json").write_text(json.dumps(result))


def _main(argv: list[str]) -> None:
    if os.environ.get("OMP_WAIT_POLICY") != "ACTIVE":
        # OpenMP read its settings when torch was imported above: restart with the policy set
        os.execve(sys.executable, [sys.executable, "-m", "slimkit.measure.fresh", *argv],
                  {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"})
    parser = argparse.ArgumentParser(prog="python -m slimkit.measure.fresh")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--builder", default=None, help="package.module:callable, or 'hf'")
    parser.add_argument("--kwargs", default="{}", help="the builder's kwargs as a JSON object")
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        raise SystemExit("--kwargs must be a JSON object")
    _child(args.folder, args.builder, kwargs)


if __name__ == "__main__":
    _main(sys.argv[1:])


def not_slower(dense: nn.Module, pruned: nn.Module, example: torch.Tensor, threads: int = 2,
               rounds: int = 60, passes: int = 3, builder: str | None = None,
               kwargs: dict | None = None) -> tuple[nn.Module, dict]:
    """Return the pruned model if it measures faster than the dense one, else the dense one.

    Decided by the deciding timer (slimkit.measure.fresh: fresh processes, OMP_WAIT_POLICY=ACTIVE,
    BN folded in both) when a child process can rebuild both models: slimkit's own models, Hugging
    Face models ("hf", the default for them), or any model given `builder`, the
    "package.module:callable" that builds its dense form (with JSON `kwargs`). Otherwise by
    alternating runs in this process, fastest of each (interference only adds time). The dict
    records both times, the method, and a note when the cut did not pay.
    """
    from slimkit.io.hf_folder import is_hf

    if builder is None and is_hf(dense) and is_hf(pruned):
        builder = HF
    if sendable(example) and (builder is not None or (rebuildable(dense) and rebuildable(pruned))):
        d_ms, p_ms = (t["nchw"] for t in time_in_fresh_processes([dense, pruned], example, ["nchw"], rounds, threads,
                                                                 passes=passes, log=False, builder=builder,
                                                                 kwargs=kwargs))
        method = describe(rounds, threads, True, passes, 1)
        if builder is not None:
            method += f", rebuilt with builder {builder}"
    else:
        d, p = measure_latency_interleaved([dense, pruned], example, rounds, warmup=3, threads=threads, stat="min")
        d_ms, p_ms = d.ms, p.ms
        why = ("the models have no config() and no builder was given" if sendable(example) else
               "the example is not tensors with one batch dimension")
        method = (f"fastest of {rounds} alternating rounds in this process, {threads} threads ({why}, so they "
                  f"cannot be timed in fresh processes)")
    info = {"dense_ms": d_ms, "pruned_ms": p_ms, "kept_pruned": p_ms < d_ms, "method": method}
    if p_ms >= d_ms:
        info["note"] = f"pruned model measured {p_ms:.3f} ms vs dense {d_ms:.3f} ms: the cut does not pay, kept dense"
        return dense, info
    return pruned, info
