"""One-shot pruning on real SmolLM2 weights, cut to one or two blocks and short windows."""

import pytest
import torch

from slimkit.errors import SlimkitError
from slimkit.llm.calibration import capture_block_inputs
from slimkit.llm.oneshot import nm_mask, parse_nm, prune_oneshot, row_mask, sparsegpt_prune
from tests.llm_helpers import small_lm, windows


def _linears(model):
    return {n: m for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.slow
@pytest.mark.parametrize("method,nm", [("wanda", "2:4"), ("sparsegpt", "4:8"), ("magnitude", "2:4")])
def test_nm_masks_keep_exactly_n_of_every_m(method, nm):
    model, tok = small_lm(1)
    n, m = parse_nm(nm)
    rep = prune_oneshot(model, windows(tok), method, nm=nm, progress=False)
    for name, lin in _linears(model).items():
        keep = rep.masks[f"model.layers.{name}.weight"]
        assert torch.all(keep.reshape(keep.shape[0], -1, m).sum(-1) == n), name
        assert torch.all(lin.weight[~keep] == 0), name
    assert 1 - rep.kept_total == pytest.approx(1 - n / m, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_ratio_is_exact(method):
    model, tok = small_lm(1)
    rep = prune_oneshot(model, windows(tok, 3), method, 0.5, batch_size=2, progress=False)  # uneven last batch
    for name, lin in _linears(model).items():
        keep = rep.masks[f"model.layers.{name}.weight"]
        assert int(keep.sum()) == lin.weight.numel() // 2, name
        assert torch.all(lin.weight[~keep] == 0), name
    assert rep.kept_total == 0.5 and all(v == 0.5 for v in rep.kept_per_layer.values())
    assert set(rep.masks) == {f"model.layers.{n}.weight" for n in _linears(model)}


@pytest.mark.slow
def test_calibration_is_sequential():
    model, tok = small_lm(2)
    cal = windows(tok)
    seen = []
    prune_oneshot(model, cal, "wanda", 0.5, on_block=seen.append, progress=False)
    assert seen == [0, 1]
    # block 1 calibrated behind a pruned block 0 chooses other weights than behind a dense one
    both = _linears(model)
    dense_first, _ = small_lm(2)
    prune_oneshot(dense_first, cal, "wanda", 0.5, layers=[1], progress=False)
    only1 = _linears(dense_first)
    assert torch.any((both["1.mlp.down_proj"].weight != 0) != (only1["1.mlp.down_proj"].weight != 0))
    assert (only1["0.mlp.down_proj"].weight == 0).float().mean() < 0.01  # block 0 left dense


@pytest.mark.slow
def test_sparsegpt_beats_wanda_and_magnitude_on_layer_reconstruction():
    model, tok = small_lm(1)
    hidden, _ = capture_block_inputs(model, windows(tok, 4, 128), 4, torch.device("cpu"))
    block = model.model.layers[0]
    x = block.input_layernorm(hidden[0]).reshape(-1, 576)
    w = block.self_attn.q_proj.weight.detach()
    ref = x @ w.T
    err = {}
    mag = w * row_mask(w.abs(), 0.5)
    wanda = w * row_mask(w.abs() * x.pow(2).sum(0).sqrt(), 0.5)
    sgpt, keep = sparsegpt_prune(w, 2 * x.T @ x / x.shape[0], 0.5)
    assert torch.all(keep.sum(1) == w.shape[1] // 2)
    for name, pruned in (("magnitude", mag), ("wanda", wanda), ("sparsegpt", sgpt)):
        err[name] = float((x @ pruned.T - ref).pow(2).mean())
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"], err


def test_nm_mask_pure():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0]])
    assert nm_mask(score, 2, 4).tolist() == [[True, False, True, False, False, True, True, False]]


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "a:b", "2:2"])
def test_bad_nm_string(bad):
    with pytest.raises(SlimkitError):
        parse_nm(bad)


@pytest.mark.slow
def test_bad_method_and_sparsity():
    model, tok = small_lm(1)
    with pytest.raises(SlimkitError, match="unknown method"):
        prune_oneshot(model, None, "obs", 0.5, progress=False)
    with pytest.raises(SlimkitError, match=r"\[0, 1\)"):
        prune_oneshot(model, None, "magnitude", 1.0, progress=False)
    with pytest.raises(SlimkitError, match="calibration"):
        prune_oneshot(model, None, "wanda", 0.5, progress=False)


@pytest.mark.slow
def test_input_stats_belong_to_each_linears_own_input():
    """q/k/v and gate/up share one statistic; every statistic is that of the layer's real inputs."""
    from slimkit.llm.calibration import collect_input_stats

    model, tok = small_lm(1)
    hidden, kwargs = capture_block_inputs(model, windows(tok, 4, 64), 2, torch.device("cpu"))
    block = model.model.layers[0]
    stats = collect_input_stats(block, hidden, kwargs, True, torch.device("cpu"))
    lin = dict(block.named_modules())
    q, k, v, o = (lin[f"self_attn.{n}_proj"] for n in "qkvo")
    gate, up, down = (lin[f"mlp.{n}_proj"] for n in ("gate", "up", "down"))
    assert stats[q] is stats[k] is stats[v] and stats[gate] is stats[up]
    assert len({id(stats[m]) for m in (q, o, gate, down)}) == 4
    seen: dict = {}
    handles = [m.register_forward_hook(lambda m, i, _o: seen.setdefault(m, []).append(i[0].reshape(-1, i[0].shape[-1])))
               for m in (q, o, gate, down)]
    with torch.no_grad():
        for h, kw in zip(hidden, kwargs):
            block(h, **kw)
    for h in handles:
        h.remove()
    for m in (q, o, gate, down):
        x = torch.cat(seen[m])
        assert stats[m].tokens == x.shape[0]
        torch.testing.assert_close(stats[m].h, x.T @ x, rtol=1e-4, atol=1e-3)
