"""What `compress` aims for and what it must keep: targets, floors and every setting, as one recipe.

A target says how much cheaper the result must be, as a ratio to the dense model:

- `latency=0.5x`: at most half the dense model's measured batch-1 latency, on this machine;
- `macs=2x`: at least 2x fewer multiply-accumulates (`macs=0.5x` reads the same: a fraction is a
  share of the dense cost, a number above 1 a reduction factor);
- `params=2x` / `params=0.5x`: the same for the parameter count.

A floor says how good the result must stay on the validation split, in the task metric's own
direction (accuracy up, CER down, cosine up):

- `-1pt`: at most 1 point (0.01 of a fraction metric) worse than the dense model;
- `0.95`: an absolute value of the metric (accuracy 0.95, cosine 0.95, CER 0.05...);
- a callable `floor(dense_metrics: dict) -> float`, for anything else (Python API only).

Strings are parsed before any work starts, so a typo costs one error line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from slimkit.errors import SlimkitError

TARGET_KINDS = ("latency", "macs", "params")
_TARGET = re.compile(r"^\s*(latency|macs|params)\s*=\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*x?\s*$", re.IGNORECASE)
_POINTS = re.compile(r"^\s*-\s*([0-9]*\.?[0-9]+)\s*pt\s*$", re.IGNORECASE)
TARGET_HELP = "write the target as latency=0.5x (half the dense latency), macs=2x or params=2x (2x fewer)"
FLOOR_HELP = "write the floor as -1pt (1 point below the dense model) or an absolute metric value such as 0.95"


@dataclass(frozen=True)
class Target:
    """A cost the result must reach: `share` of the dense model's cost (0.5 = half)."""

    kind: Literal["latency", "macs", "params"]
    share: float

    @property
    def text(self) -> str:
        return f"{self.kind}={self.share:g}x" if self.kind == "latency" else f"{self.kind}={1 / self.share:g}x"

    def met(self, share: float) -> bool:
        """Whether a measured share of the dense cost reaches this target."""
        return share <= self.share + 1e-9


def parse_target(text: str) -> Target:
    """`latency=0.5x`, `macs=2x`, `macs=0.5x`, `params=3x` -> Target; SlimkitError otherwise."""
    m = _TARGET.match(str(text))
    if not m:
        raise SlimkitError(f"cannot read target {text!r}; {TARGET_HELP}")
    kind, value = m.group(1).lower(), float(m.group(2))
    if not math.isfinite(value) or value <= 0 or value == 1:
        raise SlimkitError(f"target {text!r} asks for no change; {TARGET_HELP}")
    if kind == "latency":
        if value > 1:
            raise SlimkitError(f"target {text!r} allows a slower model; a latency target is a share of the dense "
                               f"latency below 1, e.g. latency=0.5x")
        return Target("latency", value)
    return Target(kind, value if value < 1 else 1 / value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Floor:
    """The least validation score a cut may have: `points` below dense, or an `absolute` value, or `rule`."""

    points: float | None = None
    absolute: float | None = None
    rule: Callable[[dict], float] | None = None

    @property
    def text(self) -> str:
        if self.points is not None:
            return f"-{self.points:g}pt"
        if self.absolute is not None:
            return f"{self.absolute:g}"
        return f"callable {getattr(self.rule, '__name__', 'floor')}"

    def value(self, dense: dict[str, float], metric: str, higher_is_better: bool) -> float:
        """The floor on `metric` for a dense model scoring `dense` (every validation metric by name)."""
        if self.rule is not None:
            out = self.rule(dict(dense))
            if not isinstance(out, (int, float)) or isinstance(out, bool) or not math.isfinite(out):
                raise SlimkitError(f"the floor callable returned {out!r}; it must return the least acceptable "
                                   f"{metric} as a finite number")
            return float(out)
        if self.absolute is not None:
            return self.absolute
        step = self.points / 100
        return dense[metric] - step if higher_is_better else dense[metric] + step


def parse_floor(floor: str | float | Callable[[dict], float] | Floor) -> Floor:
    """`-1pt`, `0.95` (or a number), a callable or a Floor -> Floor; SlimkitError otherwise."""
    if isinstance(floor, Floor):
        return floor
    if callable(floor):
        return Floor(rule=floor)
    if isinstance(floor, (int, float)) and not isinstance(floor, bool):
        if not math.isfinite(floor):
            raise SlimkitError(f"floor {floor!r} is not a number; {FLOOR_HELP}")
        return Floor(absolute=float(floor))
    text = str(floor)
    m = _POINTS.match(text)
    if m:
        return Floor(points=float(m.group(1)))
    try:
        value = float(text)
    except ValueError:
        raise SlimkitError(f"cannot read floor {text!r}; {FLOOR_HELP}") from None
    if not math.isfinite(value):
        raise SlimkitError(f"floor {text!r} is not a number; {FLOOR_HELP}")
    return Floor(absolute=value)


def _checked_target(text: str) -> str:
    parse_target(text)
    return text


def _checked_floor(floor: str | float) -> str | float:
    parse_floor(floor)
    return floor


# Setting fields that hold a target or a floor as written (the recipe keeps the text), checked on input
TargetText = Annotated[str, AfterValidator(_checked_target)]
FloorText = Annotated[str | float, AfterValidator(_checked_floor)]


class CompressSettings(BaseModel):
    """Every setting of one `compress` run; the JSON of this model is the run's recipe (report.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: TargetText = Field("latency=0.5x", description="latency=0.5x, macs=2x or params=2x")
    floor: FloorText = Field("-1pt", description="-1pt relative to dense, or an absolute validation metric")
    seed: int = Field(0, description="seed of every recovery and of the calibration batches")
    max_blocks: int | None = Field(None, ge=0, description="most whole blocks a mix removes (None: all removable)")
    ratios: tuple[float, ...] = Field((0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                      description="channel ratios tried per depth for a latency target")
    importance: str = Field("l2", description="channel importance: l1, l2, bn, taylor, entropy")
    round_to: int = Field(8, ge=1, description="kept channel counts of slimkit's structured pruner are multiples of "
                                               "this; 16 for int8 in ONNX Runtime on x86, whose convolutions run "
                                               "widths between multiples of 16 slower than fp32 (bench/int8_widths.py)")
    recovery: Literal["kd", "ce"] = Field("kd", description="the recovery loss, in the search and the full "
                                                            "recovery alike: 'kd' learns from the dense model "
                                                            "(alpha of KD, the rest the task's supervised loss); "
                                                            "'ce' is the task's supervised loss on labels alone "
                                                            "(the control that shows what KD adds; tasks with "
                                                            "labels only)")
    search_steps: int = Field(200, ge=0, description="optimizer steps recovering each candidate mix")
    recover_steps: int = Field(1000, ge=0, description="optimizer steps of the chosen mix's full recovery")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    temperature: float = Field(2.0, gt=0, description="KD temperature (logit tasks)")
    alpha: float = Field(0.5, ge=0, le=1, description="KD weight; 1 - alpha on the task's supervised loss")
    calib_batches: int = Field(8, ge=1, description="training batches for block influence and BatchNorm statistics")
    threads: int = Field(2, ge=1, description="torch threads for batch-1 timing")
    timing_rounds: int = Field(60, ge=1, description="alternating rounds of batch-1 timing")
    timing_passes: int = Field(3, ge=1, description="fresh timing processes (the fastest counts)")
    builder: str | None = Field(None, description="package.module:callable building the dense model, for models "
                                                  "that are neither slimkit's nor Hugging Face ones (save, reload, "
                                                  "fresh-process timing)")
    keep_slower: bool = Field(False, description="return (flagged) a result measured no faster instead of refusing")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < r < 1 for r in v):
            raise SlimkitError(f"ratios must be channel fractions in (0, 1), got {list(v)}")
        return tuple(sorted(set(v)))

    @property
    def parsed_target(self) -> Target:
        return parse_target(self.target)
