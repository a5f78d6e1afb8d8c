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
    distill_encoder(student, teacher, tok, train, epochs=2, batch_size=16, lr=2e-4, progress=False)
    after = fidelity(student, teacher, tok, held)
    assert 0 < before.mean_cosine < after.mean_cosine <= 1
