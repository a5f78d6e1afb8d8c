"""Tasks: what a batch means, which outputs the losses compare, and how a run is validated.

`Distiller` knows nothing about images, transcripts, tokens or sentences; a `Task` tells it, with a
few callables:

- `split(batch) -> (inputs, targets)`: a tensor is all input; a tuple (or a list, which means the
  same) is (inputs, targets, ...); a dict is Hugging Face style, "labels" being the targets and the
  rest the model's keyword inputs;
- `call(model, inputs) -> output`: model(x), model(*tuple) or model(**dict);
- `view(output, inputs) -> tensor`: what the output terms (kd, ce, logit_mse, cosine) compare:
  logits (N, C), sequence logits (N, T, C) or a pooled embedding (N, D);
- `mask(inputs, targets) -> bool (N, T) or None`: positions that count (padding does not); output
  and feature tensors of shape (N, T, ...) are compared at those positions only;
- `supervised(view, targets, mask) -> loss`: what the "ce" term stands for in this task
  (cross-entropy, CTC, next-token cross-entropy); None where there are no labels;
- `metrics`: validation metrics. The first is the task's metric: early stopping, ratio choice and
  floors read it with its direction (higher or lower is better).

A `Metric` is streamed over validation batches: `batch(view, reference) -> statistics` on each
batch (reference: the targets, or the teacher's view for fidelity metrics), then
`reduce(list of statistics) -> float`. The default reduce sums (numerator, denominator) pairs and
divides, which is right for accuracy and error rates over a whole split (not a mean of batch means).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.distill.features import first_tensor
from slimkit.errors import SlimkitError
from slimkit.measure.embedding import cosine_sum, neighbour_agreement
from slimkit.measure.metrics import classification_metrics
from slimkit.measure.sequence import ctc_greedy_decode, error_counts


def ratio(stats: list[tuple[float, float]]) -> float:
    """Σ numerators / Σ denominators of per-batch (numerator, denominator) pairs."""
    den = sum(float(d) for _, d in stats)
    return sum(float(n) for n, _ in stats) / den if den else float("nan")


@dataclass(frozen=True)
class Metric:
    """A validation score over a whole split, streamed batch by batch; see the module docstring."""

    name: str
    batch: Callable[[torch.Tensor, Any], Any]
    reduce: Callable[[list], float] = ratio
    higher_is_better: bool = True
    reference: Literal["targets", "teacher"] = "targets"

    def better(self, new: float, old: float, min_delta: float = 0.0) -> bool:
        """Whether `new` improves on `old` by more than `min_delta`, in this metric's direction."""
        return new > old + min_delta if self.higher_is_better else new < old - min_delta

    def meets(self, value: float, floor: float) -> bool:
        """Whether `value` is at least as good as `floor` (>= when higher is better, else <=)."""
        return value >= floor if self.higher_is_better else value <= floor


# -- batches, calls and views --------------------------------------------------------------------
def split_batch(batch: Any) -> tuple[Any, Any]:
    """tensor -> (tensor, None); (x, y) -> (x, y); (x, a, b) -> (x, (a, b)); dict -> (rest, labels).
    A list is read as the tuple of its items."""
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}, batch.get("labels")
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return batch[0], None
        return batch[0], batch[1] if len(batch) == 2 else tuple(batch[1:])
    return batch, None


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_logits(output: Any, _inputs: Any = None) -> torch.Tensor:
    """The logits of a model output: the tensor itself, `.logits` (Hugging Face), or the first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    return first_tensor(output)


def no_mask(_inputs: Any, _targets: Any) -> None:
    return None


def attention_mask(inputs: Any, _targets: Any = None) -> torch.Tensor | None:
    """Real (non-padding) token positions of a Hugging Face batch."""
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    return mask.bool() if mask is not None else None


def class_cross_entropy(view: torch.Tensor, targets: Any, _mask: Any = None) -> torch.Tensor:
    return F.cross_entropy(view.reshape(-1, view.shape[-1]), targets.reshape(-1))


@dataclass(frozen=True)
class Task:
    """The callables the engine needs for one kind of model; see the module docstring."""

    name: str
    metrics: tuple[Metric, ...] = ()
    split: Callable[[Any], tuple[Any, Any]] = split_batch
    call: Callable[[nn.Module, Any], Any] = call_model
    view: Callable[[Any, Any], torch.Tensor] = output_logits
    mask: Callable[[Any, Any], torch.Tensor | None] = no_mask
    supervised: Callable[[torch.Tensor, Any, torch.Tensor | None], torch.Tensor] | None = class_cross_entropy
    train_mode: bool = True  # False keeps the student in eval mode while training (no dropout noise)
    settings: dict = field(default_factory=dict)  # part of the teacher-cache key

    @property
    def metric(self) -> Metric | None:
        """The metric early stopping, ratio choice and floors read (the first one), if any."""
        return self.metrics[0] if self.metrics else None


# -- classification ------------------------------------------------------------------------------
def accuracy() -> Metric:
    return Metric("accuracy", lambda v, y: (int((v.argmax(-1) == y).sum()), int(y.numel())))


def macro_f1() -> Metric:
    def reduce(stats: list) -> float:
        if not stats:
            return float("nan")
        preds, labels = torch.cat([p for p, _, _ in stats]), torch.cat([y for _, y, _ in stats])
        return classification_metrics(preds, labels, max(c for _, _, c in stats)).macro_f1
    return Metric("macro_f1", lambda v, y: (v.argmax(-1).cpu(), y.cpu(), v.shape[-1]), reduce)


def classification(metrics: Sequence[Metric] | None = None) -> Task:
    """Logits (N, C) against integer labels; validated by accuracy, then macro-F1."""
    return Task("classification", tuple(metrics) if metrics is not None else (accuracy(), macro_f1()))


# -- sequences (N, T, C) ------------------------------------------------------------------------
def ctc_targets(targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N, S), lengths (N,)) from CTC targets given as a tuple or a list of the two; anything
    else (no targets, another count of parts, not tensors) is refused in one line."""
    if (not isinstance(targets, (tuple, list)) or len(targets) != 2
            or not all(isinstance(t, torch.Tensor) for t in targets)):
        got = "none" if targets is None else (f"{len(targets)} parts" if isinstance(targets, (tuple, list))
                                              else f"a {type(targets).__name__}")
        raise SlimkitError(f"CTC targets must be (labels (N, S), label lengths (N,)), got {got}; batches are "
                           f"(inputs, labels, lengths) as a tuple or list, or in-memory data (images, labels, lengths)")
    labels, lengths = targets
    return labels, lengths


def ctc_loss(blank: int = 0) -> Callable[[torch.Tensor, Any, torch.Tensor | None], torch.Tensor]:
    """The supervised loss of a CTC recogniser. Targets are (labels (N, S) padded, lengths (N,));
    frames beyond `mask` (when given) are not part of the input."""
    def loss(view: torch.Tensor, targets: Any, mask: torch.Tensor | None) -> torch.Tensor:
        labels, lengths = ctc_targets(targets)
        log_probs = F.log_softmax(view.float(), -1).transpose(0, 1)  # (T, N, C)
        frames = mask.sum(1) if mask is not None else torch.full((view.shape[0],), view.shape[1], dtype=torch.long)
        return F.ctc_loss(log_probs, labels, frames.cpu(), lengths.cpu(), blank=blank, zero_infinity=True)
    return loss


def cer(blank: int = 0) -> Metric:
    """Character error rate of greedy CTC decoding against (labels, lengths) targets (lower is better)."""
    def batch(view: torch.Tensor, targets: Any) -> tuple[int, int]:
        labels, lengths = ctc_targets(targets)
        refs = [labels[i, :int(n)].tolist() for i, n in enumerate(lengths)]
        return error_counts(ctc_greedy_decode(view, blank), refs)
    return Metric("cer", batch, higher_is_better=False)


def sequence_logits(metric: Metric | Sequence[Metric] | None = None, supervised: Callable | None = None,
                    time_first: bool = False, mask: Callable | None = None) -> Task:
    """Per-frame class scores (N, T, C), e.g. a CTC text recogniser or a speech model.

    KD compares the frame distributions position by position, with or without labels;
    `supervised` (e.g. `ctc_loss()`) is what the "ce" term means; `metric` is the user's, e.g.
    `cer()`. `time_first=True` for models that emit (T, N, C), the layout CTC losses take.
    """
    metrics = () if metric is None else (metric,) if isinstance(metric, Metric) else tuple(metric)

    def view(output: Any, _inputs: Any) -> torch.Tensor:
        logits = output_logits(output)
        if logits.dim() != 3:
            raise SlimkitError(f"a sequence task needs (N, T, C) outputs, got shape {tuple(logits.shape)}")
        return logits.transpose(0, 1) if time_first else logits
    return Task("sequence", metrics, view=view, mask=mask or no_mask, supervised=supervised,
                settings={"time_first": time_first})


# -- causal language models ----------------------------------------------------------------------
def lm_split(batch: Any) -> tuple[dict, torch.Tensor]:
    """{"input_ids", ["attention_mask"], ["labels"]} -> (inputs, labels); labels default to the
    input ids with padding set to -100 (ignored)."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise SlimkitError("causal-LM batches are token ids (N, L) or dicts with 'input_ids'")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch.get("labels")
    if labels is None:
        labels = inputs["input_ids"]
        if "attention_mask" in inputs:
            labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
    return inputs, labels


def next_token_ce(view: torch.Tensor, labels: torch.Tensor, _mask: Any = None) -> torch.Tensor:
    """Cross-entropy of the logits at position i against token i+1 (labels -100 are ignored)."""
    return F.cross_entropy(view[:, :-1].reshape(-1, view.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def perplexity() -> Metric:
    """exp(mean next-token negative log-likelihood) over all real tokens of the split (lower is better)."""
    def batch(view: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        target = labels[:, 1:].reshape(-1)
        nll = F.cross_entropy(view[:, :-1].reshape(-1, view.shape[-1]).float(), target, ignore_index=-100, reduction="sum")
        return float(nll), int((target != -100).sum())
    return Metric("perplexity", batch, lambda stats: math.exp(ratio(stats)), higher_is_better=False)


def causal_lm() -> Task:
    """Hugging Face causal LMs: logits (N, L, V), next-token cross-entropy, perplexity."""
    return Task("causal_lm", (perplexity(),), split=lm_split, call=lambda m, x: m(**x, use_cache=False),
                mask=attention_mask, supervised=next_token_ce)


# -- encoder-decoder models under teacher forcing ------------------------------------------------
def label_positions(_inputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """Decoder positions whose next token is a label (labels -100, prompt and padding, do not count)."""
    return labels != -100


def label_ce(view: torch.Tensor, labels: torch.Tensor, _mask: Any = None) -> torch.Tensor:
    """Cross-entropy of the logits at every position against its label (-100 ignored): the labels
    are already the next tokens, as in Hugging Face seq2seq batches."""
    return F.cross_entropy(view.reshape(-1, view.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


def token_accuracy() -> Metric:
    """Share of label positions where the teacher-forced argmax is the label (higher is better)."""
    def batch(view: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
        keep = labels != -100
        return int((view.argmax(-1)[keep] == labels[keep]).sum()), int(keep.sum())
    return Metric("token_accuracy", batch)


def seq2seq() -> Task:
    """Hugging Face encoder-decoder models (e.g. Whisper) under teacher forcing.

    Batches are dicts of the model's inputs (for Whisper "input_features" and "decoder_input_ids")
    and "labels" (N, L): the token each decoder position must predict, -100 where nothing counts.
    KD compares the teacher's and the student's token distributions at the label positions only;
    "ce" is cross-entropy on the labels; validated by teacher-forced token accuracy. No KV cache
    is built (use_cache=False): a training pass sees the whole target at once.
    """
    return Task("seq2seq", (token_accuracy(),), call=lambda m, x: m(**x, use_cache=False), mask=label_positions,
                supervised=label_ce)


# -- sentence embeddings -------------------------------------------------------------------------
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of token states over real tokens (sentence-transformers' pooling)."""
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def trim_padding(batch: Any) -> tuple[dict, None]:
    """Cut a padded token batch to its longest real sequence: the same tokens and mask a tokenizer
    padding per batch gives, so the encoder does no work on columns that are padding everywhere."""
    if not isinstance(batch, dict) or "attention_mask" not in batch:
        raise SlimkitError("embedding batches are dicts with 'input_ids' and 'attention_mask'")
    mask = batch["attention_mask"]
    width = max(int(mask.sum(1).max()), 1)
    return {k: v[:, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == mask.shape else v
            for k, v in batch.items() if k != "labels"}, None


def cosine_to_teacher() -> Metric:
    return Metric("cosine", lambda s, t: (cosine_sum(s, t), s.shape[0]), reference="teacher")


def neighbour_agreement_metric() -> Metric:
    def reduce(stats: list) -> float:
        return neighbour_agreement(torch.cat([s for s, _ in stats]), torch.cat([t for _, t in stats]))
    return Metric("nn_agreement", lambda s, t: (s.float().cpu(), t.float().cpu()), reduce, reference="teacher")


def embeddings(pool: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] = mean_pool) -> Task:
    """Sentence encoders: the pooled last hidden state (N, D) is compared with the teacher's
    (`Term("cosine")`); validated by mean cosine to the teacher and nearest-neighbour agreement.
    The student trains in eval mode: the aim is the teacher's function, and dropout noise only
    caps the fidelity it can reach."""
    def view(output: Any, inputs: Any) -> torch.Tensor:
        hidden = getattr(output, "last_hidden_state", None)
        hidden = hidden if hidden is not None else first_tensor(output)
        return pool(hidden, inputs.get("attention_mask") if isinstance(inputs, dict) else None)
    return Task("embeddings", (cosine_to_teacher(), neighbour_agreement_metric()), split=trim_padding, view=view,
                mask=attention_mask, supervised=None, train_mode=False, settings={"pool": getattr(pool, "__name__", "")})


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, task: Task | None = None, teacher: nn.Module | None = None,
             batch_size: int = 256, device: torch.device | str | None = None) -> dict[str, float]:
    """Every metric of `task` (default: classification) for `model` over `data`, in eval mode.

    `data` is a Split, in-memory tensors or a loader; `teacher` is needed by fidelity metrics
    (reference "teacher"), which compare the model's view with the teacher's on the same batch.
    """
    from slimkit.distill.train_data import batches_of, to_device

    task = task or classification()
    if not task.metrics:
        return {}
    against_teacher = any(m.reference == "teacher" for m in task.metrics)
    if against_teacher and teacher is None:
        raise SlimkitError(f"the {task.name} task's metrics compare with the teacher; pass teacher=")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    models = [model] + ([teacher] if against_teacher else [])
    modes = [m.training for m in models]
    stats: dict[str, list] = {m.name: [] for m in task.metrics}
    try:
        for m in models:
            m.eval()
        for batch in batches_of(data, batch_size):
            inputs, targets = task.split(to_device(batch, device))
            view = task.view(task.call(model, inputs), inputs)
            t_view = task.view(task.call(teacher, inputs), inputs) if against_teacher else None
            for metric in task.metrics:
                stats[metric.name].append(metric.batch(view, t_view if metric.reference == "teacher" else targets))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return {m.name: float(m.reduce(stats[m.name])) for m in task.metrics}



@torch.no_grad()
def embed(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 64) -> torch.Tensor:
    """Mean-pooled sentence embeddings (N, D), as sentence-transformers computes them."""
    task = embeddings()
    was = model.training
    model.eval()
    first = next(model.parameters(), None)  # None: an ONNX Runtime session wrapped as a module, on the CPU
    device = first.device if first is not None else torch.device("cpu")
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            batch = dict(tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt"))
            inputs, _ = task.split(batch)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            out.append(task.view(task.call(model, inputs), inputs))
    finally:
        model.train(was)
    return torch.cat(out)


__all__ = ["Metric", "Task", "accuracy", "attention_mask", "call_model", "causal_lm", "cer", "class_cross_entropy",
           "classification", "evaluate", "cosine_to_teacher", "ctc_loss", "embed", "ctc_targets", "embeddings", "label_ce",
           "label_positions", "lm_split", "macro_f1", "mean_pool", "neighbour_agreement_metric", "next_token_ce",
           "output_logits", "perplexity", "ratio", "seq2seq", "sequence_logits", "split_batch", "token_accuracy",
           "trim_padding"]
