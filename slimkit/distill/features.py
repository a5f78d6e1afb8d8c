"""Intermediate features by module path, through forward hooks, and the FitNets width adapters.

The user's model is never edited: a hook on the named submodule records its output for the current
forward pass, and `remove()` leaves the model exactly as it was. Adapters (1x1 conv for image maps,
linear for token/vector features) map the student's width onto the teacher's so a hint can compare
them; they are trained with the student and saved in its checkpoints, but are not part of it.
"""

import difflib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError


def resolve_module(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """The submodule at dotted `path`; an unknown path is an error that lists the nearest names."""
    names = dict(model.named_modules())
    if path in names:
        return names[path]
    near = difflib.get_close_matches(path, [n for n in names if n], n=5, cutoff=0.4)
    hint = f"nearest names: {', '.join(near)}" if near else f"some names: {', '.join([n for n in names if n][:8])}"
    raise SlimkitError(f"the {role} ({type(model).__name__}) has no module {path!r}; {hint}")


def first_tensor(output: object) -> torch.Tensor:
    """The tensor a module produced: itself, or the first tensor of a tuple/ModelOutput (HF layers)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise SlimkitError(f"a hooked module returned {type(output).__name__} with no tensor in it")


class FeatureTap:
    """Records the outputs of named submodules during forward passes.

    Read `features[path]` after a forward; `clear()` drops references so activations are freed.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], role: str = "model") -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in dict.fromkeys(paths):
            module = resolve_module(model, path, role)
            self._handles.append(module.register_forward_hook(self._recorder(path)))

    def _recorder(self, path: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            self.features[path] = first_tensor(output)
        return hook

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()


def make_adapter(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> nn.Module:
    """Identity where widths agree; else a bias-free 1x1 conv (N, C, H, W) or linear (..., D)."""
    if student_feat.dim() == 4:
        cs, ct = student_feat.shape[1], teacher_feat.shape[1]
        return nn.Identity() if cs == ct else nn.Conv2d(cs, ct, kernel_size=1, bias=False)
    cs, ct = student_feat.shape[-1], teacher_feat.shape[-1]
    return nn.Identity() if cs == ct else nn.Linear(cs, ct, bias=False)


def adapter_key(student_layer: str, teacher_layer: str) -> str:
    """A ModuleDict-safe name for the adapter between two paths (dots are not allowed there)."""
    return f"{student_layer}__{teacher_layer}".replace(".", "_")


class StudentBundle(nn.Module):
    """The student plus its adapters, as one module, so one optimizer and one DDP wrapper cover both.

    `forward(inputs)` calls the student as `call(student, inputs)` (the task's calling convention)
    and returns its output and a dict of adapted features keyed by adapter name. Running the
    adapters inside forward matters under DistributedDataParallel, which expects every trained
    parameter to take part in the wrapped forward pass.
    """

    def __init__(self, student: nn.Module, pairs: list[tuple[str, str, bool]],
                 call: Callable[[nn.Module, Any], Any] | None = None) -> None:
        super().__init__()
        self.student = student
        self._call = call or (lambda model, x: model(x))
        self.adapters = nn.ModuleDict()
        self._pairs = pairs  # (student_layer, teacher_layer, adapted)
        for s, _, _ in pairs:
            resolve_module(student, s, "student")  # fail at construction, not mid-run
        self.tap: FeatureTap | None = None

    def attach_hooks(self) -> None:
        """Hook the student's layers; `detach_hooks` leaves the user's model as it was."""
        if self._pairs and self.tap is None:
            self.tap = FeatureTap(self.student, [s for s, _, _ in self._pairs], "student")

    def build_adapters(self, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor]) -> None:
        """Create adapters from one probe batch's feature shapes (before the optimizer exists)."""
        for s, t, adapted in self._pairs:
            key = adapter_key(s, t)
            if adapted and key not in self.adapters:
                self.adapters[key] = make_adapter(student_feats[s], teacher_feats[t])

    def forward(self, inputs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        out = self._call(self.student, inputs)
        feats: dict[str, torch.Tensor] = {}
        if self.tap is not None:
            for s, t, _adapted in self._pairs:
                key = adapter_key(s, t)
                f = self.tap.features[s]
                feats[key] = self.adapters[key](f) if key in self.adapters else f
            self.tap.clear()
        return out, feats

    def detach_hooks(self) -> None:
        if self.tap is not None:
            self.tap.remove()
            self.tap = None
