"""int8 with convolutions left in fp32 where measured faster: pairing, candidates, and the quantized graphs."""

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from slimkit.errors import SlimkitError  # noqa: E402
from slimkit.export import OrtModel, export_onnx, quantize_int8  # noqa: E402
from slimkit.export.mixed import conv_outputs, fp32_candidates, quantize_int8_fastest, slower_in_int8  # noqa: E402
from slimkit.export.profile import KernelProfile, NodeTime, profile_onnx  # noqa: E402
from slimkit.export.quantize import pre_processed  # noqa: E402


def _net() -> nn.Module:
    """A grayscale stem (BatchNorm folded into it), a depthwise and a pointwise convolution, and a linear head."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                        nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return net.eval()


@pytest.fixture(scope="module")
def fp32_graph():
    x = torch.randn(4, 1, 8, 8)
    return pre_processed(export_onnx(_net(), x).model_bytes)


def _profile(*nodes) -> KernelProfile:
    return KernelProfile(100.0, 1, [NodeTime(*n) for n in nodes])


CONVS = [("a", (-1, 16, 8, 8)), ("b", (-1, 16, 8, 8)), ("c", (-1, 24, 4, 4))]


def test_pairs_fp32_kernels_in_order_and_int8_ones_by_name():
    fp32 = _profile(("a_nchwc", "Conv", 10, (32, 16, 8, 8)), ("x", "Relu", 1, (32, 16, 8, 8)),
                    ("b_nchwc", "Conv", 10, (32, 16, 8, 8)), ("c_nchwc", "Conv", 10, (32, 32, 4, 4)))  # 24 padded to 32
    int8 = _profile(("a_token_1", "QLinearConv", 30, ()), ("b_token_4", "QLinearConv", 5, ()),
                    ("c_token_7", "QLinearConv", 11, ()))
    assert slower_in_int8(CONVS, fp32, int8) == (["a", "c"], None)


def test_no_pairing_when_kernels_do_not_match_the_graph():
    int8 = _profile(("a_token_1", "QLinearConv", 30, ()))
    fewer = _profile(("a", "Conv", 10, (32, 16, 8, 8)))
    assert slower_in_int8(CONVS, fewer, int8)[0] == [] and "1 fp32 convolution kernels ran for 3" in slower_in_int8(
        CONVS, fewer, int8)[1]
    swapped = _profile(("c", "Conv", 10, (32, 32, 4, 4)), ("a", "Conv", 10, (32, 16, 8, 8)),
                       ("b", "Conv", 10, (32, 16, 8, 8)))
    slower, why = slower_in_int8(CONVS, swapped, int8)
    assert slower == [] and "first mismatch a" in why
    conv1d = [("a", (-1, 16, 50))]
    assert slower_in_int8(conv1d, _profile(("a", "Conv", 10, (32, 16, 50))), int8) == (["a"], None)
    assert "first mismatch a" in slower_in_int8(conv1d, _profile(("a", "Conv", 10, (32, 16, 8, 8))), int8)[1]


def test_candidates_are_the_leading_slower_convolutions_then_all_of_them():
    order = ["a", "b", "c", "d"]
    assert fp32_candidates(order, ["a", "b", "d"]) == [["a", "b"], ["a", "b", "d"]]
    assert fp32_candidates(order, ["a", "b"]) == [["a", "b"]]
    assert fp32_candidates(order, ["c"]) == [["c"]]


def test_conv_outputs_lists_the_graph_convolutions_with_shapes(fp32_graph):
    convs = conv_outputs(fp32_graph)
    assert len(convs) == 3 and [s[1:] for _, s in convs] == [(16, 8, 8), (16, 8, 8), (32, 8, 8)]


def test_keep_fp32_leaves_exactly_the_named_convolutions_unquantized(fp32_graph, digits):
    feeds = [{"input": np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)}]
    stem = conv_outputs(fp32_graph)[0][0]
    q = onnx.load_model_from_string(quantize_int8(fp32_graph, "static", feeds, keep_fp32=[stem]).model_bytes)
    produced_by_dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = {n.name: n.input[1] in produced_by_dq for n in q.graph.node if n.op_type == "Conv"}
    assert quantized[stem] is False and sum(quantized.values()) == 2  # the other two read int8 weights
    assert quantize_int8(fp32_graph, "static", feeds).details.get("kept_fp32") is None
    with pytest.raises(SlimkitError, match="does not have"):
        quantize_int8(fp32_graph, "static", feeds, keep_fp32=["no_such_node"])


def test_profile_has_a_kernel_per_convolution(fp32_graph):
    x = {"input": np.zeros((2, 1, 8, 8), np.float32)}
    p = profile_onnx(fp32_graph, x, runs=3, warmup=1)
    assert p.runs == 3 and p.wall_us > 0 and sum(n.op in ("Conv", "FusedConv") for n in p.nodes) == 3
    assert p.kernel_us == sum(p.by_op().values())


def test_fastest_int8_is_measured_and_says_what_it_chose(fp32_graph):
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((16, 1, 8, 8)).astype(np.float32)} for _ in range(2)]
    batch = {"input": rng.standard_normal((32, 1, 8, 8)).astype(np.float32)}
    with pytest.raises(SlimkitError, match="must be a list"):
        quantize_int8_fastest(fp32_graph, iter(calib), batch)
    q = quantize_int8_fastest(fp32_graph, calib, batch, profile_runs=3, timing_rounds=3)
    d = q.details
    assert d["measured_at_batch"] == 32 and d["precision_choice"] in ("all int8", "mixed") and d["precision_note"]
    if d["precision_choice"] == "mixed":
        assert set(d["kept_fp32"]) <= set(d["slower_in_int8"]) and d["all_int8_ms"] > min(d["tried_ms"].values())
    ref = OrtModel(fp32_graph).run(batch)[0]
    out = OrtModel(q.model_bytes).run(batch)[0]
    assert out.shape == ref.shape and np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 0.05
