"""Export a PyTorch model to one ONNX file that is checked before it is written.

`torch.onnx.export` has two exporters. The dynamo exporter (torch.export, then onnxscript) traces
the model symbolically and keeps shapes symbolic; the TorchScript exporter traces one run and can
bake values that depended on the example into the graph (a traced BERT took its padding pattern
from the example and differed by 3.0 on other sentences). The dynamo exporter is tried first;
when it fails or its graph does not match PyTorch, the TorchScript one is tried, and the result
records which was used and why.

Before the checks, `slimkit.export.rewrite` replaces spatial means by GlobalAveragePool, which ONNX
Runtime's channels-last int8 and blocked fp32 paths run without a layout change.

A graph is only accepted after:
1. `onnx.checker.check_model`;
2. running it in ONNX Runtime (the session settings of deployment) on held-out inputs whose batch
   size, and for text or audio whose sequence length, differ from the example, so the dynamic
   axes are exercised, and comparing every output with PyTorch: max |onnx - torch| <= atol +
   rtol * max |torch|;
3. an optional task check (`validate`, e.g. test-split accuracy or embedding cosine).
A failure is one SlimkitError line naming the operator the exporter could not convert, the node
ONNX Runtime failed in, or the output tensor that differs.
"""

import contextlib
import copy
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.export.files import check_output, write_output
from slimkit.export.rewrite import spatial_means_to_global_pool
from slimkit.export.runtime import OrtModel, first_line, require_deploy

EXPORTERS = ("dynamo", "torchscript")
Validator = Callable[[OrtModel], dict]


@dataclass
class ExportResult:
    """What was exported and how it was checked. `model_bytes` is the ONNX file's content."""

    exporter: str
    fallback_reason: str | None
    opset: int
    inputs: dict[str, dict[int, str]]  # input name -> {axis: "batch" | "sequence"} (the dynamic axes)
    outputs: list[str]
    max_abs_diff: dict[str, float]  # per output, the largest over every held-out input
    checked_shapes: list[dict[str, list[int]]]
    checks: dict = field(default_factory=dict)  # what `validate` returned
    rewrites: dict[str, int] = field(default_factory=dict)  # graph rewrite -> nodes rewritten (slimkit.export.rewrite)
    model_bytes: bytes = field(default=b"", repr=False)
    path: Path | None = None

    @property
    def file_bytes(self) -> int:
        return len(self.model_bytes)

    def as_dict(self) -> dict:
        return {"path": str(self.path) if self.path else None, "exporter": self.exporter,
                "fallback_reason": self.fallback_reason, "opset": self.opset, "inputs": self.inputs,
                "outputs": self.outputs, "max_abs_diff": self.max_abs_diff, "checked_shapes": self.checked_shapes,
                "checks": self.checks, "rewrites": self.rewrites, "file_bytes": self.file_bytes}


def _as_named(example: torch.Tensor | tuple | list | dict) -> dict[str, torch.Tensor]:
    """The example as {input name: tensor}: 'input' for one tensor, input_0.. for a tuple, keys of a dict."""
    if isinstance(example, torch.Tensor):
        return {"input": example}
    if isinstance(example, (tuple, list)):
        return {f"input_{i}": t for i, t in enumerate(example)}
    if isinstance(example, dict):
        return dict(example)
    raise SlimkitError(f"example must be a tensor, a tuple of tensors or a dict of tensors, got {type(example).__name__}")


def _call(model: nn.Module, named: dict[str, torch.Tensor], as_kwargs: bool):
    return model(**named) if as_kwargs else model(*named.values())


def _flat_outputs(out: Any, prefix: str = "output") -> dict[str, torch.Tensor]:
    """Output tensors in the order both exporters flatten them: a dict's (or ModelOutput's) keys in order."""
    if isinstance(out, torch.Tensor):
        return {prefix: out}
    if isinstance(out, dict):  # transformers' ModelOutput is a dict holding only its non-None fields
        items = [(str(k), v) for k, v in out.items() if v is not None]
    elif isinstance(out, (tuple, list)):
        items = [(f"{prefix}_{i}", v) for i, v in enumerate(out)]
    else:
        raise SlimkitError(f"model output of type {type(out).__name__} cannot be exported; return tensors")
    flat: dict[str, torch.Tensor] = {}
    for name, v in items:
        flat.update(_flat_outputs(v, name) if not isinstance(v, torch.Tensor) else {name: v})
    return flat


def _sequence_axis(named: dict[str, torch.Tensor], sequence_axis: int | None) -> int | None:
    """The sequence axis: as given, or 1 when every input is a 2-D integer tensor (token ids and masks)."""
    if sequence_axis is not None:
        return sequence_axis
    if all(t.dim() == 2 and not t.is_floating_point() for t in named.values()):
        return 1
    return None


def _dynamic_axes(named: dict[str, torch.Tensor], seq: int | None) -> dict[str, dict[int, str]]:
    axes = {}
    for name, t in named.items():
        axes[name] = {0: "batch"}
        if seq is not None and t.dim() > 1:
            axes[name][seq % t.dim()] = "sequence"
    return axes


def _resize(named: dict[str, torch.Tensor], axes: dict[str, dict[int, str]], batch: int | None = None,
            grow_sequence: bool = False) -> dict[str, torch.Tensor]:
    """Inputs at another batch size (rows of the example repeated) or one position longer (the last repeated)."""
    out = {}
    for name, t in named.items():
        if batch is not None:
            t = t[torch.arange(batch) % t.shape[0]]
        if grow_sequence:
            ax = next((a for a, kind in axes[name].items() if kind == "sequence"), None)
            if ax is not None:
                t = torch.cat([t, t.narrow(ax, t.shape[ax] - 1, 1)], dim=ax)
        out[name] = t
    return out


@contextlib.contextmanager
def _fds_to_devnull():
    """Point file descriptors 1 and 2 at /dev/null: the TorchScript exporter prints whole graphs from C++."""
    saved: list[tuple[int, int]] = []
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with open(os.devnull, "w") as null:
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(null.fileno(), fd)
        yield
    finally:
        for fd, kept in saved:
            os.dup2(kept, fd)
            os.close(kept)


def _quiet():
    """Silence the exporters' progress prints and deprecation chatter; their errors still propagate."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(_fds_to_devnull())
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack


def _export(kind: str, model: nn.Module, named: dict[str, torch.Tensor], as_kwargs: bool,
            axes: dict[str, dict[int, str]], out_names: list[str], opset: int | None, f: Path) -> None:
    common = {"input_names": list(named), "output_names": out_names, "opset_version": opset}
    args = () if as_kwargs else tuple(named.values())
    kwargs = named if as_kwargs else None
    if kind == "dynamo":
        dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
        shapes = {n: {a: dims[k] for a, k in axes[n].items()} for n in named}
        torch.onnx.export(model, args, str(f), kwargs=kwargs, dynamo=True, verbose=False, external_data=False,
                          dynamic_shapes=shapes if as_kwargs else tuple(shapes.values()), **common)
    else:
        out_axes = {n: {0: "batch"} for n in out_names}
        torch.onnx.export(model, args, str(f), kwargs=kwargs, dynamo=False, dynamic_axes={**axes, **out_axes},
                          **common)


def _export_error(exc: BaseException) -> str:
    """One line from an exporter failure, naming the operator where the message does."""
    text = str(exc)
    summary = re.search(r"Exception summary\s+(.+)", text)
    line = summary.group(1).strip() if summary else first_line(exc)
    line = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:\s*", r"\1: ", line)
    op = re.search(r"\baten(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?", text)
    if op and op.group(0) not in line:
        line = f"operator {op.group(0)}: {line}"
    return line[:400]


def _compare(model: nn.Module, ort_model: OrtModel, inputs: list[dict[str, torch.Tensor]], as_kwargs: bool,
             atol: float, rtol: float) -> tuple[dict[str, float], list[dict[str, list[int]]]]:
    worst: dict[str, float] = {}
    shapes = []
    for i, named in enumerate(inputs):
        with torch.no_grad():
            ref = _flat_outputs(_call(model, named, as_kwargs))
        got = ort_model.run(ort_model.feeds(**named))
        shape = {k: list(v.shape) for k, v in named.items()}
        shapes.append(shape)
        if len(got) != len(ref):
            raise SlimkitError(f"the ONNX graph has {len(got)} outputs, PyTorch gives {len(ref)} ({list(ref)})")
        for (name, want), have in zip(ref.items(), got):
            have = torch.from_numpy(have)
            if tuple(have.shape) != tuple(want.shape):
                raise SlimkitError(f"output {name!r} has shape {tuple(have.shape)} in ONNX, {tuple(want.shape)} in "
                                   f"PyTorch, on held-out input {shape}")
            diff = float((have.double() - want.double()).abs().max()) if want.numel() else 0.0
            bound = atol + rtol * (float(want.abs().max()) if want.numel() else 0.0)
            if not diff <= bound:  # also catches NaN
                raise SlimkitError(f"output {name!r} differs from PyTorch on held-out input {shape}: max abs "
                                   f"difference {diff:.3g} > tolerance {bound:.3g}")
            worst[name] = max(worst.get(name, 0.0), diff)
    return worst, shapes


def export_onnx(model: nn.Module, example: torch.Tensor | tuple | dict, *,
                check_inputs: Sequence[torch.Tensor | tuple | dict] = (), sequence_axis: int | None = None,
                opset: int | None = None, exporters: Sequence[str] = EXPORTERS, atol: float = 1e-4,
                rtol: float = 1e-4, validate: Validator | None = None) -> ExportResult:
    """Export and check in memory (nothing is written); see the module docstring.

    `example` is one batch the model's forward accepts (a tensor, a tuple, or a dict passed as
    keyword arguments, e.g. a tokenizer's input_ids and attention_mask). Axis 0 of every input is
    dynamic; `sequence_axis` marks another axis dynamic too (1 for text, -1 for (batch, channels,
    time) audio); text inputs (only 2-D integer tensors) get it by default. A batch of 1 is
    repeated to 2 for the trace, so that the batch axis is not fixed to 1. `check_inputs` are
    further held-out inputs to compare on, besides the example resized in batch (and sequence).
    """
    require_deploy()
    import onnx

    bad = [e for e in exporters if e not in EXPORTERS]
    if bad or not exporters:
        raise SlimkitError(f"exporters must be a non-empty choice of {EXPORTERS}, got {list(exporters)}")
    named = _as_named(example)
    as_kwargs = isinstance(example, dict)
    if not named or not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in named.values()):
        raise SlimkitError("every example input must be a tensor with a batch axis")
    if len({t.shape[0] for t in named.values()}) != 1:
        raise SlimkitError(f"example inputs disagree on the batch size: {[tuple(t.shape) for t in named.values()]}")
    was_training = model.training
    model.eval()
    try:
        return _export_checked(model, named, as_kwargs, check_inputs, sequence_axis, opset, exporters, atol, rtol,
                               validate, onnx)
    finally:
        model.train(was_training)


def _export_checked(model: nn.Module, named: dict[str, torch.Tensor], as_kwargs: bool,
                    check_inputs: Sequence[torch.Tensor | tuple | dict], sequence_axis: int | None, opset: int | None,
                    exporters: Sequence[str], atol: float, rtol: float, validate: Validator | None,
                    onnx) -> ExportResult:
    try:
        with torch.no_grad():
            out_names = list(_flat_outputs(_call(model, named, as_kwargs)))
    except SlimkitError:
        raise
    except Exception as exc:  # whatever the forward raises on inputs it does not take
        shapes = {k: tuple(v.shape) for k, v in named.items()}
        raise SlimkitError(f"the model's forward does not accept the example inputs {shapes}: {first_line(exc)}; "
                           "pass an example shaped like the model's inputs") from None
    seq = _sequence_axis(named, sequence_axis)
    axes = _dynamic_axes(named, seq)
    traced = named if next(iter(named.values())).shape[0] > 1 else _resize(named, axes, batch=2)
    b = next(iter(traced.values())).shape[0]
    held = [traced, _resize(traced, axes, batch=b + 1)]
    if seq is not None:
        held.append(_resize(traced, axes, batch=1, grow_sequence=True))
    held += [_as_named(x) for x in check_inputs]
    reasons: list[str] = []
    for kind in exporters:
        try:
            result = _attempt(kind, model, traced, as_kwargs, axes, out_names, opset, held, atol, rtol, validate, onnx)
        except SlimkitError as exc:
            reasons.append(f"{kind}: {exc}")
            continue
        result.fallback_reason = "; ".join(reasons) or None
        return result
    raise SlimkitError("ONNX export failed: " + "; ".join(reasons))


def _attempt(kind: str, model: nn.Module, named: dict[str, torch.Tensor], as_kwargs: bool,
             axes: dict[str, dict[int, str]], out_names: list[str], opset: int | None,
             held: list[dict[str, torch.Tensor]], atol: float, rtol: float, validate: Validator | None,
             onnx) -> ExportResult:
    with tempfile.TemporaryDirectory(prefix="slimkit-onnx-") as d:
        f = Path(d) / "model.onnx"
        try:
            with _quiet():
                # torch.export may rewrite module attributes while tracing; the caller's model stays as it was
                _export(kind, copy.deepcopy(model), named, as_kwargs, axes, out_names, opset, f)
        except Exception as exc:
            raise SlimkitError(f"export failed: {_export_error(exc)}") from None
        try:
            onnx.checker.check_model(str(f))
        except Exception as exc:
            raise SlimkitError(f"onnx.checker rejects the graph: {first_line(exc)}") from None
        proto = onnx.load(str(f))
        rewrites = {"ReduceMean -> GlobalAveragePool": spatial_means_to_global_pool(proto)}
        rewrites = {k: n for k, n in rewrites.items() if n}
        if rewrites:
            try:
                onnx.checker.check_model(proto)
            except Exception as exc:
                raise SlimkitError(f"onnx.checker rejects the rewritten graph ({', '.join(rewrites)}): "
                                   f"{first_line(exc)}") from None
        data = proto.SerializeToString() if rewrites else f.read_bytes()
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    ort_model = OrtModel(data)
    diffs, shapes = _compare(model, ort_model, held, as_kwargs, atol, rtol)
    checks = validate(ort_model) if validate is not None else {}
    return ExportResult(kind, None, opset_used, axes, [o.name for o in proto.graph.output], diffs, shapes, checks,
                        rewrites, data)


def to_onnx(model: nn.Module, example: torch.Tensor | tuple | dict, path: str, *, overwrite: bool = False,
            **kwargs: Any) -> ExportResult:
    """Export `model` to one checked ONNX file at `path` (see `export_onnx` for the options).

    An existing `path` is refused before any work unless `overwrite`; the file is written only
    after every check passed, atomically.
    """
    check_output(path, overwrite)
    result = export_onnx(model, example, **kwargs)
    result.path = write_output(path, result.model_bytes, overwrite)
    return result
