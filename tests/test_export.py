"""ONNX export: graphs that match PyTorch (dense, pruned, depth+width cut, ViT, BERT), dynamic axes, safe writes,
bad input as one line, int8 models that run and are scored."""

import copy
import os

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from slimkit.errors import SlimkitError  # noqa: E402
from slimkit.export import (  # noqa: E402
    OrtModel,
    classifier_check,
    classifier_scores,
    encoder_check,
    export_onnx,
    quantize_int8,
    quantize_onnx,
    split_feeds,
    time_onnx,
    to_onnx,
    write_output,
)
from slimkit.io import load_model, save_model  # noqa: E402
from slimkit.models import MobileNetV2Small, ResNetCifar, SmallViT, TargetModel  # noqa: E402
from slimkit.prune.layers import remove_blocks  # noqa: E402
from slimkit.prune.structured import prune_structured  # noqa: E402


def _bn_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a wrong channel in the graph would show in the outputs."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _cnn(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _bn_stats({
        "resnet": lambda: ResNetCifar(depth=14, width=8, input_size=8),
        "mobilenet": lambda: MobileNetV2Small(input_size=8, setting=[[1, 16, 1, 1], [4, 24, 2, 2]], last_channel=64),
        "target": lambda: TargetModel(input_size=8),
    }[name]())


def _conv_out_channels(data: bytes) -> list[int]:
    proto = onnx.load_model_from_string(data)
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    return sorted(inits[n.input[1]][0] for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits)


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "target"])
def test_cnn_dense_and_pruned_export_match_pytorch_at_other_batch_sizes(name, digits, tmp_path):
    dense = _cnn(name)
    pruned = prune_structured(copy.deepcopy(dense), digits.test.x[:1], ratio=0.5, importance="l2").model.eval()
    widths = {}
    for tag, model in (("dense", dense), ("pruned", pruned)):
        res = to_onnx(model, digits.test.x[:2], tmp_path / f"{tag}.onnx", validate=classifier_check(model, digits.test, 10))
        onnx.checker.check_model(str(res.path))
        assert res.exporter == "dynamo" and res.fallback_reason is None
        assert res.inputs == {"input": {0: "batch"}} and res.checks["onnx"] == res.checks["pytorch"]
        # batch 7 differs from the example's 2: the batch axis is dynamic
        x = digits.test.x[10:17]
        with torch.no_grad():
            assert torch.allclose(OrtModel(res.path)(x), model(x), atol=1e-4)
        widths[tag] = _conv_out_channels(res.path.read_bytes())
    # channels were removed in the graph, not zeroed
    assert sum(widths["pruned"]) < sum(widths["dense"])


def test_depth_and_width_cut_with_removed_blocks_exports_from_its_checkpoint(digits, tmp_path):
    dense = _cnn("resnet")
    cut = remove_blocks(prune_structured(copy.deepcopy(dense), digits.test.x[:1], ratio=0.25,
                                         importance="l2").model, ["layer1.1", "layer3.1"])
    save_model(cut, tmp_path / "cut.safetensors")
    loaded = load_model(tmp_path / "cut.safetensors").eval()
    res = to_onnx(loaded, digits.test.x[:3], tmp_path / "cut.onnx", check_inputs=[digits.test.x[:9]],
                  validate=classifier_check(loaded, digits.test, 10))
    dense_res = export_onnx(dense, digits.test.x[:3])
    assert res.max_abs_diff["output"] < 1e-4
    assert len(_conv_out_channels(res.model_bytes)) == len(_conv_out_channels(dense_res.model_bytes)) - 4
    assert res.file_bytes < dense_res.file_bytes


def test_vit_dense_and_head_pruned(digits, tmp_path):
    torch.manual_seed(0)
    vit = SmallViT(input_size=8, patch=2, dim=32, depth=2, num_heads=4).eval()
    pruned = prune_structured(copy.deepcopy(vit), digits.test.x[:1], ratio=0.25, importance="l2",
                              head_ratio=0.5).model.eval()
    assert pruned.blocks[0].attn.num_heads == 2
    for tag, model in (("vit", vit), ("vit_pruned", pruned)):
        res = to_onnx(model, digits.test.x[:1], tmp_path / f"{tag}.onnx")
        x = digits.test.x[:5]
        with torch.no_grad():
            assert torch.allclose(OrtModel(res.path)(x), model(x), atol=1e-4)
        # a batch-1 example is traced at batch 2, so batch stays dynamic; checked at 2 and 3
        assert [s["input"][0] for s in res.checked_shapes] == [2, 3]


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import AutoTokenizer, BertConfig, BertModel

    from slimkit.llm.load import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    return BertModel(cfg).eval(), tok


def test_bert_dense_and_head_ffn_pruned_with_dynamic_sequence_length(tiny_bert, tmp_path):
    import copy

    from slimkit.llm.encoder import default_sentences
    from slimkit.llm.encoder_prune import prune_encoder

    model, tok = tiny_bert
    train, held = default_sentences(32, 16)
    pruned = copy.deepcopy(model)
    prune_encoder(pruned, tok, train, ffn_ratio=0.5, head_ratio=0.5)
    assert pruned.encoder.layer[0].attention.self.num_attention_heads == 2
    example = dict(tok(held[:2], return_tensors="pt", padding=True))
    for tag, m in (("bert", model), ("bert_pruned", pruned)):
        res = to_onnx(m, example, tmp_path / f"{tag}.onnx", validate=encoder_check(m, tok, held))
        assert res.inputs["input_ids"] == {0: "batch", 1: "sequence"}
        assert res.outputs[0] == "last_hidden_state" and res.checks["min_cosine"] >= 0.999
        other = dict(tok(held[3:6], return_tensors="pt", padding=True))  # other batch size, other length
        assert other["input_ids"].shape[1] != example["input_ids"].shape[1]
        with torch.no_grad():
            want = m(**other).last_hidden_state
        got = OrtModel(res.path)(**other)["last_hidden_state"]
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)


def test_dynamic_int8_of_an_encoder_is_scored_and_writes_nothing_outside(tiny_bert, tmp_path, monkeypatch):
    from slimkit.export import embedding_cosines
    from slimkit.llm.encoder import default_sentences

    model, tok = tiny_bert
    _, held = default_sentences(2, 16)
    fp32 = export_onnx(model, dict(tok(held[:2], return_tensors="pt", padding=True)))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # onnxruntime's symbolic shape inference would leave files here on failure
    q = quantize_int8(fp32.model_bytes, "dynamic")
    assert not list(work.iterdir())
    assert "MatMulInteger" in {n.op_type for n in onnx.load_model_from_string(q.model_bytes).graph.node}
    cos = embedding_cosines(OrtModel(q.model_bytes), model, tok, held)
    assert len(cos) == 16 and 0.9 < float(cos.mean()) <= 1.0 + 1e-6


def test_write_is_atomic_and_refuses_an_existing_file(digits, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"not ours")
    model = _cnn("target")
    with pytest.raises(SlimkitError, match="exists; pass --overwrite"):
        to_onnx(model, digits.test.x[:2], out)
    assert out.read_bytes() == b"not ours"
    res = to_onnx(model, digits.test.x[:2], out, overwrite=True)
    assert out.read_bytes() == res.model_bytes and onnx.load(str(out)).graph.output[0].name == "output"
    # a write that dies before the rename leaves the old file whole and no temporary file behind
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(SlimkitError, match="no space left.*nothing was replaced"):
        write_output(out, b"half", overwrite=True)
    assert out.read_bytes() == res.model_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_forward_that_does_not_accept_the_example_is_one_line_and_writes_nothing(tmp_path):
    class NeedsMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, mask):
            return self.fc(x) * mask

    with pytest.raises(SlimkitError, match="forward does not accept the example inputs"):
        to_onnx(NeedsMask(), torch.randn(2, 4), tmp_path / "m.onnx")
    with pytest.raises(SlimkitError, match="forward does not accept"):
        to_onnx(nn.Linear(4, 2), torch.randn(2, 5), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_export_names_the_operator_that_cannot_be_converted():
    class Svd(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x @ x.T).S

    with pytest.raises(SlimkitError) as err:
        export_onnx(Svd(), torch.randn(3, 3))
    assert "linalg_svd" in str(err.value) and "\n" not in str(err.value)


def test_fallback_is_recorded_and_a_mismatch_names_the_output():
    class Branchy(nn.Module):  # data-dependent control flow: dynamo refuses, TorchScript bakes one branch
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1

    pos = torch.rand(2, 3) + 0.1
    res = export_onnx(Branchy(), pos)
    assert res.exporter == "torchscript" and res.fallback_reason.startswith("dynamo:")
    with pytest.raises(SlimkitError, match="output 'output' differs from PyTorch.*max abs difference") as err:
        export_onnx(Branchy(), pos, check_inputs=[-pos])
    assert "\n" not in str(err.value)


def _trained_cnn(digits) -> nn.Module:
    from slimkit.distill.finetune import fine_tune

    torch.manual_seed(0)
    model = TargetModel(input_size=8)
    return fine_tune(model, digits.train, epochs=6, lr=3e-3, seed=0, progress=False).eval()


def test_int8_static_and_dynamic_run_and_are_scored(digits, tmp_path):
    model = _trained_cnn(digits)
    fp32 = export_onnx(model, digits.test.x[:2], validate=classifier_check(model, digits.test, 10))
    acc32 = fp32.checks["onnx"]
    assert acc32 > 0.8
    with pytest.raises(SlimkitError, match="calibration"):
        quantize_int8(fp32.model_bytes, "static")
    static = quantize_onnx(fp32.model_bytes, tmp_path / "s.onnx", "static", split_feeds(digits.val, "input", 128, 32))
    ops = {n.op_type for n in onnx.load(str(static.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and static.details["calibration_batches"] == 4
    dynamic = quantize_int8(fp32.model_bytes, "dynamic")
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load_model_from_string(dynamic.model_bytes).graph.node}
    for q in (static, dynamic):
        scores = classifier_scores(OrtModel(q.model_bytes), digits.test, 10)
        assert abs(scores["accuracy"] - acc32) < 0.05  # measured, and close on this easy task
        assert q.file_bytes < fp32.file_bytes


def test_time_onnx_alternates_models_under_one_setting(digits):
    model = _cnn("target")
    data = export_onnx(model, digits.test.x[:2]).model_bytes
    res = time_onnx([data, data], digits.test.x[:4], runs=3, warmup=1)
    assert [r.batch_size for r in res] == [4, 4] and all(r.ms > 0 and r.threads == 2 for r in res)
    with pytest.raises(SlimkitError, match="one set of session options"):
        time_onnx([OrtModel(data, threads=1), data], digits.test.x[:1], runs=1)


def test_deploy_notes_say_when_int8_costs_too_much_or_is_not_faster():
    from slimkit.measure.rows import DeployRow, deploy_notes, render_markdown, report_files

    rows = [DeployRow("onnx fp32", "onnxruntime", "fp32", "accuracy", 0.92, {"batch 1": 1.0, "batch 32": 10.0}),
            DeployRow("onnx int8", "onnxruntime", "int8 static", "accuracy", 0.91, {"batch 1": 1.2, "batch 32": 5.0},
                      baseline="onnx fp32")]
    (note,) = deploy_notes(rows)
    assert "-1.00 pt" in note and "2.00x at batch 32" in note and "Not faster at batch 1" in note
    assert "too much" in note
    rows[1].value = 0.918
    assert "too much" not in deploy_notes(rows)[0]
    md = render_markdown([], deploy_notes(rows), "h", rows)
    assert "| onnx int8 | onnxruntime | int8 static | accuracy 91.80% |" in md
    assert b'"deployment"' in report_files([], [], "h", {}, rows)["report.json"]
