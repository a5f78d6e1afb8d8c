"""Deployment: ONNX export checked against PyTorch, ONNX Runtime sessions and timing, int8 quantization.

Needs the `deploy` extra (onnx, onnxruntime, onnxscript): pip install 'slimkit[deploy]'. Importing
this package does not import them; the functions say which extra is missing when called.
"""

from slimkit.export.checks import classifier_check, classifier_scores, embedding_cosines, encoder_check
from slimkit.export.files import check_output, write_output
from slimkit.export.onnx_export import EXPORTERS, ExportResult, export_onnx, to_onnx
from slimkit.export.mixed import quantize_int8_fastest
from slimkit.export.profile import KernelProfile, profile_onnx
from slimkit.export.quantize import QuantResult, pre_processed, quantize_int8, quantize_onnx, split_feeds
from slimkit.export.runtime import OrtModel, describe_session, require_deploy, session_options, time_onnx

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "KernelProfile",
    "OrtModel",
    "QuantResult",
    "check_output",
    "classifier_check",
    "classifier_scores",
    "describe_session",
    "embedding_cosines",
    "encoder_check",
    "export_onnx",
    "pre_processed",
    "profile_onnx",
    "quantize_int8",
    "quantize_int8_fastest",
    "quantize_onnx",
    "require_deploy",
    "session_options",
    "split_feeds",
    "time_onnx",
    "to_onnx",
    "write_output",
]
