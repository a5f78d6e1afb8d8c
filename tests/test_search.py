"""compress's one search over cuts (slimkit.compression.search): depth+width mixes at a target, timed alike."""

import copy

import pytest
import torch

from slimkit.compression.cutters import StructuredCutter
from slimkit.compression.search import Candidate, rank_blocks, ratio_for, search
from slimkit.compression.settings import CompressSettings, Target
from slimkit.errors import SlimkitError
from slimkit.measure import count_macs
from slimkit.models import ResNetCifar
from slimkit.prune.layers import removable_blocks
from slimkit.prune.structured import prune_structured

X = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
CALIB = [X]


def _model() -> ResNetCifar:
    torch.manual_seed(0)
    return ResNetCifar(depth=14, width=16).eval()


def _macs(m) -> int:
    return count_macs(m, X[:1])


def by_blocks_left(models: list) -> list[float]:
    """A "device" where time is the number of removable blocks left: each removed block saves 1 ms."""
    return [float(len(removable_blocks(m))) for m in models]


def test_ratio_for_reaches_the_cost_and_is_zero_when_already_met() -> None:
    model, cutter = _model(), StructuredCutter(X[:1])
    dense = _macs(model)
    r = ratio_for(cutter, model, [], _macs, 0.5 * dense)
    assert 0 < r < 0.9
    assert _macs(cutter.cut(model, r, [], exact=False)[0]) <= 0.5 * dense
    assert _macs(cutter.cut(model, r - 0.01, [], exact=False)[0]) > 0.5 * dense  # close to the smallest ratio
    assert ratio_for(cutter, model, [], _macs, 1.01 * dense) == 0.0
    assert ratio_for(cutter, model, [], _macs, 0.001 * dense) is None


def test_every_mix_meets_a_macs_target_and_mix_k_removes_the_first_k_ranked_blocks() -> None:
    model = _model()
    found = search(model, StructuredCutter(X[:1]), X[:1], Target("macs", 0.6), CALIB, CompressSettings(max_blocks=2),
                   by_blocks_left, progress=False)
    order = [r["block"] for r in found.block_ranking]
    assert sorted(order) == sorted(removable_blocks(model))
    assert all(r["saving_ms"] == 1.0 for r in found.block_ranking)
    assert sorted(c.blocks for c in found.candidates) == [0, 1, 2]
    for c in found.candidates:
        assert c.removed == order[:c.blocks] and c.macs <= 0.6 * _macs(model)
        assert c.macs == _macs(c.model) and c.ms == found.dense_ms - c.blocks
    # fastest first: the timer says more blocks removed is faster
    assert [c.blocks for c in found.candidates] == [2, 1, 0]


def test_blocks_rank_by_influence_per_millisecond_saved_and_non_paying_blocks_go_last() -> None:
    influence = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.05, "e": 0.01}
    saving = {"a": 0.05, "b": 0.3, "c": 0.4, "d": 0.0, "e": -0.01}
    # a: 2.0 per ms, b: 1.0, c: 0.5; d and e saved nothing, so they go last by influence
    assert rank_blocks(influence, saving) == ["c", "b", "a", "e", "d"]
    # with equal savings the order is plain influence order
    assert rank_blocks(influence, dict.fromkeys(influence, 0.1)) == ["e", "d", "a", "c", "b"]


def test_a_latency_target_keeps_per_depth_the_lightest_cut_measured_under_it() -> None:
    model = _model()
    n = len(removable_blocks(model))
    # with this timer channel cuts save nothing, so only removing blocks reaches the target
    share = (n - 2) / n
    found = search(model, StructuredCutter(X[:1]), X[:1], Target("latency", share), CALIB,
                   CompressSettings(max_blocks=3, ratios=(0.25, 0.5)), by_blocks_left, progress=False)
    assert [(c.blocks, c.ratio) for c in found.candidates] == [(3, 0.0), (2, 0.0)]
    assert all(c.latency_share <= share for c in found.candidates)
    with pytest.raises(SlimkitError, match="no cut reaches latency=0.5x: the fastest cut tried is"):
        search(model, StructuredCutter(X[:1]), X[:1], Target("latency", 0.5), CALIB,
               CompressSettings(max_blocks=1, ratios=(0.5,)), by_blocks_left, progress=False)


def lucky_in_a_crowd(models: list) -> list[float]:
    """A device where ms = MMACs, but a run of more than two models times every cut 10% fast: what
    picking the lightest of many mixes timed in few rounds does to the one picked."""
    crowd = 0.9 if len(models) > 2 else 1.0
    return [_macs(m) / 1e6 * (1.0 if i == 0 else crowd) for i, m in enumerate(models)]


def test_a_latency_mix_is_timed_again_alone_with_dense_and_gives_way_to_a_larger_cut_when_it_misses() -> None:
    model, cutter = _model(), StructuredCutter(X[:1])
    dense = _macs(model)
    s25, s50 = (_macs(cutter.cut(model, r, CALIB)[0]) / dense for r in (0.25, 0.5))
    target = (0.9 * s25 + s25) / 2  # the crowd run puts the 0.25 cut under it; alone it is over
    assert s50 < target < s25
    found = search(model, cutter, X[:1], Target("latency", target), CALIB,
                   CompressSettings(max_blocks=0, ratios=(0.25, 0.5)), lucky_in_a_crowd, progress=False)
    assert [(c.blocks, c.ratio) for c in found.candidates] == [(0, 0.5)]
    assert found.candidates[0].confirmed_share == pytest.approx(s50)
    assert found.candidates[0].latency_share == pytest.approx(0.9 * s50)  # the search's pass is kept beside it
    assert found.candidates[0].as_dict()["confirmed_share"] == pytest.approx(s50)
    with pytest.raises(SlimkitError, match="when timed again against the dense model alone"):
        search(model, cutter, X[:1], Target("latency", target), CALIB,
               CompressSettings(max_blocks=0, ratios=(0.1, 0.25)), lucky_in_a_crowd, progress=False)


def test_round_to_sets_the_width_multiple_of_every_mix() -> None:
    """ResNetCifar(width=16) has 16/32/64-channel stages: at round_to 8 a 0.6x MACs cut leaves widths that are
    odd multiples of 8, at round_to 16 none (the widths ONNX Runtime's int8 convolutions run fast)."""
    model = _model()
    widths = {}
    for round_to in (8, 16):
        found = search(model, StructuredCutter(X[:1], round_to=round_to), X[:1], Target("macs", 0.6), CALIB,
                       CompressSettings(max_blocks=1), by_blocks_left, progress=False)
        assert all(c.macs <= 0.6 * _macs(model) for c in found.candidates)
        widths[round_to] = {m.out_channels for c in found.candidates for m in c.model.modules()
                            if isinstance(m, torch.nn.Conv2d)}
    assert any(w % 16 for w in widths[8])
    assert all(w % 16 == 0 for w in widths[16])
    r16 = ratio_for(StructuredCutter(X[:1], round_to=16), model, [], _macs, 0.6 * _macs(model))
    assert _macs(prune_structured(copy.deepcopy(model), X[:1], r16, "l2", round_to=16).model) <= 0.6 * _macs(model)


def test_not_slower_keeps_the_dense_model_when_the_cut_does_not_pay() -> None:
    from slimkit.measure.fresh import not_slower

    torch.manual_seed(0)
    small, big = ResNetCifar(depth=8, width=8).eval(), ResNetCifar(depth=14, width=48).eval()
    kept, info = not_slower(small, big, X[:1], rounds=10, passes=1)  # "pruned" is 10x the work: must be refused
    assert kept is small and not info["kept_pruned"] and "does not pay" in info["note"]
    assert "fresh processes" in info["method"] and "OMP_WAIT_POLICY=ACTIVE" in info["method"]
    kept, info = not_slower(big, small, X[:1], rounds=10, passes=1)
    assert kept is small and info["kept_pruned"] and info["pruned_ms"] < info["dense_ms"]


def test_not_slower_times_models_without_config_in_process() -> None:
    from slimkit.measure.fresh import not_slower

    small, big = torch.nn.Conv2d(1, 4, 3), torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, 3, padding=1)] * 40)
    kept, info = not_slower(small, big, X[:1], rounds=10)
    assert kept is small and "in this process" in info["method"]


def test_not_slower_times_a_foreign_model_in_fresh_processes_with_its_builder() -> None:
    from slimkit.measure.fresh import not_slower
    from slimkit.prune.structured import prune_structured
    from tests.crnn import CRNN

    torch.manual_seed(0)
    dense = CRNN().eval()
    x = torch.randn(1, 1, 16, 64)
    cut = prune_structured(copy.deepcopy(dense), x, 0.5).model.eval()
    assert cut.conv[0].out_channels < dense.conv[0].out_channels
    _, info = not_slower(dense, cut, x, rounds=5, passes=1, builder="tests.crnn:CRNN")
    assert "fresh processes" in info["method"] and "builder tests.crnn:CRNN" in info["method"]
    assert info["dense_ms"] > 0 and info["pruned_ms"] > 0
    with pytest.raises(SlimkitError, match="has no 'NoSuchBuilder'"):
        not_slower(dense, cut, x, rounds=5, passes=1, builder="tests.crnn:NoSuchBuilder")


def test_a_mix_is_named_by_its_blocks_and_channel_ratio():
    """Progress lines and refusals name a mix this way; one block is 'block', not 'blocks'."""
    one = Candidate(blocks=1, removed=["layer.3"], ratio=0.6, macs=1, params=1, ms=1.0, latency_share=0.7)
    assert one.label == "1 block, channel ratio 0.6"
    assert Candidate(blocks=0, removed=[], ratio=0.75, macs=1, params=1, ms=1.0, latency_share=0.64).label == \
        "0 blocks, channel ratio 0.75"
