"""Depth and width pruning, perplexity, KD recovery, speed and loading on real SmolLM2 slices."""

import copy
import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="needs transformers: run scripts/install.sh")
from transformers import AutoModelForCausalLM  # noqa: E402

from slimkit.errors import SlimkitError
from slimkit.llm.depth import block_influence, prune_depth, remove_layers
from slimkit.llm.load import resolve, save_pretrained_atomic
from slimkit.llm.perplexity import perplexity
from slimkit.llm.recover import RecoveryConfig, recover
from slimkit.llm.speed import lm_cost, measure_speed
from slimkit.llm.width import prune_width, remove_ffn_neurons, remove_kv_groups
from tests.llm_helpers import small_lm, windows


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.slow
def test_depth_removal_reloads_with_fewer_layers(tmp_path):
    model, tok = small_lm(3)
    cal = windows(tok, 2, 32)
    scores = block_influence(model, cal, progress=False)
    assert len(scores) == 3 and all(0.0 <= s <= 2.0 for s in scores)
    rep = prune_depth(model, cal, 1, progress=False)
    assert rep.removed_blocks == [f"model.layers.{min(range(3), key=lambda i: scores[i])}"]
    assert list(rep.scores.values()) == scores and rep.kept == {"model.layers": (2, 3)}
    assert [l.self_attn.layer_idx for l in model.model.layers] == [0, 1]
    out = save_pretrained_atomic(model, tok, tmp_path / "depth")
    again = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert again.config.num_hidden_layers == 2 and len(again.model.layers) == 2
    torch.testing.assert_close(_logits(again, cal), _logits(model, cal), rtol=1e-4, atol=1e-4)
    gen = again.generate(cal[:1, :8], max_new_tokens=3, do_sample=False)  # KV cache indices are valid
    assert gen.shape == (1, 11)


@pytest.mark.slow
def test_gqa_group_removal_identity_and_equals_masking(tmp_path):
    model, tok = small_lm(1)
    ids = windows(tok, 1, 32)
    base = _logits(model, ids)
    same = copy.deepcopy(model)
    remove_kv_groups(same, [[0, 1, 2]])  # removing nothing changes nothing
    torch.testing.assert_close(_logits(same, ids), base)
    masked = copy.deepcopy(model)
    with torch.no_grad():  # group 1 serves query heads 3, 4, 5 (3 per group, head_dim 64)
        masked.model.layers[0].self_attn.o_proj.weight[:, 3 * 64:6 * 64] = 0
    removed = copy.deepcopy(model)
    remove_kv_groups(removed, [[0, 2]])
    assert removed.config.num_attention_heads == 6 and removed.config.num_key_value_heads == 2
    torch.testing.assert_close(_logits(removed, ids), _logits(masked, ids), rtol=1e-4, atol=1e-4)
    out = save_pretrained_atomic(removed, tok, tmp_path / "gqa")
    again = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(again, ids), _logits(removed, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_ffn_removal_equals_zeroing_and_prune_width_reloads(tmp_path):
    model, tok = small_lm(1)
    ids = windows(tok, 1, 32)
    keep = torch.arange(0, 1536, 2)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.model.layers[0].mlp.down_proj.weight[:, 1::2] = 0
    remove_ffn_neurons(model, [keep])
    torch.testing.assert_close(_logits(model, ids), _logits(masked, ids), rtol=1e-4, atol=1e-4)
    small, _ = small_lm(2)
    rep = prune_width(small, windows(tok, 2, 32), ffn_ratio=0.25, kv_groups_remove=1, progress=False)
    cfg = rep.model.config
    assert (cfg.intermediate_size, cfg.num_key_value_heads, cfg.num_attention_heads) == (1152, 2, 6)
    assert rep.kept["model.layers.1.mlp"] == (1152, 1536) and rep.kept["model.layers.1.self_attn"] == (2, 3)
    assert all(len(h) == 3 for h in rep.removed_heads.values()) and len(rep.removed_heads) == 2
    out = save_pretrained_atomic(small, tok, tmp_path / "width")
    again = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(_logits(again, ids), _logits(small, ids), rtol=1e-4, atol=1e-4)


def test_text_windows_are_the_whole_text_in_order_without_overlap(tmp_path):
    """text_windows: every full window of the text, back to back, and the text's token count."""
    from slimkit.data.text import text_windows, tokenize

    _, tok = small_lm(1)
    book = tmp_path / "book.txt"
    book.write_text("It is a truth universally acknowledged, " * 40, encoding="utf-8")
    ids = tokenize(tok, book.read_text(encoding="utf-8"))
    got, n_tokens = text_windows(tok, book, 16)
    assert n_tokens == ids.numel() and got.shape == (ids.numel() // 16, 16)
    assert torch.equal(got.flatten(), ids[:got.numel()])
    with pytest.raises(SlimkitError, match="seq_len >= 2"):
        text_windows(tok, book, 1)


@pytest.mark.slow
def test_perplexity_finite_and_tagged():
    model, tok = small_lm(1)
    from slimkit.data.text import eval_windows

    ev = eval_windows(tok, "prideprejudice", n_tokens=128, seq_len=64)
    ppl = perplexity(model, ev)
    assert math.isfinite(ppl.value) and ppl.value > 1
    assert ppl.tokens == 2 * 63
    assert "prideprejudice, first 128 tokens, 2 non-overlapping windows of 64" in str(ppl)


@pytest.mark.slow
def test_recovery_runs_on_the_engine_caches_teacher_and_holds_masks(tmp_path):
    from slimkit.distill.cache import open_cache

    teacher, tok = small_lm(1)
    student = copy.deepcopy(teacher)
    lin = student.model.layers[0].mlp.up_proj
    with torch.no_grad():
        lin.weight[:, ::2] = 0
    masks = {"model.layers.0.mlp.up_proj.weight": lin.weight != 0}
    train = windows(tok, 2, 32)
    cfg = RecoveryConfig(epochs=1, batch_size=1, lr=1e-3, top_k=8, ce_weight=0.5)
    rep = recover(student, teacher, train, cfg, masks=masks, cache_dir=tmp_path, progress=False)
    assert rep.steps == 2 and not rep.cache_reused and len(rep.losses) == 2
    assert torch.all(lin.weight[:, ::2] == 0) and torch.any(lin.weight[:, 1::2] != 0)
    assert not student.model.embed_tokens.weight.requires_grad  # embeddings frozen
    folder, = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    cache = open_cache(folder)  # one cache, the engine's: top-k values and indices per position
    assert cache.values.shape == (2, 32, 8) and cache.indices.shape == (2, 32, 8)
    top = torch.topk(_logits(teacher, train), 8, dim=-1)
    torch.testing.assert_close(torch.tensor(np.asarray(cache.values)), top.values, rtol=1e-4, atol=1e-4)
    again = recover(copy.deepcopy(teacher), teacher, train, cfg, cache_dir=tmp_path, progress=False)
    assert again.cache_reused
    hidden = RecoveryConfig(epochs=1, batch_size=2, lr=1e-3, top_k=8, hidden_weight=0.5)
    rep = recover(copy.deepcopy(teacher), teacher, train, hidden, cache_dir=tmp_path, progress=False)
    assert rep.steps == 1 and not rep.cache_reused and rep.losses[0] > 0  # the final norm's states cached too
    cached = [open_cache(p) for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert sorted(tuple(c.features["model.norm"].shape) for c in cached if c.features) == [(2, 32, 576)]


def test_lm_cost_counts_linear_macs_per_token_and_parameters():
    """MACs per token are each Linear's in x out features once, whatever the prompt length; zeros
    stay counted as parameters but not as non-zero ones."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, :4] = 0
    for length in (1, 8):
        assert lm_cost(model, torch.zeros(1, length, dtype=torch.long)) == (total, total - 4 * 48, linear)


@pytest.mark.slow
def test_speed_report_says_zeros_give_no_speedup():
    model, tok = small_lm(1)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, ::2] = 0
    rep = measure_speed(model, prompt_len=16, decode_tokens=4, repeats=1)
    assert rep.prefill_tokens_per_s > 0 and rep.decode_tokens_per_s > 0 and rep.macs_per_token > 0
    assert "no speed-up" in rep.note


@pytest.mark.slow
def test_bad_model_and_layer_input(tmp_path):
    with pytest.raises(SlimkitError, match="neither a built-in"):
        resolve(tmp_path / "nope")
    with pytest.raises(SlimkitError, match="config.json"):
        resolve(tmp_path)
    model, _ = small_lm(2)
    with pytest.raises(SlimkitError):
        remove_layers(model, [5])
    with pytest.raises(SlimkitError):
        remove_layers(model, [0, 1])


def test_recovery_default_adds_next_token_ce_to_the_top_k_kd():
    """Perplexity is next-token CE, so recovery trains on it beside the KD unless told not to."""
    assert [t.kind for t in RecoveryConfig().terms()] == ["kd", "ce"]
    assert [t.kind for t in RecoveryConfig(ce_weight=0.0).terms()] == ["kd"]
