"""One convention for every pruning verb: the model passed in is pruned in place and returned as
`PruneResult.model`, and the result serialises to JSON. Tiny random models keep this offline and fast."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from slimkit.models import SeedCNN
from slimkit.prune import PruneResult

X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return SeedCNN(widths=(16, 32, 64)).eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _zeros(model: nn.Module) -> int:
    return sum(int((p == 0).sum()) for p in model.parameters())


def _check(result: PruneResult, model: nn.Module, method: str) -> None:
    assert isinstance(result, PruneResult) and result.method == method
    assert result.model is model
    json.dumps(result.as_dict())  # no tensors, no model


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval(), torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))


def test_magnitude_prune_is_in_place() -> None:
    from slimkit.prune import magnitude_prune

    model = _cnn()
    before = _zeros(model)
    result = magnitude_prune(model, sparsity=0.5)
    _check(result, model, "magnitude")
    assert _zeros(model) > before and result.kept_total == pytest.approx(0.5, abs=0.01)
    assert "masks" not in result.as_dict() and result.as_dict()["details"]["theta"] > 0


def test_structured_verbs_are_in_place() -> None:
    from slimkit.prune import iterative_prune, prune_latency_aware, prune_structured
    from slimkit.prune.latency_cost import LatencyTable, find_sites
    from slimkit.prune.structured import build_graph

    model = _cnn()
    dense = _params(model)
    result = prune_structured(model, X[:1], ratio=0.5, round_to=4)
    _check(result, model, "structured")
    assert _params(model) < dense and model.fc1.out_features == result.kept["fc1"][0] == 32

    model = _cnn()
    result = iterative_prune(model, X[:1], ratio=0.75, steps=2, recover=lambda m: m, round_to=4)
    _check(result, model, "structured")
    assert model.fc1.out_features == 16

    model = _cnn()
    sites = find_sites(build_graph(copy.deepcopy(model), X[:1]), X[:1], round_to=4)
    for s in sites.values():
        s.ms = [[float(o) for o in s.out_widths] for _ in s.in_widths]
    table = LatencyTable(sites, {"conv1": 16, "conv2": 32, "fc1": 64})
    result = prune_latency_aware(model, X[:1], 0.5, round_to=4, threads=1, table=table, rounds=3)
    _check(result, model, "latency-aware")
    assert _params(model) < dense and result.details["dense_ms"] > 0


def test_llm_verbs_are_in_place() -> None:
    from slimkit.llm import prune_depth, prune_oneshot, prune_width

    model, ids = _tiny_llama()
    before = _zeros(model)
    result = prune_oneshot(model, ids, "wanda", 0.5, progress=False)
    _check(result, model, "wanda")
    assert _zeros(model) > before and result.kept_total == 0.5 and result.masks

    model, ids = _tiny_llama()
    result = prune_depth(model, ids, 1, progress=False)
    _check(result, model, "depth")
    assert len(model.model.layers) == 2 and len(result.removed_blocks) == 1 and len(result.scores) == 3

    model, ids = _tiny_llama()
    result = prune_width(model, ids, ffn_ratio=0.5, kv_groups_remove=1, progress=False)
    _check(result, model, "width")
    assert model.model.layers[0].mlp.down_proj.in_features == 32 and model.config.num_key_value_heads == 1
    assert result.kept["model.layers.0.mlp"] == (32, 64) and result.kept["model.layers.0.self_attn"] == (1, 2)
    assert all(len(heads) == 2 for heads in result.removed_heads.values())


class _CharTokenizer:
    """Enough of a tokenizer for prune_encoder: one id per character, padded to the longest text."""

    def __call__(self, texts, padding=True, truncation=True, max_length=16, return_tensors="pt"):
        ids = [[1 + ord(c) % 60 for c in t[:max_length]] for t in texts]
        n = max(len(i) for i in ids)
        return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])}


def test_encoder_verbs_are_in_place() -> None:
    from transformers import (
        BertConfig,
        BertModel,
        WhisperConfig,
        WhisperForConditionalGeneration,
    )

    from slimkit.llm import prune_encoder
    from slimkit.speech.prune import prune_encoder_ffn

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=32)).eval()
    texts = ["a short sentence", "another one, a little longer", "and a third"]
    result = prune_encoder(bert, _CharTokenizer(), texts, ffn_ratio=0.5, head_ratio=0.5)
    _check(result, bert, "encoder")
    assert bert.encoder.layer[0].intermediate.dense.out_features == 32
    assert result.kept["encoder.layer.1.attention.self"] == (2, 4)
    assert [layer.attention.self.num_attention_heads for layer in bert.encoder.layer] == [2, 2]
    assert [len(result.removed_heads[f"encoder.layer.{i}.attention.self"]) for i in range(2)] == [2, 2]
    assert bert.encoder.layer[0].attention.self.query.out_features == 2 * 8

    whisper = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=40, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=8,
        max_target_positions=24, pad_token_id=3, bos_token_id=3, eos_token_id=3, decoder_start_token_id=1)).eval()
    result = prune_encoder_ffn(whisper, 0.5)
    _check(result, whisper, "encoder-ffn")
    assert whisper.model.encoder.layers[1].fc1.out_features == 16


def test_importing_slimkit_llm_does_not_import_transformers() -> None:
    code = "import sys, slimkit.llm; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
