"""Sentence-encoder (BERT / MiniLM) embedding distillation and fidelity.

Pruning itself lives in `slimkit.llm.encoder_prune`: FFN neurons (uniform count per layer, so
`intermediate_size` in the config stays valid), attention heads and whole layers. BertConfig
derives the head size as hidden_size / num_attention_heads, so a BERT with 9 of 12 heads per layer
has no config that describes it; a pruned encoder is saved like any pruned Hugging Face model, with
`slimkit.io.hf_folder.save_hf` (which records the head counts in the config's layout), and
`slimkit.llm.load.load_encoder` reads it back.

Distillation runs on the shared engine (`Distiller` with the embeddings task): the student's
mean-pooled sentence embedding is matched to the unpruned teacher's (cosine or MSE), optionally
with every layer's token states; fidelity is the mean cosine to the teacher on held-out sentences,
plus how often each sentence's nearest neighbour is the same under both models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from slimkit.distill.config import CacheConfig, CheckpointConfig, TrainConfig
from slimkit.distill.engine import Distiller
from slimkit.distill.losses import Term, cosine
from slimkit.distill.tasks import embeddings
from slimkit.errors import SlimkitError
from slimkit.data.text import encode_sentences, read_text, sentences
from slimkit.distill.tasks import embed
from slimkit.measure.embedding import cosine_sum, neighbour_agreement


def encoder_terms(student: nn.Module, teacher: nn.Module, loss: str = "cosine", layer_weight: float = 0.0) -> list[Term]:
    """Pooled-embedding loss ('cosine': 1 - cos, or 'mse'), plus `layer_weight` times the mean over
    layers of the token cosine between each student layer's output and the teacher's same layer.

    Width pruning keeps the residual stream (hidden size) of every layer, so each layer's token
    states can be matched to the teacher's directly, without adapters; padding is left out by the
    task's attention mask. This gives every token of every layer a target, far more signal per
    sentence than the pooled embedding alone. With layers dropped, the student's layer i is matched
    to the teacher's layer i.
    """
    if loss not in ("cosine", "mse"):
        raise SlimkitError(f"embedding loss must be 'cosine' or 'mse', got {loss!r}")
    if layer_weight < 0:
        raise SlimkitError(f"layer_weight must be >= 0, got {layer_weight}")
    terms = [cosine(1.0) if loss == "cosine" else Term("logit_mse", 1.0)]
    if layer_weight > 0:
        n = min(len(student.encoder.layer), len(teacher.encoder.layer))
        terms += [Term("hidden_cosine", layer_weight / n, student_layer=f"encoder.layer.{i}",
                       teacher_layer=f"encoder.layer.{i}") for i in range(n)]
    return terms


def distill_encoder(student: nn.Module, teacher: nn.Module, tokenizer, texts: list[str], epochs: int = 3,
                    batch_size: int = 32, lr: float = 5e-5, loss: str = "cosine", seed: int = 0,
                    max_minutes: float | None = None, layer_weight: float = 0.0, max_length: int = 64,
                    progress: bool = True, checkpoint: CheckpointConfig | None = None,
                    amp: str = "auto") -> dict:
    """Train the student's pooled sentence embeddings towards the teacher's, on the shared engine.

    The loss is `encoder_terms`; the teacher runs live (the layer-wise terms need its hidden
    states). AdamW (weight decay 0.01), no clipping; the learning rate warms up over 20 steps, then
    follows a cosine to zero over whichever budget ends first, the epochs or `max_minutes`, so a
    run cut by time still ends at a small learning rate. The student trains in eval mode (no
    dropout), as the embeddings task does. `checkpoint` makes the run resumable after a kill.
    """
    terms = encoder_terms(student, teacher, loss, layer_weight)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.01, warmup_steps=20, grad_clip=None,
                      seed=seed, amp=amp, max_minutes=max_minutes)
    distiller = Distiller(teacher, student, terms, cfg, checkpoint=checkpoint, cache=CacheConfig(mode="off"),
                          task=embeddings())
    start = time.perf_counter()
    try:
        distiller.fit(encode_sentences(tokenizer, texts, max_length), progress=progress, desc="encoder KD")
    finally:
        student.eval()
    return {"steps": distiller.steps_done, "seconds": time.perf_counter() - start,
            "final_loss": distiller.last_loss if distiller.steps_done else None,
            "resumed_from_step": distiller.resumed_from_step}


@dataclass(frozen=True)
class Fidelity:
    mean_cosine: float
    nn_agreement: float
    sentences: int

    def __str__(self) -> str:
        return (f"mean cosine {self.mean_cosine:.4f}, nearest-neighbour agreement {self.nn_agreement:.3f} "
                f"[{self.sentences} held-out sentences]")


def fidelity(student: nn.Module, teacher: nn.Module, tokenizer, texts: list[str]) -> Fidelity:
    """Mean cosine to the teacher's embeddings and nearest-neighbour agreement among `texts`."""
    s, t = embed(student, tokenizer, texts), embed(teacher, tokenizer, texts)
    return Fidelity(cosine_sum(s, t) / len(texts), neighbour_agreement(s, t), len(texts))


DEFAULT_TRAIN_SENTENCES = 2000


def default_sentences(n_train: int = DEFAULT_TRAIN_SENTENCES, n_eval: int = 500,
                      seed: int = 0) -> tuple[list[str], list[str]]:
    """Training sentences from Emma and held-out sentences from Pride and Prejudice (disjoint books).

    Each book is drawn in one seeded order, so asking for more sentences keeps the first ones.
    """
    gen = torch.Generator().manual_seed(seed)
    train = sentences(read_text("emma"))
    held = sentences(read_text("prideprejudice"))
    pick = lambda xs, n: [xs[i] for i in torch.randperm(len(xs), generator=gen)[:n].tolist()]  # noqa: E731
    return pick(train, n_train), pick(held, n_eval)
