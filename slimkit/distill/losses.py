"""Distillation losses as pure functions of tensors, plus `Term`, the weighted recipe entry.

Every function here takes student and teacher tensors and returns a scalar; none holds state, so
they can be tested against their definitions and combined freely. Learned pieces (the FitNets
adapter that maps a student's width onto the teacher's) live in `features.py`, not here.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from slimkit.errors import SlimkitError


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    The T^2 factor keeps the soft-target gradient on the same scale as cross-entropy as T changes
    (Hinton et al., 2015). Sequence logits (N, L, V) are averaged per position.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    vocab = student_logits.shape[-1]
    log_p_student = F.log_softmax(student_logits.reshape(-1, vocab) / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.reshape(-1, vocab).to(student_logits.dtype) / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature * temperature


def soft_target_kl_topk(
    student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL over the teacher's top-k classes only, for vocabularies too large to cache in full.

    T^2 * sum_k p_t(k) (log p_t(k) - log p_s(k)), averaged over samples (and positions), with p_t
    the softmax of the teacher's k kept logits / T (renormalised over them) and log p_s the
    student's full-vocabulary log-softmax / T read at those k indices, so mass the student puts
    elsewhere is still penalised. With k = V it is exactly `soft_target_kl`. (Cross-entropy
    -sum p_t log p_s has the same gradient but is larger by the teacher's entropy, so its value is
    not a divergence and is not 0 when the student matches the teacher.)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1).gather(-1, teacher_indices.long())
    log_p_teacher = F.log_softmax(teacher_values.to(student_logits.dtype) / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * temperature * temperature


def hard_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the ground-truth labels (the classic supervised term)."""
    return F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """alpha * T^2 * KL(soft teacher || soft student) + (1 - alpha) * CE(student, labels)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = soft_target_kl(student_logits, teacher_logits, temperature) if alpha > 0 else student_logits.new_zeros(())
    hard = F.cross_entropy(student_logits, labels) if alpha < 1 else student_logits.new_zeros(())
    return alpha * soft + (1.0 - alpha) * hard


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between raw logits (Ba & Caruana's regression of logits)."""
    return F.mse_loss(student_logits, teacher_logits.to(student_logits.dtype))


def match_spatial(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Resize a (N, C, H, W) teacher map to the student's H x W by average pooling or interpolation."""
    if teacher_feat.dim() == 4 and teacher_feat.shape[-2:] != student_feat.shape[-2:]:
        th, tw = teacher_feat.shape[-2:]
        sh, sw = student_feat.shape[-2:]
        if th >= sh and tw >= sw:
            return F.adaptive_avg_pool2d(teacher_feat, (sh, sw))
        return F.interpolate(teacher_feat, size=(sh, sw), mode="bilinear", align_corners=False)
    return teacher_feat


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint: MSE between the (adapted) student feature and the teacher's feature.

    Width differences are the adapter's job; the caller passes the student feature already mapped to
    the teacher's channel count. Spatial differences are resolved here.
    """
    teacher_feat = match_spatial(student_feat, teacher_feat)
    if student_feat.shape != teacher_feat.shape:
        raise SlimkitError(f"hint shapes differ: student {tuple(student_feat.shape)} vs teacher {tuple(teacher_feat.shape)}")
    return F.mse_loss(student_feat, teacher_feat.to(student_feat.dtype))


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: mean_c |f|^p, flattened and L2-normalised per sample.

    For (N, C, H, W) maps the attention is over positions; for (N, L, D) token features, over tokens.
    """
    if feat.dim() == 4:
        a = feat.abs().pow(p).mean(1)
    elif feat.dim() == 3:
        a = feat.abs().pow(p).mean(-1)
    else:
        raise SlimkitError(f"attention transfer needs (N, C, H, W) or (N, L, D) features, got shape {tuple(feat.shape)}")
    return F.normalize(a.reshape(a.shape[0], -1).float(), dim=1)


def attention_transfer(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean squared distance between normalised attention maps; channel counts may differ freely."""
    teacher_feat = match_spatial(student_feat, teacher_feat)
    a_s, a_t = attention_map(student_feat, p), attention_map(teacher_feat, p)
    if a_s.shape != a_t.shape:
        raise SlimkitError(f"attention maps differ in size: student {tuple(a_s.shape)} vs teacher {tuple(a_t.shape)}")
    return (a_s - a_t).pow(2).sum(1).mean()


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """MSE between hidden states divided by the teacher's mean square: scale-free, so its weight
    means the same for models whose hidden states differ in magnitude."""
    if student_hidden.shape != teacher_hidden.shape:
        raise SlimkitError(f"hidden states differ: student {tuple(student_hidden.shape)} vs teacher {tuple(teacher_hidden.shape)}")
    t = teacher_hidden.float()
    return F.mse_loss(student_hidden.float(), t) / t.pow(2).mean().clamp_min(1e-8)


def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity along the last dimension, averaged over all positions (transformers).

    Like `hint_loss`, the student side is expected to be adapted to the teacher's width already.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise SlimkitError(f"hidden states differ: student {tuple(student_hidden.shape)} vs teacher {tuple(teacher_hidden.shape)}")
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return (1.0 - cos).mean()


TermKind = Literal["kd", "ce", "logit_mse", "cosine", "hint", "attention", "hidden_cosine", "hidden_mse"]
OUTPUT_KINDS = ("kd", "ce", "logit_mse", "cosine")
FEATURE_KINDS = ("hint", "attention", "hidden_cosine", "hidden_mse")
ADAPTED_KINDS = ("hint", "hidden_cosine", "hidden_mse")


@dataclass(frozen=True)
class Term:
    """One weighted loss in a distillation recipe.

    Output terms read what the task's `view` gives (logits, sequence logits, a pooled embedding):
    "kd" (soft-target KL), "ce" (the task's supervised loss: cross-entropy, CTC, next-token CE),
    "logit_mse", "cosine" (1 - cos, for embeddings). Feature terms ("hint", "attention",
    "hidden_cosine", "hidden_mse") read the modules named by `student_layer` and `teacher_layer`.
    """

    kind: TermKind
    weight: float = 1.0
    temperature: float = 4.0
    student_layer: str | None = None
    teacher_layer: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS + FEATURE_KINDS:
            raise SlimkitError(f"unknown loss kind {self.kind!r}; choose one of {', '.join(OUTPUT_KINDS + FEATURE_KINDS)}")
        if self.weight < 0:
            raise SlimkitError(f"loss weight must be >= 0, got {self.weight} for {self.kind}")
        if self.kind == "kd" and self.temperature <= 0:
            raise SlimkitError(f"temperature must be > 0, got {self.temperature}")
        if self.kind in FEATURE_KINDS and not (self.student_layer and self.teacher_layer):
            raise SlimkitError(f"{self.kind} needs student_layer and teacher_layer, e.g. Term('{self.kind}', 1.0, "
                               f"student_layer='conv2', teacher_layer='conv2')")

    @property
    def name(self) -> str:
        return self.kind if self.kind in OUTPUT_KINDS else f"{self.kind}:{self.student_layer}<-{self.teacher_layer}"

    @property
    def needs_teacher(self) -> bool:
        return self.kind != "ce"


def kd(weight: float = 1.0, temperature: float = 4.0) -> Term:
    return Term("kd", weight, temperature)


def ce(weight: float = 1.0) -> Term:
    return Term("ce", weight)


def cosine(weight: float = 1.0) -> Term:
    return Term("cosine", weight)


def hint(student_layer: str, teacher_layer: str, weight: float = 1.0) -> Term:
    return Term("hint", weight, student_layer=student_layer, teacher_layer=teacher_layer)


def attention(student_layer: str, teacher_layer: str, weight: float = 1.0) -> Term:
    return Term("attention", weight, student_layer=student_layer, teacher_layer=teacher_layer)


def hinton(temperature: float = 4.0, alpha: float = 0.9) -> list[Term]:
    """The classic recipe as terms: alpha * KD + (1 - alpha) * CE."""
    if not 0.0 <= alpha <= 1.0:
        raise SlimkitError(f"alpha must be in [0, 1], got {alpha}")
    return [t for t in (Term("kd", alpha, temperature), Term("ce", 1.0 - alpha)) if t.weight > 0]


def at_positions(t: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The rows of a (N, T, ...) tensor at the True positions of an (N, T) mask; other tensors
    (a pooled (N, D) embedding, or any shape the mask does not lead) are returned as they are."""
    if t is None or mask is None or t.dim() <= mask.dim() or t.shape[:mask.dim()] != mask.shape:
        return t
    return t[mask]


def combine(
    terms: list[Term],
    student_out: torch.Tensor,
    labels: object,
    teacher_out: torch.Tensor | None = None,
    teacher_topk: torch.Tensor | None = None,
    student_feats: dict[str, torch.Tensor] | None = None,
    teacher_feats: dict[str, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
    supervised=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of `terms` and each term's unweighted value (for logging).

    `teacher_out` holds dense outputs, or top-k values when `teacher_topk` gives their indices.
    Feature dicts are keyed by `features.adapter_key(student_layer, teacher_layer)` on the student
    side (already adapted) and by teacher path on the teacher side. `mask` (N, T) keeps padding out
    of every per-position comparison; `supervised(view, labels, mask)` is what "ce" means for the
    task (plain cross-entropy when None).
    """
    from slimkit.distill.features import adapter_key

    parts: dict[str, torch.Tensor] = {}
    total = student_out.new_zeros((), dtype=torch.float32)
    s_pos, t_pos, i_pos = (at_positions(t, mask) for t in (student_out, teacher_out, teacher_topk))
    for term in terms:
        if term.kind == "ce":
            if labels is None:
                raise SlimkitError("the 'ce' term needs labels (targets) in the batches")
            value = supervised(student_out, labels, mask) if supervised is not None else hard_ce(student_out, labels)
        elif term.kind in ("kd", "logit_mse", "cosine"):
            if teacher_out is None:
                raise SlimkitError(f"the {term.kind!r} term needs teacher outputs")
            if term.kind != "kd" and teacher_topk is not None:
                raise SlimkitError(f"{term.kind} needs full teacher outputs; build the cache without topk")
            if term.kind == "logit_mse":
                value = logit_mse(s_pos, t_pos)
            elif term.kind == "cosine":
                value = hidden_cosine(s_pos, t_pos.to(s_pos.dtype))
            elif teacher_topk is not None:
                value = soft_target_kl_topk(s_pos, t_pos, i_pos, term.temperature)
            else:
                value = soft_target_kl(s_pos, t_pos, term.temperature)
        else:
            keep = None if term.kind == "attention" else mask  # attention maps normalise over all positions
            s = at_positions((student_feats or {})[adapter_key(term.student_layer, term.teacher_layer)], keep)
            t = at_positions((teacher_feats or {})[term.teacher_layer], keep)
            fn = {"hint": hint_loss, "attention": attention_transfer, "hidden_cosine": hidden_cosine,
                  "hidden_mse": hidden_mse}[term.kind]
            value = fn(s, t.detach())
        parts[term.name] = value.detach()
        total = total + term.weight * value.float()
    return total, parts
