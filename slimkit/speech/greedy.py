"""Whisper's greedy decode written out: generate()'s tokens, without generate()'s per-token bookkeeping.

Every step of transformers' ``generate()`` runs its logits processors and stopping criteria as
general machinery (the suppress-tokens processor is a ``torch.isin`` over the whole vocabulary per
token, the stopping criteria re-check the sequence, the cache is re-wrapped). On a small Whisper at
batch 1 that bookkeeping costs about as much as the decoder layers themselves (bench/speech.py's
decode split), and it is the same for a dense and a pruned decoder, so it hides what a depth cut
gains. `greedy_tokens` keeps only what greedy transcription with an English-only model without
timestamps does: the prompt <|startoftranscript|><|notimestamps|>, the generation config's suppress
and begin-suppress tokens as two precomputed additive masks, argmax, the key/value cache, and a stop
at end-of-text or at generate()'s own token limit. Finished rows of a batch are padded with the pad token,
as generate() pads them. Configs that ask for more (language and task tokens, timestamps, forced
ids) are refused by `fits_greedy_loop`, and `slimkit.speech.evaluate.decode` hands them to generate().
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from slimkit.errors import SlimkitError


def fits_greedy_loop(model) -> bool:
    """True when `greedy_tokens` reproduces generate()'s greedy decode for this model's generation config."""
    g = model.generation_config
    return (not getattr(g, "is_multilingual", True) and not getattr(g, "return_timestamps", False)
            and not getattr(g, "forced_decoder_ids", None)
            and None not in (g.decoder_start_token_id, getattr(g, "no_timestamps_token_id", None), g.eos_token_id))


def _suppress_masks(generation_config, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive logit masks: (first generated token, every later token)."""
    later = torch.zeros(vocab, device=device)
    later[list(generation_config.suppress_tokens or [])] = float("-inf")
    first = later.clone()
    first[list(generation_config.begin_suppress_tokens or [])] = float("-inf")
    return first, later


@torch.inference_mode()
def greedy_tokens(model, encoder_output, max_new_tokens: int | None = None, stop_at_end: bool = True) -> torch.Tensor:
    """Generated token ids (batch, tokens) of the greedy decode of `encoder_output`, shaped as generate()
    returns them: the prompt left out, and the end-of-text column left out when every row ended there.

    `stop_at_end=False` runs exactly `max_new_tokens` steps whatever is generated, so that models
    which stop at different points can be timed on the same work.
    """
    if not fits_greedy_loop(model):
        raise SlimkitError("this Whisper's generation config needs language, task or timestamp tokens; "
                           "decode it with model.generate()")
    g = model.generation_config
    hidden = encoder_output[0]
    batch = hidden.shape[0]
    prompt = torch.tensor([[g.decoder_start_token_id, g.no_timestamps_token_id]], device=hidden.device).repeat(batch, 1)
    if max_new_tokens is None:  # generate()'s limit: max_new_tokens, else max_length, within the decoder's positions
        positions, prompted = model.config.max_target_positions, prompt.shape[1]
        if g.max_new_tokens is not None:
            limit = min(g.max_new_tokens, positions - prompted)
        else:
            limit = min(g.max_length + min(positions // 2 - 1, prompted), positions) - prompted
    else:
        limit = max_new_tokens
    if limit < 1:
        raise SlimkitError(f"greedy decode needs at least 1 new token, got max_new_tokens={max_new_tokens}")
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    first_mask, later_mask = _suppress_masks(g, head.out_features, hidden.device)
    pad = torch.full((batch,), g.pad_token_id if g.pad_token_id is not None else g.eos_token_id, device=hidden.device)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    pieces, step_ids = [], prompt
    done = torch.zeros(batch, dtype=torch.bool, device=hidden.device)
    for step in range(limit):
        state = decoder(input_ids=step_ids, encoder_hidden_states=hidden, cache=cache, use_cache=True)
        logits = head(state.last_hidden_state[:, -1]) + (first_mask if step == 0 else later_mask)
        chosen = torch.where(done, pad, logits.argmax(-1))
        pieces.append(chosen[:, None])
        done |= chosen == g.eos_token_id
        if stop_at_end and bool(done.all()):
            break
        step_ids = chosen[:, None]
    tokens = torch.cat(pieces, dim=1)
    ended_together = stop_at_end and bool(done.all()) and bool((tokens[:, -1] == g.eos_token_id).all())
    return tokens[:, :-1] if ended_together else tokens
