"""Structured pruning: exact equivalence with masked references, couplings, heads, blocks, checkpoints."""

import copy

import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.io import load_model, save_model
from slimkit.models import MobileNetV2Small, ResNetCifar, SeedCNN, SmallViT
from slimkit.prune import allocation as alloc
from slimkit.prune import importance as imp
from slimkit.prune.structured import (
    build_graph,
    apply_plan,
    compute_scores,
    head_importance,
    masked_heads_reference,
    masked_reference,
    plan_channels,
    prune_structured,
    remove_blocks,
    remove_heads,
)

X = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(1))


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so a wrongly coupled channel would show in the outputs."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn({
        "resnet": lambda: ResNetCifar(depth=8, width=16),
        "mobilenet": lambda: MobileNetV2Small(setting=[[1, 16, 1, 1], [4, 24, 2, 2]], last_channel=64),
        "vit": lambda: SmallViT(dim=32, depth=2, num_heads=4, mlp_ratio=2.0),
        "cnn": lambda: SeedCNN(widths=(16, 32, 64)),
    }[name]())


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "vit", "cnn"])
@pytest.mark.parametrize("kind", ["l2", "entropy"])
def test_removal_matches_masked_reference(name: str, kind: str) -> None:
    model = _tiny(name)
    graph = build_graph(model, X[:1])
    scores = compute_scores(graph, kind, [(X, Y)])
    keep = {g: max(1, n // 2) for g, n in graph.sizes.items()}
    plan = plan_channels(graph, scores, keep)
    assert plan, "nothing was planned"
    ref = masked_reference(graph, plan).eval()
    pruned = apply_plan(graph, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), ref(X), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in ref.parameters())


def test_residual_coupling_keeps_stream_consistent() -> None:
    model = _tiny("resnet")
    result = prune_structured(model, X[:1], ratio=0.5)
    m = result.model
    # every block on a stage's residual stream shrinks together, shortcut conv included
    assert m.layer2[0].conv2.out_channels == m.layer2[0].shortcut[0].out_channels == m.layer3[0].conv1.in_channels
    assert m.fc.out_features == 10 and m.fc.in_features == m.layer3[0].bn2.num_features
    assert m(X).shape == (6, 10)


def test_depthwise_conv_stays_depthwise() -> None:
    result = prune_structured(_tiny("mobilenet"), X[:1], ratio=0.5)
    dws = [m for m in result.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dws and all(m.groups == m.in_channels == m.out_channels == m.weight.shape[0] for m in dws)
    assert any(m.out_channels < 96 for m in dws)


def test_heads_removed_exactly() -> None:
    model = _tiny("vit")
    scores = head_importance(model)
    plan = {name: alloc.lowest(s, 2) for name, s in scores.items()}
    ref = masked_heads_reference(model, plan).eval()
    pruned = remove_heads(copy.deepcopy(model), plan).eval()
    assert all(a.num_heads == 2 and a.q.out_features == 16 for a in (b.attn for b in pruned.blocks))
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), ref(X), rtol=0, atol=1e-5)


def test_residual_width_cut_through_attention_when_not_ignored() -> None:
    model = _tiny("vit")
    result = prune_structured(model, X[:1], ratio=0.5, ignored=[], round_to=4)
    m = result.model
    width = m.patch_embed.out_channels
    assert width == 16 and m.cls_token.shape[-1] == m.pos_embed.shape[-1] == width
    for b in m.blocks:
        assert b.attn.q.in_features == b.attn.proj.out_features == b.norm1.normalized_shape[0] == width
        assert b.attn.q.out_features == b.attn.num_heads * b.attn.head_dim
    assert m(X).shape == (6, 10) and result.kept_intact == {}


def test_block_removal_by_influence() -> None:
    model = _tiny("resnet")
    result = prune_structured(model, X[:1], ratio=0.0, blocks=1, calib=[(X, Y)])
    assert len(result.removed_blocks) == 1
    assert isinstance(result.model.get_submodule(result.removed_blocks[0]), nn.Identity)
    with pytest.raises(SlimkitError, match="not a removable block"):
        remove_blocks(_tiny("resnet"), ["layer2.0"])  # its shortcut changes shape


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "vit"])
def test_save_load_heterogeneous_widths(name: str, tmp_path) -> None:
    result = prune_structured(_tiny(name), X[:1], ratio=0.4, allocation="global", calib=[(X, Y)], blocks=1,
                              head_ratio=0.5, round_to=4)
    path = save_model(result.model, tmp_path / "p.safetensors")
    loaded = load_model(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), result.model.eval()(X), rtol=0, atol=0)
    dense = {k: list(v.shape) for k, v in _tiny(name).state_dict().items()}
    shapes = {k: list(v.shape) for k, v in loaded.state_dict().items()}
    assert shapes == {k: list(v.shape) for k, v in result.model.state_dict().items()}
    narrowed = [k for k, s in shapes.items() if k in dense and s != dense[k]]
    assert narrowed, "the round trip must carry pruned widths, not the dense ones"
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in _tiny(name).parameters())
    assert len(result.removed_blocks) == 1 and isinstance(loaded.get_submodule(result.removed_blocks[0]), nn.Identity)


def test_lstm_is_kept_and_named_not_refused() -> None:
    class WithLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.rnn = nn.LSTM(8, 8)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    torch.manual_seed(0)
    model = WithLSTM()
    result = prune_structured(copy.deepcopy(model), X[:1], ratio=0.5, round_to=4)
    assert "rnn" in result.kept_intact and "hidden units kept" in result.kept_intact["rnn"]
    assert result.model.conv.out_channels == 4 and result.model.fc.in_features == 4  # the rest is cut
    assert all(torch.equal(a, b) for a, b in zip(result.model.rnn.parameters(), model.rnn.parameters()))
    with pytest.raises(SlimkitError, match=r"ignored layers \['nope'\] are not modules"):
        prune_structured(model, X[:1], ratio=0.5, ignored=["nope"])


def test_ignored_layer_keeps_its_exact_weights() -> None:
    model = _tiny("cnn")
    result = prune_structured(copy.deepcopy(model), X[:1], ratio=0.5, ignored=["conv2"])
    m = result.model
    assert torch.equal(m.conv2.weight, model.conv2.weight) and torch.equal(m.conv2.bias, model.conv2.bias)
    assert result.kept_intact == {"conv2": "ignored"}
    assert {"conv1", "conv2"} <= set(result.held)  # its inputs and outputs stay with it
    assert m.fc1.out_features < model.fc1.out_features  # what is not coupled to it is still cut
    assert m(X).shape == (6, 10)


def test_same_seed_same_structure() -> None:
    a = prune_structured(_tiny("resnet"), X[:1], 0.5, "taylor", "global", calib=[(X, Y)])
    b = prune_structured(_tiny("resnet"), X[:1], 0.5, "taylor", "global", calib=[(X, Y)])
    assert a.kept == b.kept
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_rounding_to_multiples() -> None:
    assert alloc.round_keep(64, 37, 8) == 40
    assert alloc.round_keep(64, 2, 8) == 8
    assert alloc.round_keep(6, 1, 8) == 6
    result = prune_structured(_tiny("resnet"), X[:1], ratio=0.3, allocation="global", calib=[(X, Y)])
    assert all(k % 8 == 0 for k, _ in result.kept.values())
    assert alloc.uniform_keep({"a": 64, "b": 32}, 0.5, 8, {"b": 0.0}) == {"a": 32, "b": 32}
    with pytest.raises(SlimkitError):
        alloc.uniform_keep({"a": 64}, 0.5, 8, {"zz": 0.1})


def test_pure_scores() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
    s = imp.Slice(w, None, 0, [0, 1, 2], [0, 1, 2], "weight")
    assert imp.magnitude_scores([s], 3, 2).tolist() == [5.0, 1.0, 1.0]
    vals = torch.stack([torch.zeros(100), torch.linspace(-1, 1, 100)])
    e = imp.entropy_scores(vals)
    assert e[0] == 0 and e[1] > 2.0  # a dead channel carries no information
    x = torch.randn(2, 4, 3, 3)
    assert imp.block_influence(x, x, 1) == pytest.approx(0.0, abs=1e-9)
    assert imp.block_influence(x, -x, 1) == pytest.approx(2.0)


def test_latency_aware_keep_spends_budget_where_time_is_saved() -> None:
    ones = {"a": torch.ones(16), "b": torch.ones(16)}
    keep, notes = alloc.latency_aware_keep(ones, {"a": 1.0, "b": -1.0}, 8.0, 8)
    assert keep == {"a": 8, "b": 16} and "would not pay" in notes[0] and notes[0].startswith("b")
    # same importance per chunk: all of the budget goes to the group that saves more per channel
    scores = {"a": torch.ones(32), "b": torch.ones(32)}
    keep, _ = alloc.latency_aware_keep(scores, {"a": 1.0, "b": 3.0}, 16.0, 8, max_ratio=0.9)
    assert keep == {"a": 32, "b": 16}
    # a chunk too costly for what is left retires its group; cheaper chunks elsewhere still get spent
    scores = {"a": torch.tensor([5.0] * 16), "b": torch.tensor([0.1] * 8 + [1.0] * 8)}
    keep, _ = alloc.latency_aware_keep(scores, {"a": 10.0, "b": 1.0}, 1.5, 8, normalize=False)
    assert keep == {"a": 16, "b": 8}
    # with a target, cuts stop as soon as the saving is reached; saving may depend on other groups
    calls = []

    def saving(k: dict, g: str, new_k: int) -> float:
        calls.append(dict(k))
        return (k[g] - new_k) * (2.0 if k["a"] == 32 else 0.5)

    keep, _ = alloc.latency_aware_keep({"a": torch.ones(32), "b": torch.ones(32)}, saving, target_ms=20.0, round_to=8)
    assert sum(32 - k for k in keep.values()) == 16 and any(c["a"] < 32 for c in calls)
    assert alloc.importance_lost({"a": torch.tensor([1.0, 3.0])}, {"a": 1}, normalize=False) == 1.0


def test_grouped_conv_is_kept_with_its_channels() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3)
            self.mix = nn.Conv2d(16, 16, 3, groups=4)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.mix(self.stem(x)).mean((2, 3)))

    graph = build_graph(Grouped(), X[:1])
    assert graph.groups == {} and set(graph.held) == {"stem", "mix"}
    assert "grouped convolution (groups=4)" in graph.kept_intact["mix"]


def test_iterative_prune_reaches_ratio() -> None:
    from slimkit.prune.structured import iterative_prune

    calls = []
    result = iterative_prune(_tiny("cnn"), X[:1], ratio=0.75, steps=2, recover=lambda m: calls.append(1) or m,
                             round_to=4)
    assert len(calls) == 2
    assert result.kept["fc1"] == (16, 64) and result.model.fc1.out_features == 16


# ----- latency lookup table, BN folding and recalibration ---------------------------------------------

def test_table_grid_is_monotone_and_interpolates() -> None:
    from slimkit.prune.latency_cost import Site, monotone

    grid = monotone([[1.0, 5.0], [0.5, 4.0]])  # the narrower input measured slower: clipped to the wider
    assert grid == [[0.5, 4.0], [0.5, 4.0]]
    site = Site("c", "conv", [1, 16, 8, 8], 16, 16, [3, 3], [1, 1], [1, 1], False, "g", "h", [8, 16], [8, 16], 1,
                [[1.0, 3.0], [2.0, 6.0]])
    assert site.time_at(16, 16) == 6.0 and site.time_at(8, 8) == 1.0 and site.time_at(4, 40) == 3.0
    assert site.time_at(12, 12) == pytest.approx((1.0 + 3.0 + 2.0 + 6.0) / 4)
    dw = Site("d", "conv", [1, 16, 8, 8], 16, 16, [3, 3], [1, 1], [1, 1], True, "g", "g", [8, 16], [8, 16], 1,
              [[1.0, 2.0], [2.0, 2.0]])
    assert dw.time_at(12, 12) == pytest.approx(1.5)


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "cnn"])
def test_latency_table_is_sane_on_tiny_models(name: str, tmp_path) -> None:
    from slimkit.prune.latency_cost import latency_table

    model = _tiny(name)
    table = latency_table(model, X[:1], threads=1, rounds=5, cache=tmp_path / "t.json", progress=False)
    graph = build_graph(model, X[:1])
    assert set(table.sizes) == set(graph.sizes)
    assert {g for s in table.sites.values() for g in (s.in_group, s.out_group) if g} == set(graph.sizes)
    for site in table.sites.values():
        assert all(v > 0 for row in site.ms for v in row)
        assert all(a <= b for row in site.ms for a, b in zip(row, row[1:]))
        assert all(a <= b for col in zip(*site.ms) for a, b in zip(col, col[1:]))
    full = dict(table.sizes)
    assert table.saving_ms(full) == 0.0
    half = {g: max(1, n // 2) for g, n in full.items()}
    assert table.saving_ms(half) >= 0.0 and all(v >= 0 for v in table.per_channel().values())
    again = latency_table(model, X[:1], threads=1, rounds=5, cache=tmp_path / "t.json", progress=False)
    assert again.as_dict() == table.as_dict()  # read back from the JSON cache, not re-measured


def test_sites_follow_couplings() -> None:
    from slimkit.prune.latency_cost import find_sites

    sites = find_sites(build_graph(_tiny("cnn"), X[:1]), X[:1])
    assert sites["conv1"].out_group == "conv1" and sites["conv2"].in_group == "conv1"
    assert sites["fc1"].in_group == "conv2" and sites["fc1"].in_scale == 49  # flatten of a 7x7 map
    assert sites["fc2"].in_group == "fc1" and sites["fc2"].out_group is None  # the head keeps its outputs
    mb = find_sites(build_graph(_tiny("mobilenet"), X[:1]), X[:1])
    dws = [s for s in mb.values() if s.depthwise]
    assert dws and all(s.in_group == s.out_group for s in dws)


def test_latency_aware_cuts_where_the_table_says_time_goes() -> None:
    from slimkit.prune.latency_cost import LatencyTable, find_sites, prune_latency_aware

    model = _tiny("cnn")
    sites = find_sites(build_graph(model, X[:1]), X[:1], round_to=4)
    for s in sites.values():  # synthetic timings: only conv2's output channels cost time
        s.ms = [[float(o) if s.name == "conv2" else 1.0 for o in s.out_widths] for _ in s.in_widths]
    table = LatencyTable(sites, {"conv1": 16, "conv2": 32, "fc1": 64})
    la = prune_latency_aware(copy.deepcopy(model), X[:1], 0.5, "l2", round_to=4, threads=1, table=table, rounds=3)
    info = la.details
    uniform = prune_structured(copy.deepcopy(model), X[:1], 0.5, round_to=4)
    assert la.kept["conv2"][0] < uniform.kept["conv2"][0] and la.kept["conv1"][0] == 16
    assert info["importance_spent"] <= info["importance_uniform"] * (1 + 1e-9)
    assert info["predicted_saving_ms"] > info["uniform_predicted_saving_ms"]
    assert la.model(X).shape == (6, 10)


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_fold_batchnorm_keeps_outputs(name: str) -> None:
    from slimkit.measure.fold import fold_batchnorm

    model = _tiny(name)
    pruned = prune_structured(copy.deepcopy(model), X[:1], 0.5).model.eval()
    for m in (model, pruned):
        folded = fold_batchnorm(m, X[:1])
        assert not any(isinstance(x, nn.BatchNorm2d) for x in folded.modules())
        assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # the original is untouched
        with torch.no_grad():
            torch.testing.assert_close(folded(X), m(X), rtol=1e-4, atol=1e-4)


def test_fold_refuses_shared_conv_output() -> None:
    from slimkit.measure.fold import fold_batchnorm

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _randomise_bn(Shared())
    with pytest.raises(SlimkitError, match="used elsewhere"):
        fold_batchnorm(model, X[:2])


def test_recalibrate_bn_matches_batch_statistics() -> None:
    from slimkit.prune.batchnorm import recalibrate_bn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(100.0)
    weight = model[0].weight.detach().clone()
    recalibrate_bn(model, [X[:3], X[3:]])
    with torch.no_grad():
        act = model[0](X)
    torch.testing.assert_close(model[1].running_mean, act.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and torch.equal(model[0].weight, weight) and model[1].momentum == 0.1


def test_calibration_scale_multiplies_every_saving_and_is_cached() -> None:
    """calibrate() returns a non-negative factor without touching the table; set, it scales savings."""
    from slimkit.prune.latency_cost import calibrate, latency_table

    model = _tiny("resnet")
    table = latency_table(model, X[:1], threads=1, rounds=5, progress=False)
    assert table.scale == 1.0
    scale, dense_ms = calibrate(table, model, X[:1], lambda m: m, threads=1, rounds=20)
    assert scale >= 0.0 and dense_ms > 0 and table.scale == 1.0  # returns the factor, the table is untouched
    unscaled = table.saving_ms({g: max(1, n // 2) for g, n in table.sizes.items()})
    table.scale = scale
    assert table.saving_ms({g: max(1, n // 2) for g, n in table.sizes.items()}) == pytest.approx(scale * unscaled)
    assert type(table).from_dict(table.as_dict()).scale == scale


def test_cached_calibrated_table_is_retaken_when_the_dense_time_moved(tmp_path) -> None:
    import json

    from slimkit.prune.latency_cost import latency_table

    model, cache = _tiny("cnn"), tmp_path / "t.json"
    first = latency_table(model, X[:1], threads=1, rounds=5, cache=cache, progress=False, calibrate_with=lambda m: m)
    assert first.dense_ms > 0
    stored = json.loads(cache.read_text())
    (key,) = stored
    stored[key]["dense_ms"] = first.dense_ms * 10  # as if calibrated while the machine was 10x slower
    stored[key]["scale"] = 123.0
    cache.write_text(json.dumps(stored))
    again = latency_table(model, X[:1], threads=1, rounds=5, cache=cache, progress=False, calibrate_with=lambda m: m)
    assert again.scale != 123.0 and again.dense_ms < first.dense_ms * 5
