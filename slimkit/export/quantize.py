"""int8 ONNX models with onnxruntime.quantization: static (QDQ, calibrated) or dynamic.

- **static** quantizes weights (int8, per output channel) and activations (uint8) with scales fixed
  from calibration batches, in QDQ form: QuantizeLinear/DequantizeLinear pairs around each
  quantized op, which ONNX Runtime fuses into integer kernels (QLinearConv, QLinearMatMul). It is
  the one that speeds up convolutions; it needs calibration data, which should be the validation
  split (not test), since the scales are fitted to it.
- **dynamic** quantizes the weights of MatMul/Gemm (Linear layers) ahead of time and each
  activation's scale at run time; no calibration, suited to Linear-heavy models (transformers).
  Convolutions stay fp32: ONNX Runtime's dynamic ConvInteger kernel is slower than fp32 on CPUs.

The model is first run through onnxruntime's `quant_pre_process` (shape inference and graph
optimisation, which folds BatchNorm into the convolutions), as onnxruntime recommends; accuracy
is never assumed: the caller measures it on the quantized model. Nothing is written outside a
temporary folder until the caller writes the result.
"""

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimkit.data.arrays import Split
from slimkit.errors import SlimkitError
from slimkit.export.files import check_output, write_output
from slimkit.export.runtime import first_line, require_deploy

MODES = ("static", "dynamic")
CALIBRATION = ("minmax", "entropy", "percentile")


@dataclass
class QuantResult:
    mode: str
    details: dict
    model_bytes: bytes = field(repr=False)
    path: Path | None = None

    @property
    def file_bytes(self) -> int:
        return len(self.model_bytes)


def split_feeds(split: Split, input_name: str = "input", samples: int = 1024,
                batch_size: int = 64) -> list[dict[str, np.ndarray]]:
    """Calibration batches for static quantization: the first `samples` of a split (use validation)."""
    if samples < 1 or batch_size < 1:
        raise SlimkitError(f"calibration needs samples >= 1 and batch_size >= 1, got {samples}, {batch_size}")
    x = split.x[:samples].numpy().astype(np.float32)
    return [{input_name: x[i:i + batch_size]} for i in range(0, len(x), batch_size)]


def _reader(feeds: Iterable[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        """Hands onnxruntime's calibrator one feed dict at a time."""

        def __init__(self) -> None:
            self.count = 0
            self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self):
            feed = next(self._it, None)
            self.count += feed is not None
            return feed

    return FeedReader()


def _pre_process(quant_pre_process, src: Path, dst: Path) -> str:
    """onnxruntime's pre-processing: ONNX shape inference and graph optimisation (BatchNorm folded into
    convolutions). Its symbolic shape inference is skipped: it fails on transformer graphs with a dynamic
    sequence length, and on failure it saves a model with external data into the current directory,
    which is the user's. Says what ran."""
    try:
        with _quiet_root():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return "shape inference and graph optimisation"
    except Exception as exc:  # a graph the pre-processor cannot handle is quantized as it is
        return f"skipped: {first_line(exc)}"


@contextlib.contextmanager
def _quiet_root():
    """onnxruntime.quantization logs advice on the root logger; the result's details say what was done."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize(mode: str, src: Path, dst: Path, calibration, calibrate_method: str, per_channel: bool,
              keep_fp32: list[str]) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    weights = "int8 per channel" if per_channel else "int8"
    fp32 = {"kept_fp32": keep_fp32} if keep_fp32 else {}
    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32)
        return {"ops": "MatMul, Gemm", "weights": weights, "activations": "uint8, scale per run", **fp32}
    reader = _reader(calibration)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                    nodes_to_exclude=keep_fp32)
    if reader.count == 0:
        raise SlimkitError("static int8 got no calibration batches")
    return {"format": "QDQ", "activations": "uint8", "weights": weights, "calibration": calibrate_method,
            "calibration_batches": reader.count, **fp32}


def _prepare(model: bytes | str | os.PathLike, d: str) -> tuple[Path, str]:
    """The model pre-processed into folder `d` (`_pre_process`), or the model itself where the pre-processor
    cannot run; and what ran."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = Path(d) / "fp32.onnx", Path(d) / "pre.onnx"
    if isinstance(model, bytes):
        src.write_bytes(model)
    else:
        src = Path(model)
    note = _pre_process(quant_pre_process, src, pre)
    return (src if note.startswith("skipped") else pre), note


def pre_processed(model: bytes | str | os.PathLike) -> bytes:
    """The fp32 model as quantization sees it (`quant_pre_process`: BatchNorm folded, shapes inferred): the
    graph whose node names `keep_fp32` refers to. The model unchanged where the pre-processor cannot run."""
    require_deploy()
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as d:
        return _prepare(model, d)[0].read_bytes()


def quantize_int8(model: bytes | str | os.PathLike, mode: str, calibration: Iterable[dict[str, np.ndarray]] | None = None,
                  calibrate_method: str = "minmax", per_channel: bool = True,
                  keep_fp32: Sequence[str] = ()) -> QuantResult:
    """An int8 copy of an ONNX model, in memory (see the module docstring for the two modes).

    `keep_fp32` names nodes of the pre-processed graph (`pre_processed`) to leave in fp32, e.g. the
    convolutions `slimkit.export.mixed` measured slower in int8."""
    require_deploy()
    if mode not in MODES:
        raise SlimkitError(f"int8 mode must be one of {MODES}, got {mode!r}")
    if calibrate_method not in CALIBRATION:
        raise SlimkitError(f"calibration method must be one of {CALIBRATION}, got {calibrate_method!r}")
    if mode == "static" and calibration is None:
        raise SlimkitError("static int8 needs calibration batches (e.g. split_feeds(data.val)); or use mode='dynamic'")
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as d:
        pre, note = _prepare(model, d)
        dst = Path(d) / "int8.onnx"
        details: dict = {"mode": mode, "pre_process": note}
        if keep_fp32:
            import onnx

            names = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
            unknown = sorted(set(keep_fp32) - names)
            if unknown:
                raise SlimkitError(f"keep_fp32 names nodes the pre-processed graph does not have: {unknown[:5]}; take "
                                   "names from slimkit.export.pre_processed(model)")
        try:
            with _quiet_root():
                details.update(_quantize(mode, pre, dst, calibration, calibrate_method, per_channel, list(keep_fp32)))
        except SlimkitError:
            raise
        except Exception as exc:
            raise SlimkitError(f"{mode} int8 quantization failed: {first_line(exc)}") from None
        return QuantResult(mode, details, dst.read_bytes())


def quantize_onnx(model: bytes | str | os.PathLike, path: str | os.PathLike, mode: str,
                  calibration: Iterable[dict[str, np.ndarray]] | None = None, overwrite: bool = False,
                  **kwargs) -> QuantResult:
    """`quantize_int8`, written atomically to `path` (an existing file is refused unless `overwrite`)."""
    check_output(path, overwrite)
    result = quantize_int8(model, mode, calibration, **kwargs)
    result.path = write_output(path, result.model_bytes, overwrite)
    return result
