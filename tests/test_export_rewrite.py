"""Graph rewrites at export: a spatial mean becomes GlobalAveragePool, computes the same, and stays quantizable."""

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from slimkit.export import OrtModel, export_onnx, quantize_int8  # noqa: E402
from slimkit.export.rewrite import spatial_means_to_global_pool  # noqa: E402
from slimkit.models import MobileNetV2Small  # noqa: E402

REWRITE = "ReduceMean -> GlobalAveragePool"


def _ops(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_model_from_string(data).graph.node]


class MeanHead(nn.Module):
    """Conv, then a mean over H and W that drops the axes (ReduceMean with keepdims=0), then a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class SequenceMean(nn.Module):
    """Means that are not spatial pools: over channels of a 4-D map and over time of a 3-D sequence."""

    def forward(self, x):
        return x.mean(1).flatten(1) + x.flatten(2).mean(-1).sum(1, keepdim=True)


def test_adaptive_avg_pool_is_exported_as_global_average_pool_and_matches_pytorch():
    torch.manual_seed(0)
    model = MobileNetV2Small(input_size=8, setting=[[1, 16, 1, 1], [4, 24, 2, 2]], last_channel=64).eval()
    res = export_onnx(model, torch.randn(2, 1, 8, 8), exporters=("dynamo",))
    ops = _ops(res.model_bytes)
    assert res.rewrites == {REWRITE: 1}
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops
    assert max(res.max_abs_diff.values()) < 1e-4  # checked against PyTorch at other batch sizes


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_mean_that_drops_the_axes_keeps_its_output_shape(exporter):
    torch.manual_seed(0)
    model = MeanHead().eval()
    res = export_onnx(model, torch.randn(2, 3, 6, 6), exporters=(exporter,))
    assert res.rewrites == {REWRITE: 1}
    x = torch.randn(5, 3, 6, 6)
    got = OrtModel(res.model_bytes).run({"input": x.numpy()})[0]
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


def test_means_over_channels_or_time_are_left_alone():
    res = export_onnx(SequenceMean(), torch.randn(2, 3, 4, 5), exporters=("dynamo",))
    assert res.rewrites == {}
    assert "GlobalAveragePool" not in _ops(res.model_bytes)


def _mean_graph(opset: int, keepdims: int, axes: list[int]) -> onnx.ModelProto:
    """A one-node ReduceMean graph over a (N, 3, 4, 5) input, axes as attribute (opset 13) or input (opset 18)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "H", "W"][:4 if keepdims else 4 - len(axes)])
    if opset < 18:
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=keepdims, name="mean")
        inits = []
    else:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims, name="mean")
        inits = [helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes)]
    graph = helper.make_graph([node], "g", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset,keepdims,axes", [(13, 1, [2, 3]), (13, 0, [-1, -2]), (18, 0, [3, 2]), (18, 1, [-2, 3])])
def test_rewrite_computes_the_mean_it_replaces(opset, keepdims, axes):
    model = _mean_graph(opset, keepdims, axes)
    assert spatial_means_to_global_pool(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node][0] == "GlobalAveragePool"
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    got = OrtModel(model.SerializeToString()).run({"x": x})[0]
    np.testing.assert_allclose(got, x.mean(axis=(2, 3), keepdims=bool(keepdims)), atol=1e-6)


@pytest.mark.parametrize("axes", [[1, 2], [3], [1, 2, 3]])
def test_other_axes_are_not_rewritten(axes):
    model = _mean_graph(18, 1, axes)
    assert spatial_means_to_global_pool(model) == 0
    assert [n.op_type for n in model.graph.node] == ["ReduceMean"]


def test_static_int8_quantizes_the_pool_so_the_feature_map_stays_int8():
    torch.manual_seed(0)
    model = MobileNetV2Small(input_size=8, setting=[[1, 16, 1, 1], [4, 24, 2, 2]], last_channel=64).eval()
    res = export_onnx(model, torch.randn(2, 1, 8, 8), exporters=("dynamo",))
    feeds = [{"input": np.random.default_rng(i).standard_normal((8, 1, 8, 8)).astype(np.float32)} for i in range(4)]
    q = onnx.load_model_from_string(quantize_int8(res.model_bytes, "static", feeds).model_bytes)
    producer = {o: n.op_type for n in q.graph.node for o in n.output}
    consumers = {i: n.op_type for n in q.graph.node for i in n.input}
    pool = next(n for n in q.graph.node if n.op_type == "GlobalAveragePool")
    assert producer[pool.input[0]] == "DequantizeLinear" and consumers[pool.output[0]] == "QuantizeLinear"
