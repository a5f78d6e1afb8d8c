"""Per-node kernel times from ONNX Runtime's own profiler.

Whole-model latency says whether a model got faster; it cannot say which operator costs what.
ONNX Runtime's profiler records every node's kernel time in every run. `profile_onnx` keeps the
fastest whole run after a warm-up (other jobs on the machine only add time, as for latency) and
the node times inside it, in the order they ran. The profiler adds a little time per node, so
these times rank and compare nodes; latency claims come from `time_onnx`, never from here.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimkit.errors import SlimkitError
from slimkit.export.runtime import require_deploy, session_options


@dataclass(frozen=True)
class NodeTime:
    name: str         # the node's name in the graph ONNX Runtime ran (after its own optimisations)
    op: str           # its operator, e.g. Conv, QLinearConv
    us: float         # kernel time in the fastest run
    output_shape: tuple[int, ...]


@dataclass
class KernelProfile:
    wall_us: float                # the fastest profiled run, whole
    runs: int                     # profiled runs it is the fastest of
    nodes: list[NodeTime] = field(default_factory=list)

    @property
    def kernel_us(self) -> float:
        return sum(n.us for n in self.nodes)

    def by_op(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0.0) + n.us
        return out


def _shape(args: dict) -> tuple[int, ...]:
    shapes = args.get("output_type_shape") or [{}]
    dims = next(iter(shapes[0].values()), []) if isinstance(shapes[0], dict) else []
    return tuple(int(d) for d in dims)


def profile_onnx(model: str | os.PathLike | bytes, feeds: dict[str, np.ndarray], threads: int = 2, runs: int = 50,
                 warmup: int = 5, level: str = "all") -> KernelProfile:
    """The fastest of `runs` profiled runs of `model` on `feeds` (after `warmup`), with its node kernel times."""
    ort = require_deploy(need_exporter=False)
    if runs < 1 or warmup < 0:
        raise SlimkitError(f"profiling needs runs >= 1 and warmup >= 0, got {runs}, {warmup}")
    with tempfile.TemporaryDirectory(prefix="slimkit-ort-profile-") as d:
        so = session_options(threads, level)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(d) / "profile")
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    if not model_runs:
        raise SlimkitError("ONNX Runtime's profile holds no model run")
    fastest = min(model_runs, key=lambda e: e["dur"])
    suffix = "_kernel_time"
    nodes = [NodeTime(e["name"][:-len(suffix)], e["args"].get("op_name", ""), float(e["dur"]), _shape(e["args"]))
             for e in sorted(events, key=lambda e: e.get("ts", 0))
             if e.get("cat") == "Node" and e.get("name", "").endswith(suffix)
             and fastest["ts"] <= e["ts"] <= fastest["ts"] + fastest["dur"]]
    return KernelProfile(float(fastest["dur"]), len(model_runs), nodes)


__all__ = ["KernelProfile", "NodeTime", "profile_onnx"]
