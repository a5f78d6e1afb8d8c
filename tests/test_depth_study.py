"""Depth cuts of language models: the span rule, the seams recovery matches, the per-epoch curve."""

import copy
import math

import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.llm.depth import prune_depth, seam_pairs, span_scores
from slimkit.llm.recover import RecoveryConfig, recover
from slimkit.prune.layers import span_distances


class Residual(nn.Module):
    def __init__(self, width: int, scale: float) -> None:
        super().__init__()
        self.f = nn.Linear(width, width)
        with torch.no_grad():
            self.f.weight.mul_(scale)
            self.f.bias.mul_(scale)

    def forward(self, x):
        return x + self.f(x)


def _stack(scales):
    torch.manual_seed(0)
    blocks = nn.ModuleList(Residual(8, s) for s in scales)
    model = nn.Sequential(*blocks)
    return model, list(blocks)


def test_span_distance_is_the_mean_angle_between_what_enters_and_what_leaves_the_run():
    model, blocks = _stack([1.0, 0.5, 2.0, 1.0])
    batches = [torch.randn(2, 5, 8), torch.randn(3, 5, 8)]
    got = span_distances(model, blocks, batches, model, span=2)
    angles = [[] for _ in range(3)]
    for x in batches:
        states = [x]
        for b in blocks:
            states.append(b(states[-1]))
        for l in range(3):
            cos = nn.functional.cosine_similarity(states[l].double(), states[l + 2].double(), dim=-1)
            angles[l] += (torch.arccos(cos.clamp(-1, 1)) / math.pi).flatten().tolist()
    want = [sum(a) / len(a) for a in angles]
    assert got == pytest.approx(want, abs=1e-9)
    assert all(0.0 <= d <= 1.0 for d in got)


def test_the_run_that_changes_the_stream_least_is_the_one_found():
    model, blocks = _stack([1.0, 0.0, 0.0, 1.0, 1.0])  # blocks 1 and 2 are identities
    d = span_distances(model, blocks, [torch.randn(4, 6, 8)], model, span=2)
    assert len(d) == 4 and min(range(4), key=lambda i: d[i]) == 1 and d[1] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SlimkitError, match="span"):
        span_distances(model, blocks, [torch.randn(1, 2, 8)], model, span=6)


def test_seams_pair_each_kept_block_before_a_gap_with_the_last_removed_block_of_it():
    assert seam_pairs([2, 3], 6) == [("model.layers.1", "model.layers.3")]
    assert seam_pairs([4, 5], 6) == [("model.layers.3", "model.layers.5")]  # a gap at the end: the dense last block
    assert seam_pairs([0], 4) == []  # nothing before a gap at the start
    assert seam_pairs([1, 3], 5) == [("model.layers.0", "model.layers.1"), ("model.layers.1", "model.layers.3")]
    assert seam_pairs([], 3) == []


def test_layer_terms_share_their_weight_and_need_pairs():
    pairs = (("model.layers.0", "model.layers.1"), ("model.layers.2", "model.layers.5"))
    terms = RecoveryConfig(layer_weight=1.0, layer_pairs=pairs).terms()
    layer = [t for t in terms if t.kind == "hidden_cosine"]
    assert [(t.student_layer, t.teacher_layer) for t in layer] == list(pairs)
    assert [t.weight for t in layer] == [0.5, 0.5]
    assert [t.kind for t in RecoveryConfig(layer_pairs=pairs).terms()] == ["kd", "ce"]  # weight 0: no layer terms
    with pytest.raises(SlimkitError, match="layer_pairs"):
        RecoveryConfig(layer_weight=1.0)


@pytest.mark.slow
def test_span_rule_removes_the_closest_run_and_recovery_matches_its_seam(tmp_path):
    from slimkit.distill.cache import open_cache
    from slimkit.llm.perplexity import perplexity
    from tests.llm_helpers import small_lm, windows

    teacher, tok = small_lm(4)
    cal = windows(tok, 2, 32)
    scores = span_scores(teacher, cal, 2, progress=False)
    start = min(range(3), key=lambda i: scores[i])
    student = copy.deepcopy(teacher)
    rep = prune_depth(student, cal, 2, progress=False, rule="span")
    assert rep.removed_blocks == [f"model.layers.{start}", f"model.layers.{start + 1}"]
    assert rep.details["removed"] == [start, start + 1]  # the indices seam_pairs takes
    assert len(student.model.layers) == 2
    with pytest.raises(SlimkitError, match="unknown depth rule"):
        prune_depth(copy.deepcopy(teacher), cal, 1, progress=False, rule="random")

    pairs = seam_pairs(rep.details["removed"], 4)
    assert pairs  # a gap of two blocks inside or at the end of four always has a kept block before it
    train, val = windows(tok, 2, 32), windows(tok, 2, 32, text="prideprejudice")
    cfg = RecoveryConfig(epochs=2, batch_size=1, lr=1e-3, top_k=8, layer_weight=1.0, layer_pairs=tuple(pairs))
    rec = recover(student, teacher, train, cfg, cache_dir=tmp_path, progress=False, val=val)
    assert rec.steps == 4 and [s for s, _ in rec.val_perplexity] == [2, 4]
    assert rec.val_perplexity[-1][1] == pytest.approx(perplexity(student, val).value, rel=1e-4)
    folder, = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert sorted(open_cache(folder).features) == sorted({t for _, t in pairs})  # the teacher's seam states cached
