"""OWL allocation: the rule's definition on numbers, and one-shot pruning of real SmolLM2 blocks with it."""

import pytest
import torch
from typer.testing import CliRunner

from slimkit.cli.main import app
from slimkit.errors import SlimkitError
from slimkit.llm.calibration import capture_block_inputs
from slimkit.llm.oneshot import check_oneshot_args, prune_oneshot
from slimkit.llm.owl import block_outlier_shares, outlier_share, owl_sparsities
from tests.llm_helpers import small_lm, windows


def test_outlier_share_counts_scores_above_m_times_the_mean_of_all_of_them():
    # mean of [1]*8 + [21, 21] is 5: with m=2 only the two 21s count (above 10), with m=5 none (21 < 25)
    scores = [torch.ones(2, 4), torch.tensor([21.0, 21.0])]
    assert outlier_share(scores, m=2) == pytest.approx(0.2)
    assert outlier_share(scores, m=5) == 0.0


def test_owl_sparsities_average_the_target_within_lambda_and_spare_outlier_rich_blocks():
    shares = [0.010, 0.030, 0.020, 0.002]
    s = owl_sparsities(shares, 0.7, lam=0.08)
    assert sum(s) / len(s) == pytest.approx(0.7)
    assert max(s) - min(s) == pytest.approx(0.16)  # the widest share spread maps onto 2 * lambda
    assert sorted(range(4), key=s.__getitem__) == sorted(range(4), key=lambda i: -shares[i])  # more outliers, fewer cut
    # linear in the share: equal share gaps give equal sparsity gaps
    assert s[0] - s[2] == pytest.approx((s[3] - s[1]) * (0.010 - 0.020) / (0.002 - 0.030))
    assert owl_sparsities([0.01, 0.01, 0.01], 0.5) == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("ratio,lam", [(0.9, 0.08), (0.1, 0.08), (0.5, 0.0)])
def test_owl_refuses_ratios_its_band_could_push_outside_0_1(ratio, lam):
    with pytest.raises(SlimkitError, match="must stay inside"):
        owl_sparsities([0.0, 1.0], ratio, lam)


def test_one_outlier_poor_block_among_rich_ones_falls_2_lambda_minus_the_mean_below():
    # shares [0, 1, 1, 1]: rescaled [0, .16, .16, .16], mean .12: the poor block gets target + .12, the rich ones
    # target - .04; near the largest ratio OWL takes (below 0.84) every block stays below 1
    s = owl_sparsities([0.0, 1.0, 1.0, 1.0], 0.83, 0.08)
    assert s == pytest.approx([0.95, 0.79, 0.79, 0.79]) and max(s) < 1


def test_owl_settings_that_cannot_go_together_are_one_line_each():
    with pytest.raises(SlimkitError, match="N:M pattern fixes one ratio"):
        check_oneshot_args("wanda", 0.5, "2:4", "row", "owl")
    with pytest.raises(SlimkitError, match="need calibration inputs"):
        check_oneshot_args("magnitude", 0.5, None, "row", "owl")
    with pytest.raises(SlimkitError, match="unknown allocation 'global'"):
        check_oneshot_args("wanda", 0.5, None, "row", "global")


@pytest.mark.parametrize("argv,message", [
    (["--method", "wanda", "--nm", "2:4", "--allocation", "owl"], "N:M pattern fixes one ratio"),
    (["--method", "wanda", "--ratio", "0.5", "--allocation", "owl", "--stream"], "leave out --stream"),
    (["--blocks", "2", "--allocation", "owl"], "--allocation does not apply"),
])
def test_cli_refuses_owl_where_it_cannot_apply_before_loading(argv, message, tmp_path):
    res = CliRunner().invoke(app, ["prune", "smollm2", "--out", str(tmp_path / "out"), *argv])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_owl_prunes_each_block_at_its_own_ratio_from_dense_outlier_shares(method):
    model, tok = small_lm(2)
    cal = windows(tok)
    reference, _ = small_lm(2)
    # the definition: block 0's share from its dense inputs and its Linears' Wanda scores
    hidden, kwargs = capture_block_inputs(reference, cal, 2, torch.device("cpu"))
    shares = block_outlier_shares(reference, cal, [0, 1], 2, torch.device("cpu"))
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: inputs.setdefault(n, []).append(a[0]))
             for n, m in reference.model.layers[0].named_modules() if isinstance(m, torch.nn.Linear)]
    for h, kw in zip(hidden, kwargs):
        reference.model.layers[0](h, **kw)
    for hook in hooks:
        hook.remove()
    lin = dict(reference.model.layers[0].named_modules())
    scores = [lin[n].weight.abs() * torch.cat(xs).reshape(-1, xs[0].shape[-1]).float().pow(2).sum(0).sqrt()
              for n, xs in inputs.items()]
    assert shares[0] == pytest.approx(outlier_share(scores), abs=1e-6) and shares[0] != shares[1]

    rep = prune_oneshot(model, cal, method, 0.6, allocation="owl", progress=False)
    alloc = rep.details["allocation"]
    assert alloc["kind"] == "owl" and alloc["outlier_share"] == pytest.approx(shares)
    per_block = alloc["sparsity"]
    assert per_block == pytest.approx(dict(zip([0, 1], owl_sparsities([shares[0], shares[1]], 0.6))))
    assert abs(per_block[0] - per_block[1]) == pytest.approx(0.16)
    for i in (0, 1):
        masks = [m for name, m in rep.masks.items() if name.startswith(f"model.layers.{i}.")]
        realised = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
        assert realised == pytest.approx(per_block[i], abs=0.01)
    assert 1 - rep.kept_total == pytest.approx(0.6, abs=0.01)
    uniform = prune_oneshot(small_lm(2)[0], cal, method, 0.6, progress=False)
    assert uniform.details["allocation"] == {"kind": "uniform"}
