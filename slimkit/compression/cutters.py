"""How `compress` cuts a model and times it: small adapters over the pruners and timers slimkit has.

A `Cutter` knows, for one family of models, which whole blocks can go, how much each one matters
(block influence on calibration inputs) and how to remove a fraction of the channels; `compress`
only combines them. Two exist:

- `StructuredCutter`: slimkit's structured pruner (Torch-Pruning's dependency graph) for conv
  nets, slimkit's models and anything it supports; blocks are modules marked `removable`;
- `EncoderCutter` (the hf-encoder family, slimkit.families.hf_encoder): BERT- and ViT-style
  Hugging Face encoders and classifiers: FFN neurons by activation-aware importance with
  least-squares reconstruction, and the last layers as blocks.

Timing: `deciding_timer` is the fresh-process timer (slimkit.measure.fresh) when a child process
can rebuild the models (slimkit.compression.rebuild: slimkit's own, Hugging Face folders, or the
user's builder named "package.module:callable"), else the in-process interleaved timer; either way
the method is returned in words, for the report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.families.hf_encoder import EncoderCutter, is_encoder

if TYPE_CHECKING:
    from slimkit.compression.rebuild import Rebuild

Timer = Callable[[list[nn.Module]], list[float]]  # ms per model, all timed alike in one run


class Cutter(Protocol):
    """The surgery `compress` needs for one kind of model; see the module docstring."""

    name: str

    def blocks(self, model: nn.Module) -> list[str]:
        """Names of whole blocks that can be removed (their output has their input's shape)."""

    def influences(self, model: nn.Module, calib: list[Any]) -> dict[str, float]:
        """Per block, how much its removal changes what flows on (higher: keep it)."""

    def remove(self, model: nn.Module, names: list[str]) -> nn.Module:
        """A copy of `model` without the named blocks."""

    def cut(self, model: nn.Module, ratio: float, calib: list[Any],
            exact: bool = True) -> tuple[nn.Module, dict[str, list[int]]]:
        """A copy with `ratio` of the channels removed; per group [kept, of] widths. With
        exact=False only the shapes matter (a cost bisection): the cutter may skip weight work."""

    def intact(self, model: nn.Module) -> dict[str, dict[str, str]]:
        """What this cutter leaves whole in `model`, with the reason: {"modules": ..., "groups": ...}."""


@dataclass
class StructuredCutter:
    """slimkit's structured pruner; `example` is one input tensor, `importance` its channel score."""

    example: torch.Tensor
    importance: str = "l2"
    ignored: tuple[str, ...] | None = None
    name: str = "structured"
    labels: list[torch.Tensor] | None = None  # class labels of the calibration batches (Taylor importance)
    round_to: int = 8  # kept channel counts are multiples of this

    def blocks(self, model: nn.Module) -> list[str]:
        from slimkit.prune.layers import removable_blocks

        return sorted(removable_blocks(model))

    def influences(self, model: nn.Module, calib: list[Any]) -> dict[str, float]:
        from slimkit.prune.layers import block_influences

        return block_influences(model, [(x, None) for x in calib]) if self.blocks(model) else {}

    def remove(self, model: nn.Module, names: list[str]) -> nn.Module:
        from slimkit.prune.layers import remove_blocks

        return remove_blocks(copy.deepcopy(model), names)

    def cut(self, model: nn.Module, ratio: float, calib: list[Any],
            exact: bool = True) -> tuple[nn.Module, dict[str, list[int]]]:
        from slimkit.prune.batchnorm import recalibrate_bn
        from slimkit.prune.structured import prune_structured

        pairs = list(zip(calib, self.labels)) if self.labels else [(x, None) for x in calib]
        res = prune_structured(copy.deepcopy(model), self.example, ratio, self.importance if exact else "l2",
                               calib=pairs if exact else None, ignored=self.ignored, round_to=self.round_to)
        pruned = recalibrate_bn(res.model, calib) if ratio > 0 and exact else res.model
        return pruned.eval(), {g: [k, n] for g, (k, n) in res.kept.items()}

    def intact(self, model: nn.Module) -> dict[str, dict[str, str]]:
        """The modules the structured pruner keeps whole (an LSTM, an ignored layer...) and the channel
        groups held whole because they are coupled to one, each with the reason."""
        from slimkit.prune.structured import build_graph

        graph = build_graph(copy.deepcopy(model), _batch_one(self.example), self.ignored)
        return {"modules": dict(graph.kept_intact), "groups": dict(graph.held)}


# -- timing --------------------------------------------------------------------------------------
def can_time_fresh(plan: Rebuild, example: Any) -> bool:
    """Whether a child process can rebuild the model (slimkit's own, "hf", or a builder it can import
    by name) and feed it `example` (one tensor, or a dict, tuple or list of tensors)."""
    from slimkit.measure.fresh import sendable

    return sendable(example) and plan.fresh


def deciding_timer(model: nn.Module, example: Any, threads: int = 2, rounds: int = 60,
                   passes: int = 3, plan: Rebuild | None = None) -> tuple[Timer, str]:
    """The timer that decides whether a cut pays, and its method in words.

    Fresh processes loading saved checkpoints (with OpenMP spinning) when the child can rebuild the
    model (`plan`, default: what slimkit.compression.rebuild.plan_rebuild says without a builder);
    otherwise this process, interleaved, fastest of `rounds` warm bursts, and the method says why.
    The in-process timer is the quick one: a process that has trained runs the same model
    measurably slower than a new one, by an amount that varies (slimkit.measure.fresh).
    """
    from slimkit.compression.rebuild import plan_rebuild
    from slimkit.measure import measure_latency_interleaved
    from slimkit.measure.fresh import describe, time_in_fresh_processes

    plan = plan or plan_rebuild(model)
    one = _batch_one(example)
    if can_time_fresh(plan, example):
        def fresh(models: list[nn.Module]) -> list[float]:
            times = time_in_fresh_processes(models, one, ["nchw"], rounds, threads, fold=True, passes=passes,
                                            log=False, builder=plan.spec, kwargs=plan.kwargs)
            return [t["nchw"] for t in times]
        rebuilt = {"hf": "Hugging Face folders", "slimkit": "slimkit checkpoints"}.get(
            plan.kind, f"checkpoints rebuilt with builder {plan.spec}")
        return fresh, describe(rounds, threads, True, passes, 1) + f", NCHW, {rebuilt}"

    def here(models: list[nn.Module]) -> list[float]:
        res = measure_latency_interleaved([copy.deepcopy(m).eval() for m in models], one, runs=rounds, warmup=5,
                                          threads=threads, stat="min")
        return [r.ms for r in res]
    from slimkit.measure.fresh import sendable

    why = plan.why_not_fresh if sendable(example) else "its inputs are not tensors with one batch dimension"
    return here, (f"in this process, because {why}: alternating {rounds} rounds x 4 warm calls per model, fastest "
                  f"round, {threads} threads, batch 1, BatchNorm not folded; less trustworthy than fresh processes")


def _batch_one(example: Any) -> Any:
    from slimkit.distill.train_data import head

    return head(example, 1)


def check_cuttable(cutter: Cutter, model: nn.Module, calib: list[Any]) -> None:
    """Fail early, in one line, when the cutter cannot cut this model at all."""
    try:
        cutter.cut(model, 0.25, calib, exact=False)
    except SlimkitError as exc:
        raise SlimkitError(f"slimkit cannot cut {type(model).__name__}: {exc}") from None


__all__ = ["Cutter", "EncoderCutter", "StructuredCutter", "Timer", "can_time_fresh", "check_cuttable", "deciding_timer",
           "is_encoder"]
