"""`slimkit export`: a checked ONNX file, an int8 copy and the deployment report; bad input as one line."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from slimkit.cli.main import app  # noqa: E402
from slimkit.io import save_model  # noqa: E402
from slimkit.models import ResNetCifar  # noqa: E402

runner = CliRunner()


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return save_model(ResNetCifar(depth=8, width=8, input_size=8), tmp_path / "r.safetensors")


def _one_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr


def test_export_writes_onnx_int8_and_a_report_with_deployment_rows(ckpt, tmp_path):
    out, rep = tmp_path / "m.onnx", tmp_path / "rep"
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(out), "--int8", "static", "--data", "digits",
                                 "--runs", "3", "--report", str(rep)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "m.int8.onnx").is_file()
    report = json.loads((rep / "report.json").read_text())
    rows = {r["name"]: r for r in report["deployment"]}
    assert set(rows) == {"pytorch", "onnx fp32", "onnx int8"}
    assert rows["onnx fp32"]["value"] == rows["pytorch"]["value"]  # equal accuracy on the test split
    assert rows["onnx int8"]["file_bytes"] == (tmp_path / "m.int8.onnx").stat().st_size
    for r in rows.values():
        assert set(r["latency_ms"]) == {"batch 1", "batch 32"} and all(v > 0 for v in r["latency_ms"].values())
    assert report["export"]["exporter"] == "dynamo" and "ORT_ENABLE_ALL" in report["header"]
    assert "| onnx int8 | onnxruntime | int8 static |" in (rep / "report.md").read_text()
    page = (rep / "report.html").read_text()
    assert "<td>onnx int8</td>" in page and report["provenance"]["timing_threads"] == 2
    assert "onnx int8 vs onnx fp32" in result.output


def test_missing_checkpoint(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "nope.safetensors"), "--onnx", str(tmp_path / "m.onnx")])
    _one_error(result, "does not exist")
    assert not list(tmp_path.iterdir())


def test_existing_output_is_refused_without_overwrite(ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(out), "--data", "digits"])
    _one_error(result, "exists; pass --overwrite")
    assert out.read_bytes() == b"keep me"
    # the int8 copy's name is checked up front too
    (tmp_path / "n.int8.onnx").write_bytes(b"keep me too")
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(tmp_path / "n.onnx"), "--int8", "dynamic",
                                 "--data", "digits"])
    _one_error(result, "n.int8.onnx exists")
    assert not (tmp_path / "n.onnx").exists()


def test_output_that_is_the_checkpoint_is_refused_even_with_overwrite(ckpt):
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(ckpt), "--overwrite", "--data", "digits"])
    _one_error(result, "is also an input")


def test_model_whose_forward_does_not_take_the_data(tmp_path):
    rgb = save_model(ResNetCifar(depth=8, width=8, in_channels=3, input_size=8), tmp_path / "rgb.safetensors")
    result = runner.invoke(app, ["export", str(rgb), "--onnx", str(tmp_path / "m.onnx"), "--data", "digits"])
    _one_error(result, "model does not accept digits inputs of shape (1, 1, 8, 8)")
    assert not (tmp_path / "m.onnx").exists()


def test_onnxruntime_not_installed_names_the_extra(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--data", "digits"])
    _one_error(result, "pip install 'slimkit[deploy]'")
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_int8_mode(ckpt, tmp_path):
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--int8", "int4"])
    _one_error(result, "--int8 must be 'static', 'mixed' or 'dynamic'")


def test_mixed_int8_is_measured_here_and_says_what_it_chose(ckpt, tmp_path):
    out, rep = tmp_path / "m.onnx", tmp_path / "rep"
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", str(out), "--int8", "mixed", "--data", "digits",
                                 "--runs", "2", "--report", str(rep)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.int8.onnx").is_file() and "'precision_choice': " in result.output
    rows = {r["name"]: r for r in json.loads((rep / "report.json").read_text())["deployment"]}
    assert rows["onnx int8"]["precision"] == "int8 mixed" and 0 < rows["onnx int8"]["value"] <= 1


def test_mixed_int8_of_an_encoder_is_refused_before_any_work(tmp_path):
    (tmp_path / "enc").mkdir()
    result = runner.invoke(app, ["export", str(tmp_path / "enc"), "--onnx", str(tmp_path / "e.onnx"), "--int8", "mixed"])
    _one_error(result, "use --int8 dynamic for encoders")
    assert not (tmp_path / "e.onnx").exists()


def test_export_an_encoder_folder_with_dynamic_int8(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from slimkit.llm.load import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    out, rep = tmp_path / "enc.onnx", tmp_path / "rep"
    result = runner.invoke(app, ["export", str(tmp_path / "enc"), "--onnx", str(out), "--int8", "dynamic",
                                 "--runs", "2", "--report", str(rep)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads((rep / "report.json").read_text())["deployment"]}
    assert rows["onnx fp32"]["metric"] == "cosine" and rows["onnx fp32"]["value"] > 0.999
    assert 0.9 < rows["onnx int8"]["value"] <= 1.0 + 1e-6 and rows["onnx int8"]["precision"] == "int8 dynamic"
    assert set(rows["onnx int8"]["latency_ms"]) == {"seq 32", "seq 128"}
