"""Sentence-encoder (BERT / MiniLM) embedding distillation, fidelity, and saving pruned encoders.

Pruning itself lives in `slimkit.llm.encoder_prune`: FFN neurons (uniform count per layer, so
`intermediate_size` in the config stays valid and from_pretrained reloads it), attention heads
and whole layers. BertConfig derives
the head size as hidden_size / num_attention_heads, so a BERT with 9 of 12 heads per layer has no
config that describes it: head-pruned encoders are pruned in memory (the modules shrink, the
forward is unchanged because it reshapes with -1 heads), and `save_encoder` writes the kept heads
beside the weights so `load_encoder_pruned` can rebuild the same shapes.

Distillation matches the student's mean-pooled sentence embedding to the unpruned teacher's
(cosine or MSE); fidelity is the mean cosine to the teacher on held-out sentences, plus how often
each sentence's nearest neighbour is the same under both models.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from slimkit.distill.config import budget_cosine
from slimkit.errors import SlimkitError
from slimkit.llm.encoder_prune import prune_heads
from slimkit.llm.text import read_text


def sentences(text: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Sentences of a plain text (split after . ! ?), whitespace-normalised, of a usable length."""
    flat = re.sub(r"\s+", " ", text)
    out = [s.strip() for s in re.split(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)(?<=[.!?])\s+(?=[A-Z\"'])", flat)]
    return [s for s in out if min_words <= len(s.split()) <= max_words]


def mean_pool(model: nn.Module, tokenizer, batch: list[str], max_length: int = 64) -> torch.Tensor:
    """Mean of the last hidden states over real (non-padding) tokens, as sentence-transformers does."""
    enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@torch.no_grad()
def embed(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([mean_pool(model, tokenizer, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """1 − cos(student, teacher) averaged, or MSE; both on pooled sentence embeddings."""
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise SlimkitError(f"embedding loss must be 'cosine' or 'mse', got {kind!r}")


def hidden_cosine_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
                       mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers and real tokens of 1 − cos(student hidden, teacher hidden).

    Width pruning keeps the residual stream (hidden size) of every layer, so each layer's token
    states can be matched to the teacher's directly, without adapters. This gives every token of
    every layer a target, far more signal per sentence than the pooled embedding alone.
    """
    m = mask.to(student[0].dtype)
    per_layer = [((1.0 - F.cosine_similarity(s, t, dim=-1)) * m).sum() / m.sum() for s, t in zip(student, teacher)]
    return torch.stack(per_layer).mean()


def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def distill_encoder(student: nn.Module, teacher: nn.Module, tokenizer, texts: list[str], epochs: int = 3,
                    batch_size: int = 32, lr: float = 5e-5, loss: str = "cosine", seed: int = 0,
                    max_seconds: float | None = None, layer_weight: float = 0.0, max_length: int = 64,
                    progress: bool = True) -> dict:
    """Train the student's pooled sentence embeddings towards the teacher's.

    The loss is `loss` ('cosine' or 'mse') on mean-pooled embeddings, plus `layer_weight` times
    the layer-wise token cosine (`hidden_cosine_loss`, which needs the teacher live; it has the same
    hidden size and depth as the width-pruned student). The learning rate warms up, then follows
    a cosine to zero over whichever budget ends first, the epochs or `max_seconds`, so a run cut by
    time still ends at a small learning rate.
    """
    if layer_weight < 0:
        raise SlimkitError(f"layer_weight must be >= 0, got {layer_weight}")
    torch.manual_seed(seed)
    teacher.eval()
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    steps = math.ceil(len(texts) / batch_size) * epochs
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    losses: list[float] = []
    # dropout stays off: the aim is to reproduce the teacher's function, and dropout noise on the
    # student only caps the fidelity it can reach
    student.eval()
    bar = tqdm(total=steps, desc="encoder KD", disable=not progress, leave=False)
    device = next(student.parameters()).device
    try:
        for _ in range(epochs):
            for b in torch.randperm(len(texts), generator=gen).split(batch_size):
                elapsed = time.perf_counter() - start
                if max_seconds is not None and elapsed > max_seconds:
                    raise StopIteration
                enc = tokenizer([texts[i] for i in b.tolist()], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt")
                enc = {k: v.to(device) for k, v in enc.items()}
                with torch.no_grad():
                    t_out = teacher(**enc, output_hidden_states=layer_weight > 0)
                s_out = student(**enc, output_hidden_states=layer_weight > 0)
                mask = enc["attention_mask"]
                value = embedding_loss(_pooled(s_out.last_hidden_state, mask),
                                       _pooled(t_out.last_hidden_state, mask), loss)
                if layer_weight > 0:
                    value = value + layer_weight * hidden_cosine_loss(s_out.hidden_states[1:],
                                                                      t_out.hidden_states[1:], mask)
                step_lr = lr * budget_cosine(len(losses), steps, elapsed, max_seconds, warmup=20)
                for group in opt.param_groups:
                    group["lr"] = step_lr
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                losses.append(value.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    except StopIteration:
        pass
    finally:
        bar.close()
        student.eval()
    return {"steps": len(losses), "seconds": time.perf_counter() - start, "final_loss": losses[-1] if losses else None}


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
    s = F.normalize(embed(student, tokenizer, texts), dim=-1)
    t = F.normalize(embed(teacher, tokenizer, texts), dim=-1)
    cos = (s * t).sum(-1).mean().item()
    eye = torch.eye(len(texts), dtype=torch.bool)
    nn_s = (s @ s.T).masked_fill(eye, -2).argmax(1)
    nn_t = (t @ t.T).masked_fill(eye, -2).argmax(1)
    return Fidelity(cos, (nn_s == nn_t).float().mean().item(), len(texts))


def default_sentences(n_train: int = 2000, n_eval: int = 500, seed: int = 0) -> tuple[list[str], list[str]]:
    """Training sentences from Emma and held-out sentences from Pride and Prejudice (disjoint books)."""
    gen = torch.Generator().manual_seed(seed)
    train = sentences(read_text("emma"))
    held = sentences(read_text("prideprejudice"))
    pick = lambda xs, n: [xs[i] for i in torch.randperm(len(xs), generator=gen)[:n].tolist()]  # noqa: E731
    return pick(train, n_train), pick(held, n_eval)


def save_encoder(model: nn.Module, tokenizer, kept: dict, out: str | Path, overwrite: bool = False,
                 inputs=()) -> Path:
    """save_pretrained plus slimkit_heads.json (the kept heads per layer), committed as one folder."""
    from slimkit.llm.load import save_pretrained_atomic

    return save_pretrained_atomic(model, tokenizer, out, overwrite, inputs,
                                  extra_files={"slimkit_heads.json": json.dumps(kept).encode()}, command="llm encoder")


def load_encoder_pruned(path: str | Path):
    """Rebuild a head-pruned encoder saved by save_encoder: shrink heads, then load the weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(path)
    meta_file = path / "slimkit_heads.json"
    if not meta_file.is_file():
        raise SlimkitError(f"{path} has no slimkit_heads.json; load it with transformers' from_pretrained")
    meta = json.loads(meta_file.read_text())
    cfg = AutoConfig.from_pretrained(str(path))
    model = AutoModel.from_config(cfg)
    for layer, kept in zip(model.encoder.layer, meta["heads_kept"]):
        prune_heads(layer, kept, meta["head_size"])
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise SlimkitError(f"{path} does not match its head description: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval(), AutoTokenizer.from_pretrained(str(path))
