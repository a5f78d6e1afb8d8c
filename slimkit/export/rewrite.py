"""Graph rewrites applied to an exported ONNX model before it is checked against PyTorch.

One rewrite so far: a mean over the two spatial axes of a 4-D tensor (how both exporters write
``nn.AdaptiveAvgPool2d(1)`` and ``x.mean((2, 3))``: ReduceMean) becomes ``GlobalAveragePool``.
The two compute the same thing, but ONNX Runtime's fast paths know only the second:
- int8: the runtime runs quantized convolutions channels-last (NHWC). A ReduceMean has no
  channels-last int8 kernel, so the last feature map is dequantized and transposed back to NCHW
  before the pool, both over the whole map; GlobalAveragePool is quantized to
  QLinearGlobalAveragePool, which stays int8 and channels-last;
- fp32: the NCHWc layout pass keeps blocked channels through GlobalAveragePool, where a
  ReduceMean needs the map reordered to NCHW first.
The rewritten graph goes through the same checks as any export (checker, max |onnx - torch| on
held-out inputs, the task check), so a rewrite that changed the result would be caught there.
"""

from __future__ import annotations

import numpy as np


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(graph, names: set[str]) -> dict[str, np.ndarray]:
    """The values of the initializers and Constant outputs named in `names` (only those: a model's
    weights are most of its initializers, and none of them is an axes list)."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name in names}
    for node in graph.node:
        if (node.op_type == "Constant" and node.output[0] in names and node.attribute
                and node.attribute[0].name == "value"):
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _ranks(model) -> dict[str, int]:
    """Rank of every tensor whose rank ONNX shape inference knows."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.input, *g.value_info, *g.output]
            if v.type.tensor_type.HasField("shape")}


def _spatial_mean(node, constants: dict[str, np.ndarray], ranks: dict[str, int]) -> bool:
    """Whether the ReduceMean `node` is over exactly axes 2 and 3 of a 4-D tensor."""
    if ranks.get(node.input[0]) != 4:
        return False
    axes = _attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = constants.get(node.input[1])
    if axes is None:
        return False
    return sorted(int(a) % 4 for a in np.atleast_1d(axes)) == [2, 3]


def spatial_means_to_global_pool(model) -> int:
    """Replace, in place, every ReduceMean over the spatial axes of a 4-D tensor by GlobalAveragePool
    (followed by a Reshape to (N, C) where the mean dropped the axes); returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    means = {i: n for i, n in enumerate(graph.node) if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")}
    if not means:  # most graphs: no shape inference over the whole model
        return 0
    constants = _constants(graph, {n.input[1] for n in means.values() if len(n.input) > 1})
    ranks = _ranks(model)
    spatial = {i for i, n in means.items() if _spatial_mean(n, constants, ranks)}
    nodes, count = [], 0
    for i, node in enumerate(graph.node):
        if i not in spatial:
            nodes.append(node)
            continue
        count += 1
        out = node.output[0]
        if _attrs(node).get("keepdims", 1):
            nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [out], name=node.name))
            continue
        pooled, shape = f"{out}_pooled", f"{out}_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), shape))
        nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
        nodes.append(helper.make_node("Reshape", [pooled, shape], [out], name=f"{node.name}_flatten"))
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count
