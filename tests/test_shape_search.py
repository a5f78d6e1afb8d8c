"""Latency-aware depth+width search: candidates at the MACs target, choice by measured time and score."""

import copy

import pytest
import torch

from slimkit.errors import SlimkitError
from slimkit.measure import count_macs
from slimkit.models import ResNetCifar
from slimkit.prune.layers import removable_blocks
from slimkit.prune.shape_search import choose_depth_width, interleaved_timer, rank_blocks, ratio_for_macs
from slimkit.prune.structured import prune_structured

X = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
CALIB = [(X, torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1)))]


def _model() -> ResNetCifar:
    torch.manual_seed(0)
    return ResNetCifar(depth=14, width=16).eval()


def test_ratio_for_macs_reaches_the_target_and_is_zero_when_already_met() -> None:
    model = _model()
    dense = count_macs(model, X[:1])
    r = ratio_for_macs(model, X[:1], 0.5 * dense)
    assert 0 < r < 0.9
    assert ratio_for_macs(model, X[:1], 1.01 * dense) == 0.0
    with pytest.raises(SlimkitError, match="no channel ratio"):
        ratio_for_macs(model, X[:1], 0.001 * dense)


def test_every_candidate_meets_the_target_and_the_choice_follows_score_then_time() -> None:
    model = _model()
    target = 0.6 * count_macs(model, X[:1])
    # the score is the number of blocks left, so each removed block costs 1 point: with tolerance 0
    # only k = 0 qualifies
    choice = choose_depth_width(model, X[:1], target, lambda m: float(len(removable_blocks(m))), "l2", CALIB,
                                max_blocks=2, tolerance=0.0, time_models=interleaved_timer(X[:1], rounds=5),
                                progress=False)
    assert [c.blocks for c in choice.candidates] == [0, 1, 2]
    # candidate k removes the first k blocks of the reported ranking
    order = [r["block"] for r in choice.block_ranking]
    assert sorted(order) == sorted(removable_blocks(model))
    assert [c.removed for c in choice.candidates] == [order[:k] for k in range(3)]
    assert all(c.macs <= target for c in choice.candidates)
    assert [len(c.removed) for c in choice.candidates] == [0, 1, 2]
    assert choice.chosen.blocks == 0 and choice.chosen.removed == []
    # a flat score makes every candidate eligible: the measured fastest wins
    flat = choose_depth_width(model, X[:1], target, lambda m: 1.0, "l2", CALIB, max_blocks=2, tolerance=0.0,
                              time_models=interleaved_timer(X[:1], rounds=5), progress=False)
    assert flat.chosen.ms == min(c.ms for c in flat.candidates)
    assert flat.dense_ms > 0 and flat.pays == (flat.chosen.ms < flat.dense_ms)
    assert count_macs(flat.model, X[:1]) == flat.chosen.macs


def test_blocks_rank_by_influence_per_millisecond_saved_and_non_paying_blocks_go_last() -> None:
    influence = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.05, "e": 0.01}
    saving = {"a": 0.05, "b": 0.3, "c": 0.4, "d": 0.0, "e": -0.01}
    # a: 2.0 per ms, b: 1.0, c: 0.5; d and e saved nothing, so they go last by influence
    assert rank_blocks(influence, saving) == ["c", "b", "a", "e", "d"]
    # with equal savings the order is plain influence order
    assert rank_blocks(influence, dict.fromkeys(influence, 0.1)) == ["e", "d", "a", "c", "b"]


def test_a_custom_timer_drives_the_choice() -> None:
    model = _model()
    target = 0.6 * count_macs(model, X[:1])

    def by_blocks_left(models: list) -> list[float]:  # a "device" where time is the number of blocks left
        return [float(len(removable_blocks(m))) for m in models]

    choice = choose_depth_width(model, X[:1], target, lambda m: 1.0, "l2", CALIB, max_blocks=2, tolerance=0.0,
                                time_models=by_blocks_left, progress=False)
    assert choice.chosen.blocks == 2 and choice.chosen.ms == choice.dense_ms - 2
    assert all(r["saving_ms"] == 1.0 for r in choice.block_ranking)


def test_with_a_floor_mixes_are_scored_fastest_first_until_one_holds() -> None:
    model = _model()
    target = 0.6 * count_macs(model, X[:1])
    n = len(removable_blocks(model))

    def by_blocks_left(models: list) -> list[float]:  # more blocks removed = faster
        return [float(len(removable_blocks(m))) for m in models]

    def blocks_left(m) -> float:  # each removed block costs a point
        return float(len(removable_blocks(m)))

    choice = choose_depth_width(model, X[:1], target, blocks_left, "l2", CALIB, max_blocks=2, floor=n - 1,
                                time_models=by_blocks_left, progress=False)
    # k = 2 is fastest but scores n - 2; k = 1 holds the floor, so k = 0 is never scored
    assert choice.chosen.blocks == 1
    assert [c.score for c in choice.candidates] == [None, n - 1, n - 2]
    # a floor no mix holds: all are scored and the best-scoring is kept
    missed = choose_depth_width(model, X[:1], target, blocks_left, "l2", CALIB, max_blocks=2, floor=n + 1,
                                time_models=by_blocks_left, progress=False)
    assert missed.chosen.blocks == 0 and all(c.score is not None for c in missed.candidates)


def test_bad_arguments_name_the_problem() -> None:
    model = _model()
    with pytest.raises(SlimkitError, match="max_blocks"):
        choose_depth_width(model, X[:1], 1e6, lambda m: 0.0, calib=CALIB, max_blocks=99, progress=False)
    with pytest.raises(SlimkitError, match="calib"):
        choose_depth_width(model, X[:1], 1e6, lambda m: 0.0, progress=False)


def test_not_slower_keeps_the_dense_model_when_the_cut_does_not_pay() -> None:
    from slimkit.prune.latency_cost import not_slower

    torch.manual_seed(0)
    small, big = ResNetCifar(depth=8, width=8).eval(), ResNetCifar(depth=14, width=48).eval()
    kept, info = not_slower(small, big, X[:1], rounds=10, passes=1)  # "pruned" is 10x the work: must be refused
    assert kept is small and not info["kept_pruned"] and "does not pay" in info["note"]
    assert "fresh processes" in info["method"] and "OMP_WAIT_POLICY=ACTIVE" in info["method"]
    kept, info = not_slower(big, small, X[:1], rounds=10, passes=1)
    assert kept is small and info["kept_pruned"] and info["pruned_ms"] < info["dense_ms"]


def test_not_slower_times_models_without_config_in_process() -> None:
    from slimkit.prune.latency_cost import not_slower

    small, big = torch.nn.Conv2d(1, 4, 3), torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, 3, padding=1)] * 40)
    kept, info = not_slower(small, big, X[:1], rounds=10)
    assert kept is small and "in this process" in info["method"]


def test_not_slower_times_a_foreign_model_in_fresh_processes_with_its_builder() -> None:
    from slimkit.prune.latency_cost import not_slower
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


def _conv_widths(model) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_round_to_sets_the_width_multiple_of_every_candidate() -> None:
    """ResNetCifar(width=16) has 16/32/64-channel stages: at round_to 8 a 0.6x MACs cut leaves widths that are
    odd multiples of 8, at round_to 16 none (the widths ONNX Runtime's int8 convolutions run fast)."""
    model = _model()
    target = 0.6 * count_macs(model, X[:1])
    by_blocks_left = lambda ms: [float(len(removable_blocks(m))) for m in ms]  # noqa: E731
    widths = {}
    for round_to in (8, 16):
        choice = choose_depth_width(model, X[:1], target, lambda m: 1.0, "l2", CALIB, max_blocks=1, tolerance=0.0,
                                    time_models=by_blocks_left, progress=False, round_to=round_to)
        assert all(c.macs <= target for c in choice.candidates)
        widths[round_to] = set(_conv_widths(choice.model))
    assert any(w % 16 for w in widths[8])
    assert all(w % 16 == 0 for w in widths[16])
    r16 = ratio_for_macs(model, X[:1], target, round_to=16)
    assert count_macs(prune_structured(copy.deepcopy(model), X[:1], r16, "l2", round_to=16).model, X[:1]) <= target
