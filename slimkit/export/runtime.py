"""ONNX Runtime sessions that run and are timed like PyTorch models.

`OrtModel` wraps an InferenceSession as an nn.Module taking the same inputs as the model it came
from, so one evaluator (`evaluate_classifier`) scores both and one timer
(`measure_latency_interleaved`) times both: a runtime number and an eager number differ only in
what ran, not in how it was measured.

Every session is built by `session_options`, so dense and pruned, fp32 and int8 run under the same
settings, which the report states: CPU execution provider, `threads` intra-op threads, one
inter-op thread, sequential execution, and the graph optimisation level (ORT_ENABLE_ALL by
default: constant folding, operator fusions such as Conv+BN and, on x86, the NCHWc layout).
ONNX Runtime's own thread pool spins while waiting for work (its default), the counterpart of
OMP_WAIT_POLICY=ACTIVE for PyTorch.
"""

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.measure import LatencyResult, measure_latency_interleaved

INSTALL_HINT = "pip install 'slimkit[deploy]'"
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def require_deploy(need_exporter: bool = True):
    """Import onnxruntime (and onnx, for export); one line naming the extra to install when missing."""
    try:
        import onnxruntime
        if need_exporter:
            import onnx  # noqa: F401
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "onnx/onnxruntime"
        raise SlimkitError(f"ONNX export and runtime timing need {missing}, which is not installed: "
                           f"{INSTALL_HINT}") from None
    return onnxruntime


def session_options(threads: int = 2, level: str = "all"):
    """The session settings every deployed model runs with (see the module docstring)."""
    ort = require_deploy(need_exporter=False)
    if level not in LEVELS:
        raise SlimkitError(f"optimisation level must be one of {sorted(LEVELS)}, got {level!r}")
    if threads < 1:
        raise SlimkitError(f"threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    so.log_severity_level = 3  # errors only: warnings about unused initialisers are not the user's concern
    return so


def describe_session(threads: int = 2, level: str = "all") -> str:
    """The settings of `session_options`, in words, for report headers."""
    ort = require_deploy(need_exporter=False)
    return (f"onnxruntime {ort.__version__} CPUExecutionProvider, {LEVELS[level]}, intra_op_num_threads={threads}, "
            f"inter_op_num_threads=1, sequential, thread-pool spinning on (default)")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OrtModel(nn.Module):
    """An ONNX model in an InferenceSession, called with the inputs of the PyTorch model it was exported from.

    Positional tensors map to the graph inputs in order, keyword tensors by name. One output comes
    back as a tensor; several as an `OrtOutputs` dict by output name. Inputs are converted to the dtype the graph
    declares (token ids are int64 in the graph whatever the tokenizer gave).
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int = 2, level: str = "all") -> None:
        super().__init__()
        ort = require_deploy(need_exporter=False)
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, session_options(threads, level),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types, each naming the node
            raise SlimkitError(f"onnxruntime cannot load the model: {first_line(exc)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads, self.level = threads, level

    def feeds(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        named = dict(zip(self.input_names, args))
        named.update({k: v for k, v in kwargs.items() if k in self.input_types})
        missing = [n for n in self.input_names if n not in named]
        if missing:
            raise SlimkitError(f"the ONNX model needs inputs {missing}; got {sorted(named)}")
        out = {}
        for name, value in named.items():
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            want = _NUMPY_TYPES.get(self.input_types[name])
            out[name] = arr.astype(want, copy=False) if want is not None else arr
        return out

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(None, feeds)
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise SlimkitError(f"onnxruntime failed on inputs {shapes}: {first_line(exc)}") from None

    def forward(self, *args: Any, **kwargs: Any):
        outs = [torch.from_numpy(o) for o in self.run(self.feeds(*args, **kwargs))]
        return outs[0] if len(outs) == 1 else OrtOutputs(zip(self.output_names, outs))


class OrtOutputs(dict):
    """Several outputs by name, readable as attributes too (`out.last_hidden_state`), as transformers'
    ModelOutput is, so code written for the PyTorch model reads the session's outputs unchanged."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
                "tensor(double)": np.float64, "tensor(bool)": np.bool_}


def time_onnx(models: list[str | os.PathLike | bytes | OrtModel], example: torch.Tensor | tuple | dict,
              runs: int = 50, warmup: int = 10, threads: int = 2, level: str = "all", stat: str = "median",
              burst: int = 5) -> list[LatencyResult]:
    """Latency of ONNX models in ONNX Runtime, alternating, with the timer PyTorch models use.

    Every model gets the same session options; see `measure_latency_interleaved` for the
    alternation, the warm bursts and `stat`. Only what ran here is returned: no number is derived.
    """
    sessions = [m if isinstance(m, OrtModel) else OrtModel(m, threads, level) for m in models]
    if any(s.threads != threads or s.level != level for s in sessions):
        raise SlimkitError("time_onnx compares models under one set of session options; rebuild the OrtModels "
                           f"with threads={threads}, level={level!r}")
    return measure_latency_interleaved(sessions, example, runs=runs, warmup=warmup, threads=threads, stat=stat,
                                       burst=burst)
