"""Perplexity on non-overlapping token windows, tagged with the protocol that produced it.

A perplexity number means nothing without its protocol (text, window length, token count), so the
result carries a protocol string and prints it with the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class Perplexity:
    """exp(mean next-token NLL) over every predicted token of every window."""

    value: float
    nll: float
    tokens: int
    protocol: str

    def __str__(self) -> str:
        return f"ppl {self.value:.2f} [{self.protocol}]"


def protocol_string(text: str, n_windows: int, seq_len: int) -> str:
    return f"{text}, first {n_windows * seq_len} tokens, {n_windows} non-overlapping windows of {seq_len}"


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, text: str = "prideprejudice", batch_size: int = 4,
               progress: bool = False) -> Perplexity:
    """Perplexity of a causal LM over (n, L) windows; each window is scored independently.

    Every window predicts its tokens 2..L from the ones before (no context carried across windows),
    which is the plain non-overlapping protocol.
    """
    model.eval()
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    batches = range(0, windows.shape[0], batch_size)
    for i in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        ids = windows[i:i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += ids[:, 1:].numel()
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean), mean, total_tokens, protocol_string(text, windows.shape[0], windows.shape[1]))
