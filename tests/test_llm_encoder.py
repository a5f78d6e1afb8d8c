"""MiniLM: head and FFN pruning, then embedding distillation, on the real weights."""

import pytest

from tests.llm_helpers import MINILM, require


@pytest.mark.slow
def test_encoder_distillation_smoke():
    """MiniLM: prune FFN and heads, distill a few steps; fidelity rises and stays in [0, 1]."""
    import copy

    from slimkit.llm.encoder import default_sentences, distill_encoder, fidelity
    from slimkit.llm.encoder_prune import prune_encoder
    from slimkit.llm.load import load_encoder

    require(*MINILM)
    teacher, tok = load_encoder("minilm")
    student = copy.deepcopy(teacher)
    train, held = default_sentences(64, 32)
    pruned = prune_encoder(student, tok, train[:32], 0.5, 0.25)
    assert student.config.intermediate_size == 768
    assert all(pruned.kept[f"encoder.layer.{i}.attention.self"] == (9, 12) for i in range(6))
    assert all(len(h) == 3 for h in pruned.removed_heads.values())
    before = fidelity(student, teacher, tok, held)
    distill_encoder(student, teacher, tok, train, epochs=2, batch_size=16, lr=2e-4, layer_weight=1.0, progress=False)
    after = fidelity(student, teacher, tok, held)
    assert 0 < before.mean_cosine < after.mean_cosine <= 1


def test_more_default_sentences_keep_the_default_ones_first_and_the_books_apart():
    from slimkit.llm.encoder import DEFAULT_TRAIN_SENTENCES, default_sentences

    train, held = default_sentences()
    more, held_again = default_sentences(DEFAULT_TRAIN_SENTENCES + 500)
    assert len(train) == DEFAULT_TRAIN_SENTENCES and len(more) == DEFAULT_TRAIN_SENTENCES + 500
    assert more[:DEFAULT_TRAIN_SENTENCES] == train and held_again == held  # a bigger run extends, never reshuffles
    assert not set(more) & set(held)  # Emma trains, Pride and Prejudice is held out


def test_layerwise_token_cosine_ignores_padding_and_is_zero_on_match():
    """The encoder's layer terms through the engine's `combine`: padding positions never count."""
    import torch

    from slimkit.distill.losses import Term, combine

    layers = [f"encoder.layer.{i}" for i in range(3)]
    terms = [Term("hidden_cosine", 1 / 3, student_layer=p, teacher_layer=p) for p in layers]
    t = {p: torch.randn(2, 5, 8) for p in layers}
    key = {p: f"{p}__{p}".replace(".", "_") for p in layers}
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    pooled = torch.randn(2, 8)

    def loss(s):
        return float(combine(terms, pooled, None, pooled, None, {key[p]: s[p] for p in layers}, t, mask)[0])

    assert loss(t) < 1e-6
    s = {p: x.clone() for p, x in t.items()}
    s[layers[0]][0, 3:] = -s[layers[0]][0, 3:]  # only padding positions differ
    assert loss(s) < 1e-6
    s[layers[1]][1, 0] = -s[layers[1]][1, 0]  # one real token reversed: cos -1, loss 2 over 8 tokens of one of 3 layers
    assert abs(loss(s) - 2 / 8 / 3) < 1e-5


def test_reconstruct_linear_recovers_removed_inputs_that_kept_ones_explain():
    """Removed inputs that are linear in the kept ones (plus a constant) are folded back exactly."""
    import torch

    from slimkit.llm.encoder_prune import reconstruct_linear

    torch.manual_seed(0)
    kept_x = torch.randn(500, 6, dtype=torch.float64)
    removed = kept_x[:, :2] @ torch.tensor([[1.5], [-2.0]], dtype=torch.float64) + 0.7
    x = torch.cat([kept_x, removed], 1)
    w, b = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    aug = torch.cat([x, torch.ones(500, 1, dtype=torch.float64)], 1)
    keep = torch.arange(6)
    w2, b2 = reconstruct_linear(w, b, aug.T @ aug, keep, damp=0.0)
    assert torch.allclose(kept_x @ w2.T + b2, x @ w.T + b, atol=1e-8)
    sliced_err = (kept_x @ w[:, :6].T + b - (x @ w.T + b)).abs().max()
    assert sliced_err > 0.1  # plain slicing is visibly wrong on the same data


def test_reconstruct_linear_rejects_a_gram_of_the_wrong_size():
    import pytest
    import torch

    from slimkit.errors import SlimkitError
    from slimkit.llm.encoder_prune import reconstruct_linear

    with pytest.raises(SlimkitError, match="gram must be"):
        reconstruct_linear(torch.randn(3, 5), None, torch.eye(5, dtype=torch.float64), torch.arange(3))


@pytest.mark.slow
def test_refit_brings_the_pruned_encoder_closer_than_slicing():
    """On the real MiniLM weights, the sequential least-squares refit beats plain slicing before training."""
    import copy

    from slimkit.llm.encoder import default_sentences, fidelity
    from slimkit.llm.encoder_prune import prune_encoder
    from slimkit.llm.load import load_encoder

    require(*MINILM)
    teacher, tok = load_encoder("minilm")
    train, held = default_sentences(128, 48)
    cos = {}
    for reconstruct in (False, True):
        student = copy.deepcopy(teacher)
        prune_encoder(student, tok, train, 0.5, 0.25, reconstruct=reconstruct)
        cos[reconstruct] = fidelity(student, teacher, tok, held).mean_cosine
    assert cos[True] > cos[False] + 0.05


def _tiny_encoder():
    """A 2-layer BERT with 4 heads of size 8, and a word-level fast tokenizer over its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "a", "short", "sentence", "to", "embed"]
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="[PAD]", unk_token="[UNK]")
    model = BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=32)).eval()
    return model, tok


def test_pruned_encoder_saved_with_save_hf_reloads_through_load_encoder(tmp_path):
    """Heads cut unevenly (3 and 2 of 4): the folder records the layout, load_encoder rebuilds the same
    model (same embeddings) and the tokenizer beside it."""
    import torch

    from slimkit.io.hf_folder import LAYOUT_KEY, save_hf
    from slimkit.llm.encoder import embed
    from slimkit.llm.encoder_prune import remove_encoder_heads
    from slimkit.llm.load import load_encoder

    model, tok = _tiny_encoder()
    remove_encoder_heads(model.encoder.layer[0], [0, 1, 3], 8)
    remove_encoder_heads(model.encoder.layer[1], [1, 2], 8)
    out = save_hf(model, tmp_path / "enc", tokenizer=tok, command="llm encoder")
    assert LAYOUT_KEY in (out / "config.json").read_text()
    back, back_tok = load_encoder(out)
    assert [layer.attention.self.num_attention_heads for layer in back.encoder.layer] == [3, 2]
    text = ["a short sentence to embed", "embed a sentence"]
    torch.testing.assert_close(embed(back, back_tok, text), embed(model, tok, text))


def test_load_encoder_reads_the_earlier_slimkit_heads_json_folders(tmp_path):
    """Folders from the earlier saver (dense config, kept heads in slimkit_heads.json) still load, into
    the pruned shapes; a description that does not fit the weights is one SlimkitError."""
    import json

    import torch

    from slimkit.errors import SlimkitError
    from slimkit.llm.encoder import embed
    from slimkit.llm.encoder_prune import remove_encoder_heads
    from slimkit.llm.load import load_encoder

    model, tok = _tiny_encoder()
    kept = [[0, 2], [1, 2, 3]]
    for layer, heads in zip(model.encoder.layer, kept):
        remove_encoder_heads(layer, heads, 8)
    folder = tmp_path / "old"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "slimkit_heads.json").write_text(json.dumps({"heads_kept": kept, "head_size": 8, "layers": 2,
                                                           "intermediate_size": 64}))
    back, back_tok = load_encoder(folder)
    assert back.encoder.layer[1].attention.self.query.out_features == 3 * 8
    text = ["a short sentence to embed"]
    torch.testing.assert_close(embed(back, back_tok, text), embed(model, tok, text))
    (folder / "slimkit_heads.json").write_text(json.dumps({"heads_kept": [[0], [1]], "head_size": 8}))
    with pytest.raises(SlimkitError, match="does not match"):
        load_encoder(folder)
