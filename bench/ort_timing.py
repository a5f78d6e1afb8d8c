"""ONNX Runtime timing in fresh processes, the counterpart of slimkit.measure.fresh for eager PyTorch.

A child process loads every .onnx file into a session with the same options
(`slimkit.export.session_options`: ORT_ENABLE_ALL, 2 intra-op threads, 1 inter-op thread) and,
per setting (e.g. batch 1, batch 32, seq 128), times all of them in one alternating pass with
`slimkit.export.time_onnx` (warm bursts of 5 calls, the first not recorded, fastest of `rounds`).
No PyTorch model runs in that process: measured here, an eager model and an ONNX Runtime session
alternating in one process slowed the eager median call 5x (both thread pools spin while
waiting for work). The fastest over `passes` processes is kept, as for eager timing.

    python bench/ort_timing.py DIR   # child side: times DIR/m*.onnx, writes DIR/times.json
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slimkit.errors import SlimkitError

REPO = Path(__file__).resolve().parents[1]


def _flatten(settings: dict[str, torch.Tensor | dict]) -> dict[str, torch.Tensor]:
    flat = {}
    for name, x in settings.items():
        for key, t in (x.items() if isinstance(x, dict) else [("", x)]):
            flat[f"{name}::{key}"] = t.contiguous().clone()  # one storage each: safetensors refuses shared ones
    return flat


def _unflatten(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | dict]:
    out: dict = {}
    for k, t in flat.items():
        name, key = k.split("::")
        if key:
            out.setdefault(name, {})[key] = t
        else:
            out[name] = t
    return out


def time_onnx_in_fresh_process(files: list[Path], settings: dict[str, torch.Tensor | dict],
                               rounds: dict[str, int], threads: int = 2, passes: int = 3,
                               profile: str | None = None) -> tuple[list[dict[str, float]], list[dict]]:
    """Per file, {setting: ms}: fastest over `passes` new processes, each timing all files alternating.

    With `profile` (a setting name), the last process then runs every file under ONNX Runtime's
    profiler at that setting (`_profile`); the second list holds those profiles (empty without it).
    """
    with tempfile.TemporaryDirectory(prefix="slimkit-ort-timing-") as d:
        for i, f in enumerate(files):
            shutil.copyfile(f, Path(d) / f"m{i:03d}.onnx")
        save_file(_flatten(settings), str(Path(d) / "inputs.safetensors"))
        order = list(settings)
        spec = {"n": len(files), "threads": threads, "order": order, "rounds": rounds}
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        best: list[dict[str, float]] = []
        for k in range(passes):
            spec["profile"] = profile if k == passes - 1 else None
            (Path(d) / "spec.json").write_text(json.dumps(spec))
            done = subprocess.run([sys.executable, __file__, d], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SlimkitError(f"ORT timing process failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            times = json.loads((Path(d) / "times.json").read_text())
            print(f"[ort timing] pass {k + 1}/{passes}, {len(files)} models: first model "
                  + ", ".join(f"{s} {ms:.3f} ms" for s, ms in times[0].items()), flush=True)
            best = times if not best else [{s: min(b[s], t[s]) for s in t} for b, t in zip(best, times)]
        profiles = json.loads((Path(d) / "profiles.json").read_text()) if profile else []
        return best, profiles


def _profile(d: Path, i: int, feeds: dict, threads: int, runs: int = 50, warm: int = 5) -> dict:
    """The fastest of `runs` profiled runs (after `warm`; slimkit.export.profile_onnx): its wall time, summed node
    kernel time, kernel time per op type, and the nodes it ran.

    Wall minus kernel time is what a run spends outside the operators (scheduling, memory, thread
    hand-offs): a cut that removes arithmetic but keeps every node keeps that part.
    """
    from slimkit.export import profile_onnx

    p = profile_onnx(d / f"m{i:03d}.onnx", feeds, threads, runs=runs, warmup=warm)
    return {"wall_us": p.wall_us, "kernel_us": p.kernel_us, "nodes": len(p.nodes), "by_op": p.by_op(), "runs": p.runs}


def _child(d: Path) -> None:
    from slimkit.export import OrtModel, time_onnx

    spec = json.loads((d / "spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    settings = _unflatten(load_file(str(d / "inputs.safetensors")))
    sessions = [OrtModel(d / f"m{i:03d}.onnx", threads=spec["threads"]) for i in range(spec["n"])]
    out: list[dict[str, float]] = [{} for _ in sessions]
    for name in spec["order"]:
        res = time_onnx(sessions, settings[name], runs=spec["rounds"][name], warmup=5, threads=spec["threads"],
                        stat="min")
        for o, r in zip(out, res):
            o[name] = r.ms
    (d / "times.json").write_text(json.dumps(out))
    if spec.get("profile"):
        x = settings[spec["profile"]]
        feeds = [s.feeds(**x) if isinstance(x, dict) else s.feeds(x) for s in sessions]
        profiles = [_profile(d, i, f, spec["threads"]) for i, f in enumerate(feeds)]
        (d / "profiles.json").write_text(json.dumps(profiles))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
