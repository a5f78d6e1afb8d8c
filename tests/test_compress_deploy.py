"""compress with an ONNX export: the deployment rows (measured in ONNX Runtime), the metric check, and an
export that fails without losing the compressed model.

A tiny ResNet on 8x8 digits, a few KD steps, the MACs-as-ms timer for the eager choice (tests/test_compress.py)
and few ONNX Runtime rounds.
"""

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import slimkit
from slimkit.compression import ExportFailedError
from slimkit.compression import deploy as deploy_mod
from slimkit.errors import SlimkitError
from slimkit.export import OrtModel
from tests.test_compress import FACTORY, TINY, data, macs_timer, tiny_resnet  # noqa: F401

FAST = {**TINY, "timing_rounds": 3}


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):  # noqa: F811
    train, val, test = data
    out = tmp_path_factory.mktemp("deploy") / "run"
    result = slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", floor=0.0, out=out, seed=3,
                              timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", export_onnx=True,
                              **FAST)
    return result, out


def test_model_onnx_is_written_and_scores_as_pytorch_on_the_test_split(exported, data):  # noqa: F811
    result, out = exported
    _, _, test = data
    ort = OrtModel((out / "model.onnx").read_bytes())
    with torch.no_grad():
        torch_pred = result.model.eval()(test.x).argmax(1)
    onnx_pred = ort(test.x).argmax(1)
    torch_acc = float((torch_pred == test.y).float().mean())
    onnx_acc = float((onnx_pred == test.y).float().mean())
    assert abs(onnx_acc - torch_acc) <= 0.001
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["deployment"]}
    assert rows["compressed onnx"]["value"] == pytest.approx(onnx_acc)
    assert rows["compressed onnx"]["extra"]["pytorch"] == pytest.approx(torch_acc)
    assert result.report.result.test["accuracy"] == pytest.approx(torch_acc)


def test_report_has_the_measured_deployment_rows(exported):
    _, out = exported
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["deployment"]}
    assert set(rows) == {"dense onnx", "compressed onnx"}
    comp, dense = rows["compressed onnx"], rows["dense onnx"]
    assert comp["file"] == "model.onnx" and comp["file_bytes"] == (out / "model.onnx").stat().st_size
    assert dense["file"] == "(not written)" and dense["file_bytes"] > comp["file_bytes"]  # half the MACs, fewer weights
    for r in (comp, dense):
        assert set(r["latency_ms"]) == {"batch 1", "batch 32"} and all(v > 0 for v in r["latency_ms"].values())
        assert r["runtime"] == "onnxruntime" and r["metric"] == "accuracy"
        assert r["extra"]["max_abs_diff"]["output"] < 1e-3
    assert comp["baseline"] == "dense onnx"
    onnx = report["onnx"]
    assert onnx["optimisation_level"] == "ORT_ENABLE_ALL" and "intra_op_num_threads=2" in onnx["session"]
    eff = onnx["efficiency"]
    for k in ("batch 1", "batch 32"):
        speedup = dense["latency_ms"][k] / comp["latency_ms"][k]
        assert eff["onnxruntime"][k]["speedup"] == pytest.approx(speedup)
        assert eff["onnxruntime"][k]["efficiency"] == pytest.approx(speedup / eff["macs_reduction"])
    assert eff["eager"]["batch 1"]["speedup"] == pytest.approx(report["result"]["speedup"])
    md = (out / "report.md").read_text()
    assert "## Deployment (ONNX Runtime)" in md and "| compressed onnx | onnxruntime |" in md
    assert "ORT_ENABLE_ALL" in md and "efficiency" in md


def test_a_cut_that_pays_eager_but_not_in_the_runtime_is_said_so():
    from slimkit.compression.result import Compressed

    report = Compressed(macs=1, params=1, val={}, speedup=1.8, macs_reduction=2.0, latency_share=0.56, faster=True,
                        meets_target=True, val_holds_floor=True)
    notes = deploy_mod.efficiency_notes(deploy_mod.efficiency(report, {"dense": {"batch 1": 1.0, "batch 32": 4.0},
                                                                       "compressed": {"batch 1": 1.1, "batch 32": 2.0}}))
    assert "efficiency 0.90) at batch 1" in notes[0] and "2.00x (efficiency 1.00) at batch 32" in notes[0]
    assert "pays in eager PyTorch but not in ONNX Runtime at batch 1:" in notes[1]
    fine = deploy_mod.efficiency_notes(deploy_mod.efficiency(report, {"dense": {"batch 1": 2.0},
                                                                      "compressed": {"batch 1": 1.0}}))
    assert len(fine) == 1


def test_metric_check_refuses_an_export_that_scores_differently(data):  # noqa: F811
    from slimkit.data.arrays import Split
    from slimkit.distill import classification

    _, _, test = data
    model = tiny_resnet().eval()
    with torch.no_grad():
        own = Split(test.x, model(test.x).argmax(1))  # labels the PyTorch model gets all right

    class Shifted(torch.nn.Module):  # stands for a runtime whose every decision differs
        def forward(self, x):
            return model(x).roll(1, dims=1)

    check = deploy_mod.metric_check(model, own, classification(), 256)
    assert check(model)["onnx"] == 1.0
    with pytest.raises(SlimkitError, match=r"ONNX accuracy 0.0000 differs from PyTorch's 1.0000 by 100.00 pt"):
        check(Shifted())


def test_a_failing_export_keeps_the_compressed_model_and_report(data, tmp_path, monkeypatch):  # noqa: F811
    import slimkit.export as export_pkg

    class Svd(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x @ x.T).S

    real = export_pkg.export_onnx

    def export(model, example, **kw):  # the compressed model meets an operator the exporter cannot convert
        return real(model, example, **kw) if model is dense else real(Svd(), torch.randn(3, 3))

    monkeypatch.setattr(export_pkg, "export_onnx", export)
    train, val, test = data
    dense = tiny_resnet()
    out = tmp_path / "run"
    with pytest.raises(ExportFailedError) as err:
        slimkit.compress(dense, train, val, test, target="macs=2x", floor=0.0, out=out, seed=3,
                         timer=macs_timer(val.x[:1]), timing_method="MACs as ms (test)", export_onnx=True, **FAST)
    msg = str(err.value)
    assert "compressed model's ONNX export failed" in msg and "linalg_svd" in msg and "\n" not in msg
    assert str(out) in msg and err.value.result is not None
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "report.json" in names and "model.onnx" not in names
    report = json.loads((out / "report.json").read_text())
    assert "linalg_svd" in report["onnx"]["error"] and "deployment" not in report
    assert "Export failed, model.onnx not written" in (out / "report.md").read_text()


def test_export_without_an_output_folder_is_refused_before_work(data):  # noqa: F811
    train, val, test = data
    with pytest.raises(SlimkitError, match="give out="):
        slimkit.compress(tiny_resnet(), train, val, test, target="macs=2x", export_onnx=True, **FAST)


def test_cli_prints_the_deployment_rows(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from slimkit.cli.main import app
    from slimkit.compression import run as run_mod

    # the eager choice by MACs (tests/test_compress.py times the CLI's fresh processes); ORT is timed for real
    monkeypatch.setattr(run_mod, "deciding_timer", lambda model, example, *a: (macs_timer(example), "MACs as ms"))
    (tmp_path / "compress_factory_mod.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["compress", "compress_factory_mod:build", "--out", "run", "--target", "macs=2x",
                                   "--floor", "0", "--search-steps", "2", "--recover-steps", "2", "--batch-size", "64",
                                   "--train-n", "128", "--max-blocks", "0", "--export", "onnx"])
    assert res.exit_code == 0, res.output
    assert "deployment (ONNX Runtime, ORT_ENABLE_ALL, 2 threads; metric on the test split)" in res.output
    assert "compressed onnx" in res.output and "dense onnx" in res.output and "efficiency" in res.output
    assert (tmp_path / "run" / "model.onnx").is_file()
