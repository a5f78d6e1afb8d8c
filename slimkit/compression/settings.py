"""What `compress` aims for and what it must keep: targets, floors and every setting, as one recipe.

A target says how much cheaper the result must be, as a ratio to the dense model:

- `latency=0.5x`: at most half the dense model's measured batch-1 latency, on this machine;
- `macs=2x`: at least 2x fewer multiply-accumulates (`macs=0.5x` reads the same: a fraction is a
  share of the dense cost, a number above 1 a reduction factor);
- `params=2x` / `params=0.5x`: the same for the parameter count.

A floor says how good the result must stay on the validation split, in the task metric's own
direction (accuracy up, CER down, cosine up). Without a metric name it is on the task's first
metric:

- `-1pt`: at most 1 point (0.01 of a fraction metric) worse than the dense model;
- `0.95`: an absolute value of the metric (accuracy 0.95, cosine 0.95, CER 0.05...);
- a callable `floor(dense_metrics: dict) -> float`, for anything else (Python API only).

Or it names the metric it is on, written the way that metric gets worse:

- `accuracy-1pt`, `cer+1pt`, `wer+2pt`: N points worse than the dense model (`-` for a metric
  that is better higher, `+` for one that is better lower);
- `ppl<=1.25x`, `cosine>=0.95x`: a multiple of the dense value (above 1 for a lower-better
  metric, below 1 for a higher-better one);
- `cosine>=0.95`, `cer<=0.05`: an absolute value (`>=` higher-better, `<=` lower-better).

Metric names are the task's (accuracy, macro_f1, cer, perplexity, token_accuracy, cosine,
nn_agreement...), with the aliases acc, f1 and ppl. A floor pointing the better way, or a
multiple that asks for no loss, is refused when parsed; a metric the task does not measure, by
`floor_metric` before any work of `compress`.

Strings are parsed before any work starts, so a typo costs one error line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from slimkit.errors import SlimkitError

if TYPE_CHECKING:
    from slimkit.distill.tasks import Metric, Task

TARGET_KINDS = ("latency", "macs", "params")
_TARGET = re.compile(r"^\s*(latency|macs|params)\s*=\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*x?\s*$", re.IGNORECASE)
_POINTS = re.compile(r"^\s*-\s*([0-9]*\.?[0-9]+)\s*pt\s*$", re.IGNORECASE)
_NUM = r"[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?"
_NAMED = re.compile(rf"^\s*(?P<metric>[a-z_][a-z0-9_]*)\s*(?:(?P<sign>[-+])\s*(?P<points>{_NUM})\s*pt"
                    rf"|(?P<bound><=|>=)\s*(?P<value>-?{_NUM})\s*(?P<x>x)?)\s*$", re.IGNORECASE)
METRIC_ALIASES = {"ppl": "perplexity", "acc": "accuracy", "f1": "macro_f1"}
# The direction of the metrics slimkit's tasks (and speech's WER) measure: a named floor on one of these is
# checked when parsed; one on any other metric, against the task's Metric in floor_metric
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "token_accuracy": True, "cosine": True,
                    "nn_agreement": True, "cer": False, "wer": False, "perplexity": False}
# A looser floor to suggest when none held, written on the metric the floor was on (its own vocabulary)
LOOSER_FLOOR = {"perplexity": "ppl<=1.5x", "cosine": "cosine>=0.9", "wer": "wer+5pt", "cer": "cer+3pt"}


def looser_floor(metric: str) -> str:
    """An example of a looser floor on `metric`, for refusals: `wer+5pt` on WER, `-3pt` on accuracy."""
    return LOOSER_FLOOR.get(METRIC_ALIASES.get(metric, metric), "-3pt" if HIGHER_IS_BETTER.get(metric, True)
                            else f"{metric}+3pt")


TARGET_HELP = "write the target as latency=0.5x (half the dense latency), macs=2x or params=2x (2x fewer)"
FLOOR_HELP = ("write the floor as -1pt (1 point below the dense model), an absolute metric value such as 0.95, or "
              "on a named metric: accuracy-1pt / cer+1pt (points), ppl<=1.25x (a multiple of dense), "
              "cosine>=0.95 (absolute)")


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


def _num(v: float) -> str:
    """A number as the shortest text that reads back to the same float (2.0 -> '2')."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Floor:
    """The least validation score a cut may have: `points` below dense, an `absolute` value, `multiple`
    times the dense value, or `rule`.

    `metric` is the metric it is on (None: the task's first metric); `bound` is the side it bounds,
    as written: '>=' a least value (a higher-better metric), '<=' a most value (a lower-better one).
    Named floors on metrics of known direction get `bound` from that direction when it is left out.
    """

    points: float | None = None
    absolute: float | None = None
    rule: Callable[[dict], float] | None = None
    metric: str | None = None
    multiple: float | None = None
    bound: Literal["<=", ">="] | None = None

    def __post_init__(self) -> None:
        if self.bound not in (None, "<=", ">="):
            raise SlimkitError(f"Floor bound must be '>=' (higher is better) or '<=' (lower is better), "
                               f"got {self.bound!r}")
        if self.metric is None:
            if self.bound is not None or self.multiple is not None:
                raise SlimkitError("a Floor with a bound or a multiple names its metric, e.g. "
                                   "Floor(multiple=1.25, metric='perplexity')")
            return
        name = METRIC_ALIASES.get(self.metric.lower(), self.metric.lower())
        object.__setattr__(self, "metric", name)
        if self.bound is None and self.rule is None:
            if name not in HIGHER_IS_BETTER:
                raise SlimkitError(f"slimkit does not know which way {name} improves: give the Floor bound='>=' "
                                   f"(higher is better) or bound='<=' (lower is better)")
            object.__setattr__(self, "bound", ">=" if HIGHER_IS_BETTER[name] else "<=")

    @property
    def text(self) -> str:
        """The floor as written, in canonical form (reads back to an equal Floor)."""
        name = self.metric or ""
        if self.rule is not None:
            return f"callable {getattr(self.rule, '__name__', 'floor')}" + (f" on {name}" if name else "")
        if self.points is not None:
            return f"{name}{'+' if self.bound == '<=' else '-'}{_num(self.points)}pt"
        if self.multiple is not None:
            return f"{name}{self.bound}{_num(self.multiple)}x"
        if name:
            return f"{name}{self.bound}{_num(self.absolute)}"
        return _num(self.absolute)

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
        if self.multiple is not None:
            return dense[metric] * self.multiple
        step = self.points / 100
        return dense[metric] - step if higher_is_better else dense[metric] + step


def _check_direction(floor: Floor, higher_is_better: bool, written: str | None = None,
                     spelled: str | None = None) -> None:
    """Refuse a named floor that points the better way, or a multiple that asks for no loss. Messages quote
    `written` (default: the floor's text) and spell the metric in fixes as `spelled` (as the user did)."""
    name, text = floor.metric, written if written is not None else floor.text
    if floor.bound is None or floor.rule is not None:
        return

    def as_written(fixed: Floor) -> str:
        return (spelled or name) + fixed.text[len(name):]

    def multiple_example() -> str:
        return as_written(replace(floor, multiple=0.95 if higher_is_better else 1.25))

    rises = "rises" if higher_is_better else "falls"
    if floor.multiple is not None and floor.multiple <= 0:
        raise SlimkitError(f"floor {text!r} multiplies the dense {name} by {_num(floor.multiple)}; a multiple is "
                           f"a positive number, e.g. {multiple_example()}")
    if floor.bound != (">=" if higher_is_better else "<="):
        flipped = "<=" if floor.bound == ">=" else ">="
        if floor.points is not None:
            fix = as_written(replace(floor, bound=flipped))
            raise SlimkitError(f"floor {text!r} asks the cut to beat the dense {name} by {_num(floor.points)} "
                               f"point{'' if floor.points == 1 else 's'}, but {name} improves as it {rises}, so a "
                               f"floor lets it {'fall' if higher_is_better else 'rise'}: write {fix}")
        multiple = floor.multiple
        if multiple == 1:
            multiple = 0.95 if higher_is_better else 1.25
        elif multiple is not None and (multiple > 1) != (not higher_is_better):
            multiple = float(f"{1 / multiple:.4g}")  # the same loss, as the multiple on the right side of 1
        fix = as_written(replace(floor, bound=flipped, multiple=multiple))
        raise SlimkitError(f"floor {text!r} bounds {name} from {'above' if floor.bound == '<=' else 'below'}, but "
                           f"{name} improves as it {rises}: a floor is its "
                           f"{'least' if higher_is_better else 'most'} acceptable value: write {fix}")
    if floor.multiple is not None and (floor.multiple >= 1 if higher_is_better else floor.multiple <= 1):
        raise SlimkitError(f"floor {text!r} asks for a {name} {'at least' if higher_is_better else 'at most'} "
                           f"{_num(floor.multiple)}x the dense model's, which is no loss at all or a gain: a cut is "
                           f"not asked to improve; allow a loss with a multiple "
                           f"{'below' if higher_is_better else 'above'} 1, e.g. {multiple_example()}")


def example_floor(metric: str, higher_is_better: bool) -> str:
    """A floor to show in a message for `metric`: ppl<=1.25x, cer+1pt, accuracy-1pt..."""
    if metric == "perplexity":
        return "ppl<=1.25x"
    return f"{metric}-1pt" if higher_is_better else f"{metric}+1pt"


def parse_floor(floor: str | float | Callable[[dict], float] | Floor) -> Floor:
    """`-1pt`, `0.95` (or a number), `METRIC-Npt` / `METRIC+Npt`, `METRIC<=Kx` / `METRIC>=Kx`,
    `METRIC>=V` / `METRIC<=V`, a callable or a Floor -> Floor; SlimkitError otherwise (see the module
    docstring). A named floor on a metric of known direction is checked against it here."""
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
    m = _NAMED.match(text)
    if m:
        return _named_floor(text, m)
    try:
        value = float(text)
    except ValueError:
        raise SlimkitError(f"cannot read floor {text!r}; {FLOOR_HELP}") from None
    if not math.isfinite(value):
        raise SlimkitError(f"floor {text!r} is not a number; {FLOOR_HELP}")
    return Floor(absolute=value)


def _named_floor(text: str, m: re.Match) -> Floor:
    name = METRIC_ALIASES.get(m["metric"].lower(), m["metric"].lower())
    number = float(m["points"] if m["points"] is not None else m["value"])
    if not math.isfinite(number):
        raise SlimkitError(f"floor {text!r} is not a number; {FLOOR_HELP}")
    if m["points"] is not None:
        out = Floor(points=number, metric=name, bound="<=" if m["sign"] == "+" else ">=")
    elif m["x"]:
        out = Floor(multiple=number, metric=name, bound=m["bound"])  # type: ignore[arg-type]
    else:
        out = Floor(absolute=number, metric=name, bound=m["bound"])  # type: ignore[arg-type]
    if name in HIGHER_IS_BETTER:
        _check_direction(out, HIGHER_IS_BETTER[name], text.strip(), m["metric"])
    return out


def floor_metric(floor: Floor, task: Task) -> Metric:
    """The task Metric `floor` is on (the task's first metric when it names none); SlimkitError when the
    task has no metrics, does not measure the named one, or the floor points that metric's better way."""
    if not task.metrics:
        raise SlimkitError(f"the {task.name} task has no validation metric; a floor needs one (give the task metrics)")
    if floor.metric is None:
        return task.metrics[0]
    metric = next((m for m in task.metrics if m.name.lower() == floor.metric), None)
    if metric is None:
        first = task.metrics[0]
        raise SlimkitError(f"floor {floor.text!r} is on {floor.metric}, which the {task.name} task does not measure: "
                           f"the {task.name} task measures {', '.join(m.name for m in task.metrics)}; write e.g. "
                           f"{example_floor(first.name, first.higher_is_better)}")
    _check_direction(floor, metric.higher_is_better)
    return metric


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
    floor: FloorText = Field("-1pt", description="-1pt relative to dense, an absolute validation metric (0.95), "
                                                   "or on a named metric: accuracy-1pt, cer+1pt, ppl<=1.25x, "
                                                   "cosine>=0.95")
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
