"""`DistillationTrainer`: slimkit's loss terms inside a Hugging Face `transformers.Trainer`.

For users whose training already runs on `Trainer` (its data collators, its schedulers, accelerate,
its checkpoints), this subclass only replaces `compute_loss`: the frozen teacher runs on the same
batch and the student is trained on the weighted `Term`s through the same `combine` (the same
pure losses and the same padding mask) as `Distiller`, with features picked by module path.
`Distiller` itself takes the same dict batches (a DataLoader with an HF collator) with the
`causal_lm()` or a dict-batch task, and adds kill -9 resume and the NaN guard. Width adapters for "hint"/"hidden_cosine" are built from one probe forward pass and
added to the optimizer as their own parameter group.

Positions where `attention_mask` is 0 (padding) are excluded from the KD and logit terms; "ce"
uses the model's own loss (`outputs.loss`), which already shifts labels for causal LMs and ignores
label -100.
"""

import os
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer

from slimkit.distill.features import FeatureTap, adapter_key, make_adapter
from slimkit.distill.losses import ADAPTED_KINDS, FEATURE_KINDS, Term, combine
from slimkit.distill.tasks import attention_mask
from slimkit.errors import SlimkitError

ADAPTERS_FILE = "slimkit_adapters.safetensors"


class DistillationTrainer(Trainer):
    """`Trainer(model=student, ...)` plus `teacher=` and `losses=` (a list of `Term`).

    `probe_inputs` is one small batch (default: 4 token ids) used to learn feature shapes. Adapter
    weights are kept in `self.adapters` and saved beside every HF checkpoint as
    `slimkit_adapters.safetensors`, so `train(resume_from_checkpoint=...)` resumes them too (their
    optimizer state travels in the Trainer's own optimizer file, as its last parameter group).
    Under multi-process HF training their gradients are not averaged across ranks (use `Distiller`
    for multi-process feature distillation).
    """

    def __init__(self, *args: Any, teacher: nn.Module, losses: Sequence[Term],
                 probe_inputs: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.terms = list(losses)
        if not self.terms:
            raise SlimkitError("give at least one loss term, e.g. losses=hinton(2.0, 0.5)")
        pairs = list(dict.fromkeys((t.student_layer, t.teacher_layer, t.kind in ADAPTED_KINDS)
                                   for t in self.terms if t.kind in FEATURE_KINDS))
        self._pairs = pairs
        self.student_tap = FeatureTap(self.model, [s for s, _, _ in pairs], "student") if pairs else None
        self.teacher_tap = FeatureTap(self.teacher, [t for _, t, _ in pairs], "teacher") if pairs else None
        self.adapters = nn.ModuleDict()
        if pairs:
            self._build_adapters(probe_inputs or {"input_ids": torch.ones(1, 4, dtype=torch.long)})

    @torch.no_grad()
    def _build_adapters(self, probe: dict[str, torch.Tensor]) -> None:
        probe = {k: v.to(self.args.device) for k, v in probe.items()}
        was = self.model.training
        self.model.eval()
        self.model(**probe)
        self.teacher(**probe)
        self.model.train(was)
        for s, t, adapted in self._pairs:
            key = adapter_key(s, t)
            if adapted:
                self.adapters[key] = make_adapter(self.student_tap.features[s], self.teacher_tap.features[t])
        self.adapters.to(self.args.device)
        self.student_tap.clear()
        self.teacher_tap.clear()

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(*(() if model is None else (model,)))
        already = {id(p) for g in optimizer.param_groups for p in g["params"]}
        named = [(n, p) for n, p in self.adapters.named_parameters() if p.requires_grad and id(p) not in already]
        # The Trainer's own grouping rule: weights decay, biases do not (create_optimizer may run twice).
        decay = [p for n, p in named if not n.endswith("bias")]
        no_decay = [p for n, p in named if n.endswith("bias")]
        for params, wd in ((decay, self.args.weight_decay), (no_decay, 0.0)):
            if params:
                optimizer.add_param_group({"params": params, "weight_decay": wd})
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if len(self.adapters) and self.args.should_save:
            folder = output_dir if output_dir is not None else self.args.output_dir
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.adapters.state_dict().items()}
            save_file(tensors, os.path.join(folder, ADAPTERS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not len(self.adapters):
            return
        path = os.path.join(resume_from_checkpoint, ADAPTERS_FILE)
        if not os.path.isfile(path):
            raise SlimkitError(f"{resume_from_checkpoint} has no {ADAPTERS_FILE}: it was not written by "
                               "DistillationTrainer with these feature terms; resume from one that was, or start afresh")
        state = load_file(path)
        mine = self.adapters.state_dict()
        if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
            raise SlimkitError(f"{path} holds adapters for other feature terms; resume with the terms it was "
                               "written with, or start afresh")
        self.adapters.load_state_dict(state)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(**inputs)
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            t_logits = self.teacher(**teacher_inputs).logits
        s_feats, t_feats = {}, {}
        if self.student_tap is not None:
            for s, t, _ in self._pairs:
                key = adapter_key(s, t)
                f = self.student_tap.features[s]
                s_feats[key] = self.adapters[key](f) if key in self.adapters else f
                t_feats[t] = self.teacher_tap.features[t]
            self.student_tap.clear()
            self.teacher_tap.clear()
        mask = attention_mask(inputs)  # padded positions are left out of KD and feature terms, as in Distiller
        logit_terms = [t for t in self.terms if t.kind != "ce"]
        loss, _parts = (combine(logit_terms, outputs.logits, None, t_logits, None, s_feats, t_feats, mask)
                        if logit_terms else (0.0, {}))
        for term in self.terms:
            if term.kind == "ce":
                if outputs.loss is None:
                    raise SlimkitError("the 'ce' term needs `labels` in the batch so the model computes its loss")
                loss = loss + term.weight * outputs.loss
        return (loss, outputs) if return_outputs else loss

    def remove_hooks(self) -> None:
        """Take slimkit's hooks off both models (training with this trainer then stops working)."""
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()
