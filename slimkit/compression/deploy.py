"""The deployment rows of a compress run: the dense and the compressed model exported to ONNX, checked,
scored and timed in ONNX Runtime.

Both models are exported in memory (slimkit.export.export_onnx): onnx.checker, the largest absolute
output difference to PyTorch on held-out inputs (the example resized in batch, and a batch of the
evaluation split), and the task's metric on the evaluation split (test, else validation) computed by
the engine's `evaluate` on the ONNX Runtime session, which must equal PyTorch's within
`METRIC_TOLERANCE` (0.1 pt of a metric on a 0-1 scale: accuracy, CER, cosine). Every task compress
runs (classification, embeddings, CTC) gets all three checks; a task without metrics gets the first
two only, and the report says so.

Only the compressed model's file is written (model.onnx); the dense export is the runtime's
reference, not a result of the run, and `slimkit export` writes it when wanted. Its size is still
reported: it is the size of the bytes that were timed.

The two sessions are timed alternating with `time_onnx` (one set of session options, stated in the
report) at batch 1 and at a batch of 32 from the evaluation split. The runtime's efficiency is its
measured speed-up divided by the MACs reduction, beside the eager one compress measured; a cut
that pays in eager PyTorch but not in the runtime is said so.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import nn

from slimkit.compression.result import Compressed
from slimkit.errors import SlimkitError

METRIC_TOLERANCE = 0.001  # 0.1 pt of a 0-1 metric
BATCHES = (1, 32)
LEVEL = "all"


class ExportFailedError(SlimkitError):
    """The compressed model could not be exported, or its export does not match PyTorch. The model and
    its report were written all the same (the failure recorded in report.json); `result` holds them."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


def metric_check(model: nn.Module, data: Any, task: Any, batch_size: int, teacher: nn.Module | None = None,
                 tolerance: float = METRIC_TOLERANCE):
    """Validator for export_onnx: the task's metric through ONNX Runtime equals PyTorch's within `tolerance`.

    Fidelity metrics (cosine to the teacher) compare with `teacher` (default: the model itself), as
    compress scores them against the dense model, so the rows read like the report's test column.
    """
    from slimkit.distill import evaluate

    name = task.metric.name
    teacher = teacher if teacher is not None else model

    def check(ort_model: nn.Module) -> dict:
        torch_value = evaluate(model, data, task, teacher, batch_size=batch_size)[name]
        onnx_value = evaluate(ort_model, data, task, teacher, batch_size=batch_size, device="cpu")[name]
        gap = abs(onnx_value - torch_value)
        if not gap <= tolerance:  # also catches NaN
            raise SlimkitError(f"ONNX {name} {onnx_value:.4f} differs from PyTorch's {torch_value:.4f} by "
                               f"{100 * gap:.2f} pt (> {100 * tolerance:.1f} pt) on the evaluation split; output "
                               f"differs in the runtime")
        return {"metric": name, "pytorch": torch_value, "onnx": onnx_value}
    return check


def timing_batches(example: Any, data: Any, task: Any) -> dict[str, Any]:
    """{"batch 1": example, "batch N": the first batch of up to 32 samples of `data`} (N its real size)."""
    from slimkit.distill.train_data import batch_len, batches_of

    out = {"batch 1": example}
    big = next(iter(batches_of(data, max(BATCHES))), None)
    if big is not None:
        x = task.split(big)[0]
        if batch_len(x) > 1:
            out[f"batch {batch_len(x)}"] = x
    return out


def export_and_time(dense: nn.Module, final: nn.Module, example: Any, data: Any, split_name: str, task: Any,
                    result: Compressed, threads: int, runs: int, batch_size: int) -> tuple[bytes, dict]:
    """Export, check and time both models (see the module docstring): (the compressed model's ONNX bytes,
    the report's "onnx" section with its deployment rows); `result` is compress's measurement of the
    compressed model, for the efficiencies. Raises one SlimkitError line naming the
    model and what failed (operator, output tensor or metric)."""
    from slimkit.export import describe_session, export_onnx, time_onnx
    from slimkit.export.runtime import LEVELS
    from slimkit.measure.rows import DeployRow, deploy_notes

    batches = timing_batches(example, data, task)
    held = [x for k, x in batches.items() if k != "batch 1"]
    exports = {}
    for name, model in (("dense", dense), ("compressed", final)):
        check = metric_check(model, data, task, batch_size, dense) if task.metric is not None else None
        try:
            exports[name] = export_onnx(model, example, check_inputs=held, validate=check)
        except SlimkitError as exc:
            raise SlimkitError(f"the {name} model's ONNX export failed: {exc}") from None
    ms: dict[str, dict[str, float]] = {"dense": {}, "compressed": {}}
    for key, x in batches.items():
        d, c = time_onnx([exports["dense"].model_bytes, exports["compressed"].model_bytes], x, runs=runs,
                         threads=threads, level=LEVEL)
        ms["dense"][key], ms["compressed"][key] = d.ms, c.ms
    session = describe_session(threads, LEVEL)
    timing = (f"median of {runs} rounds, dense and compressed alternating in this process, warm bursts; "
              f"{session}")
    metric = task.metric.name if task.metric is not None else "none"
    rows = []
    for name in ("dense", "compressed"):
        res = exports[name]
        rows.append(DeployRow(
            f"{name} onnx", "onnxruntime", "fp32", metric, res.checks.get("onnx", float("nan")), ms[name],
            "model.onnx" if name == "compressed" else "(not written)", res.file_bytes, timing,
            "dense onnx" if name == "compressed" else None,
            extra={"pytorch": res.checks.get("pytorch"), "max_abs_diff": res.max_abs_diff,
                   "exporter": res.exporter, "opset": res.opset, "rewrites": res.rewrites, "split": split_name}))
    gains = efficiency(result, ms)
    notes = deploy_notes(rows) + efficiency_notes(gains)
    if task.metric is None:
        notes.append(f"the {task.name} task has no metric: the exports were checked by onnx.checker and the "
                     f"largest output difference on held-out inputs only")
    section = {"path": "model.onnx", "session": session, "optimisation_level": LEVELS[LEVEL],
               "threads": threads, "runs": runs, "split": split_name,
               "efficiency": gains, "notes": notes,
               "exports": {n: {k: v for k, v in r.as_dict().items() if k != "path"} for n, r in exports.items()},
               "deployment": [asdict(r) for r in rows]}
    return exports["compressed"].model_bytes, section


def efficiency(result: Compressed, ms: dict[str, dict[str, float]]) -> dict:
    """Speed-up and efficiency (speed-up / MACs reduction): eager (compress's deciding timer, batch 1)
    and ONNX Runtime at every batch timed."""
    mr = result.macs_reduction
    out = {"macs_reduction": mr, "eager": {"batch 1": {"speedup": result.speedup, "efficiency": result.speedup / mr}}}
    out["onnxruntime"] = {k: {"speedup": ms["dense"][k] / ms["compressed"][k],
                              "efficiency": ms["dense"][k] / ms["compressed"][k] / mr} for k in ms["dense"]}
    return out


def efficiency_notes(e: dict) -> list[str]:
    """The efficiencies (as `efficiency` gives them) in words, and plainly whether the cut pays in the
    runtime as it does in eager PyTorch."""
    eager = e["eager"]["batch 1"]
    ort = ", ".join(f"{v['speedup']:.2f}x (efficiency {v['efficiency']:.2f}) at {k}" for k, v in e["onnxruntime"].items())
    notes = [(f"{e['macs_reduction']:.2f}x fewer MACs; eager PyTorch {eager['speedup']:.2f}x (efficiency "
              f"{eager['efficiency']:.2f}) at batch 1; ONNX Runtime {ort}")]
    slow = [k for k, v in e["onnxruntime"].items() if v["speedup"] <= 1.0]
    if eager["speedup"] > 1.0 and slow:
        notes.append(f"the cut pays in eager PyTorch but not in ONNX Runtime at {', '.join(slow)}: deployed there, "
                     f"the compressed model is not faster than the dense one")
    return notes
