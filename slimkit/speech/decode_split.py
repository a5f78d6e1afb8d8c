"""Where a greedy decode's time goes: the output projection, the decoder layers, and everything else.

Removing decoder layers (distil-whisper's lever) speeds decoding only as far as the layers are the
decode's cost. On a small Whisper they are not: every generated token also runs the output
projection over the whole vocabulary, a matrix-vector product whose weight (vocabulary x d_model,
tied to the token embedding) is read from memory once per token, plus the decode loop's own work
(embedding, final norm, cache bookkeeping; with generate() also its logits processors and stopping
criteria). `decode_time_split` measures the three parts with
forward hooks around the projection and each decoder layer, on a decode forced to a fixed number
of tokens so that models which stop at different points are compared on the same work, and
`layer_free_bound` says how much faster the decode could get if the layers cost nothing at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from slimkit.errors import SlimkitError
from slimkit.speech.evaluate import GREEDY_LOOP, decode_loop
from slimkit.speech.greedy import greedy_tokens
from slimkit.speech.prune import decoder_layers


@dataclass
class DecodeSplit:
    """Milliseconds per generated token (means over a forced-length greedy decode)."""

    tokens: int
    layers: int
    total_ms: float
    head_ms: float    # the output projection (logits over the vocabulary)
    layers_ms: float  # all decoder layers, including the one-off cross-attention keys/values of the encoder output

    @property
    def other_ms(self) -> float:
        """Embedding, final norm, the loop's bookkeeping, token selection."""
        return self.total_ms - self.head_ms - self.layers_ms

    def line(self) -> str:
        return (f"{self.total_ms:.2f} ms/token = output projection {self.head_ms:.2f} + {self.layers} decoder layers "
                f"{self.layers_ms:.2f} + rest {self.other_ms:.2f}")


def layer_free_bound(split: DecodeSplit) -> float:
    """The decode speed-up if the decoder layers took no time at all: the ceiling of any depth cut."""
    return split.total_ms / (split.total_ms - split.layers_ms)


@torch.inference_mode()
def decode_time_split(model, encoder_output, tokens: int = 24, repeats: int = 3,
                      use_generate: bool = False) -> DecodeSplit:
    """Time `repeats` greedy decodes of exactly `tokens` new tokens (after one untimed one); the fastest is kept.

    The loop is `slimkit.speech.evaluate.decode_loop`'s: slimkit's greedy loop where it fits the model, else
    generate().
    """
    greedy = decode_loop(model, use_generate) == GREEDY_LOOP
    if tokens < 1 or repeats < 1:
        raise SlimkitError(f"decode_time_split needs tokens >= 1 and repeats >= 1, got {tokens}, {repeats}")
    head, layers = model.get_output_embeddings(), list(decoder_layers(model))
    spent = {"head": 0.0, "layers": 0.0}
    started: dict[int, float] = {}

    def timed(key: str, module: torch.nn.Module) -> list:
        def pre(*_):
            started[id(module)] = time.perf_counter()

        def post(*_):
            spent[key] += time.perf_counter() - started[id(module)]
        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    handles = timed("head", head) + [h for layer in layers for h in timed("layers", layer)]
    best = None
    try:
        for i in range(repeats + 1):
            spent.update(head=0.0, layers=0.0)
            start = time.perf_counter()
            if greedy:
                greedy_tokens(model, encoder_output, max_new_tokens=tokens, stop_at_end=False)
            else:
                model.generate(encoder_outputs=encoder_output, do_sample=False, num_beams=1, min_new_tokens=tokens,
                               max_new_tokens=tokens)
            total = time.perf_counter() - start
            if i and (best is None or total < best[0]):
                best = (total, spent["head"], spent["layers"])
    finally:
        for h in handles:
            h.remove()
    total, head_s, layers_s = best
    per = 1e3 / tokens
    return DecodeSplit(tokens, len(layers), total * per, head_s * per, layers_s * per)
