"""MiniLM: head and FFN pruning, then embedding distillation, on the real weights."""


def test_encoder_distillation_smoke():
    """MiniLM: prune FFN and heads, distill a few steps; fidelity rises and stays in [0, 1]."""
    import copy

    from slimkit.llm.encoder import default_sentences, distill_encoder, fidelity, prune_encoder
    from slimkit.llm.load import load_encoder

    teacher, tok = load_encoder("minilm")
    student = copy.deepcopy(teacher)
    train, held = default_sentences(64, 32)
    kept = prune_encoder(student, tok, train[:32], 0.5, 0.25)
    assert kept["intermediate_size"] == 768 and all(len(h) == 9 for h in kept["heads_kept"])
    before = fidelity(student, teacher, tok, held)
    distill_encoder(student, teacher, tok, train, epochs=2, batch_size=16, lr=2e-4, layer_weight=1.0, progress=False)
    after = fidelity(student, teacher, tok, held)
    assert 0 < before.mean_cosine < after.mean_cosine <= 1


def test_hidden_cosine_loss_ignores_padding_and_is_zero_on_match():
    import torch

    from slimkit.llm.encoder import hidden_cosine_loss

    t = tuple(torch.randn(2, 5, 8) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert float(hidden_cosine_loss(t, t, mask)) < 1e-6
    s = tuple(x.clone() for x in t)
    s[0][0, 3:] = -s[0][0, 3:]  # only padding positions differ
    assert float(hidden_cosine_loss(s, t, mask)) < 1e-6
    s[1][1, 0] = -s[1][1, 0]  # one real token reversed: cos -1, loss 2 over 8 tokens of one of 3 layers
    assert abs(float(hidden_cosine_loss(s, t, mask)) - 2 / 8 / 3) < 1e-5
