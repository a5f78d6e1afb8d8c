"""Honest cost of a causal LM: parameters and MACs that remain, measured prefill and decode speed.

Unstructured and N:M zeros stay in dense weight matrices and the dense kernels multiply them like
any other number, so they save no time here; `SpeedReport.note` says so whenever the model holds
such zeros. Only removed structure (layers, heads, neurons) shows up in MACs and tokens/s.
No sparse kernel is offered: none is used unless measured faster on the device at hand.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from slimkit.measure.cost import count_macs, count_params


@dataclass(frozen=True)
class SpeedReport:
    params: int
    nonzero_params: int
    macs_per_token: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prompt_len: int
    decode_tokens: int
    threads: int
    device: str
    note: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def lm_cost(model: nn.Module, ids: torch.Tensor) -> tuple[int, int, int]:
    """(parameters, non-zero parameters, MACs per token of a forward pass over `ids`, a (1, T) prompt):
    what removed structure saves, counted without timing anything."""
    total, nonzero = count_params(model)
    return total, nonzero, count_macs(model, {"input_ids": ids, "use_cache": False}) // ids.shape[1]


@torch.inference_mode()
def measure_speed(model: nn.Module, prompt_len: int = 128, decode_tokens: int = 32, repeats: int = 3,
                  threads: int | None = None, seed: int = 0) -> SpeedReport:
    """Median prefill tokens/s over a (1, prompt_len) prompt and decode tokens/s with the KV cache."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model.eval()
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (1, prompt_len), generator=gen).to(device)
        total, nonzero, macs = lm_cost(model, ids)
        prefill, decode = [], []
        model(input_ids=ids[:, :8], use_cache=False)  # warm-up
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            _sync(device)
            prefill.append(prompt_len / (time.perf_counter() - t0))
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(decode_tokens):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
            _sync(device)
            decode.append(decode_tokens / (time.perf_counter() - t0))
        linear_zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
        linear_total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
        note = ""
        if linear_zeros > 0.01 * linear_total:
            note = (f"{linear_zeros / linear_total:.0%} of Linear weights are zeros kept in dense matrices: "
                    "dense kernels multiply them anyway, so they give no speed-up and no MAC saving")
        return SpeedReport(total, nonzero, macs, statistics.median(prefill), statistics.median(decode), prompt_len,
                           decode_tokens, torch.get_num_threads(), str(device) if device.type != "cuda"
                           else torch.cuda.get_device_name(device), note)
    finally:
        torch.set_num_threads(old)
