"""Profiling: task metrics, parameter counts, MACs, measured latency and size on disk."""

from slimkit.measure.cost import (
    LatencyResult,
    count_macs,
    count_params,
    file_size_bytes,
    measure_latency,
    measure_latency_interleaved,
)
from slimkit.measure.metrics import ClassificationMetrics, classification_metrics, evaluate_classifier, predict_logits

__all__ = [
    "ClassificationMetrics",
    "LatencyResult",
    "classification_metrics",
    "count_macs",
    "count_params",
    "evaluate_classifier",
    "file_size_bytes",
    "measure_latency",
    "measure_latency_interleaved",
    "predict_logits",
]
