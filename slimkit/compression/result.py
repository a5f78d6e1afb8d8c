"""What `compress` gives back: the compressed model and a typed report of everything it measured.

`CompressReport` is the one definition of report.json: `compress` fills it, the command line and
the demo read its fields by name (a misspelt field is an AttributeError at once, not a silent
`None`), and `to_json()` is what report.json, report.md and report.html are made from. A refused
run's report (RefusedError.report) is the same type with `refused` set and no `result`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from torch import nn

from slimkit.errors import SlimkitError


class Measured(BaseModel):
    """One model's numbers: cost, and the task's metrics on validation and test."""

    model_config = ConfigDict(extra="forbid")

    macs: int
    params: int
    ms: float | None = None  # batch-1 latency from the deciding timer (the final, dense-vs-result run)
    val: dict[str, float]
    test: dict[str, float] = {}


class Dense(Measured):
    ms_search: float | None = None  # the dense model's time in the search's timing run


class Compressed(Measured):
    latency_share: float
    speedup: float
    macs_reduction: float
    faster: bool
    meets_target: bool
    val_holds_floor: bool


class Rebuild(BaseModel):
    """How the saved model reloads (slimkit.compression.rebuild)."""

    kind: str
    builder: str | None = None
    kwargs: dict[str, Any] = {}


class CompressReport(BaseModel):
    """Everything one compress run measured and decided; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    task: str
    metric: str
    higher_is_better: bool
    target: str
    floor: str
    floor_value: float
    timing: str | None
    cutter: str
    kept_intact: dict[str, dict[str, str]]
    settings: dict[str, Any]
    data: str
    dense: Dense
    block_ranking: list[dict[str, Any]]
    candidates: list[dict[str, Any]]  # Candidate.as_dict() of every mix, fastest first
    chosen: int | None
    candidates_tried: int
    choice: str | None = None  # how the chosen mix was chosen (held after the short recovery, or after the full one)
    provenance: dict[str, Any]
    rebuild: Rebuild | None = None
    result: Compressed | None = None
    training: dict[str, Any] | None = None
    timing_beside: dict[str, Any] | None = None
    notes: list[str] = []
    wall_seconds: float | None = None
    onnx: dict[str, Any] | None = None
    deployment: list[dict[str, Any]] | None = None
    saved: dict[str, Any] | None = None
    refused: str | None = None

    def to_json(self) -> dict[str, Any]:
        """report.json's content: every field, leaving out the optional ones this run has no value for."""
        optional = {"choice", "rebuild", "result", "training", "timing_beside", "onnx", "deployment", "saved", "refused"}
        return {k: v for k, v in self.model_dump(mode="json").items() if not (k in optional and v is None)}

    @property
    def target_verdict(self) -> str:
        """"target latency=0.5x met" or "... missed", from the final measurement.

        The search times each mix once; the final measurement can land just past the target, and then
        the report says missed rather than claim what the deciding timer did not measure."""
        met = self.result is not None and self.result.meets_target
        return f"target {self.target} {'met' if met else 'missed'}"


class RefusedError(SlimkitError):
    """No mix held the floor. Nothing is written (a refusal leaves no run folder), but `report`
    holds what was measured, so a caller can still show the search:
    slimkit.report_html.write_page(err.report.to_json(), path)."""

    def __init__(self, message: str, report: CompressReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class CompressResult:
    """The compressed model, the report, the chosen mix (a search.Candidate: its `model` is the cut
    before any recovery), every mix measured, and the run's settings (CompressSettings)."""

    model: nn.Module
    report: CompressReport
    chosen: Any
    candidates: list[Any] = field(default_factory=list)
    faster: bool = True
    out: Path | None = None
    settings: Any = None
