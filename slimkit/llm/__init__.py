"""Compression of pretrained Hugging Face transformers: one-shot, depth and width pruning, KD recovery.

    from slimkit.llm import calibration_windows, eval_windows, load_causal_lm, perplexity, prune_oneshot
    model, tok = load_causal_lm("smollm2")
    result = prune_oneshot(model, calibration_windows(tok), "sparsegpt", 0.5)  # in place
    print(1 - result.kept_total, perplexity(model, eval_windows(tok)))

Modules: load (local folders and the built-ins smollm2 / minilm, offline), text (calibration and
evaluation windows), perplexity, oneshot (magnitude, Wanda, SparseGPT, N:M; sequential
calibration), streaming (the same, one block at a time from a folder), depth, width, recover
(top-k logit KD), encoder and encoder_prune (MiniLM) and speed. Every `prune_*` verb changes the
model in place and returns a `slimkit.prune.PruneResult`. transformers is imported lazily, inside
the functions that need it, so importing this package stays cheap.
"""

from slimkit.llm.depth import DEPTH_RULES, block_influence, prune_depth, remove_layers, seam_pairs, span_scores
from slimkit.llm.encoder import (
    Fidelity,
    default_sentences,
    distill_encoder,
    embed,
    fidelity,
)
from slimkit.llm.encoder_prune import prune_encoder
from slimkit.llm.load import (
    load_causal_lm,
    load_config,
    load_encoder,
    resolve,
    save_pretrained_atomic,
)
from slimkit.llm.oneshot import METHODS, parse_nm, prune_oneshot
from slimkit.llm.perplexity import Perplexity, perplexity
from slimkit.llm.recover import RecoveryConfig, RecoveryReport, recover
from slimkit.llm.speed import SpeedReport, lm_cost, measure_speed
from slimkit.llm.streaming import prune_oneshot_folder
from slimkit.data.text import calibration_windows, eval_windows, read_text
from slimkit.llm.width import prune_width
from slimkit.prune.result import PruneResult

__all__ = [
    "DEPTH_RULES",
    "METHODS",
    "Fidelity",
    "Perplexity",
    "PruneResult",
    "RecoveryConfig",
    "RecoveryReport",
    "SpeedReport",
    "block_influence",
    "calibration_windows",
    "default_sentences",
    "distill_encoder",
    "embed",
    "eval_windows",
    "fidelity",
    "lm_cost",
    "load_causal_lm",
    "load_config",
    "load_encoder",
    "measure_speed",
    "parse_nm",
    "perplexity",
    "prune_depth",
    "prune_encoder",
    "prune_oneshot",
    "prune_oneshot_folder",
    "prune_width",
    "read_text",
    "recover",
    "remove_layers",
    "resolve",
    "save_pretrained_atomic",
    "seam_pairs",
    "span_scores",
]
