"""Structured pruning of architectures slimkit did not write: real `transformers` classes (small
configs, random init, nothing downloaded) and a conv + BiLSTM recogniser.

Where the definition allows (no LayerNorm over the cut channels), the pruned model must equal a
dense copy whose cut channels or heads output zero; everywhere, a 50% cut must run, keep the
output shapes and lower the MACs, and whatever is kept must keep its exact weights.
"""

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from slimkit.measure import count_macs
from slimkit.prune import allocation as alloc
from slimkit.prune.structured import (
    apply_plan,
    build_graph,
    compute_scores,
    head_importance,
    masked_heads_reference,
    masked_reference,
    plan_channels,
    prune_structured,
    remove_heads,
)
from tests.crnn import CRNN


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    t = transformers
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if name == "resnet":
        m = t.ResNetForImageClassification(t.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                          layer_type="bottleneck", num_labels=5))
    elif name == "mobilenet_v2":
        m = t.MobileNetV2ForImageClassification(t.MobileNetV2Config(depth_multiplier=0.35, image_size=32,
                                                                    num_labels=5))
    elif name == "convnext":
        m = t.ConvNextForImageClassification(t.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2,
                                                              num_labels=5, layer_scale_init_value=0.5))
    elif name == "vit":
        m = t.ViTForImageClassification(t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, image_size=32, patch_size=8, num_labels=5))
    elif name == "bert":
        m = t.BertModel(t.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64))
        return _randomise(m).eval(), torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    elif name == "wav2vec2":
        m = t.Wav2Vec2ForCTC(t.Wav2Vec2Config(vocab_size=12, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
                                              conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                                              num_conv_pos_embedding_groups=4))
        return _randomise(m).eval(), torch.randn(2, 1600, generator=torch.Generator().manual_seed(1))
    else:
        raise ValueError(name)
    return _randomise(m).eval(), img


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and biases (HF inits many at 0/1), so a wrong coupling shows."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    if isinstance(out, torch.Tensor):
        return out
    return out["logits"] if "logits" in out else out["last_hidden_state"]


def _exact(graph, name: str) -> bool:
    """A group whose removal equals zeroing: no normalisation computes statistics over its channels."""
    for item in graph.groups[name]:
        m = item.dep.target.module
        if isinstance(m, nn.LayerNorm) or (isinstance(m, nn.GroupNorm) and m.num_groups < m.num_channels):
            return False
    return True


ALL = ["resnet", "mobilenet_v2", "convnext", "vit", "bert", "wav2vec2"]


@pytest.mark.parametrize("name", ALL)
def test_half_cut_runs_keeps_shapes_and_lowers_macs(name: str) -> None:
    model, x = _build(name)
    dense_out = _out(model, x)
    result = prune_structured(copy.deepcopy(model), x[:1], ratio=0.5, head_ratio=0.5, round_to=4)
    out = _out(result.model, x)
    assert out.shape == dense_out.shape
    assert torch.isfinite(out).all()
    assert count_macs(result.model, x) < 0.8 * count_macs(model, x)
    assert any(k < n for k, n in result.kept.values())
    for a in (m for m in result.model.modules() if hasattr(m, "num_attention_heads") or hasattr(m, "num_heads")):
        heads = getattr(a, "num_attention_heads", getattr(a, "num_heads", None))
        q = getattr(a, "query", None) or getattr(a, "q_proj", None)
        if q is not None and isinstance(heads, int):
            assert heads == 2 and q.out_features == 2 * 8  # half of 4 heads of 8 dims
            if hasattr(a, "all_head_size"):
                assert a.all_head_size == q.out_features


@pytest.mark.parametrize("name", ALL)
def test_channel_removal_matches_masked_reference(name: str) -> None:
    model, x = _build(name)
    graph = build_graph(model, x[:1])
    scores = compute_scores(graph, "l2")
    exact = [g for g in graph.sizes if _exact(graph, g)]
    assert exact, "nothing can be cut exactly"
    keep = {g: max(1, graph.sizes[g] // 2) for g in exact}
    plan = plan_channels(graph, scores, keep)
    ref = masked_reference(graph, plan)
    pruned = apply_plan(graph, plan)
    torch.testing.assert_close(_out(pruned, x), _out(ref, x), rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", ["vit", "bert", "wav2vec2"])
def test_head_removal_matches_masked_reference_and_keeps_attributes(name: str) -> None:
    model, x = _build(name)
    scores = head_importance(model)
    assert len(scores) == 2 and all(len(s) == 4 for s in scores.values())
    plan = {n: alloc.lowest(s, k) for (n, s), k in zip(scores.items(), (3, 1))}  # per-layer counts differ
    ref = masked_heads_reference(model, plan)
    pruned = remove_heads(copy.deepcopy(model), plan)
    torch.testing.assert_close(_out(pruned, x), _out(ref, x), rtol=1e-4, atol=1e-4)
    for n, left in zip(scores, (3, 1)):
        a = pruned.get_submodule(n)
        assert getattr(a, "num_attention_heads", getattr(a, "num_heads", None)) == left
        if hasattr(a, "all_head_size"):
            assert a.all_head_size == left * a.attention_head_size


def test_convnext_layer_scale_is_cut_with_its_channels() -> None:
    model, x = _build("convnext")
    result = prune_structured(copy.deepcopy(model), x[:1], ratio=0.5, round_to=4)
    layers = [m for m in result.model.modules() if type(m).__name__ == "ConvNextLayer"]
    assert layers
    for layer in layers:
        assert layer.layer_scale_parameter.shape[0] == layer.dwconv.out_channels == layer.pwconv2.out_features
    assert any(layer.dwconv.out_channels < d.dwconv.out_channels for layer, d in
               zip(layers, (m for m in model.modules() if type(m).__name__ == "ConvNextLayer")))


def test_vit_keeps_embeddings_and_config_describes_the_uniform_cut() -> None:
    model, x = _build("vit")
    result = prune_structured(copy.deepcopy(model), x[:1], ratio=0.5, head_ratio=0.5, round_to=4)
    pruned = result.model
    assert "vit.embeddings" in result.kept_intact
    assert torch.equal(pruned.vit.embeddings.cls_token, model.vit.embeddings.cls_token)
    assert torch.equal(pruned.vit.embeddings.position_embeddings, model.vit.embeddings.position_embeddings)
    assert pruned.config.num_attention_heads == 2 and pruned.config.intermediate_size == 32
    rebuilt = type(pruned)(pruned.config)
    rebuilt.load_state_dict(pruned.state_dict())  # strict: the config alone gives every pruned shape
    torch.testing.assert_close(_out(rebuilt, x), _out(pruned, x), rtol=0, atol=0)


def test_bert_keeps_embeddings_and_head_count_lives_in_the_modules() -> None:
    model, x = _build("bert")
    result = prune_structured(copy.deepcopy(model), x[:1], ratio=0.5, head_ratio=0.5, round_to=4)
    pruned = result.model
    assert {"embeddings.word_embeddings", "embeddings.position_embeddings"} <= set(result.kept_intact)
    assert torch.equal(pruned.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
    # BERT derives its head size from hidden_size / num_attention_heads, so only the FFN width goes
    # into the config; the head count is carried by every attention module
    assert pruned.config.intermediate_size == 32 and pruned.config.num_attention_heads == 4
    assert any("keeps its dense num_attention_heads" in n for n in result.notes)
    assert all(layer.attention.self.num_attention_heads == 2 for layer in pruned.encoder.layer)


def test_wav2vec2_keeps_weight_normed_conv_and_masked_embedding() -> None:
    model, x = _build("wav2vec2")
    result = prune_structured(copy.deepcopy(model), x[:1], ratio=0.5, head_ratio=0.5, round_to=4)
    pruned = result.model
    assert "wav2vec2.encoder.pos_conv_embed.conv" in result.kept_intact
    assert "masked_spec_embed" in result.kept_intact["wav2vec2"]
    for (k, a), b in zip(model.wav2vec2.encoder.pos_conv_embed.state_dict().items(),
                         pruned.wav2vec2.encoder.pos_conv_embed.state_dict().values()):
        assert torch.equal(a, b), k
    assert pruned.wav2vec2.masked_spec_embed.shape == (pruned.config.hidden_size,)
    assert pruned.wav2vec2.feature_projection.projection.out_features == pruned.config.hidden_size
    assert pruned.wav2vec2.feature_extractor.conv_layers[0].conv.out_channels == 8  # the feature encoder is cut
    assert pruned.wav2vec2.feature_extractor.conv_layers[0].layer_norm.num_groups == 8  # one group per channel


def test_ignored_modules_keep_their_exact_weights() -> None:
    model, x = _build("bert")
    ignored = ["encoder.layer.0.intermediate.dense", "encoder.layer.1.attention.self"]
    result = prune_structured(copy.deepcopy(model), x[:1], ratio=0.5, head_ratio=0.5, round_to=4, ignored=ignored)
    for n in ignored:
        dense, cut = model.get_submodule(n).state_dict(), result.model.get_submodule(n).state_dict()
        assert all(torch.equal(dense[k], cut[k]) for k in dense), n
        assert result.kept_intact[n] == "ignored"
    assert result.model.encoder.layer[0].output.dense.in_features == 64  # its outputs' reader keeps them too
    assert result.model.encoder.layer[1].intermediate.dense.out_features == 32  # the rest is still cut
    assert result.model.encoder.layer[0].attention.self.num_attention_heads == 2


def test_lstm_recogniser_is_cut_around_its_lstm() -> None:
    torch.manual_seed(0)
    model = _randomise(CRNN(width=16, hidden=24, classes=11)).eval()
    model.rnn = nn.LSTM(model.rnn.input_size, 24, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 1, 16, 40, generator=torch.Generator().manual_seed(3))
    graph = build_graph(model, x[:1])
    assert "rnn" in graph.kept_intact and "hidden units kept" in graph.kept_intact["rnn"]
    assert "head" not in graph.groups  # the LSTM's outputs (read by the head) stay
    keep = {g: n // 2 for g, n in graph.sizes.items()}
    plan = plan_channels(graph, compute_scores(graph, "l2"), keep)
    ref = masked_reference(graph, plan)
    dense_rnn = copy.deepcopy(model.rnn)
    pruned = apply_plan(graph, plan)
    torch.testing.assert_close(_out(pruned, x), _out(ref, x), rtol=1e-5, atol=1e-5)
    assert [c.out_channels for c in pruned.conv if isinstance(c, nn.Conv2d)] == [8, 16]
    assert pruned.rnn.input_size == 16 * 4 and pruned.rnn.hidden_size == 24  # columns follow the conv; units stay
    for k, v in dense_rnn.state_dict().items():
        if not k.startswith("weight_ih_l0"):
            assert torch.equal(v, pruned.rnn.state_dict()[k]), k


def test_latency_sites_come_from_the_handlers() -> None:
    from slimkit.prune.latency_cost import find_sites

    model, x = _build("bert")
    sites = find_sites(build_graph(model, x[:1]), x[:1])
    ffn = {n for n in sites if "intermediate.dense" in n or ("output.dense" in n and "attention" not in n)}
    assert ffn == set(sites)  # the FFN layers the groups resize; the residual width (embeddings) is kept
    assert sites["encoder.layer.0.intermediate.dense"].out_group == "encoder.layer.0.intermediate.dense"
    assert sites["encoder.layer.0.output.dense"].in_group == "encoder.layer.0.intermediate.dense"
    torch.manual_seed(0)
    crnn = CRNN(width=16, hidden=24, classes=11).eval()
    x = torch.randn(1, 1, 16, 40)
    sites = find_sites(build_graph(crnn, x), x)
    assert set(sites) == {"conv.0", "conv.4"}  # the LSTM is no timed site; the head's inputs are kept


def test_gru_and_multihead_attention_are_cut_around() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.gru = nn.GRU(16, 12, batch_first=True, bidirectional=True)
            self.mid = nn.Linear(24, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc1 = nn.Linear(16, 32)
            self.fc2 = nn.Linear(32, 5)

        def forward(self, x):
            h = self.mid(self.gru(torch.relu(self.inp(x)))[0])
            return self.fc2(torch.relu(self.fc1(self.attn(h, h, h)[0])))

    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.randn(2, 7, 6)
    graph = build_graph(model, x[:1])
    assert set(graph.groups) == {"inp", "fc1"} and "mid" in graph.held
    assert {"gru", "attn"} <= set(graph.kept_intact)
    plan = plan_channels(graph, compute_scores(graph, "l2"), {g: n // 2 for g, n in graph.sizes.items()})
    ref = masked_reference(graph, plan)
    attn = copy.deepcopy(model.attn.state_dict())
    pruned = apply_plan(graph, plan)
    torch.testing.assert_close(_out(pruned, x), _out(ref, x), rtol=1e-5, atol=1e-5)
    assert pruned.gru.input_size == 8 and pruned.gru.hidden_size == 12
    assert all(torch.equal(v, pruned.attn.state_dict()[k]) for k, v in attn.items())


def test_taylor_scores_read_hugging_face_logits() -> None:
    model, x = _build("vit")
    graph = build_graph(model, x[:1])
    scores = compute_scores(graph, "taylor", [(x, torch.tensor([0, 3]))])
    assert set(scores) == set(graph.sizes) and all(s.sum() > 0 for s in scores.values())
    assert all(p.grad is None for p in model.parameters())  # gradients are cleared afterwards


def test_unregistered_attention_is_recognised_or_kept() -> None:
    t = transformers
    torch.manual_seed(0)
    roberta = t.RobertaModel(t.RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=64)).eval()
    x = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    scores = head_importance(roberta)  # BERT-style by its attribute names, without an entry
    plan = {n: alloc.lowest(s, 2) for n, s in scores.items()}
    torch.testing.assert_close(_out(remove_heads(copy.deepcopy(roberta), plan), x),
                               _out(masked_heads_reference(roberta, plan), x), rtol=1e-4, atol=1e-4)

    class GroupedKV(nn.Module):  # fewer key/value rows than query rows: no entry fits
        def __init__(self) -> None:
            super().__init__()
            self.head_dim, self.num_heads = 4, 4
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)
            self.o_proj = nn.Linear(16, 16)

        def forward(self, x):
            kv = self.k_proj(x).repeat(1, 1, 2) * self.v_proj(x).repeat(1, 1, 2)
            return self.o_proj(self.q_proj(x) * kv)

    model = nn.Sequential(nn.Linear(6, 16), GroupedKV(), nn.ReLU(), nn.Linear(16, 3)).eval()
    result = prune_structured(copy.deepcopy(model), torch.randn(1, 5, 6), ratio=0.5, round_to=4)
    assert "grouped key/value" in result.kept_intact["1"]
    assert result.model[1].q_proj.out_features == 16 and result.model[0].out_features == 16
